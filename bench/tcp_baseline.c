/* The plain-C baseline for bench/tcp.lua: the same two TCP workloads written directly against
 * libuv, server and clients in one process and one loop, as the lasync side runs them.
 *
 *   tcp_baseline pingpong CONNS ROUNDS SIZE  CONNS clients each send a SIZE-byte message and
 *                                            wait for the server's echo, ROUNDS times.
 *   tcp_baseline bulk BYTES CHUNK            one client writes BYTES in CHUNK-byte writes (at
 *                                            most 4 queued) and half-closes; the server counts
 *                                            what it reads until the end.
 *
 * Prints `wall=<seconds>` from before the first connect to after the last byte is accounted
 * for. Exit status 1 if a check fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

static uv_loop_t *loop;
static uv_tcp_t server;
static char slab[64 * 1024];
static int port;

static void die(const char *what, int err) {
  fprintf(stderr, "tcp_baseline: %s: %s\n", what, err ? uv_strerror(err) : "failed");
  exit(1);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = slab;
  buf->len = sizeof slab;
}

static void on_closed(uv_handle_t *h) { free(h); }

/* ---- ping-pong ---- */

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  char msg[256];
  size_t got; /* bytes of the current message received */
  int rounds; /* left, for a client */
  int client;
} conn;

static size_t msg_size;
static int rounds_total, clients_done, nconns;

static void send_msg(conn *c);

static void on_write(uv_write_t *w, int status) {
  if (status < 0) die("write", status);
  (void)w;
}

static void send_msg(conn *c) {
  uv_buf_t b = uv_buf_init(c->msg, (unsigned int)msg_size);
  int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* as lasync's write does first */
  if (n == (int)msg_size) return;
  if (n > 0) {
    b.base += n;
    b.len -= (size_t)n;
  }
  if ((n = uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_write)) != 0) die("write", n);
}

static void on_pp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)s;
  if (nread < 0) {
    if (nread != UV_EOF) die("read", (int)nread);
    uv_close((uv_handle_t *)s, on_closed);
    return;
  }
  memcpy(c->msg + c->got, buf->base, (size_t)nread); /* one message in flight at a time */
  c->got += (size_t)nread;
  if (c->got < msg_size) return;
  c->got = 0;
  if (!c->client) {
    send_msg(c);
  } else if (--c->rounds > 0) {
    send_msg(c);
  } else {
    clients_done++;
    uv_close((uv_handle_t *)s, on_closed);
    if (clients_done == nconns) uv_close((uv_handle_t *)&server, NULL);
  }
}

static void on_pp_connection(uv_stream_t *srv, int status) {
  conn *c;
  if (status < 0) die("accept", status);
  c = (conn *)calloc(1, sizeof *c);
  uv_tcp_init(loop, &c->tcp);
  if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) die("accept", 0);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_pp_read);
}

static void on_pp_connect(uv_connect_t *req, int status) {
  conn *c = (conn *)req->data;
  if (status < 0) die("connect", status);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_pp_read);
  send_msg(c);
}

/* ---- bulk ---- */

static uint64_t bulk_total, bulk_sent, bulk_received;
static size_t chunk_size;
static char *chunk;
static int inflight;
static uv_tcp_t bulk_client;
static uv_connect_t bulk_connect;
static uv_shutdown_t bulk_shutdown;

static void pump(void);

static void on_bulk_write(uv_write_t *w, int status) {
  if (status < 0) die("write", status);
  free(w);
  inflight--;
  pump();
}

static void on_bulk_shutdown(uv_shutdown_t *sh, int status) {
  (void)sh;
  if (status < 0) die("shutdown", status);
}

static void pump(void) {
  while (inflight < 4 && bulk_sent < bulk_total) {
    uv_write_t *w = (uv_write_t *)malloc(sizeof *w);
    uv_buf_t b = uv_buf_init(chunk, (unsigned int)chunk_size);
    int err = uv_write(w, (uv_stream_t *)&bulk_client, &b, 1, on_bulk_write);
    if (err) die("write", err);
    inflight++;
    bulk_sent += chunk_size;
  }
  if (bulk_sent >= bulk_total && inflight == 0 && bulk_shutdown.handle == NULL)
    uv_shutdown(&bulk_shutdown, (uv_stream_t *)&bulk_client, on_bulk_shutdown);
}

static void on_bulk_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  if (nread > 0) {
    bulk_received += (uint64_t)nread;
  } else if (nread < 0) {
    if (nread != UV_EOF) die("read", (int)nread);
    uv_close((uv_handle_t *)s, on_closed);
    uv_close((uv_handle_t *)&bulk_client, NULL);
    uv_close((uv_handle_t *)&server, NULL);
  }
}

static void on_bulk_connection(uv_stream_t *srv, int status) {
  uv_tcp_t *c;
  if (status < 0) die("accept", status);
  c = (uv_tcp_t *)malloc(sizeof *c);
  uv_tcp_init(loop, c);
  if (uv_accept(srv, (uv_stream_t *)c) != 0) die("accept", 0);
  uv_read_start((uv_stream_t *)c, on_alloc, on_bulk_read);
}

static void on_bulk_connect(uv_connect_t *req, int status) {
  (void)req;
  if (status < 0) die("connect", status);
  uv_tcp_nodelay(&bulk_client, 1);
  pump();
}

static void listen_on(uv_connection_cb cb) {
  struct sockaddr_in a;
  int len = sizeof a, err;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(loop, &server);
  if ((err = uv_tcp_bind(&server, (const struct sockaddr *)&a, 0)) != 0) die("bind", err);
  if ((err = uv_listen((uv_stream_t *)&server, 511, cb)) != 0) die("listen", err);
  uv_tcp_getsockname(&server, (struct sockaddr *)&a, &len);
  port = ntohs(a.sin_port);
}

int main(int argc, char **argv) {
  struct sockaddr_in a;
  uint64_t t0;
  loop = uv_default_loop();
  if (argc == 5 && strcmp(argv[1], "pingpong") == 0) {
    int i;
    nconns = atoi(argv[2]);
    rounds_total = atoi(argv[3]);
    msg_size = (size_t)atoi(argv[4]);
    if (nconns < 1 || rounds_total < 1 || msg_size < 1 || msg_size > 256) die("usage", 0);
    listen_on(on_pp_connection);
    uv_ip4_addr("127.0.0.1", port, &a);
    t0 = uv_hrtime();
    for (i = 0; i < nconns; i++) {
      conn *c = (conn *)calloc(1, sizeof *c);
      c->client = 1;
      c->rounds = rounds_total;
      memset(c->msg, 'p', msg_size);
      uv_tcp_init(loop, &c->tcp);
      c->connect.data = c;
      uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&a, on_pp_connect);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    if (clients_done != nconns) die("not every client finished", 0);
  } else if (argc == 4 && strcmp(argv[1], "bulk") == 0) {
    bulk_total = strtoull(argv[2], NULL, 10);
    chunk_size = (size_t)atoi(argv[3]);
    if (bulk_total == 0 || chunk_size == 0 || bulk_total % chunk_size) die("usage", 0);
    chunk = (char *)malloc(chunk_size);
    memset(chunk, 'b', chunk_size);
    listen_on(on_bulk_connection);
    uv_ip4_addr("127.0.0.1", port, &a);
    t0 = uv_hrtime();
    uv_tcp_init(loop, &bulk_client);
    uv_tcp_connect(&bulk_connect, &bulk_client, (const struct sockaddr *)&a, on_bulk_connect);
    uv_run(loop, UV_RUN_DEFAULT);
    if (bulk_received != bulk_total) die("bytes lost", 0);
  } else {
    fprintf(stderr, "usage: tcp_baseline pingpong CONNS ROUNDS SIZE | bulk BYTES CHUNK\n");
    return 1;
  }
  printf("wall=%.6f\n", (double)(uv_hrtime() - t0) / 1e9);
  return 0;
}
