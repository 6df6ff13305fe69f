-- Helpers for the stream and net specs: connected pairs of streams on 127.0.0.1.
local async = require "lasync"

local M = {}

--- Two connected streams (client, server side). The server side belongs to a handler task
--- that holds it until release() is called (it is then closed, as every handler's stream is).
--- The listener itself is already closed. Call release in a finally().
function M.pair()
  local got, hold = async.future(), async.event()
  local srv = async.net.listen({ port = 0 }, function(conn)
    got:set(conn)
    hold:wait()
  end)
  local client = async.net.connect("127.0.0.1", srv.port, { timeout = 10 })
  local server = got:await()
  srv:close()
  local function release()
    client:close()
    hold:set()
  end
  return client, server, release
end

--- Waits until pred() is true, polling, for up to `seconds` (default 5); returns pred()'s last value.
function M.wait_until(pred, seconds)
  local deadline = async.now() + (seconds or 5)
  local v = pred()
  while not v and async.now() < deadline do
    async.sleep(0.005)
    v = pred()
  end
  return v
end

return M
