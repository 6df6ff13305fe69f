package.path = "spec/support/?.lua;" .. package.path
local assert_clean = require "clean"

-- SIGINT (Ctrl-C) and SIGTERM sent to the `lasync` host, run on a pseudo-terminal
-- (spec/support/pty.lua) so the test can wait for the script to be ready first.
local sub = require "subprocess"
local pty = require "pty"
assert(sub.LASYNC, "LASYNC must name the lasync executable")

local CLEANUP = "local function on_close(what) return setmetatable({}, {__close = function() " ..
    "print(what .. ' cleanup') end}) end\n"

local function script(source)
  return sub.tmpfile("local async = require 'lasync'\n" .. CLEANUP .. source)
end

-- Runs a script whose main task swallows the first Ctrl-C (its busy loop is inside a pcall),
-- sends two; returns pty.run's out, status, err.
local function stubborn_twice(setup)
  local path = script((setup or "") .. [[
      print("ready")
      while true do pcall(function() while true do end end) end
    ]])
  return pty.run({ path }, {
    { "expect", "ready", 10 }, { "sleep", 0.2 }, { "signal", "INT" }, { "sleep", 0.5 },
    { "signal", "INT" }, { "wait", 10 },
  })
end

describe("signals", function()
  after_each(function()
    sub.cleanup()
    assert_clean()
  end)

  it("a first Ctrl-C interrupts a script blocking the loop; cleanup runs; status 130", function()
    local path = script([[
      local c <close> = on_close("main")
      print("ready")
      while true do end
    ]])
    local out, status, err = pty.run({ path }, {
      { "expect", "ready", 10 }, { "sleep", 0.2 }, { "signal", "INT" }, { "wait", 10 },
    })
    assert.is_nil(err, out)
    assert.are.equal(130, status, out)
    assert.truthy(out:find("main cleanup", 1, true), out)
  end)

  it("a first Ctrl-C interrupts a background task blocking the loop, cancels the rest", function()
    local path = script([[
      async.spawn(function() local c <close> = on_close("spinner"); while true do end end)
      local c <close> = on_close("main")
      print("ready")
      async.sleep(100)
    ]])
    local out, status, err = pty.run({ path }, {
      { "expect", "ready", 10 }, { "sleep", 0.3 }, { "signal", "INT" }, { "wait", 10 },
    })
    assert.is_nil(err, out)
    assert.are.equal(130, status, out)
    assert.truthy(out:find("spinner cleanup", 1, true), out)
    assert.truthy(out:find("main cleanup", 1, true), out)
  end)

  it("a second Ctrl-C exits at once with 130 when the first could not stop the script", function()
    local out, status, err = stubborn_twice()
    assert.is_nil(err, out)
    assert.are.equal(130, status, out)
    assert.truthy(out:find("exiting now", 1, true), out)
  end)

  it("a second Ctrl-C that exits at once kills the children it leaves in their groups", function()
    local marker = "lasync-orphan-" .. tostring(os.time()) .. "-" .. tostring(math.random(1e9))
    local out, status, err = stubborn_twice(
      'local p <close> = async.process.spawn({ "sh", "-c", "sleep 300; : ' .. marker .. '" })\n')
    assert.is_nil(err, out)
    assert.are.equal(130, status, out)
    os.execute("sleep 0.2")
    -- "[s]leep": the shell running pgrep has the pattern in its own command line
    local ps = io.popen("pgrep -f '[s]leep 300; : " .. marker .. "' 2>/dev/null")
    local left = ps:read("a")
    ps:close()
    if left ~= "" then os.execute("pkill -KILL -f '[s]leep 300; : " .. marker .. "'") end
    assert.are.equal("", left, "a child survived the exit")
  end)

  it("SIGTERM with a server and other tasks: the server closes, then the rest stops", function()
    local path = script([[
      local srv = async.http.serve(function() return "hi" end, { port = 0 })
      async.spawn(function()
        local c <close> = on_close("ticker")
        while true do async.sleep(0.05) end
      end)
      print("ready")
    ]])
    local t0 = os.time()
    local out, status, err = pty.run({ path }, {
      { "expect", "ready", 10 }, { "sleep", 0.2 }, { "signal", "TERM" }, { "wait", 15 },
    })
    assert.is_nil(err, out)
    assert.are.equal(143, status, out)
    assert.truthy(out:find("ticker cleanup", 1, true), out)
    assert.is_true(os.time() - t0 < 12, "it waited past the grace")
  end)

  it("Ctrl-C cancels every task of a waiting script, each cleanup running", function()
    local path = script([[
      local t = async.spawn(function() local c <close> = on_close("child"); async.sleep(100) end)
      local c <close> = on_close("main")
      print("ready")
      async.sleep(100)
    ]])
    local out, status, err = pty.run({ path }, {
      { "expect", "ready", 10 }, { "sleep", 0.2 }, { "signal", "INT" }, { "wait", 10 },
    })
    assert.is_nil(err, out)
    assert.are.equal(130, status, out)
    assert.truthy(out:find("child cleanup", 1, true), out)
    assert.truthy(out:find("main cleanup", 1, true), out)
  end)

  it("SIGTERM cancels everything like Ctrl-C and exits 143", function()
    local path = script([[
      local t = async.spawn(function() local c <close> = on_close("child"); async.sleep(100) end)
      local c <close> = on_close("main")
      print("ready")
      local ok, e = pcall(async.sleep, 100)
      print("main saw", e.kind, e.message)
      error(e, 0)
    ]])
    local out, status, err = pty.run({ path }, {
      { "expect", "ready", 10 }, { "sleep", 0.2 }, { "signal", "TERM" }, { "wait", 10 },
    })
    assert.is_nil(err, out)
    assert.are.equal(143, status, out)
    assert.truthy(out:find("main saw\tcancelled\tterminated", 1, true), out)
    assert.truthy(out:find("child cleanup", 1, true), out)
    assert.truthy(out:find("main cleanup", 1, true), out)
  end)

  it("SIGTERM interrupts a script that blocks the loop and exits 143", function()
    local path = script([[
      local c <close> = on_close("main")
      print("ready")
      while true do end
    ]])
    local out, status, err = pty.run({ path }, {
      { "expect", "ready", 10 }, { "sleep", 0.2 }, { "signal", "TERM" }, { "wait", 10 },
    })
    assert.is_nil(err, out)
    assert.are.equal(143, status, out)
    assert.truthy(out:find("main cleanup", 1, true), out)
  end)

  describe("at the REPL", function()
    local home
    before_each(function()
      home = os.tmpname()
      os.remove(home)
      assert(os.execute("mkdir " .. sub.q(home)))
    end)
    after_each(function() os.execute("rm -rf " .. sub.q(home)) end)

    it("SIGTERM cancels every task and leaves with 143", function()
      local out, status, err = pty.run({}, {
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; async.spawn(function() local c <close> = " ..
          "setmetatable({}, {__close = function() print('bg cleanup') end}); " ..
          "async.sleep(1000) end)" .. pty.ENTER },
        { "expect", "\n> $", 10 }, { "signal", "TERM" }, { "wait", 10 },
      }, { env = { HOME = home } })
      assert.is_nil(err, out)
      assert.are.equal(143, status, out)
      assert.truthy(out:find("bg cleanup", 1, true), out)
    end)

    it("a second Ctrl-C exits with 130 when a background task blocks the loop", function()
      local out, status, err = pty.run({}, {
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; async.spawn(function() async.sleep(0.2); " ..
          "print('spinning'); while true do end end)" .. pty.ENTER },
        { "expect", "spinning", 10 }, { "sleep", 0.2 }, { "signal", "INT" }, { "sleep", 0.3 },
        { "signal", "INT" }, { "wait", 10 },
      }, { env = { HOME = home } })
      assert.is_nil(err, out)
      assert.are.equal(130, status, out)
    end)
  end)
end)
