/* The plain-C floor of bench/threads.lua's `jobs` workload: N jobs that return their argument,
 * INFLIGHT at once, run by a pool of THREADS pthreads (default: the CPUs libuv sees) fed from
 * a mutex + condition queue, with completions handed back to a libuv loop through a uv_async,
 * where each finished job submits the next. No Lua, no copying: what any thread pool with a
 * loop in front of it costs.
 *
 *   threads_baseline jobs N INFLIGHT        prints wall=<seconds>
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct job {
  struct job *next;
  long arg, result;
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static job *qhead, *qtail, *dhead;
static int stopping, idle;
static uv_async_t async;
static long n, submitted, completed;

static void submit(job *j) {
  pthread_mutex_lock(&lock);
  j->next = NULL;
  if (qtail)
    qtail->next = j;
  else
    qhead = j;
  qtail = j;
  if (idle) pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
}

static void *worker(void *arg) {
  (void)arg;
  pthread_mutex_lock(&lock);
  for (;;) {
    job *j;
    while (!qhead && !stopping) {
      idle++;
      pthread_cond_wait(&cond, &lock);
      idle--;
    }
    if (!qhead) break;
    j = qhead;
    qhead = j->next;
    if (!qhead) qtail = NULL;
    pthread_mutex_unlock(&lock);
    j->result = j->arg; /* the job */
    pthread_mutex_lock(&lock);
    j->next = dhead;
    dhead = j;
    pthread_mutex_unlock(&lock);
    uv_async_send(&async);
    pthread_mutex_lock(&lock);
  }
  pthread_mutex_unlock(&lock);
  return NULL;
}

static void on_async(uv_async_t *h) {
  job *j;
  pthread_mutex_lock(&lock);
  j = dhead;
  dhead = NULL;
  pthread_mutex_unlock(&lock);
  while (j) {
    job *next = j->next;
    if (j->result != j->arg) abort();
    completed++;
    if (submitted < n) {
      j->arg = ++submitted;
      submit(j);
    } else {
      free(j);
    }
    j = next;
  }
  if (completed == n) uv_close((uv_handle_t *)h, NULL);
}

int main(int argc, char **argv) {
  long inflight, i;
  int threads = (int)uv_available_parallelism(), t;
  const char *env = getenv("LASYNC_THREADS");
  pthread_t *tids;
  uint64_t t0;
  if (argc < 4 || strcmp(argv[1], "jobs") != 0) {
    fprintf(stderr, "usage: %s jobs N INFLIGHT\n", argv[0]);
    return 2;
  }
  if (env && atoi(env) > 0) threads = atoi(env);
  n = atol(argv[2]);
  inflight = atol(argv[3]);
  uv_async_init(uv_default_loop(), &async, on_async);
  tids = calloc((size_t)threads, sizeof *tids);
  for (t = 0; t < threads; t++) pthread_create(&tids[t], NULL, worker, NULL);
  t0 = uv_hrtime();
  for (i = 0; i < inflight && submitted < n; i++) {
    job *j = calloc(1, sizeof *j);
    j->arg = ++submitted;
    submit(j);
  }
  uv_run(uv_default_loop(), UV_RUN_DEFAULT);
  printf("jobs=%ld inflight=%ld threads=%d\nwall=%.6f\n", n, inflight, threads,
         (double)(uv_hrtime() - t0) / 1e9);
  pthread_mutex_lock(&lock);
  stopping = 1;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  for (t = 0; t < threads; t++) pthread_join(tids[t], NULL);
  free(tids);
  return 0;
}
