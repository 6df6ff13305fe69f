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
external_dependencies = {
  LIBUV = { header = "uv.h" },
  LIBCURL = { header = "curl/curl.h" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LASYNC_LUA_CMOD_DIR = "$(LIBDIR)",
  },
}
