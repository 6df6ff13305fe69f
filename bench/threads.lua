-- The thread-pool workloads in lasync (issue 10), each printing wall=<seconds>:
--   lasync bench/threads.lua jobs N INFLIGHT   N jobs returning their argument, INFLIGHT at once
--   lasync bench/threads.lua cpu SECONDS       two CPU jobs of SECONDS each, side by side
--   lasync bench/threads.lua table BYTES       a table of about BYTES sent to a worker and back
-- bench/threads.py does the same with Python's asyncio.to_thread.
local async = require "lasync"

local mode = arg[1]

local function identity(x) return x end

local function count(n) local x = 0 for i = 1, n do x = x + i end return x end

-- A count that takes about `seconds` on one core, measured on the loop's thread.
local function calibrate(seconds)
  local n = 1000000
  while true do
    local took = math.huge
    for _ = 1, 3 do -- the quickest of three: a loaded machine only ever makes it slower
      local t0 = async.now()
      count(n)
      took = math.min(took, async.now() - t0)
    end
    if took > 0.05 then return math.floor(n * seconds / took) end
    n = n * 2
  end
end

local function warm() -- every worker started and its state made, outside the timing
  local tasks = {}
  for i = 1, async.thread.default:size() do tasks[i] = async.spawn(async.to_thread, count, 1e5) end
  async.gather(tasks)
end

async.run(function()
  if mode == "jobs" then
    local n, inflight = tonumber(arg[2]), tonumber(arg[3])
    warm()
    local taken = 0
    local function worker()
      while taken < n do
        taken = taken + 1
        local i = taken
        assert(async.to_thread(identity, i) == i)
      end
    end
    local t0 = async.now()
    local workers = {}
    for i = 1, inflight do workers[i] = async.spawn(worker) end
    async.gather(workers)
    local wall = async.now() - t0
    print(("jobs=%d inflight=%d per_job_us=%.2f"):format(n, inflight, wall / n * 1e6))
    print(("wall=%.6f"):format(wall))
  elseif mode == "cpu" then
    local seconds = tonumber(arg[2])
    local n = calibrate(seconds)
    warm()
    local t0 = async.now()
    async.gather(async.spawn(async.to_thread, count, n), async.spawn(async.to_thread, count, n))
    local wall = async.now() - t0
    t0 = async.now()
    count(n)
    print(("one job on the loop thread: %.3f s; two on the pool: %.3f s"):format(async.now() - t0,
      wall))
    print(("wall=%.6f"):format(wall))
  elseif mode == "table" then
    local bytes = tonumber(arg[2])
    collectgarbage()
    local before = collectgarbage("count")
    local big, i = {}, 0
    while (collectgarbage("count") - before) * 1024 < bytes do
      i = i + 1
      big[i] = { id = i, name = "record " .. i, score = i * 0.5 }
    end
    local size = (collectgarbage("count") - before) * 1024
    warm()
    local rounds = 20
    local t0 = async.now()
    for _ = 1, rounds do async.to_thread(identity, 0) end
    local empty = (async.now() - t0) / rounds
    t0 = async.now()
    for _ = 1, rounds do assert(#async.to_thread(identity, big) == i) end
    local full = (async.now() - t0) / rounds
    print(("table of %d records, %.2f MB: round trip %.2f ms (an empty job: %.3f ms)"):format(i,
      size / 2 ^ 20, full * 1e3, empty * 1e3))
    print(("wall=%.6f"):format(full))
  else
    io.stderr:write("usage: lasync bench/threads.lua jobs N INFLIGHT | cpu SECONDS | table BYTES\n")
    os.exit(2)
  end
end)
