-- async.http.serve and async.http.router: the policy of the HTTP server. The C half
-- (bindings/http/server.c) accepts, parses with llhttp, enforces the limits and queues each
-- complete request head; here one dispatcher task per server takes them and spawns a task per
-- request, and what a handler returns becomes the response.
local core, async = ...

local error, getmetatable, pairs, ipairs, pcall = error, getmetatable, pairs, ipairs, pcall
local setmetatable, tostring, type, xpcall, select = setmetatable, tostring, type, xpcall, select
local format, lower, concat, char = string.format, string.lower, table.concat, string.char
local tonumber, mtype, rawget, rawset = tonumber, math.type, rawget, rawset
local traceback = debug.traceback
local listen, spawn, is_cancelled, in_task = core._http_listen, core.spawn, core.is_cancelled,
  core._in_task
local task_ended, spawn_helper = core._task_ended, core._spawn_helper
local report = core._net_report

local http = async.http
local cjson
local function json_lib()
  cjson = cjson or require "cjson"
  return cjson
end

-- Misuse in core._check's format, at the user's line however deep the check sits.
local check = core._check
local bad_arg = check.argerror

local function bad_opt(fname, name, expected, v)
  check.opterror(fname, name, format("%s expected, got %s", expected, check.typename(v)))
end

local function is_callable(fn)
  if type(fn) == "function" then return true end
  local mt = getmetatable(fn)
  return type(mt) == "table" and mt.__call ~= nil
end

-- ---- URLs ----

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function path_unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- "a=1&b=2&a=3" -> {a = {"1", "3"}, b = "2"}
local function decode_form(s)
  local t = {}
  for pair in s:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = unescape(k), unescape(v)
    local old = t[k]
    if old == nil then
      t[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      t[k] = { old, v }
    end
  end
  return t
end
http.decode_form = decode_form

-- ---- requests ----

local HEADERS_MT = {
  __index = function(t, k)
    if type(k) == "string" then return rawget(t, lower(k)) end
  end,
}

local Request = { __name = "lasync.http.Request" }

local function read_body(req)
  local parts, n = {}, 0
  while true do
    local chunk = req._conn:read()
    if not chunk then break end
    n = n + 1
    parts[n] = chunk
  end
  return concat(parts)
end

local methods = {}

--- req:read() -> the next piece of the body, or nil at its end
function methods.read(req)
  if req._body then
    local b = req._body
    req._body = false
    return b ~= "" and b or nil
  elseif req._body == false then
    return nil
  end
  return req._conn:read()
end

--- req:chunks() -> an iterator over the body's pieces
function methods.chunks(req)
  return function() return methods.read(req) end
end

--- req:body() -> the whole body (bounded by max_body)
function methods.body(req)
  local b = req._whole
  if b == nil then
    b = read_body(req)
    req._whole = b
  end
  return b
end

--- req:json() -> the body decoded (raises kind "bad_request" on bad JSON)
function methods.json(req)
  local ok, v = pcall(json_lib().decode, methods.body(req))
  if not ok then
    local e = core.error("bad_request", "the request body is not valid JSON")
    e.status = 400
    error(e, 2)
  end
  return v
end

--- req:form() -> the urlencoded body decoded like the query
function methods.form(req) return decode_form(methods.body(req)) end

--- req:header(name) -> the value, several joined with ", "
function methods.header(req, name)
  local want, values = lower(name), {}
  local list = req._list
  for i = 1, #list, 2 do
    if lower(list[i]) == want then values[#values + 1] = list[i + 1] end
  end
  if #values > 0 then return concat(values, ", ") end
end

Request.__index = function(req, k)
  local m = methods[k]
  if m then return m end
  if k == "headers" then
    local map = setmetatable({}, HEADERS_MT)
    local list = req._list
    for i = 1, #list, 2 do
      local name = lower(list[i])
      local old = map[name]
      map[name] = old and (old .. ", " .. list[i + 1]) or list[i + 1]
    end
    rawset(req, "headers", map)
    return map
  elseif k == "headers_list" then
    local out, list = {}, req._list
    for i = 1, #list, 2 do out[#out + 1] = { list[i], list[i + 1] } end
    rawset(req, "headers_list", out)
    return out
  elseif k == "query" then
    local q = req.query_string
    local t = q and decode_form(q) or {}
    rawset(req, "query", t)
    return t
  elseif k == "remote" then
    local r = req._conn:remote()
    rawset(req, "remote", r)
    return r
  end
end

-- ---- responses ----

local Response = { __name = "lasync.http.Response" }
Response.__index = Response

local function check_res(res, fname)
  if getmetatable(res) ~= Response then
    error(fname .. ": bad self (lasync.http.Response expected); call it with ':'", 3)
  end
  if res._finished then error(fname .. ": the response is already finished", 3) end
end

--- res:status(code)
function Response:status(code)
  check_res(self, "res:status")
  -- A 1xx is never a final response (a client would wait for the real one after it).
  if mtype(code) ~= "integer" or code < 200 or code > 999 then
    bad_arg("res:status", 1, "code", "integer status 200 to 999", code)
  end
  if self._sent then error("res:status: the headers are already sent", 2) end
  self._status = code
  return self
end

--- res:header(name, value)
function Response:header(name, value)
  check_res(self, "res:header")
  if type(name) ~= "string" then bad_arg("res:header", 1, "name", "string", name) end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" then bad_arg("res:header", 2, "value", "string", value) end
  if self._sent then error("res:header: the headers are already sent", 2) end
  local h = self._headers
  h[#h + 1] = name
  h[#h + 1] = value
  return self
end

local function send_head(res, mode, body)
  local h = res._headers
  if res._closing then
    h[#h + 1] = "Connection"
    h[#h + 1] = "close"
  end
  -- A HEAD response announces chunked but sends no chunks, not even the last one. Sent only
  -- once respond returns: it refuses a bad header before sending a byte, and the request
  -- still gets its 500 then.
  res._chunked = res._conn:respond(res._status, h, body, mode) and not res._head_only
  res._sent = true
  if body and mode == "full" then res._bytes = #body end
end

--- res:write(...): the headers first (chunked), then the pieces; suspends under backpressure
function Response:write(...)
  check_res(self, "res:write")
  local n, s = select("#", ...), ...
  if n ~= 1 or type(s) ~= "string" then
    for i = 1, n do
      local v = select(i, ...)
      if type(v) ~= "string" and type(v) ~= "number" then
        bad_arg("res:write", i, nil, "string", v)
      end
    end
    s = concat({ ... })
  end
  if not self._sent then
    if not self._has_ct then
      local h = self._headers
      local found = false
      for i = 1, #h, 2 do if lower(h[i]) == "content-type" then found = true end end
      if not found then
        h[#h + 1] = "Content-Type"
        h[#h + 1] = "text/plain; charset=utf-8"
      end
    end
    send_head(self, "stream")
  end
  if self._head_only then return end
  self._conn:write(s, self._chunked)
  self._bytes = (self._bytes or 0) + #s
end

--- res:finish([body]): ends the response; with a body and no write before, it is sent whole
function Response:finish(body)
  check_res(self, "res:finish")
  if body ~= nil and type(body) ~= "string" then
    bad_arg("res:finish", 1, "body", "string", body)
  end
  if not self._sent then
    send_head(self, self._head_only and "head" or "full", body or "")
  elseif body and body ~= "" then
    self:write(body)
  end
  self._finished = true
end

-- Every method of the server's objects says "call it with ':'" when called with '.'.
check.methods(Request, "req", methods)
check.methods(Response, "res")

local NO_BODY = { [204] = true, [304] = true }

-- Sends what a handler returned.
local function send_result(res, ret)
  local t = type(ret)
  local status, body, ctype = 200, nil, "text/plain; charset=utf-8"
  if t == "string" then
    body = ret
  elseif t == "table" then
    status = ret.status or 200
    if mtype(status) ~= "integer" or status < 200 or status > 999 then
      error("handler: bad 'status' in the returned table (integer status 200 to 999 expected)", 0)
    end
    if ret.json ~= nil then
      body = json_lib().encode(ret.json)
      ctype = "application/json"
    else
      body = ret.body or ""
      if type(body) ~= "string" then
        error("handler: bad 'body' in the returned table (string expected)", 0)
      end
    end
    local hs = ret.headers
    if hs then
      local h = res._headers
      for k, v in pairs(hs) do
        if type(k) ~= "string" then error("handler: bad header name in the returned table", 0) end
        if type(v) ~= "string" and type(v) ~= "number" then
          error(format("handler: bad value of header '%s' in the returned table (string "
            .. "expected, got %s)", k, check.typename(v)), 0)
        end
        if lower(k) == "content-type" then ctype = nil end
        h[#h + 1] = k
        h[#h + 1] = tostring(v)
      end
    end
  elseif ret == nil then
    status, body = 204, ""
    ctype = nil
  else
    error("handler: bad result (string, table or nothing expected, got " .. t .. ")", 0)
  end
  res._status = status
  if ctype and not NO_BODY[status] then
    local h = res._headers
    h[#h + 1] = "Content-Type"
    h[#h + 1] = ctype
  end
  if NO_BODY[status] then
    send_head(res, "none", nil)
  else
    send_head(res, res._head_only and "head" or "full", body)
  end
  res._finished = true
end

local route_request -- defined with the router, below

-- ---- the server ----

local Server = { __name = "lasync.http.Server" }
Server.__index = Server

-- A field of a handler's error value, or nil: the value is the user's, and its __index may
-- raise, which must not cost the client its response.
local function error_field(err, key)
  if type(err) ~= "table" then return nil end
  local ok, v = pcall(function() return err[key] end)
  if ok then return v end
end

-- An error value as text, even one whose __tostring raises or returns no string.
local function shown(err)
  local ok, text = pcall(tostring, err)
  if ok and type(text) == "string" then return text end
  return "(an error object that cannot be shown)"
end

local function handler_failed(srv, req, err)
  if srv.on_error then
    local ok, e = pcall(srv.on_error, err, req)
    if not ok then report("async.http.serve: on_error failed: " .. shown(e)) end
  else
    report(format("async.http.serve: the handler for %s %s failed:\n%s", req.method, req.target,
      shown(err)))
  end
end

local function error_status(err)
  local status = error_field(err, "status")
  if mtype(status) == "integer" then return status end
  return 500
end

local function handle(srv, req, res)
  local ret = srv.dispatch(req, res)
  if not res._sent then
    send_result(res, ret)
  elseif not res._finished then
    res._finished = true
  end
end

-- The access log: one line per request, in the common log format plus the time taken. Lines
-- are gathered and written by the server's logger task, one write per loop turn at most.
local function log_request(srv, req, res, ok)
  local remote = req.remote
  local line = format('%s - - [%s] "%s %s HTTP/%s" %s %d %.1fms\n',
    remote and remote.host or "-", os.date("!%d/%b/%Y:%H:%M:%S +0000"), req.method, req.target,
    req.http_version, (ok or res._sent) and tostring(res._status) or "-", res._bytes or 0,
    (core.now() - req._t0) * 1000)
  local sink = srv.log
  if type(sink) == "function" then
    local pok, e = pcall(sink, line)
    if not pok then report("async.http.serve: the log function failed: " .. shown(e)) end
    return
  end
  local buf = srv.log_buf
  buf[#buf + 1] = line
  local wake = srv.log_wake
  if wake then
    srv.log_wake = nil
    wake:set(true)
  end
end

local function logger(srv)
  while true do
    local f = core.future()
    srv.log_wake = f
    f:await()
    async.sleep(0)
    local buf = srv.log_buf
    srv.log_buf = {}
    io.stderr:write(concat(buf))
  end
end

local function idle_check(srv)
  if srv.idle and srv.active <= srv.idle_floor then
    local f = srv.idle
    srv.idle = nil
    f:set(true)
  end
end

-- The request stays listed in srv.live until its connection is finished: what follows the
-- handler allocates (the log line, the report, the error response), and at the memory cap a
-- memory error may end the task anywhere here, even at a call to pcall (no room to grow its
-- stack). The reaper then finishes the connection: unlisted first, it stayed open and
-- unanswered, and its client waited until its own timeout.
local function run_request(srv, conn, req, res)
  res._ran = true
  local ok, err = xpcall(handle, traceback, srv, req, res)
  -- A log line that cannot be made costs the log line, not the response: the task fails with
  -- its error once the connection is finished.
  local lok, lerr = true, nil
  if srv.log then lok, lerr = pcall(log_request, srv, req, res, ok) end
  if not ok then
    local kind = error_field(err, "kind")
    if res._sent then
      conn:finish(res._chunked, false) -- abort: the client sees a truncated response
      if not is_cancelled(err) and kind ~= "closed" then handler_failed(srv, req, err) end
    elseif (is_cancelled(err) and res._gone) or kind == "closed" then
      conn:finish(false, false) -- the client has gone: nobody to answer
    else
      local status = error_status(err)
      if is_cancelled(err) then status = 503 end -- request_timeout, or the server closing
      if status == 500 and not is_cancelled(err) then handler_failed(srv, req, err) end
      res._headers = {}
      local message = error_field(err, "message")
      local text = (status == 500 or status == 503) and (status == 500 and "Internal Server Error"
        or "Service Unavailable") or
        type(message) == "string" and message or "error"
      local pok = pcall(send_result, res, { status = status, body = text .. "\n" })
      conn:finish(false, pok)
    end
  else
    conn:finish(res._chunked, true)
  end
  srv.live[conn] = nil
  srv.active = srv.active - 1
  idle_check(srv)
  if not lok then error(lerr, 0) end
end

-- A request task that cannot start (at the memory cap there may be no memory for its
-- coroutine) fails before its first line, and one that a memory error ends past its handler's
-- protection fails before it finishes its connection (run_request): either way its client
-- would wait for a response until its own timeout. The server's reaper wakes only when some
-- task could not start or a memory error ended one (nothing is paid per request), and answers
-- 503 for each live request whose task has ended, or aborts it if its response had begun.
--
-- The reaper, the dispatcher and the logger are Lua too: at the cap a memory error can end
-- any of them between its protected calls (even entering pcall needs room on the stack), and
-- with the dispatcher gone every later request went unanswered; with the reaper gone, the next
-- request whose task died (http_sweep.lua, caps 0.32 MiB: clients waited 30 s). So each is a
-- helper task (core._spawn_helper): the task body calls its function again after a memory
-- error, and each function begins with what its death may have left undone.
--
-- Answering comes before unlisting, and conn:unserved allocates nothing and does nothing for a
-- request already finished: a reaper that dies in between answers nobody twice. Unlisted
-- first, a request whose reaper died there was never answered.
local function end_unserved(srv, conn, live)
  local res = live.res
  conn:unserved(live.seq, res._sent or res._gone) -- 503, or a cut if the response had begun
  srv.live[conn] = nil
  srv.active = srv.active - 1
  idle_check(srv)
end

local function reap(srv)
  for conn, live in pairs(srv.live) do
    -- Its task's failure stays reported (not seen). One that finished the request itself and
    -- ended before it unlisted it is unlisted here: conn:unserved leaves the connection be.
    if live.task and task_ended(live.task) then end_unserved(srv, conn, live) end
  end
end

local function reaper(srv)
  while true do
    reap(srv) -- first: after a memory error ended the reaper, what it was reaping
    core._await_starved()
  end
end

local function on_request(srv, conn)
  -- keep-alive is the connection's business; seq numbers the request on it (conn:unserved)
  local method, target, minor, _, list, _, seq = conn:head()
  local path, qs = target:match("^([^?]*)%??(.*)$")
  local req = setmetatable({
    method = method, target = target, path = path_unescape(path),
    query_string = qs ~= "" and qs or nil, http_version = "1." .. minor, _list = list,
    _conn = conn, params = {}, _t0 = srv.log and core.now() or nil,
  }, Request)
  local res = setmetatable({ _conn = conn, _status = 200, _headers = {},
    _head_only = method == "HEAD", _closing = srv.stopping }, Response)
  -- Counted once its task exists and is listed: a memory error before leaves nothing behind.
  local live = { res = res, req = req, seq = seq, task = false } -- setting task is free
  srv.live[conn] = live
  local ok, task = pcall(spawn, run_request, srv, conn, req, res)
  if not ok then
    srv.live[conn] = nil
    error(task, 0)
  end
  live.task = task
  srv.active = srv.active + 1
  srv.holding = false -- the reaper's now: a dispatcher that dies after this need not cut it
end

-- Cancels a request's task. One cancelled before it started (its client went away, or its time
-- ran out, in the loop turn its head came in: the dispatcher is handed both at once) never runs
-- its function, so run_request's ending is done here, as it would have been done there: the
-- connection is closed if the client has gone, else answered 503. Left to the task, the
-- connection stayed busy and counted in srv.active until the server closed.
local function cancel_request(srv, conn, live, why)
  live.task:cancel(why)
  if not live.res._ran then end_unserved(srv, conn, live) end -- a client gone is cut
end

local function dispatch_event(srv, conn, ev)
  if ev == "request" then
    on_request(srv, conn)
  elseif ev == "timeout" then
    local live = srv.live[conn]
    if live then
      live.res._timed_out = true
      cancel_request(srv, conn, live, "request timeout")
    end
  else
    local live = srv.live[conn]
    if live then
      live.res._gone = true
      local cod = live.req._route_cod
      if cod == nil then cod = srv.cancel_on_disconnect end
      if cod then cancel_request(srv, conn, live, "client disconnected") end
    end
  end
end

-- One dispatcher serves every connection, so an event it fails to handle (out of memory at the
-- cap, building a request or spawning its task) costs that connection, closed unanswered, and
-- not the server: uncaught, it ended the dispatcher, and every later request went unanswered
-- until its client's own timeout.
-- A request whose event the dispatcher took and that got no task (a memory error in between,
-- even one that ended the dispatcher) is cut, and unlisted if it was listed; one with its task
-- is the reaper's. Cutting twice is harmless: the connection cannot have moved on meanwhile.
local function cut_taskless(srv, conn)
  local live = srv.live[conn]
  if live and live.task then return end
  srv.live[conn] = nil
  pcall(conn.finish, conn, false, false)
end

local function dispatcher(srv)
  local lsn = srv.listener
  if srv.holding then cut_taskless(srv, srv.holding) end -- a memory error ended it holding one
  srv.holding = false
  reap(srv) -- a request it was cancelling when it died, whose task has ended since
  while true do
    local conn, ev = lsn:next()
    if not conn then
      if ev ~= "again" then return end
    else
      srv.holding = ev == "request" and conn -- for its next start, should this task die
      local ok, err = pcall(dispatch_event, srv, conn, ev)
      if not ok then
        if is_cancelled(err) then error(err, 0) end
        if ev == "request" then cut_taskless(srv, conn) end
      end
      srv.holding = false
    end
  end
end

local SERVE_OPTS = {
  host = "string", port = "number", backlog = "number", max_connections = "number",
  max_header_bytes = "number", max_headers = "number", max_body = "number",
  header_timeout = "number", keepalive_timeout = "number", request_timeout = "number",
  cancel_on_disconnect = "boolean", on_error = "function", log = true,
}

local COUNT_OPTS = { "max_connections", "max_header_bytes", "max_headers", "max_body" }

local servers = setmetatable({}, { __mode = "k" })
http._servers = servers

--- async.http.serve(handler_or_router, {host=, port=, ...}) -> Server (srv.port)
function http.serve(handler, opts)
  local fname = "async.http.serve"
  local dispatch
  if type(handler) == "table" and handler._is_router then
    dispatch = function(req, res) return route_request(handler, req, res) end
  elseif is_callable(handler) then
    dispatch = handler
  else
    bad_arg(fname, 1, "handler", "function or router", handler)
  end
  if opts ~= nil and type(opts) ~= "table" then bad_arg(fname, 2, "options", "table", opts) end
  opts = opts or {}
  for k, v in pairs(opts) do
    local want = SERVE_OPTS[k]
    if not want then check.misuse(check.unknown_option_message(fname, k)) end
    if want == true then
      if type(v) ~= "boolean" and type(v) ~= "function" then
        bad_opt(fname, k, "boolean or function", v)
      end
    elseif type(v) ~= want then
      bad_opt(fname, k, want, v)
    end
  end
  for _, k in ipairs(COUNT_OPTS) do -- a fraction would be truncated in C: 0.5 bytes is 0
    local v = opts[k]
    if v ~= nil and not (v >= 0 and (mtype(v) == "integer" or v == math.floor(v))) then
      bad_opt(fname, k, "whole number >= 0 (huge: no limit)", v)
    end
  end
  local port = opts.port or 0
  if mtype(port) ~= "integer" or port < 0 or port > 65535 then
    bad_opt(fname, "port", "integer 0 to 65535", port)
  end
  local backlog = opts.backlog or 511
  if mtype(backlog) ~= "integer" or backlog < 0 then
    bad_opt(fname, "backlog", "integer >= 0", backlog)
  end
  local host = opts.host or "127.0.0.1"
  if host:find("\0", 1, true) then bad_opt(fname, "host", "string without NUL", host) end
  if host == "localhost" then host = "127.0.0.1" end
  local lsn = listen(host, port, math.min(backlog, 0x7fffffff), opts) -- the kernel caps it too
  local srv = setmetatable({
    listener = lsn, dispatch = dispatch, live = {}, active = 0, idle_floor = 0, host = host,
    cancel_on_disconnect = opts.cancel_on_disconnect ~= false, on_error = opts.on_error,
    log = opts.log or nil, log_buf = {},
  }, Server)
  if srv.log == true then srv.logger = spawn_helper(logger, srv) end
  srv.port = lsn:port()
  srv.holding = false -- the connection whose request the dispatcher is handling (dispatcher)
  srv.dispatcher = spawn_helper(dispatcher, srv)
  srv.reaper = spawn_helper(reaper, srv)
  servers[srv] = true
  return srv
end

--- srv:close([{grace = s}]): stops accepting and closes idle connections at once; in-flight
--- responses carry Connection: close; with grace, waits up to s seconds for them, then
--- cancels the handlers still running. Without grace (or outside a task) they are cancelled.
function Server:close(opts)
  if opts ~= nil and type(opts) ~= "table" then
    bad_arg("server:close", 1, "options", "table", opts)
  end
  local grace = opts and opts.grace
  if grace ~= nil and (type(grace) ~= "number" or grace < 0) then
    bad_opt("server:close", "grace", "number of seconds >= 0", grace)
  end
  if self.closed then return end
  self.stopping = true
  self.listener:stop()
  -- A handler may close its own server (an admin route): it is not waited for nor cancelled,
  -- and its connection stays open for its response (sent with Connection: close).
  local me, own = in_task() and async.current(), nil
  for conn, live in pairs(self.live) do
    live.res._closing = true
    if live.task == me then own = conn end
  end
  self.idle_floor = own and 1 or 0
  if grace and grace > 0 and self.active > self.idle_floor and in_task() then
    local idle = core.future()
    self.idle = idle
    pcall(async.timeout, grace, idle.await, idle)
    self.idle = nil
  end
  self.closed = true
  local left = {}
  for conn, live in pairs(self.live) do
    if conn ~= own then
      live.task:cancel("server closed")
      left[#left + 1] = live.task
    end
  end
  if in_task() then
    for i = 1, #left do pcall(left[i].await, left[i]) end
  end
  self.dispatcher:cancel("server closed")
  self.reaper:cancel("server closed")
  self.listener:close_all(own)
  if self.logger then
    self.logger:cancel("server closed")
    if #self.log_buf > 0 then io.stderr:write(concat(self.log_buf)); self.log_buf = {} end
    if in_task() then pcall(self.logger.await, self.logger) end
  end
  if in_task() then
    pcall(self.dispatcher.await, self.dispatcher)
    pcall(self.reaper.await, self.reaper)
  end
  servers[self] = nil
end

function Server:__close() self:close() end

function Server:__tostring()
  return format("lasync.http.Server (%s port %d, %s)", self.host, self.port,
    self.closed and "closed" or "open")
end
check.methods(Server, "server")

--- async.http.close_servers(grace [, after]): what the host does on SIGINT/SIGTERM; once the
--- servers have closed, after() runs (the host cancels the tasks left then: else a program
--- with a server and any other task would never stop on the first signal).
function http.close_servers(grace, after)
  local list = {}
  for srv in pairs(servers) do list[#list + 1] = srv end
  local tasks = {}
  for i = 1, #list do
    tasks[i] = spawn(function() list[i]:close { grace = grace } end)
  end
  if after and #tasks > 0 then
    spawn(function()
      for i = 1, #tasks do pcall(tasks[i].await, tasks[i]) end
      after()
    end)
  end
  return tasks
end

-- ---- the router ----

local Router = { __name = "lasync.http.Router" }
Router.__index = Router

local function compile(pattern)
  if type(pattern) ~= "string" or pattern:sub(1, 1) ~= "/" then return nil end
  local names, parts = {}, {}
  for seg in pattern:gmatch("[^/]+") do
    local name = seg:match("^{([%w_]+)}$")
    if name then
      parts[#parts + 1] = false
      names[#parts] = name
    else
      parts[#parts + 1] = seg
    end
  end
  return { parts = parts, names = names, pattern = pattern, methods = {}, order = {} }
end

--- async.http.router() -> Router with :get/:post/:put/:delete/:patch/:route(method, ...)
function http.router()
  return setmetatable({ _is_router = true, routes = {}, by_pattern = {} }, Router)
end

function Router:route(method, pattern, handler, opts)
  if type(method) ~= "string" then bad_arg("router:route", 1, "method", "string", method) end
  local r = self.by_pattern[pattern]
  if not r then
    r = compile(pattern)
    if not r then bad_arg("router:route", 2, "pattern", "path starting with '/'", pattern) end
    self.by_pattern[pattern] = r
    self.routes[#self.routes + 1] = r
  end
  if not is_callable(handler) then bad_arg("router:route", 3, "handler", "function", handler) end
  if opts ~= nil and type(opts) ~= "table" then
    bad_arg("router:route", 4, "options", "table", opts)
  end
  method = method:upper()
  if not r.methods[method] then r.order[#r.order + 1] = method end
  r.methods[method] = { fn = handler, cod = opts and opts.cancel_on_disconnect }
  return self
end

for _, m in ipairs { "get", "post", "put", "delete", "patch", "options" } do
  Router[m] = function(self, pattern, handler, opts)
    return self:route(m, pattern, handler, opts)
  end
end

local MIME = {
  html = "text/html; charset=utf-8", htm = "text/html; charset=utf-8",
  css = "text/css; charset=utf-8", js = "text/javascript; charset=utf-8",
  mjs = "text/javascript; charset=utf-8", json = "application/json",
  txt = "text/plain; charset=utf-8", md = "text/markdown; charset=utf-8",
  xml = "application/xml", svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg",
  jpeg = "image/jpeg", gif = "image/gif", webp = "image/webp", ico = "image/x-icon",
  wasm = "application/wasm", pdf = "application/pdf", woff = "font/woff", woff2 = "font/woff2",
  lua = "text/plain; charset=utf-8", csv = "text/csv; charset=utf-8",
}

local function http_date(t) return os.date("!%a, %d %b %Y %H:%M:%S GMT", t) end

--- app:static(prefix, dir): GET and HEAD of prefix/<path> serve dir/<path>; a path that
--- escapes dir (.., encoded or not, or a symlink out) is 404.
function Router:static(prefix, dir)
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
    bad_arg("router:static", 1, "prefix", "path starting with '/'", prefix)
  end
  if type(dir) ~= "string" then bad_arg("router:static", 2, "dir", "string", dir) end
  local root, err = core._http_realpath(dir)
  if not root then error("router:static: " .. err, 2) end
  local parts = {}
  for seg in prefix:gmatch("[^/]+") do parts[#parts + 1] = seg end
  self.statics = self.statics or {}
  self.statics[#self.statics + 1] = { parts = parts, root = root }
  return self
end

check.methods(Router, "router")

local function serve_static(st, req, segs)
  local n = #st.parts
  for i = 1, n do if segs[i] ~= st.parts[i] then return nil end end
  if #segs == n then return nil end
  if req.method ~= "GET" and req.method ~= "HEAD" then
    return { status = 405, body = "Method Not Allowed\n", headers = { Allow = "GET, HEAD" } }
  end
  local rel = {}
  for i = n + 1, #segs do
    local s = segs[i]
    if s == ".." or s == "." or s:find("[%z\\]") or s:find("/", 1, true) then
      return { status = 404, body = "Not Found\n" }
    end
    rel[#rel + 1] = s
  end
  local ok, data, mtime = pcall(core._http_readfile, st.root, st.root .. "/" .. concat(rel, "/"))
  if not ok then
    if type(data) == "table" and data.kind == "not_found" then
      return { status = 404, body = "Not Found\n" }
    end
    error(data, 0)
  end
  local modified = http_date(mtime)
  if req.headers["if-modified-since"] == modified then
    return { status = 304, headers = { ["Last-Modified"] = modified } }
  end
  local ext = rel[#rel]:match("%.([%w]+)$")
  return { status = 200, body = data, headers = {
    ["Content-Type"] = MIME[ext and lower(ext) or ""] or "application/octet-stream",
    ["Last-Modified"] = modified } }
end

local function match(r, segs)
  local parts = r.parts
  if #parts ~= #segs then return nil end
  local params
  for i = 1, #parts do
    local p = parts[i]
    if p then
      if p ~= segs[i] then return nil end
    else
      params = params or {}
      params[r.names[i]] = segs[i]
    end
  end
  return params or {}
end

route_request = function(self, req, res)
  local segs = {}
  for seg in req.path:gmatch("[^/]+") do segs[#segs + 1] = seg end
  local allowed
  for _, r in ipairs(self.routes) do
    local params = match(r, segs)
    if params then
      local h = r.methods[req.method] or (req.method == "HEAD" and r.methods.GET)
      if h then
        req.params = params
        req._route_cod = h.cod
        return h.fn(req, res)
      end
      allowed = allowed or {}
      for _, m in ipairs(r.order) do allowed[#allowed + 1] = m end
      if r.methods.GET and not r.methods.HEAD then allowed[#allowed + 1] = "HEAD" end
    end
  end
  if self.statics then
    -- Path segments are matched decoded, so "%2e%2e" is ".." here and refused.
    for _, st in ipairs(self.statics) do
      local ret = serve_static(st, req, segs)
      if ret then return ret end
    end
  end
  if allowed then
    return { status = 405, body = "Method Not Allowed\n",
      headers = { Allow = concat(allowed, ", ") } }
  end
  return { status = 404, body = "Not Found\n" }
end

return http
