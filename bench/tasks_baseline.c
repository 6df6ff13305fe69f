/* The plain-C baseline for bench/tasks.lua: the same two workloads written directly against
 * libuv, with no Lua, so bench/run can report how far lasync is from the floor.
 *
 *   tasks_baseline sleep N     N "tasks", each one uv_timer_t firing after 10 ms; gathered by
 *                              counting completions, then every handle is closed.
 *   tasks_baseline trivial N   N "tasks" that return at once: each a small heap-allocated struct
 *                              (function pointer + argument) queued now and run on a later loop
 *                              turn from a uv_check handle; results go to an array; gathered by
 *                              counting completions.
 *
 * Prints `wall=<seconds>`, measured with uv_hrtime from before the first task is created to
 * after the last one is gathered (and, for sleep, its handle closed). Exit status 1 on misuse or
 * if a check fails. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) {
    fprintf(stderr, "tasks_baseline: out of memory\n");
    exit(1);
  }
  return p;
}

/* ---- sleep: one timer per task ---------------------------------------------------------- */

static size_t sleep_done, sleep_closed;

static void on_close(uv_handle_t *h) { sleep_closed++; }

static void on_timer(uv_timer_t *t) { sleep_done++; }

static int run_sleep(uv_loop_t *loop, size_t n) {
  uint64_t t0 = uv_hrtime();
  uv_update_time(loop); /* so each 10 ms counts from t0, not from when the loop was made */
  uv_timer_t *timers = xmalloc(n * sizeof *timers);
  for (size_t i = 0; i < n; i++) {
    uv_timer_init(loop, &timers[i]);
    uv_timer_start(&timers[i], on_timer, 10, 0);
  }
  /* "gather": the loop runs until every timer has fired (each is then inactive). */
  uv_run(loop, UV_RUN_DEFAULT);
  if (sleep_done != n) {
    fprintf(stderr, "tasks_baseline: %zu of %zu timers fired\n", sleep_done, n);
    return 1;
  }
  for (size_t i = 0; i < n; i++) uv_close((uv_handle_t *)&timers[i], on_close);
  uv_run(loop, UV_RUN_DEFAULT);
  uint64_t t1 = uv_hrtime();
  free(timers);
  if (sleep_closed != n) {
    fprintf(stderr, "tasks_baseline: %zu of %zu timers closed\n", sleep_closed, n);
    return 1;
  }
  printf("wall=%.6f\n", (double)(t1 - t0) / 1e9);
  return 0;
}

/* ---- trivial: a queue of callbacks drained on a later loop turn --------------------------- */

typedef struct task {
  struct task *next;
  intptr_t (*fn)(intptr_t);
  intptr_t arg;
  size_t index;
} task;

static task *queue_head, *queue_tail;
static intptr_t *results;
static size_t trivial_done, trivial_n;
static uv_check_t drain;
static uv_idle_t keep_polling; /* makes the loop poll with timeout 0 while tasks are queued */

static intptr_t identity(intptr_t x) { return x; }

static void spawn(intptr_t (*fn)(intptr_t), intptr_t arg, size_t index) {
  task *t = xmalloc(sizeof *t);
  t->next = NULL;
  t->fn = fn;
  t->arg = arg;
  t->index = index;
  if (queue_tail)
    queue_tail->next = t;
  else
    queue_head = t;
  queue_tail = t;
}

static void on_check(uv_check_t *c) {
  /* Run what was queued before this turn; anything queued meanwhile waits for the next one. */
  task *t = queue_head;
  queue_head = queue_tail = NULL;
  while (t) {
    task *next = t->next;
    results[t->index] = t->fn(t->arg);
    trivial_done++;
    free(t);
    t = next;
  }
  if (trivial_done == trivial_n) {
    uv_check_stop(&drain);
    uv_idle_stop(&keep_polling);
  }
}

static void on_idle(uv_idle_t *i) {}

static int run_trivial(uv_loop_t *loop, size_t n) {
  uint64_t t0 = uv_hrtime();
  trivial_n = n;
  results = xmalloc(n * sizeof *results);
  uv_check_init(loop, &drain);
  uv_idle_init(loop, &keep_polling);
  for (size_t i = 0; i < n; i++) spawn(identity, (intptr_t)(i + 1), i);
  uv_check_start(&drain, on_check);
  uv_idle_start(&keep_polling, on_idle);
  /* "gather": run until every task has completed. */
  uv_run(loop, UV_RUN_DEFAULT);
  uint64_t t1 = uv_hrtime();
  int bad = trivial_done != n;
  for (size_t i = 0; i < n && !bad; i++) bad = results[i] != (intptr_t)(i + 1);
  uv_close((uv_handle_t *)&drain, NULL);
  uv_close((uv_handle_t *)&keep_polling, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  free(results);
  if (bad) {
    fprintf(stderr, "tasks_baseline: %zu of %zu tasks completed, or a result was wrong\n",
            trivial_done, n);
    return 1;
  }
  printf("wall=%.6f\n", (double)(t1 - t0) / 1e9);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3 || (strcmp(argv[1], "sleep") && strcmp(argv[1], "trivial"))) {
    fprintf(stderr, "usage: %s sleep|trivial N\n", argv[0]);
    return 1;
  }
  char *end;
  unsigned long long n = strtoull(argv[2], &end, 10);
  if (*argv[2] == '\0' || *end != '\0' || n == 0) {
    fprintf(stderr, "%s: N must be a positive integer, got '%s'\n", argv[0], argv[2]);
    return 1;
  }
  uv_loop_t *loop = uv_default_loop();
  int rc = strcmp(argv[1], "sleep") == 0 ? run_sleep(loop, (size_t)n)
                                         : run_trivial(loop, (size_t)n);
  if (uv_loop_close(loop) != 0) {
    fprintf(stderr, "%s: loop still has open handles\n", argv[0]);
    rc = 1;
  }
  return rc;
}
