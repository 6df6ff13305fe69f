-- The TCP benchmark, lasync side (bench/tcp_baseline.c is the plain-C side). Server and clients
-- run in one process, as in the baseline.
--
--   lasync bench/tcp.lua pingpong CONNS ROUNDS SIZE   CONNS clients each send a SIZE-byte
--                                                     message and read the echo, ROUNDS times
--   lasync bench/tcp.lua bulk BYTES CHUNK             one connection carries BYTES in CHUNK-byte
--                                                     writes; the server counts until the end
--   lasync bench/tcp.lua bulk_into BYTES CHUNK        the same, the server reading with
--                                                     read_into into one CHUNK-byte Buffer
--
-- Prints `wall=<seconds>` from before the first connect to after the last byte is accounted for.
local async = require "lasync"

local workload = arg[1]

local function pingpong(conns, rounds, size)
  local srv = async.net.listen({ port = 0 }, function(conn)
    while true do
      local m = conn:read_exactly(size)
      if not m then return end
      conn:write(m)
    end
  end)
  local msg = string.rep("p", size)
  local function client()
    local c <close> = async.net.connect("127.0.0.1", srv.port)
    for _ = 1, rounds do
      c:write(msg)
      assert(c:read_exactly(size) == msg)
    end
    return true
  end
  local t0 = async.now()
  local clients = {}
  for i = 1, conns do clients[i] = client end
  local done = async.gather(clients)
  local wall = async.now() - t0
  assert(done.n == conns)
  srv:close()
  return wall
end

local function bulk(bytes, chunk_size, into)
  local received = async.future()
  local srv = async.net.listen({ port = 0 }, function(conn)
    local n = 0
    if into then
      local buf = async.buffer(chunk_size)
      while true do
        local got = conn:read_into(buf)
        if not got then break end
        n = n + got
      end
    else
      while true do
        local d = conn:read()
        if not d then break end
        n = n + #d
      end
    end
    received:set(n)
  end)
  local chunk = string.rep("b", chunk_size)
  local t0 = async.now()
  local c <close> = async.net.connect("127.0.0.1", srv.port)
  for _ = 1, bytes // chunk_size do c:write(chunk) end
  c:shutdown()
  local n = received:await()
  local wall = async.now() - t0
  assert(n == bytes, "bytes lost")
  srv:close()
  return wall
end

local wall
if workload == "pingpong" and #arg == 4 then
  wall = pingpong(tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4]))
elseif (workload == "bulk" or workload == "bulk_into") and #arg == 3 then
  wall = bulk(math.tointeger(tonumber(arg[2])), math.tointeger(tonumber(arg[3])),
    workload == "bulk_into")
else
  io.stderr:write("usage: lasync bench/tcp.lua pingpong CONNS ROUNDS SIZE"
    .. " | bulk[_into] BYTES CHUNK\n")
  os.exit(1)
end
print(string.format("wall=%.6f", wall))
