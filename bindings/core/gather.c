/* async.gather and async.gather_settled: wait for many tasks at once.
 *
 * One group userdata holds a wait-list node per child, so gathering a million tasks allocates
 * one block, and the gathering task is woken once: when the last child settles, or, unless
 * settled, when the first one fails.
 */
#include <stddef.h>
#include <string.h>

#include "private.h"

typedef struct group group;

/* 32 bytes a child: the node finds its group through its hook, which the group holds. */
typedef struct {
  lasync__waiter waiter; /* first, so a waiter pointer is a member pointer */
  lasync__task *child;
} member;

struct group {
  lasync__settle_hook hook; /* every member's: on_child_settled */
  lasync__task *owner;
  int settled_mode;
  int remaining;
  int first_failure; /* 1-based index of the first child that failed, or 0 */
  int n;
  member members[1];
};

static void detach_all(group *g) {
  int i;
  for (i = 0; i < g->n; i++) {
    member *m = &g->members[i];
    if (m->waiter.prev) lasync__waitlist_remove(&m->child->waiters, &m->waiter);
  }
}

static void cancel_children(group *g) {
  int i;
  for (i = 0; i < g->n; i++) lasync__cancel(g->owner->rt->L, g->members[i].child, 0, 0);
}

static void on_child_settled(lasync__waiter *w, const lasync__settle_hook *hook) {
  member *m = (member *)w;
  group *g = (group *)((char *)hook - offsetof(group, hook));
  g->remaining--;
  if (!g->settled_mode && m->child->status != LASYNC__DONE && g->first_failure == 0) {
    g->first_failure = (int)(m - g->members) + 1;
    detach_all(g);
    cancel_children(g);
    lasync__wake(g->owner);
  } else if (g->remaining == 0) {
    lasync__wake(g->owner);
  }
}

/* Builds the result array from the children at stack index 1 (an array of tasks), or raises
 * the first failure. */
static int collect(lua_State *L, group *g) {
  int i;
  if (g->first_failure) {
    lua_rawgeti(L, 1, g->first_failure);
    return lasync__push_outcome(L, g->members[g->first_failure - 1].child, -1);
  }
  lua_createtable(L, g->n, 1);
  for (i = 0; i < g->n; i++) {
    lasync__task *c = g->members[i].child;
    lua_rawgeti(L, 1, i + 1);                       /* [.., results, task] */
    c->observed = 1;
    if (c->status == LASYNC__DONE && c->nargs > 0)
      lua_getiuservalue(L, -1, LASYNC__UV_FN);
    else if (c->status == LASYNC__DONE)
      lua_pushnil(L);
    else
      lua_getiuservalue(L, -1, LASYNC__UV_FN);      /* the error, in settled mode */
    if (g->settled_mode) {
      int ok = c->status == LASYNC__DONE;
      lua_createtable(L, 0, 2);
      lua_pushboolean(L, ok);
      lua_setfield(L, -2, "ok");
      lua_insert(L, -2);
      lua_setfield(L, -2, ok ? "value" : "error");
    }
    lua_rawseti(L, -3, i + 1);
    lua_pop(L, 1);
  }
  lua_pushinteger(L, g->n);
  lua_setfield(L, -2, "n");
  return 1;
}

static void gather_cancel(lasync__task *t, void *data) {
  group *g = (group *)data;
  (void)t;
  /* Cancelling the gathering task cancels its children, as asyncio does. */
  detach_all(g);
  cancel_children(g);
}

static int gather_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return collect(L, (group *)data);
}

static const lasync__awaitable_ops GATHER_OPS = {"gather", gather_cancel, gather_finish, NULL};

/* Leaves at index 1 a new array of tasks made from the arguments: tasks as they are, functions
 * spawned; a single plain table is taken as the list (and left as it was). Every argument is
 * checked before any function is spawned, so misuse starts no task. */
static int normalise(lua_State *L, lasync__task *self, const char *fname) {
  int i, list, n = lua_gettop(L), to_spawn = 0;
  int from_list = n == 1 && lua_istable(L, 1) && !lasync__totask(L, 1) && !lua_getmetatable(L, 1);
  if (from_list) n = (int)luaL_len(L, 1);
  for (i = 1; i <= n; i++) {
    lasync__task *child;
    if (from_list)
      lua_rawgeti(L, 1, i);
    else
      lua_pushvalue(L, i);
    child = lasync__totask(L, -1);
    if (child == NULL && !lasync__is_callable(L, -1))
      return lasync__misuse(L, "%s: bad argument #%d (task or function expected, got %s)", fname, i,
                        lasync__typename(L, -1));
    if (child != NULL && child == self)
      return lasync__misuse(L, "%s: a task cannot gather itself", fname);
    to_spawn += child == NULL;
    lua_pop(L, 1);
  }
  /* A list of tasks only is used as it is: nothing is written into it, and a million-task
   * gather makes no copy. */
  if (from_list && to_spawn == 0) return n;
  lua_createtable(L, n, 0);
  list = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    if (from_list)
      lua_rawgeti(L, 1, i);
    else
      lua_pushvalue(L, i);
    if (!lasync__totask(L, -1)) lasync__spawn(L, lua_gettop(L), 0);
    lua_rawseti(L, list, i);
  }
  lua_insert(L, 1);
  lua_settop(L, 1);
  return n;
}

static int gather(lua_State *L, int settled_mode, const char *fname) {
  lasync__task *t = NULL;
  group *g;
  int i, n = lua_gettop(L);
  /* Check before spawning anything, so misuse starts no task. */
  if (n > 0) t = lasync__check_task(L, fname);
  n = normalise(L, t, fname);
  g = (group *)lua_newuserdatauv(L, sizeof *g + (n > 0 ? n - 1 : 0) * sizeof(member), 0);
  memset(g, 0, sizeof *g);
  g->hook.on_settle = on_child_settled;
  g->owner = t;
  g->settled_mode = settled_mode;
  g->n = n;
  for (i = 0; i < n; i++) {
    member *m = &g->members[i];
    lua_rawgeti(L, 1, i + 1);
    m->child = lasync__totask(L, -1);
    /* Looked at (docs/toolkit.md): the group reports or returns its outcome. */
    if (lasync__task_finished(m->child)) lasync__mark_observed(L, m->child, -1);
    lua_pop(L, 1);
    m->waiter.hook = &g->hook;
    m->waiter.prev = m->waiter.next = NULL;
    if (lasync__task_finished(m->child)) {
      if (!settled_mode && m->child->status != LASYNC__DONE && !g->first_failure)
        g->first_failure = i + 1;
    } else {
      g->remaining++;
    }
  }
  if (g->first_failure) {
    cancel_children(g);
    return collect(L, g);
  }
  if (g->remaining == 0) return collect(L, g);
  for (i = 0; i < n; i++) {
    member *m = &g->members[i];
    if (!lasync__task_finished(m->child)) lasync__waitlist_add(&m->child->waiters, &m->waiter);
  }
  return lasync__suspend(L, t, &GATHER_OPS, g);
}

static int l_gather(lua_State *L) { return gather(L, 0, "async.gather"); }
static int l_gather_settled(lua_State *L) { return gather(L, 1, "async.gather_settled"); }

void lasync__open_gather(lua_State *L) {
  lua_pushcfunction(L, l_gather);
  lua_setfield(L, -2, "gather");
  lua_pushcfunction(L, l_gather_settled);
  lua_setfield(L, -2, "gather_settled");
}
