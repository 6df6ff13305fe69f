-- Running the `lasync` executable on a pseudo-terminal (spec/support/pty_driver.py), for the
-- REPL and signal specs: a list of steps (expect a pattern, send keys, signal, wait for exit).
local cjson = require "cjson"
local sub = require "subprocess"

local M = {}

--- Keys, for send steps.
M.ENTER, M.CTRL_D, M.TAB, M.UP = "\r", "\4", "\t", "\27[A"

--- Runs `lasync <args...>` (a list) through the steps; returns the output (with "\r\n" made
--- "\n"), the exit status (nil if it had to be killed), and the failed step or nil.
--- opts: env (a table of variables), timeout (seconds, default 60).
function M.run(args, steps, opts)
  opts = opts or {}
  local cmd = { sub.LASYNC }
  for _, a in ipairs(args or {}) do cmd[#cmd + 1] = a end
  local spec = cjson.encode({ cmd = cmd, env = opts.env or {}, steps = steps,
    timeout = opts.timeout or 60 })
  local p = assert(io.popen("python3 spec/support/pty_driver.py " .. sub.q(spec), "r"))
  local text = p:read("a")
  p:close()
  local ok, res = pcall(cjson.decode, text)
  if not ok then return text, nil, "the driver failed: " .. text end
  local status = res.status
  if status == cjson.null then status = nil end
  local err = res.error
  if err == cjson.null then err = nil end
  return (res.output:gsub("\r\n", "\n")), status, err
end

return M
