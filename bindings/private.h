/* Shared glue between the bindings: the runtime, tasks, the one wake-up path.
 *
 * Every binding that suspends a task does the same three things: it checks that it runs inside a
 * task (lasync__check_task), it registers the task with whatever will complete the work, and it
 * returns lasync__suspend(). When the work completes, the binding calls lasync__wake(); when the
 * task is cancelled meanwhile, the scheduler calls the awaitable's cancel hook instead. Nothing
 * but runtime.c calls lua_resume.
 */
#ifndef LASYNC_PRIVATE_H
#define LASYNC_PRIVATE_H

#include <limits.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#ifndef LASYNC_VERSION /* from CMake, which reads it from host/lasync.h: defined once */
#define LASYNC_VERSION "unknown (built outside CMake)"
#endif

#define LASYNC_TASK_MT "lasync.Task"
#define LASYNC_FUTURE_MT "lasync.Future"
#define LASYNC_ERROR_MT "lasync.Error"
#define LASYNC__LIB_CHUNK "=[lasync]" /* chunk name of lua/lasync.lua, skipped in task sites */

typedef struct lasync__runtime lasync__runtime;
typedef struct lasync__task lasync__task;
typedef struct lasync__waiter lasync__waiter;
typedef struct lasync__timer lasync__timer;
typedef struct lasync__service lasync__service;

/* A part of the runtime with a hook each loop turn or a step at shutdown: curl's multi, the
 * cross-thread queue, the open handles, a thread pool. It is embedded in the part's own state
 * and registered once; the runtime calls on_turn as each drain begins (it may make tasks
 * ready) and close at shutdown, after the tasks have ended and in the reverse order of
 * registration. Either may be NULL. close unregisters nothing: the runtime has already. */
typedef struct lasync__service_ops {
  const char *name;
  void (*on_turn)(lasync__runtime *rt, lasync__service *s);
  void (*close)(lasync__runtime *rt, lasync__service *s);
} lasync__service_ops;

struct lasync__service {
  const lasync__service_ops *ops;
  lasync__service *next;
};

/* What a waiter does once the awaited thing settles: called once, after the node has been
 * unlinked, with the hook itself, so that a hook embedded in a larger struct finds it (one
 * gather group serves its million nodes, which then need no pointer back to it). */
typedef struct lasync__settle_hook {
  void (*on_settle)(lasync__waiter *w, const struct lasync__settle_hook *hook);
} lasync__settle_hook;

/* A node in the list of those waiting on an awaitable (a task or a future). It is embedded in
 * the waiter, so waiting allocates nothing. */
struct lasync__waiter {
  lasync__waiter *next;
  lasync__waiter *prev;
  const lasync__settle_hook *hook;
};

typedef struct {
  lasync__waiter *head;
} lasync__waitlist;

void lasync__waitlist_add(lasync__waitlist *list, lasync__waiter *w);
/* Links the task's own node (t->waiter), whose hook wakes the task (lasync__wake). */
void lasync__waitlist_add_task(lasync__waitlist *list, lasync__task *t);
void lasync__waitlist_remove(lasync__waitlist *list, lasync__waiter *w);
/* Unlinks every waiter and calls its hook, in the order they started waiting. */
void lasync__waitlist_settle(lasync__waitlist *list);

/* A deadline in the runtime's timers (timer.c): one libuv timer serves them all. */
struct lasync__timer {
  uint64_t due;   /* uv_hrtime() clock, nanoseconds */
  uint32_t seq;   /* keeps equal deadlines first-in first-out (compared modulo 2^32) */
  uint32_t index; /* where it is armed (timer.c), or LASYNC__UNARMED */
  void (*on_due)(lasync__timer *timer);
};
#define LASYNC__UNARMED UINT32_MAX

/* The heap of armed timers never grows as a timer starts: a timer started from a libuv callback
 * (a server connection's) has no Lua call to raise into. A timer started from Lua makes room
 * first with lasync__timer_room (0, or UV_ENOMEM for the caller to raise, before it changes
 * anything); an owner that arms one timer again and again from callbacks reserves its slot for
 * its lifetime (lasync__timer_reserve: +1 may fail with UV_ENOMEM, -1 gives it back). */
int lasync__timer_room(lasync__runtime *rt);
int lasync__timer_reserve(lasync__runtime *rt, int delta);
void lasync__timer_start(lasync__runtime *rt, lasync__timer *timer, double seconds);
void lasync__timer_stop(lasync__runtime *rt, lasync__timer *timer);

/* What a suspended task is waiting on. */
typedef struct lasync__awaitable_ops {
  const char *name; /* shown by diagnostics: "sleep", "task", "future", ... */
  /* Detaches the task from the awaitable without waking it; called by the scheduler when the
   * task is cancelled while suspended. May be NULL when there is nothing to detach. */
  void (*cancel)(lasync__task *t, void *data);
  /* Runs inside the task once it is resumed normally; pushes the call's results. */
  int (*finish)(lua_State *L, lasync__task *t, void *data);
  /* Runs inside the task instead of finish when it resumes with a cancellation to deliver:
   * either cancel was called while it waited, or the awaitable had completed and woken it
   * first. In the second case this releases what the completion produced (a descriptor, a
   * buffer) before Cancelled is raised. May be NULL. */
  void (*abandon)(lua_State *L, lasync__task *t, void *data);
} lasync__awaitable_ops;

enum lasync__status {
  LASYNC__PENDING,
  LASYNC__RUNNING,
  LASYNC__DONE,
  LASYNC__FAILED,
  LASYNC__CANCELLED
};

enum lasync__wake { LASYNC__WAKE_NONE, LASYNC__WAKE_VALUE, LASYNC__WAKE_CANCEL };

#define LASYNC__NO_CANCEL UINT16_MAX
#define LASYNC__MAX_SCOPES (UINT16_MAX - 1)

/* The task's two user values (a task is one allocation, and every user value is 16 bytes of
 * each of a million tasks). The second holds what the task needs in its current phase; once the
 * task has extras (a name, a cancel message, the cause of its error, the sentinel of a failure
 * nobody saw: task.c's lasync__push_extra) it holds the extras table instead, with the phase's
 * value at [1]. lasync__push_aux and lasync__set_aux hide the difference. */
enum {
  LASYNC__UV_FN = 1, /* the function before start; the first result or the error after */
  LASYNC__UV_AUX,    /* the arguments before start (one value, or a table of n > 1), and
                      * while it runs until it first suspends; the coroutine from then on
                      * (co_anchored); all results (n > 1) or the traceback after */
  LASYNC__TASK_NUV = LASYNC__UV_AUX
};

/* A million tasks must fit in the memory Node needs for a million promises (issue 15), so
 * fields are packed: keep the struct at 88 bytes or less (with its two user values, the
 * allocation is 160 bytes). */
struct lasync__task {
  lasync__runtime *rt;
  lua_State *co;              /* the coroutine running it, while it runs */
  const lasync__awaitable_ops *wait_ops; /* what it is suspended on, until its continuation */
  void *wait_data;
  union {                     /* it waits on one thing at a time */
    lasync__waiter waiter;    /* while it awaits a task or a future */
    lasync__timer timer;      /* while it sleeps */
  };
  lasync__waitlist waiters;   /* those awaiting it */
  uint32_t slot;              /* its index in the runtime's anchors, spawn to settle; 0 after */
  uint32_t site;              /* where it was spawned, a (source, line) pair of the runtime's,
                               * in debug mode or for a C function; else 0 (task.c) */
  uint32_t spawned_ms;        /* loop time at spawn, for its age */
  uint16_t cancel_level;      /* outermost cancelled scope, or LASYNC__NO_CANCEL */
  uint16_t scope_depth;       /* 0 is the task itself; each async.timeout adds one */
  uint16_t shield_floor;      /* cancellations of scopes below this depth wait (async.shield) */
  unsigned nargs : 20;        /* before start: argument count; after: result count (both are
                               * under LUAI_MAXSTACK, a million: 2^20 is 1,048,576) */
  unsigned status : 3;        /* enum lasync__status */
  unsigned wake : 2;          /* why it was queued: enum lasync__wake */
  unsigned suspended : 1;     /* linked into an awaitable, waiting for wake or cancel */
  unsigned queued : 1;
  unsigned observed : 1;      /* its outcome was retrieved or is awaited */
  unsigned report_now : 1;    /* started from C with nobody to await it: report a failure */
  unsigned has_extra : 1;     /* LASYNC__UV_AUX holds the extras table (see above) */
  unsigned co_anchored : 1;   /* its phase value is its coroutine: it has suspended (runtime.c) */
  unsigned revive : 1;        /* a helper: a memory error calls its function again (revive.c) */
};

struct lasync__runtime {
  lua_State *L; /* the main thread */
  struct lasync__heap *lua_heap; /* L's allocator when lasync opened L (alloc.c), or NULL */
  uv_loop_t *loop;
  uv_loop_t own_loop;
  int owns_loop;
  uv_idle_t idle;   /* active while tasks are ready, so the poll does not block */
  uv_check_t check; /* runs ready tasks after each poll */
  uv_timer_t timer; /* fires the earliest deadline of the heap */
  lasync__timer **heap;  /* armed timers out of the order they fall due: a binary heap */
  lasync__timer **queue; /* and in that order: a ring of heap_cap slots (timer.c) */
  uint32_t heap_len, heap_cap;
  uint32_t queue_head, queue_len; /* the head's position (counting up), slots from it used */
  uint32_t queue_live;            /* of those, the timers not stopped */
  uint64_t queue_last_due;        /* the due time of the last one queued */
  uint32_t timers_reserved; /* slots kept for owners' timers (lasync__timer_reserve) */
  uint32_t timer_seq;
  lasync__task **ready;   /* ring of ready tasks; cap: a power of two >= live tasks (spawn) */
  uint32_t ready_head, ready_len, ready_cap;
  uint32_t drain_left; /* of the tasks ready when this drain began, those not yet run */
  uint64_t resume_started; /* debug mode: when the resume under way began (uv_hrtime), or 0 */
  lasync__task *current;
  int pool_ref;     /* table of idle coroutines, reused by later tasks */
  int pool_len;
  int owned_ref;    /* weak-keyed: coroutine Lua has seen -> its task, or true when idle */
  int exposed;      /* owned_ref has entries: task coroutines must be marked (runtime.c) */
  int oom_ref;      /* the string "not enough memory", for failing a task without allocating */
  /* Every live task is pinned in one Lua table, anchors[t->slot] = task, from spawn to settle:
   * an index in an array, where luaL_ref's registry entries cost twice the instructions. A
   * free slot holds the next free one (an integer), as luaL_ref's free list does. */
  int anchors_ref;
  uint32_t anchors_top;  /* the highest slot used so far */
  uint32_t anchors_free; /* the first free slot below it, or 0 */
  int anchors_at;        /* during a drain: the anchors' index on L's stack (runtime.c), or 0 */
  const void *anchors_ptr; /* the anchors table, to check that index */
  int starved;         /* a start failed for memory in this drain: later starts fail at once */
  long starved_unseen; /* tasks failed so with nobody to see it, reported once per drain */
  int oom_ended; /* a task's function ended by a memory error in this drain: see body_continue */
  int reserve_open; /* a helper task runs: its part of the memory cap is open (set_current) */
  lasync__waitlist starved_waiters; /* tasks in core._await_starved (task.c) */
  int starve_next; /* fault injection (async._debug.starve_next_start): the next start fails */
  int fail_next_spawn; /* and (async._debug.fail_next_spawn): the next async.spawn raises */
  int closing;      /* refuses new tasks once shutdown has begun */
  int in_callback;  /* depth of libuv callbacks on the C stack */
  int open_handles; /* of the runtime's own, while they close */
  int sites_ref;    /* array of the source names that spawned tasks, see task.c */
  const void *task_mt; /* the Task metatable's address: lasync__totask compares it */
  int task_mt_ref;     /* the Task metatable, for spawn (by name it is a string lookup) */
  const void *scope_mt; /* and the deadlines' (timer.c): one per async.timeout, as tasks */
  int scope_mt_ref;
  uint32_t nsources, last_source;
  char last_source_src[LUA_IDSIZE];
  /* Spawn sites, (source, line) pairs numbered from 1 (t->site - 1 indexes site_pairs), and an
   * open-addressing hash of them (task.c): a pair costs a task 4 bytes, a source and a line 8. */
  struct lasync__site_pair {
    uint32_t source;
    int line;
  } *site_pairs;
  uint32_t *site_index;
  uint32_t nsite_pairs, site_index_cap;
  const void *last_site_fn; /* the function of the last spawn (task.c), its line and pair */
  int last_line;
  uint32_t last_site;
  /* Counters behind async._debug.counts(): specs assert they return to zero. */
  long live_tasks;
  long pinned_refs;
  long unhandled_failures; /* failed tasks nobody looked at, reported on collection */
  void *data;              /* for the embedder */
  lasync__service *services; /* see service.c; the runtime never names its clients */
  long live_requests;        /* libuv requests not yet called back (io/req.c) */
  struct lasync__handle *handles; /* open handles owned by Lua objects (io/handle.c) */
  long live_handles;
  void (*on_error)(lasync__runtime *rt, const char *report, void *data);
  uint64_t step_deadline; /* lasync_step: work stops before uv_hrtime() passes it; 0: no limit */
  uint64_t step_seq;       /* counts lasync_step calls, for quotas per step */
  uint64_t step_budget;    /* lasync_step's budget, ns */
  uint32_t step_resumes;   /* resumes in the current lasync_step */
  uint64_t resume_ns;      /* what a resume costs under lasync_step (lasync__step_measure) */
  int debug;               /* debug mode: slow steps are reported, parents recorded */
  uint64_t slow_step_ns;   /* what counts as a slow step in debug mode */
  int parents_ref;         /* debug mode: weak table task -> the task that spawned it */
  /* The collector's pace (gcpace.c). */
  int gc_pace_off;         /* not opened (not lasync's heap), or the collector is someone else's */
  unsigned gc_sentinel_id; /* the current sentinel's, waiting for the end of a cycle */
  size_t gc_credit;        /* bytes the threshold may still move out for the current burst */
  size_t gc_threshold;     /* where the threshold is now, as far as pacing moved it */
  size_t gc_granted;       /* by how much pacing moved it since the cycle ended */
  size_t gc_prev_live, gc_prev_grown; /* the cycle before: left, and the heap's allocated count
                                       * then; 0: none to compare with */
  uint64_t spawned, threads_made; /* tasks spawned and fresh coroutines made, all told */
  uint64_t gc_prev_took, gc_credit_mark; /* what tasks had taken (gcpace.c) at the cycle before;
                                          * at the last grant of credit */
  int gc_burst_cycles;     /* cycles of the current burst */
  size_t gc_hold;          /* the next drain moves the threshold in to this; 0: not */
};

/* runtime.c */
lasync__runtime *lasync__runtime_get(lua_State *L);
lasync__runtime *lasync__runtime_open(lua_State *L, uv_loop_t *loop);
/* Shutdown in one order: refuse new work, cancel the tasks and await their cleanup, close the
 * services (curl, held futures, the cross-thread queue, open handles), close the runtime's own
 * handles and turn the loop until every close callback has fired. Then the owner closes the
 * state (or detaches), then lasync__runtime_free closes the loop. */
void lasync__runtime_close(lasync__runtime *rt);
int lasync__runtime_free(lasync__runtime *rt);
void lasync__runtime_detach(lasync__runtime *rt);
int lasync__pin(lasync__runtime *rt, lua_State *L);
void lasync__unpin(lasync__runtime *rt, lua_State *L, int ref);
/* Pins the task on top of L (left there) in the runtime's anchors and sets t->slot; raises a
 * memory error when the anchors cannot grow, with nothing changed. */
void lasync__anchor_task(lua_State *L, lasync__runtime *rt, lasync__task *t);
/* Unpins a settled task; never allocates. */
void lasync__unanchor_task(lua_State *L, lasync__runtime *rt, lasync__task *t);
/* Pushes a live (anchored) task. */
void lasync__push_task(lua_State *L, const lasync__task *t);
/* The live task at an anchor slot (1 to rt->anchors_top), or NULL for a free slot; uses two
 * slots of L's stack and leaves it as it was. How the live tasks are walked (cancel_all,
 * async.tasks()). */
lasync__task *lasync__task_at(lua_State *L, lasync__runtime *rt, uint32_t slot);
void lasync__enqueue(lasync__task *t, int wake);
void lasync__drain(lasync__runtime *rt);
/* lasync_step's budget, for each kind of work it does: whether the time left has room for a
 * piece that costs about *avg ns (twice over, since an average hides the slow ones); always
 * outside lasync_step. A refusal lowers *avg, so that one slow measure cannot keep the work
 * out of every later step. */
int lasync__step_fits(const lasync__runtime *rt, uint64_t *avg);
/* Folds a measured piece of work (ns) into its moving average. */
void lasync__step_measure(uint64_t *avg, uint64_t sample);
int lasync__run_until_done(lasync__runtime *rt, lasync__task *t);
void lasync__cancel_all(lasync__runtime *rt, const char *msg);
int lasync__count_handles(lasync__runtime *rt);

/* gcpace.c: after a cycle that ended in a burst of tasks (each cycle leaving more alive), the
 * collector's threshold moves out with the tasks spawned and the coroutines made for them. Open on a runtime whose state is on
 * lasync's heap, with rt->lua_heap set (raises a memory error); unopened, pacing is off.
 * LASYNC__GC_PACE, one test, at each spawn, on the running thread; never raises. The poll, at
 * each drain, notices a lost sentinel. */
void lasync__gc_pace_open(lua_State *L, lasync__runtime *rt);
void lasync__gc_pace(lua_State *L, lasync__runtime *rt);
void lasync__gc_pace_poll(lasync__runtime *rt);
/* Counts `made` fresh coroutines for tasks, and grants them credit; never raises. */
void lasync__gc_pace_threads(lua_State *L, lasync__runtime *rt, uint32_t made);
#define LASYNC__GC_PACE(L, rt) \
  ((rt)->gc_credit && ((rt)->spawned & 1023) == 0 ? lasync__gc_pace((L), (rt)) : (void)0)

/* service.c */
void lasync__service_add(lasync__runtime *rt, lasync__service *s, const lasync__service_ops *ops);
void lasync__service_remove(lasync__runtime *rt, lasync__service *s);
/* The registered service with these ops, or NULL: how a part finds its own state. */
lasync__service *lasync__service_find(lasync__runtime *rt, const lasync__service_ops *ops);
void lasync__services_turn(lasync__runtime *rt);
void lasync__services_close(lasync__runtime *rt);

/* alloc.c: a size-class heap for a Lua state lasync opens: lua_newstate(lasync__heap_alloc,
 * heap). cap > 0 bounds the bytes Lua may hold (an allocation past it fails). Free the heap
 * after lua_close. NULL from lasync__heap_new when out of memory. */
typedef struct lasync__heap lasync__heap;
lasync__heap *lasync__heap_new(size_t cap);
void lasync__heap_free(lasync__heap *h);
void *lasync__heap_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
size_t lasync__heap_used(const lasync__heap *h);
size_t lasync__heap_cap(const lasync__heap *h);   /* 0: none */
void lasync__heap_fail_next(lasync__heap *h); /* the next growing allocation fails (specs) */
/* Opens the part of the cap kept for helper tasks (revive.c), while one runs (runtime.c). */
void lasync__heap_reserve(lasync__heap *h, int open);
size_t lasync__heap_grown(const lasync__heap *h); /* bytes allocated, all told, wrapping */
size_t lasync__heap_peak(const lasync__heap *h);  /* the most Lua has held at once */
/* A state on h with luaL_newstate's panic and warning functions, or NULL. */
lua_State *lasync__heap_newstate(lasync__heap *h);

/* ---- io/: the layers every I/O capability stands on ---- */

/* io/req.c: a libuv request (uv_fs_t, uv_getaddrinfo_t, uv_connect_t, uv_write_t, ...) that one
 * task waits on. It is a userdata of the binding's own struct, which begins with this header
 * and embeds the uv request; it is pinned from lasync__req_new until the libuv callback, so it
 * outlives a waiter that was cancelled, and the callback then discards what it produced. */
typedef struct lasync__req lasync__req;
typedef struct lasync__req_ops {
  const char *name; /* what the task waits on, for diagnostics: "fs.open", "resolve" */
  /* In the waiting task, after the callback: pushes the results and returns how many, or
   * pushes an error value and returns -1 to have it raised. */
  int (*push)(lua_State *L, lasync__req *r);
  /* The waiter left before the callback (or was cancelled before it resumed): releases what
   * the request produced, such as an opened descriptor. Runs in the libuv callback or in the
   * task. May be NULL. */
  void (*discard)(lasync__req *r);
  /* Releases the request's own memory in every case, exactly once, after push or discard
   * (uv_fs_req_cleanup, uv_freeaddrinfo). May be NULL. */
  void (*cleanup)(lasync__req *r);
  /* Stops a request whose waiter was cancelled. NULL means uv_cancel, which works for fs,
   * getaddrinfo and work requests; a connect or write is stopped by closing its handle. Either
   * way the callback still runs, later, and finds the request orphaned. */
  void (*cancel)(lasync__req *r);
} lasync__req_ops;

struct lasync__req {
  lasync__runtime *rt;
  const lasync__req_ops *ops;
  lasync__task *task; /* the waiter; NULL before lasync__req_await and once it has gone */
  uv_req_t *uv;       /* the embedded libuv request */
  int ref;            /* pins the userdata until the callback */
  uint8_t done;       /* the callback has run */
  uint8_t released;   /* discard/cleanup have run */
};

/* Pushes a new request of `size` bytes (the binding's struct, zeroed, beginning with
 * lasync__req) whose uv request is at `uv`'s offset: pass offsetof(my_req, fs). Pins it and
 * sets uv->data. Raises on a memory error, before anything is started. */
lasync__req *lasync__req_new(lua_State *L, const lasync__req_ops *ops, size_t size,
                             size_t uv_offset);
/* The same with nuv user values on the userdata, for what must live as long as the request
 * (the strings a uv_write sends). */
lasync__req *lasync__req_new_uv(lua_State *L, const lasync__req_ops *ops, size_t size,
                                size_t uv_offset, int nuv);
/* After the uv call started the request: suspends the running task until the callback.
 * `return lasync__req_await(L, t, r);` from the binding's lua_CFunction. */
int lasync__req_await(lua_State *L, lasync__task *t, lasync__req *r);
/* The uv call failed synchronously with err (no callback will come): unpins the request. */
void lasync__req_abort(lasync__req *r);
/* From the binding's libuv callback, once it stored what it needs: wakes the waiter or, if
 * it has gone, discards the results. Never calls Lua. */
void lasync__req_done(lasync__req *r);
/* The request of a uv request (its data field). */
#define LASYNC__REQ_OF(uvreq) ((lasync__req *)((uv_req_t *)(uvreq))->data)

/* io/handle.c: a libuv handle owned by a Lua object. The memory is malloc'd apart from the
 * userdata (uv_close is asynchronous and the userdata may be collected first) and freed in
 * the close callback. Every open handle is linked in the runtime, so shutdown closes what Lua
 * forgot, and counted. The binding's struct begins with this header and embeds the handle. */
typedef struct lasync__handle lasync__handle;
struct lasync__handle {
  lasync__runtime *rt;
  lasync__handle *prev, *next; /* the runtime's open handles */
  uv_handle_t *uv;             /* the embedded handle, once initialised */
  /* Called once when the handle starts closing (by close, __gc or shutdown): the binding wakes
   * or fails its waiters and drops its Lua references here. May be NULL. */
  void (*on_close)(lasync__handle *h);
  /* Called from the close callback, just before the memory is freed. May be NULL. */
  void (*on_free)(lasync__handle *h);
  void *owner;    /* the userdata box that points here (see below), or NULL */
  uint8_t closing;
};

/* Allocates a zeroed handle struct of `size` bytes and links it; NULL when out of memory.
 * The binding then initialises the uv handle and calls lasync__handle_init. */
void *lasync__handle_new(lasync__runtime *rt, size_t size);
/* Records the initialised uv handle (sets its data field to h). */
void lasync__handle_init(lasync__handle *h, uv_handle_t *uv);
/* Idempotent: runs on_close, unlinks, and uv_close()s (frees at once if never initialised). */
void lasync__handle_close(lasync__handle *h);
/* The Lua side is a box: a userdata holding the handle pointer, NULL once closed. Its
 * metatable's __gc and __close should call lasync__handle_box_close. */
lasync__handle **lasync__handle_box_new(lua_State *L, lasync__handle *h, const char *mt);
int lasync__handle_box_close(lua_State *L); /* a lua_CFunction: closes the box at index 1 */
/* The open handle in the box at idx, or raises: a misuse message for a wrong type, an error of
 * kind "closed" for a closed one. */
lasync__handle *lasync__handle_check(lua_State *L, int idx, const char *mt, const char *fname);
#define LASYNC__HANDLE_OF(uvhandle) ((lasync__handle *)((uv_handle_t *)(uvhandle))->data)

/* io/buffer.c: a growable byte buffer, appended at the tail and consumed from the head,
 * touched without Lua (libuv and curl callbacks fill it). A zeroed struct is an empty buffer
 * with no limit; set max to bound the unread bytes. The calls that can fail return 0,
 * UV_ENOBUFS (past max) or UV_ENOMEM, and leave the buffer as it was. */
typedef struct lasync__buffer {
  char *data;
  size_t start; /* the first unread byte */
  size_t len;   /* unread bytes */
  size_t cap;
  size_t max;   /* most unread bytes it may hold; 0: no limit */
} lasync__buffer;

/* Makes room for n more bytes at the tail. */
int lasync__buffer_reserve(lasync__buffer *b, size_t n);
/* Appends n bytes (n == 0 is a no-op, p may then be NULL). */
int lasync__buffer_append(lasync__buffer *b, const char *p, size_t n);
/* The free room at the tail (after reserve), filled in place and then committed: how a libuv
 * alloc callback reads straight into the buffer. NULL with *room == 0 before any reserve. */
char *lasync__buffer_tail(lasync__buffer *b, size_t *room);
void lasync__buffer_commit(lasync__buffer *b, size_t n);
/* The unread bytes; never NULL ("" when empty). Valid until the next call that adds. */
const char *lasync__buffer_peek(const lasync__buffer *b, size_t *len);
/* Drops the first n unread bytes (all of them if n >= len); keeps the memory. */
void lasync__buffer_consume(lasync__buffer *b, size_t n);
/* Frees the memory; the buffer is empty and usable again (max is kept). */
void lasync__buffer_free(lasync__buffer *b);

/* io/stream.c: a byte stream (Stream object) over any uv_stream_t, for every binding that has
 * one: TCP connections (net.c), pipes to a child process, a TTY. The Lua methods are read,
 * read_line, lines, read_exactly, write, shutdown, close (see docs/api.md). To make one:
 *
 *   lasync__stream *s = lasync__stream_new(L, LASYNC__STREAM_PIPE); // pushes the object
 *   int err = uv_pipe_init(rt->loop, &s->u.pipe, 0);
 *   if (err) { lasync__stream_close(s); raise... }   // never initialised: freed at once
 *   lasync__stream_init(s);                           // records the handle; now it is live
 *
 * then hand s->u.stream to libuv (uv_spawn's stdio, uv_accept, uv_tty_init's fd) and return
 * the object. The struct is malloc'd by the handle layer and freed in the close callback;
 * the object's __gc, __close and close() close it. The fields above "private" may be read
 * by other bindings;
 * read_max, write_hwm and max_line may be set before the first read or write. */
enum { LASYNC__STREAM_TCP, LASYNC__STREAM_PIPE, LASYNC__STREAM_TTY };
#define LASYNC_STREAM_MT "lasync.Stream"
typedef struct lasync__stream {
  lasync__handle h; /* first: the handle layer's header */
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
    uv_tty_t tty;
  } u;
  int kind;         /* LASYNC__STREAM_* */
  size_t read_max;  /* unread bytes past which reading stops (default 64 KiB) */
  size_t write_hwm; /* queued bytes past which write suspends (default 256 KiB) */
  size_t max_line;  /* longest line read_line returns (default 64 KiB) */
  /* private to stream.c */
  char *slab;       /* the loop's shared read slab */
  lasync__buffer in; /* the unread bytes */
  size_t scanned;   /* unread bytes known to hold no LF */
  lasync__task *reader;
  size_t want_n;
  lasync__waitlist writers;
  int rerr, werr;
  unsigned pending_writes;
  unsigned direct_turn; /* the loop turn direct_bytes counts in */
  size_t direct_bytes;  /* read by the reader itself (stream.c direct_read) this turn */
  unsigned write_turn;  /* the loop turn write_bytes counts in */
  size_t write_bytes;   /* handed to write calls this turn (stream.c write_return) */
  uint8_t want, reader_woken, started, reading, eof, shut, lingering;
  uint8_t more; /* the last read filled its buffer: the socket likely holds more */
} lasync__stream;

/* Pushes a new Stream object and returns its struct, uv handle not yet initialised; raises
 * (kind "nomem") before anything is left behind. */
lasync__stream *lasync__stream_new(lua_State *L, int kind);
/* After uv_*_init succeeded on s->u: the handle is live (read/write work from now on). */
void lasync__stream_init(lasync__stream *s);
/* Idempotent: the Lua object reads as closed at once, waiting tasks fail with kind "closed",
 * queued writes are flushed, then the handle closes. */
void lasync__stream_close(lasync__stream *s);
/* The open stream at idx, or raises (misuse for a wrong type, kind "closed" once closed). */
lasync__stream *lasync__stream_check(lua_State *L, int idx, const char *fname);
/* The two halves of lasync__stream_new, for a binding that must allocate the Lua object
 * before it can take the C one (net.c accepts into an object already made): the box is a
 * closed Stream until attached. lasync__stream_alloc returns NULL when out of memory. */
lasync__handle **lasync__stream_pushbox(lua_State *L);
lasync__stream *lasync__stream_alloc(lasync__runtime *rt, int kind);
void lasync__stream_attach(lasync__handle **box, lasync__stream *s);

/* io/net.c */
void lasync__open_net(lua_State *L);

/* io/bytes.c: Buffer objects (async.buffer), the reusable memory s:read_into fills. The bytes
 * follow the header in the same userdata. */
#define LASYNC_BYTES_MT "lasync.Buffer"
typedef struct lasync__bytes {
  size_t cap; /* fixed at creation */
  size_t len; /* bytes held, from the start */
} lasync__bytes;
#define LASYNC__BYTES_DATA(b) ((char *)((b) + 1))
lasync__bytes *lasync__bytes_test(lua_State *L, int idx); /* NULL if idx is no Buffer */
void lasync__open_bytes(lua_State *L);                     /* core.buffer */

/* task.c */
lasync__task *lasync__check_task(lua_State *L, const char *fname);
/* The same checks, without delivering a pending cancellation: async.shield opens even after
 * one has arrived, since running cleanup then is what it is for. */
lasync__task *lasync__check_suspendable(lua_State *L, const char *fname);
lasync__task *lasync__totask(lua_State *L, int idx);
int lasync__is_callable(lua_State *L, int idx); /* a function, or a value with __call */
/* The task at idx, or raises "<fname>: bad argument #idx (Task expected, got ...)" (bad self,
 * for argument 1 of a method). */
lasync__task *lasync__check_task_arg(lua_State *L, int idx, const char *fname);
extern const char *const lasync__status_names[]; /* indexed by enum lasync__status */
int lasync__suspend(lua_State *L, lasync__task *t, const lasync__awaitable_ops *ops, void *data);
/* lasync__suspend's bookkeeping without its yield, and the resume's undoing of it, for a
 * caller that yields with a continuation of its own (revive.c, from the task body). */
void lasync__begin_wait(lasync__task *t, const lasync__awaitable_ops *ops, void *data);
void lasync__end_wait(lasync__task *t);
void lasync__wake(lasync__task *t);
int lasync__cancel(lua_State *L, lasync__task *t, int level, int msg_idx);
/* Whether a cancellation must be delivered at the task's next suspension point. */
int lasync__cancel_active(const lasync__task *t);
/* Raises the pending Cancelled error in the running task, if any. */
void lasync__checkpoint(lua_State *L, lasync__task *t);
lasync__task *lasync__spawn(lua_State *L, int fn_idx, int nargs);
void lasync__task_start(lasync__runtime *rt, lasync__task *t);
void lasync__task_settle(lasync__runtime *rt, lasync__task *t, int status, int nres);
int lasync__push_outcome(lua_State *L, lasync__task *t, int task_idx);
/* Marks the outcome as seen, so a failure is not reported again when the task is collected. */
void lasync__mark_observed(lua_State *L, lasync__task *t, int task_idx);
void lasync__push_failure_report(lua_State *L, int task_idx);
void lasync__report(lasync__runtime *rt, const char *report);
void lasync__push_extra(lua_State *L, int task_idx);  /* the task's extras table, made on demand */
/* Pushes the extras field `name` of the task at task_idx (nil without extras); returns its type. */
int lasync__get_extra(lua_State *L, int task_idx, const char *name);
/* The task's phase value (LASYNC__UV_AUX, wherever it is kept): push_aux pushes it, set_aux
 * pops the value on top into it. Neither allocates. */
void lasync__push_aux(lua_State *L, const lasync__task *t, int task_idx);
void lasync__set_aux(lua_State *L, const lasync__task *t, int task_idx);
/* Pushes the task's "file:line" ("?" when unknown) and says what it is: where the task was
 * spawned (debug mode) or where its function is defined (found on first use). */
enum lasync__site_kind { LASYNC__SITE_UNKNOWN, LASYNC__SITE_DEFINED, LASYNC__SITE_SPAWNED };
int lasync__push_task_site(lua_State *L, int task_idx);
/* Keeps a definition site in the task's extras before its function is replaced (allocates). */
void lasync__keep_task_site(lua_State *L, int task_idx);

/* diag.c: names, async.tasks(), debug mode. */
void lasync__open_diag(lua_State *L);
void lasync__debug_spawned(lua_State *L, lasync__runtime *rt, lasync__task *parent);
void lasync__push_spawn_chain(lua_State *L, int task_idx);
/* Pushes "task 'name'" or "task spawned at file:line". */
void lasync__push_task_label(lua_State *L, int task_idx);
/* Debug mode's report of a resume that held the loop, written from L (the running thread). */
void lasync__debug_slow_step(lua_State *L, lasync__task *t, uint64_t ns, int finished);
int lasync__task_finished(const lasync__task *t);
int lasync__trace_handler(lua_State *L);
void lasync__open_task(lua_State *L);

/* errors.c */
void lasync__push_error(lua_State *L, const char *kind, const char *message);
/* Pushes an error object for a libuv error: kind, message "ECONNREFUSED: connection refused[,
 * what]", code ("ECONNREFUSED") and errno (positive). */
void lasync__push_uv_error(lua_State *L, const char *kind, int err, const char *what);
/* Raises misuse formatted as luaL_error, positioned at the user's line (the first caller
 * outside lasync's embedded Lua), so no message carries an internal "[lasync]:NNN:". */
int lasync__misuse(lua_State *L, const char *fmt, ...);
/* Misuse, one format everywhere: raises "<fname>: bad argument #<arg> '<argname>' (<expected>
 * expected, got <type>)" (argname may be NULL), a userdata's type being its __name. */
int lasync__argerror(lua_State *L, int arg, const char *fname, const char *argname,
                     const char *expected);
/* Raises "<fname>: bad self (<expected> expected, got <type>); call it with ':'": a method
 * (fname "class:method") called with '.'. lasync__argerror raises it for argument 1 of a method,
 * so a method's check of its self is lasync__argerror(L, 1, "class:method", NULL, MT). */
int lasync__selferror(lua_State *L, const char *fname, const char *expected);
/* Raises "<fname>: bad option '<opt>' (<expected> expected, got <type of the value at idx>)". */
int lasync__opterror(lua_State *L, int idx, const char *fname, const char *opt,
                     const char *expected);
/* Raises "<fname>: bad option '<key>' (unknown option)" for a key of the table at idx that is
 * not in known (NULL-terminated): a misspelt option is misuse, never silently the default. A key
 * that is not a string: "<fname>: bad option key (string expected, got <type>)". */
void lasync__check_options(lua_State *L, int idx, const char *fname, const char *const known[]);
const char *lasync__typename(lua_State *L, int idx); /* luaL_typename, or a userdata's __name */
int lasync__is_error_kind(lua_State *L, int idx, const char *kind);
const char *lasync__describe(lua_State *L, int idx);
void lasync__open_errors(lua_State *L);

/* future.c. A Lua future is a lasync__future userdata. A future held by C (lasync.h's
 * lasync_future) is a malloc'd, reference-counted handle over one that outlives the runtime:
 * C's reference lasts until lasync__future_release; the runtime's lasts while the future is
 * pending (it pins the Lua future and counts it in lasync__futures_held). */
enum { LASYNC__FUTURE_PENDING, LASYNC__FUTURE_DONE, LASYNC__FUTURE_FAILED };
typedef struct lasync_future lasync_future; /* the C handle; opaque outside future.c */
typedef struct lasync__future {
  lasync__waitlist waiters;
  int state;
  int nvalues;
  lasync_future *held; /* the C handle while C holds it pending, else NULL */
  int oom;             /* settling from C ran out of memory: awaiting raises that */
} lasync__future;
typedef int (*lasync__push_cb)(lua_State *L, void *arg);
typedef void (*lasync__cancel_cb)(lasync_future *f, void *data);
lasync__future *lasync__future_new(lua_State *L);
int lasync__future_await(lua_State *L, lasync__future *f, const char *fname);
/* A new held future, or NULL (out of memory, or the runtime is closing). Never raises. */
lasync_future *lasync__future_hold(lua_State *L);
/* Loop thread: settles with the n values on top of L (popped; an error when state is
 * FAILED). Returns 1 if it was settled already (nothing popped), else 0; after cancellation or
 * once the runtime has gone it is a no-op (L is not touched once the runtime has gone). A
 * memory error fails the awaiting task, not the caller. */
int lasync__future_settle_held(lasync_future *h, lua_State *L, int state, int n);
/* Any thread: settles on the loop's next turn with push(L, arg)'s values, or rejects with
 * message if not NULL. A no-op once the runtime has gone. -1 when out of memory. */
int lasync__future_post(lasync_future *h, lasync__push_cb push, void *arg, const char *message);
/* In a lua_CFunction: pushes the Lua future to await, or raises if it cannot be awaited. */
void lasync__future_push_held(lua_State *L, lasync_future *h);
lasync__future *lasync__future_of(lasync_future *h);
/* The runtime while the future is held pending, else NULL. Loop thread. */
lasync__runtime *lasync__future_runtime(const lasync_future *h);
int lasync__future_cancelled(const lasync_future *h); /* any thread */
void lasync__future_on_cancel(lasync_future *h, lasync__cancel_cb cb, void *data);
void lasync__future_release(lasync_future *h); /* any thread: drops C's reference */
long lasync__futures_held(lasync__runtime *rt);  /* pending futures C holds */

/* xthread.c: the cross-thread queue. Any thread posts run(arg) to be called on the loop's
 * thread at its next turn; exactly one of run and drop is called for every post: drop when
 * the runtime closes first (at shutdown, or at once, on the posting thread, when the queue is
 * already closed; also when the post itself is out of memory). The queue is reference-counted
 * apart from the runtime, so a handle on it stays valid after lasync_destroy: a worker thread
 * retains it (lasync__xqueue_retain) while it may post. Posting never blocks on the loop. */
typedef struct lasync__xqueue lasync__xqueue;
typedef void (*lasync__xthread_fn)(void *arg);
/* Loop thread: the runtime's queue, made on first use; NULL when out of memory or closing. */
lasync__xqueue *lasync__xqueue_get(lasync__runtime *rt);
/* Any thread. 0, UV_ECANCELED (closed: drop ran) or UV_ENOMEM (drop ran). */
int lasync__xqueue_post(lasync__xqueue *q, lasync__xthread_fn run, lasync__xthread_fn drop,
                        void *arg);
void lasync__xqueue_retain(lasync__xqueue *q);  /* any thread */
void lasync__xqueue_release(lasync__xqueue *q); /* any thread; frees it after the last */
/* Loop thread: while the sum of deltas is positive, the queue keeps the loop alive (work is
 * out on other threads and will post back). */
void lasync__xqueue_hold(lasync__xqueue *q, int delta);

/* runtime.c: the one protected call from C into Lua (see there), and its form for a C
 * function taking one pointer: fn(L) finds ud as a light userdata at index 1; its results and
 * any error are dropped. Returns the status. */
int lasync__pcall(lua_State *L, int nargs, int nres);
/* Pushes a new table whose keys ("k") or values ("v") are weak. */
void lasync__push_weak_table(lua_State *L, const char *mode);
int lasync__cpcall(lua_State *L, lua_CFunction fn, void *ud);
/* Makes room in the ready ring for one more live task; raises a memory error otherwise, so
 * that waking a task never needs memory. */
void lasync__reserve_ready(lua_State *L, lasync__runtime *rt);
uint32_t lasync__count_unstarted(const lasync__runtime *rt); /* ready tasks never run yet */
/* Raises Lua's "not enough memory" (kept ready: raising it allocates nothing). */
int lasync__raise_oom(lua_State *L, lasync__runtime *rt);

/* timer.c, future.c, gather.c: each adds its functions to the module table at the top. */
void lasync__open_timer(lua_State *L);
/* timer.c: arms t's own timer for seconds and marks t waiting on it, as async.sleep does, for
 * a caller that yields itself (revive.c); -1, and nothing done, if the timer heap (malloc'ed,
 * outside the capped Lua heap) has no room. */
int lasync__sleep_begin(lasync__task *t, double seconds);
/* revive.c: for a task spawned by core._spawn_helper whose function a memory error has just
 * ended (the task at index task of the main thread, its coroutine co holding the body's
 * handler at 1), leaves [handler, function] on co, arms the delay and marks the task waiting,
 * and returns 1: the body yields then, and once resumed by the scheduler calls
 * lasync__revive_start, which makes it [handler, f, function], for the body to pcall with one
 * argument. Else returns 0, and the task ends. */
int lasync__revive(lasync__runtime *rt, lasync__task *t, int task, lua_State *co);
void lasync__revive_start(lua_State *co, lasync__task *t);
void lasync__open_revive(lua_State *L);
void lasync__open_future(lua_State *L);
void lasync__open_gather(lua_State *L);
void lasync__open_http(lua_State *L);
void lasync__open_json(lua_State *L); /* http/json.c */
void lasync__open_server(lua_State *L); /* http/server.c */

/* thread/pool.c: C work items on the default thread pool, behind lasync.h's lasync_work. */
typedef struct lasync__work lasync__work;
typedef void (*lasync__work_cb)(lasync__work *w, void *arg);
typedef int (*lasync__work_push_cb)(lua_State *L, void *arg);
int lasync__work_submit(lua_State *L, lasync__work_cb work, lasync__work_push_cb push, void *arg);
int lasync__work_cancelled(const lasync__work *w);
void lasync__work_fail(lasync__work *w, const char *message);
void lasync__open_thread(lua_State *L);
void lasync__open_fs(lua_State *L);      /* io/fs.c: core.fs */
void lasync__open_process(lua_State *L); /* io/process.c: core.process */
void lasync__kill_children_now(void);    /* io/process.c: async-signal-safe, for exiting now */

/* embedded.c, generated from lua/ by cmake/embed_lua.c: every file under lua/, by its path
 * there without ".lua" ("lasync", "http/client"), precompiled with its debug information under
 * its chunk name, and its source; ending with a {NULL} entry. */
typedef struct {
  const char *name;
  const char *chunkname; /* LASYNC__LIB_CHUNK unless CMakeLists.txt names another */
  const char *source;
  unsigned long source_len;
  const char *code; /* lua_dump of the compiled source */
  unsigned long code_len;
} lasync__lua_file;
extern const lasync__lua_file lasync__lua_files[];
/* Loads the embedded file `name` as a chunk named `chunkname` (the one it was compiled with:
 * "=[lasync]", so spawn sites skip it, or the one CMakeLists.txt gives it) and pushes it;
 * raises if there is no such file. */
void lasync__load_lua(lua_State *L, const char *name, const char *chunkname);
/* Loads the part of the module that sets async[field] if it is not loaded yet (lasync.c), for C
 * that needs what a lazily loaded part registers; raises if it fails. */
void lasync__load_part(lua_State *L, const char *field);

#endif
