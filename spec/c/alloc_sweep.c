/* The allocation-failure sweep, as Lua's own tests do (ltests.c's memory limits, curl's
 * "torture"): a lua_Alloc that fails the Nth allocation once armed, over representative
 * scenarios, for N = 1, 2, 3, ... until a scenario completes without reaching allocation N.
 *
 * For every N the run must end in an error that surfaces through the API — the task fails
 * (LASYNC_ELUA from lasync_task_result), the chunk does not load (LASYNC_ELUA from
 * lasync_spawn_string), or lasync_run refuses (LASYNC_E*) — never in a crash or a Lua panic
 * (an unprotected error, which would abort a real host), and lasync_destroy must then work.
 * Under `make sanitize` the sweep runs with ASan and leak detection, so a leak on any error path
 * fails it too.
 *
 * One "failure" is one logical allocation failure: Lua answers a failed allocation with an
 * emergency collection and retries the same request once (lmem.c, tryagain), so the retry
 * fails as well; after that the allocator works again, as after a transient shortage. Lua
 * assumes shrinking never fails, so only growing requests count.
 *
 *   alloc_sweep                 every scenario, every N
 *   alloc_sweep NAME [N]        one scenario, optionally one N (for a debugger)
 *   ALLOC_SWEEP_KEEP_GOING=1    on a panic, report it and go on to the next N (leaks the
 *                               state), to list every bad N in one run
 *   ALLOC_SWEEP_VERBOSE=1       name each N whose task waited for ever and was cancelled (the
 *                               failure hit another task, e.g. the one that was to set a future)
 */
#include <lauxlib.h>
#include <lualib.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lasync.h"

/* ---- the failing allocator ---- */

static struct {
  int armed;
  long count;     /* growing allocations since arming */
  long fail_at;   /* the one to fail */
  int failed;     /* it happened */
  int retry_pending;
  void *retry_ptr;
  size_t retry_osize, retry_nsize;
} A;

static void *sweep_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (A.armed && (ptr == NULL || nsize > osize)) {
    if (A.retry_pending) {
      A.retry_pending = 0;
      if (ptr == A.retry_ptr && osize == A.retry_osize && nsize == A.retry_nsize) return NULL;
    }
    if (!A.failed && ++A.count == A.fail_at) {
      A.failed = 1;
      A.retry_pending = 1;
      A.retry_ptr = ptr;
      A.retry_osize = osize;
      A.retry_nsize = nsize;
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}

static void arm(long n) {
  memset(&A, 0, sizeof A);
  A.fail_at = n;
  A.armed = 1;
}

static void disarm(void) { A.armed = 0; }

/* ---- panics: an error outside any protected call ---- */

static jmp_buf panic_jmp;
static int keep_going;
static long current_n;
static const char *current_scenario;

static int on_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "PANIC: scenario %s, N=%ld: unprotected error: %s\n", current_scenario,
          current_n, msg ? msg : "(not a string)");
  if (keep_going) longjmp(panic_jmp, 1);
  abort();
  return 0;
}

#include "local_server.h"

/* ---- scenarios ---- */

typedef struct {
  const char *name;
  const char *code;
  const char *expect; /* the task's first result when nothing failed */
} scenario;

static const scenario SCENARIOS[] = {
  { "gather",
    "local async = require 'lasync'\n"
    "local function child(i) async.sleep(0.001 * i); return i * 10 end\n"
    "local r = async.gather(async.spawn(child, 1), async.spawn(child, 2),\n"
    "                       function() return child(3) end)\n"
    "return r[1] + r[2] + r[3]",
    "60" },
  { "timeout",
    "local async = require 'lasync'\n"
    "local closed = false\n"
    "local ok, e = pcall(async.timeout, 0.002, function()\n"
    "  local guard <close> = setmetatable({}, {__close = function() closed = true end})\n"
    "  async.sleep(10)\n"
    "end)\n"
    "assert(not ok and async.is_timeout(e) and closed, tostring(e))\n"
    "return 'timed out'",
    "timed out" },
  { "future",
    "local async = require 'lasync'\n"
    "local f = async.future()\n"
    "local setter = async.spawn(function() async.sleep(0.001); f:set('late', 2) end)\n"
    "local a, b = f:await()\n"
    "setter:await()\n"
    "return a .. b",
    "late2" },
  { "fetch",
    "local async = require 'lasync'\n"
    "local res = async.fetch(URL, { timeout = 5 })\n"
    "return res.body .. res.status",
    "hello200" },
  { "cancel",
    "local async = require 'lasync'\n"
    "local t = async.spawn(function() async.sleep(10) end)\n"
    "async.sleep(0)\n"
    "t:cancel('stop')\n"
    "local ok, e = pcall(t.await, t)\n"
    "assert(not ok and async.is_cancelled(e))\n"
    "return 'cancelled'",
    "cancelled" },
  { "thread", /* the loop's side of a job: encoding, the request, decoding, the error object */
    "local async = require 'lasync'\n"
    "local sum, list = async.to_thread(function(t) return t.a + t.b, { t.a } end, { a = 4, b = 5 })\n"
    "local ok, e = pcall(async.to_thread, function() error('boom') end)\n"
    "assert(not ok and (e.kind == 'thread' or e == 'not enough memory'), tostring(e))\n"
    "ok, e = pcall(async.to_thread, function(x) return x end, { f = io.stdout })\n"
    "assert(not ok and (e.kind == 'invalid' or e == 'not enough memory'), tostring(e))\n"
    "return sum + list[1]",
    "13" },
  /* The callback paths of issue 9 section 1, each of which once allocated unprotected: */
  { "multivalue",
    "local async = require 'lasync'\n"
    "local t = async.spawn(function() async.sleep(0) return 1, 2, 3, 4 end)\n"
    "local a, b, c, d = t:await()\n"
    "return tostring(a + b + c + d)",
    "10" },
  { "unawaited",
    "local async = require 'lasync'\n"
    "async.spawn(function() error('nobody awaits this') end)\n"
    "async.sleep(0.001)\n"
    "return 'ok'",
    "ok" },
  { "unstarted",
    "local async = require 'lasync'\n"
    "local t = async.spawn(function() end)\n"
    "t:cancel()\n"
    "local ok, e = pcall(t.await, t)\n"
    "return tostring(ok)", /* cancelled, or failed with 'not enough memory' in its stead */
    "false" },
  /* Tasks that start in one turn run one after another on one coroutine (runtime.c,
   * take_chained): a failure while one settles (its results, its sentinel, its traceback) or
   * while the next one starts there, and a <close> that suspends while a chained one fails. */
  { "burst",
    "local async = require 'lasync'\n"
    "local function work(x)\n"
    "  if x == 2 then\n"
    "    local guard <close> = setmetatable({}, {__close = function() async.sleep(0) end})\n"
    "    error('two')\n"
    "  end\n"
    "  return x, 10 * x\n"
    "end\n"
    "local ts = {}\n"
    "for i = 1, 3 do ts[i] = async.spawn(work, i) end\n"
    "async.spawn(function() error('nobody awaits this') end)\n"
    "ts[4] = async.spawn(work, 4)\n"
    "local sum = 0\n"
    "for i = 1, 4 do\n"
    "  local ok, a, b = pcall(ts[i].await, ts[i])\n"
    "  if ok then sum = sum + a + b elseif i ~= 2 then error(a, 0) end\n"
    "end\n"
    "return tostring(sum)",
    "88" },
  { "cfuture",
    "local a, b = c_future()\n"
    "return a .. b",
    "c3" },
};

/* c_future(): a future settled from C with two values, through the cross-thread queue. */
static int push_values(lua_State *L, void *arg) {
  (void)arg;
  if (L == NULL) return 0;
  lua_pushliteral(L, "c");
  lua_pushinteger(L, 3);
  return 2;
}

static int l_c_future(lua_State *L) {
  lasync_future *f = lasync_future_new(L);
  if (f == NULL) return luaL_error(L, "not enough memory");
  lasync_future_resolve_async(f, push_values, NULL);
  lua_pushlightuserdata(L, f);
  lua_setfield(L, LUA_REGISTRYINDEX, "sweep_future"); /* released by run_once */
  return lasync_await(L, f);
}

enum outcome { OK_SUCCESS, OK_FAILED_CLEANLY, BAD };

static int failures;
static long lost_wakeups;

#define BAD_IF(cond, ...)                                                             \
  do {                                                                                \
    if (cond) {                                                                       \
      fprintf(stderr, "FAIL: scenario %s, N=%ld: ", current_scenario, current_n);     \
      fprintf(stderr, __VA_ARGS__);                                                   \
      fprintf(stderr, "\n");                                                          \
      failures++;                                                                     \
      result = BAD;                                                                   \
    }                                                                                 \
  } while (0)

static int finished(lasync_task *t) {
  lasync_task_status_t st = lasync_task_status(t);
  return st == LASYNC_TASK_DONE || st == LASYNC_TASK_FAILED || st == LASYNC_TASK_CANCELLED;
}

static char last_report[256];
static void on_error(lasync_runtime *rt, const char *report, void *data) {
  (void)rt;
  (void)data;
  snprintf(last_report, sizeof last_report, "%s", report);
}

/* One run of a scenario with allocation n failing (n = 0: none). */
static enum outcome run_once(const scenario *s, long n, int *hit) {
  lua_State *L;
  lasync_runtime *rt = NULL;
  lasync_options opts;
  lasync_task *t = NULL;
  volatile enum outcome result = OK_FAILED_CLEANLY;
  int rc, nres;

  current_n = n;
  disarm();
  L = lua_newstate(sweep_alloc, NULL);
  if (L == NULL) {
    fprintf(stderr, "lua_newstate failed unarmed\n");
    exit(2);
  }
  lua_atpanic(L, on_panic);
  luaL_openlibs(L);
  memset(&opts, 0, sizeof opts);
  opts.L = L;
  opts.on_error = on_error;
  if (lasync_new(&rt, &opts) != LASYNC_OK) {
    fprintf(stderr, "lasync_new failed unarmed\n");
    exit(2);
  }
  lua_pushstring(L, server_url);
  lua_setglobal(L, "URL");
  lua_register(L, "c_future", l_c_future);
  /* The slot exists before the sweep: storing the handle into it then cannot fail, so a
   * memory error cannot lose a handle C must release. */
  lua_pushboolean(L, 0);
  lua_setfield(L, LUA_REGISTRYINDEX, "sweep_future");

  if (setjmp(panic_jmp)) { /* only with ALLOC_SWEEP_KEEP_GOING: abandon this state */
    disarm();
    failures++;
    *hit = 1;
    return BAD;
  }

  if (n > 0) arm(n);
  rc = lasync_spawn_string(rt, s->code, s->name, &t);
  if (rc == LASYNC_ELUA) {
    BAD_IF(t != NULL, "a load error still gave a task");
    lua_pop(L, 1); /* the message */
  } else {
    BAD_IF(rc != LASYNC_OK && rc != LASYNC_ENOMEM, "lasync_spawn_string: %d", rc);
    if (rc == LASYNC_OK) {
      /* Drive the loop until the scenario's task ends, as a game would, frame by frame; what
       * it leaves behind (a sleeper whose cancel failed) is left to lasync_destroy. */
      int idle = 0;
      while (!finished(t)) {
        int timeout;
        if (lasync_step(rt, 5) == 0) break;
        timeout = lasync_backend_timeout(rt);
        /* -1 with the loop alive is work out on another thread (a job of the thread pool): it
         * will post back. With nothing alive, only another thread can wake what is left (a
         * future C holds): give that a while, then count it as a lost wake-up. */
        if (timeout < 0 && !uv_loop_alive(lasync_loop(rt)) && ++idle > 200) break;
        if (timeout != 0) uv_sleep(1);
      }
      if (!finished(t)) { /* a task lost its wake-up to the failure: cancel it */
        lost_wakeups++;
        if (getenv("ALLOC_SWEEP_VERBOSE"))
          fprintf(stderr, "note: scenario %s, N=%ld: the task waits for ever (another task failed); "
                          "cancelled\n", current_scenario, n);
        lasync_task_cancel(t);
        rc = lasync_run(rt);
        BAD_IF(rc != LASYNC_OK && rc != LASYNC_EBUSY, "lasync_run after cancel: %d", rc);
      }
      if (finished(t)) {
        disarm(); /* reading the outcome is the embedder's business, not under test */
        nres = lasync_task_result(t, L);
        if (nres >= 1) {
          const char *v = lua_tostring(L, -nres);
          if (v && strcmp(v, s->expect) == 0 && !A.failed) result = OK_SUCCESS;
          BAD_IF(v == NULL || strcmp(v, s->expect) != 0, "succeeded with %s, expected %s",
                 v ? v : "(not a string)", s->expect);
          lua_pop(L, nres);
        } else if (nres == LASYNC_ELUA) {
          if (n == 0) fprintf(stderr, "scenario %s: %s\n", s->name, luaL_tolstring(L, -1, NULL));
          lua_settop(L, 0);
        } else {
          BAD_IF(1, "lasync_task_result: %d", nres);
        }
      } else {
        BAD_IF(lasync_task_status(t) != LASYNC_TASK_CANCELLED && lasync_task_status(t) != LASYNC_TASK_RUNNING &&
                   lasync_task_status(t) != LASYNC_TASK_PENDING,
               "task status %d", (int)lasync_task_status(t));
      }
      lasync_task_release(t);
    }
  }
  *hit = A.failed;
  disarm();
  BAD_IF(lua_gettop(L) != 0, "%d values left on the main stack", lua_gettop(L));
  lua_getfield(L, LUA_REGISTRYINDEX, "sweep_future");
  {
    lasync_future *f = (lasync_future *)lua_touserdata(L, -1); /* NULL for the false */
    lua_pop(L, 1);
    BAD_IF(lasync_destroy(rt) != LASYNC_OK, "lasync_destroy failed");
    if (f) lasync_future_release(f); /* after destroy: the handle outlives the runtime */
  }
  lua_close(L);
  return result;
}

/* lasync_new itself, on a state of its own: every allocation it makes fails in turn; it must
 * answer LASYNC_ENOMEM (with nothing left behind: ASan's leak check) or succeed. */
static void sweep_new(void) {
  long n;
  int bad = 0;
  for (n = 1;; n++) {
    lasync_runtime *rt = NULL;
    lasync_options opts;
    int rc;
    current_scenario = "new";
    current_n = n;
    memset(&opts, 0, sizeof opts);
    opts.alloc = sweep_alloc;
    disarm();
    arm(n);
    rc = lasync_new(&rt, &opts);
    if (rc == LASYNC_OK) {
      int hit = A.failed;
      disarm();
      if (lasync_destroy(rt) != LASYNC_OK) bad++;
      if (!hit) break;
    } else if (rc != LASYNC_ENOMEM || rt != NULL) {
      fprintf(stderr, "FAIL: lasync_new with allocation %ld failing: %d\n", n, rc);
      bad++;
    }
    disarm();
  }
  failures += bad;
  printf("%-10s %5ld allocation points, each failed once: %d bad\n", "new", n - 1, bad);
}

static int sweep(const scenario *s, long only) {
  long n;
  int hit;
  long bad_before = failures;
  enum outcome o;
  current_scenario = s->name;
  o = run_once(s, 0, &hit);
  if (o != OK_SUCCESS) {
    fprintf(stderr, "scenario %s fails with no allocation failure\n", s->name);
    failures++;
    return 1;
  }
  if (only > 0) {
    o = run_once(s, only, &hit);
    printf("%s N=%ld: %s, failure %s\n", s->name, only,
           o == OK_SUCCESS ? "succeeded" : o == OK_FAILED_CLEANLY ? "failed cleanly" : "BAD",
           hit ? "hit" : "not reached");
    return o == BAD;
  }
  for (n = 1;; n++) {
    o = run_once(s, n, &hit);
    if (!hit) {
      if (o != OK_SUCCESS) fprintf(stderr, "scenario %s, N=%ld: not hit, yet not a success\n",
                                   s->name, n);
      break;
    }
  }
  printf("%-10s %5ld allocation points, each failed once: %ld bad, %ld cancelled deadlocks\n", s->name,
         n - 1, failures - bad_before, lost_wakeups);
  lost_wakeups = 0;
  return 0;
}

int main(int argc, char **argv) {
  size_t i;
  uv_thread_t server;
  keep_going = getenv("ALLOC_SWEEP_KEEP_GOING") != NULL;
  setvbuf(stdout, NULL, _IOLBF, 0);
  start_server(&server);
  if (argc == 1 || strcmp(argv[1], "new") == 0) sweep_new();
  for (i = 0; i < sizeof SCENARIOS / sizeof *SCENARIOS; i++) {
    if (argc > 1 && strcmp(argv[1], SCENARIOS[i].name) != 0) continue;
    sweep(&SCENARIOS[i], argc > 2 ? atol(argv[2]) : 0);
  }
  stop_server(&server);
  if (failures) fprintf(stderr, "%d bad runs\n", failures);
  return failures ? 1 : 0;
}
