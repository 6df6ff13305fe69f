package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

-- The `lasync` command line, run as a child process (spec/support/subprocess.lua).
local sub = require "subprocess"
local LASYNC = assert(sub.LASYNC, "LASYNC must name the lasync executable")
local tmpfile, slurp, q = sub.tmpfile, sub.slurp, sub.q

local function run(args, stdin) return sub.run(args, { stdin = stdin }) end
local function run_script(source, args) return sub.run_script(source, args) end

local count = sub.count

describe("the lasync command", function()
  after_each(function()
    sub.cleanup()
    assert_clean()
  end)

  describe("arguments", function()
    it("builds the arg table as lua does: arg[0] the script, arg[1..] its arguments, arg[-1] the interpreter", function()
      local script = tmpfile([[
        print(arg[-1], arg[0], arg[1], arg[2], #arg)
        print(select("#", ...), ...)
      ]])
      local out, err, code = run(q(script) .. " one 'two words'")
      assert.are.equal(0, code, err)
      assert.are.equal(LASYNC .. "\t" .. script .. "\tone\ttwo words\t2\n2\tone\ttwo words\n", out)
    end)

    it("puts options before the script at negative indices", function()
      local script = tmpfile("print(arg[-3], arg[-2], arg[-1], arg[0], arg[1])")
      local out, err, code = run("-e 'x=1' " .. q(script) .. " a")
      assert.are.equal(0, code, err)
      assert.are.equal(LASYNC .. "\t-e\tx=1\t" .. script .. "\ta\n", out)
    end)

    it("runs -e code, in order, before the script", function()
      local script = tmpfile("print('script', x)")
      local out, err, code = run("-e 'x = 41' -e 'x = x + 1; print(\"e\", x)' " .. q(script))
      assert.are.equal(0, code, err)
      assert.are.equal("e\t42\nscript\t42\n", out)
    end)

    it("with -l mod requires a module into a global", function()
      local out, err, code = run("-l cjson -e 'print(cjson.encode({1, 2}))'")
      assert.are.equal(0, code, err)
      assert.are.equal("[1,2]\n", out)
    end)

    it("with -l g=mod requires a module into the global g", function()
      local out, err, code = run("-l J=cjson -e 'print(J.encode({true}))'")
      assert.are.equal(0, code, err)
      assert.are.equal("[true]\n", out)
    end)

    it("with -v prints the version and exits 0", function()
      local out, _, code = run("-v")
      assert.are.equal(0, code)
      assert.matches("^lasync %d+%.%d+", out)
      assert.matches("Lua 5.4", out, 1, true)
    end)

    it("with -h prints the usage on stdout and exits 0", function()
      local out, _, code = run("-h")
      assert.are.equal(0, code)
      assert.matches("usage:", out, 1, true)
      assert.matches("-e stat", out, 1, true)
    end)

    it("with an unknown option prints the usage on stderr and exits 1", function()
      local out, err, code = run("-Z")
      assert.are.equal(1, code)
      assert.matches("unrecognized option '-Z'", err, 1, true)
      assert.matches("usage:", err, 1, true)
      assert.are.equal("", out)
    end)

    it("in stock lua5.4, says so when a task spawned outside async.run never ran", function()
      local dir = os.getenv("LASYNC_MODULE_DIR") or "build"
      local so = io.open(dir .. "/lasync.so")
      if not so then return pending("no lasync.so in " .. dir) end
      so:close()
      local err = sub.tmpfile()
      local p = io.popen("LUA_CPATH=" .. sub.q(dir .. "/?.so;;") .. " lua5.4 -e " ..
        sub.q("local a = require 'lasync'; a.spawn(function() error('x') end)") .. " 2>" .. sub.q(err))
      p:read("a")
      p:close()
      assert.matches("1 task spawned outside async.run never ran", sub.slurp(err), 1, true)
    end)

    it("names the option whose argument is missing, on stderr, as lua5.4 does", function()
      for _, args in ipairs { "-e", "-l", "-e -v", "-l -e x" } do
        local out, err, code = run(args)
        assert.are.equal(1, code, args)
        assert.matches("'-" .. args:sub(2, 2) .. "' needs argument", err, 1, true)
        assert.matches("usage:", err, 1, true)
        assert.are.equal("", out, args)
      end
    end)

    it("takes a LASYNC_MAX_MEMORY past what a size_t holds as no cap", function()
      for _, v in ipairs { "1e30", "inf", "18446744073709551615" } do
        local out, err, code = sub.run("-e 'print(1)'", { prefix = "LASYNC_MAX_MEMORY=" .. v .. " " })
        assert.are.same({ "1\n", 0 }, { out, code }, err)
      end
    end)

    it("with - runs stdin as the script, with arguments", function()
      local out, err, code = run("- a b", "print('stdin', arg[0], ...)")
      assert.are.equal(0, code, err)
      assert.are.equal("stdin\t-\ta\tb\n", out)
    end)

    it("runs stdin when given no script and stdin is not a terminal", function()
      local out, err, code = run("", "print('from stdin')")
      assert.are.equal(0, code, err)
      assert.are.equal("from stdin\n", out)
    end)

    it("with -- stops handling options, so a script may look like an option", function()
      local script = tmpfile("print('ran', ...)")
      local out, err, code = run("-- " .. q(script) .. " -e -v")
      assert.are.equal(0, code, err)
      assert.are.equal("ran\t-e\t-v\n", out)
    end)
  end)

  describe("the main chunk", function()
    it("runs as a task: async.sleep works at top level", function()
      local out, err, code = run_script([[
        local async = require "lasync"
        local t0 = async.now()
        async.sleep(0.1)
        print(async.now() - t0 >= 0.1, async.current() ~= nil)
      ]])
      assert.are.equal(0, code, err)
      assert.are.equal("true\ttrue\n", out)
    end)

    it("finds C modules on package.cpath and Lua modules on package.path (cjson loads)", function()
      local out, err, code = run_script([[
        local cjson = require "cjson"
        print(cjson.encode({ a = 1 }))
      ]])
      assert.are.equal(0, code, err)
      assert.are.equal('{"a":1}\n', out)
    end)

    it("makes the process wait for background tasks spawned at top level", function()
      local out, err, code = run_script([[
        local async = require "lasync"
        async.spawn(function() async.sleep(0.2); print("background done") end)
        print("main done")
      ]])
      assert.are.equal(0, code, err)
      assert.are.equal("main done\nbackground done\n", out)
    end)
  end)

  describe("errors", function()
    it("an uncaught error in the main task prints the message and a traceback and exits 1", function()
      local _, err, code = run_script([[
        local function f() error("main went wrong") end
        f()
      ]])
      assert.are.equal(1, code)
      assert.matches("main went wrong", err, 1, true)
      assert.matches("stack traceback", err, 1, true)
      assert.matches("task 'main' failed: [^\n]*:1: main went wrong", err)
      assert.matches("in local 'f'", err, 1, true)
    end)

    -- Before, the host went on serving, silently, until interrupted: the failure was printed
    -- only then (found by the memory sweep, where main failed with a server open).
    it("a main chunk that fails ends the program: open servers and sleeping tasks are cancelled", function()
      local out, err, code = run_script([[
        local async = require "lasync"
        local srv = async.net.listen({ port = 0 }, function() end)
        local web = async.http.serve(function() return "hi" end, { port = 0 })
        async.spawn(function()
          local ok, e = pcall(async.sleep, 60)
          print("worker:", ok, e.message)
        end)
        async.sleep(0)
        assert(srv.port > 0 and web.port > 0)
        error("setup went wrong")
      ]])
      assert.are.equal(1, code)
      assert.are.equal("worker:\tfalse\tthe main task failed\n", out)
      assert.matches("setup went wrong", err, 1, true)
      assert.matches("stack traceback", err, 1, true)
    end)

    it("a failing task nobody awaits is reported on stderr once and makes the exit status 1", function()
      local out, err, code = run_script([[
        local async = require "lasync"
        async.spawn(function() async.sleep(0.05); error("unwatched failure") end)
        print("main done")
      ]])
      assert.are.equal(1, code)
      assert.are.equal("main done\n", out)
      assert.are.equal(1, count(err, "unwatched failure"), err)
      -- named by its function, as Lua's traceback names one: defined on the script's line 2
      assert.matches("task function <[^>\n]*:2> failed: [^\n]*unwatched failure", err)
    end)

    it("a failing task nobody awaits is reported even if the main task ended long before", function()
      local _, err, code = run_script([[
        local async = require "lasync"
        local t = async.spawn(function() error("dropped failure") end)
        t = nil
        collectgarbage(); collectgarbage()
        async.sleep(0.05)
        collectgarbage(); collectgarbage()
      ]])
      assert.are.equal(1, code)
      assert.are.equal(1, count(err, "dropped failure"), err)
    end)

    it("a task that fails and is awaited is not reported twice", function()
      local _, err, code = run_script([[
        local async = require "lasync"
        local t = async.spawn(function() async.sleep(0.05); error("awaited failure") end)
        t:await()
      ]])
      assert.are.equal(1, code)
      assert.are.equal(1, count(err, "awaited failure"), err)
    end)

    it("a task that fails, is awaited and whose error is handled is not reported at all", function()
      local out, err, code = run_script([[
        local async = require "lasync"
        local t = async.spawn(function() error("handled failure") end)
        print(pcall(t.await, t))
      ]])
      assert.are.equal(0, code, err)
      assert.matches("handled failure", out, 1, true)
      assert.are.equal(0, count(err, "handled failure"), err)
    end)

    it("a cancelled task is not reported as a failure", function()
      local _, err, code = run_script([[
        local async = require "lasync"
        local t = async.spawn(function() async.sleep(10) end)
        async.sleep(0)
        t:cancel()
      ]])
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
    end)

    it("reports a deadlock and exits non-zero instead of hanging", function()
      local t0 = async.now()
      local _, err, code = run_script([[
        local async = require "lasync"
        local f = async.future()
        f:await()
      ]])
      assert.is_true(async.now() - t0 < 10, "the deadlocked process hung")
      assert.are_not.equal(0, code)
      assert.are_not.equal(124, code) -- killed by `timeout`
      assert.matches("deadlock", err, 1, true)
    end)
  end)

  describe("SIGINT", function()
    local function interrupt(source)
      local script, out, err, ready = tmpfile(source), tmpfile(), tmpfile(), tmpfile()
      os.remove(ready)
      -- Start lasync in the background, wait until the script says it is ready, send SIGINT.
      local sh = table.concat({
        q(LASYNC) .. " " .. q(script) .. " " .. q(ready) .. " >" .. q(out) .. " 2>" .. q(err) .. " & pid=$!",
        "i=0; while [ ! -e " .. q(ready) .. " ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
        "sleep 0.1; kill -INT $pid",
        "i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
        "kill -0 $pid 2>/dev/null && { kill -KILL $pid; echo hung; }",
        "wait $pid; echo $?",
      }, "\n")
      local p = assert(io.popen("sh -c " .. q(sh), "r"))
      local status = p:read("a")
      p:close()
      return tonumber(status:match("(%d+)%s*$")), slurp(out), slurp(err), status
    end

    local READY = [[
      local async = require "lasync"
      local function ready() io.open(arg[1], "w"):close() end
    ]]

    it("cancels the main task, runs <close> cleanup and exits 130", function()
      local code, out, err, status = interrupt(READY .. [[
        local guard <close> = setmetatable({}, { __close = function(_, e)
          print("closed", async.is_cancelled(e)); io.stdout:flush()
        end })
        ready()
        async.sleep(10)
        print("not reached")
      ]])
      assert.are.equal(130, code, status .. err)
      assert.are.equal("closed\ttrue\n", out)
    end)

    it("lets pcall cleanup run before exiting 130", function()
      local code, out, err, status = interrupt(READY .. [[
        ready()
        local ok, e = pcall(async.sleep, 10)
        print("cleanup", ok, async.is_cancelled(e)); io.stdout:flush()
        error(e, 0)
      ]])
      assert.are.equal(130, code, status .. err)
      assert.are.equal("cleanup\tfalse\ttrue\n", out)
    end)

    it("cancels background tasks too, running their cleanup", function()
      local code, out, err, status = interrupt(READY .. [[
        async.spawn(function()
          local ok, e = pcall(async.sleep, 10)
          print("background cleanup", async.is_cancelled(e)); io.stdout:flush()
          error(e, 0)
        end)
        async.sleep(0)
        ready()
        async.sleep(10)
      ]])
      assert.are.equal(130, code, status .. err)
      assert.matches("background cleanup\ttrue\n", out, 1, true)
    end)
  end)
end)
