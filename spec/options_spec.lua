package.path = "spec/support/?.lua;" .. package.path
-- A misspelt option is a misuse at the call, on every public function taking an options table
-- (issue 14: "unknown or malformed options are misuse errors at the call"), never silently the
-- default.
local async = require "lasync"
local assert_clean = require "clean"

local function refuses(fname, key, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, fname .. " accepted '" .. key .. "'")
  assert.is_string(err)
  assert.truthy(err:find(fname .. ": bad option '" .. key .. "' (unknown option)", 1, true), err)
  -- reported at the caller's line, not inside lasync
  assert.is_nil(err:find("[lasync]", 1, true), err)
end

describe("unknown options", function()
  after_each(assert_clean)

  it("are refused by async.net", function()
    async.run(function()
      refuses("async.net.connect", "timeot", function()
        return async.net.connect("127.0.0.1", 9, { timeot = 1 })
      end)
      refuses("async.net.listen", "backlg", function()
        return async.net.listen({ port = 0, backlg = 1 }, function() end)
      end)
      local srv = async.net.listen({ port = 0 }, function() end)
      refuses("server:close", "grce", function() return srv:close({ grce = 1 }) end)
      srv:close()
    end)
  end)

  it("are refused by async.process", function()
    async.run(function()
      refuses("async.process.run", "cwdd", function()
        return async.process.run({ "/bin/true" }, { cwdd = "/" })
      end)
      refuses("async.process.spawn", "timeout", function() -- run's option, not spawn's
        return async.process.spawn({ "/bin/true" }, { timeout = 1 })
      end)
      refuses("async.process.run", "cwdd", function()
        return async.process.shell("true", { cwdd = "/" })
      end)
    end)
  end)

  it("are refused by async.fs", function()
    async.run(function()
      refuses("async.fs.read_file", "max_sise", function()
        return async.fs.read_file("/etc/hostname", { max_sise = 1 })
      end)
      refuses("async.fs.write_file", "atomc", function()
        return async.fs.write_file("/nonexistent/x", "", { atomc = true })
      end)
      refuses("async.fs.mkdir", "parent", function()
        return async.fs.mkdir("/nonexistent/x", { parent = true })
      end)
      refuses("async.fs.rm", "recursiv", function()
        return async.fs.rm("/nonexistent/x", { recursiv = true })
      end)
    end)
  end)

  it("are refused by async.thread.pool", function()
    refuses("async.thread.pool", "sizee", function() return async.thread.pool({ sizee = 2 }) end)
    local pool <close> = async.thread.pool({ size = 1 })
    assert.is_not_nil(pool)
  end)

  it("still accept every documented option", function()
    async.run(function()
      local srv = async.net.listen({ host = "127.0.0.1", port = 0, backlog = 8,
        max_connections = 2, on_error = function() end }, function() end)
      local c = async.net.connect("127.0.0.1", srv.port, { timeout = 5 })
      c:close()
      srv:close({ grace = 0.1 })
      local r = async.process.run({ "/bin/echo", "hi" }, { cwd = "/", env = { X = "1" },
        timeout = 5, kill_grace = 1, max_output = 1024, stdout = "capture" })
      assert.are.equal("hi\n", r.stdout)
    end)
  end)
end)

-- Issue 14: a key that is not a string was named by its type in C ("bad option 'number'", as if
-- an option were called "number") and by tostring in Lua ("bad option '1'"): one wording now.
describe("an options key that is not a string", function()
  after_each(assert_clean)

  local function refuses_key(fname, fn)
    local ok, err = pcall(fn)
    assert.is_false(ok, fname .. " accepted a number key")
    local msg = type(err) == "table" and err.message or err
    local want = fname .. ": bad option key (string expected, got number)"
    assert.truthy(tostring(msg):find(want, 1, true), tostring(msg))
  end

  it("is named the same way by the C checks and the Lua ones", function()
    async.run(function()
      refuses_key("async.spawn", function() return async.spawn({ "x" }, function() end) end) -- C
      refuses_key("async.thread.pool", function() return async.thread.pool({ 4 }) end)     -- C
      refuses_key("async.net.connect", function()
        return async.net.connect("127.0.0.1", 9, { 1 })
      end)
      refuses_key("async.retry", function() return async.retry(function() end, { 3 }) end)
      refuses_key("async.fs.read_file", function()
        return async.fs.read_file("/etc/hostname", { 1 })
      end)
      refuses_key("async.http.serve", function()
        return async.http.serve(function() end, { 8080 })
      end)
      refuses_key("async.fetch", function()
        return async.fetch("http://127.0.0.1:9/", { "GET" })
      end)
    end)
  end)
end)

-- The hostile pass over the I/O calls (issue 14's remainder): numbers at the edges.
describe("numbers at the edges of the I/O options", function()
  after_each(assert_clean)

  it("async.http.serve refuses a backlog that is NaN, fractional, negative or huge", function()
    for _, v in ipairs({ 0 / 0, 0.5, -1, math.huge, 2 ^ 63 }) do
      local ok, err = pcall(async.http.serve, function() end, { port = 0, backlog = v })
      assert.is_false(ok)
      -- before: "bad argument #3 to 'listen' (number has no integer representation)"
      assert.matches("async.http.serve: bad option 'backlog' (integer >= 0 expected", err, 1, true)
    end
  end)

  it("async.http.serve refuses a count or size limit that is fractional, NaN or < 0", function()
    for _, k in ipairs({ "max_connections", "max_header_bytes", "max_headers", "max_body" }) do
      for _, v in ipairs({ 0.5, 0 / 0, -1, -math.huge }) do
        local ok, err = pcall(async.http.serve, function() end, { port = 0, [k] = v })
        assert.is_false(ok)
        -- before: 0.5 became 0 in C, and every request got 431 (max_header_bytes)
        assert.matches("async.http.serve: bad option '" .. k .. "' (whole number >= 0", err, 1,
          true)
      end
    end
  end)

  it("async.http.serve takes huge limits and timeouts as none (were undefined casts)", function()
    async.run(function()
      for _, v in ipairs({ math.huge, 1e300, 2 ^ 62 }) do
        local srv <close> = async.http.serve(function() return "ok" end, { port = 0,
          max_body = v, max_header_bytes = v, max_headers = v, max_connections = v,
          header_timeout = v, keepalive_timeout = v, request_timeout = v })
        local res = async.fetch("http://127.0.0.1:" .. srv.port .. "/", { method = "POST",
          body = ("x"):rep(100000) })
        assert.are.equal(200, res.status)
        assert.are.equal("ok", res:text())
      end
    end)
  end)

  it("async.process.run's misuse names the caller's line, never lasync's own", function()
    async.run(function()
      for _, opts in ipairs({ { timeout = 0 / 0 }, { cwd = 1 }, { kill_grace = -1 },
        { max_output = 0.5 }, { env = { X = {} } } }) do
        local ok, err = pcall(function() return async.process.run({ "true" }, opts) end)
        assert.is_false(ok)
        assert.matches("options_spec.lua:%d+: async.process.run: bad option", err)
        assert.is_nil(err:find("[lasync]", 1, true), err)
      end
    end)
  end)
end)
