/* The first fetch's wait for libcurl (curl_load.c). */
#ifndef LASYNC_CURL_LOAD_H
#define LASYNC_CURL_LOAD_H

#include "libcurl.h"
#include "private.h"

/* In a lua_CFunction about to call curl: returns once libcurl is loaded, or raises kind
 * "unavailable" ("<fname> <url>: <why>", with a url field) if it cannot be. In a task, while it
 * is not loaded yet, the task suspends until a pool thread has loaded it, then *again (the
 * calling function) runs in its place, from the top, on the stack the call had: so call this
 * before pushing anything. Elsewhere it loads in place, blocking. */
void lasync__need_curl(lua_State *L, const char *fname, const char *url,
                       const lua_CFunction *again);

#endif
