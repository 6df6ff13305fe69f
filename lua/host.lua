-- The host's main task: does what the command line asked for, in order, as lua.c does. The C
-- side (host/main.c) parses the options and hands over the plan.
local plan = ...

-- A main chunk that fails ends the program, as in lua5.4 and Node: what it started (a server
-- left open, tasks still sleeping) is cancelled, not left running with the failure unreported
-- until someone interrupts it. Closed as the error unwinds, so the error and its traceback are
-- the main task's own.
local async = require "lasync"
local _ <close> = setmetatable({}, { __close = function(_, err)
  if err == nil or async.is_cancelled(err) then return end
  if not pcall(async._cancel_others, "the main task failed") then pcall(async._cancel_others) end
end })

-- A chunk that does not load (a syntax error, a missing file) is one line on stderr, as lua5.4
-- prints it, without the host's frames: main.c prints the message returned this way.
local function load_failed(err) return { lasync_load_error = err } end

for i, step in ipairs(plan) do
  if step.kind == "e" then
    local chunk, err = load(step.code, step.name or "=(command line)")
    if not chunk then return load_failed(err) end
    chunk()
  elseif step.kind == "f" then
    local chunk, err = loadfile(step.path)
    if not chunk then return load_failed(err) end
    chunk()
  elseif step.kind == "l" then
    local global, mod = step.name:match("^([^=]+)=(.+)$")
    global, mod = global or step.name, mod or step.name
    _G[global] = require(mod)
  elseif step.kind == "W" then
    warn("@on")
  elseif step.kind == "script" then
    local chunk, err = loadfile(step.path)
    if not chunk then return load_failed(err) end
    if i == #plan then return chunk(table.unpack(step.args, 1, step.args.n)) end
    chunk(table.unpack(step.args, 1, step.args.n)) -- lasync -i script: the REPL follows
  elseif step.kind == "repl" then
    return step.run() -- lua/repl.lua, through host/lineedit.c
  end
end
