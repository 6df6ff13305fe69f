-- The scheduler owns its coroutines (issue 14, crash 1): coroutine.* used on a task's coroutine,
-- as a luv- or copas-style "resume me from a callback" helper would, is refused and cannot
-- corrupt the scheduler. Before the fix the first test returned the task early from its sleep
-- and the cancel then crashed the process (task.c: member access within null pointer).
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

describe("the scheduler's coroutines", function()
  after_each(assert_clean)

  it("refuses coroutine.resume from outside, naming the task; cancel afterwards is safe", function()
    local co
    local woke = false
    local t = async.spawn({ name = "sleeper" }, function()
      co = coroutine.running()
      async.sleep(10)
      woke = true
    end)
    async.sleep(0)
    local ok, msg = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("coroutine.resume: the coroutine belongs to task 'sleeper'", msg, 1, true)
    assert.is_false(woke) -- the sleep did not return early
    assert.are.equal("running", t:status())
    t:cancel()
    local ok2, err = pcall(t.await, t)
    assert.is_false(ok2)
    assert.are.equal("cancelled", err.kind)
    assert.is_false(woke)
  end)

  it("names an unnamed task by its function, as Lua's tracebacks do", function()
    local co
    local function body() co = coroutine.running(); async.sleep(10) end
    local t = async.spawn(body)
    async.sleep(0)
    local ok, msg = coroutine.resume(co, 1, 2, 3)
    assert.is_false(ok)
    local defined = debug.getinfo(body, "S").linedefined
    assert.matches("task function <spec/coroutine_spec.lua:" .. defined .. ">", msg, 1, true)
    t:cancel()
    pcall(t.await, t)
  end)

  it("refuses coroutine.close; the task goes on and finishes normally", function()
    local co
    local t = async.spawn(function()
      co = coroutine.running()
      async.sleep(0.02)
      return "finished"
    end)
    async.sleep(0)
    local ok, msg = coroutine.close(co)
    assert.is_false(ok)
    assert.matches("coroutine.close: the coroutine belongs to task", msg, 1, true)
    assert.are.equal("suspended", coroutine.status(co))
    assert.are.equal("finished", t:await())
  end)

  it("refuses a resume from another task, and from the task itself", function()
    local co
    local t = async.spawn(function()
      co = coroutine.running()
      local ok, msg = coroutine.resume(co)
      async.sleep(0.02)
      return ok, msg
    end)
    async.sleep(0)
    local other = async.spawn(function() return coroutine.resume(co, "x") end)
    local ok, msg = other:await()
    assert.is_false(ok)
    assert.matches("belongs to task", msg, 1, true)
    local self_ok, self_msg = t:await()
    assert.is_false(self_ok)
    assert.matches("belongs to task", self_msg, 1, true)
  end)

  it("refuses an idle coroutine back in the pool; the task that reuses it is unharmed", function()
    local co
    async.spawn(function() co = coroutine.running() end):await()
    local ok, msg = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("belongs to the scheduler", msg, 1, true)
    assert.is_false((coroutine.close(co)))
    -- the next task may run on that very coroutine
    local t = async.spawn(function() async.sleep(0.01); return coroutine.running() end)
    assert.are.equal("thread", type(t:await()))
  end)

  it("refuses a coroutine seen by one task once the pool gives it to another", function()
    local co
    async.spawn(function() co = coroutine.running() end):await()
    local b = async.spawn({ name = "b-task" }, function() async.sleep(0.02); return "b done" end)
    async.sleep(0)
    local ok, msg = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("belongs to task 'b-task'", msg, 1, true) -- the pool is last in, first out
    assert.are.equal("b done", b:await())
  end)

  it("leaves coroutine.status, isyieldable and running truthful", function()
    local co
    local t = async.spawn(function()
      co = coroutine.running()
      assert.is_true(coroutine.isyieldable())
      local _, ismain = coroutine.running()
      assert.is_false(ismain)
      async.sleep(0.01)
    end)
    async.sleep(0)
    assert.are.equal("suspended", coroutine.status(co))
    t:await()
    assert.are.equal("dead", coroutine.status(co)) -- idle in the pool: nothing to resume
  end)

  it("leaves plain coroutines alone: resume, close, wrap, yield with values", function()
    local t = async.spawn(function()
      local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
      local seen = { gen(), gen(), gen() }
      local c = coroutine.create(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
      local _, x = coroutine.resume(c, 1)
      local _, y = coroutine.resume(c, 10)
      local d = coroutine.create(function() coroutine.yield() end)
      coroutine.resume(d)
      local closed = coroutine.close(d)
      return seen, x, y, closed
    end)
    local seen, x, y, closed = t:await()
    assert.are.same({ 1, 2, 3 }, seen)
    assert.are.equal(2, x)
    assert.are.equal(20, y)
    assert.is_true(closed)
  end)

  it("a plain coroutine inside a task cannot suspend the task: a clear error", function()
    local t = async.spawn(function()
      local c = coroutine.create(function() async.sleep(0.01) end)
      return coroutine.resume(c)
    end)
    local ok, msg = t:await()
    assert.is_false(ok)
    assert.matches("must be called inside a task", msg, 1, true)
  end)

  it("survives a hostile mix: resume and close attempts during gather and cancellation", function()
    local cos = {}
    local ts = {}
    for i = 1, 20 do
      ts[i] = async.spawn(function()
        cos[i] = coroutine.running()
        async.sleep(0.005 * (i % 4))
        return i
      end)
    end
    async.sleep(0)
    for i = 1, 20 do
      assert.is_false((coroutine.resume(cos[i])))
      if i % 3 == 0 then ts[i]:cancel() end
      assert.is_false((coroutine.close(cos[i])))
    end
    local results = async.gather_settled(table.unpack(ts))
    for i = 1, 20 do
      if i % 3 == 0 then
        assert.is_false(results[i].ok)
        assert.are.equal("cancelled", results[i].error.kind)
      else
        assert.are.equal(i, results[i].value)
      end
    end
  end)
end)

-- The neighbours of crash 1: what each of coroutine.* and debug.sethook does on, or inside, a
-- task, so none of them is left undefined.
describe("coroutine.* and debug.sethook in and on tasks", function()
  after_each(assert_clean)

  it("coroutine.close of the task's own coroutine, from inside, is refused; it goes on", function()
    local t = async.spawn({ name = "self-closer" }, function()
      local ok, msg = coroutine.close((coroutine.running()))
      async.sleep(0)
      return ok, msg, "went on"
    end)
    local ok, msg, after = t:await()
    assert.is_false(ok)
    assert.matches("coroutine.close: the coroutine belongs to task 'self-closer'", msg, 1, true)
    assert.are.equal("went on", after)
  end)

  it("coroutine.wrap: a generator works across a task's suspensions and from two tasks", function()
    local gen = coroutine.wrap(function()
      for i = 1, 4 do coroutine.yield(i) end
    end)
    local function take()
      local a = gen()
      async.sleep(0.001) -- the task suspends between two resumes of the generator
      return { a, gen() }
    end
    local r = async.gather(take, take)
    local all = { r[1][1], r[1][2], r[2][1], r[2][2] }
    table.sort(all)
    assert.are.same({ 1, 2, 3, 4 }, all)
  end)

  it("coroutine.wrap: a generator that tries to suspend the task raises through it", function()
    local gen = coroutine.wrap(function() async.sleep(0.01) end)
    local ok, msg = pcall(gen)
    assert.is_false(ok)
    assert.matches("async.sleep must be called inside a task", msg, 1, true)
  end)

  it("coroutine.status: running, normal from a coroutine it resumed, suspended, dead", function()
    local co, seen_inside, seen_nested
    local t = async.spawn(function()
      co = coroutine.running()
      seen_inside = coroutine.status(co)
      local inner = coroutine.create(function() seen_nested = coroutine.status(co) end)
      coroutine.resume(inner)
      async.sleep(0.01)
    end)
    async.sleep(0)
    assert.are.equal("running", seen_inside)
    assert.are.equal("normal", seen_nested)
    assert.are.equal("suspended", coroutine.status(co))
    t:await()
    assert.are.equal("dead", coroutine.status(co))
  end)

  it("coroutine.isyieldable: true in a task, false where it cannot suspend", function()
    local in_sort
    local t = async.spawn(function()
      local yes = coroutine.isyieldable()
      table.sort({ 2, 1 }, function(a, b)
        in_sort = coroutine.isyieldable()
        return a < b
      end)
      return yes
    end)
    assert.is_true(t:await())
    assert.is_false(in_sort)
  end)

  it("debug.sethook on a task's coroutine hooks that task only, never a later one", function()
    -- Before, the hook stayed on the coroutine when the pool gave it to the next task, whose
    -- every line then raised the first task's hook error.
    local co
    local t = async.spawn(function()
      co = coroutine.running()
      async.sleep(0.01)
      local x = 1
      return x
    end)
    async.sleep(0)
    debug.sethook(co, function() error("hooked") end, "l")
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.matches("hooked", tostring(err), 1, true)
    for _ = 1, 3 do
      local later = async.spawn(function()
        local y = 2
        y = y + 1
        return y
      end)
      assert.are.equal(3, later:await())
    end
  end)

  it("debug.sethook: a hook set on an idle coroutine does not reach the task reusing it", function()
    local co
    async.spawn(function() co = coroutine.running() end):await()
    debug.sethook(co, function() error("stale hook") end, "l")
    local t = async.spawn(function()
      local z = 1
      return z + 1
    end)
    assert.are.equal(2, t:await())
  end)

  it("debug.sethook: a hook cannot suspend the task; it says so, in that task", function()
    local t = async.spawn(function()
      debug.sethook(function()
        debug.sethook()
        async.sleep(0)
      end, "l")
      local a = 1
      return a
    end)
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.matches("async.sleep cannot suspend here", tostring(err), 1, true)
    assert.matches("a debug hook", tostring(err), 1, true)
  end)

  it("suspends across pcall and xpcall, and an error after the suspension is caught", function()
    local t = async.spawn(function()
      local ok1, v = pcall(function()
        async.sleep(0.001)
        return "slept"
      end)
      local ok2, e = xpcall(function()
        async.sleep(0.001)
        error("after", 0)
      end, function(m) return "handled " .. m end)
      return ok1, v, ok2, e
    end)
    assert.are.same({ true, "slept", false, "handled after" }, { t:await() })
  end)

  it("a cancellation caught by pcall is raised again at the next suspension point", function()
    local caught
    local t = async.spawn(function()
      local ok, err = pcall(async.sleep, 10)
      caught = not ok and err.kind
      async.sleep(0) -- not caught: the task ends cancelled
      return "unreachable"
    end)
    async.sleep(0)
    t:cancel()
    local ok, err = pcall(t.await, t)
    assert.are.equal("cancelled", caught)
    assert.is_false(ok)
    assert.are.equal("cancelled", err.kind)
    assert.are.equal("cancelled", t:status())
  end)

  it("debug.setlocal counts levels from its caller, as Lua's own, in a task and outside", function()
    -- Before, the wrapper's own frame counted as level 1: the local went to the wrong frame.
    local function set_mine()
      local mine = "before"
      local name = debug.setlocal(1, 1, "after")
      return name, mine
    end
    assert.are.same({ "mine", "after" }, { set_mine() })
    assert.are.same({ "mine", "after" }, { async.spawn(set_mine):await() })
    assert.are.same({ "mine", "after" }, { async.spawn(function()
      local mine = "before"
      local name = debug.setlocal(coroutine.running(), 1, 1, "after")
      return name, mine
    end):await() })
  end)

  it("debug.setlocal: a suspended task's C frames are refused, its Lua locals not", function()
    -- Before, a value written over the slot a continuation reads back (the awaited future of
    -- queue:get) crashed the host when the task woke.
    local co
    local q = async.queue()
    local t = async.spawn(function()
      co = coroutine.running()
      local v = q:get()
      local mine = "before"
      async.sleep(0)
      return v, mine
    end)
    async.sleep(0)
    local refused = 0
    for level = 0, 6 do
      local info = debug.getinfo(co, level, "S")
      for n = 1, 6 do
        if info and info.what == "C" and debug.getlocal(co, level, n) then
          local ok, err = pcall(debug.setlocal, co, level, n, 42)
          assert.is_false(ok)
          assert.matches("debug.setlocal: level " .. level .. " of a task's coroutine is a C",
            err, 1, true)
          refused = refused + 1
        end
      end
    end
    assert.is_true(refused > 0)
    q:put("value")
    -- the Lua frame's locals are the task's to change: `mine`, once the task sleeps after it
    local function find_mine()
      for level = 0, 4 do
        if debug.getinfo(co, level, "S") then
          for n = 1, 10 do
            local name, value = debug.getlocal(co, level, n)
            if name == "mine" and value == "before" then return { level, n } end
          end
        end
      end
    end
    local found
    for _ = 1, 10 do
      async.sleep(0)
      found = find_mine()
      if found then break end
    end
    assert(found, "no local 'mine' in the task's frames")
    assert.are.equal("mine", debug.setlocal(co, found[1], found[2], "after"))
    local v, mine = t:await()
    assert.are.equal("value", v)
    assert.are.equal("after", mine)
  end)
end)

describe("coroutine.running in the main chunk", function()
  local sub = require "subprocess"
  after_each(sub.cleanup)

  if not sub.LASYNC then
    pending("needs LASYNC (the host executable)")
    return
  end

  it("the host runs the main chunk as task 'main': its coroutine is refused to others", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local co, ismain = coroutine.running()
      print(ismain, coroutine.isyieldable(), async.current() ~= nil)
      async.spawn(function() print(coroutine.resume(co)) end)
      async.sleep(0.01)
      print(coroutine.status(co))
    ]])
    assert.are.equal(0, status, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal("false\ttrue\ttrue", lines[1])
    assert.matches("^false\tcoroutine.resume: the coroutine belongs to task 'main'", lines[2])
    assert.are.equal("running", lines[3])
  end)
end)
