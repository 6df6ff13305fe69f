/* Futures: one-shot awaitables that Lua or C code settles. The C awaitables of the embedding
 * API (host/embed.c) are the same objects, held by C through a pin until they settle. */
#include "private.h"

#define TASK_OF_WAITER(p) ((lasync__task *)((char *)(p)-offsetof(lasync__task, waiter)))

static lasync_future *check_future(lua_State *L, const char *fname) {
  lasync_future *f = (lasync_future *)luaL_testudata(L, 1, LASYNC_FUTURE_MT);
  if (f == NULL)
    luaL_error(L, "%s: bad argument #1 (future expected, got %s)", fname, luaL_typename(L, 1));
  return f;
}

lasync_future *lasync__future_new(lua_State *L) {
  lasync_future *f = (lasync_future *)lua_newuserdatauv(L, sizeof *f, 1);
  f->waiters.head = NULL;
  f->state = LASYNC__FUTURE_PENDING;
  f->nvalues = 0;
  f->rt = lasync__runtime_get(L);
  f->ref = LUA_NOREF;
  f->prev = f->next = NULL;
  luaL_setmetatable(L, LASYNC_FUTURE_MT);
  return f;
}

static int l_future(lua_State *L) {
  lasync__future_new(L);
  return 1;
}

/* Settles a future held by C with the n values on top of L (popped): its values, or one
 * error. The pin is what makes the future reachable here. */
void lasync__future_settle(lua_State *L, lasync_future *f, int state, int n) {
  int i;
  lua_createtable(L, n, 0);
  lua_insert(L, -n - 1);                   /* [t, v1..vn] */
  for (i = n; i >= 1; i--) lua_rawseti(L, -1 - i, i);
  lua_rawgeti(L, LUA_REGISTRYINDEX, f->ref);
  lua_insert(L, -2);                       /* [future, t] */
  lua_setiuservalue(L, -2, 1);
  lua_pop(L, 1);
  f->state = state;
  f->nvalues = n;
  lasync__future_release(f);
  lasync__waitlist_settle(&f->waiters);
}

/* Stores values 2..top (or the error) and wakes the waiters in the order they came. */
static int settle(lua_State *L, int state, const char *fname) {
  lasync_future *f = check_future(L, fname);
  int i, n = lua_gettop(L) - 1;
  if (f->state != LASYNC__FUTURE_PENDING)
    return luaL_error(L, "%s: the future is already settled", fname);
  lua_createtable(L, n, 0);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i + 1);
    lua_rawseti(L, -2, i);
  }
  lua_setiuservalue(L, 1, 1);
  f->state = state;
  f->nvalues = n;
  lasync__future_release(f);
  lasync__waitlist_settle(&f->waiters);
  return 0;
}

static int future_set(lua_State *L) { return settle(L, LASYNC__FUTURE_DONE, "future:set"); }

static int future_fail(lua_State *L) {
  lua_settop(L, 2);
  return settle(L, LASYNC__FUTURE_FAILED, "future:fail");
}

/* Pushes the settled future's values, or raises its error; the future is at idx. */
static int push_outcome(lua_State *L, lasync_future *f, int idx) {
  int i;
  lua_getiuservalue(L, idx, 1);
  if (f->state == LASYNC__FUTURE_FAILED) {
    lua_rawgeti(L, -1, 1);
    return lua_error(L);
  }
  luaL_checkstack(L, f->nvalues, "too many results");
  for (i = 1; i <= f->nvalues; i++) lua_rawgeti(L, -i, i);
  return f->nvalues;
}

static void on_settled(lasync__waiter *w) { lasync__wake(TASK_OF_WAITER(w)); }

static void await_cancel(lasync__task *t, void *data) {
  lasync__waitlist_remove(&((lasync_future *)data)->waiters, &t->waiter);
}

static int await_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return push_outcome(L, (lasync_future *)data, lua_gettop(L));
}

static const lasync__awaitable_ops AWAIT_FUTURE_OPS = {"future", await_cancel, await_finish, NULL};

/* Suspends the running task on the future at the top of L's stack, which stays there (and so
 * stays alive) while the task waits. */
int lasync__future_await(lua_State *L, lasync_future *f, const char *fname) {
  lasync__task *t = lasync__check_task(L, fname);
  if (f->state != LASYNC__FUTURE_PENDING) return push_outcome(L, f, lua_gettop(L));
  t->waiter.on_settle = on_settled;
  lasync__waitlist_add(&f->waiters, &t->waiter);
  return lasync__suspend(L, t, &AWAIT_FUTURE_OPS, f);
}

static int future_await(lua_State *L) {
  lasync_future *f = check_future(L, "future:await");
  lua_settop(L, 1);
  return lasync__future_await(L, f, "future:await");
}

static int future_done(lua_State *L) {
  lua_pushboolean(L, check_future(L, "future:done")->state != LASYNC__FUTURE_PENDING);
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
