package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

describe("async.timeout", function()
  after_each(assert_clean)

  it("returns fn's values when it finishes in time", function()
    local r = table.pack(async.timeout(1, function(a, b) async.sleep(0.01); return a, nil, b end, "x", "y"))
    assert.are.same({ "x", nil, "y", n = 3 }, r)
  end)

  it("runs fn inside the calling task, not in a new one", function()
    local me = async.current()
    local inside = async.timeout(1, function() return async.current() end)
    assert.are.equal(me, inside)
  end)

  it("raises a Timeout error when the deadline expires", function()
    local t0 = async.now()
    local err = raises(async.timeout, 0.05, async.sleep, 5)
    local elapsed = async.now() - t0
    assert.is_true(async.is_timeout(err))
    assert.is_false(async.is_cancelled(err))
    assert.are.equal("timeout", err.kind)
    assert.are.equal("string", type(err.message))
    assert.are.equal(0.05, err.seconds)
    assert.is_true(elapsed >= 0.05)
    assert.is_true(elapsed < 1)
  end)

  it("cancels the work on expiry so its cleanup runs", function()
    local seen = {}
    raises(async.timeout, 0.05, function()
      local c <close> = setmetatable({}, { __close = function(_, e) seen.close = e end })
      local ok, e = pcall(async.sleep, 5)
      seen.ok, seen.err = ok, e
      error(e, 0)
    end)
    assert.is_false(seen.ok)
    assert.is_true(async.is_cancelled(seen.err))
    assert.is_true(async.is_cancelled(seen.close))
  end)

  it("lets the task go on normally after a timeout", function()
    raises(async.timeout, 0.01, async.sleep, 5)
    local t0 = async.now()
    async.sleep(0.05)
    assert.is_true(async.now() - t0 >= 0.05)
    assert.are.equal("running", async.current():status())
  end)

  it("passes fn's own errors through unchanged", function()
    local e = { "mine" }
    local err = raises(async.timeout, 1, function() error(e) end)
    assert.is_true(rawequal(e, err))
    assert.are.equal("plain", raises(async.timeout, 1, function() error("plain", 0) end))
  end)

  it("disarms its deadline when fn finishes early", function()
    async.timeout(0.05, async.sleep, 0)
    async.sleep(0.1) -- would raise if the deadline had stayed armed
    assert.are.equal(0, async._debug.counts().timers)
  end)

  it("raises from the inner call only when a nested inner timeout fires", function()
    local after_inner
    local r = async.timeout(1, function()
      local err = raises(async.timeout, 0.02, async.sleep, 5)
      after_inner = async.is_timeout(err)
      async.sleep(0.02) -- the outer deadline is still fine
      return "outer finished"
    end)
    assert.is_true(after_inner)
    assert.are.equal("outer finished", r)
  end)

  it("raises from the outer call when the outer timeout fires inside an inner one", function()
    local inner_saw
    local err = raises(async.timeout, 0.05, function()
      local ok, e = pcall(async.timeout, 5, async.sleep, 5)
      inner_saw = e
      error(e, 0)
    end)
    assert.is_true(async.is_timeout(err))
    -- the inner timeout did not expire, so it must not turn the cancellation into its own Timeout
    assert.is_true(async.is_cancelled(inner_saw))
  end)

  it("does not turn a cancellation of the whole task into a Timeout", function()
    local t = async.spawn(function() return async.timeout(5, async.sleep, 5) end)
    async.sleep(0.02)
    t:cancel("outer")
    local err = raises(t.await, t)
    assert.is_true(async.is_cancelled(err))
    assert.is_false(async.is_timeout(err))
  end)

  it("interrupts a busy loop that suspends with sleep(0)", function()
    local err = raises(async.timeout, 0.05, function()
      local t0 = async.now()
      while async.now() - t0 < 1 do async.sleep(0) end
      return "ran to the end"
    end)
    assert.is_true(async.is_timeout(err))
  end)

  it("interrupts a busy loop that suspends with a bare coroutine.yield()", function()
    local t0 = async.now()
    local ok, err = pcall(async.timeout, 0.05, function()
      while async.now() - t0 < 0.5 do coroutine.yield() end
      return "ran to the end"
    end)
    assert.is_false(ok, "the deadline never reached the task; it ran for 0.5 s and returned")
    assert.is_true(async.is_timeout(err))
    assert.is_true(async.now() - t0 < 0.4)
  end)

  it("with 0 seconds times out at the first suspension", function()
    local err = raises(async.timeout, 0, async.sleep, 1)
    assert.is_true(async.is_timeout(err))
  end)

  it("raises a clear error when fn is not a function", function()
    local err = raises(async.timeout, 1, 42)
    assert.matches("async.timeout: bad argument #2", tostring(err), 1, true)
  end)
end)

describe("a deadline an error skips the closing of", function()
  after_each(assert_clean)

  -- A hook's error (as an instruction-budget watchdog raises) lands between opening the
  -- deadline and closing it: it is closed as the error unwinds, instead of staying armed to
  -- cancel the task at a depth nobody closes again.
  it("is closed as the error unwinds, and the task goes on without it", function()
    local ok, err = pcall(function()
      debug.sethook(function()
        local info = debug.getinfo(2, "n")
        if info and info.name == "close" then debug.sethook(); error("hook says no") end
      end, "c")
      async.timeout(0.02, function() return 1 end)
    end)
    debug.sethook()
    assert.is_false(ok)
    assert.matches("hook says no", err)
    assert.are.equal(0, async._debug.counts().refs)
    assert.are.equal(0, async._debug.counts().timers)
    async.sleep(0.04) -- past the deadline that was skipped: nothing cancels this sleep
    assert.are.same({ true, 1 }, { async.timeout(1, function() return true, 1 end) })
  end)
end)

describe("async.wait_for", function()
  after_each(assert_clean)

  it("returns all the task's values when it finishes in time", function()
    local t = async.spawn(function() async.sleep(0.01); return 1, 2 end)
    local a, b = async.wait_for(t, 1)
    assert.are.equal(1, a)
    assert.are.equal(2, b)
  end)

  it("raises the task's own error", function()
    local t = async.spawn(function() error("own", 0) end)
    assert.are.equal("own", raises(async.wait_for, t, 1))
  end)

  it("on expiry cancels the task and raises Timeout", function()
    local t = async.spawn(function() async.sleep(5) end)
    local t0 = async.now()
    local err = raises(async.wait_for, t, 0.05)
    assert.is_true(async.is_timeout(err))
    assert.are.equal("timeout", err.kind)
    assert.is_true(async.now() - t0 < 1)
    assert.are.equal("cancelled", t:status())
  end)

  it("waits for the cancelled task's <close> cleanup before raising", function()
    local closed = false
    local t = async.spawn(function()
      local c <close> = setmetatable({}, { __close = function() closed = true end })
      async.sleep(5)
    end)
    local err = raises(async.wait_for, t, 0.03)
    assert.is_true(async.is_timeout(err))
    assert.is_true(closed)
    assert.is_true(t:done())
  end)

  it("waits for cleanup written with pcall before raising", function()
    local cleaned = false
    local t = async.spawn(function()
      local ok, e = pcall(async.sleep, 5)
      cleaned = true
      error(e, 0)
    end)
    raises(async.wait_for, t, 0.03)
    assert.is_true(cleaned)
  end)

  it("passes a cancellation of the waiting task through as Cancelled, not Timeout", function()
    local t = async.spawn(function() async.sleep(0.2); return "v" end)
    local waiter = async.spawn(function() return async.wait_for(t, 5) end)
    async.sleep(0.02)
    waiter:cancel()
    local err = raises(waiter.await, waiter)
    assert.is_true(async.is_cancelled(err))
    assert.is_false(async.is_timeout(err))
    pcall(t.await, t)
  end)

  it("raises a clear error for something that is neither a task nor callable", function()
    local err = raises(async.wait_for, 42, 1)
    assert.matches("async.wait_for: bad argument #1 'task' (task or function expected, got number)",
      tostring(err), 1, true)
  end)

  it("cancels the task waited for when the waiter is cancelled, and awaits its cleanup", function()
    local cleaned = false
    local inner = async.spawn(function()
      local guard <close> = setmetatable({}, { __close = function() cleaned = true end })
      async.sleep(10)
    end)
    local waiter = async.spawn(function() return async.wait_for(inner, 10) end)
    async.sleep(0.01)
    waiter:cancel()
    local ok, err = pcall(waiter.await, waiter)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    assert.are.equal("cancelled", inner:status())
    assert.is_true(cleaned) -- its cleanup ran before the waiter finished
  end)

  it("accepts a callable, run as the task waited for, cancelled on expiry", function()
    assert.are.equal("w", async.wait_for(function() async.sleep(0.01) return "w" end, 5))
    local cleaned = false
    local err = raises(async.wait_for, function()
      local guard <close> = setmetatable({}, { __close = function() cleaned = true end })
      async.sleep(10)
    end, 0.02)
    assert.is_true(async.is_timeout(err))
    assert.is_true(cleaned)
  end)
end)
