-- Reproducer (fuzz_api): a timeout option of math.huge (or >= ~9.2e15 s) reaches
-- bindings/http.c opt_ms(), whose (long)(s * 1000 + 0.5) is undefined for such values (UBSan:
-- "inf is outside the range of representable values of type 'long'"). Against a closed port
-- on 127.0.0.1, so it sends nothing anywhere. Under the sanitizer build this aborts; in the
-- normal build, see what the transfer reports.
local async = require "lasync"
for _, name in ipairs{"timeout", "connect_timeout", "low_speed_time"} do
  for _, v in ipairs{math.huge, 1e300, 2^63} do
    local opts = {[name] = v, proxy = "http://127.0.0.1:1"}
    if name == "low_speed_time" then opts.low_speed_limit = 1 end
    local ok, e = pcall(async.fetch, "http://127.0.0.1:1/", opts)
    print(name, v, ok, tostring(e))
  end
end
