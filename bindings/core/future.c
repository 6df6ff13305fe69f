/* Futures: one-shot awaitables that Lua or C code settles.
 *
 * A Lua future (async.future()) is a userdata, lasync__future. A future held by C
 * (lasync_future_new, lasync.h) is a separate, malloc'd, reference-counted handle over one:
 * the handle outlives the runtime, so a worker thread that resolves late, or after the waiting
 * task was cancelled, finds a handle that says so instead of freed memory. While it is pending
 * the runtime pins the Lua future and counts it (lasync_step's answer includes it); settling,
 * cancellation of its waiter and shutdown are each safe in any order.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

/* ---- Lua futures ---- */

static lasync__future *check_future(lua_State *L, const char *fname) {
  lasync__future *f = (lasync__future *)luaL_testudata(L, 1, LASYNC_FUTURE_MT);
  if (f == NULL) lasync__argerror(L, 1, fname, NULL, LASYNC_FUTURE_MT);
  return f;
}

lasync__future *lasync__future_new(lua_State *L) {
  lasync__future *f = (lasync__future *)lua_newuserdatauv(L, sizeof *f, 1);
  memset(f, 0, sizeof *f);
  f->state = LASYNC__FUTURE_PENDING;
  luaL_setmetatable(L, LASYNC_FUTURE_MT);
  return f;
}

static int l_future(lua_State *L) {
  lasync__future_new(L);
  return 1;
}

static void held_settled(lasync__future *f);

/* Stores the values (or the error) in the future at idx, which pops them, then wakes the
 * waiters in the order they came. Allocates: callers from C run it protected. */
static void settle_at(lua_State *L, int idx, lasync__future *f, int state, int n) {
  int i;
  idx = lua_absindex(L, idx);
  lua_createtable(L, n, 0);
  lua_insert(L, -n - 1); /* [t, v1..vn] */
  for (i = n; i >= 1; i--) lua_rawseti(L, -1 - i, i);
  lua_setiuservalue(L, idx, 1);
  f->state = state;
  f->nvalues = n;
  held_settled(f);
  lasync__waitlist_settle(&f->waiters);
}

static int settle(lua_State *L, int state, const char *fname) {
  lasync__future *f = check_future(L, fname);
  if (f->state != LASYNC__FUTURE_PENDING)
    return lasync__misuse(L, "%s: the future is already settled", fname);
  settle_at(L, 1, f, state, lua_gettop(L) - 1);
  return 0;
}

static int future_set(lua_State *L) { return settle(L, LASYNC__FUTURE_DONE, "future:set"); }

static int future_fail(lua_State *L) {
  lua_settop(L, 2);
  return settle(L, LASYNC__FUTURE_FAILED, "future:fail");
}

/* Pushes the settled future's values, or raises its error; the future is at idx. */
static int push_outcome(lua_State *L, lasync__future *f, int idx) {
  int i;
  if (f->oom) {
    /* Settling from C ran out of memory: this task, which awaited it, fails with that. */
    lua_pushliteral(L, "not enough memory");
    return lua_error(L);
  }
  lua_getiuservalue(L, idx, 1);
  if (f->state == LASYNC__FUTURE_FAILED) {
    lua_rawgeti(L, -1, 1);
    return lua_error(L);
  }
  luaL_checkstack(L, f->nvalues, "too many results");
  for (i = 1; i <= f->nvalues; i++) lua_rawgeti(L, -i, i);
  return f->nvalues;
}


static void held_abandoned(lasync__future *f);

static void await_cancel(lasync__task *t, void *data) {
  lasync__future *f = (lasync__future *)data;
  lasync__waitlist_remove(&f->waiters, &t->waiter);
  if (f->waiters.head == NULL) held_abandoned(f);
}

static int await_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return push_outcome(L, (lasync__future *)data, lua_gettop(L));
}

static const lasync__awaitable_ops AWAIT_FUTURE_OPS = {"future", await_cancel, await_finish, NULL};

/* Suspends the running task on the future at the top of L's stack, which stays there (and so
 * stays alive) while the task waits. */
int lasync__future_await(lua_State *L, lasync__future *f, const char *fname) {
  lasync__task *t = lasync__check_task(L, fname);
  if (f->state != LASYNC__FUTURE_PENDING) return push_outcome(L, f, lua_gettop(L));
  lasync__waitlist_add_task(&f->waiters, t);
  return lasync__suspend(L, t, &AWAIT_FUTURE_OPS, f);
}

static int future_await(lua_State *L) {
  lasync__future *f = check_future(L, "future:await");
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

/* ---- futures held by C ---- */

enum { HELD_PENDING, HELD_SETTLED, HELD_CANCELLED };

struct lasync_future {
  /* C's reference (until lasync_future_release), the runtime's (while it is held), and one
   * per settlement queued from another thread. */
  atomic_int refs;
  atomic_int state;           /* HELD_*: readable from any thread */
  lasync__xqueue *q;          /* retained: how other threads reach the loop, even a closed one */
  /* Loop thread only, and only while held (the runtime's reference stands): */
  lasync__runtime *rt;
  lasync__future *lf;         /* the Lua future, pinned by ref */
  int ref;
  lasync__cancel_cb on_cancel;
  void *cancel_data;
  struct lasync_future *prev, *next; /* the runtime's held futures */
  struct held_list *list;
};

/* The held futures of a runtime, closed at shutdown before the cross-thread queue. */
typedef struct held_list {
  lasync__service service; /* first: the service is the state */
  lasync_future *head;
  long n;
} held_list;

static void held_close(lasync__runtime *rt, lasync__service *s);
static const lasync__service_ops HELD_SERVICE = {"futures", NULL, held_close};

static void handle_release(lasync_future *h) {
  if (atomic_fetch_sub(&h->refs, 1) != 1) return;
  lasync__xqueue_release(h->q);
  free(h);
}

/* Ends the runtime's hold: unpins the Lua future, stops counting it. Loop thread. */
static void unhold(lasync_future *h) {
  lasync__runtime *rt = h->rt;
  held_list *list = h->list;
  if (rt == NULL) return;
  if (h->prev)
    h->prev->next = h->next;
  else
    list->head = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
  list->n--;
  lasync__xqueue_hold(h->q, -1);
  h->lf->held = NULL;
  lasync__unpin(rt, rt->L, h->ref);
  h->ref = LUA_NOREF;
  h->lf = NULL;
  h->rt = NULL;
  handle_release(h); /* the runtime's reference */
}

static void held_settled(lasync__future *f) {
  lasync_future *h = f->held;
  if (h == NULL) return;
  atomic_store(&h->state, HELD_SETTLED);
  unhold(h);
}

/* Nobody is left to see the outcome: every task awaiting it was cancelled, or the runtime is
 * closing. C is told once; the future stays counted until C settles or releases it. */
static void cancel_held(lasync_future *h) {
  int expected = HELD_PENDING;
  if (!atomic_compare_exchange_strong(&h->state, &expected, HELD_CANCELLED)) return;
  if (h->on_cancel) h->on_cancel(h, h->cancel_data);
}

static void held_abandoned(lasync__future *f) {
  if (f->held) cancel_held(f->held);
}

static void held_close(lasync__runtime *rt, lasync__service *s) {
  held_list *list = (held_list *)s;
  (void)rt;
  while (list->head) {
    lasync_future *h = list->head;
    cancel_held(h);
    unhold(h);
  }
  free(list);
}

long lasync__futures_held(lasync__runtime *rt) {
  held_list *list = (held_list *)lasync__service_find(rt, &HELD_SERVICE);
  return list ? list->n : 0;
}

/* Under lasync__pcall: [] -> [light future, ref]: the allocations of a new future, pinned. */
static int new_protected(lua_State *L) {
  lasync__future *f = lasync__future_new(L);
  int ref = lasync__pin(lasync__runtime_get(L), L);
  lua_pushlightuserdata(L, f);
  lua_pushinteger(L, ref);
  return 2;
}

lasync_future *lasync__future_hold(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__xqueue *q;
  held_list *list;
  lasync_future *h;
  if (rt == NULL || rt->closing || !lua_checkstack(L, 2)) return NULL;
  if ((q = lasync__xqueue_get(rt)) == NULL) return NULL;
  list = (held_list *)lasync__service_find(rt, &HELD_SERVICE);
  if (list == NULL) {
    if ((list = (held_list *)calloc(1, sizeof *list)) == NULL) return NULL;
    lasync__service_add(rt, &list->service, &HELD_SERVICE);
  }
  if ((h = (lasync_future *)calloc(1, sizeof *h)) == NULL) return NULL;
  lua_pushcfunction(L, new_protected);
  if (lasync__pcall(L, 0, 2) != LUA_OK) {
    lua_pop(L, 1);
    free(h);
    return NULL;
  }
  h->lf = (lasync__future *)lua_touserdata(L, -2);
  h->ref = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  h->lf->held = h;
  h->rt = rt;
  h->list = list;
  h->q = q;
  lasync__xqueue_retain(q);
  atomic_init(&h->refs, 2); /* C's and the runtime's */
  atomic_init(&h->state, HELD_PENDING);
  h->next = list->head;
  if (list->head) list->head->prev = h;
  list->head = h;
  list->n++;
  lasync__xqueue_hold(q, 1);
  return h;
}

/* Under lasync__pcall: [light h, state, v1..vn] -> []. */
static int settle_protected(lua_State *L) {
  lasync_future *h = (lasync_future *)lua_touserdata(L, 1);
  int state = (int)lua_tointeger(L, 2);
  int n = lua_gettop(L) - 2;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref);
  lua_insert(L, 3); /* [h, state, future, v1..vn] */
  settle_at(L, 3, h->lf, state, n);
  return 0;
}

/* Loop thread: settles a held future with the n values on top of L (popped). A memory error
 * fails the awaiting task instead of the caller. */
static void held_settle(lasync_future *h, lua_State *L, int state, int n) {
  lasync__future *f = h->lf;
  if (!lua_checkstack(L, 3)) {
    lua_pop(L, n);
    n = 0;
    f->oom = 1;
  }
  if (!f->oom) {
    lua_pushcfunction(L, settle_protected);
    lua_pushlightuserdata(L, h);
    lua_pushinteger(L, state);
    lua_rotate(L, -n - 3, 3);
    if (lasync__pcall(L, n + 2, 0) == LUA_OK) return;
    lua_pop(L, 1);
    f->oom = 1;
  } else {
    lua_pop(L, n);
  }
  /* Out of memory: the waiters wake to raise it (push_outcome). */
  f->state = LASYNC__FUTURE_FAILED;
  held_settled(f);
  lasync__waitlist_settle(&f->waiters);
}

int lasync__future_settle_held(lasync_future *h, lua_State *L, int state, int n) {
  if (atomic_load(&h->state) == HELD_SETTLED) return 1;
  if (h->rt == NULL || atomic_load(&h->state) == HELD_CANCELLED) {
    /* Nobody will see it: a no-op (the runtime may be gone: L is not touched then). */
    if (h->rt) {
      lua_pop(L, n);
      atomic_store(&h->state, HELD_SETTLED);
      unhold(h);
    }
    return 0;
  }
  held_settle(h, L, state, n);
  return 0;
}

/* A settlement queued from another thread. */
typedef struct {
  lasync_future *h;
  lasync__push_cb push;
  void *arg;
  char *message; /* a rejection's message, or NULL */
} queued;

static void queued_free(void *arg) {
  queued *p = (queued *)arg;
  handle_release(p->h);
  free(p->message);
  free(p);
}

/* The values will never be delivered: the embedder's push gets L == NULL to free its arg. */
static void queued_drop(void *arg) {
  queued *p = (queued *)arg;
  if (p->push) p->push(NULL, p->arg);
  queued_free(p);
}

/* Under lasync__pcall: [light p] -> [values...]: the embedder's push callback. */
static int call_push(lua_State *L) {
  queued *p = (queued *)lua_touserdata(L, 1);
  int n;
  lua_settop(L, 0);
  n = p->push ? p->push(L, p->arg) : 0;
  return n < 0 ? 0 : n;
}

/* Loop thread, from the queue. */
static void queued_run(void *arg) {
  queued *p = (queued *)arg;
  lasync_future *h = p->h;
  lasync__runtime *rt = h->rt;
  if (rt != NULL) {
    lua_State *L = rt->L;
    int top = lua_gettop(L);
    if (atomic_load(&h->state) != HELD_PENDING) {
      lasync__future_settle_held(h, L, LASYNC__FUTURE_DONE, 0); /* a no-op that unholds */
      queued_drop(p);
      return;
    } else if (p->message) {
      if (lua_checkstack(L, 1)) {
        lua_pushstring(L, p->message); /* a memory error here is caught by held_settle's */
        held_settle(h, L, LASYNC__FUTURE_FAILED, 1);
      } else {
        held_settle(h, L, LASYNC__FUTURE_FAILED, 0);
      }
    } else if (lua_checkstack(L, 2)) {
      lua_pushcfunction(L, call_push);
      lua_pushlightuserdata(L, p);
      if (lasync__pcall(L, 1, LUA_MULTRET) == LUA_OK)
        held_settle(h, L, LASYNC__FUTURE_DONE, lua_gettop(L) - top);
      else
        held_settle(h, L, LASYNC__FUTURE_FAILED, 1);
    } else {
      held_settle(h, L, LASYNC__FUTURE_FAILED, 0);
    }
    lua_settop(L, top);
    queued_free(p);
  } else {
    queued_drop(p);
  }
}

int lasync__future_post(lasync_future *h, lasync__push_cb push, void *arg, const char *message) {
  queued *p = (queued *)calloc(1, sizeof *p);
  if (p == NULL) return -1;
  if (message && (p->message = strdup(message)) == NULL) {
    free(p);
    return -1;
  }
  p->h = h;
  p->push = push;
  p->arg = arg;
  atomic_fetch_add(&h->refs, 1);
  /* A closed queue drops it at once: resolving after lasync_destroy is a no-op. */
  lasync__xqueue_post(h->q, queued_run, queued_drop, p);
  return 0;
}

void lasync__future_push_held(lua_State *L, lasync_future *h) {
  if (h->rt == NULL || h->ref == LUA_NOREF)
    lasync__misuse(L, "lasync_await: the future was already settled");
  if (atomic_load(&h->state) == HELD_CANCELLED)
    lasync__misuse(L, "lasync_await: the future was abandoned (its waiter was cancelled)");
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ref);
}

lasync__future *lasync__future_of(lasync_future *h) { return h->lf; }

lasync__runtime *lasync__future_runtime(const lasync_future *h) {
  return h->rt;
}

int lasync__future_cancelled(const lasync_future *h) {
  return atomic_load(&((lasync_future *)h)->state) == HELD_CANCELLED;
}

void lasync__future_on_cancel(lasync_future *h, lasync__cancel_cb cb, void *data) {
  h->on_cancel = cb;
  h->cancel_data = data;
}

void lasync__future_release(lasync_future *h) { handle_release(h); }

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
