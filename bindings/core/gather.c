/* async.gather and async.gather_settled: wait for many tasks at once.
 *
 * One group userdata holds a wait-list node per child, so gathering a million tasks allocates
 * one block, and the gathering task is woken once: when the last child settles, or, unless
 * settled, when the first one fails.
 */
#include <limits.h>
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
  const char *fname; /* "async.gather" or "async.gather_settled", for misuse */
  member members[1];
};

/* Only the members still linked are touched: their children have not settled, so they are
 * anchored and alive. A settled child is kept alive only by the list, which user code may
 * change meanwhile. */
static void detach_first(group *g, int n) {
  int i;
  for (i = 0; i < n; i++) {
    member *m = &g->members[i];
    if (m->waiter.prev) lasync__waitlist_remove(&m->child->waiters, &m->waiter);
  }
}

static void detach_all(group *g) { detach_first(g, g->n); }

/* Cancels the unsettled children (cancelling settles none at once: the links hold still). */
static void cancel_linked(group *g) {
  int i;
  for (i = 0; i < g->n; i++)
    if (g->members[i].waiter.prev) lasync__cancel(g->owner->rt->L, g->members[i].child, 0, 0);
}

static void on_child_settled(lasync__waiter *w, const lasync__settle_hook *hook) {
  member *m = (member *)w;
  group *g = (group *)((char *)hook - offsetof(group, hook));
  g->remaining--;
  if (!g->settled_mode && m->child->status != LASYNC__DONE && g->first_failure == 0) {
    g->first_failure = (int)(m - g->members) + 1;
    cancel_linked(g);
    detach_all(g);
    lasync__wake(g->owner);
  } else if (g->remaining == 0) {
    lasync__wake(g->owner);
  }
}

/* Pushes the i-th (1-based) child from the list at stack index 1 and returns it, or raises if
 * the list no longer holds the task the group waited on (user code changed it meanwhile: the
 * group's pointer may then be to a task already collected, so it is not touched). */
static lasync__task *push_child(lua_State *L, group *g, int i) {
  lasync__task *c = g->members[i - 1].child;
  lua_rawgeti(L, 1, i);
  if (lua_touserdata(L, -1) != (void *)c)
    lasync__misuse(L, "%s: the list of tasks was changed while it was gathered", g->fname);
  return c;
}

/* Builds the result array from the children at stack index 1 (an array of tasks), or raises
 * the first failure. */
static int collect(lua_State *L, group *g) {
  int i;
  if (g->first_failure) {
    lasync__task *c = push_child(L, g, g->first_failure);
    return lasync__push_outcome(L, c, -1);
  }
  lua_createtable(L, g->n, 1);
  for (i = 0; i < g->n; i++) {
    lasync__task *c = push_child(L, g, i + 1);      /* [.., results, task] */
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
  cancel_linked(g);
  detach_all(g);
}

static int gather_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return collect(L, (group *)data);
}

static const lasync__awaitable_ops GATHER_OPS = {"gather", gather_cancel, gather_finish, NULL};

/* Checks every child before any function is spawned (misuse starts no task), recording the
 * tasks among them in the members; returns how many are functions still to spawn. The
 * children are the arguments, or the elements of the list at index 1 (from_list). */
static int check_children(lua_State *L, group *g, int from_list, const char *fname) {
  int i, to_spawn = 0;
  for (i = 1; i <= g->n; i++) {
    lasync__task *child;
    if (from_list)
      lua_rawgeti(L, 1, i);
    else
      lua_pushvalue(L, i);
    child = lasync__totask(L, -1);
    if (child == NULL && !lasync__is_callable(L, -1))
      return lasync__misuse(L, "%s: bad argument #%d (task or function expected, got %s)", fname, i,
                            lasync__typename(L, -1));
    if (child != NULL && child == g->owner)
      return lasync__misuse(L, "%s: a task cannot gather itself", fname);
    g->members[i - 1].child = child;
    to_spawn += child == NULL;
    lua_pop(L, 1);
  }
  return to_spawn;
}

/* Leaves [list, group] on the stack: a new list of the children, the functions among them
 * spawned (a list of tasks only is used as it is instead: nothing is written into it, and a
 * million-task gather makes no copy). Each element is looked at again, since spawning runs
 * the collector, whose finalizers may change the list. */
static void make_list(lua_State *L, group *g, int from_list, const char *fname) {
  int i, gi = lua_gettop(L), list;
  lua_createtable(L, g->n, 0);
  list = lua_gettop(L);
  for (i = 1; i <= g->n; i++) {
    lasync__task *child;
    if (from_list)
      lua_rawgeti(L, 1, i);
    else
      lua_pushvalue(L, i);
    if ((child = lasync__totask(L, -1)) == NULL) {
      if (!lasync__is_callable(L, -1))
        lasync__misuse(L, "%s: bad argument #%d (task or function expected, got %s)", fname, i,
                       lasync__typename(L, -1));
      child = lasync__spawn(L, lua_gettop(L), 0);
    }
    g->members[i - 1].child = child;
    lua_rawseti(L, list, i);
  }
  lua_pushvalue(L, gi); /* gi may be 1 (no arguments), which the list overwrites */
  lua_copy(L, list, 1);
  lua_copy(L, -1, 2);
  lua_settop(L, 2);
}

/* Links the member to its child's wait list, or, the child settled, records that it has no
 * link: returns 1 then. */
static int link_member(group *g, member *m) {
  m->waiter.hook = &g->hook;
  if (lasync__task_finished(m->child)) {
    m->waiter.prev = m->waiter.next = NULL;
    return 1;
  }
  g->remaining++;
  lasync__waitlist_add(&m->child->waiters, &m->waiter);
  return 0;
}

/* The common case in one pass: a list of tasks only (a million children are a million cache
 * misses a pass). Each element is checked and, unsettled, linked as it comes; a settled one is
 * only recorded (no link) and its count returned through *settled, to be marked observed after
 * the pass, since a misuse found later must leave nothing marked. Returns 0 with nothing linked
 * at the first element that is not a task of another (a function to spawn, or misuse): the
 * general path then checks them all. Nothing here allocates, so nothing can settle or collect
 * a child meanwhile. */
static int link_task_list(lua_State *L, group *g, int *settled) {
  int i;
  *settled = 0;
  for (i = 0; i < g->n; i++) {
    member *m = &g->members[i];
    lasync__task *child;
    lua_rawgeti(L, 1, i + 1);
    child = lasync__totask(L, -1);
    lua_pop(L, 1);
    if (child == NULL || child == g->owner) {
      detach_first(g, i);
      g->remaining = 0;
      *settled = 0;
      return 0;
    }
    m->child = child;
    *settled += link_member(g, m);
  }
  return 1;
}

/* Marks the settled children (those with no link) observed: the group reports or returns their
 * outcome (docs/toolkit.md). Records the first failure, unless settled_mode. */
static void observe_settled(lua_State *L, group *g) {
  int i;
  for (i = 0; i < g->n; i++) {
    member *m = &g->members[i];
    if (m->waiter.prev) continue;
    lua_rawgeti(L, 1, i + 1);
    lasync__mark_observed(L, m->child, -1);
    lua_pop(L, 1);
    if (!g->settled_mode && m->child->status != LASYNC__DONE && !g->first_failure)
      g->first_failure = i + 1;
  }
}

static group *new_group(lua_State *L, lasync__task *owner, int n, int settled_mode,
                        const char *fname) {
  group *g = (group *)lua_newuserdatauv(L, sizeof *g + (n > 0 ? n - 1 : 0) * sizeof(member), 0);
  memset(g, 0, sizeof *g);
  g->hook.on_settle = on_child_settled;
  g->owner = owner;
  g->settled_mode = settled_mode;
  g->n = n;
  g->fname = fname;
  return g;
}

static int gather(lua_State *L, int settled_mode, const char *fname) {
  lasync__task *t = NULL;
  group *g;
  int i, n = lua_gettop(L), from_list, to_spawn, settled = 0;
  /* Check before spawning anything, so misuse starts no task. */
  if (n > 0) t = lasync__check_task(L, fname);
  from_list = n == 1 && lua_istable(L, 1) && !lasync__totask(L, 1) && !lua_getmetatable(L, 1);
  if (from_list) {
    lua_Integer len = luaL_len(L, 1); /* a sparse table's border may be any integer */
    if (len > INT_MAX)
      return lasync__misuse(L, "%s: bad argument #1 (a list of %I elements; at most %d)", fname,
                            (LUAI_UACINT)len, INT_MAX);
    n = (int)len;
  }
  /* The group first: making it may run a finalizer that changes the list, and what is checked
   * after it is what is used. */
  g = new_group(L, t, n, settled_mode, fname);
  if (!from_list || !link_task_list(L, g, &settled)) {
    to_spawn = check_children(L, g, from_list, fname);
    if (!from_list || to_spawn > 0) make_list(L, g, from_list, fname); /* [list, group] */
    /* One pass: the unsettled ones are linked as they come; nothing here can settle or collect
     * one. */
    for (i = 0; i < n; i++) settled += link_member(g, &g->members[i]);
  }
  if (settled > 0) observe_settled(L, g);
  if (g->first_failure) {
    detach_all(g);
    for (i = 0; i < n; i++) /* none is linked now; each was checked just now */
      lasync__cancel(L, g->members[i].child, 0, 0);
    return collect(L, g);
  }
  if (g->remaining == 0) return collect(L, g);
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
