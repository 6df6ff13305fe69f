/* A size-class allocator for the Lua states lasync opens (issue 15).
 *
 * Lua allocates and frees small objects at a high rate: each task is a userdata, a coroutine
 * (its lua_State, CallInfo and stack), closures, small tables. malloc/free per object showed
 * in the profile (and its per-chunk headers in the RSS). Here blocks up to MAX_SMALL bytes are
 * carved from 64 KiB slabs in 16-byte classes and kept on a free list per class on free, so a
 * burst of short-lived tasks recycles the same memory without a trip through malloc; larger
 * blocks go to malloc. Lua passes the old size on every free and realloc, so no header is
 * needed. One heap per lua_State (a state is used by one thread at a time): no locking.
 * Slabs are only returned when the heap is destroyed, after lua_close: a steady workload
 * reuses them (the soak's RSS slope), a one-off burst keeps its peak, as malloc's arenas do.
 *
 * The heap also counts the bytes Lua holds and can cap them (LASYNC_MAX_MEMORY): an
 * allocation past the cap fails, which Lua turns into a "not enough memory" error in the task
 * that asked. Counting is one addition per call, so the cap costs nothing measurable. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

#define GRAIN 16
#define MAX_SMALL 1024 /* a coroutine with its basic stack is ~900 bytes: keep it small */
#define NCLASSES (MAX_SMALL / GRAIN)
#define SLAB_BYTES (64 * 1024)

typedef struct free_block {
  struct free_block *next;
} free_block;

typedef struct slab {
  struct slab *next;
  /* blocks follow, aligned to GRAIN */
} slab;

struct lasync__heap {
  free_block *free[NCLASSES]; /* by class: (size - 1) / GRAIN */
  char *bump, *end;           /* the unused rest of the newest slab */
  slab *slabs;                /* every slab, freed with the heap */
  size_t used;                /* bytes Lua holds (its own sizes, not rounded) */
  size_t cap;                 /* 0: none */
};

#define SLAB_HEADER (((sizeof(slab) + GRAIN - 1) / GRAIN) * GRAIN)

lasync__heap *lasync__heap_new(size_t cap) {
  lasync__heap *h = (lasync__heap *)calloc(1, sizeof *h);
  if (h) h->cap = cap;
  return h;
}

void lasync__heap_free(lasync__heap *h) {
  slab *s, *next;
  if (h == NULL) return;
  for (s = h->slabs; s; s = next) {
    next = s->next;
    free(s);
  }
  free(h);
}

size_t lasync__heap_used(const lasync__heap *h) { return h->used; }

static void *small_alloc(lasync__heap *h, size_t cls) {
  free_block *b = h->free[cls];
  size_t bytes = (cls + 1) * GRAIN;
  if (b) {
    h->free[cls] = b->next;
    return b;
  }
  if ((size_t)(h->end - h->bump) < bytes) {
    /* The slab's tail (under MAX_SMALL bytes) is left unused rather than split into classes:
     * simpler, and under 2 % of a slab. */
    slab *s = (slab *)malloc(SLAB_BYTES);
    if (s == NULL) return NULL;
    s->next = h->slabs;
    h->slabs = s;
    h->bump = (char *)s + SLAB_HEADER;
    h->end = (char *)s + SLAB_BYTES;
  }
  b = (free_block *)h->bump;
  h->bump += bytes;
  return b;
}

static void small_free(lasync__heap *h, void *p, size_t cls) {
  free_block *b = (free_block *)p;
  b->next = h->free[cls];
  h->free[cls] = b;
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
        free(ptr);
    }
    return NULL;
  }
  if (h->cap && nsize > old && h->used - old + nsize > h->cap) return NULL;
  if (nsize <= MAX_SMALL) {
    size_t cls = (nsize - 1) / GRAIN;
    if (ptr && old <= MAX_SMALL && (old - 1) / GRAIN == cls) {
      h->used = h->used - old + nsize; /* same class: the block already fits */
      return ptr;
    }
    if ((p = small_alloc(h, cls)) == NULL) {
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
    if ((p = realloc(ptr, nsize)) == NULL) return NULL;
    h->used = h->used - old + nsize;
    return p;
  } else if ((p = malloc(nsize)) == NULL) {
    return NULL;
  }
  if (ptr) { /* moved between a class and malloc, or between classes */
    memcpy(p, ptr, old < nsize ? old : nsize);
    if (old <= MAX_SMALL)
      small_free(h, ptr, (old - 1) / GRAIN);
    else
      free(ptr);
  }
  h->used = h->used - old + nsize;
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
