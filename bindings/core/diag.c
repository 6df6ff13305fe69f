/* Diagnostics: task names, async.tasks(), and debug mode (slow steps, spawn parents).
 *
 * Debug mode costs a clock read per resume and a table entry per spawn, so it is off unless
 * asked for: `lasync --debug`, LASYNC_DEBUG=1, or async.debug(true).
 */
#include <stdio.h>

#include "private.h"

/* Pushes the task's name, or nil. */
static int push_name(lua_State *L, int task_idx) {
  return lasync__get_extra(L, task_idx, "name") == LUA_TSTRING;
}

static int task_name(lua_State *L) {
  lasync__check_task_arg(L, 1, "task:name");
  if (!push_name(L, 1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  return 1;
}

static int task_set_name(lua_State *L) {
  lasync__check_task_arg(L, 1, "task:set_name");
  if (!lua_isstring(L, 2))
    return lasync__misuse(L, "task:set_name: bad argument #1 (string expected, got %s)",
                      luaL_typename(L, 2));
  lasync__push_extra(L, 1);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "name");
  lua_settop(L, 1);
  return 1;
}

/* A short label for messages: the name, else where it was spawned (debug mode), else its
 * function as Lua's tracebacks name one, "function <file:line>". */
void lasync__push_task_label(lua_State *L, int task_idx) {
  task_idx = lua_absindex(L, task_idx);
  if (push_name(L, task_idx)) {
    lua_pushfstring(L, "task '%s'", lua_tostring(L, -1));
  } else {
    lua_pop(L, 1);
    switch (lasync__push_task_site(L, task_idx)) {
      case LASYNC__SITE_SPAWNED:
        lua_pushfstring(L, "task spawned at %s", lua_tostring(L, -1));
        break;
      case LASYNC__SITE_DEFINED:
        lua_pushfstring(L, "task function <%s>", lua_tostring(L, -1));
        break;
      default:
        lua_pushliteral(L, "an unnamed task");
    }
  }
  lua_remove(L, -2);
}

/* The live tasks, from the runtime's anchors, newest slot first (a freed slot is reused, so
 * that is only roughly the newest first; async.dump sorts by age). */
static int l_tasks(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  double now = (double)uv_now(rt->loop);
  lua_Integer n = 0;
  uint32_t slot;
  lua_createtable(L, (int)(rt->live_tasks < 1 << 20 ? rt->live_tasks : 1 << 20), 0);
  for (slot = rt->anchors_top; slot > 0; slot--) {
    int task;
    lasync__task *t;
    luaL_checkstack(L, 4, NULL);
    if ((t = lasync__task_at(L, rt, slot)) == NULL) continue;
    lasync__push_task(L, t);
    task = lua_gettop(L);
    lua_createtable(L, 0, 7);
    lua_pushvalue(L, task);
    lua_setfield(L, -2, "task");
    if (push_name(L, task))
      lua_setfield(L, -2, "name");
    else
      lua_pop(L, 1);
    lua_pushstring(L, lasync__status_names[t->status]);
    lua_setfield(L, -2, "status");
    lua_pushnumber(L, (now - (double)t->spawned_ms) / 1000.0);
    lua_setfield(L, -2, "age");
    lasync__push_task_site(L, task);
    lua_setfield(L, -2, "site");
    if (t->wait_ops && t->suspended)
      lua_pushstring(L, t->wait_ops->name);
    else
      lua_pushstring(L, t == rt->current ? "running now" : t->queued ? "ready" : "nothing");
    lua_setfield(L, -2, "waiting_on");
    if (rt->parents_ref != LUA_NOREF) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, rt->parents_ref);
      lua_pushvalue(L, task);
      lua_rawget(L, -2);
      lua_setfield(L, -3, "parent");
      lua_pop(L, 1);
    }
    lua_rawseti(L, -3, ++n);
    lua_pop(L, 1);
  }
  return 1;
}

/* async.debug([on [, slow_seconds]]) -> whether debug mode was on. */
static int l_debug(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  int was = rt->debug;
  if (!lua_isnone(L, 1)) rt->debug = lua_toboolean(L, 1);
  if (!lua_isnoneornil(L, 2)) {
    lua_Number s = lua_tonumber(L, 2);
    if (lua_type(L, 2) != LUA_TNUMBER) lasync__argerror(L, 2, "async.debug", "seconds", "number");
    if (!(s >= 0)) return lasync__misuse(L, "async.debug: bad argument #2 (seconds must be >= 0)");
    /* Past 2^64 ns (585 years, math.huge included) no step is slow; converting it is undefined. */
    rt->slow_step_ns = s * 1e9 >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)(s * 1e9);
  }
  if (rt->debug && rt->parents_ref == LUA_NOREF) {
    lasync__push_weak_table(L, "k");
    rt->parents_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pushboolean(L, was);
  return 1;
}

/* Debug mode: remembers who spawned the task on top of the stack, for async.dump's tree. */
void lasync__debug_spawned(lua_State *L, lasync__runtime *rt, lasync__task *parent) {
  if (parent == NULL || rt->parents_ref == LUA_NOREF) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->parents_ref);
  lua_pushvalue(L, -2);
  lasync__push_task(L, parent);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Debug mode: pushes the chain of the task's spawners as one string, a line each, nearest
 * first: "\n\t(spawned by task 'main')". */
void lasync__push_spawn_chain(lua_State *L, int task_idx) {
  lasync__runtime *rt = lasync__runtime_get(L);
  int top = lua_gettop(L), n = 0;
  task_idx = lua_absindex(L, task_idx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->parents_ref); /* top+1: parents */
  lua_pushvalue(L, task_idx);                         /* top+2: the task walked so far */
  while (n < 32) {
    lua_pushvalue(L, top + 2);
    if (lua_rawget(L, top + 1) != LUA_TUSERDATA) {
      lua_pop(L, 1);
      break;
    }
    lua_replace(L, top + 2);
    lasync__push_task_label(L, top + 2);
    lua_pushfstring(L, "\n\t(spawned by %s)", lua_tostring(L, -1));
    lua_remove(L, -2);
    n++;
  }
  if (n == 0) lua_pushliteral(L, "");
  lua_concat(L, n > 0 ? n : 1);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
}

typedef struct {
  lasync__task *t;
  uint64_t ns;
  int finished;
} slow_step;

/* Under lasync__cpcall: the report allocates (labels, "file:line"), and its callers are a task's
 * body and the drain, where a memory error must not unwind past them: at worst it is not
 * written. */
static int report_slow_step(lua_State *L) {
  const slow_step *s = (const slow_step *)lua_touserdata(L, 1);
  lasync__task *t = s->t;
  int finished = s->finished;
  lua_Debug ar;
  int top = lua_gettop(L);
  const char *where = "(unknown)";
  int level;
  lasync__push_task(L, t);
  lasync__push_task_label(L, -1);
  if (!finished && t->co) {
    for (level = 0; lua_getstack(t->co, level, &ar); level++) {
      lua_getinfo(t->co, "Sl", &ar);
      if (ar.currentline > 0) {
        lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
        where = lua_tostring(L, -1);
        break;
      }
    }
  }
  if (finished && lua_getiuservalue(L, top + 1, LASYNC__UV_FN) == LUA_TFUNCTION) {
    /* Its frames are gone: the function it ran (kept until its results replace it: load_task). */
    lua_getinfo(L, ">S", &ar);
    if (ar.linedefined > 0) {
      lua_pushfstring(L, "in the function at %s:%d", ar.short_src, ar.linedefined);
      where = lua_tostring(L, -1);
    }
  }
  fprintf(stderr, "lasync: %s held the loop for %.0f ms before it %s %s\n", lua_tostring(L, top + 2),
          (double)s->ns / 1e6, finished ? "finished" : "suspended at", where);
  fflush(stderr);
  lua_settop(L, top);
  return 0;
}

/* Debug mode: one step of a task held the loop too long (a blocking call, a CPU loop). Names
 * the task and the line where it suspended or finished. */
void lasync__debug_slow_step(lua_State *L, lasync__task *t, uint64_t ns, int finished) {
  slow_step s;
  s.t = t;
  s.ns = ns;
  s.finished = finished;
  (void)lasync__cpcall(L, report_slow_step, &s);
}

void lasync__open_diag(lua_State *L) {
  static const luaL_Reg funcs[] = {{"tasks", l_tasks}, {"debug", l_debug}, {NULL, NULL}};
  luaL_getmetatable(L, LASYNC_TASK_MT);
  lua_getfield(L, -1, "__index");
  lua_pushcfunction(L, task_name);
  lua_setfield(L, -2, "name");
  lua_pushcfunction(L, task_set_name);
  lua_setfield(L, -2, "set_name");
  lua_pop(L, 2);
  luaL_setfuncs(L, funcs, 0);
}
