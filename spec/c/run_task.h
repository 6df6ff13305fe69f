/* Runs a chunk of Lua as a task of rt, drives the loop until nothing is left, and returns the
 * task's first result as a string (a static buffer, valid until the next call), "error: <msg>"
 * if it failed, "load error: <msg>" if it did not compile, or "(n)" for n results other than
 * one string-convertible value. Shared by the embedding and work-item tests. */
#ifndef LASYNC_SPEC_RUN_TASK_H
#define LASYNC_SPEC_RUN_TASK_H

#include <lauxlib.h>
#include <stdio.h>

#include "check.h"
#include "lasync.h"

static const char *run_task(lasync_runtime *rt, const char *code) {
  static char out[512];
  lasync_task *t;
  lua_State *L = lasync_lua(rt);
  int n;
  if (lasync_spawn_string(rt, code, "=test", &t) != LASYNC_OK) {
    snprintf(out, sizeof out, "load error: %s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return out;
  }
  CHECK(lasync_run(rt) == LASYNC_OK);
  n = lasync_task_result(t, L);
  if (n == LASYNC_ELUA)
    snprintf(out, sizeof out, "error: %s", luaL_tolstring(L, -1, NULL)), lua_pop(L, 2);
  else if (n >= 1)
    snprintf(out, sizeof out, "%s", luaL_tolstring(L, -n, NULL)), lua_pop(L, n + 1);
  else
    snprintf(out, sizeof out, "(%d)", n);
  lasync_task_release(t);
  return out;
}

#endif
