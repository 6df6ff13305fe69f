/* Futures: one-shot awaitables that Lua or C code settles. The C awaitables of the embedding
 * API build on the same wait list. */
#include "private.h"

enum { FUTURE_PENDING, FUTURE_DONE, FUTURE_FAILED };

typedef struct {
  lasync__waitlist waiters;
  int state;
  int nvalues;
} future;

#define TASK_OF_WAITER(p) ((lasync__task *)((char *)(p)-offsetof(lasync__task, waiter)))

static future *check_future(lua_State *L, const char *fname) {
  future *f = (future *)luaL_testudata(L, 1, LASYNC_FUTURE_MT);
  if (f == NULL)
    luaL_error(L, "%s: bad argument #1 (future expected, got %s)", fname, luaL_typename(L, 1));
  return f;
}

static int l_future(lua_State *L) {
  future *f = (future *)lua_newuserdatauv(L, sizeof *f, 1);
  f->waiters.head = NULL;
  f->state = FUTURE_PENDING;
  f->nvalues = 0;
  luaL_setmetatable(L, LASYNC_FUTURE_MT);
  return 1;
}

/* Stores values 2..top (or the error) and wakes the waiters in the order they came. */
static int settle(lua_State *L, int state, const char *fname) {
  future *f = check_future(L, fname);
  int i, n = lua_gettop(L) - 1;
  if (f->state != FUTURE_PENDING)
    return luaL_error(L, "%s: the future is already settled", fname);
  lua_createtable(L, n, 0);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i + 1);
    lua_rawseti(L, -2, i);
  }
  lua_setiuservalue(L, 1, 1);
  f->state = state;
  f->nvalues = n;
  lasync__waitlist_settle(&f->waiters);
  return 0;
}

static int future_set(lua_State *L) { return settle(L, FUTURE_DONE, "future:set"); }

static int future_fail(lua_State *L) {
  lua_settop(L, 2);
  return settle(L, FUTURE_FAILED, "future:fail");
}

static int push_outcome(lua_State *L, future *f) {
  int i;
  lua_getiuservalue(L, 1, 1);
  if (f->state == FUTURE_FAILED) {
    lua_rawgeti(L, -1, 1);
    return lua_error(L);
  }
  luaL_checkstack(L, f->nvalues, "too many results");
  for (i = 1; i <= f->nvalues; i++) lua_rawgeti(L, -i, i);
  return f->nvalues;
}

static void on_settled(lasync__waiter *w) { lasync__wake(TASK_OF_WAITER(w)); }

static void await_cancel(lasync__task *t, void *data) {
  lasync__waitlist_remove(&((future *)data)->waiters, &t->waiter);
}

static int await_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return push_outcome(L, (future *)data);
}

static const lasync__awaitable_ops AWAIT_FUTURE_OPS = {"future", await_cancel, await_finish};

static int future_await(lua_State *L) {
  future *f = check_future(L, "future:await");
  lasync__task *t = lasync__check_task(L, "future:await");
  lua_settop(L, 1);
  if (f->state != FUTURE_PENDING) return push_outcome(L, f);
  t->waiter.on_settle = on_settled;
  lasync__waitlist_add(&f->waiters, &t->waiter);
  return lasync__suspend(L, t, &AWAIT_FUTURE_OPS, f);
}

static int future_done(lua_State *L) {
  lua_pushboolean(L, check_future(L, "future:done")->state != FUTURE_PENDING);
  return 1;
}

static int future_tostring(lua_State *L) {
  static const char *const names[] = {"pending", "done", "failed"};
  lua_pushfstring(L, "Future (%s)", names[check_future(L, "tostring")->state]);
  return 1;
}

void lasync__open_future(lua_State *L) {
  static const luaL_Reg methods[] = {{"set", future_set},   {"fail", future_fail},
                                     {"await", future_await}, {"done", future_done},
                                     {NULL, NULL}};
  luaL_newmetatable(L, LASYNC_FUTURE_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, future_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_future);
  lua_setfield(L, -2, "future");
}
