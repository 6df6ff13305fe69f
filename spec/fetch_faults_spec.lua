-- Faults around fetch that need volume or timing: descriptors reused under heavy keep-alive
-- churn, bodies that drip, cancellation at each stage of a transfer. Against
-- spec/support/server.py on 127.0.0.1.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local server, base, tls_base

describe("fetch under faults", function()
  setup(function()
    server = io.popen("exec python3 spec/support/server.py")
    local http, https = (server:read("l") or ""):match("^READY http=(%d+) https=(%d+)")
    assert(http, "the test server did not start")
    base, tls_base = "http://127.0.0.1:" .. http, "https://127.0.0.1:" .. https
  end)
  teardown(function() if server then server:close() end end)
  after_each(assert_clean)

  it("survives heavy keep-alive churn: sockets closed and their descriptors reused", function()
    -- Half the requests ask the server to close the connection, so curl keeps closing sockets
    -- and opening new ones that get the same descriptor numbers while others are polled.
    local n, ok = 600, 0
    local next_i = 0
    local function worker()
      while next_i < n do
        next_i = next_i + 1
        local close = next_i % 2 == 0
        local res = async.fetch(base .. "/bytes/64",
          { headers = close and { Connection = "close" } or nil })
        if res.status == 200 and #res.body == 64 then ok = ok + 1 end
      end
    end
    local workers = {}
    for i = 1, 30 do workers[i] = worker end
    async.gather(workers)
    assert.are.equal(n, ok)
    assert.are.equal(0, async._debug.counts().handles)
  end)

  it("gives a body that drips one byte at a time exactly as a normal one", function()
    local dripped = async.fetch(base .. "/drip?n=40&delay=0.005")
    assert.are.equal(200, dripped.status)
    assert.are.equal(40, #dripped.body)
  end)

  it("can cancel a transfer while it connects, during the TLS handshake and mid-body", function()
    -- During connect and handshake: the TLS endpoint is slow to be served under load; cancel
    -- right after the request has started.
    for _, url in ipairs({ tls_base .. "/get", base .. "/slow-headers?s=2",
                           base .. "/drip?n=50&delay=0.05" }) do
      local t = async.spawn(async.fetch, url, { verify_tls = false })
      async.sleep(url:find("drip") and 0.2 or 0)
      t:cancel()
      local ok, err = pcall(t.await, t)
      assert.is_false(ok)
      assert.is_true(async.is_cancelled(err), tostring(err))
    end
    -- The runtime is intact: a fetch after all that works.
    assert.are.equal(200, async.fetch(base .. "/get").status)
  end)

  it("keeps other tasks running while a transfer fails", function()
    local ticks = 0
    local ticker = async.spawn(function()
      for _ = 1, 10 do async.sleep(0.01); ticks = ticks + 1 end
    end)
    local ok, err = pcall(async.fetch, base .. "/cut?n=1000&send=100")
    assert.is_false(ok)
    assert.are.equal("protocol", err.kind)
    ticker:await()
    assert.are.equal(10, ticks)
  end)

  it("reports a malformed Location from the server as a protocol error, not invalid", function()
    local ok, err = pcall(async.fetch, base .. "/redirect-to?url=http%3A%2F%2F%5Bbad")
    assert.is_false(ok)
    assert.are.equal("protocol", err.kind)
  end)

  it("keeps its kept-alive connections when many transfers finish at once", function()
    -- curl sizes its connection cache by the transfers it holds: had the finished ones left the
    -- multi before their tasks ran, a burst finishing together would have closed connections
    -- under the next fetches, which would connect again. The local server counts them.
    local ports, nports = {}, 0
    local srv = async.http.serve(function(req)
      if not ports[req.remote.port] then ports[req.remote.port], nports = true, nports + 1 end
      if req.path == "/slow" then async.sleep(0.2) end -- all 20 answered at about once
      return "ok"
    end, { host = "127.0.0.1", port = 0 })
    local url = "http://127.0.0.1:" .. srv.port
    local function round(path)
      local jobs = {}
      for i = 1, 20 do jobs[i] = function() return async.fetch(url .. path).body end end
      for _, body in ipairs(async.gather(jobs)) do assert.are.equal("ok", body) end
    end
    round("/slow")
    local first = nports
    assert.is_true(first <= 20)
    round("/slow")
    round("/fast")
    assert.are.equal(first, nports)
    srv:close()
  end)

  it("opens its connections close-on-exec: a process the script starts inherits none", function()
    -- The child counts the descriptors it inherited that are TCP sockets (their inode is in
    -- /proc/net/tcp); its own stdio are Unix sockets and pipes.
    local count_tcp = table.concat({
      [[n=0; for f in /proc/$$/fd/*; do]],
      [[i=$(readlink "$f" | sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p');]],
      [[[ -n "$i" ] && grep -q " $i " /proc/net/tcp /proc/net/tcp6 2>/dev/null && n=$((n+1));]],
      [[done; echo $n]] }, " ")
    local jobs = {}
    for i = 1, 10 do jobs[i] = function() return async.fetch(base .. "/get").status end end
    async.gather(jobs) -- ten kept-alive connections stay open in curl's cache
    local r = async.process.run({ "sh", "-c", count_tcp })
    assert.are.equal(0, tonumber(r.stdout))
  end)

  it("takes an endless timeout as no limit", function()
    assert.are.equal(200, async.fetch(base .. "/get", { timeout = math.huge,
      connect_timeout = 1e300 }).status)
  end)
end)
