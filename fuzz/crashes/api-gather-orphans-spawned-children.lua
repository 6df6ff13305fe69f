-- Reproducer (fuzz_api): async.gather spawns its function arguments while it validates them, so
-- a bad later argument raises with the earlier children already running, orphaned
-- (bindings/gather.c normalise()). Run: build/lasync fuzz/crashes/api-gather-orphans-spawned-children.lua
-- Expected: no task left after the error (counts 0) and the orphan never runs.
local async = require "lasync"
local ran = false
local ok, err = pcall(async.gather, {function() async.sleep(0.01) ran = true end, nil, function() end})
print("gather:", ok, err)
print("counts right after:", async._debug.counts().tasks, async._debug.counts().timers)
async.sleep(0.05)
print("orphan child ran to completion afterwards:", ran)
local ok2, err2 = pcall(async.gather, function() async.sleep(0.01) ran = "2" end, 42)
print("gather(fn, 42):", ok2, err2, "tasks:", async._debug.counts().tasks)
async.sleep(0.05) print(ran)
