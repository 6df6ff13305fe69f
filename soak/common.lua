-- Shared by soak/fetch.lua and soak/sleep.lua: RSS sampling and the sample lines soak/run reads.
--
-- Each sample is one stdout line
--   sample <ops> <rss_kb> <lua_kb>
-- ops: operations completed so far; rss_kb: the resident set of this process, from
-- /proc/self/statm (its second field, in pages); lua_kb: the Lua heap (collectgarbage "count").
local M = {}

local page_kb = 4
do -- the page size, when getconf is there (4 KiB everywhere this runs, in practice)
  local p = io.popen("getconf PAGESIZE 2>/dev/null")
  if p then
    local n = tonumber(p:read("l") or "")
    p:close()
    if n and n > 0 then page_kb = n // 1024 end
  end
end

local statm = assert(io.open("/proc/self/statm", "r"))
statm:setvbuf("no")

function M.rss_kb()
  statm:seek("set", 0)
  local _, resident = statm:read("n", "n")
  return math.tointeger(resident) * page_kb
end

local out = io.stdout
out:setvbuf("line")

function M.sample(ops)
  out:write(("sample %d %d %d\n"):format(ops, M.rss_kb(), math.floor(collectgarbage("count"))))
end

-- Prints "count <name> <value>" for each of async._debug.counts() (all must be 0 at the end).
function M.counts(async)
  local c = async._debug.counts()
  local names = {}
  for k in pairs(c) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do out:write(("count %s %s\n"):format(k, tostring(c[k]))) end
  return c
end

function M.count_arg(s, usage)
  local n = math.tointeger(tonumber(s or ""))
  if not n or n < 1 then usage() end
  return n
end

return M
