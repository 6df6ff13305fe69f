/* Buffers (async.buffer): fixed blocks of bytes that s:read_into fills, so a bulk reader
 * reuses one block of memory instead of making a Lua string of every read.
 *
 * Lua 5.4 cannot make a string out of memory it did not copy (lua_pushlstring copies, and so
 * does luaL_pushresult), so a reader that takes strings pays a copy per byte, a fresh block per
 * read and a gigabyte of garbage per gigabyte read. A Buffer is asyncio's bytearray for
 * sock_recv_into, or Node's Buffer: one userdata holding its bytes, read into again and again;
 * the bytes become a string only when asked (buf:tostring()). Its memory is the Lua state's,
 * so LASYNC_MAX_MEMORY caps it like everything else.
 */
#include <string.h>

#include "private.h"

/* A block larger than this is more likely a mistake than a read buffer, and its size must fit
 * the lua_Integer arithmetic below on every platform. */
#define MAX_CAPACITY ((lua_Integer)1 << 30)

lasync__bytes *lasync__bytes_test(lua_State *L, int idx) {
  return (lasync__bytes *)luaL_testudata(L, idx, LASYNC_BYTES_MT);
}

static lasync__bytes *check_bytes(lua_State *L, const char *fname) {
  lasync__bytes *b = lasync__bytes_test(L, 1);
  if (b == NULL) lasync__argerror(L, 1, fname, "self", LASYNC_BYTES_MT);
  return b;
}

/* async.buffer(capacity) -> an empty Buffer that holds up to capacity bytes. */
static int l_buffer(lua_State *L) {
  lua_Integer cap;
  lasync__bytes *b;
  if (!lua_isinteger(L, 1)) return lasync__argerror(L, 1, "async.buffer", "capacity", "integer");
  cap = lua_tointeger(L, 1);
  if (cap < 1 || cap > MAX_CAPACITY)
    return lasync__misuse(L, "async.buffer: bad argument #1 'capacity' (1 to %I expected, got %I)",
                          MAX_CAPACITY, cap);
  b = (lasync__bytes *)lua_newuserdatauv(L, sizeof *b + (size_t)cap, 0);
  b->cap = (size_t)cap;
  b->len = 0;
  luaL_setmetatable(L, LASYNC_BYTES_MT);
  return 1;
}

/* #buf -> the bytes it holds (what the last read_into put there). */
static int bytes_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_bytes(L, "buffer:__len")->len);
  return 1;
}

/* buf:capacity() -> the most it can hold. */
static int bytes_capacity(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_bytes(L, "buffer:capacity")->cap);
  return 1;
}

/* string.sub's positions: a start below 1 is 1, an end past the length is the length, and a
 * negative one counts from the end. */
static lua_Integer start_pos(lua_Integer i, lua_Integer len) {
  if (i > 0) return i;
  if (i == 0 || i < -len) return 1;
  return len + i + 1;
}

static lua_Integer end_pos(lua_Integer j, lua_Integer len) {
  if (j > len) return len;
  if (j >= 0) return j;
  if (j < -len) return 0;
  return len + j + 1;
}

/* An optional integer argument of a method, numbered as the caller wrote it (buf:tostring(i):
 * i is #1), as luaL_argerror numbers a method's arguments. */
static lua_Integer opt_pos(lua_State *L, int idx, const char *name, lua_Integer def) {
  if (lua_isnoneornil(L, idx)) return def;
  if (!lua_isinteger(L, idx))
    lasync__misuse(L, "buffer:tostring: bad argument #%d '%s' (integer expected, got %s)", idx - 1,
                   name, lasync__typename(L, idx));
  return lua_tointeger(L, idx);
}

/* buf:tostring([i [, j]]) -> its bytes i..j as a string, with string.sub's positions. */
static int bytes_tostring(lua_State *L) {
  lasync__bytes *b = check_bytes(L, "buffer:tostring");
  lua_Integer len = (lua_Integer)b->len;
  lua_Integer i = start_pos(opt_pos(L, 2, "i", 1), len), j = end_pos(opt_pos(L, 3, "j", -1), len);
  if (i > j)
    lua_pushliteral(L, "");
  else
    lua_pushlstring(L, LASYNC__BYTES_DATA(b) + i - 1, (size_t)(j - i + 1));
  return 1;
}

static int bytes_name(lua_State *L) {
  lasync__bytes *b = (lasync__bytes *)lua_touserdata(L, 1);
  lua_pushfstring(L, "lasync.Buffer (%I of %I bytes)", (lua_Integer)b->len, (lua_Integer)b->cap);
  return 1;
}

void lasync__open_bytes(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"capacity", bytes_capacity}, {"tostring", bytes_tostring}, {NULL, NULL}};
  if (luaL_newmetatable(L, LASYNC_BYTES_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, bytes_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, bytes_name);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_buffer);
  lua_setfield(L, -2, "buffer");
}
