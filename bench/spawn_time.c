/* spawn_time N CMD [ARG...]: runs CMD N times, one after another (after 3 unmeasured warm-up
 * runs), with stdin, stdout and stderr on /dev/null, and prints the median wall time from spawn
 * to exit as `wall=<seconds>`, then `min=` and `max=`: the start-up workloads of bench/run,
 * where the program measured is the whole process. posix_spawn, as hyperfine does, so the
 * harness adds no fork of a large parent to what is measured. Exits 1 if any run fails. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* One run: its wall time, or -1 if it could not start or did not exit 0. */
static double run(char **argv, const posix_spawn_file_actions_t *io) {
  pid_t pid;
  int status;
  double t0 = now();
  if (posix_spawnp(&pid, argv[0], io, NULL, argv, environ) != 0) return -1;
  if (waitpid(pid, &status, 0) != pid) return -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return now() - t0;
}

int main(int argc, char **argv) {
  posix_spawn_file_actions_t io;
  double *times;
  int n, i;
  if (argc < 3 || (n = atoi(argv[1])) < 1) {
    fprintf(stderr, "usage: spawn_time N CMD [ARG...]\n");
    return 2;
  }
  times = (double *)malloc((size_t)n * sizeof *times);
  if (times == NULL) return 2;
  posix_spawn_file_actions_init(&io);
  posix_spawn_file_actions_addopen(&io, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&io, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&io, 2, "/dev/null", O_WRONLY, 0);
  for (i = 0; i < 3; i++) run(argv + 2, &io);
  for (i = 0; i < n; i++) {
    if ((times[i] = run(argv + 2, &io)) < 0) {
      fprintf(stderr, "spawn_time: %s failed\n", argv[2]);
      return 1;
    }
  }
  qsort(times, (size_t)n, sizeof *times, cmp);
  printf("wall=%.6f\nmin=%.6f\nmax=%.6f\n",
         n % 2 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2, times[0], times[n - 1]);
  posix_spawn_file_actions_destroy(&io);
  free(times);
  return 0;
}
