package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

-- Runs a script with the lasync host (CTest sets LASYNC); returns its stderr and exit status.
local function run_script(source)
  local lasync = os.getenv("LASYNC") or "build/lasync"
  local script, err = os.tmpname(), os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(source)
  f:close()
  local ok, _, code = os.execute(lasync .. " " .. script .. " 2>" .. err)
  f = assert(io.open(err))
  local stderr = f:read("a")
  f:close()
  os.remove(script)
  os.remove(err)
  return stderr, ok and 0 or code
end

describe("async.scope", function()
  after_each(assert_clean)

  it("returns the body's values once the body and every child have finished", function()
    local finished = {}
    local t0 = async.now()
    local r = table.pack(async.scope(function(s)
      s:spawn(function() async.sleep(0.05); finished[#finished + 1] = "slow" end)
      s:spawn(function() async.sleep(0.01); finished[#finished + 1] = "fast" end)
      return "a", nil, "c"
    end))
    assert.are.same({ "a", nil, "c", n = 3 }, r)
    assert.are.same({ "fast", "slow" }, finished)
    assert.is_true(async.now() - t0 >= 0.05)
  end)

  it("runs the body in the calling task and the children concurrently", function()
    local me = async.current()
    local t0 = async.now()
    async.scope(function(s)
      assert.are.equal(me, async.current())
      for _ = 1, 3 do s:spawn(async.sleep, 0.2) end
    end)
    assert.is_true(async.now() - t0 < 0.5) -- one after another would take 0.6 s
  end)

  it("s:spawn returns the child task, which may be awaited", function()
    async.scope(function(s)
      local t = s:spawn(function(a, b) return a + b end, 1, 2)
      assert.are.equal(3, t:await())
    end)
  end)

  it("waits for children spawned by children", function()
    local done = false
    async.scope(function(s)
      s:spawn(function()
        async.sleep(0.01)
        s:spawn(function() async.sleep(0.02); done = true end)
      end)
    end)
    assert.is_true(done)
  end)

  it("keeps up with many short children spawned over its life", function()
    local n = 0
    async.scope(function(s)
      for _ = 1, 500 do
        s:spawn(function() n = n + 1 end)
        if n % 50 == 0 then async.sleep(0) end
      end
    end)
    assert.are.equal(500, n)
  end)

  it("on a child's failure cancels the others and the body, and raises that error", function()
    local e = { reason = "boom" }
    local sibling, body_saw
    local err = raises(async.scope, function(s)
      s:spawn(function() async.sleep(0.01); error(e) end)
      sibling = s:spawn(async.sleep, 5)
      local ok, why = pcall(async.sleep, 5)
      body_saw = why
      error(why, 0)
    end)
    assert.is_true(rawequal(e, err))
    assert.is_nil(e.others)
    assert.are.equal("cancelled", sibling:status())
    assert.is_true(async.is_cancelled(body_saw))
  end)

  it("attaches later errors to the first when it is a table, in order", function()
    local s_seen
    local err = raises(async.scope, function(s)
      s_seen = s
      s:spawn(function() async.sleep(0.01); error({ "first" }) end)
      for i = 1, 2 do
        s:spawn(function()
          pcall(async.sleep, 5)  -- cancelled by the first failure...
          error("later " .. i, 0) -- ...and its cleanup fails too
        end)
      end
      async.sleep(5)
    end)
    assert.are.equal("first", err[1])
    assert.are.same({ "later 1", "later 2" }, err.others)
    assert.are.equal(3, #s_seen.errors)
  end)

  it("raises a string error unchanged; the later ones stay in s.errors", function()
    local scope
    local err = raises(async.scope, function(s)
      scope = s
      s:spawn(function() async.sleep(0.01); error("plain", 0) end)
      s:spawn(function() pcall(async.sleep, 5); error("second", 0) end)
      async.sleep(5)
    end)
    assert.are.equal("plain", err)
    assert.are.same({ "plain", "second" }, scope.errors)
  end)

  it("on the body's failure cancels the children and raises the body's error", function()
    local child
    local err = raises(async.scope, function(s)
      child = s:spawn(async.sleep, 5)
      async.sleep(0)
      error("body failed", 0)
    end)
    assert.are.equal("body failed", err)
    assert.are.equal("cancelled", child:status())
  end)

  it("does not report a child's failure as unhandled: the scope raised it", function()
    local stderr, code = run_script([[
      local async = require "lasync"
      local ok, err = pcall(async.scope, function(s)
        s:spawn(function() error("child failed", 0) end)
        s:spawn(function() pcall(async.sleep, 5); error("cleanup failed", 0) end)
        async.sleep(5)
      end)
      assert(not ok and err == "child failed")
      collectgarbage(); collectgarbage()
    ]])
    assert.are.equal("", stderr)
    assert.are.equal(0, code)
  end)

  it("cancelling the task that runs it cancels every child and waits for their cleanup", function()
    local cleaned = {}
    local children = {}
    local t = async.spawn(function()
      async.scope(function(s)
        for i = 1, 3 do
          children[i] = s:spawn(function()
            local _ <close> = setmetatable({}, { __close = function()
              async.shield(function() -- cleanup that takes time
                async.sleep(0.01)
                cleaned[#cleaned + 1] = i
              end)
            end })
            async.sleep(5)
          end)
        end
        async.sleep(5)
      end)
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
    assert.are.equal(3, #cleaned)
    for i = 1, 3 do assert.are.equal("cancelled", children[i]:status()) end
  end)

  it("cancelling the task while the scope waits for its children cancels them too", function()
    local child
    local t = async.spawn(function()
      async.scope(function(s) child = s:spawn(async.sleep, 5) end)
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
    assert.are.equal("cancelled", child:status())
  end)

  it("s:cancel() ends the scope early without an error", function()
    local child, after
    local t0 = async.now()
    local r = table.pack(async.scope(function(s)
      child = s:spawn(async.sleep, 5)
      async.sleep(0.01)
      s:cancel()
      async.sleep(5)
      after = true
      return "not reached"
    end))
    assert.are.equal(0, r.n)
    assert.is_nil(after)
    assert.are.equal("cancelled", child:status())
    assert.is_true(async.now() - t0 < 1)
    async.sleep(0.01) -- the task itself is not cancelled
  end)

  it("s:cancel() from a child ends the scope too", function()
    local r = table.pack(async.scope(function(s)
      s:spawn(function() async.sleep(0.01); s:cancel() end)
      s:spawn(async.sleep, 5)
      async.sleep(5)
    end))
    assert.are.equal(0, r.n)
  end)

  it("returns the body's values when s:cancel() is called as the body returns", function()
    assert.are.equal("kept", async.scope(function(s)
      s:spawn(async.sleep, 5)
      s:cancel()
      return "kept"
    end))
  end)

  it("children spawned after s:cancel() are cancelled at once", function()
    local late
    async.scope(function(s)
      s:cancel()
      late = s:spawn(function() return "ran" end)
    end)
    assert.are.equal("cancelled", late:status())
  end)

  it("raises when spawning into a scope that has finished", function()
    local scope
    async.scope(function(s) scope = s end)
    assert.matches("scope:spawn: the scope has already finished",
      raises(scope.spawn, scope, function() end), 1, true)
  end)

  it("under async.timeout, expiry cancels the children and raises Timeout", function()
    local child
    local err = raises(async.timeout, 0.02, async.scope, function(s)
      child = s:spawn(async.sleep, 5)
      async.sleep(5)
    end)
    assert.is_true(async.is_timeout(err))
    assert.are.equal("cancelled", child:status())
  end)

  it("a child's own timeout is a failure like any other", function()
    local err = raises(async.scope, function(s)
      s:spawn(async.timeout, 0.01, async.sleep, 5)
      async.sleep(5)
    end)
    assert.is_true(async.is_timeout(err))
  end)

  it("checks its arguments", function()
    assert.matches("async.scope: bad argument #1", raises(async.scope, 42), 1, true)
    async.scope(function(s)
      assert.matches("scope:spawn: bad argument #1", raises(s.spawn, s, nil), 1, true)
    end)
  end)
end)

describe("async.shield", function()
  after_each(assert_clean)

  it("runs cleanup to the end after the cancellation has arrived, then re-raises it", function()
    local cleaned = false
    local t = async.spawn(function()
      local ok, err = pcall(async.sleep, 5)
      async.shield(function()
        async.sleep(0.02)
        cleaned = true
      end)
      error("not reached")
    end)
    async.sleep(0.01)
    t:cancel()
    assert.is_true(async.is_cancelled(raises(t.await, t)))
    assert.is_true(cleaned)
  end)
end)

describe("async.scope's first error", function()
  after_each(assert_clean)

  it("is raised itself even when its __newindex refuses the others field", function()
    local Err = setmetatable({}, { __newindex = function() error("read-only error object") end })
    local ok, e = pcall(async.scope, function(s)
      s:spawn(function()
        local _ <close> = setmetatable({}, { __close = function() error("cleanup failed") end })
        async.sleep(1)
      end)
      s:spawn(function() async.sleep(0.001); error(Err, 0) end)
      async.sleep(1)
    end)
    assert.is_false(ok)
    assert.are.equal(Err, e)
    assert.matches("cleanup failed", rawget(e, "others")[1])
  end)
end)
