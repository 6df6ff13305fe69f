-- async.process: child processes without blocking the loop (docs/process.md). The C half
-- (bindings/io/process.c) spawns a child in its own process group with its pipes as streams;
-- this file adds run (capture, feeding, timeouts, limits), shell and the Process object.
local core, async = ...

local raw = core.process
local signals = raw.signals
local format, type, error, pcall, tostring = string.format, type, error, pcall, tostring
local pairs, ipairs, setmetatable, concat = pairs, ipairs, setmetatable, table.concat
local in_task, is_cancelled, is_timeout = core._in_task, async.is_cancelled, async.is_timeout

local DEFAULT_MAX_OUTPUT = 64 << 20
local DEFAULT_KILL_GRACE = 5
local PIPE_LINGER = 1 -- seconds granted to pipes after the group was killed
local MAX_SIGNAL = 64 -- Linux's last real-time signal: a larger number is no signal at all

local process = { signals = signals }

-- Raised at the line that called async.process.*, however deep the check (core._check).
local misuse = core._check.misuse

local function check_argv(fname, argv)
  if type(argv) ~= "table" then
    misuse(format("%s: bad argument #1 'argv' (array of strings expected, got %s)", fname,
      type(argv)))
  end
  local n = #argv
  if n == 0 or argv[1] == "" then
    misuse(format("%s: bad argument #1 'argv' (the program to run is missing)", fname))
  end
  local args = {}
  for i = 1, n do
    local a = argv[i]
    if type(a) ~= "string" then
      misuse(format("%s: bad argument #1 'argv' (argv[%d] is a %s, strings expected)", fname, i,
        type(a)))
    end
    if a:find("\0", 1, true) then
      misuse(format("%s: bad argument #1 'argv' (argv[%d] contains a NUL byte)", fname, i))
    end
    args[i] = a
  end
  return args
end

local function opterror(fname, opt, expected, v)
  misuse(format("%s: bad option '%s' (%s expected, got %s)", fname, opt, expected,
    type(v) == "string" and ("'" .. v .. "'") or type(v)))
end

-- The options each call knows: anything else is a misspelling, refused at the call.
local SPAWN_OPTIONS = { cwd = true, env = true, clear_env = true, stdin = true, stdout = true,
  stderr = true }
local RUN_OPTIONS = { timeout = true, kill_grace = true, max_output = true, check = true }
for k in pairs(SPAWN_OPTIONS) do RUN_OPTIONS[k] = true end

local function check_opts(fname, opts, known)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    misuse(format("%s: bad argument #2 'opts' (table expected, got %s)", fname, type(opts)))
  end
  core._check.options(fname, 2, opts, known)
  if opts.cwd ~= nil and type(opts.cwd) ~= "string" then
    opterror(fname, "cwd", "string", opts.cwd)
  elseif opts.cwd and opts.cwd:find("\0", 1, true) then
    opterror(fname, "cwd", "string without NUL", "(a string with a NUL byte)")
  end
  if opts.env ~= nil and type(opts.env) ~= "table" then
    opterror(fname, "env", "table", opts.env)
  end
  for _, k in ipairs({ "timeout", "kill_grace" }) do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
      opterror(fname, k, "number of seconds >= 0", v)
    end
  end
  local m = opts.max_output
  if m ~= nil and (math.type(m) ~= "integer" or m < 0) then
    opterror(fname, "max_output", "integer >= 0", m)
  end
  return opts
end

-- The child's environment: nil (inherit) unless env or clear_env asks for another.
local function build_env(fname, opts)
  if opts.env == nil and not opts.clear_env then return nil end
  local merged = opts.clear_env and {} or raw.environ()
  for k, v in pairs(opts.env or {}) do
    if type(k) ~= "string" or k == "" or k:find("[=%z]") then
      misuse(format("%s: bad option 'env' (variable names are strings without '=', got %s)", fname,
        tostring(k)))
    end
    if v == false then
      merged[k] = nil
    elseif type(v) == "string" or type(v) == "number" then
      v = tostring(v)
      if v:find("\0", 1, true) then
        misuse(format("%s: bad option 'env' (the value of %s contains a NUL byte)", fname, k))
      end
      merged[k] = v
    else
      misuse(format("%s: bad option 'env' (value of %s: string, number or false expected, got %s)",
        fname, k, type(v)))
    end
  end
  local list = {}
  for k, v in pairs(merged) do list[#list + 1] = k .. "=" .. v end
  return list
end

local function signum(fname, sig)
  if sig == nil then return signals.SIGTERM end
  if math.type(sig) == "integer" and sig > 0 and sig <= MAX_SIGNAL then return sig end
  if type(sig) == "string" then
    local n = signals[sig] or signals["SIG" .. sig]
    if n then return n end
  end
  misuse(format("%s: bad argument #2 'signal' (a signal name such as \"SIGTERM\" or a number "
    .. "expected, got %s)", fname, tostring(sig)))
end

-- Process --------------------------------------------------------------------------------------

local Process = { __name = "lasync.Process" }
Process.__index = Process

local function close_pipes(p)
  for _, s in ipairs({ p.stdin or false, p.stdout or false, p.stderr or false }) do
    if s then s:close() end
  end
end

local function start(fname, args, opts, kinds)
  local env = build_env(fname, opts)
  local h, pid, i, o, e = raw.spawn(args, opts.cwd, env, kinds[1], kinds[2], kinds[3])
  return setmetatable({ pid = pid, stdin = i, stdout = o, stderr = e, argv = args, _h = h },
    Process)
end

--- p:wait() -> {code, signal, ok}: waits for the exit.
function Process:wait() return self._h:wait() end

-- nil after close would read as "still running", and false as "already exited".
local function check_open(p, fname)
  if p._closed then
    error(core.error("closed", fname .. ": the process object is closed"), 3)
  end
end

--- p:status() -> {code, signal, ok}, or nil while the child runs.
function Process:status()
  check_open(self, "process:status")
  return self._h:status()
end

--- p:kill([signal]) -> whether it was sent: to the child's whole group, never after the exit.
function Process:kill(sig)
  local n = signum("process:kill", sig)
  check_open(self, "process:kill")
  return self._h:kill(n)
end

--- p:close(), <close>: kills a running child (and its group), reaps it, closes the pipes.
function Process:close()
  if self._closed then return end
  self._closed = true
  local h = self._h
  local function release()
    close_pipes(self)
    h:close() -- if it still runs (no task to wait in), the handle layer kills and reaps it
  end
  if h:status() then return release() end
  h:kill(signals.SIGKILL)
  if not (in_task() and coroutine.isyieldable()) then return release() end
  -- The shield delivers a pending cancellation once it ends: release first, inside it.
  async.shield(function()
    pcall(h.wait, h)
    release()
  end)
end
Process.__close = Process.close
core._check.methods(Process, "process") -- p.wait() says "call it with ':'"

local function check_kinds(fname, opts)
  local kinds = {}
  for i, k in ipairs({ "stdin", "stdout", "stderr" }) do
    local v = opts[k]
    if v == nil then v = "inherit" end
    if v ~= "pipe" and v ~= "inherit" and v ~= "null" then
      opterror(fname, k, "\"pipe\", \"inherit\" or \"null\"", v)
    end
    kinds[i] = v
  end
  return kinds
end

--- process.spawn(argv [, opts]) -> Process with pid and, for "pipe", stdin/stdout/stderr streams.
function process.spawn(argv, opts)
  local fname = "async.process.spawn"
  local args = check_argv(fname, argv)
  opts = check_opts(fname, opts, SPAWN_OPTIONS)
  return start(fname, args, opts, check_kinds(fname, opts))
end

-- run --------------------------------------------------------------------------------------------

local function too_large(args, max)
  return core.error("too_large", format("async.process.run: '%s' wrote more than max_output "
    .. "(%d bytes)", args[1], max), { max_output = max })
end

-- A stream error (the child closed its end) ends reading or feeding; a cancellation goes on.
local function passes(err) return is_cancelled(err) end

function process.run(argv, opts)
  local fname = "async.process.run"
  local args = check_argv(fname, argv)
  opts = check_opts(fname, opts, RUN_OPTIONS)
  local stdin = opts.stdin
  if stdin == nil then stdin = "null" end
  local tin = type(stdin)
  if not (tin == "string" or tin == "table" or tin == "function") then
    opterror(fname, "stdin", "a string, an array of strings, a function or \"null\"", stdin)
  end
  local sinks, kinds = {}, {}
  kinds[1] = (stdin == "null" or stdin == "inherit") and stdin or "pipe"
  for i, k in ipairs({ "stdout", "stderr" }) do
    local v = opts[k]
    if v == nil then v = "capture" end
    if type(v) == "function" or v == "capture" then
      kinds[i + 1], sinks[i] = "pipe", v
    elseif v == "inherit" or v == "null" then
      kinds[i + 1] = v
    else
      opterror(fname, k, "\"capture\", \"inherit\", \"null\" or a function", v)
    end
  end
  if not in_task() then misuse(fname .. " must be called inside a task") end
  local max = opts.max_output or DEFAULT_MAX_OUTPUT
  local grace = opts.kill_grace or DEFAULT_KILL_GRACE

  local p = start(fname, args, opts, kinds)
  local h = p._h
  local total, failure = 0, nil
  local captured = { {}, {} }
  local helpers = {}

  local function fail(err)
    if failure == nil then
      failure = err
      h:kill(signals.SIGKILL, true)
    end
  end

  -- Runs under guarded (below): a pipe ends with nil, so an error here (a read's, the sink's,
  -- memory) fails the run.
  local function reader(stream, sink, parts)
    while true do
      local chunk = stream:read()
      if chunk == nil then return end
      total = total + #chunk
      if total > max then return fail(too_large(args, max)) end
      if sink == "capture" then
        parts[#parts + 1] = chunk
      else
        sink(chunk)
      end
    end
  end

  local function feeder(stream)
    local function put(s)
      if type(s) ~= "string" then
        fail(core.error("misuse", format("%s: stdin produced a %s, strings expected", fname,
          type(s))))
        return false
      end
      local ok, err = pcall(stream.write, stream, s)
      if not ok and passes(err) then error(err, 0) end
      return ok -- a write error: the child closed its stdin, it wants no more
    end
    if tin == "string" then
      put(stdin)
    elseif tin == "table" then
      for _, s in ipairs(stdin) do if not put(s) then break end end
    else
      while true do
        local ok, s = pcall(stdin)
        if not ok then
          if passes(s) then error(s, 0) end
          fail(s)
          break
        end
        if s == nil or not put(s) then break end
      end
    end
    stream:close()
  end

  -- A helper that fails (at the memory cap, a chunk may not fit) fails the run: left alone, the
  -- child would block on a pipe nobody reads and the wait below would never end.
  local function guarded(fn, ...)
    local ok, err = pcall(fn, ...)
    if not ok then
      if passes(err) then error(err, 0) end
      fail(err)
    end
  end

  if p.stdin then helpers[#helpers + 1] = async.spawn(guarded, feeder, p.stdin) end
  if p.stdout then
    helpers[#helpers + 1] = async.spawn(guarded, reader, p.stdout, sinks[1], captured[1])
  end
  if p.stderr then
    helpers[#helpers + 1] = async.spawn(guarded, reader, p.stderr, sinks[2], captured[2])
  end

  local function pipes_held()
    for _, t in ipairs(helpers) do if not t:done() then return true end end
    return false
  end

  local function all_done()
    local status = h:wait()
    for _, t in ipairs(helpers) do t:await() end
    return status
  end

  local timed_out = false
  local ok, status = pcall(function()
    if not opts.timeout then return all_done() end
    local ok, res = pcall(async.timeout, opts.timeout, all_done)
    if ok then return res end
    if not is_timeout(res) then error(res, 0) end
    timed_out = true
    -- SIGTERM to the group; SIGKILL after the grace; then the pipes get a moment to end.
    h:kill(signals.SIGTERM, pipes_held())
    ok, res = pcall(async.timeout, grace, all_done)
    if ok then return res end
    if not is_timeout(res) then error(res, 0) end
    h:kill(signals.SIGKILL, pipes_held())
    local st = h:wait()
    local linger_end = async.now() + PIPE_LINGER -- one second for all the pipes, not each
    for _, t in ipairs(helpers) do
      local left = linger_end - async.now()
      if not t:done() and left > 0 then pcall(async.wait_for, t, left) end
    end
    return st
  end)

  -- Whatever happened, the child and every helper are gone before this returns.
  async.shield(function()
    if not ok or failure then
      h:kill(signals.SIGKILL, pipes_held())
      if not h:status() then pcall(h.wait, h) end
    end
    for _, t in ipairs(helpers) do
      if not t:done() then t:cancel() end
      pcall(t.await, t)
    end
    close_pipes(p)
    h:close()
  end)
  if not ok then error(status, 0) end
  if failure then error(failure, 0) end

  local r = {
    code = status.code, signal = status.signal, ok = status.ok and not timed_out,
    timed_out = timed_out, pid = p.pid,
    stdout = sinks[1] == "capture" and concat(captured[1]) or nil,
    stderr = sinks[2] == "capture" and concat(captured[2]) or nil,
  }
  if opts.check and not r.ok then
    local what = r.timed_out and format("timed out after %g s", opts.timeout)
      or r.signal and format("was killed by signal %d", r.signal)
      or format("exited with code %d", r.code)
    error(core.error("exit", format("%s: '%s' %s", fname, args[1], what), {
      code = r.code, signal = r.signal, timed_out = r.timed_out, stdout = r.stdout,
      stderr = r.stderr, argv = args }), 2)
  end
  return r
end

--- process.shell(command [, opts]): run({"/bin/sh", "-c", command}, opts).
function process.shell(command, opts)
  if type(command) ~= "string" then
    misuse(format("async.process.shell: bad argument #1 'command' (string expected, got %s)",
      type(command)))
  end
  return process.run({ "/bin/sh", "-c", command }, opts)
end

async.process = process
