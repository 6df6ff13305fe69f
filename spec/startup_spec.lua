package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"

-- What start-up leaves out until a script needs it (docs/design.md, "Start-up"): libcurl is
-- loaded by the first fetch (bindings/http/libcurl.c), the I/O, thread and HTTP parts of the
-- module are compiled when a script first reads one of their fields (bindings/lasync.c), and
-- lua/ is embedded precompiled with its line information (cmake/embed_lua.c). Each check runs
-- in a fresh process, where nothing has been loaded yet, in both forms that have a main: the
-- lasync executable and stock lua5.4 requiring the module.
local sub = require "subprocess"
local MODULE_DIR = os.getenv("LASYNC_MODULE_DIR")

-- The script's prelude: `mapped(name)` tells whether a shared object whose path contains name is
-- mapped into this process, from /proc/self/maps.
local PRELUDE = [[
local async = require "lasync"
local function mapped(name)
  local f = assert(io.open("/proc/self/maps"))
  local maps = f:read("a")
  f:close()
  return maps:find(name, 1, true) ~= nil
end
]]

-- Runs PRELUDE .. body with each available form; calls check(stdout, stderr, status, form).
-- env: a shell prefix of variable assignments.
local function each_form(body, check, env)
  local script = sub.tmpfile(PRELUDE .. body)
  env = env or ""
  local ran = 0
  if sub.LASYNC then
    local out, err, code = sub.run(sub.q(script), { prefix = env })
    check(out, err, code, "lasync")
    ran = ran + 1
  end
  if MODULE_DIR and os.execute("command -v lua5.4 >/dev/null") then
    local cmd = env .. " LUA_CPATH=" .. sub.q(MODULE_DIR .. "/?.so") .. " timeout 30 lua5.4 " ..
        "-e " .. sub.q("async = require 'lasync'") .. " -e " ..
        sub.q("async.run(function() dofile(" .. string.format("%q", script) .. ") end)") ..
        " 2>&1"
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    local _, _, code = p:close()
    check(out, out, code, "lua5.4 + lasync.so")
    ran = ran + 1
  end
  if ran == 0 then pending("neither LASYNC nor LASYNC_MODULE_DIR is set") end
end

describe("start-up", function()
  after_each(function()
    sub.cleanup()
    assert_clean()
  end)

  it("maps no libcurl in a script that never fetches, until its first fetch, which works",
    function()
      each_form([[
        print("at start", mapped("libcurl"))
        async.sleep(0.01)
        local srv = async.http.serve(function() return "hello" end, { port = 0 })
        print("serving", mapped("libcurl")) -- the server is llhttp's, not curl's
        local res = async.fetch("http://127.0.0.1:" .. srv.port .. "/")
        print("fetched", res.status, res.body, mapped("libcurl"))
        srv:close()
      ]], function(out, err, code, form)
        assert.are.equal(0, code, form .. ": " .. err)
        assert.truthy(out:find("at start\tfalse\n", 1, true), form .. ": " .. out)
        assert.truthy(out:find("serving\tfalse\n", 1, true), form .. ": " .. out)
        assert.truthy(out:find("fetched\t200\thello\ttrue\n", 1, true), form .. ": " .. out)
      end)
    end)

  it("fails a fetch with kind 'unavailable' when libcurl cannot be loaded, and goes on", function()
    -- A libcurl.so.4 that is no library, found first by the dynamic loader.
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. sub.q(dir)))
    local f = assert(io.open(dir .. "/libcurl.so.4", "w"))
    f:write("not a shared object\n")
    f:close()
    each_form([[
      for i = 1, 2 do -- and the same again: the failure is remembered, not retried into a crash
        local ok, err = pcall(async.fetch, "http://127.0.0.1:1/")
        print(ok, err.kind, err.url, err.message)
      end
      local ok, err = pcall(async.http.client, { base_url = "http://127.0.0.1:1" })
      print(ok, err.kind)
      async.sleep(0.01)
      print("still running")
    ]], function(out, err, code, form)
      assert.are.equal(0, code, form .. ": " .. err)
      local n = 0
      for kind, url, message in out:gmatch("false\t(%S+)\t(%S+)\t([^\n]*)\n") do
        n = n + 1
        assert.are.equal("unavailable", kind, form .. ": " .. out)
        assert.are.equal("http://127.0.0.1:1/", url, form .. ": " .. out)
        assert.truthy(message:find("^async.fetch http://127.0.0.1:1/: cannot load libcurl: "),
          form .. ": " .. message)
        assert.truthy(message:find("libcurl.so.4", 1, true), form .. ": " .. message)
      end
      assert.are.equal(2, n, form .. ": " .. out)
      assert.truthy(out:find("false\tunavailable\nstill running\n", 1, true), form .. ": " .. out)
    end, "LD_LIBRARY_PATH=" .. sub.q(dir) .. " ")
    os.execute("rm -rf " .. sub.q(dir))
  end)

  it("loads libcurl once for first fetches made at once, all of which then succeed", function()
    each_form([[
      local srv = async.http.serve(function() return "hello" end, { port = 0 })
      local url = "http://127.0.0.1:" .. srv.port .. "/"
      local fetches = {}
      for i = 1, 4 do fetches[i] = async.spawn(function() return async.fetch(url).body end) end
      local ticked = async.spawn(function() async.sleep(0) return "ticked" end)
      print(ticked:await(), table.concat(async.gather(fetches), " "), mapped("libcurl"))
      srv:close()
    ]], function(out, err, code, form)
      assert.are.equal(0, code, form .. ": " .. err)
      assert.truthy(out:find("ticked\thello hello hello hello\ttrue\n", 1, true),
        form .. ": " .. out)
    end)
  end)

  it("keeps the loop running while libcurl loads, on another thread, and shares one load",
    function()
      -- A libcurl.so.4 whose constructor holds the loading thread until the script opens the
      -- gate (10 s at most), then records it; it has none of curl's functions, so the load
      -- fails. Were the load on the loop's thread, the script could never open the gate.
      if not os.execute("command -v cc >/dev/null") then return pending("needs a C compiler") end
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. sub.q(dir)))
      local src = sub.tmpfile([[
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void held(void) {
  const char *gate = getenv("GATE");
  int i, opened = 0;
  for (i = 0; i < 10000 && !(opened = access(gate, F_OK) == 0); i++) usleep(1000);
  FILE *f = fopen(getenv("LOG"), "a");
  fputs(opened ? "released\n" : "timed out\n", f);
  fclose(f);
}
]])
      assert(os.execute("cc -x c -shared -fPIC -o " .. sub.q(dir .. "/libcurl.so.4") .. " " ..
        sub.q(src)))
      local gate, log = dir .. "/gate", dir .. "/log"
      each_form([[
        local function first_fetch(path)
          local ok, err = pcall(async.fetch, "http://127.0.0.1:1/" .. path)
          return tostring(ok) .. " " .. err.kind .. " " .. err.url
        end
        local fetches = {}
        for i = 1, 3 do fetches[i] = async.spawn(first_fetch, i) end
        local client = async.spawn(function()
          return select(2, pcall(async.http.client, { base_url = "http://127.0.0.1:1" })).kind
        end)
        local doomed = async.spawn(async.fetch, "http://127.0.0.1:1/doomed")
        local ticks = 0
        for _ = 1, 5 do
          async.sleep(0.001)
          ticks = ticks + 1
        end
        doomed:cancel()
        local ok, err = pcall(doomed.await, doomed)
        print("while loading", ticks, ok, err.kind)
        assert(io.open(os.getenv("GATE"), "w")):close()
        print(table.concat(async.gather(fetches), ", "), client:await())
        print("after", first_fetch("again"))
        print(io.open(os.getenv("LOG")):read("a"))
      ]], function(out, err, code, form)
        assert.are.equal(0, code, form .. ": " .. err)
        assert.truthy(out:find("while loading\t5\tfalse\tcancelled\n", 1, true),
          form .. ": " .. out)
        assert.truthy(out:find("false unavailable http://127.0.0.1:1/1, " ..
          "false unavailable http://127.0.0.1:1/2, false unavailable http://127.0.0.1:1/3\t" ..
          "unavailable\n", 1, true), form .. ": " .. out)
        assert.truthy(out:find("after\tfalse unavailable http://127.0.0.1:1/again\n", 1, true),
          form .. ": " .. out)
        assert.truthy(out:find("\nreleased\n\n$"), form .. ": " .. out) -- one load, and no wait
        os.remove(gate)
        os.remove(log)
      end, "LD_LIBRARY_PATH=" .. sub.q(dir) .. " GATE=" .. sub.q(gate) .. " LOG=" .. sub.q(log) ..
        " ")
      os.execute("rm -rf " .. sub.q(dir))
    end)

  it("exits cleanly from stock lua5.4 while a thread still loads libcurl", function()
    -- lua5.4 unloads its C modules at lua_close; the thread loading libcurl for the cancelled
    -- fetch may still be running the module's code then (the module is linked -z nodelete).
    -- Without that, about one exit in six crashed.
    if not (MODULE_DIR and os.execute("command -v lua5.4 >/dev/null")) then
      return pending("needs lua5.4 and LASYNC_MODULE_DIR")
    end
    local cmd = "LUA_CPATH=" .. sub.q(MODULE_DIR .. "/?.so") .. " timeout 30 lua5.4 -e " ..
      sub.q("async = require 'lasync'") .. " -e " .. sub.q("async.run(function() " ..
        "local t = async.spawn(async.fetch, 'http://127.0.0.1:1/') async.sleep(0) t:cancel() " ..
        "print(select(2, pcall(t.await, t)).kind) end)") .. " 2>&1"
    for _ = 1, 20 do
      local p = assert(io.popen(cmd))
      local out = p:read("a")
      local ok, _, code = p:close()
      assert.is_true(ok and code == 0, out .. tostring(code))
      assert.are.equal("cancelled\n", out)
    end
  end)

  it("compiles the I/O, thread and HTTP parts only when a script first reads them", function()
    each_form([[
      local lazy = { "fetch", "http", "net", "fs", "process", "thread", "to_thread",
        "run_in_executor" }
      for _, k in ipairs(lazy) do io.write(k, "=", tostring(rawget(async, k) ~= nil), " ") end
      print()
      print("fs", type(async.fs), type(rawget(async, "fs")), rawget(async, "net") ~= nil)
    ]], function(out, err, code, form)
      assert.are.equal(0, code, form .. ": " .. err)
      assert.truthy(out:find("fetch=false http=false net=false fs=false process=false " ..
        "thread=false to_thread=false run_in_executor=false \n", 1, true), form .. ": " .. out)
      assert.truthy(out:find("fs\ttable\ttable\tfalse\n", 1, true), form .. ": " .. out)
    end)
  end)

  it("loads a part whole or not at all when memory runs out, and again once there is some",
    function()
      if not sub.LASYNC then return pending("needs LASYNC: the memory cap is the host's") end
      -- The heap capped (LASYNC_MAX_MEMORY) and filled, then a little freed: from nothing to
      -- enough, so that the HTTP group's four parts fail at every point of their loading.
      local script = sub.tmpfile([[
        local async = require "lasync"
        local fill = {}
        for _, size in ipairs({ 100000, 1000, 10 }) do
          while pcall(function() fill[#fill + 1] = string.rep("x", size) .. #fill end) do end
        end
        for _ = 1, tonumber(arg[1]) do fill[#fill] = nil end
        collectgarbage()
        local ok = pcall(function() return async.fetch end)
        print(ok, rawget(async, "fetch") ~= nil, rawget(async, "http") ~= nil)
        fill = nil
        collectgarbage()
        print(type(async.fetch), type(async.http.client), type(async.http.serve))
      ]])
      local loaded, failed = 0, 0
      for margin = 0, 240, 6 do
        local out, err, code = sub.run(sub.q(script) .. " " .. margin,
          { prefix = "LASYNC_MAX_MEMORY=8 " })
        assert.are.equal(0, code, err)
        local ok, fetch, http = out:match("^(%a+)\t(%a+)\t(%a+)\n")
        assert.truthy(ok == "true" and fetch == "true" and http == "true" or
          ok == "false" and fetch == "false" and http == "false", out)
        if ok == "true" then loaded = loaded + 1 else failed = failed + 1 end
        assert.truthy(out:find("\nfunction\tfunction\tfunction\n$"), out)
      end
      assert.truthy(loaded > 0 and failed > 0, loaded .. " loaded, " .. failed .. " failed")
    end)

  it("lists every field to pairs, loaded or not", function()
    each_form([[
      local names = {}
      for k in pairs(async) do names[#names + 1] = k end
      table.sort(names)
      print(table.concat(names, " "))
    ]], function(out, err, code, form)
      assert.are.equal(0, code, form .. ": " .. err)
      for _, k in ipairs({ "fetch", "http", "net", "fs", "process", "thread", "to_thread",
        "run_in_executor", "sleep", "semaphore", "scope" }) do
        assert.truthy((" " .. out):find(" " .. k .. "[ \n]"), form .. ": " .. k .. " in " .. out)
      end
    end)
  end)

  -- The line where `pattern` first matches in lua/<file>, read from the source tree.
  local function line_of(file, pattern)
    local n = 0
    for line in io.lines("lua/" .. file) do
      n = n + 1
      if line:find(pattern) then return n end
    end
    error("no " .. pattern .. " in lua/" .. file)
  end

  it("keeps the embedded files' chunk name and lines, eager and lazy parts alike", function()
    for _, case in ipairs({
      { async.timeout, "lasync.lua", "^function async%.timeout%(" },
      { async.fs.read_file, "fs.lua", "^function fs%.read_file%(" },
      { async.http.router, "http/server.lua", "^function http%.router%(" },
    }) do
      local info = debug.getinfo(case[1], "S")
      assert.are.equal("=[lasync]", info.source)
      assert.are.equal(line_of(case[2], case[3]), info.linedefined)
    end
    -- and a traceback through them
    local ok, trace = xpcall(async.wait_for, debug.traceback, async.spawn(function() end), -1)
    assert.is_false(ok)
    local check_line = line_of("lasync.lua", 'check_seconds%("async%.wait_for"')
    assert.truthy(trace:find("%[lasync%]:" .. check_line .. ": in function"), trace)
  end)
end)
