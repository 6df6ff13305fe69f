/* The embedding API (lasync.h) over the runtime in bindings/. */
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "private.h"
#include "lasync.h"

int luaopen_lasync(lua_State *L);

static const char HELD_KEY = 'h'; /* registry: light(task) -> task, for the tasks C holds */

/* A task handle of C's: the task, until its runtime closes, so a handle released after
 * lasync_destroy (a natural order, as futures allow it) touches no freed memory. */
struct lasync_task {
  lasync__task *task;        /* NULL once the runtime has closed */
  lasync_task_status_t last; /* the status it had then */
  lasync_task *prev, *next;  /* the runtime's live handles, while task is set */
};

/* What embedding adds to a runtime: whose it is. Futures held by C and the cross-thread queue
 * live in bindings/core (future.c, xthread.c). */
typedef struct {
  lasync__service service; /* first: the service is the state */
  int owns_state;
  uv_thread_t owner;    /* the thread that created the runtime: the only one allowed in */
  lasync_task *handles; /* held tasks, cut loose when the runtime closes */
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

/* ---- futures held by C (bindings/core/future.c) ---- */

static void embed_close(lasync_runtime *rt, lasync__service *s) {
  lasync_task *h, *next;
  (void)rt;
  for (h = ((embed *)s)->handles; h; h = next) {
    next = h->next;
    h->last = (lasync_task_status_t)h->task->status;
    h->task = NULL; /* out of every list: release only frees it */
    h->prev = h->next = NULL;
  }
  free(s);
}

static embed *embed_of(lasync_runtime *rt) {
  embed *e = find_embed(rt);
  if (e) return e;
  e = (embed *)calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->owner = uv_thread_self();
  lasync__service_add(rt, &e->service, &EMBED_SERVICE);
  return e;
}

lasync_future *lasync_future_new(lua_State *L) {
  lasync_runtime *rt = lasync__runtime_get(L);
  if (rt == NULL || foreign_thread(rt)) return NULL;
  return lasync__future_hold(L);
}

int lasync_await(lua_State *L, lasync_future *f) {
  if (f == NULL) return luaL_error(L, "lasync_await: no future (lasync_future_new failed)");
  lasync__future_push_held(L, f); /* on the frame's stack: alive while waiting */
  return lasync__future_await(L, lasync__future_of(f), "lasync_await");
}

static int settle_now(lasync_future *f, lua_State *L, int state, int n) {
  lasync_runtime *rt;
  if (f == NULL) return LASYNC_EINVAL;
  rt = lasync__future_runtime(f);
  if (rt == NULL) /* settled already, or the runtime has gone: L is not touched */
    return lasync__future_settle_held(f, L, state, n) ? LASYNC_ESTATE : LASYNC_OK;
  if (L == NULL || n < 0 || lua_gettop(L) < n) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  return lasync__future_settle_held(f, L, state, n) ? LASYNC_ESTATE : LASYNC_OK;
}

int lasync_future_resolve(lasync_future *f, lua_State *L, int nvalues) {
  return settle_now(f, L, LASYNC__FUTURE_DONE, nvalues);
}

int lasync_future_reject(lasync_future *f, lua_State *L) {
  return settle_now(f, L, LASYNC__FUTURE_FAILED, 1);
}

int lasync_future_resolve_async(lasync_future *f, lasync_push_cb push, void *arg) {
  if (f == NULL) return LASYNC_EINVAL;
  return lasync__future_post(f, push, arg, NULL) == 0 ? LASYNC_OK : LASYNC_ENOMEM;
}

int lasync_future_reject_async(lasync_future *f, const char *message) {
  if (f == NULL) return LASYNC_EINVAL;
  return lasync__future_post(f, NULL, NULL, message ? message : "rejected") == 0 ? LASYNC_OK
                                                                                 : LASYNC_ENOMEM;
}

void lasync_future_on_cancel(lasync_future *f, lasync_future_cancel_cb cb, void *data) {
  if (f && lasync__future_runtime(f) && !foreign_thread(lasync__future_runtime(f)))
    lasync__future_on_cancel(f, cb, data);
}

int lasync_future_cancelled(const lasync_future *f) {
  return f != NULL && lasync__future_cancelled(f);
}

void lasync_future_release(lasync_future *f) {
  if (f) lasync__future_release(f);
}

/* ---- runtimes ---- */

static int open_libs(lua_State *L) {
  luaL_openlibs(L);
  return 0;
}

/* Under lasync__pcall: [light rt, owns_state] -> []: what lasync_new adds to the state. */
static int new_protected(lua_State *L) {
  lasync_runtime *rt = (lasync_runtime *)lua_touserdata(L, 1);
  embed *e = embed_of(rt);
  if (e == NULL) {
    lua_pushliteral(L, "not enough memory");
    return lua_error(L);
  }
  e->owns_state = lua_toboolean(L, 2);
  /* The collector's pace counts what the collector frees, which only lasync's heap can. */
  if (rt->lua_heap) lasync__gc_pace_open(L, rt);
  luaL_requiref(L, "lasync", luaopen_lasync, 0);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
  return 0;
}

int lasync_new(lasync_runtime **out, const lasync_options *opts) {
  lasync_options none;
  lua_State *L;
  lasync_runtime *rt;
  lasync__heap *heap = NULL;
  if (out == NULL) return LASYNC_EINVAL;
  *out = NULL;
  if (opts == NULL) {
    memset(&none, 0, sizeof none);
    opts = &none;
  }
  L = opts->L;
  if (L == NULL) {
    if (opts->alloc) {
      L = lua_newstate(opts->alloc, opts->alloc_ud);
    } else {
      /* lasync's size-class heap (bindings/core/alloc.c): tasks allocate small objects at a
       * high rate, and the heap counts them, so max_memory costs nothing. */
      if ((heap = lasync__heap_new(opts->max_memory)) == NULL) return LASYNC_ENOMEM;
      if ((L = lasync__heap_newstate(heap)) == NULL) lasync__heap_free(heap);
    }
    if (L == NULL) return LASYNC_ENOMEM;
    if (opts->ignore_env) {
      lua_pushboolean(L, 1); /* a short string key and a boolean: fits the fresh state's room */
      lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    }
    /* lua.c opens the libraries under a protected call too: they allocate. */
    lua_pushcfunction(L, open_libs);
    if (lasync__pcall(L, 0, 0) != LUA_OK) {
      lua_close(L);
      lasync__heap_free(heap);
      return LASYNC_ENOMEM;
    }
  } else if (lasync__runtime_get(L) != NULL) {
    return LASYNC_EBUSY; /* one runtime per state */
  }
  rt = lasync__runtime_open(L, opts->loop);
  if (rt == NULL) {
    if (opts->L == NULL) lua_close(L);
    lasync__heap_free(heap);
    return LASYNC_ENOMEM; /* out of memory, or libuv could not make a loop */
  }
  rt->lua_heap = heap; /* freed by lasync__runtime_free, after lua_close */
  rt->data = opts->data;
  rt->on_error = (void (*)(lasync__runtime *, const char *, void *))opts->on_error;
  if (!lua_checkstack(L, 3)) {
    lasync__runtime_close(rt);
    lasync__runtime_detach(rt);
    if (opts->L == NULL) lua_close(L);
    lasync__runtime_free(rt);
    return LASYNC_ENOMEM;
  }
  lua_pushcfunction(L, new_protected);
  lua_pushlightuserdata(L, rt);
  lua_pushboolean(L, opts->L == NULL);
  if (lasync__pcall(L, 2, 0) != LUA_OK) {
    lua_pop(L, 1);
    lasync__runtime_close(rt);
    if (opts->L == NULL) {
      lua_close(L);
    } else {
      lasync__runtime_detach(rt);
    }
    lasync__runtime_free(rt);
    return LASYNC_ENOMEM;
  }
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
    lua_close(L); /* failures found as it closes still reach on_error: rt is alive */
  } else {
    /* The state lives on: forget the runtime so nothing in it points here any more. Failed
     * tasks nobody looked at and nobody holds are reported to on_error now, while it exists. */
    lua_gc(L, LUA_GCCOLLECT);
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
    lasync__runtime_detach(rt);
  }
  return lasync__runtime_free(rt) == 0 ? LASYNC_OK : LASYNC_ELOOP;
}

lua_State *lasync_lua(lasync_runtime *rt) { return rt->L; }
uv_loop_t *lasync_loop(lasync_runtime *rt) { return rt->loop; }
void *lasync_get_data(lasync_runtime *rt) { return rt->data; }
void lasync_set_data(lasync_runtime *rt, void *data) { rt->data = data; }

/* ---- tasks ---- */

/* Under lasync__pcall: [hold, fn, args...] -> [task, light(task)]. Making the task and holding it
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
  lasync_task *h = NULL;
  embed *e = out ? embed_of(rt) : NULL;
  if (out) *out = NULL;
  if (rt->closing) {
    lua_pop(L, nargs + 1);
    return LASYNC_EBUSY;
  }
  if (out && (e == NULL || (h = (lasync_task *)calloc(1, sizeof *h)) == NULL)) {
    lua_pop(L, nargs + 1);
    return LASYNC_ENOMEM;
  }
  if (!lua_checkstack(L, 2)) {
    lua_pop(L, nargs + 1);
    return LASYNC_ENOMEM;
  }
  lua_pushcfunction(L, spawn_protected);
  lua_pushboolean(L, out != NULL);
  lua_rotate(L, base, 2); /* [spawn_protected, hold, fn, args...] */
  if (lasync__pcall(L, nargs + 2, 2) != LUA_OK) {
    lua_pop(L, 1); /* a memory error: nothing was spawned */
    free(h);
    return LASYNC_ENOMEM;
  }
  if (out) {
    h->task = (lasync__task *)lua_touserdata(L, -1);
    h->next = e->handles;
    if (e->handles) e->handles->prev = h;
    e->handles = h;
    *out = h;
  }
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

lasync_task_status_t lasync_task_status(const lasync_task *h) {
  return h->task ? (lasync_task_status_t)h->task->status : h->last;
}

int lasync_task_result(lasync_task *h, lua_State *L) {
  int i;
  lasync__task *t = h ? h->task : NULL;
  if (h == NULL || L == NULL) return LASYNC_EINVAL;
  if (t == NULL) return LASYNC_ESTATE; /* its runtime has closed */
  if (foreign_thread(t->rt)) return LASYNC_ETHREAD;
  if (!lasync__task_finished(t)) return LASYNC_EPENDING;
  /* Room for the results, the task and its table first: this is not a protected call. */
  if (!lua_checkstack(L, (t->status == LASYNC__DONE ? t->nargs : 1) + 3)) return LASYNC_ENOMEM;
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
      lasync__push_aux(L, t, -1);
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

int lasync_task_cancel(lasync_task *h) {
  lasync__task *t = h ? h->task : NULL;
  if (h == NULL) return LASYNC_EINVAL;
  if (t == NULL) return LASYNC_ESTATE;
  if (foreign_thread(t->rt)) return LASYNC_ETHREAD;
  return lasync__cancel(t->rt->L, t, 0, 0);
}

void lasync_task_release(lasync_task *h) {
  lasync__task *t = h ? h->task : NULL;
  lua_State *L;
  if (h == NULL) return;
  if (t != NULL) {
    embed *e;
    if (foreign_thread(t->rt)) return; /* refused, as every owner-thread call: still held */
    e = find_embed(t->rt);
    if (h->prev)
      h->prev->next = h->next;
    else if (e)
      e->handles = h->next;
    if (h->next) h->next->prev = h->prev;
    L = t->rt->L;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
    lua_pushnil(L);
    lua_rawsetp(L, -2, t);
    lua_pop(L, 1);
  }
  free(h);
}

/* Under lasync__pcall: [light t, name] -> []. */
static int set_name_protected(lua_State *L) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
  if (lua_rawgetp(L, -1, t) != LUA_TUSERDATA) return 0;
  lasync__push_extra(L, -1);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, "name");
  return 0;
}

int lasync_task_set_name(lasync_task *h, const char *name) {
  lua_State *L;
  lasync__task *t = h ? h->task : NULL;
  if (h == NULL || name == NULL) return LASYNC_EINVAL;
  if (t == NULL) return LASYNC_ESTATE;
  if (foreign_thread(t->rt)) return LASYNC_ETHREAD;
  L = t->rt->L;
  if (!lua_checkstack(L, 3)) return LASYNC_ENOMEM;
  lua_pushcfunction(L, set_name_protected);
  lua_pushlightuserdata(L, t);
  lua_pushstring(L, name); /* an interned short string or an allocation: see below */
  if (lasync__pcall(L, 2, 0) != LUA_OK) {
    lua_pop(L, 1);
    return LASYNC_ENOMEM;
  }
  return LASYNC_OK;
}

/* Under lasync__pcall: [light t] -> [report]. */
static int report_protected(lua_State *L) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &HELD_KEY);
  if (lua_rawgetp(L, -1, t) != LUA_TUSERDATA) return luaL_error(L, "released");
  lasync__mark_observed(L, t, -1);
  lasync__push_failure_report(L, -1);
  return 1;
}

const char *lasync_task_report(lasync_task *h, lua_State *L) {
  lasync__task *t = h ? h->task : NULL;
  if (t == NULL || L == NULL || t->status != LASYNC__FAILED) return NULL;
  if (foreign_thread(t->rt) || !lua_checkstack(L, 3)) return NULL;
  lua_pushcfunction(L, report_protected);
  lua_pushlightuserdata(L, t);
  if (lasync__pcall(L, 1, 1) != LUA_OK) {
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->rt->oom_ref);
  }
  return lua_tostring(L, -1);
}

long lasync_unhandled_failures(const lasync_runtime *rt) { return rt->unhandled_failures; }

int lasync_cancel_all(lasync_runtime *rt, const char *message) {
  if (rt == NULL) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  lasync__cancel_all(rt, message);
  return LASYNC_OK;
}

const char *lasync_version(void) { return LASYNC_VERSION; }

/* ---- driving ---- */

int lasync_run(lasync_runtime *rt) {
  if (rt == NULL) return LASYNC_EINVAL;
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (rt->in_callback) return LASYNC_EBUSY;
  return lasync__run_until_done(rt, NULL) == 0 ? LASYNC_OK : LASYNC_EBUSY;
}

int lasync_step(lasync_runtime *rt, double budget_ms) {
  uint64_t start = uv_hrtime();
  if (rt == NULL || !(budget_ms >= 0)) return LASYNC_EINVAL; /* NaN too */
  if (foreign_thread(rt)) return LASYNC_ETHREAD;
  if (rt->in_callback) return LASYNC_EBUSY;
  /* A budget past ~584 years (INFINITY included) is no limit: the cast would be undefined. */
  if (budget_ms * 1e6 < (double)(UINT64_MAX - start)) {
    rt->step_budget = (uint64_t)(budget_ms * 1e6);
    /* Each piece of work starts only while twice its measured cost fits before the deadline
     * (lasync__step_fits), but the loop's own turns around them (timers, the poll, returning
     * here) are not measured: an eighth of the budget, 250 us at most, is kept for those, so
     * that a busy step ends within its budget rather than just past it (a sixteenth left the
     * game loop's p99 at 1.90-2.04 ms for a 2 ms budget on a quiet machine: bench/run gameloop). */
    rt->step_deadline = start + rt->step_budget -
                        (rt->step_budget / 8 < 250000 ? rt->step_budget / 8 : 250000);
  } else {
    rt->step_budget = rt->step_deadline = UINT64_MAX;
  }
  rt->step_seq++;
  rt->step_resumes = 0;
  rt->in_callback++;
  /* Another turn while tasks are ready and one more resume fits (lasync__drain's test). */
  do {
    uv_run(rt->loop, UV_RUN_NOWAIT);
  } while (rt->ready_len > 0 && lasync__step_fits(rt, &rt->resume_ns));
  rt->in_callback--;
  rt->step_deadline = 0;
  return (int)(rt->live_tasks + lasync__futures_held(rt));
}

int lasync_backend_fd(lasync_runtime *rt) { return uv_backend_fd(rt->loop); }

int lasync_backend_timeout(lasync_runtime *rt) {
  if (rt->ready_len > 0) return 0;
  /* uv_backend_timeout() answers 0, not -1, for a loop with nothing active: a host following
   * lasync.h would spin instead of seeing that nothing is scheduled. */
  if (!uv_loop_alive(rt->loop)) return -1;
  return uv_backend_timeout(rt->loop);
}
