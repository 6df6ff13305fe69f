-- The runtime's timers (bindings/core/timer.c): deadlines armed in the order they fall due join
-- a queue, the others a heap; stopped ones leave empty slots in the queue. These specs arm both
-- kinds, mixed, through growth and cancellations, and check what a user can see: every sleep
-- lasts its time, no deadline fires before an earlier one, and nothing is left armed.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local function armed() return async._debug.counts().timers end

-- Runs `waves` waves of `per_wave` sleepers, one wave a drain apart, each sleeping
-- `duration(i)` whole milliseconds; cancels the tasks `cancel(i)` picks after a random delay.
-- Returns the sleepers not cancelled in the order they woke, each with the order it armed its
-- sleep in, and checks that every other one was cancelled.
local function run_sleepers(waves, per_wave, duration, cancel)
  local woken, tasks, cancellers, arming = {}, {}, {}, 0
  for w = 1, waves do
    for k = 1, per_wave do
      local i = (w - 1) * per_wave + k
      local ms = duration(i)
      tasks[i] = async.spawn(function()
        arming = arming + 1
        local armed_as, deadline = arming, async.now() + ms / 1000
        async.sleep(ms / 1000)
        woken[#woken + 1] = { ms = ms, armed_as = armed_as, deadline = deadline,
                              woke = async.now(), i = i }
      end)
      if cancel(i) then
        local t = tasks[i]
        cancellers[#cancellers + 1] = async.spawn(function()
          async.sleep(math.random() * 0.03)
          t:cancel()
        end)
      end
    end
    async.sleep(0.001)
  end
  async.gather_settled(tasks)
  async.gather(cancellers)
  local cancelled = 0
  for _, t in ipairs(tasks) do
    if t:status() == "cancelled" then cancelled = cancelled + 1 end
  end
  assert.are.equal(#tasks, #woken + cancelled)
  return woken, cancelled
end

-- Every sleeper woke at its deadline or after (the loop's clock, read before it armed, is late
-- by a millisecond at most), and after every sleeper that armed before it a sleep as short or
-- shorter: that one's deadline fell first. Exact whatever the machine's speed, as it compares
-- no clocks: a sleeper armed later starts later.
local function assert_in_order(woken)
  local by_arming, latest = {}, {} -- latest[ms]: the last to wake of those armed so far
  for position, w in ipairs(woken) do
    w.position = position
    by_arming[position] = w
  end
  table.sort(by_arming, function(a, b) return a.armed_as < b.armed_as end)
  for _, w in ipairs(by_arming) do
    assert.is_true(w.woke >= w.deadline - 0.001,
      ("sleeper %d woke at %.4f, before its deadline %.4f"):format(w.i, w.woke, w.deadline))
    for ms = 0, w.ms do
      local before = latest[ms]
      assert.is_true(before == nil or before.position < w.position,
        ("sleeper %d (%d ms) woke before sleeper %d (%d ms), which armed its sleep first")
          :format(w.i, w.ms, before and before.i or 0, ms))
    end
    if latest[w.ms] == nil or latest[w.ms].position < w.position then latest[w.ms] = w end
  end
end

describe("the runtime's timers", function()
  after_each(assert_clean)

  it("wake sleepers armed in order, out of order and mixed, by their deadlines", function()
    math.randomseed(15)
    local n = 0
    local woken = run_sleepers(8, 400, function(i)
      local k = i % 400
      if i % 3 == 0 then return 5 + k // 10 end -- rising: the queue
      if i % 3 == 1 then return 50 - k // 10 end -- falling: the heap
      return math.random(0, 60)
    end, function() n = n + 1; return n % 5 == 0 end)
    assert.is_true(#woken > 2000, #woken .. " sleepers woke")
    assert_in_order(woken)
    assert.are.equal(0, armed())
  end)

  it("keep their order after cancellations fill the queue with stopped deadlines", function()
    -- One long sleep heads the queue while thousands of timeouts behind it are armed and
    -- stopped at once, as a server's idle timeouts are: their slots stay until the head passes.
    local long = async.spawn(function() async.sleep(60) end) -- outlasts the spec on any machine
    async.sleep(0) -- it arms its sleep
    for _ = 1, 5000 do
      assert.are.equal(1, async.timeout(0.2, function() return 1 end))
    end
    assert.are.equal(1, armed())
    local woken = run_sleepers(3, 200, function(i) return (i % 7) * 4 end,
      function(i) return i % 4 == 0 end)
    assert.is_true(#woken >= 450, #woken .. " of 600 sleepers woke")
    assert_in_order(woken)
    assert.are.equal(1, armed())
    long:cancel()
    async.gather_settled({ long })
    assert.are.equal(0, armed())
  end)

  it("a stopped deadline at the queue's head gives way to the next", function()
    local order = {}
    -- Long enough that the cancellation lands first on a slow machine.
    local first = async.spawn(function() async.sleep(1); order[#order + 1] = "first" end)
    local second = async.spawn(function() async.sleep(1.05); order[#order + 1] = "second" end)
    async.sleep(0)
    first:cancel()
    local t0 = async.now()
    second:await()
    assert.are.same({ "second" }, order)
    assert.is_true(async.now() - t0 < 5)
    assert.are.equal("cancelled", first:status())
    assert.are.equal(0, armed())
  end)
end)
