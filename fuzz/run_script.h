/* The part every libFuzzer target over a Lua script shares: a fresh runtime per input, the
 * script (which returns a function) called with `require "lasync"`, the input as a string and
 * any extra arguments the caller pushes, run as a task to the end. A runtime that will not
 * start, a script that does not load, a loop that fails, a task that does not end clean or a
 * runtime that will not close is a finding: abort, so libFuzzer keeps the input. */
#ifndef LASYNC_FUZZ_RUN_SCRIPT_H
#define LASYNC_FUZZ_RUN_SCRIPT_H

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lasync.h"

/* Pushes the extra arguments after the input; returns how many it pushed. */
typedef int (*fuzz_push_extra)(lua_State *L);

static void fuzz_ignore_report(lasync_runtime *rt, const char *report, void *data) {
  (void)rt, (void)data;
  (void)report; /* tasks a script lets fail unobserved are expected; they are reported here */
}

static int fuzz_run_script(const char *name, const char *script, size_t script_len,
                           const uint8_t *data, size_t size, fuzz_push_extra extra) {
  lasync_runtime *rt;
  lasync_options o;
  lasync_task *t;
  lua_State *L;
  int rc, nargs = 2;
  memset(&o, 0, sizeof o);
  o.on_error = fuzz_ignore_report;
  if (lasync_new(&rt, &o) != LASYNC_OK) abort();
  L = lasync_lua(rt);
  if (luaL_loadbuffer(L, script, script_len, name) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", name, lua_tostring(L, -1));
    abort();
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lasync");
  lua_call(L, 1, 1);
  lua_pushlstring(L, (const char *)data, size);
  if (extra) nargs += extra(L);
  if (lasync_spawn_call(rt, nargs, &t) != LASYNC_OK) abort();
  rc = lasync_run(rt);
  if (rc != LASYNC_OK) {
    fprintf(stderr, "%s: lasync_run: %s\n", name, lasync_strerror(rc));
    abort();
  }
  if (lasync_task_status(t) != LASYNC_TASK_DONE) {
    int n = lasync_task_result(t, L);
    fprintf(stderr, "%s: the script's task did not end clean (status %d): %s\n", name,
            (int)lasync_task_status(t), n == LASYNC_ELUA ? luaL_tolstring(L, -1, NULL) : "?");
    abort();
  }
  lasync_task_release(t);
  if (lasync_destroy(rt) != LASYNC_OK) abort();
  return 0;
}

#endif
