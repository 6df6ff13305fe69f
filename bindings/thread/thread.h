/* What the two files of bindings/thread/ share: the byte buffer values travel in between two
 * lua_States that live on different OS threads, and the copy rules (copy.c).
 *
 * Two states never touch each other: the sender encodes its values into a malloc'd buffer,
 * which crosses the thread boundary, and the receiver decodes it into its own state.
 */
#ifndef LASYNC_THREAD_H
#define LASYNC_THREAD_H

#include <lua.h>
#include <stddef.h>

typedef struct {
  char *data;
  size_t len, cap;
  int oom; /* a malloc failed: the buffer is incomplete */
} lasync__tbuf;

void lasync__tbuf_free(lasync__tbuf *b);

/* Encodes n values from idx into b. `what` names them in refusal messages ("argument",
 * "result"), counting from `first` ("argument #2.conn"). Returns 0, or -1 with a message in
 * err (a value that cannot cross), or -2 when out of C memory. May raise a Lua memory error
 * (it keeps a table of the tables already seen): call it where that is caught. */
int lasync__copy_encode(lua_State *L, int idx, int n, lasync__tbuf *b, const char *what, int first,
                        char *err, size_t errlen);

/* Pushes every value encoded in data[0..len), returns how many. Functions get `env_idx` as
 * their _ENV (0: the globals of L). Raises on a memory error. */
int lasync__copy_decode(lua_State *L, const char *data, size_t len, int env_idx);

/* Whether the function at idx can cross: NULL if so, "" for a C function, else the name of its
 * first upvalue other than _ENV. */
const char *lasync__copy_bad_upvalue(lua_State *L, int idx);

#endif
