/* The collector's pace through a burst of tasks (issue 15).
 *
 * Lua's incremental collector starts a cycle when the heap reaches `pause` percent of what the
 * last cycle left alive (200: twice), and a cycle marks everything alive. A script that spawns
 * a million tasks and gathers them keeps everything it allocates alive until the gather, so
 * each cycle of the burst marks the whole, growing set and frees next to nothing: that marking
 * was a fifth of the burst's time (perf: propagatemark, sweepstep), against none with the
 * collector stopped. Tasks that all suspend (100k sleepers) make a second burst as they start,
 * a coroutine each, in the gather's drain: its three cycles were a quarter of that workload's
 * time. So when a cycle ends in a burst of tasks (it left 1.75 times what the one before left,
 * at least half of what was allocated in between survived, three eighths of the growth or more
 * is what tasks took, and the heap holds 8 MB or more), the next cycle's threshold moves out
 * with what tasks take as they are made (tasks_took: GRANT_BYTES a spawn, every 1024 spawns,
 * LASYNC__GC_PACE; THREAD_BYTES a fresh coroutine, every batch, lasync__gc_pace_threads),
 * up to BURST_FACTOR times what the cycle left instead of Lua's twice (V8's largest heap growing
 * factor), and under a memory cap no further than halfway to the cap, so the cycle has room to run
 * before an allocation meets the cap. When the spawns stop, so does the move: garbage made after a
 * burst meets the threshold Lua's pause set plus the burst's own tasks. At most BURST_CYCLES
 * cycles in a row; the pause itself never changes.
 *
 * The other way, a heap that has held more than it needs now works in the memory it has: a cycle
 * that would set a threshold past the heap's peak sets one under it (under_peak), when that
 * leaves the collector room (HOLD_PAUSE), moved in at the next drain. Batches of tasks make what
 * is alive ebb and flow, and a cycle that ended near a batch's top set a threshold past any the
 * heap had met, so its RSS climbed a slab at a time, whenever the collector's phase met a new high.
 *
 * What a hostile review of earlier versions measured (docs/design.md): raising the pause
 * instead let garbage reach four times the heap after a burst and took steady workloads with
 * it (the fetch soak 16 to 36 MB, a table loaded before spawning 67 to 126 MB); moving the
 * threshold all at once let garbage made right after a burst fill it (+65-93 % peak RSS), and
 * without the give-back at the drain a second burst ran over the first's dead tasks (+88 %).
 * Counting what is allocated needs lasync's heap (alloc.c): pacing is opened only on the states
 * lasync_new makes on it. Under stock lua5.4 (the module form), or on an embedder's state or
 * allocator, the allocator is someone else's and the collector is left alone.
 *
 * The end of a cycle is seen through a sentinel: a userdata nothing holds but a weak-keyed
 * table. Its __gc measures the cycle, chooses, and leaves the next sentinel, so consecutive
 * cycles are compared however the spawns fall; a finalizer may not call lua_gc, so the
 * threshold is moved at the spawns (a step of negative debt, lua_gc LUA_GCSTEP), only while the
 * heap is under it (else the next cycle is under way) and the collector runs. A finalizer can
 * fail to start (a C stack overflow in the code the collector interrupted): each drain looks at
 * the table, where a finalized key stays until the cycle after (a weak value would be gone
 * before its finalizer ran), so an empty table means a lost sentinel, and a new one starts the
 * comparisons over. A pause or mode the script or the embedder chose (collectgarbage("setpause")
 * or ("incremental", p) with p other than 200, ("generational"), or lua_gc) is theirs: pacing
 * stops for good when it sees one. */
#include <limits.h>

#include "private.h"

#define LUA_PAUSE 200        /* Lua 5.4's default (LUAI_GCPAUSE) */
#define BURST_FACTOR 4       /* V8's largest heap growing factor */
#define BURST_CYCLES 4       /* a burst's cycles moved in a row: 4^4 = 256 times the heap */
#define BURST_MIN (8u << 20) /* a smaller heap is marked in a few ms: not worth 4x its size */
/* A task's userdata, with its header and two user values. */
#define TASK_BYTES (sizeof(lasync__task) + 72)
/* What the heap grows by per task spawned in a loop, the task and its slots in the list, the
 * anchors and the ready ring: 230 bytes in bench/tasks.lua's trivial burst. */
#define GRANT_BYTES (TASK_BYTES * 3 / 2)
/* What it grows by per fresh coroutine of a task that suspends: 928 bytes for the thread and its
 * stack, and 128 for the two CallInfos of a Lua function suspended in a C one (Lua 5.4,
 * measured with collectgarbage("count")). A pooled coroutine is not counted: it is made once. */
#define THREAD_BYTES 1056
/* A threshold held under the heap's peak (under_peak) stays a HOLD_MARGIN-th of it below, for
 * what the cycle allocates before its sweep frees, and never under HOLD_PAUSE percent of what
 * the cycle left: at 175 the collector's work per byte allocated is at most 4/3 of Lua's. (A
 * hostile review measured 150 with a 16th: up to +82 % cycles and +20 % CPU on steady churn
 * and server-like batches, for 4-18 % less RSS; at 175 with a 32nd, +6-9 % cycles.) */
#define HOLD_MARGIN 32
#define HOLD_PAUSE 175

/* What tasks took, all told, counted as they are made. Three eighths of a burst's growth or more
 * (a quarter in the tasks' userdata alone, were they all spawns) is what tasks took: a script
 * loading a big table between two spawns is no burst of tasks. */
static uint64_t tasks_took(const lasync__runtime *rt) {
  return rt->spawned * GRANT_BYTES + rt->threads_made * THREAD_BYTES;
}

static const char SENTINEL_MT = 0;   /* registry keys, by address: the sentinels' metatable */
static const char SENTINEL_SLOT = 0; /* and the weak-keyed table of the sentinels not yet freed */

typedef struct {
  lasync__runtime *rt;
  unsigned id; /* only the runtime's current sentinel counts */
} sentinel;

/* Under lasync__cpcall: leaves a new sentinel for the next cycle; the last one is forgotten. */
static int new_sentinel(lua_State *L) {
  lasync__runtime *rt = (lasync__runtime *)lua_touserdata(L, 1);
  sentinel *s;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_SLOT) != LUA_TTABLE)
    return luaL_error(L, "lasync: the collector's sentinels were taken from the registry");
  s = (sentinel *)lua_newuserdatauv(L, sizeof *s, 0);
  s->rt = rt;
  s->id = rt->gc_sentinel_id + 1;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT) != LUA_TTABLE)
    return luaL_error(L, "lasync: the collector's sentinels were taken from the registry");
  lua_setmetatable(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3); /* may raise a memory error: counted after it */
  rt->gc_sentinel_id = s->id;
  return 0;
}

/* Whether the cycle that left `live` bytes, with `grown` the heap's allocated count then, was
 * one of a burst of tasks; and it becomes the cycle before. */
static int burst_seen(lasync__runtime *rt, size_t live, size_t grown) {
  size_t prev = rt->gc_prev_live, grew = live > prev ? live - prev : 0;
  size_t allocated = grown - rt->gc_prev_grown; /* since the cycle before */
  uint64_t took = tasks_took(rt), tasks = took - rt->gc_prev_took;
  rt->gc_prev_live = live;
  rt->gc_prev_grown = grown;
  rt->gc_prev_took = took;
  return prev > 0 && live >= BURST_MIN && live >= prev + prev / 4 * 3 && grew >= allocated / 2 &&
         tasks >= grew / 8 * 3;
}

/* Where the next cycle's threshold goes, given where pacing would put it: under the heap's peak,
 * less a margin, when that leaves the collector HOLD_PAUSE or more. A heap that once held
 * twice what this cycle left or more (what is alive peaks and ebbs with batches of tasks) then
 * works in the memory it has; else a cycle that ends near a batch's peak sets a threshold past
 * the heap's, and RSS climbs a step each time the collector's phase meets a new high (the
 * sleep soak: 2 MiB steps late in 1 run of 4 or more). A heap growing for the first time (a
 * burst that keeps what it makes) is at its peak: nothing is held. */
static size_t under_peak(const lasync__runtime *rt, size_t live, size_t target) {
  size_t peak = lasync__heap_peak(rt->lua_heap), hold = peak - peak / HOLD_MARGIN;
  return target > hold && hold >= live / 100 * HOLD_PAUSE ? hold : target;
}

/* At the end of each cycle: measures it, chooses whether the next threshold moves, and leaves
 * the next sentinel. */
static int sentinel_gc(lua_State *L) {
  const sentinel *s;
  lasync__runtime *rt;
  size_t live, threshold, target;
  /* Only a sentinel, only from the collector (lua_gc answers -1 inside a finalizer): the
   * metatable can be reached (debug.getregistry), given to any value (debug.setmetatable) and
   * its __gc called by hand. */
  if (lua_gc(L, LUA_GCISRUNNING) >= 0 || lua_type(L, 1) != LUA_TUSERDATA ||
      lua_rawlen(L, 1) != sizeof *s || !lua_getmetatable(L, 1))
    return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT);
  if (!lua_rawequal(L, -1, -2)) return 0;
  s = (const sentinel *)lua_touserdata(L, 1);
  rt = s->rt;
  /* A runtime closed or detached since is not looked at: the state may outlive it. */
  if (lasync__runtime_get(L) != rt || rt->closing || rt->gc_pace_off || s->id != rt->gc_sentinel_id)
    return 0;
  live = lasync__heap_used(rt->lua_heap);
  rt->gc_credit = rt->gc_granted = rt->gc_hold = 0; /* the cycle's end set a new threshold */
  threshold = target = live / 100 * LUA_PAUSE;
  if (burst_seen(rt, live, lasync__heap_grown(rt->lua_heap)) &&
      rt->gc_burst_cycles < BURST_CYCLES) {
    size_t cap = lasync__heap_cap(rt->lua_heap);
    size_t halfway = threshold + (cap > threshold ? (cap - threshold) / 2 : 0);
    target = live * BURST_FACTOR;
    if (cap && target > halfway) target = halfway;
    rt->gc_burst_cycles++;
  } else {
    rt->gc_burst_cycles = 0; /* and a burst starts again only after a cycle at Lua's pace */
  }
  target = under_peak(rt, live, target);
  rt->gc_threshold = threshold;
  if (target > threshold) { /* moved out as tasks are made (lasync__gc_pace) */
    rt->gc_credit = target - threshold;
    rt->gc_credit_mark = tasks_took(rt);
  } else if (target < threshold) { /* moved in at the next drain (hold_threshold) */
    rt->gc_hold = target;
  }
  /* Out of memory here, the chain ends, and the drains' look at the sentinels notices. */
  lasync__cpcall(L, new_sentinel, rt);
  return 0;
}

void lasync__gc_pace_open(lua_State *L, lasync__runtime *rt) {
  lasync__push_weak_table(L, "k"); /* holds nothing else: empty means every sentinel freed */
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SENTINEL_SLOT);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, sentinel_gc);
  lua_setfield(L, -2, "__gc");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT);
  lua_pushcfunction(L, new_sentinel);
  lua_pushlightuserdata(L, rt);
  lua_call(L, 1, 0);
  rt->gc_pace_off = 0;
}

/* Moves the collector's threshold by kb KiB, out (later) or back in, as a step of debt: negative
 * debt runs nothing; the positive debts given here leave the heap under the threshold. */
static void move_threshold(lua_State *L, size_t kb, int out) {
  int step = kb > INT_MAX ? INT_MAX : (int)kb;
  if (step > 0) lua_gc(L, LUA_GCSTEP, out ? -step : step);
}

/* A drain ends a burst: the spawner has let the loop turn. What was granted and is not yet
 * used goes back (the threshold down to Lua's, or to the heap now if that is higher, so the next
 * allocation starts the cycle in steps rather than this step running it whole), and nothing more
 * is granted until another cycle ends in a burst. So the garbage of a program that gathers its
 * burst and goes on meets Lua's threshold, not the burst's. */
static void end_burst(lua_State *L, lasync__runtime *rt) {
  size_t now = lasync__heap_used(rt->lua_heap), floor = rt->gc_threshold - rt->gc_granted, kb;
  if (floor < now) floor = now;
  kb = rt->gc_threshold > floor ? (rt->gc_threshold - floor) / 1024 : 0;
  rt->gc_credit = rt->gc_granted = 0;
  if (lua_gc(L, LUA_GCISRUNNING) == 1) move_threshold(L, kb, 0);
}

/* Whether the script or the embedder has tuned the collector: a pause other than Lua's (read by
 * setting it, which answers the one before), or generational mode (asked by switching to
 * incremental, which answers the mode before; switched back then). */
static int tuned_by_others(lua_State *L) {
  int pause = lua_gc(L, LUA_GCSETPAUSE, LUA_PAUSE);
  if (pause != LUA_PAUSE) {
    lua_gc(L, LUA_GCSETPAUSE, pause);
    return 1;
  }
  if (lua_gc(L, LUA_GCINC, 0, 0, 0) == LUA_GCGEN) {
    lua_gc(L, LUA_GCGEN, 0, 0);
    return 1;
  }
  return 0;
}

/* The threshold Lua set at the cycle's end, held under the heap's peak (under_peak), while the
 * heap has not reached that yet (else the next cycle is under way). */
static void hold_threshold(lua_State *L, lasync__runtime *rt) {
  size_t hold = rt->gc_hold;
  rt->gc_hold = 0;
  if (tuned_by_others(L)) {
    rt->gc_pace_off = 1;
    return;
  }
  if (lasync__heap_used(rt->lua_heap) >= hold || lua_gc(L, LUA_GCISRUNNING) != 1) return;
  move_threshold(L, (rt->gc_threshold - hold) / 1024, 0);
  rt->gc_threshold = hold;
}

void lasync__gc_pace_poll(lasync__runtime *rt) {
  lua_State *L = rt->L;
  if (rt->gc_pace_off || !lua_checkstack(L, 3)) return;
  if ((rt->gc_credit || rt->gc_granted) && lua_gc(L, LUA_GCISRUNNING) >= 0) end_burst(L, rt);
  if (rt->gc_hold && lua_gc(L, LUA_GCISRUNNING) >= 0) hold_threshold(L, rt);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_SLOT) == LUA_TTABLE) {
    lua_pushnil(L);
    if (lua_next(L, -2) == 0) { /* every sentinel freed: the current one's __gc never ran */
      if (lasync__cpcall(L, new_sentinel, rt) == LUA_OK) {
        rt->gc_prev_live = 0;
        rt->gc_credit = 0;
      }
    } else {
      lua_pop(L, 2);
    }
  }
  lua_pop(L, 1);
}

void lasync__gc_pace(lua_State *L, lasync__runtime *rt) {
  uint64_t since; /* what tasks took since the last grant */
  size_t grant, kb;
  if (rt->gc_pace_off || rt->closing || lua_gc(L, LUA_GCISRUNNING) < 0) return; /* in a __gc */
  if (tuned_by_others(L)) {
    rt->gc_pace_off = 1;
    rt->gc_credit = 0;
    return;
  }
  /* Past the threshold the next cycle is under way; a stopped collector is left stopped (a step
   * runs even then). */
  if (lasync__heap_used(rt->lua_heap) >= rt->gc_threshold || lua_gc(L, LUA_GCISRUNNING) != 1) {
    rt->gc_credit = 0;
    return;
  }
  since = tasks_took(rt) - rt->gc_credit_mark;
  grant = since > rt->gc_credit ? rt->gc_credit : (size_t)since;
  kb = grant / 1024;
  if (kb > INT_MAX) kb = INT_MAX;
  if (kb == 0) return;
  rt->gc_credit_mark += since;
  rt->gc_credit -= kb * 1024;
  rt->gc_granted += kb * 1024;
  rt->gc_threshold += kb * 1024;
  move_threshold(L, kb, 1);
}

void lasync__gc_pace_threads(lua_State *L, lasync__runtime *rt, uint32_t made) {
  rt->threads_made += made;
  if (rt->gc_credit) lasync__gc_pace(L, rt);
}
