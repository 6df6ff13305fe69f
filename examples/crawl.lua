-- Fetch a list of URLs concurrently, at most N at a time, with a progress bar.
--
--   lasync examples/crawl.lua urls.txt [concurrency] [base_url]
--
-- urls.txt has one URL per line (blank lines and # comments are skipped); lines starting with
-- "/" are resolved against base_url, so the same list works against any server.
-- `make demo` runs it against the local test server:
--   examples/with_server.sh build/lasync examples/crawl.lua examples/urls.txt
local async = require "lasync"

local file, concurrency, base
for _, a in ipairs(arg) do
  if a:match("^https?://") then base = a
  elseif tonumber(a) then concurrency = tonumber(a)
  else file = a end
end
if not file then
  io.stderr:write("usage: lasync crawl.lua urls.txt [concurrency] [base_url]\n")
  os.exit(2)
end
concurrency = concurrency or 8

local urls = {}
for line in assert(io.open(file)):lines() do
  line = line:match("^%s*(.-)%s*$")
  if line ~= "" and not line:match("^#") then
    if line:sub(1, 1) == "/" then
      if not base then error("a relative URL needs a base_url: " .. line) end
      line = base .. line
    end
    urls[#urls + 1] = line
  end
end

local t0 = async.now()
local results = async.map(function(url)
  local ok, res = pcall(async.fetch, url, { timeout = 10 })
  if not ok then return { url = url, error = res } end
  return { url = url, status = res.status, bytes = #res.body }
end, urls, { concurrency = concurrency, progress = true })
local elapsed = async.now() - t0

local by_outcome, bytes = {}, 0
for _, r in ipairs(results) do
  local key = r.error and ("error: " .. (r.error.kind or tostring(r.error))) or ("HTTP " .. r.status)
  by_outcome[key] = (by_outcome[key] or 0) + 1
  bytes = bytes + (r.bytes or 0)
end
print(("crawled %d URLs in %.2f s, %d at a time (%d bytes)"):format(#urls, elapsed, concurrency,
  bytes))
local keys = {}
for k in pairs(by_outcome) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do print(("  %-18s %d"):format(k, by_outcome[k])) end
