/* luaopen_lasync: the module. The same entry point serves the host (which has already opened
 * a runtime on its own loop) and stock lua5.4 (where the first require opens one). */
#include <stdlib.h>
#include <string.h>

#include "private.h"

/* Owns the runtime in the module form: collected last, at lua_close. */
static int guard_gc(lua_State *L) {
  lasync__runtime **slot = (lasync__runtime **)lua_touserdata(L, 1);
  if (*slot) {
    lasync__runtime_close(*slot);
    lasync__runtime_free(*slot); /* lua_close is under way: nothing of ours runs after it */
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

void lasync__load_lua(lua_State *L, const char *name, const char *chunkname) {
  const lasync__lua_file *f;
  for (f = lasync__lua_files; f->name; f++) {
    if (strcmp(f->name, name) != 0) continue;
    if (luaL_loadbuffer(L, f->source, f->len, chunkname) != LUA_OK) lua_error(L);
    return;
  }
  luaL_error(L, "lasync: no embedded file lua/%s.lua", name);
}

/* Runs an embedded file of lua/ with (core, async), below them on the stack; it adds its calls
 * to the module table. */
static void add_lua_calls(lua_State *L, const char *name) {
  lasync__load_lua(L, name, LASYNC__LIB_CHUNK);
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 0);
}

/* The Lua side of the module, in load order: each file adds its calls to the module table,
 * and may use what the files before it added. */
static const char *const LUA_PARTS[] = {
  "sync",         /* semaphore, lock, event, queue */
  "scope",        /* scopes, wait, map, retry: builds on sync */
  "http/options", /* fetch's option and header checks, shared by the HTTP code */
  "http/client",  /* async.fetch, Response, retries */
  "http/pool",    /* async.http.client: defaults and connection limits, on semaphores */
  "net",          /* async.net */
  "thread",       /* async.to_thread, async.thread.pool: builds on scope's map */
  "fs",           /* async.fs: files and paths */
  "process",      /* async.process: child processes, builds on async.timeout and streams */
  "http/server",  /* async.http.serve, async.http.router: after net and http */
  NULL};

/* async._host(): lua/host.lua as a function, the lasync executable's main task. */
static int l_host(lua_State *L) {
  lasync__load_lua(L, "host", "=[lasync host]");
  return 1;
}

int luaopen_lasync(lua_State *L) {
  const char *const *part;
  if (lasync__runtime_get(L) == NULL) open_module_runtime(L);
  lua_newtable(L); /* the C core, handed to lua/lasync.lua */
  lasync__open_errors(L);
  lasync__open_task(L);
  lasync__open_timer(L);
  lasync__open_future(L);
  lasync__open_gather(L);
  lasync__open_diag(L);
  lasync__open_http(L);
  lasync__open_json(L);
  lasync__open_net(L);
  lasync__open_thread(L);
  lasync__open_fs(L);
  lasync__open_process(L);
  lasync__open_server(L);
  lua_pushliteral(L, LASYNC_VERSION);
  lua_setfield(L, -2, "version");
  lasync__load_lua(L, "lasync", LASYNC__LIB_CHUNK);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1); /* [core, async] */
  for (part = LUA_PARTS; *part; part++) add_lua_calls(L, *part);
  lua_pushcfunction(L, l_host);
  lua_setfield(L, -2, "_host");
  return 1;
}
