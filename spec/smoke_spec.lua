local async = require "lasync"
describe("smoke", function()
  it("sleeps inside an it block", function()
    local t0 = async.now()
    async.sleep(0.05)
    assert.is_true(async.now() - t0 >= 0.05)
  end)
end)
