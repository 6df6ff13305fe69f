/* Thread pools: async.to_thread, async.thread.pool, and the C API for work items.
 *
 * A pool owns its OS threads (not libuv's threadpool, so CPU jobs never starve file and DNS
 * requests), made lazily as jobs arrive, up to its size. Each worker owns a lua_State, made on
 * its first Lua job, with the standard libraries and the host's package.path/cpath. A job is a
 * request (io/req.c): a pinned userdata from submission until the loop thread has seen it
 * finish, so its memory outlives a waiter that was cancelled. Values cross as byte buffers
 * (copy.c); the worker never touches the loop's state and the loop never touches a worker's.
 *
 * Finished jobs wait in one mutex-protected list; a worker that finds it empty posts a kick on
 * the runtime's cross-thread queue (core/xthread.c), and on_kick() completes them all on the
 * loop's thread. The same kick reports room in the queue and exited workers.
 *
 * Cancellation: a queued job is unlinked and dropped; a running Lua job has its atomic flag
 * set, and its worker is sent CANCEL_SIGNAL. The handler, on the worker's own thread, installs a
 * count hook on the Lua thread running the job (lua_sethook is made to be called from a signal
 * handler: lua.c stops a script on Ctrl-C this way); the hook checks the flag and raises an
 * error that unwinds the job, its <close> variables included. The hook is installed only then:
 * a count hook in place all the time puts every instruction of every job through
 * luaG_traceexec, which made CPU jobs 2.7 times slower. lua/thread.lua makes the cancelled task
 * wait, shielded, until the worker has really stopped before Cancelled goes on.
 *
 * Under ThreadSanitizer, which holds signals back until the thread calls an intercepted
 * function (a `while true do end` never does), the hook stays installed instead.
 */
#include <lualib.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"
#include "thread.h"

#define POOL_MT "lasync.ThreadPool"
#define HOOK_COUNT 1000    /* with the hook always in place: instructions between two looks */
#define SPIN_NS 50000      /* how long an idle worker looks for a next job before sleeping */
#define REARM_COUNT 100000 /* after raising: room for the job's <close> handlers to run */
#if defined(__SANITIZE_THREAD__)
#define HOOK_ALWAYS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOOK_ALWAYS 1
#endif
#endif
#ifndef HOOK_ALWAYS
#define HOOK_ALWAYS 0
#endif
#define MAX_POOL_SIZE 1024

static const char DEFAULT_KEY = 'd'; /* registry: the default pool's box */
static const char AWAIT_KEY = 'a';   /* registry: lua/thread.lua's await(job), for lasync_work */
static const char CANCEL_TAG = 'c';  /* what the hook raises in a cancelled job */

typedef struct pool pool;
typedef struct job job;

enum { JOB_QUEUED, JOB_RUNNING, JOB_FINISHED };
enum { OUT_OK, OUT_ERROR, OUT_INVALID, OUT_CANCELLED, OUT_CLOSED, OUT_NOMEM };

struct lasync__work { /* what a C work function sees: its job */
  job *j;
};

struct job {
  lasync__req req; /* first: the request layer's header */
  uv_work_t uv;    /* never given to libuv: the request layer wants a uv_req_t to point at */
  job *next;       /* in the pool's queue, then in its list of finished jobs */
  pool *p;
  void *worker; /* the worker running it, under the pool's lock */
  int state;    /* under the pool's lock until JOB_FINISHED; loop thread after */
  int outcome;  /* written by the worker, read by the loop once finished */
  atomic_int cancel;
  lasync__tbuf in;  /* the function (or "module.function") and the arguments */
  int by_name;      /* in begins with a string naming the function */
  lasync__tbuf out; /* the results, or the error's value */
  char *message;    /* an error's message and traceback, malloc'd by the worker */
  char *traceback;
  lasync__task *stop_waiter; /* a cancelled task waiting for the worker to stop */
  uint8_t completed;         /* the loop thread's own view: complete() has run */
  /* A C work item (lasync_work): */
  lasync__work_cb cwork;
  lasync__work_push_cb cpush;
  void *carg;
  uint8_t pushed; /* cpush has been called */
  struct lasync__work handle;
};

typedef struct {
  pool *p;
  uv_thread_t thread;
  lua_State *L;                 /* made on the first Lua job, in the worker */
  size_t used;                  /* bytes its state holds, against the pool's max_memory */
  job *current;                 /* under the pool's lock (the worker itself reads it without) */
  _Atomic(lua_State *) running; /* the Lua thread running a job: L or one of its coroutines */
  int base_mt;                  /* registry ref of {__index = _G}: each job's fresh environment */
} worker;

struct pool {
  lasync__service service; /* first: the service is the state */
  lasync__runtime *rt;
  uv_mutex_t lock;
  uv_cond_t cond; /* workers wait here for jobs */
  job *qhead, *qtail;
  int nqueued;
  job *dhead, *dtail; /* finished, waiting for the loop thread */
  int size, nthreads, idle, exited;
  int busy;               /* workers running a job */
  atomic_int queued_hint; /* nqueued, for workers looking before they sleep, without the lock */
  int max_queue;
  size_t max_memory;
  int stopping;    /* workers exit once the queue is empty */
  int want_space;  /* tasks wait for room in the queue: workers wake the loop on each take */
  worker *workers; /* size entries, nthreads of them started */
  char *path, *cpath;
  lasync__xqueue *xq;  /* the runtime's cross-thread queue, retained */
  int kicked;          /* under the lock: a kick is posted and has not run yet */
  atomic_int inflight; /* kicks posted and not yet run or dropped: the pool outlives them */
  /* The loop thread's own: */
  long live;   /* jobs submitted and not yet complete: the loop is held meanwhile */
  int holding; /* whether this pool holds the cross-thread queue (keeps the loop alive) */
  int closed;  /* refuses new jobs */
  int joined;  /* threads joined */
  int boxed;   /* a Lua box points here */
  lasync__waitlist space;   /* tasks waiting for room in the queue */
  lasync__waitlist closers; /* tasks in pool:close() waiting for the workers to exit */
};

static void pool_service_close(lasync__runtime *rt, lasync__service *s);
static const lasync__service_ops POOL_SERVICE = {"thread pool", NULL, pool_service_close};

/* ---- waiting on a wait list (room in the queue, the workers' exit) ---- */

static void list_cancel(lasync__task *t, void *data) {
  lasync__waitlist_remove((lasync__waitlist *)data, &t->waiter);
}

static const lasync__awaitable_ops SPACE_WAIT = {"thread pool queue", list_cancel, NULL, NULL};
static const lasync__awaitable_ops CLOSE_WAIT = {"thread pool close", list_cancel, NULL, NULL};

static int wait_list(lua_State *L, lasync__task *t, lasync__waitlist *list,
                     const lasync__awaitable_ops *ops) {
  lasync__waitlist_add_task(list, t);
  return lasync__suspend(L, t, ops, list);
}

/* ---- worker states ---- */

static void *worker_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  worker *w = (worker *)ud;
  size_t old = ptr ? osize : 0;
  void *np;
  if (nsize == 0) {
    free(ptr);
    w->used -= old;
    return NULL;
  }
  if (w->p->max_memory && nsize > old && w->used + (nsize - old) > w->p->max_memory) return NULL;
  np = realloc(ptr, nsize);
  if (np == NULL) return NULL;
  w->used = w->used - old + nsize;
  return np;
}

static int cancelling(worker *w) {
  return w->current && atomic_load_explicit(&w->current->cancel, memory_order_relaxed);
}

/* The count hook: a cancelled job stops here. Installed by the signal handler (or always, under
 * TSan); a hook left over from a job that has finished removes itself. */
static void on_count(lua_State *L, lua_Debug *ar) {
  worker *w = *(worker **)lua_getextraspace(L);
  (void)ar;
  if (cancelling(w)) {
    /* Raised again later if the job catches it and goes on, but not at once: unwinding runs
     * the job's <close> handlers, which are Lua code too. */
    lua_sethook(L, on_count, LUA_MASKCOUNT, HOOK_ALWAYS ? HOOK_COUNT : REARM_COUNT);
    lua_pushlightuserdata(L, (void *)&CANCEL_TAG);
    lua_error(L);
  } else if (!HOOK_ALWAYS) {
    lua_sethook(L, NULL, 0, 0);
  }
}

/* ---- telling a worker to stop: CANCEL_SIGNAL ---- */

static _Thread_local worker *self_worker; /* the worker running on this thread, if any */
static int cancel_signal;
static uv_once_t signal_once = UV_ONCE_INIT;

/* On a worker's thread, interrupting whatever it runs: arms the hook on its running Lua thread. */
static void on_cancel_signal(int sig) {
  worker *w = self_worker;
  lua_State *L;
  (void)sig;
  if (w && (L = atomic_load(&w->running)) != NULL) lua_sethook(L, on_count, LUA_MASKCOUNT, 1);
}

static void install_signal(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_cancel_signal;
  sa.sa_flags = SA_RESTART; /* a job's blocking read goes on after the handler */
  sigemptyset(&sa.sa_mask);
  cancel_signal = SIGRTMIN + 4;
  if (sigaction(cancel_signal, &sa, NULL) != 0) cancel_signal = 0;
}

/* Loop thread, with the pool's lock held (so the worker has not been joined): its job's flag
 * is set; now make it look. */
static void interrupt(worker *w) {
  if (HOOK_ALWAYS || cancel_signal == 0) return;
  pthread_kill((pthread_t)w->thread, cancel_signal);
}

/* coroutine.resume and coroutine.wrap in worker states, as lcorolib.c's, but keeping track of
 * the Lua thread that runs, so the signal arms the hook where the job is. */
static int track_resume(lua_State *L, lua_State *co, int narg) {
  worker *w = *(worker **)lua_getextraspace(L);
  lua_State *prev;
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  prev = atomic_load(&w->running);
  atomic_store(&w->running, co);
  if (cancelling(w) || HOOK_ALWAYS)
    lua_sethook(co, on_count, LUA_MASKCOUNT, HOOK_ALWAYS ? HOOK_COUNT : 1);
  status = lua_resume(co, L, narg, &nres);
  atomic_store(&w->running, prev);
  if (cancelling(w)) lua_sethook(L, on_count, LUA_MASKCOUNT, 1); /* the signal may have hit co */
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

static int co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  int r;
  luaL_argexpected(L, co, 1, "coroutine");
  r = track_resume(L, co, lua_gettop(L) - 1);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = track_resume(L, co, lua_gettop(L));
  if (r < 0) {
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {
      stat = lua_resetthread(co); /* closes its to-be-closed variables */
      lua_xmove(co, L, 1);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static int co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

/* lasync inside a worker: every call raises, since nothing there can suspend. */
static int unavailable(lua_State *L) {
  return lasync__misuse(L, "async.%s is not available in a worker thread",
                        lua_tostring(L, lua_upvalueindex(1)));
}

static int stub_index(lua_State *L) {
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, unavailable, 1);
  return 1;
}

static int open_stub(lua_State *L) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, stub_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  return 1;
}

static int setup_state(lua_State *L) {
  worker *w = (worker *)lua_touserdata(L, 1);
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  if (w->p->path) {
    lua_pushstring(L, w->p->path);
    lua_setfield(L, -2, "path");
  }
  if (w->p->cpath) {
    lua_pushstring(L, w->p->cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, open_stub);
  lua_setfield(L, -2, "lasync");
  lua_settop(L, 0);
  lua_getglobal(L, "coroutine");
  lua_pushcfunction(L, co_resume);
  lua_setfield(L, -2, "resume");
  lua_pushcfunction(L, co_wrap);
  lua_setfield(L, -2, "wrap");
  lua_settop(L, 0);
  lua_createtable(L, 0, 1);
  lua_pushglobaltable(L);
  lua_setfield(L, -2, "__index");
  w->base_mt = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int ensure_state(worker *w) {
  lua_State *L;
  if (w->L) return 0;
  L = lua_newstate(worker_alloc, w);
  if (L == NULL) return -1;
  *(worker **)lua_getextraspace(L) = w;
  lua_pushcfunction(L, setup_state);
  lua_pushlightuserdata(L, w);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_close(L);
    return -1;
  }
  if (HOOK_ALWAYS) lua_sethook(L, on_count, LUA_MASKCOUNT, HOOK_COUNT);
  w->L = L;
  return 0;
}

/* ---- running a job, in the worker ---- */

static char *dup_string(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = (char *)malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* The job's message handler: [err] -> [{err, traceback}]. */
static int job_handler(lua_State *L) {
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  if (lua_type(L, 1) == LUA_TLIGHTUSERDATA) return 1; /* a cancellation: no traceback */
  luaL_traceback(L, L, NULL, 1);
  lua_rawseti(L, -2, 2);
  return 1;
}

/* Resolves "module.function" or "module:function" with require, in the worker. */
static void push_named(lua_State *L, const char *name) {
  const char *dot = strrchr(name, ':');
  if (dot == NULL) dot = strrchr(name, '.');
  lua_getglobal(L, "require");
  lua_pushlstring(L, name, (size_t)(dot - name));
  lua_call(L, 1, 1);
  if (lua_type(L, -1) != LUA_TTABLE)
    lasync__misuse(L, "'%s': module '%s' is not a table", name, lua_tostring(L, -2));
  lua_getfield(L, -1, dot + 1);
  if (lua_type(L, -1) != LUA_TFUNCTION && !luaL_getmetafield(L, -1, "__call"))
    lasync__misuse(L, "'%s' is not a function in the worker (it is %s)", name,
                   luaL_typename(L, -1));
  lua_remove(L, -2);
}

/* Under lua_pcall in the worker: decodes the job, runs it under its handler, encodes what it
 * returned. Returns [true] or [false, {err, traceback}]. */
static int run_protected(lua_State *L) {
  job *j = (job *)lua_touserdata(L, 1);
  worker *w = *(worker **)lua_getextraspace(L);
  int base, n, status;
  char err[300];
  lua_settop(L, 0);
  lua_pushcfunction(L, job_handler); /* 1 */
  lua_newtable(L);                   /* 2: the job's fresh globals */
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->base_mt);
  lua_setmetatable(L, 2);
  base = lua_gettop(L);
  n = lasync__copy_decode(L, j->in.data, j->in.len, 2); /* [h, env, fn, args...] */
  if (j->by_name) {
    push_named(L, lua_tostring(L, base + 1)); /* the name stays on the stack meanwhile */
    lua_replace(L, base + 1);
  }
  status = lua_pcall(L, n - 1, LUA_MULTRET, 1);
  if (status != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  n = lua_gettop(L) - base;
  lasync__tbuf_free(&j->out);
  switch (lasync__copy_encode(L, base + 1, n, &j->out, "result", 1, err, sizeof err)) {
    case 0:
      break;
    case -1:
      j->outcome = OUT_INVALID;
      j->message = dup_string(err);
      break;
    default:
      j->outcome = OUT_NOMEM;
      break;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Under lua_pcall: the message of the error value at 1. */
static int tostring_protected(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static void fail_with(job *j, int outcome, const char *message) {
  j->outcome = outcome;
  free(j->message);
  j->message = dup_string(message);
}

/* Encodes the error value of a failed job, protected (it allocates). */
static int encode_error_value(lua_State *L) {
  job *j = (job *)lua_touserdata(L, 1);
  char err[300];
  if (lasync__copy_encode(L, 2, 1, &j->out, "error value", 1, err, sizeof err) != 0)
    lasync__tbuf_free(&j->out);
  return 0;
}

static void run_lua_job(worker *w, job *j) {
  lua_State *L;
  int status;
  if (ensure_state(w) != 0) {
    fail_with(j, OUT_NOMEM, "not enough memory to create a worker state");
    return;
  }
  L = w->L;
  j->outcome = OUT_OK;
  lua_settop(L, 0);
  lua_pushcfunction(L, run_protected);
  lua_pushlightuserdata(L, j);
  /* Published before the flag is looked at: a cancel either is seen here or its signal finds
   * `running` set. */
  atomic_store(&w->running, L);
  if (cancelling(w)) lua_sethook(L, on_count, LUA_MASKCOUNT, 1);
  status = lua_pcall(L, 1, 2, 0);
  atomic_store(&w->running, NULL);
  if (!HOOK_ALWAYS) lua_sethook(L, NULL, 0, 0);
  if (status == LUA_OK && lua_toboolean(L, 1)) {
    /* outcome set by run_protected */
  } else if (status == LUA_ERRMEM || (status == LUA_OK && lua_type(L, 2) != LUA_TTABLE)) {
    fail_with(
        j, OUT_ERROR,
        w->p->max_memory ? "not enough memory (the worker's max_memory cap)" : "not enough memory");
  } else if (status != LUA_OK) {
    lua_pushcfunction(L, tostring_protected);
    lua_insert(L, -2);
    fail_with(j, OUT_ERROR,
              lua_pcall(L, 1, 1, 0) == LUA_OK ? lua_tostring(L, -1) : "error in a worker thread");
  } else {
    lua_rawgeti(L, 2, 1); /* [false, {err, tb}, err] */
    if (lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == &CANCEL_TAG) {
      j->outcome = OUT_CANCELLED;
    } else {
      lua_pushcfunction(L, tostring_protected);
      lua_pushvalue(L, -2);
      fail_with(j, OUT_ERROR,
                lua_pcall(L, 1, 1, 0) == LUA_OK ? lua_tostring(L, -1) : "error in a worker thread");
      lua_pop(L, 1);
      if (lua_rawgeti(L, 2, 2) == LUA_TSTRING) j->traceback = dup_string(lua_tostring(L, -1));
      lua_pop(L, 1);
      /* The original value goes along where it can be copied: under a pcall, since encoding
       * allocates in a state that may be at its cap. */
      lasync__tbuf_free(&j->out);
      lua_pushcfunction(L, encode_error_value);
      lua_pushlightuserdata(L, j);
      lua_pushvalue(L, -3);
      if (lua_pcall(L, 2, 0, 0) != LUA_OK) lasync__tbuf_free(&j->out);
    }
  }
  if (atomic_load(&j->cancel)) j->outcome = OUT_CANCELLED;
  lua_settop(L, 0);
  if (status == LUA_ERRMEM || j->outcome == OUT_NOMEM) lua_gc(L, LUA_GCCOLLECT);
}

static void run_job(worker *w, job *j) {
  if (j->cwork) {
    j->outcome = OUT_OK;
    j->cwork(&j->handle, j->carg);
    if (j->outcome == OUT_OK && atomic_load(&j->cancel)) j->outcome = OUT_CANCELLED;
    return;
  }
  run_lua_job(w, j);
}

/* ---- the queue between the loop and the workers ---- */

static void on_kick(void *arg);
static void on_kick_dropped(void *arg);

/* With the lock held: asks the loop thread to look at the pool, unless it is already asked.
 * Returns whether the caller must post the kick (after unlocking). */
static int want_kick(pool *p) {
  if (p->kicked) return 0;
  p->kicked = 1;
  atomic_fetch_add(&p->inflight, 1);
  return 1;
}

static void kick(pool *p) { lasync__xqueue_post(p->xq, on_kick, on_kick_dropped, p); }

/* With the lock held: hands a finished job to the loop thread, the only way completions cross.
 * Returns whether the caller must kick (after unlocking). */
static int finish_locked(pool *p, job *j) {
  j->state = JOB_FINISHED;
  j->next = NULL;
  if (p->dtail)
    p->dtail->next = j;
  else
    p->dhead = j;
  p->dtail = j;
  return want_kick(p);
}

/* From the loop, for a dropped job. */
static void post(pool *p, job *j) {
  int k;
  uv_mutex_lock(&p->lock);
  k = finish_locked(p, j);
  uv_mutex_unlock(&p->lock);
  if (k) kick(p);
}

static void worker_main(void *arg) {
  worker *w = (worker *)arg;
  pool *p = w->p;
  int k, spun = 0;
  sigset_t set;
  self_worker = w;
  if (cancel_signal) {
    sigemptyset(&set);
    sigaddset(&set, cancel_signal);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  }
  /* One lock round per job: handing a job back and taking the next happen together; the kick
   * they call for is posted once the lock is let go. */
  k = 0;
  uv_mutex_lock(&p->lock);
  for (;;) {
    job *j;
    while (p->qhead == NULL && !p->stopping) {
      if (k) {
        uv_mutex_unlock(&p->lock);
        kick(p);
        k = 0;
        uv_mutex_lock(&p->lock);
        continue;
      }
      if (!spun) {
        /* Before sleeping, look for a while: the loop's next job is often a few microseconds
         * away, and a futex sleep and wake-up cost more than the job itself. */
        uint64_t until = uv_hrtime() + SPIN_NS;
        spun = 1;
        uv_mutex_unlock(&p->lock);
        while (atomic_load_explicit(&p->queued_hint, memory_order_relaxed) == 0 &&
               uv_hrtime() < until)
          sched_yield();
        uv_mutex_lock(&p->lock);
        continue;
      }
      p->idle++;
      uv_cond_wait(&p->cond, &p->lock);
      p->idle--;
    }
    spun = 0;
    if (p->qhead == NULL) break;
    j = p->qhead;
    p->qhead = j->next;
    if (p->qhead == NULL) p->qtail = NULL;
    p->nqueued--;
    atomic_store_explicit(&p->queued_hint, p->nqueued, memory_order_relaxed);
    p->busy++;
    j->state = JOB_RUNNING;
    j->worker = w;
    w->current = j;
    if (p->want_space && want_kick(p)) k = 1;
    uv_mutex_unlock(&p->lock);
    if (k) kick(p);
    k = 0;
    run_job(w, j);
    uv_mutex_lock(&p->lock);
    w->current = NULL;
    p->busy--;
    if (finish_locked(p, j)) k = 1;
  }
  if (w->L) lua_close(w->L); /* under the lock: cheap next to a thread's exit, and ordered */
  w->L = NULL;
  p->exited++;
  if (want_kick(p)) k = 1;
  uv_mutex_unlock(&p->lock);
  if (k) kick(p);
}

/* ---- the loop thread's side ---- */

/* The loop stays alive while jobs are out or the workers are exiting. */
static void update_ref(pool *p) {
  int want = p->live > 0 || (p->closed && !p->joined);
  if (want == p->holding) return;
  p->holding = want;
  lasync__xqueue_hold(p->xq, want ? 1 : -1);
}

static void complete(pool *p, job *j) {
  j->completed = 1;
  p->live--;
  if (j->stop_waiter) {
    lasync__task *t = j->stop_waiter;
    j->stop_waiter = NULL;
    lasync__wake(t);
  }
  lasync__req_done(&j->req);
}

static void join_threads(pool *p);

static void maybe_free(pool *p);

/* On the loop's thread, after a worker kicked: completes the finished jobs, wakes the tasks
 * waiting for room in the queue, joins the workers once all have exited. */
static void on_kick(void *arg) {
  pool *p = (pool *)arg;
  job *j;
  int room, all_exited;
  uv_mutex_lock(&p->lock);
  p->kicked = 0;
  j = p->dhead;
  p->dhead = p->dtail = NULL;
  room = p->max_queue <= 0 || p->nqueued < p->max_queue;
  all_exited = p->stopping && p->exited == p->nthreads;
  uv_mutex_unlock(&p->lock);
  while (j) {
    job *next = j->next;
    complete(p, j);
    j = next;
  }
  if (room && p->space.head) lasync__waitlist_settle(&p->space);
  uv_mutex_lock(&p->lock);
  p->want_space = p->space.head != NULL;
  uv_mutex_unlock(&p->lock);
  if (all_exited && !p->joined) join_threads(p);
  if (!p->joined) update_ref(p);
  atomic_fetch_sub(&p->inflight, 1);
  maybe_free(p);
}

/* The kick will not run: the runtime is closing (on the loop's thread; the pool has joined its
 * workers and completed their jobs by then, since it closes before the queue), or the post
 * was out of memory (on a worker: the job waits in the list for the next kick or the close). */
static void on_kick_dropped(void *arg) {
  pool *p = (pool *)arg;
  uv_mutex_lock(&p->lock);
  p->kicked = 0;
  uv_mutex_unlock(&p->lock);
  atomic_fetch_sub(&p->inflight, 1);
}

static void free_pool(pool *p) {
  uv_mutex_destroy(&p->lock);
  uv_cond_destroy(&p->cond);
  lasync__xqueue_release(p->xq);
  free(p->workers);
  free(p->path);
  free(p->cpath);
  free(p);
}

/* Loop thread: frees the pool once nothing points at it any more. */
static void maybe_free(pool *p) {
  if (!p->boxed && p->joined && atomic_load(&p->inflight) == 0) free_pool(p);
}

/* Once every worker has exited: joins them (at once), completes what they left, and lets the
 * loop go. */
static void join_threads(pool *p) {
  int i;
  job *j;
  for (i = 0; i < p->nthreads; i++) uv_thread_join(&p->workers[i].thread);
  p->joined = 1;
  uv_mutex_lock(&p->lock);
  j = p->dhead;
  p->dhead = p->dtail = NULL;
  uv_mutex_unlock(&p->lock);
  while (j) {
    job *next = j->next;
    complete(p, j);
    j = next;
  }
  lasync__waitlist_settle(&p->closers);
  lasync__waitlist_settle(&p->space); /* they retry and find the pool closed */
  if (p->holding) {
    p->holding = 0;
    lasync__xqueue_hold(p->xq, -1);
  }
}

/* Refuses new jobs, drops the queued ones (their tasks get an error of kind "closed"), and
 * tells the workers to exit once their current job is done. cancel_running also stops those:
 * at shutdown nobody awaits them any more. */
static void begin_close(pool *p, int cancel_running) {
  job *q;
  int i;
  if (p->closed) return;
  p->closed = 1;
  lasync__service_remove(p->rt, &p->service);
  uv_mutex_lock(&p->lock);
  q = p->qhead;
  p->qhead = p->qtail = NULL;
  p->nqueued = 0;
  atomic_store(&p->queued_hint, 0);
  p->stopping = 1;
  if (cancel_running)
    for (i = 0; i < p->nthreads; i++)
      if (p->workers[i].current) {
        atomic_store(&p->workers[i].current->cancel, 1);
        interrupt(&p->workers[i]);
      }
  uv_cond_broadcast(&p->cond);
  uv_mutex_unlock(&p->lock);
  while (q) {
    job *next = q->next;
    q->outcome = OUT_CLOSED;
    q->state = JOB_FINISHED;
    complete(p, q);
    q = next;
  }
  if (p->nthreads == 0)
    join_threads(p);
  else
    update_ref(p);
}

/* Closes and waits on this thread: for __gc, shutdown, and a close that cannot suspend. */
static void close_blocking(pool *p, int cancel_running) {
  begin_close(p, cancel_running);
  if (!p->joined) join_threads(p); /* uv_thread_join waits for the running jobs */
}

static void pool_service_close(lasync__runtime *rt, lasync__service *s) {
  pool *p = (pool *)s;
  (void)rt;
  close_blocking(p, 1);
}

/* ---- pools ---- */

static char *dup_field(lua_State *L, const char *field) {
  char *s = NULL;
  lua_getglobal(L, "package");
  if (lua_type(L, -1) == LUA_TTABLE && lua_getfield(L, -1, field) == LUA_TSTRING)
    s = dup_string(lua_tostring(L, -1));
  lua_settop(L, lua_gettop(L) - (lua_type(L, -1) == LUA_TTABLE ? 1 : 2));
  return s;
}

static int default_size(void) {
  const char *env = getenv("LASYNC_THREADS");
  long n = env ? strtol(env, NULL, 10) : 0;
  if (n > 0) return n > MAX_POOL_SIZE ? MAX_POOL_SIZE : (int)n;
  n = (long)uv_available_parallelism();
  return n > 0 ? (int)n : 1;
}

/* Pushes a box for a new pool; raises on a memory error, with nothing left behind. */
static pool *new_pool(lua_State *L, int size, int max_queue, size_t max_memory) {
  lasync__runtime *rt = lasync__runtime_get(L);
  pool **box = (pool **)lua_newuserdatauv(L, sizeof *box, 0);
  pool *p;
  *box = NULL;
  luaL_setmetatable(L, POOL_MT);
  p = (pool *)calloc(1, sizeof *p);
  if (p == NULL) lasync__misuse(L, "not enough memory for a thread pool");
  p->workers = (worker *)calloc((size_t)size, sizeof *p->workers);
  if (p->workers == NULL || uv_mutex_init(&p->lock) != 0) {
    free(p->workers);
    free(p);
    lasync__misuse(L, "not enough memory for a thread pool");
  }
  if (uv_cond_init(&p->cond) != 0) {
    uv_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
    lasync__misuse(L, "cannot create a condition variable for a thread pool");
  }
  uv_once(&signal_once, install_signal);
  /* Got before the pool registers as a service, so the queue closes after the pool: the
   * workers are joined before it would drop their kicks. */
  p->xq = lasync__xqueue_get(rt);
  if (p->xq == NULL) {
    uv_cond_destroy(&p->cond);
    uv_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
    lasync__misuse(L, "cannot make the cross-thread queue for a thread pool");
    return NULL;
  }
  lasync__xqueue_retain(p->xq);
  atomic_init(&p->inflight, 0);
  p->rt = rt;
  p->size = size;
  p->max_queue = max_queue;
  p->max_memory = max_memory;
  p->boxed = 1;
  *box = p;
  lasync__service_add(rt, &p->service, &POOL_SERVICE);
  p->path = dup_field(L, "path");
  p->cpath = dup_field(L, "cpath");
  return p;
}

static pool *check_pool(lua_State *L, int idx, const char *fname) {
  pool **box = (pool **)luaL_testudata(L, idx, POOL_MT);
  if (box == NULL) lasync__argerror(L, idx, fname, "pool", "thread pool");
  if (*box == NULL) lasync__misuse(L, "%s: the pool has been collected", fname);
  return *box;
}

static int pool_gc(lua_State *L) {
  pool **box = (pool **)lua_touserdata(L, 1);
  pool *p = *box;
  if (p == NULL) return 0;
  *box = NULL;
  p->boxed = 0;
  if (!p->closed) close_blocking(p, 1);
  maybe_free(p);
  return 0;
}

/* pool:close(): cancels what is queued, waits for the running jobs, joins the threads. In a
 * task it suspends meanwhile; elsewhere it blocks. */
static int pool_close(lua_State *L) {
  pool *p = check_pool(L, 1, "pool:close");
  lasync__runtime *rt = p->rt;
  lasync__task *t = rt->current;
  begin_close(p, 0);
  if (p->joined) return 0;
  if (t && t->co == L && lua_isyieldable(L)) {
    lasync__check_suspendable(L, "pool:close");
    return wait_list(L, t, &p->closers, &CLOSE_WAIT);
  }
  close_blocking(p, 0);
  return 0;
}

/* An integer option in [min, max]: an integer, or a float with an integral value (4.0). A float
 * is compared before it is converted: converting NaN, inf or 1e300 is undefined behaviour. */
static int opt_int(lua_State *L, const char *fname, const char *opt, int min, int max, int def) {
  int t = lua_getfield(L, 1, opt), in_range, v = 0;
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return def;
  }
  if (lua_isinteger(L, -1)) {
    lua_Integer i = lua_tointeger(L, -1);
    in_range = i >= min && i <= max;
    if (in_range) v = (int)i;
  } else {
    lua_Number n = lua_tonumber(L, -1);
    if (t != LUA_TNUMBER || n != n) lasync__opterror(L, -1, fname, opt, "integer");
    in_range = n >= min && n <= max;
    if (in_range && (lua_Number)(v = (int)n) != n) lasync__opterror(L, -1, fname, opt, "integer");
  }
  if (!in_range) /* lua_tostring shows the number as Lua would; it is popped anyway */
    lasync__misuse(L, "%s: bad option '%s' (must be between %d and %d, got %s)", fname, opt, min,
                   max, lua_tostring(L, -1));
  lua_pop(L, 1);
  return v;
}

/* core._thread_pool([opts]) -> a new pool. */
static int l_pool(lua_State *L) {
  static const char *const fname = "async.thread.pool";
  int size, max_queue, mib;
  if (!lua_isnoneornil(L, 1) && !lua_istable(L, 1))
    return lasync__argerror(L, 1, fname, "opts", "table");
  if (lua_isnoneornil(L, 1)) lua_newtable(L), lua_replace(L, 1);
  {
    static const char *const known[] = {"size", "max_queue", "max_memory", NULL};
    lasync__check_options(L, 1, fname, known);
  }
  size = opt_int(L, fname, "size", 1, MAX_POOL_SIZE, default_size());
  max_queue = opt_int(L, fname, "max_queue", 0, INT_MAX, 0);
  mib = opt_int(L, fname, "max_memory", 0, 1 << 20, 0);
  new_pool(L, size, max_queue, (size_t)mib << 20);
  return 1;
}

/* core._thread_default() -> the default pool, made on first use. */
static int l_default(lua_State *L) {
  pool **box;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &DEFAULT_KEY) == LUA_TUSERDATA) {
    box = (pool **)lua_touserdata(L, -1);
    if (*box && !(*box)->closed) return 1;
  }
  lua_pop(L, 1);
  new_pool(L, default_size(), 0, 0);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &DEFAULT_KEY);
  return 1;
}

static int pool_size(lua_State *L) {
  lua_pushinteger(L, check_pool(L, 1, "pool:size")->size);
  return 1;
}

/* ---- jobs ---- */

static int job_push(lua_State *L, lasync__req *r) {
  job *j = (job *)r;
  if (j->cwork) {
    j->pushed = 1;
    if (j->outcome == OUT_ERROR) {
      j->cpush(NULL, j->carg);
      lasync__push_error(L, "thread", j->message ? j->message : "work failed");
      return -1;
    }
    if (j->outcome == OUT_CLOSED) {
      j->cpush(NULL, j->carg);
      lasync__push_error(L, "closed", "the thread pool was closed before the work started");
      return -1;
    }
    return j->cpush(L, j->carg);
  }
  switch (j->outcome) {
    case OUT_OK:
      return lasync__copy_decode(L, j->out.data, j->out.len, 0);
    case OUT_INVALID:
      lasync__push_error(L, "invalid", j->message);
      return -1;
    case OUT_CLOSED:
      lasync__push_error(L, "closed", "the thread pool was closed before the job started");
      return -1;
    case OUT_NOMEM:
      lasync__push_error(L, "thread", j->message ? j->message : "not enough memory");
      return -1;
    default:
      lasync__push_error(L, "thread", j->message ? j->message : "the job was cancelled");
      if (j->traceback) {
        lua_pushstring(L, j->traceback);
        lua_setfield(L, -2, "traceback");
      }
      if (j->out.len) {
        lasync__copy_decode(L, j->out.data, j->out.len, 0);
        lua_setfield(L, -2, "value");
      }
      return -1;
  }
}

static void job_discard(lasync__req *r) {
  job *j = (job *)r;
  if (j->cwork && !j->pushed) {
    j->pushed = 1;
    j->cpush(NULL, j->carg);
  }
}

static void job_cleanup(lasync__req *r) {
  job *j = (job *)r;
  lasync__tbuf_free(&j->in);
  lasync__tbuf_free(&j->out);
  free(j->message);
  free(j->traceback);
  j->message = j->traceback = NULL;
}

/* The waiter was cancelled: a queued job is dropped, a running one told to stop. */
static void job_cancel(lasync__req *r) {
  job *j = (job *)r;
  pool *p = j->p;
  int dropped = 0;
  uv_mutex_lock(&p->lock);
  if (j->state == JOB_QUEUED) {
    job **q;
    for (q = &p->qhead; *q; q = &(*q)->next) {
      if (*q == j) {
        *q = j->next;
        if (p->qtail == j) {
          job *t = p->qhead;
          while (t && t->next) t = t->next;
          p->qtail = t;
        }
        p->nqueued--;
        atomic_store(&p->queued_hint, p->nqueued);
        dropped = 1;
        break;
      }
    }
  }
  atomic_store(&j->cancel, 1);
  if (j->state == JOB_RUNNING && !j->cwork) interrupt((worker *)j->worker);
  uv_mutex_unlock(&p->lock);
  if (dropped) {
    j->outcome = OUT_CANCELLED;
    post(p, j); /* completed on the next turn, like every other job */
  }
}

static const lasync__req_ops JOB_OPS = {"thread job", job_push, job_discard, job_cleanup,
                                        job_cancel};

/* Queues the job (on top of the stack) on p; raises if p is closed or a thread cannot start. */
static void submit(lua_State *L, pool *p, job *j) {
  int err = 0;
  j->p = p;
  j->state = JOB_QUEUED;
  uv_mutex_lock(&p->lock);
  if (p->idle <= p->nqueued && p->nthreads < p->size) {
    worker *w = &p->workers[p->nthreads];
    w->p = p;
    err = uv_thread_create(&w->thread, worker_main, w);
    if (err == 0) p->nthreads++;
  }
  if (p->nthreads == 0) {
    uv_mutex_unlock(&p->lock);
    job_cleanup(&j->req);
    lasync__req_abort(&j->req);
    lasync__push_uv_error(L, "thread", err, "cannot start a worker thread");
    lua_error(L);
  }
  j->next = NULL;
  if (p->qtail)
    p->qtail->next = j;
  else
    p->qhead = j;
  p->qtail = j;
  p->nqueued++;
  atomic_store_explicit(&p->queued_hint, p->nqueued, memory_order_relaxed);
  /* A worker that is awake and between jobs takes it anyway: waking another costs a context
   * switch per job, which is most of a short job's cost. */
  if (p->idle > 0 && p->nqueued > p->nthreads - p->idle - p->busy) uv_cond_signal(&p->cond);
  uv_mutex_unlock(&p->lock);
  p->live++;
  update_ref(p);
}

static int queue_full(pool *p) {
  int full;
  if (p->max_queue <= 0) return 0;
  uv_mutex_lock(&p->lock);
  full = p->nqueued >= p->max_queue;
  uv_mutex_unlock(&p->lock);
  return full;
}

/* Checks a job's function argument at idx: a Lua function whose only upvalue is _ENV, or a
 * "module.function" string. Messages number it as the user passed it: #1 of async.to_thread,
 * #2 of pool:run and pool:map (self is #1, as everywhere in lasync's C). */
static void check_fn(lua_State *L, int idx, const char *fname) {
  int argn = strchr(fname, ':') ? 2 : 1;
  if (lua_type(L, idx) == LUA_TFUNCTION) {
    const char *bad = lasync__copy_bad_upvalue(L, idx);
    if (bad && !*bad)
      lasync__misuse(L,
                     "%s: bad argument #%d (a C function cannot run in a worker thread; pass "
                     "its name as \"module.function\")",
                     fname, argn);
    if (bad)
      lasync__misuse(L, "%s: bad argument #%d (function has upvalue '%s'; pass it as an argument)",
                     fname, argn, bad);
  } else if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tostring(L, idx);
    const char *sep = strrchr(s, ':');
    if (sep == NULL) sep = strrchr(s, '.');
    if (sep == NULL || sep == s || sep[1] == '\0')
      lasync__misuse(L, "%s: bad argument #%d (\"module.function\" expected, got \"%s\")", fname,
                     argn, s);
  } else {
    lasync__misuse(L,
                   "%s: bad argument #%d 'fn' (function or \"module.function\" expected, got %s)",
                   fname, argn, lua_isnone(L, idx) ? "no value" : lasync__typename(L, idx));
  }
}

/* core._thread_check(fname, fn): the misuse checks of a job's function, alone. */
static int l_check(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  lua_pushvalue(L, 1); /* keeps the name alive while fn moves to #1 for the messages */
  lua_remove(L, 1);
  check_fn(L, 1, fname);
  return 0;
}

/* core._thread_submit(fname, pool, fn, ...) -> job, or false while the queue is full. */
static int l_submit(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  pool *p = check_pool(L, 2, fname);
  int n = lua_gettop(L) - 3, rc;
  char err[300];
  lasync__tbuf *box;
  job *j;
  lasync__check_task(L, fname);
  check_fn(L, 3, fname);
  if (p->closed) {
    lasync__push_error(L, "closed", "the thread pool is closed");
    return lua_error(L);
  }
  if (queue_full(p)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  /* Encoded into a box first, so a Lua error (bad value, memory) frees the buffer. */
  box = (lasync__tbuf *)lua_newuserdatauv(L, sizeof *box, 0);
  memset(box, 0, sizeof *box);
  luaL_setmetatable(L, "lasync.ThreadBuffer");
  /* The function (or its name) first, then the arguments: check_fn has vetted #1. */
  rc = lasync__copy_encode(L, 3, n + 1, box, "argument", 1, err, sizeof err);
  if (rc == -1) {
    lasync__push_error(L, "invalid", err);
    return lua_error(L);
  }
  if (rc < 0) return lasync__misuse(L, "not enough memory");
  j = (job *)lasync__req_new(L, &JOB_OPS, sizeof *j, offsetof(job, uv));
  j->in = *box; /* the job owns the bytes now; the box is left empty for its __gc */
  memset(box, 0, sizeof *box);
  j->by_name = lua_type(L, 3) == LUA_TSTRING;
  j->handle.j = j;
  atomic_init(&j->cancel, 0);
  submit(L, p, j);
  return 1;
}

static int buffer_gc(lua_State *L) {
  lasync__tbuf_free((lasync__tbuf *)lua_touserdata(L, 1));
  return 0;
}

static job *check_job(lua_State *L, int idx) {
  job *j = (job *)luaL_testudata(L, idx, "lasync.Request"); /* io/req.c's metatable */
  if (j == NULL || j->req.ops != &JOB_OPS) lasync__misuse(L, "lasync: a thread job expected");
  return j;
}

/* core._thread_await(job): suspends until the job is done; its results, or raises. */
static int l_await(lua_State *L) {
  job *j = check_job(L, 1);
  lasync__task *t = lasync__check_task(L, "async.to_thread");
  if (j->completed) return lasync__misuse(L, "lasync: the job was already awaited");
  return lasync__req_await(L, t, &j->req);
}

static void stop_cancel(lasync__task *t, void *data) {
  job *j = (job *)data;
  (void)t;
  j->stop_waiter = NULL;
}

static const lasync__awaitable_ops STOP_WAIT = {"thread job stopping", stop_cancel, NULL, NULL};

/* core._thread_stopped(job): suspends until the worker has stopped the job. */
static int l_stopped(lua_State *L) {
  job *j = check_job(L, 1);
  lasync__task *t = lasync__check_suspendable(L, "async.to_thread");
  if (j->completed) return 0;
  j->stop_waiter = t;
  return lasync__suspend(L, t, &STOP_WAIT, j);
}

/* core._thread_wait_space(pool): suspends until the queue has room (or the pool closed). */
static int l_wait_space(lua_State *L) {
  pool *p = check_pool(L, 1, "pool:run");
  lasync__task *t = lasync__check_task(L, "pool:run");
  if (p->closed || !queue_full(p)) return 0;
  uv_mutex_lock(&p->lock);
  p->want_space = 1;
  uv_mutex_unlock(&p->lock);
  return wait_list(L, t, &p->space, &SPACE_WAIT);
}

static int l_set_await(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &AWAIT_KEY);
  return 0;
}

/* ---- work items from C (host/work.c puts lasync.h over them) ---- */

int lasync__work_cancelled(const lasync__work *w) {
  return w && atomic_load(&w->j->cancel) ? 1 : 0;
}

void lasync__work_fail(lasync__work *w, const char *message) {
  job *j = w->j;
  j->outcome = OUT_ERROR;
  free(j->message);
  j->message = dup_string(message ? message : "work failed");
}

typedef struct {
  lasync__work_cb work;
  lasync__work_push_cb push;
  void *arg;
} work_args;

/* Under lua_pcall: [default pool] -> [job], queued. */
static int work_protected(lua_State *L) {
  work_args *a = (work_args *)lua_touserdata(L, 1);
  pool *p;
  job *j;
  l_default(L);
  p = *(pool **)lua_touserdata(L, -1);
  if (p->closed) {
    lasync__push_error(L, "closed", "the thread pool is closed");
    return lua_error(L);
  }
  j = (job *)lasync__req_new(L, &JOB_OPS, sizeof *j, offsetof(job, uv));
  j->cwork = a->work;
  j->cpush = a->push;
  j->carg = a->arg;
  j->handle.j = j;
  atomic_init(&j->cancel, 0);
  submit(L, p, j);
  return 1;
}

static int work_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  return lua_gettop(L) - (int)ctx;
}

static int load_thread_part(lua_State *L) {
  lasync__load_part(L, "thread");
  return 0;
}

int lasync__work_submit(lua_State *L, lasync__work_cb work, lasync__work_push_cb push, void *arg) {
  work_args a;
  int base = lua_gettop(L);
  if (work == NULL || push == NULL)
    return lasync__misuse(L, "lasync_await_work: work and push are required");
  a.work = work;
  a.push = push;
  a.arg = arg;
  lua_pushcfunction(L, work_protected);
  lua_pushlightuserdata(L, &a);
  {
    lasync__runtime *rt = lasync__runtime_get(L);
    lasync__task *t = rt ? rt->current : NULL;
    if (t == NULL || t->co != L || !lua_isyieldable(L)) {
      lua_pop(L, 2);
      push(NULL, arg);
      return lasync__misuse(L, "lasync_await_work must be called inside a task");
    }
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &AWAIT_KEY) == LUA_TNIL) {
    /* lua/thread.lua sets await(job) when it first loads (bindings/lasync.c). */
    lua_pushcfunction(L, load_thread_part);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
      push(NULL, arg);
      return lua_error(L);
    }
  }
  lua_pop(L, 1);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    /* Nothing was queued: the work is the caller's again, released through push. */
    push(NULL, arg);
    return lua_error(L);
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &AWAIT_KEY); /* [job, await] */
  lua_insert(L, -2);
  lua_callk(L, 1, LUA_MULTRET, base, work_k);
  return work_k(L, LUA_OK, base);
}

void lasync__open_thread(lua_State *L) {
  static const luaL_Reg funcs[] = {{"_thread_pool", l_pool},
                                   {"_thread_default", l_default},
                                   {"_thread_submit", l_submit},
                                   {"_thread_check", l_check},
                                   {"_thread_await", l_await},
                                   {"_thread_stopped", l_stopped},
                                   {"_thread_wait_space", l_wait_space},
                                   {"_thread_close", pool_close},
                                   {"_thread_size", pool_size},
                                   {"_thread_set_await", l_set_await},
                                   {NULL, NULL}};
  if (luaL_newmetatable(L, POOL_MT)) {
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, pool_close);
    lua_setfield(L, -2, "__close");
  }
  lua_setfield(L, -2, "_thread_pool_mt");
  if (luaL_newmetatable(L, "lasync.ThreadBuffer")) {
    lua_pushcfunction(L, buffer_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
