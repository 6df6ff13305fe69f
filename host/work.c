/* lasync.h's work items: the public names over bindings/thread/pool.c. Kept apart from
 * embed.c, which is the futures' and runtimes' file. */
#include "lasync.h"
#include "private.h"

int lasync_await_work(lua_State *L, lasync_work_cb work, lasync_work_push_cb push, void *arg) {
  return lasync__work_submit(L, work, push, arg);
}

int lasync_work_cancelled(const lasync_work *w) { return lasync__work_cancelled(w); }

void lasync_work_fail(lasync_work *w, const char *message) { lasync__work_fail(w, message); }
