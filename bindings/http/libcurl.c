/* libcurl, loaded on the first fetch (libcurl.h says why). dlopen by soname, as the dynamic
 * loader would have found it at start-up: the build records which one the curl headers it
 * compiled against belong to (LASYNC_LIBCURL, from CMakeLists.txt), and the package that
 * provides it is a dependency like any other. */
#include "libcurl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#ifndef LASYNC_LIBCURL
#define LASYNC_LIBCURL "libcurl.so.4"
#endif

lasync__curl_api lasync__curl_fn;

static pthread_once_t once = PTHREAD_ONCE_INIT;
/* 0 until load has run, then 1 (loaded) or -1 (failed): read without the once by
 * lasync__curl_state, from any thread, so it is stored last, after the table and failure. */
static atomic_int state;
static char failure[512];

/* Runs once per process. The handle is never closed: curl keeps global state (TLS libraries,
 * their threads) that must outlive every runtime, as a linked libcurl's would. */
static void load(void) {
  void *lib = dlopen(LASYNC_LIBCURL, RTLD_NOW | RTLD_LOCAL);
  const char *missing = NULL;
  lasync__curl_api fn;
  if (lib == NULL) {
    snprintf(failure, sizeof failure, "cannot load libcurl: %s", dlerror());
    atomic_store(&state, -1);
    return;
  }
#define LASYNC__CURL_RESOLVE(name)                          \
  fn.name = (__typeof__(fn.name))dlsym(lib, "curl_" #name); \
  if (fn.name == NULL && missing == NULL) missing = "curl_" #name;
  LASYNC__CURL_FUNCTIONS(LASYNC__CURL_RESOLVE)
#undef LASYNC__CURL_RESOLVE
  if (missing) {
    snprintf(failure, sizeof failure, "cannot load libcurl: %s has no %s (too old?)",
             LASYNC_LIBCURL, missing);
    dlclose(lib);
    atomic_store(&state, -1);
    return;
  }
  if (fn.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    snprintf(failure, sizeof failure, "cannot initialise libcurl");
    atomic_store(&state, -1);
    return; /* left mapped: curl may have started initialising libraries it depends on */
  }
  lasync__curl_fn = fn;
  atomic_store(&state, 1);
}

int lasync__curl_load(const char **why) {
  pthread_once(&once, load);
  if (atomic_load(&state) > 0) return 0;
  *why = failure;
  return -1;
}

int lasync__curl_state(void) { return atomic_load(&state); }
