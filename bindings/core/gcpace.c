/* The collector's pace through a burst of tasks (issue 15).
 *
 * Lua's incremental collector starts a cycle when the heap reaches `pause` percent of what the
 * last cycle left alive (200: twice), and a cycle marks everything alive. A script that spawns
 * a million tasks and gathers them keeps everything it allocates alive until the gather, so
 * each cycle of the burst marks the whole, growing set and frees next to nothing: that marking
 * was a fifth of the burst's time (perf: propagatemark, sweepstep), against none with the
 * collector stopped. So while the cycles find a burst (what each leaves is 1.75 times what the
 * one before left, at least half of what was allocated in between survived, and the heap holds
 * 8 MB or more), the pause is
 * BURST_PAUSE, the growth factor V8 allows a fast-growing old generation, for at most
 * BURST_CYCLES cycles in a row; otherwise it is Lua's 200, so a steady workload keeps the
 * footprint it has without lasync. Under a memory cap the raised pause never starts a cycle past
 * the cap.
 *
 * Why the survivors count: garbage made during a cycle counts in what the cycle leaves, and the
 * next threshold is a multiple of that, so at 400 a steady workload's heap grows by itself
 * (docs/design.md: the fetch soak's low point rose 1.35-1.64 times a cycle at 400). Growth alone
 * took the fetch soak's start to 400 and its RSS from 16 to 36 MB; what survives of it is little.
 * Its start-up (lasync's library loading) does survive, at 1-2 MB: without the 8 MB floor its
 * RSS was 19 MB.
 * Counting what the collector frees needs lasync's heap (alloc.c): pacing is opened only on the
 * states lasync_new makes on it. Under stock lua5.4 (the module form), or on an embedder's
 * state or allocator, the allocator is someone else's and the pause is left alone.
 *
 * The end of a cycle is seen through a sentinel: a userdata nothing holds but a weak table.
 * Its __gc notes the end of the cycle that found it; a finalizer may not call lua_gc (nor should
 * it allocate), so the pause changes, and the next sentinel is made, at the next spawn or drain
 * (the pause applies from the cycle after: Lua sets each threshold as a cycle ends). A finalizer
 * can also fail to start (a C stack overflow in the code the collector interrupted): each drain
 * looks at the weak table, so a lost sentinel is noticed there. A pause set by the script or the
 * embedder (collectgarbage("setpause"), collectgarbage("incremental", p), lua_gc) is theirs:
 * pacing stops for good when it finds the pause is not the one it set. */
#include "private.h"

#define LUA_PAUSE 200   /* Lua 5.4's default (LUAI_GCPAUSE) */
#define BURST_PAUSE 400 /* V8's largest heap growing factor, 4 */
#define BURST_CYCLES 4  /* a burst's cycles at BURST_PAUSE in a row: 4^4 = 256 times the heap */
#define BURST_MIN (8u << 20) /* a smaller heap is marked in a few ms: not worth 4x its size */

static const char SENTINEL_MT = 0;   /* registry keys, by address: the sentinels' metatable */
static const char SENTINEL_SLOT = 0; /* and the weak-valued table holding the current one at [1] */

typedef struct {
  lasync__runtime *rt;
  unsigned id; /* only the runtime's current sentinel counts */
} sentinel;

static int sentinel_gc(lua_State *L) {
  const sentinel *s;
  lasync__runtime *rt;
  /* Only a sentinel: the metatable can be reached (debug.getregistry) and its __gc called. */
  if (!lua_getmetatable(L, 1)) return 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT);
  if (!lua_rawequal(L, -1, -2)) return 0;
  s = (const sentinel *)lua_touserdata(L, 1);
  rt = s->rt;
  /* A runtime closed or detached since is not looked at: the state may outlive it. */
  if (lasync__runtime_get(L) != rt || rt->closing || s->id != rt->gc_sentinel_id) return 0;
  rt->gc_pace_due = 1;
  if (rt->lua_heap) {
    rt->gc_cycle_live = lasync__heap_used(rt->lua_heap);
    rt->gc_cycle_freed = lasync__heap_freed(rt->lua_heap);
  }
  return 0;
}

/* Under lasync__cpcall: leaves a new sentinel for the next cycle; the last one is forgotten. */
static int new_sentinel(lua_State *L) {
  lasync__runtime *rt = (lasync__runtime *)lua_touserdata(L, 1);
  sentinel *s;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_SLOT);
  s = (sentinel *)lua_newuserdatauv(L, sizeof *s, 0);
  s->rt = rt;
  s->id = rt->gc_sentinel_id + 1;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_MT);
  lua_setmetatable(L, -2);
  lua_rawseti(L, -2, 1); /* the slot exists (made with the table): no error past this point */
  rt->gc_sentinel_id = s->id;
  return 0;
}

void lasync__gc_pace_open(lua_State *L, lasync__runtime *rt) {
  int pause = lua_gc(L, LUA_GCSETPAUSE, LUA_PAUSE);
  if (pause != LUA_PAUSE) { /* tuned before lasync was opened: left as it is */
    if (pause >= 0) lua_gc(L, LUA_GCSETPAUSE, pause);
    return;
  }
  rt->gc_pause = LUA_PAUSE;
  lua_createtable(L, 1, 1);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_pushvalue(L, -1);
  lua_setmetatable(L, -2); /* its own metatable: weak values */
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

void lasync__gc_pace_poll(lasync__runtime *rt) {
  lua_State *L = rt->L;
  if (rt->gc_pace_due || rt->gc_pace_off || !lua_checkstack(L, 2)) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SENTINEL_SLOT);
  if (lua_rawgeti(L, -1, 1) == LUA_TNIL) rt->gc_pace_due = 1; /* collected, finalized or not */
  lua_pop(L, 2);
}

/* Whether the cycle that left `live` bytes, with `freed` the heap's count then, was one of a
 * burst; and it becomes the cycle before. */
static int burst_seen(lasync__runtime *rt, size_t live, size_t freed) {
  size_t prev = rt->gc_prev_live, grew = live > prev ? live - prev : 0;
  size_t allocated = grew + (freed - rt->gc_prev_freed); /* since the cycle before */
  rt->gc_prev_live = live;
  rt->gc_prev_freed = freed;
  return live >= BURST_MIN && live >= prev + prev / 4 * 3 && grew >= allocated / 2;
}

void lasync__gc_pace(lua_State *L, lasync__runtime *rt) {
  size_t live, freed, cap;
  int pause, set;
  if (rt->gc_pace_off || rt->closing) {
    rt->gc_pace_due = 0;
    return;
  }
  if (lua_gc(L, LUA_GCISRUNNING) < 0) return; /* spawned from a finalizer: next time */
  /* What the cycle left, seen by its sentinel's finalizer; else (it never ran) the heap now. */
  live = rt->gc_cycle_live ? rt->gc_cycle_live : lasync__heap_used(rt->lua_heap);
  freed = rt->gc_cycle_live ? rt->gc_cycle_freed : lasync__heap_freed(rt->lua_heap);
  if (lasync__cpcall(L, new_sentinel, rt) != LUA_OK) return; /* out of memory: next time */
  rt->gc_pace_due = 0;
  rt->gc_cycle_live = 0;
  if (burst_seen(rt, live, freed) &&
      (rt->gc_pause == LUA_PAUSE || rt->gc_burst_cycles < BURST_CYCLES)) {
    pause = BURST_PAUSE;
    rt->gc_burst_cycles++;
  } else {
    pause = LUA_PAUSE; /* and a burst starts again only from a cycle at Lua's pause */
    rt->gc_burst_cycles = 0;
  }
  cap = lasync__heap_cap(rt->lua_heap);
  if (cap && pause > LUA_PAUSE && live / 100 * (size_t)pause > cap) {
    size_t fits = cap / (live / 100 + 1) & ~(size_t)3; /* Lua keeps a pause in steps of 4 */
    pause = fits > LUA_PAUSE ? (int)fits : LUA_PAUSE;
  }
  if (pause == rt->gc_pause) return;
  set = lua_gc(L, LUA_GCSETPAUSE, pause);
  if (set != rt->gc_pause) { /* someone else set it */
    lua_gc(L, LUA_GCSETPAUSE, set);
    rt->gc_pace_off = 1;
    return;
  }
  rt->gc_pause = pause;
}
