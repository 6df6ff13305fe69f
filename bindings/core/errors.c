/* Error objects: failures you can test without matching strings.
 *
 * Every operation that fails (a cancellation, a timeout, later a transfer) raises a table with
 * `kind` and `message` under one metatable, so it survives gather, awaits and tracebacks, and
 * async.is_cancelled / async.is_timeout recognise it. A plain error("x") is never wrapped.
 */
#include <stdarg.h>
#include <string.h>

#include "private.h"

/* Raw reads, and a fallback for a field someone replaced: a __tostring that raises would lose
 * the error it was asked to show. */
static int error_tostring(lua_State *L) {
  const char *kind, *message;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "message");
  kind = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "error";
  message = lua_type(L, 3) == LUA_TSTRING ? lua_tostring(L, 3) : "(no message)";
  lua_pushfstring(L, "%s: %s", kind, message);
  return 1;
}

void lasync__push_error(lua_State *L, const char *kind, const char *message) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, LASYNC_ERROR_MT);
}

int lasync__is_error_kind(lua_State *L, int idx, const char *kind) {
  int yes = 0;
  idx = lua_absindex(L, idx);
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, LASYNC_ERROR_MT);
  if (lua_rawequal(L, -1, -2)) {
    lua_pushliteral(L, "kind");
    yes = lua_rawget(L, idx) == LUA_TSTRING && strcmp(lua_tostring(L, -1), kind) == 0;
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return yes;
}

/* ---- misuse: one format for every binding ---- */

const char *lasync__typename(lua_State *L, int idx) {
  /* Any value whose metatable has a __name, as luaL_typeerror and lua/'s check.typename do: a
   * Lua class (a lasync.File) reads the same from C as from Lua. */
  const char *name = luaL_typename(L, idx);
  int type = luaL_getmetafield(L, idx, "__name");
  if (type == LUA_TSTRING) name = lua_tostring(L, -1); /* kept alive by the metatable */
  if (type != LUA_TNIL) lua_pop(L, 1);
  return name;
}

/* The position of the first caller outside lasync's embedded Lua, like luaL_where(L, 1) but
 * skipping lua/ frames: a check reached through a lua/ wrapper (async.fs.open calls the
 * C open) names the user's line, never "[lasync]:225:". Pushes "" when there is none. */
static void push_user_where(lua_State *L) {
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Sl", &ar);
    if (strcmp(ar.source, "=[lasync]") == 0) continue;
    if (ar.currentline > 0) { /* a C caller (pcall) gives no position, as luaL_error does */
      lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
      return;
    }
    break;
  }
  lua_pushliteral(L, "");
}

int lasync__misuse(lua_State *L, const char *fmt, ...) {
  va_list ap;
  luaL_checkstack(L, 3, NULL);
  push_user_where(L);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

int lasync__selferror(lua_State *L, const char *fname, const char *expected) {
  return lasync__misuse(L, "%s: bad self (%s expected, got %s); call it with ':'", fname,
                        expected, lua_isnone(L, 1) ? "no value" : lasync__typename(L, 1));
}

int lasync__argerror(lua_State *L, int arg, const char *fname, const char *argname,
                     const char *expected) {
  const char *got = lua_isnone(L, arg) ? "no value" : lasync__typename(L, arg);
  /* A method ("stream:read") whose first argument is wrong was nearly always called with '.'
   * (s.read()): say so, whichever method it is (issue 14). */
  if (arg == 1 && strchr(fname, ':') != NULL) return lasync__selferror(L, fname, expected);
  if (argname)
    return lasync__misuse(L, "%s: bad argument #%d '%s' (%s expected, got %s)", fname, arg,
                          argname, expected, got);
  return lasync__misuse(L, "%s: bad argument #%d (%s expected, got %s)", fname, arg, expected,
                        got);
}

void lasync__check_options(lua_State *L, int idx, const char *fname,
                           const char *const known[]) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      while (known[i] && strcmp(known[i], lua_tostring(L, -1)) != 0) i++;
    /* One wording with lua/'s check.options: a key that is not a string is named by its type,
     * never printed as if it were an option's name. */
    if (lua_type(L, -1) != LUA_TSTRING)
      lasync__misuse(L, "%s: bad option key (string expected, got %s)", fname,
                     lasync__typename(L, -1));
    if (known[i] == NULL)
      lasync__misuse(L, "%s: bad option '%s' (unknown option)", fname, lua_tostring(L, -1));
  }
}

int lasync__opterror(lua_State *L, int idx, const char *fname, const char *opt,
                     const char *expected) {
  return lasync__misuse(L, "%s: bad option '%s' (%s expected, got %s)", fname, opt, expected,
                        lua_isnone(L, idx) ? "no value" : lasync__typename(L, idx));
}

void lasync__push_uv_error(lua_State *L, const char *kind, int err, const char *what) {
  if (what)
    lua_pushfstring(L, "%s: %s, %s", uv_err_name(err), uv_strerror(err), what);
  else
    lua_pushfstring(L, "%s: %s", uv_err_name(err), uv_strerror(err));
  lasync__push_error(L, kind, lua_tostring(L, -1));
  lua_remove(L, -2);
  lua_pushstring(L, uv_err_name(err));
  lua_setfield(L, -2, "code");
  lua_pushinteger(L, -err);
  lua_setfield(L, -2, "errno");
}

static int describe_protected(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Pushes a printable description of any error value; a failing __tostring cannot make
 * reporting fail. */
const char *lasync__describe(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TSTRING) {
    lua_pushvalue(L, idx);
  } else {
    lua_pushcfunction(L, describe_protected);
    lua_pushvalue(L, idx);
    if (lasync__pcall(L, 1, 1) != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
    }
  }
  return lua_tostring(L, -1);
}

static int l_is_kind(lua_State *L, const char *kind) {
  lua_pushboolean(L, lasync__is_error_kind(L, 1, kind));
  return 1;
}

static int l_is_cancelled(lua_State *L) { return l_is_kind(L, "cancelled"); }
static int l_is_timeout(lua_State *L) { return l_is_kind(L, "timeout"); }

/* async.error(kind, message [, fields]): lets Lua code raise the same kind of object. */
static int l_new_error(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) lasync__argerror(L, 1, "async.error", "kind", "string");
  if (lua_type(L, 2) != LUA_TSTRING) lasync__argerror(L, 2, "async.error", "message", "string");
  if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3))
    lasync__argerror(L, 3, "async.error", "fields", "table");
  lasync__push_error(L, lua_tostring(L, 1), lua_tostring(L, 2));
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      /* kind and message are the arguments': a field cannot make the error another kind */
      if (lua_type(L, -2) == LUA_TSTRING && (strcmp(lua_tostring(L, -2), "kind") == 0 ||
                                             strcmp(lua_tostring(L, -2), "message") == 0)) {
        lua_pop(L, 1);
        continue;
      }
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  return 1;
}

void lasync__open_errors(lua_State *L) {
  static const luaL_Reg funcs[] = {{"is_cancelled", l_is_cancelled},
                                   {"is_timeout", l_is_timeout},
                                   {"error", l_new_error},
                                   {NULL, NULL}};
  luaL_newmetatable(L, LASYNC_ERROR_MT);
  lua_pushcfunction(L, error_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "lasync.Error");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
