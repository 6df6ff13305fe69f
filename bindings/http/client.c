/* async.fetch's transfers: the easy handles, their callbacks, streamed responses and request
 * bodies made by a Lua function. The multi handle and its libuv plumbing are in curl_multi.c,
 * which calls back through on_wake only.
 *
 * Options are checked and normalised in lua/http/options.lua; this file only turns the
 * normalised table into easy-handle options and a finished transfer into a raw response table.
 *
 * Streaming (opts.stream) and request bodies made by a Lua function (opts.body_fn) need tasks
 * woken in the middle of a transfer: the curl callbacks only buffer and notify the transfer,
 * and on_wake wakes the waiting tasks once curl has returned. Backpressure uses curl's own
 * pause: the write callback returns CURL_WRITEFUNC_PAUSE when the unread data passes the
 * bound, the read callback CURL_READFUNC_PAUSE when no chunk is buffered, and the Lua calls
 * that drain or fill the buffers unpause with lasync__curl_pause.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "curl_load.h"
#include "curl_multi.h"

#define XFER_MT "lasync.Transfer"
#define MAX_HEADER_BYTES (1024 * 1024) /* all the header lines of one response */
#define DEFAULT_STREAM_BUFFER (1024 * 1024)
#define DEFAULT_MAX_BODY (64 * 1024 * 1024)
#define NO_BODY_LIMIT LUA_MAXINTEGER /* max_body = math.huge; curl_off_t is 64 bits, as is it */

typedef struct xfer xfer;

/* One transfer: a userdata left on the stack of the suspended fetch call, so the GC owns it;
 * a streamed response holds it afterwards. Its one user value keeps the error raised by a
 * request-body function. */
struct xfer {
  lasync__curl_xfer c; /* first: the multi's part (c.easy, c.done, c.result) */
  struct curl_slist *headers;
  /* The task suspended in fetch or in res:read, and the body feeder suspended in
   * core._send_wait. Set only while suspended: cleared when woken or cancelled. */
  lasync__task *task;
  lasync__task *feeder;
  lasync__buffer body; /* received and not read yet */
  lasync__buffer head; /* the header block of the response coming in, MAX_HEADER_BYTES at most */
  lasync__buffer send; /* request body chunks from the Lua function, not yet taken by curl */
  curl_off_t max_body;
  curl_off_t received;    /* body bytes accepted, for max_body on streams */
  size_t stream_buffer;   /* unread bytes past which the transfer is paused */
  int status;             /* of the response whose headers are coming in */
  unsigned too_large : 1; /* the body (or the headers) outgrew their limit */
  unsigned no_memory : 1;
  unsigned follow : 1;       /* follow_redirects */
  unsigned has_location : 1; /* the response coming in has a Location header */
  unsigned stream : 1;       /* fetch returns at the headers, res:read() takes the body */
  unsigned headers_done : 1; /* the final response's headers are in */
  unsigned aborted : 1;      /* taken out before curl finished it */
  unsigned closed : 1;       /* res:close() */
  unsigned lua_failed : 1;   /* the body function raised; its error is the user value */
  unsigned recv_paused : 1;  /* the write callback returned CURL_WRITEFUNC_PAUSE */
  unsigned send_paused : 1;  /* the read callback returned CURL_READFUNC_PAUSE */
  unsigned send_eof : 1;     /* the body function returned nil */
  unsigned reading : 1;      /* x->task is in res:read(), not in fetch */
  unsigned plain : 1;        /* a fetch without options: its easy handle is kept set up */
  char errbuf[CURL_ERROR_SIZE];
};

/* ---- transfers ---- */

/* Frees everything but the userdata itself; __gc and a finished fetch share it. A finished
 * fetch passes its (live) multi, to which the easy handle returns for reuse; __gc passes NULL,
 * since at lua_close the multi has gone. */
static void release_to(xfer *x, lasync__curl *pool) {
  if (x->c.easy) lasync__curl_detach(&x->c);
  /* A plain fetch that went well leaves its handle set up for the next plain one. */
  if (x->plain && x->c.result == CURLE_OK && !x->aborted && !x->too_large && !x->no_memory)
    lasync__curl_easy_keep(pool, x->c.easy);
  else
    lasync__curl_easy_release(pool, x->c.easy);
  x->c.easy = NULL;
  curl_slist_free_all(x->headers);
  x->headers = NULL;
  lasync__buffer_free(&x->body);
  lasync__buffer_free(&x->head);
  lasync__buffer_free(&x->send);
}
static void release(xfer *x) { release_to(x, NULL); }

static int xfer_gc(lua_State *L) {
  release((xfer *)lua_touserdata(L, 1));
  return 0;
}

/* Wakes the tasks waiting on the transfer whose wait is over; each re-checks when it runs. */
static void wake_waiters(xfer *x) {
  lasync__task *t = x->task;
  int ready = x->c.done || (x->reading ? x->body.len > 0 : x->stream && x->headers_done);
  if (t && ready) {
    x->task = NULL;
    lasync__wake(t);
  }
  t = x->feeder;
  if (t && (x->c.done || x->send.len == 0)) {
    x->feeder = NULL;
    lasync__wake(t);
  }
}

/* Ends the transfer before curl has: a cancelled fetch or read, res:close(), a failed body
 * function. Must not be called from inside a curl callback. */
static void abort_xfer(xfer *x) {
  if (!x->c.done) {
    /* What it buffered is an incomplete body nobody will read: res:read raises from now on,
     * and whether a read after a cancel raised would otherwise depend on whether a chunk had
     * landed before it (spec/fetch_stream_spec.lua, "after a chunk woke it"). */
    x->aborted = 1;
    lasync__buffer_free(&x->body);
  }
  lasync__curl_detach(&x->c);
  x->c.done = 1;
  wake_waiters(x);
}

/* Sets the transfer's pause state from its two flags; curl may call the write and read
 * callbacks at once, which only buffer, and on_wake follows. Called from Lua calls, never from
 * inside a curl callback. */
static void update_pause(xfer *x) {
  lasync__curl_pause(&x->c,
                     (x->recv_paused ? CURLPAUSE_RECV : 0) | (x->send_paused ? CURLPAUSE_SEND : 0));
}

/* The multi's one callback: the transfer finished, or a curl callback notified it. */
static void on_wake(lasync__curl_xfer *c) { wake_waiters((xfer *)c); }

static const lasync__curl_ops CURL_OPS = {on_wake};

/* ---- the easy handle's callbacks (curl calls them; they only touch C buffers) ---- */

/* The final response's headers are in: a streaming fetch can return. */
static void headers_in(xfer *x) {
  x->headers_done = 1;
  if (x->task) lasync__curl_notify(&x->c);
}

static size_t cb_write(char *p, size_t size, size_t n, void *userp) {
  xfer *x = (xfer *)userp;
  n *= size;
  if (x->stream) {
    /* Bodies of redirects and interim responses never reach this callback. */
    if (!x->headers_done) headers_in(x);
    /* The reader is behind: curl keeps this chunk and delivers it again once unpaused. */
    if (x->body.len >= x->stream_buffer) {
      x->recv_paused = 1;
      return CURL_WRITEFUNC_PAUSE;
    }
  }
  /* The callback sees decoded data, so this also bounds what a compressed body expands to. */
  if (x->received + (curl_off_t)n > x->max_body) {
    x->too_large = 1;
    return 0;
  }
  if (lasync__buffer_append(&x->body, p, n) != 0) {
    x->no_memory = 1;
    return 0;
  }
  x->received += (curl_off_t)n;
  if (x->task && x->headers_done) lasync__curl_notify(&x->c);
  return n;
}

/* The status code of a status line ("HTTP/1.1 200 OK", "HTTP/2 301"), or 0. */
static int status_of(const char *p, size_t n) {
  const char *end = p + n, *sp = memchr(p, ' ', n);
  int code = 0, i;
  if (sp == NULL || end - sp < 4) return 0;
  for (i = 1; i <= 3; i++) {
    if (sp[i] < '0' || sp[i] > '9') return 0;
    code = code * 10 + (sp[i] - '0');
  }
  return code;
}

static size_t cb_header(char *p, size_t size, size_t n, void *userp) {
  xfer *x = (xfer *)userp;
  n *= size;
  /* A status line starts a new response (a redirect, a 100 Continue): forget the last one's
   * headers. */
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    lasync__buffer_consume(&x->head, x->head.len);
    x->status = status_of(p, n);
    x->has_location = 0;
  } else if (n >= 9 && strncasecmp(p, "location:", 9) == 0) {
    x->has_location = 1;
  } else if (x->stream && !x->headers_done && (n == 2 || n == 1) && p[n - 1] == '\n') {
    /* The blank line after the headers. Interim responses (1xx) and redirects that curl is
     * about to follow are not the final response. */
    int redirect =
        x->follow && x->has_location && x->status >= 300 && x->status <= 399 && x->status != 304;
    if (x->status >= 200 && !redirect) headers_in(x);
  }
  switch (lasync__buffer_append(&x->head, p, n)) {
    case 0:
      break;
    case UV_ENOBUFS:
      x->too_large = 1;
      return 0;
    default:
      x->no_memory = 1;
      return 0;
  }
  return n;
}

/* Hands curl the next piece of the request body that the feeder task buffered; pauses the
 * upload when there is none yet, until core._send resumes it. */
static size_t cb_read(char *p, size_t size, size_t n, void *userp) {
  xfer *x = (xfer *)userp;
  size_t avail;
  const char *chunk = lasync__buffer_peek(&x->send, &avail);
  n *= size;
  if (avail > 0) {
    if (n > avail) n = avail;
    memcpy(p, chunk, n);
    lasync__buffer_consume(&x->send, n);
    if (x->send.len == 0 && x->feeder) lasync__curl_notify(&x->c);
    return n;
  }
  if (x->send_eof) return 0;
  x->send_paused = 1;
  return CURL_READFUNC_PAUSE;
}

/* ---- errors ---- */

static const char *error_kind(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return "dns";
    case CURLE_COULDNT_CONNECT:
      return "connect";
    case CURLE_OPERATION_TIMEDOUT:
      return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
      return "tls";
    case CURLE_FILESIZE_EXCEEDED:
      return "too_large";
    case CURLE_BAD_FUNCTION_ARGUMENT:
      return "invalid";
    /* The caller's URL was checked before any I/O (lua/http/options.lua), so a malformed one here
     * came from the server: a bad Location. Falls through to "protocol". */
    default:
      /* Unsupported protocol, too many redirects, weird reply, partial file, receive
       * errors, bad content encoding, HTTP/2 framing...: the server's answer was unusable. */
      return "protocol";
  }
}

/* Raises the error object of a failed transfer. */
static int raise_transfer_error(lua_State *L, xfer *x, const char *url) {
  const char *kind = x->too_large ? "too_large" : error_kind(x->c.result);
  const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->c.result);
  if (x->no_memory) return lasync__misuse(L, "async.fetch: not enough memory for the response");
  if (x->too_large) detail = "the response exceeds max_body";
  lua_pushfstring(L, "async.fetch %s: %s", url, detail);
  lasync__push_error(L, kind, lua_tostring(L, -1));
  lua_pushstring(L, url);
  lua_setfield(L, -2, "url");
  lua_pushinteger(L, (lua_Integer)x->c.result);
  lua_setfield(L, -2, "curl_code");
  return lua_error(L);
}

/* ---- building the raw response ---- */

/* Stores curl's counter as raw[i], seconds: lua/http/client.lua makes `timings` of them when read.
 */
static void set_seconds(lua_State *L, CURL *easy, CURLINFO info, int i) {
  curl_off_t us = 0;
  curl_easy_getinfo(easy, info, &us);
  lua_pushnumber(L, (lua_Number)us / 1e6);
  lua_rawseti(L, -2, i);
}

static const char *version_name(long v) {
  switch (v) {
    case CURL_HTTP_VERSION_1_0:
      return "1.0";
    case CURL_HTTP_VERSION_1_1:
      return "1.1";
    case CURL_HTTP_VERSION_2_0:
      return "2";
    case CURL_HTTP_VERSION_3:
      return "3";
    default:
      return "unknown";
  }
}

static int fetch_step(lua_State *L, lasync__task *t, xfer *x);

static int fetch_finish(lua_State *L, lasync__task *t, void *data) {
  return fetch_step(L, t, (xfer *)data);
}

/* The task was cancelled while its transfer ran: take it out of the multi, so nothing calls
 * back later. The scheduler calls this outside curl callbacks. */
static void fetch_cancel(lasync__task *t, void *data) {
  xfer *x = (xfer *)data;
  (void)t;
  x->task = NULL;
  abort_xfer(x);
}

/* Woken (the headers of a streamed response are in) but cancelled before it ran: nobody will
 * take the response, so the transfer ends here rather than when the collector finds it. */
static void fetch_abandon(lua_State *L, lasync__task *t, void *data) {
  (void)L, (void)t;
  abort_xfer((xfer *)data);
}

static const lasync__awaitable_ops FETCH_OPS = {"fetch", fetch_cancel, fetch_finish, fetch_abandon};

/* Raises the error a body function raised (the transfer's user value). x is at xi. */
static int raise_body_error(lua_State *L, int xi) {
  lua_getiuservalue(L, xi, 1);
  return lua_error(L);
}

static int raise_aborted(lua_State *L, const char *fname) {
  lasync__push_error(L, "cancelled", lua_pushfstring(L, "%s: the transfer was aborted", fname));
  return lua_error(L);
}

/* The fetch call, each time its task runs: suspends until the transfer is over (or, when
 * streaming, until the final headers are in), then pushes the raw response or raises the
 * error. The stack is [url, opts, x]. */
static int fetch_step(lua_State *L, lasync__task *t, xfer *x) {
  CURL *easy = x->c.easy;
  const char *url = NULL;
  long status = 0, redirects = 0, version = 0;
  if (x->lua_failed) return raise_body_error(L, 3);
  if (x->aborted) return raise_aborted(L, "async.fetch");
  if (!x->c.done && !(x->stream && x->headers_done)) {
    x->task = t;
    return lasync__suspend(L, t, &FETCH_OPS, x);
  }
  curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &url);
  lua_pushstring(L, url ? url : "");
  url = lua_tostring(L, -1);
  /* A stream that failed after its headers raises from res:read(), once the data is read. */
  if (x->c.done && !(x->stream && x->headers_done) &&
      (x->c.result != CURLE_OK || x->too_large || x->no_memory))
    return raise_transfer_error(L, x, url);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(easy, CURLINFO_REDIRECT_COUNT, &redirects);
  curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
  lua_createtable(L, 5, 8);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "url");
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushinteger(L, redirects);
  lua_setfield(L, -2, "redirects");
  lua_pushstring(L, version_name(version));
  lua_setfield(L, -2, "http_version");
  if (x->stream) {
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "_stream"); /* the response owns the transfer from now on */
  } else {
    size_t len;
    const char *body = lasync__buffer_peek(&x->body, &len);
    lua_pushlstring(L, body, len);
    lua_setfield(L, -2, "body");
  }
  /* The final response's header block, parsed in lua/http/client.lua when first used. */
  {
    size_t len;
    const char *head = lasync__buffer_peek(&x->head, &len);
    lua_pushlstring(L, head, len);
    lua_setfield(L, -2, "_head");
  }
  set_seconds(L, easy, CURLINFO_NAMELOOKUP_TIME_T, 1);
  set_seconds(L, easy, CURLINFO_CONNECT_TIME_T, 2);
  set_seconds(L, easy, CURLINFO_APPCONNECT_TIME_T, 3);
  set_seconds(L, easy, CURLINFO_STARTTRANSFER_TIME_T, 4);
  set_seconds(L, easy, CURLINFO_TOTAL_TIME_T, 5);
  if (!x->stream) release_to(x, x->c.multi); /* the memory goes now, the easy handle to the pool */
  return 1;
}

/* ---- streamed responses: core._read, core._close, core._buffered ---- */

static xfer *check_xfer(lua_State *L) { return (xfer *)luaL_checkudata(L, 1, XFER_MT); }

static int read_step(lua_State *L, lasync__task *t, xfer *x);

static int read_finish(lua_State *L, lasync__task *t, void *data) {
  xfer *x = (xfer *)data;
  x->reading = 0;
  return read_step(L, t, x);
}

/* Cancelling the reader aborts the transfer: nobody else is expected to read it. */
static void read_cancel(lasync__task *t, void *data) {
  xfer *x = (xfer *)data;
  (void)t;
  x->task = NULL;
  x->reading = 0;
  abort_xfer(x);
}

/* Woken with a chunk but cancelled before it ran: the same as a cancel while it waited (the
 * transfer went on otherwise, held back by its bound, until the Response was collected). */
static void read_abandon(lua_State *L, lasync__task *t, void *data) {
  (void)L;
  read_cancel(t, data);
}

static const lasync__awaitable_ops READ_OPS = {"read", read_cancel, read_finish, read_abandon};

/* res:read(), each time its task runs; the stack is [x]. */
static int read_step(lua_State *L, lasync__task *t, xfer *x) {
  if (x->closed) return lasync__misuse(L, "res:read: the response is closed");
  /* Before the buffer: an aborted transfer's is empty (abort_xfer). l_fail aborts, so
   * lua_failed implies aborted. */
  if (x->aborted) return x->lua_failed ? raise_body_error(L, 1) : raise_aborted(L, "res:read");
  if (x->body.len > 0) {
    size_t len;
    const char *chunk = lasync__buffer_peek(&x->body, &len);
    lua_pushlstring(L, chunk, len);
    lasync__buffer_consume(&x->body, len);
    /* Below the bound again: let curl deliver what it held back (maybe at once, into the
     * buffer just emptied). */
    if (x->recv_paused) {
      x->recv_paused = 0;
      update_pause(x);
    }
    return 1;
  }
  if (!x->c.done) {
    x->task = t;
    x->reading = 1;
    return lasync__suspend(L, t, &READ_OPS, x);
  }
  if (x->c.result != CURLE_OK || x->too_large || x->no_memory) {
    const char *url = NULL;
    curl_easy_getinfo(x->c.easy, CURLINFO_EFFECTIVE_URL, &url);
    return raise_transfer_error(L, x, lua_pushstring(L, url ? url : ""));
  }
  lasync__buffer_free(&x->body);
  lua_pushnil(L);
  return 1;
}

/* core._read(x) -> the next chunk, or nil at the end. */
static int l_read(lua_State *L) {
  xfer *x = check_xfer(L);
  lasync__task *t = lasync__check_task(L, "res:read");
  lua_settop(L, 1);
  if (x->task) return lasync__misuse(L, "res:read: another task is already reading this response");
  return read_step(L, t, x);
}

/* core._close(x): aborts the transfer if it still runs and frees it; __gc does the same. */
static int l_close(lua_State *L) {
  xfer *x = check_xfer(L);
  if (x->closed) return 0;
  x->closed = 1;
  abort_xfer(x); /* wakes a reader, which then finds the response closed */
  release(x);
  return 0;
}

/* core._buffered(x) -> bytes received and not read yet. */
static int l_buffered(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_xfer(L)->body.len);
  return 1;
}

/* ---- request bodies from a Lua function: core._send_wait, core._send, core._fail ----
 *
 * lua/http/client.lua runs the function in a feeder task: it waits until curl has taken the last
 * chunk (send_wait), calls the function, and hands its chunk over (send). */

static int send_step(lua_State *L, lasync__task *t, xfer *x);

static int send_finish(lua_State *L, lasync__task *t, void *data) {
  return send_step(L, t, (xfer *)data);
}

static void send_cancel(lasync__task *t, void *data) {
  (void)t;
  ((xfer *)data)->feeder = NULL;
}

static const lasync__awaitable_ops SEND_OPS = {"fetch body", send_cancel, send_finish, NULL};

static int send_step(lua_State *L, lasync__task *t, xfer *x) {
  if (x->c.done || x->send_eof) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (x->send.len == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  x->feeder = t;
  return lasync__suspend(L, t, &SEND_OPS, x);
}

/* core._send_wait(x) -> true when curl wants the next chunk, false once the transfer is over. */
static int l_send_wait(lua_State *L) {
  xfer *x = check_xfer(L);
  lasync__task *t = lasync__check_task(L, "async.fetch (body function)");
  lua_settop(L, 1);
  return send_step(L, t, x);
}

/* core._send(x, chunk or nil): buffers the chunk (nil: the end of the body) and resumes the
 * upload. */
static int l_send(lua_State *L) {
  xfer *x = check_xfer(L);
  size_t n = 0;
  const char *p = lua_isnil(L, 2) ? NULL : luaL_checklstring(L, 2, &n);
  if (x->c.done) return 0;
  if (p == NULL)
    x->send_eof = 1;
  else if (lasync__buffer_append(&x->send, p, n) != 0)
    return lasync__misuse(L, "async.fetch: not enough memory for the request body");
  if (x->send_paused) {
    x->send_paused = 0;
    update_pause(x);
  }
  return 0;
}

/* core._fail(x, err): the body function raised err; the transfer ends and fetch raises it. */
static int l_fail(lua_State *L) {
  xfer *x = check_xfer(L);
  luaL_checkany(L, 2);
  if (x->c.done) return 0;
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 1);
  x->lua_failed = 1;
  abort_xfer(x);
  return 0;
}

/* ---- core._fetch(url, opts) ---- */

static const char *opt_string(lua_State *L, const char *field) {
  const char *s;
  lua_getfield(L, 2, field);
  s = lua_tostring(L, -1); /* the options table anchors it */
  lua_pop(L, 1);
  return s;
}

/* A count option: lua/http/options.lua has checked it is a whole number >= 0, as an integer
 * or a float (1e6, math.huge). Absent: dflt; past max (math.huge included): max. Reading a
 * float with lua_tointegerx would fail and silently fall back to the default. */
static lua_Integer opt_count(lua_State *L, const char *field, lua_Integer dflt, lua_Integer max) {
  lua_Integer v = dflt;
  lua_getfield(L, 2, field);
  if (lua_isinteger(L, -1)) {
    v = lua_tointeger(L, -1);
  } else if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(L, -1);
    v = n >= (lua_Number)max ? max : n > 0 ? (lua_Integer)n : 0;
  }
  lua_pop(L, 1);
  return v < 0 ? 0 : v > max ? max : v;
}

/* low_speed_time: curl counts whole seconds, so a fraction is rounded up (0.5 -> 1 s, not
 * "off"); 0, and anything past a year, is off. */
static long opt_whole_seconds(lua_State *L, const char *field) {
  lua_Number s;
  lua_getfield(L, 2, field);
  s = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(s > 0) || s > 365.0 * 24 * 3600) return 0;
  return (long)ceil(s);
}

static long opt_ms(lua_State *L, const char *field) {
  lua_Number s;
  lua_getfield(L, 2, field);
  s = lua_tonumber(L, -1);
  lua_pop(L, 1);
  /* 0 is curl's "no limit"; so is anything past a year, and clamping keeps the cast defined
   * (math.huge or 1e300 would overflow a long). */
  if (!(s > 0) || s > 365.0 * 24 * 3600) return 0;
  /* Never rounded down to 0: 0.0004 s would be no limit at all (a fetch that hangs). */
  return s < 0.001 ? 1 : (long)(s * 1000 + 0.5);
}

static int opt_bool(lua_State *L, const char *field) {
  int b;
  lua_getfield(L, 2, field);
  b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}

/* A body function's length from its Content-Length header, or -1 (chunked). */
static curl_off_t body_length(lua_State *L) {
  lua_getfield(L, 2, "body_length");
  curl_off_t n = lua_isinteger(L, -1) ? (curl_off_t)lua_tointeger(L, -1) : -1;
  lua_pop(L, 1);
  return n;
}

/* Sets the easy handle's options from the table that lua/http/options.lua normalised. */
static int setup(lua_State *L, xfer *x, const char *url) {
  CURL *e = x->c.easy;
  const char *method = opt_string(L, "method"), *s;
  size_t body_len = 0;
  const char *body;
  int i, n;
  /* The URL passed core._check_url; curl refuses one only when out of memory now. */
  if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK) return -1;
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cb_write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, cb_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  /* A proxy's "200 Connection established" must not pass for the final response's headers. */
  curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  x->stream = opt_bool(L, "stream");
  /* math.huge: no bound, the stream is never paused. */
  x->stream_buffer =
      (size_t)opt_count(L, "stream_buffer", DEFAULT_STREAM_BUFFER,
                        (lua_Integer)(SIZE_MAX > LUA_MAXINTEGER ? LUA_MAXINTEGER : SIZE_MAX));
  if (x->stream_buffer == 0) x->stream_buffer = 1;
  /* Method and body. */
  lua_getfield(L, 2, "body");
  body = lua_tolstring(L, -1, &body_len);
  lua_pop(L, 1);
  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (opt_bool(L, "body_fn")) {
    /* Chunks come from the feeder task through cb_read; without a known length, HTTP/1.1
     * sends them with chunked transfer encoding. */
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, cb_read);
    curl_easy_setopt(e, CURLOPT_READDATA, x);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, body_length(L));
    if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else if (body || strcmp(method, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body ? body : "");
    if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  /* Headers: already "Name: value" lines, checked for CR, LF and NUL. */
  lua_getfield(L, 2, "headers");
  n = (int)luaL_len(L, -1);
  for (i = 1; i <= n; i++) {
    struct curl_slist *l;
    lua_rawgeti(L, -1, i);
    l = curl_slist_append(x->headers, lua_tostring(L, -1));
    lua_pop(L, 1);
    if (l == NULL) return -1;
    x->headers = l;
  }
  lua_pop(L, 1);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
  /* Limits. */
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, opt_ms(L, "timeout"));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, opt_ms(L, "connect_timeout"));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, (long)opt_count(L, "low_speed_limit", 0, LONG_MAX));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, opt_whole_seconds(L, "low_speed_time"));
  /* max_body: absent, the default (64 MiB); math.huge, no limit; 0, no body at all (the
   * write callback refuses the first byte). curl's MAXFILESIZE (checked against a declared
   * Content-Length before the body comes) reads 0 as "no limit", so it is set only for a
   * finite limit above 0. */
  x->max_body = (curl_off_t)opt_count(L, "max_body", DEFAULT_MAX_BODY, NO_BODY_LIMIT);
  if (x->max_body > 0 && x->max_body < NO_BODY_LIMIT)
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, x->max_body);
  x->follow = opt_bool(L, "follow_redirects");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long)x->follow);
  /* math.huge: no limit (curl's -1). */
  {
    lua_Integer redirs = opt_count(L, "max_redirects", 10, LONG_MAX);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, redirs == LONG_MAX ? -1L : (long)redirs);
  }
  /* TLS. */
  if (!opt_bool(L, "verify_tls")) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if ((s = opt_string(L, "ca_file")) != NULL) curl_easy_setopt(e, CURLOPT_CAINFO, s);
  /* No proxy unless asked for: "" also ignores the *_proxy environment variables. */
  s = opt_string(L, "proxy");
  curl_easy_setopt(e, CURLOPT_PROXY, s ? s : "");
  if ((s = opt_string(L, "http_version")) != NULL)
    curl_easy_setopt(
        e, CURLOPT_HTTP_VERSION,
        strcmp(s, "1.1") == 0 ? (long)CURL_HTTP_VERSION_1_1 : (long)CURL_HTTP_VERSION_2TLS);
  if (opt_bool(L, "decompress")) curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  if ((s = opt_string(L, "user_agent")) != NULL) curl_easy_setopt(e, CURLOPT_USERAGENT, s);
  return 0;
}

/* ---- plain fetches: async.fetch(url), no options ----
 *
 * lua/http/options.lua normalises every fetch without options to one table (PLAIN), and hands
 * it over once (core._fetch_plain). A plain fetch's easy handle goes back to the multi set up
 * as it is (lasync__curl_easy_keep); the next plain fetch takes such a handle and sets only the
 * URL and its own pointers, with the fields setup() gave the transfer struct copied from the
 * first plain fetch's: no curl_easy_reset, no option read from Lua, no two dozen setopts. */

static const char PLAIN_KEY = 'p';

typedef struct {
  size_t stream_buffer;
  curl_off_t max_body;
  unsigned known : 1; /* a plain fetch's setup() has filled the fields */
  unsigned stream : 1;
  unsigned follow : 1;
} plain_setup;

/* core._fetch_plain(opts): the table of fetches without options. */
static int l_fetch_plain(lua_State *L) {
  plain_setup *ps;
  luaL_checktype(L, 1, LUA_TTABLE);
  ps = (plain_setup *)lua_newuserdatauv(L, sizeof *ps, 1);
  memset(ps, 0, sizeof *ps);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &PLAIN_KEY);
  return 0;
}

/* The plain fetches' record when the options at index 2 are theirs, else NULL. */
static plain_setup *plain_of(lua_State *L) {
  plain_setup *ps = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &PLAIN_KEY) == LUA_TUSERDATA) {
    lua_getiuservalue(L, -1, 1);
    if (lua_rawequal(L, -1, 2)) ps = (plain_setup *)lua_touserdata(L, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return ps;
}

/* A kept handle, set up by an earlier plain fetch: only what is this transfer's own. */
static int setup_kept(xfer *x, const char *url, const plain_setup *ps) {
  CURL *e = x->c.easy;
  if (curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK) return -1;
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  x->stream = ps->stream;
  x->stream_buffer = ps->stream_buffer;
  x->max_body = ps->max_body;
  x->follow = ps->follow;
  return 0;
}

/* core._fetch(url, opts) -> raw response table. opts has been checked by lua/http/options.lua. */
static int l_fetch(lua_State *L);
static const lua_CFunction fetch_again = l_fetch; /* after waiting for libcurl (curl_load.h) */
static int l_fetch(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  const char *why = NULL;
  lasync__task *t;
  lasync__curl *m;
  plain_setup *ps;
  xfer *x;
  luaL_checktype(L, 2, LUA_TTABLE);
  t = lasync__check_task(L, "async.fetch");
  if (t->rt->closing) return lasync__misuse(L, "async.fetch: the runtime is closing");
  lasync__need_curl(L, "async.fetch", url, &fetch_again);
  m = lasync__curl_get(t->rt, &CURL_OPS, &why);
  if (m == NULL) return lasync__misuse(L, "async.fetch: %s", why);
  lua_settop(L, 2);
  /* Closed state first, so the __gc is safe whatever fails next. */
  x = (xfer *)lua_newuserdatauv(L, sizeof *x, 1); /* [url, opts, x]: kept across the yield */
  memset(x, 0, sizeof *x);
  x->c.multi = m;
  x->head.max = MAX_HEADER_BYTES;
  luaL_setmetatable(L, XFER_MT);
  ps = plain_of(L);
  x->plain = ps != NULL;
  if (ps && ps->known && (x->c.easy = lasync__curl_easy_kept(m)) != NULL) {
    if (setup_kept(x, url, ps) != 0)
      return lasync__misuse(L, "async.fetch: not enough memory for a transfer");
  } else {
    x->c.easy = lasync__curl_easy(m);
    if (x->c.easy == NULL || setup(L, x, url) != 0)
      return lasync__misuse(L, "async.fetch: not enough memory for a transfer");
    if (ps && !ps->known) {
      ps->stream = x->stream;
      ps->stream_buffer = x->stream_buffer;
      ps->max_body = x->max_body;
      ps->follow = x->follow;
      ps->known = 1;
    }
  }
  if (lasync__curl_start(m, &x->c) != 0)
    return lasync__misuse(L, "async.fetch: cannot start the transfer");
  /* A body feeder needs x before fetch waits (never a plain fetch's). */
  if (!ps && opt_bool(L, "start_only")) return 1;
  return fetch_step(L, t, x);
}

/* core._fetch_wait(url, opts, x): waits for a transfer started with opts.start_only. */
static int l_fetch_wait(lua_State *L) {
  lasync__task *t;
  xfer *x;
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  x = (xfer *)luaL_checkudata(L, 3, XFER_MT);
  t = lasync__check_task(L, "async.fetch");
  lua_settop(L, 3);
  return fetch_step(L, t, x);
}

/* core._check_url(url, fname) -> nil when curl can use the caller's URL, else why not. It runs
 * curl's own parser (curl_url), so what passes here is what the transfer will parse: a port
 * out of range, a missing host or a host name that has no punycode form are refused before
 * any I/O, with kind "invalid" (lua/http/options.lua), rather than failing as "protocol" once
 * the transfer runs, and being retried. */
#define MAX_URL_LENGTH 8000000 /* curl's CURL_MAX_INPUT_LENGTH */
static int l_check_url(lua_State *L);
static const lua_CFunction check_url_again = l_check_url;
static int l_check_url(lua_State *L) {
  size_t len;
  const char *url = luaL_checklstring(L, 1, &len);
  const char *fname = luaL_optstring(L, 2, "async.fetch");
  CURLU *u;
  CURLUcode rc;
  char *part = NULL;
  if (len > MAX_URL_LENGTH) {
    lua_pushfstring(L, "a URL of %d bytes (at most %d)", (int)(len > INT_MAX ? INT_MAX : len),
                    MAX_URL_LENGTH);
    return 1;
  }
  lasync__need_curl(L, fname, url, &check_url_again);
  u = curl_url();
  if (u == NULL) return lasync__misuse(L, "async.fetch: not enough memory");
  rc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (rc == CURLUE_OK) {
    rc = curl_url_get(u, CURLUPART_SCHEME, &part, 0);
    if (rc == CURLUE_OK && strcmp(part, "http") != 0 && strcmp(part, "https") != 0) {
      lua_pushfstring(L, "scheme '%s' (http or https expected)", part);
      curl_free(part);
      curl_url_cleanup(u);
      return 1;
    }
    curl_free(part);
    part = NULL;
  }
  /* A host with non-ASCII letters goes out in its punycode form: one that has none can
   * never be reached. */
  if (rc == CURLUE_OK) rc = curl_url_get(u, CURLUPART_HOST, &part, CURLU_PUNYCODE);
  curl_free(part);
  curl_url_cleanup(u);
  if (rc == CURLUE_OK) return 0;
  lua_pushstring(L, curl_url_strerror(rc));
  return 1;
}

void lasync__open_http(lua_State *L) {
  luaL_newmetatable(L, XFER_MT);
  lua_pushcfunction(L, xfer_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"_fetch", l_fetch},
                                 {"_fetch_wait", l_fetch_wait},
                                 {"_read", l_read},
                                 {"_close", l_close},
                                 {"_buffered", l_buffered},
                                 {"_send_wait", l_send_wait},
                                 {"_send", l_send},
                                 {"_fail", l_fail},
                                 {"_check_url", l_check_url},
                                 {"_fetch_plain", l_fetch_plain},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
