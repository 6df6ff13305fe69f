-- The tutorial's FastAPI app, in lasync: GET /summary gathers two upstream fetches (/posts and
-- /users) while other requests are served on the same loop. A second small lasync server on
-- 127.0.0.1 stands in for jsonplaceholder, so this runs offline.
--
--   build/lasync examples/summary.lua          -- serve, request /summary once, shut down
--   build/lasync examples/summary.lua serve    -- keep serving until Ctrl-C (closes gracefully)
local async = require "lasync"

-- The upstream: 100 posts and 10 users, as jsonplaceholder has.
local function upstream()
  local posts, users = {}, {}
  for i = 1, 100 do
    posts[i] = { userId = (i - 1) // 10 + 1, id = i, title = "post " .. i,
      body = string.rep("lorem ipsum ", 10) }
  end
  for i = 1, 10 do users[i] = { id = i, name = "user " .. i, email = "u" .. i .. "@example.com" } end
  local up = async.http.router()
  up:get("/posts", function() return { json = posts } end)
  up:get("/users", function() return { json = users } end)
  return async.http.serve(up, { port = 0 })
end

local function app(UP)
  local r = async.http.router()
  r:get("/summary", function(req)
    local posts, users = table.unpack(async.gather(
      function() return async.fetch(UP .. "/posts"):json() end,
      function() return async.fetch(UP .. "/users"):json() end))
    return { json = { post_count = #posts, user_count = #users } }
  end)
  r:get("/hello", function() return "Hello, world!" end)
  return r
end

local up <close> = upstream()
local UP = "http://127.0.0.1:" .. up.port
local srv <close> = async.http.serve(app(UP), { port = tonumber(os.getenv("PORT") or "0") })
print(("summary app on http://127.0.0.1:%d/summary (upstream on %s)"):format(srv.port, UP))

if arg and arg[1] == "serve" then
  while not srv.closed do async.sleep(0.5) end
  return
end

local t0 = async.now()
local res = async.fetch(("http://127.0.0.1:%d/summary"):format(srv.port))
print(res.status, res:text())
print(("GET /summary in %.1f ms"):format((async.now() - t0) * 1000))
