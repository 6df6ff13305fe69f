/* libedit, loaded by the REPL on a terminal (libedit.h says why), by the soname the build
 * recorded from the headers it compiled against (LASYNC_LIBEDIT, from CMakeLists.txt). */
#define LASYNC__EDIT_NO_MACROS
#include "libedit.h"

#include <dlfcn.h>
#include <stdio.h>

#ifndef LASYNC_LIBEDIT
#define LASYNC_LIBEDIT "libedit.so.2"
#endif

lasync__edit_api lasync__edit;

/* One REPL per process, on the main thread (libedit keeps its state in globals): no lock. */
int lasync__edit_load(const char **why) {
  static int state; /* 0 not tried, 1 loaded, -1 failed */
  static char failure[512];
  lasync__edit_api fn;
  const char *missing = NULL;
  void *lib;
  if (state != 0) {
    if (state < 0) *why = failure;
    return state > 0 ? 0 : -1;
  }
  state = -1;
  lib = dlopen(LASYNC_LIBEDIT, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    snprintf(failure, sizeof failure, "cannot load libedit: %s", dlerror());
    *why = failure;
    return -1;
  }
#define LASYNC__EDIT_RESOLVE(name)                  \
  fn.name = (__typeof__(fn.name))dlsym(lib, #name); \
  if (fn.name == NULL && missing == NULL) missing = #name;
  LASYNC__EDIT_SYMBOLS(LASYNC__EDIT_RESOLVE)
#undef LASYNC__EDIT_RESOLVE
  if (missing) {
    snprintf(failure, sizeof failure, "cannot load libedit: %s has no %s", LASYNC_LIBEDIT, missing);
    dlclose(lib);
    *why = failure;
    return -1;
  }
  lasync__edit = fn;
  state = 1;
  return 0;
}
