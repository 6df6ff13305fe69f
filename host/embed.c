/* The embedding API (lasync.h) over the runtime in bindings/. */
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "private.h"
#include "lasync.h"

int luaopen_lasync(lua_State *L);

static const char HELD_KEY = 'h'; /* registry: light(task) -> task, for the tasks C holds */

/* A settlement requested from another thread, applied on the loop's thread. */
typedef struct pending {
  struct pending *next;
  lasync_future *f;
  lasync_push_cb push;
  void *arg;
  char *message; /* a rejection's message, or NULL */
} pending;

/* What embedding adds to a runtime: the futures C holds, and the queue other threads fill. */
typedef struct {
  lasync__service service; /* first: the service is the state */
  lasync_runtime *rt;
  int owns_state;
  uv_thread_t owner; /* the thread that created the runtime: the only one allowed in */
  uv_async_t async;   /* wakes the loop for the queue; ref'd while C holds futures */
  uv_mutex_t lock;
  pending *head, *tail;
  lasync_future *held; /* futures C holds, so shutdown can let go of them */
  long nheld;
} embed;

/* Whether the calling thread may use rt: the one that created it (or, for a runtime the module
 * form made, any: it has no embedding state to say). Cross-thread work goes through
 * lasync_future_resolve_async / reject_async only. */
static void embed_close(lasync_runtime *rt, lasync__service *s);
static const lasync__service_ops EMBED_SERVICE = {"embed", NULL, embed_close};

static embed *find_embed(lasync_runtime *rt) {
  return (embed *)lasync__service_find(rt, &EMBED_SERVICE);
}

static int foreign_thread(lasync_runtime *rt) {
  uv_thread_t self = uv_thread_self();
  const embed *e = find_embed(rt);
  return e != NULL && !uv_thread_equal(&e->owner, &self);
}

const char *lasync_strerror(int err) {
  switch (err) {
    case LASYNC_OK: return "success";
    case LASYNC_EINVAL: return "invalid argument";
    case LASYNC_ENOMEM: return "not enough memory";
    case LASYNC_ELUA: return "Lua error (the message is on the stack)";
    case LASYNC_EBUSY: return "not allowed from inside a task or while the loop runs";
    case LASYNC_ESTATE: return "the object is in the wrong state";
    case LASYNC_ELOOP: return "the event loop failed";
    case LASYNC_EPENDING: return "the task has not finished";
    case LASYNC_ETHREAD: return "called from a thread that does not own the runtime";
    default: return "unknown error";
  }
}

/* ---- futures held by C ---- */

static void update_async_ref(embed *e) {
  if (e->nheld > 0)
    uv_ref((uv_handle_t *)&e->async);
  else
    uv_unref((uv_handle_t *)&e->async);
}

static void release(embed *e, lasync_future *f) {
  if (f->prev)
    f->prev->next = f->next;
  else
    e->held = f->next;
  if (f->next) f->next->prev = f->prev;
  f->prev = f->next = NULL;
  lasync__unpin(f->rt, f->rt->L, f->ref);
  f->ref = LUA_NOREF;
  e->nheld--;
  update_async_ref(e);
}

void lasync__future_release(lasync_future *f) {
  if (f->ref != LUA_NOREF) release(find_embed(f->rt), f);
}

/* A protected call of the embedder's push callback: a Lua error there must not escape a libuv
 * callback. */
static int call_push(lua_State *L) {
  pending *p = (pending *)lua_touserdata(L, 1);
  int n;
  lua_settop(L, 0);
  n = p->push ? p->push(L, p->arg) : 0;
  return n < 0 ? 0 : n;
}

static void apply(embed *e, pending *p) {
  lua_State *L = e->rt->L;
  int top = lua_gettop(L);
  if (p->f->state != LASYNC__FUTURE_PENDING || p->f->ref == LUA_NOREF) return;
  if (p->message) {
    lua_pushstring(L, p->message);
    lasync__future_settle(L, p->f, LASYNC__FUTURE_FAILED, 1);
  } else {
    lua_pushcfunction(L, call_push);
    lua_pushlightuserdata(L, p);
    if (lua_pcall(L, 1, LUA_MULTRET, 0) == LUA_OK)
      lasync__future_settle(L, p->f, LASYNC__FUTURE_DONE, lua_gettop(L) - top);
    else
      lasync__future_settle(L, p->f, LASYNC__FUTURE_FAILED, 1);
  }
  lua_settop(L, top);
}

/* libuv calls this on the loop's thread after another thread queued settlements. */
static void on_async(uv_async_t *handle) {
  embed *e = (embed *)handle->data;
  pending *p;
  uv_mutex_lock(&e->lock);
  p = e->head;
  e->head = e->tail = NULL;
  uv_mutex_unlock(&e->lock);
  while (p) {
    pending *next = p->next;
    apply(e, p);
    free(p->message);
    free(p);
    p = next;
  }
}

static void on_async_closed(uv_handle_t *handle) {
  embed *e = (embed *)handle->data;
  uv_mutex_destroy(&e->lock);
  free(e);
}

/* Shutdown hook: let go of the held futures and of settlements that came too late. */
static void embed_close(lasync_runtime *rt, lasync__service *s) {
  embed *e = (embed *)s;
  pending *p;
  while (e->held) release(e, e->held);
  uv_mutex_lock(&e->lock);
  p = e->head;
  e->head = e->tail = NULL;
  uv_mutex_unlock(&e->lock);
  while (p) {
    pending *next = p->next;
    free(p->message);
    free(p);
    p = next;
  }
  (void)rt;
  uv_close((uv_handle_t *)&e->async, on_async_closed);
}

static embed *embed_of(lasync_runtime *rt) {
  embed *e = find_embed(rt);
  if (e) return e;
  e = (embed *)calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->rt = rt;
  e->owner = uv_thread_self();
  if (uv_mutex_init(&e->lock) != 0 || uv_async_init(rt->loop, &e->async, on_async) != 0) {
    free(e);
    return NULL;
  }
  e->async.data = e;
  uv_unref((uv_handle_t *)&e->async);
  lasync__service_add(rt, &e->service, &EMBED_SERVICE);
  return e;
}

lasync_future *lasync_future_new(lua_State *L) {
  lasync_runtime *rt = lasync__runtime_get(L);
  embed *e;
  lasync_future *f;
  if (rt == NULL || (e = embed_of(rt)) == NULL) return NULL;
  f = lasync__future_new(L);
  f->ref = lasync__pin(rt, L);
  f->next = e->held;
  if (e->held) e->held->prev = f;
  e->held = f;
  e->nheld++;
  update_async_ref(e);
  return f;
}

int lasync_await(lua_State *L, lasync_future *f) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, f->ref); /* on the frame's stack: alive while waiting */
  if (f->ref == LUA_NOREF) {
    lua_pop(L, 1);
    return luaL_error(L, "lasync_await: the future was already settled and released");
  }
  return lasync__future_await(L, f, "lasync_await");
}

static int settle_now(lasync_future *f, lua_State *L, int state, int n) {
  if (f == NULL || L == NULL || n < 0 || lua_gettop(L) < n) return LASYNC_EINVAL;
  if (foreign_thread(f->rt)) return LASYNC_ETHREAD;
  if (f->state != LASYNC__FUTURE_PENDING || f->ref == LUA_NOREF) return LASYNC_ESTATE;
  lasync__future_settle(L, f, state, n);
  return LASYNC_OK;
}

int lasync_future_resolve(lasync_future *f, lua_State *L, int nvalues) {
  return settle_now(f, L, LASYNC__FUTURE_DONE, nvalues);
}

int lasync_future_reject(lasync_future *f, lua_State *L) {
  return settle_now(f, L, LASYNC__FUTURE_FAILED, 1);
}

static int queue(lasync_future *f, lasync_push_cb push, void *arg, const char *message) {
  embed *e;
  pending *p;
  if (f == NULL) return LASYNC_EINVAL;
  e = find_embed(f->rt);
  p = (pending *)calloc(1, sizeof *p);
  if (p == NULL) return LASYNC_ENOMEM;
  p->f = f;
  p->push = push;
  p->arg = arg;
  if (message && (p->message = strdup(message)) == NULL) {
    free(p);
    return LASYNC_ENOMEM;
  }
  uv_mutex_lock(&e->lock);
  if (e->tail)
    e->tail->next = p;
  else
    e->head = p;
  e->tail = p;
  uv_mutex_unlock(&e->lock);
  return uv_async_send(&e->async) == 0 ? LASYNC_OK : LASYNC_ELOOP;
}

int lasync_future_resolve_async(lasync_future *f, lasync_push_cb push, void *arg) {
  return queue(f, push, arg, NULL);
}

int lasync_future_reject_async(lasync_future *f, const char *message) {
  return queue(f, NULL, NULL, message ? message : "rejected");
}

/* ---- runtimes ---- */

int lasync_new(lasync_runtime **out, const lasync_options *opts) {
  lasync_options none;
  lua_State *L;
  lasync_runtime *rt;
  embed *e;
  if (out == NULL) return LASYNC_EINVAL;
  *out = NULL;
  if (opts == NULL) {
    memset(&none, 0, sizeof none);
    opts = &none;
  }
  L = opts->L;
  if (L == NULL) {
    if ((L = luaL_newstate()) == NULL) return LASYNC_ENOMEM;
    luaL_openlibs(L);
  } else if (lasync__runtime_get(L) != NULL) {
    return LASYNC_EBUSY; /* one runtime per state */
  }
  rt = lasync__runtime_open(L, opts->loop);
  if (rt == NULL) {
    if (opts->L == NULL) lua_close(L);
    return LASYNC_ELOOP;
  }
  rt->data = opts->data;
  rt->on_error = (void (*)(lasync__runtime *, const char *, void *))opts->on_error;
  if ((e = embed_of(rt)) == NULL) {
    lasync__runtime_close(rt);
    if (opts->L == NULL) lua_close(L);
    free(rt);
    return LASYNC_ENOMEM;
  }
  e->owns_state = opts->L == NULL;
  luaL_requiref(L, "lasync", luaopen_lasync, 0);
  lua_pop(L, 1);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
  *out = rt;
  return LASYNC_OK;
}

int lasync_destroy(lasync_runtime *rt) {
  lua_State *L;
  int owns_state;
  if (rt == NULL) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (rt->in_callback) return LASYNC_EBUSY;
  L = rt->L;
  owns_state = find_embed(rt) ? find_embed(rt)->owns_state : 0;
  lasync__runtime_close(rt);
  if (owns_state) {
    lua_close(L);
  } else {
    /* The state lives on: forget the runtime so nothing in it points here any more. Failed
     * tasks nobody looked at and nobody holds are reported to on_error now, while it exists. */
    lua_gc(L, LUA_GCCOLLECT);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
    lasync__runtime_detach(rt);
  }
  free(rt);
  return LASYNC_OK;
}

lua_State *lasync_lua(lasync_runtime *rt) { return rt->L; }
uv_loop_t *lasync_loop(lasync_runtime *rt) { return rt->loop; }
void *lasync_get_data(lasync_runtime *rt) { return rt->data; }
void lasync_set_data(lasync_runtime *rt, void *data) { rt->data = data; }

/* ---- tasks ---- */

/* Under lua_pcall: [hold, fn, args...] -> [task, light(task)]. Making the task and holding it
 * both allocate, and the embedder's call is not a protected one. */
static int spawn_protected(lua_State *L) {
  int hold = lua_toboolean(L, 1);
  lasync__task *t = lasync__spawn(L, 2, lua_gettop(L) - 2); /* [..., task] */
  if (hold) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
    lua_pushvalue(L, -2);
    lua_rawsetp(L, -2, t);
    lua_pop(L, 1);
  } else {
    t->report_now = 1;
  }
  lua_pushlightuserdata(L, t);
  return 2;
}

/* Spawns the function below nargs arguments on the main thread's stack. */
static int spawn(lasync_runtime *rt, int nargs, lasync_task **out) {
  lua_State *L = rt->L;
  int base = lua_gettop(L) - nargs; /* the function */
  if (out) *out = NULL;
  if (rt->closing) {
    lua_pop(L, nargs + 1);
    return LASYNC_EBUSY;
  }
  if (!lua_checkstack(L, 2)) {
    lua_pop(L, nargs + 1);
    return LASYNC_ENOMEM;
  }
  lua_pushcfunction(L, spawn_protected);
  lua_pushboolean(L, out != NULL);
  lua_rotate(L, base, 2); /* [spawn_protected, hold, fn, args...] */
  if (lua_pcall(L, nargs + 2, 2, 0) != LUA_OK) {
    lua_pop(L, 1); /* a memory error: nothing was spawned */
    return LASYNC_ENOMEM;
  }
  if (out) *out = (lasync__task *)lua_touserdata(L, -1);
  lua_pop(L, 2);
  return LASYNC_OK;
}

int lasync_spawn_call(lasync_runtime *rt, int nargs, lasync_task **out) {
  if (rt == NULL || nargs < 0) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (lua_gettop(rt->L) < nargs + 1) return LASYNC_EINVAL;
  return spawn(rt, nargs, out);
}

int lasync_spawn_string(lasync_runtime *rt, const char *code, const char *name,
                        lasync_task **out) {
  if (rt == NULL || code == NULL) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (luaL_loadbuffer(rt->L, code, strlen(code), name ? name : code) != LUA_OK) return LASYNC_ELUA;
  return spawn(rt, 0, out);
}

int lasync_spawn_file(lasync_runtime *rt, const char *path, lasync_task **out) {
  if (rt == NULL || path == NULL) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (luaL_loadfile(rt->L, path) != LUA_OK) return LASYNC_ELUA;
  return spawn(rt, 0, out);
}

lasync_task_status_t lasync_task_status(const lasync_task *t) {
  return (lasync_task_status_t)t->status;
}

int lasync_task_result(lasync_task *t, lua_State *L) {
  int i;
  if (t == NULL || L == NULL) return LASYNC_EINVAL;
  if (!lasync__task_finished(t)) return LASYNC_EPENDING;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
  if (lua_rawgetp(L, -1, t) != LUA_TUSERDATA) {
    lua_pop(L, 2);
    return LASYNC_EINVAL; /* released already */
  }
  lua_remove(L, -2); /* [task] */
  lasync__mark_observed(L, t, -1);
  if (t->status == LASYNC__DONE) {
    int n = t->nargs;
    if (n == 1) lua_getiuservalue(L, -1, LASYNC__UV_FN);
    if (n > 1) {
      lua_getiuservalue(L, -1, LASYNC__UV_ARGS);
      for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
      lua_remove(L, -n - 1);
    }
    lua_remove(L, -n - 1);
    return n;
  }
  lua_getiuservalue(L, -1, LASYNC__UV_FN);
  lua_remove(L, -2);
  return LASYNC_ELUA;
}

int lasync_task_cancel(lasync_task *t) {
  if (t == NULL) return LASYNC_EINVAL;
  if (foreign_thread(t->rt)) return LASYNC_ETHREAD;
  return lasync__cancel(t->rt->L, t, 0, 0);
}

void lasync_task_release(lasync_task *t) {
  lua_State *L;
  if (t == NULL) return;
  L = t->rt->L;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
  lua_pushnil(L);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
}

/* ---- driving ---- */

int lasync_run(lasync_runtime *rt) {
  if (rt == NULL) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (rt->in_callback) return LASYNC_EBUSY;
  return lasync__run_until_done(rt, NULL) == 0 ? LASYNC_OK : LASYNC_EBUSY;
}

int lasync_step(lasync_runtime *rt, double budget_ms) {
  uint64_t start = uv_hrtime();
  if (rt == NULL || budget_ms < 0) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (rt->in_callback) return LASYNC_EBUSY;
  rt->step_deadline = start + (uint64_t)(budget_ms * 1e6);
  rt->step_seq++;
  rt->in_callback++;
  do {
    uv_run(rt->loop, UV_RUN_NOWAIT);
  } while (rt->ready_len > 0 && uv_hrtime() < rt->step_deadline);
  rt->in_callback--;
  rt->step_deadline = 0;
  return (int)rt->live_tasks;
}

int lasync_backend_fd(lasync_runtime *rt) { return uv_backend_fd(rt->loop); }

int lasync_backend_timeout(lasync_runtime *rt) {
  if (rt->ready_len > 0) return 0;
  /* uv_backend_timeout() answers 0, not -1, for a loop with nothing active: a host following
   * lasync.h would spin instead of seeing that nothing is scheduled. */
  if (!uv_loop_alive(rt->loop)) return -1;
  return uv_backend_timeout(rt->loop);
}
