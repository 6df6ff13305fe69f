/* The mapped side of bindings/core/alloc.c on its own (Linux): a big block that grows when
 * mremap fails part way, and a heap whose prefaulting thread was started before a fork.
 *
 * mremap is replaced here (the test's own definition wins over libc's at link time) so that a
 * move can fail as Linux 6.17+ lets it: a move of several mappings at once that fails (ENOMEM
 * at vm.max_map_count) may leave some of them moved and the rest not (mremap(2)). */
#if !defined(_GNU_SOURCE)
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "private.h"

#define MIB (1024 * 1024)

static int fail_at;  /* fail the fail_at-th move from now; 0: never */
static int moves;    /* moves since arming */

void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...) {
  void *to = NULL;
  va_list ap;
  va_start(ap, flags);
  if (flags & MREMAP_FIXED) to = va_arg(ap, void *);
  va_end(ap);
  if (fail_at && ++moves == fail_at) {
    /* Part of a move of more than one huge page is done before the failure. */
    if (old_size > 2 * MIB && (flags & MREMAP_FIXED))
      syscall(SYS_mremap, old, (size_t)2 * MIB, (size_t)2 * MIB, flags, to);
    errno = ENOMEM;
    return MAP_FAILED;
  }
  return (void *)syscall(SYS_mremap, old, old_size, new_size, flags, to);
}

static void fill(unsigned char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i += 4096) p[i] = (unsigned char)(i / 4096 * 7 + 1);
}

static int same(const unsigned char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i += 4096)
    if (p[i] != (unsigned char)(i / 4096 * 7 + 1)) return 0;
  return 1;
}

/* Whether any page of [p, p + n) is still mapped (a block's old pages left behind). */
static int any_mapped(void *p, size_t n) {
  size_t off;
  unsigned char v;
  for (off = 0; off < n; off += 4096)
    if (mincore((char *)p + off, 4096, &v) == 0) return 1;
  return 0;
}

/* A block growing past its mapping whose move fails after part of it was done: the bytes must
 * all be there in the new block (the part not moved is copied) and none left at the old address. */
static void test_grow_move_fails(void) {
  int n;
  for (n = 1; n <= 3; n++) {
    lasync__heap *h = lasync__heap_new(0);
    size_t old = 6 * MIB + 100, nsize = 12 * MIB;
    unsigned char *p = (unsigned char *)lasync__heap_alloc(h, NULL, 0, old), *q;
    CHECK(p != NULL);
    fill(p, old);
    moves = 0;
    fail_at = n;
    q = (unsigned char *)lasync__heap_alloc(h, p, old, nsize);
    fail_at = 0;
    CHECK(q != NULL && q != p);
    if (q != NULL) {
      CHECK(same(q, old));
      CHECK(!any_mapped(p, 8 * MIB));
      lasync__heap_alloc(h, q, nsize, 0);
    }
    CHECK(lasync__heap_used(h) == 0);
    lasync__heap_free(h);
  }
}

/* Enough small blocks that the heap's slabs pass BIG_HEAP and its prefaulting thread starts. */
static void make_big(lasync__heap *h) {
  int i;
  for (i = 0; i < 200000; i++) CHECK(lasync__heap_alloc(h, NULL, 0, 64) != NULL);
}

/* A process that forks while a heap's thread runs: the child has no such thread, and must still
 * be able to use the heap and free it (the thread's lock and condition are copies there). */
static void test_fork(void) {
  lasync__heap *h = lasync__heap_new(0);
  pid_t child;
  int status = 0;
  make_big(h);
  usleep(50000); /* the thread has its pages ready, and waits */
  child = fork();
  if (child == 0) {
    unsigned char *p;
    alarm(10); /* a hang fails the test rather than the run */
    make_big(h);
    p = (unsigned char *)lasync__heap_alloc(h, NULL, 0, 8 * MIB);
    if (p == NULL) _exit(2);
    fill(p, 8 * MIB);
    if (!same(p, 8 * MIB)) _exit(3);
    lasync__heap_free(h);
    _exit(0);
  }
  CHECK(child > 0);
  CHECK(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (WIFSIGNALED(status)) fprintf(stderr, "child killed by signal %d\n", WTERMSIG(status));
  make_big(h); /* the parent's thread is still there */
  lasync__heap_free(h);
}

int main(void) {
  RUN(test_grow_move_fails);
  RUN(test_fork);
  return checks_report("alloc_map_test");
}
