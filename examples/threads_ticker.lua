-- The tutorial's last pitfall, fixed: CPU-heavy work leaves the loop's thread.
--
--   lasync examples/threads_ticker.lua       (also run by `make demo`)
--
-- A ticker task wants to tick every 20 ms. cpu_heavy(10_000_000) runs first directly in a task,
-- which holds the loop (the ticker stalls), then on a worker thread with async.to_thread
-- (asyncio's loop.run_in_executor), while the ticker keeps ticking.
local async = require "lasync"

local function cpu_heavy(n)
  local s = 0
  for i = 0, n - 1 do s = s + i end
  return s
end

local function with_ticker(label, fn)
  local ticks, last, worst = 0, async.now(), 0
  local ticker = async.spawn(function()
    while true do
      async.sleep(0.02)
      local now = async.now()
      ticks, worst, last = ticks + 1, math.max(worst, now - last), now
    end
  end)
  async.sleep(0.05) -- the ticker is under way
  ticks, worst, last = 0, 0, async.now()
  local t0 = async.now()
  local result = fn()
  local took, during, gap = async.now() - t0, ticks, math.max(worst, async.now() - last)
  ticker:cancel()
  print(string.format("%-45s %d in %.2f s; %2d ticks meanwhile, longest gap %3.0f ms", label,
    result, took, during, gap * 1000))
end

async.run(function()
  print("a ticker wants to tick every 20 ms while cpu_heavy(10_000_000) runs:")
  with_ticker("  directly in a task (the loop stalls):", function() return cpu_heavy(10000000) end)
  with_ticker("  async.to_thread (the loop keeps going):",
    function() return async.to_thread(cpu_heavy, 10000000) end)
end)
