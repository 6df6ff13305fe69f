/* luaopen_lasync: the module. The same entry point serves the host (which has already opened
 * a runtime on its own loop) and stock lua5.4 (where the first require opens one). */
#include <stdlib.h>

#include "private.h"

/* Owns the runtime in the module form: collected last, at lua_close. */
static int guard_gc(lua_State *L) {
  lasync__runtime **slot = (lasync__runtime **)lua_touserdata(L, 1);
  if (*slot) {
    lasync__runtime_close(*slot);
    free(*slot);
    *slot = NULL;
  }
  return 0;
}

static lasync__runtime *open_module_runtime(lua_State *L) {
  lasync__runtime **slot = (lasync__runtime **)lua_newuserdatauv(L, sizeof *slot, 0);
  *slot = NULL;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, guard_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  *slot = lasync__runtime_open(L, NULL);
  if (*slot == NULL) luaL_error(L, "lasync: cannot open an event loop");
  luaL_ref(L, LUA_REGISTRYINDEX); /* lives until lua_close */
  return *slot;
}

/* Runs an embedded chunk of lua/ with (core, async), below them on the stack; it adds its calls
 * to the module table. */
static void add_lua_calls(lua_State *L, const char *chunk, unsigned long len) {
  if (luaL_loadbuffer(L, chunk, len, LASYNC__LIB_CHUNK) != LUA_OK) lua_error(L);
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 0);
}

int luaopen_lasync(lua_State *L) {
  if (lasync__runtime_get(L) == NULL) open_module_runtime(L);
  lua_newtable(L); /* the C core, handed to lua/lasync.lua */
  lasync__open_errors(L);
  lasync__open_task(L);
  lasync__open_timer(L);
  lasync__open_future(L);
  lasync__open_gather(L);
  lasync__open_diag(L);
  lasync__open_http(L);
  lua_pushliteral(L, LASYNC_VERSION);
  lua_setfield(L, -2, "version");
  if (luaL_loadbuffer(L, lasync__lua_lasync, lasync__lua_lasync_len, LASYNC__LIB_CHUNK) != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1); /* [core, async] */
  /* lua/http.lua adds async.fetch and async.http to the module table. */
  if (luaL_loadbuffer(L, lasync__lua_http, lasync__lua_http_len, LASYNC__LIB_CHUNK) != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 0);
  /* lua/sync.lua (semaphore, lock, event, queue), then lua/scope.lua (scopes, wait, map, retry),
   * which builds on it, add their calls the same way. */
  add_lua_calls(L, lasync__lua_sync, lasync__lua_sync_len);
  add_lua_calls(L, lasync__lua_scope, lasync__lua_scope_len);
  return 1;
}
