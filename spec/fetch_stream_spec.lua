-- Streamed responses (opts.stream, res:read, res:chunks, backpressure), request bodies made by
-- a function, and per-client connection limits, against spec/support/server.py on 127.0.0.1.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local server, base

local function start_server()
  server = io.popen("exec python3 spec/support/server.py")
  local line = server:read("l")
  local http = (line or ""):match("^READY http=(%d+)")
  assert(http, "the test server did not start: " .. tostring(line))
  base = "http://127.0.0.1:" .. http
end

-- Reads a streamed response to its end: the body and the number of chunks.
local function read_all(res)
  local parts = {}
  for chunk in res:chunks() do parts[#parts + 1] = chunk end
  return table.concat(parts), #parts
end

local function read_error(res)
  local ok, err = pcall(read_all, res)
  assert.is_false(ok, "expected read() to raise")
  return err
end

local function fetch_error(url, opts)
  local ok, err = pcall(async.fetch, url, opts)
  assert.is_false(ok, "expected an error from " .. url)
  return err
end

describe("async.fetch streaming", function()
  setup(start_server)
  teardown(function()
    if server then server:close() end
  end)
  after_each(function()
    collectgarbage()
    assert_clean()
  end)

  describe("responses", function()
    it("reads a large body in chunks that add up to the whole", function()
      local res = async.fetch(base .. "/bytes/3000000", { stream = true })
      assert.are.equal(200, res.status)
      assert.are.equal("3000000", res.headers["content-length"])
      assert.is_nil(res.body)
      local body, n = read_all(res)
      assert.is_true(n > 1, "one chunk only")
      assert.are.equal(async.fetch(base .. "/bytes/3000000").body, body)
    end)

    it("returns at the headers and delivers a drip chunk by chunk", function()
      local t0 = async.now()
      local res = async.fetch(base .. "/drip?n=5&delay=0.1", { stream = true })
      local at_headers = async.now() - t0
      local body, n = read_all(res)
      assert.is_true(at_headers < 0.3, "fetch waited for the body")
      assert.is_true(async.now() - t0 >= 0.45)
      assert.are.equal(5, #body)
      assert.is_true(n >= 3, "only " .. n .. " chunks")
    end)

    it("returns the final response's headers after redirects", function()
      local res = async.fetch(base .. "/redirect/2", { stream = true })
      assert.are.equal(200, res.status)
      assert.are.equal(2, res.redirects)
      assert.are.equal(base .. "/get", res.url)
      assert.are.equal('{"ok":true}', read_all(res))
    end)

    it("returns nil at the end, and again after it", function()
      local res = async.fetch(base .. "/get", { stream = true })
      assert.are.equal('{"ok":true}', res:read())
      assert.is_nil(res:read())
      assert.is_nil(res:read())
      local head = async.fetch(base .. "/bytes/100", { method = "HEAD", stream = true })
      assert.are.equal(200, head.status)
      assert.is_nil(head:read())
    end)

    it("pauses the transfer while the reader is behind", function()
      local bound = 256 * 1024
      local res = async.fetch(base .. "/bytes/50000000", { stream = true, stream_buffer = bound })
      local total, peak = 0, 0
      while true do
        async.sleep(0.001) -- a slow reader: the transfer fills the buffer meanwhile
        peak = math.max(peak, res.buffered)
        local chunk = res:read()
        if not chunk then break end
        total = total + #chunk
      end
      assert.are.equal(50000000, total)
      assert.is_true(peak >= bound, "the buffer never filled: " .. peak)
      assert.is_true(peak <= 2 * bound, "buffered " .. peak .. " bytes, bound " .. bound)
      assert.are.equal(0, res.buffered)
    end)
  end)

  describe("failures", function()
    it("raises a cut-off body's protocol error from read()", function()
      local res = async.fetch(base .. "/cut?n=1000&send=100", { stream = true })
      assert.are.equal(200, res.status)
      assert.are.equal(100, #res:read()) -- what came before the cut
      local ok, err = pcall(res.read, res)
      assert.is_false(ok)
      assert.are.equal("protocol", err.kind)
      assert.are.equal(base .. "/cut?n=1000&send=100", err.url)
    end)

    it("enforces max_body on streams", function()
      assert.are.equal("too_large",
        fetch_error(base .. "/bytes/10000", { stream = true, max_body = 1000 }).kind)
      local res = async.fetch(base .. "/stream-bytes/10000", { stream = true, max_body = 1000 })
      assert.are.equal("too_large", read_error(res).kind)
    end)

    it("times out mid-body", function()
      local res = async.fetch(base .. "/drip?n=20&delay=0.1", { stream = true, timeout = 0.5 })
      local err = read_error(res)
      assert.are.equal("timeout", err.kind)
      assert.is_true(async.is_timeout(err))
    end)

    it("refuses a second reader at the same time", function()
      local res = async.fetch(base .. "/drip?n=3&delay=0.1", { stream = true })
      local reader = async.spawn(read_all, res)
      async.sleep(0)
      assert.has_error(function() res:read() end,
        "res:read: another task is already reading this response")
      assert.are.equal(3, #reader:await())
    end)
  end)

  describe("aborting", function()
    it("aborts the transfer when the reading task is cancelled", function()
      local res = async.fetch(base .. "/endless?delay=0.05", { stream = true })
      local reader = async.spawn(read_all, res)
      async.sleep(0.2)
      assert.is_true(async._debug.counts().handles > 0)
      reader:cancel()
      local ok, err = pcall(reader.await, reader)
      assert.is_false(ok)
      assert.is_true(async.is_cancelled(err))
      -- the connection's poll handles close asynchronously (uv_close): a loop turn or two, more
      -- on a loaded machine, as spec/support/clean.lua allows (CI once saw 2 at once)
      local deadline = async.now() + 0.5
      while async._debug.counts().handles > 0 and async.now() < deadline do async.sleep(0.01) end
      assert.are.equal(0, async._debug.counts().handles)
      local ok2, err2 = pcall(res.read, res)
      assert.is_false(ok2)
      assert.are.equal("cancelled", err2.kind)
    end)

    it("aborts the transfer when the reader is cancelled after a chunk woke it", function()
      -- The race CI once lost: a chunk lands and wakes the reader, and another task cancels it
      -- before it runs. The chunk is in the response's buffer, but the transfer is aborted: a
      -- later read raises, as it does when the cancel finds the buffer empty.
      local res = async.fetch(base .. "/endless?delay=0.02", { stream = true })
      assert.is_string(res:read())
      local reader = async.spawn(res.read, res)
      async.sleep(0) -- the reader waits in res:read
      local canceller = async.spawn(function()
        async.sleep(0.001)
        reader:cancel()
      end)
      async.sleep(0) -- the canceller's timer runs
      -- Holds the loop while the canceller's timer expires and the next chunk arrives: the
      -- next turn wakes both, the canceller first (timers come before I/O in a loop turn).
      local t = async.now() + 0.1
      while async.now() < t do end
      canceller:await()
      assert.is_false((pcall(reader.await, reader)), "the reader was not cancelled")
      local ok, err = pcall(res.read, res)
      assert.is_false(ok, "res:read returned a chunk after the abort")
      assert.are.equal("cancelled", err.kind)
      -- the poll handles close a turn or two later; after_each checks they did
      local deadline = async.now() + 0.5
      while async._debug.counts().handles > 0 and async.now() < deadline do async.sleep(0.01) end
    end)

    it("aborts the transfer when the fetching task is cancelled before the headers", function()
      local t0 = async.now()
      local task = async.spawn(async.fetch, base .. "/delay?s=5", { stream = true })
      async.sleep(0.1)
      task:cancel()
      assert.is_false(pcall(task.await, task))
      assert.is_true(async.now() - t0 < 1)
    end)

    it("aborts the transfer at the end of a <close> scope", function()
      do
        local res <close> = async.fetch(base .. "/endless", { stream = true })
        assert.is_string(res:read())
        assert.is_true(async._debug.counts().handles > 0)
      end
      assert.are.equal(0, async._debug.counts().handles)
    end)

    it("closes idempotently, and refuses reads after", function()
      local res = async.fetch(base .. "/endless", { stream = true })
      res:close()
      res:close()
      assert.are.equal(0, async._debug.counts().handles)
      assert.has_error(function() res:read() end, "res:read: the response is closed")
    end)

    it("aborts the transfer of a response that is collected unread", function()
      async.fetch(base .. "/endless", { stream = true })
      collectgarbage()
      collectgarbage()
      assert.are.equal(0, async._debug.counts().handles)
    end)
  end)
end)

describe("async.fetch with a body function", function()
  setup(start_server)
  teardown(function()
    if server then server:close() end
  end)
  after_each(function()
    collectgarbage()
    assert_clean()
  end)

  -- A body function that yields the given chunks, sleeping before each.
  local function chunks_of(list, pause)
    local i = 0
    return function()
      i = i + 1
      if list[i] == nil then return nil end
      if pause then async.sleep(pause) end
      return list[i]
    end
  end

  it("sends the chunks in order, chunked, even when the function suspends", function()
    local list = {}
    for i = 1, 20 do list[i] = string.rep(string.char(64 + i), i * 100) end
    local echo = async.fetch(base .. "/echo",
      { method = "PUT", body = chunks_of(list, 0.01) }):json()
    assert.are.equal("PUT", echo.method)
    assert.are.equal(table.concat(list), echo.body)
    assert.are.equal(21000, echo.body_length)
    assert.is_true(echo.chunked)
    assert.is_nil(echo.headers.expect)
  end)

  it("skips empty chunks, and sends an empty body (no zero offset on a NULL buffer)", function()
    local echo = async.fetch(base .. "/echo",
      { method = "PUT", body = chunks_of { "", "a", "", "", "b", "" } }):json()
    assert.are.equal("ab", echo.body)
    echo = async.fetch(base .. "/echo", { method = "POST", body = chunks_of { "", "" } }):json()
    assert.are.equal("", echo.body)
    assert.are.equal(0, echo.body_length)
    echo = async.fetch(base .. "/echo", { method = "POST", body = "" }):json()
    assert.are.equal("", echo.body)
  end)

  it("sends a large body", function()
    local block, n = string.rep("x", 65536), 0
    local echo = async.fetch(base .. "/echo", { method = "POST", body = function()
      n = n + 1
      if n <= 64 then return block end
    end }):json()
    assert.are.equal(64 * 65536, echo.body_length)
  end)

  it("sends a Content-Length instead of chunks when one is given", function()
    local echo = async.fetch(base .. "/echo", {
      method = "POST", headers = { ["Content-Length"] = 10 }, body = chunks_of { "01234", "56789" },
    }):json()
    assert.are.equal("0123456789", echo.body)
    assert.is_false(echo.chunked)
    assert.are.equal("10", echo.headers["content-length"])
  end)

  it("sends an empty body", function()
    local echo = async.fetch(base .. "/echo", { method = "POST", body = function() end }):json()
    assert.are.equal(0, echo.body_length)
  end)

  it("raises what the function raised, and ends the transfer", function()
    local n = 0
    local ok, err = pcall(async.fetch, base .. "/echo", { method = "POST", body = function()
      n = n + 1
      if n == 3 then error("no more data", 0) end
      return "x"
    end })
    assert.is_false(ok)
    assert.are.equal("no more data", err)
  end)

  it("refuses a chunk that is not a string", function()
    local err = fetch_error(base .. "/echo", { method = "POST", body = function() return 1 end })
    assert.are.equal("invalid", err.kind)
    assert.are.equal("body", err.option)
  end)

  it("stops the function when the fetching task is cancelled", function()
    local calls = 0
    local task = async.spawn(async.fetch, base .. "/echo", { method = "POST", body = function()
      calls = calls + 1
      async.sleep(10)
      return "x"
    end })
    async.sleep(0.1)
    task:cancel()
    assert.is_false(pcall(task.await, task))
    assert.are.equal(1, calls)
  end)

  it("works with a streamed response", function()
    local res = async.fetch(base .. "/echo", {
      method = "POST", stream = true, body = chunks_of({ "a", "b", "c" }, 0.01),
    })
    assert.are.equal("abc", require("cjson").decode((read_all(res))).body)
  end)
end)

describe("async.http.client limits", function()
  setup(start_server)
  teardown(function()
    if server then server:close() end
  end)
  after_each(function()
    collectgarbage()
    assert_clean()
  end)

  -- Runs n GETs of path through client side by side; returns the seconds they took.
  local function timed_batch(client, n, path)
    local fns = {}
    for i = 1, n do fns[i] = function() return client:get(path).status end end
    local t0 = async.now()
    local results = async.gather(table.unpack(fns))
    for i = 1, n do assert.are.equal(200, results[i]) end
    return async.now() - t0
  end

  it("run at most max_per_host transfers to one host at a time", function()
    local client = async.http.client { base_url = base, max_per_host = 2 }
    local took = timed_batch(client, 6, "/delay?s=0.3")
    assert.is_true(took >= 0.85 and took < 1.5, "took " .. took)
    local free = async.http.client { base_url = base }
    took = timed_batch(free, 6, "/delay?s=0.3")
    assert.is_true(took < 0.6, "took " .. took)
  end)

  it("run at most max_connections transfers in all", function()
    local client = async.http.client { max_connections = 3 }
    local fns = {}
    for i = 1, 6 do
      -- Two host names for the same server: max_connections counts them together.
      local host = i % 2 == 0 and base or base:gsub("127.0.0.1", "localhost")
      fns[i] = function() return client:get(host .. "/delay?s=0.3").status end
    end
    local t0 = async.now()
    async.gather(table.unpack(fns))
    local took = async.now() - t0
    assert.is_true(took >= 0.55 and took < 1.2, "took " .. took)
  end)

  it("let waiters in first come, first served", function()
    local client = async.http.client { base_url = base, max_per_host = 1 }
    local order, tasks = {}, {}
    for i = 1, 4 do
      tasks[i] = async.spawn(function()
        client:get("/delay?s=0.05")
        order[#order + 1] = i
      end)
    end
    for i = 1, 4 do tasks[i]:await() end
    assert.are.same({ 1, 2, 3, 4 }, order)
  end)

  it("lose no permit when a waiter is cancelled", function()
    local client = async.http.client { base_url = base, max_per_host = 1 }
    local first = async.spawn(client.get, client, "/delay?s=0.2")
    local waiter = async.spawn(client.get, client, "/delay?s=0.2")
    async.sleep(0.05)
    waiter:cancel()
    assert.is_false(pcall(waiter.await, waiter))
    local t0 = async.now()
    assert.are.equal(200, client:get("/get").status) -- after first, not after the cancelled one
    assert.is_true(async.now() - t0 < 0.3)
    first:await()
    -- Both permits back: two more in a row without waiting on anything.
    t0 = async.now()
    client:get("/get")
    client:get("/get")
    assert.is_true(async.now() - t0 < 0.2)
  end)

  it("keep a permit while a streamed body is read, until it ends or is closed", function()
    local client = async.http.client { base_url = base, max_per_host = 1 }
    local res = client:get("/endless", { stream = true })
    local other = async.spawn(client.get, client, "/get")
    async.sleep(0.1)
    assert.is_false(other:done())
    res:close()
    assert.are.equal(200, other:await().status)
    res = client:get("/bytes/1000", { stream = true })
    assert.are.equal(1000, #read_all(res))
    assert.are.equal(200, client:get("/get").status)
  end)

  it("check their limits when made", function()
    for _, opts in ipairs {
      { max_per_host = 0 }, { max_connections = 1.5 }, { max_per_host = "2" },
    } do
      local ok, err = pcall(async.http.client, opts)
      assert.is_false(ok)
      assert.are.equal("invalid", err.kind)
      assert.is_string(err.option)
    end
  end)
end)
