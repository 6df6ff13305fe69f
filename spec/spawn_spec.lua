package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

describe("async.spawn", function()
  after_each(assert_clean)

  it("returns a Task", function()
    local t = async.spawn(function() end)
    assert.are.equal("userdata", type(t))
    assert.are.equal("function", type(t.await))
    assert.are.equal("function", type(t.cancel))
    t:await()
  end)

  it("does not run the function inside spawn, but on a later loop turn", function()
    local ran = false
    local t = async.spawn(function() ran = true end)
    assert.is_false(ran)
    assert.are.equal("pending", t:status())
    async.sleep(0)
    assert.is_true(ran)
    t:await()
  end)

  it("passes the extra arguments to the function, nils included", function()
    local t = async.spawn(function(...) return select("#", ...), ... end, 1, nil, "x", nil)
    local n, a, b, c, d = t:await()
    assert.are.equal(4, n)
    assert.are.equal(1, a)
    assert.is_nil(b)
    assert.are.equal("x", c)
    assert.is_nil(d)
  end)

  it("runs tasks in the order they were spawned", function()
    local log = {}
    local ts = {}
    for i = 1, 5 do ts[i] = async.spawn(function() log[#log + 1] = i end) end
    for i = 1, 5 do ts[i]:await() end
    assert.are.same({ 1, 2, 3, 4, 5 }, log)
  end)

  it("accepts any callable, such as a table with __call", function()
    local callable = setmetatable({}, { __call = function(self, x) return x * 2 end })
    assert.are.equal(42, async.spawn(callable, 21):await())
  end)

  it("the same callables work for timeout, shield, run, wait_for and gather", function()
    local c = setmetatable({}, { __call = function(_, x) return (x or 0) + 1 end })
    assert.are.equal(8, async.timeout(1, c, 7))
    assert.are.equal(9, async.shield(c, 8))
    assert.are.equal(10, async.run(c, 9))
    assert.are.equal(1, async.wait_for(c, 1))
    assert.are.equal(1, async.gather(c)[1])
    assert.are.equal(1, async.gather_settled(c)[1].value)
  end)

  it("refuses an unknown or malformed option, naming it", function()
    local ok, err = pcall(async.spawn, { nam = "x" }, function() end)
    assert.is_false(ok)
    assert.matches("async.spawn: bad option 'nam' (unknown option)", err, 1, true)
    ok, err = pcall(async.spawn, { "x" }, function() end)
    assert.is_false(ok)
    assert.matches("async.spawn: bad option key (string expected, got number)", err, 1, true)
    ok, err = pcall(async.spawn, { name = 42 }, function() end)
    assert.is_false(ok)
    assert.matches("async.spawn: bad option 'name' (string expected, got number)", err, 1, true)
    ok, err = pcall(async.spawn, { name = "x" }, 42)
    assert.is_false(ok)
    assert.matches("async.spawn: bad argument #2 'fn' (function expected, got number)", err, 1, true)
    assert.are.equal(0, async._debug.counts().tasks)
  end)

  it("is also available as async.create_task", function()
    assert.are.equal("function", type(async.create_task))
    local t = async.create_task(function(a, b) return a + b end, 2, 3)
    assert.are.equal(5, t:await())
  end)

  it("lets tasks spawn tasks", function()
    local t = async.spawn(function()
      local inner = async.spawn(function() async.sleep(0.01); return "inner" end)
      return "outer", inner:await()
    end)
    local a, b = t:await()
    assert.are.equal("outer", a)
    assert.are.equal("inner", b)
  end)

  it("handles many tasks at once", function()
    local ts = {}
    for i = 1, 1000 do ts[i] = async.spawn(function() async.sleep(0.01); return i end) end
    local sum = 0
    for i = 1, 1000 do sum = sum + ts[i]:await() end
    assert.are.equal(500500, sum)
  end)
end)

describe("async.current", function()
  after_each(assert_clean)

  it("returns the running task", function()
    local t
    t = async.spawn(function() return async.current() end)
    assert.are.equal(t, t:await())
  end)

  it("returns the main task in the top-level chunk (busted runs inside it)", function()
    local cur = async.current()
    assert.is_not_nil(cur)
    assert.are.equal("running", cur:status())
  end)

  it("returns nil inside a coroutine of your own, even within a task", function()
    local inside = coroutine.wrap(function() return async.current() end)()
    assert.is_nil(inside)
  end)
end)

-- Tasks that start in the same loop turn run one after another on one coroutine, in one resume
-- (runtime.c, take_chained): each must still be itself there, and nothing one of them does may
-- reach the next.
describe("a burst of tasks started in one turn", function()
  after_each(assert_clean)

  it("runs them in order, each as itself; one that suspends or fails does not stop the rest", function()
    local log, ts = {}, {}
    local function step(i)
      return function()
        assert(async.current() == ts[i], "task " .. i .. " is not async.current()")
        log[#log + 1] = "start " .. i
        if i == 2 then
          async.sleep(0)
          log[#log + 1] = "end 2"
        elseif i == 3 then
          error("three fails")
        end
        return i * 10, i
      end
    end
    for i = 1, 5 do ts[i] = async.spawn(step(i)) end
    local results = async.gather_settled(ts)
    assert.are.same({ "start 1", "start 2", "start 3", "start 4", "start 5", "end 2" }, log)
    for i = 1, 5 do
      if i == 3 then
        assert.is_false(results[i].ok)
        assert.matches("three fails", tostring(results[i].error), 1, true)
        assert.are.equal("failed", ts[i]:status())
      else
        assert.is_true(results[i].ok)
        assert.are.same({ i * 10, i }, { ts[i]:await() })
      end
    end
  end)

  it("one that suspends keeps its coroutine alive after the pool hands that slot on", function()
    -- b runs on a's coroutine (chained), taken from the pool, and suspends; c then ends and
    -- gives its own coroutine back into the slot a's came from. Only b still holds a's: a
    -- collection then must not free the coroutine b sleeps on.
    for _ = 1, 3 do
      local c = async.spawn(function() async.sleep(0.01) end)
      async.sleep(0)
      local a = async.spawn(function() return 1 end)
      local b = async.spawn(function() async.sleep(0.03); return 2 end)
      c:await()
      collectgarbage()
      collectgarbage()
      assert.are.same({ 1, 2 }, { a:await(), b:await() })
    end
  end)

  it("a task spawned by one of them waits for the next turn, after the rest of the burst", function()
    local log = {}
    local ts = {}
    ts[1] = async.spawn(function()
      log[#log + 1] = "a"
      ts[4] = async.spawn(function() log[#log + 1] = "spawned by a" end)
    end)
    ts[2] = async.spawn(function() log[#log + 1] = "b" end)
    ts[3] = async.spawn(function() log[#log + 1] = "c" end)
    async.gather(ts[1], ts[2], ts[3])
    ts[4]:await()
    assert.are.same({ "a", "b", "c", "spawned by a" }, log)
  end)

  it("a task cancelled before it started is skipped; the ones after it still run", function()
    local ran = {}
    local a = async.spawn(function() ran[#ran + 1] = "a" end)
    local b = async.spawn(function() ran[#ran + 1] = "b" end)
    local c = async.spawn(function() ran[#ran + 1] = "c" end)
    b:cancel()
    local results = async.gather_settled(a, b, c)
    assert.are.same({ "a", "c" }, ran)
    assert.is_false(results[2].ok)
    assert.are.equal("cancelled", b:status())
  end)

  it("a hook one of them sets on its coroutine does not reach the next", function()
    local hits = 0
    local a = async.spawn(function()
      debug.sethook(coroutine.running(), function() hits = hits + 1 end, "l")
      local x = 1
      return x
    end)
    local b = async.spawn(function()
      local before = hits
      local y = 1
      y = y + 1
      return hits - before
    end)
    local results = async.gather(a, b)
    assert.is_true(hits > 0, "the hook never ran in the task that set it")
    assert.are.equal(0, results[2], "the next task ran under the first one's hook")
  end)

  it("one that fails may still suspend in its <close> cleanup, which sees the error", function()
    -- b runs on a's coroutine (take_chained): its error unwinds there, as under xpcall before
    local log = {}
    local a = async.spawn(function() log[#log + 1] = "a" end)
    local b = async.spawn(function()
      local guard <close> = setmetatable({}, { __close = function(_, e)
        log[#log + 1] = "closing b: " .. tostring(e)
        async.sleep(0.01)
        log[#log + 1] = "closed b"
      end })
      log[#log + 1] = "b"
      error("b fails", 0)
    end)
    local c = async.spawn(function()
      local guard <close> = setmetatable({}, { __close = function()
        async.sleep(0)
        error("c's cleanup fails", 0)
      end })
      error("c fails", 0)
    end)
    local d = async.spawn(function() log[#log + 1] = "d" end)
    local results = async.gather_settled(a, b, c, d)
    assert.are.same({ "a", "b", "closing b: b fails", "d", "closed b" }, log)
    assert.is_true(results[1].ok and results[4].ok)
    assert.are.equal("b fails", tostring(results[2].error))
    assert.are.equal("c's cleanup fails", tostring(results[3].error))
    assert.are.equal("failed", b:status())
  end)

  it("one that fails is let go once it is settled, not at the end of the burst", function()
    -- Before, each failure left a copy of its task on the main thread's stack until the
    -- resume ended: a million failing tasks in one turn grew that stack to its limit.
    local weak = setmetatable({}, { __mode = "k" })
    local function spawn_unheld() weak[async.spawn(function() error("let go", 0) end)] = true end
    local function look_at_all() for t in pairs(weak) do t:status() end end -- so: no report
    local first = async.spawn(function() end)
    spawn_unheld()
    local last = async.spawn(function()
      look_at_all()
      collectgarbage()
      collectgarbage()
      return next(weak) == nil
    end)
    assert.is_true(last:await(), "the failed task was still held")
    first:await()
  end)

  it("one of them cannot write over its coroutine's body, which the next one runs under", function()
    local a = async.spawn(function()
      assert.are.equal("C", debug.getinfo(2, "S").what) -- the body, below this function
      -- for debug.setlocal, under pcall, the body is level 3 (1: pcall, 2: this function)
      return pcall(debug.setlocal, 3, 1, "not a message handler")
    end)
    local b = async.spawn(function() error("b's own error") end)
    local results = async.gather_settled(a, b)
    local ok, err = a:await()
    assert.is_false(ok)
    assert.matches("debug.setlocal: level 3 of a task's coroutine is a C function", err, 1, true)
    assert.is_false(results[2].ok)
    assert.matches("b's own error", tostring(results[2].error), 1, true)
  end)

  it("a task that keeps spawning a successor does not hold up timers", function()
    local stop, count = false, 0
    local function relay()
      count = count + 1
      if not stop then async.spawn(relay) end
    end
    async.spawn(relay)
    local t0 = async.now()
    async.sleep(0.02)
    stop = true
    assert.is_true(async.now() - t0 < 2, "the sleep was held up by the relay")
    assert.is_true(count > 1, "the relay never ran")
    async.sleep(0.01) -- the last successor ends
  end)
end)
