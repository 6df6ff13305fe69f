/* Time: async.sleep, the deadlines behind async.timeout, and the timers that serve both.
 *
 * A per-task libuv timer would cost a handle (and a close callback) per sleep; instead every
 * deadline sits in one of two runtime-wide structures, and one uv_timer is armed for the
 * earliest. Most deadlines are armed in the order they fall due (the sleeps or timeouts of one
 * length from a loop, a server's idle timeouts): those join a queue, a ring in arrival order,
 * where arming and firing cost O(1), as Node's per-duration timer lists do. Any other goes to a
 * binary heap ordered by due time and then by arrival. A heap's pop moves a timer at each of
 * log2(n) levels, and each move writes the index in the timer, which sits in its task,
 * scattered over the Lua heap: 100k sleepers' pops were 7 % of that workload (perf). A timer
 * stopped in the queue leaves its slot empty, dropped when the head reaches it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

#define SCOPE_MT "lasync.Deadline"
/* Seconds from which a wait is treated as endless: 3e9 s (a century) still fits the heap's
 * nanosecond clock, while 2e10 s would overflow it and expire at once. */
#define LASYNC__FOREVER 3e9
#define TASK_OF_TIMER(p) ((lasync__task *)((char *)(p)-offsetof(lasync__task, timer)))

/* ---- the queue and the heap ---- */

/* A queued timer's index: the flag and its position in the queue, modulo 2^30 (the capacity is
 * at most 2^30, so the position picks its slot; LASYNC__UNARMED is never one). */
#define QUEUED 0x80000000u
#define POSITION 0x3fffffffu
#define MAX_TIMERS (1u << 30)

static int earlier(const lasync__timer *a, const lasync__timer *b) {
  return a->due < b->due || (a->due == b->due && (int32_t)(a->seq - b->seq) < 0);
}

static lasync__timer **queue_slot(const lasync__runtime *rt, uint32_t position) {
  return &rt->queue[position & (rt->heap_cap - 1)];
}

/* Drops the emptied slots at the head: the head is a timer, or the queue is empty. Each slot
 * is dropped once. */
static void queue_trim(lasync__runtime *rt) {
  while (rt->queue_len > 0 && *queue_slot(rt, rt->queue_head) == NULL) {
    rt->queue_head++;
    rt->queue_len--;
  }
}

static void place(lasync__runtime *rt, uint32_t i, lasync__timer *timer) {
  rt->heap[i] = timer;
  timer->index = i;
}

static void sift_up(lasync__runtime *rt, uint32_t i) {
  lasync__timer *timer = rt->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!earlier(timer, rt->heap[parent])) break;
    place(rt, i, rt->heap[parent]);
    i = parent;
  }
  place(rt, i, timer);
}

static void sift_down(lasync__runtime *rt, uint32_t i) {
  lasync__timer *timer = rt->heap[i];
  for (;;) {
    uint32_t child = 2 * i + 1;
    if (child >= rt->heap_len) break;
    if (child + 1 < rt->heap_len && earlier(rt->heap[child + 1], rt->heap[child])) child++;
    if (!earlier(rt->heap[child], timer)) break;
    place(rt, i, rt->heap[child]);
    i = child;
  }
  place(rt, i, timer);
}

/* The timer due first: the queue's head or the heap's top; NULL when none is armed. */
static lasync__timer *earliest(const lasync__runtime *rt) {
  lasync__timer *queued = rt->queue_len ? *queue_slot(rt, rt->queue_head) : NULL;
  lasync__timer *top = rt->heap_len ? rt->heap[0] : NULL;
  if (queued == NULL || (top && earlier(top, queued))) return top;
  return queued;
}

static void on_heap_timer(uv_timer_t *handle);

/* Arms the libuv timer for the earliest deadline. The delay is counted from the loop's clock,
 * rounded up, so the timer never fires before the deadline it serves. */
static void rearm(lasync__runtime *rt) {
  lasync__timer *first = earliest(rt);
  uint64_t now_ms, due_ms;
  if (first == NULL) {
    uv_timer_stop(&rt->timer);
    return;
  }
  uv_update_time(rt->loop);
  now_ms = uv_now(rt->loop);
  due_ms = (first->due + 999999) / 1000000;
  uv_timer_start(&rt->timer, on_heap_timer, due_ms > now_ms ? due_ms - now_ms : 0, 0);
}

/* The heap always has a slot for every reserved timer, armed or not, besides the unreserved
 * ones armed: armed + timers_reserved < heap_cap leaves one more for an unreserved start (the
 * armed reserved ones count twice: a few slots kept spare, never too few). A timer that finds
 * the queue's ring full of emptied slots goes to the heap, so only the heap needs the room. The
 * ring grows with the heap: a position keeps its meaning, only its slot moves. */
int lasync__timer_room(lasync__runtime *rt) {
  if (rt->heap_len + rt->queue_live + rt->timers_reserved >= rt->heap_cap) {
    uint32_t cap = rt->heap_cap ? rt->heap_cap * 2 : 64, position;
    lasync__timer **heap, **queue;
    if (rt->heap_cap >= MAX_TIMERS) return UV_ENOMEM;
    queue = (lasync__timer **)malloc(cap * sizeof *queue);
    heap = queue ? (lasync__timer **)malloc(cap * sizeof *heap) : NULL;
    if (heap == NULL) {
      free(queue);
      return UV_ENOMEM;
    }
    /* Only the slots in use are copied (realloc copies all): 100k sleepers all queued leave
     * the heap's pages untouched, so they cost no memory. */
    if (rt->heap_len) memcpy(heap, rt->heap, rt->heap_len * sizeof *heap);
    for (position = rt->queue_head; position != rt->queue_head + rt->queue_len; position++)
      queue[position & (cap - 1)] = *queue_slot(rt, position);
    free(rt->heap);
    free(rt->queue);
    rt->heap = heap;
    rt->queue = queue;
    rt->heap_cap = cap;
  }
  return 0;
}

int lasync__timer_reserve(lasync__runtime *rt, int delta) {
  if (delta > 0 && lasync__timer_room(rt) != 0) return UV_ENOMEM;
  rt->timers_reserved += (uint32_t)delta;
  return 0;
}

/* The caller has made room (see private.h), so the slot is there. */
void lasync__timer_start(lasync__runtime *rt, lasync__timer *timer, double seconds) {
  /* Bounded before the conversion, which is undefined out of range: a deadline past ~285 years
   * (math.huge from a caller that passed it on) is as good as never. */
  double ns = seconds * 1e9;
  if (!(ns > 0)) ns = 0; /* negative or NaN: at once */
  if (ns > 9e18) ns = 9e18;
  timer->due = uv_hrtime() + (uint64_t)ns;
  timer->seq = rt->timer_seq++;
  if (rt->queue_len == 0 || (timer->due >= rt->queue_last_due && rt->queue_len < rt->heap_cap)) {
    uint32_t position = rt->queue_head + rt->queue_len++;
    *queue_slot(rt, position) = timer;
    timer->index = QUEUED | (position & POSITION);
    rt->queue_live++;
    rt->queue_last_due = timer->due;
  } else {
    place(rt, rt->heap_len++, timer);
    sift_up(rt, timer->index);
  }
  if (earliest(rt) == timer) rearm(rt);
}

void lasync__timer_stop(lasync__runtime *rt, lasync__timer *timer) {
  uint32_t i = timer->index;
  if (i == LASYNC__UNARMED) return;
  timer->index = LASYNC__UNARMED;
  if (i & QUEUED) {
    *queue_slot(rt, i & POSITION) = NULL;
    rt->queue_live--;
    queue_trim(rt);
  } else {
    lasync__timer *last = rt->heap[--rt->heap_len];
    if (i < rt->heap_len) {
      place(rt, i, last);
      sift_down(rt, i);
      sift_up(rt, last->index);
    }
  }
  /* A stale arming is harmless (on_heap_timer finds nothing due), but no timer armed must not
   * keep the loop alive. */
  if (rt->heap_len == 0 && rt->queue_len == 0) uv_timer_stop(&rt->timer);
}

/* libuv calls this when the earliest deadline is due. */
static void on_heap_timer(uv_timer_t *handle) {
  lasync__runtime *rt = (lasync__runtime *)handle->data;
  uint64_t now = uv_hrtime();
  lasync__timer *timer;
  while ((timer = earliest(rt)) != NULL && timer->due <= now) {
    lasync__timer_stop(rt, timer);
    timer->on_due(timer);
  }
  rearm(rt);
}

/* ---- async.sleep ---- */

static double check_seconds(lua_State *L, int idx, const char *fname) {
  double s;
  if (lua_type(L, idx) != LUA_TNUMBER) lasync__argerror(L, idx, fname, "seconds", "number");
  s = lua_tonumber(L, idx);
  if (isnan(s) || s < 0)
    lasync__misuse(L, "%s: bad argument #%d 'seconds' (number >= 0 expected, got %s)", fname, idx,
                   lua_tostring(L, idx));
  return s;
}

static void on_sleep_due(lasync__timer *timer) { lasync__wake(TASK_OF_TIMER(timer)); }

static void sleep_cancel(lasync__task *t, void *data) {
  (void)data;
  lasync__timer_stop(t->rt, &t->timer);
}

static const lasync__awaitable_ops SLEEP_OPS = {"sleep", sleep_cancel, NULL, NULL};

int lasync__sleep_begin(lasync__task *t, double seconds) {
  if (lasync__timer_room(t->rt) != 0) return -1;
  t->timer.index = LASYNC__UNARMED;
  t->timer.on_due = on_sleep_due;
  lasync__timer_start(t->rt, &t->timer, seconds);
  lasync__begin_wait(t, &SLEEP_OPS, NULL);
  return 0;
}

static int l_sleep(lua_State *L) {
  double s = check_seconds(L, 1, "async.sleep");
  lasync__task *t = lasync__check_task(L, "async.sleep");
  t->timer.index = LASYNC__UNARMED;
  if (s == 0) {
    lasync__enqueue(t, LASYNC__WAKE_VALUE); /* behind every task that is ready now */
  } else if (s < LASYNC__FOREVER) {
    if (lasync__timer_room(t->rt) != 0) lasync__raise_oom(L, t->rt);
    t->timer.on_due = on_sleep_due;
    lasync__timer_start(t->rt, &t->timer, s);
  } /* else: sleeps until cancelled */
  return lasync__suspend(L, t, &SLEEP_OPS, NULL);
}

/* ---- deadlines: the cancel scopes behind async.timeout ---- */

/* A deadline is a userdata without a finaliser. One with __gc outlives a collection and waits
 * for the collector to call it, a few per step: a loop of async.timeout that never yields
 * piled up 120 MB of them, and at a memory cap failed with "not enough memory" while almost
 * nothing was live, since an emergency collection runs no finalisers. What the finaliser
 * guarded, a collected deadline still armed in the timer heap, is ruled out instead by pinning
 * the deadline while it is armed: until it is closed or falls due. */
typedef struct {
  lasync__timer timer;
  lasync__runtime *rt;
  lasync__task *task;
  int depth;
  int open;
  int shield;      /* a shield scope: cancellations from outside wait until it closes */
  int saved_floor; /* the task's shield floor before this scope */
  int pin;         /* its registry reference while armed, else LUA_NOREF */
} deadline;

static void unpin_deadline(deadline *d) {
  lasync__unpin(d->rt, d->rt->L, d->pin);
  d->pin = LUA_NOREF;
}

static void on_deadline_due(lasync__timer *timer) {
  deadline *d = (deadline *)timer;
  lasync__cancel(d->rt->L, d->task, d->depth, 0); /* may collect: d is still pinned */
  unpin_deadline(d);
}

/* core._deadline(seconds, fname [, shield]): opens a cancel scope in the running task that
 * cancels the code inside it when the time is up. A shield scope also holds back cancellations
 * of the scopes outside it (the task's own included) until it closes. */
static int l_deadline(lua_State *L) {
  const char *fname = luaL_optstring(L, 2, "async.timeout");
  int shield = lua_toboolean(L, 3); /* read before anything is pushed */
  double s = check_seconds(L, 1, fname);
  lasync__task *t = shield ? lasync__check_suspendable(L, fname) : lasync__check_task(L, fname);
  /* The user value anchors the task: an armed deadline must never outlive what it cancels. */
  deadline *d = (deadline *)lua_newuserdatauv(L, sizeof *d, 1);
  d->timer.index = LASYNC__UNARMED;
  d->timer.on_due = on_deadline_due;
  d->rt = t->rt;
  d->task = t;
  d->open = 0; /* until the task's scope is entered, below */
  d->pin = LUA_NOREF;
  if (t->rt->scope_mt_ref != LUA_NOREF) { /* by name it is a string lookup */
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->rt->scope_mt_ref);
    lua_setmetatable(L, -2);
  } else {
    luaL_setmetatable(L, SCOPE_MT);
  }
  lasync__push_task(L, t);
  lua_setiuservalue(L, -2, 1);
  if (s < LASYNC__FOREVER) { /* what can raise comes before the task's scope changes */
    if (lasync__timer_room(t->rt) != 0) lasync__raise_oom(L, t->rt);
    lua_pushvalue(L, -1);
    d->pin = lasync__pin(t->rt, L);
  }
  d->depth = ++t->scope_depth;
  d->open = 1;
  d->shield = shield;
  d->saved_floor = t->shield_floor;
  if (d->shield) t->shield_floor = (uint16_t)d->depth;
  if (s < LASYNC__FOREVER) lasync__timer_start(t->rt, &d->timer, s);
  return 1;
}

/* deadline:close() -> whether this scope's own expiry is what cancelled the code inside. */
/* By the metatable's address, as lasync__totask: luaL_testudata's lookup by name was a third
 * of the cost of closing a deadline (close and __close, each async.timeout). */
static deadline *check_deadline(lua_State *L, const char *fname) {
  lasync__runtime *rt = lasync__runtime_get(L);
  deadline *d = NULL;
  if (rt == NULL || rt->scope_mt == NULL) {
    d = (deadline *)luaL_testudata(L, 1, SCOPE_MT);
  } else if (lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1)) {
    if (lua_topointer(L, -1) == rt->scope_mt) d = (deadline *)lua_touserdata(L, 1);
    lua_pop(L, 1);
  }
  if (d == NULL) lasync__argerror(L, 1, fname, NULL, SCOPE_MT);
  return d;
}

static int deadline_close(lua_State *L) {
  deadline *d = check_deadline(L, "deadline:close");
  lasync__task *t = d->task;
  int mine;
  if (!d->open) return lasync__misuse(L, "deadline closed twice");
  if (t->scope_depth != d->depth) return lasync__misuse(L, "deadlines closed out of order");
  d->open = 0;
  lasync__timer_stop(d->rt, &d->timer);
  unpin_deadline(d);
  mine = t->cancel_level == d->depth;
  if (t->cancel_level >= d->depth) t->cancel_level = LASYNC__NO_CANCEL;
  t->scope_depth--;
  if (d->shield) t->shield_floor = (uint16_t)d->saved_floor;
  lua_pushboolean(L, mine);
  return 1;
}

/* __close: a deadline its user never closed, because an error came between opening and
 * closing it (a memory error calling the finishing function, a debug hook's error), is closed
 * as the error unwinds, so it neither stays pinned nor cancels the task later. */
static int deadline_unwound(lua_State *L) {
  deadline *d = check_deadline(L, "deadline:__close");
  if (d->open && d->task->scope_depth == d->depth) {
    lua_settop(L, 1);
    deadline_close(L);
  }
  return 0;
}

/* deadline:cancel(): cancels the code inside the scope now, as its expiry would; a no-op once
 * it is closed. async.scope uses it to stop its body when a child fails. */
static int deadline_cancel(lua_State *L) {
  deadline *d = check_deadline(L, "deadline:cancel");
  if (d->open) lasync__cancel(d->rt->L, d->task, d->depth, 0);
  return 0;
}

/* core._checkpoint(): raises a pending cancellation now, e.g. as a shield closes. */
static int l_checkpoint(lua_State *L) {
  lasync__checkpoint(L, lasync__check_task(L, "async.shield"));
  return 0;
}

void lasync__open_timer(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"sleep", l_sleep}, {"_deadline", l_deadline}, {"_checkpoint", l_checkpoint}, {NULL, NULL}};
  luaL_newmetatable(L, SCOPE_MT);
  lua_pushcfunction(L, deadline_close);
  lua_setfield(L, -2, "close");
  lua_pushcfunction(L, deadline_cancel);
  lua_setfield(L, -2, "cancel");
  lua_pushcfunction(L, deadline_unwound);
  lua_setfield(L, -2, "__close");
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  if (lasync__runtime_get(L)) { /* kept in the registry until lua_close: the address stays */
    lasync__runtime *rt = lasync__runtime_get(L);
    rt->scope_mt = lua_topointer(L, -1);
    if (rt->scope_mt_ref == LUA_NOREF) {
      lua_pushvalue(L, -1);
      rt->scope_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
