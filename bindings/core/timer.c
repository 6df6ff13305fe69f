/* Time: async.sleep, the deadlines behind async.timeout, and the timer heap that serves both.
 *
 * A per-task libuv timer would cost a handle (and a close callback) per sleep; instead every
 * deadline sits in one binary heap, ordered by due time and then by arrival, and one uv_timer
 * is armed for the earliest. Each entry of the heap carries its timer's due time, so a sift
 * compares within the heap's own array: the timers sit in their tasks, scattered over the Lua
 * heap, and reading them at every level of a sift missed the cache (100k sleepers: the pops
 * were 7 % of the workload).
 */
#include <math.h>
#include <stdlib.h>

#include "private.h"

#define SCOPE_MT "lasync.Deadline"
/* Seconds from which a wait is treated as endless: 3e9 s (a century) still fits the heap's
 * nanosecond clock, while 2e10 s would overflow it and expire at once. */
#define LASYNC__FOREVER 3e9
#define TASK_OF_TIMER(p) ((lasync__task *)((char *)(p)-offsetof(lasync__task, timer)))

/* ---- the heap ---- */

struct lasync__heap_entry {
  uint64_t due; /* uv_hrtime() clock, nanoseconds */
  lasync__timer *timer;
};
typedef struct lasync__heap_entry heap_entry;

/* Equal due times (the same nanosecond) are rare: only they read the timers, for the order of
 * arrival. */
static int earlier(const heap_entry *a, const heap_entry *b) {
  return a->due < b->due || (a->due == b->due && (int32_t)(a->timer->seq - b->timer->seq) < 0);
}

static void place(lasync__runtime *rt, uint32_t i, heap_entry entry) {
  rt->heap[i] = entry;
  entry.timer->index = i;
}

static void sift_up(lasync__runtime *rt, uint32_t i) {
  heap_entry entry = rt->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!earlier(&entry, &rt->heap[parent])) break;
    place(rt, i, rt->heap[parent]);
    i = parent;
  }
  place(rt, i, entry);
}

static void sift_down(lasync__runtime *rt, uint32_t i) {
  heap_entry entry = rt->heap[i];
  for (;;) {
    uint32_t child = 2 * i + 1;
    if (child >= rt->heap_len) break;
    if (child + 1 < rt->heap_len && earlier(&rt->heap[child + 1], &rt->heap[child])) child++;
    if (!earlier(&rt->heap[child], &entry)) break;
    place(rt, i, rt->heap[child]);
    i = child;
  }
  place(rt, i, entry);
}

static void on_heap_timer(uv_timer_t *handle);

/* Arms the libuv timer for the earliest deadline. The delay is counted from the loop's clock,
 * rounded up, so the timer never fires before the deadline it serves. */
static void rearm(lasync__runtime *rt) {
  uint64_t now_ms, due_ms;
  if (rt->heap_len == 0) {
    uv_timer_stop(&rt->timer);
    return;
  }
  uv_update_time(rt->loop);
  now_ms = uv_now(rt->loop);
  due_ms = (rt->heap[0].due + 999999) / 1000000;
  uv_timer_start(&rt->timer, on_heap_timer, due_ms > now_ms ? due_ms - now_ms : 0, 0);
}

/* The heap always has a slot for every reserved timer, armed or not, besides the unreserved
 * ones armed: heap_len + timers_reserved < heap_cap leaves one more for an unreserved start
 * (heap_len counts the armed reserved ones twice: a few slots kept spare, never too few). */
int lasync__timer_room(lasync__runtime *rt) {
  if (rt->heap_len + rt->timers_reserved >= rt->heap_cap) {
    uint32_t cap = rt->heap_cap ? rt->heap_cap * 2 : 64;
    heap_entry *heap;
    if (cap <= rt->heap_len + rt->timers_reserved) return UV_ENOMEM; /* 2^32 timers */
    if ((heap = (heap_entry *)realloc(rt->heap, cap * sizeof *heap)) == NULL) return UV_ENOMEM;
    rt->heap = heap;
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
  timer->seq = rt->timer_seq++;
  rt->heap[rt->heap_len].due = uv_hrtime() + (uint64_t)ns;
  rt->heap[rt->heap_len].timer = timer;
  sift_up(rt, rt->heap_len++);
  if (timer->index == 0) rearm(rt);
}

void lasync__timer_stop(lasync__runtime *rt, lasync__timer *timer) {
  uint32_t i = timer->index;
  heap_entry last;
  if (i == LASYNC__UNARMED) return;
  timer->index = LASYNC__UNARMED;
  last = rt->heap[--rt->heap_len];
  if (i < rt->heap_len) {
    place(rt, i, last);
    sift_down(rt, i);
    sift_up(rt, last.timer->index);
  }
  /* A stale arming is harmless (on_heap_timer finds nothing due), but an empty heap must not
   * keep the loop alive. */
  if (rt->heap_len == 0) uv_timer_stop(&rt->timer);
}

/* libuv calls this when the earliest deadline is due. */
static void on_heap_timer(uv_timer_t *handle) {
  lasync__runtime *rt = (lasync__runtime *)handle->data;
  uint64_t now = uv_hrtime();
  while (rt->heap_len > 0 && rt->heap[0].due <= now) {
    lasync__timer *timer = rt->heap[0].timer;
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

typedef struct {
  lasync__timer timer;
  lasync__runtime *rt;
  lasync__task *task;
  int depth;
  int open;
  int shield;       /* a shield scope: cancellations from outside wait until it closes */
  int saved_floor;  /* the task's shield floor before this scope */
} deadline;

static void on_deadline_due(lasync__timer *timer) {
  deadline *d = (deadline *)timer;
  lasync__cancel(d->rt->L, d->task, d->depth, 0);
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
  if (s < LASYNC__FOREVER && lasync__timer_room(t->rt) != 0) lasync__raise_oom(L, t->rt); /* first */
  d->timer.index = LASYNC__UNARMED;
  d->timer.on_due = on_deadline_due;
  d->rt = t->rt;
  d->task = t;
  d->depth = ++t->scope_depth;
  d->open = 1;
  d->shield = shield;
  d->saved_floor = t->shield_floor;
  if (d->shield) t->shield_floor = (uint16_t)d->depth;
  luaL_setmetatable(L, SCOPE_MT);
  lasync__push_task(L, t);
  lua_setiuservalue(L, -2, 1);
  if (s < LASYNC__FOREVER) lasync__timer_start(t->rt, &d->timer, s);
  return 1;
}

/* deadline:close() -> whether this scope's own expiry is what cancelled the code inside. */
static deadline *check_deadline(lua_State *L, const char *fname) {
  deadline *d = (deadline *)luaL_testudata(L, 1, SCOPE_MT);
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
  mine = t->cancel_level == d->depth;
  if (t->cancel_level >= d->depth) t->cancel_level = LASYNC__NO_CANCEL;
  t->scope_depth--;
  if (d->shield) t->shield_floor = (uint16_t)d->saved_floor;
  lua_pushboolean(L, mine);
  return 1;
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

static int deadline_gc(lua_State *L) {
  deadline *d = (deadline *)lua_touserdata(L, 1);
  if (d->open && !d->rt->closing) lasync__timer_stop(d->rt, &d->timer);
  return 0;
}

void lasync__open_timer(lua_State *L) {
  static const luaL_Reg funcs[] = {{"sleep", l_sleep}, {"_deadline", l_deadline},
                                   {"_checkpoint", l_checkpoint}, {NULL, NULL}};
  luaL_newmetatable(L, SCOPE_MT);
  lua_pushcfunction(L, deadline_close);
  lua_setfield(L, -2, "close");
  lua_pushcfunction(L, deadline_cancel);
  lua_setfield(L, -2, "cancel");
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, deadline_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
