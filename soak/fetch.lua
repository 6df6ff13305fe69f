-- soak part (a): N fetches against the local nginx soak/run starts, INFLIGHT worker tasks at a
-- time (as bench/fetch.lua's json workload), sampling RSS every SAMPLE completed requests.
--
--   lasync soak/fetch.lua BASE_URL N INFLIGHT SAMPLE
--
-- The requests cycle through four endpoints so each kind of response stays in the loop:
--   /json     a 313-byte document with Content-Length          -> 200, 313 bytes
--   /gz       the same document gzip-encoded (decoded by fetch)  -> 200, 313 bytes
--   /chunked  the echo module's chunked body                     -> 200, 14 bytes
--   /missing  nginx's 404 page                                   -> 404
-- and every 8th request passes options (timeout, headers, query) to take that path too.
-- Any unexpected status, length or error counts as a failure (exit 1 when any). Prints
-- "sample" lines (soak/common.lua), then "wall=<s>", "failures=<n>", the end RSS after a full
-- collection ("end_rss_kb=") and async._debug.counts() as "count" lines.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local async = require "lasync"
local common = require "common"

local function usage()
  io.stderr:write("usage: lasync soak/fetch.lua BASE_URL N INFLIGHT SAMPLE\n")
  os.exit(2)
end
local base = arg[1] or usage()
local n = common.count_arg(arg[2], usage)
local inflight = common.count_arg(arg[3], usage)
local every = common.count_arg(arg[4], usage)

local JSON_BYTES = tonumber(os.getenv("SOAK_JSON_BYTES") or "313")
local kinds = {
  { url = base .. "/json", status = 200, bytes = JSON_BYTES },
  { url = base .. "/gz", status = 200, bytes = JSON_BYTES },
  { url = base .. "/chunked", status = 200, bytes = 14 },
  { url = base .. "/missing", status = 404 },
}
local opts = { timeout = 10, headers = { ["X-Soak"] = "1" }, query = { q = "soak" } }

local fetch, sample = async.fetch, common.sample
local started, done, failures = 0, 0, 0

local function fail(msg)
  failures = failures + 1
  if failures <= 5 then io.stderr:write("soak/fetch.lua: ", msg, "\n") end
end

local function worker()
  while started < n do
    started = started + 1
    local i = started
    local k = kinds[i % 4 + 1]
    local ok, res = pcall(fetch, k.url, i % 8 == 0 and opts or nil)
    if not ok then
      fail(("request %d (%s): %s"):format(i, k.url, tostring(res)))
    elseif res.status ~= k.status or (k.bytes and #res.body ~= k.bytes) then
      fail(("request %d (%s): status %d, %d bytes"):format(i, k.url, res.status, #res.body))
    end
    done = done + 1
    if done % every == 0 then sample(done) end
  end
end

sample(0)
local t0 = async.now()
local workers = {}
for i = 1, math.min(inflight, n) do workers[i] = async.spawn(worker) end
async.gather(workers)
local wall = async.now() - t0
workers = nil
collectgarbage("collect")
collectgarbage("collect")
print(("wall=%.3f"):format(wall))
print(("failures=%d"):format(failures))
print(("end_rss_kb=%d"):format(common.rss_kb()))
common.counts(async)
if failures > 0 then os.exit(1) end
