/* bindings/io/buffer.c on its own: growth, consume and compaction, the limit, empty appends
 * (no zero-offset arithmetic on a NULL pointer: run under UBSan) and reading in place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "private.h"

static void test_empty(void) {
  lasync__buffer b;
  size_t len = 99, room = 99;
  memset(&b, 0, sizeof b);
  CHECK(lasync__buffer_append(&b, NULL, 0) == 0); /* the body function that returned "" */
  CHECK(lasync__buffer_append(&b, "", 0) == 0);
  CHECK(b.data == NULL && b.len == 0);
  CHECK(strcmp(lasync__buffer_peek(&b, &len), "") == 0 && len == 0);
  CHECK(lasync__buffer_tail(&b, &room) == NULL && room == 0);
  lasync__buffer_consume(&b, 10);
  lasync__buffer_commit(&b, 10); /* no room: nothing */
  CHECK(b.len == 0);
  lasync__buffer_free(&b);
  lasync__buffer_free(&b); /* twice is fine */
}

static void test_grow_consume(void) {
  lasync__buffer b;
  char chunk[1000], out[100000];
  size_t len, total = 0, read = 0, i;
  const char *p;
  memset(&b, 0, sizeof b);
  for (i = 0; i < 100; i++) {
    memset(chunk, 'a' + (int)(i % 26), sizeof chunk);
    CHECK(lasync__buffer_append(&b, chunk, sizeof chunk) == 0);
    total += sizeof chunk;
    /* Read a bit less than was written each time, so the head moves and compaction runs. */
    p = lasync__buffer_peek(&b, &len);
    CHECK(len == total - read);
    memcpy(out + read, p, 700);
    lasync__buffer_consume(&b, 700);
    read += 700;
  }
  p = lasync__buffer_peek(&b, &len);
  memcpy(out + read, p, len);
  read += len;
  lasync__buffer_consume(&b, len);
  CHECK(read == total && b.len == 0);
  for (i = 0; i < total; i++) {
    if (out[i] != 'a' + (int)((i / sizeof chunk) % 26)) {
      CHECK(!"bytes out of order");
      break;
    }
  }
  CHECK(b.cap < 4 * total); /* compaction kept it from growing with everything ever written */
  lasync__buffer_free(&b);
}

static void test_max(void) {
  lasync__buffer b;
  size_t len;
  memset(&b, 0, sizeof b);
  b.max = 10;
  CHECK(lasync__buffer_append(&b, "0123456789", 10) == 0);
  CHECK(lasync__buffer_append(&b, "x", 1) == UV_ENOBUFS);
  CHECK(b.len == 10); /* unchanged by the refusal */
  lasync__buffer_consume(&b, 4);
  CHECK(lasync__buffer_append(&b, "abcd", 4) == 0); /* the limit is on unread bytes */
  CHECK(memcmp(lasync__buffer_peek(&b, &len), "456789abcd", 10) == 0 && len == 10);
  CHECK(lasync__buffer_reserve(&b, SIZE_MAX) == UV_ENOBUFS);
  lasync__buffer_free(&b);
  CHECK(b.max == 10);
  b.max = 0;
  CHECK(lasync__buffer_reserve(&b, SIZE_MAX) == UV_ENOMEM); /* no overflow, no crash */
  lasync__buffer_free(&b);
}

static void test_tail(void) {
  lasync__buffer b;
  size_t room, len;
  char *t;
  memset(&b, 0, sizeof b);
  CHECK(lasync__buffer_reserve(&b, 64) == 0);
  t = lasync__buffer_tail(&b, &room);
  CHECK(t != NULL && room >= 64);
  memcpy(t, "hello", 5);
  lasync__buffer_commit(&b, 5);
  CHECK(memcmp(lasync__buffer_peek(&b, &len), "hello", 5) == 0 && len == 5);
  lasync__buffer_commit(&b, room + 1000); /* clamped to the room */
  CHECK(b.len == room);
  lasync__buffer_free(&b);
}

int main(void) {
  RUN(test_empty);
  RUN(test_grow_consume);
  RUN(test_max);
  RUN(test_tail);
  return checks_report("buffer_test");
}
