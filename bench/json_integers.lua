-- res:json()'s integer fix-up (bindings/http/json.c) against cjson.decode alone, as a ratio.
-- Run: build/lasync bench/json_integers.lua
local async = require "lasync"
local cjson = require "cjson"
local parts = {}
for i = 1, 20000 do parts[#parts+1] = string.format('{"id":%d,"name":"item %d","price":%d.5,"tags":[1,2,3],"ok":true}', i, i, i) end
local doc = "[" .. table.concat(parts, ",") .. "]"
local res = setmetatable({ body = doc, url = "x", status = 200 }, async.http.Response)
local floats = "[" .. string.rep("1.5,", 100000) .. "2.5]"
local resf = setmetatable({ body = floats, url = "x", status = 200 }, async.http.Response)
local function time(label, fn, n)
  local t0 = os.clock(); for _ = 1, n do fn() end
  local dt = (os.clock() - t0) / n
  print(string.format("%-40s %8.2f ms", label, dt * 1000)); return dt
end
print(("document: %d bytes, %d objects"):format(#doc, 20000))
local a = time("cjson.decode", function() return cjson.decode(doc) end, 10)
local b = time("res:json() (decode + integers)", function() return res:json() end, 10)
print(string.format("integer fix-up cost: %.0f%% of the decode", (b - a) / a * 100))
local c = time("cjson.decode, floats only 400 KB", function() return cjson.decode(floats) end, 10)
local d = time("res:json(), floats only (scan only)", function() return resf:json() end, 10)
print(string.format("scan-only cost: %.0f%% of the decode", (d - c) / c * 100))
