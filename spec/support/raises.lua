-- raises(fn, ...): calls fn(...), asserts that it raised, and returns what it raised.
local assert = require "luassert"

return function(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return err
end
