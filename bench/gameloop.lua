-- The game-loop workload (examples/embed/game runs it): 1,000 fetches of a 1 s endpoint in
-- flight at once while the host steps lasync at 60 Hz with a 2 ms budget. The host prints the
-- step times; this script checks every fetch completes.
local async = require "lasync"

local N = 1000
local ok = 0
local t0 = async.now()
local tasks = {}
for i = 1, N do
  tasks[i] = async.spawn(function()
    if async.fetch(BASE_URL .. "/delay").status == 200 then ok = ok + 1 end
  end)
end
async.gather(tasks)
print(("fetches=%d/%d in %.2f s"):format(ok, N, async.now() - t0))
assert(ok == N, "some fetches failed")
print(("wall=%.4f"):format(async.now() - t0))
