/* fuzz_response: the fuzzer's bytes are a raw HTTP response, served from a local socket to
 * async.fetch run through the embedding API.
 *
 * A server thread listens on 127.0.0.1 (a free port, picked once). For every connection it
 * reads the request (up to the blank line, or 64 KiB, or 1 s), writes the current input and
 * closes. Each input runs in a fresh runtime: lasync_new, lasync_spawn_string of SCRIPT,
 * lasync_run, lasync_destroy. The script fetches with {timeout = 2, max_body = 65536} and
 * reads every field of the Response (headers are parsed lazily, so reading them is part of
 * the test); it raises — and this harness aborts — unless fetch returned a Response or raised
 * a lasync.Error. ASan/UBSan catch memory errors, LeakSanitizer leaks, -timeout hangs.
 *
 * Nothing leaves 127.0.0.1: the fetch goes through `proxy = <this server>`, so a redirect to
 * any other host (or an https URL, by CONNECT) reaches this same server and never the
 * network, and curl resolves no host name.
 *
 * Build: fuzz/build.sh. Run: build-fuzz/fuzz_response fuzz/corpus/fuzz_response
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lasync.h"

static int listen_fd = -1;
static int port;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *current;    /* a copy of the input being run (owned here) */
static size_t current_size;
static char script[4096];

static const char SCRIPT_FMT[] =
    "local async = require 'lasync'\n"
    "local url = 'http://127.0.0.1:%d/fuzz'\n"
    "local opts = {timeout = 2, max_body = 65536, proxy = 'http://127.0.0.1:%d'}\n"
    "local ERR = getmetatable(async.error('x', 'y'))\n"
    "local ok, r = pcall(async.fetch, url, opts)\n"
    "if ok then\n"
    "  assert(getmetatable(r) ~= ERR, 'fetch returned an error object')\n"
    "  assert(math.type(r.status) == 'integer', 'status is not an integer')\n"
    "  assert(type(r.ok) == 'boolean')\n"
    "  assert(type(r.body) == 'string' and #r.body <= 65536, 'body missing or over max_body')\n"
    "  assert(type(r.url) == 'string')\n"
    "  local h = r.headers\n"
    "  assert(type(h) == 'table')\n"
    "  local _ = h['content-type'], h['Content-Length'], h['set-cookie']\n"
    "  for _, kv in ipairs(r.headers_list) do\n"
    "    assert(type(kv[1]) == 'string' and type(kv[2]) == 'string')\n"
    "    assert(kv.name == kv[1] and kv.value == kv[2])\n"
    "    r:header_values(kv[1])\n"
    "  end\n"
    "  r:header_values('x-missing')\n"
    "  local t = r.timings\n"
    "  assert(type(t.total) == 'number')\n"
    "  assert(r:text() == r.body)\n"
    "  pcall(r.json, r)\n"
    "  local _ = r.http_version, r.redirects\n"
    "else\n"
    "  assert(getmetatable(r) == ERR, 'fetch raised a non-Error: ' .. tostring(r))\n"
    "  assert(type(r.kind) == 'string' and type(r.message) == 'string', 'error without kind')\n"
    "  local _ = tostring(r)\n"
    "  -- the server's bytes are not an option: with FUZZ_STRICT_KINDS set, kind 'invalid' fails\n"
    "  assert(not %s or r.kind ~= 'invalid', 'kind invalid after I/O: ' .. tostring(r))\n"
    "end\n"
    "return 'ok'\n";

static int read_request(int fd) {
  char buf[4096];
  size_t total = 0, tail = 0;
  char last4[4] = {0};
  struct pollfd p = {.fd = fd, .events = POLLIN};
  while (total < 65536) {
    ssize_t n;
    if (poll(&p, 1, 1000) <= 0) return -1;
    n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return -1;
    total += (size_t)n;
    for (ssize_t i = 0; i < n; i++) { /* look for \r\n\r\n across reads */
      last4[0] = last4[1], last4[1] = last4[2], last4[2] = last4[3], last4[3] = buf[i];
      tail++;
      if (tail >= 4 && memcmp(last4, "\r\n\r\n", 4) == 0) return 0;
    }
  }
  return 0;
}

static void *server(void *arg) {
  (void)arg;
  for (;;) {
    int fd = accept(listen_fd, NULL, NULL);
    uint8_t *data;
    size_t size, off = 0;
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break;
    }
    read_request(fd);
    pthread_mutex_lock(&lock);
    size = current_size;
    data = malloc(size ? size : 1);
    if (data && size) memcpy(data, current, size);
    pthread_mutex_unlock(&lock);
    while (data && off < size) {
      ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += (size_t)n;
    }
    free(data);
    shutdown(fd, SHUT_WR);
    close(fd);
  }
  return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  pthread_t th;
  int one = 1;
  (void)argc, (void)argv;
  listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      listen(listen_fd, 64) != 0 || getsockname(listen_fd, (struct sockaddr *)&a, &len) != 0) {
    perror("fuzz_response: listen on 127.0.0.1");
    abort();
  }
  port = ntohs(a.sin_port);
  snprintf(script, sizeof script, SCRIPT_FMT, port, port, getenv("FUZZ_STRICT_KINDS") ? "true" : "false");
  if (pthread_create(&th, NULL, server, NULL) != 0) abort();
  pthread_detach(th);
  return 0;
}

static void on_error(lasync_runtime *rt, const char *report, void *data) {
  (void)rt, (void)data;
  fprintf(stderr, "fuzz_response: the fetch task failed:\n%s\n", report);
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lasync_runtime *rt;
  lasync_options o;
  lasync_task *t;
  int rc;
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy) return 0;
  memcpy(copy, data, size);
  pthread_mutex_lock(&lock);
  current = copy;
  current_size = size;
  pthread_mutex_unlock(&lock);

  memset(&o, 0, sizeof o);
  o.on_error = on_error;
  if (lasync_new(&rt, &o) != LASYNC_OK) abort();
  if (lasync_spawn_string(rt, script, "=fuzz_response", &t) != LASYNC_OK) {
    fprintf(stderr, "fuzz_response: script: %s\n", lua_tostring(lasync_lua(rt), -1));
    abort();
  }
  rc = lasync_run(rt);
  if (rc != LASYNC_OK) {
    fprintf(stderr, "fuzz_response: lasync_run: %s\n", lasync_strerror(rc));
    abort();
  }
  if (lasync_task_status(t) != LASYNC_TASK_DONE) {
    lua_State *L = lasync_lua(rt);
    int n = lasync_task_result(t, L);
    fprintf(stderr, "fuzz_response: the task did not end with a Response or an Error: %s\n",
            n == LASYNC_ELUA ? luaL_tolstring(L, -1, NULL) : "(no error)");
    abort();
  }
  lasync_task_release(t);
  if (lasync_destroy(rt) != LASYNC_OK) abort();

  pthread_mutex_lock(&lock);
  current = NULL;
  current_size = 0;
  pthread_mutex_unlock(&lock);
  free(copy);
  return 0;
}
