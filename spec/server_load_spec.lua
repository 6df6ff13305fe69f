-- async.http.serve holding 10,000 idle keep-alive connections at once, with the memory each
-- costs the server measured (target: at most 4 KiB), and every one of them freed afterwards.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local function rss_kib()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end

local function wait_file(path, seconds)
  local deadline = async.now() + seconds
  while async.now() < deadline do
    local f = io.open(path)
    if f then local s = f:read("a"); f:close(); return s end
    async.sleep(0.05)
  end
end

describe("async.http.serve under load", function()
  after_each(assert_clean)

  it("holds 10,000 idle keep-alive connections in a few KiB each", function()
    local N = tonumber(os.getenv("LASYNC_IDLE_CONNECTIONS") or "10000")
    local srv <close> = async.http.serve(function() return "ok" end,
      { keepalive_timeout = 120, header_timeout = 120, backlog = 4096 })
    collectgarbage(); collectgarbage()
    local before = rss_kib()
    local status = os.tmpname()
    os.remove(status)
    os.execute(("python3 spec/support/idle_clients.py %d %d %s &"):format(srv.port, N, status))
    local ready = wait_file(status, 120)
    assert.is_truthy(ready, "the clients did not connect in time")
    assert.are.equal("READY " .. N .. "\n", ready)
    async.sleep(0.2)
    assert.are.equal(N, srv.listener:connections())
    collectgarbage(); collectgarbage()
    local per_conn = (rss_kib() - before) * 1024 / N
    io.stderr:write(("\n[server_load] %d idle keep-alive connections: %.0f bytes each (RSS)\n")
      :format(N, per_conn))
    -- Under AddressSanitizer (make sanitize sets ASAN_OPTIONS) every allocation carries
    -- redzones, so only the uninstrumented build holds the target.
    if not require("spec.support.sanitized") then
      assert.is_true(per_conn <= 4096, ("%.0f bytes per connection"):format(per_conn))
    end
    os.remove(status) -- the clients close now
    local deadline = async.now() + 30
    while srv.listener:connections() > 0 and async.now() < deadline do async.sleep(0.05) end
    assert.are.equal(0, srv.listener:connections())
  end)
end)
