-- async.fetch against spec/support/server.py on 127.0.0.1: every option, every error kind,
-- cancellation mid-transfer, and no handle left behind.
local async = require "lasync"
local cjson = require "cjson"

local server, base, tls_base, cert_file

local function start_server()
  cert_file = os.tmpname()
  server = io.popen("exec python3 spec/support/server.py --cert-out " .. cert_file)
  local line = server:read("l")
  local http, https = (line or ""):match("^READY http=(%d+) https=(%d+)")
  assert(http, "the test server did not start: " .. tostring(line))
  base = "http://127.0.0.1:" .. http
  tls_base = "https://127.0.0.1:" .. https
end

-- Runs fn and returns the error object it raised.
local function fetch_error(url, opts)
  local ok, err = pcall(async.fetch, url, opts)
  assert.is_false(ok, "expected an error from " .. url)
  return err
end

-- A port nothing listens on: bound, then released.
local function closed_port()
  local f = io.popen([[python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); ]] ..
    [[print(s.getsockname()[1])"]])
  local port = f:read("n")
  f:close()
  return port
end

describe("async.fetch", function()
  setup(start_server)
  teardown(function()
    if server then server:close() end
    if cert_file then os.remove(cert_file) end
  end)

  after_each(function()
    local c = async._debug.counts()
    assert.are.equal(0, c.tasks, "tasks left")
    assert.are.equal(0, c.handles, "handles left")
    assert.are.equal(0, c.refs, "refs left")
    assert.are.equal(0, c.timers, "timers left")
  end)

  describe("responses", function()
    it("gets a body, a status and headers", function()
      local res = async.fetch(base .. "/get")
      assert.are.equal(200, res.status)
      assert.is_true(res.ok)
      assert.are.equal('{"ok":true}', res.body)
      assert.are.equal(res.body, res:text())
      assert.are.equal("application/json", res.headers["content-type"])
      assert.are.equal("application/json", res.headers["Content-Type"])
      assert.are.equal(base .. "/get", res.url)
      assert.are.equal("1.1", res.http_version)
      assert.are.equal(0, res.redirects)
    end)

    it("treats an HTTP error status as a response, not an error", function()
      local res = async.fetch(base .. "/status/404")
      assert.are.equal(404, res.status)
      assert.is_false(res.ok)
      assert.are.equal(500, async.fetch(base .. "/status/500").status)
    end)

    it("reports timings from curl's counters", function()
      local t = async.fetch(base .. "/get").timings
      for _, k in ipairs { "dns", "connect", "tls", "first_byte", "total" } do
        assert.is_number(t[k], k)
        assert.is_true(t[k] >= 0, k)
      end
      assert.is_true(t.total >= t.first_byte)
    end)

    it("keeps every value of a repeated header", function()
      local res = async.fetch(base .. "/headers-multi")
      local cookies = res:header_values("set-cookie")
      assert.are.equal(2, #cookies)
      assert.are.equal(cookies[2], res.headers["Set-Cookie"])
      assert.are.same({}, res:header_values("x-absent"))
      local n = 0
      for _, h in ipairs(res.headers_list) do
        if h.name:lower() == "set-cookie" then n = n + 1 end
      end
      assert.are.equal(2, n)
    end)

    it("decodes JSON, and raises a json error on invalid JSON", function()
      local doc = async.fetch(base .. "/json"):json()
      assert.are.equal("lasync", doc.name)
      local res = async.fetch(base .. "/bad-json")
      local ok, err = pcall(res.json, res)
      assert.is_false(ok)
      assert.are.equal("json", err.kind)
    end)

    it("decompresses gzip bodies", function()
      local res = async.fetch(base .. "/gzip?n=1000")
      assert.are.equal(1000, #res.body)
      assert.are.equal("abcdef", res.body:sub(1, 6))
      local raw = async.fetch(base .. "/gzip?n=1000", { decompress = false })
      assert.are_not.equal(1000, #raw.body)
    end)

    it("reuses connections across requests", function()
      async.fetch(base .. "/get")
      local count = async.fetch(base .. "/count"):json()
      assert.is_true(count.connection_requests >= 2)
    end)
  end)

  describe("requests", function()
    it("sends the method, headers and body", function()
      local echo = async.fetch(base .. "/echo", {
        method = "put",
        headers = { ["X-Test"] = "yes", Accept = "text/plain" },
        body = "hello",
      }):json()
      assert.are.equal("PUT", echo.method)
      assert.are.equal("yes", echo.headers["x-test"])
      assert.are.equal("text/plain", echo.headers["accept"])
      assert.are.equal("hello", echo.body)
    end)

    it("sends a fetch without options as a plain GET, whatever fetches came before", function()
      -- A fetch without options reuses an easy handle an earlier one left set up
      -- (bindings/http/client.c): only such handles, never one a fetch with options used.
      local function plain()
        local echo = async.fetch(base .. "/echo"):json()
        assert.are.equal("GET", echo.method)
        assert.are.equal("", echo.body)
        assert.is_nil(echo.headers["x-test"])
        assert.are.equal("lasync/" .. async.version, echo.headers["user-agent"])
      end
      local tasks = {}
      for i = 1, 4 do tasks[i] = async.spawn(plain) end -- several handles to keep
      async.gather(tasks)
      plain()
      assert.are.equal("PUT", async.fetch(base .. "/echo", { method = "PUT", body = "x",
        headers = { ["X-Test"] = "yes" }, user_agent = "other" }):json().method)
      plain()
      assert.are.equal(200, async.fetch(base .. "/redirect/2").status) -- followed, as by default
      plain()
      assert.are.equal("timeout", fetch_error(base .. "/delay?s=2", { timeout = 0.1 }).kind)
      assert.are.equal("connect", fetch_error("http://127.0.0.1:" .. closed_port() .. "/").kind)
      plain()
      local res = async.fetch(base .. "/bytes/100000")
      assert.are.equal(100000, #res.body)
      plain()
    end)

    it("encodes json bodies and sets the content type", function()
      local echo = async.fetch(base .. "/echo", { method = "POST", json = { a = 1 } }):json()
      assert.are.equal("POST", echo.method)
      assert.are.equal("application/json", echo.headers["content-type"])
      assert.are.same({ a = 1 }, cjson.decode(echo.body))
    end)

    it("url-encodes the query", function()
      local echo = async.fetch(base .. "/echo?x=1", { query = { q = "a b&c", n = 2 } }):json()
      assert.are.equal("a b&c", echo.query.q)
      assert.are.equal("2", echo.query.n)
      assert.are.equal("1", echo.query.x)
    end)

    it("sends the user agent", function()
      local echo = async.fetch(base .. "/echo"):json()
      assert.are.equal("lasync/" .. async.version, echo.headers["user-agent"])
      echo = async.fetch(base .. "/echo", { user_agent = "me/1" }):json()
      assert.are.equal("me/1", echo.headers["user-agent"])
    end)

    it("sends HEAD without reading a body", function()
      local res = async.fetch(base .. "/bytes/100", { method = "HEAD" })
      assert.are.equal(200, res.status)
      assert.are.equal("", res.body)
    end)
  end)

  describe("redirects", function()
    it("follows them and counts them", function()
      local res = async.fetch(base .. "/redirect/3")
      assert.are.equal(200, res.status)
      assert.are.equal(3, res.redirects)
      assert.are.equal(base .. "/get", res.url)
    end)

    it("stops at max_redirects with a protocol error", function()
      local err = fetch_error(base .. "/redirect/5", { max_redirects = 2 })
      assert.are.equal("protocol", err.kind)
      assert.are.equal("protocol", fetch_error(base .. "/redirect-loop").kind)
    end)

    it("returns the redirect itself when not following", function()
      local res = async.fetch(base .. "/redirect/1", { follow_redirects = false })
      assert.are.equal(302, res.status)
      assert.is_string(res.headers.location)
    end)

    it("refuses a redirect to file://", function()
      local err = fetch_error(base .. "/redirect-to?url=file:///etc/passwd")
      assert.are.equal("protocol", err.kind)
    end)
  end)

  describe("invalid requests", function()
    it("refuses schemes other than http and https before any I/O", function()
      for _, url in ipairs { "file:///etc/passwd", "gopher://127.0.0.1/" } do
        local err = fetch_error(url)
        assert.are.equal("invalid", err.kind, url)
        assert.are.equal(url, err.url)
      end
    end)

    it("refuses CR, LF and NUL in headers and the method before any I/O", function()
      for _, opts in ipairs {
        { headers = { ["X-A"] = "a\r\nX-Injected: 1" } },
        { headers = { ["X-A\n"] = "a" } },
        { headers = { ["X-A"] = "a\0b" } },
        { method = "GET\r\n" },
      } do
        local err = fetch_error(base .. "/echo", opts)
        assert.are.equal("invalid", err.kind)
        assert.is_string(err.option)
      end
    end)

    it("names the bad option", function()
      local err = fetch_error(base .. "/get", { timeout = "soon" })
      assert.are.equal("invalid", err.kind)
      assert.are.equal("timeout", err.option)
      assert.matches("timeout", err.message)
      assert.are.equal("tiemout", fetch_error(base .. "/get", { tiemout = 1 }).option)
      assert.are.equal("invalid", fetch_error("not a url").kind)
    end)

    it("refuses a non-boolean stream and body with json", function()
      assert.are.equal("stream", fetch_error(base .. "/get", { stream = "yes" }).option)
      assert.are.equal("json", fetch_error(base .. "/get", { body = "x", json = {} }).option)
      assert.are.equal("http_version", fetch_error(base .. "/get", { http_version = "9" }).option)
    end)

    it("must be called inside a task", function()
      assert.has_error(function() async.fetch() end)
    end)
  end)

  describe("failures", function()
    it("reports a refused connection", function()
      local err = fetch_error("http://127.0.0.1:" .. closed_port() .. "/")
      assert.are.equal("connect", err.kind)
      assert.is_number(err.curl_code)
    end)

    it("goes through a proxy only when asked to", function()
      local err = fetch_error(base .. "/get", { proxy = "http://127.0.0.1:" .. closed_port() })
      assert.are.equal("connect", err.kind)
    end)

    it("reports a name that does not resolve", function()
      local t0 = async.now()
      local err = fetch_error("http://lasync-test.invalid/", { timeout = 3 })
      assert.is_true(err.kind == "dns" or err.kind == "timeout", err.kind)
      assert.is_true(async.now() - t0 < 3.5)
    end)

    it("times out", function()
      local t0 = async.now()
      local err = fetch_error(base .. "/delay?s=3", { timeout = 0.3 })
      assert.are.equal("timeout", err.kind)
      assert.is_true(async.is_timeout(err))
      assert.is_true(async.now() - t0 < 1.5)
    end)

    it("aborts a transfer that crawls", function()
      local err = fetch_error(base .. "/drip?n=20&delay=0.5",
        { low_speed_limit = 100, low_speed_time = 1 })
      assert.is_true(async.is_timeout(err))
    end)

    it("enforces max_body, on declared and on decompressed sizes", function()
      assert.are.equal("too_large", fetch_error(base .. "/bytes/10000", { max_body = 1000 }).kind)
      assert.are.equal("too_large",
        fetch_error(base .. "/stream-bytes/10000", { max_body = 1000 }).kind)
      assert.are.equal("too_large",
        fetch_error(base .. "/gzip-bomb?mb=100", { max_body = 1024 * 1024 }).kind)
      assert.are.equal(1000, #async.fetch(base .. "/bytes/1000", { max_body = 1000 }).body)
    end)

    it("reports malformed responses as protocol errors", function()
      for _, path in ipairs { "/garbage", "/cut", "/nothing", "/reset" } do
        local err = fetch_error(base .. path)
        assert.are.equal("protocol", err.kind, path)
        assert.are.equal(base .. path, err.url)
      end
    end)
  end)

  describe("TLS", function()
    it("refuses a self-signed certificate", function()
      assert.are.equal("tls", fetch_error(tls_base .. "/get").kind)
    end)

    it("accepts it with ca_file, or without verification", function()
      local res = async.fetch(tls_base .. "/get", { ca_file = cert_file })
      assert.are.equal(200, res.status)
      assert.is_true(res.timings.tls > 0)
      assert.are.equal(200, async.fetch(tls_base .. "/get", { verify_tls = false }).status)
    end)
  end)

  describe("concurrency", function()
    it("runs transfers side by side", function()
      local t0 = async.now()
      local fns = {}
      for i = 1, 5 do fns[i] = function() return async.fetch(base .. "/delay?s=1").status end end
      local results = async.gather(table.unpack(fns))
      assert.are.same({ 200, 200, 200, 200, 200, n = 5 }, results)
      assert.is_true(async.now() - t0 < 2.5)
    end)

    it("aborts the transfer of a cancelled task", function()
      local t0 = async.now()
      local task = async.spawn(async.fetch, base .. "/delay?s=5")
      async.sleep(0.1)
      assert.is_true(async._debug.counts().handles > 0) -- its socket and curl's timer
      task:cancel()
      local ok, err = pcall(task.await, task)
      assert.is_false(ok)
      assert.is_true(async.is_cancelled(err))
      assert.is_true(async.now() - t0 < 1)
    end)

    it("aborts the transfer when wait_for times out", function()
      local t0 = async.now()
      local task = async.spawn(async.fetch, base .. "/delay?s=5")
      local ok, err = pcall(async.wait_for, task, 0.2)
      assert.is_false(ok)
      assert.is_true(async.is_timeout(err))
      assert.is_true(async.now() - t0 < 1)
    end)

    it("aborts the transfer when async.timeout expires", function()
      local ok, err = pcall(async.timeout, 0.2, async.fetch, base .. "/delay?s=5")
      assert.is_false(ok)
      assert.is_true(async.is_timeout(err))
    end)
  end)

  describe("clients", function()
    it("apply their defaults", function()
      local client = async.http.client { base_url = base, headers = { ["X-Client"] = "1" } }
      local echo = client:get("/echo", { headers = { ["X-Call"] = "2" } }):json()
      assert.are.equal("GET", echo.method)
      assert.are.equal("1", echo.headers["x-client"])
      assert.are.equal("2", echo.headers["x-call"])
      echo = client:post("echo", { body = "b" }):json()
      assert.are.equal("POST", echo.method)
      assert.are.equal("b", echo.body)
    end)

    it("check their defaults when made", function()
      local ok, err = pcall(async.http.client, { timeout = "x" })
      assert.is_false(ok)
      assert.are.equal("invalid", err.kind)
    end)
  end)
end)
