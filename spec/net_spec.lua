package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local raises = require "raises"
local sub = require "subprocess"
local tcp = require "tcp"
local cancel_when_woken = require "woken"

-- A port nothing listens on: one the kernel just gave a listener that is closed again.
local function free_port()
  local srv = async.net.listen({ port = 0 }, function() end)
  local port = srv.port
  srv:close()
  async.sleep(0)
  return port
end

-- A listener that takes one connection and never accepts another, with the smallest backlog:
-- once the kernel's queue is full, further SYNs are dropped and a connect hangs.
local function full_listener()
  local hold = async.event()
  local srv = async.net.listen({ port = 0, backlog = 1, max_connections = 1 },
    function() hold:wait() end)
  local conns = {}
  local function fill()
    for _ = 1, 64 do
      local ok, c = pcall(async.net.connect, "127.0.0.1", srv.port, { timeout = 0.3 })
      if not ok then return c end
      conns[#conns + 1] = c
    end
  end
  local function release()
    for _, c in ipairs(conns) do c:close() end
    hold:set()
    srv:close({ grace = 2 })
  end
  return srv, fill, release
end

describe("async.net", function()
  after_each(assert_clean)
  after_each(sub.cleanup)

  describe("connect and listen", function()
    it("serves an echo protocol to many clients at once, each connection in its own task", function()
      local handlers = {}
      local srv = async.net.listen({ host = "127.0.0.1", port = 0 }, function(conn)
        handlers[async.current()] = true
        for line in conn:lines() do conn:write(line, "\n") end
      end)
      finally(function() srv:close() end)
      assert.is_true(srv.port > 0)
      local clients = {}
      for i = 1, 20 do
        clients[i] = function()
          local c <close> = async.net.connect("127.0.0.1", srv.port, { timeout = 10 })
          for j = 1, 50 do
            c:write("client ", tostring(i), " line ", tostring(j), "\n")
            assert.are.equal("client " .. i .. " line " .. j, c:read_line())
          end
          return true
        end
      end
      local results = async.gather(clients)
      assert.are.equal(20, results.n)
      local n = 0
      for _ in pairs(handlers) do n = n + 1 end
      assert.are.equal(20, n)
    end)

    it("gives conn.remote and conn.local as {host, port} on both ends", function()
      local c, s, release = tcp.pair()
      finally(release)
      assert.are.equal("127.0.0.1", c.remote.host)
      assert.are.equal("127.0.0.1", c["local"].host)
      assert.are.equal(c["local"].port, s.remote.port)
      assert.are.equal(c.remote.port, s["local"].port)
    end)

    it("connects over IPv6 to ::1", function()
      local ok, srv = pcall(async.net.listen, { host = "::1", port = 0 }, function(conn)
        conn:write(conn:read_line(), "\n")
      end)
      if not ok then
        pending("no IPv6 loopback here: " .. tostring(srv))
        return
      end
      finally(function() srv:close() end)
      local c <close> = async.net.connect("::1", srv.port)
      assert.are.equal("::1", c.remote.host)
      c:write("six\n")
      assert.are.equal("six", c:read_line())
    end)

    it("resolves a name and tries its addresses", function()
      local srv = async.net.listen({ port = 0 }, function(conn) conn:write("hi\n") end)
      finally(function() srv:close() end)
      local c <close> = async.net.connect("localhost", srv.port)
      assert.are.equal("hi", c:read_line())
    end)

    it("half-closes: after shutdown() the peer reads the end and can still reply", function()
      local srv = async.net.listen({ port = 0 }, function(conn)
        local got = {}
        while true do
          local d = conn:read()
          if not d then break end
          got[#got + 1] = d
        end
        conn:write("received ", tostring(#table.concat(got)), " bytes\n")
      end)
      finally(function() srv:close() end)
      local c <close> = async.net.connect("127.0.0.1", srv.port)
      c:write(string.rep("h", 100000))
      c:shutdown()
      assert.are.equal("received 100000 bytes", c:read_line())
      assert.is_nil(c:read())
    end)

    it("max_connections pauses accepting until a handler finishes", function()
      local active, max_active, release = 0, 0, async.event()
      local srv = async.net.listen({ port = 0, max_connections = 2 }, function(conn)
        active = active + 1
        if active > max_active then max_active = active end
        release:wait()
        conn:write("served\n")
        active = active - 1
      end)
      finally(function() srv:close() end)
      local clients = {}
      for i = 1, 5 do clients[i] = async.net.connect("127.0.0.1", srv.port) end
      async.sleep(0.1)
      assert.are.equal(2, active) -- the other three wait in the kernel's backlog
      release:set()
      for i = 1, 5 do
        assert.are.equal("served", clients[i]:read_line())
        clients[i]:close()
      end
      assert.are.equal(2, max_active)
    end)

    it("srv:close() stops accepting and lets running handlers finish", function()
      local go = async.event()
      local srv = async.net.listen({ port = 0 }, function(conn)
        go:wait()
        conn:write("done\n")
      end)
      local port = srv.port
      local c <close> = async.net.connect("127.0.0.1", port)
      async.sleep(0.02)
      srv:close()
      srv:close() -- idempotent
      assert.are.equal("connect", raises(async.net.connect, "127.0.0.1", port).kind)
      go:set()
      assert.are.equal("done", c:read_line())
    end)

    it("srv:close{grace} waits for handlers, then cancels the ones still running", function()
      local outcomes = {}
      local srv = async.net.listen({ port = 0 }, function(conn)
        local quick = conn:read_line() == "quick"
        local ok, err = pcall(async.sleep, quick and 0.05 or 30)
        outcomes[#outcomes + 1] = ok and "finished" or (async.is_cancelled(err) and "cancelled")
        if not ok then error(err, 0) end
      end)
      local a <close> = async.net.connect("127.0.0.1", srv.port)
      local b <close> = async.net.connect("127.0.0.1", srv.port)
      a:write("quick\n")
      b:write("slow\n")
      async.sleep(0.02)
      local t0 = async.now()
      srv:close({ grace = 0.3 })
      local spent = async.now() - t0
      assert.is_true(spent >= 0.25 and spent < 5, "spent " .. spent)
      table.sort(outcomes)
      assert.are.same({ "cancelled", "finished" }, outcomes)
      assert.is_nil(b:read()) -- its connection was closed
    end)

    it("a handler error closes that connection, is reported once, and the server goes on", function()
      local errors = {}
      local srv = async.net.listen({
        port = 0,
        on_error = function(err, conn) errors[#errors + 1] = { err = err, conn = conn } end,
      }, function(conn)
        local line = conn:read_line()
        if line == "boom" then error("handler exploded") end
        conn:write("ok\n")
      end)
      finally(function() srv:close() end)
      local bad <close> = async.net.connect("127.0.0.1", srv.port)
      bad:write("boom\n")
      assert.is_nil(bad:read()) -- closed by the server
      local good <close> = async.net.connect("127.0.0.1", srv.port)
      good:write("fine\n")
      assert.are.equal("ok", good:read_line())
      assert.are.equal(1, #errors)
      assert.matches("handler exploded", errors[1].err)
      assert.is_true(errors[1].conn:closed())
    end)

    it("reports a handler error on stderr by default, once", function()
      if not sub.LASYNC then return pending("needs the lasync executable") end
      local out, err, code = sub.run_script([[
        local async = require "lasync"
        local srv = async.net.listen({ port = 0 }, function(conn)
          if conn:read_line() == "boom" then error("handler exploded") end
          conn:write("ok\n")
        end)
        local a = async.net.connect("127.0.0.1", srv.port)
        a:write("boom\n")
        assert(a:read() == nil)
        local b = async.net.connect("127.0.0.1", srv.port)
        b:write("x\n")
        print(b:read_line())
        srv:close()
      ]])
      assert.are.equal("ok\n", out)
      assert.are.equal(0, code)
      local _, n = err:gsub("handler exploded", "")
      assert.are.equal(1, n, err)
      assert.matches("async.net.listen: the handler failed for the connection from 127.0.0.1", err)
    end)

    it("an open server keeps the host running after the main chunk returns", function()
      if not sub.LASYNC then return pending("needs the lasync executable") end
      local out, _, code = sub.run_script([[
        local async = require "lasync"
        local srv
        srv = async.net.listen({ port = 0 }, function(conn)
          conn:write("still here\n")
          srv:close()
        end)
        async.spawn(function()
          async.sleep(0.1)
          local c = async.net.connect("127.0.0.1", srv.port)
          print(c:read_line())
          c:close()
        end)
      ]])
      assert.are.equal("still here\n", out)
      assert.are.equal(0, code)
    end)
  end)

  describe("failures", function()
    it("a refused connection raises kind connect with code ECONNREFUSED", function()
      local port = free_port()
      local err = raises(async.net.connect, "127.0.0.1", port)
      assert.are.equal("connect", err.kind)
      assert.are.equal("ECONNREFUSED", err.code)
      assert.matches("127.0.0.1 port " .. port, err.message)
    end)

    it("a connect that hangs raises kind timeout after its timeout", function()
      local _, fill, release = full_listener()
      finally(release)
      local t0 = async.now()
      local err = fill()
      assert.is_not_nil(err, "every connect succeeded")
      assert.are.equal("timeout", err.kind)
      assert.are.equal(0.3, err.seconds)
      assert.is_true(async.now() - t0 < 30)
    end)

    it("a name under .invalid raises kind dns", function()
      local err = raises(async.net.resolve, "no-such-host.invalid")
      assert.are.equal("dns", err.kind)
      assert.is_string(err.code)
      assert.are.equal("no-such-host.invalid", err.host)
      err = raises(async.net.connect, "no-such-host.invalid", 80)
      assert.are.equal("dns", err.kind)
    end)

    it("resolve returns literals as they are and localhost as loopback addresses", function()
      assert.are.same({ "127.0.0.1" }, async.net.resolve("127.0.0.1"))
      assert.are.same({ "::1" }, async.net.resolve("::1"))
      local addrs = async.net.resolve("localhost")
      assert.is_true(#addrs >= 1)
      for _, a in ipairs(addrs) do assert.is_true(a == "127.0.0.1" or a == "::1", a) end
    end)

    it("a peer reset while reading raises kind closed", function()
      local srv = async.net.listen({ port = 0 }, function(conn)
        async.sleep(0.05) -- closing with unread bytes makes the kernel send a reset
      end)
      finally(function() srv:close() end)
      local c <close> = async.net.connect("127.0.0.1", srv.port)
      c:write("unread bytes")
      local err = raises(c.read, c)
      assert.are.equal("closed", err.kind)
      assert.are.equal("ECONNRESET", err.code)
    end)

    it("a peer reset while writing raises kind closed", function()
      local srv = async.net.listen({ port = 0 }, function(conn)
        conn:read(10) -- then close with the rest unread: a reset
      end)
      finally(function() srv:close() end)
      local c <close> = async.net.connect("127.0.0.1", srv.port)
      local chunk = string.rep("r", 64 * 1024)
      local err = raises(function()
        for _ = 1, 100000 do c:write(chunk) end
      end)
      assert.are.equal("closed", err.kind)
      assert.is_true(err.code == "ECONNRESET" or err.code == "EPIPE", err.code)
    end)

    it("names the argument on misuse", function()
      assert.matches("async.net.connect: bad argument #1 'host' %(string expected, got number%)",
        raises(async.net.connect, 127, 80))
      assert.matches("async.net.connect: bad argument #2 'port' %(0 to 65535 expected, got 70000%)",
        raises(async.net.connect, "127.0.0.1", 70000))
      assert.matches("bad argument #2 'port' %(integer expected, got string%)",
        raises(async.net.connect, "127.0.0.1", "80"))
      assert.matches("bad option 'timeout'", raises(async.net.connect, "127.0.0.1", 80,
        { timeout = "soon" }))
      assert.matches("async.net.listen: bad option 'port' %(0 to 65535 expected, got %-1%)",
        raises(async.net.listen, { port = -1 }, print))
      assert.matches("async.net.listen: bad argument #2 'handler' %(function expected, got nil%)",
        raises(async.net.listen, { port = 0 }))
      assert.matches("bad option 'max_connections'",
        raises(async.net.listen, { port = 0, max_connections = 0 }, print))
      assert.matches("async.net.resolve: bad argument #1 'name' %(string expected, got nil%)",
        raises(async.net.resolve))
      assert.matches("bad argument #1 'host' %(an IP address expected",
        raises(async.net.listen, { host = "300.1.1.1", port = 0 }, print))
    end)

    it("a port in use raises kind listen with code EADDRINUSE", function()
      local srv = async.net.listen({ port = 0 }, function() end)
      finally(function() srv:close() end)
      local err = raises(async.net.listen, { port = srv.port }, function() end)
      assert.are.equal("listen", err.kind)
      assert.are.equal("EADDRINUSE", err.code)
    end)
  end)

  describe("cancellation", function()
    it("while resolving leaves nothing behind", function()
      for _ = 1, 20 do
        local t = async.spawn(async.net.resolve, "localhost")
        async.sleep(0)
        t:cancel()
        pcall(t.await, t)
      end
      -- assert_clean: no request left, even for lookups the thread pool had started
    end)

    it("while connecting, whenever the cancellation lands, leaves nothing open", function()
      local srv = async.net.listen({ port = 0 }, function(conn) conn:read() end)
      finally(function() srv:close() end)
      for i = 1, 30 do
        local t = async.spawn(async.net.connect, "localhost", srv.port)
        for _ = 1, i % 4 do async.sleep(0) end
        t:cancel()
        local ok, c = pcall(t.await, t)
        if ok then c:close() else assert.is_true(async.is_cancelled(c)) end
      end
    end)

    it("while a connect hangs, cancelling the task closes the socket", function()
      local srv, fill, release = full_listener()
      finally(release)
      fill()
      local t = async.spawn(async.net.connect, "127.0.0.1", srv.port, { timeout = 30 })
      async.sleep(0.1)
      assert.are.equal("running", t:status())
      t:cancel()
      assert.is_true(async.is_cancelled(select(2, pcall(t.await, t))))
    end)

    it("while accepting: the acceptor can be cancelled and the server closed", function()
      local srv = async.net.listen({ port = 0 }, function() end)
      async.sleep(0.01)
      assert.matches("another task is already accepting",
        raises(srv.handle.accept, srv.handle))
      srv.acceptor:cancel()
      assert.is_true(async.is_cancelled(select(2, pcall(srv.acceptor.await, srv.acceptor))))
      srv:close()
    end)

    it("an acceptor woken by a connection but cancelled before it ran leaves it to the next",
      function()
        local srv = async.net.listen({ port = 0 }, function() end)
        finally(function() srv:close() end)
        async.sleep(0.01)
        srv.acceptor:cancel() -- this spec accepts on the handle itself
        pcall(srv.acceptor.await, srv.acceptor)
        local h, client = srv.handle, nil
        local acceptor = async.spawn(h.accept, h)
        assert.is_true(cancel_when_woken(acceptor, function()
          client = async.spawn(async.net.connect, "127.0.0.1", srv.port)
        end))
        assert.is_true(async.is_cancelled(select(2, pcall(acceptor.await, acceptor))))
        local conn = async.timeout(5, h.accept, h)
        local c = client:await()
        c:write("hi")
        assert.are.equal("hi", async.timeout(5, conn.read, conn))
        conn:close()
        c:close()
      end)
  end)

  it("holds 10,000 connections open at once on loopback", function()
    if not sub.LASYNC then return pending("needs the lasync executable") end
    local N = 10000
    local hard = io.popen("sh -c 'ulimit -Hn'"):read("l")
    if hard ~= "unlimited" and tonumber(hard) < N + 200 then
      return pending("RLIMIT_NOFILE hard limit " .. hard .. " is below " .. (N + 200))
    end
    local portfile = sub.tmpfile()
    os.remove(portfile)
    local server = sub.tmpfile([[
      local async = require "lasync"
      local N, active, max_active, served = tonumber(arg[2]), 0, 0, 0
      local all = async.event()
      local srv = async.net.listen({ port = 0, backlog = 4096 }, function(conn)
        active = active + 1
        if active > max_active then max_active = active end
        local line = conn:read_line()
        conn:write(line, "\n")
        conn:read() -- until the client closes
        active = active - 1
        served = served + 1
        if served == N then all:set() end
      end)
      local f = io.open(arg[1] .. ".tmp", "w"); f:write(srv.port); f:close()
      os.rename(arg[1] .. ".tmp", arg[1])
      pcall(async.timeout, 120, all.wait, all)
      srv:close()
      print("server", served, max_active)
    ]])
    local client = sub.tmpfile([[
      local async = require "lasync"
      local N, port = tonumber(arg[2])
      for _ = 1, 2000 do
        local f = io.open(arg[1])
        if f then port = tonumber(f:read("a")); f:close(); break end
        async.sleep(0.01)
      end
      local conns, i = {}, 0
      while i < N do -- in batches, so the server's backlog is not flooded
        local batch = {}
        for j = 1, math.min(500, N - i) do
          batch[j] = function() return async.net.connect("127.0.0.1", port, { timeout = 60 }) end
        end
        for _, c in ipairs(async.gather(batch)) do i = i + 1; conns[i] = c end
      end
      for k, c in ipairs(conns) do c:write("hello ", tostring(k), "\n") end
      local ok = 0
      for k, c in ipairs(conns) do if c:read_line() == "hello " .. k then ok = ok + 1 end end
      for _, c in ipairs(conns) do c:close() end
      print("client", ok)
    ]])
    local raise = "ulimit -n " .. hard .. " 2>/dev/null; "
    local out, err = sub.run(sub.q(client) .. " " .. sub.q(portfile) .. " " .. N, {
      prefix = raise .. sub.q(sub.LASYNC) .. " " .. sub.q(server) .. " " .. sub.q(portfile) ..
          " " .. N .. " & ",
      timeout = 180,
    })
    os.remove(portfile)
    assert.matches("client%s+" .. N .. "\n", out, nil, nil, err)
    assert.matches("server%s+" .. N .. "%s+" .. N .. "\n", out, nil, nil, err)
  end)
end)
