/* Handles: a libuv handle owned by a Lua object.
 *
 * As luv's lhandle.c: the handle's memory is apart from the userdata, because uv_close is
 * asynchronous and the userdata may be collected before the close callback; it is freed only
 * there. The Lua object is a box holding the pointer, cleared on close, so __gc, __close and
 * an explicit close share one idempotent path. Every open handle is linked in the runtime: the
 * service below closes the ones Lua forgot at shutdown, before the loop is closed.
 */
#include <stdlib.h>

#include "private.h"

static void handles_close(lasync__runtime *rt, lasync__service *s);
static const lasync__service_ops HANDLES_SERVICE = {"handles", NULL, handles_close};

/* The service is registered with the first handle, so a runtime that never opens one pays
 * nothing. Returns -1 when out of memory. */
static int ensure_service(lasync__runtime *rt) {
  lasync__service *s;
  if (lasync__service_find(rt, &HANDLES_SERVICE)) return 0;
  s = (lasync__service *)calloc(1, sizeof *s);
  if (s == NULL) return -1;
  lasync__service_add(rt, s, &HANDLES_SERVICE);
  return 0;
}

static void link_handle(lasync__runtime *rt, lasync__handle *h) {
  h->next = rt->handles;
  if (rt->handles) rt->handles->prev = h;
  rt->handles = h;
  rt->live_handles++;
}

static void unlink_handle(lasync__handle *h) {
  lasync__runtime *rt = h->rt;
  if (h->prev)
    h->prev->next = h->next;
  else
    rt->handles = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
}

void *lasync__handle_new(lasync__runtime *rt, size_t size) {
  lasync__handle *h;
  if (rt->closing || ensure_service(rt) != 0) return NULL;
  h = (lasync__handle *)calloc(1, size);
  if (h == NULL) return NULL;
  h->rt = rt;
  link_handle(rt, h);
  return h;
}

void lasync__handle_init(lasync__handle *h, uv_handle_t *uv) {
  h->uv = uv;
  uv->data = h;
}

static void free_handle(lasync__handle *h) {
  lasync__runtime *rt = h->rt;
  if (h->on_free) h->on_free(h);
  rt->live_handles--;
  free(h);
}

static void on_closed(uv_handle_t *uv) { free_handle(LASYNC__HANDLE_OF(uv)); }

void lasync__handle_close(lasync__handle *h) {
  if (h->closing) return;
  h->closing = 1;
  if (h->owner) {
    *(lasync__handle **)h->owner = NULL; /* the Lua object now reads as closed */
    h->owner = NULL;
  }
  if (h->on_close) h->on_close(h);
  unlink_handle(h);
  if (h->uv == NULL)
    free_handle(h); /* never initialised: libuv knows nothing of it */
  else if (!uv_is_closing(h->uv))
    uv_close(h->uv, on_closed);
}

/* ---- the Lua side ---- */

lasync__handle **lasync__handle_box_new(lua_State *L, lasync__handle *h, const char *mt) {
  lasync__handle **box = (lasync__handle **)lua_newuserdatauv(L, sizeof *box, 1);
  *box = h;
  h->owner = box;
  luaL_setmetatable(L, mt);
  return box;
}

int lasync__handle_box_close(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  if (box && *box) lasync__handle_close(*box);
  return 0;
}

lasync__handle *lasync__handle_check(lua_State *L, int idx, const char *mt, const char *fname) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, idx, mt);
  if (box == NULL) lasync__argerror(L, idx, fname, idx == 1 ? "self" : NULL, mt);
  if (*box == NULL) {
    lasync__push_error(L, "closed", "the object is closed");
    lua_error(L);
  }
  return *box;
}

/* Shutdown: every handle Lua still holds is closed; the runtime then turns the loop until
 * their close callbacks have run. */
static void handles_close(lasync__runtime *rt, lasync__service *s) {
  while (rt->handles) lasync__handle_close(rt->handles);
  free(s);
}
