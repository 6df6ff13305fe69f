-- soak part (b): N sleeps in batches of spawned tasks, sampling RSS every SAMPLE sleeps.
--
--   lasync soak/sleep.lua N TASKS PER_TASK SAMPLE
--
-- Each batch spawns TASKS tasks that each sleep PER_TASK times, then gathers them; batches
-- follow one another until N sleeps are done (so tasks, their coroutines and the timer heap
-- are created and released over and over). The sleeps alternate between sleep(0) (the ready
-- queue) and sleep(0.001) (the timer heap); every 64th task also runs its sleeps inside an
-- async.timeout scope that does not expire, and every 256th task is cancelled from a sibling
-- after its first sleep, so a cancellation path runs in every batch. Prints "sample" lines,
-- "wall=", "sleeps=", "cancelled=", "end_rss_kb=" and the async._debug.counts() "count" lines.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local async = require "lasync"
local common = require "common"

local function usage()
  io.stderr:write("usage: lasync soak/sleep.lua N TASKS PER_TASK SAMPLE\n")
  os.exit(2)
end
local n = common.count_arg(arg[1], usage)
local ntasks = common.count_arg(arg[2], usage)
local per_task = common.count_arg(arg[3], usage)
local every = common.count_arg(arg[4], usage)

local sleep, spawn, sample = async.sleep, async.spawn, common.sample
local done, cancelled = 0, 0
local next_sample = every

local function tick()
  done = done + 1
  if done >= next_sample then
    sample(done)
    next_sample = next_sample + every
  end
end

local function sleeper(count, parity)
  for i = 1, count do
    sleep((i + parity) % 2 == 0 and 0 or 0.001)
    tick()
  end
end

local function scoped(count, parity)
  async.timeout(60, sleeper, count, parity)
end

sample(0)
local t0 = async.now()
local remaining = n
while remaining > 0 do
  local batch = {}
  local victims = {}
  local in_batch = 0
  for t = 1, ntasks do
    if remaining <= 0 then break end
    local count = math.min(per_task, remaining)
    remaining = remaining - count
    in_batch = in_batch + 1
    if t % 256 == 0 then
      -- Cancelled after its first sleep by the task spawned after it; its other sleeps are
      -- not made, so they are given back to the budget.
      local victim = spawn(sleeper, count, t)
      victims[#victims + 1] = victim
      remaining = remaining + count - 1
      batch[in_batch] = victim
    elseif t % 64 == 0 then
      batch[in_batch] = spawn(scoped, count, t)
    else
      batch[in_batch] = spawn(sleeper, count, t)
    end
  end
  local killer = spawn(function()
    sleep(0)
    sleep(0) -- every victim is past its first sleep(0)/sleep(0.001) start by now
    for _, v in ipairs(victims) do
      if v:cancel("soak") then cancelled = cancelled + 1 end
    end
  end)
  local settled = async.gather_settled(batch)
  killer:await()
  for i = 1, settled.n or #settled do
    local s = settled[i]
    if not s.ok and not async.is_cancelled(s.error) then
      error("soak/sleep.lua: a task failed: " .. tostring(s.error))
    end
  end
end
local wall = async.now() - t0
collectgarbage("collect")
collectgarbage("collect")
print(("wall=%.3f"):format(wall))
print(("sleeps=%d"):format(done))
print(("cancelled=%d"):format(cancelled))
print(("end_rss_kb=%d"):format(common.rss_kb()))
common.counts(async)
