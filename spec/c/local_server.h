/* A tiny HTTP server on 127.0.0.1 for the C tests: a thread answering every request with
 * "hello" and closing. start_server() sets server_url; stop_server() ends the thread. */
#ifndef LASYNC_TEST_LOCAL_SERVER_H
#define LASYNC_TEST_LOCAL_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

static int listener = -1;
static char server_url[64];

static void serve(void *arg) {
  static const char reply[] =
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
  (void)arg;
  for (;;) {
    char buf[4096];
    size_t got = 0;
    int c = accept(listener, NULL, NULL);
    if (c < 0) return; /* the listener was shut down: the sweep is over */
    while (got < sizeof buf - 1) { /* read the request head */
      ssize_t r = recv(c, buf + got, sizeof buf - 1 - got, 0);
      if (r <= 0) break;
      got += (size_t)r;
      buf[got] = '\0';
      if (strstr(buf, "\r\n\r\n")) break;
    }
    if (send(c, reply, sizeof reply - 1, MSG_NOSIGNAL) < 0) { /* the client gave up */ }
    close(c);
  }
}

static void start_server(uv_thread_t *thread) {
  struct sockaddr_in addr;
  socklen_t len = sizeof addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  listener = socket(AF_INET, SOCK_STREAM, 0);
  if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
      listen(listener, 64) != 0 || getsockname(listener, (struct sockaddr *)&addr, &len) != 0) {
    perror("alloc_sweep: local server");
    exit(2);
  }
  snprintf(server_url, sizeof server_url, "http://127.0.0.1:%d/", ntohs(addr.sin_port));
  uv_thread_create(thread, serve, NULL);
}

static void stop_server(uv_thread_t *thread) {
  shutdown(listener, SHUT_RDWR);
  close(listener);
  uv_thread_join(thread);
}

#endif
