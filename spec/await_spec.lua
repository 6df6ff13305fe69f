package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

describe("awaiting a task", function()
  after_each(assert_clean)

  it("waits for the task and returns all its return values", function()
    local t = async.spawn(function() async.sleep(0.05); return 1, nil, "three" end)
    local r = table.pack(t:await())
    assert.are.equal(3, r.n)
    assert.are.same({ 1, nil, "three", n = 3 }, r)
  end)

  it("returns no values for a task that returned none", function()
    local t = async.spawn(function() end)
    assert.are.equal(0, select("#", t:await()))
  end)

  it("works the same through async.await(task)", function()
    local t = async.spawn(function() return "a", "b" end)
    local a, b = async.await(t)
    assert.are.equal("a", a)
    assert.are.equal("b", b)
  end)

  it("raises the task's error", function()
    local t = async.spawn(function() async.sleep(0.01); error("boom", 0) end)
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.are.equal("boom", err)
  end)

  it("returns at once for a task that has already finished", function()
    local t = async.spawn(function() return 7 end)
    async.sleep(0.02)
    assert.is_true(t:done())
    local t0 = async.now()
    assert.are.equal(7, t:await())
    assert.is_true(async.now() - t0 < 0.5)
  end)

  it("gives the same result when awaited twice", function()
    local tbl = {}
    local t = async.spawn(function() return tbl, 2 end)
    local a1, b1 = t:await()
    local a2, b2 = t:await()
    assert.are.equal(tbl, a1)
    assert.are.equal(tbl, a2)
    assert.are.equal(2, b1)
    assert.are.equal(2, b2)
  end)

  it("raises the same error when a failed task is awaited twice", function()
    local e = { "my error" }
    local t = async.spawn(function() error(e) end)
    local ok1, err1 = pcall(t.await, t)
    local ok2, err2 = pcall(t.await, t)
    assert.is_false(ok1)
    assert.is_false(ok2)
    assert.is_true(rawequal(e, err1))
    assert.is_true(rawequal(e, err2))
  end)

  it("lets several tasks await the same task", function()
    local target = async.spawn(function() async.sleep(0.05); return "v" end)
    local waiters = {}
    for i = 1, 3 do waiters[i] = async.spawn(function() return target:await() .. i end) end
    for i = 1, 3 do assert.are.equal("v" .. i, waiters[i]:await()) end
  end)

  it("does not cancel the awaited task when the awaiting task is cancelled", function()
    local target = async.spawn(function() async.sleep(0.05); return "still here" end)
    local waiter = async.spawn(function() return target:await() end)
    async.sleep(0.01)
    waiter:cancel()
    local ok, err = pcall(waiter.await, waiter)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    assert.are.equal("still here", target:await())
  end)

  it("accepts a future and any object with an await method", function()
    local f = async.future()
    async.spawn(function() f:set("from future") end)
    assert.are.equal("from future", async.await(f))
    local obj = { await = function(self, ...) return "custom", self end }
    local a, b = async.await(obj)
    assert.are.equal("custom", a)
    assert.are.equal(obj, b)
  end)
end)
