-- LASYNC_MAX_MEMORY: a cap on the Lua heap turns an allocation failure into a memory error in
-- the one task that asked; the host and the other tasks go on.
local LASYNC = os.getenv("LASYNC") or "build/lasync"

describe("the host's memory cap (LASYNC_MAX_MEMORY)", function()
  it("fails only the task that outgrows it", function()
    local script, out = os.tmpname(), os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local async = require "lasync"
      local other = async.spawn(function() async.sleep(0.05) return "other ok" end)
      local hog = async.spawn(function()
        local t = {}
        for i = 1, 1e8 do t[i] = ("x"):rep(100) .. i end
      end)
      local ok, err = pcall(hog.await, hog)
      print(ok, err)
      print(other:await())
      collectgarbage()
      print(#("y"):rep(1000))
    ]])
    f:close()
    local _, _, status = io.popen(("LASYNC_MAX_MEMORY=48 %s %s >%s 2>&1"):format(LASYNC, script,
      out)):close()
    local text = assert(io.open(out)):read("a")
    os.remove(script)
    os.remove(out)
    assert.are.equal(0, status, text)
    assert.matches("false\tnot enough memory\nother ok\n1000\n", text, 1, true)
  end)
end)
