-- async.fetch and async.http.client: options are checked and normalised here, before any I/O,
-- and the C side (bindings/http.c) only drives curl. A Response is built here from the raw
-- table the C side returns.
local core, async = ...

local error, ipairs, pairs, pcall, rawget, rawset, require = error, ipairs, pairs, pcall, rawget,
  rawset, require
local getmetatable, setmetatable = getmetatable, setmetatable
local tonumber, tostring, type = tonumber, tostring, type
local format, lower, concat, sort = string.format, string.lower, table.concat, table.sort
local raw_fetch, fetch_wait, new_error = core._fetch, core._fetch_wait, core.error
local stream_read, stream_close, stream_buffered = core._read, core._close, core._buffered
local send_wait, send, send_fail = core._send_wait, core._send, core._fail
local spawn, future = core.spawn, core.future

local DEFAULTS = {
  method = "GET",
  timeout = 30,
  connect_timeout = 10,
  low_speed_limit = 0,
  low_speed_time = 0,
  follow_redirects = true,
  max_redirects = 10,
  max_body = 64 * 1024 * 1024,
  verify_tls = true,
  decompress = true,
  user_agent = "lasync/" .. core.version,
}

local cjson
local function json_module()
  cjson = cjson or require "cjson"
  return cjson
end

local function invalid(fname, url, option, why)
  error(new_error("invalid", format("%s: bad option '%s' (%s)", fname, option, why),
    { url = url, option = option }), 0)
end

local function has_bad_chars(s) return s:find("[\r\n%z]") ~= nil end

local function check_type(fname, url, opts, name, want)
  local v = opts[name]
  if v ~= nil and type(v) ~= want then
    invalid(fname, url, name, format("%s expected, got %s", want, type(v)))
  end
  return v
end

local function check_seconds(fname, url, opts, name)
  local v = check_type(fname, url, opts, name, "number")
  if v ~= nil and not (v >= 0) then invalid(fname, url, name, "seconds must be >= 0") end
  return v
end

local function check_count(fname, url, opts, name)
  local v = check_type(fname, url, opts, name, "number")
  if v ~= nil and (v < 0 or v ~= v // 1) then
    invalid(fname, url, name, "a whole number >= 0 expected")
  end
  return v
end

local function url_encode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return format("%%%02X", c:byte()) end))
end

-- Appends the query table (name -> value, or name -> list of values) in name order, so the
-- URL is the same from run to run.
local function add_query(fname, url, query)
  local names, parts = {}, {}
  for k in pairs(query) do
    if type(k) ~= "string" and type(k) ~= "number" then
      invalid(fname, url, "query", "names must be strings")
    end
    names[#names + 1] = tostring(k)
  end
  sort(names)
  for _, k in ipairs(names) do
    local v = query[k]
    if v == nil then v = query[tonumber(k)] end
    local list = type(v) == "table" and v or { v }
    for _, item in ipairs(list) do
      local t = type(item)
      if t ~= "string" and t ~= "number" and t ~= "boolean" then
        invalid(fname, url, "query", format("value of '%s' must be a string or number", k))
      end
      parts[#parts + 1] = url_encode(k) .. "=" .. url_encode(item)
    end
  end
  if #parts == 0 then return url end
  local base, fragment = url:match("^([^#]*)(#.*)$")
  base, fragment = base or url, fragment or ""
  local sep = base:find("?", 1, true) and (base:sub(-1) == "?" and "" or "&") or "?"
  return base .. sep .. concat(parts, "&") .. fragment
end

local KNOWN = {
  method = true, headers = true, body = true, json = true, query = true, timeout = true,
  connect_timeout = true, low_speed_limit = true, low_speed_time = true,
  follow_redirects = true, max_redirects = true, max_body = true, verify_tls = true,
  ca_file = true, proxy = true, http_version = true, decompress = true, user_agent = true,
  stream = true, stream_buffer = true, retry = true,
}

-- ---- retries: opts.retry = {attempts, backoff, max_delay, jitter, retry_if} ----

local RETRY_KNOWN = { attempts = true, backoff = true, max_delay = true, jitter = true,
  retry_if = true }
-- Failures worth another attempt: the network's, not the caller's (invalid, too_large, tls).
local RETRY_KINDS = { dns = true, connect = true, timeout = true, protocol = true }
local RETRY_STATUS = { [429] = true, [502] = true, [503] = true, [504] = true }

local function check_retry(fname, url, r)
  if r == nil then return nil end
  for k in pairs(r) do
    if not RETRY_KNOWN[k] then invalid(fname, url, "retry", "unknown field '" .. tostring(k) .. "'") end
  end
  local function number(k, dflt, least)
    local v = r[k]
    if v == nil then return dflt end
    if type(v) ~= "number" or v ~= v or v < least then
      invalid(fname, url, "retry", format("'%s' must be a number >= %s", k, least))
    end
    return v
  end
  local retry_if = r.retry_if
  if retry_if ~= nil and type(retry_if) ~= "function" then
    invalid(fname, url, "retry", "'retry_if' must be a function")
  end
  return { attempts = math.floor(number("attempts", 3, 1)), backoff = number("backoff", 0.1, 0),
    max_delay = number("max_delay", 30, 0), jitter = r.jitter ~= false, retry_if = retry_if }
end

-- Retry-After: delay-seconds or an HTTP-date (RFC 9110), as seconds from now.
local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9,
  Oct = 10, Nov = 11, Dec = 12 }
local function retry_after(res)
  local v = res.headers["retry-after"]
  if not v then return nil end
  local n = tonumber(v)
  if n then return n >= 0 and n or nil end
  local d, mon, y, hh, mm, ss = v:match("^%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT$")
  if not d or not MONTHS[mon] then return nil end
  local utc = { year = tonumber(y), month = MONTHS[mon], day = tonumber(d), hour = tonumber(hh),
    min = tonumber(mm), sec = tonumber(ss) }
  -- os.time reads a local time: correct by the offset between local and UTC now.
  local now = os.time()
  local offset = os.time(os.date("!*t", now)) - now
  return math.max(0, os.time(utc) - offset - now)
end

-- Runs once(url, n) until it succeeds, with exponential backoff and jitter between attempts. A
-- 429/502/503/504 response is retried too (honouring Retry-After), and returned as it is after
-- the last attempt; errors of the caller's making, and cancellation, are raised at once.
local function with_retries(url, n, once)
  local r = n.retry
  for attempt = 1, r.attempts do
    local ok, res = pcall(once, url, n)
    local last, delay = attempt == r.attempts, nil
    if ok then
      if last or not RETRY_STATUS[res.status] or (r.retry_if and not r.retry_if(res, attempt)) then
        return res
      end
      delay = retry_after(res)
      res:close()
    elseif last or type(res) ~= "table" or not RETRY_KINDS[res.kind]
        or (r.retry_if and not r.retry_if(res, attempt)) then
      error(res, 0)
    end
    if not delay then
      delay = r.backoff * 2 ^ (attempt - 1)
      if r.jitter then delay = delay * (0.5 + 0.5 * math.random()) end
    end
    async.sleep(math.min(delay, r.max_delay))
  end
end

-- The normalised options: only what differs from DEFAULTS is stored (bindings/http.c reads
-- fields with lua_getfield, which sees through __index).
local DEFAULTS_MT = { __index = DEFAULTS }
local PLAIN = setmetatable({ headers = {} }, DEFAULTS_MT) -- a fetch with no options
local SECONDS_OPTS = { "timeout", "connect_timeout", "low_speed_time" }
local COUNT_OPTS = { "low_speed_limit", "max_redirects", "max_body", "stream_buffer" }
local BOOLEAN_OPTS = { "follow_redirects", "verify_tls", "decompress", "stream" }
local STRING_OPTS = { "ca_file", "proxy", "user_agent" }

-- Checks the options and returns the final URL and the table bindings/http.c reads.
local function normalise(fname, url, opts)
  if type(url) ~= "string" then
    error(format("%s: bad argument #1 (URL string expected, got %s)", fname, type(url)), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(format("%s: bad argument #2 (options table expected, got %s)", fname, type(opts)), 3)
  end
  if has_bad_chars(url) or url:find("[%s]") then
    invalid(fname, url, "url", "control characters or spaces in the URL")
  end
  if not url:find("^%a[%w+.-]*://") then invalid(fname, url, "url", "absolute URL expected") end
  if opts == nil then return url, PLAIN end
  for k in pairs(opts) do
    if not KNOWN[k] then invalid(fname, url, tostring(k), "unknown option") end
  end

  local n = setmetatable({}, DEFAULTS_MT)
  local method = check_type(fname, url, opts, "method", "string")
  if method then
    if method == "" or not method:find("^[%w!#$%%&'*+.^_`|~-]+$") then
      invalid(fname, url, "method", "an HTTP token expected")
    end
    n.method = method:upper()
  end
  for _, k in ipairs(SECONDS_OPTS) do
    local v = check_seconds(fname, url, opts, k)
    if v ~= nil then n[k] = v end
  end
  for _, k in ipairs(COUNT_OPTS) do
    local v = check_count(fname, url, opts, k)
    if v ~= nil then n[k] = v end
  end
  for _, k in ipairs(BOOLEAN_OPTS) do
    local v = check_type(fname, url, opts, k, "boolean")
    if v ~= nil then n[k] = v end
  end
  for _, k in ipairs(STRING_OPTS) do
    local v = check_type(fname, url, opts, k, "string")
    if v ~= nil then
      if has_bad_chars(v) then invalid(fname, url, k, "CR, LF or NUL in the value") end
      n[k] = v
    end
  end
  local version = opts.http_version
  if version ~= nil then
    version = tostring(version)
    if version == "2.0" then version = "2" end
    if version ~= "1.1" and version ~= "2" then
      invalid(fname, url, "http_version", "\"1.1\" or \"2\" expected")
    end
    n.http_version = version
  end

  -- Headers become "Name: value" lines; CR, LF and NUL could smuggle a second header or request.
  local lines, has, content_length = {}, {}, nil
  local headers = check_type(fname, url, opts, "headers", "table")
  if headers then
    local names = {}
    for k in pairs(headers) do names[#names + 1] = k end
    sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(names) do
      local v = headers[k]
      if type(k) ~= "string" or not k:find("^[%w!#$%%&'*+.^_`|~-]+$") then
        invalid(fname, url, "headers", format("bad header name %q", tostring(k)))
      end
      if type(v) == "number" then v = tostring(v) end
      if type(v) ~= "string" then
        invalid(fname, url, "headers", format("value of '%s' must be a string", k))
      end
      if has_bad_chars(v) then
        invalid(fname, url, "headers", format("CR, LF or NUL in the value of '%s'", k))
      end
      has[lower(k)] = true
      if lower(k) == "content-length" and type(opts.body) == "function" then
        -- The length of a body function's chunks: curl sends it instead of chunking.
        content_length = v:find("^%d+$") and tonumber(v)
        if not content_length then invalid(fname, url, "headers", "bad Content-Length") end
      else
        -- curl sends "Name;" as a header with an empty value ("Name:" would remove it).
        lines[#lines + 1] = v == "" and (k .. ";") or (k .. ": " .. v)
      end
    end
  end

  local body = opts.body
  if type(body) == "function" then
    if opts.json ~= nil then invalid(fname, url, "json", "body and json are exclusive") end
    n.body_fn, n.body_length, body = body, content_length, nil
    -- Without "Expect: 100-continue" the first chunk need not wait for the server's go-ahead.
    if not has.expect then lines[#lines + 1] = "Expect:" end
  elseif body ~= nil and type(body) ~= "string" then
    invalid(fname, url, "body", format("string or function expected, got %s", type(body)))
  end
  if opts.json ~= nil then
    if body ~= nil then invalid(fname, url, "json", "body and json are exclusive") end
    local ok, encoded = pcall(json_module().encode, opts.json)
    if not ok then invalid(fname, url, "json", tostring(encoded)) end
    body = encoded
    if not has["content-type"] then lines[#lines + 1] = "Content-Type: application/json" end
  end
  n.body = body
  n.headers = lines

  local query = check_type(fname, url, opts, "query", "table")
  if query then url = add_query(fname, url, query) end
  n.retry = check_retry(fname, url, check_type(fname, url, opts, "retry", "table"))
  return url, n
end

-- ---- responses ----

-- Header lookup ignores case: the table is keyed by lower-case names.
local header_mt = {
  __index = function(t, k)
    if type(k) == "string" then return rawget(t, lower(k)) end
  end,
}

local Response = {}
Response.__name = "lasync.Response"

-- res.buffered: bytes of a streamed body received and not read yet (0 otherwise).
-- The header block arrives as one string (_head) and is parsed on first use: most callers
-- never look at the headers, and a table per header is the costliest part of a response.
local function parse_head(self)
  local list, map = {}, setmetatable({}, header_mt)
  for line in (rawget(self, "_head") or ""):gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
    if name and not line:find("^HTTP/") then
      list[#list + 1] = { name, value, name = name, value = value }
      map[lower(name)] = value -- a repeated header: the last value wins here
    end
  end
  rawset(self, "headers_list", list)
  rawset(self, "headers", map)
  rawset(self, "_head", nil)
end

function Response.__index(self, k)
  if k == "headers" or k == "headers_list" then
    parse_head(self)
    return rawget(self, k)
  end
  if k == "timings" then -- curl's counters, kept as raw[1..5] until asked for
    local t = { dns = rawget(self, 1), connect = rawget(self, 2), tls = rawget(self, 3),
      first_byte = rawget(self, 4), total = rawget(self, 5) }
    for i = 1, 5 do rawset(self, i, nil) end
    rawset(self, "timings", t)
    return t
  end
  if k == "buffered" then
    local x = rawget(self, "_stream")
    return x and stream_buffered(x) or 0
  end
  return Response[k]
end

function Response:text() return self.body end

function Response:json()
  local ok, value = pcall(json_module().decode, self.body)
  if not ok then
    error(new_error("json", format("res:json(): invalid JSON from %s: %s", self.url,
      tostring(value)), { url = self.url }), 2)
  end
  return value
end

--- All the values of a header, in the order received (an empty list when absent).
function Response:header_values(name)
  local want, values = lower(name), {}
  for _, h in ipairs(self.headers_list) do
    if lower(h[1]) == want then values[#values + 1] = h[2] end
  end
  return values
end

function Response:__tostring()
  return format("Response (%d %s)", self.status, self.url)
end

-- Hands a client's connection permit back once, when a streamed body ends or is closed.
local function release_permit(self)
  local permit = rawget(self, "_permit")
  if permit then
    self._permit = nil
    permit()
  end
end

--- res:read() -> the next chunk of a streamed body, or nil at its end. Suspends while nothing
--- is buffered; raises the transfer's error if it failed mid-body.
function Response:read()
  local x = rawget(self, "_stream")
  if not x then
    if type(self) ~= "table" or getmetatable(self) ~= Response then
      error("res:read: bad self (Response expected)", 2)
    end
    -- A whole body reads as one chunk, then the end.
    if self._read_done then return nil end
    self._read_done = true
    return self.body ~= "" and self.body or nil
  end
  local ok, chunk = pcall(stream_read, x)
  if not ok then
    release_permit(self)
    error(chunk, 0)
  end
  if chunk == nil then release_permit(self) end
  return chunk
end

--- for chunk in res:chunks() do ... end
function Response:chunks()
  return Response.read, self
end

--- res:close(): aborts a streamed transfer that still runs and frees it. Idempotent; also
--- `local res <close> = async.fetch(url, { stream = true })`.
function Response:close()
  local x = rawget(self, "_stream")
  if x then stream_close(x) end
  local feeder = rawget(self, "_feeder")
  if feeder then
    self._feeder = nil
    feeder:cancel()
  end
  release_permit(self)
end

Response.__close = Response.close

local function make_response(raw)
  raw.ok = raw.status >= 200 and raw.status <= 299
  return setmetatable(raw, Response)
end

-- The feeder task of a body function: each chunk goes to curl once it took the last one.
local function feed(x, fn)
  while send_wait(x) do
    local ok, chunk = pcall(fn)
    if not ok then return send_fail(x, chunk) end
    if chunk ~= nil and type(chunk) ~= "string" then
      return send_fail(x, new_error("invalid", format(
        "async.fetch: the body function returned a %s (string or nil expected)", type(chunk)),
        { option = "body" }))
    end
    send(x, chunk)
    if chunk == nil then return end
  end
end

local function finish_fetch(feeder, ok, raw, ...)
  if not ok or not raw._stream then
    -- The transfer is over (or failed, or the caller was cancelled): so is its body.
    if not feeder:done() then feeder:cancel() end
    if not ok then error(raw, 0) end
  elseif not feeder:done() then
    raw._feeder = feeder -- the server answered before the whole body went out
  end
  return raw
end

-- Runs the normalised request; returns the raw response table.
local function run(final_url, n)
  local fn = n.body_fn
  if not fn then return raw_fetch(final_url, n) end
  n.body_fn, n.start_only = true, true
  local x = raw_fetch(final_url, n)
  local feeder = spawn(feed, x, fn)
  return finish_fetch(feeder, pcall(fetch_wait, final_url, n, x))
end

--- async.fetch(url [, opts]) -> Response. Suspends the calling task until the transfer ends
--- (with opts.stream, until the final response's headers are in).
local function fetch_once(final_url, normalised)
  return make_response(run(final_url, normalised))
end

function async.fetch(url, opts)
  local final_url, normalised = normalise("async.fetch", url, opts)
  if normalised.retry then return with_retries(final_url, normalised, fetch_once) end
  return fetch_once(final_url, normalised)
end

-- ---- clients: their own defaults ----

local Client = { __name = "lasync.Client" } -- named for misuse messages and types_spec
Client.__index = Client

-- ---- per-client limits: counting permits, first come first served ----
--
-- There is one curl multi per runtime, so a client's max_connections and max_per_host are
-- counted here, as transfers in flight (each holds a connection for its whole run). A waiter is
-- a future in a FIFO queue; release hands the permit to the oldest waiter still waiting. A
-- cancelled waiter settles its own future to leave the queue, or, if the permit reached it at
-- the same moment, passes the permit on, so none is ever lost.

local function new_limit(n) return { free = n, max = n, queue = {}, head = 1, tail = 0 } end

local function release(limit)
  local queue = limit.queue
  while limit.head <= limit.tail do
    local f = queue[limit.head]
    queue[limit.head] = nil
    limit.head = limit.head + 1
    if not f:done() then return f:set() end -- the permit goes straight to the waiter
  end
  limit.free = limit.free + 1
end

local function acquire(limit)
  local queue = limit.queue
  while limit.head <= limit.tail and queue[limit.head]:done() do -- waiters that left
    queue[limit.head] = nil
    limit.head = limit.head + 1
  end
  if limit.free > 0 and limit.head > limit.tail then
    limit.free = limit.free - 1
    return
  end
  local f = future()
  limit.tail = limit.tail + 1
  queue[limit.tail] = f
  local ok, err = pcall(f.await, f)
  if not ok then
    if f:done() then
      release(limit) -- the permit came with the cancellation: pass it on
    else
      f:set() -- leaves the queue: release skips settled futures
    end
    error(err, 0)
  end
end

-- "scheme://host:port" of an absolute URL, lower-cased, with the default port made explicit.
local function origin(url)
  local scheme, authority = url:match("^(%a[%w+.-]*)://([^/?#]*)")
  scheme, authority = lower(scheme or ""), lower((authority or ""):gsub("^.*@", ""))
  if not authority:find(":%d+$") then
    authority = authority .. (scheme == "https" and ":443" or ":80")
  end
  return scheme .. "://" .. authority
end

-- Waits for the client's permits for url; returns the function that gives them back (once).
local function take_permit(limits, url)
  local host_limit
  if limits.per_host then
    local key = origin(url)
    host_limit = limits.hosts[key]
    if not host_limit then
      host_limit = new_limit(limits.per_host)
      limits.hosts[key] = host_limit
    end
    acquire(host_limit)
  end
  if limits.total then
    local ok, err = pcall(acquire, limits.total)
    if not ok then
      if host_limit then release(host_limit) end
      error(err, 0)
    end
  end
  local held = true
  return function()
    if not held then return end
    held = false
    if limits.total then release(limits.total) end
    if host_limit then
      release(host_limit)
      -- An idle host's entry goes, so a client that saw many hosts does not keep them all.
      if host_limit.free == host_limit.max and limits.hosts[origin(url)] == host_limit then
        limits.hosts[origin(url)] = nil
      end
    end
  end
end

-- Gives a streamed response's permit back if it is collected before its end or close.
local permit_guard_mt = {
  __gc = function(guard) pcall(guard.release) end,
}

local function merge(defaults, opts)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  if opts then
    for k, v in pairs(opts) do
      if k == "headers" and out.headers then
        local h, seen = {}, {}
        for name, value in pairs(v) do
          h[name] = value
          seen[type(name) == "string" and lower(name) or name] = true
        end
        for name, value in pairs(out.headers) do
          if not seen[type(name) == "string" and lower(name) or name] then h[name] = value end
        end
        out.headers = h
      else
        out[k] = v
      end
    end
  end
  return out
end

-- One attempt under the client's connection limits.
local function limited_once(self, final_url, normalised)
  local permit = take_permit(self.limits, final_url)
  local ok, raw = pcall(run, final_url, normalised)
  if ok and raw._stream then
    -- A streamed body holds its connection until it ends or is closed.
    raw._permit = permit
    raw._permit_guard = setmetatable({ release = permit }, permit_guard_mt)
  else
    permit()
    if not ok then error(raw, 0) end
  end
  return make_response(raw)
end

function Client:fetch(url, opts)
  if type(url) ~= "string" then
    error(format("client:fetch: bad argument #1 (URL string expected, got %s)", type(url)), 2)
  end
  if self.base_url and not url:find("^%a[%w+.-]*://") then
    url = self.base_url:gsub("/+$", "") .. "/" .. url:gsub("^/+", "")
  end
  local final_url, normalised = normalise("async.fetch", url, merge(self.defaults, opts))
  local once = fetch_once
  if self.limits then once = function(u, n) return limited_once(self, u, n) end end
  if normalised.retry then return with_retries(final_url, normalised, once) end
  return once(final_url, normalised)
end


local function with_method(method)
  return function(self, url, opts)
    opts = merge({}, opts)
    opts.method = method
    return self:fetch(url, opts)
  end
end

Client.get = with_method("GET")
Client.post = with_method("POST")
Client.put = with_method("PUT")
Client.patch = with_method("PATCH")
Client.delete = with_method("DELETE")
Client.head = with_method("HEAD")

local http = {}

local CLIENT_ONLY = { base_url = true, max_connections = true, max_per_host = true }

--- async.http.client{base_url=, headers=, timeout=, max_connections=, max_per_host=, ...}: a
--- client with its own defaults and limits.
function http.client(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(format("async.http.client: bad argument #1 (table expected, got %s)", type(opts)), 2)
  end
  local defaults = {}
  for k, v in pairs(opts or {}) do
    if not CLIENT_ONLY[k] then defaults[k] = v end
  end
  local limits
  for _, k in ipairs { "max_connections", "max_per_host" } do
    local v = opts and opts[k]
    if v ~= nil then
      if math.type(v) ~= "integer" or v < 1 then
        invalid("async.http.client", nil, k, "an integer >= 1 expected")
      end
      limits = limits or { hosts = {} }
      limits[k == "max_connections" and "total" or "per_host"] = v
    end
  end
  if limits and limits.total then limits.total = new_limit(limits.total) end
  local base_url = opts and opts.base_url
  if base_url ~= nil and type(base_url) ~= "string" then
    error("async.http.client: base_url must be a string", 2)
  end
  -- Checked now, so a bad default fails where the client is made.
  normalise("async.http.client", "http://127.0.0.1/", defaults)
  return setmetatable({ base_url = base_url, defaults = defaults, limits = limits }, Client)
end

http.Response = Response
async.http = http
