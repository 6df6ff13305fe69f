-- The fetch benchmark, lasync side (bench/fetch_baseline.c is the plain-C side).
--
--   lasync bench/fetch.lua json URL N INFLIGHT [BYTES]   N GETs of URL with INFLIGHT worker
--                                                        tasks, each fetching the next request
--                                                        number until all N are taken
--   lasync bench/fetch.lua delay URL N [BYTES]           N tasks, each one GET of URL, all
--                                                        spawned at once, then gathered
--
-- Every response must be a 200 whose body is BYTES long (when given) or, without BYTES, as long
-- as the first one's and not empty. Prints `wall=<seconds>`, measured with async.now() from
-- before the first task is spawned to after the gather returns (the span the C baseline
-- measures with uv_hrtime).
local async = require "lasync"

local function usage()
  io.stderr:write("usage: lasync bench/fetch.lua json URL N INFLIGHT [BYTES]\n",
    "       lasync bench/fetch.lua delay URL N [BYTES]\n")
  os.exit(1)
end

local function count(s)
  local n = math.tointeger(tonumber(s or ""))
  if not n or n < 1 then usage() end
  return n
end

local workload, url = arg[1], arg[2]
if (workload ~= "json" and workload ~= "delay") or not url then usage() end
local n = count(arg[3])
local inflight, bytes_arg
if workload == "json" then
  inflight, bytes_arg = count(arg[4]), arg[5]
else
  inflight, bytes_arg = n, arg[4]
end
local expect = bytes_arg and count(bytes_arg) -- nil: the first body's length

local fetch = async.fetch
local failures = 0

local function check(res)
  local len = #res.body
  if res.status ~= 200 or len == 0 or (expect and len ~= expect) then
    failures = failures + 1
    if failures <= 5 then
      io.stderr:write(("bench/fetch.lua: %s: status %d, %d body bytes (expected 200, %s)\n")
        :format(res.url, res.status, len, tostring(expect)))
    end
  elseif not expect then
    expect = len
  end
end

local workloads = {}

-- 100 in flight, as a user would write it: a pool of workers sharing a request counter.
function workloads.json()
  local next_request = 1
  local function worker()
    while next_request <= n do
      next_request = next_request + 1
      check(fetch(url))
    end
  end
  local t0 = async.now()
  local workers = {}
  for i = 1, math.min(inflight, n) do workers[i] = async.spawn(worker) end
  async.gather(workers)
  return async.now() - t0
end

-- Everything in flight at once: one task per request.
function workloads.delay()
  local function one() check(fetch(url)) end
  local t0 = async.now()
  local tasks = {}
  for i = 1, n do tasks[i] = async.spawn(one) end
  async.gather(tasks)
  return async.now() - t0
end

local wall = workloads[workload]()
if failures > 0 then
  io.stderr:write(("bench/fetch.lua: %d of %d responses failed\n"):format(failures, n))
  os.exit(1)
end
print(("wall=%.6f"):format(wall))
