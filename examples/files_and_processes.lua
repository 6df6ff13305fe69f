-- The tutorial's blocking pitfalls for files and child processes, in lasync: a ticker task
-- should tick every 50 ms; a blocking call in another task stops it, the async one does not.
-- Run it with `make demo`, or `build/lasync examples/files_and_processes.lua [MB]`.
local async = require "lasync"

local MB = tonumber(arg and arg[1]) or 128

-- Runs fn in one task beside a ticker; returns the longest gap between ticks.
local function beside_ticker(fn)
  local longest, last, running = 0, async.now(), true
  local ticker = async.spawn(function()
    while running do
      async.sleep(0.05)
      local now = async.now()
      longest = math.max(longest, now - last)
      last = now
    end
  end)
  async.sleep(0.1) -- the ticker is ticking
  local t0 = async.now()
  fn()
  local took = async.now() - t0
  async.sleep(0.1)
  running = false
  ticker:await()
  return took, longest
end

local function report(title, took, longest)
  print(("  %-44s took %.2f s; the ticker's longest gap: %.2f s%s"):format(title, took, longest,
    longest > 0.15 and "  <- the loop was blocked" or ""))
end

local path = os.tmpname()
do
  local f = assert(io.open(path, "wb"))
  local chunk = ("x"):rep(1 << 20)
  for _ = 1, MB do f:write(chunk) end
  f:close()
end

print(("1. reading a %d MB file"):format(MB))
report('io.open(path):read("a")', beside_ticker(function()
  local f = assert(io.open(path, "rb"))
  assert(#f:read("a") == MB << 20)
  f:close()
end))
report("async.fs.read_file(path)", beside_ticker(function()
  assert(#async.fs.read_file(path) == MB << 20)
end))
os.remove(path)
print("  (read_file reads in a worker thread; only copying the bytes into one Lua string runs on")
print("  the loop, as long as a memcpy of the file takes: use fs.lines or File:read(n) for huge")
print("  files. On a cold disk cache io.open blocks for the whole disk read.)")

print("2. waiting for a child process")
report('os.execute("sleep 1")', beside_ticker(function() os.execute("sleep 1") end))
report('async.process.run({"sleep", "1"})', beside_ticker(function()
  assert(async.process.run({ "sleep", "1" }).ok)
end))
