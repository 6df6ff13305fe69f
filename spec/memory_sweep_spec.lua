-- Issue 14, crash 2: at the memory cap (LASYNC_MAX_MEMORY) out of memory fails one task, never
-- the process. Before the fix, allocations on libuv callback paths (a failed task's sentinel,
-- a cancel-before-start error, multi-value results) ran unprotected and the host aborted with
-- "PANIC: unprotected error in call to Lua API (not enough memory)", status 134. The sweep
-- runs one script that spawns, sleeps, gathers, settles futures, cancels unstarted tasks,
-- fetches and fails tasks nobody awaits, under caps that make every part of it run out in turn.
package.path = "spec/support/?.lua;" .. package.path
local sub = require "subprocess"

local SCRIPT = [[
local async = require "lasync"
local ts = {}
for i = 1, 300 do
  ts[i] = async.spawn(function(n) async.sleep(0.001 * (n % 5)); return n, n * 2, tostring(n) end, i)
end
for i = 1, 20 do async.spawn(async.sleep, 10):cancel() end -- cancelled before they start
local f = async.future()
async.spawn(function() async.sleep(0.005); f:set(1, 2, 3) end)
local r = async.gather(table.unpack(ts))
assert(#r == 300)
assert(select("#", f:await()) == 3)
local settled = async.gather_settled(function() error("x") end, function() return 1, 2 end)
assert(settled[2].ok)
pcall(async.fetch, "http://127.0.0.1:9/", { timeout = 2 }) -- refused: curl's paths, no server
async.spawn(function() local t = {} for i = 1, 1e8 do t[i] = { i } end end) -- fails, unawaited
async.sleep(0.01)
print("done")
]]

local function caps()
  local list = {}
  for m = 0.20, 1.21, 0.05 do list[#list + 1] = m end
  for _, m in ipairs({ 1.5, 2, 3, 4, 8 }) do list[#list + 1] = m end
  return list
end

describe("the memory cap never aborts the host", function()
  after_each(sub.cleanup)

  if not sub.LASYNC then
    pending("needs LASYNC (the host executable)")
    return
  end

  it("a script doing a bit of everything exits 0, or 1 with 'not enough memory'", function()
    local path = sub.tmpfile(SCRIPT)
    for _, m in ipairs(caps()) do
      local out, err, status = sub.run(sub.q(path),
        { prefix = ("export LASYNC_MAX_MEMORY=%.2f; "):format(m) })
      assert(status == 0 or status == 1,
        ("cap %.2f MiB: status %s\n%s"):format(m, tostring(status), err:sub(1, 2000)))
      assert(err:find("not enough memory", 1, true),
        ("cap %.2f MiB: status %d without a memory error:\n%s"):format(m, status, err:sub(1, 2000)))
      if status == 0 then assert.are.equal("done\n", out) end
    end
  end)

  it("the issue's reproducer: ten million spawns at the cap", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      print(pcall(function() for i = 1, 1e7 do async.spawn(async.sleep, 0.01) end end))
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=1; ", timeout = 120 })
    assert(status == 0 or status == 1, "status " .. tostring(status) .. "\n" .. err:sub(1, 2000))
    assert.are.equal("false\tnot enough memory\n", out)
    assert.is_nil(err:find("PANIC", 1, true))
  end)

  -- Before, each queued task then failed to start on its own full emergency collection of a
  -- heap of queued tasks (~0.7 s each at 64 MiB): minutes. A hang shows as the timeout's status.
  it("the issue's reproducer at 64 MiB: what cannot start fails at once, reported once", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      print(pcall(function() for i = 1, 1e7 do async.spawn(async.sleep, 1) end end))
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=64; ", timeout = 90 })
    assert.are.equal(1, status, err:sub(1, 2000))
    assert.are.equal("false\tnot enough memory\n", out)
    local n = tonumber(err:match("not enough memory: (%d+) tasks could not start"))
    assert(n and n > 1000, err:sub(1, 2000))
    assert.is_nil(err:find("PANIC", 1, true))
  end)

  it("a task that cannot start can still be awaited: it failed with the memory error", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local ts = {}
      local ok = pcall(function() for i = 1, 1e7 do ts[i] = async.spawn(async.sleep, 0) end end)
      async.sleep(0) -- the queued tasks start, or fail to
      local last = ts[#ts]
      print(ok, last:status(), pcall(last.await, last))
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=16; ", timeout = 90 })
    assert.are.equal(1, status, err:sub(1, 2000))
    assert.are.equal("false\tfailed\tfalse\tnot enough memory\n", out)
  end)

  -- SIGTERM cancels every task with a message, which needs memory: before, each task's try was
  -- another full collection, and the host did not stop for minutes.
  it("SIGTERM at the cap stops the host at once", function()
    local path = sub.tmpfile([[
      local async = require "lasync"
      local ok, e = pcall(function()
        for i = 1, 1e7 do
          async.spawn(async.sleep, 60)
          if i % 1000 == 0 then async.sleep(0) end -- they start, and sleep
        end
      end)
      print(ok, e)
      io.stdout:flush()
      async.sleep(60)
    ]])
    local outf = sub.tmpfile()
    local p = assert(io.popen(("timeout -k 5 90 sh -c " .. sub.q(
      "LASYNC_MAX_MEMORY=64 " .. sub.q(sub.LASYNC) .. " " .. sub.q(path) .. " >" .. sub.q(outf) ..
      " 2>/dev/null & pid=$!; until grep -q memory " .. sub.q(outf) .. "; do sleep 0.1; done; " ..
      "kill -TERM $pid; wait $pid"))))
    p:read("a")
    local _, _, status = p:close()
    assert.are.equal("false\tnot enough memory\n", sub.slurp(outf))
    assert.are.equal(143, status)
  end)
end)
