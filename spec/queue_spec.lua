package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local raises = require "raises"

local function drain(q)
  local out = {}
  while q:size() > 0 do out[#out + 1] = q:get_nowait() end
  return out
end

describe("async.queue", function()
  after_each(assert_clean)

  it("hands items out first in, first out", function()
    local q = async.queue()
    for i = 1, 5 do q:put(i) end
    assert.are.equal(5, q:size())
    assert.are.same({ 1, 2, 3, 4, 5 }, drain(q))
    assert.is_true(q:empty())
  end)

  it("get() suspends while the queue is empty", function()
    local q = async.queue()
    local t = async.spawn(function() return q:get() end)
    async.sleep(0.01)
    assert.are.equal("running", t:status())
    q:put("x")
    assert.are.equal("x", t:await())
  end)

  it("put() suspends while the queue is full", function()
    local q = async.queue(2)
    q:put(1)
    q:put(2)
    assert.is_true(q:full())
    local t = async.spawn(function() q:put(3); return "put" end)
    async.sleep(0.01)
    assert.are.equal("running", t:status())
    assert.are.equal(1, q:get())
    assert.are.equal("put", t:await())
    assert.are.same({ 2, 3 }, drain(q))
  end)

  it("serves getters and putters in the order they came", function()
    local q = async.queue(1)
    local got, gs = {}, {}
    for i = 1, 3 do
      gs[i] = async.spawn(function()
        local v = q:get()
        got[#got + 1] = i .. ":" .. v
      end)
      async.sleep(0)
    end
    for _, v in ipairs({ "a", "b", "c" }) do q:put(v) end
    async.gather(gs)
    assert.are.same({ "1:a", "2:b", "3:c" }, got)

    q:put("first")
    local ps = {}
    for i = 1, 3 do
      ps[i] = async.spawn(function() q:put(i) end)
      async.sleep(0)
    end
    local out = {}
    for _ = 1, 4 do out[#out + 1] = q:get() end
    async.gather(ps)
    assert.are.same({ "first", 1, 2, 3 }, out)
  end)

  it("put_nowait raises when full, get_nowait when empty, with testable kinds", function()
    local q = async.queue(1)
    local e = raises(q.get_nowait, q)
    assert.are.equal("queue_empty", e.kind)
    q:put_nowait("v")
    e = raises(q.put_nowait, q, "w")
    assert.are.equal("queue_full", e.kind)
    assert.are.equal("v", q:get_nowait())
  end)

  it("after close(), get() drains what is left and then returns nil; put() raises", function()
    local q = async.queue()
    q:put(1)
    q:put(2)
    q:close()
    assert.is_true(q:is_closed())
    local e = raises(q.put, q, 3)
    assert.are.equal("queue_closed", e.kind)
    assert.are.equal("queue_closed", raises(q.put_nowait, q, 3).kind)
    assert.are.equal(1, q:get())
    assert.are.equal(2, q:get())
    assert.is_nil(q:get())
    assert.is_nil(q:get_nowait())
  end)

  it("close() wakes waiting getters with nil and makes waiting putters raise", function()
    local q = async.queue(1)
    local getter = async.spawn(function() return q:get() end)
    async.sleep(0)
    q:close()
    assert.is_nil(getter:await())

    local q2 = async.queue(1)
    q2:put("kept")
    local putter = async.spawn(function() q2:put("refused") end)
    async.sleep(0)
    q2:close()
    assert.are.equal("queue_closed", raises(putter.await, putter).kind)
    assert.are.equal("kept", q2:get())
    assert.is_nil(q2:get())
  end)

  it("iterates with for item in q:items() until closed and drained", function()
    local q = async.queue(2)
    local producer = async.spawn(function()
      for i = 1, 5 do q:put(i) end
      q:close()
    end)
    local seen = {}
    for item in q:items() do seen[#seen + 1] = item end
    producer:await()
    assert.are.same({ 1, 2, 3, 4, 5 }, seen)
  end)

  it("refuses nil items and bad sizes", function()
    local q = async.queue()
    assert.matches("queue:put: bad argument #1", raises(q.put, q, nil), 1, true)
    assert.matches("bad argument #1", raises(async.queue, -1), 1, true)
    assert.matches("bad argument #1", raises(async.queue, 2.5), 1, true)
  end)

  describe("cancellation at every suspension point", function()
    it("a getter cancelled in line leaves it; the item goes to the next getter", function()
      local q = async.queue()
      local a = async.spawn(function() return q:get() end)
      local b = async.spawn(function() return q:get() end)
      async.sleep(0)
      a:cancel()
      async.sleep(0)
      q:put("x")
      assert.are.equal("x", b:await())
      assert.is_true(async.is_cancelled(raises(a.await, a)))
      assert.are.equal(0, q:size())
    end)

    it("a getter that times out takes nothing", function()
      local q = async.queue()
      assert.is_true(async.is_timeout(raises(async.timeout, 0.01, q.get, q)))
      q:put_nowait("kept")
      assert.are.equal("kept", q:get_nowait())
    end)

    it("a getter handed an item but cancelled before it resumed leaves the item in the queue", function()
      local q = async.queue(1)
      local a = async.spawn(function() return q:get() end)
      async.sleep(0)
      q:put("precious") -- promised to a...
      a:cancel()        -- ...which is cancelled before it runs
      pcall(a.await, a)
      assert.are.equal(1, q:size())
      assert.are.equal("precious", q:get_nowait())
      -- and the capacity is exactly as before
      q:put_nowait(1)
      assert.are.equal("queue_full", raises(q.put_nowait, q, 2).kind)
      q:get_nowait()
    end)

    it("a cancelled getter's item goes to the getter behind it, in order", function()
      local q = async.queue()
      local a = async.spawn(function() return q:get() end)
      local b = async.spawn(function() return q:get() end)
      async.sleep(0)
      q:put("one")
      q:put("two")
      a:cancel()
      assert.are.equal("one", b:await())
      pcall(a.await, a)
      assert.are.same({ "two" }, drain(q))
    end)

    it("a putter cancelled in line leaves it and its item never arrives", function()
      local q = async.queue(1)
      q:put(0)
      local a = async.spawn(function() q:put("a") end)
      local b = async.spawn(function() q:put("b") end)
      async.sleep(0)
      a:cancel()
      async.sleep(0)
      assert.are.equal(0, q:get())
      b:await()
      assert.are.same({ "b" }, drain(q))
    end)

    it("a putter that times out adds nothing", function()
      local q = async.queue(1)
      q:put(0)
      assert.is_true(async.is_timeout(raises(async.timeout, 0.01, q.put, q, "late")))
      assert.are.same({ 0 }, drain(q))
      q:put_nowait(1) -- the slot it waited for is free for others
      assert.are.same({ 1 }, drain(q))
    end)

    it("a putter handed a slot but cancelled before it resumed gives the slot back", function()
      local q = async.queue(1)
      q:put(0)
      local a = async.spawn(function() q:put("a") end)
      local b = async.spawn(function() q:put("b") end)
      async.sleep(0)
      assert.are.equal(0, q:get()) -- the free slot is promised to a...
      a:cancel()                   -- ...which is cancelled before it runs
      b:await()
      pcall(a.await, a)
      assert.are.same({ "b" }, drain(q))
    end)

    it("a slot handed to a cancelled putter with nobody behind it becomes free", function()
      local q = async.queue(1)
      q:put(0)
      local a = async.spawn(function() q:put("a") end)
      async.sleep(0)
      q:get()
      a:cancel()
      pcall(a.await, a)
      assert.are.equal(0, q:size())
      q:put_nowait("fits")
      assert.are.same({ "fits" }, drain(q))
    end)

    it("loses and duplicates nothing under a storm of cancellations", function()
      local q = async.queue(3)
      local delivered, received = {}, {}
      local producers, consumers = {}, {}
      for p = 1, 5 do
        producers[p] = async.spawn(function()
          for i = 1, 20 do
            local v = p * 100 + i
            q:put(v)
            delivered[#delivered + 1] = v
          end
        end)
      end
      for c = 1, 4 do
        consumers[c] = async.spawn(function()
          while true do
            local v = q:get()
            received[#received + 1] = v
            async.sleep(0.0005 * c)
          end
        end)
      end
      for round = 1, 6 do
        async.sleep(0.002)
        producers[round % 5 + 1]:cancel()
        if round % 2 == 0 then consumers[round // 2]:cancel() end
      end
      for _, t in ipairs(producers) do pcall(t.await, t) end
      local leftover = drain(q)
      for _, t in ipairs(consumers) do t:cancel(); pcall(t.await, t) end
      for _, v in ipairs(leftover) do received[#received + 1] = v end
      table.sort(delivered)
      table.sort(received)
      assert.are.same(delivered, received)
    end)
  end)
end)
