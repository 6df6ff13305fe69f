-- Worker threads: async.to_thread (alias async.run_in_executor) and async.thread.pool.
--
-- The C side (bindings/thread/) queues jobs and copies values; this file makes a cancelled
-- task wait, shielded, until the worker has really stopped its job before Cancelled goes on,
-- so no job keeps running after its task has gone.
local core, async = ...

local error, pcall, type, setmetatable = error, pcall, type, setmetatable
local format = string.format
local submit, await_job, stopped = core._thread_submit, core._thread_await, core._thread_stopped
local wait_space, default_pool = core._thread_wait_space, core._thread_default
local is_cancelled = core.is_cancelled

local function finish(job, ok, ...)
  if ok then return ... end
  local err = ...
  if is_cancelled(err) then async.shield(stopped, job) end
  error(err, 0)
end

local function await(job) return finish(job, pcall(await_job, job)) end
core._thread_set_await(await)

-- Misuse is reported at the caller's line, as the rest of the module does.
local function check(fname, fn)
  local ok, err = pcall(core._thread_check, fname, fn)
  if not ok then error(err, 3) end
end

local function run(fname, pool, fn, ...)
  local job = submit(fname, pool, fn, ...)
  while not job do -- the queue is full (max_queue): wait for room, then try again
    wait_space(pool)
    job = submit(fname, pool, fn, ...)
  end
  return finish(job, pcall(await_job, job))
end

local Pool = {}

--- Runs fn(...) on a worker of this pool; the calling task suspends until it returns.
function Pool:run(fn, ...)
  check("pool:run", fn)
  return run("pool:run", self, fn, ...)
end

--- Runs fn(item) for each item of the array on the pool; the results in order, like async.map.
function Pool:map(fn, items)
  check("pool:map", fn)
  if type(items) ~= "table" then
    -- #3: self is #1 and fn #2, as check_fn (bindings/thread/pool.c) numbers them
    core._check.misuse(format("pool:map: bad argument #3 'items' (table expected, got %s)",
      type(items)))
  end
  local pool = self
  return async.map(function(item) return (run("pool:map", pool, fn, item)) end, items,
    { concurrency = 2 * core._thread_size(pool) })
end

--- Cancels what is queued, waits for the running jobs, joins the threads (also <close>).
Pool.close = core._thread_close

--- The number of threads the pool runs at most.
function Pool:size() return core._thread_size(self) end

core._thread_pool_mt.__index = Pool
core._check.methods(core._thread_pool_mt, "pool", Pool) -- pool.run(fn) says "call it with ':'"

--- Runs fn(...) on the default pool and returns its values; other tasks run meanwhile.
function async.to_thread(fn, ...)
  check("async.to_thread", fn)
  return run("async.to_thread", default_pool(), fn, ...)
end
async.run_in_executor = async.to_thread

async.thread = {
  --- A pool of its own: { size = n, max_queue = n, max_memory = MiB }.
  pool = core._thread_pool,
}

setmetatable(async.thread, { __index = function(_, k)
  if k == "default" then return default_pool() end
end })
