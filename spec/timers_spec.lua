-- Volume: a million timers through the queue and the heap, and memory back to its baseline.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local function lua_kb()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count")
end

describe("a million timers", function()
  after_each(assert_clean)

  it("fire in order of their deadlines, and memory returns to its baseline", function()
    local base = lua_kb()
    local fired = 0
    local tasks = {}
    -- 10,000 tasks x 100 sleeps: 1,000,000 timers, 10,000 armed at any moment.
    for i = 1, 10000 do
      tasks[i] = async.spawn(function()
        for _ = 1, 100 do
          async.sleep(0.001)
          fired = fired + 1
        end
      end)
    end
    async.gather(tasks)
    tasks = nil
    assert.are.equal(1000000, fired)
    assert.are.equal(0, async._debug.counts().timers)
    local grown = lua_kb() - base
    assert.is_true(grown < 4096, ("Lua memory grew by %.0f KiB"):format(grown))
  end)

  it("arm and clear a million deadlines (async.timeout) without leaking", function()
    local base = lua_kb()
    local tasks = {}
    for i = 1, 100 do
      tasks[i] = async.spawn(function()
        for _ = 1, 10000 do async.timeout(10, async.sleep, 0) end
      end)
    end
    async.gather(tasks)
    tasks = nil
    assert.are.equal(0, async._debug.counts().timers)
    local grown = lua_kb() - base
    assert.is_true(grown < 4096, ("Lua memory grew by %.0f KiB"):format(grown))
  end)
end)
