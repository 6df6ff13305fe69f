-- async.http.serve and async.http.router, against real clients: async.fetch, the curl command
-- and raw sockets (async.net) for what a well-behaved client never sends.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local cancel_when_woken = require "woken"

local function url(srv, path) return "http://127.0.0.1:" .. srv.port .. path end

-- Sends raw bytes and reads until the server closes (or `until_pat` is seen), within 5 s.
local function raw(srv, bytes, until_pat, keep)
  local conn = async.net.connect("127.0.0.1", srv.port)
  if bytes then conn:write(bytes) end
  local got = {}
  local ok, err = pcall(async.timeout, 5, function()
    while true do
      local s = conn:read()
      if not s then break end
      got[#got + 1] = s
      if until_pat and table.concat(got):find(until_pat) then break end
    end
  end)
  if keep then return table.concat(got), conn end
  conn:close()
  if not ok and not async.is_timeout(err) then error(err, 0) end
  return table.concat(got), ok
end

local function serve(handler, opts)
  return async.http.serve(handler, opts)
end

describe("async.http.serve", function()
  after_each(assert_clean)

  it("answers a string with 200, text/plain, Content-Length and Date", function()
    local srv <close> = serve(function() return "Hello, world!" end)
    local res = async.fetch(url(srv, "/"))
    assert.are.equal(200, res.status)
    assert.are.equal("Hello, world!", res:text())
    assert.are.equal("13", res.headers["Content-Length"])
    assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
    assert.is_truthy(res.headers.date:match("GMT$"))
  end)

  it("answers a table with status, headers and a json body", function()
    local srv <close> = serve(function()
      return { status = 201, headers = { ["X-Thing"] = "yes" }, json = { a = 1, list = { 1, 2 } } }
    end)
    local res = async.fetch(url(srv, "/"))
    assert.are.equal(201, res.status)
    assert.are.equal("yes", res.headers["x-thing"])
    assert.are.equal("application/json", res.headers["content-type"])
    assert.are.same({ a = 1, list = { 1, 2 } }, res:json())
  end)

  it("gives the handler method, path, query with repeated keys, headers and remote", function()
    local seen
    local srv <close> = serve(function(req)
      seen = { method = req.method, path = req.path, query = req.query,
        agent = req.headers["X-Test"], agent2 = req.headers["x-test"],
        list = req.headers_list, remote = req.remote }
      return "ok"
    end)
    async.fetch(url(srv, "/a%20b/c?x=1&x=2&y=h%C3%A9&z"), { headers = { ["X-Test"] = "v" } })
    assert.are.equal("GET", seen.method)
    assert.are.equal("/a b/c", seen.path)
    assert.are.same({ "1", "2" }, seen.query.x)
    assert.are.equal("hé", seen.query.y)
    assert.are.equal("", seen.query.z)
    assert.are.equal("v", seen.agent)
    assert.are.equal("v", seen.agent2)
    local found = false
    for _, h in ipairs(seen.list) do if h[1] == "X-Test" and h[2] == "v" then found = true end end
    assert.is_true(found)
    assert.are.equal("127.0.0.1", seen.remote.host)
  end)

  it("reads request bodies whole, as JSON, as a form and in chunks", function()
    local srv <close> = serve(function(req)
      if req.path == "/json" then return { json = { got = req:json().n } } end
      if req.path == "/form" then local f = req:form(); return f.a .. "," .. f.b[2] end
      local n = 0
      for chunk in req:chunks() do n = n + #chunk end
      return tostring(n)
    end)
    assert.are.same({ got = 7 },
      async.fetch(url(srv, "/json"), { method = "POST", json = { n = 7 } }):json())
    assert.are.equal("x y,3", async.fetch(url(srv, "/form"),
      { method = "POST", body = "a=x+y&b=2&b=3",
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }):text())
    assert.are.equal("300000", async.fetch(url(srv, "/up"),
      { method = "POST", body = string.rep("z", 300000) }):text())
  end)

  it("streams a chunked response through res, and reads a chunked request body", function()
    local srv <close> = serve(function(req, res)
      local n = 0
      for chunk in req:chunks() do n = n + #chunk end
      res:status(201)
      res:header("X-Count", tostring(n))
      for i = 1, 3 do res:write("part ", i, "\n") end
    end)
    local sent = 0
    local res = async.fetch(url(srv, "/"), { method = "POST", body = function()
      sent = sent + 1
      if sent <= 4 then return string.rep("b", 1000) end
    end })
    assert.are.equal(201, res.status)
    assert.are.equal("4000", res.headers["x-count"])
    assert.are.equal("chunked", res.headers["transfer-encoding"])
    assert.are.equal("part 1\npart 2\npart 3\n", res:text())
  end)

  it("answers HEAD with the length and no body", function()
    local srv <close> = serve(function() return "twelve bytes" end)
    local out = raw(srv, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.is_truthy(out:find("^HTTP/1.1 200 OK\r\n"))
    assert.is_truthy(out:find("Content%-Length: 12\r\n"))
    assert.is_truthy(out:find("\r\n\r\n$"))
  end)

  it("answers HEAD on a streamed response without any chunk, and keeps the connection", function()
    local srv <close> = serve(function(req, res) res:write("streamed") end)
    local out = raw(srv, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n" ..
      "Connection: close\r\n\r\n")
    local first, second = out:match("^(HTTP/1.1 200.-\r\n\r\n)(HTTP/1.1 200.*)$")
    assert.is_truthy(first, out)
    assert.is_truthy(first:find("Transfer%-Encoding: chunked"))
    assert.is_truthy(second:find("8\r\nstreamed\r\n0\r\n\r\n$"))
  end)

  it("keeps a connection alive and answers pipelined requests in order", function()
    local order = {}
    local srv <close> = serve(function(req)
      if req.path == "/slow" then async.sleep(0.1) end
      order[#order + 1] = req.path
      return req.path
    end)
    local req = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n" ..
      "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    local out = raw(srv, req)
    local bodies = {}
    for body in out:gmatch("\r\n\r\n(/%l+)") do bodies[#bodies + 1] = body end
    assert.are.same({ "/slow", "/fast", "/last" }, bodies)
    assert.are.same({ "/slow", "/fast", "/last" }, order)
    assert.is_truthy(out:find("Connection: close"))
  end)

  it("skips a body the handler left unread and answers the next request once", function()
    -- The body comes in the head's packet: its end must not read as a new request.
    local calls = {}
    local srv <close> = serve(function(req)
      calls[#calls + 1] = req.method .. " " .. req.path
      return "for " .. req.path
    end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nAAA")
    async.sleep(0.05)
    conn:write("GET /y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local got = {}
    async.timeout(5, function() for s in function() return conn:read() end do got[#got + 1] = s end end)
    conn:close()
    local out = table.concat(got)
    assert.are.same({ "POST /x", "GET /y" }, calls)
    local _, responses = out:gsub("HTTP/1.1 200", "")
    assert.are.equal(2, responses)
    assert.is_truthy(out:find("for /y$"))
  end)

  it("holds pipelined requests while the client reads none of the responses", function()
    local big, served = string.rep("B", 1 << 20), 0
    local srv <close> = serve(function() served = served + 1; return big end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    local n = 200
    conn:write(string.rep("GET / HTTP/1.1\r\nHost: x\r\n\r\n", n - 1) ..
      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async.sleep(0.3)
    -- Unbounded, all 200 MiB would be queued by now; the kernel's buffers hold a few.
    assert.is_true(served < 40, "served " .. served .. " responses nobody read")
    local total = 0
    async.timeout(30, function()
      for s in function() return conn:read() end do total = total + #s end
    end)
    conn:close()
    assert.are.equal(n, served)
    assert.is_true(total > n * #big)
  end)

  it("closes after the response for HTTP/1.0 and keeps alive when asked", function()
    local srv <close> = serve(function() return "ten" end)
    local out, closed = raw(srv, "GET / HTTP/1.0\r\n\r\n")
    assert.is_truthy(out:find("^HTTP/1.1 200 OK"))
    assert.is_truthy(out:find("Connection: close"))
    assert.is_true(closed)
    local out2, conn = raw(srv, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "ten$", true)
    assert.is_truthy(out2:find("Connection: keep%-alive"))
    conn:write("GET / HTTP/1.0\r\n\r\n")
    local rest = {}
    for s in function() return conn:read() end do rest[#rest + 1] = s end
    conn:close()
    assert.is_truthy(table.concat(rest):find("ten$"))
  end)

  it("writes an access log line per request when asked", function()
    local lines = {}
    local srv <close> = serve(function(req) return req.path == "/x" and "twelve bytes" or nil end,
      { log = function(line) lines[#lines + 1] = line end })
    async.fetch(url(srv, "/x?q=1"))
    async.fetch(url(srv, "/none"))
    assert.are.equal(2, #lines)
    assert.is_truthy(lines[1]:find('^127%.0%.0%.1 %- %- %[.-%] "GET /x%?q=1 HTTP/1%.1" 200 12 [%d.]+ms\n$'))
    assert.is_truthy(lines[2]:find('"GET /none HTTP/1%.1" 204 0'))
  end)

  it("works with the curl command", function()
    local srv <close> = serve(function(req) return req.method .. " " .. req:body() end)
    -- curl runs in the background (io.popen would block the loop that must answer it).
    local tmp = os.tmpname()
    os.execute(("(curl -s -X PUT --data-binary hello %s > %s.out; touch %s.done) &"):format(
      url(srv, "/x"), tmp, tmp))
    local out
    for _ = 1, 500 do
      local f = io.open(tmp .. ".done")
      if f then f:close(); break end
      async.sleep(0.01)
    end
    local f = assert(io.open(tmp .. ".out"))
    out = f:read("a")
    f:close()
    os.remove(tmp); os.remove(tmp .. ".out"); os.remove(tmp .. ".done")
    assert.are.equal("PUT hello", out)
  end)
end)

describe("async.http.router", function()
  after_each(assert_clean)

  it("routes by method and {name} params, with 404 and 405 + Allow", function()
    local app = async.http.router()
    app:get("/items/{id}", function(req) return "item " .. req.params.id end)
    app:post("/items/{id}", function(req) return "posted " .. req.params.id end)
    app:get("/", function() return "root" end)
    local srv <close> = serve(app)
    assert.are.equal("item 42", async.fetch(url(srv, "/items/42")):text())
    assert.are.equal("posted 7", async.fetch(url(srv, "/items/7"), { method = "POST" }):text())
    assert.are.equal("root", async.fetch(url(srv, "/")):text())
    assert.are.equal(404, async.fetch(url(srv, "/items")).status)
    assert.are.equal(404, async.fetch(url(srv, "/items/1/2")).status)
    local r = async.fetch(url(srv, "/items/1"), { method = "DELETE" })
    assert.are.equal(405, r.status)
    assert.are.equal("GET, POST, HEAD", r.headers.allow)
  end)

  it("refuses misuse with a message naming the argument", function()
    local app = async.http.router()
    assert.has_error(function() app:get("nope", function() end) end,
      "router:route: bad argument #2 'pattern' (path starting with '/' expected, got string)")
    assert.has_error(function() async.http.serve(42) end,
      "async.http.serve: bad argument #1 'handler' (function or router expected, got number)")
    assert.has_error(function() async.http.serve(app, { port = "x" }) end,
      "async.http.serve: bad option 'port' (number expected, got string)")
  end)
end)

describe("async.http.serve limits and refusals", function()
  after_each(assert_clean)

  local function refused(srv, bytes)
    local out, closed = raw(srv, bytes)
    return tonumber(out:match("^HTTP/1.1 (%d+)")), closed
  end

  it("answers a malformed request with 400 and closes", function()
    local srv <close> = serve(function() return "x" end)
    assert.are.same({ 400, true }, { refused(srv, "BLAH\r\n\r\n") })
    assert.are.same({ 400, true }, { refused(srv, "GET / HTTP/1.1\r\nBad Header\r\n\r\n") })
  end)

  it("refuses Content-Length with Transfer-Encoding, and a bare LF", function()
    local srv <close> = serve(function() return "x" end)
    assert.are.equal(400, refused(srv, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n" ..
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
    assert.are.equal(400, refused(srv, "GET / HTTP/1.1\nHost: x\n\n"))
    assert.are.equal(400, refused(srv, "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n"))
  end)

  it("answers an unknown Transfer-Encoding with 501", function()
    local srv <close> = serve(function() return "x" end)
    assert.are.equal(501, refused(srv, "POST / HTTP/1.1\r\nHost: x\r\n" ..
      "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"))
    assert.are.equal(501, refused(srv, "POST / HTTP/1.1\r\nHost: x\r\n" ..
      "Transfer-Encoding: gzip\r\n\r\n"))
  end)

  it("answers 431 past the header bytes or count", function()
    local srv <close> = serve(function() return "x" end, { max_header_bytes = 1024, max_headers = 10 })
    assert.are.equal(431, refused(srv, "GET / HTTP/1.1\r\nX: " .. string.rep("a", 2000) .. "\r\n\r\n"))
    local many = {}
    for i = 1, 11 do many[i] = "X-" .. i .. ": v\r\n" end
    assert.are.equal(431, refused(srv, "GET / HTTP/1.1\r\n" .. table.concat(many) .. "\r\n"))
    local srv2 <close> = serve(function() return "x" end)
    assert.are.equal(431, refused(srv2, "GET / HTTP/1.1\r\nX: " .. string.rep("a", 17000) .. "\r\n\r\n"))
  end)

  it("answers 413 before reading a body over max_body, and for a chunked one past it", function()
    local ran = false
    local srv <close> = serve(function(req) ran = true; return #req:body() .. "" end,
      { max_body = 1000 })
    assert.are.equal(413, refused(srv, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"))
    assert.is_false(ran)
    local chunk = string.format("%x\r\n%s\r\n", 800, string.rep("c", 800))
    assert.are.equal(413, refused(srv, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      chunk .. chunk .. "0\r\n\r\n"))
    local r = async.fetch(url(srv, "/"), { method = "POST", body = string.rep("k", 1000) })
    assert.are.equal("1000", r:text())
  end)

  it("answers Expect: 100-continue on the first body read", function()
    local srv <close> = serve(function(req) return "got " .. req:body() end)
    local out, conn = raw(srv, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" ..
      "Expect: 100-continue\r\n\r\n", "100 Continue\r\n\r\n", true)
    assert.are.equal("HTTP/1.1 100 Continue\r\n\r\n", out)
    conn:write("hello")
    local got = {}
    async.timeout(5, function()
      while not table.concat(got):find("got hello") do got[#got + 1] = conn:read() end
    end)
    conn:close()
    assert.is_truthy(table.concat(got):find("^HTTP/1.1 200"))
  end)

  it("times a slow client's head out with 408, counted from the connection's start", function()
    local srv <close> = serve(function() return "x" end, { header_timeout = 0.3 })
    local conn = async.net.connect("127.0.0.1", srv.port)
    local t0 = async.now()
    local out = {}
    local dribble = async.spawn(function()
      for c in ("GET / HTTP/1.1\r\nHost: x\r\n"):gmatch(".") do
        async.sleep(0.05)
        if not pcall(conn.write, conn, c) then return end
      end
    end)
    async.timeout(5, function()
      for s in function() return conn:read() end do out[#out + 1] = s end
    end)
    dribble:cancel()
    pcall(dribble.await, dribble)
    conn:close()
    assert.is_truthy(table.concat(out):find("^HTTP/1.1 408"))
    assert.is_true(async.now() - t0 < 2)
  end)

  it("closes an idle keep-alive connection after keepalive_timeout", function()
    local srv <close> = serve(function() return "x" end, { keepalive_timeout = 0.2 })
    local t0 = async.now()
    local out, closed = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_true(closed)
    assert.is_truthy(out:find("^HTTP/1.1 200"))
    assert.is_true(async.now() - t0 >= 0.15)
  end)

  it("cancels a handler past request_timeout and answers 503", function()
    local cancelled = false
    local srv <close> = serve(function()
      local ok, err = pcall(async.sleep, 10)
      cancelled = not ok and async.is_cancelled(err)
      error(err, 0)
    end, { request_timeout = 0.2 })
    local t0 = async.now()
    local res = async.fetch(url(srv, "/"))
    assert.are.equal(503, res.status)
    assert.is_true(cancelled)
    assert.is_true(async.now() - t0 < 3)
  end)

  it("pauses accepting at max_connections", function()
    local srv <close> = serve(function() return "x" end, { max_connections = 1 })
    local a = async.net.connect("127.0.0.1", srv.port)
    async.sleep(0.05)
    assert.are.equal(1, srv.listener:connections())
    local b = async.net.connect("127.0.0.1", srv.port) -- in the kernel's backlog
    async.sleep(0.05)
    assert.are.equal(1, srv.listener:connections())
    a:close()
    b:write("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local got = {}
    async.timeout(5, function() for s in function() return b:read() end do got[#got + 1] = s end end)
    b:close()
    assert.is_truthy(table.concat(got):find("^HTTP/1.1 200"))
  end)
end)

describe("async.http.serve failures", function()
  after_each(assert_clean)

  it("answers a handler error with 500 and no detail; the connection stays usable", function()
    local reported
    local srv <close> = serve(function(req)
      if req.path == "/boom" then error("secret detail") end
      return "fine"
    end, { on_error = function(err) reported = tostring(err) end })
    local out = raw(srv, "GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n" ..
      "Connection: close\r\n\r\n")
    assert.is_truthy(out:find("^HTTP/1.1 500"))
    assert.is_falsy(out:find("secret"))
    assert.is_truthy(out:find("fine$"))
    assert.is_truthy(reported:find("secret detail"))
  end)

  it("answers 500 for an error value whose __tostring and __index raise", function()
    local srv <close> = serve(function()
      error(setmetatable({}, { __tostring = function() error("nested") end,
        __index = function() error("no fields") end }))
    end, { on_error = function() end })
    local out = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.is_truthy(out:find("^HTTP/1.1 500"))
  end)

  it("answers 500 for a bad header, not a response cut before its head", function()
    local srv <close> = serve(function(req, res)
      if req.path == "/name" then res:header("X A", "v") end
      if req.path == "/value" then return { headers = { ["X-A"] = {} } } end
      return "x"
    end, { on_error = function() end })
    for _, path in ipairs { "/name", "/value" } do
      local out = raw(srv, "GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_truthy(out:find("^HTTP/1.1 500"), path)
      assert.is_falsy(out:find("table: "), path)
    end
  end)

  it("refuses a 1xx status as a final response", function()
    local err
    local srv <close> = serve(function(req, res)
      if req.path == "/set" then
        local ok, e = pcall(res.status, res, 101)
        err = not ok and e
        return "x"
      end
      return { status = 101, body = "x" }
    end, { on_error = function() end })
    local out = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.is_truthy(out:find("^HTTP/1.1 500"))
    async.fetch(url(srv, "/set"))
    assert.matches("res:status: bad argument #1 'code' (integer status 200 to 999 expected",
      tostring(err), 1, true)
  end)

  it("refuses res:write of a value that is not a string", function()
    local err
    local srv <close> = serve(function(req, res)
      local ok, e = pcall(res.write, res, {})
      err = not ok and e
      return "x"
    end)
    async.fetch(url(srv, "/"))
    assert.is_truthy(tostring(err):find("res:write: bad argument #1 %(string expected, got table%)"))
  end)

  it("refuses a second task reading the same request body", function()
    local first_err, second_err
    local srv <close> = serve(function(req)
      local helper = async.spawn(function()
        local ok, e = pcall(req.read, req)
        first_err = not ok and e
      end)
      async.sleep(0.01)
      local ok, e = pcall(req.body, req)
      second_err = not ok and e
      pcall(helper.await, helper)
      return "x"
    end, { on_error = function() end })
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    async.sleep(0.1)
    conn:close() -- the first reader is woken by the connection's end, not left behind
    async.sleep(0.1)
    assert.is_truthy(tostring(second_err):find("another task is already reading"))
    assert.is_string(first_err.kind) -- woken with an error by the body cut short
  end)

  it("aborts the connection when a handler fails after the headers were sent", function()
    local srv <close> = serve(function(req, res)
      res:write("partial")
      error("late")
    end, { on_error = function() end })
    local out, closed = raw(srv, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_true(closed)
    assert.is_truthy(out:find("partial"))
    assert.is_falsy(out:find("0\r\n\r\n$"))
  end)

  it("cancels the handler when the client disconnects", function()
    local started, cancelled = async.future(), async.future()
    local srv <close> = serve(function()
      started:set(true)
      local ok, err = pcall(async.sleep, 10)
      if not ok and async.is_cancelled(err) then cancelled:set(true) end
      error(err, 0)
    end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    started:await()
    conn:close()
    assert.is_true(async.timeout(5, cancelled.await, cancelled))
  end)

  it("lets a handler finish after a disconnect with cancel_on_disconnect = false", function()
    local done = async.future()
    local srv <close> = serve(function()
      async.sleep(0.2)
      done:set(true)
      return "late"
    end, { cancel_on_disconnect = false })
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async.sleep(0.05)
    conn:close()
    assert.is_true(async.timeout(5, done.await, done))
  end)

  it("serves a half-closed client its response when cancel_on_disconnect is false", function()
    local srv <close> = serve(function() async.sleep(0.1); return "half" end,
      { cancel_on_disconnect = false })
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn:shutdown()
    local got = {}
    async.timeout(5, function() for s in function() return conn:read() end do got[#got + 1] = s end end)
    conn:close()
    assert.is_truthy(table.concat(got):find("half$"))
  end)

  it("leaves the body to the next req:read when a reader woken by it is cancelled first", function()
    local client
    local srv <close> = serve(function(req)
      local reader = async.spawn(req.read, req)
      local hit = cancel_when_woken(reader, function() client:write("hello") end)
      local ok = pcall(reader.await, reader)
      return tostring(hit) .. " " .. tostring(ok) .. " " .. tostring(req:read())
    end)
    client = async.net.connect("127.0.0.1", srv.port)
    client:write("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
    local got = {}
    async.timeout(5, function()
      for s in function() return client:read() end do got[#got + 1] = s end
    end)
    client:close()
    assert.is_truthy(table.concat(got):find("\r\n\r\ntrue false hello$"))
  end)

  it("ends a request whose client left in the turn it came in: its task never started", function()
    -- The dispatcher is handed the request and the disconnect at once and cancels the request's
    -- task before it starts, so the handler's own ending never runs. Both land in one turn when
    -- the request fills the server's read (server.c's SLAB_SIZE, 64 KiB) exactly: libuv reads
    -- again after a full read and finds the client's FIN. All of it is in the kernel before the
    -- server reads, as the connection waits in the backlog (max_connections = 1) until the
    -- first one closes.
    local ran = false
    local srv <close> = serve(function() ran = true; return "x" end, { max_connections = 1 })
    local first = async.net.connect("127.0.0.1", srv.port)
    async.timeout(5, function()
      while srv.listener:connections() < 1 do async.sleep(0.005) end
    end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    local n = 65485
    local req = ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"):format(n)
      .. ("x"):rep(n)
    assert.are.equal(65536, #req)
    conn:write(req)
    conn:shutdown()
    first:close()
    local ok, got = pcall(async.timeout, 5, conn.read, conn)
    conn:close()
    assert.is_false(ran) -- else the two did not land in one turn, and this proves nothing
    assert.is_true(ok, "the connection was left open")
    assert.is_nil(got)
    assert.are.equal(0, srv.active)
  end)

  it("closes gracefully: idle connections at once, in-flight ones after their response", function()
    local srv = serve(function(req)
      if req.path == "/slow" then async.sleep(0.3) end
      return "done"
    end)
    local idle = async.net.connect("127.0.0.1", srv.port)
    local busy = async.net.connect("127.0.0.1", srv.port)
    busy:write("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    async.sleep(0.05)
    local closer = async.spawn(function() srv:close { grace = 5 } end)
    local got = {}
    async.timeout(5, function() for s in function() return busy:read() end do got[#got + 1] = s end end)
    assert.is_nil(async.timeout(5, idle.read, idle))
    closer:await()
    idle:close(); busy:close()
    local out = table.concat(got)
    assert.is_truthy(out:find("Connection: close"))
    assert.is_truthy(out:find("done$"))
    assert.has_error(function() async.fetch(url(srv, "/"), { retries = 0, timeout = 2 }) end)
  end)

  it("lets a response still queued for a slow client finish when the server closes", function()
    local big = string.rep("B", 4 << 20)
    local srv = serve(function() return big end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async.sleep(0.1) -- answered: the connection is idle with most of the body still queued
    srv:close { grace = 5 }
    local total = 0
    async.timeout(10, function()
      for s in function() return conn:read() end do total = total + #s end
    end)
    conn:close()
    assert.is_true(total > #big, "got " .. total .. " bytes")
  end)

  it("closes a connection whose client reads none of its response, after keepalive_timeout", function()
    local big = string.rep("B", 16 << 20)
    local srv <close> = serve(function() return big end, { keepalive_timeout = 0.3 })
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async.sleep(0.1) -- answered; most of it is queued, waiting for a reader that never comes
    local before = async._debug.counts().handles
    async.sleep(1)
    assert.are.equal(before - 1, async._debug.counts().handles) -- the server's side is gone
    conn:close()
  end)

  it("lets a handler close its own server and still answer", function()
    local srv
    srv = serve(function(req)
      if req.path == "/shutdown" then srv:close { grace = 5 } end
      return "bye"
    end)
    local t0 = async.now()
    local out = raw(srv, "GET /shutdown HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_truthy(out:find("^HTTP/1.1 200"))
    assert.is_truthy(out:find("bye$"))
    assert.is_true(async.now() - t0 < 2, "waited for itself")
    local _, n = out:gsub("Connection: close", "")
    assert.are.equal(1, n)
  end)

  it("cancels handlers still running when the grace period ends", function()
    local cancelled = false
    local srv = serve(function()
      local ok, err = pcall(async.sleep, 10)
      cancelled = not ok and async.is_cancelled(err)
      error(err, 0)
    end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async.sleep(0.05)
    local t0 = async.now()
    srv:close { grace = 0.2 }
    assert.is_true(cancelled)
    assert.is_true(async.now() - t0 < 3)
    conn:close()
  end)

  it("leaves nothing behind after a storm of bad and aborted requests", function()
    local srv <close> = serve(function(req) return req:body() end, { max_body = 100 })
    local bad = {
      "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nshort",
      "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "\0\1\2\3", "GET / HTTP/9.9\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    local tasks = {}
    for i = 1, 60 do
      tasks[i] = async.spawn(function()
        local conn = async.net.connect("127.0.0.1", srv.port)
        pcall(conn.write, conn, bad[i % #bad + 1])
        if i % 3 == 0 then async.sleep(0.01) end
        conn:close()
      end)
    end
    for i = 1, #tasks do tasks[i]:await() end
    async.sleep(0.1)
  end)
end)

describe("router:static", function()
  after_each(assert_clean)

  local dir
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    os.execute(("mkdir -p %s/pub/sub && printf 'body{}' > %s/pub/site.css && " ..
      "printf 'secret' > %s/secret.txt && printf 'deep' > %s/pub/sub/x.txt && " ..
      "ln -s %s/secret.txt %s/pub/link.txt"):format(dir, dir, dir, dir, dir, dir))
  end)
  teardown(function() os.execute("rm -rf " .. dir) end)

  it("serves files with a type by extension, Last-Modified and 304", function()
    local app = async.http.router():static("/assets", dir .. "/pub")
    local srv <close> = serve(app)
    local r = async.fetch(url(srv, "/assets/site.css"))
    assert.are.equal(200, r.status)
    assert.are.equal("body{}", r:text())
    assert.are.equal("text/css; charset=utf-8", r.headers["content-type"])
    assert.are.equal("deep", async.fetch(url(srv, "/assets/sub/x.txt")):text())
    local lm = r.headers["last-modified"]
    assert.is_truthy(lm:match("GMT$"))
    local r2 = async.fetch(url(srv, "/assets/site.css"), { headers = { ["If-Modified-Since"] = lm } })
    assert.are.equal(304, r2.status)
  end)

  it("answers 404 for paths escaping the directory, encoded or not, and symlinks out", function()
    local app = async.http.router():static("/assets", dir .. "/pub")
    local srv <close> = serve(app)
    for _, p in ipairs { "/assets/../secret.txt", "/assets/%2e%2e/secret.txt",
      "/assets/sub/..%2F..%2Fsecret.txt", "/assets/link.txt", "/assets/nope", "/assets/sub" } do
      local out = raw(srv, "GET " .. p .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal("404", out:match("^HTTP/1.1 (%d+)"), p)
      assert.is_falsy(out:find("secret"), p)
    end
  end)
end)

describe("the lasync host with a server", function()
  local sub = require "subprocess"
  after_each(function() sub.cleanup(); assert_clean() end)

  it("closes servers gracefully on SIGTERM: the request in flight is answered, then it exits (143)", function()
    if not sub.LASYNC then pending("LASYNC is not set (not run by CTest)"); return end
    local portfile = sub.tmpfile()
    local script = sub.tmpfile(([[
local async = require "lasync"
local srv = async.http.serve(function() async.sleep(0.5); return "finished" end)
local f = io.open(%q, "w"); f:write(srv.port); f:close()
]]):format(portfile))
    local status = sub.tmpfile()
    os.execute(("(%s %s; echo $? > %s.rc) > %s.out 2>&1 & echo $! > %s.pid"):format(
      sub.LASYNC, sub.q(script), status, status, status))
    local port
    for _ = 1, 500 do
      port = tonumber(sub.slurp(portfile))
      if port then break end
      async.sleep(0.01)
    end
    assert.is_truthy(port, "the server did not start")
    local conn = async.net.connect("127.0.0.1", port)
    conn:write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async.sleep(0.1)
    -- The shell's pid is the subshell's; its child is lasync.
    os.execute(("pkill -TERM -P $(cat %s.pid)"):format(status))
    local got = {}
    async.timeout(10, function() for s in function() return conn:read() end do got[#got + 1] = s end end)
    conn:close()
    local out = table.concat(got)
    assert.is_truthy(out:find("Connection: close"), out)
    assert.is_truthy(out:find("finished$"), out)
    local rc
    for _ = 1, 500 do
      rc = sub.slurp(status .. ".rc"):match("%d+")
      if rc then break end
      async.sleep(0.01)
    end
    os.remove(status .. ".rc"); os.remove(status .. ".out"); os.remove(status .. ".pid")
    assert.are.equal("143", rc) -- terminated, after the graceful close
  end)
end)
