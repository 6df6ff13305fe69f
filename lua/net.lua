-- async.net: TCP connections and servers, on the C streams (bindings/io/stream.c, net.c).
--
-- The C side does one thing per call (resolve a name, connect to one address, accept one
-- connection); the policy is here: trying each address in turn under one deadline, a task per
-- accepted connection, pausing at max_connections, and a graceful close.
local core, async = ...

local error, getmetatable, pairs, pcall = error, getmetatable, pairs, pcall
local setmetatable, tostring, type, xpcall = setmetatable, tostring, type, xpcall
local format, mtype = string.format, math.type
local traceback = debug.traceback
local resolve, connect_ip, listen_ip = core._net_resolve, core._net_connect, core._net_listen
local report, in_task, is_cancelled = core._net_report, core._in_task, core.is_cancelled
local spawn, deadline, new_error = core.spawn, core._deadline, core.error

local DEFAULT_CONNECT_TIMEOUT = 30 -- seconds: a connect never waits forever by default

local net = {}
async.net = net

-- Misuse: core._check's format, at the user's line (lua/lasync.lua).
local check = core._check
local misuse = check.misuse

local function bad_arg(fname, n, name, expected, v) check.argerror(fname, n, name, expected, v) end

local function bad_opt(fname, name, expected, v)
  check.opterror(fname, name, check.expected(expected, v))
end

local function check_port(fname, n, port)
  if mtype(port) ~= "integer" then bad_arg(fname, n, "port", "integer", port) end
  if port < 0 or port > 65535 then
    misuse(format("%s: bad argument #%d 'port' (0 to 65535 expected, got %d)", fname, n, port))
  end
end

local function check_seconds_opt(fname, name, v)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0) then
    bad_opt(fname, name, "number of seconds >= 0", v)
  end
end

local function is_callable(fn)
  if type(fn) == "function" then return true end
  local mt = getmetatable(fn)
  return type(mt) == "table" and type(mt.__call) == "function"
end

--- async.net.resolve(name) -> {"127.0.0.1", "::1", ...}; raises kind "dns".
function net.resolve(name)
  if type(name) ~= "string" then bad_arg("async.net.resolve", 1, "name", "string", name) end
  if name:find("\0", 1, true) then
    bad_arg("async.net.resolve", 1, "name", "string without NUL", name)
  end
  if not in_task() then misuse("async.net.resolve must be called inside a task") end
  return resolve(name)
end

local function try_addresses(host, port)
  local addrs = resolve(host)
  local last
  for i = 1, #addrs do
    local ok, conn = pcall(connect_ip, addrs[i], port)
    if ok then return conn end
    if is_cancelled(conn) then error(conn, 0) end
    last = conn
  end
  error(last or new_error("dns", format("resolving '%s': no address", host)), 0)
end

local function finish_connect(scope, host, port, seconds, ok, ...)
  local expired = scope:close()
  if ok then return ... end
  local err = ...
  if expired and is_cancelled(err) then
    error(new_error("timeout", format(
      "async.net.connect: connecting to %s port %d timed out after %g s", host, port, seconds),
      { seconds = seconds, host = host, port = port }), 0)
  end
  error(err, 0)
end

-- The options each call knows: anything else is a misspelling, refused at the call.
local CONNECT_OPTIONS = { timeout = true }
local LISTEN_OPTIONS = { host = true, port = true, backlog = true, max_connections = true,
  on_error = true }
local CLOSE_OPTIONS = { grace = true }

--- async.net.connect(host, port [, {timeout = s}]) -> Stream (conn.remote, conn.local).
function net.connect(host, port, opts)
  local fname = "async.net.connect"
  -- C would read a host with a NUL up to it: "127.0.0.1\0evil" must not reach 127.0.0.1
  if type(host) ~= "string" then bad_arg(fname, 1, "host", "string", host) end
  if host:find("\0", 1, true) then bad_arg(fname, 1, "host", "string without NUL", host) end
  check_port(fname, 2, port)
  opts = check.options(fname, 3, opts, CONNECT_OPTIONS)
  local seconds = opts.timeout
  check_seconds_opt(fname, "timeout", seconds)
  if not in_task() then misuse(fname .. " must be called inside a task") end
  seconds = seconds or DEFAULT_CONNECT_TIMEOUT
  local scope <close> = deadline(seconds, fname) -- closed even if an error skips the finish
  return finish_connect(scope, host, port, seconds, pcall(try_addresses, host, port))
end

-- ---- servers ----

local Server = { __name = "lasync.Server" }
Server.__index = Server

local function handler_done(srv, task)
  if srv.tasks[task] then
    srv.tasks[task] = nil
    srv.active = srv.active - 1
  end
  local f = srv.slot
  if f and srv.active < srv.max then
    srv.slot = nil
    f:set(true)
  end
  local idle = srv.idle
  if idle and srv.active == 0 then
    srv.idle = nil
    idle:set(true)
  end
end

local function run_handler(srv, conn)
  local me = async.current()
  if srv.tasks[me] then srv.tasks[me] = true end -- started: no longer the reaper's to close
  local trace
  local ok, err = xpcall(srv.handler, function(e)
    local shown, text = pcall(tostring, e)
    trace = traceback(shown and text or "(an error object that cannot be shown)", 2)
    return e
  end, conn)
  -- A close that fails (out of memory at the cap) must not skip giving the slot back: the
  -- server's close waits for every slot. The handle's own __gc closes it then.
  local closed, close_err = pcall(conn.close, conn)
  handler_done(srv, me)
  if ok and not closed then ok, err = false, close_err end
  if not ok and not is_cancelled(err) then
    srv.failures = srv.failures + 1
    -- Reported once, here; the task itself ends normally so it is not reported again.
    if srv.on_error then return srv.on_error(err, conn) end
    local remote = conn.remote
    report(format("async.net.listen: the handler failed for the connection from %s port %s:\n%s",
      remote and remote.host or "?", remote and remote.port or "?", trace or tostring(err)))
  end
end

-- A handler task that cannot start (no memory for its coroutine at the cap) fails before its
-- first line: its client would wait and max_connections would shrink for good. The reaper
-- wakes only when some task could not start (nothing is paid per connection), closes the
-- connections whose handler never ran and gives their slots back. The reaper and the accept
-- loop are helper tasks (core._spawn_helper): a memory error that ends either outside its
-- protected calls starts its function again, and the reaper begins with a pass.
local function reaper(srv)
  while true do
    for task, conn in pairs(srv.tasks) do
      if conn ~= true and task:done() then
        conn:close()
        handler_done(srv, task)
      end
    end
    core._await_starved()
  end
end

local function accept_loop(srv)
  local handle = srv.handle
  while true do
    while srv.active >= srv.max do
      local f = core.future()
      srv.slot = f
      f:await()
    end
    local ok, conn = pcall(handle.accept, handle)
    if not ok then
      if is_cancelled(conn) then error(conn, 0) end
      if type(conn) == "table" and conn.kind == "closed" then return end
      -- Out of descriptors or memory: the server goes on after a pause, as a busy server must.
      report("async.net.listen: " .. tostring(conn))
      async.sleep(0.1)
    else
      local task = spawn(run_handler, srv, conn)
      srv.tasks[task] = conn -- true once the handler has started
      srv.active = srv.active + 1
    end
  end
end

--- async.net.listen({host =, port = 0, backlog = 511, max_connections =}, handler) -> Server
function net.listen(opts, handler)
  local fname = "async.net.listen"
  if type(opts) ~= "table" then bad_arg(fname, 1, "options", "table", opts) end
  check.options(fname, 1, opts, LISTEN_OPTIONS)
  if not is_callable(handler) then bad_arg(fname, 2, "handler", "function", handler) end
  local host, port = opts.host or "127.0.0.1", opts.port or 0
  if type(host) ~= "string" then bad_opt(fname, "host", "string", host) end
  if host:find("\0", 1, true) then bad_opt(fname, "host", "string without NUL", host) end
  if mtype(port) ~= "integer" then bad_opt(fname, "port", "integer", port) end
  if port < 0 or port > 65535 then
    misuse(format("%s: bad option 'port' (0 to 65535 expected, got %d)", fname, port))
  end
  local backlog, max = opts.backlog or 511, opts.max_connections
  if mtype(backlog) ~= "integer" or backlog < 0 then
    bad_opt(fname, "backlog", "integer >= 0", backlog)
  end
  if max ~= nil and (mtype(max) ~= "integer" or max < 1) then
    bad_opt(fname, "max_connections", "integer >= 1", max)
  end
  local on_error = opts.on_error
  if on_error ~= nil and not is_callable(on_error) then
    bad_opt(fname, "on_error", "function", on_error)
  end
  local ip = host
  if not host:find("^[%d.]+$") and not host:find(":") then
    if not in_task() then misuse(fname .. ": a host name needs a task to be resolved in") end
    ip = resolve(host)[1]
  end
  local handle = listen_ip(ip, port, backlog)
  local addr = handle:address()
  local srv = setmetatable({
    handle = handle, handler = handler, on_error = on_error, host = addr.host, port = addr.port,
    max = max or math.huge, active = 0, tasks = {}, failures = 0,
  }, Server)
  srv.acceptor = core._spawn_helper(accept_loop, srv)
  srv.reaper = core._spawn_helper(reaper, srv)
  return srv
end

--- srv:close([{grace = s}]): stops accepting; with grace, waits up to s seconds for the
--- handlers to finish, then cancels the rest and waits for their cleanup.
function Server:close(opts)
  check.self(self, Server, "server:close")
  opts = check.options("server:close", 1, opts, CLOSE_OPTIONS)
  local grace = opts.grace
  check_seconds_opt("server:close", "grace", grace)
  if not self.closed then
    self.closed = true
    self.handle:close()
    self.acceptor:cancel("server closed")
    self.reaper:cancel("server closed")
  end
  if grace == nil then return end
  if not in_task() then misuse("server:close{grace} must be called inside a task") end
  if self.active > 0 then
    local idle = self.idle or core.future()
    self.idle = idle
    local ok, err = pcall(async.timeout, grace, idle.await, idle)
    if not ok and is_cancelled(err) then
      for task in pairs(self.tasks) do task:cancel("server closed") end
      error(err, 0)
    end
  end
  local left = {}
  for task in pairs(self.tasks) do
    task:cancel("server closed")
    left[#left + 1] = task
  end
  for i = 1, #left do pcall(left[i].await, left[i]) end
  pcall(self.acceptor.await, self.acceptor)
  pcall(self.reaper.await, self.reaper)
end

function Server:__close() self:close() end

function Server:__tostring()
  return format("lasync.Server (%s port %d, %s)", self.host, self.port,
    self.closed and "closed" or "open")
end

check.methods(Server, "server") -- srv.close() says "call it with ':'"

return net
