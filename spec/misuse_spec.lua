package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

-- Every misuse raises a message naming the call and the argument.
local function message_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

local function has(expected, actual)
  assert.matches(expected, actual, 1, true)
end

describe("misuse of async.sleep", function()
  after_each(assert_clean)

  it("rejects a negative number of seconds", function()
    has("async.sleep: bad argument #1", message_of(async.sleep, -1))
  end)

  it("rejects NaN", function()
    has("async.sleep: bad argument #1", message_of(async.sleep, 0 / 0))
  end)

  it("rejects a non-number, even a numeric string", function()
    has("async.sleep: bad argument #1", message_of(async.sleep, "1"))
    has("async.sleep: bad argument #1", message_of(async.sleep, {}))
  end)

  it("rejects a missing argument", function()
    has("async.sleep: bad argument #1", message_of(async.sleep))
  end)
end)

describe("misuse of async.spawn", function()
  after_each(assert_clean)

  it("spawn(nil) names the call, the argument and the type", function()
    assert.are.equal("async.spawn: bad argument #1 'fn' (function expected, got nil)",
      message_of(async.spawn, nil))
  end)

  it("rejects a non-callable value", function()
    has("async.spawn: bad argument #1 'fn' (function expected, got number)", message_of(async.spawn, 3))
    has("async.spawn: bad argument #1", message_of(async.spawn, {}))
  end)
end)

describe("misuse of await", function()
  after_each(assert_clean)

  it("async.await of a non-awaitable names the call and the argument", function()
    has("async.await: bad argument #1", message_of(async.await, 42))
    has("async.await: bad argument #1", message_of(async.await, {}))
    has("async.await: bad argument #1", message_of(async.await, nil))
  end)

  it("a task awaiting itself raises instead of hanging", function()
    local t
    t = async.spawn(function() return t:await() end)
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    has("cannot await itself", tostring(err))
  end)

  it("a task awaiting itself can catch the error and go on", function()
    local t
    t = async.spawn(function()
      local ok, err = pcall(t.await, t)
      return ok, tostring(err)
    end)
    local ok, msg = t:await()
    assert.is_false(ok)
    has("cannot await itself", msg)
  end)
end)

describe("suspending outside a task", function()
  after_each(assert_clean)

  local function in_wrap(fn, ...)
    return coroutine.wrap(function(...) return pcall(fn, ...) end)(...)
  end

  it("async.sleep from a coroutine.wrap inside a task raises 'must be called inside a task'", function()
    local ok, err = in_wrap(async.sleep, 0)
    assert.is_false(ok)
    has("async.sleep must be called inside a task", tostring(err))
  end)

  it("task:await from a coroutine.wrap raises a clear error", function()
    local t = async.spawn(function() return 1 end)
    local ok, err = in_wrap(t.await, t)
    assert.is_false(ok)
    has("must be called inside a task", tostring(err))
    t:await()
  end)

  it("future:await from a coroutine.wrap raises a clear error", function()
    local f = async.future()
    local ok, err = in_wrap(f.await, f)
    assert.is_false(ok)
    has("must be called inside a task", tostring(err))
  end)

  it("async.gather and async.timeout from a coroutine.wrap raise clear errors", function()
    local ok, err = in_wrap(async.gather, function() end)
    assert.is_false(ok)
    has("async.gather must be called inside a task", tostring(err))
    ok, err = in_wrap(async.timeout, 1, async.sleep, 0)
    assert.is_false(ok)
    has("async.timeout must be called inside a task", tostring(err))
  end)

  it("leaves the coroutine usable and the task unaffected", function()
    local co = coroutine.wrap(function()
      local ok = pcall(async.sleep, 0)
      coroutine.yield(ok)
      return "resumed"
    end)
    assert.is_false(co())
    assert.are.equal("resumed", co())
    async.sleep(0.01)
  end)
end)

describe("suspending where Lua cannot yield", function()
  after_each(assert_clean)

  it("inside a table.sort comparator raises a catchable error", function()
    local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b) async.sleep(0); return a < b end)
    assert.is_false(ok)
    has("async.sleep", tostring(err))
  end)

  it("inside a string.gsub callback raises a catchable error", function()
    local ok, err = pcall(string.gsub, "abc", ".", function(c) async.sleep(0); return c end)
    assert.is_false(ok)
    has("async.sleep", tostring(err))
  end)

  it("leaves the task and other tasks unaffected", function()
    local ticks = 0
    local other = async.spawn(function()
      for _ = 1, 5 do async.sleep(0.01); ticks = ticks + 1 end
      return "other done"
    end)
    local t = async.spawn(function()
      local ok1 = pcall(table.sort, { 2, 1 }, function(a, b) async.sleep(0); return a < b end)
      local ok2 = pcall(string.gsub, "ab", ".", function() async.sleep(0) end)
      async.sleep(0.02) -- the task can still suspend normally afterwards
      return ok1, ok2, "still alive"
    end)
    local ok1, ok2, alive = t:await()
    assert.is_false(ok1)
    assert.is_false(ok2)
    assert.are.equal("still alive", alive)
    assert.are.equal("other done", other:await())
    assert.are.equal(5, ticks)
  end)

  it("an uncaught one fails only that task, with the error", function()
    local t = async.spawn(function()
      table.sort({ 2, 1 }, function(a, b) async.sleep(0); return a < b end)
    end)
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    has("async.sleep", tostring(err))
    assert.are.equal("failed", t:status())
  end)
end)

describe("misuse of futures", function()
  after_each(assert_clean)

  it("setting a future twice raises a clear error", function()
    local f = async.future()
    f:set(1)
    assert.are.equal("future:set: the future is already settled", (message_of(f.set, f, 2):gsub("^.-:%d+: ", "")))
  end)

  it("failing a settled future raises a clear error", function()
    local f = async.future()
    f:fail("x")
    has("already settled", message_of(f.fail, f, "y"))
    pcall(f.await, f)
  end)
end)

describe("misuse of the other calls", function()
  after_each(assert_clean)

  it("result() before the end names the call and the status", function()
    local t = async.spawn(function() end)
    has("task:result: the task has not finished (status: pending)", message_of(t.result, t))
    t:await()
  end)

  it("async.timeout with a non-function names the call and the argument", function()
    has("async.timeout: bad argument #2", message_of(async.timeout, 1, "nope"))
  end)

  it("async.timeout with bad seconds names the call and argument #1", function()
    has("async.timeout: bad argument #1", message_of(async.timeout, -1, function() end))
    has("async.timeout: bad argument #1", message_of(async.timeout, 0 / 0, function() end))
    has("async.timeout: bad argument #1", message_of(async.timeout, "1", function() end))
  end)

  it("async.wait_for with bad seconds names the call and argument #2", function()
    local t = async.spawn(function() end)
    has("async.wait_for: bad argument #2", message_of(async.wait_for, t, -1))
    has("async.wait_for: bad argument #2", message_of(async.wait_for, t, "1"))
    t:await()
  end)

  it("messages from async.timeout and async.wait_for do not point into lasync's own code", function()
    local t = async.spawn(function() end)
    for _, msg in ipairs({ message_of(async.timeout, -1, function() end),
                           message_of(async.wait_for, t, -1),
                           coroutine.wrap(function() return select(2, pcall(async.timeout, 1, async.sleep, 0)) end)() }) do
      assert.does_not.match("[lasync]", msg, 1, true)
    end
    t:await()
  end)

  it("async.gather with something that is neither task nor function names the call and argument", function()
    has("async.gather: bad argument #2 (task or function expected, got number)",
      message_of(async.gather, function() end, 42))
    has("async.gather_settled: bad argument #1", message_of(async.gather_settled, "x"))
  end)

  it("async.wait_for with a non-task names the call and the argument", function()
    has("async.wait_for: bad argument #1 'task' (task or function expected, got string)", message_of(async.wait_for, "x", 1))
  end)

  it("async.run with a non-function names the call and the argument", function()
    has("async.run: bad argument #1 'fn' (function expected, got number)", message_of(async.run, 5))
  end)

  -- A C check reached through a lua/ wrapper is positioned at the user's line, never at an
  -- internal "[lasync]:NNN:" (lasync__misuse in bindings/core/errors.c).
  it("names the user's line, not lasync's, for checks in C behind a Lua wrapper", function()
    local msg = message_of(function() async.fs.open("/tmp/x", "r", {}) end)
    assert.is_nil(msg:find("[lasync]", 1, true), msg)
    assert.truthy(msg:find("^spec/misuse_spec%.lua:%d+: async%.fs%.open: bad argument #3 'perm'"),
      msg)
  end)
end)

describe("misuse found by a hostile pass", function()
  after_each(assert_clean)

  it("refuses a host or name with a NUL byte, which C would cut there", function()
    has("async.net.connect: bad argument #1 'host' (string without NUL expected",
      message_of(async.net.connect, "127.0.0.1\0evil", 80))
    has("async.net.listen: bad option 'host' (string without NUL expected",
      message_of(async.net.listen, { host = "127.0.0.1\0x" }, print))
    has("async.http.serve: bad option 'host' (string without NUL expected",
      message_of(async.http.serve, print, { host = "127.0.0.1\0x" }))
    has("async.net.resolve: bad argument #1 'name' (string without NUL expected",
      message_of(async.net.resolve, "local\0host"))
  end)

  it("refuses a misspelt stream limit", function()
    local srv = async.net.listen({ port = 0 }, function(c) c:close() end)
    local c = async.net.connect("127.0.0.1", srv.port)
    has("stream:set_limits: bad option 'foo' (unknown option)", message_of(c.set_limits, c, { foo = 1 }))
    c:close()
    srv:close()
  end)

  it("checks async.error's arguments, and keeps kind and message from fields", function()
    has("async.error: bad argument #1 'kind' (string expected, got nil)", message_of(async.error, nil, "x"))
    has("async.error: bad argument #3 'fields' (table expected, got number)",
      message_of(async.error, "k", "m", 5))
    local e = async.error("k", "m", { kind = "cancelled", message = "other", extra = 1 })
    assert.are.same({ "k", "m", 1 }, { e.kind, e.message, e.extra })
    assert.is_false(async.is_cancelled(e))
    e.kind = {} -- its __tostring still shows it
    assert.are.equal("error: m", tostring(e))
  end)

  it("names the argument of task:cancel, and refuses wait_for on the calling task", function()
    local t = async.spawn(async.sleep, 1)
    has("task:cancel: bad argument #1 'message' (string expected, got table)",
      message_of(t.cancel, t, {}))
    t:cancel()
    pcall(t.await, t)
    has("async.wait_for: a task cannot wait for itself", message_of(async.wait_for, async.current(), 1))
  end)

  it("blames async.map's items, not 'concurrency', for a length that is not an integer", function()
    has("async.map: bad argument #2 'items' (its length is 1000000000.0, not an integer)",
      message_of(async.map, print, setmetatable({}, { __len = function() return 1e9 end })))
  end)
end)
