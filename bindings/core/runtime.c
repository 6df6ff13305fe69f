/* The runtime: one libuv loop, the ready queue, and the one path that resumes a task.
 *
 * Tasks become ready from many places (spawn, a timer, a finished task, a future, a transfer,
 * a cancellation); all of them call lasync__enqueue. The queue is drained after each poll by
 * on_check, and the idle handle keeps the poll from blocking while tasks are ready. Each drain
 * runs only the tasks that were ready when it began, so a task that keeps yielding cannot
 * starve I/O.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

#define POOL_MAX 1024 /* idle coroutines kept for reuse */

static const char RUNTIME_KEY = 'r';

/* The runtime last found on this thread: nearly every call is from its running task or its
 * main thread, recognised by pointer without the registry lookup (a hash walk in a registry of
 * a million pins: a tenth of the time of 1M spawns, issue 15). Forgotten when it closes, so it
 * never outlives it; a live coroutine or main thread of another state cannot share an address
 * with this one's. */
static _Thread_local lasync__runtime *last_rt;

lasync__runtime *lasync__runtime_get(lua_State *L) {
  lasync__runtime *rt = last_rt;
  if (rt && (rt->L == L || (rt->current && rt->current->co == L))) return rt;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &RUNTIME_KEY);
  rt = (lasync__runtime *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (rt && !rt->closing) last_rt = rt;
  return rt;
}

int lasync__pin(lasync__runtime *rt, lua_State *L) {
  int ref = luaL_ref(L, LUA_REGISTRYINDEX); /* may raise a memory error: count after it */
  rt->pinned_refs++;
  return ref;
}

void lasync__unpin(lasync__runtime *rt, lua_State *L, int ref) {
  if (ref == LUA_NOREF || ref == LUA_REFNIL) return;
  rt->pinned_refs--;
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
}

void lasync__anchor_task(lua_State *L, lasync__runtime *rt, lasync__task *t) {
  uint32_t slot = rt->anchors_free, next = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->anchors_ref); /* [task, anchors] */
  if (slot) {
    lua_rawgeti(L, -1, slot);
    next = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
  } else {
    slot = rt->anchors_top + 1;
  }
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, slot); /* a free slot is replaced; only a new one can raise (growing) */
  lua_pop(L, 1);
  if (slot > rt->anchors_top)
    rt->anchors_top = slot;
  else
    rt->anchors_free = next;
  t->slot = slot;
}

/* During a drain the anchors table also sits on the main thread's stack, at index
 * rt->anchors_at (lasync__drain): the drain reaches every task it starts and settles through
 * it, one call instead of three. The index counts from the drain's frame, so it is checked to
 * hold the table: in a function the drain calls on the main thread (lasync__cpcall) it does
 * not. */
static int anchors_here(lua_State *L, const lasync__runtime *rt) {
  return L == rt->L && rt->anchors_at && rt->anchors_at <= lua_gettop(L) &&
         lua_topointer(L, rt->anchors_at) == rt->anchors_ptr;
}

void lasync__unanchor_task(lua_State *L, lasync__runtime *rt, lasync__task *t) {
  if (t->slot == 0) return;
  if (anchors_here(L, rt)) {
    lua_pushinteger(L, rt->anchors_free);
    lua_rawseti(L, rt->anchors_at, t->slot); /* the slot exists: never allocates */
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->anchors_ref);
    lua_pushinteger(L, rt->anchors_free);
    lua_rawseti(L, -2, t->slot); /* the slot exists: replacing its value never allocates */
    lua_pop(L, 1);
  }
  rt->anchors_free = t->slot;
  t->slot = 0;
}

void lasync__push_task(lua_State *L, const lasync__task *t) {
  if (anchors_here(L, t->rt)) {
    lua_rawgeti(L, t->rt->anchors_at, t->slot);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->rt->anchors_ref);
  lua_rawgeti(L, -1, t->slot);
  lua_replace(L, -2);
}

/* lasync__push_task for the drain's own frame (resume_task, and body_continue, which runs while
 * the main thread is in the drain's resume): the index needs no check there. */
static void push_drained(lasync__runtime *rt, const lasync__task *t) {
  if (rt->anchors_at)
    lua_rawgeti(rt->L, rt->anchors_at, t->slot);
  else
    lasync__push_task(rt->L, t);
}

lasync__task *lasync__task_at(lua_State *L, lasync__runtime *rt, uint32_t slot) {
  lasync__task *t;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->anchors_ref);
  lua_rawgeti(L, -1, slot);
  t = lua_type(L, -1) == LUA_TUSERDATA ? (lasync__task *)lua_touserdata(L, -1) : NULL;
  lua_pop(L, 2);
  return t;
}

/* The one protected call from C into Lua, as lua.c's docall: the function and nargs arguments
 * on top of L are replaced by nres results (LUA_OK) or by one error value. The handler records
 * the traceback in the running task, if the error happens in one. A stack that cannot grow is
 * a memory error with a nil error value. */
void lasync__push_weak_table(lua_State *L, const char *mode) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, mode);
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

int lasync__pcall(lua_State *L, int nargs, int nres) {
  int base = lua_gettop(L) - nargs, status;
  if (!lua_checkstack(L, nres > 0 ? nres + 1 : 2)) {
    lua_pop(L, nargs + 1);
    lua_pushnil(L); /* room: nargs + 1 slots were just freed */
    return LUA_ERRMEM;
  }
  lua_pushcfunction(L, lasync__trace_handler);
  lua_insert(L, base);
  status = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  return status;
}

int lasync__cpcall(lua_State *L, lua_CFunction fn, void *ud) {
  int status;
  if (!lua_checkstack(L, 3)) return LUA_ERRMEM;
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, ud);
  status = lasync__pcall(L, 1, 0);
  if (status != LUA_OK) lua_pop(L, 1);
  return status;
}

/* ---- the ready queue ---- */

static void on_idle(uv_idle_t *handle) {
  (void)handle; /* Its only job is to keep the poll from blocking; on_check does the work. */
}

int lasync__raise_oom(lua_State *L, lasync__runtime *rt) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->oom_ref);
  return lua_error(L);
}

/* Doubles the ring, keeping the queue in order from index 0. The ring always has room for
 * every live task (each is queued at most once), grown at spawn where a memory error has a
 * task to fail, so enqueueing (from timers, completions, cancellation) never allocates. */
void lasync__reserve_ready(lua_State *L, lasync__runtime *rt) {
  uint32_t i, cap;
  lasync__task **ring;
  if ((uint64_t)rt->live_tasks < rt->ready_cap) return;
  cap = rt->ready_cap ? rt->ready_cap * 2 : 256;
  ring = cap > rt->ready_cap ? (lasync__task **)malloc(cap * sizeof *ring) : NULL;
  if (ring == NULL) lasync__raise_oom(L, rt);
  for (i = 0; i < rt->ready_len; i++)
    ring[i] = rt->ready[(rt->ready_head + i) & (rt->ready_cap - 1)];
  free(rt->ready);
  rt->ready = ring;
  rt->ready_head = 0;
  rt->ready_cap = cap;
}

uint32_t lasync__count_unstarted(const lasync__runtime *rt) {
  uint32_t i, n = 0;
  for (i = 0; i < rt->ready_len; i++)
    n += rt->ready[(rt->ready_head + i) & (rt->ready_cap - 1)]->status == LASYNC__PENDING;
  return n;
}

void lasync__enqueue(lasync__task *t, int wake) {
  lasync__runtime *rt = t->rt;
  if (t->queued) {
    if (wake == LASYNC__WAKE_CANCEL) t->wake = (uint8_t)wake;
    return;
  }
  if (rt->ready_len == rt->ready_cap) return; /* unreachable: reserved at spawn */
  t->queued = 1;
  t->wake = (uint8_t)wake;
  rt->ready[(rt->ready_head + rt->ready_len) & (rt->ready_cap - 1)] = t;
  if (rt->ready_len++ == 0) uv_idle_start(&rt->idle, on_idle);
}

static int new_thread(lua_State *L) {
  lua_newthread(L);
  lasync__gc_pace_threads(L, (lasync__runtime *)lua_touserdata(L, 1), 1);
  return 1;
}

/* Under lasync__pcall: fills the pool with fresh coroutines, as many as the drain has tasks
 * left to start (at most THREAD_BATCH): a burst of tasks that all suspend takes a fresh one
 * each, and the protected call around lua_newthread cost a third as much as the thread. A
 * memory error keeps the ones made before it. */
#define THREAD_BATCH 64

static int new_threads(lua_State *L) {
  lasync__runtime *rt = (lasync__runtime *)lua_touserdata(L, 1);
  uint32_t n = rt->drain_left + 1, i;
  if (n > THREAD_BATCH) n = THREAD_BATCH;
  if (n > (uint32_t)(POOL_MAX - rt->pool_len)) n = (uint32_t)(POOL_MAX - rt->pool_len);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->pool_ref);
  for (i = 0; i < n; i++) {
    lua_newthread(L);
    lua_rawseti(L, -2, ++rt->pool_len); /* sized for POOL_MAX: never allocates */
  }
  lasync__gc_pace_threads(L, rt, n); /* a burst of tasks that suspend: their coroutines */
  return 0;
}

/* A coroutine of the scheduler that Lua code has seen (coroutine.running, task.c) is recorded
 * in the owned table for its life, so the wrapped coroutine.resume can refuse it: marks it as
 * running the task at task_idx of the main thread's stack, or (task_idx 0) as idle. Only
 * replaces the value of an existing key, which never allocates; unseen ones cost nothing. */
static void mark_owned(lasync__runtime *rt, lua_State *co, int task_idx) {
  lua_State *L = rt->L;
  if (!rt->exposed) return;
  task_idx = task_idx ? lua_absindex(L, task_idx) : 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->owned_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  if (lua_rawget(L, -2) != LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    if (task_idx)
      lua_pushvalue(L, task_idx);
    else
      lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 2);
  }
}

/* A coroutine for a new task: an idle one from the pool, else a fresh thread. Leaves it on the
 * main thread's stack, or returns NULL with the memory error there: this runs in a libuv
 * callback, outside any protected call, so a fresh thread is made under lasync__pcall. */
static lua_State *acquire_coroutine(lasync__runtime *rt) {
  lua_State *L = rt->L;
  lua_State *co;
  int batched = 0;
  for (;;) {
    while (rt->pool_len > 0) {
      /* Its slot is not cleared: the next release overwrites it, and until then it only keeps
       * alive a coroutine that its task keeps alive anyway (or, if that task fails past its
       * body, one dropped coroutine per slot). */
      lua_rawgeti(L, LUA_REGISTRYINDEX, rt->pool_ref);
      lua_rawgeti(L, -1, rt->pool_len--);
      lua_replace(L, -2);
      co = lua_tothread(L, -1);
      if (lua_gethook(co) == NULL) return co;
      lua_pop(L, 1); /* hooked while idle: dropped, see release_coroutine */
    }
    /* A fresh thread takes the main thread's hook: with one set, they are made one at a time. */
    if (batched || lua_gethook(L) != NULL) break;
    batched = 1;
    lua_pushcfunction(L, new_threads);
    lua_pushlightuserdata(L, rt);
    if (lasync__pcall(L, 1, 0) != LUA_OK) {
      if (rt->pool_len == 0) return NULL; /* [.., error] */
      lua_pop(L, 1);
    }
  }
  lua_pushcfunction(L, new_thread);
  lua_pushlightuserdata(L, rt);
  if (lasync__pcall(L, 1, 1) != LUA_OK) return NULL;
  return lua_tothread(L, -1);
}

/* Returns a coroutine whose task ended normally to the pool. Its stack must be empty. */
static void release_coroutine(lasync__runtime *rt, lua_State *co) {
  lua_State *L = rt->L;
  mark_owned(rt, co, 0);
  /* A hooked coroutine (debug.sethook(co, ...) on a task, or a hook inherited from the main
   * thread) is not reused: the hook would follow it into an unrelated task, and a fresh thread
   * is exactly what lua_newthread gives, with the main thread's hook if it has one. */
  if (rt->pool_len >= POOL_MAX || lua_status(co) != LUA_OK || lua_gethook(co) != NULL) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->pool_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawseti(L, -2, ++rt->pool_len);
  lua_pop(L, 1);
}

/* Puts the pending task at index task of the main thread onto the coroutine co, which holds
 * nothing or only the body's handler: pushes the function and the arguments. The coroutine sits
 * on the main thread's stack while it runs; it becomes the task's phase value, which anchors it,
 * only if the task suspends (anchor_suspended), so a task that runs to its end never sets it.
 * The caller has made room for nargs + 2 values on the main thread and nargs + 3 on co. */
static void load_task(lasync__runtime *rt, lasync__task *t, int task, lua_State *co) {
  lua_State *L = rt->L;
  int i, args, nargs = t->nargs;
  lua_getiuservalue(L, task, LASYNC__UV_FN);        /* [fn] */
  if (nargs > 0) {
    lasync__push_aux(L, t, task);                   /* [fn, args] */
    if (nargs > 1) {
      args = lua_gettop(L);
      for (i = 1; i <= nargs; i++) lua_rawgeti(L, args, i);
      lua_remove(L, args);
    }
  }
  lua_xmove(L, co, 1 + nargs);
  /* The arguments stay the phase value until the coroutine or the outcome replaces them. The
   * function stays until the results replace it (its frame holds it meanwhile anyway): a slow
   * last step in debug mode can say where it ran. */
  mark_owned(rt, co, task);
  t->co = co;
  t->status = LASYNC__RUNNING;
}

static int task_body(lua_State *co);

/* Moves a pending task (at index task of the main thread) onto a coroutine, under the body
 * every task coroutine runs (task_body, with the traceback handler below the function), and
 * returns how many values lua_resume should take; the coroutine is left on the main thread's
 * stack. */
static int start_task(lasync__runtime *rt, lasync__task *t, int task) {
  lua_State *L = rt->L;
  lua_State *co;
  if (!lua_checkstack(L, 4)) return -2;
  co = acquire_coroutine(rt);                        /* [.., co] */
  if (co == NULL) {                                  /* [.., error]: fail it, unstarted */
    lua_setiuservalue(L, task, LASYNC__UV_FN);
    return -1;
  }
  if (!lua_checkstack(co, (int)t->nargs + 5) || !lua_checkstack(L, (int)t->nargs + 2)) {
    lua_pop(L, 1); /* fresh or pooled: dropped unused */
    return -2;
  }
  lua_pushcfunction(co, task_body);
  lua_pushcfunction(co, lasync__trace_handler);
  load_task(rt, t, task, co);
  return (int)t->nargs + 2; /* [.., co]: kept there while it runs, see resume_task */
}

/* Fails the task at index task with "not enough memory" without allocating: the way out when
 * storing its outcome, making its error or its report ran out of memory. */
static void fail_oom(lasync__runtime *rt, lasync__task *t, int task) {
  lua_State *L = rt->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->oom_ref);
  lua_setiuservalue(L, task, LASYNC__UV_FN);
  lua_pushnil(L);
  lasync__set_aux(L, t, task);
  lasync__task_settle(rt, t, LASYNC__FAILED, 0);
}

/* A task that cannot start for want of memory fails without allocating: no coroutine, no error
 * object, no sentinel. Once one start has failed in a drain (after Lua's emergency collection
 * found nothing to free), the starts after it in the same drain fail this way without trying:
 * each try would be another full collection of a heap full of queued tasks, so a million of
 * them took minutes to fail one by one (issue 14, crash 2). Those nobody awaits are reported
 * together at the end of the drain (report_starved). The task is at index task. */
static void fail_starved(lasync__runtime *rt, lasync__task *t, int task) {
  rt->starved = 1;
  if (!t->observed && t->waiters.head == NULL) {
    t->observed = 1; /* reported here, once, in place of a sentinel */
    rt->starved_unseen++;
  }
  fail_oom(rt, t, task);
}

/* One report for the tasks of this drain that could not start, from a buffer on the C stack;
 * the starved waiters are woken then, and after a drain where a memory error ended a task. */
static void report_starved(lasync__runtime *rt) {
  char msg[160];
  long n = rt->starved_unseen;
  rt->starved = 0;
  rt->starved_unseen = 0;
  rt->oom_ended = 0;
  /* What the tasks that never started were given (a server's connection, say) is unreachable
   * now, but an idle loop allocates nothing, so no collection would come to finalize it: the
   * client on the other end would wait for ever. One full collection per starved drain closes
   * such things now (a collection does not allocate; finalizers' errors become warnings). */
  lua_gc(rt->L, LUA_GCCOLLECT);
  lasync__waitlist_settle(&rt->starved_waiters); /* woken through the ready ring: no allocation */
  if (n == 0) return;
  rt->unhandled_failures += n;
  if (n == 1)
    snprintf(msg, sizeof msg, "not enough memory: a task could not start");
  else
    snprintf(msg, sizeof msg, "not enough memory: %ld tasks could not start", n);
  lasync__report(rt, msg);
}

/* Under lasync__cpcall: moves the n > 1 results on the task's coroutine into a table, which
 * replaces the coroutine or the arguments as the task's phase value. */
static int store_results(lua_State *L) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, 1);
  lua_State *co = t->co;
  int i, n = t->nargs;
  lasync__push_task(L, t);  /* 2: task */
  lua_createtable(L, n, 0); /* 3: results */
  luaL_checkstack(L, n, "too many results");
  lua_xmove(co, L, n);
  for (i = n; i >= 1; i--) lua_rawseti(L, 3, i);
  lasync__set_aux(L, t, 2);
  return 0;
}

/* The task's function returned its n results (ok) or raised its error (n is 1), the top n
 * values of its coroutine: moves them into the task (at index task of the main thread), off
 * the coroutine, and settles the task. Allocates only under lasync__cpcall, so it runs
 * unprotected, from the drain or from the body of the coroutine (task_body). */
/* Under lasync__cpcall: keeps the site of the task (a light userdata) before its error
 * replaces its function. A memory error runs no message handler, which otherwise keeps it;
 * with no memory for it either, the report names no site. */
static int keep_site(lua_State *L) {
  lasync__push_task(L, (lasync__task *)lua_touserdata(L, 1));
  lasync__keep_task_site(L, -1);
  return 0;
}

static void finish_task(lasync__runtime *rt, lasync__task *t, int ok, int n, int task) {
  lua_State *L = rt->L;
  lua_State *co = t->co;
  int status, stored = 0, room = 0;
  if (ok) {
    status = LASYNC__DONE;
    if (n == 1) {
      lua_xmove(co, L, 1);
    } else if (n > 1 && (room = lua_checkstack(co, 1)) != 0) {
      lua_pushvalue(co, -n);
      lua_xmove(co, L, 1);
    } else {
      lua_pushnil(L); /* no result (the function was kept here), or no room for one */
    }
    lua_setiuservalue(L, task, LASYNC__UV_FN);
    if (room) {
      t->nargs = (unsigned)n;
      stored = lasync__cpcall(L, store_results, t) == LUA_OK;
    }
  } else {
    n = 1;
    lua_xmove(co, L, 1); /* the error (its traceback is in the extras: lasync__trace_handler) */
    status = lasync__is_error_kind(L, -1, "cancelled") ? LASYNC__CANCELLED : LASYNC__FAILED;
    if (status == LASYNC__FAILED && t->site == 0) (void)lasync__cpcall(L, keep_site, t);
    lua_setiuservalue(L, task, LASYNC__UV_FN);
  }
  t->co = NULL;
  t->co_anchored = 0;
  if (!stored) { /* the phase value is the coroutine or the arguments: the caller keeps the one,
                  * the other are let go */
    lua_pushnil(L);
    lasync__set_aux(L, t, task);
  }
  if (ok && n > 1 && !stored)
    fail_oom(rt, t, task); /* its results did not fit in memory */
  else
    lasync__task_settle(rt, t, status, ok ? n : 0);
}

/* The error escaped the task body (a memory error while handling an error, for example):
 * the coroutine is unusable, so it is reset and dropped rather than pooled. */
static void fail_task(lasync__runtime *rt, lasync__task *t, int task) {
  lua_State *L = rt->L;
  lua_State *co = t->co;
  lua_xmove(co, L, 1);
  if (t->site == 0) (void)lasync__cpcall(L, keep_site, t);
  lua_setiuservalue(L, task, LASYNC__UV_FN);
  lua_resetthread(co);
  mark_owned(rt, co, 0);
  t->co = NULL;
  t->co_anchored = 0;
  lua_pushnil(L); /* the main thread's stack holds the coroutine through the reset */
  lasync__set_aux(L, t, task);
  lasync__task_settle(rt, t, LASYNC__FAILED, 0);
}

/* Under lasync__cpcall: the error of a task cancelled before it started. */
static int cancel_unstarted(lua_State *L) {
  lasync__task *t = (lasync__task *)lua_touserdata(L, 1);
  lasync__push_task(L, t);
  lasync__push_error(L, "cancelled", "task cancelled before it started");
  lua_setiuservalue(L, -2, LASYNC__UV_FN);
  lua_pushnil(L); /* its arguments */
  lasync__set_aux(L, t, -2);
  return 0;
}

/* Takes the next ready task off the ring. */
static lasync__task *dequeue(lasync__runtime *rt) {
  lasync__task *t = rt->ready[rt->ready_head];
  rt->ready_head = (rt->ready_head + 1) & (rt->ready_cap - 1);
  rt->ready_len--;
  t->queued = 0;
  return t;
}

/* The next ready task, taken off the ring, when the drain would start it now and it can start
 * on co at once: it is pending and not cancelled, and nothing asks for the drain's own path
 * (a step's budget or debug mode, which time each resume; a starved drain; a hook on co, which
 * must not follow it into another task; shutdown). Else NULL, with nothing taken. */
static lasync__task *take_chained(lasync__runtime *rt, lua_State *co) {
  lasync__task *t;
  if (rt->drain_left == 0 || rt->ready_len == 0 || rt->step_deadline || rt->debug ||
      rt->starved || rt->starve_next || rt->closing)
    return NULL;
  t = rt->ready[rt->ready_head];
  if (t->status != LASYNC__PENDING || t->cancel_level != LASYNC__NO_CANCEL ||
      lua_gethook(co) != NULL || !lua_checkstack(rt->L, (int)t->nargs + 4) ||
      !lua_checkstack(co, (int)t->nargs + 3))
    return NULL;
  rt->drain_left--;
  return dequeue(rt);
}

static int body_continue(lua_State *co, int status, lua_KContext ctx);

/* The task about to run: a helper task (revive.c) runs with the part of the memory cap kept
 * for helpers open (alloc.c's RESERVE), every other task and the scheduler without it. */
static void set_current(lasync__runtime *rt, lasync__task *t) {
  int helper = t != NULL && t->revive;
  rt->current = t;
  if (helper != rt->reserve_open && rt->lua_heap != NULL) {
    rt->reserve_open = helper;
    lasync__heap_reserve(rt->lua_heap, helper);
  }
}

/* A helper task that a memory error ended waits in its body's frame, [handler, fn]
 * (revive.c), and resumes here once its delay is over: fn starts over, under the body's pcall
 * as at the task's start. Resumed past the scheduler (coroutine.resume from Lua), it goes on
 * waiting. */
static int revive_resumed(lua_State *co, int status, lua_KContext ctx) {
  lasync__runtime *rt = (lasync__runtime *)ctx;
  lasync__task *t = rt->current;
  (void)status;
  if (t == NULL || t->co != co) {
    lua_settop(co, 2);
    return lua_yieldk(co, 0, ctx, revive_resumed);
  }
  lasync__revive_start(co, t);
  return body_continue(co, lua_pcallk(co, 1, LUA_MULTRET, 1, ctx, body_continue), ctx);
}

/* The body of every task coroutine, [handler, function, arguments...]: calls the function
 * under a pcall with the traceback handler, so an error ends the function, not the coroutine,
 * and its <close> variables may still suspend while it unwinds (as under xpcall). */
static int task_body(lua_State *co) {
  lua_KContext rt = (lua_KContext)lasync__runtime_get(co);
  return body_continue(co, lua_pcallk(co, lua_gettop(co) - 2, LUA_MULTRET, 1, rt, body_continue),
                       rt);
}

/* The task's function ended (status LUA_OK, or LUA_YIELD once it had suspended, or an error):
 * the task is settled here, on its coroutine, and the next ready task, if it has not started
 * yet, runs on the same coroutine within the same resume (take_chained), so a burst of short
 * tasks costs the drain one resume, not one each. The body ends when no task follows. */
static int body_continue(lua_State *co, int status, lua_KContext ctx) {
  lasync__runtime *rt = (lasync__runtime *)ctx;
  lua_State *L = rt->L;
  int task = 0; /* the running task's index on the main thread, when it is there */
  for (;;) {
    lasync__task *t = rt->current;
    /* Resumed past the scheduler (Lua's own coroutine.resume, kept from before lasync was
     * loaded, on a task suspended in Lua's own yield): the running task, if any, is another
     * one. The coroutine just ends, as it did under xpcall, handing the function's results (or
     * its error) to its resumer, and its task fails when the scheduler next resumes it
     * ("cannot resume dead coroutine"). */
    if (t == NULL || t->co != co) return lua_gettop(co) - 1;
    if (rt->resume_started) { /* debug mode timed this resume (no task follows one there) */
      uint64_t spent = uv_hrtime() - rt->resume_started;
      if (spent > rt->slow_step_ns) lasync__debug_slow_step(co, t, spent, 1);
      rt->resume_started = 0;
    }
    if (task == 0) {
      /* A task chained here that failed ends this function by an error, and the body goes on
       * in a new call (the continuation): the task is still on top, where it was pushed. A
       * second copy would stay below the next ones until the resume ends, one per failure,
       * keeping the task alive and growing the main thread's stack. */
      if (lua_touserdata(L, -1) != t) push_drained(rt, t);
      task = lua_gettop(L);
    }
    /* A memory error that ends a task's function may have struck where the function meant to
     * undo what it holds (at the cap even a call to pcall can find no room for its frame): a
     * server's request task, past its handler's protection, left its connection open and its
     * client waiting. The starved waiters (the servers' reapers) are woken at the drain's end
     * for it too, as for a task that could not start, and tidy what such a task left. */
    if (status == LUA_ERRMEM) {
      rt->oom_ended = 1;
      /* A helper task (revive.c) waits, here, to call its function again. */
      if (lasync__revive(rt, t, task, co)) return lua_yieldk(co, 0, ctx, revive_resumed);
    }
    finish_task(rt, t, status == LUA_OK || status == LUA_YIELD, lua_gettop(co) - 1, task);
    lua_settop(co, 1); /* [handler] */
    lua_settop(L, task - 1);
    if ((t = take_chained(rt, co)) == NULL) return 0;
    push_drained(rt, t);
    task = lua_gettop(L);
    load_task(rt, t, task, co); /* take_chained made the room */
    set_current(rt, t);
    /* The task stays at index task while it runs, for its settling here. If it suspends, the
     * resume ends, and resume_task clears the main thread's stack. */
    status = lua_pcallk(co, lua_gettop(co) - 2, LUA_MULTRET, 1, ctx, body_continue);
  }
}

/* The task t has suspended on its coroutine, at index co_idx of the main thread's stack, where
 * resume_task keeps it while it runs (a task chained on it may still sit above it: its body
 * suspended before popping it): makes the coroutine the task's phase value, which keeps it alive
 * once the main thread's stack lets go of it. Allocates nothing, and needs three slots (the task,
 * the coroutine, the extras table in set_aux): the checks before the resume and take_chained's
 * leave them. */
static void anchor_suspended(lasync__runtime *rt, lasync__task *t, int co_idx) {
  lua_State *L = rt->L;
  if (t->co_anchored) return;
  push_drained(rt, t);
  lua_pushvalue(L, co_idx);
  lasync__set_aux(L, t, -2);
  lua_pop(L, 1);
  t->co_anchored = 1;
}

/* The one place that resumes a task. A task that starts here sits on the main thread's stack
 * meanwhile (index task), pushed once. The coroutine may run more tasks than this one before
 * it stops (body_continue): rt->current says which one it ran last. */
static void resume_task(lasync__runtime *rt, lasync__task *t) {
  lua_State *L = rt->L;
  lua_State *co;
  lasync__task *last;
  int nargs = 0, nres = 0, status, task = 0, base = lua_gettop(L), co_idx;
  if (t->status == LASYNC__PENDING) {
    if (rt->starved || rt->starve_next) {
      rt->starve_next = 0;
      push_drained(rt, t);
      fail_starved(rt, t, lua_gettop(L));
      lua_pop(L, 1);
      return;
    }
    if (t->cancel_level != LASYNC__NO_CANCEL) {
      /* Cancelled before it ever ran: its function never starts. */
      if (lasync__cpcall(L, cancel_unstarted, t) == LUA_OK) {
        lasync__task_settle(rt, t, LASYNC__CANCELLED, 0);
      } else {
        push_drained(rt, t);
        fail_starved(rt, t, lua_gettop(L));
        lua_pop(L, 1);
      }
      return;
    }
    push_drained(rt, t);
    task = lua_gettop(L);
    nargs = start_task(rt, t, task);
    if (nargs < 0) {
      fail_starved(rt, t, task); /* in place of the memory error start_task may have stored */
      lua_settop(L, task - 1);
      return;
    }
  }
  co = t->co;
  if (task == 0) {
    /* The coroutine is anchored on the main thread's stack while it runs, as a starting one
     * already is (start_task): the body may settle the task, which lets go of it, and a
     * running coroutine is no root of the collector's. */
    if (!lua_checkstack(L, 4) || !lua_checkstack(co, 1)) {
      lasync__enqueue(t, t->wake); /* tried again next turn: no room for one more value */
      return;
    }
    lua_pushthread(co);
    lua_xmove(co, L, 1);
  }
  co_idx = lua_gettop(L); /* [.., co], both ways */
  set_current(rt, t);
  if (rt->debug) {
    /* A step that ends the task is timed by the body, which settles it (body_continue) and
     * clears resume_started: t may be gone then, and if the task switched debug mode off, a
     * task chained after it may be the one that suspended. */
    uint64_t spent;
    rt->resume_started = uv_hrtime();
    status = lua_resume(co, L, nargs, &nres);
    spent = uv_hrtime() - rt->resume_started;
    if (status == LUA_YIELD && rt->resume_started && spent > rt->slow_step_ns)
      lasync__debug_slow_step(L, t, spent, 0);
    rt->resume_started = 0;
  } else {
    status = lua_resume(co, L, nargs, &nres);
  }
  last = rt->current;
  set_current(rt, NULL);
  if (status == LUA_YIELD) {
    lua_pop(co, nres);
    anchor_suspended(rt, last, co_idx);
    /* A bare coroutine.yield() in a task is a sleep(0), so the scheduler never hands the
     * task's values to anyone. */
    if (last->wait_ops == NULL) lasync__enqueue(last, LASYNC__WAKE_VALUE);
  } else if (status == LUA_OK) { /* the body settled the tasks it ran, and ended */
    lua_settop(co, 0);
    release_coroutine(rt, co);
  } else if (last->co == co) { /* an error escaped the body while the task ran */
    if (status == LUA_ERRMEM) rt->oom_ended = 1; /* as in body_continue */
    push_drained(rt, last);
    fail_task(rt, last, lua_gettop(L));
    lua_pop(L, 1);
  } else { /* ... or after it was settled: the coroutine is dropped */
    lua_resetthread(co);
    mark_owned(rt, co, 0);
  }
  lua_settop(L, base);
}

int lasync__step_fits(const lasync__runtime *rt, uint64_t *avg) {
  uint64_t now;
  if (rt->step_deadline == 0) return 1;
  now = uv_hrtime();
  if (now < rt->step_deadline && rt->step_deadline - now > 2 * *avg) return 1;
  *avg -= *avg / 8;
  return 0;
}

void lasync__step_measure(uint64_t *avg, uint64_t sample) {
  /* An average that follows the slow pieces more than the quick ones (half the weight to a
   * sample above it, a quarter below), since what matters is how long the next piece may take.
   * A sample counts as at most 16 times the average (or 160 us, for the first ones): on a
   * loaded machine the thread may be preempted in the middle of a piece, which says little
   * about the next one, while work that really got slower is still learnt within a few
   * samples. */
  uint64_t cap = 16 * (*avg > 10000 ? *avg : 10000);
  if (sample > cap) sample = cap;
  *avg = sample > *avg ? (*avg + sample) / 2 : (*avg * 3 + sample) / 4;
}

void lasync__drain(lasync__runtime *rt) {
  uint32_t saved_left;
  int saved_at = rt->anchors_at;
  lasync__gc_pace_poll(rt);
  lasync__services_turn(rt); /* may make tasks ready */
  rt->anchors_at = 0; /* an outer drain's index counts from another frame */
  if (rt->ready_len > 0 && lua_checkstack(rt->L, 1)) { /* else every lookup takes the long way */
    lua_rawgeti(rt->L, LUA_REGISTRYINDEX, rt->anchors_ref);
    rt->anchors_at = lua_gettop(rt->L);
    rt->anchors_ptr = lua_topointer(rt->L, -1);
  }
  saved_left = rt->drain_left;
  /* Only those ready now; later arrivals wait for the next turn. A task's coroutine may start
   * the next ones itself (take_chained), counted off the same drain_left. */
  rt->drain_left = rt->ready_len;
  while (rt->drain_left > 0) {
    lasync__task *t;
    uint64_t start = 0;
    if (rt->step_deadline) {
      /* lasync_step's budget: a resume only if one fits in what is left, so the step ends
       * within it. The first of each step runs whatever the clock says, so every step makes
       * progress: when resumes have grown too slow to ever fit, and when the loop's own turn
       * already used the budget (a loaded machine, valgrind), which skipped every resume of
       * the step and left a host's `lasync_step(rt, 1)` waiting on nothing. The overshoot is
       * one resume. */
      if (rt->step_resumes > 0 && !lasync__step_fits(rt, &rt->resume_ns)) break;
      rt->step_resumes++;
      start = uv_hrtime();
    }
    rt->drain_left--;
    t = dequeue(rt);
    resume_task(rt, t);
    if (start) lasync__step_measure(&rt->resume_ns, uv_hrtime() - start);
  }
  rt->drain_left = saved_left;
  if (rt->anchors_at) lua_settop(rt->L, rt->anchors_at - 1);
  rt->anchors_at = saved_at;
  if (rt->starved || rt->oom_ended) report_starved(rt);
  if (rt->ready_len == 0) uv_idle_stop(&rt->idle);
}

static void on_check(uv_check_t *handle) {
  lasync__runtime *rt = (lasync__runtime *)handle->data;
  rt->in_callback++;
  lasync__drain(rt);
  rt->in_callback--;
}

int lasync__run_until_done(lasync__runtime *rt, lasync__task *t) {
  int alive = 1, collected = 0;
  while (t ? !lasync__task_finished(t) : rt->live_tasks > 0) {
    if (!alive && rt->ready_len == 0) {
      /* Transfers held back by a step's quota are admitted here, outside any step. */
      lasync__services_turn(rt);
      if (!uv_loop_alive(rt->loop) && rt->ready_len == 0) {
        /* What would wake them may be garbage whose finalizer does it (a response dropped
         * unread gives its connection permit back): one full collection before calling it a
         * deadlock. */
        if (collected) return -1; /* nothing can wake them */
        collected = 1;
        lua_gc(rt->L, LUA_GCCOLLECT);
        lasync__services_turn(rt);
        if (!uv_loop_alive(rt->loop) && rt->ready_len == 0) return -1;
      }
    }
    rt->in_callback++;
    alive = uv_run(rt->loop, UV_RUN_ONCE);
    rt->in_callback--;
    if (alive) collected = 0;
  }
  return 0;
}

typedef struct {
  lasync__task *t;
  const char *msg;
} cancel_req;

/* Under lasync__cpcall: cancels one task with a message (recording it allocates). */
static int cancel_protected(lua_State *L) {
  cancel_req *c = (cancel_req *)lua_touserdata(L, 1);
  lua_pushstring(L, c->msg);
  lasync__cancel(L, c->t, 0, 2);
  return 0;
}

/* Walks the anchors, newest slot first (no allocation to collect them: this runs from SIGINT's
 * callback too). Cancelling never settles a task at once, so the anchors hold still meanwhile. */
void lasync__cancel_all(lasync__runtime *rt, const char *msg) {
  uint32_t slot;
  if (!lua_checkstack(rt->L, 2)) return; /* no memory for two stack slots: nothing can run */
  for (slot = rt->anchors_top; slot > 0; slot--) {
    cancel_req c;
    lasync__task *t = lasync__task_at(rt->L, rt, slot);
    if (t == NULL) continue;
    c.t = t;
    c.msg = msg;
    /* Without memory for the message the cancellation still goes through, unexplained, and
     * the tasks after it are not given one either: each try would be a full collection. */
    if (msg != NULL && lasync__cpcall(rt->L, cancel_protected, &c) == LUA_OK) continue;
    msg = NULL;
    lasync__cancel(rt->L, t, 0, 0);
  }
}

typedef struct {
  lasync__runtime *rt;
  int n;
} handle_count;

static void count_handle(uv_handle_t *h, void *arg) {
  handle_count *c = (handle_count *)arg;
  if (h == (uv_handle_t *)&c->rt->idle || h == (uv_handle_t *)&c->rt->check ||
      h == (uv_handle_t *)&c->rt->timer)
    return;
  if (uv_is_active(h) && uv_has_ref(h)) c->n++;
}

/* Counts the active libuv handles other than the runtime's own: what a spec must leave at 0. */
int lasync__count_handles(lasync__runtime *rt) {
  handle_count c = {rt, 0};
  uv_walk(rt->loop, count_handle, &c);
  return c.n;
}

/* Under lasync__pcall: the runtime's Lua side (registry entries), all of which allocate. */
static int open_lua_side(lua_State *L) {
  lasync__runtime *rt = (lasync__runtime *)lua_touserdata(L, 1);
  lua_newtable(L);
  rt->sites_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  rt->anchors_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* Sized for POOL_MAX up front, so putting a coroutine back never allocates (it happens in a
   * libuv callback, where a memory error would have no protected call to land in). */
  lua_createtable(L, POOL_MAX, 0);
  rt->pool_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushliteral(L, "not enough memory");
  rt->oom_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lasync__push_weak_table(L, "k");
  rt->owned_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* Last: once the state names the runtime, it is complete. */
  lua_pushlightuserdata(L, rt);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &RUNTIME_KEY);
  return 0;
}

static void on_own_handle_closed(uv_handle_t *h);

/* Opens a runtime on L (any thread of the state) and loop (NULL: its own). Returns NULL when
 * out of memory or when libuv fails, with nothing left behind; never raises. */
lasync__runtime *lasync__runtime_open(lua_State *L, uv_loop_t *loop) {
  lasync__runtime *rt;
  if (!lua_checkstack(L, 4)) return NULL;
  rt = (lasync__runtime *)calloc(1, sizeof *rt);
  if (rt == NULL) return NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  rt->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  if (loop == NULL) {
    if (uv_loop_init(&rt->own_loop) != 0) {
      free(rt);
      return NULL;
    }
    loop = &rt->own_loop;
    rt->owns_loop = 1;
  }
  rt->loop = loop;
  uv_idle_init(loop, &rt->idle);
  uv_check_init(loop, &rt->check);
  uv_timer_init(loop, &rt->timer);
  rt->idle.data = rt->check.data = rt->timer.data = rt;
  uv_check_start(&rt->check, on_check);
  uv_unref((uv_handle_t *)&rt->check);
  rt->pool_ref = rt->parents_ref = rt->sites_ref = LUA_NOREF;
  rt->owned_ref = rt->oom_ref = rt->anchors_ref = rt->task_mt_ref = rt->scope_mt_ref = LUA_NOREF;
  rt->slow_step_ns = 100000000; /* 100 ms, as asyncio's debug mode */
  rt->gc_pace_off = 1;          /* until lasync__gc_pace_open, on a state of lasync's heap */
  lua_pushcfunction(L, open_lua_side);
  lua_pushlightuserdata(L, rt);
  if (lasync__pcall(L, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, rt->sites_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, rt->anchors_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, rt->pool_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, rt->oom_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, rt->owned_ref);
    rt->open_handles = 3;
    uv_close((uv_handle_t *)&rt->idle, on_own_handle_closed);
    uv_close((uv_handle_t *)&rt->check, on_own_handle_closed);
    uv_close((uv_handle_t *)&rt->timer, on_own_handle_closed);
    while (rt->open_handles > 0) uv_run(rt->loop, UV_RUN_NOWAIT);
    if (rt->owns_loop) uv_loop_close(rt->loop);
    free(rt);
    return NULL;
  }
  return rt;
}

static void on_own_handle_closed(uv_handle_t *h) { ((lasync__runtime *)h->data)->open_handles--; }

/* Shutdown in one order: refuse new work, cancel what is left and let its cleanup run, close
 * the runtime's handles, then close the loop if it is ours. Leaves lua_close to the owner. */
void lasync__runtime_close(lasync__runtime *rt) {
  if (rt->closing) return;
  rt->closing = 1; /* refuse new work: spawns and C futures from here on fail */
  if (rt->in_callback == 0 && rt->live_tasks > 0) {
    lasync__cancel_all(rt, "runtime closed");
    lasync__run_until_done(rt, NULL);
  }
  lasync__services_close(rt); /* curl's transfers, held futures: before the handles close */
  free(rt->ready);
  rt->ready = NULL;
  rt->ready_len = rt->ready_cap = 0;
  free(rt->heap);
  free(rt->queue);
  rt->heap = rt->queue = NULL;
  rt->heap_len = rt->heap_cap = rt->queue_len = rt->queue_live = 0;
  rt->open_handles += 3; /* services may have handles closing too */
  uv_close((uv_handle_t *)&rt->idle, on_own_handle_closed);
  uv_close((uv_handle_t *)&rt->check, on_own_handle_closed);
  uv_close((uv_handle_t *)&rt->timer, on_own_handle_closed);
  /* Running the loop from inside one of its callbacks (os.exit(n, true) in a task) is not
   * allowed; the process is about to exit then, so the loop is left as it is. A shared loop is
   * only turned until our own handles are closed: the rest of it belongs to the embedder. */
  if (rt->in_callback == 0) {
    if (rt->owns_loop)
      uv_run(rt->loop, UV_RUN_DEFAULT); /* until every close callback has fired */
    else
      while (rt->open_handles > 0) uv_run(rt->loop, UV_RUN_NOWAIT);
  }
}

/* The last step, after lua_close (or detaching): closes the loop if it is ours and frees the
 * runtime. Returns uv_loop_close's answer, which must be 0: anything else is a handle someone
 * left open (the runtime is then leaked rather than freed under libuv's feet). */
int lasync__runtime_free(lasync__runtime *rt) {
  int err = 0;
  if (last_rt == rt) last_rt = NULL;
  lasync__heap_free(rt->lua_heap); /* the state is closed (or was never lasync's) */
  free(rt->site_pairs);
  free(rt->site_index);
  rt->site_pairs = NULL;
  rt->site_index = NULL;
  rt->lua_heap = NULL;
  if (rt->owns_loop && rt->in_callback == 0 && (err = uv_loop_close(rt->loop)) != 0) return err;
  free(rt);
  return err;
}

/* For a runtime attached to a state that outlives it: forgets it in that state. */
void lasync__runtime_detach(lasync__runtime *rt) {
  lua_State *L = rt->L;
  if (last_rt == rt) last_rt = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, rt->pool_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->sites_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->anchors_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->task_mt_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->scope_mt_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->owned_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, rt->oom_ref);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &RUNTIME_KEY);
}
