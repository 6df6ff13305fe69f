-- Running the `lasync` executable as a child process, for the specs about the host itself.
-- CTest sets LASYNC to the executable; under stock lua5.4 it is unset and such specs pend.
local M = { LASYNC = os.getenv("LASYNC") }

local temps = {}

--- A temporary file, optionally with contents; removed by M.cleanup().
function M.tmpfile(contents)
  local path = os.tmpname()
  temps[#temps + 1] = path
  if contents then
    local f = assert(io.open(path, "w"))
    f:write(contents)
    f:close()
  end
  return path
end

--- Removes the temporary files made so far (call it in after_each).
function M.cleanup()
  for _, p in ipairs(temps) do os.remove(p) end
  temps = {}
end

--- A file's contents, or "" if it does not exist.
function M.slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

--- How many times needle (plain text) occurs in haystack.
function M.count(haystack, needle)
  local n, i = 0, 1
  while true do
    local s, e = haystack:find(needle, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

--- Quotes a string for sh.
function M.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

--- Runs `lasync <args>` (args already quoted) through sh; returns stdout, stderr, exit status.
--- opts: stdin (text), prefix (shell put before, e.g. "ulimit -n 32; "), timeout (seconds,
--- default 30; a hang gives status 124, or 137 when the host does not stop on SIGTERM either).
function M.run(args, opts)
  opts = opts or {}
  local err = M.tmpfile()
  local stdin = opts.stdin and M.q(M.tmpfile(opts.stdin)) or "/dev/null"
  local cmd = (opts.prefix or "") .. "exec timeout -k 5 " .. (opts.timeout or 30) .. " " ..
      M.q(M.LASYNC) .. " " .. args .. " 2>" .. M.q(err) .. " <" .. stdin
  local p = assert(io.popen("sh -c " .. M.q(cmd), "r"))
  local out = p:read("a")
  local _, _, code = p:close()
  return out, M.slurp(err), code
end

--- Runs a Lua script (its source text) with the host; returns stdout, stderr, exit status.
function M.run_script(source, args, opts)
  return M.run(M.q(M.tmpfile(source)) .. " " .. (args or ""), opts)
end

return M
