/* The runtime's curl multi handle, driven by the libuv loop. No Lua here (curl_multi.h).
 *
 * The plumbing follows curl's docs/examples/multi-uv.c: curl tells us which sockets to watch
 * (cb_socket -> one uv_poll per socket) and when to call it back (cb_timer -> one uv_timer);
 * libuv tells us when they are ready (on_poll, on_timeout), we call curl_multi_socket_action,
 * and only afterwards read the finished transfers with curl_multi_info_read and hand them to
 * the owner's on_wake. Neither Lua nor curl is ever called from inside a curl callback.
 */
#include "curl_multi.h"

#include <stdlib.h>
#include <string.h>

#define EASY_POOL_MAX 64
#define ADMIT_PER_STEP 8

typedef struct sock sock;

/* Freed in the timer's close callback, since uv_close is asynchronous. */
struct lasync__curl {
  lasync__service service; /* first: the service is the state */
  lasync__runtime *rt;
  const lasync__curl_ops *ops;
  CURLM *multi;
  uv_timer_t timer;
  lasync__curl_xfer *transfers; /* attached to the multi, in flight */
  sock *socks;                  /* watched sockets */
  lasync__curl_xfer *notify;    /* transfers a curl callback wants on_wake'd */
  /* Easy handles of finished transfers, reset and reused: creating one costs more than all
   * the options set on it. */
  CURL *easy_pool[EASY_POOL_MAX];
  int easy_pooled;
  /* The watched socket of each descriptor, so a descriptor never has two polls: if curl reuses
   * a number whose old socket we still watch, the old poll is closed first. */
  sock **by_fd;
  size_t by_fd_len;
  /* Under lasync_step, at most ADMIT_PER_STEP new transfers enter the multi per step: curl
   * connects every new transfer inside one call, which no budget can interrupt, so a burst of
   * a thousand fetches would stall one frame. The rest wait here, first come first served. */
  lasync__curl_xfer *admission_head, *admission_tail;
  uint64_t admission_step; /* the step admitted counts */
  unsigned admitted;
};

/* A socket curl asked us to watch. Allocated apart from everything else and freed in its
 * close callback. */
struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
  int events;  /* what curl asked us to watch */
  int closing; /* uv_close called; freed in its close callback */
  lasync__curl *m;
  sock *next, *prev;
};

/* ---- transfers ---- */

static void unnotify(lasync__curl_xfer *x) {
  lasync__curl_xfer **p = &x->multi->notify;
  if (!x->notify_queued) return;
  while (*p != x) p = &(*p)->notify_next;
  *p = x->notify_next;
  x->notify_next = NULL;
  x->notify_queued = 0;
}

void lasync__curl_notify(lasync__curl_xfer *x) {
  if (x->notify_queued) return;
  x->notify_queued = 1;
  x->notify_next = x->multi->notify;
  x->multi->notify = x;
}

void lasync__curl_detach(lasync__curl_xfer *x) {
  lasync__curl *m = x->multi;
  if (x->admitting) { /* never reached curl: just leave the line */
    x->admitting = 0;
    x->done = 1;
    if (x->prev)
      x->prev->next = x->next;
    else
      m->admission_head = x->next;
    if (x->next)
      x->next->prev = x->prev;
    else
      m->admission_tail = x->prev;
    x->next = x->prev = NULL;
    return;
  }
  if (!x->attached) return;
  x->attached = 0;
  x->done = 1;
  unnotify(x);
  if (x->prev)
    x->prev->next = x->next;
  else
    m->transfers = x->next;
  if (x->next) x->next->prev = x->prev;
  x->next = x->prev = NULL;
  curl_multi_remove_handle(m->multi, x->easy);
}

CURL *lasync__curl_easy(lasync__curl *m) {
  return m->easy_pooled > 0 ? m->easy_pool[--m->easy_pooled] : curl_easy_init();
}

void lasync__curl_easy_release(lasync__curl *m, CURL *easy) {
  if (easy == NULL) return;
  if (m && m->easy_pooled < EASY_POOL_MAX) {
    curl_easy_reset(easy);
    m->easy_pool[m->easy_pooled++] = easy;
  } else {
    curl_easy_cleanup(easy);
  }
}

/* ---- the multi, driven by libuv ---- */

/* Reads the finished transfers, then wakes those the callbacks queued. Runs after every call
 * that can run curl callbacks (curl_multi_socket_action, curl_easy_pause), outside them. */
static void after_curl(lasync__curl *m) {
  CURLMsg *msg;
  lasync__curl_xfer *x;
  int pending;
  while ((msg = curl_multi_info_read(m->multi, &pending)) != NULL) {
    x = NULL;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    x->result = msg->data.result; /* msg dies with the handle's removal */
    lasync__curl_detach(x);
    m->ops->on_wake(x);
  }
  while ((x = m->notify) != NULL) {
    m->notify = x->notify_next;
    x->notify_next = NULL;
    x->notify_queued = 0;
    m->ops->on_wake(x);
  }
}

void lasync__curl_pause(lasync__curl_xfer *x, int mask) {
  if (!x->attached) return;
  curl_easy_pause(x->easy, mask);
  after_curl(x->multi);
}

/* lasync_step's budget is spent: I/O waits for the next step. A poll is level-triggered, so the
 * socket is reported again; curl's timer is re-armed for the next turn. */
static int over_budget(const lasync__runtime *rt) {
  return rt->step_deadline && uv_hrtime() >= rt->step_deadline;
}

/* libuv calls this when a watched socket is ready. */
static void on_poll(uv_poll_t *handle, int status, int events) {
  sock *s = (sock *)handle->data;
  lasync__curl *m = s->m;
  int running, flags = 0;
  if (status >= 0 && over_budget(m->rt)) return; /* an error stopped the poll: handle it now */
  if (status < 0) {
    /* POLLERR: libuv reports EBADF and stops the poll. Rather than CURL_CSELECT_ERR (which
     * fails the transfer with "select/poll returned error"), let curl read or write and meet
     * the real error: on a reused keep-alive connection the server closed, curl then retries
     * on a fresh connection instead of failing. */
    events = s->events;
  }
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(m->multi, s->fd, flags, &running); /* may close s */
  /* After an error the poll is stopped; if curl still wants the socket watched, watch again. */
  if (status < 0 && !s->closing && s->events && !uv_is_active((uv_handle_t *)&s->poll))
    uv_poll_start(&s->poll, s->events, on_poll);
  after_curl(m);
}

/* libuv calls this when curl's timeout is due. */
static void on_timeout(uv_timer_t *handle) {
  lasync__curl *m = (lasync__curl *)handle->data;
  int running;
  if (over_budget(m->rt)) {
    uv_timer_start(&m->timer, on_timeout, 1, 0);
    return;
  }
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  after_curl(m);
}

static void on_sock_closed(uv_handle_t *handle) { free(handle->data); }

static void close_sock(lasync__curl *m, sock *s) {
  s->closing = 1;
  if ((size_t)s->fd < m->by_fd_len && m->by_fd[s->fd] == s) m->by_fd[s->fd] = NULL;
  if (s->prev)
    s->prev->next = s->next;
  else
    m->socks = s->next;
  if (s->next) s->next->prev = s->prev;
  uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* curl calls this to say which events to watch on a socket, or to stop watching it. */
static int cb_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  lasync__curl *m = (lasync__curl *)userp;
  sock *s = (sock *)socketp;
  int events = 0;
  (void)easy;
  if (action == CURL_POLL_REMOVE) {
    if (s) {
      close_sock(m, s);
      curl_multi_assign(m->multi, fd, NULL);
    }
    return 0;
  }
  if (s == NULL) {
    if (fd < 0) return -1;
    if ((size_t)fd >= m->by_fd_len) {
      size_t len = m->by_fd_len ? m->by_fd_len : 256;
      sock **by_fd;
      while (len <= (size_t)fd) len *= 2;
      by_fd = (sock **)realloc(m->by_fd, len * sizeof *by_fd);
      if (by_fd == NULL) return -1;
      memset(by_fd + m->by_fd_len, 0, (len - m->by_fd_len) * sizeof *by_fd);
      m->by_fd = by_fd;
      m->by_fd_len = len;
    }
    if (m->by_fd[fd]) close_sock(m, m->by_fd[fd]); /* a stale watch of a closed socket */
    s = (sock *)calloc(1, sizeof *s);
    if (s == NULL) return -1;
    if (uv_poll_init_socket(m->rt->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->fd = fd;
    s->m = m;
    s->poll.data = s;
    s->next = m->socks;
    if (m->socks) m->socks->prev = s;
    m->socks = s;
    m->by_fd[fd] = s;
    curl_multi_assign(m->multi, fd, s);
  }
  if (action == CURL_POLL_IN || action == CURL_POLL_INOUT) events |= UV_READABLE;
  if (action == CURL_POLL_OUT || action == CURL_POLL_INOUT) events |= UV_WRITABLE;
  s->events = events;
  if (events)
    uv_poll_start(&s->poll, events, on_poll);
  else
    uv_poll_stop(&s->poll); /* CURL_POLL_NONE: known, but nothing to wait for now */
  return 0;
}

/* curl calls this to (re)arm or stop its one timer. */
static int cb_timer(CURLM *multi, long timeout_ms, void *userp) {
  lasync__curl *m = (lasync__curl *)userp;
  (void)multi;
  if (timeout_ms < 0)
    uv_timer_stop(&m->timer);
  else
    uv_timer_start(&m->timer, on_timeout, (uint64_t)timeout_ms, 0);
  return 0;
}

/* ---- admission ---- */

static int admit(lasync__curl *m, lasync__curl_xfer *x) {
  curl_easy_setopt(x->easy, CURLOPT_PRIVATE, (char *)x);
  if (curl_multi_add_handle(m->multi, x->easy) != CURLM_OK) return -1;
  x->prev = NULL;
  x->next = m->transfers;
  if (m->transfers) m->transfers->prev = x;
  m->transfers = x;
  x->attached = 1;
  m->admitted++;
  return 0;
}

/* Starts a new step's count; whether this step's quota of new transfers is spent. */
static int quota_spent(lasync__curl *m) {
  lasync__runtime *rt = m->rt;
  if (rt->step_deadline == 0) return 0; /* never outside lasync_step */
  if (m->admission_step != rt->step_seq) {
    m->admission_step = rt->step_seq;
    m->admitted = 0;
  }
  return m->admitted >= ADMIT_PER_STEP;
}

int lasync__curl_start(lasync__curl *m, lasync__curl_xfer *x) {
  x->multi = m;
  /* Those already waiting keep their place in the line. */
  if (m->admission_head == NULL && !quota_spent(m)) return admit(m, x);
  x->admitting = 1;
  x->next = NULL;
  x->prev = m->admission_tail;
  if (m->admission_tail)
    m->admission_tail->next = x;
  else
    m->admission_head = x;
  m->admission_tail = x;
  return 0;
}

/* Each loop turn: admits the waiting transfers this step's quota allows (all of them outside
 * lasync_step). A transfer curl refuses fails like any other. */
static void on_turn(lasync__runtime *rt, lasync__service *s) {
  lasync__curl *m = (lasync__curl *)s;
  (void)rt;
  while (m->admission_head && !quota_spent(m)) {
    lasync__curl_xfer *x = m->admission_head;
    m->admission_head = x->next;
    if (m->admission_head)
      m->admission_head->prev = NULL;
    else
      m->admission_tail = NULL;
    x->next = x->prev = NULL;
    x->admitting = 0;
    if (admit(m, x) != 0) {
      x->result = CURLE_OUT_OF_MEMORY;
      x->done = 1;
      m->ops->on_wake(x);
    }
  }
}

/* ---- the service ---- */

static void on_multi_closed(uv_handle_t *handle) { free(handle->data); }

/* The runtime's shutdown hook: no transfer is in flight any more once it returns. */
static void multi_close(lasync__runtime *rt, lasync__service *s) {
  lasync__curl *m = (lasync__curl *)s;
  (void)rt;
  /* Their tasks were cancelled before this runs, so no one is left to wake. */
  while (m->admission_head) lasync__curl_detach(m->admission_head);
  while (m->transfers) lasync__curl_detach(m->transfers);
  while (m->easy_pooled > 0) curl_easy_cleanup(m->easy_pool[--m->easy_pooled]);
  curl_multi_cleanup(m->multi); /* closes the idle connections; may call cb_socket */
  while (m->socks) close_sock(m, m->socks);
  free(m->by_fd);
  m->by_fd = NULL;
  m->by_fd_len = 0;
  uv_close((uv_handle_t *)&m->timer, on_multi_closed);
}

static const lasync__service_ops CURL_SERVICE = {"http", on_turn, multi_close};

lasync__curl *lasync__curl_get(lasync__runtime *rt, const lasync__curl_ops *ops, const char **why) {
  static int curl_ready = 0;
  lasync__curl *m = (lasync__curl *)lasync__service_find(rt, &CURL_SERVICE);
  if (m) return m;
  if (!curl_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      *why = "cannot initialise libcurl";
      return NULL;
    }
    curl_ready = 1;
  }
  m = (lasync__curl *)calloc(1, sizeof *m);
  if (m == NULL) {
    *why = "not enough memory";
    return NULL;
  }
  m->rt = rt;
  m->ops = ops;
  m->multi = curl_multi_init();
  if (m->multi == NULL) {
    free(m);
    *why = "cannot create a curl multi handle";
    return NULL;
  }
  uv_timer_init(rt->loop, &m->timer);
  m->timer.data = m;
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, cb_socket);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, cb_timer);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  lasync__service_add(rt, &m->service, &CURL_SERVICE);
  return m;
}
