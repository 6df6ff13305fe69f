-- The seed tutorial's second network lesson, in lasync: ten JSON posts sent concurrently, with
-- the count and the time printed.
--
--   lasync examples/fetch_json_posts.lua http://127.0.0.1:PORT   (or LASYNC_TEST_URL=...)
--   examples/with_server.sh build/lasync examples/fetch_json_posts.lua   (local test server)
--
-- The base URL is any server with an /echo endpoint that answers a JSON description of the
-- request (its method, headers and body), such as spec/support/server.py.
local async = require "lasync"
local cjson = require "cjson"

local base = arg[1] or os.getenv("LASYNC_TEST_URL")
if not base or base == "" then
  io.stderr:write("usage: lasync examples/fetch_json_posts.lua BASE_URL (or set LASYNC_TEST_URL)\n",
    "   or: examples/with_server.sh build/lasync examples/fetch_json_posts.lua\n")
  os.exit(2)
end
base = base:gsub("/+$", "")

-- Posts one item as JSON (opts.json encodes it and sets Content-Type) and returns what the
-- server says it received.
local function post(item)
  local res = async.fetch(base .. "/echo", { method = "POST", json = item })
  if not res.ok then error(("POST /echo: status %d"):format(res.status)) end
  local echo = res:json() -- the server's description of our request
  return {
    method = echo.method,
    content_type = echo.headers["content-type"],
    received = cjson.decode(echo.body), -- the body it got, decoded back
  }
end

local posts = {}
for i = 1, 10 do
  posts[i] = { userId = 1, id = i, title = "post number " .. i, body = "sent by lasync" }
end

print("posting 10 JSON documents concurrently ...")
local t0 = async.now()
local jobs = {}
for i, item in ipairs(posts) do jobs[i] = function() return post(item) end end
local echoes = async.gather(jobs)
local took = async.now() - t0

local matched = 0
for i = 1, echoes.n do
  local e = echoes[i]
  local same = e.method == "POST" and e.content_type == "application/json"
    and e.received.id == posts[i].id and e.received.title == posts[i].title
  if same then matched = matched + 1 end
  print(("  %2d: %s %s -> server got {id = %d, title = %q}"):format(i, e.method, e.content_type,
    e.received.id, e.received.title))
end
print(("%d posts sent, %d echoed back intact, in %.3f s"):format(echoes.n, matched, took))
if matched ~= #posts then os.exit(1) end
