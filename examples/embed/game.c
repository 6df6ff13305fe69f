/* A stand-in for a game embedding lasync: a 60 Hz frame loop that gives the scripts 2 ms per
 * frame with lasync_step(), and two C-defined awaitables:
 *
 *   game.wait_frames(n)   resolved by the frame loop n frames later
 *   game.load_asset(name) loaded on lasync's thread pool (lasync_await_work)
 *
 * Run: build/examples/embed/game examples/embed/game.lua [base_url]
 * With a base URL (the local test server, see examples/embed/README.md) the script also
 * fetches while the frames go on. It prints each frame's step time, then a summary. */
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lasync.h"

#define FRAME_MS (1000.0 / 60.0)
#define STEP_BUDGET_MS 2.0
#define MAX_FRAMES 600
#define MAX_WAITERS 256

/* Futures to resolve at a given frame: what game.wait_frames hands to the frame loop. */
static struct {
  lasync_future *future;
  long frame;
} waiters[MAX_WAITERS];
static int nwaiters;
static long frame;

static int l_wait_frames(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 0) return luaL_argerror(L, 1, "frame count must be >= 0");
  if (nwaiters == MAX_WAITERS) return luaL_error(L, "game.wait_frames: too many waiters");
  if ((waiters[nwaiters].future = lasync_future_new(L)) == NULL)
    return luaL_error(L, "game.wait_frames: out of memory");
  waiters[nwaiters].frame = frame + n;
  return lasync_await(L, waiters[nwaiters++].future);
}

/* The frame loop settles the waits that are due, passing the current frame number. */
static void resolve_due_waits(lua_State *L) {
  int i = 0;
  while (i < nwaiters) {
    if (waiters[i].frame <= frame) {
      lua_pushinteger(L, frame);
      lasync_future_resolve(waiters[i].future, L, 1); /* a no-op if its task was cancelled */
      lasync_future_release(waiters[i].future);
      waiters[i] = waiters[--nwaiters];
    } else {
      i++;
    }
  }
}

/* game.load_asset(name): the blocking load runs on lasync's thread pool (lasync_await_work),
 * and the task that asked gets the asset, or an error, once it is done. */
typedef struct {
  char name[64];
  int bytes;
} load_job;

/* On a pool thread: the blocking part. It never touches Lua. */
static void load_in_worker(lasync_work *w, void *arg) {
  load_job *job = (load_job *)arg;
  int i;
  for (i = 0; i < 50; i++) { /* disk, decoding, ...: 50 ms, giving up early when cancelled */
    if (lasync_work_cancelled(w)) return;
    uv_sleep(1);
  }
  if (strstr(job->name, "missing"))
    lasync_work_fail(w, "no such asset");
  else
    job->bytes = (int)strlen(job->name) * 1000;
}

/* On the loop's thread, in the task that asked; L is NULL when nobody will see the asset (the
 * task was cancelled, the load failed): the job ends here either way. */
static int push_asset(lua_State *L, void *arg) {
  load_job *job = (load_job *)arg;
  if (L) lua_pushfstring(L, "<asset %s, %d bytes>", job->name, job->bytes);
  free(job);
  return L ? 1 : 0;
}

static int l_load_asset(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  load_job *job = (load_job *)calloc(1, sizeof *job);
  if (job == NULL) return luaL_error(L, "game.load_asset: out of memory");
  snprintf(job->name, sizeof job->name, "%s", name);
  return lasync_await_work(L, load_in_worker, push_asset, job);
}

static int l_frame(lua_State *L) {
  lua_pushinteger(L, frame);
  return 1;
}

/* This thread's CPU time, ms: beside a step's wall time it tells the step's own work from the
 * time the machine ran something else meanwhile (on a shared machine, most slow steps). */
static double cpu_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void on_error(lasync_runtime *rt, const char *report, void *data) {
  (void)rt;
  (void)data;
  fprintf(stderr, "script error: %s\n", report);
}

int main(int argc, char **argv) {
  static const luaL_Reg game[] = {{"wait_frames", l_wait_frames},
                                  {"load_asset", l_load_asset},
                                  {"frame", l_frame},
                                  {NULL, NULL}};
  static double steps[MAX_FRAMES], cpu[MAX_FRAMES];
  lasync_runtime *rt;
  lasync_options opts;
  lua_State *L;
  int alive = 1, err, quiet = argc > 3 && strcmp(argv[3], "--quiet") == 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script.lua [base_url] [--quiet]\n", argv[0]);
    return 2;
  }
  memset(&opts, 0, sizeof opts);
  opts.on_error = on_error;
  if ((err = lasync_new(&rt, &opts)) != LASYNC_OK) {
    fprintf(stderr, "lasync_new: %s\n", lasync_strerror(err));
    return 1;
  }
  L = lasync_lua(rt);
  luaL_newlib(L, game);
  lua_setglobal(L, "game");
  lua_pushstring(L, argc > 2 ? argv[2] : "");
  lua_setglobal(L, "BASE_URL");
  if ((err = lasync_spawn_file(rt, argv[1], NULL)) != LASYNC_OK) {
    fprintf(stderr, "%s: %s\n", lasync_strerror(err), lua_tostring(L, -1));
    lasync_destroy(rt);
    return 1;
  }

  for (frame = 0; frame < MAX_FRAMES && alive > 0; frame++) {
    double start = (double)uv_hrtime() / 1e6, start_cpu = cpu_ms(), spent;
    resolve_due_waits(L);
    alive = lasync_step(rt, STEP_BUDGET_MS);
    spent = (double)uv_hrtime() / 1e6 - start;
    steps[frame] = spent;
    cpu[frame] = cpu_ms() - start_cpu;
    if (!quiet)
      printf("frame %3ld: step %.3f ms (%.3f ms on the CPU), %d task(s) alive\n", frame, spent,
             cpu[frame], alive);
    /* The rest of the frame is the game's: render, then sleep until the next tick. */
    if (spent < FRAME_MS) uv_sleep((unsigned int)(FRAME_MS - spent));
  }

  if (frame > 0) {
    long n = frame;
    qsort(steps, (size_t)n, sizeof steps[0], compare);
    qsort(cpu, (size_t)n, sizeof cpu[0], compare);
    printf("%ld frames at 60 Hz with a %.0f ms budget: step p50 %.3f ms, p99 %.3f ms, "
           "worst %.3f ms; on the CPU p99 %.3f ms, max %.3f ms\n", n, STEP_BUDGET_MS,
           steps[n / 2], steps[(n * 99) / 100], steps[n - 1], cpu[(n * 99) / 100], cpu[n - 1]);
  }
  /* The right shutdown: lasync_step() counted the futures the workers still hold, so at 0
   * nothing is left out on another thread. If the frames ran out first, destroying is still
   * safe: a worker's late resolve is then a no-op and its handle outlives the runtime. */
  lasync_destroy(rt);
  while (nwaiters > 0) lasync_future_release(waiters[--nwaiters].future);
  return 0;
}
