-- The tasks benchmark, lasync side (bench/tasks_baseline.c is the plain-C side).
--
--   lasync bench/tasks.lua sleep N     N tasks, each async.sleep(0.01), then async.gather
--   lasync bench/tasks.lua trivial N   N tasks function(i) return i end with argument i, gathered;
--                                      checks results[i] == i
--   lasync bench/tasks.lua coroutines N  no tasks: N bare coroutines, each suspended in a C call
--                                      (coroutine.yield) from a Lua function, then ended: what
--                                      Lua itself needs to hold N suspended calls, the floor of
--                                      the sleep workload's memory
--
-- Prints `wall=<seconds>`, measured with async.now() from before the first spawn to after the
-- gather returns (the same span the C baseline measures with uv_hrtime).
local async = require "lasync"

local workload, n = arg[1], math.tointeger(tonumber(arg[2] or ""))
local known = {sleep = true, trivial = true, coroutines = true}
if not known[workload] or not n or n < 1 then
  io.stderr:write("usage: lasync bench/tasks.lua sleep|trivial|coroutines N\n")
  os.exit(1)
end

local workloads = {}

function workloads.sleep(count)
  local sleep = async.sleep
  local function sleeper() sleep(0.01) end
  local t0 = async.now()
  local tasks = {}
  for i = 1, count do tasks[i] = async.spawn(sleeper) end
  local results = async.gather(tasks)
  local wall = async.now() - t0
  assert(results.n == count, "gather returned the wrong number of results")
  return wall
end

function workloads.trivial(count)
  local spawn = async.spawn
  local function identity(i) return i end
  local t0 = async.now()
  local tasks = {}
  for i = 1, count do tasks[i] = spawn(identity, i) end
  local results = async.gather(tasks)
  local wall = async.now() - t0
  assert(results.n == count, "gather returned the wrong number of results")
  for i = 1, count do
    if results[i] ~= i then error(("results[%d] = %s, expected %d"):format(i, tostring(results[i]), i)) end
  end
  return wall
end

function workloads.coroutines(count)
  local create, resume, yield = coroutine.create, coroutine.resume, coroutine.yield
  local function suspended() yield() end
  local t0 = async.now()
  local cos = {}
  for i = 1, count do
    local co = create(suspended)
    assert(resume(co))
    cos[i] = co
  end
  for i = 1, count do assert(resume(cos[i])) end
  local wall = async.now() - t0
  assert(coroutine.status(cos[count]) == "dead", "a coroutine did not end")
  return wall
end

local wall = workloads[workload](n)
print(("wall=%.6f"):format(wall))
