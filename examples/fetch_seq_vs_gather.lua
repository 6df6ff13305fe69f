-- The seed tutorial's first network lesson, in lasync: five requests to an endpoint that
-- answers after 1 s, made one after another (about 5 s), then gathered (about 1 s).
--
--   lasync examples/fetch_seq_vs_gather.lua http://127.0.0.1:PORT   (or LASYNC_TEST_URL=...)
--   examples/with_server.sh build/lasync examples/fetch_seq_vs_gather.lua   (local test server)
--
-- The base URL is any server with a /delay?s=SECONDS endpoint, such as spec/support/server.py.
local async = require "lasync"

local base = arg[1] or os.getenv("LASYNC_TEST_URL")
if not base or base == "" then
  io.stderr:write("usage: lasync examples/fetch_seq_vs_gather.lua BASE_URL (or set LASYNC_TEST_URL)\n",
    "   or: examples/with_server.sh build/lasync examples/fetch_seq_vs_gather.lua\n")
  os.exit(2)
end
base = base:gsub("/+$", "")

local t_start = async.now()

-- One request; async.fetch suspends this task only, so other tasks run while it waits.
local function fetch_slow(i)
  local res = async.fetch(base .. "/delay", { query = { s = 1 } })
  print(("  [%.2f s] request %d: %d %s"):format(async.now() - t_start, i, res.status,
    res.body:gsub("%s+$", "")))
  return res
end

local function timed(title, fn)
  print(title)
  local t0 = async.now()
  fn()
  local took = async.now() - t0
  print(("  -> took %.2f s\n"):format(took))
  return took
end

-- 1. Sequential: each request starts when the previous one has answered.
local sequential = timed("1. sequential: five 1 s requests, one after another", function()
  for i = 1, 5 do fetch_slow(i) end
end)

-- 2. Concurrent: the same five requests as tasks, gathered; they wait together.
t_start = async.now()
local gathered = timed("2. concurrent: the same five requests, gathered", function()
  local jobs = {}
  for i = 1, 5 do jobs[i] = function() return fetch_slow(i) end end
  local responses = async.gather(jobs)
  local ok = 0
  for i = 1, responses.n do
    if responses[i].ok then ok = ok + 1 end
  end
  print(("  gather returned %d responses in order, %d of them ok"):format(responses.n, ok))
end)

print(("sequential %.2f s, gathered %.2f s: %.1fx faster"):format(sequential, gathered,
  sequential / gathered))
