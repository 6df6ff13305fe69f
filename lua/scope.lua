-- async.scope (task groups), waiting on many tasks (wait, as_completed, first), async.map and
-- async.retry: structured concurrency composed from tasks, futures and cancel scopes.
local core, async = ...

local error, ipairs, next, pcall = error, ipairs, next, pcall
local rawget, select, setmetatable, tostring, type = rawget, select, setmetatable, tostring, type
local format, rep, floor, min, max = string.format, string.rep, math.floor, math.min, math.max
local pack, unpack = table.pack, table.unpack
local spawn, current, deadline = core.spawn, core.current, core._deadline
local is_cancelled, is_task = core.is_cancelled, core._is_task
local new_future, now = core.future, core.now

-- ---- argument checks (core._check, shared by every file of lua/) ----

local check = core._check
local misuse, is_callable, check_in_task = check.misuse, check.is_callable, check.in_task
local check_number = check.number_option

local function check_callable(fname, n, argname, fn) check.callable(fname, n, argname, fn) end

local function check_tasks(fname, tasks)
  if type(tasks) ~= "table" then
    check.argerror(fname, 1, "tasks", "array of tasks", tasks)
  end
  local me = current()
  for i = 1, #tasks do
    if not is_task(tasks[i]) then
      misuse(format("%s: bad argument #1 'tasks' (item %d is a %s, not a task)", fname, i,
        check.typename(tasks[i])))
    elseif tasks[i] == me then
      -- It would wait for its own end: a deadlock, as async.gather refuses.
      misuse(format("%s: a task cannot wait for itself (item %d)", fname, i))
    end
  end
end

-- Raises the first of `errors`; later ones ride along in its field `others` when it is a table
-- without one (a string cannot carry them; the scope's `errors` field keeps them all).
local function raise_first(errors)
  local first = errors[1]
  if #errors > 1 and type(first) == "table" and rawget(first, "others") == nil then
    -- rawset: a __newindex that raises, or a read-only proxy, must not replace the error.
    rawset(first, "others", { unpack(errors, 2) })
  end
  error(first, 0)
end

-- ---- async.scope ----

local Scope = { __name = "lasync.Scope" }
Scope.__index = Scope

-- Cancels the unfinished children in the order they were spawned, so they also wake (and any
-- errors of their cleanup arrive) in that order.
local function cancel_children(s, except)
  s.cancelling = true
  local live = s.children
  for _, t in ipairs(s.order) do
    if live[t] and t ~= except then t:cancel() end
  end
end

-- Cancels the children, and the body too unless it has already returned.
local function cancel_all(s, except)
  if not s.body_done then s.deadline:cancel() end
  cancel_children(s, except)
end

local function record_failure(s, err, task)
  local n = #s.errors + 1
  s.errors[n], s.failed[n] = err, task or false
  if n == 1 then cancel_all(s, task) end
end

-- Closed as each child ends: it learns the outcome as the error unwinds, so the error keeps its
-- own traceback. A child that ended well, or was cancelled, leaves the set; one that failed
-- stays until the scope has looked at its outcome (else it would be reported as unhandled).
local Guard = {
  __close = function(g, err)
    local s, t = g.scope, g.task
    if err ~= nil and not is_cancelled(err) then
      record_failure(s, err, t)
    else
      s.children[t] = nil
    end
  end,
}

local function run_child(s, fn, ...)
  local _ <close> = setmetatable({ scope = s, task = current() }, Guard)
  return fn(...)
end

--- Starts fn(...) as a child task of the scope.
function Scope:spawn(fn, ...)
  check.self(self, Scope, "scope:spawn")
  check_callable("scope:spawn", 1, "fn", fn)
  if not self.open then misuse("scope:spawn: the scope has already finished") end
  local t = spawn(run_child, self, fn, ...)
  local order = self.order
  if #order >= 2 * self.pruned_at + 32 then -- forget the children that have finished
    local kept = {}
    for _, c in ipairs(order) do
      if self.children[c] then kept[#kept + 1] = c end
    end
    self.order, self.pruned_at, order = kept, #kept, kept
  end
  self.children[t] = true
  order[#order + 1] = t
  if self.cancelling then t:cancel() end
  return t
end

--- Ends the scope early, without an error: the body and every child are cancelled.
function Scope:cancel()
  if self.open then cancel_all(self) end
end

check.methods(Scope, "scope") -- s.spawn(fn) says "call it with ':'"

-- Awaits every child, those spawned meanwhile included; raises only if the waiting task is
-- cancelled (the children have their own outcomes, recorded by their guards).
local function wait_children(s)
  while true do
    local t = next(s.children)
    if t == nil then return end
    if t:done() then
      pcall(t.result, t) -- looks at a failure, so it is not reported as unhandled
    else
      local ok, err = pcall(t.await, t)
      if not ok and not t:done() then error(err, 0) end
    end
    s.children[t] = nil
  end
end

local function finish_scope(s, ok, ...)
  -- The body's cancel scope ends with the body: from here a failing child only cancels its
  -- siblings, and only a cancellation of the task itself interrupts the wait.
  local cancelled_by_scope = s.deadline:close()
  s.body_done = true
  if not ok then
    local err = ...
    if is_cancelled(err) then
      cancel_children(s)
    else
      record_failure(s, err, nil)
    end
  end
  local waited, interruption = pcall(wait_children, s)
  if not waited then
    -- The task is cancelled: cancel the children and wait for their cleanup regardless. The
    -- shield re-raises the cancellation as it closes; it is raised again below.
    cancel_children(s)
    pcall(async.shield, wait_children, s)
  end
  s.open = false
  if #s.errors > 0 then
    local first = s.failed[1]
    if first then pcall(first.result, first) end -- so the traceback tells which child raised it
    raise_first(s.errors)
  end
  if not ok then
    local err = ...
    if cancelled_by_scope and is_cancelled(err) then return end -- s:cancel(), or a failure
    error(err, 0)
  end
  if not waited then error(interruption, 0) end
  return ...
end

--- Runs body(s, ...) in the calling task; returns, with body's values, once the body and every
--- child spawned with s:spawn have finished. See docs/toolkit.md.
function async.scope(body, ...)
  check_callable("async.scope", 1, "body", body)
  check_in_task("async.scope")
  local s = setmetatable({ children = {}, order = {}, pruned_at = 0, errors = {}, failed = {},
    open = true }, Scope)
  local cancel_scope <close> = deadline(math.huge, "async.scope") -- closed even if an error
  s.deadline = cancel_scope                                          -- skips finish_scope
  return finish_scope(s, pcall(body, s, ...))
end

-- ---- waiting on many ----

-- Watches tasks: one small watcher task per unfinished task appends it to `finished` as it ends
-- and wakes whoever waits for news. Closing the watch cancels the watchers still running.
local Watch = {}
Watch.__index = Watch
Watch.__close = function(w)
  for _, wt in ipairs(w.watchers) do wt:cancel() end
end

local function watch_one(w, t)
  pcall(t.await, t)
  if not t:done() then return end -- the watcher itself was cancelled
  local n = w.count + 1
  w.count, w.finished[n] = n, t
  if t:status() == "failed" then w.failures = w.failures + 1 end
  local f = w.signal
  if f then
    w.signal = nil
    f:set()
  end
end

local function watch(tasks)
  local w = setmetatable({ finished = {}, count = 0, failures = 0, watchers = {} }, Watch)
  for _, t in ipairs(tasks) do
    if t:done() then
      w.count = w.count + 1
      w.finished[w.count] = t
      if t:status() == "failed" then w.failures = w.failures + 1 end
    end
  end
  for _, t in ipairs(tasks) do
    if not t:done() then w.watchers[#w.watchers + 1] = spawn(watch_one, w, t) end
  end
  return w
end

-- Suspends until a watched task finishes. Every task waiting meanwhile waits on the one
-- signal (two tasks can share an as_completed iterator): a new one would orphan the first.
function Watch:news()
  local f = self.signal
  if not f then
    f = new_future()
    self.signal = f
  end
  f:await()
end

local RETURN_WHEN = { all = true, first_completed = true, first_error = true }

local function partition(tasks)
  local done, pending = {}, {}
  for _, t in ipairs(tasks) do
    local into = t:done() and done or pending
    into[#into + 1] = t
  end
  return done, pending
end

local WAIT_OPTIONS = { return_when = true, timeout = true }

--- Waits until the condition `return_when` holds or `timeout` passes; returns the done and the
--- pending tasks, each in the order given. Never raises for a task's failure, nor on timeout.
function async.wait(tasks, opts)
  check_tasks("async.wait", tasks)
  opts = check.options("async.wait", 2, opts, WAIT_OPTIONS)
  local mode, timeout = opts.return_when or "all", opts.timeout
  if not RETURN_WHEN[mode] then
    check.opterror("async.wait", "return_when", format(
      "\"all\", \"first_completed\" or \"first_error\" expected, got %s", tostring(mode)))
  end
  check_number("async.wait", "timeout", timeout, 0)
  check_in_task("async.wait")
  local total = #tasks
  local w <close> = watch(tasks)
  local function satisfied()
    if w.count == total then return true end
    if mode == "first_completed" then return w.count > 0 end
    if mode == "first_error" then return w.failures > 0 end
    return false
  end
  local function until_satisfied()
    while not satisfied() do w:news() end
  end
  if timeout then
    local ok, err = pcall(async.timeout, timeout, until_satisfied)
    if not ok and not async.is_timeout(err) then error(err, 0) end
  else
    until_satisfied()
  end
  return partition(tasks)
end

--- for t in async.as_completed(tasks) do ... end: the tasks in the order they finish (those
--- already finished first, in the order given). Breaking out of the loop stops the watching.
function async.as_completed(tasks)
  check_tasks("async.as_completed", tasks)
  check_in_task("async.as_completed")
  local w = watch(tasks)
  local i, total = 0, #tasks
  local function next_done()
    -- Counted only once it is there: a cancellation caught around this call must not skip one.
    -- Another task sharing the iterator may take the last one meanwhile: then this one ends.
    while i < total and w.finished[i + 1] == nil do w:news() end
    if i >= total then return nil end
    i = i + 1
    return w.finished[i]
  end
  return next_done, nil, nil, w
end

-- Tasks or functions (spawned), as arguments or as one array, as async.gather takes them.
local function tasks_of(fname, ...)
  local args = pack(...)
  if args.n == 1 and type(args[1]) == "table" and not is_task(args[1]) then
    args = pack(unpack(args[1]))
  end
  local me = current()
  for i = 1, args.n do
    local a = args[i]
    if not is_task(a) and not is_callable(a) then
      check.argerror(fname, i, nil, "task or function", a)
    elseif a == me then
      misuse(format("%s: a task cannot wait for itself (argument %d)", fname, i))
    end
  end
  local tasks = {}
  for i = 1, args.n do
    local a = args[i]
    tasks[i] = is_task(a) and a or spawn(a)
  end
  return tasks
end

local function settle_all(tasks)
  for _, t in ipairs(tasks) do
    if t:done() then pcall(t.result, t) else pcall(t.await, t) end
  end
end

local function pick_first(tasks, errors)
  for t in async.as_completed(tasks) do
    if t:status() == "done" then return t end
    errors[#errors + 1] = select(2, pcall(t.result, t))
  end
  return nil
end

--- Returns the values of the first task to succeed; the others are cancelled (and their cleanup
--- awaited). If every one fails, raises the first error, the later ones in its field `others`.
function async.first(...)
  check_in_task("async.first")
  local tasks = tasks_of("async.first", ...)
  if #tasks == 0 then misuse("async.first: no tasks or functions given") end
  local errors = {}
  local ok, winner = pcall(pick_first, tasks, errors)
  for _, t in ipairs(tasks) do
    if t ~= winner then t:cancel() end
  end
  pcall(async.shield, settle_all, tasks)
  if not ok then error(winner, 0) end
  if winner then return winner:result() end
  raise_first(errors)
end

-- ---- async.map ----

local stderr_is_terminal

local function terminal()
  if stderr_is_terminal == nil then
    local term = os.getenv("TERM")
    -- Pure Lua cannot call isatty(); the shell's `test -t` can, once per process.
    stderr_is_terminal = term ~= nil and term ~= "dumb" and os.execute("test -t 2") == true
  end
  return stderr_is_terminal
end

local function duration(s)
  if s ~= s or s == math.huge then return "?" end
  s = floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return format("%dm%02ds", s // 60, s % 60) end
  return format("%dh%02dm", s // 3600, s % 3600 // 60)
end

-- A progress bar on stderr: done/total, percentage, rate and ETA, redrawn at most ten times a
-- second; closing it erases the line.
local Bar = {}
Bar.__index = Bar
Bar.__close = function() io.stderr:write("\r\27[K"); io.stderr:flush() end

local function new_bar(total)
  local bar = setmetatable({ total = total, started = now(), drawn = -1 }, Bar)
  bar:draw(0)
  return bar
end

function Bar:draw(done)
  local t = now()
  if done < self.total and t - self.drawn < 0.1 then return end
  self.drawn = t
  local width, total = 30, self.total
  local fraction = total > 0 and done / total or 1
  local filled = floor(fraction * width)
  local rate = done / max(t - self.started, 1e-6)
  local eta = rate > 0 and (total - done) / rate or math.huge
  io.stderr:write(format("\r[%s%s] %d/%d %3d%% %.1f/s ETA %s\27[K", rep("#", filled),
    rep(" ", width - filled), done, total, floor(fraction * 100), rate, duration(eta)))
  io.stderr:flush()
end

local function settle_one(fn, item, i)
  local ok, v = pcall(fn, item, i)
  if ok then return { ok = true, value = v } end
  if is_cancelled(v) then core._checkpoint() end -- this worker's own cancellation: not a result
  return { ok = false, error = v }
end

local MAP_OPTIONS = { concurrency = true, progress = true, settled = true }

--- Runs fn(item, index) over items with at most `concurrency` calls in flight; returns their
--- first values in input order (field n = #items). See docs/toolkit.md for the options.
function async.map(fn, items, opts)
  check_callable("async.map", 1, "fn", fn)
  if type(items) ~= "table" then check.argerror("async.map", 2, "items", "array", items) end
  opts = check.options("async.map", 3, opts, MAP_OPTIONS)
  local total = #items
  if math.type(total) ~= "integer" then -- a __len of 1e9 would be blamed on 'concurrency'
    misuse(format("async.map: bad argument #2 'items' (its length is %s, not an integer)",
      tostring(total)))
  end
  local limit = opts.concurrency or math.max(total, 1)
  check_number("async.map", "concurrency", limit, 1, true)
  local progress, settled = opts.progress, opts.settled
  if progress ~= nil and progress ~= true and progress ~= false and not is_callable(progress) then
    check.opterror("async.map", "progress", check.expected("boolean or function", progress))
  end
  check_in_task("async.map")
  local results = { n = total }
  if total == 0 then return results end
  local bar <close> = progress == true and terminal() and new_bar(total) or nil
  local report = progress ~= true and progress or nil
  local taken, finished = 0, 0
  local function worker()
    while taken < total do
      taken = taken + 1
      local i = taken
      if settled then
        results[i] = settle_one(fn, items[i], i)
      else
        results[i] = (fn(items[i], i))
      end
      finished = finished + 1
      if bar then bar:draw(finished) elseif report then report(finished, total) end
    end
  end
  async.scope(function(s)
    for _ = 1, min(limit, total) do s:spawn(worker) end
  end)
  return results
end

-- ---- async.retry ----

local RETRY_OPTIONS = { attempts = true, backoff = true, max_delay = true, jitter = true,
  retry_if = true }

--- Calls fn(attempt) until it succeeds, sleeping between attempts with exponential backoff and
--- jitter; raises the last error once `attempts` calls have failed. Never retries a cancellation.
function async.retry(fn, opts)
  check_callable("async.retry", 1, "fn", fn)
  opts = check.options("async.retry", 2, opts, RETRY_OPTIONS)
  local attempts, backoff = opts.attempts or 3, opts.backoff or 0.1
  local max_delay, retry_if = opts.max_delay or 30, opts.retry_if
  check_number("async.retry", "attempts", attempts, 1, true)
  check_number("async.retry", "backoff", backoff, 0)
  check_number("async.retry", "max_delay", max_delay, 0)
  if retry_if ~= nil and not is_callable(retry_if) then
    check.opterror("async.retry", "retry_if", check.expected("function", retry_if))
  end
  check_in_task("async.retry")
  if opts.jitter ~= nil and type(opts.jitter) ~= "boolean" then
    check.opterror("async.retry", "jitter", check.expected("boolean", opts.jitter))
  end
  local jitter = opts.jitter ~= false
  for attempt = 1, attempts do
    local r = pack(pcall(fn, attempt))
    if r[1] then return unpack(r, 2, r.n) end
    local err = r[2]
    if attempt == attempts or is_cancelled(err) or (retry_if and not retry_if(err, attempt)) then
      error(err, 0)
    end
    async.sleep(check.backoff(attempt, backoff, max_delay, jitter))
  end
end
