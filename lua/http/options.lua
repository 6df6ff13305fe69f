-- async.fetch's options: checked and normalised here, before any I/O, so that the C side
-- (bindings/http/client.c) only drives curl. The HTTP server will check headers the same way.
-- Shared with lua/http/client.lua and lua/http/pool.lua through core._http.
local core = ...

local error, ipairs, pairs, pcall, require = error, ipairs, pairs, pcall, require
local setmetatable, tonumber, tostring, type = setmetatable, tonumber, tostring, type
local format, lower, concat, sort = string.format, string.lower, table.concat, table.sort
local mtype, huge = math.type, math.huge
local new_error, check_url, check = core.error, core._check_url, core._check

local http = {}
core._http = http

local DEFAULTS = {
  method = "GET",
  timeout = 30,
  connect_timeout = 10,
  low_speed_limit = 0,
  low_speed_time = 0,
  follow_redirects = true,
  max_redirects = 10,
  -- max_body: absent, 64 MiB (bindings/http/client.c); math.huge, no limit; 0, no body.
  verify_tls = true,
  decompress = true,
  user_agent = "lasync/" .. core.version,
}
http.DEFAULTS = DEFAULTS

local cjson
function http.json_module()
  cjson = cjson or require "cjson"
  return cjson
end

-- A bad option is an error object of kind "invalid" (so a retry loop can tell it from the
-- network's failures), whose message has the misuse format of core._check.
local function invalid(fname, url, option, why)
  error(new_error("invalid", check.option_message(fname, option, why),
    { url = url, option = option }), 0)
end
http.invalid = invalid

local function has_bad_chars(s) return s:find("[\r\n%z]") ~= nil end
http.has_bad_chars = has_bad_chars

local function check_type(fname, url, opts, name, want)
  local v = opts[name]
  if v ~= nil and type(v) ~= want then invalid(fname, url, name, check.expected(want, v)) end
  return v
end

local function check_seconds(fname, url, opts, name)
  local v = check_type(fname, url, opts, name, "number")
  if v ~= nil and not (v >= 0) then invalid(fname, url, name, check.expected("number >= 0", v)) end
  return v
end

-- A whole number >= 0, integer or float (1e6); math.huge only where it means "no limit".
local function check_count(fname, url, opts, name, unlimited)
  local v = check_type(fname, url, opts, name, "number")
  if v == nil then return nil end
  if v == huge and unlimited then return v end
  if not (v >= 0) or v == huge or v ~= v // 1 then
    invalid(fname, url, name, check.expected(unlimited and
      "integer >= 0 or math.huge" or "integer >= 0", v))
  end
  return v
end

-- URLs that passed, so that fetching one again skips curl's parse (a tenth of a small
-- fetch's own cost): at most CHECKED_MAX, forgotten all at once when full.
local checked, nchecked, CHECKED_MAX = {}, 0, 256

--- Checks an absolute http(s) URL before any I/O: misuse for a non-string, kind "invalid"
--- for one curl could never use (a port out of range, no host, a 10 MB URL).
function http.check_url(fname, url)
  if checked[url] then return end
  if type(url) ~= "string" then check.argerror(fname, 1, "url", "string", url) end
  if has_bad_chars(url) or url:find("[%s]") then
    invalid(fname, url, "url", "control characters or spaces in the URL")
  end
  if not url:find("^%a[%w+.-]*://") then invalid(fname, url, "url", "absolute URL expected") end
  local why = check_url(url, fname) -- loads libcurl on first use (bindings/http/libcurl.h)
  if why then invalid(fname, url, "url", why) end
  if nchecked >= CHECKED_MAX then checked, nchecked = {}, 0 end
  checked[url], nchecked = true, nchecked + 1
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
http.KNOWN = KNOWN

-- ---- opts.retry = {attempts, backoff, max_delay, jitter, retry_if} ----

local RETRY_KNOWN = { attempts = true, backoff = true, max_delay = true, jitter = true,
  retry_if = true }

local function check_retry(fname, url, r)
  if r == nil then return nil end
  for k in pairs(r) do
    if not RETRY_KNOWN[k] then
      invalid(fname, url, "retry", "unknown field '" .. tostring(k) .. "'")
    end
  end
  local function number(k, dflt, least, integer)
    local v = r[k]
    if v == nil then return dflt end
    if type(v) ~= "number" or v ~= v or v < least or (integer and mtype(v) ~= "integer") then
      invalid(fname, url, "retry", format("'%s' must be %s >= %s", k,
        integer and "an integer" or "a number", least))
    end
    return v
  end
  local retry_if = r.retry_if
  if retry_if ~= nil and not check.is_callable(retry_if) then
    invalid(fname, url, "retry", "'retry_if' must be a function")
  end
  if r.jitter ~= nil and type(r.jitter) ~= "boolean" then
    invalid(fname, url, "retry", "'jitter' must be a boolean")
  end
  return { attempts = number("attempts", 3, 1, true), backoff = number("backoff", 0.1, 0),
    max_delay = number("max_delay", 30, 0), jitter = r.jitter ~= false, retry_if = retry_if }
end

-- ---- normalise ----

-- Only what differs from DEFAULTS is stored (bindings/http/client.c reads fields with
-- lua_getfield, which sees through __index).
local DEFAULTS_MT = { __index = DEFAULTS }
local SECONDS_OPTS = { "timeout", "connect_timeout", "low_speed_time" }
-- name -> whether math.huge is allowed, meaning no limit
local COUNT_OPTS = { low_speed_limit = false, max_redirects = true, max_body = true,
  stream_buffer = true }
local BOOLEAN_OPTS = { "follow_redirects", "verify_tls", "decompress", "stream" }
local STRING_OPTS = { "ca_file", "proxy", "user_agent" }
local TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$" -- an HTTP token (RFC 9110): methods, header names

--- Checks a header table; returns "Name: value" lines, the set of lower-case names, and the
--- value of Content-Length. CR, LF and NUL could smuggle a second header or request.
function http.header_lines(fname, url, headers)
  local lines, has, names, content_length = {}, {}, {}, nil
  for k in pairs(headers) do names[#names + 1] = k end
  sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(names) do
    local v = headers[k]
    if type(k) ~= "string" or not k:find(TOKEN) then
      invalid(fname, url, "headers", format("bad header name %q", tostring(k)))
    end
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" then
      invalid(fname, url, "headers", format("value of '%s' must be a string", k))
    end
    if has_bad_chars(v) then
      invalid(fname, url, "headers", format("CR, LF or NUL in the value of '%s'", k))
    end
    local lk = lower(k)
    has[lk] = true
    if lk == "content-length" then content_length = v end
    -- curl sends "Name;" as a header with an empty value ("Name:" would remove it).
    lines[#lines + 1] = v == "" and (k .. ";") or (k .. ": " .. v)
  end
  return lines, has, content_length
end

-- A fetch with no options: bindings/http/client.c keeps its easy handles set up for the next.
local PLAIN = setmetatable({ headers = {} }, DEFAULTS_MT)
core._fetch_plain(PLAIN)

--- Checks the options and returns the final URL and the table bindings/http/client.c reads.
function http.normalise(fname, url, opts)
  http.check_url(fname, url)
  if opts == nil then return url, PLAIN end
  if type(opts) ~= "table" then check.argerror(fname, 2, "options", "table", opts) end
  for k in pairs(opts) do
    if not KNOWN[k] then
      error(new_error("invalid", check.unknown_option_message(fname, k),
        { url = url, option = k }), 0)
    end
  end

  local n = setmetatable({}, DEFAULTS_MT)
  local method = check_type(fname, url, opts, "method", "string")
  if method then
    if not method:find(TOKEN) then invalid(fname, url, "method", "an HTTP token expected") end
    n.method = method:upper()
  end
  for _, k in ipairs(SECONDS_OPTS) do
    local v = check_seconds(fname, url, opts, k)
    if v ~= nil then n[k] = v end
  end
  for k, unlimited in pairs(COUNT_OPTS) do
    local v = check_count(fname, url, opts, k, unlimited)
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

  local lines, has, content_length = {}, {}, nil
  local headers = check_type(fname, url, opts, "headers", "table")
  if headers then lines, has, content_length = http.header_lines(fname, url, headers) end

  local body = opts.body
  if type(body) == "function" then
    if opts.json ~= nil then invalid(fname, url, "json", "body and json are exclusive") end
    n.body_fn, body = body, nil
    if content_length then
      -- The length of a body function's chunks: curl sends it instead of chunking.
      n.body_length = content_length:find("^%d+$") and math.tointeger(tonumber(content_length))
      if not n.body_length then invalid(fname, url, "headers", "bad Content-Length") end
      for i = #lines, 1, -1 do
        if lower(lines[i]):find("^content%-length[:;]") then table.remove(lines, i) end
      end
    end
    -- Without "Expect: 100-continue" the first chunk need not wait for the server's go-ahead.
    if not has.expect then lines[#lines + 1] = "Expect:" end
  elseif body ~= nil and type(body) ~= "string" then
    invalid(fname, url, "body", check.expected("string or function", body))
  end
  if opts.json ~= nil then
    if body ~= nil then invalid(fname, url, "json", "body and json are exclusive") end
    local ok, encoded = pcall(http.json_module().encode, opts.json)
    if not ok then invalid(fname, url, "json", tostring(encoded)) end
    body = encoded
    if not has["content-type"] then
      lines[#lines + 1] = "Content-Type: application/json"
      has["content-type"] = true
    end
  end
  if not has["content-type"] then
    if body ~= nil or n.body_fn then
      -- Bytes of unknown type, rather than curl's default for a POST
      -- (application/x-www-form-urlencoded), which would misdescribe most bodies.
      lines[#lines + 1] = "Content-Type: application/octet-stream"
    elseif (n.method or "GET") == "POST" then
      lines[#lines + 1] = "Content-Type:" -- an empty POST: no type at all
    end
  end
  n.body = body
  n.headers = lines

  local query = check_type(fname, url, opts, "query", "table")
  if query then
    url = add_query(fname, url, query)
    http.check_url(fname, url)
  end
  n.retry = check_retry(fname, url, check_type(fname, url, opts, "retry", "table"))
  if n.retry and n.retry.attempts > 1 and n.body_fn then
    -- A second attempt would call the function again, which has given its chunks away.
    invalid(fname, url, "retry", "a body function cannot be sent twice: pass the body as a "
      .. "string, or retry = {attempts = 1}")
  end
  return url, n
end

--- A client's defaults under a call's options: headers merge (the call's win, names compared
--- ignoring case), everything else is replaced.
function http.merge(defaults, opts)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  if opts then
    if type(opts) ~= "table" then return opts end -- normalise reports it
    for k, v in pairs(opts) do
      if k == "headers" and out.headers and type(v) == "table" then
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

return http
