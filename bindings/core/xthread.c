/* The cross-thread queue: other threads post fn(arg) to run on the loop's thread.
 *
 * One uv_async wakes the loop; the queue's state is malloc'd apart from the runtime and
 * reference-counted, so a thread that posts after the runtime has gone (a detached worker, a
 * late resolve) finds a closed queue and a live mutex instead of freed memory. Every post ends
 * in exactly one of its two functions: `run` on the loop's thread, or `drop` (wherever the
 * queue learns it will never run: at shutdown, or at once when posted to a closed queue).
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "private.h"

typedef struct post {
  struct post *next;
  lasync__xthread_fn run;
  lasync__xthread_fn drop;
  void *arg;
} post;

struct lasync__xqueue {
  lasync__service service; /* first: the service is the state */
  lasync__runtime *rt;     /* loop thread only; NULL once closed */
  atomic_long refs;        /* the runtime's (until the async handle has closed) + retainers */
  uv_mutex_t lock;         /* guards the list and closed */
  post *head, *tail;
  int closed;
  long holds;      /* loop thread: expected posts that keep the loop alive */
  uv_async_t async;
};

static void xqueue_close(lasync__runtime *rt, lasync__service *s);
static const lasync__service_ops XQUEUE_SERVICE = {"xthread", NULL, xqueue_close};

void lasync__xqueue_retain(lasync__xqueue *q) { atomic_fetch_add(&q->refs, 1); }

void lasync__xqueue_release(lasync__xqueue *q) {
  if (atomic_fetch_sub(&q->refs, 1) != 1) return;
  uv_mutex_destroy(&q->lock);
  free(q);
}

static post *take_all(lasync__xqueue *q) {
  post *p;
  uv_mutex_lock(&q->lock);
  p = q->head;
  q->head = q->tail = NULL;
  uv_mutex_unlock(&q->lock);
  return p;
}

/* libuv calls this on the loop's thread after another thread posted. */
static void on_async(uv_async_t *handle) {
  lasync__xqueue *q = (lasync__xqueue *)handle->data;
  post *p = take_all(q);
  while (p) {
    post *next = p->next;
    p->run(p->arg);
    free(p);
    p = next;
  }
}

static void on_async_closed(uv_handle_t *handle) {
  lasync__xqueue *q = (lasync__xqueue *)handle->data;
  if (q->rt) q->rt->open_handles--;
  q->rt = NULL;
  lasync__xqueue_release(q); /* the runtime's reference */
}

/* Shutdown: later posts are dropped at once; those still queued are dropped now. */
static void xqueue_close(lasync__runtime *rt, lasync__service *s) {
  lasync__xqueue *q = (lasync__xqueue *)s;
  post *p;
  uv_mutex_lock(&q->lock);
  q->closed = 1;
  p = q->head;
  q->head = q->tail = NULL;
  uv_mutex_unlock(&q->lock);
  while (p) {
    post *next = p->next;
    if (p->drop) p->drop(p->arg);
    free(p);
    p = next;
  }
  rt->open_handles++; /* runtime_close turns the loop until it is back to 0 */
  uv_close((uv_handle_t *)&q->async, on_async_closed);
}

lasync__xqueue *lasync__xqueue_get(lasync__runtime *rt) {
  lasync__xqueue *q = (lasync__xqueue *)lasync__service_find(rt, &XQUEUE_SERVICE);
  if (q || rt->closing) return q;
  q = (lasync__xqueue *)calloc(1, sizeof *q);
  if (q == NULL) return NULL;
  if (uv_mutex_init(&q->lock) != 0) {
    free(q);
    return NULL;
  }
  if (uv_async_init(rt->loop, &q->async, on_async) != 0) {
    uv_mutex_destroy(&q->lock);
    free(q);
    return NULL;
  }
  q->rt = rt;
  atomic_init(&q->refs, 1);
  q->async.data = q;
  uv_unref((uv_handle_t *)&q->async);
  lasync__service_add(rt, &q->service, &XQUEUE_SERVICE);
  return q;
}

int lasync__xqueue_post(lasync__xqueue *q, lasync__xthread_fn run, lasync__xthread_fn drop,
                        void *arg) {
  post *p = (post *)malloc(sizeof *p);
  int err = 0;
  if (p == NULL) {
    if (drop) drop(arg);
    return UV_ENOMEM;
  }
  p->next = NULL;
  p->run = run;
  p->drop = drop;
  p->arg = arg;
  uv_mutex_lock(&q->lock);
  if (q->closed) {
    err = UV_ECANCELED;
  } else {
    if (q->tail)
      q->tail->next = p;
    else
      q->head = p;
    q->tail = p;
    /* Sent under the lock: close sets `closed` under it before uv_close, so the handle is
     * still open here. */
    uv_async_send(&q->async);
  }
  uv_mutex_unlock(&q->lock);
  if (err) {
    if (drop) drop(arg);
    free(p);
  }
  return err;
}

void lasync__xqueue_hold(lasync__xqueue *q, int delta) {
  q->holds += delta;
  if (q->rt == NULL || q->closed) return;
  if (q->holds > 0)
    uv_ref((uv_handle_t *)&q->async);
  else
    uv_unref((uv_handle_t *)&q->async);
}
