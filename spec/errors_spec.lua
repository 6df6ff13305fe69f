package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local function failure_of(fn, ...)
  local t = async.spawn(fn, ...)
  local ok, err = pcall(t.await, t)
  assert.is_false(ok, "expected the task to fail")
  return err
end

local function cancelled_error(msg)
  local t = async.spawn(async.sleep, 5)
  async.sleep(0)
  t:cancel(msg)
  local ok, err = pcall(t.await, t)
  assert.is_false(ok)
  return err
end

describe("Cancelled errors", function()
  after_each(assert_clean)

  it("have kind 'cancelled' and the cancel message", function()
    local err = cancelled_error("shutting down")
    assert.are.equal("cancelled", err.kind)
    assert.are.equal("shutting down", err.message)
  end)

  it("are recognised by async.is_cancelled and not by async.is_timeout", function()
    local err = cancelled_error()
    assert.is_true(async.is_cancelled(err))
    assert.is_false(async.is_timeout(err))
  end)

  it("print as '<kind>: <message>'", function()
    assert.are.equal("cancelled: shutting down", tostring(cancelled_error("shutting down")))
    assert.are.equal("cancelled: task cancelled", tostring(cancelled_error()))
  end)
end)

describe("Timeout errors", function()
  after_each(assert_clean)

  local function timeout_error()
    local ok, err = pcall(async.timeout, 0.01, async.sleep, 5)
    assert.is_false(ok)
    return err
  end

  it("have kind 'timeout', a message and the seconds", function()
    local err = timeout_error()
    assert.are.equal("timeout", err.kind)
    assert.are.equal("string", type(err.message))
    assert.is_true(#err.message > 0)
    assert.are.equal(0.01, err.seconds)
  end)

  it("are recognised by async.is_timeout and not by async.is_cancelled", function()
    local err = timeout_error()
    assert.is_true(async.is_timeout(err))
    assert.is_false(async.is_cancelled(err))
  end)

  it("print as 'timeout: <message>'", function()
    local err = timeout_error()
    assert.are.equal("timeout: " .. err.message, tostring(err))
  end)
end)

describe("async.is_cancelled and async.is_timeout", function()
  after_each(assert_clean)

  it("are false for anything that is not such an error", function()
    for _, v in ipairs({ "cancelled", "timeout", 1, true, {}, { kind = "cancelled" }, { kind = "timeout" },
                         function() end }) do
      assert.is_false(async.is_cancelled(v))
      assert.is_false(async.is_timeout(v))
    end
    assert.is_false(async.is_cancelled(nil))
    assert.is_false(async.is_timeout(nil))
  end)
end)

describe("async.error", function()
  after_each(assert_clean)

  it("makes an error object of a kind, with a message and extra fields", function()
    local e = async.error("timeout", "too slow", { seconds = 3 })
    assert.are.equal("timeout", e.kind)
    assert.are.equal("too slow", e.message)
    assert.are.equal(3, e.seconds)
    assert.is_true(async.is_timeout(e))
    assert.are.equal("timeout: too slow", tostring(e))
  end)
end)

describe("plain errors raised in a task", function()
  after_each(assert_clean)

  it("stay the same string when awaited", function()
    assert.are.equal("x", failure_of(function() error("x", 0) end))
  end)

  it("keep the position Lua added to a string error", function()
    local err = failure_of(function() error("with position") end)
    assert.are.equal("string", type(err))
    assert.matches("errors_spec.lua:%d+: with position$", err)
  end)

  it("stay the very same table (rawequal) when awaited", function()
    local e = setmetatable({ code = 7 }, { __tostring = function() return "custom" end })
    local err = failure_of(function() error(e) end)
    assert.is_true(rawequal(e, err))
    assert.are.equal("custom", tostring(err))
  end)

  it("stay the same value for non-string, non-table errors", function()
    assert.are.equal(42, failure_of(function() error(42) end))
    assert.are.equal(false, failure_of(function() error(false) end))
  end)

  it("are not mistaken for Cancelled or Timeout", function()
    local err = failure_of(function() error("cancelled: task cancelled", 0) end)
    assert.is_false(async.is_cancelled(err))
    assert.is_false(async.is_timeout(err))
  end)

  it("stay plain when raised through several awaits", function()
    local e = {}
    local inner = async.spawn(function() error(e) end)
    local outer = async.spawn(function() return inner:await() end)
    local ok, err = pcall(outer.await, outer)
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
  end)

  it("stay plain through gather", function()
    local e = {}
    local ok, err = pcall(async.gather, function() error(e) end)
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
  end)
end)
