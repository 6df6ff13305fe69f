/* Requests: one libuv request that one task waits on, completed by its callback.
 *
 * As luv's lreq.c: the request is pinned from the moment it is made until libuv calls back,
 * exactly once, so its memory outlives a waiter that was cancelled. What the request produced
 * (a descriptor, an address list) then has no one to go to, and the binding's discard hook
 * releases it. Results reach the task only through the one wake-up path.
 */
#include <stddef.h>
#include <string.h>

#include "private.h"

static const char REQ_MT[] = "lasync.Request";

static void release(lasync__req *r, int discard) {
  if (r->released) return;
  r->released = 1;
  if (discard && r->ops->discard) r->ops->discard(r);
  if (r->ops->cleanup) r->ops->cleanup(r);
}

/* ---- the awaitable a waiting task is suspended on ---- */

static void req_cancel(lasync__task *t, void *data) {
  lasync__req *r = (lasync__req *)data;
  (void)t;
  r->task = NULL;
  if (r->done) return; /* completed but not yet resumed: abandon releases it */
  if (r->ops->cancel)
    r->ops->cancel(r);
  else
    uv_cancel(r->uv); /* fails for a request already running: the callback discards then */
}

static int req_finish(lua_State *L, lasync__task *t, void *data) {
  lasync__req *r = (lasync__req *)data;
  int n;
  (void)t;
  r->task = NULL;
  n = r->ops->push(L, r);
  release(r, 0);
  return n < 0 ? lua_error(L) : n;
}

static void req_abandon(lua_State *L, lasync__task *t, void *data) {
  lasync__req *r = (lasync__req *)data;
  (void)L;
  (void)t;
  r->task = NULL;
  if (r->done) release(r, 1); /* else the callback, still to come, discards */
}

static int req_gc(lua_State *L) {
  /* Reached only once unpinned, so after the callback; a request that never started has
   * nothing to release but its own memory. */
  lasync__req *r = (lasync__req *)lua_touserdata(L, 1);
  if (r->done) release(r, 1);
  return 0;
}

lasync__req *lasync__req_new(lua_State *L, const lasync__req_ops *ops, size_t size,
                             size_t uv_offset) {
  return lasync__req_new_uv(L, ops, size, uv_offset, 0);
}

lasync__req *lasync__req_new_uv(lua_State *L, const lasync__req_ops *ops, size_t size,
                                size_t uv_offset, int nuv) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__req *r = (lasync__req *)lua_newuserdatauv(L, size, nuv);
  memset(r, 0, size);
  r->rt = rt;
  r->ops = ops;
  r->ref = LUA_NOREF;
  r->uv = (uv_req_t *)((char *)r + uv_offset);
  r->uv->data = r;
  r->done = 1; /* until it is started, __gc has nothing pending to wait for */
  if (luaL_newmetatable(L, REQ_MT)) {
    lua_pushcfunction(L, req_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  r->ref = lasync__pin(rt, L); /* may raise: nothing is started yet */
  r->done = 0;
  rt->live_requests++;
  return r;
}

static const lasync__awaitable_ops REQ_AWAIT = {"request", req_cancel, req_finish, req_abandon};

int lasync__req_await(lua_State *L, lasync__task *t, lasync__req *r) {
  r->task = t;
  return lasync__suspend(L, t, &REQ_AWAIT, r);
}

static void unpin(lasync__req *r) {
  lasync__runtime *rt = r->rt;
  r->done = 1;
  rt->live_requests--;
  lasync__unpin(rt, rt->L, r->ref);
  r->ref = LUA_NOREF;
}

void lasync__req_abort(lasync__req *r) {
  r->released = 1; /* nothing was produced, and libuv has no memory of it to clean */
  unpin(r);
}

void lasync__req_done(lasync__req *r) {
  lasync__task *t = r->task;
  unpin(r); /* the waiting task's stack keeps the userdata alive until it has the results */
  if (t)
    lasync__wake(t);
  else
    release(r, 1);
}
