-- async.semaphore, async.lock, async.event and async.queue: synchronisation between tasks, built
-- on futures.
--
-- Every primitive keeps its waiters in arrival order and hands what it has to give (a permit, an
-- item, a free slot) straight to the first of them, so a newcomer never barges ahead of a task
-- that was already waiting. A waiter that is cancelled, or times out, before it was served just
-- leaves the line. One that was served but cancelled before it could resume (the hand-off and
-- the cancellation landed in the same loop turn) gives back what it was handed, which goes on to
-- the next in line: either way the primitive is left exactly as if the waiter had never waited.
local core, async = ...

local error, pcall, setmetatable = error, pcall, setmetatable
local format, mtype = string.format, math.type
local new_future, current, new_error = core.future, core.current, core.error
local check = core._check
local check_in_task, misuse = check.in_task, check.misuse

-- The states of a waiter: still in line, served, or sent away by close().
local WAITING, GRANTED, REFUSED, GONE = 1, 2, 3, 4

-- A line of waiters. One that gives up is marked GONE and skipped later, rather than removed
-- from the middle; the tail is trimmed at once, so a line of timed-out waiters does not grow.
-- Plain functions on a plain table rather than methods: the line is internal (sem.line), and a
-- user who reaches it has no method to call with '.' by mistake.
local function new_line() return { first = 1, last = 0, n = 0 } end

local function line_push(line, w)
  local i = line.last + 1
  line.last, line[i], line.n = i, w, line.n + 1
  w.state, w.line = WAITING, line
end

-- Removes and returns the first waiter still in line, or nil.
local function line_shift(line)
  local i, last = line.first, line.last
  while i <= last do
    local w = line[i]
    line[i], i = nil, i + 1
    if w.state == WAITING then
      line.first, line.n = i, line.n - 1
      return w
    end
  end
  line.first, line.last = 1, 0
  return nil
end

local function line_leave(line, w)
  w.state, line.n = GONE, line.n - 1
  local last = line.last
  while last >= line.first and line[last].state == GONE do
    line[last], last = nil, last - 1
  end
  line.last = last
end

local function grant(w, ...)
  w.state = GRANTED
  w.future:set(...)
end

-- Waits in `line` until served, and returns what the server passed to grant(). On an error
-- (a cancellation, a timeout, a refusal by close) the waiter leaves the line, or, if it had
-- already been served, calls give_back(owner) so that what it was handed goes on to the next.
local function wait_in(line, owner, give_back, w)
  w = w or {}
  local f = new_future()
  w.future = f
  line_push(line, w)
  local ok, a = pcall(f.await, f)
  if ok then return a end
  if w.state == WAITING then
    line_leave(line, w)
  elseif w.state == GRANTED then
    give_back(owner, w)
  end
  error(a, 0)
end

-- The value of `local _ <close> = sem:acquire()`: releases once, when it goes out of scope.
local Permit = { __name = "lasync.Permit" }
Permit.__index = Permit

function Permit:release()
  local owner = self.owner
  if owner then
    owner:release() -- may refuse (a lock held by another task): the permit is kept then
    self.owner = nil
  end
end

Permit.__close = Permit.release

local function permit(owner) return setmetatable({ owner = owner }, Permit) end

-- ---- async.semaphore ----

local Semaphore = { __name = "lasync.Semaphore" }
Semaphore.__index = Semaphore

--- A semaphore with n permits (an integer >= 0, default 1).
function async.semaphore(n)
  if n == nil then n = 1 end
  if mtype(n) ~= "integer" or n < 0 then
    misuse("async.semaphore: bad argument #1 'n' (" .. check.expected("integer >= 0", n) .. ")")
  end
  return setmetatable({ free = n, limit = n, line = new_line() }, Semaphore)
end

-- Hands free permits to the waiters, first come first served.
local function serve_permits(sem)
  while sem.free > 0 do
    local w = line_shift(sem.line)
    if not w then return end
    sem.free = sem.free - 1
    grant(w)
  end
end

local function give_back_permit(sem)
  sem.free = sem.free + 1
  serve_permits(sem)
end

function Semaphore:acquire()
  check_in_task("semaphore:acquire")
  -- Free permits and waiters never coexist: a permit that frees up goes to the first waiter.
  if self.free > 0 then
    self.free = self.free - 1
  else
    wait_in(self.line, self, give_back_permit)
  end
  return permit(self)
end

function Semaphore:try_acquire()
  if self.free == 0 then return false end
  self.free = self.free - 1
  return permit(self)
end

function Semaphore:release()
  if self.free >= self.limit then
    misuse("semaphore:release: released more times than acquired")
  end
  give_back_permit(self)
end

function Semaphore:available() return self.free end
function Semaphore:waiting() return self.line.n end

function Semaphore:__tostring()
  return format("Semaphore (%d/%d free, %d waiting)", self.free, self.limit, self.line.n)
end

-- ---- async.lock ----

local Lock = { __name = "lasync.Lock" }
Lock.__index = Lock

--- A lock: one holder at a time, and only the holder may release it.
function async.lock()
  return setmetatable({ holder = nil, line = new_line() }, Lock)
end

-- The lock goes to the first waiter, or becomes free.
local function pass_lock(lock)
  local w = line_shift(lock.line)
  lock.holder = w and w.task or nil
  if w then grant(w) end
end

function Lock:acquire()
  check_in_task("lock:acquire")
  local me = current()
  if self.holder == nil then
    self.holder = me
  elseif self.holder == me then
    misuse("lock:acquire: this task already holds the lock (locks are not re-entrant)")
  else
    wait_in(self.line, self, pass_lock, { task = me })
  end
  return permit(self)
end

function Lock:try_acquire()
  check_in_task("lock:try_acquire", true) -- the holder is a task; nothing suspends
  if self.holder ~= nil then return false end
  self.holder = current()
  return permit(self)
end

function Lock:release()
  if self.holder == nil then misuse("lock:release: the lock is not locked") end
  if self.holder ~= current() then
    misuse("lock:release: the lock is held by another task")
  end
  pass_lock(self)
end

function Lock:locked() return self.holder ~= nil end
function Lock:waiting() return self.line.n end

function Lock:__tostring()
  return format("Lock (%s, %d waiting)", self.holder and "locked" or "unlocked", self.line.n)
end

-- ---- async.event ----

local Event = { __name = "lasync.Event" }
Event.__index = Event

--- An event: wait() suspends until set() is called; clear() resets it.
function async.event()
  return setmetatable({ flag = false, future = nil }, Event)
end

function Event:set()
  if self.flag then return end
  self.flag = true
  local f = self.future
  self.future = nil
  if f then f:set(true) end
end

function Event:clear()
  self.flag = false
end

function Event:is_set()
  return self.flag
end

-- Waiters share one future per set(): a cancelled waiter is unlinked from it by the core, and
-- the event has no other state to restore.
function Event:wait()
  check_in_task("event:wait")
  if self.flag then return true end
  local f = self.future
  if not f then
    f = new_future()
    self.future = f
  end
  return f:await()
end

function Event:__tostring() return format("Event (%s)", self.flag and "set" or "clear") end

-- ---- async.queue ----

local Queue = { __name = "lasync.Queue" }
Queue.__index = Queue

--- A FIFO queue holding at most maxsize items (nil or 0: unbounded).
function async.queue(maxsize)
  if maxsize == nil or maxsize == 0 then
    maxsize = math.huge
  elseif mtype(maxsize) ~= "integer" or maxsize < 0 then
    misuse("async.queue: bad argument #1 'maxsize' (" .. check.expected("integer >= 0", maxsize)
      .. ")")
  end
  -- Items live in self[head..tail]. A getter that is served is promised an item (`claimed`)
  -- which stays in the queue until it resumes and takes it; a putter that is served is promised
  -- a slot (`reserved`) which it fills when it resumes. So a served waiter that is cancelled
  -- before it resumes only has to give back a promise, and nothing it was handed is lost.
  return setmetatable({
    head = 1, tail = 0, maxsize = maxsize, claimed = 0, reserved = 0, closed = false,
    getters = new_line(), putters = new_line(),
  }, Queue)
end

local function count(q) return q.tail - q.head + 1 end

local function push_item(q, v)
  q.tail = q.tail + 1
  q[q.tail] = v
end

local function pop_item(q)
  local h = q.head
  local v = q[h]
  q[h], q.head = nil, h + 1
  return v
end

-- Keeps the two promises below what the queue can honour, first come first served.
local function serve_queue(q)
  while count(q) - q.claimed > 0 do
    local w = line_shift(q.getters)
    if not w then break end
    q.claimed = q.claimed + 1
    grant(w, true)
  end
  while q.maxsize - count(q) - q.reserved > 0 do
    local w = line_shift(q.putters)
    if not w then break end
    q.reserved = q.reserved + 1
    grant(w)
  end
end

local function give_back_claim(q)
  q.claimed = q.claimed - 1
  serve_queue(q)
end

local function give_back_slot(q)
  q.reserved = q.reserved - 1
  serve_queue(q)
end

local function closed_error(fname)
  return new_error("queue_closed", fname .. ": the queue is closed")
end

local function check_item(fname, v)
  if v == nil then misuse(fname .. ": bad argument #1 'item' (a value other than nil expected)") end
end

local function take(q)
  local v = pop_item(q)
  serve_queue(q)
  return v
end

function Queue:get()
  check_in_task("queue:get")
  if count(self) - self.claimed > 0 then return take(self) end
  if self.closed then return nil end
  if not wait_in(self.getters, self, give_back_claim) then return nil end -- closed meanwhile
  self.claimed = self.claimed - 1
  return take(self)
end

function Queue:get_nowait()
  if count(self) - self.claimed > 0 then return take(self) end
  if self.closed then return nil end
  error(new_error("queue_empty", "queue:get_nowait: the queue is empty"), 2)
end

function Queue:put(v)
  check_item("queue:put", v)
  check_in_task("queue:put")
  if self.closed then error(closed_error("queue:put"), 2) end
  if self.maxsize - count(self) - self.reserved <= 0 then
    wait_in(self.putters, self, give_back_slot)
    self.reserved = self.reserved - 1
    if self.closed then
      serve_queue(self)
      error(closed_error("queue:put"), 2)
    end
  end
  push_item(self, v)
  serve_queue(self)
end

function Queue:put_nowait(v)
  check_item("queue:put_nowait", v)
  if self.closed then error(closed_error("queue:put_nowait"), 2) end
  if self.maxsize - count(self) - self.reserved <= 0 then
    error(new_error("queue_full", "queue:put_nowait: the queue is full"), 2)
  end
  push_item(self, v)
  serve_queue(self)
end

--- Refuses further puts (waiting putters raise); get() drains what is left, then returns nil.
function Queue:close()
  if self.closed then return end
  self.closed = true
  while true do
    local w = line_shift(self.putters)
    if not w then break end
    w.state = REFUSED
    w.future:fail(closed_error("queue:put"))
  end
  -- Getters still in line have no item promised, and none will come.
  while true do
    local w = line_shift(self.getters)
    if not w then break end
    w.state = REFUSED
    w.future:set(false)
  end
end

function Queue:items()
  return Queue.get, self
end

function Queue:size() return count(self) end
function Queue:empty() return count(self) == 0 end
function Queue:full() return count(self) >= self.maxsize end
function Queue:is_closed() return self.closed end

function Queue:__tostring()
  return format("Queue (%d items%s)", count(self), self.closed and ", closed" or "")
end

-- Every method says "call it with ':'" when called with '.' (q.size()).
check.methods(Permit, "permit")
check.methods(Semaphore, "semaphore")
check.methods(Lock, "lock")
check.methods(Event, "event")
check.methods(Queue, "queue")
