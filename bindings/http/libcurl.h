/* libcurl, loaded on first use (libcurl.c). A script that never fetches maps none of curl's ~36
 * libraries and never initialises TLS: the dynamic loader's relocations for them were most of
 * lasync's start-up. Nothing links against libcurl; every file that calls curl includes this
 * header instead of <curl/curl.h>, and the calls read as curl's documentation has them: each
 * curl_* name below is a macro for the matching pointer of one table, filled by
 * lasync__curl_load from curl's own prototypes (so a signature cannot drift from the header).
 *
 * A call through the table before lasync__curl_load has succeeded would jump to NULL: every
 * path into curl starts from l_check_url or l_fetch (client.c), which load it first, through
 * lasync__need_curl (curl_load.c: in a task, the load runs on a pool thread meanwhile). */
#ifndef LASYNC_LIBCURL_H
#define LASYNC_LIBCURL_H

/* curl's type-checking wrappers of curl_easy_setopt/getinfo are macros of the same names as the
 * ones below; they cannot call through a table. */
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>

/* X(name) for each curl_<name> lasync calls: adding a call to curl means adding its name here
 * and a #define below. */
/* clang-format off */
#define LASYNC__CURL_FUNCTIONS(X)                                                                \
  X(global_init)                                                                                 \
  X(easy_init) X(easy_cleanup) X(easy_reset) X(easy_setopt) X(easy_getinfo) X(easy_pause)        \
  X(easy_strerror)                                                                               \
  X(multi_init) X(multi_cleanup) X(multi_setopt) X(multi_add_handle) X(multi_remove_handle)      \
  X(multi_assign) X(multi_socket_action) X(multi_info_read)                                      \
  X(slist_append) X(slist_free_all) X(free)                                                      \
  X(url) X(url_cleanup) X(url_set) X(url_get) X(url_strerror)
/* clang-format on */

#define LASYNC__CURL_FIELD(name) __typeof__(curl_##name) *name;
typedef struct lasync__curl_api {
  LASYNC__CURL_FUNCTIONS(LASYNC__CURL_FIELD)
} lasync__curl_api;
#undef LASYNC__CURL_FIELD

extern lasync__curl_api lasync__curl_fn;

/* Loads libcurl and runs curl_global_init, once per process (thread-safe). 0 on success; -1
 * with *why set (a static string: dlopen's or dlsym's message) when it cannot, then and on
 * every later call: fetch then fails with kind "unavailable", never crashes. */
int lasync__curl_load(const char **why);
/* Any thread, never blocks: 0 while nobody has loaded libcurl yet (or a thread is loading it),
 * 1 once it is loaded, -1 once loading failed. After a non-zero answer lasync__curl_load
 * returns at once. */
int lasync__curl_state(void);

/* curl.h wraps these three in function-like macros that only check the argument count. */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_global_init lasync__curl_fn.global_init
#define curl_easy_init lasync__curl_fn.easy_init
#define curl_easy_cleanup lasync__curl_fn.easy_cleanup
#define curl_easy_reset lasync__curl_fn.easy_reset
#define curl_easy_setopt lasync__curl_fn.easy_setopt
#define curl_easy_getinfo lasync__curl_fn.easy_getinfo
#define curl_easy_pause lasync__curl_fn.easy_pause
#define curl_easy_strerror lasync__curl_fn.easy_strerror
#define curl_multi_init lasync__curl_fn.multi_init
#define curl_multi_cleanup lasync__curl_fn.multi_cleanup
#define curl_multi_setopt lasync__curl_fn.multi_setopt
#define curl_multi_add_handle lasync__curl_fn.multi_add_handle
#define curl_multi_remove_handle lasync__curl_fn.multi_remove_handle
#define curl_multi_assign lasync__curl_fn.multi_assign
#define curl_multi_socket_action lasync__curl_fn.multi_socket_action
#define curl_multi_info_read lasync__curl_fn.multi_info_read
#define curl_slist_append lasync__curl_fn.slist_append
#define curl_slist_free_all lasync__curl_fn.slist_free_all
#define curl_free lasync__curl_fn.free
#define curl_url lasync__curl_fn.url
#define curl_url_cleanup lasync__curl_fn.url_cleanup
#define curl_url_set lasync__curl_fn.url_set
#define curl_url_get lasync__curl_fn.url_get
#define curl_url_strerror lasync__curl_fn.url_strerror

#endif
