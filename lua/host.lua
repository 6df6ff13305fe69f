-- The host's main task: does what the command line asked for, in order, as lua.c does. The C
-- side (host/main.c) parses the options and hands over the plan.
local plan = ...

local function fail(err) error(err, 0) end

for i, step in ipairs(plan) do
  if step.kind == "e" then
    local chunk, err = load(step.code, step.name or "=(command line)")
    if not chunk then fail(err) end
    chunk()
  elseif step.kind == "f" then
    local chunk, err = loadfile(step.path)
    if not chunk then fail(err) end
    chunk()
  elseif step.kind == "l" then
    local global, mod = step.name:match("^([^=]+)=(.+)$")
    global, mod = global or step.name, mod or step.name
    _G[global] = require(mod)
  elseif step.kind == "W" then
    warn("@on")
  elseif step.kind == "script" then
    local chunk, err = loadfile(step.path)
    if not chunk then fail(err) end
    if i == #plan then return chunk(table.unpack(step.args, 1, step.args.n)) end
    chunk(table.unpack(step.args, 1, step.args.n)) -- lasync -i script: the REPL follows
  elseif step.kind == "repl" then
    return step.run() -- lua/repl.lua, through host/lineedit.c
  end
end
