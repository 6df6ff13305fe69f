-- async.fetch and its Response: one request (with its retries) on the runtime's curl multi.
-- The options were checked by lua/http/options.lua; the C side (bindings/http/client.c)
-- returns a raw table, made a Response here.
local core, async = ...

local error, ipairs, pcall, rawget, rawset = error, ipairs, pcall, rawget, rawset
local setmetatable, tonumber, tostring, type = setmetatable, tonumber, tostring, type
local byte, format, lower = string.byte, string.format, string.lower
local raw_fetch, fetch_wait, new_error = core._fetch, core._fetch_wait, core.error
local stream_read, stream_close, stream_buffered = core._read, core._close, core._buffered
local send_wait, send, send_fail, json_integers = core._send_wait, core._send, core._fail,
  core._json_integers
local spawn = core.spawn
local http, check = core._http, core._check

-- ---- responses ----

-- Header lookup ignores case: the table is keyed by lower-case names.
local header_mt = {
  __index = function(t, k)
    if type(k) == "string" then return rawget(t, lower(k)) end
  end,
}

local Response = { __name = "lasync.Response" }

-- The header block arrives as one string (_head) and is parsed on first use: most callers
-- never look at the headers, and a table per header is the costliest part of a response.
local function parse_head(self)
  local list, map = {}, setmetatable({}, header_mt)
  for line in (rawget(self, "_head") or ""):gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:]+):(.*)$")
    if name and not line:find("^HTTP/") then
      -- Trimmed by hand: "[ \t]*(.-)[ \t]*$" backtracks over every run of blanks, quadratic
      -- in a hostile server's header (40 KB of spaces took 10 s, the whole runtime blocked).
      local first, last = value:find("[^ \t]"), #value
      while last > 0 and (byte(value, last) == 32 or byte(value, last) == 9) do last = last - 1 end
      value = first and value:sub(first, last) or ""
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
  if k == "buffered" then -- bytes of a streamed body received and not read yet (0 otherwise)
    local x = rawget(self, "_stream")
    return x and stream_buffered(x) or 0
  end
  return Response[k]
end

function Response:text() return self.body end

--- The body decoded as JSON. lua-cjson 2.1.0 makes every number a float; numbers written
--- as integers come back as Lua integers (bindings/http/json.c).
function Response:json()
  local body = self.body
  local ok, value = pcall(http.json_module().decode, body)
  if not ok then
    error(new_error("json", format("res:json(): invalid JSON from %s: %s", self.url,
      tostring(value)), { url = self.url }), 0)
  end
  return json_integers(body, value)
end

--- All the values of a header, in the order received (an empty list when absent).
function Response:header_values(name)
  if type(name) ~= "string" then check.argerror("res:header_values", 1, "name", "string", name) end
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
check.methods(Response, "res")

function http.make_response(raw)
  raw.ok = raw.status >= 200 and raw.status <= 299
  return setmetatable(raw, Response)
end

-- ---- one request ----

-- The feeder task of a body function: each chunk goes to curl once it took the last one.
local function feed(x, fn, length)
  local sent = 0
  while send_wait(x) do
    local ok, chunk = pcall(fn)
    if not ok then return send_fail(x, chunk) end
    if chunk ~= nil and type(chunk) ~= "string" then
      return send_fail(x, new_error("invalid", format(
        "async.fetch: the body function returned a %s (string or nil expected)", type(chunk)),
        { option = "body" }))
    end
    sent = sent + (chunk and #chunk or 0)
    if length and (sent > length or (chunk == nil and sent < length)) then
      -- curl would cut the body at the Content-Length, or wait for the rest: neither is what
      -- the caller meant.
      return send_fail(x, new_error("invalid", format("async.fetch: the body function gave %s "
        .. "bytes, the Content-Length header says %d", chunk and "more than " .. length
        or tostring(sent), length), { option = "body" }))
    end
    send(x, chunk)
    if chunk == nil then return end
  end
end

local function finish_fetch(feeder, ok, raw)
  if not ok or not raw._stream then
    -- The transfer is over (or failed, or the caller was cancelled): so is its body.
    if not feeder:done() then feeder:cancel() end
    if not ok then error(raw, 0) end
  elseif not feeder:done() then
    raw._feeder = feeder -- the server answered before the whole body went out
  end
  return raw
end

--- Runs the normalised request; returns the raw response table.
function http.run(final_url, n)
  local fn = n.body_fn
  if not fn then return raw_fetch(final_url, n) end
  -- Flags for the C side during the start only: n is the caller's normalised request, which
  -- a retry runs again (it called `true` as the body function).
  n.body_fn, n.start_only = true, true
  local started, x = pcall(raw_fetch, final_url, n)
  n.body_fn, n.start_only = fn, nil
  if not started then error(x, 0) end
  local feeder = spawn(feed, x, fn, n.body_length)
  return finish_fetch(feeder, pcall(fetch_wait, final_url, n, x))
end

local function fetch_once(final_url, n) return http.make_response(http.run(final_url, n)) end
http.fetch_once = fetch_once

-- ---- retries ----

-- Failures worth another attempt: the network's, not the caller's (invalid, too_large, tls).
local RETRY_KINDS = { dns = true, connect = true, timeout = true, protocol = true }
local RETRY_STATUS = { [429] = true, [502] = true, [503] = true, [504] = true }

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
  local ok, at = pcall(os.time, utc) -- a year past what os.time takes: no date, the backoff
  if not ok or not at then return nil end
  return math.max(0, at - offset - now)
end

--- Runs once(url, n) until it succeeds, with the backoff of async.retry between attempts. A
--- 429/502/503/504 response is retried too (honouring Retry-After), and returned as it is
--- after the last attempt; errors of the caller's making, and cancellation, are raised at once.
function http.with_retries(url, n, once)
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
    delay = delay and math.min(delay, r.max_delay)
      or check.backoff(attempt, r.backoff, r.max_delay, r.jitter)
    async.sleep(delay)
  end
end

--- async.fetch(url [, opts]) -> Response. Suspends the calling task until the transfer ends
--- (with opts.stream, until the final response's headers are in).
local normalise, with_retries = http.normalise, http.with_retries
function async.fetch(url, opts)
  check.in_task("async.fetch")
  local final_url, normalised = normalise("async.fetch", url, opts)
  if normalised.retry then return with_retries(final_url, normalised, fetch_once) end
  return fetch_once(final_url, normalised)
end

http.Response = Response
