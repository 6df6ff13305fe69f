-- Diagnostics: task names, async.tasks(), async.dump(), debug mode's slow-step warning.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local sub = require "subprocess"
sub.LASYNC = sub.LASYNC or "build/lasync"
local LASYNC = sub.LASYNC

-- Runs a script with the host, with an environment variable and flags; returns its exit
-- code and stderr.
local function run_script(code, env, flags)
  local _, err, status = sub.run(((flags or "") .. " " .. sub.q(sub.tmpfile(code))),
    { prefix = env and ("export " .. env .. "; ") or nil })
  sub.cleanup()
  return status, err
end

describe("task names", function()
  after_each(assert_clean)

  it("are given with spawn's options table and read with task:name()", function()
    local t = async.spawn({ name = "fetcher" }, function(a, b) return a + b end, 1, 2)
    assert.are.equal("fetcher", t:name())
    assert.are.equal(3, t:await())
  end)

  it("can be set later with task:set_name, and are nil by default", function()
    local t = async.spawn(function() end)
    assert.is_nil(t:name())
    assert.are.equal(t, t:set_name("late"))
    assert.are.equal("late", t:name())
    t:await()
  end)

  it("must be strings", function()
    local ok, err = pcall(async.spawn, { name = 42 }, function() end)
    assert.is_false(ok)
    assert.matches("async.spawn: bad option 'name'", err)
  end)
end)

describe("async.tasks", function()
  after_each(assert_clean)

  it("lists live tasks with name, status, age, spawn site and what each waits on", function()
    local t = async.spawn({ name = "sleeper" }, async.sleep, 5)
    async.sleep(0.05)
    local found
    for _, info in ipairs(async.tasks()) do
      if info.task == t then found = info end
    end
    assert.is_table(found)
    assert.are.equal("sleeper", found.name)
    assert.are.equal("running", found.status)
    assert.are.equal("sleep", found.waiting_on)
    assert.is_true(found.age >= 0.04)
    assert.matches("diag_spec.lua:%d+", found.site)
    t:cancel()
    pcall(t.await, t)
    for _, info in ipairs(async.tasks()) do assert.are_not.equal(t, info.task) end
  end)

  -- Recording a spawn site was a tenth of a trivial task's cost (issue 15): outside debug mode
  -- a Lua function's task is placed by the function, found when asked for.
  local function site_of(task)
    for _, info in ipairs(async.tasks()) do
      if info.task == task then return info.site end
    end
  end

  it("places a Lua function's task where the function is defined, a C one where it was spawned", function()
    local function nap() async.sleep(5) end
    local here = "spec/diag_spec.lua:"
    local lua_task = async.spawn(nap)
    local spawn_line = debug.getinfo(1, "l").currentline + 1
    local c_task = async.spawn(async.sleep, 5)
    assert.are.equal(here .. debug.getinfo(nap, "S").linedefined, site_of(lua_task)) -- pending
    async.sleep(0)
    assert.are.equal(here .. debug.getinfo(nap, "S").linedefined, site_of(lua_task)) -- suspended
    assert.are.equal(here .. spawn_line, site_of(c_task))
    lua_task:cancel()
    c_task:cancel()
    pcall(async.gather, { lua_task, c_task })
  end)

  it("places a scope's child by the user's function, not lasync's wrapper", function()
    local function child() async.sleep(5) end
    async.scope(function(s)
      local t = s:spawn(child)
      assert.are.equal("spec/diag_spec.lua:" .. debug.getinfo(child, "S").linedefined, site_of(t))
      async.sleep(0)
      assert.are.equal("spec/diag_spec.lua:" .. debug.getinfo(child, "S").linedefined, site_of(t))
      t:cancel()
    end)
  end)

  it("keeps a failed task's place when a tail call leaves its function out of the traceback", function()
    local status, err = run_script([[
      local function helper() error("deep") end
      local function worker() return helper() end
      require("lasync").spawn(worker)
    ]])
    assert.are.equal(1, status)
    assert.matches("task function <[^>\n]*:2> failed: [^\n]*deep", err)
    assert.matches("(...tail calls...)\n\t(task function <", err, 1, true)
  end)

  it("does not keep the chunk names of the failed tasks it placed", function()
    local function round()
      for i = 1, 3000 do
        local t = async.spawn(load("error('x')", "=job-" .. i .. "-" .. math.random(1e9)))
        assert.is_false(pcall(t.await, t))
      end
      collectgarbage()
      collectgarbage()
      return collectgarbage("count")
    end
    local first = round()
    local third = (round() and round())
    assert.is_true(third - first < 200, ("grew %.0f KB"):format(third - first)) -- was ~300 KB a round
  end)

  it("in debug mode places every task at the line that spawned it", function()
    local was = async.debug(true)
    local line = debug.getinfo(1, "l").currentline + 1
    local t = async.spawn(function() async.sleep(5) end)
    async.debug(was)
    assert.are.equal("spec/diag_spec.lua:" .. line, site_of(t))
    t:cancel()
    pcall(t.await, t)
  end)
end)

describe("async.dump", function()
  after_each(assert_clean)

  it("refuses something that is not a file, naming the argument", function()
    local ok, err = pcall(async.dump, 42)
    assert.is_false(ok)
    assert.matches("async.dump: bad argument #1 'out' (file expected, got number)", err, 1, true)
  end)

  it("prints every live task with its name and what it waits on", function()
    local t = async.spawn({ name = "dumped" }, async.sleep, 5)
    async.sleep(0.01)
    local path = os.tmpname()
    local out = assert(io.open(path, "w"))
    async.dump(out)
    out:close()
    local text = assert(io.open(path)):read("a")
    os.remove(path)
    assert.matches("live task%(s%)", text)
    assert.matches("'dumped' %[running, [%d.]+ s%] at [^\n]*diag_spec.lua:%d+, waiting on sleep",
      text)
    t:cancel()
    pcall(t.await, t)
  end)
end)

describe("debug mode", function()
  local blocking = [[
    local async = require "lasync"
    async.spawn({name = "blocker"}, function() os.execute("sleep 0.2"); async.sleep(0) end)
  ]]

  it("is off by default", function()
    local status, err = run_script(blocking)
    assert.are.equal(0, status)
    assert.are.equal("", err)
  end)

  it("names the task and line of a step that held the loop (lasync --debug)", function()
    local status, err = run_script(blocking, nil, "--debug")
    assert.are.equal(0, status)
    assert.matches("task 'blocker' held the loop for %d+ ms before it suspended at [^\n]*:2", err)
  end)

  it("is also switched on by LASYNC_DEBUG=1", function()
    local status, err = run_script(blocking, "LASYNC_DEBUG=1")
    assert.are.equal(0, status)
    assert.matches("task 'blocker' held the loop", err)
  end)

  it("adds the chain of spawners to a failed task's traceback", function()
    local status, err = run_script([[
      local async = require "lasync"
      async.spawn({name = "supervisor"}, function()
        async.spawn({name = "worker"}, function() error("worker broke") end)
      end)
    ]], nil, "--debug")
    assert.are.equal(1, status)
    assert.matches("worker broke", err)
    assert.matches("%(spawned by task 'supervisor'%)\n\t%(spawned by task 'main'%)", err)
  end)

  it("can be switched on from Lua with async.debug(true, seconds)", function()
    local status, err = run_script([[
      local async = require "lasync"
      assert(async.debug(true, 0.05) == false)
      local t = async.spawn(function() local t0 = os.clock() while os.clock() - t0 < 0.1 do end end)
      t:await()
    ]])
    assert.are.equal(0, status)
    assert.matches("held the loop for %d+ ms before it finished in the function at [^\n]*:3\n", err)
  end)

  -- Switched off by a task, the next one of the same turn starts on its coroutine at once
  -- (runtime.c, take_chained): when that one suspends, the step that began in debug mode is no
  -- slow step of the first task's, which has finished (reporting it read a task no longer
  -- anchored: a crash).
  it("can be switched off by a task, and the task after it is not reported for it", function()
    local status, err = run_script([[
      local async = require "lasync"
      async.debug(true, 0.05)
      local a = async.spawn({name = "switcher"}, function() async.debug(false) end)
      local b = async.spawn({name = "next"}, function() async.sleep(0) end)
      a:await()
      b:await()
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal("", err)
  end)
end)

describe("SIGQUIT", function()
  it("makes the host print the task tree", function()
    local script, errfile, ready = os.tmpname(), os.tmpname(), os.tmpname()
    os.remove(ready)
    local f = assert(io.open(script, "w"))
    f:write(([[
      local async = require "lasync"
      async.spawn({name = "quitter"}, async.sleep, 0.6)
      io.open(%q, "w"):close()
    ]]):format(ready))
    f:close()
    local pid = io.popen(("%s %s 2>%s & echo $!"):format(LASYNC, script, errfile)):read("l")
    for _ = 1, 100 do
      if io.open(ready) then break end
      async.sleep(0.01)
    end
    os.execute("kill -QUIT " .. pid)
    async.sleep(0.8)
    local err = assert(io.open(errfile)):read("a")
    os.remove(script); os.remove(errfile); os.remove(ready)
    assert.matches("live task%(s%)", err)
    assert.matches("'quitter'", err)
  end)
end)

describe("async.debug's threshold", function()
  after_each(function()
    async.debug(false, 0.1)
    assert_clean()
  end)

  it("takes math.huge as never slow, and refuses a threshold that is not a number", function()
    assert.matches("async.debug: bad argument #2 'seconds' %(number expected, got string%)",
      select(2, pcall(async.debug, true, "x")))
    async.debug(true, math.huge) -- converting inf to an integer is undefined behaviour
    async.spawn(function() async.sleep(0) end):await()
  end)
end)
