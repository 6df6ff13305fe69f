/* luaopen_lasync: the module. The same entry point serves the host (which has already opened
 * a runtime on its own loop) and stock lua5.4 (where the first require opens one). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

/* Owns the runtime in the module form: collected last, at lua_close. */
static int guard_gc(lua_State *L) {
  lasync__runtime **slot = (lasync__runtime **)lua_touserdata(L, 1);
  if (*slot) {
    /* In this form the loop turns only inside async.run: a task spawned outside one and never
     * run would vanish without a word, its failure with it. Said once, here. */
    uint32_t never_ran = lasync__count_unstarted(*slot);
    if (never_ran > 0)
      fprintf(stderr,
              "lasync: %u task%s spawned outside async.run never ran (in stock lua5.4 the loop "
              "runs only inside async.run)\n",
              (unsigned)never_ran, never_ran == 1 ? "" : "s");
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
  if (*slot == NULL) lasync__misuse(L, "lasync: cannot open an event loop");
  luaL_ref(L, LUA_REGISTRYINDEX); /* lives until lua_close */
  return *slot;
}

/* The bytecode was compiled at build time (cmake/embed_lua.c), under the chunk name it carries:
 * undumping it costs a fifth of compiling the source. A Lua whose binary format is not the one
 * of the headers lasync was built with (a custom lua_Number, say, in the module form) refuses
 * it; the source then compiles as before. */
void lasync__load_lua(lua_State *L, const char *name, const char *chunkname) {
  const lasync__lua_file *f;
  for (f = lasync__lua_files; f->name; f++) {
    if (strcmp(f->name, name) != 0) continue;
    if (strcmp(f->chunkname, chunkname) != 0)
      lasync__misuse(L, "lasync: lua/%s.lua is embedded as chunk %s, not %s (CMakeLists.txt)", name,
                     f->chunkname, chunkname);
    if (luaL_loadbufferx(L, f->code, f->code_len, chunkname, "b") == LUA_OK) return;
    lua_pop(L, 1);
    if (luaL_loadbufferx(L, f->source, f->source_len, chunkname, "t") != LUA_OK) lua_error(L);
    return;
  }
  lasync__misuse(L, "lasync: no embedded file lua/%s.lua", name);
}

/* Runs an embedded file of lua/ with (core, async), at absolute indices core and async; it adds
 * its calls to the module table. */
static void add_lua_calls(lua_State *L, int core, int async, const char *name) {
  lasync__load_lua(L, name, LASYNC__LIB_CHUNK);
  lua_pushvalue(L, core);
  lua_pushvalue(L, async);
  lua_call(L, 2, 0);
}

/* The Lua side of the module run by every require, in load order: each file adds its calls to
 * the module table, and may use what the files before it added. */
static const char *const LUA_PARTS[] = {"sync",  /* semaphore, lock, event, queue */
                                        "scope", /* scopes, wait, map, retry: builds on sync */
                                        NULL};

/* The parts compiled only when a script first reads one of their fields: most scripts use few
 * of them, and compiling them all was most of lasync's start-up once libcurl was no longer
 * linked (docs/design.md, "Start-up"). Each group runs its parts in order, after LUA_PARTS; a
 * group's parts may use only LUA_PARTS and the parts before them in the group. */
typedef struct {
  const char *const fields[4]; /* the module fields the group sets */
  const char *const parts[5];
} lazy_group;

static const lazy_group LAZY[] = {
    {{"net"}, {"net"}},                                       /* async.net */
    {{"fs"}, {"fs"}},                                         /* async.fs: files and paths */
    {{"process"}, {"process"}},                               /* child processes, on streams */
    {{"thread", "to_thread", "run_in_executor"}, {"thread"}}, /* builds on scope's map */
    {{"fetch", "http"},
     {"http/options",  /* fetch's option and header checks, shared by the HTTP code */
      "http/client",   /* async.fetch, Response, retries */
      "http/pool",     /* async.http.client: defaults and connection limits, on semaphores */
      "http/server"}}, /* async.http.serve, async.http.router */
};
#define NLAZY (sizeof LAZY / sizeof LAZY[0])

/* The registry slots of the core and module tables, for the lazy loader: light-userdata keys,
 * so nothing that walks the registry by name (spec/types_spec.lua) takes them for classes. */
static const char CORE_KEY = 'c', MODULE_KEY = 'm';

static const lazy_group *lazy_find(const char *key) {
  size_t i, j;
  for (i = 0; i < NLAZY; i++)
    for (j = 0; j < 4 && LAZY[i].fields[j]; j++)
      if (strcmp(LAZY[i].fields[j], key) == 0) return &LAZY[i];
  return NULL;
}

/* Runs g's parts under lua_pcall: when one fails (out of memory), the group's fields are
 * cleared again so that the next read retries the whole group, never finds half of it. */
static int run_group(lua_State *L) { /* [async, group] */
  const lazy_group *g = (const lazy_group *)lua_touserdata(L, 2);
  const char *const *part;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &CORE_KEY); /* [async, group, core] */
  for (part = g->parts; *part; part++) add_lua_calls(L, 3, 1, *part);
  return 0;
}

static void lazy_load(lua_State *L, int async, const lazy_group *g) {
  size_t j;
  async = lua_absindex(L, async);
  lua_pushcfunction(L, run_group);
  lua_pushvalue(L, async);
  lua_pushlightuserdata(L, (void *)g);
  if (lua_pcall(L, 2, 0, 0) == LUA_OK) return;
  for (j = 0; j < 4 && g->fields[j]; j++) {
    lua_pushnil(L);
    lua_setfield(L, async, g->fields[j]); /* rawset: only __index is set on the module */
  }
  lua_error(L);
}

/* __index of the module table: a field of a part not loaded yet loads its group. A group sets
 * its fields in the table itself, so each is looked up here once at most. */
static int module_index(lua_State *L) { /* [async, key] */
  const lazy_group *g = lua_type(L, 2) == LUA_TSTRING ? lazy_find(lua_tostring(L, 2)) : NULL;
  if (g == NULL) return 0;
  lua_settop(L, 2);
  lazy_load(L, 1, g);
  lua_pushvalue(L, 2);
  lua_rawget(L, 1);
  return 1;
}

static int module_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}

void lasync__load_part(lua_State *L, const char *field) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &MODULE_KEY);
  lua_getfield(L, -1, field); /* through module_index when not loaded yet */
  lua_pop(L, 2);
}

/* __pairs of the module table: loads every group first, so pairs(async) lists the whole module
 * (spec/types_spec.lua, the REPL's completion). */
static int module_pairs(lua_State *L) { /* [async] */
  size_t i;
  lua_settop(L, 1);
  for (i = 0; i < NLAZY; i++) {
    lua_getfield(L, 1, LAZY[i].fields[0]); /* through __index */
    lua_pop(L, 1);
  }
  lua_pushcfunction(L, module_next);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

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
  lasync__open_revive(L);
  lasync__open_future(L);
  lasync__open_gather(L);
  lasync__open_diag(L);
  lasync__open_http(L);
  lasync__open_json(L);
  lasync__open_net(L);
  lasync__open_bytes(L);
  lasync__open_thread(L);
  lasync__open_fs(L);
  lasync__open_process(L);
  lasync__open_server(L);
  lua_pushliteral(L, LASYNC_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &CORE_KEY);
  lasync__load_lua(L, "lasync", LASYNC__LIB_CHUNK);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1); /* [core, async] */
  for (part = LUA_PARTS; *part; part++) add_lua_calls(L, lua_absindex(L, -2), lua_gettop(L), *part);
  lua_pushcfunction(L, l_host);
  lua_setfield(L, -2, "_host");
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, module_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, module_pairs);
  lua_setfield(L, -2, "__pairs");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &MODULE_KEY);
  return 1;
}
