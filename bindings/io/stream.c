/* Byte streams: one object over any uv_stream_t (a TCP connection now; a pipe or a TTY for
 * processes and the REPL), standing on the handle layer.
 *
 * Reading. Bytes arrive in the stream's own buffer and wait there for a reader. Reading is
 * started by the first read call and stopped (uv_read_stop) while the unread bytes exceed a
 * bound, so a peer that sends faster than the task reads cannot grow memory: the kernel's
 * window fills instead. libuv asks for memory before each read; an idle connection must not
 * own 64 KiB for that, so the loop has one shared slab that every read goes through, and only
 * what arrived is copied into the stream's buffer. A stream that already holds a large enough
 * buffer (a busy one) reads straight into it, which saves the copy on bulk transfers. A busy
 * TCP reader the buffer cannot satisfy reads the socket itself before suspending (direct_read),
 * within a budget per loop turn.
 *
 * Writing. s:write() hands all its pieces to one uv_write (after a uv_try_write that usually
 * sends everything at once) and returns; it suspends only while the bytes queued in libuv
 * exceed a high-water mark, until they fall below half of it, and yields to the loop once it
 * has written WRITE_BUDGET bytes in one turn. The strings are kept alive by the write request,
 * so nothing is copied. A call's bytes are queued whole or not at all: a cancelled write has
 * queued them already and they are still sent, so the stream stays consistent (see
 * docs/api.md).
 *
 * Closing. close(), <close> and __gc detach the Lua object at once (later calls see a closed
 * stream) and fail the waiting tasks with kind "closed"; bytes already queued are flushed
 * before the handle is closed, as asyncio's transport.close() does.
 *
 * Nothing here calls Lua from a libuv callback: callbacks fill C state and wake tasks, and the
 * waiting task does the rest when it resumes.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <unistd.h>
#endif

#include "private.h"

#define SLAB_SIZE (64 * 1024)
#define DIRECT_MIN (16 * 1024) /* free room in a stream's buffer worth reading into directly */
/* Unread bytes past which reading stops: asyncio's StreamReader limit. Larger (256 KiB before)
 * spread a bulk reader over more memory than the cache keeps: each read then landed in cold
 * memory (tcp_bulk with read_into: 1.3x C at 256 KiB, 1.05x at 64 KiB). */
#define DEFAULT_READ_MAX (64 * 1024)
#define DEFAULT_WRITE_HWM (256 * 1024)
#define DEFAULT_MAX_LINE (64 * 1024)
#define MAX_PIECES_ON_STACK 16
/* Bytes a reader may take straight from the socket in one loop turn before it must wait for
 * the loop like everyone else: a peer that always has more cannot starve the other tasks. */
#define DIRECT_BUDGET (256 * 1024)
/* Bytes a writer may hand to the kernel in one loop turn before it yields to the loop: a
 * socket that always takes more (a fast peer, or the reader at the other end of a loopback
 * connection in this very process) cannot let one task starve the others. */
#define WRITE_BUDGET (256 * 1024)

#define TASK_OF_WAITER(w) ((lasync__task *)((char *)(w)-offsetof(lasync__task, waiter)))

enum { WANT_ANY, WANT_LINE, WANT_EXACT, WANT_INTO };

/* The loop's read slab: libuv reads into it, the read callback copies out what arrived. One
 * slab serves every stream because libuv (on Unix) calls alloc, read(2) and the read callback
 * back to back for one stream at a time, and the callback never runs Lua. */
typedef struct {
  lasync__service service;
  unsigned turn; /* counts the loop's turns: the direct-read budget is per turn */
  char slab[SLAB_SIZE];
} streams;

#define STREAMS_OF_SLAB(p) ((streams *)((p)-offsetof(streams, slab)))

static void streams_turn(lasync__runtime *rt, lasync__service *s) {
  (void)rt;
  ((streams *)s)->turn++;
}

static void streams_close(lasync__runtime *rt, lasync__service *s) {
  (void)rt;
  free(s);
}

static const lasync__service_ops STREAMS_SERVICE = {"streams", streams_turn, streams_close};

static streams *get_streams(lasync__runtime *rt) {
  streams *st = (streams *)lasync__service_find(rt, &STREAMS_SERVICE);
  if (st == NULL && !rt->closing) {
    st = (streams *)calloc(1, sizeof *st); /* turn starts at 0 (valgrind: it was read unset) */
    if (st == NULL) return NULL;
    lasync__service_add(rt, &st->service, &STREAMS_SERVICE);
#ifdef SIGPIPE
    /* A write to a reset connection must fail with EPIPE, not kill the process; as node and
     * libcurl do, a default disposition is replaced, an embedder's own handler is kept. */
    {
      struct sigaction sa;
      if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
      }
    }
#endif
  }
  return st;
}

/* ---- the unread bytes (io/buffer.c) ---- */

static void in_consume(lasync__stream *s, size_t n) {
  lasync__buffer_consume(&s->in, n);
  s->scanned = 0;
}

/* ---- reading ---- */

/* How many unread bytes the waiting reader needs before it can return: reading must go on
 * past the usual bound to reach them. */
static size_t read_bound(const lasync__stream *s) {
  size_t need = 0;
  if (s->reader && s->want == WANT_EXACT) need = s->want_n;
  if (s->reader && s->want == WANT_LINE) need = s->want_n + 2;
  return need > s->read_max ? need : s->read_max;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  lasync__stream *s = (lasync__stream *)LASYNC__HANDLE_OF(h);
  size_t room;
  char *tail = lasync__buffer_tail(&s->in, &room);
  (void)suggested;
  if (room >= DIRECT_MIN) {
    /* No more than the slab would take: the unread bytes stay within read_max + 64 KiB. */
    buf->base = tail;
    buf->len = room < SLAB_SIZE ? room : SLAB_SIZE;
  } else {
    buf->base = s->slab;
    buf->len = SLAB_SIZE;
  }
}

/* Whether the waiting reader can return now (with data, the end, or an error). */
static int reader_satisfied(lasync__stream *s) {
  if (s->eof || s->rerr) return 1;
  switch (s->want) {
  case WANT_EXACT:
    return s->in.len >= s->want_n;
  case WANT_LINE:
    if (s->in.len > s->scanned &&
        memchr(s->in.data + s->in.start + s->scanned, '\n', s->in.len - s->scanned))
      return 1;
    s->scanned = s->in.len;
    return s->in.len >= s->want_n + 2;
  default:
    return s->in.len > 0;
  }
}

static void update_reading(lasync__stream *s);

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  lasync__stream *s = (lasync__stream *)LASYNC__HANDLE_OF(stream);
  if (nread > 0) {
    /* A read that filled its buffer likely left more in the socket (libuv's own heuristic):
     * the reader may then take it without waiting for the loop (direct_read). */
    s->more = (size_t)nread == buf->len;
    if (buf->base == s->slab) {
      int err = lasync__buffer_append(&s->in, buf->base, (size_t)nread);
      if (err) s->rerr = err; /* the reader fails with ENOMEM; the process goes on */
    } else {
      lasync__buffer_commit(&s->in, (size_t)nread);
    }
  } else if (nread == UV_EOF) {
    s->eof = 1;
  } else if (nread < 0) {
    s->rerr = (int)nread;
  }
  update_reading(s);
  if (s->reader && !s->reader_woken && reader_satisfied(s)) {
    s->reader_woken = 1;
    lasync__wake(s->reader);
  }
}

/* Reading stops at the bound and starts again below half of it, so a stream near its bound
 * does not stop and start (two epoll_ctl calls) for every read; a waiting reader that still
 * lacks bytes has reading started at once. */
static void update_reading(lasync__stream *s) {
  size_t bound = read_bound(s);
  int want = s->started && !s->eof && !s->rerr && !s->h.closing && s->in.len < bound;
  if (want && !s->reading && s->in.len >= bound / 2 && s->reader == NULL) want = 0;
  if (want && !s->reading) {
    int err = uv_read_start(&s->u.stream, on_alloc, on_read);
    if (err)
      s->rerr = err;
    else
      s->reading = 1;
  } else if (!want && s->reading) {
    uv_read_stop(&s->u.stream);
    s->reading = 0;
  }
}

/* ---- the Lua object ---- */

static lasync__stream *check_stream(lua_State *L, const char *fname) {
  return (lasync__stream *)lasync__handle_check(L, 1, LASYNC_STREAM_MT, fname);
}

static int raise_closed(lua_State *L, const char *what) {
  lasync__push_error(L, "closed", what);
  return lua_error(L);
}

/* Misuse of a method's argument: numbered as the caller wrote it (s:read(x): x is #1), as
 * luaL_argerror does for methods. */
static int bad_arg(lua_State *L, int idx, const char *fname, const char *argname,
                   const char *expected) {
  return lasync__misuse(L, "%s: bad argument #%d '%s' (%s expected, got %s)", fname, idx - 1,
                    argname, expected, lua_isnone(L, idx) ? "no value" : lasync__typename(L, idx));
}

/* The stream in the box at index 1 of a resumed call, or NULL if it was closed meanwhile. The
 * box is the call's first argument, still on its stack: the one way to know whether the C
 * struct is still there. */
static lasync__stream *resumed_stream(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  return box ? (lasync__stream *)*box : NULL;
}

static int direct_allowed(lasync__stream *s);
static size_t read_socket(lasync__stream *s, char *dst, size_t room);

/* One attempt to satisfy the read described by s->want: pushes the results and returns how
 * many, raises, or returns -1 when the reader must wait. */
static int try_read(lua_State *L, lasync__stream *s) {
  size_t len, n = s->want_n;
  const char *p = lasync__buffer_peek(&s->in, &len);
  switch (s->want) {
  case WANT_ANY:
    if (len > 0) {
      if (n > len) n = len;
      lua_pushlstring(L, p, n);
      in_consume(s, n);
      update_reading(s);
      return 1;
    }
    break;
  case WANT_INTO: {
    /* The Buffer is the call's argument #1, on its stack across suspensions. Bytes the loop
     * buffered go first; with none, a direct read fills the Buffer without the stream's
     * buffer in between. */
    lasync__bytes *b = (lasync__bytes *)lua_touserdata(L, 2);
    if (len > 0) {
      if (len > n) len = n;
      memcpy(LASYNC__BYTES_DATA(b), p, len);
      in_consume(s, len);
      update_reading(s);
    } else if (direct_allowed(s)) {
      len = read_socket(s, LASYNC__BYTES_DATA(b), n);
    }
    if (len > 0) {
      b->len = len;
      lua_pushinteger(L, (lua_Integer)len);
      return 1;
    }
    break;
  }
  case WANT_EXACT:
    if (len >= n) {
      lua_pushlstring(L, p, n);
      in_consume(s, n);
      update_reading(s);
      return 1;
    }
    if (s->eof && len == 0) break; /* a clean end between messages: nil, as read_line */
    if (s->eof) {
      lasync__push_uv_error(L, "closed", UV_EOF, "the stream ended before the bytes asked for");
      lua_pushlstring(L, p, len);
      lua_setfield(L, -2, "partial");
      lua_pushinteger(L, (lua_Integer)n);
      lua_setfield(L, -2, "expected");
      in_consume(s, len);
      return lua_error(L);
    }
    break;
  case WANT_LINE: {
    /* A line of n bytes may end in CRLF: n + 2 bytes are enough to find its end. */
    const char *nl = len ? (const char *)memchr(p, '\n', len > n + 2 ? n + 2 : len) : NULL;
    size_t linelen = nl ? (size_t)(nl - p) : 0, text = linelen;
    if (nl && linelen > 0 && nl[-1] == '\r') text--;
    if (nl && text <= n) {
      lua_pushlstring(L, p, text);
      in_consume(s, linelen + 1);
      update_reading(s);
      return 1;
    }
    if (nl || len >= n + 2) {
      lua_pushfstring(L, "stream:read_line: a line is longer than %I bytes",
                      (lua_Integer)n);
      lasync__push_error(L, "line_too_long", lua_tostring(L, -1));
      lua_pushinteger(L, (lua_Integer)n);
      lua_setfield(L, -2, "max");
      return lua_error(L); /* the bytes stay unread: read(n) can still take them */
    }
    if (s->eof && len > 0) { /* a last line without a newline */
      lua_pushlstring(L, p, len);
      in_consume(s, len);
      return 1;
    }
    break;
  }
  }
  if (s->rerr) {
    lasync__push_uv_error(L, "closed", s->rerr, "reading");
    return lua_error(L);
  }
  if (s->eof) {
    lua_pushnil(L);
    return 1;
  }
  return -1;
}

static void read_cancel(lasync__task *t, void *data) {
  lasync__stream *s = (lasync__stream *)data;
  (void)t;
  s->reader = NULL; /* the bytes it waited for stay buffered for the next reader */
  update_reading(s);
}

static int read_finish(lua_State *L, lasync__task *t, void *data);

static void read_abandon(lua_State *L, lasync__task *t, void *data) {
  lasync__stream *s = resumed_stream(L);
  (void)data;
  if (s && s->reader == t) s->reader = NULL;
}

static const lasync__awaitable_ops READ_OPS = {"stream.read", read_cancel, read_finish,
                                               read_abandon};

/* The bytes a waiting reader lacks, read by the reader itself with read(2) when the last read
 * suggests the socket holds more: on a busy connection a task goes on reading without a trip
 * through the loop (a suspension, a wakeup, uv_read_stop/start), and the socket is drained as
 * fast as the task consumes, so its queue stays short and in cache. Only TCP: libuv makes every
 * TCP socket non-blocking, and nothing else reads its descriptor. Whether the reader may: */
static int direct_allowed(lasync__stream *s) {
#ifdef _WIN32
  (void)s;
  return 0;
#else
  streams *st = STREAMS_OF_SLAB(s->slab);
  if (!s->more || s->kind != LASYNC__STREAM_TCP || s->eof || s->rerr || s->h.closing) return 0;
  if (s->direct_turn != st->turn) {
    s->direct_turn = st->turn;
    s->direct_bytes = 0;
  }
  if (s->direct_bytes >= DIRECT_BUDGET) return 0; /* wait for the next turn */
  return s->in.len < read_bound(s);
#endif
}

/* One such read(2) into dst: the bytes read, or 0 when none came (the end or an error is then
 * recorded in s, a socket with nothing more clears the hint). */
static size_t read_socket(lasync__stream *s, char *dst, size_t room) {
#ifdef _WIN32
  (void)s;
  (void)dst;
  (void)room;
  return 0;
#else
  uv_os_fd_t fd;
  ssize_t n;
  if (uv_fileno(&s->u.handle, &fd) != 0) return 0;
  do n = read(fd, dst, room);
  while (n < 0 && errno == EINTR);
  if (n > 0) {
    s->direct_bytes += (size_t)n;
    s->more = (size_t)n == room;
    return (size_t)n;
  }
  s->more = 0;
  if (n == 0) {
    s->eof = 1;
  } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
    s->rerr = uv_translate_sys_error(errno);
  }
  if (s->eof || s->rerr) update_reading(s);
  return 0;
#endif
}

/* The direct read into the stream's own buffer, behind what the loop read, so the order holds;
 * only while the buffer is empty or short of the reader's need. Returns 1 if bytes, the end or
 * an error arrived. */
static int direct_read(lasync__stream *s) {
  size_t room;
  char *tail;
  if (!direct_allowed(s)) return 0;
  if (lasync__buffer_reserve(&s->in, SLAB_SIZE) != 0) return 0; /* the loop's read will tell */
  tail = lasync__buffer_tail(&s->in, &room);
  if (room > SLAB_SIZE) room = SLAB_SIZE;
  room = read_socket(s, tail, room);
  lasync__buffer_commit(&s->in, room);
  return room > 0 || s->eof || s->rerr;
}

static int wait_read(lua_State *L, lasync__task *t, lasync__stream *s) {
  int n = try_read(L, s);
  while (n < 0 && direct_read(s)) n = try_read(L, s);
  if (n >= 0) return n;
  s->reader = t;
  s->reader_woken = 0;
  s->started = 1;
  update_reading(s);
  if (s->rerr) { /* reading could not start */
    s->reader = NULL;
    return try_read(L, s);
  }
  return lasync__suspend(L, t, &READ_OPS, s);
}

static int read_finish(lua_State *L, lasync__task *t, void *data) {
  lasync__stream *s = resumed_stream(L);
  (void)data;
  if (s == NULL) return raise_closed(L, "the stream was closed while a task was reading it");
  s->reader = NULL;
  return wait_read(L, t, s);
}

static lasync__stream *begin_read(lua_State *L, const char *fname, lasync__task **t) {
  lasync__stream *s;
  *t = lasync__check_task(L, fname);
  s = check_stream(L, fname);
  if (s->reader)
    lasync__misuse(L, "%s: another task is already reading this stream (one reader at a time)",
               fname);
  return s;
}

static size_t opt_size(lua_State *L, int arg, const char *fname, const char *argname,
                       size_t def) {
  lua_Integer n;
  if (lua_isnoneornil(L, arg)) return def;
  if (!lua_isinteger(L, arg)) bad_arg(L, arg, fname, argname, "integer");
  n = lua_tointeger(L, arg);
  if (n <= 0) lasync__misuse(L, "%s: bad argument #%d '%s' (must be > 0)", fname, arg - 1, argname);
  return (size_t)n;
}

/* s:read([n]) -> up to n bytes (all buffered if n is absent), or nil at the end. */
static int stream_read(lua_State *L) {
  lasync__task *t;
  lasync__stream *s = begin_read(L, "stream:read", &t);
  size_t n = opt_size(L, 2, "stream:read", "n", SIZE_MAX);
  lua_settop(L, 1);
  s->want = WANT_ANY;
  s->want_n = n;
  return wait_read(L, t, s);
}

/* s:read_into(buf) -> how many bytes it put at the start of the Buffer (at least one, at most
 * its capacity), or nil at the end; the Buffer is left as it was unless bytes came. */
static int stream_read_into(lua_State *L) {
  lasync__task *t;
  lasync__stream *s = begin_read(L, "stream:read_into", &t);
  lasync__bytes *b = lasync__bytes_test(L, 2);
  if (b == NULL) return bad_arg(L, 2, "stream:read_into", "buf", LASYNC_BYTES_MT);
  lua_settop(L, 2);
  s->want = WANT_INTO;
  s->want_n = b->cap;
  return wait_read(L, t, s);
}

/* s:read_exactly(n) -> n bytes; nil if the stream ends before the first of them; raises kind
 * "closed", code "EOF" (with the bytes as err.partial) if it ends in the middle. */
static int stream_read_exactly(lua_State *L) {
  lasync__task *t;
  lasync__stream *s = begin_read(L, "stream:read_exactly", &t);
  size_t n;
  if (lua_isnoneornil(L, 2)) bad_arg(L, 2, "stream:read_exactly", "n", "integer");
  n = opt_size(L, 2, "stream:read_exactly", "n", 0);
  lua_settop(L, 1);
  s->want = WANT_EXACT;
  s->want_n = n;
  return wait_read(L, t, s);
}

/* s:read_line([max]) -> the next line without its LF or CRLF; the last line may lack one;
 * nil at the end. */
static int stream_read_line(lua_State *L) {
  lasync__task *t;
  lasync__stream *s = begin_read(L, "stream:read_line", &t);
  size_t max = opt_size(L, 2, "stream:read_line", "max", s->max_line);
  lua_settop(L, 1);
  s->want = WANT_LINE;
  s->want_n = max;
  return wait_read(L, t, s);
}

/* for line in s:lines([max]) do ... end */
static int lines_iter(lua_State *L) {
  lasync__task *t;
  lasync__stream *s = begin_read(L, "stream:lines", &t);
  lua_settop(L, 1);
  s->want = WANT_LINE;
  s->want_n = (size_t)lua_tointeger(L, lua_upvalueindex(1));
  return wait_read(L, t, s);
}

static int stream_lines(lua_State *L) {
  lasync__stream *s = check_stream(L, "stream:lines");
  size_t max = opt_size(L, 2, "stream:lines", "max", s->max_line);
  lua_pushinteger(L, (lua_Integer)max);
  lua_pushcclosure(L, lines_iter, 1);
  lua_pushvalue(L, 1);
  return 2;
}

/* ---- writing ---- */

typedef struct {
  lasync__req r;
  lasync__stream *s;
  uv_write_t w;
} write_req;

static void wake_writers(lasync__stream *s) {
  while (s->writers.head) {
    lasync__waiter *w = s->writers.head;
    lasync__waitlist_remove(&s->writers, w);
    lasync__wake(TASK_OF_WAITER(w));
  }
}

static void on_write(uv_write_t *w, int status) {
  write_req *wr = (write_req *)((char *)w - offsetof(write_req, w));
  lasync__stream *s = wr->s;
  s->pending_writes--;
  if (status < 0 && status != UV_ECANCELED && s->werr == 0) s->werr = status;
  lasync__req_done(&wr->r); /* nobody waits on it: it only unpins the strings */
  if (s->lingering) {
    if (s->pending_writes == 0) lasync__handle_close(&s->h);
  } else if (s->werr || uv_stream_get_write_queue_size(&s->u.stream) <= s->write_hwm / 2) {
    wake_writers(s);
  }
}

static int write_push(lua_State *L, lasync__req *r) {
  (void)L;
  (void)r;
  return 0;
}

static const lasync__req_ops WRITE_REQ = {"stream.write", write_push, NULL, NULL, NULL};

static void drain_cancel(lasync__task *t, void *data) {
  lasync__waitlist_remove(&((lasync__stream *)data)->writers, &t->waiter);
}

static int drain_finish(lua_State *L, lasync__task *t, void *data) {
  lasync__stream *s = resumed_stream(L);
  (void)t;
  (void)data;
  if (s == NULL) return raise_closed(L, "the stream was closed while a task was writing to it");
  if (s->werr) {
    lasync__push_uv_error(L, "closed", s->werr, "writing");
    return lua_error(L);
  }
  return 0;
}

static const lasync__awaitable_ops DRAIN_OPS = {"stream.write", drain_cancel, drain_finish, NULL};


static const lasync__awaitable_ops WRITE_YIELD_OPS = {"stream.write", NULL, NULL, NULL};

/* The end of a write that did not have to wait for the queue to drain: its bytes count
 * against the turn's budget, and once that is spent the writer yields to the loop (as
 * sleep(0)), so the tasks that wait for I/O, the reader of this data among them, get their
 * turn. The bytes are queued already: a cancellation here loses nothing. */
static int write_return(lua_State *L, lasync__task *t, lasync__stream *s, size_t n) {
  streams *st = STREAMS_OF_SLAB(s->slab);
  if (s->write_turn != st->turn) {
    s->write_turn = st->turn;
    s->write_bytes = 0;
  }
  s->write_bytes += n;
  if (s->write_bytes < WRITE_BUDGET) return 0;
  lasync__enqueue(t, LASYNC__WAKE_VALUE); /* behind every task that is ready now */
  return lasync__suspend(L, t, &WRITE_YIELD_OPS, NULL);
}

/* Adds the string at idx (or, for a table, its array of strings) to bufs; returns the count,
 * or -1 when bufs is NULL and only counting. */
static int add_pieces(lua_State *L, int idx, uv_buf_t *bufs, int nb, size_t *total) {
  size_t len;
  const char *p;
  if (lua_type(L, idx) == LUA_TSTRING) {
    p = lua_tolstring(L, idx, &len);
    if (len > UINT_MAX) /* a uv_buf_t's length is 32 bits */
      lasync__misuse(L, "stream:write: bad argument #%d 'data' (a string over 4 GiB)", idx - 1);
    if (bufs) bufs[nb] = uv_buf_init((char *)p, (unsigned int)len);
    *total += len;
    return nb + 1;
  }
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_Integer i, n = (lua_Integer)lua_rawlen(L, idx);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      if (lua_type(L, -1) != LUA_TSTRING)
        lasync__misuse(L, "stream:write: bad argument #%d 'data' (item %I is a %s, string expected)",
                   idx - 1, i, luaL_typename(L, -1));
      p = lua_tolstring(L, -1, &len);
      if (len > UINT_MAX)
        lasync__misuse(L, "stream:write: bad argument #%d 'data' (item %I is over 4 GiB)", idx - 1, i);
      if (bufs) bufs[nb] = uv_buf_init((char *)p, (unsigned int)len);
      *total += len;
      nb++;
      lua_pop(L, 1); /* the table keeps the string alive */
    }
    return nb;
  }
  return bad_arg(L, idx, "stream:write", "data", "string or array of strings");
}

/* s:write(data, ...): each data is a string or an array of strings; all are written in order,
 * in one uv_write. Suspends while more than the high-water mark is queued. */
static int stream_write(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "stream:write");
  lasync__stream *s = check_stream(L, "stream:write");
  int top = lua_gettop(L), i, nb = 0, first = 0;
  size_t total = 0, done;
  uv_buf_t stack_bufs[MAX_PIECES_ON_STACK], *bufs = stack_bufs;
  write_req *wr;
  for (i = 2; i <= top; i++) nb = add_pieces(L, i, NULL, nb, &total); /* checks them all */
  if (s->werr) {
    lasync__push_uv_error(L, "closed", s->werr, "writing");
    return lua_error(L);
  }
  if (s->shut) return raise_closed(L, "stream:write: the stream was shut down for writing");
  if (total == 0) return 0;
  if (nb > MAX_PIECES_ON_STACK) bufs = (uv_buf_t *)lua_newuserdatauv(L, nb * sizeof *bufs, 0);
  nb = 0;
  total = 0;
  for (i = 2; i <= top; i++) nb = add_pieces(L, i, bufs, nb, &total);
  done = 0;
  if (s->pending_writes == 0) {
    int n = uv_try_write(&s->u.stream, bufs, (unsigned int)nb);
    if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS) {
      s->werr = n;
      lasync__push_uv_error(L, "closed", n, "writing");
      return lua_error(L);
    }
    if (n > 0) done = (size_t)n;
    if (done == total) return write_return(L, t, s, total);
    while (done >= bufs[first].len) done -= bufs[first++].len; /* skip what was sent */
    bufs[first].base += done;
    bufs[first].len -= (unsigned int)done;
  }
  /* The request pins a table of the arguments, which keeps every string alive until libuv
   * has written it. */
  lua_createtable(L, top - 1, 0);
  for (i = 2; i <= top; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i - 1);
  }
  wr = (write_req *)lasync__req_new_uv(L, &WRITE_REQ, sizeof *wr, offsetof(write_req, w), 1);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, 1);
  wr->s = s;
  {
    int err = uv_write(&wr->w, &s->u.stream, bufs + first, (unsigned int)(nb - first), on_write);
    if (err) {
      lasync__req_abort(&wr->r);
      s->werr = err;
      lasync__push_uv_error(L, "closed", err, "writing");
      return lua_error(L);
    }
  }
  s->pending_writes++;
  if (uv_stream_get_write_queue_size(&s->u.stream) <= s->write_hwm)
    return write_return(L, t, s, total);
  lua_settop(L, 1);
  lasync__waitlist_add_task(&s->writers, t);
  return lasync__suspend(L, t, &DRAIN_OPS, s);
}

/* ---- half-close ---- */

typedef struct {
  lasync__req r;
  int status;
  uv_shutdown_t sh;
} shutdown_req;

static void on_shutdown(uv_shutdown_t *sh, int status) {
  shutdown_req *sr = (shutdown_req *)((char *)sh - offsetof(shutdown_req, sh));
  sr->status = status;
  lasync__req_done(&sr->r);
}

static int shutdown_push(lua_State *L, lasync__req *r) {
  shutdown_req *sr = (shutdown_req *)r;
  if (sr->status < 0 && sr->status != UV_ECANCELED) {
    lasync__push_uv_error(L, "closed", sr->status, "shutting down");
    return -1;
  }
  return 0;
}

static void shutdown_cancel(lasync__req *r) {
  (void)r; /* a shutdown cannot be taken back; its callback comes once the writes are done */
}

static const lasync__req_ops SHUTDOWN_REQ = {"stream.shutdown", shutdown_push, NULL, NULL,
                                             shutdown_cancel};

/* s:shutdown(): no more writes; waits until the queued bytes are sent and the peer is told
 * (it reads the end of the stream). Reading goes on. */
static int stream_shutdown(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "stream:shutdown");
  lasync__stream *s = check_stream(L, "stream:shutdown");
  shutdown_req *sr;
  int err;
  if (s->shut) return 0;
  sr = (shutdown_req *)lasync__req_new(L, &SHUTDOWN_REQ, sizeof *sr, offsetof(shutdown_req, sh));
  err = uv_shutdown(&sr->sh, &s->u.stream, on_shutdown);
  if (err) {
    lasync__req_abort(&sr->r);
    lasync__push_uv_error(L, "closed", err, "shutting down");
    return lua_error(L);
  }
  s->shut = 1;
  return lasync__req_await(L, t, &sr->r);
}

/* ---- closing ---- */

/* Every waiting task wakes and finds the stream closed (its box is empty by now). */
static void fail_waiters(lasync__stream *s) {
  if (s->reader) {
    lasync__task *t = s->reader;
    s->reader = NULL;
    if (!s->reader_woken) lasync__wake(t);
  }
  wake_writers(s);
}

static void on_handle_close(lasync__handle *h) { fail_waiters((lasync__stream *)h); }

static void on_handle_free(lasync__handle *h) {
  lasync__stream *s = (lasync__stream *)h;
  lasync__buffer_free(&s->in);
}

void lasync__stream_close(lasync__stream *s) {
  if (s->h.closing || s->lingering) return;
  if (s->pending_writes == 0 || s->h.rt->closing) {
    lasync__handle_close(&s->h);
    return;
  }
  /* Flush first: the Lua object is closed now, the handle once the last write is done. */
  s->lingering = 1;
  if (s->h.owner) {
    *(lasync__handle **)s->h.owner = NULL;
    s->h.owner = NULL;
  }
  if (s->reading) {
    uv_read_stop(&s->u.stream);
    s->reading = 0;
  }
  fail_waiters(s);
}

static int stream_close(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, LASYNC_STREAM_MT);
  if (box == NULL) return lasync__argerror(L, 1, "stream:close", "self", LASYNC_STREAM_MT);
  if (*box) lasync__stream_close((lasync__stream *)*box);
  return 0;
}

static int stream_gc(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  if (*box) lasync__stream_close((lasync__stream *)*box);
  return 0;
}

static int stream_closed(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, LASYNC_STREAM_MT);
  if (box == NULL) return lasync__argerror(L, 1, "stream:closed", "self", LASYNC_STREAM_MT);
  lua_pushboolean(L, *box == NULL);
  return 1;
}

/* s:stats() -> {buffered = unread bytes, queued = bytes waiting in libuv, reading = bool}:
 * what the specs check to prove memory stays bounded. */
static int stream_stats(lua_State *L) {
  lasync__stream *s = check_stream(L, "stream:stats");
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)s->in.len);
  lua_setfield(L, -2, "buffered");
  lua_pushinteger(L, (lua_Integer)s->in.cap);
  lua_setfield(L, -2, "capacity");
  lua_pushinteger(L, (lua_Integer)uv_stream_get_write_queue_size(&s->u.stream));
  lua_setfield(L, -2, "queued");
  lua_pushboolean(L, s->reading);
  lua_setfield(L, -2, "reading");
  lua_pushinteger(L, (lua_Integer)s->read_max);
  lua_setfield(L, -2, "read_max");
  return 1;
}

/* s:set_limits{read_max =, write_hwm =, max_line =}: the bounds of this stream. */
static int stream_set_limits(lua_State *L) {
  static const char *const names[] = {"read_max", "write_hwm", "max_line", NULL};
  lasync__stream *s = check_stream(L, "stream:set_limits");
  size_t v[3];
  int i;
  if (!lua_istable(L, 2)) return bad_arg(L, 2, "stream:set_limits", "limits", "table");
  lasync__check_options(L, 2, "stream:set_limits", names); /* a misspelt limit is no limit */
  for (i = 0; i < 3; i++) {
    lua_getfield(L, 2, names[i]);
    if (lua_isnil(L, -1)) {
      v[i] = 0;
    } else if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) <= 0) {
      return lasync__opterror(L, -1, "stream:set_limits", names[i], "integer > 0");
    } else {
      v[i] = (size_t)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
  }
  if (v[0]) s->read_max = v[0];
  if (v[1]) s->write_hwm = v[1];
  if (v[2]) s->max_line = v[2];
  update_reading(s);
  return 0;
}

static int stream_tostring(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  lua_pushfstring(L, "lasync.Stream (%s)", *box ? "open" : "closed");
  return 1;
}

/* Methods first, then the fields a binding stored in the box's user value (conn.remote). */
static int stream_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) return 0;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static void push_metatable(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"read", stream_read},         {"read_line", stream_read_line},
    {"read_exactly", stream_read_exactly}, {"lines", stream_lines},
    {"read_into", stream_read_into},
    {"write", stream_write},       {"shutdown", stream_shutdown},
    {"close", stream_close},       {"closed", stream_closed},
    {"stats", stream_stats},       {"set_limits", stream_set_limits},
    {NULL, NULL}};
  if (luaL_newmetatable(L, LASYNC_STREAM_MT)) {
    luaL_newlib(L, methods);
    /* __index is a function (fields follow the methods): the methods are listed apart too. */
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__methods");
    lua_pushcclosure(L, stream_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, stream_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, stream_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, stream_tostring);
    lua_setfield(L, -2, "__tostring");
  }
}

/* ---- the C interface (private.h) ---- */

lasync__handle **lasync__stream_pushbox(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_newuserdatauv(L, sizeof *box, 1);
  *box = NULL;
  push_metatable(L);
  lua_setmetatable(L, -2);
  return box;
}

lasync__stream *lasync__stream_alloc(lasync__runtime *rt, int kind) {
  streams *st = get_streams(rt);
  lasync__stream *s;
  if (st == NULL) return NULL;
  s = (lasync__stream *)lasync__handle_new(rt, sizeof *s);
  if (s == NULL) return NULL;
  s->kind = kind;
  s->slab = st->slab;
  s->read_max = DEFAULT_READ_MAX;
  s->write_hwm = DEFAULT_WRITE_HWM;
  s->max_line = DEFAULT_MAX_LINE;
  s->h.on_close = on_handle_close;
  s->h.on_free = on_handle_free;
  return s;
}

void lasync__stream_attach(lasync__handle **box, lasync__stream *s) {
  *box = &s->h;
  s->h.owner = box;
}

lasync__stream *lasync__stream_new(lua_State *L, int kind) {
  lasync__handle **box = lasync__stream_pushbox(L);
  lasync__stream *s = lasync__stream_alloc(lasync__runtime_get(L), kind);
  if (s == NULL) {
    lasync__push_error(L, "nomem", "not enough memory for a stream");
    lua_error(L);
  }
  lasync__stream_attach(box, s);
  return s;
}

void lasync__stream_init(lasync__stream *s) { lasync__handle_init(&s->h, &s->u.handle); }

lasync__stream *lasync__stream_check(lua_State *L, int idx, const char *fname) {
  return (lasync__stream *)lasync__handle_check(L, idx, LASYNC_STREAM_MT, fname);
}
