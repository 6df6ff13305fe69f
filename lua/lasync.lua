-- The Lua side of lasync: the calls that compose the C core (timeouts, run) and the public
-- module table. Scheduling, timers, tasks and gather live in C (bindings/).
local core = ...

local error, pairs, pcall, rawget, type = error, pairs, pcall, rawget, type
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
  buffer = core.buffer,
  gather = core.gather,
  gather_settled = core.gather_settled,
  is_cancelled = core.is_cancelled,
  is_timeout = core.is_timeout,
  error = core.error,
}

local spawn, in_task, deadline = core.spawn, core._in_task, core._deadline
local is_cancelled = core.is_cancelled
local getinfo, getmetatable, mtype, tostring = debug.getinfo, getmetatable, math.type, tostring
local LIB_SOURCE = "=[lasync]" -- the chunk name of every embedded file (bindings/lasync.c)

-- ---- misuse: one format, reported at the user's line ----
--
-- These mirror bindings/core/errors.c (lasync__argerror, lasync__opterror) and are shared by
-- every file of lua/ through core._check, so a message reads the same whichever side raised it:
--   async.sleep: bad argument #1 'seconds' (number expected, got string)
--   async.retry: bad option 'attemps' (unknown option)
-- The position is the first caller outside lasync's own code (and outside C functions such as
-- pcall), never a line of lua/*.lua: how deep the check sits does not matter.

local check = {}
core._check = check

local function user_level()
  local level = 3 -- 1 is this function, 2 is misuse(), 3 its caller
  while true do
    local info = getinfo(level, "S")
    if not info then return 0 end
    if info.source ~= LIB_SOURCE and info.what ~= "C" then return level - 1 end
    level = level + 1
  end
end

--- Raises msg (a string) as misuse, at the user's line.
local function misuse(msg) error(msg, user_level()) end
check.misuse = misuse

--- The type of v for a message: a value whose metatable has a string __name shows as that
--- (lasync.Future, lasync.Semaphore), as luaL_typeerror does.
local function typename(v)
  local mt = getmetatable(v)
  if type(mt) == "table" and type(rawget(mt, "__name")) == "string" then return mt.__name end
  return type(v)
end
check.typename = typename

function check.argerror(fname, n, argname, expected, v)
  if argname then
    misuse(format("%s: bad argument #%d '%s' (%s expected, got %s)", fname, n, argname, expected,
      typename(v)))
  end
  misuse(format("%s: bad argument #%d (%s expected, got %s)", fname, n, expected, typename(v)))
end

--- "fname: bad option 'opt' (why)"; option_message gives the text for callers that raise it in
--- an error object (async.fetch's kind "invalid").
local function option_message(fname, opt, why)
  return format("%s: bad option '%s' (%s)", fname, tostring(opt), why)
end
check.option_message = option_message

function check.opterror(fname, opt, why) misuse(option_message(fname, opt, why)) end

--- "integer >= 1 expected, got string"; a number of the right type but out of range shows
--- its value ("got 0.5").
function check.expected(what, v)
  if type(v) == "number" and (what:find("^integer") or what:find("^number")) then
    return format("%s expected, got %s", what, tostring(v))
  end
  return format("%s expected, got %s", what, typename(v))
end

--- The message for a key of an options table that is no option, one wording with C's
--- lasync__check_options: "bad option 'timeot' (unknown option)", or, for a key that is not a
--- string, "bad option key (string expected, got number)".
local function unknown_option_message(fname, k)
  if type(k) ~= "string" then
    return format("%s: bad option key (string expected, got %s)", fname, typename(k))
  end
  return option_message(fname, k, "unknown option")
end
check.unknown_option_message = unknown_option_message

--- An options table (nil: {}); unknown names are misuse. known: a set of names.
function check.options(fname, n, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then check.argerror(fname, n, "options", "table", opts) end
  for k in pairs(opts) do
    if type(k) ~= "string" or not known[k] then misuse(unknown_option_message(fname, k)) end
  end
  return opts
end

--- A number option >= least (integer: a whole number); nil passes.
function check.number_option(fname, opt, v, least, integer)
  if v == nil then return end
  if type(v) ~= "number" or v ~= v or v < least or (integer and mtype(v) ~= "integer") then
    check.opterror(fname, opt, check.expected(format("%s >= %s", integer and "integer" or
      "number", least), v))
  end
end

-- The one callable check, in task.c (spawn and gather use it there): functions and values with
-- a __call function.
local is_callable = core._is_callable
check.is_callable = is_callable

function check.callable(fname, n, argname, fn)
  if not is_callable(fn) then check.argerror(fname, n, argname, "function", fn) end
end

--- For a call that suspends: in a task, and where Lua can yield (not in a table.sort
--- comparator...), naming the call the user made. no_yield: the call needs the task only.
local isyieldable = coroutine.isyieldable
local function check_in_task(fname, no_yield)
  if not in_task() then misuse(fname .. " must be called inside a task") end
  if not no_yield and not isyieldable() then
    misuse(fname .. " cannot suspend here: the task is inside a C call that cannot yield " ..
      "(a table.sort comparator, a string.gsub callback, require, a __gc, a debug hook ...)")
  end
end
check.in_task = check_in_task

--- A method called with '.' instead of ':' (or on the wrong object).
function check.self(self, mt, fname)
  if getmetatable(self) ~= mt then
    misuse(format("%s: bad self (%s expected, got %s); call it with ':'", fname,
      rawget(mt, "__name") or "object", typename(self)))
  end
end

--- Wraps every method of the class mt (its functions but the metamethods) so that one called
--- with '.' instead of ':' says so, whichever method it is. prefix names them: "queue".
--- methods: the table they are in, when it is not mt itself (mt.__index, or the table a
--- function __index looks in, which is then also mt.__methods, for spec/method_self_spec.lua).
function check.methods(mt, prefix, methods)
  methods = methods or mt
  if methods ~= mt and type(rawget(mt, "__index")) == "function" then mt.__methods = methods end
  for k, f in pairs(methods) do
    if type(f) == "function" and type(k) == "string" and not k:find("^__") then
      local fname = prefix .. ":" .. k
      methods[k] = function(self, ...)
        if getmetatable(self) ~= mt then check.self(self, mt, fname) end
        return f(self, ...)
      end
    end
  end
end

--- The delay before retry number `attempt` + 1: exponential from `backoff`, capped at
--- `max_delay`, scaled by a random factor in [0.5, 1] with jitter. async.retry and fetch's
--- retries share it.
function check.backoff(attempt, backoff, max_delay, jitter)
  -- A zero backoff stays zero: past 1,024 attempts 2^n is inf, and 0 * inf is NaN.
  if backoff == 0 then return 0 end
  local delay = math.min(backoff * 2 ^ (attempt - 1), max_delay)
  if jitter then delay = delay * (0.5 + 0.5 * math.random()) end
  return delay
end

-- The checks below run before any C call.
local function check_function(fname, n, argname, fn)
  check.callable(fname, n, argname, fn)
end

local function check_seconds(fname, n, argname, s)
  if type(s) ~= "number" then
    check.argerror(fname, n, argname, "number", s)
  elseif s ~= s or s < 0 then
    misuse(format("%s: bad argument #%d '%s' (number >= 0 expected, got %s)", fname, n, argname,
      tostring(s)))
  end
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
  check_seconds("async.timeout", 1, "seconds", seconds)
  check_function("async.timeout", 2, "fn", fn)
  check_in_task("async.timeout")
  -- <close>: closed as an error unwinds even if finish_timeout never runs (timer.c)
  local scope <close> = deadline(seconds, "async.timeout")
  return finish_timeout(scope, seconds, pcall(fn, ...))
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
  check_function("async.shield", 1, "fn", fn)
  check_in_task("async.shield")
  local scope <close> = deadline(math.huge, "async.shield", true)
  return finish_shield(scope, pcall(fn, ...))
end

--- Awaits `task` for at most `seconds`; on expiry cancels it and raises a Timeout.
function async.wait_for(task, seconds)
  if not core._is_task(task) then
    if not is_callable(task) then
      check.argerror("async.wait_for", 1, "task", "task or function", task)
    end
    task = spawn(task) -- a callable becomes the task waited for, as asyncio wraps a coroutine
  end
  check_seconds("async.wait_for", 2, "seconds", seconds)
  check_in_task("async.wait_for")
  if task == core.current() then misuse("async.wait_for: a task cannot wait for itself") end
  local scope <close> = deadline(seconds, "async.wait_for")
  return finish_wait_for(scope, task, seconds, pcall(task.await, task))
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
  check_function("async.run", 1, "fn", fn)
  if in_task() then
    check_in_task("async.run")
    local child = spawn(fn, ...)
    return finish_child(child, pcall(child.await, child))
  end
  local task = spawn(fn, ...)
  if not core._run_until(task, true) then
    check.misuse("async.run: deadlock: the main task waits on something that nothing can complete")
  end
  return task:result()
end

async._debug = { counts = core._debug_counts, starve_next_start = core._debug_starve_next,
  fail_next_spawn = core._debug_fail_next_spawn, fail_next_alloc = core._debug_fail_next_alloc,
  spawn_helper = core._spawn_helper }
async._cancel_others = core._cancel_others -- lua/host.lua's, when the main chunk fails

-- Diagnostics ---------------------------------------------------------------------------------

async.tasks = core.tasks
async.debug = core.debug

--- Prints the live tasks to `out` (default stderr): a tree by who spawned whom in debug mode,
--- else a list, oldest first, each with its status, age, site and what it waits on.
function async.dump(out)
  out = out or io.stderr
  if type(out) ~= "userdata" and type(out) ~= "table" or type(out.write) ~= "function" then
    check.argerror("async.dump", 1, "out", "file", out)
  end
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
    out:write(format("%s- %s [%s, %.2f s] at %s, waiting on %s\n", ("  "):rep(depth),
      info.name and ("'" .. info.name .. "'") or tostring(info.task), info.status, info.age,
      info.site, info.waiting_on))
    for _, child in ipairs(children[info.task] or {}) do show(child, depth + 1) end
  end
  for _, info in ipairs(roots) do show(info, 1) end
  out:flush()
end

if os.getenv("LASYNC_DEBUG") == "1" then core.debug(true) end


return async
