-- The files and processes workloads in lasync (bench/run fs_read, fs_copy, proc_true):
--   lasync bench/fsproc.lua read DIR N INFLIGHT   read DIR/f<i> (i = 1..N), INFLIGHT at a time
--   lasync bench/fsproc.lua copy SRC DST CHUNK    copy SRC to DST through open/read/write
--   lasync bench/fsproc.lua true N INFLIGHT       run /bin/true N times, INFLIGHT at a time
-- Prints wall=<seconds>, timed around the work only.
local async = require "lasync"
local fs, process = async.fs, async.process
local mode = arg[1]

-- INFLIGHT workers share a counter, as the Node and Python peers do.
local function workers(n, inflight, job)
  local next_i = 0
  local tasks = {}
  for w = 1, inflight do
    tasks[w] = async.spawn(function()
      while next_i < n do
        next_i = next_i + 1
        job(next_i)
      end
    end)
  end
  async.gather(table.unpack(tasks))
end

local t0 = async.now()
if mode == "read" then
  local dir, n, inflight = arg[2], tonumber(arg[3]), tonumber(arg[4])
  local bytes = 0
  workers(n, inflight, function(i)
    local data = fs.read_file(("%s/f%d"):format(dir, i)) -- read first: bytes may change meanwhile
    bytes = bytes + #data
  end)
  assert(bytes == n * 4096, "read " .. bytes .. " bytes")
elseif mode == "copy" then
  local chunk = tonumber(arg[4])
  local src <close> = fs.open(arg[2], "r")
  local dst <close> = fs.open(arg[3], "w")
  while true do
    local s = src:read(chunk)
    if not s then break end
    dst:write(s)
  end
  dst:close()
elseif mode == "true" then
  local n, inflight = tonumber(arg[2]), tonumber(arg[3])
  workers(n, inflight, function() assert(process.run({ "/bin/true" }).ok) end)
else
  error("usage: fsproc.lua read DIR N INFLIGHT | copy SRC DST CHUNK | true N INFLIGHT")
end
print(("wall=%.6f"):format(async.now() - t0))
