-- Fault scenarios of issue 6 that spec/misuse_spec.lua and spec/fetch_spec.lua do not cover:
-- suspending where Lua may not yield (a metamethod, a require'd chunk), odd error values, deep
-- recursion, a task nobody references, os.exit with work in flight, exhaustion (many tasks, few
-- descriptors), SIGINT mid-transfer and a peer that resets during an upload. Each one ends with
-- a clear error in the task concerned, every other task unaffected, and the loop clean.
--
-- The scenarios that need a process of their own run the `lasync` executable (CTest sets
-- LASYNC); under stock lua5.4 (stock_lua_suite), where it is not set, they are skipped.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local sub = require "subprocess"
local LASYNC = sub.LASYNC
local tmpfile, slurp, q = sub.tmpfile, sub.slurp, sub.q

-- Runs `lasync <script> <args>` after a shell prefix (e.g. a ulimit); stdout, stderr, status.
local function run_script(source, args, prefix)
  return sub.run_script(source, args, { prefix = prefix, timeout = 60 })
end

-- A subprocess scenario: pending under stock lua5.4 (no executable to run).
local function it_host(name, fn)
  if LASYNC then it(name, fn) else pending(name .. " (needs LASYNC)") end
end

local function assert_no_crash(code, err)
  assert.is_true(code < 124, "killed by a signal or hung (status " .. tostring(code) .. "): " .. err)
  assert.does_not.match("AddressSanitizer", err, 1, true)
  assert.does_not.match("runtime error:", err, 1, true) -- UBSan
  assert.does_not.match("PANIC", err, 1, true)
end

local server, base

local function start_server()
  if server then return end
  server = io.popen("exec python3 spec/support/server.py")
  local line = server:read("l")
  local http = (line or ""):match("^READY http=(%d+)")
  assert(http, "the test server did not start: " .. tostring(line))
  base = "http://127.0.0.1:" .. http
end

teardown(function()
  if server then server:close() end
end)

local function cleanup()
  sub.cleanup()
  assert_clean()
end

describe("suspending where Lua may not yield", function()
  after_each(cleanup)

  it("inside an __index metamethod works (Lua 5.4 metamethods may yield), other tasks unaffected", function()
    local ticks = 0
    local other = async.spawn(function()
      for _ = 1, 5 do async.sleep(0.005); ticks = ticks + 1 end
      return "other done"
    end)
    local proxy = setmetatable({}, { __index = function(_, k) async.sleep(0.001); return k .. "!" end })
    local t = async.spawn(function()
      local ok, v = pcall(function() return proxy.key end)
      async.sleep(0) -- the task can still suspend normally afterwards
      return ok, v
    end)
    local ok, v = t:await()
    -- Lua 5.4 lets __index functions yield, so the sleep simply works; the rule is only that it
    -- never crashes and never affects another task.
    assert.is_true(ok, tostring(v))
    assert.are.equal("key!", v)
    assert.are.equal("other done", other:await())
    assert.are.equal(5, ticks)
  end)

  it("inside __lt used by table.sort raises a catchable error", function()
    local mt = {}
    mt.__lt = function(a, b) async.sleep(0); return a.v < b.v end
    local items = { setmetatable({ v = 2 }, mt), setmetatable({ v = 1 }, mt) }
    local ok, err = pcall(table.sort, items)
    assert.is_false(ok)
    assert.matches("async.sleep", tostring(err), 1, true)
  end)

  it("inside a require'd chunk raises a catchable error, and the module is not half-loaded", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. q(dir)))
    local modfile = dir .. "/lasync_faults_mod.lua"
    local f = assert(io.open(modfile, "w"))
    f:write("local async = require 'lasync'\nasync.sleep(0.001)\nreturn { loaded = true }\n")
    f:close()
    local saved = package.path
    package.path = dir .. "/?.lua;" .. package.path
    local ok, err = pcall(require, "lasync_faults_mod")
    package.path = saved
    os.remove(modfile)
    os.remove(dir)
    assert.is_false(ok)
    assert.matches("async.sleep", tostring(err), 1, true)
    assert.is_nil(package.loaded.lasync_faults_mod)
    async.sleep(0.001) -- the task goes on
  end)
end)

describe("error values", function()
  after_each(cleanup)

  local function failure_of(fn)
    local t = async.spawn(fn)
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    return err, t
  end

  it("nil is re-raised as nil when awaited", function()
    local err, t = failure_of(function() error(nil) end)
    assert.is_nil(err)
    assert.are.equal("failed", t:status())
  end)

  it("a table is re-raised as the very same table", function()
    local e = { code = 3 }
    assert.is_true(rawequal(e, (failure_of(function() async.sleep(0); error(e) end))))
  end)

  it("a table whose __tostring fails is re-raised as the same table", function()
    local e = setmetatable({}, { __tostring = function() error("tostring exploded") end })
    local err = failure_of(function() error(e) end)
    assert.is_true(rawequal(e, err))
  end)

  it("a value whose __tostring fails does not break gather", function()
    local e = setmetatable({}, { __tostring = function() error("tostring exploded") end })
    local ok, err = pcall(async.gather, function() error(e) end, function() async.sleep(0.01) end)
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
  end)

  local REPORTED = {
    ["nil"] = "error(nil)",
    ["a table"] = "error({ code = 3 })",
    ["a failing __tostring"] = "error(setmetatable({}, { __tostring = function() error('tostring exploded') end }))",
    ["a __tostring returning a number"] = "error(setmetatable({}, { __tostring = function() return 42 end }))",
  }
  for what, raise in pairs(REPORTED) do
    it_host("the host reports " .. what .. " raised by a task nobody awaits, and exits 1", function()
      local out, err, code = run_script([[
        local async = require "lasync"
        async.spawn(function() async.sleep(0.01); ]] .. raise .. [[ end)
        async.sleep(0.05)
        print("main done")
      ]])
      assert_no_crash(code, err)
      assert.are.equal(1, code, err)
      assert.are.equal("main done\n", out)
      assert.is_true(#err > 0, "nothing reported")
    end)

    it_host("the host reports " .. what .. " raised by the main task, and exits 1", function()
      local _, err, code = run_script("require 'lasync'.sleep(0.01); " .. raise)
      assert_no_crash(code, err)
      assert.are.equal(1, code, err)
      assert.is_true(#err > 0, "nothing reported")
    end)
  end
end)

describe("deep recursion", function()
  after_each(cleanup)

  it("a Lua stack overflow fails that task only, with a catchable error", function()
    local ticks = 0
    local other = async.spawn(function()
      for _ = 1, 5 do async.sleep(0.005); ticks = ticks + 1 end
      return "other done"
    end)
    local deep = async.spawn(function()
      local function f(n) return 1 + f(n + 1) end
      async.sleep(0)
      return f(1)
    end)
    local ok, err = pcall(deep.await, deep)
    assert.is_false(ok)
    assert.matches("stack overflow", tostring(err), 1, true)
    assert.are.equal("failed", deep:status())
    assert.are.equal("other done", other:await())
    assert.are.equal(5, ticks)
    -- the coroutine it ran on is not poisoned: later tasks run normally
    assert.are.equal(3, async.spawn(function() async.sleep(0); return 3 end):await())
  end)

  it("a C stack overflow (nested metamethods) fails that task only", function()
    local deep = async.spawn(function()
      local mt = {}
      mt.__index = function(t, k) return setmetatable({}, mt)[k] end
      return setmetatable({}, mt).x
    end)
    local ok, err = pcall(deep.await, deep)
    assert.is_false(ok)
    assert.matches("overflow", tostring(err))
    assert.are.equal(4, async.spawn(function() async.sleep(0); return 4 end):await())
  end)

  it("recursion through awaits fails in the deepest task and the error travels up", function()
    local function chain(n)
      if n == 0 then error("bottom", 0) end
      return async.spawn(chain, n - 1):await()
    end
    local ok, err = pcall(chain, 200)
    assert.is_false(ok)
    assert.are.equal("bottom", err)
  end)
end)

describe("a sleeping task nobody references", function()
  after_each(cleanup)

  it("still completes after full collections, and its side effect happens", function()
    local done = false
    do
      async.spawn(function() async.sleep(0.05); done = true end)
    end
    collectgarbage()
    collectgarbage()
    local deadline = async.now() + 2
    while not done and async.now() < deadline do
      async.sleep(0.01)
      collectgarbage()
    end
    assert.is_true(done)
  end)

  it("a task awaiting a future nobody else references still completes when it is set", function()
    local f = async.future()
    local got
    async.spawn(function() got = f:await() end)
    async.sleep(0.01)
    collectgarbage()
    collectgarbage()
    f:set("late")
    async.sleep(0.01)
    assert.are.equal("late", got)
  end)
end)

describe("exhaustion", function()
  after_each(cleanup)

  it("100,000 sleeping tasks complete and Lua memory returns to its baseline", function()
    collectgarbage()
    collectgarbage()
    local baseline = collectgarbage("count")
    local done = 0
    do
      local tasks = {}
      for i = 1, 100000 do
        tasks[i] = async.spawn(function() async.sleep(0.001 * (i % 50)); done = done + 1 end)
      end
      for i = 1, #tasks do tasks[i]:await() end
    end
    assert.are.equal(100000, done)
    collectgarbage()
    collectgarbage()
    local grown_kb = collectgarbage("count") - baseline
    -- the coroutine pool (at most 1,024 idle coroutines) may stay; everything else goes
    assert.is_true(grown_kb < 4 * 1024, ("Lua memory grew by %.0f KiB"):format(grown_kb))
  end)

  it_host("with 32 descriptors, 100 concurrent fetches fail cleanly or succeed, and a later fetch succeeds", function()
    start_server()
    local out, err, code = run_script([[
      local async = require "lasync"
      local base = arg[1]
      local fetches = {}
      for i = 1, 100 do
        fetches[i] = function() return async.fetch(base .. "/delay?s=0.2", { timeout = 20 }) end
      end
      local results = async.gather_settled(fetches)
      local ok, failed, kinds, bad = 0, 0, {}, {}
      for _, r in ipairs(results) do
        if r.ok then
          ok = ok + 1
        else
          failed = failed + 1
          local e = r.error
          if type(e) == "table" and type(e.kind) == "string" then
            kinds[e.kind] = true
          else
            bad[#bad + 1] = tostring(e)
          end
        end
      end
      local names = {}
      for k in pairs(kinds) do names[#names + 1] = k end
      table.sort(names)
      print(("ok=%d failed=%d kinds=%s bad=%d"):format(ok, failed, table.concat(names, ","), #bad))
      for _, b in ipairs(bad) do print("not an error object: " .. b) end
      local later = async.fetch(base .. "/get")
      print("later=" .. later.status)
    ]], q(base), "ulimit -n 32; ")
    assert_no_crash(code, err)
    assert.are.equal(0, code, out .. err)
    local ok, failed, bad = out:match("ok=(%d+) failed=(%d+) kinds=%S* bad=(%d+)")
    assert.is_truthy(ok, out)
    assert.are.equal(100, tonumber(ok) + tonumber(failed))
    assert.are.equal("0", bad, out)
    assert.matches("later=200", out, 1, true)
  end)
end)

describe("os.exit with work in flight", function()
  after_each(cleanup)

  it_host("os.exit(0, true) with sleeping tasks and a fetch in flight exits 0 at once", function()
    start_server()
    local started = async.now()
    local out, err, code = run_script([[
      local async = require "lasync"
      for i = 1, 100 do async.spawn(function() async.sleep(30) end) end
      async.spawn(function() async.fetch(arg[1] .. "/delay?s=10") end)
      async.spawn(function()
        local guard <close> = setmetatable({}, { __close = function() io.write("closed\n") end })
        async.sleep(30)
      end)
      async.sleep(0.3)
      print("exiting"); io.stdout:flush()
      os.exit(0, true)
    ]], q(base))
    assert_no_crash(code, err)
    assert.are.equal(0, code, err)
    assert.matches("^exiting\n", out)
    assert.is_true(async.now() - started < 8, "os.exit waited for the work in flight")
  end)

  it_host("os.exit(3, true) keeps the status", function()
    local _, err, code = run_script([[
      local async = require "lasync"
      async.spawn(function() async.sleep(30) end)
      async.sleep(0.01)
      os.exit(3, true)
    ]])
    assert_no_crash(code, err)
    assert.are.equal(3, code, err)
  end)
end)

describe("signals", function()
  after_each(cleanup)

  it_host("SIGINT mid-transfer cancels the fetch, runs <close> cleanup and exits 130", function()
    start_server()
    local script, out, err, ready = tmpfile([[
      local async = require "lasync"
      local guard <close> = setmetatable({}, { __close = function(_, e)
        print("closed", async.is_cancelled(e)); io.stdout:flush()
      end })
      async.spawn(function() async.sleep(0.1); io.open(arg[1], "w"):close() end)
      async.fetch(arg[2] .. "/delay?s=5")
      print("not reached")
    ]]), tmpfile(), tmpfile(), tmpfile()
    os.remove(ready)
    local sh = table.concat({
      q(LASYNC) .. " " .. q(script) .. " " .. q(ready) .. " " .. q(base) ..
          " >" .. q(out) .. " 2>" .. q(err) .. " & pid=$!",
      "i=0; while [ ! -e " .. q(ready) .. " ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
      "sleep 0.1; kill -INT $pid",
      "i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
      "kill -0 $pid 2>/dev/null && { kill -KILL $pid; echo hung; }",
      "wait $pid; echo $?",
    }, "\n")
    local p = assert(io.popen("sh -c " .. q(sh), "r"))
    local status = p:read("a")
    p:close()
    local code = tonumber(status:match("(%d+)%s*$"))
    assert.are.equal(130, code, status .. slurp(err))
    assert.are.equal("closed\ttrue\n", slurp(out))
  end)

  it("a peer that resets during a 20 MB upload gives an error object, not SIGPIPE", function()
    start_server()
    local body = string.rep("x", 20 * 1024 * 1024)
    for _ = 1, 3 do
      local ok, e = pcall(async.fetch, base .. "/reset", { method = "POST", body = body, timeout = 20 })
      if ok then
        -- curl may see the reset only as an empty or cut reply; either way no signal
        assert.is_number(e.status)
      else
        assert.are.equal("table", type(e), tostring(e))
        assert.is_string(e.kind)
      end
    end
    -- the process is alive and fetches still work
    assert.are.equal(200, async.fetch(base .. "/get").status)
  end)

  it_host("the host survives the same reset upload (SIGPIPE ignored, status 0)", function()
    start_server()
    local out, err, code = run_script([[
      local async = require "lasync"
      local body = string.rep("x", 20 * 1024 * 1024)
      local ok, e = pcall(async.fetch, arg[1] .. "/reset", { method = "POST", body = body })
      print(ok and "response" or ("error " .. tostring(type(e) == "table" and e.kind)))
      print("alive")
    ]], q(base))
    assert_no_crash(code, err)
    assert.are.equal(0, code, err)
    assert.matches("alive", out, 1, true)
  end)
end)
