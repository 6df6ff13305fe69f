/* lasync.h: embedding lasync, asyncio-style tasks for Lua 5.4 on a libuv loop.
 *
 * A host keeps its own main loop and calls lasync_step() once per frame, or hands the thread
 * to lasync_run(). Its C code can offer awaitable operations to Lua: a C function exposed to
 * Lua creates a future, starts native work, and returns lasync_await(); the work later
 * resolves the future, from the loop's thread or, with lasync_future_resolve_async(), from any
 * thread. To Lua it is one more suspending call: `local tex = game.load_texture("hero.png")`.
 *
 * Every call returns 0 (LASYNC_OK) or a negative error code unless it says otherwise;
 * lasync_strerror() turns a code into a message. Nothing here calls exit(). Only the thread
 * that created a runtime may call into it, except lasync_future_resolve_async() and
 * lasync_future_reject_async(); the others return LASYNC_ETHREAD from any other thread.
 */
#ifndef LASYNC_H
#define LASYNC_H

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LASYNC_VERSION_MAJOR 0
#define LASYNC_VERSION_MINOR 1
#define LASYNC_VERSION_PATCH 0

/* Error codes. */
#define LASYNC_OK 0
#define LASYNC_EINVAL (-1)  /* a bad argument */
#define LASYNC_ENOMEM (-2)  /* out of memory */
#define LASYNC_ELUA (-3)    /* a Lua error: loading a chunk failed, or the task failed */
#define LASYNC_EBUSY (-4)   /* not allowed now: from inside a task, or while the loop runs */
#define LASYNC_ESTATE (-5)  /* the object is in the wrong state (a future already settled) */
#define LASYNC_ELOOP (-6)   /* libuv failed; the runtime cannot continue */
#define LASYNC_EPENDING (-7) /* the task has not finished yet */
#define LASYNC_ETHREAD (-8)  /* called from a thread that does not own the runtime */

typedef struct lasync__runtime lasync_runtime; /* a loop, a Lua state, and their tasks */
typedef struct lasync_task lasync_task;        /* a task held by C: see lasync_task_release */
typedef struct lasync_future lasync_future;    /* a one-shot awaitable completed by C */

/* Task states, as lasync_task_status() returns them. */
typedef enum {
  LASYNC_TASK_PENDING,
  LASYNC_TASK_RUNNING,
  LASYNC_TASK_DONE,
  LASYNC_TASK_FAILED,
  LASYNC_TASK_CANCELLED
} lasync_task_status_t;

/* Called with the message and traceback of a task that failed with nobody to see it: a task
 * started from C, or one whose outcome nobody awaited. The default prints to stderr. */
typedef void (*lasync_error_cb)(lasync_runtime *rt, const char *report, void *data);

/* Options for lasync_new(); zero them, then set what you need. */
typedef struct {
  lua_State *L;          /* attach to this state (not closed by lasync_destroy); NULL: own one */
  uv_loop_t *loop;       /* share this loop (not closed by lasync_destroy); NULL: own one */
  lasync_error_cb on_error;
  void *data;            /* for the embedder: lasync_get_data() returns it */
  /* For a state lasync opens (L NULL): its allocator (NULL: the standard one), and whether the
   * package library ignores LUA_PATH and LUA_CPATH (as lua -E). */
  lua_Alloc alloc;
  void *alloc_ud;
  int ignore_env;
  /* For a state lasync opens on its own allocator (L and alloc NULL): a cap on the bytes Lua
   * may hold, 0 for none. An allocation past it fails, which Lua turns into a "not enough
   * memory" error in the task that asked. */
  size_t max_memory;
} lasync_options;

/* Returns a message for an error code. Never NULL. */
const char *lasync_strerror(int err);

/* Creates a runtime. opts may be NULL. With no state given it opens one with the standard
 * libraries; either way `require "lasync"` then works in it. */
int lasync_new(lasync_runtime **out, const lasync_options *opts);

/* Shuts down in one order: refuses new work, cancels the tasks still pending and lets their
 * cleanup run, closes the runtime's parts and handles (running the loop until their close
 * callbacks have fired), closes the Lua state if it made it, then the loop if it made it.
 * LASYNC_ELOOP if that loop would not close (a handle left open on it: the runtime is then
 * leaked, not freed under libuv). Not from inside a task. */
int lasync_destroy(lasync_runtime *rt);

/* The runtime's Lua state (its main thread) and loop. */
lua_State *lasync_lua(lasync_runtime *rt);
uv_loop_t *lasync_loop(lasync_runtime *rt);

/* The embedder's pointer from lasync_options.data, and a setter. */
void *lasync_get_data(lasync_runtime *rt);
void lasync_set_data(lasync_runtime *rt, void *data);

/* Starts a Lua file, a string or a function as a new task. The function and its nargs
 * arguments are on top of lasync_lua(rt)'s stack and are popped. If out is not NULL it gets
 * the task, which C then holds until lasync_task_release(); if out is NULL and the task fails,
 * the error callback gets its report. A chunk that does not compile gives LASYNC_ELUA, with
 * the message on top of the stack. */
int lasync_spawn_file(lasync_runtime *rt, const char *path, lasync_task **out);
int lasync_spawn_string(lasync_runtime *rt, const char *code, const char *name,
                        lasync_task **out);
int lasync_spawn_call(lasync_runtime *rt, int nargs, lasync_task **out);

/* A held task's state. */
lasync_task_status_t lasync_task_status(const lasync_task *t);

/* Pushes a finished task's results on L (a thread of the runtime's state) and returns how many,
 * or pushes its error and returns LASYNC_ELUA, or returns LASYNC_EPENDING (LASYNC_ENOMEM when
 * L's stack cannot grow to hold them). */
int lasync_task_result(lasync_task *t, lua_State *L);

/* Requests cancellation, as task:cancel() does. Returns 1 if the task had not finished. */
int lasync_task_cancel(lasync_task *t);

/* Names a held task, as async.spawn{name = ...} does: async.tasks(), dumps and failure reports
 * show it. */
int lasync_task_set_name(lasync_task *t, const char *name);

/* For a held task that failed: pushes its failure report on L ("task 'main' failed: <message>"
 * and the traceback), counts the failure as seen, and returns the string; NULL (and nothing
 * pushed) if the task did not fail. */
const char *lasync_task_report(lasync_task *t, lua_State *L);

/* Lets go of a task returned by a spawn call. Handles outlive their runtime, as futures do:
 * after lasync_destroy every call on one is refused (LASYNC_ESTATE, NULL, the status it had),
 * and it must still be released. */
void lasync_task_release(lasync_task *t);

/* Requests cancellation of every live task, with message (may be NULL) as their Cancelled
 * error's message: what the lasync executable does on SIGINT. Safe from a libuv callback on the
 * loop's thread; out of memory drops the message, not the cancellation. */
int lasync_cancel_all(lasync_runtime *rt, const char *message);

/* How many tasks have failed with nobody to await them so far: each was reported to on_error
 * (or stderr) once. Other reports that reach on_error, such as a server's handler failing
 * (logged, the server goes on), are not counted. Readable inside on_error, including the calls
 * lasync_destroy makes as the state closes: the lasync executable's exit status is 1 if any. */
long lasync_unhandled_failures(const lasync_runtime *rt);

/* "0.1.0". */
const char *lasync_version(void);

/* Runs the loop until no task is left. Returns LASYNC_EBUSY if tasks remain that nothing can
 * wake (they wait on futures nobody will settle). */
int lasync_run(lasync_runtime *rt);

/* Resumes ready tasks and polls I/O without blocking, for at most budget_ms milliseconds
 * (tasks still ready then run at the next step), except that a step with a task ready always
 * resumes one, so every step makes progress however slow the machine (the overshoot is that
 * one resume); INFINITY means no limit, a negative or NaN budget is LASYNC_EINVAL. The call a game makes once per frame. Returns the number of tasks
 * still alive plus the futures C holds unsettled: at 0 nothing is left to wait for. */
int lasync_step(lasync_runtime *rt, double budget_ms);

/* For hosts with their own poller: the loop's backend descriptor, and how long the host may
 * sleep before the next lasync_step() (0 when tasks are ready, -1 when nothing is scheduled). */
int lasync_backend_fd(lasync_runtime *rt);
int lasync_backend_timeout(lasync_runtime *rt);

/* Futures held by C. A future is a reference-counted handle: C's reference lasts until
 * lasync_future_release(), which may come after lasync_destroy(), and from any thread. While it
 * is pending the runtime counts it as live work: lasync_step() includes it in its answer and
 * lasync_run() waits for it, so a host that stops at 0 never destroys the runtime under a
 * worker that still holds a future. Settling is safe in any order with the rest: after the
 * awaiting task was cancelled, or after lasync_destroy(), resolving is a no-op (the values are
 * discarded; after lasync_destroy L is not even touched).
 *
 * Shutdown, the right way: settle (or let the workers settle) every future, step until
 * lasync_step() returns 0, lasync_destroy(), then release the handles (or release each one
 * once nothing will touch it again). */
typedef void (*lasync_future_cancel_cb)(lasync_future *f, void *data);

/* Creates a future on the runtime of L (a state or thread where lasync is loaded), or returns
 * NULL when out of memory or while the runtime shuts down. */
lasync_future *lasync_future_new(lua_State *L);

/* From a lua_CFunction running in a task: `return lasync_await(L, f);` suspends the task until
 * f settles, then returns f's values to Lua (or raises its error). Outside a task it raises
 * "... must be called inside a task"; for a future settled or abandoned already it raises. */
int lasync_await(lua_State *L, lasync_future *f);

/* Settles f on the loop's thread: with the nvalues values on top of L (popped), or with the
 * error value on top of L (popped). LASYNC_ESTATE if f was already settled. Out of memory
 * while storing the values fails the awaiting task with "not enough memory", not the host. */
int lasync_future_resolve(lasync_future *f, lua_State *L, int nvalues);
int lasync_future_reject(lasync_future *f, lua_State *L);

/* Thread-safe settling, from any thread: on the loop's next turn, push(L, arg) is called on the
 * loop's thread to push the values (it returns how many), or for a rejection a message is
 * raised as a string error. push may be NULL (no values). When the values will never be
 * delivered (the awaiting task was cancelled, or the runtime is gone by then or already), push
 * is called with L == NULL instead, possibly on another thread, so it can free arg. */
typedef int (*lasync_push_cb)(lua_State *L, void *arg);
int lasync_future_resolve_async(lasync_future *f, lasync_push_cb push, void *arg);
int lasync_future_reject_async(lasync_future *f, const char *message);

/* Whether nobody will see f's outcome any more: every task awaiting it was cancelled, or the
 * runtime was destroyed. Any thread; a worker can poll it to stop early. */
int lasync_future_cancelled(const lasync_future *f);

/* Calls cb(f, data) on the loop's thread, once, when f becomes cancelled (see above); C must
 * still settle or release f. Loop thread only. */
void lasync_future_on_cancel(lasync_future *f, lasync_future_cancel_cb cb, void *data);

/* Drops C's reference: f must not be used after. Any thread, before or after lasync_destroy. */
void lasync_future_release(lasync_future *f);

/* ---- Work on the thread pool (host/work.c, bindings/thread/) ----
 *
 * Blocking C work (decoding an asset, a synchronous database driver) runs on one of the
 * default pool's threads while the calling task suspends and other tasks run. From a
 * lua_CFunction running in a task:
 *
 *   static void decode(lasync_work *w, void *arg) { ... }          // on a pool thread
 *   static int push(lua_State *L, void *arg) { ...; free(arg); return 1; }  // loop thread
 *   static int l_load(lua_State *L) { ...; return lasync_await_work(L, decode, push, job); }
 *
 * work(w, arg) runs on a pool thread and must not touch any lua_State; it reports a failure
 * with lasync_work_fail(). Then push(L, arg) runs on the loop's thread, inside the awaiting
 * task: it pushes the results and returns how many (it may raise a Lua error). push is called
 * exactly once in every case: with L == NULL when nobody will take the results (the task was
 * cancelled, the work never started, lasync_await_work itself failed), so it can free arg.
 * A failure set with lasync_work_fail() is raised in the task as an error of kind "thread"
 * (push is then called with L == NULL). A cancelled task's Cancelled error is raised only
 * once work has returned: long loops should poll lasync_work_cancelled() and return early.
 * lasync_destroy() waits for running work; none runs after it returns. */
typedef struct lasync__work lasync_work;
typedef void (*lasync_work_cb)(lasync_work *w, void *arg);
typedef int (*lasync_work_push_cb)(lua_State *L, void *arg);
int lasync_await_work(lua_State *L, lasync_work_cb work, lasync_work_push_cb push, void *arg);
/* From work: whether the awaiting task was cancelled (or the runtime is closing). */
int lasync_work_cancelled(const lasync_work *w);
/* From work: fail it with this message (copied). */
void lasync_work_fail(lasync_work *w, const char *message);

#ifdef __cplusplus
}
#endif
#endif
