-- The lasync side of bench/server/run: /hello, /json, /summary (two upstream fetches).
local async = require "lasync"
local UP = os.getenv("UPSTREAM") or "http://127.0.0.1:8090"
local app = async.http.router()
app:get("/hello", function() return "Hello, world!" end)
app:get("/json", function() return { json = { message = "Hello, world!", n = 42, ok = true } } end)
app:get("/summary", function()
  local posts, users = table.unpack(async.gather(
    function() return async.fetch(UP .. "/posts"):json() end,
    function() return async.fetch(UP .. "/users"):json() end))
  return { json = { post_count = #posts, user_count = #users } }
end)
local srv = async.http.serve(app, { port = tonumber(os.getenv("PORT")), backlog = 4096 })
print("READY " .. srv.port)
io.stdout:flush()
while not srv.closed do async.sleep(1) end
