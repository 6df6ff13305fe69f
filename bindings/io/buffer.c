/* A growable byte buffer: bytes are appended at the tail and consumed from the head, without
 * Lua, so libuv and curl callbacks can fill it. A zeroed struct is an empty buffer without a
 * limit; nothing is allocated until the first byte arrives.
 *
 * Consumed bytes are not moved at once: the head advances, and the unread bytes move to the
 * front only when the tail needs the room, so reading a large buffer in small pieces stays
 * linear. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

/* Small first: with ten thousand transfers or connections open, a page per buffer is 80 MB of
 * mostly empty memory for bodies like "ok". Doubling keeps large bodies cheap. */
#define FIRST_CAP 512

int lasync__buffer_reserve(lasync__buffer *b, size_t n) {
  size_t cap;
  char *data;
  if (b->max && (n > b->max || b->len > b->max - n)) return UV_ENOBUFS;
  if (n <= b->cap - b->start - b->len) return 0; /* room at the tail already */
  /* No object may exceed PTRDIFF_MAX bytes; refusing here also keeps the doubling below from
   * overflowing, and a request that large from never reaching the allocator. */
  if (n > (size_t)PTRDIFF_MAX - b->len) return UV_ENOMEM;
  if (b->start > 0 && b->len + n <= b->cap) {
    /* Room enough once the unread bytes move to the front. */
    memmove(b->data, b->data + b->start, b->len);
    b->start = 0;
    return 0;
  }
  cap = b->cap ? b->cap : FIRST_CAP;
  while (cap < b->len + n) {
    if (cap > (size_t)PTRDIFF_MAX / 2) {
      cap = b->len + n;
      break;
    }
    cap *= 2;
  }
  if (b->start > 0) { /* a fresh block: copy only the unread bytes */
    data = (char *)malloc(cap);
    if (data == NULL) return UV_ENOMEM;
    if (b->len) memcpy(data, b->data + b->start, b->len);
    free(b->data);
    b->start = 0;
  } else {
    data = (char *)realloc(b->data, cap);
    if (data == NULL) return UV_ENOMEM;
  }
  b->data = data;
  b->cap = cap;
  return 0;
}

int lasync__buffer_append(lasync__buffer *b, const char *p, size_t n) {
  int err;
  /* memcpy(NULL + 0, p, 0) is undefined behaviour: an empty chunk is a no-op. */
  if (n == 0) return 0;
  if ((err = lasync__buffer_reserve(b, n)) != 0) return err;
  memcpy(b->data + b->start + b->len, p, n);
  b->len += n;
  return 0;
}

char *lasync__buffer_tail(lasync__buffer *b, size_t *room) {
  *room = b->cap - b->start - b->len;
  return b->data ? b->data + b->start + b->len : NULL;
}

void lasync__buffer_commit(lasync__buffer *b, size_t n) {
  size_t room = b->cap - b->start - b->len;
  b->len += n < room ? n : room;
}

const char *lasync__buffer_peek(const lasync__buffer *b, size_t *len) {
  *len = b->len;
  return b->len ? b->data + b->start : "";
}

void lasync__buffer_consume(lasync__buffer *b, size_t n) {
  if (n >= b->len) {
    b->start = b->len = 0;
    return;
  }
  b->start += n;
  b->len -= n;
}

void lasync__buffer_free(lasync__buffer *b) {
  free(b->data);
  b->data = NULL;
  b->start = b->len = b->cap = 0;
}
