/* The plain-C baseline for bench/fetch.lua: the same HTTP workloads written directly against
 * libcurl's multi interface driven by libuv, with no Lua, so bench/run can report how far
 * async.fetch is from the floor.
 *
 *   fetch_baseline json URL N INFLIGHT [BYTES]   N GETs of URL, INFLIGHT at a time: a finished
 *                                                transfer starts the next one
 *   fetch_baseline delay URL N [BYTES]           N GETs of URL, all started at once
 *
 * Every response must be a 200 whose body is BYTES long (when given) or, without BYTES, as long
 * as the first one's and not empty. Prints `wall=<seconds>`, measured with uv_hrtime from before
 * the first transfer is added to after the last one is read (the span bench/fetch.lua measures);
 * the multi's cleanup comes after it. Exit status 1 on misuse, on a failed transfer or a wrong
 * response.
 *
 * The plumbing is the one curl's docs/examples/multi-uv.c describes and bindings/http.c uses:
 * curl's socket callback starts or stops one uv_poll per socket, its timer callback arms one
 * uv_timer; libuv's callbacks call curl_multi_socket_action, and finished transfers are read
 * with curl_multi_info_read afterwards. For a fair floor each transfer does the curl work an
 * async.fetch with default options does (see setup() in bindings/http.c): a fresh easy handle
 * with the same options, the body and the header lines collected in memory, the same
 * curl_easy_getinfo calls when it ends, then curl_easy_cleanup. Connections are kept alive in
 * the multi's pool, as lasync's are. What it leaves out is lasync's own work: no Lua, no tasks,
 * no Response objects. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <uv.h>

#define USER_AGENT "lasync/0.1.0" /* what lasync sends by default */
#define MAX_BODY ((curl_off_t)64 * 1024 * 1024)

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) {
    fprintf(stderr, "fetch_baseline: out of memory\n");
    exit(1);
  }
  return p;
}

/* ---- state ------------------------------------------------------------------------------ */

typedef struct {
  char *data;
  size_t len, cap;
} buffer;

typedef struct {
  CURL *easy;
  buffer body, head;
  char errbuf[CURL_ERROR_SIZE];
} xfer;

typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
} sock;

static uv_loop_t *loop;
static CURLM *multi;
static uv_timer_t timer;
static const char *url;
static size_t total, started, finished, failures;
static long expect_bytes = -1; /* -1: the first body's length */
static size_t open_socks;

/* ---- the easy handle's callbacks -------------------------------------------------------- */

static int buffer_add(buffer *b, const char *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

static size_t on_body(char *p, size_t size, size_t n, void *userp) {
  xfer *x = userp;
  n *= size;
  if ((curl_off_t)(x->body.len + n) > MAX_BODY) return 0;
  return buffer_add(&x->body, p, n) == 0 ? n : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *userp) {
  xfer *x = userp;
  n *= size;
  if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) x->head.len = 0; /* a new response starts */
  return buffer_add(&x->head, p, n) == 0 ? n : 0;
}

/* ---- transfers -------------------------------------------------------------------------- */

/* Adds one transfer to the multi; curl's timer callback starts it from the loop. */
static void start_transfer(void) {
  xfer *x = calloc(1, sizeof *x);
  if (!x || !(x->easy = curl_easy_init())) {
    fprintf(stderr, "fetch_baseline: cannot make a transfer\n");
    exit(1);
  }
  CURL *e = x->easy;
  /* The options bindings/http/client.c sets for async.fetch(url) with the defaults of
   * lua/http/options.lua. */
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 0L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 0L);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, MAX_BODY);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_USERAGENT, USER_AGENT);
  if (curl_multi_add_handle(multi, e) != CURLM_OK) {
    fprintf(stderr, "fetch_baseline: cannot add a transfer\n");
    exit(1);
  }
  started++;
}

/* A finished transfer: check it, read what async.fetch reads, free it. */
static void finish_transfer(xfer *x, CURLcode result) {
  const char *effective = NULL;
  long status = 0, redirects = 0, version = 0;
  curl_off_t t;
  curl_multi_remove_handle(multi, x->easy);
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &effective);
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_COUNT, &redirects);
  curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(x->easy, CURLINFO_NAMELOOKUP_TIME_T, &t);
  curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &t);
  curl_easy_getinfo(x->easy, CURLINFO_APPCONNECT_TIME_T, &t);
  curl_easy_getinfo(x->easy, CURLINFO_STARTTRANSFER_TIME_T, &t);
  curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME_T, &t);
  if (result != CURLE_OK) {
    if (failures++ < 5)
      fprintf(stderr, "fetch_baseline: %s: %s\n", effective ? effective : url,
              x->errbuf[0] ? x->errbuf : curl_easy_strerror(result));
  } else if (status != 200 || x->body.len == 0 ||
             (expect_bytes >= 0 && x->body.len != (size_t)expect_bytes)) {
    if (failures++ < 5)
      fprintf(stderr, "fetch_baseline: %s: status %ld, %zu body bytes (expected 200, %ld)\n",
              effective ? effective : url, status, x->body.len, expect_bytes);
  } else if (expect_bytes < 0) {
    expect_bytes = (long)x->body.len; /* the first good body sets the length */
  }
  finished++;
  curl_easy_cleanup(x->easy);
  free(x->body.data);
  free(x->head.data);
  free(x);
}

/* Runs after curl_multi_socket_action, outside curl's callbacks: reads the finished
 * transfers and keeps the pipeline full. */
static void check_multi_info(void) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(multi, &pending)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    xfer *x = NULL;
    CURLcode result = msg->data.result; /* msg dies with the handle's removal */
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    finish_transfer(x, result);
    if (started < total) start_transfer();
  }
  if (finished == total) uv_timer_stop(&timer);
}

/* ---- the multi, driven by libuv --------------------------------------------------------- */

static void on_poll(uv_poll_t *handle, int status, int events) {
  sock *s = handle->data;
  int running, flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(multi, s->fd, flags, &running); /* may close s */
  check_multi_info();
}

static void on_timeout(uv_timer_t *handle) {
  int running;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info();
}

static void on_sock_closed(uv_handle_t *handle) {
  free(handle->data);
  open_socks--;
}

static int on_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  sock *s = socketp;
  if (action == CURL_POLL_REMOVE) {
    if (s) {
      curl_multi_assign(multi, fd, NULL);
      uv_close((uv_handle_t *)&s->poll, on_sock_closed);
    }
    return 0;
  }
  if (!s) {
    s = xmalloc(sizeof *s);
    if (uv_poll_init_socket(loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->poll.data = s;
    open_socks++;
    curl_multi_assign(multi, fd, s);
  }
  int events = 0;
  if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) events |= UV_READABLE;
  if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) events |= UV_WRITABLE;
  if (events)
    uv_poll_start(&s->poll, events, on_poll);
  else
    uv_poll_stop(&s->poll);
  return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp) {
  if (timeout_ms < 0)
    uv_timer_stop(&timer);
  else
    uv_timer_start(&timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- main ------------------------------------------------------------------------------- */

static int parse_count(const char *s, const char *what, size_t *out) {
  char *end;
  unsigned long long n = strtoull(s, &end, 10);
  if (*s == '\0' || *end != '\0' || n == 0) {
    fprintf(stderr, "fetch_baseline: %s must be a positive integer, got '%s'\n", what, s);
    return -1;
  }
  *out = (size_t)n;
  return 0;
}

static int usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s json URL N INFLIGHT [BYTES]\n"
          "       %s delay URL N [BYTES]\n",
          argv0, argv0);
  return 1;
}

int main(int argc, char **argv) {
  size_t inflight = 0, bytes = 0;
  int is_json = argc >= 2 && strcmp(argv[1], "json") == 0;
  int is_delay = argc >= 2 && strcmp(argv[1], "delay") == 0;
  int nargs = is_json ? 5 : 4;
  if (!(is_json || is_delay) || argc < nargs || argc > nargs + 1) return usage(argv[0]);
  url = argv[2];
  if (parse_count(argv[3], "N", &total) != 0) return 1;
  if (is_json && parse_count(argv[4], "INFLIGHT", &inflight) != 0) return 1;
  if (argc == nargs + 1) {
    if (parse_count(argv[nargs], "BYTES", &bytes) != 0) return 1;
    expect_bytes = (long)bytes;
  }
  if (is_delay || inflight > total) inflight = total; /* delay: every request at once */

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "fetch_baseline: cannot initialise libcurl\n");
    return 1;
  }
  loop = uv_default_loop();
  multi = curl_multi_init();
  uv_timer_init(loop, &timer);
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);

  uint64_t t0 = uv_hrtime();
  uv_update_time(loop);
  for (size_t i = 0; i < inflight; i++) start_transfer();
  /* Runs until every transfer is in: the idle connections' polls are stopped by then, and
   * the timer stopped by check_multi_info. */
  while (finished < total) {
    if (uv_run(loop, UV_RUN_ONCE) == 0 && finished < total) {
      fprintf(stderr, "fetch_baseline: the loop ran dry with %zu of %zu done\n", finished, total);
      return 1;
    }
  }
  uint64_t t1 = uv_hrtime();

  curl_multi_cleanup(multi); /* closes the pooled connections; their polls go too */
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  curl_global_cleanup();
  int rc = 0;
  if (open_socks != 0) {
    fprintf(stderr, "fetch_baseline: %zu socket poll(s) left open\n", open_socks);
    rc = 1;
  }
  if (uv_loop_close(loop) != 0) {
    fprintf(stderr, "fetch_baseline: the loop still has open handles\n");
    rc = 1;
  }
  if (failures) {
    fprintf(stderr, "fetch_baseline: %zu of %zu responses failed\n", failures, total);
    return 1;
  }
  printf("wall=%.6f\n", (double)(t1 - t0) / 1e9);
  return rc;
}
