package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

local function after(s, v) return async.spawn(function() async.sleep(s); return v end) end
local function failing_after(s, e) return async.spawn(function() async.sleep(s); error(e, 0) end) end

describe("async.wait", function()
  after_each(assert_clean)

  it("by default waits for all and returns them as done, nothing pending", function()
    local ts = { after(0.02, 1), failing_after(0.01, "x"), after(0, 3) }
    local done, pending = async.wait(ts)
    assert.are.same(ts, done)
    assert.are.same({}, pending)
    pcall(ts[2].result, ts[2])
  end)

  it("with first_completed returns as soon as one finishes", function()
    local slow, fast = after(5, "slow"), after(0.01, "fast")
    local t0 = async.now()
    local done, pending = async.wait({ slow, fast }, { return_when = "first_completed" })
    assert.is_true(async.now() - t0 < 1)
    assert.are.same({ fast }, done)
    assert.are.same({ slow }, pending)
    slow:cancel()
  end)

  it("with first_error returns at the first failure, or when all are done", function()
    local slow, bad = after(5, "slow"), failing_after(0.01, "bad")
    local done, pending = async.wait({ slow, bad }, { return_when = "first_error" })
    assert.are.same({ bad }, done)
    assert.are.same({ slow }, pending)
    assert.are.equal("bad", raises(bad.result, bad))
    slow:cancel()

    local a, b = after(0.01, 1), after(0.02, 2)
    done, pending = async.wait({ a, b }, { return_when = "first_error" })
    assert.are.same({ a, b }, done)
    assert.are.same({}, pending)
  end)

  it("returns what it has when the timeout passes, without raising", function()
    local slow, fast = after(5, "slow"), after(0.01, "fast")
    local t0 = async.now()
    local done, pending = async.wait({ slow, fast }, { timeout = 0.05 })
    assert.is_true(async.now() - t0 < 1)
    assert.are.same({ fast }, done)
    assert.are.same({ slow }, pending)
    assert.are.equal("running", slow:status()) -- the pending tasks are not cancelled
    slow:cancel()
  end)

  it("returns at once for tasks already finished, and for none", function()
    local t = after(0, "v")
    t:await()
    local done, pending = async.wait({ t }, { return_when = "first_completed" })
    assert.are.same({ t }, done)
    done, pending = async.wait({})
    assert.are.same({}, done)
    assert.are.same({}, pending)
  end)

  it("leaves the tasks running when the waiting task is cancelled", function()
    local slow = after(0.05, "slow")
    local waiter = async.spawn(function() return async.wait({ slow }) end)
    async.sleep(0.01)
    waiter:cancel()
    assert.is_true(async.is_cancelled(raises(waiter.await, waiter)))
    assert.are.equal("slow", slow:await())
  end)

  it("checks its arguments", function()
    assert.matches("async.wait: bad argument #1", raises(async.wait, 42), 1, true)
    assert.matches("item 1 is a function", raises(async.wait, { print }), 1, true)
    assert.matches("return_when", raises(async.wait, {}, { return_when = "any" }), 1, true)
  end)
end)

describe("async.as_completed", function()
  after_each(assert_clean)

  it("yields the tasks in the order they finish", function()
    local ts = { after(0.03, "c"), after(0.01, "a"), after(0.02, "b") }
    local order = {}
    for t in async.as_completed(ts) do order[#order + 1] = t:result() end
    assert.are.same({ "a", "b", "c" }, order)
  end)

  it("yields failed tasks too, and tasks already finished first", function()
    local done = after(0, "done")
    done:await()
    local ts = { failing_after(0.01, "bad"), done }
    local seen = {}
    for t in async.as_completed(ts) do seen[#seen + 1] = t end
    assert.are.same({ done, ts[1] }, seen)
    assert.are.equal("bad", raises(ts[1].result, ts[1]))
  end)

  it("stops watching when the loop is left early, leaving the tasks running", function()
    local slow = after(0.05, "slow")
    for t in async.as_completed({ after(0.01, "fast"), slow }) do
      assert.are.equal("fast", t:result())
      break
    end
    assert.are.equal("running", slow:status())
    assert.are.equal("slow", slow:await())
  end)

  it("skips no task when a cancellation is caught while it waits", function()
    local ts = { after(0.03, "a"), after(0.05, "b") }
    local next_done, _, _, watching = async.as_completed(ts)
    local _ <close> = watching
    local ok, err = pcall(async.timeout, 0.01, next_done)
    assert.is_false(ok)
    assert.is_true(async.is_timeout(err), tostring(err))
    assert.are.equal(ts[1], next_done())
    assert.are.equal(ts[2], next_done())
    assert.is_nil(next_done())
  end)

  it("hands each task to one of two tasks sharing the iterator", function()
    local ts = { after(0.01, 1), after(0.02, 2), after(0.03, 3) }
    local next_done, _, _, watching = async.as_completed(ts)
    local _ <close> = watching
    local got = {}
    local function take() for t in next_done do got[#got + 1] = t:result() end end
    local ok, err = pcall(async.timeout, 2, async.gather, take, take)
    assert.is_true(ok, tostring(err))
    table.sort(got)
    assert.are.same({ 1, 2, 3 }, got)
  end)
end)

describe("async.first", function()
  after_each(assert_clean)

  it("returns all the values of the first to succeed and cancels the others", function()
    local slow
    local a, b = async.first(function() async.sleep(5) end,
      function() async.sleep(0.01); return "fast", 2 end)
    assert.are.equal("fast", a)
    assert.are.equal(2, b)
  end)

  it("skips failures while one may still succeed", function()
    local loser = after(5, "never")
    local v = async.first({ failing_after(0.01, "early failure"), after(0.03, "late success"),
      loser })
    assert.are.equal("late success", v)
    assert.are.equal("cancelled", loser:status())
  end)

  it("raises the first error when all fail, the later ones attached", function()
    local err = raises(async.first, function() async.sleep(0.01); error({ "one" }) end,
      function() async.sleep(0.02); error("two", 0) end)
    assert.are.equal("one", err[1])
    assert.are.same({ "two" }, err.others)
  end)

  it("cancels every contender when the calling task is cancelled", function()
    local contender
    local t = async.spawn(function()
      contender = async.spawn(async.sleep, 5)
      return async.first(contender, function() async.sleep(5) end)
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
    assert.are.equal("cancelled", contender:status())
  end)

  it("checks its arguments", function()
    assert.matches("async.first: no tasks", raises(async.first), 1, true)
    assert.matches("async.first: bad argument #2", raises(async.first, print, 42), 1, true)
  end)
end)

describe("waiting on the calling task itself", function()
  after_each(assert_clean)

  it("is refused by first, wait and as_completed, as by gather (it would deadlock)", function()
    local me = async.current()
    assert.matches("async.first: a task cannot wait for itself", raises(async.first, me), 1, true)
    assert.matches("async.wait: a task cannot wait for itself", raises(async.wait, { me }), 1, true)
    assert.matches("async.as_completed: a task cannot wait for itself",
      raises(async.as_completed, { me }), 1, true)
  end)
end)
