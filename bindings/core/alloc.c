/* A size-class allocator for the Lua states lasync opens (issue 15).
 *
 * Lua allocates and frees small objects at a high rate: each task is a userdata, a coroutine
 * (its lua_State, CallInfo and stack), closures, small tables. malloc/free per object showed
 * in the profile (and its per-chunk headers in the RSS). Here blocks up to MAX_SMALL bytes are
 * carved from 64 KiB slabs in 8-byte classes and kept on a free list per class on free, so a
 * burst of short-lived tasks recycles the same memory without a trip through malloc; larger
 * blocks go to malloc. Eight bytes is all the alignment Lua asks of its allocator (LUAI_MAXALIGN:
 * a double, a pointer, a lua_Integer), and a task (168 bytes) would waste 8 bytes in a 16-byte
 * class: a million tasks, 8 MB. Lua passes the old size on every free and realloc, so no header is
 * needed. One heap per lua_State (a state is used by one thread at a time): no locking.
 * Slabs are only returned when the heap is destroyed, after lua_close: a steady workload
 * reuses them (the soak's RSS slope), a one-off burst keeps its peak, as malloc's arenas do.
 *
 * Page faults were the next cost of a burst (a fault and a page cleared per 4 KiB: 77k faults
 * for a million tasks). Once the heap holds BIG_HEAP bytes of slabs, new slabs are 2 MiB and
 * blocks of BIG_BLOCK bytes or more (the arrays of a million-entry table) are mapped on their
 * own, and a thread of the heap's own maps and touches huge pages ahead (MADV_HUGEPAGE: one
 * fault per 2 MiB where transparent huge pages are "madvise" or "always"), which new slabs and
 * blocks take first; what it has not made yet is mapped here without the advice, since a huge
 * page the thread running the tasks must fault itself was the slow case (see prefault_main).
 * Small states (a worker's, a script that spawns a few tasks) never reach the threshold: 4 KiB
 * pages and no thread. A mapped block is unmapped when freed, so a burst's big arrays go back
 * to the system, and one that grows moves its pages (mremap) rather than copying them.
 *
 * The heap also counts the bytes Lua holds and can cap them (LASYNC_MAX_MEMORY): an
 * allocation past the cap fails, which Lua turns into a "not enough memory" error in the task
 * that asked. Counting is one addition per call, so the cap costs nothing measurable.
 *
 * Part of the cap (RESERVE) is kept for the runtime's helper tasks (revive.c: the servers'
 * dispatchers, reapers and accept loops), open only while one runs (lasync__heap_reserve). A
 * helper at a heap its tasks have filled could not get a call frame, and the server stalled:
 * the requests it would have answered 503 or cut, freeing their memory, waited for their
 * clients' timeouts instead (caps near 0.35 MiB, 20 clients). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* mremap */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h> /* getpid */
#define HAVE_MMAP 1
#endif

#include "private.h"

/* Under AddressSanitizer, a block in a slab is invisible to it: freed, it is still memory ASan
 * believes allocated, and a neighbour's overflow lands in another live block. So in a sanitized
 * build only the bytes Lua asked for are addressable, each block is followed by a poisoned
 * redzone, a freed one is poisoned until reused, and a class reuses its freed blocks oldest first
 * and only once QUARANTINE of them wait, so that a use after free is caught rather than landing
 * in the object that took the block over. */
#if defined(__SANITIZE_ADDRESS__)
#define HEAP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HEAP_ASAN 1
#endif
#endif
#if HEAP_ASAN
#include <sanitizer/asan_interface.h>
#define REDZONE 16
#define QUARANTINE 1024 /* freed blocks a class holds before it reuses one */
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
/* Only Lua's n bytes of a block of class cls are addressable: the rest of its last 8 too. */
#define FIT(p, cls, n) (POISON((p), ((cls) + 1) * GRAIN), UNPOISON((p), (n)))
#else
#define FIT(p, cls, n) ((void)(p), (void)(cls), (void)(n))
#define REDZONE 0
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define GRAIN 8
#define MAX_SMALL 1024 /* a coroutine with its basic stack is ~900 bytes: keep it small */
#define NCLASSES (MAX_SMALL / GRAIN)
#define SLAB_BYTES (64 * 1024)
#define HUGE_BYTES (2 * 1024 * 1024) /* a huge page, and the slab size past BIG_HEAP */
#define BIG_HEAP (8 * 1024 * 1024)   /* slabs held before slabs become huge */
#define BIG_BLOCK (HUGE_BYTES)       /* a block this big is mapped on its own, past BIG_HEAP */

typedef struct free_block {
  struct free_block *next;
} free_block;

typedef struct slab {
  struct slab *next;
  size_t bytes; /* SLAB_BYTES from malloc, or HUGE_BYTES mapped */
  /* blocks follow, aligned to GRAIN */
} slab;

struct lasync__heap {
  free_block *free[NCLASSES]; /* by class: (size - 1) / GRAIN */
#if HEAP_ASAN
  free_block *free_tail[NCLASSES]; /* the lists are queues there: freed at the tail */
  unsigned nfree[NCLASSES];
#endif
  char *bump, *end;           /* the unused rest of the newest slab */
  slab *slabs;                /* every slab, freed with the heap */
  size_t slab_bytes;          /* their total */
  size_t used;                /* bytes Lua holds (its own sizes, not rounded) */
  size_t grown;               /* bytes Lua's holding has grown by, all told (gcpace.c) */
  size_t peak;                /* the most Lua has held at once (gcpace.c: under_peak) */
  size_t cap;                 /* the limit in force (set_limit): 0, none */
  size_t full_cap, reserve;   /* the cap asked for (0: none), and the helpers' part of it */
  int reserve_open;           /* a helper task runs: the limit is the whole cap */
  /* async._debug.fail_next_alloc (lasync__heap_fail_next): the growing requests still to
   * refuse. */
  int fail_next;
  /* At the cap (at_cap): the request refused last, which Lua asks again after an emergency
   * collection; when, and the heap's grown count then; whether little had been allocated since
   * the refusal before, and for how long the program ran since the last retry; how many
   * retries in a row found their collection ineffective. */
  const void *refused_ptr;
  size_t refused_size, refused_grown;
  uint64_t refused_at, retried_at, ran_ns;
  int retry_next; /* the next growing request may be Lua's retry of refused_ptr */
  int little;
  unsigned ineffective;
  struct prefaulter *pf;      /* past BIG_HEAP, while it could be started */
};

#define SLAB_HEADER (((sizeof(slab) + GRAIN - 1) / GRAIN) * GRAIN)

/* The helpers' reserve: a 16th of the cap, at most 64 KiB: room for their frames and for the
 * few objects they make before the connections they cut or answer give memory back. */
#define RESERVE(cap) ((cap) / 16 < 65536 ? (cap) / 16 : 65536)

static void set_limit(lasync__heap *h) {
  h->cap = h->full_cap ? h->full_cap - (h->reserve_open ? 0 : h->reserve) : 0;
  if (h->fail_next && h->cap == 0) h->cap = SIZE_MAX; /* so that the path asks at_cap */
}

lasync__heap *lasync__heap_new(size_t cap) {
  lasync__heap *h = (lasync__heap *)calloc(1, sizeof *h);
  if (h) {
    h->full_cap = cap;
    h->reserve = RESERVE(cap);
    set_limit(h);
  }
  return h;
}

void lasync__heap_reserve(lasync__heap *h, int open) {
  if (h->reserve_open == open) return;
  h->reserve_open = open;
  set_limit(h);
}

/* ---- mapped memory: huge slabs and big blocks ---- */

#if HAVE_MMAP
/* Whole huge pages, aligned to one (the kernel backs only aligned 2 MiB ranges with a huge
 * page), marked for transparent huge pages. NULL when the system refuses. */
static void *map_huge(size_t bytes, int advise) {
  size_t span = bytes + HUGE_BYTES;
  char *p = (char *)mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char *aligned;
  if (p == MAP_FAILED) return NULL;
  aligned = (char *)(((uintptr_t)p + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
  if (aligned > p) munmap(p, (size_t)(aligned - p));
  if (aligned + bytes < p + span) munmap(aligned + bytes, (size_t)(p + span - (aligned + bytes)));
  if (advise) madvise(aligned, bytes, MADV_HUGEPAGE); /* advice: without THP it is ignored, and harmless */
  return aligned;
}

static size_t huge_round(size_t n) { return (n + HUGE_BYTES - 1) & ~(size_t)(HUGE_BYTES - 1); }

/* ---- huge pages faulted ahead, by a thread of the heap's own ---- */

/* A fresh page costs a fault and its clearing, and on a virtual machine the host may have to
 * back it first: a burst of a million tasks spent half its time there, on the thread running
 * it, and by how much varied from run to run (the host had taken back more or less of the
 * guest's free memory). Once the heap is big, a thread of its own maps and touches the next
 * huge pages before they are asked for, so that cost is paid on another core meanwhile. It
 * keeps at most PREFAULT_AHEAD pages in hand (what a burst's end leaves unused: 4 MiB) and
 * sleeps when it has them. When it falls behind, the heap maps its own pages without the
 * huge-page advice: a 4 KiB page is usually still backed by the host, a free 2 MiB one less so
 * (1M trivial tasks, 7 runs each between Node's: without the thread 0.30-0.64 s; with it and
 * huge pages everywhere 0.29-0.44 s, 4 KiB pages everywhere 0.31-0.34 s, as here 0.30-0.35 s). */
#define PREFAULT_AHEAD 2

typedef struct prefaulter {
  uv_thread_t thread;
  uv_mutex_t lock;
  uv_cond_t wake;
  char *ready[PREFAULT_AHEAD];
  int nready;
  int stop;
  pid_t pid; /* the process the thread runs in: a forked child has a copy of this, not the thread */
} prefaulter;

static void prefault_main(void *arg) {
  prefaulter *pf = (prefaulter *)arg;
  uv_mutex_lock(&pf->lock);
  while (!pf->stop) {
    char *p;
    size_t off;
    if (pf->nready == PREFAULT_AHEAD) {
      uv_cond_wait(&pf->wake, &pf->lock);
      continue;
    }
    uv_mutex_unlock(&pf->lock);
    if ((p = (char *)map_huge(HUGE_BYTES, 1)) != NULL)
      for (off = 0; off < HUGE_BYTES; off += 4096) ((volatile char *)p)[off] = 0;
    uv_mutex_lock(&pf->lock);
    if (p == NULL) { /* the system refuses: the heap maps its own, as without this thread */
      while (!pf->stop) uv_cond_wait(&pf->wake, &pf->lock);
      break;
    }
    pf->ready[pf->nready++] = p;
  }
  uv_mutex_unlock(&pf->lock);
}

static prefaulter *prefaulter_start(void) {
  prefaulter *pf = (prefaulter *)calloc(1, sizeof *pf);
  if (pf == NULL) return NULL;
  if (uv_mutex_init(&pf->lock) != 0) goto no_lock;
  if (uv_cond_init(&pf->wake) != 0) goto no_cond;
  pf->pid = getpid();
  if (uv_thread_create(&pf->thread, prefault_main, pf) != 0) goto no_thread;
  return pf;
no_thread:
  uv_cond_destroy(&pf->wake);
no_cond:
  uv_mutex_destroy(&pf->lock);
no_lock:
  free(pf);
  return NULL;
}

static void prefaulter_stop(prefaulter *pf) {
  int i;
  if (pf->pid != getpid()) {
    /* A child forked while the thread ran: there is no thread here to join, and the lock and
     * condition are copies of ones the thread may have held or waited on (destroying that
     * condition waits for ever). The pages ready are this process's own copies; ready[] is
     * whole only if the lock was free at the fork (it is changed under it): else they stay. */
    if (uv_mutex_trylock(&pf->lock) == 0)
      for (i = 0; i < pf->nready; i++) munmap(pf->ready[i], HUGE_BYTES);
    free(pf);
    return;
  }
  uv_mutex_lock(&pf->lock);
  pf->stop = 1;
  uv_cond_signal(&pf->wake);
  uv_mutex_unlock(&pf->lock);
  uv_thread_join(&pf->thread);
  for (i = 0; i < pf->nready; i++) munmap(pf->ready[i], HUGE_BYTES);
  uv_cond_destroy(&pf->wake);
  uv_mutex_destroy(&pf->lock);
  free(pf);
}

/* A faulted huge page if the thread has one ready (it starts on the first call), else NULL;
 * either way the thread is told to make the next. */
static char *take_prefaulted(lasync__heap *h) {
  char *p = NULL;
  if (h->slab_bytes < BIG_HEAP) return NULL; /* small states have no thread */
  if (h->pf == NULL && (h->pf = prefaulter_start()) == NULL) return NULL;
  /* In a forked child, no thread fills ready[], and its lock may be held for ever (by the
   * thread, at the fork): the heap maps its own pages, as before the thread started. */
  if (h->pf->pid != getpid()) return NULL;
  uv_mutex_lock(&h->pf->lock);
  if (h->pf->nready > 0) p = h->pf->ready[--h->pf->nready];
  uv_cond_signal(&h->pf->wake);
  uv_mutex_unlock(&h->pf->lock);
  return p;
}

/* Whether a block of Lua's size n is mapped: by size alone, so a block needs no header to be
 * freed the way it was made. glibc maps blocks this big itself; ours are huge-page aligned. */
#define MAPPED(n) ((n) >= BIG_BLOCK)
#else
#define MAPPED(n) 0
#endif

void lasync__heap_free(lasync__heap *h) {
  slab *s, *next;
  if (h == NULL) return;
#if HAVE_MMAP
  if (h->pf) prefaulter_stop(h->pf);
#endif
  for (s = h->slabs; s; s = next) {
    next = s->next;
    UNPOISON(s, s->bytes); /* a mapping's shadow outlives it: the next one there starts clean */
#if HAVE_MMAP
    if (s->bytes == HUGE_BYTES) {
      munmap(s, HUGE_BYTES);
      continue;
    }
#endif
    free(s);
  }
  free(h);
}

size_t lasync__heap_used(const lasync__heap *h) { return h->used; }

size_t lasync__heap_cap(const lasync__heap *h) { return h->full_cap; }

size_t lasync__heap_grown(const lasync__heap *h) { return h->grown; }

size_t lasync__heap_peak(const lasync__heap *h) { return h->peak; }

/* A block of old bytes is now nsize (either may be 0): the counts follow. */
static void account(lasync__heap *h, size_t old, size_t nsize) {
  h->used = h->used - old + nsize;
  if (nsize > old) {
    h->grown += nsize - old;
    if (h->used > h->peak) h->peak = h->used;
  }
}

static void *small_alloc(lasync__heap *h, size_t cls) {
  free_block *b = h->free[cls];
  size_t bytes = (cls + 1) * GRAIN + REDZONE;
#if HEAP_ASAN
  if (b && h->nfree[cls] > QUARANTINE) {
    UNPOISON(b, bytes - REDZONE);
    h->free[cls] = b->next;
    if (h->free[cls] == NULL) h->free_tail[cls] = NULL;
    h->nfree[cls]--;
    return b;
  }
#else
  if (b) {
    h->free[cls] = b->next;
    return b;
  }
#endif
  if ((size_t)(h->end - h->bump) < bytes) {
    /* The slab's tail (under MAX_SMALL bytes) is left unused rather than split into classes:
     * simpler, and under 2 % of a slab. */
    slab *s = NULL;
    size_t size = SLAB_BYTES;
#if HAVE_MMAP
    if (h->slab_bytes >= BIG_HEAP && ((s = (slab *)take_prefaulted(h)) != NULL ||
                                      (s = (slab *)map_huge(HUGE_BYTES, 0)) != NULL))
      size = HUGE_BYTES;
#endif
    if (s == NULL && (s = (slab *)malloc(SLAB_BYTES)) == NULL) return NULL;
    s->next = h->slabs;
    s->bytes = size;
    h->slabs = s;
    h->slab_bytes += size;
    h->bump = (char *)s + SLAB_HEADER;
    h->end = (char *)s + size;
  }
  b = (free_block *)h->bump;
  h->bump += bytes;
  POISON((char *)b + bytes - REDZONE, REDZONE);
  return b;
}

static void small_free(lasync__heap *h, void *p, size_t cls) {
  free_block *b = (free_block *)p;
#if HEAP_ASAN
  free_block *tail = h->free_tail[cls];
  UNPOISON(b, sizeof *b); /* Lua's block may have been under 8 bytes (FIT) */
  b->next = NULL;
  POISON(b, (cls + 1) * GRAIN);
  if (tail) {
    UNPOISON(tail, sizeof *tail);
    tail->next = b;
    POISON(tail, sizeof *tail);
  } else {
    h->free[cls] = b;
  }
  h->free_tail[cls] = b;
  h->nfree[cls]++;
#else
  b->next = h->free[cls];
  h->free[cls] = b;
#endif
}

/* A block over MAX_SMALL: malloc'd, or mapped when MAPPED(size). */
static void big_free(void *p, size_t size) {
#if HAVE_MMAP
  if (MAPPED(size)) {
    munmap(p, huge_round(size));
    return;
  }
#endif
  free(p);
}

/* from: where the pages that will be written first begin (past what a growing block moves in,
 * see big_realloc). */
static void *big_alloc(lasync__heap *h, size_t size, size_t from) {
#if HAVE_MMAP
  if (MAPPED(size)) {
    /* Each of its huge pages that the thread has ready moves in place of an untouched one. */
    char *p = (char *)map_huge(huge_round(size), 0), *page;
    size_t off;
    for (off = from; p && off < huge_round(size) && (page = take_prefaulted(h)) != NULL;
         off += HUGE_BYTES) {
      if (mremap(page, HUGE_BYTES, HUGE_BYTES, MREMAP_MAYMOVE | MREMAP_FIXED, p + off) == MAP_FAILED) {
        munmap(page, HUGE_BYTES);
        break;
      }
    }
    return p;
  }
#endif
  (void)h;
  (void)from;
  return malloc(size);
}

/* Resizes a block over MAX_SMALL to another over MAX_SMALL; NULL (the block untouched) when
 * out of memory. */
static void *big_realloc(lasync__heap *h, void *p, size_t old, size_t nsize) {
  void *q;
#if HAVE_MMAP
  if (MAPPED(old) || MAPPED(nsize)) {
    if (MAPPED(old) && MAPPED(nsize) && huge_round(nsize) <= huge_round(old)) {
      if (huge_round(nsize) < huge_round(old)) /* a shrink stays in place */
        munmap((char *)p + huge_round(nsize), huge_round(old) - huge_round(nsize));
      return p;
    }
    if ((q = big_alloc(h, nsize, MAPPED(old) ? huge_round(old) : 0)) == NULL) return NULL;
#if defined(MREMAP_FIXED)
    /* A mapped block growing: its pages move to the start of the new (aligned) mapping, in
     * place of the untouched ones there, so nothing is copied and only the new part will
     * fault. A table's array doubles as it grows: a copy (and a fault per page) of everything
     * held so far at each doubling, else.
     * One huge page at a time: a block that took prefaulted pages (big_alloc) is several
     * mappings, which one mremap does not move before Linux 6.17 (EFAULT: always the copy
     * then) and, since, may move only in part when it fails (mremap(2); ENOMEM at
     * vm.max_map_count), so the copy below would read pages gone from p. A page is in one
     * mapping (they are all whole, aligned huge pages), so each move is done or not: on a
     * failure the pages before it are in q and the rest, still in p, are copied. */
    if (MAPPED(old) && MAPPED(nsize)) {
      size_t off;
      for (off = 0; off < huge_round(old); off += HUGE_BYTES)
        if (mremap((char *)p + off, HUGE_BYTES, HUGE_BYTES, MREMAP_MAYMOVE | MREMAP_FIXED,
                   (char *)q + off) == MAP_FAILED)
          break;
      if (off < huge_round(old)) {
        memcpy((char *)q + off, (char *)p + off, old - off);
        munmap((char *)p + off, huge_round(old) - off);
      }
      return q;
    }
#endif
    memcpy(q, p, old < nsize ? old : nsize);
    big_free(p, old);
    return q;
  }
#endif
  (void)q;
  return realloc(p, nsize);
}

/* Near the cap, every refused allocation makes Lua run an emergency full collection and ask
 * again. A heap whose live data fills the cap but for a sliver is collected whole each time the
 * sliver is used: 64 MB alive in small tables with 10 KB of room took 25 ms per 10 KB, for ever
 * (and a SIGTERM then waited behind the collections). So, as Java's GC overhead limit and V8's
 * ineffective mark-compacts near the heap limit do, once INEFFECTIVE_LIMIT retries in a row
 * followed a collection of STALL_NS or more that took OVERHEAD times as long as the program had
 * run since the last one, and came after less than INEFFECTIVE_ROOM of the cap had been
 * allocated since the refusal before, Lua's retry is refused too, and the task that asked gets
 * its "not enough memory" now. A collection that makes room, or a program that runs (or waits
 * on I/O) between refusals, starts the count over; a small heap, collected in microseconds,
 * keeps Lua's way (a fill loop at an 8 MB cap: 40 us collections every 2 us). */
#define INEFFECTIVE_LIMIT 4
#define INEFFECTIVE_ROOM(cap) ((cap) / 64)
#define OVERHEAD 32
#define STALL_NS 1000000 /* a collection shorter than 1 ms is no stall, however often it runs */

/* Whether a request growing a block from old to nsize bytes is refused: past the cap, or the
 * retry of one refused while collections have stopped making room. */
static int at_cap(lasync__heap *h, const void *ptr, size_t old, size_t nsize) {
  uint64_t now;
  if (h->fail_next) {
    if (--h->fail_next == 0) set_limit(h);
    return 1;
  }
  if (h->retry_next) {
    h->retry_next = 0;
    if (ptr == h->refused_ptr && nsize == h->refused_size) { /* after the collection */
      now = uv_hrtime();
      uint64_t collected_ns = now - h->refused_at;
      if (h->little && collected_ns >= STALL_NS && collected_ns > h->ran_ns * OVERHEAD)
        h->ineffective++;
      else
        h->ineffective = 0;
      h->retried_at = now;
      if (h->ineffective >= INEFFECTIVE_LIMIT) return 1;
    }
  }
  if (h->used - old + nsize <= h->cap) return 0;
  now = uv_hrtime();
  h->little = h->grown - h->refused_grown < INEFFECTIVE_ROOM(h->cap);
  h->ran_ns = h->retried_at ? now - h->retried_at : UINT64_MAX / OVERHEAD;
  h->refused_grown = h->grown;
  h->refused_at = now;
  h->refused_ptr = ptr;
  h->refused_size = nsize;
  h->retry_next = 1;
  return 1;
}

/* async._debug.fail_next_alloc (task.c): the next request that grows the heap is refused, and
 * so is Lua's retry of it after its emergency collection, so that the code asking gets "not
 * enough memory" there, as past the cap. A heap without a cap has one meanwhile (set_limit). */
void lasync__heap_fail_next(lasync__heap *h) {
  h->fail_next = 2;
  set_limit(h);
}

void *lasync__heap_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  lasync__heap *h = (lasync__heap *)ud;
  size_t old = ptr ? osize : 0; /* with ptr NULL, osize is the object's type: not a size */
  void *p;
  if (nsize == 0) {
    if (ptr) {
      h->used -= old;
      if (old <= MAX_SMALL)
        small_free(h, ptr, (old - 1) / GRAIN);
      else
        big_free(ptr, old);
    }
    return NULL;
  }
  if (h->cap && nsize > old && at_cap(h, ptr, old, nsize)) return NULL;
  if (nsize <= MAX_SMALL) {
    size_t cls = (nsize - 1) / GRAIN;
    if (ptr && old <= MAX_SMALL && (old - 1) / GRAIN == cls) {
      account(h, old, nsize); /* same class: the block already fits */
      FIT(ptr, cls, nsize);
      return ptr;
    }
    if ((p = small_alloc(h, cls)) != NULL) FIT(p, cls, nsize);
    if (p == NULL) {
      /* Lua assumes a shrink never fails: keep the larger block. Freed later with the small
       * size, it joins that class's list (malloc'd memory then outlives the heap: only on
       * this out-of-memory path). */
      if (ptr && nsize < old) {
        h->used = h->used - old + nsize;
        return ptr;
      }
      return NULL;
    }
  } else if (ptr && old > MAX_SMALL) {
    /* A mapped block shrunk under BIG_BLOCK must move to malloc, which can fail: Lua 5.4
     * raises a memory error then (luaH_resize, luaS_resize restores), it does not crash. */
    if ((p = big_realloc(h, ptr, old, nsize)) == NULL) return NULL;
    account(h, old, nsize);
    return p;
  } else if ((p = big_alloc(h, nsize, 0)) == NULL) {
    return NULL;
  }
  if (ptr) { /* moved between a class and a big block, or between classes */
    memcpy(p, ptr, old < nsize ? old : nsize);
    if (old <= MAX_SMALL)
      small_free(h, ptr, (old - 1) / GRAIN);
    else
      big_free(ptr, old);
  }
  account(h, old, nsize);
  return p;
}

/* ---- a state on a heap, set up as luaL_newstate sets up its own ---- */

static int panic(lua_State *L) {
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "error object is not a string");
  fflush(stderr);
  return 0; /* Lua aborts */
}

/* lauxlib's warning functions (static there): "@on"/"@off" switch warnings, which start off;
 * a message in parts is printed as one line. */
static void warn_on(void *ud, const char *message, int tocont);
static void warn_off(void *ud, const char *message, int tocont);

static int warn_control(lua_State *L, const char *message, int tocont) {
  if (tocont || *(message++) != '@') return 0;
  if (strcmp(message, "off") == 0)
    lua_setwarnf(L, warn_off, L);
  else if (strcmp(message, "on") == 0)
    lua_setwarnf(L, warn_on, L);
  return 1;
}

static void warn_off(void *ud, const char *message, int tocont) {
  warn_control((lua_State *)ud, message, tocont);
}

static void warn_cont(void *ud, const char *message, int tocont) {
  lua_State *L = (lua_State *)ud;
  fprintf(stderr, "%s", message);
  if (tocont) {
    lua_setwarnf(L, warn_cont, L);
  } else {
    fprintf(stderr, "\n");
    fflush(stderr);
    lua_setwarnf(L, warn_on, L);
  }
}

static void warn_on(void *ud, const char *message, int tocont) {
  if (warn_control((lua_State *)ud, message, tocont)) return;
  fprintf(stderr, "Lua warning: ");
  warn_cont(ud, message, tocont);
}

lua_State *lasync__heap_newstate(lasync__heap *h) {
  lua_State *L = lua_newstate(lasync__heap_alloc, h);
  if (L == NULL) return NULL;
  lua_atpanic(L, panic);
  lua_setwarnf(L, warn_off, L);
  return L;
}
