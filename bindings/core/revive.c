/* Helper tasks that a memory error does not end: core._spawn_helper(fn, ...).
 *
 * A server's helpers (its dispatcher, reaper, logger, accept loop) are Lua tasks, and at the
 * memory cap a memory error can end one anywhere, even outside its own protected calls: calling
 * pcall needs a call frame, growing the stack needs memory, and the collector shrinks both while
 * the task waits. Lua code cannot catch that, and a helper that watched the others could die
 * the same way (the HTTP server lost a request at some caps this way: its reaper died, and the
 * request whose task died next had nobody to answer it).
 *
 * The task body can: it is C (runtime.c's body_continue), and it already receives the memory
 * error from the pcall around the task's function. For a task spawned here, it waits
 * REVIVE_DELAY and then calls fn(...) again, instead of ending the task. It waits in its own
 * frame, the body's, with a timer from the runtime's heap (malloc'ed, outside the capped Lua
 * heap): a call frame to wait in would need memory, and when a frame could not be had, the
 * pcall failed at once and the body tried again at once, for ever, deaf even to SIGTERM (caps
 * 0.28 MiB, where a helper's first call had no room). The delay also keeps a heap with no room
 * left from being retried in a spin; the drain that had the memory error ran a full collection
 * (runtime.c's report_starved). fn starts over from its first line, with the same arguments,
 * so it should begin with what a death may have left undone. A task being cancelled, or a
 * runtime shutting down, ends as any other. */
#include "private.h"

#define REVIVE_DELAY 0.01 /* seconds */

int lasync__revive(lasync__runtime *rt, lasync__task *t, int task, lua_State *co) {
  if (!t->revive || rt->closing || t->cancel_level != LASYNC__NO_CANCEL) return 0;
  if (!lua_checkstack(rt->L, 1) || lasync__sleep_begin(t, REVIVE_DELAY) != 0) return 0;
  lua_settop(co, 1); /* [handler]: the error goes; its slot makes the room for fn */
  lua_getiuservalue(rt->L, task, LASYNC__UV_FN); /* kept while it runs (runtime.c's load_task) */
  lua_xmove(rt->L, co, 1);
  return 1; /* a sleep, as far as cancellation and task dumps go */
}

/* [handler, revive_start, fn], pcalled by the body: a cancellation that came during the delay
 * is raised here, under the body's pcall; else fn runs. */
static int revive_called(lua_State *co, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return lua_gettop(co);
}

static int revive_start(lua_State *co) {
  lasync__checkpoint(co, lasync__runtime_get(co)->current);
  lua_callk(co, 0, LUA_MULTRET, 0, revive_called);
  return lua_gettop(co);
}

void lasync__revive_start(lua_State *co, lasync__task *t) {
  lasync__end_wait(t);
  lua_pushcfunction(co, revive_start); /* a light C function: no allocation */
  lua_insert(co, 2);
}

static int helper_returned(lua_State *L, int status, lua_KContext ctx) {
  (void)status, (void)ctx;
  return lua_gettop(L);
}

/* A helper task's function: calls its first upvalue with the others, every time it is run. */
static int helper_body(lua_State *L) {
  int i, n = lua_gettop(L);
  lua_Integer nup = lua_tointeger(L, lua_upvalueindex(1));
  luaL_checkstack(L, (int)nup, "too many arguments");
  for (i = 2; i <= nup + 1; i++) lua_pushvalue(L, lua_upvalueindex(i));
  lua_callk(L, (int)nup - 1, LUA_MULTRET, 0, helper_returned);
  return lua_gettop(L) - n;
}

/* core._spawn_helper(fn, ...): spawns fn(...) as a helper task, revived after a memory error. */
static int l_spawn_helper(lua_State *L) {
  int n = lua_gettop(L);
  lasync__task *t;
  if (!lasync__is_callable(L, 1)) return luaL_typeerror(L, 1, "function");
  if (n > 200) return lasync__misuse(L, "core._spawn_helper: too many arguments");
  if (lasync__runtime_get(L)->closing)
    return lasync__misuse(L, "core._spawn_helper: the runtime is shutting down");
  lua_pushinteger(L, n);
  lua_insert(L, 1);
  lua_pushcclosure(L, helper_body, n + 1);
  t = lasync__spawn(L, -1, 0);
  t->revive = 1;
  return 1;
}

void lasync__open_revive(lua_State *L) {
  lua_pushcfunction(L, l_spawn_helper);
  lua_setfield(L, -2, "_spawn_helper");
}
