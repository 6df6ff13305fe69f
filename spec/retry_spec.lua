package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

describe("async.retry", function()
  after_each(assert_clean)

  it("returns all of fn's values once it succeeds, passing the attempt number", function()
    local seen = {}
    local a, b = async.retry(function(attempt)
      seen[#seen + 1] = attempt
      if attempt < 3 then error("flaky", 0) end
      return "ok", attempt
    end, { backoff = 0.001 })
    assert.are.equal("ok", a)
    assert.are.equal(3, b)
    assert.are.same({ 1, 2, 3 }, seen)
  end)

  it("raises the last error once every attempt has failed", function()
    local n = 0
    local err = raises(async.retry, function(attempt)
      n = n + 1
      error("failure " .. attempt, 0)
    end, { attempts = 4, backoff = 0.001 })
    assert.are.equal("failure 4", err)
    assert.are.equal(4, n)
  end)

  it("backs off exponentially, capped by max_delay", function()
    local times = {}
    pcall(async.retry, function()
      times[#times + 1] = async.now()
      error("x", 0)
    end, { attempts = 4, backoff = 0.05, max_delay = 0.06, jitter = false })
    local gaps = {}
    for i = 2, #times do gaps[#gaps + 1] = times[i] - times[i - 1] end
    assert.is_true(gaps[1] >= 0.05)
    assert.is_true(gaps[2] >= 0.06) -- 0.1, capped
    assert.is_true(gaps[3] >= 0.06 and gaps[3] < 0.15) -- 0.2, capped
  end)

  it("adds jitter: each delay lies between half and all of the backoff", function()
    local times = {}
    pcall(async.retry, function()
      times[#times + 1] = async.now()
      error("x", 0)
    end, { attempts = 2, backoff = 0.04 })
    local gap = times[2] - times[1]
    assert.is_true(gap >= 0.02 and gap < 0.3)
  end)

  it("stops at once when retry_if says no", function()
    local n = 0
    local err = raises(async.retry, function()
      n = n + 1
      error({ status = 404 })
    end, { backoff = 0.001, retry_if = function(e) return e.status >= 500 end })
    assert.are.equal(404, err.status)
    assert.are.equal(1, n)
  end)

  it("never retries a cancellation", function()
    local n = 0
    local t = async.spawn(function()
      return async.retry(function() n = n + 1; async.sleep(5) end, { backoff = 0.001 })
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
    assert.are.equal(1, n)
  end)

  it("is cancelled while it sleeps between attempts", function()
    local t = async.spawn(function()
      return async.retry(function() error("x", 0) end, { backoff = 5 })
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
  end)

  it("checks its arguments", function()
    assert.matches("async.retry: bad argument #1", raises(async.retry, 42), 1, true)
    assert.matches("attempts", raises(async.retry, print, { attempts = 0 }), 1, true)
    assert.matches("retry_if", raises(async.retry, print, { retry_if = 1 }), 1, true)
  end)
end)

describe("async.retry's backoff", function()
  after_each(assert_clean)

  it("keeps a zero backoff zero past a thousand attempts (0 * 2^1100 is NaN)", function()
    local calls = 0
    local err = select(2, pcall(async.retry, function()
      calls = calls + 1
      error("transient", 0)
    end, { attempts = 1100, backoff = 0 }))
    assert.are.equal("transient", err)
    assert.are.equal(1100, calls)
  end)
end)
