-- types/lasync.lua (LuaLS definitions) against the module as it really is: every public
-- function, method and value reachable from `require "lasync"` has a definition there, and
-- every definition there names something that exists. A new module or class that lands without
-- its definitions fails here with the exact names to add (see the head of types/lasync.lua for
-- how to write them).
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

local TYPES = os.getenv("LASYNC_TYPES") or "types/lasync.lua"

-- Metatables with a lasync name and methods that are not part of the public API: internal
-- objects that Lua code outside lasync never holds. A name listed here is still checked to
-- exist, so the list cannot go stale either. (A metatable with no methods at all, such as
-- lasync.Transfer, lasync.Request or lasync.Sentinel, some made only when first needed, is
-- one nobody calls: it needs no entry, and no definition unless its fields are public, as
-- lasync.Error's.)
local INTERNAL = {
  ["lasync.Deadline"] = true, -- core._deadline: timeout/shield/scope's cancel scope
  ["lasync.TcpServer"] = true, -- the listening handle inside an async.net.listen Server
  ["lasync.HttpListener"] = true, -- the C listener inside an async.http.serve Server
  ["lasync.HttpConn"] = true, -- a server connection, held by a Request and its Response
}

-- Objects of the public API, made once so that every metatable exists: C bindings make theirs
-- on first use (luaL_newmetatable in the call that returns the first object), so a class is
-- only in the registry once one of its objects was made. A class whose metatable carries a
-- lasync `__name` is then found by itself, through the registry or the upvalues of the
-- module's functions. Runs in a task; `done` closes what needs closing. Add your objects here.
local INSTANCES = {
  function() return async.http.client() end,
  function() return async.semaphore() end,
  function() return async.future() end,
  function() return async.error("x", "y") end,
  function(done) -- an HTTP server, a router, and a request with its response
    local app = async.http.router()
    local got = async.future()
    app:get("/", function(req, res) got:set(req, res); return "ok" end)
    local srv = async.http.serve(app)
    async.fetch("http://127.0.0.1:" .. srv.port .. "/")
    done[#done + 1] = function() srv:close() end
    return srv, app, got:await()
  end,
  function(done) -- a server, and a connection to it from both ends (lasync.Stream)
    local accepted, release = async.future(), async.future()
    local srv = async.net.listen({ port = 0 }, function(conn)
      accepted:set(conn)
      release:await() -- the server closes conn when the handler returns
    end)
    local conn = async.net.connect("127.0.0.1", srv.port)
    local other = accepted:await()
    done[#done + 1] = function()
      conn:close()
      release:set()
      srv:close({ grace = 5 })
    end
    return srv, conn, other
  end,
  function(done) -- a thread pool (lasync.ThreadPool)
    local pool = async.thread.pool({ size = 1 })
    done[#done + 1] = function() pool:close() end
    return pool
  end,
}

-- ---- what the types file defines ----

-- Reads the few kinds of line the head of types/lasync.lua describes; everything else is for the
-- editor. Returns {module = {name = line}, classes = {Name = {methods, fields, line, has_table}}}.
local function parse_types(path)
  local f = assert(io.open(path, "r"))
  local defs = { module = {}, classes = {} }
  local locals = {} -- local table name -> class name ("lasync" is the module itself)
  local pending, last_class -- a ---@class waiting for its `local X = {}`; fields go to the last
  local n = 0
  for line in f:lines() do
    n = n + 1
    local class = line:match("^%-%-%-@class%s+([%w_.]+)")
    local field = line:match("^%-%-%-@field%s+([%w_]+)")
    local lname = line:match("^local%s+([%w_]+)%s*=%s*{%s*}")
    local fowner, fpath = line:match("^function%s+([%w_]+)[.:]([%w_.:]+)%s*%(")
    local aowner, apath = line:match("^([%w_]+)%.([%w_.]+)%s*=")
    if class then
      defs.classes[class] = defs.classes[class] or { methods = {}, fields = {}, line = n }
      pending, last_class = class, class
    elseif field and last_class then
      defs.classes[last_class].fields[field] = n
    elseif lname and pending then
      locals[lname] = pending
      defs.classes[pending].has_table = true
      pending = nil
    elseif fowner or aowner then
      local owner, name = fowner or aowner, (fpath or apath):gsub(":", ".")
      local class_name = locals[owner]
      if class_name == nil then
        error(string.format("%s:%d: '%s' is no local declared as `---@class` + `local %s = {}`",
          path, n, owner, owner))
      elseif class_name == "lasync" then
        defs.module[name] = n
      else
        defs.classes[class_name].methods[name] = n
      end
    end
    if not line:match("^%-%-%-") then pending = nil end
  end
  f:close()
  return defs
end

-- ---- what the module really has ----

local function lasync_name(t)
  local mt = type(t) == "table" and t or nil
  local name = mt and rawget(mt, "__name")
  return type(name) == "string" and name:match("^lasync%.") and name or nil
end

-- The methods of a class: the functions of its metatable and of its __index table, metamethods
-- left out.
local function methods_of(mt)
  local names = {}
  local function add(t)
    for k, v in pairs(t) do
      if type(k) == "string" and not k:match("^__") and type(v) == "function" then
        names[k] = true
      end
    end
  end
  add(mt)
  local index = rawget(mt, "__index")
  if type(index) == "table" then
    add(index)
  elseif type(index) == "function" then
    -- An __index function (methods, then fields) keeps its methods table as an upvalue, as
    -- lasync.Stream's C closure does.
    for i = 1, math.huge do
      local up, v = debug.getupvalue(index, i)
      if up == nil then break end
      if type(v) == "table" and v ~= mt then add(v) end
    end
  end
  return names
end

-- Tables never searched for classes: the standard library and every loaded module but lasync.
local function foreign_tables()
  local skip = { [_G] = true, [package.loaded] = true, [debug.getregistry()] = true }
  for _, v in pairs(_G) do
    if type(v) == "table" then skip[v] = true end
  end
  for _, v in pairs(package.loaded) do
    if type(v) == "table" then skip[v] = true end
  end
  skip[async] = nil -- even when a global holds it (as a REPL may)
  return skip
end

-- The key a metatable has in the registry under a lasync name (luaL_newmetatable's), or nil.
local function registry_name(mt)
  for k, v in pairs(debug.getregistry()) do
    if v == mt and type(k) == "string" and k:match("^lasync%.") then return k end
  end
end

-- Walks the module: names (dotted paths) of everything reachable from its table, and every
-- class: lasync-named metatables in the registry, tables with a lasync `__name` reachable from
-- the module's values, their methods and the upvalues of all those functions, and the
-- metatables of INSTANCES.
local function walk_module()
  local names, classes = {}, {}
  local seen, skip = {}, foreign_tables()
  local visit

  -- A registry metatable is named by its key (the Task's __name is a plain "Task", for messages).
  local function add_class(mt, name)
    name = name or lasync_name(mt)
    if name and not classes[name] then
      classes[name] = methods_of(mt)
      visit(mt)
    end
  end

  function visit(v)
    if seen[v] or skip[v] then return end
    local tv = type(v)
    if tv ~= "table" and tv ~= "function" then return end
    seen[v] = true
    if tv == "table" then
      add_class(v)
      for _, x in pairs(v) do visit(x) end
      local mt = getmetatable(v)
      if type(mt) == "table" then visit(mt) end
    else
      for i = 1, math.huge do
        local up, x = debug.getupvalue(v, i)
        if up == nil then break end
        if up ~= "_ENV" then visit(x) end
      end
    end
  end

  local walked = {}
  local function walk(t, prefix)
    if walked[t] then return end
    walked[t] = true
    for k, v in pairs(t) do
      if type(k) == "string" then
        local path = prefix .. k
        names[path] = type(v)
        if type(v) == "table" and not lasync_name(v) then walk(v, path .. ".") end
        visit(v)
      end
    end
  end

  walk(async, "")
  local done = {}
  for _, make in ipairs(INSTANCES) do
    for _, obj in ipairs(table.pack(make(done))) do
      local mt = getmetatable(obj)
      if type(mt) ~= "table" or not (lasync_name(mt) or registry_name(mt)) then
        error("an object made in INSTANCES has no metatable with a lasync __name: " ..
          "give its class `__name = \"lasync.<Class>\"`")
      end
      if lasync_name(mt) then add_class(mt) end
    end
  end
  for k, v in pairs(debug.getregistry()) do
    if type(k) == "string" and k:match("^lasync%.") and type(v) == "table" then add_class(v, k) end
  end
  for _, close in ipairs(done) do close() end
  return names, classes
end

local function is_public(path)
  for part in path:gmatch("[^.]+") do
    if part:match("^_") then return false end
  end
  return true
end

local function sorted(set)
  local list = {}
  for k in pairs(set) do list[#list + 1] = k end
  table.sort(list)
  return list
end

local function report(title, problems)
  if #problems == 0 then return end
  table.sort(problems)
  error(string.format("%s (%s):\n  %s", title, TYPES, table.concat(problems, "\n  ")), 0)
end

describe("types/lasync.lua", function()
  after_each(assert_clean)

  local defs, names, classes
  lazy_setup(function()
    defs = parse_types(TYPES)
    names, classes = walk_module()
  end)

  it("is a valid Lua chunk that returns the module's definitions", function()
    local chunk = assert(loadfile(TYPES))
    assert.are.equal("table", type(chunk()))
    assert.is_truthy(io.open(TYPES):read("l"):match("^%-%-%-@meta lasync"))
  end)

  it("defines every public name of the module", function()
    local problems = {}
    for _, path in ipairs(sorted(names)) do
      if is_public(path) and not defs.module[path] then
        problems[#problems + 1] = string.format("async.%s (a %s) has no definition: add `%s`",
          path, names[path], names[path] == "function"
            and ("function async." .. path .. "(...) end")
            or ("async." .. path .. " = ..."))
      end
    end
    report("public names without a definition", problems)
  end)

  it("defines no module name that does not exist", function()
    local problems = {}
    for _, path in ipairs(sorted(defs.module)) do
      if names[path] == nil then
        problems[#problems + 1] = string.format("line %d: async.%s is not in the module",
          defs.module[path], path)
      end
    end
    report("definitions of names that do not exist", problems)
  end)

  it("defines every public class and each of its methods", function()
    local problems = {}
    for _, class in ipairs(sorted(classes)) do
      local def = defs.classes[class]
      if not INTERNAL[class] then
        if next(classes[class]) == nil then
          -- no methods: nothing to check (see INTERNAL)
        elseif not def or not def.has_table then
          problems[#problems + 1] = string.format(
            "class %s has no definition: add `---@class %s` over `local X = {}`, then " ..
            "its methods: %s", class, class, table.concat(sorted(classes[class]), ", "))
        else
          for _, m in ipairs(sorted(classes[class])) do
            if not def.methods[m] then
              problems[#problems + 1] = string.format("%s:%s has no definition", class, m)
            end
          end
        end
      end
    end
    report("classes or methods without a definition", problems)
  end)

  it("defines no class or method that does not exist", function()
    local problems = {}
    for _, class in ipairs(sorted(defs.classes)) do
      local def = defs.classes[class]
      -- A class with a table has methods or is an object's metatable; one without is a shape
      -- (options, a result record) that has no metatable to find.
      if def.has_table and class ~= "lasync" then
        if not classes[class] then
          problems[#problems + 1] = string.format(
            "line %d: class %s: no metatable named %s exists", def.line, class, class)
        else
          for _, m in ipairs(sorted(def.methods)) do
            if not classes[class][m] then
              problems[#problems + 1] = string.format("line %d: %s:%s does not exist",
                def.methods[m], class, m)
            end
          end
        end
      end
    end
    for class in pairs(INTERNAL) do
      if not classes[class] then
        problems[#problems + 1] = string.format("INTERNAL lists %s, which does not exist", class)
      end
    end
    report("definitions that name nothing", problems)
  end)

  -- The option tables of fetch and clients are checked by fetch itself: an unknown option is
  -- refused with kind "invalid" and "unknown option", before any I/O.
  local function refused_as_unknown(field)
    local ok, err = pcall(async.http.client, { [field] = coroutine.create(print) })
    return not ok and type(err) == "table" and err.option == field
      and tostring(err.message):find("unknown option", 1, true) ~= nil
  end

  it("lists in FetchOptions and ClientOptions only options fetch knows", function()
    local problems = {}
    for _, class in ipairs { "lasync.FetchOptions", "lasync.ClientOptions" } do
      for _, field in ipairs(sorted(defs.classes[class].fields)) do
        if refused_as_unknown(field) then
          problems[#problems + 1] = string.format("%s.%s is not an option of fetch", class, field)
        end
      end
    end
    assert.is_true(refused_as_unknown("no_such_option"),
      "the probe no longer tells unknown options")
    report("option fields that do not exist", problems)
  end)

  -- Each option table against the set its function checks options against, both ways. The sets
  -- are found by name among the upvalues of the function (and of the functions it calls).
  local OPTION_SETS = {
    { class = "lasync.FetchOptions", set = "KNOWN", from = "fetch" },
    { class = "lasync.FetchRetry", set = "RETRY_KNOWN", from = "fetch" },
    { class = "lasync.ClientOptions", set = "CLIENT_ONLY", from = "http.client" },
  }

  local function find_upvalue(fn, wanted)
    local seen = {}
    local function find(f)
      if seen[f] then return nil end
      seen[f] = true
      for i = 1, math.huge do
        local up, v = debug.getupvalue(f, i)
        if up == nil then return nil end
        if up == wanted and type(v) == "table" then return v end
        if type(v) == "function" then
          local found = find(v)
          if found then return found end
        end
      end
    end
    return find(fn)
  end

  it("lists in each option table exactly the options its function knows", function()
    local problems = {}
    for _, o in ipairs(OPTION_SETS) do
      local fn = async
      for part in o.from:gmatch("[^.]+") do fn = fn[part] end
      local known = find_upvalue(fn, o.set)
      local def = defs.classes[o.class]
      if not known then
        problems[#problems + 1] = string.format("no upvalue %s (the options of %s) reachable " ..
          "from async.%s: update OPTION_SETS in this spec", o.set, o.class, o.from)
      elseif not def then
        problems[#problems + 1] = "no ---@class " .. o.class
      else
        for _, field in ipairs(sorted(known)) do
          if not def.fields[field] then
            problems[#problems + 1] = string.format("%s has no ---@field %s", o.class, field)
          end
        end
        for _, field in ipairs(sorted(def.fields)) do
          if not known[field] then
            problems[#problems + 1] = string.format("line %d: %s.%s is not an option of async.%s",
              def.fields[field], o.class, field, o.from)
          end
        end
      end
    end
    report("option tables out of step", problems)
  end)
end)
