-- Runs busted under stock lua5.4 with lasync loaded as a module: the module form's proof.
-- busted itself runs inside async.run, so the specs' top-level async calls work as in the
-- host. Used by CTest (stock_lua_suite); LASYNC_MODULE_DIR is where lasync.so was built.
package.cpath = (os.getenv("LASYNC_MODULE_DIR") or "build") .. "/?.so;" .. package.cpath
local async = require "lasync"
async.run(function() require "busted.runner"({ standalone = false }) end)
