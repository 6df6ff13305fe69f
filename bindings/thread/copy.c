/* Values across states: the copy rules of async.to_thread, both ways.
 *
 * What crosses: nil, booleans, integers and floats (each keeping its subtype), strings
 * (binary-safe), tables (nested, with cycles and shared subtables preserved, metatables
 * dropped) and Lua functions whose only upvalue is _ENV (dumped and reloaded; the receiver
 * gives them its own environment). Anything else is refused with the path where it was found
 * ("argument #2.conn: userdata cannot be sent to a thread"), never turned into nil: luv's
 * silent nils (luv #564, #708) are what this file exists to avoid.
 *
 * The encoding is a flat byte string, one tag per value:
 *   'n' nil, 'f' false, 't' true, 'i' lua_Integer, 'd' lua_Number, 's' size_t + bytes,
 *   'T' uint32 array size hint, uint32 number of pairs, then the key/value pairs, then 'e';
 *   'F' size_t + a lua_dump, then a byte: 1 if it has its _ENV upvalue;
 *   'R' uint32: the table or function seen that many values ago (numbered in order of first
 *   appearance), which keeps cycles and sharing.
 */
#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "thread.h"

#define MAX_DEPTH 200 /* nesting deeper than this is refused, not a C stack overflow */
#define PATH_MAX_LEN 200

void lasync__tbuf_free(lasync__tbuf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static void put(lasync__tbuf *b, const void *p, size_t n) {
  if (b->oom) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    char *data;
    while (cap < b->len + n) cap *= 2;
    data = (char *)realloc(b->data, cap);
    if (data == NULL) {
      b->oom = 1;
      return;
    }
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_tag(lasync__tbuf *b, char tag) { put(b, &tag, 1); }

/* The path to the value being encoded is not built as the encoder goes (that was a snprintf
 * per value): the keys being walked are still on the Lua stack, and refuse() reads them. */
typedef struct {
  lua_State *L;
  lasync__tbuf *b;
  int seen; /* stack slot of the table value -> its number, made on first need */
  int has_seen;
  uint32_t next; /* the number the next table or function gets */
  const char *what;
  int index; /* "argument #index" */
  int depth;
  int keys[MAX_DEPTH + 1];       /* stack index of the key walked at each depth */
  uint8_t in_key[MAX_DEPTH + 1]; /* encoding that key itself, not its value */
  char *err;
  size_t errlen;
} encoder;

static void push_path(encoder *e, int idx, char *path, size_t *plen);

static int refuse(encoder *e, const char *why) {
  char path[PATH_MAX_LEN + 40];
  size_t plen = (size_t)snprintf(path, sizeof path, "%s #%d", e->what, e->index);
  int d;
  for (d = 0; d < e->depth; d++) {
    if (e->in_key[d]) {
      snprintf(path + plen, sizeof path - plen, " (a key)");
      break;
    }
    push_path(e, e->keys[d], path, &plen);
  }
  snprintf(e->err, e->errlen, "%s: %s", path, why);
  return -1;
}

const char *lasync__copy_bad_upvalue(lua_State *L, int idx) {
  int i;
  const char *name;
  if (lua_iscfunction(L, idx)) return "";
  for (i = 1; (name = lua_getupvalue(L, idx, i)) != NULL; i++) {
    lua_pop(L, 1); /* the name lives in the function's prototype, not on the stack */
    if (strcmp(name, "_ENV") != 0 || i > 1) return *name ? name : "?";
  }
  return NULL;
}

/* Appends ".name", "[3]" or "[key]" to the path, for the key at idx. */
static void push_path(encoder *e, int idx, char *path, size_t *plen) {
  char part[64];
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len, i;
      const char *s = lua_tolstring(L, idx, &len);
      int ident = len > 0 && len < 40 && !(s[0] >= '0' && s[0] <= '9');
      for (i = 0; ident && i < len; i++)
        ident = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                (s[i] >= '0' && s[i] <= '9') || s[i] == '_';
      if (ident)
        snprintf(part, sizeof part, ".%s", s);
      else
        snprintf(part, sizeof part, "[\"%.30s%s\"]", s, len > 30 ? "..." : "");
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        snprintf(part, sizeof part, "[%lld]", (long long)lua_tointeger(L, idx));
      else
        snprintf(part, sizeof part, "[%.14g]", lua_tonumber(L, idx));
      break;
    case LUA_TBOOLEAN:
      snprintf(part, sizeof part, "[%s]", lua_toboolean(L, idx) ? "true" : "false");
      break;
    default:
      snprintf(part, sizeof part, "[%s]", luaL_typename(L, idx));
      break;
  }
  if (*plen >= PATH_MAX_LEN) return;
  snprintf(path + *plen, PATH_MAX_LEN + 40 - *plen, "%s",
           *plen + strlen(part) < PATH_MAX_LEN ? part : "...");
  *plen = strlen(path);
}

static int writer(lua_State *L, const void *p, size_t sz, void *ud) {
  (void)L;
  put((lasync__tbuf *)ud, p, sz);
  return ((lasync__tbuf *)ud)->oom;
}

/* Numbers a table or function on first sight; returns 1 (and writes 'R') if seen before. */
static int seen_before(encoder *e, int idx) {
  lua_State *L = e->L;
  uint32_t id;
  if (!e->has_seen) { /* into the slot reserved for it, so nothing on the stack moves */
    lua_createtable(L, 0, 4);
    lua_replace(L, e->seen);
    e->has_seen = 1;
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
    id = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    put_tag(e->b, 'R');
    put(e->b, &id, sizeof id);
    return 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, e->next++);
  lua_rawset(L, e->seen);
  return 0;
}

static int encode(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  lasync__tbuf *b = e->b;
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      put_tag(b, 'n');
      return 0;
    case LUA_TBOOLEAN:
      put_tag(b, lua_toboolean(L, idx) ? 't' : 'f');
      return 0;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_Integer i = lua_tointeger(L, idx);
        put_tag(b, 'i');
        put(b, &i, sizeof i);
      } else {
        lua_Number d = lua_tonumber(L, idx);
        put_tag(b, 'd');
        put(b, &d, sizeof d);
      }
      return 0;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      put_tag(b, 's');
      put(b, &len, sizeof len);
      put(b, s, len);
      return 0;
    }
    case LUA_TFUNCTION: {
      char why[120];
      size_t at, len;
      const char *bad = lasync__copy_bad_upvalue(L, idx);
      uint8_t has_env = !lua_iscfunction(L, idx) && lua_getupvalue(L, idx, 1) != NULL;
      if (has_env) lua_pop(L, 1);
      if (bad && !*bad) return refuse(e, "C function cannot be sent to a thread");
      if (bad) {
        snprintf(why, sizeof why, "function with upvalue '%.40s' cannot be sent to a thread", bad);
        return refuse(e, why);
      }
      if (seen_before(e, idx)) return 0;
      put_tag(b, 'F');
      at = b->len;
      len = 0;
      put(b, &len, sizeof len);
      lua_pushvalue(L, idx);
      lua_dump(L, writer, b, 0);
      lua_pop(L, 1);
      if (!b->oom) {
        len = b->len - at - sizeof len;
        memcpy(b->data + at, &len, sizeof len);
      }
      put(b, &has_env, 1);
      return 0;
    }
    case LUA_TTABLE: {
      uint32_t narr, npairs = 0;
      size_t at;
      if (depth >= MAX_DEPTH) return refuse(e, "tables nested too deeply to be sent to a thread");
      if (seen_before(e, idx)) return 0;
      luaL_checkstack(L, 6, "sending a table to a thread");
      narr = (uint32_t)lua_rawlen(L, idx);
      put_tag(b, 'T');
      put(b, &narr, sizeof narr);
      at = b->len;
      put(b, &npairs, sizeof npairs); /* filled in below: the receiver sizes the table once */
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        int rc;
        npairs++;
        e->keys[depth] = lua_gettop(L) - 1;
        e->in_key[depth] = 1;
        e->depth = depth + 1;
        rc = encode(e, -2, depth + 1);
        e->in_key[depth] = 0;
        if (rc == 0) rc = encode(e, -1, depth + 1);
        e->depth = depth;
        lua_pop(L, 1);
        if (rc == 0 && b->oom) rc = -2;
        if (rc < 0) {
          lua_pop(L, 1);
          return rc;
        }
      }
      put_tag(b, 'e');
      if (!b->oom) memcpy(b->data + at, &npairs, sizeof npairs);
      return 0;
    }
    default: {
      char why[80];
      snprintf(why, sizeof why, "%s cannot be sent to a thread", luaL_typename(L, idx));
      return refuse(e, why);
    }
  }
}

int lasync__copy_encode(lua_State *L, int idx, int n, lasync__tbuf *b, const char *what, int first,
                        char *err, size_t errlen) {
  encoder e;
  int i, rc = 0, top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 8, "sending values to a thread");
  lua_pushnil(L);
  e.L = L;
  e.b = b;
  e.seen = lua_gettop(L);
  e.has_seen = 0;
  e.next = 1;
  e.what = what;
  e.depth = 0;
  e.err = err;
  e.errlen = errlen;
  for (i = 0; i < n && rc == 0; i++) {
    e.index = first + i;
    rc = encode(&e, idx + i, 0);
    if (rc == 0 && b->oom) rc = -2;
  }
  lua_settop(L, top);
  return rc;
}

/* ---- decoding ---- */

typedef struct {
  lua_State *L;
  const char *p, *end;
  int refs; /* stack index of the table: number -> value */
  uint32_t next;
  int env;
  int has_refs;
} decoder;

/* Numbers the table or function on top, for later 'R' tags. */
static void remember(decoder *d) {
  lua_State *L = d->L;
  if (!d->has_refs) { /* into the slot reserved for it, so nothing on the stack moves */
    lua_createtable(L, 4, 0);
    lua_replace(L, d->refs);
    d->has_refs = 1;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, d->next++);
}

static void take(decoder *d, void *out, size_t n) {
  if ((size_t)(d->end - d->p) < n) luaL_error(d->L, "lasync: corrupt thread message");
  memcpy(out, d->p, n);
  d->p += n;
}

typedef struct {
  const char *p;
  size_t len;
} chunk;

static const char *reader(lua_State *L, void *ud, size_t *size) {
  chunk *c = (chunk *)ud;
  (void)L;
  *size = c->len;
  c->len = 0;
  return *size ? c->p : NULL;
}

static void decode(decoder *d, int depth) {
  lua_State *L = d->L;
  char tag;
  luaL_checkstack(L, 4, "receiving values from a thread");
  take(d, &tag, 1);
  switch (tag) {
    case 'n':
      lua_pushnil(L);
      break;
    case 'f':
      lua_pushboolean(L, 0);
      break;
    case 't':
      lua_pushboolean(L, 1);
      break;
    case 'i': {
      lua_Integer i;
      take(d, &i, sizeof i);
      lua_pushinteger(L, i);
      break;
    }
    case 'd': {
      lua_Number n;
      take(d, &n, sizeof n);
      lua_pushnumber(L, n);
      break;
    }
    case 's': {
      size_t len;
      take(d, &len, sizeof len);
      if ((size_t)(d->end - d->p) < len) luaL_error(L, "lasync: corrupt thread message");
      lua_pushlstring(L, d->p, len);
      d->p += len;
      break;
    }
    case 'R': {
      uint32_t id;
      take(d, &id, sizeof id);
      if (!d->has_refs) luaL_error(L, "lasync: corrupt thread message");
      lua_rawgeti(L, d->refs, id);
      break;
    }
    case 'F': {
      size_t len;
      uint8_t has_env;
      chunk c;
      take(d, &len, sizeof len);
      if ((size_t)(d->end - d->p) < len + 1) luaL_error(L, "lasync: corrupt thread message");
      c.p = d->p;
      c.len = len;
      if (lua_load(L, reader, &c, "=(thread)", "b") != LUA_OK) lua_error(L);
      d->p += len;
      take(d, &has_env, 1);
      if (has_env && d->env) {
        lua_pushvalue(L, d->env);
        lua_setupvalue(L, -2, 1);
      }
      remember(d);
      break;
    }
    case 'T': {
      uint32_t narr, npairs, nrec;
      char next;
      if (depth > 250) luaL_error(L, "lasync: corrupt thread message");
      take(d, &narr, sizeof narr);
      take(d, &npairs, sizeof npairs);
      /* Hints only (a bad one costs a rehash, nothing else), bounded by what the message holds. */
      nrec = npairs > narr ? npairs - narr : 0;
      if ((size_t)(d->end - d->p) < (size_t)npairs * 2) narr = nrec = 0;
      lua_createtable(L, (int)narr, (int)nrec);
      remember(d);
      for (;;) {
        if (d->p >= d->end) luaL_error(L, "lasync: corrupt thread message");
        next = *d->p;
        if (next == 'e') {
          d->p++;
          break;
        }
        decode(d, depth + 1); /* key */
        decode(d, depth + 1); /* value */
        if (lua_isnil(L, -2)) luaL_error(L, "lasync: corrupt thread message");
        lua_rawset(L, -3);
      }
      break;
    }
    default:
      luaL_error(L, "lasync: corrupt thread message");
  }
}

int lasync__copy_decode(lua_State *L, const char *data, size_t len, int env_idx) {
  decoder d;
  int n = 0;
  d.L = L;
  d.p = data;
  d.end = data ? data + len : data; /* no results: no buffer at all */
  d.env = env_idx ? lua_absindex(L, env_idx) : 0;
  d.next = 1;
  luaL_checkstack(L, 8, "receiving values from a thread");
  lua_pushnil(L); /* the refs table's slot, filled on the first table or function */
  d.refs = lua_gettop(L);
  d.has_refs = 0;
  while (d.p < d.end) {
    decode(&d, 0);
    n++;
  }
  lua_remove(L, d.refs);
  return n;
}
