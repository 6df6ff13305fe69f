package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

describe("async.event", function()
  after_each(assert_clean)

  it("starts clear", function()
    assert.is_false(async.event():is_set())
  end)

  it("wait() suspends until set(), then every waiter wakes in the order it came", function()
    local ev = async.event()
    local order, ts = {}, {}
    for i = 1, 3 do
      ts[i] = async.spawn(function() ev:wait(); order[#order + 1] = i end)
    end
    async.sleep(0.01)
    assert.are.same({}, order)
    ev:set()
    assert.is_true(ev:is_set())
    async.gather(ts)
    assert.are.same({ 1, 2, 3 }, order)
  end)

  it("wait() returns true at once while the event is set", function()
    local ev = async.event()
    ev:set()
    ev:set() -- setting twice is harmless
    assert.is_true(ev:wait())
  end)

  it("clear() makes later waits suspend again", function()
    local ev = async.event()
    ev:set()
    ev:clear()
    assert.is_false(ev:is_set())
    local t = async.spawn(function() return ev:wait() end)
    async.sleep(0.01)
    assert.are.equal("running", t:status())
    ev:set()
    assert.is_true(t:await())
  end)

  it("a waiter woken by set() returns even if the event is cleared before it runs", function()
    local ev = async.event()
    local t = async.spawn(function() return ev:wait() end)
    async.sleep(0)
    ev:set()
    ev:clear()
    assert.is_true(t:await())
  end)

  it("may be set from plain Lua code, outside any task", function()
    local ev = async.event()
    local t = async.spawn(function() return ev:wait() end)
    async.sleep(0)
    coroutine.wrap(function() ev:set() end)()
    assert.is_true(t:await())
  end)

  it("wait() must be called inside a task", function()
    local ev, err = async.event(), nil
    coroutine.wrap(function() err = raises(ev.wait, ev) end)()
    assert.matches("event:wait must be called inside a task", err, 1, true)
  end)

  describe("cancellation at every suspension point", function()
    it("a cancelled waiter does not stop the others from waking", function()
      local ev = async.event()
      local a = async.spawn(function() return ev:wait() end)
      local b = async.spawn(function() return ev:wait() end)
      async.sleep(0)
      a:cancel()
      async.sleep(0)
      ev:set()
      assert.is_true(b:await())
      assert.is_true(async.is_cancelled(raises(a.await, a)))
    end)

    it("a waiter that times out leaves the event as it was", function()
      local ev = async.event()
      assert.is_true(async.is_timeout(raises(async.timeout, 0.01, ev.wait, ev)))
      assert.is_false(ev:is_set())
      local t = async.spawn(function() return ev:wait() end)
      async.sleep(0)
      ev:set()
      assert.is_true(t:await())
    end)

    it("a waiter woken and cancelled in the same turn raises Cancelled; the event stays set", function()
      local ev = async.event()
      local a = async.spawn(function() return ev:wait() end)
      async.sleep(0)
      ev:set()
      a:cancel()
      assert.is_true(async.is_cancelled(raises(a.await, a)))
      assert.is_true(ev:is_set())
    end)
  end)
end)
