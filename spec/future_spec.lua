package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

describe("async.future", function()
  after_each(assert_clean)

  it("starts unsettled", function()
    local f = async.future()
    assert.is_false(f:done())
  end)

  it("f:set(...) settles it with values that f:await() returns", function()
    local f = async.future()
    async.spawn(function() async.sleep(0.02); f:set(1, nil, "three") end)
    local r = table.pack(f:await())
    assert.are.same({ 1, nil, "three", n = 3 }, r)
    assert.is_true(f:done())
  end)

  it("f:await() suspends until the future is settled", function()
    local f = async.future()
    async.spawn(function() async.sleep(0.1); f:set("late") end)
    local t0 = async.now()
    assert.are.equal("late", f:await())
    assert.is_true(async.now() - t0 >= 0.1)
  end)

  it("f:fail(err) makes f:await() raise that error, the same value", function()
    local f = async.future()
    local e = { reason = "nope" }
    async.spawn(function() f:fail(e) end)
    local ok, err = pcall(f.await, f)
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
    assert.is_true(f:done())
  end)

  it("f:fail with a string raises that string", function()
    local f = async.future()
    f:fail("plain failure")
    local ok, err = pcall(f.await, f)
    assert.is_false(ok)
    assert.are.equal("plain failure", err)
  end)

  it("returns at once when already settled, and the same values each time", function()
    local f = async.future()
    f:set("v", 2)
    local t0 = async.now()
    local a, b = f:await()
    local c, d = f:await()
    assert.is_true(async.now() - t0 < 0.5)
    assert.are.equal("v", a); assert.are.equal(2, b)
    assert.are.equal("v", c); assert.are.equal(2, d)
  end)

  it("may be set from the main task and from plain Lua code", function()
    local f = async.future()
    coroutine.wrap(function() f:set("from a coroutine") end)()
    assert.are.equal("from a coroutine", f:await())
  end)

  it("lets several tasks await it; they wake in the order they came", function()
    local f = async.future()
    local order = {}
    local ts = {}
    for i = 1, 3 do
      ts[i] = async.spawn(function()
        local v = f:await()
        order[#order + 1] = i
        return v .. i
      end)
    end
    async.sleep(0.01)
    f:set("v")
    for i = 1, 3 do assert.are.equal("v" .. i, ts[i]:await()) end
    assert.are.same({ 1, 2, 3 }, order)
  end)

  it("wakes every awaiting task with the error on f:fail", function()
    local f = async.future()
    local ts = {}
    for i = 1, 2 do ts[i] = async.spawn(function() return f:await() end) end
    async.sleep(0.01)
    f:fail("shared")
    for i = 1, 2 do
      local ok, err = pcall(ts[i].await, ts[i])
      assert.is_false(ok)
      assert.are.equal("shared", err)
    end
  end)

  it("still wakes the other waiters when one of them was cancelled", function()
    local f = async.future()
    local ws = {}
    for i = 1, 3 do ws[i] = async.spawn(function() return f:await() end) end
    async.sleep(0)
    ws[2]:cancel()
    async.sleep(0)
    f:set("v")
    assert.are.equal("v", ws[1]:await())
    local ok, err = pcall(ws[2].await, ws[2])
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    assert.are.equal("v", ws[3]:await())
  end)

  it("is awaitable through async.await", function()
    local f = async.future()
    f:set(42)
    assert.are.equal(42, async.await(f))
  end)

  it("raises when set twice", function()
    local f = async.future()
    f:set(1)
    local ok, err = pcall(f.set, f, 2)
    assert.is_false(ok)
    assert.matches("future:set: the future is already settled", tostring(err), 1, true)
    assert.are.equal(1, f:await())
  end)

  it("raises when failed after being set, or set after being failed", function()
    local f = async.future()
    f:set(1)
    local ok, err = pcall(f.fail, f, "late")
    assert.is_false(ok)
    assert.matches("already settled", tostring(err), 1, true)

    local g = async.future()
    g:fail("first")
    ok, err = pcall(g.set, g, 1)
    assert.is_false(ok)
    assert.matches("already settled", tostring(err), 1, true)
    local ok2, err2 = pcall(g.await, g)
    assert.is_false(ok2)
    assert.are.equal("first", err2)
  end)

  it("leaves nothing pinned when nobody ever settles it", function()
    local f = async.future()
    local t = async.spawn(function() return f:await() end)
    async.sleep(0.01)
    t:cancel()
    pcall(t.await, t)
  end)
end)
