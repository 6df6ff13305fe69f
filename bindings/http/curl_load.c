/* The first fetch's wait for libcurl (libcurl.c loads it, once per process). Loading maps ~36
 * libraries and initialises TLS: 10 ms and more, far past a game's 2 ms lasync_step budget, and
 * nothing a task could be interrupted in. So a task that needs curl before it is loaded suspends
 * while another thread loads it, and the loop and the other tasks go on meanwhile.
 *
 * One load per runtime is in flight at a time, on a thread of its own; every task that needs
 * curl meanwhile waits for that one (on the runtime's list here). A thread that finds another
 * loading (another runtime's, or a blocking load outside a task) waits in pthread_once for it.
 * When it is done, each waiter runs its C function again from the top, which now finds curl
 * loaded, or raises kind "unavailable" with its own URL: a failed load is remembered, never
 * retried.
 *
 * Outside a task (async.http.client at the top level of a stock-lua script), or when the wait
 * cannot start, the load blocks the caller, as it did before.
 */
#include "curl_load.h"

#include <pthread.h>
#include <stdlib.h>

/* A service only for its close hook: the runtime's state while a load runs. The load's thread is
 * joined, never detached: a process that exits while a detached thread is still ending runs the
 * TLS libraries' thread destructors under exit (LeakSanitizer caught OpenSSL's per-thread error
 * state, 904 bytes, at the memory cap), so whoever learns the load is over waits for the thread. */
typedef struct {
  lasync__service service; /* first: the service is the state */
  lasync__xqueue *q;
  pthread_t thread; /* joinable while loading */
  int loading;
  lasync__waitlist waiters;
} loader;

static void join_load_thread(loader *lo) {
  lo->loading = 0;
  lasync__xqueue_hold(lo->q, -1);
  (void)pthread_join(lo->thread, NULL); /* past curl's load: the thread is only returning */
}

/* Shutdown: the tasks have ended, so no one waits; a load still in flight is waited for: the
 * process may exit next, and an exit while another thread is inside curl_global_init runs the
 * TLS libraries' exit handlers under their initialisation (startup_spec's exit test crashed once
 * in twenty runs without this wait). The queue closes after this service, in the same pass,
 * without turning the loop, so on_load_done never sees a closed loader; its post, if queued, is
 * dropped with nothing to free. */
static void loader_close(lasync__runtime *rt, lasync__service *s) {
  loader *lo = (loader *)s;
  (void)rt;
  if (lo->loading) join_load_thread(lo);
  free(lo);
}

static const lasync__service_ops LOADER_SERVICE = {"libcurl load", NULL, loader_close};

/* On the loop's thread, once the load is over: every waiter runs again. */
static void on_load_done(void *arg) {
  loader *lo = (loader *)arg;
  join_load_thread(lo);
  lasync__waitlist_settle(&lo->waiters);
}

/* A thread of its own rather than libuv's pool: the pool's first job starts all its threads and
 * waits until each has run, which on a busy machine is milliseconds of the loop's time. The
 * loader outlives the thread (it is joined before it is freed). When there is no memory to post,
 * the waiters stay suspended until cancelled, as a late C future's, and the close joins. */
static void *load_thread(void *arg) {
  loader *lo = (loader *)arg;
  const char *why;
  (void)lasync__curl_load(&why); /* or waits in pthread_once for whoever loads it */
  (void)lasync__xqueue_post(lo->q, on_load_done, NULL, lo);
  return NULL;
}

static void wait_cancel(lasync__task *t, void *data) {
  loader *lo = (loader *)lasync__service_find(t->rt, &LOADER_SERVICE);
  (void)data;
  if (lo) lasync__waitlist_remove(&lo->waiters, &t->waiter);
}

/* data is the caller's restart function: its call, again, once curl is loaded. */
static int wait_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return (*(const lua_CFunction *)data)(L);
}

static const lasync__awaitable_ops LOAD_OPS = {"libcurl load", wait_cancel, wait_finish, NULL};

/* The runtime's loader with a load in flight, started now if none is; NULL when neither could
 * be made (out of memory, no thread): the caller then loads in place. */
static loader *running_loader(lasync__runtime *rt) {
  loader *lo = (loader *)lasync__service_find(rt, &LOADER_SERVICE);
  if (lo == NULL) {
    /* The queue first: services close newest first, so the loader joins its thread before the
     * queue closes. */
    lasync__xqueue *q = lasync__xqueue_get(rt);
    if (q == NULL || (lo = (loader *)calloc(1, sizeof *lo)) == NULL) return NULL;
    lo->q = q;
    lasync__service_add(rt, &lo->service, &LOADER_SERVICE);
  }
  if (!lo->loading) {
    if (pthread_create(&lo->thread, NULL, load_thread, lo) != 0) return NULL;
    lo->loading = 1;
    lasync__xqueue_hold(lo->q, 1); /* the loop waits for the post even with nothing else */
  }
  return lo;
}

void lasync__need_curl(lua_State *L, const char *fname, const char *url,
                       const lua_CFunction *again) {
  const char *why = NULL;
  int state = lasync__curl_state();
  if (state == 0) {
    lasync__runtime *rt = lasync__runtime_get(L);
    lasync__task *t = rt ? rt->current : NULL;
    loader *lo;
    if (t && t->co == L && !rt->closing && lua_isyieldable(L)) {
      lasync__checkpoint(L, t); /* a pending cancellation is raised here, as at any wait */
      if ((lo = running_loader(rt)) != NULL) {
        lasync__waitlist_add_task(&lo->waiters, t);
        lasync__suspend(L, t, &LOAD_OPS, (void *)again); /* does not return */
      }
    }
  }
  if (state > 0 || lasync__curl_load(&why) == 0) return;
  lua_pushfstring(L, "%s %s: %s", fname, url, why);
  lasync__push_error(L, "unavailable", lua_tostring(L, -1));
  lua_pushstring(L, url);
  lua_setfield(L, -2, "url");
  lua_error(L);
}
