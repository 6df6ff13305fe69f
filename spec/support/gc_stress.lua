-- A busted helper (--helper=spec/support/gc_stress.lua) that makes the garbage collector as
-- aggressive as it goes, to shake out lifetime bugs: an object the C side still uses but no
-- longer keeps reachable (a task, a future, a coroutine, an error) is collected at the first
-- chance instead of minutes later. LASYNC_GC_STRESS picks the mode:
--   incremental   a new cycle starts as soon as one ends (pause 0) and each step does a lot
--   generational  a minor collection after every 1% of growth
local mode = os.getenv("LASYNC_GC_STRESS") or "incremental"
collectgarbage("collect")
if mode == "generational" then
  collectgarbage("generational", 1, 100)
elseif mode == "incremental" then
  collectgarbage("incremental", 0, 1000)
else
  error("LASYNC_GC_STRESS: unknown mode " .. mode)
end
io.stderr:write("gc_stress: ", mode, "\n")
