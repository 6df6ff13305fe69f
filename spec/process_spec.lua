package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local raises = require "raises"
local sub = require "subprocess"

local process = async.process
local run, spawn = process.run, process.spawn

local MYPID = tonumber(async.fs.readlink("/proc/self"))

-- The children of this process still known to the kernel, zombies included.
local function children()
  local list = {}
  for _, e in ipairs(async.fs.readdir("/proc/self/task")) do
    local text = async.fs.read_file("/proc/self/task/" .. e.name .. "/children")
    for pid in text:gmatch("%d+") do list[#list + 1] = tonumber(pid) end
  end
  return list
end

local function alive(pid)
  local ok, st = pcall(async.fs.read_file, "/proc/" .. pid .. "/stat")
  return ok and not st:match("^%d+ %b() Z")
end

local function rss_kb()
  return tonumber(async.fs.read_file("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end

local function wait_until(pred, seconds)
  local deadline = async.now() + (seconds or 5)
  while not pred() do
    assert(async.now() < deadline, "timed out waiting")
    async.sleep(0.01)
  end
end

describe("async.process", function()
  after_each(function()
    assert_clean()
    wait_until(function() return #children() == 0 end)
  end)

  describe("run", function()
    it("captures stdout and stderr and reports the exit code", function()
      local r = run({ "sh", "-c", "echo out; echo err >&2; exit 3" })
      assert.are.equal(3, r.code)
      assert.is_false(r.ok)
      assert.are.equal("out\n", r.stdout)
      assert.are.equal("err\n", r.stderr)
      assert.is_false(r.timed_out)
      assert.is_nil(r.signal)
      r = run({ "true" })
      assert.is_true(r.ok)
      assert.are.equal(0, r.code)
      assert.are.equal("", r.stdout)
    end)

    it("passes arguments as they are, with no shell", function()
      local r = run({ "printf", "[%s]", "a b", "$HOME", "'q'", "" })
      assert.are.equal("[a b][$HOME]['q'][]", r.stdout)
    end)

    it("reports the signal that killed the child", function()
      local r = run({ "sh", "-c", "kill -9 $$" })
      assert.are.equal(9, r.signal)
      assert.is_false(r.ok)
    end)

    it("runs in cwd, with env merged into the environment or alone with clear_env", function()
      local dir = async.fs.mkdtemp("/tmp/lasync-proc-")
      assert.are.equal(async.fs.realpath(dir) .. "\n", run({ "pwd" }, { cwd = dir }).stdout)
      async.fs.rm(dir, { recursive = true })
      local r = run({ "sh", "-c", 'echo "$LASYNC_X:$PATH:$HOME"' },
        { env = { LASYNC_X = "x y", HOME = false } })
      assert.are.equal("x y:" .. os.getenv("PATH") .. ":\n", r.stdout)
      r = run({ "/usr/bin/env" }, { env = { ONLY = 1 }, clear_env = true })
      assert.are.equal("ONLY=1\n", r.stdout)
    end)

    it("feeds stdin from a string, an array of strings, or a function; null by default", function()
      assert.are.equal("abc", run({ "cat" }, { stdin = "abc" }).stdout)
      assert.are.equal("a\nb\n", run({ "cat" }, { stdin = { "a\n", "b\n" } }).stdout)
      local n = 0
      local r = run({ "wc", "-c" }, { stdin = function()
        n = n + 1
        if n <= 100 then return ("x"):rep(10000) end
      end })
      assert.are.equal(1000000, tonumber(r.stdout))
      assert.are.equal("", run({ "cat" }).stdout)
      assert.are.equal("", run({ "cat" }, { stdin = "null" }).stdout)
    end)

    it("a child that does not read its stdin does not block the feed", function()
      local r = run({ "true" }, { stdin = ("x"):rep(4 << 20) })
      assert.is_true(r.ok)
    end)

    it("sends output to a function, to null, or lets the child inherit it", function()
      local chunks = {}
      local r = run({ "sh", "-c", "echo one; echo two >&2" },
        { stdout = function(c) chunks[#chunks + 1] = c end, stderr = "null" })
      assert.are.equal("one\n", table.concat(chunks))
      assert.is_nil(r.stdout)
      assert.is_nil(r.stderr)
      r = run({ "true" }, { stdout = "inherit" })
      assert.is_nil(r.stdout)
      local err = raises(run, { "sh", "-c", "echo x" }, { stdout = function() error("sink broke") end })
      assert.truthy(tostring(err):match("sink broke"))
    end)

    it("max_output fails with kind too_large and kills the child", function()
      local t0 = async.now()
      local err = raises(run, { "yes" }, { max_output = 100000 })
      assert.are.equal("too_large", err.kind)
      assert.are.equal(100000, err.max_output)
      assert.is_true(async.now() - t0 < 5)
      assert.are.equal(5, #run({ "printf", "12345" }, { max_output = 5 }).stdout)
    end)

    it("check = true raises kind exit for a failed command", function()
      local err = raises(run, { "sh", "-c", "echo bad >&2; exit 4" }, { check = true })
      assert.are.equal("exit", err.kind)
      assert.are.equal(4, err.code)
      assert.are.equal("bad\n", err.stderr)
      assert.truthy(err.message:match("'sh' exited with code 4"))
      assert.is_true(run({ "true" }, { check = true }).ok)
    end)

    it("a timeout sends SIGTERM to the group and reports timed_out", function()
      local t0 = async.now()
      local r = run({ "sleep", "30" }, { timeout = 0.2 })
      assert.is_true(r.timed_out)
      assert.is_false(r.ok)
      assert.are.equal(process.signals.SIGTERM, r.signal)
      assert.is_true(async.now() - t0 < 3)
    end)

    it("a child ignoring SIGTERM is killed after kill_grace", function()
      local t0 = async.now()
      local r = run({ "sh", "-c", "trap '' TERM; sleep 30" }, { timeout = 0.2, kill_grace = 0.3 })
      local elapsed = async.now() - t0
      assert.is_true(r.timed_out)
      assert.are.equal(process.signals.SIGKILL, r.signal)
      assert.is_true(elapsed >= 0.5 and elapsed < 4, "took " .. elapsed .. " s")
    end)

    it("a grandchild holding stdout open cannot hang a run with a timeout", function()
      local t0 = async.now()
      local r = run({ "sh", "-c", "sleep 100 & echo hi" }, { timeout = 0.3 })
      local elapsed = async.now() - t0
      assert.are.equal("hi\n", r.stdout)
      assert.is_true(r.timed_out)
      assert.are.equal(0, r.code) -- the shell itself had exited at once
      assert.is_true(elapsed < 3, "took " .. elapsed .. " s")
    end)

    it("200 runs side by side", function()
      local tasks = {}
      for i = 1, 200 do
        tasks[i] = async.spawn(function() return run({ "sh", "-c", "echo " .. i }).stdout end)
      end
      for i = 1, 200 do assert.are.equal(i .. "\n", tasks[i]:await()) end
    end)

    it("a missing executable is an error of kind spawn with code ENOENT and the path", function()
      local err = raises(run, { "/no/such/program", "x" })
      assert.are.equal("spawn", err.kind)
      assert.are.equal("ENOENT", err.code)
      assert.are.equal("/no/such/program", err.path)
      assert.are.equal("ENOENT", raises(run, { "no-such-program-lasync" }).code)
      assert.are.equal("ENOENT", raises(run, { "true" }, { cwd = "/no/such/dir" }).code)
    end)

    it("shell runs a command line through /bin/sh", function()
      assert.are.equal("3\n", process.shell("printf 'a\\nb\\nc\\n' | wc -l").stdout)
      assert.are.equal(2, process.shell("exit 2").code)
    end)
  end)

  describe("spawn", function()
    it("gives the pid and pipes as streams", function()
      local p <close> = spawn({ "sort" }, { stdin = "pipe", stdout = "pipe" })
      assert.are.equal("number", type(p.pid))
      assert.is_nil(p.stderr)
      p.stdin:write("b\na\n")
      p.stdin:close()
      local lines = {}
      for line in p.stdout:lines() do lines[#lines + 1] = line end
      assert.are.same({ "a", "b" }, lines)
      local st = p:wait()
      assert.are.same({ code = 0, ok = true }, st)
      assert.are.same(st, p:status())
    end)

    it("kill signals the child's group; after the exit it sends nothing", function()
      local p <close> = spawn({ "sh", "-c", "sleep 30 & wait" })
      async.sleep(0.1)
      assert.is_nil(p:status())
      assert.is_true(p:kill())
      local st = p:wait()
      assert.are.equal(process.signals.SIGTERM, st.signal)
      assert.is_false(p:kill("SIGKILL")) -- reaped: its pid is never signalled again
      assert.is_false(p:kill(9))
    end)

    it("<close> kills a running child and reaps it", function()
      local pid
      do
        local p <close> = spawn({ "sleep", "30" })
        pid = p.pid
        assert.is_true(alive(pid))
      end
      assert.is_false(alive(pid))
    end)

    it("a write to a child that closed its stdin is an error object, not SIGPIPE", function()
      local p <close> = spawn({ "true" }, { stdin = "pipe" })
      p:wait()
      local ok, err = pcall(function()
        for _ = 1, 20 do p.stdin:write(("x"):rep(65536)) end
      end)
      assert.is_false(ok)
      assert.are.equal("table", type(err))
      assert.truthy(err.kind)
    end)

    it("reads 100 MB of lines from a child with bounded memory", function()
      local p <close> = spawn({ "sh", "-c", "yes 'a line of text that repeats for a while' | " ..
        "head -c 100000000" }, { stdout = "pipe" })
      collectgarbage()
      local base, heap_base = rss_kb(), collectgarbage("count")
      local peak, heap_peak, bytes, n = base, heap_base, 0, 0
      for line in p.stdout:lines() do
        bytes = bytes + #line + 1
        n = n + 1
        if n % 200000 == 0 then
          peak = math.max(peak, rss_kb())
          heap_peak = math.max(heap_peak, collectgarbage("count"))
          -- read_max plus at most one slab read past it (64 KiB): stream.c's bound
          assert.is_true(p.stdout:stats().buffered <= p.stdout:stats().read_max + 64 * 1024)
        end
      end
      local st = p:wait()
      assert.is_true(st.ok, "exit code " .. tostring(st.code) .. ", signal " .. tostring(st.signal))
      assert.is_true(math.abs(bytes - 100000000) <= 1) -- the last line lacks a newline
      local slack = 2 * heap_base -- the collector's pause, as in fs_spec
      assert.is_true(heap_peak - heap_base < 32 * 1024 + slack,
        "Lua heap grew by " .. (heap_peak - heap_base))
      if not require("spec.support.sanitized") then
        assert.is_true(peak - base < 48 * 1024 + slack, ("RSS grew by %d KiB"):format(peak - base))
      end
    end)
  end)

  describe("misuse", function()
    it("names the argument and the option", function()
      assert.truthy(raises(run, "ls"):match("bad argument #1 'argv' %(array of strings expected"))
      assert.truthy(raises(run, {}):match("the program to run is missing"))
      assert.truthy(raises(run, { "echo", 1 }):match("argv%[2%] is a number"))
      assert.truthy(raises(run, { "echo", "a\0b" }):match("argv%[2%] contains a NUL byte"))
      assert.truthy(raises(run, { "true" }, { timeout = "1" }):match("bad option 'timeout'"))
      assert.truthy(raises(run, { "true" }, { stdout = "pipe" }):match("bad option 'stdout'"))
      assert.truthy(raises(run, { "true" }, { stdin = 5 }):match("bad option 'stdin'"))
      assert.truthy(raises(run, { "true" }, { env = { ["A=B"] = "x" } }):match("bad option 'env'"))
      assert.truthy(raises(spawn, { "true" }, { stdin = "capture" }):match("bad option 'stdin'"))
      assert.truthy(raises(process.shell, 42):match("bad argument #1 'command'"))
      local p <close> = spawn({ "true" })
      assert.truthy(raises(p.kill, p, "SIGNOPE"):match("bad argument #2 'signal'"))
      p:wait()
    end)
  end)

  describe("cancellation", function()
    it("of a task in run kills the child's group and leaves nothing behind", function()
      for delay = 0, 5 do
        local t = async.spawn(function()
          return run({ "sh", "-c", "sleep 30 & sleep 30" }, { stdin = ("x"):rep(1 << 20) })
        end)
        for _ = 1, delay do async.sleep(0) end
        async.sleep(delay * 0.02)
        t:cancel()
        assert.is_true(async.is_cancelled(select(2, pcall(t.await, t))))
      end
    end)

    it("of a task waiting on a spawned process leaves it to <close>", function()
      local pid
      local t = async.spawn(function()
        local p <close> = spawn({ "sleep", "30" })
        pid = p.pid
        p:wait()
      end)
      async.sleep(0.1)
      t:cancel()
      pcall(t.await, t)
      assert.is_false(alive(pid))
    end)

    it("Ctrl-C in the host cancels the tasks, which kill their children's groups", function()
      if not sub.LASYNC then pending("needs the lasync executable") return end
      local pidfile = sub.tmpfile()
      local script = sub.tmpfile(([[
        local async = require "lasync"
        local p = async.process.spawn({ "sh", "-c", "echo $$ > %s; sleep 100 & sleep 100" })
        p:wait()
      ]]):format(pidfile))
      local t0 = async.now()
      local r = process.shell(("%s %s & pid=$!; sleep 0.5; kill -INT $pid; wait $pid; echo $?")
        :format(sub.q(sub.LASYNC), sub.q(script)), { timeout = 10 })
      assert.is_true(async.now() - t0 < 5)
      assert.is_false(r.timed_out)
      local child = tonumber(sub.slurp(pidfile))
      assert.is_truthy(child)
      wait_until(function() return not alive(child) end, 2)
      sub.cleanup()
    end)
  end)
end)

describe("async.process misuse found by a hostile pass", function()
  after_each(assert_clean)

  it("refuses a signal number that is no signal, instead of wrapping 2^32 + 9 to SIGKILL", function()
    local p = spawn({ "sleep", "10" })
    for _, sig in ipairs { (1 << 32) + 9, 1 << 32, 999, 65 } do
      assert.matches("process:kill: bad argument #2 'signal'", raises(p.kill, p, sig), 1, true)
    end
    assert.is_nil(p:status()) -- still running: nothing was sent
    p:close()
  end)

  it("raises kind closed for status and kill after close, and closing twice does nothing", function()
    local p = spawn({ "sleep", "10" })
    p:close()
    assert.are.equal("closed", raises(p.status, p).kind)
    assert.are.equal("closed", raises(p.kill, p).kind)
    assert.are.equal("closed", raises(p.wait, p).kind)
    p:close()
  end)

  it("refuses a cwd with a NUL byte instead of cutting it", function()
    assert.matches("bad option 'cwd'", raises(run, { "pwd" }, { cwd = "/tmp\0/x" }), 1, true)
  end)

  it("gives a grandchild holding the pipes one second in all, not one per pipe", function()
    local t0 = async.now()
    local r = process.shell("setsid sleep 5 & echo hi", { timeout = 0.3, kill_grace = 0.1 })
    local took = async.now() - t0
    assert.is_true(r.timed_out)
    assert.is_true(took < 2.2, ("took %.2f s"):format(took)) -- two pipes in turn took 2.4 s
  end)
end)
