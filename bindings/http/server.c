/* The HTTP server's connections: llhttp on libuv TCP handles, the C half of async.http.serve
 * (lua/http/server.lua holds the policy: a task per request, the router, what a handler returns).
 *
 * Connections live in C alone until a request head is complete: accepting, reading, parsing,
 * the timeouts of idle and slow clients and the refusals (400, 408, 413, 431, 501) involve no
 * Lua, so ten thousand idle keep-alive connections cost a few hundred bytes each and no task.
 * A complete head is queued on the server, whose one dispatcher task (srv:next()) takes it
 * and spawns the handler task. While a request is handled the parser is paused and reading
 * stops once a bound of unread bytes is buffered: pipelined requests wait their turn, in order.
 * A client that goes away while its handler runs queues a "gone" event, and the dispatcher
 * cancels the handler; the connection is freed only once the handler has finished with it.
 *
 * A response's head and body go out in one write (uv_try_write, the rest through uv_write),
 * with TCP_NODELAY, since a head and a body in two small writes meet Nagle and delayed ACKs.
 * Nothing here calls Lua from a libuv callback: callbacks fill C state and wake tasks.
 */
#include <ctype.h>
#include <limits.h>
#include <llhttp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "private.h"

void lasync__open_static(lua_State *L); /* static.c */

#define SERVER_MT "lasync.HttpListener"
#define CONN_MT "lasync.HttpConn"
#define SLAB_SIZE (64 * 1024)
#define READ_MAX (64 * 1024)  /* unread bytes past which reading stops while a request runs */
#define WRITE_HWM (64 * 1024) /* queued bytes past which res:write suspends */
#define LINGER_SECONDS 2.0    /* after a refusal: how long unread input is drained */

typedef struct server server;
typedef struct conn conn;

typedef struct {
  size_t max_header_bytes, max_headers, max_body;
  double header_timeout, idle_timeout, request_timeout;
  int max_connections;
} limits;

struct server {
  lasync__runtime *rt;
  int refs;                 /* the Lua box, the listener, each connection */
  lasync__handle *listener; /* NULL once closed */
  limits lim;
  conn *conns; /* every open connection */
  int nconns;
  int pending_accept;    /* a connection waits in the backlog (max_connections) */
  int closing;           /* srv:close(): no keep-alive, idle connections closed */
  conn *q_head, *q_tail; /* connections with an event for the dispatcher */
  lasync__task *waiter;  /* the dispatcher, while it waits in next() */
  char slab[SLAB_SIZE];  /* every read goes through it; see on_alloc */
};

typedef struct {
  lasync__handle h;
  uv_tcp_t tcp;
  server *sv;
} listener;

enum { EV_REQUEST = 1, EV_GONE = 2, EV_TIMEOUT = 4 };
enum { T_NONE, T_HEADER, T_IDLE, T_LINGER, T_REQUEST };

struct conn {
  lasync__handle h;
  uv_tcp_t tcp;
  server *sv;
  conn *prev, *next; /* the server's connections */
  conn *q_next, *q_prev;
  llhttp_t parser;
  lasync__buffer in;   /* received, not yet parsed */
  lasync__buffer head; /* the current head: url, then names and values back to back */
  uint32_t *spans;     /* offsets in head: [url_end, name_end, value_end, ...] */
  uint32_t nspans, cap_spans;
  lasync__buffer body; /* body bytes parsed, not yet read by the handler */
  size_t body_total;
  lasync__timer timer;
  lasync__task *reader; /* the handler, while it waits for body bytes */
  lasync__task *writer; /* the handler, while its writes drain */
  size_t queued;        /* bytes in uv_write requests */
  int refusal;          /* status to refuse the request with, once known */
  uint8_t events, queued_ev, busy, in_head, head_done, msg_done, eof, gone, reading;
  uint8_t expect_continue, sent_continue, keep_alive, closing_after, shut, lingering;
  uint8_t te_unknown, last_cr, timer_kind, version_minor, skip_body, timer_reserved;
  uint8_t draining; /* the next pipelined request waits for the responses queued to drain */
  uint32_t seq;     /* counts the requests: conn:unserved must not answer a later one */
};

typedef struct {
  uv_write_t req;
  conn *c;
  size_t len;
  char data[];
} wreq;

static const llhttp_settings_t SETTINGS;

/* ---- server lifetime ---- */

static void server_unref(server *sv) {
  if (--sv->refs == 0) free(sv);
}

static void enqueue(conn *c, int ev) {
  server *sv = c->sv;
  c->events |= ev;
  if (!c->queued_ev) {
    c->queued_ev = 1;
    c->q_next = NULL;
    c->q_prev = sv->q_tail;
    if (sv->q_tail)
      sv->q_tail->q_next = c;
    else
      sv->q_head = c;
    sv->q_tail = c;
  }
  if (sv->waiter) {
    lasync__task *t = sv->waiter;
    sv->waiter = NULL;
    lasync__wake(t);
  }
}

static void dequeue(conn *c) {
  server *sv = c->sv;
  if (!c->queued_ev) return;
  if (c->q_prev)
    c->q_prev->q_next = c->q_next;
  else
    sv->q_head = c->q_next;
  if (c->q_next)
    c->q_next->q_prev = c->q_prev;
  else
    sv->q_tail = c->q_prev;
  c->q_next = c->q_prev = NULL;
  c->queued_ev = 0;
}

static void try_accept(server *sv);

/* ---- connections: closing ---- */

static void conn_on_close(lasync__handle *h) {
  conn *c = (conn *)h;
  lasync__timer_stop(h->rt, &c->timer);
  dequeue(c);
  if (c->reader) {
    lasync__task *t = c->reader;
    c->reader = NULL;
    lasync__wake(t);
  }
  if (c->writer) {
    lasync__task *t = c->writer;
    c->writer = NULL;
    lasync__wake(t);
  }
}

static void conn_on_free(lasync__handle *h) {
  conn *c = (conn *)h;
  server *sv = c->sv;
  if (c->prev)
    c->prev->next = c->next;
  else
    sv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  sv->nconns--;
  if (c->timer_reserved) lasync__timer_reserve(sv->rt, -1);
  lasync__buffer_free(&c->in);
  lasync__buffer_free(&c->head);
  lasync__buffer_free(&c->body);
  free(c->spans);
  if (sv->pending_accept) try_accept(sv);
  if (sv->nconns == 0 && sv->listener == NULL && sv->waiter) {
    lasync__task *t = sv->waiter; /* the dispatcher's work is over */
    sv->waiter = NULL;
    lasync__wake(t);
  }
  server_unref(sv);
}

/* Closes now, unless a handler still holds the connection: then it stops reading and tells
 * the dispatcher, and the handler's finish closes it. */
static void conn_drop(conn *c) {
  if (c->h.closing) return;
  if (c->busy) {
    if (!c->gone) {
      c->gone = 1;
      if (c->reading) uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = 0;
      enqueue(c, EV_GONE);
      if (c->reader) {
        lasync__task *t = c->reader;
        c->reader = NULL;
        lasync__wake(t);
      }
    }
    return;
  }
  lasync__handle_close(&c->h);
}

static void on_timer(lasync__timer *timer);

static void arm(conn *c, int kind, double seconds) {
  lasync__timer_stop(c->h.rt, &c->timer);
  c->timer_kind = (uint8_t)kind;
  if (kind != T_NONE && seconds > 0) lasync__timer_start(c->h.rt, &c->timer, seconds);
}

/* ---- writing ---- */

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn *c = (conn *)req->data;
  free(req);
  if (c->h.closing) return;
  if (status < 0 || c->eof) {
    lasync__handle_close(&c->h);
    return;
  }
  /* Drain what the client still sends for a while, so the kernel does not answer it with a
   * reset that could destroy the response before the client has read it. */
  c->lingering = 1;
  arm(c, T_LINGER, LINGER_SECONDS);
}

static void close_after_flush(conn *c) {
  uv_shutdown_t *req;
  if (c->h.closing || c->shut) return;
  c->shut = 1;
  req = (uv_shutdown_t *)malloc(sizeof *req);
  if (req == NULL) {
    lasync__handle_close(&c->h);
    return;
  }
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(req);
    lasync__handle_close(&c->h);
    return;
  }
  /* The shutdown waits for the queued writes: a client that reads none of them would hold the
   * connection for ever. on_written restarts this at each write done (nginx's send_timeout). */
  arm(c, T_LINGER, c->sv->lim.idle_timeout);
}

static void next_request(conn *c);

static void on_written(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  conn *c = w->c;
  c->queued -= w->len;
  free(w);
  if (c->h.closing) return;
  if (status < 0) {
    conn_drop(c);
    return;
  }
  /* Progress: a client still reading its responses is not idle. */
  if (c->timer_kind == T_IDLE || (c->timer_kind == T_LINGER && !c->lingering))
    arm(c, c->timer_kind, c->sv->lim.idle_timeout);
  if (c->queued > WRITE_HWM / 2) return;
  if (c->writer) {
    lasync__task *t = c->writer;
    c->writer = NULL;
    lasync__wake(t);
  }
  if (c->draining) {
    c->draining = 0;
    next_request(c);
  }
}

/* Sends the pieces: what the socket takes now, the rest copied into one uv_write. Returns 0
 * or a libuv error (the connection is then dropped). */
static int send_bufs(conn *c, uv_buf_t *bufs, unsigned n) {
  size_t total = 0, done = 0, off = 0;
  unsigned i;
  int r;
  wreq *w;
  if (c->h.closing || c->shut || c->gone) return UV_EPIPE;
  for (i = 0; i < n; i++) total += bufs[i].len;
  if (total == 0) return 0;
  if (c->queued == 0) {
    r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (r >= 0)
      done = (size_t)r;
    else if (r != UV_EAGAIN && r != UV_ENOSYS) {
      conn_drop(c);
      return r;
    }
  }
  if (done == total) return 0;
  w = (wreq *)malloc(sizeof *w + (total - done));
  if (w == NULL) {
    conn_drop(c);
    return UV_ENOMEM;
  }
  for (i = 0; i < n; i++) {
    size_t len = bufs[i].len;
    if (done >= len) {
      done -= len;
      continue;
    }
    memcpy(w->data + off, bufs[i].base + done, len - done);
    off += len - done;
    done = 0;
  }
  w->c = c;
  w->len = off;
  {
    uv_buf_t b = uv_buf_init(w->data, (unsigned)off);
    r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
  }
  if (r != 0) {
    free(w);
    conn_drop(c);
    return r;
  }
  c->queued += off;
  return 0;
}

static const char *reason(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 303:
      return "See Other";
    case 304:
      return "Not Modified";
    case 307:
      return "Temporary Redirect";
    case 308:
      return "Permanent Redirect";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 416:
      return "Range Not Satisfiable";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Unknown";
  }
}

/* "Date: Tue, 01 Dec 2026 22:03:40 GMT\r\n", formatted once a second. */
static const char *date_line(size_t *len) {
  static _Thread_local char line[64]; /* per thread: runtimes may live on several */
  static _Thread_local size_t n;
  static _Thread_local time_t last = (time_t)-1;
  time_t now = time(NULL);
  if (now != last) {
    struct tm tm;
    gmtime_r(&now, &tm);
    n = strftime(line, sizeof line, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    last = now;
  }
  *len = n;
  return line;
}

/* An answer made in C, with no Lua allocation: the status and its reason as a short text body
 * (left out for HEAD, as the length says), after which the connection closes. */
static uv_buf_t error_response(char *out, size_t cap, int status, int head_only) {
  size_t dlen;
  const char *date = date_line(&dlen);
  const char *text = reason(status);
  int n = snprintf(out, cap,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n%.*s\r\n%s%s",
                   status, text, strlen(text) + 1, (int)dlen, date, head_only ? "" : text,
                   head_only ? "" : "\n");
  return uv_buf_init(out, (unsigned)n);
}

/* A refusal from C (no handler ran): a short text body, then the connection closes. */
static void refuse(conn *c, int status) {
  char head[256];
  uv_buf_t b = error_response(head, sizeof head, status, 0);
  if (c->h.closing || c->shut) return;
  if (c->busy) { /* the handler is told through its reads; the dispatcher is not involved */
    c->refusal = status;
    return;
  }
  if (send_bufs(c, &b, 1) == 0) close_after_flush(c);
}

/* ---- parsing ---- */

#define CONN_OF(p) ((conn *)((char *)(p)-offsetof(conn, parser)))

static int add_span(conn *c) {
  if (c->nspans == c->cap_spans) {
    uint32_t cap = c->cap_spans ? c->cap_spans * 2 : 16;
    uint32_t *s = (uint32_t *)realloc(c->spans, cap * sizeof *s);
    if (s == NULL) return -1;
    c->spans = s;
    c->cap_spans = cap;
  }
  c->spans[c->nspans++] = (uint32_t)c->head.len;
  return 0;
}

static int head_append(conn *c, const char *at, size_t len) {
  if (c->head.len + len > c->sv->lim.max_header_bytes) {
    c->refusal = 431;
    return -1;
  }
  if (lasync__buffer_append(&c->head, at, len) != 0) {
    c->refusal = 503;
    return -1;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  conn *c = CONN_OF(p);
  c->in_head = 1;
  c->head_done = c->msg_done = 0;
  c->expect_continue = c->sent_continue = c->te_unknown = 0;
  c->nspans = 0;
  c->body_total = 0;
  lasync__buffer_consume(&c->head, (size_t)-1);
  lasync__buffer_consume(&c->body, (size_t)-1);
  if (c->timer_kind == T_IDLE) arm(c, T_HEADER, c->sv->lim.header_timeout);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  return head_append(CONN_OF(p), at, len);
}

static int on_url_complete(llhttp_t *p) {
  conn *c = CONN_OF(p);
  return add_span(c) ? (c->refusal = 503, -1) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  return head_append(CONN_OF(p), at, len);
}

static int on_header_field_complete(llhttp_t *p) {
  conn *c = CONN_OF(p);
  if (c->nspans / 2 >= c->sv->lim.max_headers) {
    c->refusal = 431;
    return -1;
  }
  return add_span(c) ? (c->refusal = 503, -1) : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  return head_append(CONN_OF(p), at, len);
}

static const char *head_base(conn *c) {
  size_t n;
  return lasync__buffer_peek(&c->head, &n);
}

static int span_is(conn *c, uint32_t i, const char *name) {
  const char *base = head_base(c);
  uint32_t from = c->spans[i - 1], to = c->spans[i];
  size_t n = strlen(name);
  return to - from == n && strncasecmp(base + from, name, n) == 0;
}

static int on_header_value_complete(llhttp_t *p) {
  conn *c = CONN_OF(p);
  uint32_t field;
  const char *base;
  if (add_span(c)) return c->refusal = 503, -1;
  field = c->nspans - 2; /* the span ending the name */
  base = head_base(c);
  if (span_is(c, field, "expect")) {
    uint32_t from = c->spans[field], to = c->spans[field + 1];
    if (to - from == 12 && strncasecmp(base + from, "100-continue", 12) == 0)
      c->expect_continue = 1;
  } else if (span_is(c, field, "transfer-encoding")) {
    /* Only chunked is understood: gzip or anything else before it is 501, not a body
     * misread. llhttp itself refuses a request whose last coding is not chunked. */
    uint32_t from = c->spans[field], to = c->spans[field + 1];
    const char *v = base + from;
    size_t n = to - from;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    while (n && (*v == ' ' || *v == '\t')) v++, n--;
    if (!(n == 7 && strncasecmp(v, "chunked", 7) == 0)) c->te_unknown = 1;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  conn *c = CONN_OF(p);
  server *sv = c->sv;
  c->in_head = 0;
  c->head_done = 1;
  if (c->te_unknown) {
    c->refusal = 501;
    return -1;
  }
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > sv->lim.max_body) {
    c->refusal = 413; /* before a byte of it is read */
    return -1;
  }
  c->version_minor = p->http_major == 1 ? (uint8_t)p->http_minor : 0;
  c->keep_alive = llhttp_should_keep_alive(p) && !sv->closing;
  arm(c, T_NONE, 0);
  /* A request without a body is complete at once: on_message_complete pauses instead, so the
   * handler sees msg_done and keep-alive needs no body to drain. */
  if (!(p->flags & F_CHUNKED) && (!(p->flags & F_CONTENT_LENGTH) || p->content_length == 0))
    return 0;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  conn *c = CONN_OF(p);
  c->body_total += len;
  if (c->skip_body) return 0;
  if (c->body_total > c->sv->lim.max_body) {
    c->refusal = 413;
    return -1;
  }
  if (lasync__buffer_append(&c->body, at, len) != 0) {
    c->refusal = 503;
    return -1;
  }
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  conn *c = CONN_OF(p);
  c->msg_done = 1;
  return HPE_PAUSED; /* the next pipelined request waits for this one's response */
}

static const llhttp_settings_t SETTINGS = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* A bare LF in a head is refused (llhttp 8 accepts it): request smuggling hides there. */
static int bare_lf(conn *c, const char *data, size_t len) {
  size_t i;
  uint8_t cr = c->last_cr;
  for (i = 0; i < len; i++) {
    if (data[i] == '\n' && !cr) return 1;
    cr = data[i] == '\r';
  }
  c->last_cr = cr;
  return 0;
}

static void request_ready(conn *c);

/* Feeds bytes to the parser; keeps what it did not take (it paused) in c->in. Returns -1 once
 * the connection was refused or closed. */
static int feed(conn *c, const char *data, size_t len, int from_in) {
  llhttp_errno_t err;
  size_t used;
  if (len == 0) return 0;
  if (llhttp_get_errno(&c->parser) == HPE_PAUSED) llhttp_resume(&c->parser);
  if (!c->head_done || c->msg_done) {
    /* Only the head is scanned: from here to the end of the bytes a body may follow, but a
     * false alarm there only costs a body holding a bare LF after a pipelined head. */
    if (bare_lf(c, data, len)) {
      refuse(c, 400);
      return -1;
    }
  }
  err = llhttp_execute(&c->parser, data, len);
  if (err == HPE_OK) {
    used = len;
  } else if (err == HPE_PAUSED) {
    used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
  } else {
    int status = c->refusal ? c->refusal : 400;
    if (err == HPE_INVALID_TRANSFER_ENCODING) status = 501;
    c->refusal = status;
    if (c->busy) {
      c->keep_alive = 0;
      return -1;
    }
    refuse(c, status);
    return -1;
  }
  if (from_in)
    lasync__buffer_consume(&c->in, used);
  else if (used < len && lasync__buffer_append(&c->in, data + used, len - used) != 0) {
    refuse(c, 503);
    return -1;
  }
  if (c->head_done && !c->busy) request_ready(c);
  return 0;
}

/* The head is complete: the request goes to the dispatcher; reading pauses while the unread
 * bytes exceed the bound. */
static void request_ready(conn *c) {
  c->busy = 1;
  c->seq++;
  c->last_cr = 0;
  /* One deadline in the runtime's heap per request, cheaper than a scope around the handler. */
  arm(c, T_REQUEST, c->sv->lim.request_timeout);
  enqueue(c, EV_REQUEST);
}

static void parse_buffered(conn *c) {
  size_t n;
  const char *p = lasync__buffer_peek(&c->in, &n);
  feed(c, p, n, 1);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = (conn *)LASYNC__HANDLE_OF(h);
  (void)suggested;
  /* One slab per server: libuv calls alloc, read(2) and the callback back to back. */
  *buf = uv_buf_init(c->sv->slab, SLAB_SIZE);
}

static void wake_reader(conn *c) {
  if (c->reader) {
    lasync__task *t = c->reader;
    c->reader = NULL;
    lasync__wake(t);
  }
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)LASYNC__HANDLE_OF(stream);
  if (nread == 0) return;
  if (nread < 0) {
    c->eof = 1;
    uv_read_stop(stream);
    c->reading = 0;
    if (c->lingering || !c->busy || nread != UV_EOF) {
      conn_drop(c);
      return;
    }
    /* The client closed its side while its request runs. As Go's server does, that counts as
     * a disconnect (the dispatcher cancels the handler unless cancel_on_disconnect is false),
     * but writes still go out: a half-closed client may yet read its response. A body cut
     * short reads as an error. */
    c->keep_alive = 0;
    if (!c->msg_done) {
      if (!c->refusal) c->refusal = 400;
      wake_reader(c);
    }
    enqueue(c, EV_GONE);
    return;
  }
  if (c->lingering) return;
  if ((c->busy && (c->msg_done || !c->head_done || c->reader == NULL)) || c->draining) {
    /* The handler is not reading, or the responses wait to drain: keep the bytes for later,
     * up to a bound. */
    if (lasync__buffer_append(&c->in, buf->base, (size_t)nread) != 0) {
      conn_drop(c);
      return;
    }
    if (c->in.len > READ_MAX) {
      uv_read_stop(stream);
      c->reading = 0;
    }
    return;
  }
  if (c->in.len) {
    if (lasync__buffer_append(&c->in, buf->base, (size_t)nread) != 0) {
      conn_drop(c);
      return;
    }
    parse_buffered(c);
  } else {
    feed(c, buf->base, (size_t)nread, 0);
  }
  if (c->busy) wake_reader(c);
}

static void start_reading(conn *c) {
  if (c->reading || c->eof || c->h.closing || c->shut) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}

/* Between requests: the next one, if its bytes are here, else reading until it comes. */
static void next_request(conn *c) {
  if (c->in.len) parse_buffered(c);
  if (!c->h.closing && !c->busy) start_reading(c);
}

static void on_timer(lasync__timer *timer) {
  conn *c = (conn *)((char *)timer - offsetof(conn, timer));
  int kind = c->timer_kind;
  c->timer_kind = T_NONE;
  if (kind == T_HEADER) {
    refuse(c, 408);
  } else if (kind == T_REQUEST) {
    if (c->busy) enqueue(c, EV_TIMEOUT); /* the dispatcher cancels the handler */
  } else {
    lasync__handle_close(&c->h);
  }
}

/* ---- accepting ---- */

static void try_accept(server *sv) {
  conn *c;
  listener *ls = (listener *)sv->listener;
  if (ls == NULL || sv->closing) return;
  while (sv->pending_accept) {
    if (sv->lim.max_connections && sv->nconns >= sv->lim.max_connections) return;
    /* A connection's one timer is armed from libuv's callbacks, where timers that cannot
     * grow have no one to tell: its slot is kept for the connection's life. */
    if (lasync__timer_reserve(sv->rt, 1) != 0) return; /* out of memory: as below */
    c = (conn *)lasync__handle_new(sv->rt, sizeof *c);
    if (c == NULL) { /* out of memory: the backlog holds it; the next close retries */
      lasync__timer_reserve(sv->rt, -1);
      return;
    }
    if (uv_tcp_init(sv->rt->loop, &c->tcp) != 0) {
      lasync__timer_reserve(sv->rt, -1);
      lasync__handle_close(&c->h);
      return;
    }
    lasync__handle_init(&c->h, (uv_handle_t *)&c->tcp);
    c->h.on_close = conn_on_close;
    c->h.on_free = conn_on_free;
    c->sv = sv;
    sv->refs++;
    c->next = sv->conns;
    if (sv->conns) sv->conns->prev = c;
    sv->conns = c;
    sv->nconns++;
    c->timer.index = LASYNC__UNARMED;
    c->timer.on_due = on_timer;
    c->timer_reserved = 1; /* conn_on_free gives it back */
    llhttp_init(&c->parser, HTTP_REQUEST, &SETTINGS);
    sv->pending_accept = 0;
    if (uv_accept((uv_stream_t *)&ls->tcp, (uv_stream_t *)&c->tcp) != 0) {
      lasync__handle_close(&c->h);
      return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    arm(c, T_HEADER, sv->lim.header_timeout); /* counted from the connection's start */
    start_reading(c);
  }
}

static void on_connection(uv_stream_t *stream, int status) {
  listener *ls = (listener *)LASYNC__HANDLE_OF(stream);
  if (status < 0) return;
  ls->sv->pending_accept = 1;
  try_accept(ls->sv);
}

static void listener_on_free(lasync__handle *h) { server_unref(((listener *)h)->sv); }

static void listener_on_close(lasync__handle *h) {
  server *sv = ((listener *)h)->sv;
  sv->listener = NULL;
  if (sv->waiter && sv->nconns == 0) {
    lasync__task *t = sv->waiter;
    sv->waiter = NULL;
    lasync__wake(t);
  }
}

/* ---- the Lua side: the listener ---- */

typedef struct {
  server *sv;
} server_box;

static server *check_server(lua_State *L, const char *fname) {
  server_box *b = (server_box *)luaL_testudata(L, 1, SERVER_MT);
  if (b == NULL) lasync__argerror(L, 1, fname, "self", SERVER_MT);
  if (b->sv == NULL) {
    lasync__push_error(L, "closed", "the server is closed");
    lua_error(L);
  }
  return b->sv;
}

/* A count option as a size_t: past SIZE_MAX (math.huge) it is no limit, not an undefined cast. */
static size_t opt_size(lua_State *L, int idx, const char *name, double dflt);

static double opt_number(lua_State *L, int idx, const char *name, double dflt) {
  double v = 0;
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return dflt;
  }
  if (!lua_isnumber(L, -1) || (v = lua_tonumber(L, -1)) < 0 || v != v)
    lasync__opterror(L, -1, "async.http.serve", name, "number >= 0");
  lua_pop(L, 1);
  return v;
}

static size_t opt_size(lua_State *L, int idx, const char *name, double dflt) {
  double v = opt_number(L, idx, name, dflt);
  return v >= (double)SIZE_MAX ? SIZE_MAX : (size_t)v;
}

/* core._http_listen(ip, port, backlog, opts) -> listener */
static int l_listen(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  const char *ip = luaL_checkstring(L, 1);
  int port = (int)luaL_checkinteger(L, 2);
  int backlog = (int)luaL_checkinteger(L, 3);
  struct sockaddr_storage ss;
  limits lim;
  server_box *box;
  server *sv;
  listener *ls;
  int err;
  luaL_checktype(L, 4, LUA_TTABLE);
  lim.max_header_bytes = opt_size(L, 4, "max_header_bytes", 16 * 1024);
  lim.max_headers = opt_size(L, 4, "max_headers", 100);
  lim.max_body = opt_size(L, 4, "max_body", 1024 * 1024);
  lim.header_timeout = opt_number(L, 4, "header_timeout", 10);
  lim.idle_timeout = opt_number(L, 4, "keepalive_timeout", 5);
  lim.request_timeout = opt_number(L, 4, "request_timeout", 30);
  {
    double max = opt_number(L, 4, "max_connections", 0);
    lim.max_connections = max >= INT_MAX ? 0 : (int)max; /* 0: no limit */
  }
  memset(&ss, 0, sizeof ss);
  if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) != 0 &&
      uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss) != 0)
    return lasync__misuse(
        L, "async.http.serve: bad option 'host' (an IP address expected, got '%s')", ip);
  box = (server_box *)lua_newuserdatauv(L, sizeof *box, 0);
  box->sv = NULL;
  luaL_setmetatable(L, SERVER_MT);
  sv = (server *)calloc(1, sizeof *sv);
  if (sv == NULL) {
    lasync__push_error(L, "nomem", "async.http.serve: out of memory");
    return lua_error(L);
  }
  ls = (listener *)lasync__handle_new(rt, sizeof *ls);
  if (ls == NULL) {
    free(sv);
    lasync__push_error(L, "nomem", "async.http.serve: out of memory");
    return lua_error(L);
  }
  sv->rt = rt;
  sv->lim = lim;
  sv->refs = 2;
  sv->listener = &ls->h;
  ls->sv = sv;
  box->sv = sv;
  ls->h.on_close = listener_on_close;
  ls->h.on_free = listener_on_free;
  err = uv_tcp_init(rt->loop, &ls->tcp);
  if (err == 0) {
    lasync__handle_init(&ls->h, (uv_handle_t *)&ls->tcp);
    err = uv_tcp_bind(&ls->tcp, (const struct sockaddr *)&ss, 0);
    if (err == 0) err = uv_listen((uv_stream_t *)&ls->tcp, backlog, on_connection);
  }
  if (err != 0) {
    lasync__handle_close(&ls->h);
    lasync__push_uv_error(L, "listen", err, ip);
    return lua_error(L);
  }
  return 1;
}

static int srv_port(lua_State *L) {
  server *sv = check_server(L, "server:port");
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (sv->listener == NULL) return 0;
  if (uv_tcp_getsockname(&((listener *)sv->listener)->tcp, (struct sockaddr *)&ss, &len) != 0)
    return 0;
  lua_pushinteger(L, ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                    : ((struct sockaddr_in *)&ss)->sin_port));
  return 1;
}

/* A connection no handler holds closes now, unless its last responses are still going out
 * to a slow client: they finish first, within the timer close_after_flush arms. */
static void close_unheld(conn *c) {
  if (c->queued > 0)
    close_after_flush(c);
  else
    lasync__handle_close(&c->h);
}

static void close_idle(server *sv) {
  conn *c = sv->conns, *next;
  for (; c; c = next) {
    next = c->next;
    if (!c->busy && !c->queued_ev) close_unheld(c);
  }
}

/* srv:stop(): no new connections, no keep-alive; idle connections close now. */
static int srv_stop(lua_State *L) {
  server *sv = check_server(L, "server:stop");
  sv->closing = 1;
  if (sv->listener) lasync__handle_close(sv->listener);
  close_idle(sv);
  return 0;
}

/* server:close_all([conn]): closes the listener and every connection but conn (the one whose
 * handler closes the server: it closes after its response, as closing forbids keep-alive), the
 * handlers having been cancelled. */
static int srv_close_all(lua_State *L) {
  server_box *b = (server_box *)luaL_testudata(L, 1, SERVER_MT);
  lasync__handle **keep = (lasync__handle **)luaL_testudata(L, 2, CONN_MT);
  server *sv;
  conn *c, *next;
  if (b == NULL) return lasync__argerror(L, 1, "server:close_all", NULL, SERVER_MT);
  sv = b->sv;
  if (sv == NULL) return 0;
  sv->closing = 1;
  if (sv->listener) lasync__handle_close(sv->listener);
  for (c = sv->conns; c; c = next) {
    next = c->next;
    if (keep && *keep == &c->h) continue;
    if (c->busy) {
      c->busy = 0;
      lasync__handle_close(&c->h);
    } else {
      close_unheld(c);
    }
  }
  return 0;
}

static int srv_gc(lua_State *L) {
  server_box *b = (server_box *)lua_touserdata(L, 1);
  if (b->sv) {
    srv_close_all(L);
    server_unref(b->sv);
    b->sv = NULL;
  }
  return 0;
}

static int srv_connections(lua_State *L) {
  server *sv = check_server(L, "server:connections");
  lua_pushinteger(L, sv->nconns);
  return 1;
}

static void push_conn(lua_State *L, conn *c);

static void next_cancel(lasync__task *t, void *data) {
  server *sv = (server *)data;
  if (sv->waiter == t) sv->waiter = NULL;
}

static int next_finish(lua_State *L, lasync__task *t, void *data);

static const lasync__awaitable_ops NEXT_OPS = {"http.serve", next_cancel, next_finish, NULL};

/* Pushes (conn, "request") or (conn, "gone") for the first queued event, or nothing. */
static int pop_event(lua_State *L, server *sv) {
  conn *c = sv->q_head;
  int ev;
  if (c == NULL) return 0;
  ev = (c->events & EV_REQUEST) ? EV_REQUEST : (c->events & EV_GONE) ? EV_GONE : EV_TIMEOUT;
  /* Pushed before the event is taken: push_conn allocates, and a memory error there had lost
   * the request, whose client then waited for its own timeout (http_sweep.lua at the cap). */
  push_conn(L, c);
  lua_pushstring(L, ev == EV_GONE ? "gone" : ev == EV_TIMEOUT ? "timeout" : "request");
  c->events &= (uint8_t)~ev;
  if (c->events == 0) dequeue(c);
  return 2;
}

static int next_finish(lua_State *L, lasync__task *t, void *data) {
  server *sv = (server *)data;
  int n;
  (void)t;
  lua_settop(L, 0);
  n = pop_event(L, sv);
  if (n) return n;
  if (sv->listener == NULL && sv->nconns == 0) return 0; /* the server has ended */
  /* Woken for an event that went with its connection: the dispatcher asks again. */
  lua_pushnil(L);
  lua_pushliteral(L, "again");
  return 2;
}

/* srv:next() -> conn, "request" | "gone"; nothing once the server has stopped. */
static int srv_next(lua_State *L) {
  server_box *b = (server_box *)luaL_testudata(L, 1, SERVER_MT);
  lasync__task *t;
  server *sv;
  int n;
  if (b == NULL) return lasync__argerror(L, 1, "server:next", NULL, SERVER_MT);
  t = lasync__check_task(L, "server:next");
  sv = b->sv;
  if (sv == NULL) return 0;
  n = pop_event(L, sv);
  if (n) return n;
  /* After stop, connections still in flight may report a disconnect or a timeout. */
  if (sv->listener == NULL && sv->nconns == 0) return 0;
  sv->waiter = t;
  return lasync__suspend(L, t, &NEXT_OPS, sv);
}

/* ---- the Lua side: a connection ---- */

static int conn_gc(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  /* The connection lives on in C; a new box is made later. */
  if (*box && (*box)->owner == box) (*box)->owner = NULL;
  return 0;
}

static void push_conn(lua_State *L, conn *c) {
  if (c->h.owner) {
    /* The box is still reachable from the Lua side only if it is in the registry's weak
     * table: keep one per connection there, so the same object comes back. */
    lua_getfield(L, LUA_REGISTRYINDEX, CONN_MT ".boxes");
    lua_rawgetp(L, -1, c);
    lua_remove(L, -2);
    if (!lua_isnil(L, -1)) return;
    lua_pop(L, 1);
    /* Gone from the weak table but not yet finalized (its memory stays until its __gc has
     * run): it lets go of the connection now. Before, its __gc later took the ownership from
     * the new box, whose pointer then outlived the connection (ASan: use after free in
     * conn_gc at lua_close, found by the memory sweep). */
    *(lasync__handle **)c->h.owner = NULL;
    c->h.owner = NULL;
  }
  lasync__handle_box_new(L, &c->h, CONN_MT);
  lua_getfield(L, LUA_REGISTRYINDEX, CONN_MT ".boxes");
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, c);
  lua_pop(L, 1);
}

static conn *check_conn(lua_State *L, const char *fname) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, CONN_MT);
  if (box == NULL) lasync__argerror(L, 1, fname, "self", CONN_MT);
  if (*box == NULL) {
    lasync__push_error(L, "closed", "the connection is closed");
    lua_error(L);
  }
  return (conn *)*box;
}

/* conn:head() -> method, target, minor version, keep_alive, {name, value, ...}, has_body */
static int conn_head(lua_State *L) {
  conn *c = check_conn(L, "conn:head");
  size_t n;
  const char *base = lasync__buffer_peek(&c->head, &n);
  uint32_t i, from;
  lua_pushstring(L, llhttp_method_name((llhttp_method_t)c->parser.method));
  lua_pushlstring(L, base, c->nspans ? c->spans[0] : 0);
  lua_pushinteger(L, c->version_minor);
  lua_pushboolean(L, c->keep_alive);
  lua_createtable(L, (int)c->nspans, 0);
  from = c->nspans ? c->spans[0] : 0;
  for (i = 1; i < c->nspans; i++) {
    const char *p = base + from;
    size_t len = c->spans[i] - from;
    if (i % 2 == 0) /* a value: llhttp leaves trailing whitespace */
      while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    lua_pushlstring(L, p, len);
    lua_rawseti(L, -2, (lua_Integer)i);
    from = c->spans[i];
  }
  lua_pushboolean(L, !c->msg_done);
  lua_pushinteger(L, c->seq);
  return 7;
}

static int conn_remote(lua_State *L) {
  conn *c = check_conn(L, "conn:remote");
  struct sockaddr_storage ss;
  int len = sizeof ss;
  char ip[64];
  int port;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) return 0;
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
    port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  lua_createtable(L, 0, 2);
  lua_pushstring(L, ip);
  lua_setfield(L, -2, "host");
  lua_pushinteger(L, port);
  lua_setfield(L, -2, "port");
  return 1;
}

static void read_cancel(lasync__task *t, void *data) {
  conn *c = (conn *)data;
  if (c->reader == t) c->reader = NULL;
}

static int read_finish(lua_State *L, lasync__task *t, void *data);
static const lasync__awaitable_ops READ_OPS = {"http.read", read_cancel, read_finish, NULL};

/* Returns the next body bytes, nil at the end, or raises (too large, gone, malformed). */
static int read_step(lua_State *L, lasync__task *t, conn *c) {
  if (c->body.len) {
    size_t n;
    const char *p = lasync__buffer_peek(&c->body, &n);
    lua_pushlstring(L, p, n);
    lasync__buffer_consume(&c->body, n);
    return 1;
  }
  if (c->refusal) {
    if (c->refusal == 413) {
      lasync__push_error(L, "too_large", "the request body is larger than max_body");
      lua_pushinteger(L, 413);
      lua_setfield(L, -2, "status");
    } else {
      lasync__push_error(L, "bad_request", "malformed request body");
      lua_pushinteger(L, c->refusal);
      lua_setfield(L, -2, "status");
    }
    return lua_error(L);
  }
  if (c->msg_done) return 0;
  if (c->gone || c->eof || c->h.closing) {
    lasync__push_error(L, "closed", "the client closed the connection before the body ended");
    return lua_error(L);
  }
  if (c->expect_continue && !c->sent_continue) {
    static char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init(cont, sizeof cont - 1);
    c->sent_continue = 1;
    send_bufs(c, &b, 1);
  }
  if (c->in.len) {
    parse_buffered(c);
    if (c->body.len || c->msg_done || c->refusal) return read_step(L, t, c);
  }
  if (c->reader != NULL && c->reader != t)
    return lasync__misuse(L, "req:read: another task is already reading this request's body");
  start_reading(c);
  c->reader = t;
  return lasync__suspend(L, t, &READ_OPS, c);
}

static int read_finish(lua_State *L, lasync__task *t, void *data) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  (void)data;
  if (box == NULL || *box == NULL) {
    lasync__push_error(L, "closed", "the connection is closed");
    return lua_error(L);
  }
  return read_step(L, t, (conn *)*box);
}

/* conn:read() -> bytes of the body, or nil at its end */
static int conn_read(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "req:read");
  conn *c = check_conn(L, "req:read");
  lua_settop(L, 1);
  return read_step(L, t, c);
}

static int check_token(const char *s, size_t n) {
  size_t i;
  if (n == 0) return 0;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= 32 || ch >= 127 || strchr("()<>@,;:\\\"/[]?={}", ch)) return 0;
  }
  return 1;
}

static int check_value(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
  return 1;
}

/* conn:respond(status, {name, value, ...}, body|nil, mode) where mode is "full" (the body is
 * the whole of it), "head" (HEAD: the body's length, no body), "stream" (chunked, or
 * close-delimited for HTTP/1.0), or "none" (204/304: no body, no length). Returns whether the
 * connection stays open afterwards. */
static int conn_respond(lua_State *L) {
  conn *c = check_conn(L, "res:respond");
  int status = (int)luaL_checkinteger(L, 2);
  size_t blen = 0, nh, i;
  const char *body = lua_tolstring(L, 4, &blen);
  const char *mode = luaL_checkstring(L, 5);
  luaL_Buffer b;
  size_t dlen;
  const char *date;
  int has_date = 0, has_ct = 0, said_close = 0, stream = strcmp(mode, "stream") == 0;
  luaL_checktype(L, 3, LUA_TTABLE);
  nh = lua_rawlen(L, 3);
  if (c->sv->closing) c->keep_alive = 0;
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "HTTP/1.1 %d %s\r\n", status, reason(status));
  luaL_addvalue(&b);
  for (i = 1; i + 1 <= nh; i += 2) {
    size_t kn, vn;
    const char *k, *v;
    lua_rawgeti(L, 3, (lua_Integer)i);
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    k = lua_tolstring(L, -2, &kn);
    v = lua_tolstring(L, -1, &vn);
    if (k == NULL || !check_token(k, kn))
      return lasync__misuse(L, "res:header: bad header name '%s'", k ? k : "?");
    if (v == NULL || !check_value(v, vn))
      return lasync__misuse(L, "res:header: CR, LF or NUL in the value of '%s'", k);
    if (kn == 4 && strncasecmp(k, "date", 4) == 0) has_date = 1;
    if (kn == 12 && strncasecmp(k, "content-type", 12) == 0) has_ct = 1;
    if (kn == 10 && strncasecmp(k, "connection", 10) == 0 && strncasecmp(v, "close", 5) == 0)
      c->keep_alive = 0, said_close = 1;
    lua_pop(L, 2);
    lua_rawgeti(L, 3, (lua_Integer)i);
    luaL_addvalue(&b);
    luaL_addlstring(&b, ": ", 2);
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    luaL_addvalue(&b);
    luaL_addlstring(&b, "\r\n", 2);
  }
  (void)has_ct;
  if (!has_date) {
    date = date_line(&dlen);
    luaL_addlstring(&b, date, dlen);
  }
  if (stream) {
    if (c->version_minor >= 1) {
      luaL_addstring(&b, "Transfer-Encoding: chunked\r\n");
      c->skip_body = 0;
    } else {
      c->keep_alive = 0; /* an HTTP/1.0 body of unknown length ends with the connection */
    }
  } else if (strcmp(mode, "none") != 0) {
    lua_pushfstring(L, "Content-Length: %I\r\n", (lua_Integer)blen);
    luaL_addvalue(&b);
  }
  if (!c->msg_done && c->head_done && !c->in.len && c->body_total == 0 && !c->sent_continue &&
      c->expect_continue) {
    /* The body was never asked for: the client waits for 100 before sending it. */
    c->keep_alive = 0;
  }
  if (!c->keep_alive && !said_close)
    luaL_addstring(&b, "Connection: close\r\n");
  else if (c->version_minor == 0)
    luaL_addstring(&b, "Connection: keep-alive\r\n");
  luaL_addlstring(&b, "\r\n", 2);
  luaL_pushresult(&b);
  {
    uv_buf_t bufs[2];
    size_t hlen;
    const char *h = lua_tolstring(L, -1, &hlen);
    unsigned n = 1;
    bufs[0] = uv_buf_init((char *)h, (unsigned)hlen);
    if (body && blen && strcmp(mode, "full") == 0) bufs[n++] = uv_buf_init((char *)body, blen);
    send_bufs(c, bufs, n);
  }
  lua_pushboolean(L, stream && c->version_minor >= 1);
  return 1;
}

static void write_cancel(lasync__task *t, void *data) {
  conn *c = (conn *)data;
  if (c->writer == t) c->writer = NULL;
}

static int write_finish(lua_State *L, lasync__task *t, void *data) { return 0; }
static const lasync__awaitable_ops WRITE_OPS = {"http.write", write_cancel, write_finish, NULL};

/* conn:write(chunk, chunked): sends a piece of a streamed body; suspends under backpressure.
 * Raises kind "closed" once the client has gone. */
static int conn_write(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "res:write");
  conn *c = check_conn(L, "res:write");
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int chunked = lua_toboolean(L, 3);
  char size[24];
  uv_buf_t bufs[3];
  unsigned n = 0;
  if (c->gone || c->shut) {
    lasync__push_error(L, "closed", "the client closed the connection");
    return lua_error(L);
  }
  if (c->writer != NULL && c->writer != t)
    return lasync__misuse(L, "res:write: another task is already writing this response");
  if (len == 0) return 0;
  if (chunked) {
    int k = snprintf(size, sizeof size, "%zx\r\n", len);
    bufs[n++] = uv_buf_init(size, (unsigned)k);
  }
  bufs[n++] = uv_buf_init((char *)data, (unsigned)len);
  if (chunked) bufs[n++] = uv_buf_init("\r\n", 2);
  if (send_bufs(c, bufs, n) != 0) {
    lasync__push_error(L, "closed", "the client closed the connection");
    return lua_error(L);
  }
  if (c->queued > WRITE_HWM) {
    c->writer = t;
    return lasync__suspend(L, t, &WRITE_OPS, c);
  }
  return 0;
}

/* conn:finish(chunked, ok): the response is complete (ok) or abandoned (not ok: the connection
 * is aborted so the client sees a truncated response). The next pipelined request, if any, is
 * parsed now. */
static int conn_finish(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, CONN_MT);
  conn *c;
  int chunked = lua_toboolean(L, 2), ok = lua_toboolean(L, 3);
  if (box == NULL) return lasync__argerror(L, 1, "conn:finish", NULL, CONN_MT);
  c = (conn *)*box;
  if (c == NULL) return 0;
  if (!ok || c->gone) {
    c->busy = 0;
    lasync__handle_close(&c->h);
    return 0;
  }
  if (chunked) {
    uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
    send_bufs(c, &b, 1);
  }
  if (!c->msg_done && !c->refusal && !c->eof) {
    /* The handler left the body unread: what has arrived is skipped; more than that is not
     * waited for, the connection closes instead. The request is still busy meanwhile: the
     * body's end must not read as a new request's head (it would run the handler again), and
     * a malformed rest closes the connection rather than answering after the response. */
    c->skip_body = 1;
    if (c->in.len) parse_buffered(c);
    if (c->h.closing) {
      c->busy = 0;
      return 0;
    }
  }
  c->busy = 0;
  if (!c->msg_done) c->keep_alive = 0;
  if (c->refusal) c->keep_alive = 0;
  if (!c->keep_alive || c->sv->closing || c->eof) {
    close_after_flush(c);
    return 0;
  }
  /* Back to reading: the idle timer runs until the next request begins. */
  c->head_done = 0;
  c->msg_done = 0;
  c->skip_body = 0;
  arm(c, T_IDLE, c->sv->lim.idle_timeout);
  if (c->queued > WRITE_HWM) {
    /* A client that pipelines requests and reads no responses would have them queue here
     * without bound: the next request waits until the responses drain (on_written). */
    c->draining = 1;
    return 0;
  }
  next_request(c);
  return 0;
}

/* conn:unserved(seq, begun) -> whether it did anything: the task of request seq ended without
 * finishing it (a memory error at the cap ended it, or it was cancelled before it started).
 * Answers 503, or cuts the connection if the response had begun. The callers are Lua tasks
 * that a memory error may end between any two steps, so this allocates nothing in Lua, they
 * call it before they unlist the request, and it does nothing once the request is finished
 * (the connection may be serving the next one by then): a second call, after a death in
 * between, is harmless. */
static int conn_unserved(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, CONN_MT);
  lua_Integer seq;
  int begun = lua_toboolean(L, 3);
  conn *c;
  if (box == NULL) return lasync__argerror(L, 1, "conn:unserved", NULL, CONN_MT);
  seq = luaL_checkinteger(L, 2);
  c = (conn *)*box;
  if (c == NULL || !c->busy || (lua_Integer)c->seq != seq) {
    lua_pushboolean(L, 0);
    return 1;
  }
  c->busy = 0;
  c->keep_alive = 0;
  if (begun || c->gone || c->h.closing || c->shut) {
    lasync__handle_close(&c->h);
  } else {
    char out[256];
    uv_buf_t b = error_response(out, sizeof out, 503, c->parser.method == HTTP_HEAD);
    if (send_bufs(c, &b, 1) == 0)
      close_after_flush(c);
    else
      lasync__handle_close(&c->h);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:sent_head(): nothing; kept in Lua. conn:abort(): closes at once. */
static int conn_abort(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, CONN_MT);
  if (box == NULL) return lasync__argerror(L, 1, "conn:abort", NULL, CONN_MT);
  if (*box) {
    ((conn *)*box)->busy = 0;
    lasync__handle_close(*box);
  }
  return 0;
}

void lasync__open_server(lua_State *L) {
  static const luaL_Reg srv_methods[] = {{"port", srv_port},
                                         {"next", srv_next},
                                         {"stop", srv_stop},
                                         {"close_all", srv_close_all},
                                         {"connections", srv_connections},
                                         {NULL, NULL}};
  static const luaL_Reg conn_methods[] = {
      {"head", conn_head},       {"remote", conn_remote},     {"read", conn_read},
      {"respond", conn_respond}, {"write", conn_write},       {"finish", conn_finish},
      {"abort", conn_abort},     {"unserved", conn_unserved}, {NULL, NULL}};
  luaL_newmetatable(L, SERVER_MT);
  luaL_newlib(L, srv_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, srv_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, CONN_MT);
  luaL_newlib(L, conn_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, conn_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lasync__push_weak_table(L, "v"); /* conn -> box, weak: the same object while Lua holds it */
  lua_setfield(L, LUA_REGISTRYINDEX, CONN_MT ".boxes");
  lua_pushcfunction(L, l_listen);
  lua_setfield(L, -2, "_http_listen");
  lasync__open_static(L);
}
