-- luacheck (Debian's lua-check) over lua/ and spec/: `make lint`.
std = "lua54"
max_line_length = 100
-- 581: `not (x >= 0)` is how the option checks refuse NaN as well; `x < 0` would let it in.
ignore = { "581" }

files["spec"] = {
  std = "+busted",
  -- Specs may shadow the helpers of an outer block (`ok, err` in nested tests).
  ignore = { "581", "421", "422", "431", "432" },
}
