package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local function await_error(t)
  local ok, err = pcall(t.await, t)
  assert.is_false(ok, "expected the task to raise")
  return err
end

describe("task:cancel", function()
  after_each(assert_clean)

  it("returns true for a task that had not finished", function()
    local t = async.spawn(function() async.sleep(10) end)
    async.sleep(0)
    assert.is_true(t:cancel())
    await_error(t)
  end)

  it("returns false (a no-op) for a finished task", function()
    local t = async.spawn(function() return 1 end)
    assert.are.equal(1, t:await())
    assert.is_false(t:cancel())
    assert.are.equal("done", t:status())
    assert.are.equal(1, t:await())
  end)

  it("returns false when the task was already cancelled and has finished", function()
    local t = async.spawn(function() async.sleep(10) end)
    async.sleep(0)
    t:cancel()
    await_error(t)
    assert.is_false(t:cancel())
  end)

  it("wakes a sleeping task at once", function()
    local t = async.spawn(function() async.sleep(5) end)
    async.sleep(0.01)
    local t0 = async.now()
    t:cancel()
    local err = await_error(t)
    assert.is_true(async.is_cancelled(err))
    assert.is_true(async.now() - t0 < 0.5)
  end)

  it("delivers a Cancelled error carrying the given message", function()
    local t = async.spawn(function() async.sleep(5) end)
    async.sleep(0)
    t:cancel("stop it")
    local err = await_error(t)
    assert.is_true(async.is_cancelled(err))
    assert.are.equal("cancelled", err.kind)
    assert.are.equal("stop it", err.message)
  end)

  it("uses the message 'task cancelled' when none is given", function()
    local t = async.spawn(function() async.sleep(5) end)
    async.sleep(0)
    t:cancel()
    assert.are.equal("task cancelled", await_error(t).message)
  end)

  it("reaches a running task at its next suspension point", function()
    local reached = {}
    local t = async.spawn(function()
      reached[#reached + 1] = "before"
      async.current():cancel()   -- not suspended yet: nothing happens here
      reached[#reached + 1] = "after cancel"
      async.sleep(0)             -- the next suspension point raises
      reached[#reached + 1] = "never"
    end)
    local err = await_error(t)
    assert.is_true(async.is_cancelled(err))
    assert.are.same({ "before", "after cancel" }, reached)
  end)

  it("never runs the function of a task cancelled before it started", function()
    local ran = false
    local t = async.spawn(function() ran = true end)
    assert.is_true(t:cancel())
    local err = await_error(t)
    assert.is_true(async.is_cancelled(err))
    assert.is_false(ran)
    assert.are.equal("cancelled", t:status())
  end)

  it("lets cleanup run: pcall handlers and <close> variables see the error", function()
    local seen = {}
    local t = async.spawn(function()
      local guard <close> = setmetatable({}, { __close = function(_, e)
        seen.close = e
      end })
      local ok, e = pcall(async.sleep, 5)
      seen.pcall_ok, seen.pcall_err = ok, e
      error(e, 0)
    end)
    async.sleep(0.01)
    t:cancel("bye")
    local err = await_error(t)
    assert.is_false(seen.pcall_ok)
    assert.is_true(async.is_cancelled(seen.pcall_err))
    assert.is_true(async.is_cancelled(seen.close))
    assert.is_true(async.is_cancelled(err))
  end)

  it("is level-triggered: a task that swallows it gets it again at the next suspension", function()
    local caught = 0
    local t = async.spawn(function()
      for _ = 1, 3 do
        local ok, e = pcall(async.sleep, 5)
        if not ok and async.is_cancelled(e) then caught = caught + 1 end
      end
      return "swallowed everything"
    end)
    async.sleep(0.01)
    t:cancel()
    local ok, r = pcall(t.await, t)
    -- every suspension after the cancel raises again, so all three sleeps were interrupted
    assert.are.equal(3, caught)
    -- the task returned normally after swallowing; it must not have slept 3 x 5 s
    if ok then assert.are.equal("swallowed everything", r) else assert.is_true(async.is_cancelled(r)) end
  end)

  it("keeps raising at suspension points even after a swallow, so the task ends", function()
    local t = async.spawn(function()
      pcall(async.sleep, 5)
      async.sleep(5) -- raises again at once
      return "unreachable"
    end)
    async.sleep(0.01)
    local t0 = async.now()
    t:cancel()
    local err = await_error(t)
    assert.is_true(async.is_cancelled(err))
    assert.is_true(async.now() - t0 < 0.5)
  end)

  it("interrupts a task that is awaiting another task", function()
    local target = async.spawn(function() async.sleep(5) end)
    local waiter = async.spawn(function() target:await() end)
    async.sleep(0.01)
    waiter:cancel()
    assert.is_true(async.is_cancelled(await_error(waiter)))
    assert.are.equal("running", target:status())
    target:cancel()
    await_error(target)
  end)

  it("interrupts a task that is awaiting a future", function()
    local f = async.future()
    local t = async.spawn(function() return f:await() end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(await_error(t)))
    assert.is_false(f:done())
  end)

  it("may be requested several times; the task ends once", function()
    local t = async.spawn(function() async.sleep(5) end)
    async.sleep(0)
    assert.is_true(t:cancel("first"))
    t:cancel("second")
    local err = await_error(t)
    assert.is_true(async.is_cancelled(err))
    assert.are.equal("cancelled", t:status())
  end)
end)
