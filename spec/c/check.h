/* The checks every C test program in spec/c uses: CHECK counts a failed condition and names
 * its line, REQUIRE also ends the test, RUN runs one test function and names it if any of its
 * checks failed, and checks_report prints the tally and gives main's exit status. Header-only: each
 * program is one translation unit. */
#ifndef LASYNC_SPEC_CHECK_H
#define LASYNC_SPEC_CHECK_H

#include <stdio.h>

static int failures, tests_failed, tests_run;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)

/* A check the rest of the test depends on: counted like CHECK, then the test function returns
 * (leaking what it set up: the program is failing anyway, and going on would read garbage). */
#define REQUIRE(cond)                                                                \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: requirement failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                                    \
      return;                                                                        \
    }                                                                                \
  } while (0)

#define RUN(test)                             \
  do {                                        \
    int before = failures;                    \
    test();                                   \
    tests_run++;                              \
    if (failures != before) {                 \
      tests_failed++;                         \
      fprintf(stderr, "FAILED: %s\n", #test); \
    }                                         \
  } while (0)

/* Prints "<program>: N passed, N failed" and returns the exit status for main. */
static inline int checks_report(const char *program) {
  printf("%s: %d passed, %d failed\n", program, tests_run - tests_failed, tests_failed);
  return failures ? 1 : 0;
}

#endif
