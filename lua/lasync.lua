-- The Lua side of lasync: the calls that compose the C core (timeouts, run) and the public
-- module table. Scheduling, timers, tasks and gather live in C (bindings/).
local core = ...

local error, pcall, type = error, pcall, type
local format = string.format

local async = {
  version = core.version,
  spawn = core.spawn,
  create_task = core.create_task,
  await = core.await,
  current = core.current,
  now = core.now,
  sleep = core.sleep,
  future = core.future,
  gather = core.gather,
  gather_settled = core.gather_settled,
  is_cancelled = core.is_cancelled,
  is_timeout = core.is_timeout,
  error = core.error,
}

local spawn, in_task, deadline = core.spawn, core._in_task, core._deadline
local is_cancelled = core.is_cancelled

-- The checks below run before any C call, so a misuse is reported at the caller's line, not
-- at a line of this file.
local is_callable = core._is_callable

-- A value's type for misuse messages: a userdata or table by its __name, as luaL_typename.
local function typename(v)
  local mt = getmetatable(v)
  local name = type(mt) == "table" and rawget(mt, "__name")
  return type(name) == "string" and name or type(v)
end

-- The one callable check (task.c): functions and values with __call.
local function check_function(fname, n, fn)
  if not is_callable(fn) then
    error(format("%s: bad argument #%d 'fn' (function expected, got %s)", fname, n, typename(fn)), 3)
  end
end

local function check_seconds(fname, n, s)
  if type(s) ~= "number" then
    error(format("%s: bad argument #%d (number of seconds expected, got %s)", fname, n, type(s)), 3)
  elseif s ~= s or s < 0 then
    error(format("%s: bad argument #%d (seconds must be a number >= 0, got %s)", fname, n, s), 3)
  end
end

local function check_in_task(fname)
  if not in_task() then error(fname .. " must be called inside a task", 3) end
end

local function timeout_error(fname, seconds)
  return core.error("timeout", format("%s: timed out after %g s", fname, seconds),
    { seconds = seconds })
end

-- A Cancelled error raised by the deadline's own expiry becomes a Timeout; anything else
-- (including a cancellation of the whole task) passes through unchanged.
local function finish_timeout(scope, seconds, ok, ...)
  local expired = scope:close()
  if ok then return ... end
  local err = ...
  if expired and is_cancelled(err) then error(timeout_error("async.timeout", seconds), 0) end
  error(err, 0)
end

--- Runs fn(...) in the calling task with a deadline of `seconds`.
function async.timeout(seconds, fn, ...)
  check_seconds("async.timeout", 1, seconds)
  check_function("async.timeout", 2, fn)
  check_in_task("async.timeout")
  return finish_timeout(deadline(seconds, "async.timeout"), seconds, pcall(fn, ...))
end

local function finish_wait_for(scope, task, seconds, ok, ...)
  local expired = scope:close()
  if ok then return ... end
  local err = ...
  if expired and is_cancelled(err) and not task:done() then
    -- As asyncio does, wait for the cancelled task's cleanup before reporting the timeout.
    task:cancel("async.wait_for timed out")
    local settled, outer = pcall(task.await, task)
    if not settled and not task:done() then error(outer, 0) end
    error(timeout_error("async.wait_for", seconds), 0)
  end
  if is_cancelled(err) and not task:done() then
    -- The waiter itself was cancelled: as asyncio's wait_for, the task goes with it, and its
    -- cleanup is awaited (shielded: the waiter's cancellation is already under way).
    task:cancel("async.wait_for's caller was cancelled")
    async.shield(pcall, task.await, task)
  end
  error(err, 0)
end

local function finish_shield(scope, ok, ...)
  scope:close()
  core._checkpoint() -- a cancellation held back while fn ran is delivered now
  if ok then return ... end
  error((...), 0)
end

--- Runs fn(...) in the calling task so that a cancellation of the task waits for fn to finish
--- (cleanup that must complete), then is delivered. Deadlines inside fn still apply.
function async.shield(fn, ...)
  check_function("async.shield", 1, fn)
  check_in_task("async.shield")
  return finish_shield(deadline(math.huge, "async.shield", true), pcall(fn, ...))
end

--- Awaits `task` for at most `seconds`; on expiry cancels it and raises a Timeout.
function async.wait_for(task, seconds)
  if not core._is_task(task) then
    if not is_callable(task) then
      error(format("async.wait_for: bad argument #1 'task' (task or function expected, got %s)",
        typename(task)), 2)
    end
    task = spawn(task) -- a callable becomes the task waited for, as asyncio wraps a coroutine
  end
  check_seconds("async.wait_for", 2, seconds)
  check_in_task("async.wait_for")
  return finish_wait_for(deadline(seconds, "async.wait_for"), task, seconds, pcall(task.await, task))
end

--- Runs fn(...) as a task until it finishes. Outside the loop (stock lua, embedding) it drives
--- the loop, then cancels and awaits whatever fn left behind, like asyncio.run. Inside a task
--- it simply runs fn as a child task and awaits it, so the same script works in both.
-- The child of an async.run called inside a task belongs to the caller: if the caller stops
-- waiting (it is cancelled, or times out), the child is cancelled and its cleanup awaited.
local function finish_child(child, ok, ...)
  if ok then return ... end
  if not child:done() then
    child:cancel()
    async.shield(pcall, child.await, child)
  end
  error((...), 0)
end

function async.run(fn, ...)
  check_function("async.run", 1, fn)
  if in_task() then
    core._check_suspendable("async.run")
    local child = spawn(fn, ...)
    return finish_child(child, pcall(child.await, child))
  end
  local task = spawn(fn, ...)
  if not core._run_until(task, true) then
    error("async.run: deadlock: the main task waits on something that nothing can complete", 2)
  end
  return task:result()
end

async._debug = { counts = core._debug_counts }

-- Diagnostics ---------------------------------------------------------------------------------

async.tasks = core.tasks
async.debug = core.debug

--- Prints the live tasks to `out` (default stderr): a tree by who spawned whom in debug mode,
--- else a list, oldest first, each with its status, age, spawn site and what it waits on.
function async.dump(out)
  if out ~= nil and not ((type(out) == "userdata" or type(out) == "table") and out.write) then
    error(format("async.dump: bad argument #1 'out' (file expected, got %s)", typename(out)), 2)
  end
  out = out or io.stderr
  local list = core.tasks()
  table.sort(list, function(a, b) return a.age > b.age end)
  local children, roots, known = {}, {}, {}
  for _, info in ipairs(list) do known[info.task] = true end
  for _, info in ipairs(list) do
    local parent = info.parent
    if parent and known[parent] then
      children[parent] = children[parent] or {}
      table.insert(children[parent], info)
    else
      roots[#roots + 1] = info
    end
  end
  out:write(format("lasync: %d live task(s)\n", #list))
  local function show(info, depth)
    out:write(format("%s- %s [%s, %.2f s] spawned at %s, waiting on %s\n", ("  "):rep(depth),
      info.name and ("'" .. info.name .. "'") or tostring(info.task), info.status, info.age,
      info.site, info.waiting_on))
    for _, child in ipairs(children[info.task] or {}) do show(child, depth + 1) end
  end
  for _, info in ipairs(roots) do show(info, 1) end
  out:flush()
end

if os.getenv("LASYNC_DEBUG") == "1" then core.debug(true) end


return async
