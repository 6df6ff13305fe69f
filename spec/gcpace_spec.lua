-- The collector's pace (bindings/core/gcpace.c): while each cycle leaves more alive, as in a
-- burst of spawned tasks held for a gather, the pause is raised so the growing set is marked
-- fewer times; once a cycle leaves no more than the one before, it is Lua's default again. A
-- pause the script sets is its own, and a memory cap bounds the raised one.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local sub = require "subprocess"

-- The collector's pause, read without changing it (setpause answers the previous value); as
-- source too, for the scripts run in a process of their own.
local PAUSE_SOURCE = [[
  local function pause()
    local p = collectgarbage("setpause", 200)
    collectgarbage("setpause", p)
    return p
  end
]]
local pause = load(PAUSE_SOURCE .. " return pause")()

local function it_host(name, fn)
  if sub.LASYNC then it(name, fn) else pending(name .. " (needs LASYNC)") end
end

describe("the collector's pace", function()
  after_each(assert_clean)

  it("raises the pause through a burst of held tasks and lowers it after", function()
    -- Whatever came before, cycles that leave the same (a cycle is looked at by the drain after
    -- it, and one that ended before this spec may be looked at first).
    for _ = 1, 3 do
      collectgarbage()
      async.sleep(0)
    end
    assert.are.equal(200, pause())
    -- Enough tasks (of about 200 bytes) to grow the heap past 16 MB and fourfold: cycles of
    -- growth past the 8 MB below which the pause is left alone.
    local n = math.max(100000, math.ceil(collectgarbage("count") * 1024 * 4 / 200))
    local function identity(i) return i end
    local highest = 0
    do -- the tasks and their results are garbage after this block
      local tasks = {}
      for i = 1, n do
        tasks[i] = async.spawn(identity, i)
        highest = math.max(highest, pause())
      end
      assert.are.equal(n, async.gather(tasks).n)
    end
    -- Under stock lua5.4 the allocator is the host's: lasync cannot count what the collector
    -- frees, and leaves the pause alone.
    assert.are.equal(sub.LASYNC and 400 or 200, highest)
    collectgarbage() -- a cycle that leaves far less than the burst's last
    async.sleep(0)
    assert.are.equal(200, pause())
  end)

  it_host("leaves a pause the script set alone", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      collectgarbage("setpause", 160)
      local tasks = {}
      for i = 1, 60000 do tasks[i] = async.spawn(function() return i end) end
      async.gather(tasks)
      print(collectgarbage("setpause", 160))
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal("160\n", out)
  end)

  it_host("keeps a raised pause's threshold under the memory cap", function()
    -- 48 MB of cap, 8 MB held, then tasks: the first cycle of growth (at 16 MB) would set a
    -- threshold of 64 MB at 400. Each change of the pause is seen at the spawn after the cycle
    -- that made it, with the heap then (a little more than what the cycle left: the bound has a
    -- tenth of slack).
    local out, err, status = sub.run_script(PAUSE_SOURCE .. [[
      local async = require "lasync"
      local ballast = ("x"):rep(8 << 20)
      for _ = 1, 3 do
        collectgarbage()
        async.sleep(0)
      end
      local tasks, last, worst, clamped = {}, pause(), 0, false
      for i = 1, 100000 do
        tasks[i] = async.spawn(function() return i end)
        local p = pause()
        if p ~= last and p > 200 then
          local mb = collectgarbage("count") / 1024
          worst = math.max(worst, p / 100 * mb)
          clamped = clamped or p < 400
        end
        last = p
      end
      async.gather(tasks)
      print(#ballast, clamped, worst <= 48 * 1.1)
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=48; " })
    assert.are.equal(0, status, err)
    assert.are.equal(("%d\ttrue\ttrue\n"):format(8 << 20), out)
  end)
end)
