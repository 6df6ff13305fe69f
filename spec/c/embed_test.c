/* C tests of the embedding API (host/lasync.h), run by CTest; each also under ASan. */
#include <lauxlib.h>
#include <stdatomic.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lasync.h"
#include "local_server.h"
#include "run_task.h"

static double now_ms(void) { return (double)uv_hrtime() / 1e6; }

/* ---- a C awaitable: wait_value(), settled by the test from C ---- */

static lasync_future *last_future;

static int l_wait_value(lua_State *L) {
  last_future = lasync_future_new(L);
  return lasync_await(L, last_future);
}

static int push_answer(lua_State *L, void *arg) {
  lua_pushinteger(L, *(int *)arg);
  lua_pushliteral(L, "from a thread");
  return 2;
}

static lasync_runtime *foreign_rt; /* test_task_handle_outlives_runtime's */

static void resolve_later(void *arg) {
  uv_sleep(20);
  CHECK(lasync_future_resolve_async(last_future, push_answer, arg) == LASYNC_OK);
}

static void reject_later(void *arg) {
  (void)arg;
  uv_sleep(20);
  CHECK(lasync_future_reject_async(last_future, "the worker gave up") == LASYNC_OK);
}

/* Steps until a task has called wait_value. One step is not enough to count on: its budget may
 * be spent before the task's turn (a loaded machine, valgrind), and a test that went on would
 * settle the previous test's released future. */
static int step_until_waiting(lasync_runtime *rt) {
  int steps = 0;
  last_future = NULL;
  while (last_future == NULL && steps++ < 1000) lasync_step(rt, 1);
  return last_future != NULL;
}

static void register_game(lasync_runtime *rt) {
  lua_State *L = lasync_lua(rt);
  lua_pushcfunction(L, l_wait_value);
  lua_setglobal(L, "wait_value");
}

static void test_own_state_and_loop(void) {
  lasync_runtime *rt;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  CHECK(strcmp(run_task(rt, "local async = require 'lasync'\n"
                                "local r = async.gather(function() async.sleep(0.02) return 1 end,\n"
                                "                       function() async.sleep(0.02) return 2 end)\n"
                                "return r[1] + r[2]"), "3") == 0);
  CHECK(strncmp(run_task(rt, "error('boom', 0)"), "error: boom", 11) == 0);
  CHECK(lasync_destroy(rt) == LASYNC_OK); /* OK includes uv_loop_close() == 0 on its loop */
}

static void test_attach_to_state_and_loop(void) {
  lua_State *L = luaL_newstate();
  uv_loop_t loop;
  lasync_runtime *rt;
  lasync_options opts;
  luaL_openlibs(L);
  uv_loop_init(&loop);
  memset(&opts, 0, sizeof opts);
  opts.L = L;
  opts.loop = &loop;
  CHECK(lasync_new(&rt, &opts) == LASYNC_OK);
  CHECK(lasync_lua(rt) == L && lasync_loop(rt) == &loop);
  CHECK(strcmp(run_task(rt, "local a = require 'lasync'; a.sleep(0.01); return 'ok'"), "ok") == 0);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
  /* Both outlive the runtime and stay usable. */
  CHECK(luaL_dostring(L, "return 6 * 7") == LUA_OK && lua_tointeger(L, -1) == 42);
  lua_close(L);
  CHECK(uv_loop_close(&loop) == 0);
}

static void test_step_budget(void) {
  lasync_runtime *rt;
  double worst = 0;
  int frames = 0, alive;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  /* 200 tasks that each burn ~0.2 ms between yields: far more work than one frame allows. */
  CHECK(lasync_spawn_string(rt,
                            "local async = require 'lasync'\n"
                            "local function busy() local t = async.now() + 0.0002\n"
                            "  while async.now() < t do end end\n"
                            "for i = 1, 200 do async.spawn(function()\n"
                            "  for j = 1, 5 do busy(); async.sleep(0) end end) end",
                            "=budget", NULL) == LASYNC_OK);
  do {
    double t0 = now_ms(), dt;
    alive = lasync_step(rt, 2);
    dt = now_ms() - t0;
    if (dt > worst) worst = dt;
    frames++;
  } while (alive > 0 && frames < 10000);
  CHECK(alive == 0);
  /* 200 x 5 slices of 0.2 ms is about 200 ms of work: a 2 ms budget must spread it over many
   * frames. The worst step is printed, not asserted: a loaded machine preempts any step, so a
   * bound here only measures the machine; the benchmark (make bench) measures it properly. */
  CHECK(frames > 20);
  printf("step budget: %d frames, worst step %.2f ms for a 2 ms budget\n", frames, worst);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
}

/* A step starts another resume only if one fits in what is left: tasks that each take 1 ms of
 * a 2 ms budget run one a step once that cost is measured (resuming until the deadline had
 * passed ran two, the second ending past it). Preemption only makes a task longer, so the
 * count holds on a loaded machine. */
static void test_step_stops_before_budget(void) {
  lasync_runtime *rt;
  lua_State *L;
  int steps = 0, last = 0, done = 0, most = 0;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  L = lasync_lua(rt);
  CHECK(lasync_spawn_string(rt,
                            "local async = require 'lasync'\n"
                            "done = 0\n"
                            "for i = 1, 12 do async.spawn(function()\n"
                            "  local t = async.now() + 0.001\n"
                            "  while async.now() < t do end\n"
                            "  done = done + 1 end) end",
                            "=fits", NULL) == LASYNC_OK);
  lasync_step(rt, 2); /* runs the spawning chunk */
  while (done < 12 && steps < 200) {
    lasync_step(rt, 2);
    steps++;
    lua_getglobal(L, "done");
    done = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (done > 3 && done - last > most) most = done - last; /* once the cost is learnt */
    last = done;
  }
  CHECK(done == 12);
  CHECK(most == 1);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
}

static void test_futures_from_loop_and_threads(void) {
  lasync_runtime *rt;
  lasync_task *t;
  lua_State *L;
  uv_thread_t thread;
  int answer = 42, n;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  register_game(rt);
  L = lasync_lua(rt);

  /* Resolved on the loop's thread, between steps. */
  CHECK(lasync_spawn_string(rt, "local a, b = wait_value(); return a .. '/' .. b", "=f1", &t) == 0);
  REQUIRE(step_until_waiting(rt));
  CHECK(lasync_task_status(t) == LASYNC_TASK_RUNNING);
  lua_pushinteger(L, 7);
  lua_pushliteral(L, "seven");
  CHECK(lasync_future_resolve(last_future, L, 2) == LASYNC_OK);
  lua_pushinteger(L, 8);
  CHECK(lasync_future_resolve(last_future, L, 1) == LASYNC_ESTATE); /* settled already */
  lua_pop(L, 1);
  lasync_future_release(last_future);
  CHECK(lasync_run(rt) == LASYNC_OK);
  n = lasync_task_result(t, L);
  CHECK(n == 1 && strcmp(lua_tostring(L, -1), "7/seven") == 0);
  lua_pop(L, n > 0 ? n : 0);
  lasync_task_release(t);

  /* Rejected on the loop's thread: the task sees the error value. */
  CHECK(lasync_spawn_string(rt, "return select(2, pcall(wait_value))", "=f2", &t) == 0);
  REQUIRE(step_until_waiting(rt));
  lua_pushliteral(L, "no such texture");
  CHECK(lasync_future_reject(last_future, L) == LASYNC_OK);
  lasync_future_release(last_future);
  CHECK(lasync_run(rt) == LASYNC_OK);
  n = lasync_task_result(t, L);
  CHECK(n == 1 && strcmp(lua_tostring(L, -1), "no such texture") == 0);
  lua_pop(L, n > 0 ? n : 0);
  lasync_task_release(t);

  /* Resolved from another thread: lasync_run waits for it, since C holds the future. */
  CHECK(lasync_spawn_string(rt, "local a, b = wait_value(); return a .. ' ' .. b", "=f3", &t) == 0);
  REQUIRE(step_until_waiting(rt));
  uv_thread_create(&thread, resolve_later, &answer);
  CHECK(lasync_run(rt) == LASYNC_OK);
  uv_thread_join(&thread);
  lasync_future_release(last_future);
  n = lasync_task_result(t, L);
  CHECK(n == 1 && strcmp(lua_tostring(L, -1), "42 from a thread") == 0);
  lua_pop(L, n > 0 ? n : 0);
  lasync_task_release(t);

  /* Rejected from another thread. */
  CHECK(lasync_spawn_string(rt, "return select(2, pcall(wait_value))", "=f4", &t) == 0);
  REQUIRE(step_until_waiting(rt));
  uv_thread_create(&thread, reject_later, NULL);
  CHECK(lasync_run(rt) == LASYNC_OK);
  uv_thread_join(&thread);
  lasync_future_release(last_future);
  n = lasync_task_result(t, L);
  CHECK(n == 1 && strcmp(lua_tostring(L, -1), "the worker gave up") == 0);
  lua_pop(L, n > 0 ? n : 0);
  lasync_task_release(t);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
}

static int cleanup_ran;
static int l_cleanup(lua_State *L) {
  (void)L;
  cleanup_ran++;
  return 0;
}

static char last_report[512];
static void on_error(lasync_runtime *rt, const char *report, void *data) {
  (void)rt;
  (*(int *)data)++;
  snprintf(last_report, sizeof last_report, "%s", report);
}

static void test_destroy_with_pending_tasks_and_errors(void) {
  lasync_runtime *rt;
  lasync_options opts;
  int reports = 0;
  memset(&opts, 0, sizeof opts);
  opts.on_error = on_error;
  opts.data = &reports;
  CHECK(lasync_new(&rt, &opts) == LASYNC_OK);
  register_game(rt);
  lua_pushcfunction(lasync_lua(rt), l_cleanup);
  lua_setglobal(lasync_lua(rt), "cleanup");
  CHECK(lasync_spawn_string(rt,
                            "local async = require 'lasync'\n"
                            "local guard <close> = setmetatable({}, {__close = cleanup})\n"
                            "async.sleep(100)", "=sleeper", NULL) == 0);
  CHECK(lasync_spawn_string(rt, "local ok = pcall(wait_value); cleanup()", "=waiter", NULL) == 0);
  CHECK(lasync_spawn_string(rt, "error('script failed')", "=failing", NULL) == 0);
  CHECK(lasync_spawn_string(rt, "this is not lua", "=broken", NULL) == LASYNC_ELUA);
  lua_pop(lasync_lua(rt), 1);
  /* The failing task is done; two wait, and C holds the future one of them awaits. The budget is
   * unbounded: this counts what the three tasks leave, not what one step has time for. */
  last_future = NULL;
  CHECK(lasync_step(rt, 1.0 / 0.0) == 3);
  REQUIRE(last_future != NULL);
  CHECK(reports == 1 && strstr(last_report, "script failed") != NULL);
  CHECK(lasync_destroy(rt) == LASYNC_OK); /* cancels both; their cleanup runs */
  CHECK(cleanup_ran == 2);
  CHECK(lasync_future_cancelled(last_future));
  lasync_future_release(last_future);
}

/* ---- C-started tasks of one turn, run one after another on one coroutine ---- */

/* A failure reported while the task's coroutine is still running the burst (runtime.c,
 * body_continue): the callback may start another task from C, which waits for a later turn. */
static lasync_runtime *burst_rt;
static int burst_reports;
static void on_burst_error(lasync_runtime *rt, const char *report, void *data) {
  (void)data;
  CHECK(rt == burst_rt);
  if (burst_reports++ == 0) {
    CHECK(strstr(report, "first failure") != NULL);
    CHECK(lasync_spawn_string(rt, "ran = ran .. 'L'", "=late", NULL) == LASYNC_OK);
  } else {
    CHECK(strstr(report, "second failure") != NULL);
  }
}

static void test_burst_of_c_started_tasks(void) {
  lasync_options opts;
  lasync_task *t;
  lua_State *L;
  int top;
  memset(&opts, 0, sizeof opts);
  opts.on_error = on_burst_error;
  CHECK(lasync_new(&burst_rt, &opts) == LASYNC_OK);
  L = lasync_lua(burst_rt);
  top = lua_gettop(L);
  CHECK(luaL_dostring(L, "ran = ''") == LUA_OK);
  CHECK(lasync_spawn_string(burst_rt, "ran = ran .. 'a'; error('first failure')", "=a", NULL) == 0);
  CHECK(lasync_spawn_string(burst_rt, "ran = ran .. 'b'; return 'b', 2", "=b", &t) == 0);
  CHECK(lasync_spawn_string(burst_rt, "ran = ran .. 'c'; error('second failure')", "=c", NULL) == 0);
  CHECK(lasync_spawn_string(burst_rt, "ran = ran .. 'd'", "=d", NULL) == 0);
  CHECK(lasync_run(burst_rt) == LASYNC_OK);
  CHECK(burst_reports == 2 && lasync_unhandled_failures(burst_rt) == 2);
  CHECK(lua_getglobal(L, "ran") == LUA_TSTRING && strcmp(lua_tostring(L, -1), "abcdL") == 0);
  lua_pop(L, 1);
  CHECK(lasync_task_status(t) == LASYNC_TASK_DONE);
  CHECK(lasync_task_result(t, L) == 2);
  CHECK(strcmp(lua_tostring(L, -2), "b") == 0 && lua_tointeger(L, -1) == 2);
  lua_pop(L, 2);
  lasync_task_release(t);
  CHECK(lua_gettop(L) == top);
  CHECK(lasync_destroy(burst_rt) == LASYNC_OK);
}

/* ---- a task coroutine resumed from C, past the scheduler ---- */

/* Suspends the calling coroutine with no continuation, as Lua's own coroutine.yield does (a C
 * module's, or Lua's own kept from before lasync was loaded): the scheduler takes it for a
 * sleep(0). */
static int l_raw_yield(lua_State *L) { return lua_yield(L, 0); }

/* resume_raw(co): lua_resume on it, as a C library with its own scheduler would. */
static int l_resume_raw(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  int nres, status;
  luaL_argcheck(L, co != NULL, 1, "coroutine expected");
  status = lua_resume(co, L, 0, &nres);
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  if (status != LUA_OK && status != LUA_YIELD) nres = 1; /* the error */
  luaL_checkstack(L, nres, NULL);
  lua_xmove(co, L, nres);
  return 1 + nres;
}

/* A task that its body settles while it runs (runtime.c, body_continue) must be the one that
 * ends there: resumed from another task, the yielded one ended and the body settled the
 * running task in its place, from the wrong coroutine (a crash). Under xpcall, and now, the
 * resumed coroutine just ends, and its task fails when the scheduler next resumes it. */
static void test_task_resumed_past_the_scheduler(void) {
  lasync_runtime *rt;
  lasync_task *a, *b;
  lua_State *L;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  L = lasync_lua(rt);
  lua_register(L, "raw_yield", l_raw_yield);
  lua_register(L, "resume_raw", l_resume_raw);
  CHECK(lasync_spawn_string(rt, "co = coroutine.running(); raw_yield(); return 'a'", "=a", &a) ==
        0);
  CHECK(lasync_spawn_string(rt, "return resume_raw(co)", "=b", &b) == 0);
  CHECK(lasync_run(rt) == LASYNC_OK);
  CHECK(lasync_task_status(b) == LASYNC_TASK_DONE);
  CHECK(lasync_task_result(b, L) == 2); /* what a's function returned, handed to its resumer */
  CHECK(lua_toboolean(L, -2) && strcmp(lua_tostring(L, -1), "a") == 0);
  lua_pop(L, 2);
  CHECK(lasync_task_status(a) == LASYNC_TASK_FAILED);
  CHECK(lasync_task_result(a, L) == LASYNC_ELUA);
  CHECK(strstr(lua_tostring(L, -1), "dead coroutine") != NULL);
  lua_pop(L, 1);
  lasync_task_release(a);
  lasync_task_release(b);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
}

/* ---- fetches under lasync_step: a few new transfers per step, all complete ---- */

static void test_fetches_admitted_per_step(void) {
  lasync_runtime *rt;
  lasync_task *t;
  lua_State *L;
  int steps = 0, n;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  L = lasync_lua(rt);
  lua_pushstring(L, server_url);
  lua_setglobal(L, "URL");
  CHECK(lasync_spawn_string(rt,
                            "local async = require 'lasync'\n"
                            "local jobs = {}\n"
                            "for i = 1, 40 do jobs[i] = function() return async.fetch(URL).body end end\n"
                            "local r = async.gather(jobs)\n"
                            "return r[1] .. r.n", "=fetches", &t) == LASYNC_OK);
  /* A few steps only: the quota holds most transfers back... */
  while (steps < 3) lasync_step(rt, 2), steps++;
  CHECK(lasync_task_status(t) == LASYNC_TASK_RUNNING);
  /* ...and lasync_run, outside any step, admits the rest. */
  CHECK(lasync_run(rt) == LASYNC_OK);
  n = lasync_task_result(t, L);
  CHECK(n == 1 && strcmp(lua_tostring(L, -1), "hello40") == 0);
  lua_pop(L, n > 0 ? n : 0);
  lasync_task_release(t);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
}

/* ---- misuse: refused where it can be detected ---- */

static lasync_runtime *misuse_rt;
static int from_thread_step, from_thread_spawn, from_thread_resolve, destroy_inside;

static void call_from_other_thread(void *arg) {
  lua_State *L = lasync_lua(misuse_rt);
  (void)arg;
  from_thread_step = lasync_step(misuse_rt, 1);
  from_thread_spawn = lasync_spawn_string(misuse_rt, "return 1", "=x", NULL);
  from_thread_resolve = lasync_future_resolve(last_future, L, 0);
}

static int l_destroy_me(lua_State *L) {
  (void)L;
  destroy_inside = lasync_destroy(misuse_rt);
  return 0;
}

static void test_misuse_is_refused(void) {
  uv_thread_t thread;
  lasync_task *t;
  lua_State *L;
  CHECK(lasync_new(&misuse_rt, NULL) == LASYNC_OK);
  register_game(misuse_rt);
  L = lasync_lua(misuse_rt);
  lua_pushcfunction(L, l_destroy_me);
  lua_setglobal(L, "destroy_me");
  /* From inside a task: destroying the runtime that runs it is refused. */
  CHECK(lasync_spawn_string(misuse_rt, "destroy_me(); return wait_value()", "=m", &t) == 0);
  lasync_step(misuse_rt, 5);
  CHECK(destroy_inside == LASYNC_EBUSY);
  /* From another thread: only the _async settlements are allowed. */
  uv_thread_create(&thread, call_from_other_thread, NULL);
  uv_thread_join(&thread);
  CHECK(from_thread_step == LASYNC_ETHREAD);
  CHECK(from_thread_spawn == LASYNC_ETHREAD);
  CHECK(from_thread_resolve == LASYNC_ETHREAD);
  CHECK(strcmp(lasync_strerror(LASYNC_ETHREAD), "unknown error") != 0);
  /* The runtime is unharmed: the waiting task still completes. */
  lua_pushinteger(L, 5);
  CHECK(lasync_future_resolve(last_future, L, 1) == LASYNC_OK);
  lasync_future_release(last_future);
  CHECK(lasync_run(misuse_rt) == LASYNC_OK);
  CHECK(lasync_task_status(t) == LASYNC_TASK_DONE);
  lasync_task_release(t);
  CHECK(lasync_destroy(misuse_rt) == LASYNC_OK);
}

/* ---- issue 14 crash 3: a future held by a worker outlives the task and the runtime ---- */

static int cancel_seen, late_push_calls, late_push_null;
static void on_future_cancel(lasync_future *f, void *data) {
  (void)f;
  (*(int *)data)++;
}

static int late_push(lua_State *L, void *arg) {
  (void)arg;
  late_push_calls++;
  if (L == NULL) {
    late_push_null++; /* never delivered: the worker's arg would be freed here */
    return 0;
  }
  lua_pushinteger(L, 1);
  return 1;
}

typedef struct {
  lasync_future *f;
  unsigned int delay_ms;
  int resolve_result;
  uv_sem_t *go; /* if set, the worker resolves when it is posted, not after delay_ms */
} worker_job;

static void late_worker(void *arg) {
  worker_job *job = (worker_job *)arg;
  if (job->go)
    uv_sem_wait(job->go);
  else
    uv_sleep(job->delay_ms);
  job->resolve_result = lasync_future_resolve_async(job->f, late_push, NULL);
  lasync_future_release(job->f); /* the worker's reference: after the runtime is gone */
}

static void test_future_outlives_runtime(void) {
  lasync_runtime *rt;
  lua_State *L;
  uv_thread_t worker;
  uv_sem_t go;
  worker_job job = {NULL, 0, -99, &go};
  int alive, steps = 0;
  CHECK(uv_sem_init(&go, 0) == 0);
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  register_game(rt);
  L = lasync_lua(rt);
  /* The script cancels the task awaiting a future that a worker will resolve much later. */
  CHECK(lasync_spawn_string(rt,
                            "local async = require 'lasync'\n"
                            "local t = async.spawn(wait_value)\n"
                            "async.sleep(0.01)\n"
                            "t:cancel()\n", "=canceller", NULL) == 0);
  REQUIRE(step_until_waiting(rt));
  lasync_future_on_cancel(last_future, on_future_cancel, &cancel_seen);
  job.f = last_future;
  CHECK(uv_thread_create(&worker, late_worker, &job) == 0);
  /* The step's count includes the future the worker still holds, after the tasks ended: it
   * settles at 1 (the worker waits for `go`, so no timing decides it), never at 0. */
  do {
    alive = lasync_step(rt, 1);
    uv_sleep(1);
  } while ((lasync_future_cancelled(last_future) == 0 || alive > 1) && ++steps < 5000);
  CHECK(cancel_seen == 1);
  CHECK(alive == 1);
  CHECK(lasync_step(rt, 1) == 1);
  /* The host stops anyway, before the worker is done: the late resolve must be a no-op. */
  CHECK(lasync_destroy(rt) == LASYNC_OK);
  uv_sem_post(&go);
  uv_thread_join(&worker);
  uv_sem_destroy(&go);
  CHECK(job.resolve_result == LASYNC_OK);
  CHECK(late_push_calls == 1 && late_push_null == 1);
  CHECK(cancel_seen == 1);

  /* The other order: the worker resolves first, after the cancellation; then the host sees 0. */
  late_push_calls = late_push_null = cancel_seen = 0;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  register_game(rt);
  L = lasync_lua(rt);
  CHECK(lasync_spawn_string(rt,
                            "local async = require 'lasync'\n"
                            "local t = async.spawn(wait_value)\n"
                            "async.sleep(0.01)\n"
                            "t:cancel()\n", "=canceller", NULL) == 0);
  REQUIRE(step_until_waiting(rt));
  lasync_future_on_cancel(last_future, on_future_cancel, &cancel_seen);
  job.f = last_future;
  job.delay_ms = 50;
  job.go = NULL;
  CHECK(uv_thread_create(&worker, late_worker, &job) == 0);
  steps = 0;
  while (lasync_step(rt, 1) > 0 && ++steps < 5000) uv_sleep(1);
  CHECK(steps < 5000);
  uv_thread_join(&worker);
  CHECK(cancel_seen == 1 && late_push_calls == 1 && late_push_null == 1);
  CHECK(lasync_destroy(rt) == LASYNC_OK);

  /* Settling on the loop's thread after lasync_destroy: a no-op that does not touch L. */
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  register_game(rt);
  CHECK(lasync_spawn_string(rt, "wait_value()", "=w", NULL) == 0);
  REQUIRE(step_until_waiting(rt));
  CHECK(lasync_destroy(rt) == LASYNC_OK);
  CHECK(lasync_future_cancelled(last_future));
  CHECK(lasync_future_resolve(last_future, NULL, 0) == LASYNC_OK);
  CHECK(lasync_future_resolve_async(last_future, late_push, NULL) == LASYNC_OK);
  lasync_future_release(last_future);
  (void)L;
}

/* ---- C futures resolved by threads racing cancellation and lasync_destroy (make tsan) ---- */

#define RACE_TASKS 48
#define RACE_WORKERS 3

static lasync_future *race_futures[RACE_TASKS];
static int race_n;
static atomic_int race_pushed, race_dropped, race_cancels;

static int l_wait_race(lua_State *L) {
  lasync_future *f = lasync_future_new(L);
  if (f == NULL) return luaL_error(L, "no future");
  race_futures[race_n++] = f; /* the loop's thread only */
  return lasync_await(L, f);
}

static int race_push(lua_State *L, void *arg) {
  (void)arg;
  if (L == NULL) { /* never delivered (cancelled, or the runtime is gone) */
    atomic_fetch_add(&race_dropped, 1);
    return 0;
  }
  atomic_fetch_add(&race_pushed, 1);
  lua_pushinteger(L, 1);
  return 1;
}

static void on_race_cancel(lasync_future *f, void *data) {
  (void)f;
  (void)data;
  atomic_fetch_add(&race_cancels, 1);
}

typedef struct {
  int first, step;
  unsigned seed;
} race_job;

/* Settles every step-th future from first, pausing now and then, then drops its reference. */
static void race_worker(void *arg) {
  race_job *j = (race_job *)arg;
  int i;
  for (i = j->first; i < RACE_TASKS; i += j->step) {
    j->seed = j->seed * 1103515245u + 12345u;
    if ((j->seed >> 16) % 4 == 0) uv_sleep((j->seed >> 20) % 2);
    if (i % 5 == 0)
      CHECK(lasync_future_reject_async(race_futures[i], "worker said no") == LASYNC_OK);
    else
      CHECK(lasync_future_resolve_async(race_futures[i], race_push, NULL) == LASYNC_OK);
    lasync_future_release(race_futures[i]);
  }
}

/* Threads resolve and reject C futures while the script cancels half of their tasks and, every
 * third round, while the host destroys the runtime. Each resolve's push runs exactly once, with
 * L or (never delivered) with NULL; nothing crashes, leaks or races (TSan, ASan). */
static void test_futures_race_threads(void) {
  int round;
  for (round = 0; round < 30; round++) {
    lasync_runtime *rt;
    uv_thread_t workers[RACE_WORKERS];
    race_job jobs[RACE_WORKERS];
    int i, steps = 0, resolves = 0;
    race_n = 0;
    atomic_store(&race_pushed, 0);
    atomic_store(&race_dropped, 0);
    atomic_store(&race_cancels, 0);
    CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
    lua_pushcfunction(lasync_lua(rt), l_wait_race);
    lua_setglobal(lasync_lua(rt), "wait_race");
    CHECK(lasync_spawn_string(rt,
                              "local async = require 'lasync'\n"
                              "local ts = {}\n"
                              "for i = 1, 48 do ts[i] = async.spawn(pcall, wait_race) end\n"
                              "while not go do async.sleep(0.001) end -- the workers post\n"
                              "for i = 1, 48, 2 do ts[i]:cancel() end\n"
                              "async.gather_settled(table.unpack(ts))\n",
                              "=race", NULL) == 0);
    /* Until every task waits on its future (a step's budget may not fit them all under TSan). */
    while (race_n < RACE_TASKS && ++steps < 10000) lasync_step(rt, 5);
    steps = 0;
    CHECK(race_n == RACE_TASKS);
    if (race_n != RACE_TASKS) {
      lasync_destroy(rt);
      return;
    }
    for (i = 0; i < RACE_TASKS; i++) {
      lasync_future_on_cancel(race_futures[i], on_race_cancel, NULL);
      if (i % 5 != 0) resolves++;
    }
    for (i = 0; i < RACE_WORKERS; i++) {
      jobs[i].first = i;
      jobs[i].step = RACE_WORKERS;
      jobs[i].seed = (unsigned)(round * 7 + i);
      CHECK(uv_thread_create(&workers[i], race_worker, &jobs[i]) == 0);
    }
    lua_pushboolean(lasync_lua(rt), 1); /* the script cancels half the tasks at its next turn */
    lua_setglobal(lasync_lua(rt), "go");
    if (round % 3 != 0)
      while (lasync_step(rt, 1) > 0 && ++steps < 20000) uv_sleep(0);
    CHECK(lasync_destroy(rt) == LASYNC_OK); /* every third round while the workers still post */
    for (i = 0; i < RACE_WORKERS; i++) uv_thread_join(&workers[i]);
    CHECK(atomic_load(&race_pushed) + atomic_load(&race_dropped) == resolves);
    /* C hears of a cancellation only for a future still unsettled when its task was cancelled
     * (half the tasks are) or when the runtime was destroyed under it, and at most once. */
    CHECK(atomic_load(&race_cancels) <= (round % 3 == 0 ? RACE_TASKS : RACE_TASKS / 2));
  }
}

/* ---- what host/main.c needs from the public API ---- */

static void test_host_api(void) {
  lasync_runtime *rt;
  lasync_task *t, *sleeper;
  lua_State *L;
  const char *report;
  int alive, steps = 0;
  CHECK(lasync_new(&rt, NULL) == LASYNC_OK);
  L = lasync_lua(rt);
  CHECK(strcmp(lasync_version(), "0.0.0") > 0);
  CHECK(lasync_spawn_string(rt, "error('named failure')", "=named", &t) == 0);
  CHECK(lasync_task_set_name(t, "worker-2") == LASYNC_OK);
  CHECK(lasync_task_set_name(t, NULL) == LASYNC_EINVAL);
  CHECK(lasync_spawn_string(rt, "require('lasync').sleep(100)", "=sleeper", &sleeper) == 0);
  /* INFINITY is no limit (it was an undefined cast); NaN and negatives are refused. */
  CHECK(lasync_step(rt, 1.0 / 0.0) == 1);
  CHECK(lasync_step(rt, 0.0 / 0.0) == LASYNC_EINVAL);
  CHECK(lasync_step(rt, -1) == LASYNC_EINVAL);
  CHECK(lasync_task_status(t) == LASYNC_TASK_FAILED);
  report = lasync_task_report(t, L);
  CHECK(report && strncmp(report, "task 'worker-2' failed: named:1: named failure", 46) == 0);
  CHECK(report && strstr(report, "stack traceback") != NULL);
  lua_pop(L, 1);
  CHECK(lasync_task_report(sleeper, L) == NULL); /* it has not failed */
  CHECK(lasync_cancel_all(rt, "host shutting down") == LASYNC_OK);
  do alive = lasync_step(rt, 5); while (alive > 0 && ++steps < 1000);
  CHECK(alive == 0 && lasync_task_status(sleeper) == LASYNC_TASK_CANCELLED);
  CHECK(lasync_task_result(sleeper, L) == LASYNC_ELUA);
  lua_getfield(L, -1, "message");
  CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "host shutting down") == 0);
  lua_pop(L, 2);
  lasync_task_release(t);
  lasync_task_release(sleeper);
  CHECK(lasync_destroy(rt) == LASYNC_OK);
}

/* A task handle's calls from a thread that does not own the runtime are refused. */
static void task_calls_from_other_thread(void *arg) {
  lasync_task *t = (lasync_task *)arg;
  lua_State *L = lasync_lua(foreign_rt);
  CHECK(lasync_task_result(t, L) == LASYNC_ETHREAD);
  CHECK(lasync_task_set_name(t, "x") == LASYNC_ETHREAD);
  lasync_task_release(t); /* refused: the handle stays held */
}

static void test_task_handle_outlives_runtime(void) {
  lasync_task *t, *pending;
  uv_thread_t thread;
  int n;
  CHECK(lasync_new(&foreign_rt, NULL) == LASYNC_OK);
  CHECK(lasync_spawn_string(foreign_rt, "return 42", "=t", &t) == LASYNC_OK);
  CHECK(lasync_spawn_string(foreign_rt, "require('lasync').sleep(60)", "=p", &pending) == 0);
  CHECK(lasync_step(foreign_rt, 5) >= 0);
  CHECK(uv_thread_create(&thread, task_calls_from_other_thread, t) == 0);
  CHECK(uv_thread_join(&thread) == 0);
  n = lasync_task_result(t, lasync_lua(foreign_rt)); /* still held after the refused release */
  CHECK(n == 1 && lua_tointeger(lasync_lua(foreign_rt), -1) == 42);
  lua_pop(lasync_lua(foreign_rt), n > 0 ? n : 0);
  CHECK(lasync_destroy(foreign_rt) == LASYNC_OK); /* cancels the sleeper */
  /* After destroy (the order futures allow): refused, no freed memory read (ASan). */
  CHECK(lasync_task_status(t) == LASYNC_TASK_DONE);
  CHECK(lasync_task_status(pending) == LASYNC_TASK_CANCELLED);
  CHECK(lasync_task_cancel(pending) == LASYNC_ESTATE);
  CHECK(lasync_task_set_name(t, "late") == LASYNC_ESTATE);
  lasync_task_release(t);
  lasync_task_release(pending);
}

/* `embed_test futures` runs only the tests about C futures and threads (make tsan: the rest
 * reaches libcurl and the test server, which ThreadSanitizer does not see into). */
int main(int argc, char **argv) {
  uv_thread_t server;
  int only_futures = argc > 1 && strcmp(argv[1], "futures") == 0;
  if (only_futures) {
    RUN(test_futures_from_loop_and_threads);
    RUN(test_future_outlives_runtime);
    RUN(test_futures_race_threads);
    RUN(test_task_handle_outlives_runtime);
    return checks_report("embed_test futures");
  }
  start_server(&server);
  RUN(test_own_state_and_loop);
  RUN(test_attach_to_state_and_loop);
  RUN(test_step_budget);
  RUN(test_step_stops_before_budget);
  RUN(test_futures_from_loop_and_threads);
  RUN(test_destroy_with_pending_tasks_and_errors);
  RUN(test_misuse_is_refused);
  RUN(test_future_outlives_runtime);
  RUN(test_futures_race_threads);
  RUN(test_host_api);
  RUN(test_burst_of_c_started_tasks);
  RUN(test_task_resumed_past_the_scheduler);
  RUN(test_fetches_admitted_per_step);
  RUN(test_task_handle_outlives_runtime);
  stop_server(&server);
  return checks_report("embed_test");
}
