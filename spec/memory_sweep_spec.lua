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

-- The I/O layers at the cap (brief of issue 14's remainder): TCP listen/connect/read/write, files,
-- processes and their pipes, worker threads and the HTTP server, each a place where a libuv
-- callback hands memory to Lua.
local IO_SCRIPT = [=[
local async = require "lasync"
-- net: listen, connect, read, write
local srv = async.net.listen({ port = 0 }, function(conn)
  local line = conn:read_line()
  conn:write(("x"):rep(20000), line, "\n")
  conn:close()
end)
local function tcp(i)
  local c = async.net.connect("127.0.0.1", srv.port, { timeout = 5 })
  c:write("hello " .. i .. "\n")
  local got = {}
  while true do local s = c:read() if not s then break end got[#got + 1] = s end
  c:close()
  return #table.concat(got)
end
local ts = {}
for i = 1, 20 do ts[i] = async.spawn(tcp, i) end
for _, n in ipairs(async.gather(table.unpack(ts))) do assert(n > 20000) end
srv:close()
-- fs
local dir = async.fs.mkdtemp("/tmp/lasync-sweep-XXXXXX")
local path = dir .. "/f.txt"
async.fs.write_file(path, ("line\n"):rep(2000), { atomic = true })
local n = 0
for _ in async.fs.lines(path) do n = n + 1 end
assert(n == 2000)
local f <close> = async.fs.open(path, "r+")
assert(#f:read(100) == 100)
f:seek("set", 0)
f:write("head")
f:close()
assert(#async.fs.read_file(path) == 10000)
async.fs.rm(dir, { recursive = true })
-- process
local r = async.process.run({ "/bin/sh", "-c", "echo out; echo err >&2; head -c 30000 /dev/zero" },
  { stdin = "feed\n", timeout = 10 })
assert(r.ok and #r.stdout > 30000, tostring(r.stderr))
local p <close> = async.process.spawn({ "cat" }, { stdin = "pipe", stdout = "pipe" })
p.stdin:write("a\nb\n")
p.stdin:close()
local lines = {}
for l in p.stdout:lines() do lines[#lines + 1] = l end
assert(#lines == 2 and p:wait().ok)
-- threads
local sum = async.to_thread(function(a, b)
  local s = 0
  for i = a, b do s = s + i end
  return s
end, 1, 1000)
assert(sum == 500500)
local pool <close> = async.thread.pool({ size = 2 })
local squares = pool:map(function(x) return x * x end, { 1, 2, 3, 4, 5, 6 })
assert(squares[6] == 36)
-- the HTTP server, fetched
local app = async.http.router()
app:get("/hello/{name}", function(req) return "hi " .. req.params.name end)
app:post("/echo", function(req, res) res:write(req:body()) end)
local hs <close> = async.http.serve(app, { port = 0 })
local base = "http://127.0.0.1:" .. hs.port
local fs = {}
for i = 1, 10 do
  fs[i] = async.spawn(function()
    local a = async.fetch(base .. "/hello/" .. i)
    local b = async.fetch(base .. "/echo", { method = "POST", body = ("b"):rep(5000) })
    return a:text() .. #b:text()
  end)
end
for i, v in ipairs(async.gather(table.unpack(fs))) do assert(v == "hi " .. i .. "5000", v) end
hs:close()
print("done")
]=]

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
        { prefix = ("export LASYNC_MAX_MEMORY=%.3f; "):format(m) })
      assert(status == 0 or status == 1,
        ("cap %.3f MiB: status %s\n%s"):format(m, tostring(status), err:sub(1, 2000)))
      assert(err:find("not enough memory", 1, true),
        ("cap %.2f MiB: status %d without a memory error:\n%s"):format(m, status, err:sub(1, 2000)))
      if status == 0 then assert.are.equal("done\n", out) end
    end
  end)

  it("net, fs, process, threads and the HTTP server at the cap: 0, or 1 with the error", function()
    local path = sub.tmpfile(IO_SCRIPT)
    for _, m in ipairs(caps()) do
      local out, err, status = sub.run(sub.q(path),
        { prefix = ("export LASYNC_MAX_MEMORY=%.3f; "):format(m) })
      assert(status == 0 or status == 1,
        ("cap %.3f MiB: status %s\n%s"):format(m, tostring(status), err:sub(1, 2000)))
      if status == 0 then
        assert.are.equal("done\n", out)
      else
        assert(err:find("not enough memory", 1, true),
          ("cap %.2f MiB: status 1 without a memory error:\n%s"):format(m, err:sub(1, 2000)))
      end
    end
  end)

  -- 20 clients of a logging server, swept over the caps where memory runs out mid-request.
  -- Requests were lost at most of them: an event taken before its connection could be pushed
  -- (server.c pop_event), a dispatcher or a request task a memory error ended unprotected. A
  -- lost request is a client waiting for its timeout, 5 s here: none may.
  it("no HTTP client waits for its timeout: every request is answered, refused or cut", function()
    local path = sub.tmpfile([[
      local async = require "lasync"
      local app = async.http.router()
      app:get("/hello/{name}", function(req) return "hi " .. req.params.name end)
      app:post("/echo", function(req, res) res:write(req:body()) end)
      local hs <close> = async.http.serve(app, { port = 0, log = true })
      local base = "http://127.0.0.1:" .. hs.port
      local fs = {}
      for i = 1, 20 do
        fs[i] = async.spawn(function()
          local a = async.fetch(base .. "/hello/" .. i, { timeout = 5 })
          local b = async.fetch(base .. "/echo", { method = "POST", body = ("b"):rep(5000),
            timeout = 5 })
          return a:text() .. #b:text()
        end)
      end
      for _, r in ipairs(async.gather_settled(fs)) do
        if not r.ok and type(r.error) == "table" and r.error.kind == "timeout" then
          io.stdout:write("TIMEOUT ")
        end
      end
      print("done")
    ]])
    for m = 0.28, 0.50, 0.005 do
      local out, err, status = sub.run(sub.q(path),
        { prefix = ("export LASYNC_MAX_MEMORY=%.3f; "):format(m) })
      assert(status == 0 or status == 1,
        ("cap %.3f MiB: status %s\n%s"):format(m, tostring(status), err:sub(1, 2000)))
      assert.is_nil(out:find("TIMEOUT", 1, true), ("cap %.3f MiB: %s"):format(m, out))
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

  -- A handler task that cannot start leaves its connection to the server's reaper, woken only
  -- when a start has failed. Before, the client waited for its own timeout (the I/O sweep
  -- above hung at 0.45 MiB), and a net server's max_connections lost the slot for good.
  -- async._debug.starve_next_start() makes the next start fail as if memory had run out.
  it("an HTTP request whose task cannot start is answered 503", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local srv <close> = async.http.serve(function() return "hi" end, { port = 0 })
      local url = "http://127.0.0.1:" .. srv.port .. "/"
      local c = async.spawn(function() return async.fetch(url, { timeout = 20 }) end)
      async.sleep(0) -- the client has started and sent its request
      async._debug.starve_next_start() -- the request's task, next to start, fails
      local res = c:await()
      print(res.status, res:text())
      print(async.fetch(url).status) -- the server goes on
    ]])
    assert.are.equal("503\tService Unavailable\n\n200\n", out)
    assert.are.equal(1, status) -- the failed start is reported, as any failure nobody saw
    assert.matches("not enough memory: a task could not start", err, 1, true)
  end)

  -- The server's one dispatcher called on_request unprotected: a memory error building a
  -- request or spawning its task ended it, and every later request waited for its client's
  -- timeout. async._debug.fail_next_spawn() makes the next async.spawn raise as at the cap.
  it("an HTTP request whose task cannot be spawned costs only its connection", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local srv <close> = async.http.serve(function() return "hi" end, { port = 0 })
      local url = "http://127.0.0.1:" .. srv.port .. "/"
      local c = async.spawn(function() return async.fetch(url, { timeout = 10 }) end)
      async.sleep(0) -- the client has started
      async._debug.fail_next_spawn() -- the request's task, the next spawned, cannot be
      local ok, e = pcall(c.await, c)
      print(ok, e.kind) -- closed unanswered, not left to time out
      print(async.fetch(url, { timeout = 10 }).status) -- the server goes on
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal("false\tprotocol\n200\n", out)
  end)

  -- Past its handler's xpcall, a request's task allocates (the log line, the report, the 500),
  -- and at the cap a memory error there (even at a call to pcall, with no room for its frame)
  -- ended the task after it had unlisted its request and before it finished the connection:
  -- the client waited for its own timeout (http_sweep.lua hung 30 s at caps 0.30 to 0.48
  -- MiB). The request now stays listed until it is answered, and the reaper, woken also when a
  -- memory error ends a task, answers it 503. async._debug.fail_next_alloc() makes the next
  -- allocation fail: armed from the log function, it strikes the report of the handler's error.
  it("an HTTP request whose task a memory error ends after its handler is answered 503", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local armed = true
      local srv <close> = async.http.serve(function(req)
        if req.path == "/fail" then error("boom") end
        return "hi"
      end, { port = 0, log = function()
        if armed then armed = false; async._debug.fail_next_alloc() end
      end })
      local url = "http://127.0.0.1:" .. srv.port .. "/"
      local res = async.fetch(url .. "fail", { timeout = 10 })
      print(res.status, res:text())
      print(async.fetch(url, { timeout = 10 }).status) -- the server goes on
    ]])
    assert.are.equal("503\tService Unavailable\n\n200\n", out, err)
    assert.are.equal(1, status) -- the task's failure is still reported (the reaper saw it end)
    assert.matches("not enough memory", err, 1, true)
  end)

  it("a TCP connection whose handler cannot start is closed and its slot given back", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local srv <close> = async.net.listen({ port = 0, max_connections = 1 }, function(conn)
        conn:write("hello\n")
      end)
      local c = async.spawn(function()
        local conn <close> = async.net.connect("127.0.0.1", srv.port)
        return async.timeout(20, conn.read, conn)
      end)
      async.sleep(0) -- the client has started connecting
      async._debug.starve_next_start() -- the handler's task, next to start, fails
      print(c:await())
      local conn <close> = async.net.connect("127.0.0.1", srv.port) -- the one slot is free
      print(async.timeout(20, conn.read_line, conn))
    ]])
    assert.are.equal("nil\nhello\n", out)
    assert.are.equal(1, status)
    assert.matches("not enough memory: a task could not start", err, 1, true)
  end)
  -- A server's helper tasks (dispatcher, reaper, logger, accept loop) are spawned by
  -- core._spawn_helper: at the cap a memory error can end one outside every pcall (entering
  -- pcall needs stack), which Lua code cannot catch; the task body calls its function again
  -- instead (bindings/core/revive.c). Without it the HTTP server's reaper died at some caps and
  -- the next request whose task died waited for its client's timeout.
  it("a helper task that a memory error ends runs its function again, with its arguments",
    function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local runs = 0
      local t = async._debug.spawn_helper(function(a, b)
        runs = runs + 1
        if runs == 1 then
          async._debug.fail_next_alloc()
          local x = { a } -- not enough memory, raised outside any pcall of the function's
          return x
        end
        return a + b, runs
      end, 2, 3)
      print(t:await())
      -- a plain task is not revived: the same error ends it
      local plain = async.spawn(function()
        async._debug.fail_next_alloc()
        return { 1 }
      end)
      local ok, e = pcall(plain.await, plain)
      print(ok, tostring(e):match("not enough memory") ~= nil)
      print(async._debug.counts().tasks, async._debug.counts().timers)
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal("5\t2\nfalse\ttrue\n0\t0\n", out)
  end)

  it("a helper cancelled while it waits to run again ends cancelled, its timer stopped",
    function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local runs = 0
      local t = async._debug.spawn_helper(function()
        runs = runs + 1
        async._debug.fail_next_alloc()
        return { runs }
      end)
      async.sleep(0) -- it has run once and waits its delay
      print(runs, t:status(), t:done())
      t:cancel("enough")
      local ok, e = pcall(t.await, t)
      print(ok, async.is_cancelled(e), runs)
      print(async._debug.counts().tasks, async._debug.counts().timers)
      print(pcall(async._debug.spawn_helper, 42))
    ]])
    assert.are.equal(0, status, err)
    local lines = {}
    for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.are.equal("1\trunning\tfalse", lines[1])
    assert.are.equal("false\ttrue\t1", lines[2])
    assert.are.equal("0\t0", lines[3])
    assert.matches("^false\t.*bad argument #1.*function expected", lines[4])
  end)
  -- A 16th of the cap (at most 64 KiB) is kept for helper tasks, open only while one runs
  -- (bindings/core/alloc.c): with the heap filled by the other tasks, a server's dispatcher or
  -- reaper could not get a call frame, and the requests it would have answered or cut waited
  -- for their clients' timeouts (20 clients, cap 0.346 MiB).
  it("a helper task still finds room at a heap the other tasks have filled", function()
    local out, err, status = sub.run_script([[
      local async = require "lasync"
      local go = async.future()
      local t = async._debug.spawn_helper(function()
        go:await()
        local x = {}
        for i = 1, 200 do x[i] = { i } end
        return #x
      end)
      local hog = {}
      while pcall(function() hog[#hog + 1] = ("x"):rep(1000) .. #hog end) do end
      for _ = 1, 3 do hog[#hog] = nil end
      collectgarbage()
      local ok = pcall(function() local x = {} for i = 1, 200 do x[i] = { i } end end)
      go:set()
      print(ok, async.timeout(2, t.await, t))
    ]], nil, { prefix = "export LASYNC_MAX_MEMORY=1; " })
    assert.are.equal(0, status, err)
    assert.are.equal("false\t200\n", out) -- a plain task has no room for what the helper made
  end)
end)
