package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

describe("async.sleep", function()
  after_each(assert_clean)

  it("suspends the calling task for at least the given number of seconds", function()
    local t0 = async.now()
    async.sleep(0.1)
    assert.is_true(async.now() - t0 >= 0.1)
  end)

  it("returns nothing", function()
    assert.are.equal(0, select("#", async.sleep(0)))
  end)

  it("accepts integer and fractional seconds", function()
    local t0 = async.now()
    async.sleep(0)
    async.sleep(0.001)
    async.sleep(1 // 10)
    assert.is_true(async.now() - t0 < 0.5)
  end)

  it("blocks nothing else: sleeping tasks run side by side", function()
    local t0 = async.now()
    local tasks = {}
    for i = 1, 3 do tasks[i] = async.spawn(function() async.sleep(0.2); return i end) end
    for i = 1, 3 do assert.are.equal(i, tasks[i]:await()) end
    local elapsed = async.now() - t0
    assert.is_true(elapsed >= 0.2)
    assert.is_true(elapsed < 0.45, "three 0.2 s sleeps took " .. elapsed .. " s")
  end)

  it("with 0 lets other ready tasks run first", function()
    local ran = false
    local t = async.spawn(function() ran = true end)
    assert.is_false(ran)
    async.sleep(0)
    assert.is_true(ran)
    t:await()
  end)

  it("with 0 takes turns fairly between tasks", function()
    local log = {}
    local function worker(name)
      for i = 1, 3 do log[#log + 1] = name .. i; async.sleep(0) end
    end
    local a, b = async.spawn(worker, "a"), async.spawn(worker, "b")
    a:await(); b:await()
    assert.are.same({ "a1", "b1", "a2", "b2", "a3", "b3" }, log)
  end)

  it("wakes shorter sleeps before longer ones", function()
    local order = {}
    local ts = {}
    for _, d in ipairs({ 0.15, 0.05, 0.1 }) do
      ts[#ts + 1] = async.spawn(function() async.sleep(d); order[#order + 1] = d end)
    end
    for _, t in ipairs(ts) do t:await() end
    assert.are.same({ 0.05, 0.1, 0.15 }, order)
  end)

  it("with math.huge sleeps until the task is cancelled", function()
    local t = async.spawn(function() async.sleep(math.huge) end)
    async.sleep(0.05)
    assert.are.equal("running", t:status())
    assert.is_true(t:cancel())
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
  end)

  it("treats a bare coroutine.yield() inside a task like sleep(0)", function()
    local ran = false
    local t = async.spawn(function() ran = true end)
    coroutine.yield()
    assert.is_true(ran)
    t:await()
  end)

  it("treats a bare coroutine.yield() as a suspension point where cancellation arrives", function()
    -- Bounded, so a runtime that ignores the cancellation fails this test instead of hanging.
    local yields = 0
    local t = async.spawn(function()
      for _ = 1, 2000 do coroutine.yield(); yields = yields + 1 end
      return "never cancelled"
    end)
    async.sleep(0)
    async.sleep(0)
    assert.is_true(t:cancel())
    local ok, err = pcall(t.await, t)
    assert.is_false(ok, "the task ran to the end after cancel(); it yielded " .. yields .. " times")
    assert.is_true(async.is_cancelled(err))
    assert.is_true(yields < 10)
  end)
end)

describe("async.now", function()
  after_each(assert_clean)

  it("is a float number of seconds", function()
    local n = async.now()
    assert.are.equal("number", type(n))
    assert.are.equal("float", math.type(n))
  end)

  it("is monotonic and advances with sleep", function()
    local a = async.now()
    local b = async.now()
    assert.is_true(b >= a)
    async.sleep(0.05)
    local c = async.now()
    assert.is_true(c - a >= 0.05)
    assert.is_true(c - a < 1)
  end)

  it("treats an enormous finite sleep like math.huge: it lasts until cancelled", function()
    for _, s in ipairs({ 2e10, 2 ^ 53, 1e308 }) do
      local t = async.spawn(async.sleep, s)
      async.sleep(0.02)
      assert.is_false(t:done(), "sleep(" .. s .. ") ended at once")
      t:cancel()
      pcall(t.await, t)
    end
    local ok, v = pcall(async.timeout, 2e10, function() async.sleep(0.01) return "in time" end)
    assert.is_true(ok)
    assert.are.equal("in time", v)
  end)
end)
