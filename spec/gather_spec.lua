package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local function sleeper(s, v) return function() async.sleep(s); return v end end

describe("async.gather", function()
  after_each(assert_clean)

  it("runs functions concurrently and returns their first values in argument order", function()
    local t0 = async.now()
    local r = async.gather(sleeper(0.2, "a"), sleeper(0.1, "b"), sleeper(0.15, "c"))
    local elapsed = async.now() - t0
    assert.are.same({ "a", "b", "c", n = 3 }, r)
    assert.is_true(elapsed >= 0.2)
    assert.is_true(elapsed < 0.45, "gathered sleeps took " .. elapsed .. " s")
  end)

  it("takes three 0.2 s sleeps in well under their sum", function()
    local t0 = async.now()
    async.gather(sleeper(0.2), sleeper(0.2), sleeper(0.2))
    assert.is_true(async.now() - t0 < 0.45)
  end)

  it("keeps only each child's first return value", function()
    local r = async.gather(function() return 1, 2 end, function() return 3, 4 end)
    assert.are.same({ 1, 3, n = 2 }, r)
  end)

  it("sets n, so nil results keep their place", function()
    local r = async.gather(function() return nil end, function() return "x" end, function() end)
    assert.are.equal(3, r.n)
    assert.is_nil(r[1])
    assert.are.equal("x", r[2])
    assert.is_nil(r[3])
  end)

  it("accepts tasks", function()
    local a = async.spawn(sleeper(0.02, "A"))
    local b = async.spawn(sleeper(0.01, "B"))
    assert.are.same({ "A", "B", n = 2 }, async.gather(a, b))
  end)

  it("accepts a mix of tasks and functions", function()
    local a = async.spawn(sleeper(0.01, 1))
    assert.are.same({ 1, 2, n = 2 }, async.gather(a, sleeper(0.01, 2)))
  end)

  it("accepts a single array of tasks or functions", function()
    local list = {}
    for i = 1, 5 do list[i] = sleeper(0.01 * (6 - i), i * 10) end
    list[3] = async.spawn(sleeper(0.01, 30))
    assert.are.same({ 10, 20, 30, 40, 50, n = 5 }, async.gather(list))
  end)

  it("takes a list whose tasks come before its functions, settled or not", function()
    -- A list of tasks is linked as it is read; a function after some tasks makes it start
    -- again the general way, which must not find those tasks linked twice.
    local done = async.spawn(function() return "done" end)
    done:await()
    local list = { async.spawn(sleeper(0.02, 1)), done, async.spawn(sleeper(0.01, 3)), sleeper(0, 4) }
    assert.are.same({ 1, "done", 3, 4, n = 4 }, async.gather(list))
  end)

  it("waits on none of a list's tasks when a later element is bad", function()
    local a = async.spawn(sleeper(0.02, "a"))
    local b = async.spawn(sleeper(0.01, "b"))
    assert.matches("bad argument #3", select(2, pcall(async.gather, { a, b, 42 })), 1, true)
    assert.matches("cannot gather itself", select(2, pcall(async.gather, { a, b, async.current() })),
      1, true)
    -- The failed gathers' groups are garbage now: a link left in a or b would be used once
    -- they settle, after the collector freed it.
    collectgarbage()
    collectgarbage()
    assert.are.same({ "a", "b", n = 2 }, async.gather({ a, b }))
  end)

  it("accepts tasks that have already finished", function()
    local t = async.spawn(function() return "early" end)
    t:await()
    assert.are.same({ "early", "late", n = 2 }, async.gather(t, sleeper(0.01, "late")))
  end)

  it("returns an empty array at once when given nothing", function()
    local t0 = async.now()
    local r = async.gather()
    assert.are.equal("table", type(r))
    assert.are.equal(0, r.n)
    for k in pairs(r) do assert.are.equal("n", k) end
    assert.is_true(async.now() - t0 < 0.5)
  end)

  it("returns an empty array for an empty list", function()
    local r = async.gather({})
    assert.are.equal(0, r.n)
    assert.is_nil(r[1])
  end)

  it("raises the first error and cancels the rest", function()
    local cleaned = {}
    local function slow(name)
      return function()
        local ok, e = pcall(async.sleep, 5)
        if not ok then cleaned[name] = async.is_cancelled(e) end
        error(e, 0)
      end
    end
    local t0 = async.now()
    local ok, err = pcall(async.gather,
      slow("a"),
      function() async.sleep(0.02); error("first", 0) end,
      function() async.sleep(0.05); error("second", 0) end,
      slow("b"))
    assert.is_false(ok)
    assert.are.equal("first", err)
    assert.is_true(async.now() - t0 < 1)
    async.sleep(0.01)
    assert.is_true(cleaned.a)
    assert.is_true(cleaned.b)
  end)

  it("raises the child's error value unchanged", function()
    local e = { code = 42 }
    local ok, err = pcall(async.gather, function() error(e) end, sleeper(1))
    assert.is_false(ok)
    assert.is_true(rawequal(e, err))
  end)

  it("cancels given tasks too when one child fails", function()
    local t = async.spawn(sleeper(5))
    local ok = pcall(async.gather, t, function() error("x", 0) end)
    assert.is_false(ok)
    async.sleep(0.01)
    assert.are.equal("cancelled", t:status())
  end)

  it("raises when a child is cancelled, and cancels the others", function()
    local victim = async.spawn(sleeper(5))
    local other = async.spawn(sleeper(5))
    async.spawn(function() async.sleep(0.02); victim:cancel() end)
    local ok, err = pcall(async.gather, victim, other)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    async.sleep(0.01)
    assert.are.equal("cancelled", other:status())
  end)

  it("cancels every child when the gathering task is cancelled", function()
    local children = { async.spawn(sleeper(5)), async.spawn(sleeper(5)) }
    local gatherer = async.spawn(function() return async.gather(children) end)
    async.sleep(0.02)
    gatherer:cancel()
    local ok, err = pcall(gatherer.await, gatherer)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    async.sleep(0.01)
    assert.are.equal("cancelled", children[1]:status())
    assert.are.equal("cancelled", children[2]:status())
  end)

  it("cancels spawned function children when the gathering task is cancelled", function()
    local cancelled = 0
    local function child()
      local ok, e = pcall(async.sleep, 5)
      if not ok and async.is_cancelled(e) then cancelled = cancelled + 1 end
      error(e, 0)
    end
    local gatherer = async.spawn(async.gather, child, child, child)
    async.sleep(0.02)
    gatherer:cancel()
    pcall(gatherer.await, gatherer)
    async.sleep(0.02)
    assert.are.equal(3, cancelled)
  end)
end)

describe("async.gather_settled", function()
  after_each(assert_clean)

  it("returns {ok=true, value=v} / {ok=false, error=e} entries in argument order", function()
    local e = { "table error" }
    local r = async.gather_settled(
      sleeper(0.03, "a"),
      function() async.sleep(0.01); error("plain", 0) end,
      function() error(e) end,
      async.spawn(sleeper(0.02, "d")))
    assert.are.equal(4, r.n)
    assert.are.same({ ok = true, value = "a" }, r[1])
    assert.are.same({ ok = false, error = "plain" }, r[2])
    assert.is_false(r[3].ok)
    assert.is_true(rawequal(e, r[3].error))
    assert.are.same({ ok = true, value = "d" }, r[4])
  end)

  it("never raises for a child's failure and waits for every child", function()
    local finished = false
    local t0 = async.now()
    local r = async.gather_settled(
      function() error("fast failure", 0) end,
      function() async.sleep(0.1); finished = true; return "slow" end)
    assert.is_true(finished)
    assert.is_true(async.now() - t0 >= 0.1)
    assert.is_false(r[1].ok)
    assert.are.equal("slow", r[2].value)
  end)

  it("reports a cancelled child as an error without cancelling the others", function()
    local victim = async.spawn(sleeper(5))
    async.spawn(function() async.sleep(0.01); victim:cancel() end)
    local r = async.gather_settled(victim, sleeper(0.05, "ok"))
    assert.is_false(r[1].ok)
    assert.is_true(async.is_cancelled(r[1].error))
    assert.are.same({ ok = true, value = "ok" }, r[2])
  end)

  it("accepts a single array", function()
    local r = async.gather_settled({ sleeper(0, 1), sleeper(0, 2) })
    assert.are.equal(2, r.n)
    assert.are.equal(1, r[1].value)
    assert.are.equal(2, r[2].value)
  end)

  it("returns an empty array at once when given nothing", function()
    local r = async.gather_settled()
    assert.are.equal(0, r.n)
    assert.is_nil(r[1])
  end)

  it("cancels every child when the gathering task is cancelled", function()
    local children = { async.spawn(sleeper(5)), async.spawn(sleeper(5)) }
    local gatherer = async.spawn(async.gather_settled, children)
    async.sleep(0.02)
    gatherer:cancel()
    local ok, err = pcall(gatherer.await, gatherer)
    assert.is_false(ok)
    assert.is_true(async.is_cancelled(err))
    async.sleep(0.01)
    assert.are.equal("cancelled", children[1]:status())
    assert.are.equal("cancelled", children[2]:status())
  end)

  it("starts no task when an argument is bad", function()
    local ran = false
    local function f() ran = true end
    assert.is_false(pcall(async.gather, f, 42))
    assert.is_false(pcall(async.gather, { f, "not a task" }))
    assert.is_false(pcall(async.gather, f, async.current()))
    async.sleep(0.01)
    assert.is_false(ran)
  end)

  it("leaves the caller's list as it was", function()
    local list = { function() return 1 end, function() return 2 end }
    local first = list[1]
    local r = async.gather(list)
    assert.are.equal(2, r[2])
    assert.are.equal(first, list[1])
  end)

  it("takes callables as async.spawn does, and names a bad argument's type by __name", function()
    local callable = setmetatable({}, { __call = function() return 7 end })
    local r = async.gather(callable, function() return 8 end)
    assert.are.same({ 7, 8 }, { r[1], r[2] })
    assert.are.equal(7, async.gather({ callable })[1])
    local ok, err = pcall(async.gather, async.future())
    assert.is_false(ok)
    assert.matches("async.gather: bad argument #1 (task or function expected, got lasync.Future)",
      err, 1, true)
  end)

  it("raises, not crashes, when the caller's list of tasks is changed while it is gathered", function()
    -- A gather of a list of tasks keeps no copy of it (a million tasks, no second array), so a
    -- child that settled and was then dropped from the list may be collected: the group must
    -- notice rather than read the task it pointed to.
    for _, fname in ipairs({ "gather", "gather_settled" }) do
      local tasks = {}
      for i = 1, 200 do tasks[i] = async.spawn(sleeper(i % 2 == 0 and 0 or 0.02, i)) end
      local vandal = async.spawn(function()
        async.sleep(0.005) -- the even children have settled by now
        for i = 2, 200, 2 do tasks[i] = {} end
        collectgarbage()
      end)
      local ok, err = pcall(async[fname], tasks)
      assert.is_false(ok)
      assert.matches("async." .. fname .. ": the list of tasks was changed while it was gathered",
        err, 1, true)
      vandal:await()
    end
  end)
end)

describe("async.gather's list length", function()
  after_each(assert_clean)

  it("refuses a list whose border is past INT_MAX instead of waiting on nothing", function()
    local t = async.spawn(function() return 1 end)
    -- A constructor puts the keys in the hash part, where # finds a border of 2^32.
    local parts = { "local t = ... return {t,t,t,t,t,t,t,t,[9]=t" }
    local k = 16
    while k <= (1 << 32) do parts[#parts + 1] = ",[" .. k .. "]=t"; k = k * 2 end
    parts[#parts + 1] = "}"
    local list = load(table.concat(parts))(t)
    if #list ~= 1 << 32 then return pending("this Lua finds another border: " .. #list) end
    assert.matches("async.gather: bad argument #1 (a list of 4294967296 elements",
      select(2, pcall(async.gather, list)), 1, true)
    t:await()
  end)
end)
