-- async.fetch's options read the way they are documented (docs/fetch.md): numbers of either
-- subtype, the meanings of max_body, malformed URLs refused before any I/O, the request body's
-- content type, integers in res:json(), and misuse reported at the caller's line.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local server, base

local function fetch_error(url, opts)
  local ok, err = pcall(async.fetch, url, opts)
  assert.is_false(ok, "expected an error from " .. tostring(url))
  return err
end

local function message_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("async.fetch options", function()
  setup(function()
    server = io.popen("exec python3 spec/support/server.py")
    local port = (server:read("l") or ""):match("^READY http=(%d+)")
    assert(port, "the test server did not start")
    base = "http://127.0.0.1:" .. port
  end)
  teardown(function() if server then server:close() end end)
  after_each(assert_clean)

  describe("numbers", function()
    it("takes a fractional low_speed_time (rounded up to curl's whole seconds)", function()
      local t0 = async.now()
      local err = fetch_error(base .. "/drip?n=40&delay=0.5",
        { low_speed_limit = 100, low_speed_time = 0.5 })
      assert.is_true(async.is_timeout(err), tostring(err))
      assert.is_true(async.now() - t0 < 10)
    end)

    it("reads counts given as floats", function()
      assert.are.equal("protocol", fetch_error(base .. "/redirect/5", { max_redirects = 2.0 }).kind)
      assert.are.equal("too_large", fetch_error(base .. "/bytes/10000", { max_body = 1e3 }).kind)
      local res <close> = async.fetch(base .. "/bytes/5000", { stream = true, stream_buffer = 1e3 })
      local n = 0
      for chunk in res:chunks() do n = n + #chunk end
      assert.are.equal(5000, n)
    end)

    it("reads math.huge as no limit where that has a meaning", function()
      assert.are.equal(100000, #async.fetch(base .. "/bytes/100000", { max_body = math.huge }).body)
      local res3 = async.fetch(base .. "/redirect/3", { max_redirects = math.huge })
      assert.are.equal(200, res3.status)
      local res <close> = async.fetch(base .. "/bytes/1000", { stream = true,
        stream_buffer = math.huge })
      assert.are.equal(1000, #res:read())
      assert.are.equal("low_speed_limit",
        fetch_error(base .. "/get", { low_speed_limit = math.huge }).option)
    end)

    it("refuses fractions, negatives and NaN for counts", function()
      for _, opts in ipairs {
        { max_body = 1.5 }, { max_body = -1 }, { max_redirects = 0 / 0 },
        { low_speed_limit = 0.5 }, { stream_buffer = -math.huge }, { timeout = -1 },
      } do
        local name = next(opts)
        local err = fetch_error(base .. "/get", opts)
        assert.are.equal("invalid", err.kind)
        assert.are.equal(name, err.option)
        assert.matches("async.fetch: bad option '" .. name .. "'", err.message, 1, true)
      end
    end)

    it("gives max_body one meaning each: absent 64 MiB, 0 no body, math.huge no limit", function()
      assert.are.equal("too_large", fetch_error(base .. "/bytes/1", { max_body = 0 }).kind)
      -- An empty body is within a limit of 0.
      assert.are.equal(204, async.fetch(base .. "/status/204", { max_body = 0 }).status)
      assert.are.equal(200000, #async.fetch(base .. "/bytes/200000").body)
    end)
  end)

  describe("URLs", function()
    local MALFORMED = {
      "http://127.0.0.1:99999/", "http://", "http://:80/", "http://\255\254.example/",
      "ftp://127.0.0.1/", "file:///etc/passwd", "not a url", "http://a b/",
    }

    it("refuses malformed URLs with kind invalid before any I/O", function()
      for _, url in ipairs(MALFORMED) do
        local err = fetch_error(url)
        assert.are.equal("invalid", err.kind, url)
        assert.are.equal("url", err.option, url)
        assert.are.equal(url, err.url)
      end
    end)

    it("names a 10 MB URL's problem", function()
      local url = base .. "/get?q=" .. ("x"):rep(10 * 1024 * 1024)
      local err = fetch_error(url)
      assert.are.equal("invalid", err.kind)
      assert.matches("bytes (at most", err.message, 1, true)
      assert.is_nil(err.message:find("No URL set", 1, true))
    end)

    it("never retries a URL that cannot work", function()
      local t0 = async.now()
      for _, url in ipairs(MALFORMED) do
        assert.are.equal("invalid",
          fetch_error(url, { retry = { attempts = 4, backoff = 1, jitter = false } }).kind)
      end
      assert.is_true(async.now() - t0 < 1, "retried")
    end)

    it("checks the URL a query makes", function()
      local err = fetch_error("http://127.0.0.1:99999/", { query = { a = 1 } })
      assert.are.equal("invalid", err.kind)
    end)
  end)

  describe("request bodies", function()
    local function content_type(opts)
      return async.fetch(base .. "/echo", opts):json().headers["content-type"]
    end

    it("go out as application/octet-stream unless a type is given", function()
      for _, method in ipairs { "POST", "PUT", "PATCH" } do
        assert.are.equal("application/octet-stream", content_type { method = method, body = "x" })
        local sent = false
        assert.are.equal("application/octet-stream", content_type { method = method,
          body = function()
            if sent then return nil end
            sent = true
            return "chunk"
          end })
      end
      assert.are.equal("text/csv", content_type { method = "POST", body = "a,b",
        headers = { ["content-type"] = "text/csv" } })
      assert.are.equal("application/json", content_type { method = "POST", json = { a = 1 } })
      assert.is_nil(content_type { method = "POST" }) -- no body, no type
    end)
  end)

  describe("res:json()", function()
    it("keeps integers integers", function()
      local doc = async.fetch(base .. "/json-numbers"):json()
      for _, v in ipairs { doc.int, doc.neg, doc.zero, doc.list[1], doc.list[3], doc.nested.id,
        doc.nested.deeper[1].n, doc.exp } do
        assert.are.equal("integer", math.type(v), tostring(v))
      end
      assert.are.equal(1, doc.int)
      assert.are.equal(-42, doc.neg)
      assert.are.equal(12345678901, doc.nested.deeper[1].n)
      assert.are.equal("float", math.type(doc.float))
      assert.are.equal(1.5, doc.float)
      assert.are.equal("12 not a number", doc.text)
    end)

    it("leaves a document of fractions and exponents as cjson decoded it", function()
      local doc = async.fetch(base .. "/json-numbers?floats=1"):json()
      assert.are.equal("float", math.type(doc[2]))
      assert.are.equal(25.0, doc[2])
      assert.are.equal("7", doc[3])
    end)
  end)

  describe("misuse", function()
    it("says \"call it with ':'\" for a method called with '.'", function()
      local client = async.http.client()
      local res = async.fetch(base .. "/get")
      local q = async.queue()
      for _, call in ipairs {
        function() return client.get(base .. "/get") end,
        function() return client.fetch(base .. "/get") end,
        function() return res.read() end,
        function() return res.json() end,
        function() return q.size() end,
        function() return async.semaphore().available() end,
      } do
        assert.matches("call it with ':'", message_of(call), 1, true)
      end
      assert.matches("client:get: bad self (lasync.Client expected, got string)",
        message_of(client.get, base .. "/get"), 1, true)
    end)

    it("reports misuse at the caller's line, never a line of lasync's own code", function()
      local line = debug.getinfo(1, "l").currentline
      for _, msg in ipairs {
        message_of(async.fetch, 42),
        message_of(async.fetch, base .. "/get", 42),
        message_of(async.retry, function() end, { attemps = 3 }),
        message_of(async.map, print, {}, { concurency = 2 }),
        message_of(function() return async.queue().size() end),
      } do
        assert.is_nil(msg:find("[lasync]", 1, true), msg)
        assert.matches("fetch_options_spec.lua:" .. "%d+:", msg)
      end
      assert.is_true(line > 0)
      local co = coroutine.wrap(function() return pcall(async.fetch, base .. "/get") end)
      local ok, err = co()
      assert.is_false(ok)
      assert.are.equal("async.fetch must be called inside a task", err:gsub("^.-:%d+: ", ""))
      assert.is_nil(err:find("[lasync]", 1, true), err)
    end)

    it("names the call the user made when it cannot suspend (a table.sort comparator)", function()
      for name, call in pairs {
        ["async.run"] = function() async.run(function() end) end,
        ["async.timeout"] = function() async.timeout(1, function() end) end,
        ["async.fetch"] = function() async.fetch(base .. "/get") end,
        ["queue:get"] = function() async.queue():get() end,
      } do
        local msg = message_of(table.sort, { 3, 1, 2 }, function(x, y)
          call()
          return x < y
        end)
        assert.matches(name .. " cannot suspend here", msg, 1, true)
        assert.is_nil(msg:find("[lasync]", 1, true), msg)
      end
    end)

    it("raises bad options the same way in fetch, retry, map and wait", function()
      assert.matches("async.retry: bad option 'attemps' (unknown option)",
        message_of(async.retry, function() end, { attemps = 3 }), 1, true)
      assert.matches("async.map: bad option 'concurency' (unknown option)",
        message_of(async.map, print, {}, { concurency = 2 }), 1, true)
      assert.matches("async.retry: bad option 'attempts' (integer >= 1 expected, got 0)",
        message_of(async.retry, function() end, { attempts = 0 }), 1, true)
      assert.matches("async.retry: bad option 'jitter' (boolean expected, got string)",
        message_of(async.retry, function() end, { jitter = "no" }), 1, true)
      assert.matches("async.wait: bad option 'timout' (unknown option)",
        message_of(async.wait, {}, { timout = 1 }), 1, true)
      assert.matches("async.fetch: bad option 'attemps' (unknown option)",
        fetch_error(base .. "/get", { attemps = 3 }).message, 1, true)
    end)

    it("checks a client's options where it is made", function()
      for _, opts in ipairs {
        { base_url = "not a url" }, { base_url = "http://127.0.0.1:99999" }, { base_url = 42 },
        { timeout = "soon" }, { max_connections = 0 }, { tiemout = 1 },
      } do
        local ok, err = pcall(async.http.client, opts)
        assert.is_false(ok)
        assert.are.equal("invalid", err.kind, tostring(err))
        assert.are.equal(next(opts), err.option)
        assert.matches("async.http.client: bad option", err.message, 1, true)
      end
      assert.matches("async.http.client: bad argument #1 'options' (table expected, got number)",
        message_of(async.http.client, 5), 1, true)
    end)
  end)
end)
