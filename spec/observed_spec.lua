-- "Looked at", one rule (issue 14, item 4; docs/toolkit.md): a task that has already failed when
-- it is passed to gather_settled, wait, as_completed, gather or wait_for, or inspected with
-- done()/status(), is not reported at exit, and the exit status stays 0. Before, only failures
-- that happened after such a call counted.
package.path = "spec/support/?.lua;" .. package.path
local sub = require "subprocess"

local function run(body)
  return sub.run_script([[
    local async = require "lasync"
    local t = async.spawn(function() error("handled failure") end)
    async.sleep(0.01) -- it has failed by now
  ]] .. body)
end

describe("a failure already there when it is looked at", function()
  after_each(sub.cleanup)

  if not sub.LASYNC then
    pending("needs LASYNC (the host executable)")
    return
  end

  local cases = {
    ["done()"] = "assert(t:done())",
    ["status()"] = "assert(t:status() == 'failed')",
    ["gather_settled"] = "assert(not async.gather_settled(t)[1].ok)",
    ["gather"] = "assert(not pcall(async.gather, t))",
    ["wait"] = "local done = async.wait({ t }); assert(#done == 1)",
    ["as_completed"] = "for x in async.as_completed({ t }) do assert(x == t) end",
    ["wait_for"] = "assert(not pcall(async.wait_for, t, 1))",
  }
  for name, body in pairs(cases) do
    it("counts as looked at through " .. name, function()
      local _, err, status = run(body)
      assert.are.equal(0, status, err)
      assert.is_nil(err:find("nobody awaited", 1, true), err)
    end)
  end

  it("a gather that raises for a bad element of the list has not looked", function()
    local _, err, status = run("assert(not pcall(async.gather, { t, 42 }))")
    assert.are.equal(1, status)
    assert.matches("task function <[^>\n]*> failed: [^\n]*handled failure", err)
  end)

  it("a failure nobody looks at is still reported once, exit status 1", function()
    local _, err, status = sub.run_script([[
      local async = require "lasync"
      async.spawn(function() error("unhandled failure") end)
      async.sleep(0.01)
    ]])
    assert.are.equal(1, status)
    assert.matches("task function <[^>\n]*:2> failed: [^\n]*unhandled failure", err)
  end)
end)
