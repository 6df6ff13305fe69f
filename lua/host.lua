-- The host's main task: does what the command line asked for, in order, as lua.c does. The C
-- side (host/main.c) parses the options and hands over the plan.
local plan = ...

-- A chunk that does not load (a syntax error, a missing file) is one line on stderr, as lua5.4
-- prints it, without the host's frames: main.c prints the message returned this way.
local function load_failed(err) return { lasync_load_error = err } end

local function repl()
  local pack, unpack = table.pack, table.unpack
  while true do
    io.stdout:write("> ")
    io.stdout:flush()
    local line = io.read("L")
    if not line then io.stdout:write("\n"); return end
    local chunk, err = load("return " .. line, "=stdin")
    if not chunk then
      chunk, err = load(line, "=stdin")
      while not chunk and err:match("<eof>$") do
        io.stdout:write(">> ")
        io.stdout:flush()
        local more = io.read("L")
        if not more then break end
        line = line .. more
        chunk, err = load(line, "=stdin")
      end
    end
    if not chunk then
      io.stderr:write(err, "\n")
    else
      local res = pack(xpcall(chunk, debug.traceback))
      if not res[1] then
        io.stderr:write(tostring(res[2]), "\n")
      elseif res.n > 1 then
        print(unpack(res, 2, res.n))
      end
    end
  end
end

for _, step in ipairs(plan) do
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
    return chunk(table.unpack(step.args, 1, step.args.n))
  elseif step.kind == "repl" then
    return repl()
  end
end
