/* res:json()'s integers. Debian's lua-cjson (2.1.0) pushes every JSON number as a float, so
 * {"id": 1} decodes to 1.0, math.type "float". core._json_integers(text, value) turns back
 * into integers the floats that are whole numbers, in C: one pass over the text first finds
 * whether it has any number literal written as an integer (outside strings), and when it has
 * none (no numbers, or only 1.5 and 2e3) the decoded value is returned untouched. Otherwise
 * every whole float in a safe range (|v| <= 2^53, where a double is exact) becomes an integer.
 *
 * What cannot be told apart after cjson: a literal written 2.0 in a document that also has
 * integer literals comes back as the integer 2; integers past 2^53 have lost precision in the
 * decoder already and stay floats. */
#include <string.h>

#include "private.h"

#define EXACT (9007199254740992.0) /* 2^53 */

/* Whether the JSON text has a number literal without fraction or exponent. */
static int has_integer_literal(const char *p, size_t n) {
  size_t i = 0;
  while (i < n) {
    char c = p[i];
    if (c == '"') { /* skip the string, its escapes included */
      for (i++; i < n && p[i] != '"'; i++)
        if (p[i] == '\\') i++;
      i++;
    } else if ((c >= '0' && c <= '9') || c == '-') {
      int integer = 1;
      for (i++; i < n; i++) {
        c = p[i];
        if (c == '.' || c == 'e' || c == 'E')
          integer = 0;
        else if (!((c >= '0' && c <= '9') || c == '+' || c == '-'))
          break;
      }
      if (integer) return 1;
    } else {
      i++;
    }
  }
  return 0;
}

/* Converts in place the whole floats of the table at idx and of the tables inside it. depth
 * bounds the C recursion (cjson refuses documents nested over 1000 deep by default). */
static void fix(lua_State *L, int idx, int depth) {
  if (depth > 1100 || !lua_checkstack(L, 4)) return;
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* [key, value] */
    int t = lua_type(L, -1);
    if (t == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number v = lua_tonumber(L, -1);
      if (v >= -EXACT && v <= EXACT && v == (lua_Number)(lua_Integer)v) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)v);
        lua_rawset(L, idx); /* assigning an existing field keeps lua_next valid */
      }
    } else if (t == LUA_TTABLE) {
      fix(L, -1, depth + 1);
    }
    lua_pop(L, 1);
  }
}

/* core._json_integers(text, value) -> value, its whole floats made integers. */
static int l_json_integers(lua_State *L) {
  size_t n;
  const char *text = luaL_checklstring(L, 1, &n);
  lua_settop(L, 2);
  if (!has_integer_literal(text, n)) return 1;
  if (lua_type(L, 2) == LUA_TNUMBER && !lua_isinteger(L, 2)) {
    lua_Number v = lua_tonumber(L, 2);
    if (v >= -EXACT && v <= EXACT && v == (lua_Number)(lua_Integer)v)
      lua_pushinteger(L, (lua_Integer)v);
    return 1;
  }
  if (lua_type(L, 2) == LUA_TTABLE) fix(L, 2, 0);
  return 1;
}

void lasync__open_json(lua_State *L) {
  lua_pushcfunction(L, l_json_integers);
  lua_setfield(L, -2, "_json_integers");
}
