rockspec_format = "3.0"
package = "lasync"
version = "scm-1"
source = { url = "git+file://." }
description = {
  summary = "asyncio-style concurrency for Lua 5.4: tasks, sleep, gather, timeouts, fetch",
  detailed = [[
A libuv event loop with Lua coroutines as tasks: native sleep, spawn, gather, cancellation,
timeouts and HTTP fetch (libcurl multi on the same loop). Builds the `lasync` module that
stock lua5.4 can require, plus the `lasync` host executable.]],
  license = "MIT",
}
dependencies = { "lua >= 5.4, < 5.5" }
-- Only checks that the libraries are there (CMake finds them with pkg-config). By library, not
-- header: Debian keeps curl/curl.h under the multiarch include directory
-- (/usr/include/x86_64-linux-gnu), where luarocks does not look for headers, but it does search
-- lib/x86_64-linux-gnu for libraries. So `luarocks make` needs no LIBCURL_INCDIR.
external_dependencies = {
  LIBUV = { library = "uv" },
  LIBCURL = { library = "curl" },
  LIBEDIT = { library = "edit" }, -- the REPL's line editor, in the executable
}
-- `luarocks --lua-version 5.4 make` (Debian's luarocks defaults to 5.1). LASYNC_ROCK builds
-- only the module (into the rock's lib/, which luarocks deploys to lib/lua/5.4/) and the
-- `lasync` executable (into its bin/): no tests, benchmarks, libraries, header or lasync.pc.
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LASYNC_ROCK = "ON",
    LASYNC_LUA_CMOD_DIR = "$(LIBDIR)",
    LASYNC_BIN_DIR = "$(BINDIR)",
  },
}
