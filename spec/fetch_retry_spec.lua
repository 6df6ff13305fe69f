-- async.fetch's retry option: backoff between attempts, 429/5xx retried honouring Retry-After,
-- errors of the caller's making raised at once. Against spec/support/server.py on 127.0.0.1.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local server, base
local keys = 0

-- A URL on /flaky that fails `fail` times with `status` before it answers 200.
local function flaky(fail, status, after)
  keys = keys + 1
  return ("%s/flaky?key=k%d&fail=%d&status=%d%s"):format(base, keys, fail, status or 503,
    after and ("&after=" .. after) or "")
end

describe("async.fetch retry", function()
  setup(function()
    server = io.popen("exec python3 spec/support/server.py")
    local http = (server:read("l") or ""):match("^READY http=(%d+)")
    assert(http, "the test server did not start")
    base = "http://127.0.0.1:" .. http
  end)
  teardown(function() if server then server:close() end end)
  after_each(assert_clean)

  it("retries a 503 until the server recovers", function()
    local res = async.fetch(flaky(2), { retry = { attempts = 3, backoff = 0.01 } })
    assert.are.equal(200, res.status)
    assert.are.equal("recovered after 2\n", res.body)
  end)

  it("returns the last response when the attempts run out", function()
    local res = async.fetch(flaky(5), { retry = { attempts = 2, backoff = 0.01 } })
    assert.are.equal(503, res.status)
    assert.is_false(res.ok)
  end)

  it("honours Retry-After on a 429", function()
    local t0 = async.now()
    local res = async.fetch(flaky(1, 429, 1), { retry = { attempts = 2, backoff = 0.01 } })
    assert.are.equal(200, res.status)
    assert.is_true(async.now() - t0 >= 0.95, "Retry-After: 1 was not waited for")
  end)

  it("caps a Retry-After delay at max_delay", function()
    local t0 = async.now()
    local res = async.fetch(flaky(1, 503, 60), { retry = { attempts = 2, max_delay = 0.05 } })
    assert.are.equal(200, res.status)
    assert.is_true(async.now() - t0 < 5)
  end)

  it("does not retry other statuses", function()
    local res = async.fetch(flaky(1, 404), { retry = { attempts = 3, backoff = 0.01 } })
    assert.are.equal(404, res.status)
  end)

  it("retries a refused connection, then raises its error", function()
    local f = io.popen([[python3 -c "import socket; s=socket.socket(); ]] ..
      [[s.bind(('127.0.0.1',0)); ]] ..
    [[print(s.getsockname()[1])"]])
    local port = f:read("n")
    f:close()
    local attempts = 0
    local ok, err = pcall(async.fetch, "http://127.0.0.1:" .. port .. "/", { retry = {
      attempts = 3, backoff = 0.01,
      retry_if = function() attempts = attempts + 1; return true end } })
    assert.is_false(ok)
    assert.are.equal("connect", err.kind)
    assert.are.equal(2, attempts) -- asked before each of the two retries
  end)

  it("raises an invalid option at once, and checks the retry table", function()
    local ok, err = pcall(async.fetch, base .. "/get", { retry = { attempts = 0 } })
    assert.is_false(ok)
    assert.are.equal("invalid", err.kind)
    assert.are.equal("retry", err.option)
    ok, err = pcall(async.fetch, base .. "/get", { retry = { tries = 2 } })
    assert.is_false(ok)
    assert.are.equal("invalid", err.kind)
  end)

  it("is cancellable while it waits between attempts", function()
    local t = async.spawn(async.fetch, flaky(5), { retry = { attempts = 5, backoff = 10 } })
    async.sleep(0.2)
    t:cancel()
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
  end)

  it("works through a client's defaults", function()
    local client = async.http.client { base_url = base, retry = { attempts = 3, backoff = 0.01 } }
    local key = flaky(2):match("/flaky.*$")
    assert.are.equal(200, client:get(key).status)
  end)

  it("ignores a Retry-After date past what os.time takes, and backs off instead", function()
    local url = base .. "/retry-after?status=503&after="
      .. "Mon%2C%2001%20Jan%2099999999999%2000%3A00%3A00%20GMT"
    local res = async.fetch(url, { retry = { attempts = 2, backoff = 0.01 } })
    assert.are.equal(503, res.status)
  end)

  it("refuses retry with a body function, which cannot be sent twice", function()
    local ok, err = pcall(async.fetch, base .. "/status/503", { method = "POST",
      retry = { attempts = 3, backoff = 0.01 }, body = function() return nil end })
    assert.is_false(ok)
    assert.are.equal("invalid", err.kind)
    assert.are.equal("retry", err.option)
    local res = async.fetch(base .. "/echo", { method = "POST", retry = { attempts = 1 },
      body = coroutine.wrap(function() coroutine.yield("abc") end) })
    assert.are.equal(200, res.status)
  end)

  it("refuses a body function whose chunks disagree with its Content-Length", function()
    for _, len in ipairs { "3", "10", "99999999999999999999999" } do
      local chunks = { "abcdef" }
      local ok, err = pcall(async.fetch, base .. "/echo", { method = "POST",
        headers = { ["Content-Length"] = len }, body = function() return table.remove(chunks) end })
      assert.is_false(ok, len)
      assert.are.equal("invalid", err.kind, len)
    end
  end)

  it("collects a stream dropped unread before it calls a wait for its permit deadlock", function()
    local client = async.http.client { max_connections = 1 }
    client:get(base .. "/bytes/100000", { stream = true }) -- holds the one connection, unread
    local res = client:get(base .. "/get", { stream = true })
    assert.are.equal(200, res.status)
    res:close()
  end)

  it("keeps a timeout under a millisecond a timeout, never no limit", function()
    local t0 = async.now()
    local ok, err = pcall(async.fetch, base .. "/delay?s=3", { timeout = 1e-4 })
    assert.is_false(ok)
    assert.are.equal("timeout", err.kind)
    assert.is_true(async.now() - t0 < 2.5)
  end)
end)

describe("async.fetch against a hostile server", function()
  after_each(assert_clean)

  it("parses a header of 100 KB of blanks in linear time", function()
    local value = "a" .. string.rep(" ", 100000) .. "b"
    local srv = async.net.listen({ port = 0 }, function(c)
      c:read()
      c:write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: " .. value .. "\r\n\r\nok")
      c:close()
    end)
    local res = async.fetch("http://127.0.0.1:" .. srv.port .. "/")
    local c0 = os.clock()
    local x = res.headers.x
    local spent = os.clock() - c0
    srv:close()
    assert.are.equal("a" .. string.rep(" ", 100000) .. "b", x)
    assert.is_true(spent < 1, ("%.2f s of CPU for one header"):format(spent)) -- quadratic: a minute
    assert.matches("res:header_values: bad argument #1 'name' (string expected, got nil)",
      select(2, pcall(res.header_values, res)), 1, true)
  end)
end)
