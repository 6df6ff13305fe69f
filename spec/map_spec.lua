package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

describe("async.map", function()
  after_each(assert_clean)

  it("returns fn(item, index) for each item, in input order", function()
    local r = async.map(function(x, i)
      async.sleep(0.001 * (5 - i)) -- later items finish first
      return x * 10 + i
    end, { 1, 2, 3, 4 })
    assert.are.same({ 11, 22, 33, 44, n = 4 }, r)
  end)

  it("keeps nil results in place (field n)", function()
    local r = async.map(function(x) if x > 1 then return x end end, { 1, 2 })
    assert.are.equal(2, r.n)
    assert.is_nil(r[1])
    assert.are.equal(2, r[2])
  end)

  it("keeps at most `concurrency` calls in flight", function()
    local inside, most = 0, 0
    async.map(function()
      inside = inside + 1
      most = math.max(most, inside)
      async.sleep(0.005)
      inside = inside - 1
    end, { 1, 2, 3, 4, 5, 6, 7 }, { concurrency = 3 })
    assert.are.equal(3, most)
  end)

  it("runs them all at once without a limit", function()
    local t0 = async.now()
    async.map(function() async.sleep(0.2) end, { 1, 2, 3, 4, 5 })
    assert.is_true(async.now() - t0 < 0.6) -- one after another would take 1 s
  end)

  it("returns an empty result for no items", function()
    assert.are.same({ n = 0 }, async.map(error, {}))
  end)

  it("raises the first failure and cancels the calls in flight", function()
    local started = 0
    local err = raises(async.map, function(x)
      started = started + 1
      if x == 2 then error("item 2 failed", 0) end
      async.sleep(5)
    end, { 1, 2, 3, 4, 5 }, { concurrency = 2 })
    assert.are.equal("item 2 failed", err)
    assert.is_true(started <= 3)
  end)

  it("with settled = true returns failures as {ok = false, error = e}", function()
    local r = async.map(function(x)
      if x % 2 == 0 then error("even " .. x, 0) end
      return x
    end, { 1, 2, 3 }, { settled = true })
    assert.are.same({ { ok = true, value = 1 }, { ok = false, error = "even 2" },
      { ok = true, value = 3 }, n = 3 }, r)
  end)

  it("calls progress(done, total) after each item", function()
    local calls = {}
    async.map(function() async.sleep(0) end, { "a", "b", "c" }, {
      concurrency = 2,
      progress = function(done, total) calls[#calls + 1] = done .. "/" .. total end,
    })
    assert.are.same({ "1/3", "2/3", "3/3" }, calls)
  end)

  it("with progress = true prints nothing when stderr is not a terminal", function()
    local lasync = os.getenv("LASYNC") or "build/lasync"
    local script, err = os.tmpname(), os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local async = require "lasync"
      local r = async.map(function(x) async.sleep(0.001) return x end, { 1, 2, 3 }, { progress = true })
      assert(r[3] == 3)
    ]])
    f:close()
    assert.is_true(os.execute(lasync .. " " .. script .. " 2>" .. err))
    f = assert(io.open(err))
    assert.are.equal("", f:read("a"))
    f:close()
    os.remove(script)
    os.remove(err)
  end)

  it("cancels the calls in flight when the calling task is cancelled", function()
    local cleaned = 0
    local t = async.spawn(function()
      return async.map(function()
        local _ <close> = setmetatable({}, { __close = function() cleaned = cleaned + 1 end })
        async.sleep(5)
      end, { 1, 2, 3 })
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
    assert.are.equal(3, cleaned)
  end)

  it("checks its arguments", function()
    assert.matches("async.map: bad argument #1", raises(async.map, 42, {}), 1, true)
    assert.matches("async.map: bad argument #2", raises(async.map, print, 42), 1, true)
    assert.matches("concurrency", raises(async.map, print, {}, { concurrency = 0 }), 1, true)
    assert.matches("progress", raises(async.map, print, {}, { progress = "yes" }), 1, true)
  end)
end)
