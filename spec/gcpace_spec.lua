-- The collector's pace (bindings/core/gcpace.c): after a cycle that ended in a burst of spawned
-- tasks held for a gather (or of the coroutines of tasks that suspend), the next cycle's
-- threshold is moved out, so the growing set is marked fewer times. A collector the script tuned
-- is left alone. (The module form never paces: its allocator is the host's.)
package.path = "spec/support/?.lua;" .. package.path
local assert_clean = require "clean"
local sub = require "subprocess"

local function it_host(name, fn)
  if sub.LASYNC then it(name, fn) else pending(name .. " (needs LASYNC)") end
end

-- Counts the collector's cycles in `cycles`: a sentinel of the script's own, a __gc that makes
-- the next one.
local CYCLES = [[
    local cycles = 0
    local function arm() setmetatable({}, { __gc = function() cycles = cycles + 1; arm() end }) end
    arm()
]]

-- A script that spawns n tasks held for a gather, counting the collector's cycles that end with
-- 8 MB or more in the heap, after `setup`.
local function burst_script(n, setup)
  return ([[
    local async = require "lasync"
    %s
    %s
    local tasks, seen, big = {}, cycles, 0
    for i = 1, %d do
      tasks[i] = async.spawn(function() return i end)
      if cycles ~= seen then
        seen = cycles
        if collectgarbage("count") >= 8 * 1024 then big = big + 1 end
      end
    end
    print(big, async.gather(tasks).n, collectgarbage("generational"))
  ]]):format(setup, CYCLES, n)
end

-- Spawns n tasks that sleep, and counts the cycles of the gather, as the tasks start and take a
-- fresh coroutine each (the spawn loop makes ~200 bytes a task, the coroutines ~1 KB).
local function sleepers_cycles(n, setup)
  local out, err, status = sub.run_script(([[
    local async = require "lasync"
    %s
    %s
    local function sleeper() async.sleep(0.01) end
    local tasks = {}
    for i = 1, %d do tasks[i] = async.spawn(sleeper) end
    local before = cycles
    print(async.gather(tasks).n, cycles - before)
  ]]):format(setup, CYCLES, n), nil, { timeout = 120 })
  assert.are.equal(0, status, err)
  local count, cycles = out:match("^(%d+)\t(%d+)\n$")
  assert.are.equal(tostring(n), count, out)
  return tonumber(cycles)
end

-- Makes the heap peak at 25 MB, lets it go, then keeps 13 MB alive and makes garbage,
-- yielding every 256 tables; prints the heap's highest before and while making garbage (KiB).
local function churn_peaks(setup)
  local out, err, status = sub.run_script(([[
    local async = require "lasync"
    %s
    local peak = 0
    local function note()
      local kb = collectgarbage("count")
      if kb > peak then peak = kb end
    end
    local function fill(t, n)
      for i = 1, n do
        t[i] = { i, i, i }
        if i %% 256 == 0 then note() end
      end
      return t
    end
    local big = fill({}, 208000)
    big = nil
    collectgarbage()
    local before = peak
    peak = 0
    local live = fill({}, 110000)
    for i = 1, 2000000 do
      local _ = { i, i, i }
      if i %% 256 == 0 then
        note()
        async.sleep(0)
      end
    end
    print(math.floor(before), math.floor(peak), #live)
  ]]):format(setup), nil, { timeout = 120 })
  assert.are.equal(0, status, err)
  local before, churning = out:match("^(%d+)\t(%d+)\t110000\n$")
  assert.is_string(before, out)
  return tonumber(before), tonumber(churning)
end

local function run_burst(setup)
  local out, err, status = sub.run_script(burst_script(300000, setup), nil, { timeout = 120 })
  assert.are.equal(0, status, err)
  local big, n, mode = out:match("^(%d+)\t(%d+)\t(%a+)\n$")
  assert.are.equal("300000", n, out)
  return tonumber(big), mode
end

describe("the collector's pace", function()
  after_each(assert_clean)

  it_host("marks a burst of held tasks in fewer cycles than Lua's own pace", function()
    -- 300k tasks, about 100 MB: Lua's pause (200) makes a cycle per doubling from 8 MB on.
    -- collectgarbage("incremental", 204) is a script's own tuning: no pacing, Lua's pace.
    local paced = run_burst("")
    local own = run_burst('collectgarbage("incremental", 204)')
    assert.is_true(paced < own, ("%d cycles paced, %d at Lua's pace"):format(paced, own))
  end)

  it_host("marks the coroutines of a burst of sleeping tasks in fewer cycles", function()
    -- 150k sleepers, about 200 MB once all have started: at Lua's pace the gather's drain runs
    -- three cycles as the coroutines are made; paced with them, two.
    local paced = sleepers_cycles(150000, "")
    local own = sleepers_cycles(150000, 'collectgarbage("incremental", 204)')
    assert.is_true(paced < own, ("%d cycles paced, %d at Lua's pace"):format(paced, own))
  end)

  it_host("keeps a heap that ebbs under the peak it once had", function()
    -- 13 MB alive: Lua's pause lets the heap reach 27 MB before a cycle, past the 25 MB peak;
    -- held under that peak (a pause of 175 or more is left), the heap takes no new memory.
    local before, paced = churn_peaks("")
    local _, own = churn_peaks('collectgarbage("incremental", 204)')
    assert.is_true(paced <= before, ("peak %d KiB, then %d KiB paced"):format(before, paced))
    assert.is_true(own > before * 1.04,
      ("peak %d KiB, then %d KiB at Lua's pace"):format(before, own))
  end)

  it_host("leaves generational mode as the script chose it", function()
    -- Pacing asks the mode by switching to incremental (the answer is the mode before) and
    -- switches back: the script's last call still finds generational mode.
    local _, mode = run_burst('collectgarbage("generational")')
    assert.are.equal("generational", mode)
  end)

  it_host("makes a new sentinel when one is lost (its __gc never ran)", function()
    -- In this process: under gc_stress's pause or generational mode, pacing stops for good at
    -- the first spawns that see it (after timers_spec, say), so there is nothing to look at.
    if os.getenv("LASYNC_GC_STRESS") then
      return pending("the stress helper tunes the collector: no pacing to look at")
    end
    local async = require "lasync"
    -- The sentinels sit as keys of a weak-keyed table in the registry.
    local slot
    for _, v in pairs(debug.getregistry()) do
      local mt = type(v) == "table" and getmetatable(v)
      local key = mt and mt ~= v and rawget(mt, "__mode") == "k" and next(v)
      if type(key) == "userdata" and getmetatable(key) and getmetatable(key).__gc then slot = v end
    end
    assert.is_table(slot)
    debug.setmetatable((next(slot)), nil) -- as when its finalizer cannot start
    for _ = 1, 3 do
      collectgarbage() -- frees it; the drain after finds the table empty
      async.sleep(0)
    end
    local fresh = next(slot)
    assert.are.equal("userdata", type(fresh))
    assert.is_function(getmetatable(fresh).__gc)
  end)
end)
