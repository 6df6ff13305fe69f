-- async.http.client: a Client with its own defaults and connection limits, on the runtime's
-- one curl multi (lua/http/client.lua).
local core, async = ...

local error, ipairs, pairs, pcall, setmetatable, type = error, ipairs, pairs, pcall, setmetatable,
  type
local lower = string.lower
local http, check = core._http, core._check

-- ---- per-client limits ----
--
-- There is one curl multi per runtime, so a client's max_connections and max_per_host are
-- counted here, as transfers in flight (each holds a connection for its whole run), with
-- async.semaphore: first come first served, and a cancelled waiter never loses a permit.

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
  local key, host, host_permit, total_permit
  -- A host's semaphore lives while someone holds or waits for it, so a client that saw many
  -- hosts does not keep them all.
  local function leave_host()
    host.users = host.users - 1
    if host.users == 0 and limits.hosts[key] == host then limits.hosts[key] = nil end
  end
  if limits.per_host then
    key = origin(url)
    host = limits.hosts[key]
    if not host then
      host = { sem = async.semaphore(limits.per_host), users = 0 }
      limits.hosts[key] = host
    end
    host.users = host.users + 1
    local ok, p = pcall(host.sem.acquire, host.sem)
    if not ok then
      leave_host()
      error(p, 0)
    end
    host_permit = p
  end
  if limits.total then
    local ok, p = pcall(limits.total.acquire, limits.total)
    if not ok then
      if host_permit then
        host_permit:release()
        leave_host()
      end
      error(p, 0)
    end
    total_permit = p
  end
  local held = true
  return function()
    if not held then return end
    held = false
    if total_permit then total_permit:release() end
    if host_permit then
      host_permit:release()
      leave_host()
    end
  end
end

-- Gives a streamed response's permit back if it is collected before its end or close.
local permit_guard_mt = {
  __gc = function(guard) pcall(guard.release) end,
}

-- One attempt under the client's connection limits.
local function limited_once(self, final_url, normalised)
  local permit = take_permit(self.limits, final_url)
  local ok, raw = pcall(http.run, final_url, normalised)
  if ok and raw._stream then
    -- A streamed body holds its connection until it ends or is closed.
    raw._permit = permit
    raw._permit_guard = setmetatable({ release = permit }, permit_guard_mt)
  else
    permit()
    if not ok then error(raw, 0) end
  end
  return http.make_response(raw)
end

-- ---- the Client ----

local Client = { __name = "lasync.Client" }
Client.__index = Client

function Client:fetch(url, opts)
  check.in_task("client:fetch")
  if type(url) ~= "string" then check.argerror("client:fetch", 1, "url", "string", url) end
  if self.base_url and not url:find("^%a[%w+.-]*://") then
    url = self.base_url:gsub("/+$", "") .. "/" .. url:gsub("^/+", "")
  end
  local final_url, normalised = http.normalise("client:fetch", url, http.merge(self.defaults, opts))
  local once = http.fetch_once
  if self.limits then once = function(u, n) return limited_once(self, u, n) end end
  if normalised.retry then return http.with_retries(final_url, normalised, once) end
  return once(final_url, normalised)
end

local function with_method(method)
  return function(self, url, opts)
    if opts ~= nil and type(opts) ~= "table" then
      check.argerror("client:" .. lower(method), 2, "options", "table", opts)
    end
    opts = http.merge({}, opts)
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
check.methods(Client, "client")

local CLIENT_ONLY = { base_url = true, max_connections = true, max_per_host = true }

--- async.http.client{base_url=, headers=, timeout=, max_connections=, max_per_host=, ...}: a
--- client with its own defaults and limits. Every option is checked here, as a call's would
--- be, so a bad default fails where the client is made rather than on first use.
local function new_client(opts)
  local fname = "async.http.client"
  if opts ~= nil and type(opts) ~= "table" then
    check.argerror(fname, 1, "options", "table", opts)
  end
  opts = opts or {}
  local defaults, limits = {}, nil
  for k, v in pairs(opts) do
    if not CLIENT_ONLY[k] then defaults[k] = v end
  end
  for _, k in ipairs { "max_connections", "max_per_host" } do
    local v = opts[k]
    if v ~= nil then
      if math.type(v) ~= "integer" or v < 1 then
        http.invalid(fname, nil, k, check.expected("integer >= 1", v))
      end
      limits = limits or { hosts = {} }
      limits[k == "max_connections" and "total" or "per_host"] = v
    end
  end
  if limits and limits.total then limits.total = async.semaphore(limits.total) end
  local base_url = opts.base_url
  if base_url ~= nil then
    if type(base_url) ~= "string" then
      http.invalid(fname, nil, "base_url", check.expected("string", base_url))
    end
    local ok, err = pcall(http.check_url, fname, base_url)
    if not ok and err.kind ~= "invalid" then error(err, 0) end -- "unavailable": no libcurl
    if not ok then http.invalid(fname, base_url, "base_url", err.message:match("%((.*)%)$")) end
  end
  http.normalise(fname, base_url or "http://127.0.0.1/", defaults)
  return setmetatable({ base_url = base_url, defaults = defaults, limits = limits }, Client)
end

async.http = { client = new_client, Response = http.Response }
