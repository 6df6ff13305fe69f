-- The seed tutorial's first lessons, in lasync: sequential versus concurrent waits, background
-- tasks, and the one pitfall of cooperative concurrency. Run it with `make demo`, or
-- `build/lasync examples/seed.lua`.
local async = require "lasync"

local function fetch_data(id, delay)
  print(("  fetching data for id %d ..."):format(id))
  async.sleep(delay) -- suspends this task only; others run meanwhile
  print(("  data for id %d is in"):format(id))
  return { id = id, data = "sample data for id " .. id }
end

local function timed(title, fn)
  print(title)
  local t0 = async.now()
  local result = fn()
  print(("  -> took %.2f s\n"):format(async.now() - t0))
  return result
end

-- 1. Three calls one after another: each waits for the previous one, about 3 s in all.
timed("1. sequential: three 1 s fetches, one after another", function()
  for id = 1, 3 do fetch_data(id, 1) end
end)

-- 2. The same three calls as tasks, gathered: they wait together, about 1 s in all.
local results = timed("2. concurrent: the same three fetches, gathered", function()
  return async.gather(
    function() return fetch_data(1, 1) end,
    function() return fetch_data(2, 1) end,
    function() return fetch_data(3, 1) end)
end)
print(("   gather returned %d results in order: %s, %s, %s\n"):format(results.n,
  results[1].data, results[2].data, results[3].data))

-- 3. Background tasks: create_task starts work that runs while the caller goes on.
print("3. background tasks with create_task")
local t0 = async.now()
local function job(name, delay)
  async.sleep(delay)
  print(("  [%.1f s] %s finished"):format(async.now() - t0, name))
  return name
end
local slow = async.create_task(job, "slow job (0.6 s)", 0.6)
local fast = async.create_task(job, "fast job (0.2 s)", 0.2)
print("  both jobs started; main goes on with its own work")
async.sleep(0.1)
print(("  [%.1f s] main did its own work"):format(async.now() - t0))
print(("  awaited: %s, then %s\n"):format(fast:await(), slow:await()))

-- 4. The pitfall: a blocking call stalls every task, because one thread runs them all.
local function ticker(label)
  local ticks = 0
  local stop = async.now() + 1
  while async.now() < stop do
    async.sleep(0.1)
    ticks = ticks + 1
  end
  print(("  %s: the ticker ticked %d times in 1 s (10 expected)"):format(label, ticks))
end

timed("4a. pitfall: os.execute('sleep 1') blocks the loop", function()
  local tick = async.spawn(ticker, "while main blocked")
  async.sleep(0) -- let the ticker start
  os.execute("sleep 1") -- blocks the whole thread: the ticker cannot run
  tick:await()
end)

timed("4b. the fix: async.sleep(1) suspends only the main task", function()
  local tick = async.spawn(ticker, "while main slept")
  async.sleep(1)
  tick:await()
end)
