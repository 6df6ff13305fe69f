package.path = "spec/support/?.lua;" .. package.path
local assert_clean = require "clean"

-- The REPL (`lasync` on a terminal, or `lasync -i`), driven through a pseudo-terminal
-- (spec/support/pty.lua), and its plain-lines form when stdin is a pipe.
local sub = require "subprocess"
local pty = require "pty"
assert(sub.LASYNC, "LASYNC must name the lasync executable")
local ENTER, CTRL_D, TAB, UP = pty.ENTER, pty.CTRL_D, pty.TAB, pty.UP

local home -- a HOME of its own for each test, so history goes there

local function repl(steps, args)
  return pty.run(args or {}, steps, { env = { HOME = home } })
end

local PROMPT = "\n> $" -- a fresh prompt, waiting: nothing after it yet

local count = sub.count

describe("the REPL", function()
  before_each(function()
    home = os.tmpname()
    os.remove(home)
    assert(os.execute("mkdir " .. sub.q(home)))
  end)

  after_each(function()
    os.execute("rm -rf " .. sub.q(home))
    sub.cleanup()
    assert_clean()
  end)

  describe("on a terminal", function()
    it("prints expressions as lua5.4 does: 1+2, =1+2, several values", function()
      local out, status, err = repl({
        { "expect", "> ", 10 }, { "send", "1+2" .. ENTER }, { "expect", "\n3\r?\n> ", 10 },
        { "send", "=1+2" .. ENTER }, { "expect", "\n3\r?\n> ", 10 },
        { "send", "'a', nil, 2.5" .. ENTER }, { "expect", "a\tnil\t2.5", 10 },
        { "send", "x = 1" .. ENTER }, { "expect", "> ", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      assert.truthy(out:find("\n3\n> =1+2\n3\n", 1, true), out)
      assert.truthy(out:find("\na\tnil\t2.5\n", 1, true), out)
      assert.falsy(out:find("> x = 1\n[^>]", 1), out) -- a statement prints nothing
    end)

    it("takes a pasted line of 8,000 characters (libedit wrote past its buffer)", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "x = '" .. string.rep("a", 8000) .. "' print('len', #x)" .. ENTER },
        { "expect", "len\t8000", 60 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out:sub(-300))
      assert.are.equal(0, status, out:sub(-300))
    end)

    it("continues incomplete input on a >> line", function()
      local out, status, err = repl({
        { "expect", "> ", 10 }, { "send", "for i = 1, 3 do" .. ENTER }, { "expect", ">> ", 10 },
        { "send", "print('line', i)" .. ENTER }, { "expect", ">> ", 10 },
        { "send", "end" .. ENTER }, { "expect", "line\t3.*> ", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      assert.truthy(out:find("line\t1\nline\t2\nline\t3\n", 1, true), out)
    end)

    it("runs each chunk as a task: suspending calls work directly", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; t0 = async.now(); async.sleep(0.3)" .. ENTER },
        { "expect", PROMPT, 10 },
        { "send", "=async.now() - t0 >= 0.3, async.current() ~= nil" .. ENTER },
        { "expect", "true\ttrue", 10 }, { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
    end)

    it("lets background tasks print while the prompt waits, and redraws what was typed", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; n = 0; ticker = async.spawn(function() " ..
          "while true do async.sleep(0.1); n = n + 1; print('tick', n) end end)" .. ENTER },
        { "expect", "tick\t1", 10 },
        { "send", "x = 4" }, { "expect", "tick\t4", 10 },
        { "send", "2" .. ENTER }, { "expect", "> ", 10 },
        { "send", "=x, n > 3" .. ENTER }, { "expect", "42\ttrue", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      -- Each tick erased the prompt line and was followed by the prompt with the text typed so
      -- far; the line entered in pieces ran as one.
      assert.truthy(out:find("tick\t3\n> x = 4", 1, true), out)
      assert.truthy(count(out, "> x = 4") >= 2, out)
      assert.truthy(out:find("\27[J", 1, true), out)
    end)

    it("reports a background failure nobody awaited above the prompt, then redraws it", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; async.spawn(function() async.sleep(0.3); " ..
          "async.spawn(error, 'background boom'); async.sleep(0.1); collectgarbage(); " ..
          "collectgarbage() end)" .. ENTER },
        { "expect", PROMPT, 10 }, { "send", "abc" }, { "expect", "background boom", 10 },
        { "expect", "\n> abc", 10 }, { "send", "\21" .. CTRL_D }, { "wait", 10 }, -- Ctrl-U, Ctrl-D
      })
      assert.is_nil(err, out)
      assert.are.equal(1, status, out) -- as for any script: a failure nobody saw is an error
      assert.truthy(out:find("> abc\r?\27%[Jlasync: a task failed and nobody awaited it:\n" ..
        "task spawned at stdin:1 failed: background boom", 1), out)
    end)

    it("cancels the running chunk on Ctrl-C, cleanup and all, leaving background tasks", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; bg = async.spawn(async.sleep, 1000)" .. ENTER },
        { "expect", PROMPT, 10 },
        { "send", "do local c <close> = setmetatable({}, {__close = function() " ..
          "print('cleanup ran') end}); print('sleeping'); async.sleep(100) end" .. ENTER },
        { "expect", "sleeping", 10 }, { "sleep", 0.3 }, { "signal", "INT" },
        { "expect", "cleanup ran.*interrupted.*> ", 10 },
        { "send", "=bg:status()" .. ENTER }, { "expect", "running", 10 },
        -- The next chunk is not cancelled: suspending calls still work.
        { "send", "async.sleep(0.01); print('after ' .. 'the interrupt')" .. ENTER },
        { "expect", "after the interrupt", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
    end)

    it("leaves nothing behind from a chunk cancelled in its sleep", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; print('sleeping'); async.sleep(100)" .. ENTER },
        { "expect", "sleeping", 10 }, { "sleep", 0.3 }, { "signal", "INT" },
        { "expect", "interrupted.*> ", 10 },
        -- Left besides the chunk asking: the REPL's task only; no deadline, no request.
        { "send", "c = async._debug.counts()" .. ENTER }, { "expect", PROMPT, 10 },
        { "send", "=c.tasks, c.timers, c.requests" .. ENTER },
        { "expect", "\n1\t0\t0", 10 }, { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
    end)

    it("interrupts a chunk that blocks the loop on Ctrl-C", function()
      local out, status, err = repl({
        { "expect", "> ", 10 }, { "send", "print('spinning'); while true do end" .. ENTER },
        { "expect", "spinning", 10 }, { "sleep", 0.3 }, { "signal", "INT" },
        { "expect", "interrupted.*> ", 10 },
        { "send", "=1 + 1" .. ENTER }, { "expect", "\n2", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
    end)

    it("clears the line on Ctrl-C at an idle prompt, twice, and stays", function()
      local out, status, err = repl({
        { "expect", "> ", 10 }, { "send", "garbage" }, { "expect", "garbage", 10 },
        { "sleep", 0.2 }, { "signal", "INT" }, { "expect", PROMPT, 10 },
        { "sleep", 0.2 }, { "signal", "INT" }, { "expect", PROMPT, 10 },
        { "send", "for i = 1," }, { "sleep", 0.2 }, { "send", ENTER }, { "expect", ">> ", 10 },
        { "sleep", 0.2 }, { "signal", "INT" }, { "expect", PROMPT, 10 }, -- abandons the chunk
        { "send", "=40 + 2" .. ENTER }, { "expect", "42", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      assert.falsy(out:find("garbage=", 1, true), out)
    end)

    it("leaves on Ctrl-D, saying how many tasks still run and cancelling them", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; for i = 1, 2 do async.spawn(function() " ..
          "local c <close> = setmetatable({}, {__close = function() print('cleanup', i) end}); " ..
          "async.sleep(1000) end) end" .. ENTER },
        { "expect", PROMPT, 10 }, { "send", CTRL_D }, { "wait", 15 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      assert.truthy(out:find("2 tasks are still running; cancelling them", 1, true), out)
      assert.truthy(out:find("cleanup\t1", 1, true), out)
      assert.truthy(out:find("cleanup\t2", 1, true), out)
    end)

    it("leaves on os.exit(code) with that status, cancelling the tasks", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "async = require 'lasync'; async.spawn(function() local c <close> = " ..
          "setmetatable({}, {__close = function() print('bg cleanup') end}); " ..
          "async.sleep(1000) end)" .. ENTER },
        { "expect", PROMPT, 10 }, { "send", "os.exit(3)" .. ENTER }, { "wait", 15 },
      })
      assert.is_nil(err, out)
      assert.are.equal(3, status, out)
      assert.truthy(out:find("1 task is still running; cancelling it", 1, true), out)
      assert.truthy(out:find("bg cleanup", 1, true), out)
    end)

    it("prints an error's message and a traceback that stops at the chunk", function()
      local out, status, err = repl({
        { "expect", "> ", 10 },
        { "send", "local function f() error('boom') end f()" .. ENTER },
        { "expect", "boom.*> ", 10 }, { "send", "x = = 1" .. ENTER },
        { "expect", "unexpected symbol.*> ", 10 }, { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      assert.truthy(out:find("stdin:1: boom\nstack traceback:\n", 1, true), out)
      assert.truthy(out:find("stdin:1: in main chunk", 1, true), out)
      assert.falsy(out:find("[lasync", 1, true), out)
      assert.falsy(out:find("xpcall", 1, true), out)
    end)

    it("writes the history to $HOME/.lasync_history and recalls it next time", function()
      local out, status, err = repl({
        { "expect", "> ", 10 }, { "send", "x = 'first entry'" .. ENTER }, { "expect", PROMPT, 10 },
        { "send", "for i = 1, 2 do" .. ENTER }, { "expect", ">> ", 10 },
        { "send", "end" .. ENTER }, { "expect", PROMPT, 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      local saved = sub.slurp(home .. "/.lasync_history")
      assert.truthy(saved:find("first", 1, true), saved)
      assert.truthy(saved:find("for", 1, true), saved)
      out, status, err = repl({
        { "expect", "> ", 10 }, { "send", UP .. UP }, { "expect", "first entry", 10 },
        { "send", ENTER }, { "expect", PROMPT, 10 },
        { "send", "=x" .. ENTER }, { "expect", "first entry", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
    end)

    it("completes globals and table fields on Tab", function()
      local out, status, err = repl({
        { "expect", "> ", 10 }, { "send", "async = require 'lasync'" .. ENTER },
        { "expect", PROMPT, 10 },
        -- Completed as far as gather / gather_settled agree, then run: a function, not nil.
        { "send", "async.ga" .. TAB }, { "expect", "ther", 10 },
        { "send", ENTER }, { "expect", "\nfunction: ", 10 },
        { "send", "=type(strin" .. TAB }, { "expect", "g", 10 }, { "send", ")" .. ENTER },
        { "expect", "table", 10 },
        -- Fields of the parts that load on first use (bindings/lasync.c) complete too, before
        -- anything read them.
        { "send", "=async.fet" .. TAB }, { "expect", "ch", 10 }, { "send", ENTER },
        { "expect", "\nfunction: ", 10 },
        { "send", "=async.fs.read_fi" .. TAB }, { "expect", "le", 10 }, { "send", ENTER },
        { "expect", "\nfunction: ", 10 },
        { "send", "s = 'x'" .. ENTER }, { "expect", PROMPT, 10 },
        { "send", "=s:upp" .. TAB }, { "expect", "er", 10 }, { "send", "()" .. ENTER },
        { "expect", "\nX", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
    end)

    it("reads plain lines on a terminal when libedit cannot be loaded", function()
      -- libedit is loaded when the REPL starts (host/libedit.c); a libedit.so.2 that is no
      -- library, found first, stands for a system without it.
      local dir = home .. "/lib"
      assert(os.execute("mkdir " .. sub.q(dir)))
      local f = assert(io.open(dir .. "/libedit.so.2", "w"))
      f:write("not a shared object\n")
      f:close()
      local out, status, err = pty.run({}, {
        { "expect", "without editing", 10 }, { "expect", "> ", 10 },
        { "send", "print(1+2)" .. ENTER }, { "expect", "\n3\r?\n", 10 },
        { "send", CTRL_D }, { "wait", 10 },
      }, { env = { HOME = home, LD_LIBRARY_PATH = dir } })
      assert.is_nil(err, out)
      assert.are.equal(0, status, out)
      assert.truthy(out:find("cannot load libedit: ", 1, true), out)
    end)
  end)

  describe("without a terminal", function()
    it("reads plain lines from a pipe: echo 'print(1+2)' | lasync -i", function()
      local out, err, code = sub.run("-i",
        { stdin = "print(1+2)\n=2*3, 'x'\nfor i=1,2 do\nprint(i)\nend\n" })
      assert.are.equal(0, code, err)
      assert.truthy(out:find("> 3\n> 6\tx\n> >> >> 1\n2\n> \n$"), out)
    end)

    it("reads on the loop: background tasks run while it waits for the next line", function()
      local script = sub.tmpfile([[
        printf '%s\n' "async = require 'lasync'; async.spawn(function() async.sleep(0.2); \
          print('background') end)"
        sleep 1.5
        printf '%s\n' "print('next line')"
      ]])
      local errfile = sub.tmpfile()
      local p = assert(io.popen("sh " .. sub.q(script) .. " | " .. sub.q(sub.LASYNC) .. " -i 2>" ..
        sub.q(errfile)))
      local out = p:read("a")
      local _, _, code = p:close()
      assert.are.equal(0, code, sub.slurp(errfile))
      local bg, nl = out:find("background", 1, true), out:find("next line", 1, true)
      assert.truthy(bg and nl and bg < nl, out)
    end)

    it("follows a script with -i, as lua -i does", function()
      local script = sub.tmpfile("x = 'set by the script'")
      local out, err, code = sub.run("-i " .. sub.q(script), { stdin = "=x\n" })
      assert.are.equal(0, code, err)
      assert.truthy(out:find("> set by the script\n", 1, true), out)
    end)

    it("gives stdin back in blocking mode, as the shell expects", function()
      local p = assert(io.popen("printf '=1\\n' | (" .. sub.q(sub.LASYNC) .. " -i >/dev/null; " ..
        "python3 -c 'import fcntl, os; print(fcntl.fcntl(0, fcntl.F_GETFL) & os.O_NONBLOCK)')"))
      local out = p:read("a")
      p:close()
      assert.are.equal("0\n", out)
    end)

    it("reports errors without host frames and goes on", function()
      local out, err, code = sub.run("-i", { stdin = "error('boom')\nprint('still here')\n" })
      assert.are.equal(0, code, err)
      assert.truthy(err:find("stdin:1: boom", 1, true), err)
      assert.falsy(err:find("[lasync", 1, true), err)
      assert.truthy(out:find("still here", 1, true), out)
    end)
  end)
end)
