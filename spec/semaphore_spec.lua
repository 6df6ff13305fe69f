package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

-- The semaphore is back where it started: every permit free, nobody in line.
local function assert_intact(sem, n)
  assert.are.equal(n, sem:available())
  assert.are.equal(0, sem:waiting())
end

describe("async.semaphore", function()
  after_each(assert_clean)

  it("lets at most n tasks hold a permit at once", function()
    local sem = async.semaphore(2)
    local inside, most = 0, 0
    local ts = {}
    for i = 1, 6 do
      ts[i] = async.spawn(function()
        local _ <close> = sem:acquire()
        inside = inside + 1
        most = math.max(most, inside)
        async.sleep(0.01)
        inside = inside - 1
      end)
    end
    async.gather(ts)
    assert.are.equal(2, most)
    assert_intact(sem, 2)
  end)

  it("serves waiters in the order they came", function()
    local sem = async.semaphore(1)
    local held = sem:acquire()
    local order = {}
    local ts = {}
    for i = 1, 4 do
      ts[i] = async.spawn(function()
        sem:acquire()
        order[#order + 1] = i
        sem:release()
      end)
      async.sleep(0)
    end
    held:release()
    async.gather(ts)
    assert.are.same({ 1, 2, 3, 4 }, order)
  end)

  it("does not let a newcomer barge ahead of a waiter", function()
    local sem = async.semaphore(1)
    local held = sem:acquire()
    local waiter = async.spawn(function() sem:acquire(); return "waiter" end)
    async.sleep(0)
    held:release() -- the permit is now the waiter's, though it has not run yet
    assert.is_false(sem:try_acquire())
    assert.are.equal("waiter", waiter:await())
    sem:release()
    assert_intact(sem, 1)
  end)

  it("releases the permit when the <close> variable goes out of scope, also on error", function()
    local sem = async.semaphore(1)
    do
      local _ <close> = sem:acquire()
      assert.are.equal(0, sem:available())
    end
    assert.are.equal(1, sem:available())
    raises(function()
      local _ <close> = sem:acquire()
      error("inside")
    end)
    assert_intact(sem, 1)
  end)

  it("try_acquire returns a permit when one is free and false otherwise", function()
    local sem = async.semaphore(1)
    local p = sem:try_acquire()
    assert.is_truthy(p)
    assert.is_false(sem:try_acquire())
    p:release()
    p:release() -- a permit releases once
    assert_intact(sem, 1)
  end)

  it("raises when released more times than acquired", function()
    local sem = async.semaphore(1)
    local err = raises(sem.release, sem)
    assert.matches("semaphore:release: released more times than acquired", err, 1, true)
  end)

  it("with 0 permits waits until someone releases", function()
    local sem = async.semaphore(0)
    assert.is_false(sem:try_acquire())
    local t = async.spawn(function() sem:acquire(); return "got it" end)
    async.sleep(0.01)
    assert.are.equal("running", t:status())
    local ok = pcall(sem.release, sem)
    assert.is_false(ok) -- bounded: 0 permits may never be released
    t:cancel()
    pcall(t.await, t)
    assert_intact(sem, 0)
  end)

  it("checks its arguments and that acquire runs inside a task", function()
    assert.matches("bad argument #1", raises(async.semaphore, -1), 1, true)
    assert.matches("bad argument #1", raises(async.semaphore, 1.5), 1, true)
    assert.matches("bad argument #1", raises(async.semaphore, "2"), 1, true)
    local sem = async.semaphore(1)
    assert.matches("call it with ':'", raises(sem.acquire), 1, true)
    local err
    coroutine.wrap(function() err = raises(sem.acquire, sem) end)()
    assert.matches("semaphore:acquire must be called inside a task", err, 1, true)
    assert_intact(sem, 1)
  end)

  describe("cancellation at every suspension point", function()
    it("a waiter cancelled in line leaves it; the permit goes to the next", function()
      local sem = async.semaphore(1)
      local held = sem:acquire()
      local a = async.spawn(function() sem:acquire(); return "a" end)
      local b = async.spawn(function() local _ <close> = sem:acquire(); return "b" end)
      async.sleep(0)
      assert.are.equal(2, sem:waiting())
      a:cancel()
      async.sleep(0)
      assert.are.equal(1, sem:waiting())
      held:release()
      assert.are.equal("b", b:await())
      assert.is_true(async.is_cancelled(raises(a.await, a)))
      assert_intact(sem, 1)
    end)

    it("a waiter that times out leaves the line, and nothing is lost", function()
      local sem = async.semaphore(1)
      local held = sem:acquire()
      local err = raises(async.timeout, 0.02, sem.acquire, sem)
      assert.is_true(async.is_timeout(err))
      assert_intact(sem, 0)
      held:release()
      assert_intact(sem, 1)
    end)

    it("a waiter handed a permit but cancelled before it resumed passes it on", function()
      local sem = async.semaphore(1)
      local held = sem:acquire()
      local got = {}
      local a = async.spawn(function() sem:acquire(); got.a = true end)
      local b = async.spawn(function() local _ <close> = sem:acquire(); got.b = true end)
      async.sleep(0)
      held:release() -- hands the permit to a...
      a:cancel()     -- ...which is cancelled in the same turn, before it can run
      b:await()
      assert.is_nil(got.a)
      assert.is_true(got.b)
      assert.are.equal("cancelled", a:status())
      assert_intact(sem, 1)
    end)

    it("a permit handed to a cancelled waiter with nobody behind it becomes free", function()
      local sem = async.semaphore(1)
      local held = sem:acquire()
      local a = async.spawn(function() sem:acquire() end)
      async.sleep(0)
      held:release()
      a:cancel()
      pcall(a.await, a)
      assert_intact(sem, 1)
    end)

    it("a permit handed to a waiter whose timeout fires in the same turn is passed on", function()
      local sem = async.semaphore(1)
      local held = sem:acquire()
      local a = async.spawn(function() return async.timeout(0.02, sem.acquire, sem) end)
      local b = async.spawn(function() local _ <close> = sem:acquire(); return "b" end)
      async.sleep(0)
      -- Release from a timer due at the same moment as a's deadline: whichever comes first,
      -- the permit must end with b, and then be free.
      async.spawn(function() async.sleep(0.02); held:release() end)
      assert.are.equal("b", b:await())
      pcall(a.await, a)
      if a:status() == "done" then sem:release() end -- a got it in time: give it back
      assert_intact(sem, 1)
    end)

    it("a holder cancelled while holding releases through <close>", function()
      local sem = async.semaphore(1)
      local t = async.spawn(function()
        local _ <close> = sem:acquire()
        async.sleep(5)
      end)
      async.sleep(0.01)
      assert.are.equal(0, sem:available())
      t:cancel()
      pcall(t.await, t)
      assert_intact(sem, 1)
    end)

    it("stays fair and intact under a storm of cancellations", function()
      local sem = async.semaphore(2)
      local ts = {}
      for i = 1, 40 do
        ts[i] = async.spawn(function()
          local _ <close> = sem:acquire()
          async.sleep(0.001 * (i % 3))
        end)
      end
      for round = 1, 10 do
        async.sleep(0.001)
        for i = round, 40, 7 do ts[i]:cancel() end
      end
      for _, t in ipairs(ts) do pcall(t.await, t) end
      assert_intact(sem, 2)
    end)
  end)
end)
