-- Issue 14: a method called with '.' instead of ':' (`client.get(url)`, `res.read()`,
-- `q.size()`) says "call it with ':'" and names the method, on every class, never an internal
-- error such as "attempt to index a nil value" or a position inside lasync's own code.
--
-- The classes are not listed by hand: one object of each kind the API hands out is made, and
-- the spec walks what it reaches from them (their fields, recursively: a Process's streams, a
-- scope's deadline), taking the methods from each metatable. Every metatable with methods in the
-- registry (the C classes) must have been reached that way too, so a new class is covered as
-- soon as it exists, or this spec says which one is missing.
package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

-- The methods of a metatable: the functions of its __index table or, when __index is a function
-- (fields and methods looked up alike), of its __methods table, else of the metatable itself.
local function methods_of(mt)
  local index = rawget(mt, "__index")
  local src = type(index) == "table" and index or rawget(mt, "__methods") or mt
  local list = {}
  for k, v in pairs(src) do
    if type(k) == "string" and type(v) == "function" and not k:find("^__") then
      list[#list + 1] = k
    end
  end
  table.sort(list)
  return list, src
end

-- Lua's own classes (io's FILE*) are not lasync's.
local FOREIGN = { ["FILE*"] = true }

-- Every metatable reachable from the roots, by following table fields and metatables.
local function reachable(roots)
  local seen, found = {}, {}
  local function visit(v, depth)
    local tv = type(v)
    if (tv ~= "table" and tv ~= "userdata") or seen[v] or depth > 4 then return end
    seen[v] = true
    local mt = getmetatable(v)
    if type(mt) == "table" and not FOREIGN[rawget(mt, "__name")] then
      local list = methods_of(mt)
      if #list > 0 and not found[mt] then found[mt] = v end
    end
    if tv == "table" then
      for k, x in next, v do
        visit(k, depth + 1)
        visit(x, depth + 1)
      end
    end
  end
  for _, r in ipairs(roots) do visit(r, 0) end
  return found
end

local function label(mt, obj)
  return rawget(mt, "__name") or tostring(obj):match("^(%a+)") or tostring(mt)
end

-- One object of every kind, made and kept open while the spec calls their methods wrongly.
local function with_objects(body)
  local dir = os.tmpname()
  os.remove(dir)
  async.fs.mkdir(dir)
  local path = dir .. "/f.txt"
  local held = async.event()
  local captured = {}
  local app = async.http.router()
  app:get("/", function(req, res)
    captured.req, captured.res = req, res
    held:wait()
    return "ok"
  end)
  local http_srv <close> = async.http.serve(app, { port = 0 })
  local net_srv <close> = async.net.listen({ port = 0 }, function(conn)
    captured.accepted = conn
    held:wait()
  end)
  local client = async.http.client()
  local fetched = async.spawn(function()
    return async.fetch("http://127.0.0.1:" .. http_srv.port .. "/")
  end)
  local stream <close> = async.net.connect("127.0.0.1", net_srv.port)
  while not (captured.req and captured.accepted) do async.sleep(0.005) end
  local file <close> = async.fs.open(path, "w+")
  local watcher <close> = async.fs.watch(dir)
  local proc <close> = async.process.spawn({ "cat" },
    { stdin = "pipe", stdout = "pipe", stderr = "pipe" })
  local pool <close> = async.thread.pool({ size = 1 })
  local sem = async.semaphore(2)
  local permit = sem:acquire()
  local scope_obj
  async.scope(function(s)
    scope_obj = s
    body({
      async.spawn(function() end), async.future(), s, sem, permit, async.lock(), async.event(),
      async.queue(), async.buffer(16), client, captured.req, captured.res, app, http_srv, net_srv,
      stream,
      captured.accepted, file, watcher, proc, pool,
    })
  end)
  assert(scope_obj)
  permit:release()
  held:set()
  local res = fetched:await()
  assert.are.equal(200, res.status)
  body({ res })
  proc.stdin:close()
  proc:wait()
  async.fs.rm(dir, { recursive = true })
end

-- Calls obj's method `name` as obj.name(bad) (obj.name() when bad is NONE) and returns the
-- error message.
local NONE = {}
local function dot_call(src, name, bad)
  local ok, err
  if bad == NONE then
    ok, err = pcall(src[name])
  else
    ok, err = pcall(src[name], bad)
  end
  return ok and "(no error)" or tostring(err)
end

describe("a method called with '.' instead of ':'", function()
  after_each(assert_clean)

  it("says \"call it with ':'\" and names the method, on every class reached", function()
    local covered = {}
    local problems = {}
    with_objects(function(roots)
      for mt, obj in pairs(reachable(roots)) do
        covered[mt] = true
        local list, src = methods_of(mt)
        for _, name in ipairs(list) do
          for _, bad in ipairs({ NONE, false, "x", 42, {} }) do
            local msg = dot_call(src, name, bad)
            if not msg:find("call it with ':'", 1, true) or not msg:find(":" .. name, 1, true)
                or msg:find("[lasync]", 1, true) then
              problems[#problems + 1] = ("%s.%s(%s): %s"):format(label(mt, obj), name,
                bad == NONE and "" or type(bad), msg)
            end
          end
        end
      end
    end)
    assert(#problems == 0, "\n" .. table.concat(problems, "\n"))
    -- Every class of lasync's in the registry (luaL_newmetatable("lasync.*")) with methods was
    -- reached: none is missed by the walk.
    local missed = {}
    for k, mt in pairs(debug.getregistry()) do
      if type(k) == "string" and k:find("^lasync%.") and type(mt) == "table"
          and #methods_of(mt) > 0 and not covered[mt] then
        missed[#missed + 1] = k
      end
    end
    table.sort(missed)
    assert(#missed == 0, "classes no object of this spec reached: " .. table.concat(missed, ", "))
  end)

  it("names the method called on a nil self the way it was written", function()
    local q = async.queue()
    local ok, err = pcall(function() return q.size() end)
    assert.is_false(ok)
    assert.matches("queue:size: bad self", err, 1, true)
    assert.matches("method_self_spec.lua:", err, 1, true) -- the caller's line, not lasync's
  end)
end)
