-- Shared by every spec: the loop must be left clean after each test.
--
--   package.path = "spec/support/?.lua;" .. package.path
--   local assert_clean = require "clean"
--   after_each(assert_clean)
--
-- Cancelled tasks need a few loop turns to unwind (their cleanup runs), so this first yields a
-- few times, then polls for up to ~0.5 s, and only then asserts that nothing is left: no live
-- task other than the caller, no armed deadline, no timer slot kept, no active libuv handle, no
-- pinned reference, no pending libuv request, no handle owned by a Lua object still open or
-- closing.
local async = require "lasync"

local KEYS = { "tasks", "timers", "timer_slots", "handles", "refs", "requests", "owned_handles" }

local function leftovers()
  local c = async._debug.counts()
  for _, k in ipairs(KEYS) do
    if c[k] ~= 0 then return c end
  end
  return nil
end

local function describe_counts(c)
  local parts = {}
  for _, k in ipairs(KEYS) do parts[#parts + 1] = k .. "=" .. tostring(c[k]) end
  return table.concat(parts, " ")
end

local function assert_clean()
  for _ = 1, 5 do async.sleep(0) end
  local deadline = async.now() + 0.5
  while leftovers() and async.now() < deadline do async.sleep(0.01) end
  collectgarbage()
  collectgarbage()
  local c = async._debug.counts()
  for _, k in ipairs(KEYS) do
    assert(c[k] == 0, "the loop is not clean after the test: " .. describe_counts(c))
  end
end

return assert_clean
