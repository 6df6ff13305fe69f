package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

-- The lock is back where it started: unlocked, nobody in line, and usable.
local function assert_intact(lock)
  assert.is_false(lock:locked())
  assert.are.equal(0, lock:waiting())
  local p = lock:try_acquire()
  assert.is_truthy(p)
  p:release()
end

describe("async.lock", function()
  after_each(assert_clean)

  it("lets one task at a time hold it", function()
    local lock = async.lock()
    local inside, most = 0, 0
    local ts = {}
    for i = 1, 5 do
      ts[i] = async.spawn(function()
        local _ <close> = lock:acquire()
        inside = inside + 1
        most = math.max(most, inside)
        async.sleep(0.005)
        inside = inside - 1
      end)
    end
    async.gather(ts)
    assert.are.equal(1, most)
    assert_intact(lock)
  end)

  it("serves waiters in the order they came", function()
    local lock = async.lock()
    lock:acquire()
    local order, ts = {}, {}
    for i = 1, 4 do
      ts[i] = async.spawn(function()
        local _ <close> = lock:acquire()
        order[#order + 1] = i
      end)
      async.sleep(0)
    end
    lock:release()
    async.gather(ts)
    assert.are.same({ 1, 2, 3, 4 }, order)
    assert_intact(lock)
  end)

  it("raises when released by a task that does not hold it", function()
    local lock = async.lock()
    assert.matches("lock:release: the lock is not locked", raises(lock.release, lock), 1, true)
    local holder = async.spawn(function() lock:acquire(); async.sleep(5) end)
    async.sleep(0)
    assert.is_true(lock:locked())
    assert.matches("lock:release: the lock is held by another task", raises(lock.release, lock), 1,
      true)
    assert.is_true(lock:locked())
    holder:cancel()
    pcall(holder.await, holder)
    -- holder never released: the lock stays with the finished task, as it would in asyncio
    assert.is_true(lock:locked())
  end)

  it("raises when the holder acquires it again (not re-entrant)", function()
    local lock = async.lock()
    local _ <close> = lock:acquire()
    assert.matches("not re-entrant", raises(lock.acquire, lock), 1, true)
  end)

  it("try_acquire returns a permit when unlocked and false otherwise", function()
    local lock = async.lock()
    local p = lock:try_acquire()
    assert.is_truthy(p)
    assert.is_false(lock:try_acquire())
    p:release()
    assert_intact(lock)
  end)

  it("must be used inside a task", function()
    local lock = async.lock()
    local err
    coroutine.wrap(function() err = raises(lock.acquire, lock) end)()
    assert.matches("lock:acquire must be called inside a task", err, 1, true)
  end)

  describe("cancellation at every suspension point", function()
    it("a waiter cancelled in line leaves it; the lock goes to the next", function()
      local lock = async.lock()
      lock:acquire()
      local a = async.spawn(function() lock:acquire(); return "a" end)
      local b = async.spawn(function() local _ <close> = lock:acquire(); return "b" end)
      async.sleep(0)
      a:cancel()
      async.sleep(0)
      assert.are.equal(1, lock:waiting())
      lock:release()
      assert.are.equal("b", b:await())
      assert.is_true(async.is_cancelled(raises(a.await, a)))
      assert_intact(lock)
    end)

    it("a waiter that times out leaves the line", function()
      local lock = async.lock()
      local holder = async.spawn(function() local _ <close> = lock:acquire(); async.sleep(0.05) end)
      async.sleep(0)
      assert.is_true(async.is_timeout(raises(async.timeout, 0.01, lock.acquire, lock)))
      assert.are.equal(0, lock:waiting())
      holder:await()
      assert_intact(lock)
    end)

    it("a waiter handed the lock but cancelled before it resumed passes it on", function()
      local lock = async.lock()
      lock:acquire()
      local a = async.spawn(function() lock:acquire(); return "a" end)
      local b = async.spawn(function() local _ <close> = lock:acquire(); return "b" end)
      async.sleep(0)
      lock:release() -- the lock is a's now...
      a:cancel()     -- ...but a is cancelled before it runs
      assert.are.equal("b", b:await())
      assert.are.equal("cancelled", a:status())
      assert_intact(lock)
    end)

    it("a lock handed to a cancelled waiter with nobody behind it becomes free", function()
      local lock = async.lock()
      lock:acquire()
      local a = async.spawn(function() lock:acquire() end)
      async.sleep(0)
      lock:release()
      a:cancel()
      pcall(a.await, a)
      assert_intact(lock)
    end)

    it("a holder cancelled while holding releases through <close>", function()
      local lock = async.lock()
      local t = async.spawn(function()
        local _ <close> = lock:acquire()
        async.sleep(5)
      end)
      local waiter = async.spawn(function() local _ <close> = lock:acquire(); return "next" end)
      async.sleep(0.01)
      t:cancel()
      assert.are.equal("next", waiter:await())
      assert_intact(lock)
    end)
  end)
end)

describe("a lock's permit", function()
  after_each(assert_clean)

  it("is kept when its release is refused, so a later release by the holder still works", function()
    local lock = async.lock()
    local permit
    local holder = async.spawn(function()
      permit = lock:acquire()
      async.sleep(0.05)
      permit:release()
    end)
    async.sleep(0.01)
    assert.matches("held by another task", raises(permit.release, permit), 1, true)
    holder:await()
    assert.is_false(lock:locked())
  end)
end)
