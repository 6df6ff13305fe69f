-- LASYNC_MAX_MEMORY: a cap on the Lua heap turns an allocation failure into a memory error in
-- the one task that asked; the host and the other tasks go on.
package.path = "spec/support/?.lua;" .. package.path
local sub = require "subprocess"
sub.LASYNC = sub.LASYNC or "build/lasync"

describe("the host's memory cap (LASYNC_MAX_MEMORY)", function()
  after_each(sub.cleanup)

  it("fails only the task that outgrows it", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local other = async.spawn(function() async.sleep(0.05) return "other ok" end)
      local hog = async.spawn(function()
        local t = {}
        for i = 1, 1e8 do t[i] = ("x"):rep(100) .. i end
      end)
      local ok, err = pcall(hog.await, hog)
      print(ok, err)
      print(other:await())
      collectgarbage()
      print(#("y"):rep(1000))
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=48; " })
    assert.are.equal(0, status, err)
    assert.are.equal("false\tnot enough memory\nother ok\n1000\n", out)
  end)
end)

describe("a task the cap fails", function()
  after_each(sub.cleanup)

  -- A memory error runs no message handler, which is where a task's place is kept otherwise.
  it("is still named by its function", function()
    local _, err, status = sub.run_script([[
      local async = require "lasync"
      local function hog() local t = {} for i = 1, 1e7 do t[i] = {i} end end
      async.spawn(hog)
      async.sleep(0.5)
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=2; " })
    assert.are.equal(1, status)
    assert.matches("task function <[^>\n]*:2> failed: not enough memory", err)
  end)
end)

describe("deadlines at the cap", function()
  after_each(sub.cleanup)

  -- A deadline with a finaliser outlived each collection until the collector got round to it,
  -- and an emergency collection runs none: 300k timeouts that never yield failed 8 MiB with a
  -- few KB live. Now an armed deadline is pinned instead, and a closed one is plain garbage.
  it("a loop of async.timeout that never yields lives within a small cap", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local function f() return 1 end
      for _ = 1, 300000 do async.timeout(10, f) end
      local fired = pcall(async.timeout, 0.01, async.sleep, 1)
      local c = async._debug.counts()
      print(fired, c.refs, c.timers, collectgarbage("count") < 4096)
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=8; " })
    assert.are.equal(0, status, err)
    assert.are.equal("false\t0\t0\ttrue\n", out)
  end)
end)

describe("a heap its live data fills to the cap", function()
  after_each(sub.cleanup)

  it("fails the allocation once collections stop making room, instead of collecting on", function()
    -- 64 MB alive in small tables with 10 KB of room: each allocation past it ran a full
    -- collection of the whole heap (25 ms) to free the few KB made since, for as long as the
    -- loop went on (before: still collecting when killed after 100 s). After a few such
    -- collections in a row the allocation fails; with room made, the next one succeeds.
    local out, err, status = sub.run_script([[
      local hold = false
      local filled = pcall(function()
        while true do hold = { hold } end
      end)
      for _ = 1, 150 do hold = hold[1] end
      collectgarbage()
      local ok, e = pcall(function()
        for i = 1, 300000 do local _ = ("x"):rep(50) .. i end
      end)
      print(filled, ok, e)
      hold = nil
      collectgarbage()
      print(#("y"):rep(100000))
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=64; ", timeout = 60 })
    assert.are.equal(0, status, err)
    assert.are.equal("false\tfalse\tnot enough memory\n100000\n", out)
  end)
end)

describe("async.process.run at the memory cap", function()
  after_each(sub.cleanup)

  it("fails at once and kills the child when its output no longer fits", function()
    -- The reader dies of the memory error: left alone, the child blocks on a pipe nobody
    -- reads and run waits for its exit for ever.
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local t0 = async.now()
      local ok, e = pcall(async.timeout, 20, async.process.run,
        { "head", "-c", "50000000", "/dev/zero" })
      print(ok, e, async.now() - t0 < 10)
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=20; " })
    assert.are.equal(0, status, err)
    assert.are.equal("false\tnot enough memory\ttrue\n", out)
  end)
end)
