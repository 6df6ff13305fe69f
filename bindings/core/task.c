/* Tasks: spawn, await, cancel, and how a task's outcome reaches whoever looks at it.
 *
 * A task is one userdata. Its coroutine is taken from a pool when it first runs and given back
 * when it ends, so a task that has not started or has finished costs no coroutine.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

const char *const lasync__status_names[] = {"pending", "running", "done", "failed", "cancelled"};

#define TASK_OF(ptr, field) ((lasync__task *)((char *)(ptr)-offsetof(lasync__task, field)))

/* ---- wait lists ---- */

void lasync__waitlist_add(lasync__waitlist *list, lasync__waiter *w) {
  /* Appends, so waiters are woken in the order they came. head->prev is the tail. */
  if (list->head == NULL) {
    w->next = NULL;
    w->prev = w;
    list->head = w;
  } else {
    lasync__waiter *tail = list->head->prev;
    tail->next = w;
    w->prev = tail;
    w->next = NULL;
    list->head->prev = w;
  }
}

void lasync__waitlist_remove(lasync__waitlist *list, lasync__waiter *w) {
  if (list->head == w) {
    list->head = w->next;
    if (w->next) w->next->prev = w->prev;
  } else {
    w->prev->next = w->next;
    if (w->next)
      w->next->prev = w->prev;
    else
      list->head->prev = w->prev;
  }
  w->next = w->prev = NULL;
}

void lasync__waitlist_settle(lasync__waitlist *list) {
  while (list->head) {
    lasync__waiter *w = list->head;
    lasync__waitlist_remove(list, w);
    w->hook->on_settle(w, w->hook);
  }
}

static void wake_waiting_task(lasync__waiter *w, const lasync__settle_hook *hook) {
  (void)hook;
  lasync__wake(TASK_OF(w, waiter));
}

static const lasync__settle_hook WAKE_TASK = {wake_waiting_task};

void lasync__waitlist_add_task(lasync__waitlist *list, lasync__task *t) {
  t->waiter.hook = &WAKE_TASK;
  lasync__waitlist_add(list, &t->waiter);
}

/* ---- suspending and waking ---- */

int lasync__task_finished(const lasync__task *t) { return t->status >= LASYNC__DONE; }

int lasync__cancel_active(const lasync__task *t) {
  return t->cancel_level <= t->scope_depth && t->cancel_level >= t->shield_floor;
}

/* The extras are made on demand: most tasks never have a name, a cancel message or an error,
 * and their second user value holds only the phase value. With extras, it holds the extras
 * table, and the phase value moves to its [1] (an array slot made with the table, so setting
 * it later never allocates). */
void lasync__push_extra(lua_State *L, int task_idx) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, task_idx);
  task_idx = lua_absindex(L, task_idx);
  if (t->has_extra) {
    lua_getiuservalue(L, task_idx, LASYNC__UV_AUX);
    return;
  }
  lua_createtable(L, 1, 3);
  lua_getiuservalue(L, task_idx, LASYNC__UV_AUX);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, task_idx, LASYNC__UV_AUX);
  t->has_extra = 1;
}

int lasync__get_extra(lua_State *L, int task_idx, const char *name) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, task_idx);
  if (!t->has_extra) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  lua_getiuservalue(L, task_idx, LASYNC__UV_AUX);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return lua_type(L, -1);
}

void lasync__push_aux(lua_State *L, const lasync__task *t, int task_idx) {
  lua_getiuservalue(L, task_idx, LASYNC__UV_AUX);
  if (t->has_extra) {
    lua_rawgeti(L, -1, 1);
    lua_replace(L, -2);
  }
}

void lasync__set_aux(lua_State *L, const lasync__task *t, int task_idx) {
  task_idx = lua_absindex(L, task_idx);
  if (t->has_extra) {
    lua_getiuservalue(L, task_idx, LASYNC__UV_AUX); /* [value, extras] */
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    lua_pop(L, 1);
  } else {
    lua_setiuservalue(L, task_idx, LASYNC__UV_AUX);
  }
}

/* Raises the Cancelled error for the task's outermost cancelled scope. */
static int raise_cancelled(lua_State *L, lasync__task *t) {
  int level = t->cancel_level;
  const char *msg = "task cancelled";
  if (level > 0) {
    msg = "deadline exceeded";
  } else if (t->has_extra) {
    lasync__push_task(L, t);
    if (lasync__get_extra(L, -1, "cancel_message") == LUA_TSTRING)
      msg = lua_tostring(L, -1); /* anchored on the stack until push_error copies it */
  }
  lasync__push_error(L, "cancelled", msg);
  lua_pushinteger(L, level);
  lua_setfield(L, -2, "level");
  return lua_error(L);
}

lasync__task *lasync__check_task(lua_State *L, const char *fname) {
  lasync__task *t = lasync__check_suspendable(L, fname);
  if (lasync__cancel_active(t)) raise_cancelled(L, t);
  return t;
}

lasync__task *lasync__check_suspendable(lua_State *L, const char *fname) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__task *t = rt ? rt->current : NULL;
  if (t == NULL || t->co != L)
    lasync__misuse(L, "%s must be called inside a task", fname);
  if (!lua_isyieldable(L))
    lasync__misuse(L,
                   "%s cannot suspend here: the task is inside a C call that cannot yield (a "
                   "table.sort comparator, a string.gsub callback, require, a __gc, a debug hook ...)",
                   fname);
  return t;
}

void lasync__checkpoint(lua_State *L, lasync__task *t) {
  if (lasync__cancel_active(t)) raise_cancelled(L, t);
}

static int on_resume(lua_State *L, int status, lua_KContext ctx) {
  lasync__task *t = (lasync__task *)ctx;
  const lasync__awaitable_ops *ops = t->wait_ops;
  void *data = t->wait_data;
  (void)status;
  if (t->rt->current != t) {
    /* Resumed by someone other than the scheduler (lua_resume from C, past the wrapped
     * coroutine.resume): refuse by suspending again, still waiting on the same thing. */
    return lua_yieldk(L, 0, ctx, on_resume);
  }
  lasync__end_wait(t);
  if (lasync__cancel_active(t)) {
    if (ops && ops->abandon) ops->abandon(L, t, data);
    return raise_cancelled(L, t);
  }
  return ops && ops->finish ? ops->finish(L, t, data) : 0;
}

void lasync__begin_wait(lasync__task *t, const lasync__awaitable_ops *ops, void *data) {
  t->wait_ops = ops;
  t->wait_data = data;
  t->suspended = !t->queued;
}

void lasync__end_wait(lasync__task *t) {
  t->wait_ops = NULL;
  t->wait_data = NULL;
  t->wake = LASYNC__WAKE_NONE;
}

int lasync__suspend(lua_State *L, lasync__task *t, const lasync__awaitable_ops *ops, void *data) {
  lasync__begin_wait(t, ops, data);
  return lua_yieldk(L, 0, (lua_KContext)t, on_resume);
}

void lasync__wake(lasync__task *t) {
  t->suspended = 0;
  lasync__enqueue(t, LASYNC__WAKE_VALUE);
}

int lasync__cancel(lua_State *L, lasync__task *t, int level, int msg_idx) {
  if (lasync__task_finished(t)) return 0;
  if (level == 0 && msg_idx && lua_isstring(L, msg_idx) && t->cancel_level > 0) {
    lasync__push_task(L, t);
    lasync__push_extra(L, -1);
    lua_pushvalue(L, msg_idx);
    lua_setfield(L, -2, "cancel_message");
    lua_pop(L, 2);
  }
  if (level < t->cancel_level) t->cancel_level = level;
  if (t->status == LASYNC__PENDING) return 1; /* it is queued and will finish unstarted */
  if (t->suspended && lasync__cancel_active(t)) {
    if (t->wait_ops->cancel) t->wait_ops->cancel(t, t->wait_data);
    t->suspended = 0;
    lasync__enqueue(t, LASYNC__WAKE_CANCEL);
  }
  return 1;
}

/* ---- outcomes ---- */

/* The sentinel of a failed task that nobody has looked at yet: if it is collected first, the
 * failure is reported then, so no error is silently dropped. */
typedef struct {
  int observed;
} sentinel;

/* The runtime is looked up, not remembered: an embedder's state outlives lasync_destroy(), and a
 * sentinel collected after it must not touch the freed runtime (the allocation-failure sweep
 * found that use after free). Detached, the report goes to stderr. */
static int sentinel_gc(lua_State *L) {
  sentinel *s = (sentinel *)lua_touserdata(L, 1);
  if (!s->observed) {
    lasync__runtime *rt = lasync__runtime_get(L);
    s->observed = 1;
    lua_getiuservalue(L, 1, 1);
    if (rt) {
      rt->unhandled_failures++;
      lasync__report(rt, lua_tostring(L, -1));
    } else {
      fprintf(stderr, "lasync: a task failed and nobody awaited it:\n%s\n", lua_tostring(L, -1));
      fflush(stderr);
    }
  }
  return 0;
}

void lasync__mark_observed(lua_State *L, lasync__task *t, int task_idx) {
  t->observed = 1;
  if (t->status == LASYNC__FAILED && t->has_extra) {
    if (lasync__get_extra(L, task_idx, "sentinel") == LUA_TUSERDATA)
      ((sentinel *)lua_touserdata(L, -1))->observed = 1;
    lua_pop(L, 1);
  }
}

/* Under lasync__cpcall: gives the failed task its sentinel (in its extras), which holds its
 * report. */
static int attach_sentinel(lua_State *L) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, 1);
  sentinel *s;
  lasync__push_task(L, t);                            /* 2: task */
  lasync__push_extra(L, 2);                           /* 3: extras */
  s = (sentinel *)lua_newuserdatauv(L, sizeof *s, 1); /* 4: s */
  s->observed = 0;
  lasync__push_failure_report(L, 2);
  lua_setiuservalue(L, 4, 1);
  if (luaL_newmetatable(L, "lasync.Sentinel")) {
    lua_pushcfunction(L, sentinel_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, 4);
  lua_setfield(L, 3, "sentinel");
  return 0;
}

/* Under lasync__cpcall: reports the failure at once. */
static int report_now(lua_State *L) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, 1);
  lasync__push_task(L, t);
  lasync__push_failure_report(L, 2);
  lasync__report(t->rt, lua_tostring(L, -1));
  return 0;
}

/* Hands a failure nobody saw to the embedder's callback, or to stderr. */
void lasync__report(lasync__runtime *rt, const char *report) {
  if (rt->on_error) {
    rt->on_error(rt, report, rt->data);
  } else {
    fprintf(stderr, "lasync: a task failed and nobody awaited it:\n%s\n", report);
    fflush(stderr);
  }
}

void lasync__task_settle(lasync__runtime *rt, lasync__task *t, int status, int nres) {
  t->status = (unsigned)status;
  t->nargs = (unsigned)nres;
  t->wait_ops = NULL;
  if (t->waiters.head) t->observed = 1;
  if (status == LASYNC__FAILED && !t->observed && t->report_now) {
    /* Started from C with nobody to await it: the embedder hears of it at once. */
    t->observed = 1;
    rt->unhandled_failures++;
    if (lasync__cpcall(rt->L, report_now, t) != LUA_OK)
      lasync__report(rt, "not enough memory (and none left to describe the failure)");
  }
  if (status == LASYNC__FAILED && !t->observed &&
      (rt->starved || lasync__cpcall(rt->L, attach_sentinel, t) != LUA_OK)) {
    /* No memory to keep the report until collection (a full emergency collection found none
     * for a small userdata): it is reported now, once, and the drain is starved, so the
     * failures and starts after it in this drain do not each pay for another collection. */
    rt->starved = 1;
    t->observed = 1;
    rt->unhandled_failures++;
    lasync__report(rt, "not enough memory (and none left to keep its traceback)");
  }
  lasync__waitlist_settle(&t->waiters);
  rt->live_tasks--;
  lasync__unanchor_task(rt->L, rt, t);
}

/* Pushes the finished task's results, or raises its error. */
int lasync__push_outcome(lua_State *L, lasync__task *t, int task_idx) {
  int i;
  task_idx = lua_absindex(L, task_idx);
  lasync__mark_observed(L, t, task_idx);
  if (t->status == LASYNC__DONE) {
    int n = (int)t->nargs;
    if (n <= 1) {
      if (n == 1) lua_getiuservalue(L, task_idx, LASYNC__UV_FN);
      return n;
    }
    luaL_checkstack(L, n + 1, "too many results");
    lasync__push_aux(L, t, task_idx);
    for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
    return n;
  }
  /* Remember where the error came from, so the re-raising task's traceback can show it. */
  {
    lasync__runtime *rt = lasync__runtime_get(L);
    lasync__task *cur = rt->current;
    if (cur && cur->co == L) {
      lasync__push_task(L, cur);
      lasync__push_extra(L, -1);
      lua_pushvalue(L, task_idx);
      lua_setfield(L, -2, "cause");
      lua_pop(L, 2);
    }
  }
  lua_getiuservalue(L, task_idx, LASYNC__UV_FN);
  return lua_error(L);
}

/* The message handler of every task body: records the traceback at the point of failure, with
 * where the task was spawned and, when the error came from an awaited task, that task's own
 * traceback, in the task's extras (which keep its phase value, the arguments or the coroutine,
 * at [1]). Cancellations carry none: they are not failures. */
int lasync__trace_handler(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__task *t = rt ? rt->current : NULL;
  if (lasync__is_error_kind(L, 1, "cancelled") || t == NULL || t->co != L) return 1;
  lua_settop(L, 1);
  lasync__push_task(L, t);                         /* 2: task */
  luaL_traceback(L, L, NULL, 1);                   /* 3: traceback */
  {
    /* Its last frame is the coroutine's body (runtime.c), which is no part of the story. */
    static const char body_frame[] = "\n\t[C]: in ?";
    size_t len, tail = sizeof body_frame - 1;
    const char *tb = lua_tolstring(L, 3, &len);
    if (len > tail && memcmp(tb + len - tail, body_frame, tail) == 0) {
      lua_pushlstring(L, tb, len - tail);
      lua_replace(L, 3);
    }
  }
  /* The site is kept now, while the function is still the task's, so the report's label can
   * name it. The traceback names the function itself, unless a tail call or a wrapper (a
   * scope's child) left its frame out. */
  lasync__keep_task_site(L, 2);
  switch (lasync__push_task_site(L, 2)) { /* 4: file:line */
    case LASYNC__SITE_SPAWNED:
      lua_pushfstring(L, "\n\t(task spawned at %s)", lua_tostring(L, 4));
      break;
    case LASYNC__SITE_DEFINED:
      lua_pushfstring(L, "function <%s>", lua_tostring(L, 4));
      if (strstr(lua_tostring(L, 3), lua_tostring(L, -1)) == NULL)
        lua_pushfstring(L, "\n\t(task %s)", lua_tostring(L, -1));
      else
        lua_pushliteral(L, "");
      lua_remove(L, -2);
      break;
    default:
      lua_pushliteral(L, "");
  }
  lua_replace(L, 4);
  if (rt->parents_ref != LUA_NOREF) { /* debug mode: the chain of spawners too */
    lasync__push_spawn_chain(L, 2);
    lua_concat(L, 2);
  }
  lua_pushliteral(L, "");                          /* 5: the awaited task's story, if any */
  if (lasync__get_extra(L, 2, "cause") == LUA_TUSERDATA) { /* 6: the awaited task */
    lua_getiuservalue(L, 6, LASYNC__UV_FN);              /* 7: its error */
    lasync__get_extra(L, 6, "traceback");                /* 8: its traceback */
    if (lua_rawequal(L, 7, 1) && lua_type(L, 8) == LUA_TSTRING) {
      lua_pushfstring(L, "\nraised by an awaited task, %s", lua_tostring(L, 8));
      lua_replace(L, 5);
    }
  }
  lua_settop(L, 5);
  lua_concat(L, 3);                                /* 3: the whole traceback */
  lasync__push_extra(L, 2);
  lua_insert(L, -2);
  lua_setfield(L, -2, "traceback");
  lua_settop(L, 1);
  return 1;
}

/* "task 'worker-2' failed: <message>\n<traceback>": the report of a failure nobody saw, for the
 * task at task_idx. Allocates: callers on callback paths run it protected. */
void lasync__push_failure_report(lua_State *L, int task_idx) {
  int top = lua_gettop(L);
  task_idx = lua_absindex(L, task_idx);
  luaL_checkstack(L, 6, NULL);
  lasync__push_task_label(L, task_idx);              /* top+1: label */
  lua_pushliteral(L, " failed: ");
  lua_getiuservalue(L, task_idx, LASYNC__UV_FN);
  lasync__describe(L, -1);
  lua_remove(L, -2);                                 /* [label, " failed: ", msg] */
  if (lasync__get_extra(L, task_idx, "traceback") == LUA_TSTRING) {
    lua_pushliteral(L, "\n");
    lua_rotate(L, -2, 1);
    lua_concat(L, 5);
  } else {
    lua_pop(L, 1);
    lua_concat(L, 3);
  }
  lua_settop(L, top + 1);
}

/* ---- spawning ---- */

/* Spawn sites are kept as (source, line) pairs, the source an index into the runtime's `sites`
 * array: sources are few, so each name is stored once, and the last one is remembered in C
 * because consecutive spawns nearly always come from the same chunk. */
static uint32_t source_of(lua_State *L, lasync__runtime *rt, const char *short_src) {
  uint32_t id;
  if (rt->last_source && strcmp(rt->last_source_src, short_src) == 0) return rt->last_source;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->sites_ref);   /* [sites] */
  lua_pushstring(L, short_src);
  if (lua_rawget(L, -2) == LUA_TNUMBER) {
    id = (uint32_t)lua_tointeger(L, -1);
  } else {
    id = ++rt->nsources;
    lua_pushstring(L, short_src);
    lua_pushinteger(L, id);
    lua_rawset(L, -4);
    lua_pushstring(L, short_src);
    lua_rawseti(L, -3, id);
  }
  lua_pop(L, 2);
  rt->last_source = id;
  strcpy(rt->last_source_src, short_src);
  return id;
}

static uint32_t hash_site(uint32_t source, int line) {
  return (source * 0x9E3779B1u) ^ ((uint32_t)line * 0x85EBCA77u);
}

static void index_site(lasync__runtime *rt, uint32_t id) {
  const struct lasync__site_pair *p = &rt->site_pairs[id - 1];
  uint32_t mask = rt->site_index_cap - 1, i = hash_site(p->source, p->line) & mask;
  while (rt->site_index[i] != 0) i = (i + 1) & mask;
  rt->site_index[i] = id;
}

/* Doubles the pairs' room and rehashes them; raises a memory error with nothing changed. */
static void grow_sites(lua_State *L, lasync__runtime *rt) {
  uint32_t cap = rt->site_index_cap ? rt->site_index_cap * 2 : 64, id;
  uint32_t *index = cap > rt->site_index_cap ? (uint32_t *)calloc(cap, sizeof *index) : NULL;
  struct lasync__site_pair *pairs =
      index ? (struct lasync__site_pair *)realloc(rt->site_pairs, cap / 2 * sizeof *pairs) : NULL;
  if (pairs == NULL) {
    free(index);
    lasync__raise_oom(L, rt);
  }
  free(rt->site_index);
  rt->site_pairs = pairs;
  rt->site_index = index;
  rt->site_index_cap = cap;
  for (id = 1; id <= rt->nsite_pairs; id++) index_site(rt, id);
}

/* The id of the spawn site (source, line), numbered from 1, made if it is new (at most half
 * the index is full, so a probe ends soon). */
static uint32_t site_of(lua_State *L, lasync__runtime *rt, uint32_t source, int line) {
  uint32_t id, i, mask = rt->site_index_cap - 1;
  if (rt->site_index) {
    for (i = hash_site(source, line) & mask; (id = rt->site_index[i]) != 0; i = (i + 1) & mask) {
      if (rt->site_pairs[id - 1].source == source && rt->site_pairs[id - 1].line == line)
        return id;
    }
  }
  if ((rt->nsite_pairs + 1) * 2 > rt->site_index_cap) grow_sites(L, rt);
  id = ++rt->nsite_pairs;
  rt->site_pairs[id - 1].source = source;
  rt->site_pairs[id - 1].line = line;
  index_site(rt, id);
  return id;
}

/* By the metatable's address, kept in the runtime: luaL_testudata looks the metatable up by
 * name in the registry, which showed as a tenth of the time of 1M spawns + gather (issue 15).
 * The metatable lives in the registry until lua_close, so its address is never reused. */
lasync__task *lasync__totask(lua_State *L, int idx) {
  lasync__runtime *rt = lasync__runtime_get(L);
  void *p = lua_touserdata(L, idx);
  const void *mt;
  if (p == NULL) return NULL;
  if (rt == NULL || rt->task_mt == NULL) return (lasync__task *)luaL_testudata(L, idx, LASYNC_TASK_MT);
  if (!lua_getmetatable(L, idx)) return NULL;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return mt == rt->task_mt ? (lasync__task *)p : NULL;
}

/* The one callable check: functions, and values whose metatable has a __call function. spawn,
 * gather and (through core._is_callable) timeout, shield, run and wait_for all use it. */
int lasync__is_callable(lua_State *L, int idx) {
  int ok;
  if (lua_isfunction(L, idx)) return 1;
  if (!luaL_getmetafield(L, idx, "__call")) return 0;
  ok = lua_isfunction(L, -1);
  lua_pop(L, 1);
  return ok;
}

/* lasync's own chunks, "=[lasync]" and those CMakeLists.txt names "=[lasync ...]", are never a
 * task's site: a site tells the user where to look in their own code. */
static int is_lasync_chunk(const char *source) {
  return strncmp(source, "=[lasync", 8) == 0;
}

/* Debug mode's spawn site: the nearest Lua function up the stack outside lasync's own chunk.
 * A loop spawns from one function: that function is remembered (anchored in the sites table,
 * so its address is not reused), and a spawn from it needs only the line, not the source name
 * lua_getinfo's "S" formats. It is a tenth of a trivial task's cost (issue 15), which is why
 * a Lua function's task pays it only in debug mode, as only asyncio's debug mode keeps a
 * task's creation traceback. */
static void record_spawn_site(lua_State *L, lasync__runtime *rt, lasync__task *t) {
  lua_Debug ar;
  int level;
  /* The spawn site: the nearest Lua function up the stack outside lasync's own chunk. A loop
   * spawns from one function: that function is remembered (anchored in the sites table, so
   * its address is not reused), and a spawn from it needs only the line, not the source name
   * lua_getinfo's "S" formats (issue 15: "S" and the name compares were 4 % of a spawn). */
  for (level = 1; level <= 4 && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "fl", &ar); /* pushes the function */
    if (ar.currentline < 0) { /* a C function */
      lua_pop(L, 1);
      continue;
    }
    if (rt->last_site && lua_topointer(L, -1) == rt->last_site_fn) {
      lua_pop(L, 1);
      if (ar.currentline != rt->last_line) {
        rt->last_site = site_of(L, rt, rt->site_pairs[rt->last_site - 1].source, ar.currentline);
        rt->last_line = ar.currentline;
      }
      t->site = rt->last_site;
      break;
    }
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar); /* pops the copy */
    if (is_lasync_chunk(ar.source)) {
      lua_pop(L, 1);
      continue;
    }
    t->site = site_of(L, rt, source_of(L, rt, ar.short_src), ar.currentline); /* [.., fn] */
    rt->last_site = t->site;
    rt->last_line = ar.currentline;
    rt->last_site_fn = lua_topointer(L, -1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->sites_ref);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 0); /* sites[0]: the remembered function */
    lua_pop(L, 1);
    break;
  }
}

/* Pops the value on top; true if it is a Lua function outside lasync's own chunks, whose
 * definition ar then holds. */
static int pop_user_function(lua_State *L, lua_Debug *ar) {
  if (lua_type(L, -1) != LUA_TFUNCTION || lua_iscfunction(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  lua_getinfo(L, ">S", ar); /* pops it */
  return !is_lasync_chunk(ar->source);
}

/* The deepest level of co's stack, the frame it started with (found by halving, since each
 * lua_getstack walks from the top: a stack overflow's hundred thousand frames stay cheap). */
static int outermost_level(lua_State *co) {
  lua_Debug ar;
  int known = 0, beyond = 1;
  while (lua_getstack(co, beyond, &ar)) {
    known = beyond;
    beyond *= 2;
  }
  while (beyond - known > 1) {
    int mid = known + (beyond - known) / 2;
    if (lua_getstack(co, mid, &ar))
      known = mid;
    else
      beyond = mid;
  }
  return known;
}

/* Pushes "file:line" (or for a main chunk "file") of the definition ar holds. */
static void push_definition(lua_State *L, const lua_Debug *ar) {
  if (ar->linedefined > 0)
    lua_pushfstring(L, "%s:%d", ar->short_src, ar->linedefined);
  else
    lua_pushstring(L, ar->short_src);
}

/* Without debug mode a task's site is where its function is defined, as asyncio names a task
 * by its coroutine. The function is the task's own, or for a library wrapper (a scope's child,
 * say) the outermost frame of its coroutine that is not lasync's, or before it starts, the
 * first such function among its arguments. Pushes it and returns true, or pushes nothing and
 * returns false: a C function, a wrapper of one, or a task that has ended. */
static int push_definition_site(lua_State *L, lasync__task *t, int task) {
  lua_Debug ar;
  int found = 0, level, i;
  if (t->status != LASYNC__PENDING && t->status != LASYNC__RUNNING) return 0;
  luaL_checkstack(L, 3, NULL);
  lua_getiuservalue(L, task, LASYNC__UV_FN);
  found = pop_user_function(L, &ar);
  if (!found && t->status == LASYNC__RUNNING && t->co != NULL) {
    for (level = outermost_level(t->co); level >= 0 && !found; level--)
      found = lua_getstack(t->co, level, &ar) && lua_getinfo(t->co, "S", &ar) &&
              ar.what[0] != 'C' && !is_lasync_chunk(ar.source);
  }
  if (!found && t->status == LASYNC__PENDING && t->nargs > 0) {
    lasync__push_aux(L, t, task);
    if (t->nargs == 1) {
      found = pop_user_function(L, &ar);
    } else {
      for (i = 1; i <= (int)t->nargs && !found; i++) {
        lua_rawgeti(L, -1, i);
        found = pop_user_function(L, &ar);
      }
      lua_pop(L, 1);
    }
  }
  if (found) push_definition(L, &ar);
  return found;
}

/* Once the task fails its function is replaced by the error, so the site is kept first, as
 * the string in its extras: not interned with the spawn sites, which would keep every chunk
 * name a job runner ever loaded. */
void lasync__keep_task_site(lua_State *L, int task_idx) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, task_idx);
  int top = lua_gettop(L);
  task_idx = lua_absindex(L, task_idx);
  if (t->site == 0 && lasync__get_extra(L, task_idx, "site") == LUA_TNIL &&
      push_definition_site(L, t, task_idx)) { /* [.., nil, site] */
    lasync__push_extra(L, task_idx);
    lua_insert(L, -2);
    lua_setfield(L, -2, "site");
  }
  lua_settop(L, top);
}

int lasync__push_task_site(lua_State *L, int task_idx) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, task_idx);
  const struct lasync__site_pair *site;
  task_idx = lua_absindex(L, task_idx);
  if (t->site == 0) {
    if (lasync__get_extra(L, task_idx, "site") == LUA_TSTRING) return LASYNC__SITE_DEFINED;
    lua_pop(L, 1);
    if (push_definition_site(L, t, task_idx)) return LASYNC__SITE_DEFINED;
    lua_pushliteral(L, "?");
    return LASYNC__SITE_UNKNOWN;
  }
  site = &t->rt->site_pairs[t->site - 1];
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->rt->sites_ref);
  lua_rawgeti(L, -1, site->source);
  lua_pushfstring(L, "%s:%d", lua_tostring(L, -1), site->line);
  lua_replace(L, -3);
  lua_pop(L, 1);
  return LASYNC__SITE_SPAWNED;
}

/* Creates a task for the callable at fn_idx and the nargs values above it, leaves the task
 * on the stack in their place, and queues it. The caller has checked that fn is callable. */
lasync__task *lasync__spawn(lua_State *L, int fn_idx, int nargs) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__task *t;
  int i;
  fn_idx = lua_absindex(L, fn_idx);
  LASYNC__GC_PACE(L, rt); /* the collector's credit for a burst of tasks grows with them */
  t = (lasync__task *)lua_newuserdatauv(L, sizeof *t, LASYNC__TASK_NUV);
  memset(t, 0, sizeof *t);
  t->rt = rt;
  t->cancel_level = LASYNC__NO_CANCEL;
  t->timer.index = LASYNC__UNARMED;
  t->spawned_ms = (uint32_t)uv_now(rt->loop);
  t->nargs = (unsigned)nargs;
  if (rt->task_mt_ref != LUA_NOREF) { /* kept since lasync__open_task */
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->task_mt_ref);
    lua_setmetatable(L, -2);
  } else {
    luaL_setmetatable(L, LASYNC_TASK_MT);
  }
  lua_pushvalue(L, fn_idx);
  lua_setiuservalue(L, -2, LASYNC__UV_FN);
  if (nargs == 1) {
    lua_pushvalue(L, fn_idx + 1);
    lua_setiuservalue(L, -2, LASYNC__UV_AUX);
  } else if (nargs > 1) {
    lua_createtable(L, nargs, 0);
    for (i = 1; i <= nargs; i++) {
      lua_pushvalue(L, fn_idx + i);
      lua_rawseti(L, -2, i);
    }
    lua_setiuservalue(L, -2, LASYNC__UV_AUX);
  }
  /* A C function (async.spawn(error, msg)) or a callable table has no definition of its own to
   * name the task by, so it keeps its spawn site, as every task does in debug mode. */
  if (rt->debug || lua_type(L, fn_idx) != LUA_TFUNCTION || lua_iscfunction(L, fn_idx))
    record_spawn_site(L, rt, t);
  if (rt->debug) lasync__debug_spawned(L, rt, rt->current);
  lasync__reserve_ready(L, rt); /* before it counts: raising now leaves nothing behind */
  lasync__anchor_task(L, rt, t);
  rt->live_tasks++;
  rt->spawned++;
  lua_replace(L, fn_idx);
  lua_settop(L, fn_idx);
  lasync__enqueue(t, LASYNC__WAKE_VALUE);
  return t;
}

static void check_callable(lua_State *L, int idx, const char *fname) {
  if (!lasync__is_callable(L, idx)) lasync__argerror(L, idx, fname, "fn", "function");
}

/* async.spawn's options: a misspelt one is a misuse, not silently ignored. */
static void check_spawn_options(lua_State *L) {
  static const char *const known[] = {"name", NULL};
  lasync__check_options(L, 1, "async.spawn", known);
  if (lua_getfield(L, 1, "name") != LUA_TNIL && lua_type(L, -1) != LUA_TSTRING)
    lasync__opterror(L, -1, "async.spawn", "name", "string");
  lua_pop(L, 1);
}

/* async.spawn([opts,] fn, ...): opts is a table such as {name = "fetcher"}. */
static int l_spawn(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  int fn = 1;
  if (lua_type(L, 1) == LUA_TTABLE && !lasync__is_callable(L, 1) && lua_gettop(L) >= 2) {
    check_spawn_options(L);
    fn = 2;
  }
  check_callable(L, fn, "async.spawn");
  if (rt->closing) return lasync__misuse(L, "async.spawn: the runtime is shutting down");
  if (rt->fail_next_spawn) {
    rt->fail_next_spawn = 0;
    return lasync__raise_oom(L, rt);
  }
  lasync__spawn(L, fn, lua_gettop(L) - fn); /* [opts?, task] */
  if (fn == 2 && lua_getfield(L, 1, "name") == LUA_TSTRING) {
    lasync__push_extra(L, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "name");
  }
  lua_settop(L, fn);
  return 1;
}

/* ---- Task methods ---- */

lasync__task *lasync__check_task_arg(lua_State *L, int idx, const char *fname) {
  lasync__task *t = lasync__totask(L, idx);
  if (t == NULL) lasync__argerror(L, idx, fname, NULL, "Task");
  return t;
}

static void await_cancel(lasync__task *t, void *data) {
  lasync__waitlist_remove(&((lasync__task *)data)->waiters, &t->waiter);
}

static int await_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  return lasync__push_outcome(L, (lasync__task *)data, 1);
}

static const lasync__awaitable_ops AWAIT_TASK_OPS = {"task", await_cancel, await_finish, NULL};

static int await_task(lua_State *L, lasync__task *a, const char *fname) {
  lasync__task *t = lasync__check_task(L, fname);
  if (a == t) return lasync__misuse(L, "%s: a task cannot await itself", fname);
  lua_settop(L, 1);
  if (lasync__task_finished(a)) return lasync__push_outcome(L, a, 1);
  lasync__waitlist_add_task(&a->waiters, t);
  return lasync__suspend(L, t, &AWAIT_TASK_OPS, a);
}

static int task_await(lua_State *L) {
  return await_task(L, lasync__check_task_arg(L, 1, "task:await"), "task:await");
}

static int return_all(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L);
}

/* async.await(x): a task, or anything with an await method (a future, later a transfer). */
static int l_await(lua_State *L) {
  lasync__task *a = lasync__totask(L, 1);
  int type = lua_type(L, 1);
  if (a) return await_task(L, a, "async.await");
  lua_settop(L, 1);
  if ((type == LUA_TTABLE || type == LUA_TUSERDATA) &&
      lua_getfield(L, 1, "await") == LUA_TFUNCTION) {
    lua_insert(L, 1);                              /* [method, x] */
    lua_callk(L, 1, LUA_MULTRET, 0, return_all);
    return lua_gettop(L);
  }
  return lasync__misuse(L, "async.await: bad argument #1 (awaitable expected, got %s)",
                    luaL_typename(L, 1));
}

static const lasync__awaitable_ops YIELD_OPS = {"yield", NULL, NULL, NULL};

/* coroutine.yield, made task-aware: in a task's own coroutine a bare yield is a suspension
 * point like sleep(0), where cancellation arrives too; in any other coroutine it is exactly
 * Lua's own yield. */
static int l_yield(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__task *t = rt ? rt->current : NULL;
  if (t == NULL || t->co != L) return lua_yield(L, lua_gettop(L));
  t = lasync__check_task(L, "coroutine.yield");
  lua_settop(L, 0);
  lasync__enqueue(t, LASYNC__WAKE_VALUE);
  return lasync__suspend(L, t, &YIELD_OPS, NULL);
}

/* The scheduler owns its coroutines: a task's (or an idle pooled one) may be resumed or closed
 * only by it. A luv- or copas-style "resume me from a callback" helper would otherwise return a
 * task early from whatever it waits on and leave the scheduler pointing at a state that is
 * gone (issue 14, crash 1). Pushes "false, message" and returns 2 if co is the scheduler's, or
 * returns 0. */
static int refuse_owned(lua_State *L, const char *fname) {
  lasync__runtime *rt = lasync__runtime_get(L);
  if (rt == NULL || rt->owned_ref == LUA_NOREF || lua_type(L, 1) != LUA_TTHREAD) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->owned_ref);
  lua_pushvalue(L, 1);
  switch (lua_rawget(L, -2)) {
    case LUA_TUSERDATA:
      lasync__push_task_label(L, -1);
      lua_pushboolean(L, 0);
      lua_pushfstring(L,
                      "%s: the coroutine belongs to %s; only the scheduler resumes or closes it "
                      "(wait for a callback with async.future or async.event instead)",
                      fname, lua_tostring(L, -2));
      return 2;
    case LUA_TBOOLEAN:
      lua_pushboolean(L, 0);
      lua_pushfstring(L, "%s: the coroutine belongs to the scheduler (an idle task coroutine)",
                      fname);
      return 2;
    default:
      lua_pop(L, 2);
      return 0;
  }
}

/* coroutine.resume and coroutine.close: Lua's own (upvalue 1), except on the scheduler's
 * coroutines, where they fail the way they fail on a dead one: false and a message. */
static int l_coresume(lua_State *L) {
  if (refuse_owned(L, "coroutine.resume")) return 2;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET); /* Lua's resume never yields: no continuation */
  return lua_gettop(L);
}

/* coroutine.running: Lua's own; in a task it also records the coroutine as the scheduler's
 * (the only way Lua code gets one), for the two above. */
static int l_corunning(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  if (rt && rt->current && rt->current->co == L && rt->owned_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->owned_ref);
    lua_pushthread(L);
    lasync__push_task(L, rt->current);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    rt->exposed = 1;
  }
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 0, 2);
  return 2;
}

static int l_coclose(lua_State *L) {
  if (refuse_owned(L, "coroutine.close")) return 2;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Replaces field name of the library table on top of L by wrapper, a closure over the
 * original (its upvalue 1). Once per state: a second require must not wrap the wrappers. */
static void wrap_field(lua_State *L, const char *name, lua_CFunction wrapper) {
  if (lua_getfield(L, -1, name) == LUA_TFUNCTION && lua_tocfunction(L, -1) != wrapper) {
    lua_pushcclosure(L, wrapper, 1);
    lua_setfield(L, -2, name);
  } else {
    lua_pop(L, 1);
  }
}

/* debug.setlocal: Lua's own (upvalue 1), except on a C frame of one of the scheduler's
 * coroutines. A suspended task's C frames hold what its continuation reads back (the future
 * it awaits, the queue it waits on), and a value put there by hand would be read as the wrong
 * thing: a crash. A running task's own C frames are refused too: below its function is the
 * body of its coroutine (runtime.c, task_body), whose message handler the next task started on
 * that coroutine runs under. Its Lua frames stay open to debuggers. */
static int l_dbsetlocal(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lua_Debug ar;
  int arg = lua_type(L, 1) == LUA_TTHREAD; /* the level is argument arg + 1 */
  lua_State *co = arg ? lua_tothread(L, 1) : L;
  if (lua_isinteger(L, arg + 1)) {
    lua_Integer level = lua_tointeger(L, arg + 1);
    if (rt && rt->owned_ref != LUA_NOREF && level >= 0 && level <= INT_MAX &&
        lua_getstack(co, (int)level, &ar) && lua_getinfo(co, "S", &ar) && ar.what[0] == 'C') {
      int owned;
      if (co == L) {
        owned = rt->current && rt->current->co == L;
      } else {
        lua_rawgeti(L, LUA_REGISTRYINDEX, rt->owned_ref);
        lua_pushvalue(L, 1);
        owned = lua_rawget(L, -2) != LUA_TNIL;
        lua_pop(L, 2);
      }
      if (owned)
        return lasync__misuse(L,
                              "debug.setlocal: level %d of a task's coroutine is a C function "
                              "of the scheduler's; only its Lua functions' locals may be changed",
                              (int)level);
    }
    if (co == L && level > 0 && level < INT_MAX) {
      /* Levels of the running thread count from here; Lua's own runs one level further in. */
      lua_pushinteger(L, level + 1);
      lua_replace(L, arg + 1);
    }
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int task_cancel(lua_State *L) {
  lasync__task *t = lasync__check_task_arg(L, 1, "task:cancel");
  if (!lua_isnoneornil(L, 2) && !lua_isstring(L, 2))
    return lasync__misuse(L, "task:cancel: bad argument #1 'message' (string expected, got %s)",
                          lasync__typename(L, 2));
  lua_pushboolean(L, lasync__cancel(L, t, 0, lua_isnoneornil(L, 2) ? 0 : 2));
  return 1;
}

/* "Looked at", one rule (docs/toolkit.md): any call that tells the caller a task has finished
 * (await, result, done, status, gather, gather_settled, wait, as_completed, wait_for) counts as
 * looking at its outcome, so a failure seen that way is not reported again at exit. */
static int task_done(lua_State *L) {
  lasync__task *t = lasync__check_task_arg(L, 1, "task:done");
  if (lasync__task_finished(t)) lasync__mark_observed(L, t, 1);
  lua_pushboolean(L, lasync__task_finished(t));
  return 1;
}

/* core._task_ended(task): whether the task has finished, without marking its failure seen as
 * task:done does. A server's reaper looks at the tasks of its live requests with it: one that
 * a memory error ended keeps its report (its sentinel), which task:done silenced. */
static int l_task_ended(lua_State *L) {
  lasync__task *t = lasync__check_task_arg(L, 1, "core._task_ended");
  lua_pushboolean(L, lasync__task_finished(t));
  return 1;
}

static int task_status(lua_State *L) {
  lasync__task *t = lasync__check_task_arg(L, 1, "task:status");
  if (lasync__task_finished(t)) lasync__mark_observed(L, t, 1);
  lua_pushstring(L, lasync__status_names[t->status]);
  return 1;
}

static int task_result(lua_State *L) {
  lasync__task *t = lasync__check_task_arg(L, 1, "task:result");
  if (!lasync__task_finished(t))
    return lasync__misuse(L, "task:result: the task has not finished (status: %s)",
                      lasync__status_names[t->status]);
  return lasync__push_outcome(L, t, 1);
}

static int task_tostring(lua_State *L) {
  lasync__task *t = lasync__check_task_arg(L, 1, "tostring");
  lua_pushfstring(L, "Task: %p (%s)", (void *)t, lasync__status_names[t->status]);
  return 1;
}

/* ---- module functions ---- */

static int l_current(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  if (rt->current && rt->current->co == L)
    lasync__push_task(L, rt->current);
  else
    lua_pushnil(L);
  return 1;
}

static int l_in_task(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lua_pushboolean(L, rt->current && rt->current->co == L);
  return 1;
}

/* core._is_callable(v): the callable check for lua/'s functions. */
static int l_is_callable(lua_State *L) {
  lua_pushboolean(L, lasync__is_callable(L, 1));
  return 1;
}

/* core._is_task(v): lua/lasync.lua's argument check for async.wait_for. */
static int l_is_task(lua_State *L) {
  lua_pushboolean(L, lasync__totask(L, 1) != NULL);
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* Runs the loop until the task finishes: async.run outside a task, and the host. */
static int l_run_until(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__task *t = lasync__check_task_arg(L, 1, "async.run");
  if (rt->in_callback)
    return lasync__misuse(L, "async.run cannot start a loop while the loop is running "
                         "(call it from the main chunk, or from inside a task)");
  if (lasync__run_until_done(rt, t) != 0) {
    /* Nothing left can wake the task: cancel everything so cleanup runs, then report. */
    lasync__cancel_all(rt, "deadlock: nothing left could wake this task");
    lasync__run_until_done(rt, NULL);
    lua_pushboolean(L, 0);
    return 1;
  }
  /* asyncio.run semantics: what the main function left behind is cancelled and awaited. */
  if (lua_toboolean(L, 2) && rt->live_tasks > 0) {
    lasync__cancel_all(rt, "async.run is finishing");
    lasync__run_until_done(rt, NULL);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core._cancel_others([msg]): cancels every live task but the caller's (lua/host.lua, as the
 * main chunk fails). A message that cannot be recorded for lack of memory raises midway: the
 * caller tries again without one, which never allocates. */
static int l_cancel_others(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  lasync__task *t, *me = rt->current && rt->current->co == L ? rt->current : NULL;
  int msg = lua_isstring(L, 1) ? 1 : 0;
  uint32_t slot;
  /* Newest slot first, as lasync__cancel_all; cancelling never settles a task at once, so
   * the anchors hold still meanwhile. */
  for (slot = rt->anchors_top; slot > 0; slot--) {
    if ((t = lasync__task_at(L, rt, slot)) != NULL && t != me) lasync__cancel(L, t, 0, msg);
  }
  return 0;
}

/* ---- core._await_starved(): waiting for tasks that could not start ---- */

static void starved_cancel(lasync__task *t, void *data) {
  lasync__waitlist_remove(&((lasync__runtime *)data)->starved_waiters, &t->waiter);
}

static int starved_finish(lua_State *L, lasync__task *t, void *data) {
  (void)L, (void)t, (void)data;
  return 0;
}

static const lasync__awaitable_ops AWAIT_STARVED_OPS = {"tasks that could not start",
                                                        starved_cancel, starved_finish, NULL};

/* core._await_starved(): suspends the calling task until a loop turn has failed tasks that
 * could not start for want of memory (runtime.c's fail_starved), or tasks whose function a
 * memory error ended (body_continue). A server's reaper waits on it to answer the connections
 * whose handler task never ran or died before it could answer, so that nothing is paid for it
 * per request. */
static int l_await_starved(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "core._await_starved");
  lasync__waitlist_add_task(&t->rt->starved_waiters, t);
  return lasync__suspend(L, t, &AWAIT_STARVED_OPS, t->rt);
}

/* async._debug.starve_next_start(): the next task to start fails as if there were no memory
 * for it (the specs' way to reach what servers do then, without a memory cap's guesswork). */
static int l_debug_starve_next(lua_State *L) {
  lasync__runtime_get(L)->starve_next = 1;
  return 0;
}

/* async._debug.fail_next_spawn(): the next async.spawn raises "not enough memory", as at the
 * cap (the specs' way to reach a caller's handling of it). */
static int l_debug_fail_next_spawn(lua_State *L) {
  lasync__runtime_get(L)->fail_next_spawn = 1;
  return 0;
}

/* async._debug.fail_next_alloc(): the next allocation that grows the Lua heap fails as past
 * the cap, so "not enough memory" is raised where a spec chooses, which a cap alone cannot
 * do. A no-op in a state whose allocator is not lasync's (the module under stock lua5.4). */
static int l_debug_fail_next_alloc(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  if (rt->lua_heap) lasync__heap_fail_next(rt->lua_heap);
  return 0;
}

static int l_debug_counts(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  int self = rt->current && rt->current->co == L;
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, rt->live_tasks - self);
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, (lua_Integer)rt->heap_len + rt->queue_live);
  lua_setfield(L, -2, "timers");
  lua_pushinteger(L, rt->timers_reserved); /* a server connection's, kept while it lives */
  lua_setfield(L, -2, "timer_slots");
  lua_pushinteger(L, lasync__count_handles(rt));
  lua_setfield(L, -2, "handles");
  lua_pushinteger(L, rt->pinned_refs); /* tasks are anchored apart (lasync__anchor_task) */
  lua_setfield(L, -2, "refs");
  lua_pushinteger(L, rt->pool_len);
  lua_setfield(L, -2, "pooled_coroutines");
  lua_pushinteger(L, rt->live_requests);
  lua_setfield(L, -2, "requests");
  lua_pushinteger(L, rt->live_handles);
  lua_setfield(L, -2, "owned_handles"); /* io/handle.c's, open or not yet freed */
  return 1;
}

void lasync__open_task(lua_State *L) {
  static const luaL_Reg methods[] = {{"await", task_await},   {"cancel", task_cancel},
                                     {"done", task_done},     {"status", task_status},
                                     {"result", task_result}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"spawn", l_spawn},           {"create_task", l_spawn},
                                   {"await", l_await},           {"current", l_current},
                                   {"now", l_now},               {"_in_task", l_in_task},
                                   {"_run_until", l_run_until},  {"_debug_counts", l_debug_counts},
                                   {"_is_task", l_is_task},
                                   {"_cancel_others", l_cancel_others},
                                   {"_await_starved", l_await_starved},
                                   {"_task_ended", l_task_ended},
                                   {"_debug_starve_next", l_debug_starve_next},
                                   {"_debug_fail_next_spawn", l_debug_fail_next_spawn},
                                   {"_debug_fail_next_alloc", l_debug_fail_next_alloc},
                                   {"_is_callable", l_is_callable},
                                   {NULL, NULL}};
  luaL_newmetatable(L, LASYNC_TASK_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, task_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "Task");
  lua_setfield(L, -2, "__name");
  if (lasync__runtime_get(L)) {
    lasync__runtime *rt = lasync__runtime_get(L);
    rt->task_mt = lua_topointer(L, -1);
    if (rt->task_mt_ref == LUA_NOREF) { /* once: a second require finds the same table */
      lua_pushvalue(L, -1);
      rt->task_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
  if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
    lua_pushcfunction(L, l_yield);
    lua_setfield(L, -2, "yield");
    wrap_field(L, "resume", l_coresume);
    wrap_field(L, "close", l_coclose);
    wrap_field(L, "running", l_corunning);
  }
  lua_pop(L, 1);
  if (lua_getglobal(L, "debug") == LUA_TTABLE) wrap_field(L, "setlocal", l_dbsetlocal);
  lua_pop(L, 1);
}
