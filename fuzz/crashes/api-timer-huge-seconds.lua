-- Reproducer (fuzz_api): finite seconds >= ~1.8e10 make async.timeout expire and async.sleep
-- return at once (bindings/timer.c lasync__timer_start: (uint64_t)(seconds * 1e9) overflows).
-- Run: build/lasync fuzz/crashes/api-timer-huge-seconds.lua  (expected: ok / running on every line)
local async = require "lasync"
for _, s in ipairs{1e10, 2e10, 2^53, 1e300} do
  local t0 = async.now()
  local ok, e = pcall(async.timeout, s, function() async.sleep(0.05) return "ok" end)
  print("timeout", s, ok, tostring(e), ("%.3f"):format(async.now() - t0))
  local t = async.spawn(function() async.sleep(s) end)
  async.sleep(0.05)
  print("sleep", s, t:status())
  t:cancel()
end
