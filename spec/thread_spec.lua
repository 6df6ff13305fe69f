package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local raises = require "raises"
local sub = require "subprocess"

-- Job bodies. Each is a plain function whose only upvalue is _ENV, so it can cross.
local function identity(...) return ... end

local function busy(seconds) -- CPU for `seconds` of process time, then how long it really spun
  local t0 = os.clock()
  while os.clock() - t0 < seconds do end
  return os.clock() - t0
end

local function spin_forever() while true do end end

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

describe("async.to_thread", function()
  after_each(function()
    assert_clean()
    sub.cleanup()
  end)

  it("runs a function on a worker and returns its values", function()
    local function cpu_heavy(n) local s = 0 for i = 0, n - 1 do s = s + i end return s end
    assert.are.equal(49999995000000, async.to_thread(cpu_heavy, 10000000))
    assert.are.same({ 1, 2, 3 }, { async.to_thread(identity, 1, 2, 3) })
    assert.are.equal(0, select("#", async.to_thread(function() end)))
  end)

  it("is also called async.run_in_executor", function()
    assert.are.equal(async.to_thread, async.run_in_executor)
  end)

  it("copies every value type both ways, keeping integer and float subtypes", function()
    local binary = "a\0b\255\1" .. string.rep("x", 1000)
    local values = { n = 9, nil, true, false, 42, 42.0, -0.5, math.maxinteger, binary, "" }
    local back = table.pack(async.to_thread(identity, table.unpack(values, 1, values.n)))
    assert.are.equal(values.n, back.n)
    for i = 1, values.n do assert.are.equal(values[i], back[i]) end
    assert.are.equal("integer", math.type(back[4]))
    assert.are.equal("float", math.type(back[5]))
    -- and what the worker makes comes back the same way
    local t, f, i = async.to_thread(function()
      return { list = { 1, 2, 3 }, nested = { deep = { deeper = "yes" } }, [1.5] = "float key",
        [true] = "bool key" }, 1.0, 1
    end)
    assert.are.same({ 1, 2, 3 }, t.list)
    assert.are.equal("yes", t.nested.deep.deeper)
    assert.are.equal("float key", t[1.5])
    assert.are.equal("bool key", t[true])
    assert.are.equal("float", math.type(f))
    assert.are.equal("integer", math.type(i))
  end)

  it("sends and returns functions whose only upvalue is _ENV", function()
    local function square(x) return x * x end
    local function twice(g, x) return g(g(x)) end
    assert.are.equal(16, async.to_thread(twice, square, 2))
    local made = async.to_thread(function() return function(x) return x + 1 end end)
    assert.are.equal(3, made(2))
  end)

  it("preserves cycles and shared subtables", function()
    local shared = { "shared" }
    local t = { a = shared, b = shared }
    t.self = t
    local same_in_worker, back = async.to_thread(function(x)
      return x.a == x.b and x.self == x, x
    end, t)
    assert.is_true(same_in_worker)
    assert.are.equal(back, back.self)
    assert.are.equal(back.a, back.b)
    assert.are.equal("shared", back.a[1])
  end)

  it("drops metatables", function()
    local t = setmetatable({ 1 }, { __index = function() return "meta" end })
    local back, had_meta = async.to_thread(function(x) return x, getmetatable(x) ~= nil end, t)
    assert.is_false(had_meta)
    assert.is_nil(getmetatable(back))
    assert.is_nil(back.anything)
  end)

  it("refuses a function with upvalues, naming the upvalue", function()
    local cache = {}
    local err = raises(async.to_thread, function() return cache end)
    assert.matches("async.to_thread: bad argument #1 (function has upvalue 'cache'; pass it as an "
      .. "argument)", err, 1, true)
  end)

  it("refuses a C function and a value that is not a function or a name", function()
    assert.matches("bad argument #1 (a C function cannot run in a worker thread",
      raises(async.to_thread, print), 1, true)
    assert.matches("async.to_thread: bad argument #1 'fn' (function or \"module.function\" " ..
      "expected, got number)", raises(async.to_thread, 42), 1, true)
    assert.matches("\"module.function\" expected, got \"nodot\"",
      raises(async.to_thread, "nodot"), 1, true)
  end)

  it("numbers a pool method's function as its second argument, self being the first", function()
    local pool <close> = async.thread.pool({ size = 1 })
    local cache = {}
    assert.matches("pool:map: bad argument #2 'fn' (function or \"module.function\" expected, " ..
      "got number)", raises(pool.map, pool, 42, {}), 1, true)
    assert.matches("pool:run: bad argument #2 (function has upvalue 'cache'",
      raises(pool.run, pool, function() return cache end), 1, true)
    assert.matches("pool:run: bad argument #2 (\"module.function\" expected, got \"nodot\")",
      raises(pool.run, pool, "nodot"), 1, true)
    -- items comes after fn, so it is #3 in the same count (it was #2, as fn now is)
    assert.matches("pool:map: bad argument #3 'items' (table expected, got number)",
      raises(pool.map, pool, function() end, 5), 1, true)
  end)

  it("refuses each value that cannot cross with its path, as an error of kind invalid", function()
    local co = coroutine.create(function() end)
    local task = async.spawn(function() end)
    local cases = {
      { { conn = io.stdout }, "argument #2.conn: userdata cannot be sent to a thread" },
      { { list = { 1, co } }, "argument #2.list[2]: thread cannot be sent to a thread" },
      { { f = print }, "argument #2.f: C function cannot be sent to a thread" },
      { { task }, "argument #2[1]: lasync.Task cannot be sent to a thread" },
      { { [io.stdout] = 1 }, "argument #2 (a key): userdata cannot be sent to a thread" },
      { { ["a key"] = { g = function() return task end } },
        "argument #2[\"a key\"].g: function with upvalue 'task' cannot be sent to a thread" },
    }
    for _, case in ipairs(cases) do
      local err = raises(async.to_thread, identity, case[1])
      assert.are.equal("invalid", err.kind)
      if case[2]:find("lasync.Task", 1, true) then
        assert.matches("argument #2[1]: userdata cannot be sent to a thread", err.message, 1, true)
      else
        assert.are.equal(case[2], err.message)
      end
    end
    local err = raises(async.to_thread, identity, 1, io.stdout)
    assert.are.equal("argument #3: userdata cannot be sent to a thread", err.message)
    task:await()
  end)

  it("refuses results that cannot cross, with their path", function()
    local err = raises(async.to_thread, function() return 1, { out = io.stdout } end)
    assert.are.equal("invalid", err.kind)
    assert.are.equal("result #2.out: userdata cannot be sent to a thread", err.message)
    err = raises(async.to_thread, function() return coroutine.create(print) end)
    assert.are.equal("result #1: thread cannot be sent to a thread", err.message)
  end)

  it("runs \"module.function\" and \"module:function\" jobs, required in the worker", function()
    assert.are.equal("ababab", async.to_thread("string.rep", "ab", 3))
    assert.are.equal("[1,2]", async.to_thread("cjson.encode", { 1, 2 }))
    assert.are.same({ a = 1 }, async.to_thread("cjson:decode", '{"a":1}'))
    local err = raises(async.to_thread, "string.nope")
    assert.are.equal("thread", err.kind)
    assert.matches("'string.nope' is not a function in the worker", err.message, 1, true)
    err = raises(async.to_thread, "no_such_module_here.f")
    assert.matches("module 'no_such_module_here' not found", err.message, 1, true)
  end)

  it("gives each worker the host's package.path and cpath", function()
    local path, cpath = async.to_thread(function() return package.path, package.cpath end)
    assert.are.equal(package.path, path)
    assert.are.equal(package.cpath, cpath)
  end)

  it("raises a job's error as kind thread, with the worker's traceback and the value", function()
    local err = raises(async.to_thread, function() error("boom") end)
    assert.are.equal("thread", err.kind)
    assert.matches("thread_spec.lua:%d+: boom", err.message)
    assert.matches("stack traceback:", err.traceback, 1, true)
    assert.matches("thread_spec.lua", err.traceback, 1, true)
    err = raises(async.to_thread, function() error({ code = 7 }) end)
    assert.are.equal(7, err.value.code)
    -- the worker survives
    assert.are.equal(5, async.to_thread(identity, 5))
  end)

  it("runs every job with fresh globals: nothing leaks into the next", function()
    local pool <close> = async.thread.pool({ size = 1 })
    pool:run(function() leaked = "yes" end) -- luacheck: ignore
    assert.is_nil(pool:run(function() return leaked end)) -- luacheck: ignore
    assert.are.equal("table", pool:run(function() return type(string) end))
  end)

  it("raises a clear error for lasync's suspending calls inside a worker", function()
    local err = raises(async.to_thread, function() require("lasync").sleep(1) end)
    assert.matches("async.sleep is not available in a worker thread", err.message, 1, true)
  end)

  it("keeps the loop responsive during a long job: a ticker keeps ticking #timing", function()
    local ticks = 0
    local ticker = async.spawn(function()
      while true do
        async.sleep(0.01)
        ticks = ticks + 1
      end
    end)
    local spun = async.to_thread(busy, 0.4)
    ticker:cancel()
    assert.is_true(spun >= 0.4)
    assert.is_true(ticks >= 5, "only " .. ticks .. " ticks during a 0.4 s job")
  end)

  it("runs a thousand concurrent jobs", function()
    local tasks = {}
    for i = 1, 1000 do tasks[i] = async.spawn(async.to_thread, function(x) return x * 2 end, i) end
    local results = async.gather(tasks)
    for i = 1, 1000 do assert.are.equal(2 * i, results[i]) end
  end)

  it("stops a running job when its task is cancelled, and only then raises Cancelled", function()
    local marker = tmpname()
    local t = async.spawn(async.to_thread, function(path)
      local _ <close> = setmetatable({}, { __close = function()
        local out = io.open(path, "w")
        out:write("unwound")
        out:close()
      end })
      while true do end
    end, marker)
    async.sleep(0.1)
    local t0 = async.now()
    t:cancel()
    local ok, err = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    assert.is_true(exists(marker), "the job's <close> ran before Cancelled was raised")
    assert.is_true(async.now() - t0 < 1)
    os.remove(marker)
    -- the worker is free again
    assert.are.equal(1, async.to_thread(identity, 1))
  end)

  it("stops a job spinning inside a coroutine of its own", function()
    local err = raises(async.timeout, 0.1, async.to_thread, function()
      local spin = coroutine.wrap(function() while true do end end)
      spin()
    end)
    assert.is_true(async.is_timeout(err))
    err = raises(async.timeout, 0.1, async.to_thread, function()
      local co = coroutine.create(function() while true do end end)
      coroutine.resume(co) -- the job goes on after its coroutine was stopped
      while true do end
    end)
    assert.is_true(async.is_timeout(err))
    -- coroutines still work as usual in a worker
    assert.are.same({ 1, 2, 3 }, async.to_thread(function()
      local out = {}
      for v in coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end) do
        out[#out + 1] = v
      end
      return out
    end))
  end)

  it("stops a job under async.timeout and raises the timeout", function()
    local err = raises(async.timeout, 0.1, async.to_thread, spin_forever)
    assert.is_true(async.is_timeout(err))
  end)

  it("drops a queued job that is cancelled: it never runs #timing", function()
    local pool <close> = async.thread.pool({ size = 1 })
    local first = async.spawn(pool.run, pool, busy, 0.3)
    local second = async.spawn(pool.run, pool, function() package.loaded.ran_second = true end)
    async.sleep(0.05)
    second:cancel()
    assert.is_true(async.is_cancelled(select(2, pcall(second.await, second))))
    first:await()
    assert.is_nil(pool:run(function() return package.loaded.ran_second end))
  end)
end)

describe("async.thread.pool", function()
  after_each(assert_clean)

  it("checks its options", function()
    assert.matches("async.thread.pool: bad option 'size' (integer expected, got string)",
      raises(async.thread.pool, { size = "x" }), 1, true)
    assert.matches("bad option 'size' (must be between 1 and",
      raises(async.thread.pool, { size = 0 }), 1, true)
    assert.matches("async.thread.pool: bad argument #1 'opts' (table expected, got number)",
      raises(async.thread.pool, 5), 1, true)
  end)

  it("maps a function over a list, results in order", function()
    local pool <close> = async.thread.pool({ size = 2 })
    local function cpu_heavy(n) local s = 0 for i = 0, n - 1 do s = s + i end return s end
    assert.are.same({ 0, 1, 3, 6, 10, n = 5 }, pool:map(cpu_heavy, { 1, 2, 3, 4, 5 }))
    assert.are.equal(2, pool:size())
  end)

  it("runs two jobs at once on two threads", function()
    -- A rendezvous through the file system: each job announces itself, then waits for the
    -- other; run one after the other, the first would give up. Timing-free on a loaded machine.
    local function meet(mine, theirs)
      io.open(mine, "w"):close()
      local t0 = os.time()
      while os.time() - t0 < 5 do
        local f = io.open(theirs)
        if f then f:close() return true end
      end
      return false
    end
    local a, b = tmpname(), tmpname()
    local pool <close> = async.thread.pool({ size = 2 })
    local t1 = async.spawn(pool.run, pool, meet, a, b)
    local t2 = async.spawn(pool.run, pool, meet, b, a)
    assert.is_true(t1:await())
    assert.is_true(t2:await())
    os.remove(a)
    os.remove(b)
  end)

  it("suspends run while the queue is full (max_queue) #timing", function()
    local pool <close> = async.thread.pool({ size = 1, max_queue = 1 })
    local tasks = {}
    for i = 1, 3 do tasks[i] = async.spawn(pool.run, pool, function(s, x) local t0 = os.clock()
      while os.clock() - t0 < s do end return x end, 0.15, i) end
    async.sleep(0.05)
    local queued = 0
    for _, info in ipairs(async.tasks()) do
      if info.waiting_on == "thread pool queue" then queued = queued + 1 end
    end
    assert.are.equal(1, queued, "the third run waits for room in the queue")
    assert.are.same({ 1, 2, 3, n = 3 }, async.gather(tasks))
  end)

  it("leaves nothing behind when a task waiting for room in the queue is cancelled #timing",
    function()
    local pool <close> = async.thread.pool({ size = 1, max_queue = 1 })
    local running = async.spawn(pool.run, pool, busy, 0.2)
    local queued = async.spawn(pool.run, pool, identity, "queued")
    local waiting = async.spawn(pool.run, pool, identity, "never")
    async.sleep(0.05)
    waiting:cancel()
    assert.is_true(async.is_cancelled(select(2, pcall(waiting.await, waiting))))
    assert.is_true(running:await() >= 0.2)
    assert.are.equal("queued", queued:await())
  end)

  it("leaves nothing behind when a task in close() is cancelled: the pool closes anyway #timing",
    function()
    local pool = async.thread.pool({ size = 1 })
    local running = async.spawn(pool.run, pool, busy, 0.2)
    async.sleep(0.05)
    local closer = async.spawn(pool.close, pool)
    async.sleep(0.02)
    closer:cancel()
    assert.is_true(async.is_cancelled(select(2, pcall(closer.await, closer))))
    assert.is_true(running:await() >= 0.2)
    assert.are.equal("closed", raises(pool.run, pool, identity, 1).kind)
  end)

  it("close() fails the queued jobs, waits for the running one, joins its threads #timing",
    function()
    local pool = async.thread.pool({ size = 1 })
    local running = async.spawn(pool.run, pool, busy, 0.2)
    local queued = async.spawn(pool.run, pool, identity, "never")
    async.sleep(0.05)
    pool:close()
    assert.is_true(running:done())
    assert.is_true(running:result() >= 0.2)
    local ok, err = pcall(queued.await, queued)
    assert.is_false(ok)
    assert.are.equal("closed", err.kind)
    assert.are.equal("closed", raises(pool.run, pool, identity, 1).kind)
    pool:close() -- again: nothing to do
  end)

  it("caps each worker state's memory: the job fails, the worker survives", function()
    local pool <close> = async.thread.pool({ size = 1, max_memory = 8 })
    local err = raises(pool.run, pool, function()
      local t = {}
      for i = 1, 1e7 do t[i] = string.rep("x", 64) .. i end
      return #t
    end)
    assert.are.equal("thread", err.kind)
    assert.matches("not enough memory", err.message, 1, true)
    assert.are.equal(3, pool:run(function(x) return x + 1 end, 2))
  end)

  it("starts no thread before the first job, and LASYNC_THREADS sets the default size #timing",
    function()
    if not sub.LASYNC then return pending("needs the lasync executable") end
    local out, err, code = sub.run_script([[
      local async = require "lasync"
      local function threads()
        local f = assert(io.open("/proc/self/status"))
        local n = tonumber(f:read("a"):match("Threads:%s*(%d+)"))
        f:close()
        return n
      end
      local before = threads()
      async.sleep(0.01)
      local still = threads()
      local size = async.thread.default:size()
      local jobs = {}
      for i = 1, 3 do
        jobs[i] = async.spawn(async.to_thread, function() -- all three at once
          local t0 = os.time() while os.time() - t0 < 1 do end
        end)
      end
      async.sleep(0.3)
      print(before, still, size, threads() - before)
      async.gather(jobs)
    ]], "", { prefix = "LASYNC_THREADS=3 " })
    assert.are.equal(0, code, err)
    local before, still, size, added = out:match("(%d+)%s+(%d+)%s+(%d+)%s+(%d+)")
    assert.are.equal(before, still, "threads appeared before any job")
    assert.are.equal("3", size)
    -- three workers (a sanitizer's runtime may add a thread of its own meanwhile)
    assert.is_true(tonumber(added) >= 3, added .. " threads added for three jobs")
  end)

  it("stops running jobs and joins its threads when the host is interrupted", function()
    if not sub.LASYNC then return pending("needs the lasync executable") end
    local script = sub.tmpfile([[
      local async = require "lasync"
      async.spawn(async.to_thread, function() while true do end end)
      local pool = async.thread.pool({ size = 1 })
      async.spawn(pool.run, pool, function() while true do end end)
      async.sleep(0.2)
      print("running")
      io.stdout:flush()
    ]])
    local cmd = "timeout 20 " .. sub.q(sub.LASYNC) .. " " .. sub.q(script) ..
        " > /dev/null 2>&1 & pid=$!; sleep 1; kill -INT $pid; wait $pid; echo status=$?"
    local p = assert(io.popen("sh -c " .. sub.q(cmd)))
    local out = p:read("a")
    p:close()
    assert.is_nil(out:find("status=124", 1, true), "the host hung on its worker threads")
    assert.matches("status=%d+", out)
  end)
end)

describe("async.thread.pool's numeric options", function()
  after_each(assert_clean)

  it("refuses NaN, infinities and numbers past any int without converting them", function()
    -- Converting NaN or 1e300 to an integer is undefined behaviour in C (UBSan aborts on it).
    for _, v in ipairs { 0 / 0, math.huge, -math.huge, 1e300, 2.0 ^ 63, math.maxinteger, 2000 } do
      local err = raises(async.thread.pool, { size = v })
      assert.matches("async.thread.pool: bad option 'size'", tostring(err), 1, true)
    end
    assert.matches("got 9223372036854775807",
      tostring(raises(async.thread.pool, { max_queue = math.maxinteger })), 1, true)
    assert.matches("integer expected", tostring(raises(async.thread.pool, { size = 2.5 })), 1, true)
    local pool = async.thread.pool { size = 2.0 }
    pool:close()
  end)
end)
