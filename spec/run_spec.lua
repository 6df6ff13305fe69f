package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

describe("async.run inside a task", function()
  after_each(assert_clean)

  it("runs fn with its arguments and returns all its values", function()
    local r = table.pack(async.run(function(a, b) async.sleep(0.01); return b, nil, a end, 1, 2))
    assert.are.same({ 2, nil, 1, n = 3 }, r)
  end)

  it("runs fn as a child task, not in the calling task", function()
    local me = async.current()
    local inside = async.run(function() return async.current() end)
    assert.is_not_nil(inside)
    assert.are_not.equal(me, inside)
    assert.are.equal("done", inside:status())
  end)

  it("waits for fn to finish", function()
    local t0 = async.now()
    async.run(async.sleep, 0.1)
    assert.is_true(async.now() - t0 >= 0.1)
  end)

  it("raises fn's error, the same value", function()
    local e = {}
    local ok, err = pcall(async.run, function() error(e) end)
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
  end)

  it("lets other tasks run meanwhile", function()
    local ran = false
    local t = async.spawn(function() ran = true end)
    async.run(async.sleep, 0.01)
    assert.is_true(ran)
    t:await()
  end)

  it("raises a clear error for a non-function", function()
    local ok, err = pcall(async.run, 5)
    assert.is_false(ok)
    assert.matches("async.run: bad argument #1 'fn' (function expected, got number)", tostring(err), 1, true)
    ok, err = pcall(async.run)
    assert.is_false(ok)
    assert.matches("async.run: bad argument #1 'fn' (function expected, got nil)", tostring(err), 1, true)
  end)

  it("inside a task, cancels its child when the caller is cancelled, and awaits its cleanup", function()
    local cleaned = false
    local t = async.spawn(function()
      return async.run(function()
        local guard <close> = setmetatable({}, { __close = function() cleaned = true end })
        async.sleep(10)
      end)
    end)
    async.sleep(0.02)
    t:cancel()
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    assert.is_true(cleaned)
  end)

  it("inside a table.sort comparator names async.run, at the caller's line", function()
    local ok, err = pcall(table.sort, { 3, 2, 1 }, function(a, b)
      async.run(function() end)
      return a < b
    end)
    assert.is_false(ok)
    assert.matches("^spec/run_spec.lua:%d+: async.run cannot suspend here", err)
    assert.are.equal(0, async._debug.counts().tasks)
  end)
end)
