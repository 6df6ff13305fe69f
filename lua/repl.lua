-- The REPL: `lasync` with no script on a terminal, or `lasync -i`. It runs in the main task and
-- reads through `editor` (host/lineedit.c), which reads on the loop, so background tasks keep
-- running while the prompt waits. Each chunk entered runs as its own task; Ctrl-C
-- (host/signals.c) cancels that task, or clears the line at an idle prompt.
local editor = ...
local async = require "lasync"
-- Completion reads tables raw (never calling a metamethod), so the module's parts that load on
-- first use (bindings/lasync.c) are loaded now: pairs does that.
pairs(async)

local pack, unpack, select, type = table.pack, table.unpack, select, type
local stdout, stderr = io.stdout, io.stderr

-- ---- completion: globals, table fields and methods, without calling any metamethod ----

local KEYWORDS = {
  "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
  "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
}

-- The tables that indexing v looks in: v itself if a table, then each __index that is a table.
local function lookups(v)
  local chain = {}
  for _ = 1, 16 do
    if type(v) == "table" then chain[#chain + 1] = v end
    local mt = getmetatable(v)
    local index = type(mt) == "table" and rawget(mt, "__index")
    if type(index) ~= "table" then break end
    v = index
  end
  return chain
end

local function field(v, name)
  for _, t in ipairs(lookups(v)) do
    local x = rawget(t, name)
    if x ~= nil then return x end
  end
end

--- The completions of `text`, the word before the cursor: `pri` -> `print`, `async.ga` ->
--- `async.gather`, `async.gather_settled`, `s:up` -> `s:upper` for a string `s`.
local function complete(text)
  local head, partial = text:match("^(.*[.:])([%w_]*)$")
  local v, out, seen = _G, {}, {}
  if head then
    local path, sep = head:sub(1, -2), head:sub(-1)
    if not path:match("^[%a_][%w_]*$") and not path:match("^[%a_][%w_.]*[%w_]$") then
      return out
    end
    for name in path:gmatch("[^.]+") do
      v = field(v, name)
      if v == nil then return out end
    end
    for _, t in ipairs(lookups(v)) do
      for k, x in next, t do
        if type(k) == "string" and not seen[k] and k:match("^[%a_][%w_]*$") and
            k:sub(1, #partial) == partial and (sep == "." or type(x) == "function") then
          seen[k] = true
          out[#out + 1] = head .. k
        end
      end
    end
  else
    partial = text
    if not partial:match("^[%a_]?[%w_]*$") then return out end
    for _, t in ipairs(lookups(_G)) do
      for k in next, t do
        if type(k) == "string" and not seen[k] and k:sub(1, #partial) == partial and
            k:match("^[%a_][%w_]*$") then
          seen[k] = true
          out[#out + 1] = k
        end
      end
    end
    for _, k in ipairs(KEYWORDS) do
      if not seen[k] and k:sub(1, #partial) == partial then out[#out + 1] = k end
    end
  end
  table.sort(out)
  return out
end

-- ---- output: what tasks write while the prompt shows is written over it ----

-- Whether the last non-empty value among the arguments ends a line; nil if none writes.
local function ends_line(...)
  for i = select("#", ...), 1, -1 do
    local s = select(i, ...)
    if type(s) == "number" then return false end
    if type(s) == "string" and s ~= "" then return s:sub(-1) == "\n" end
  end
  return nil
end

local originals = {}

local function wrap_output()
  local FILE = getmetatable(stdout).__index
  local print, write, file_write = print, io.write, FILE.write
  originals = { print = print, write = write, file_write = file_write, FILE = FILE }
  _G.print = function(...)
    editor.hide(true)
    return print(...)
  end
  io.write = function(...) -- luacheck: ignore 122 (wrapped while the REPL runs)
    local nl = ends_line(...)
    if nl ~= nil and io.output() == stdout then editor.hide(nl) end
    return write(...)
  end
  FILE.write = function(f, ...)
    if f == stdout or f == stderr then
      local nl = ends_line(...)
      if nl ~= nil then editor.hide(nl) end
    end
    return file_write(f, ...)
  end
end

local function unwrap_output()
  if not originals.FILE then return end
  _G.print, originals.FILE.write = originals.print, originals.file_write
  io.write = originals.write -- luacheck: ignore 122
  originals = {}
end

-- ---- reading a chunk as lua.c does ----

local function compile_error(err)
  stderr:write("lasync: ", err, "\n")
  stderr:flush()
end

-- Reads lines until they make a chunk. Returns the function; or "" for nothing to run; false
-- after a Ctrl-C; nil at end of input.
local function read_chunk()
  local line = editor.read("> ")
  if not line then return line end
  if line:match("^%s*$") then return "" end
  local src = line
  if src:sub(1, 1) == "=" then src = "return " .. src:sub(2) end -- lua5.4's "=expr"
  local fn = load("return " .. src .. ";", "=stdin")
  if fn then
    editor.add_history(line)
    return fn
  end
  local typed, err = line, nil -- luacheck: ignore 311
  while true do
    fn, err = load(src, "=stdin")
    if fn or not err:match("<eof>$") then break end -- lua.c: incomplete input ends at <eof>
    local more = editor.read(">> ")
    if more == false then return false end
    if more == nil then break end
    src, typed = src .. "\n" .. more, typed .. "\n" .. more
  end
  editor.add_history(typed)
  if not fn then
    compile_error(err)
    return ""
  end
  return fn
end

-- ---- running a chunk ----

-- Frames below the chunk belong to the REPL and the task machinery, not to the user.
local function is_host_frame(line)
  return line:match("^%s*%[lasync") or line:match("^%s*%[C%]: in function 'xpcall'") or
      line:match("^%s*%[C%]: in %?") or line:match("^%s*%(%.%.%.tail calls%.%.%.%)")
end

local function traceback(err)
  if async.is_cancelled(err) then return err end
  local msg = err
  if type(msg) ~= "string" then
    local mt = getmetatable(msg)
    if type(mt) == "table" and mt.__tostring then
      msg = tostring(msg)
    else
      msg = ("(error object is a %s value)"):format(type(msg))
    end
  end
  local lines = {}
  for l in (debug.traceback(msg, 2) .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  while #lines > 1 and is_host_frame(lines[#lines]) do lines[#lines] = nil end
  if lines[#lines] == "stack traceback:" then lines[#lines] = nil end
  return table.concat(lines, "\n")
end

local function report(res)
  if res[1] then
    if res.n > 1 then
      local ok, err = pcall(print, unpack(res, 2, res.n))
      if not ok then compile_error("error calling 'print' (" .. tostring(err) .. ")") end
    end
  elseif async.is_cancelled(res[2]) then
    stderr:write("lasync: ", res[2].message or tostring(res[2]), "\n")
  else
    stderr:write("lasync: ", tostring(res[2]), "\n")
  end
  stdout:flush()
  stderr:flush()
end

local function run_chunk(fn)
  local task = async.spawn(function() return pack(xpcall(fn, traceback)) end)
  editor.running(task)
  local ok, res = pcall(async.await, task)
  editor.running(nil)
  if not ok then
    if not task:done() then -- the REPL itself is being cancelled (SIGTERM): so is the chunk
      task:cancel()
      error(res, 0)
    end
    res = pack(false, res) -- cancelled before it started
  end
  report(res)
end

-- ---- leaving ----

local main

-- Cancels every task but the REPL's own and the caller, saying how many there were, and waits
-- for their cleanup (a few seconds at most: one that ignores cancellation is left to the host).
local function cancel_others()
  local others, me = {}, async.current()
  for _, info in ipairs(async.tasks()) do
    if info.task ~= main and info.task ~= me then others[#others + 1] = info.task end
  end
  if #others == 0 then return end
  stderr:write(("lasync: %d task%s still running; cancelling %s\n"):format(#others,
    #others == 1 and " is" or "s are", #others == 1 and "it" or "them"))
  stderr:flush()
  for _, t in ipairs(others) do t:cancel("the REPL is leaving") end
  if me then
    pcall(async.timeout, 5, function()
      for _, t in ipairs(others) do pcall(async.await, t) end
    end)
  end
end

local function history_file()
  local home = os.getenv("HOME")
  if home and home ~= "" then return home .. "/.lasync_history" end
end

--- Runs the REPL in the calling task until end of input (Ctrl-D) or os.exit().
return function()
  main = async.current()
  editor.start { history = history_file(), complete = complete }
  wrap_output()
  local real_exit = os.exit
  local function stop()
    unwrap_output()
    if os.exit ~= real_exit then os.exit = real_exit end -- luacheck: ignore 122
    editor.stop()
  end
  os.exit = function(code, close) -- luacheck: ignore 122 (the REPL leaves cleanly)
    cancel_others()
    stop()
    return real_exit(code, close)
  end
  local ok, err = pcall(function()
    while true do
      local chunk = read_chunk()
      if chunk == nil then
        stdout:write("\n") -- as lua.c: the cursor was left after the prompt
        break
      end
      if type(chunk) == "function" then run_chunk(chunk) end
    end
    cancel_others()
  end)
  stop()
  if not ok then error(err, 0) end
end
