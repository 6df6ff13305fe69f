/* The runtime's curl multi handle, driven by the libuv loop. No Lua here (curl_multi.h).
 *
 * The plumbing follows curl's docs/examples/multi-uv.c: curl tells us which sockets to watch
 * (cb_socket -> one uv_poll per socket) and when to call it back (cb_timer -> one uv_timer);
 * libuv tells us when they are ready (on_poll, on_timeout), we call curl_multi_socket_action,
 * and only afterwards read the finished transfers with curl_multi_info_read and hand them to
 * the owner's on_wake. Neither Lua nor curl is ever called from inside a curl callback.
 */
#include "curl_multi.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EASY_POOL_MAX 64
#define ADMIT_PER_STEP 8 /* at most, however cheap they turn out to be */
/* What a new transfer's first run is assumed to cost before one has been measured: about a
 * loopback connect on a loaded 2-core machine. */
#define ADMIT_COST_GUESS_NS 150000
/* A step with nothing admitted for this many steps admits one anyway, so a loop that spends
 * every budget elsewhere still starts its transfers. */
#define ADMIT_STARVE_STEPS 4

typedef struct sock sock;

/* Freed in the timer's close callback, since uv_close is asynchronous. */
struct lasync__curl {
  lasync__service service; /* first: the service is the state */
  lasync__runtime *rt;
  const lasync__curl_ops *ops;
  CURLM *multi;
  uv_timer_t timer;
  lasync__curl_xfer *transfers; /* attached to the multi: in flight, or done and not detached */
  sock *socks;                  /* watched sockets */
  lasync__curl_xfer *notify;    /* transfers a curl callback wants on_wake'd */
  /* Easy handles of finished transfers, reset and reused: creating one costs more than all
   * the options set on it. */
  CURL *easy_pool[EASY_POOL_MAX];
  int easy_pooled;
  /* Easy handles of finished transfers kept as they were set up, for the next transfer that
   * sets the same options (client.c: a fetch without options), which then skips the reset and
   * the two dozen options: a tenth of a small fetch's instructions. */
  CURL *kept_pool[EASY_POOL_MAX];
  int kept_pooled;
  /* The watched socket of each descriptor, so a descriptor never has two polls: if curl reuses
   * a number whose old socket we still watch, the old poll is closed first. */
  sock **by_fd;
  size_t by_fd_len;
  /* Under lasync_step, new transfers enter the multi only as fast as the step's time allows:
   * curl connects every new transfer inside one call, which no budget can interrupt, so a
   * burst of a thousand fetches would stall one frame. They wait here, first come first
   * served, and on_turn admits as many as the time left in the step pays for (at most
   * ADMIT_PER_STEP), then drives them at once, so their cost is spent where it was counted. */
  lasync__curl_xfer *admission_head, *admission_tail;
  uint64_t admission_step; /* the step admitted counts */
  unsigned admitted;
  uint64_t last_admit_step; /* the last step that admitted one, against starvation */
  /* What curl's calls cost under lasync_step, measured (moving averages, ns): a new
   * transfer's first run, and one socket_action for a ready socket or curl's timer. A call is
   * only started while the step has twice its cost left. */
  uint64_t admit_ns, poll_ns, timeout_ns;
};

/* A socket curl asked us to watch. Allocated apart from everything else and freed in its
 * close callback.
 *
 * The sockets of curl's connections are opened and closed here (cb_opensocket,
 * cb_closesocket), so their watch lives as long as the socket: when a connection goes back to
 * curl's cache between two transfers, curl stops watching it (CURL_POLL_REMOVE) and watches it
 * again on reuse, and the poll is only stopped and started, not closed and made anew (an
 * allocation, a uv_poll_init and its ioctl, per request on a kept-alive connection). Other
 * sockets (curl's resolver) are watched from the first CURL_POLL_* to the REMOVE. */
struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
  int events;     /* what curl asked us to watch */
  int closing;    /* uv_close called; freed in its close callback */
  unsigned owned; /* opened by cb_opensocket: closed by cb_closesocket only */
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

CURL *lasync__curl_easy_kept(lasync__curl *m) {
  return m->kept_pooled > 0 ? m->kept_pool[--m->kept_pooled] : NULL;
}

void lasync__curl_easy_keep(lasync__curl *m, CURL *easy) {
  if (easy == NULL) return;
  if (m && m->kept_pooled < EASY_POOL_MAX) {
    /* The transfer's own memory is about to go: nothing may point into it meanwhile. */
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, NULL);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    m->kept_pool[m->kept_pooled++] = easy;
  } else {
    lasync__curl_easy_release(m, easy);
  }
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
    /* The handle stays in the multi until its owner detaches it (when the task has read the
     * response, usually just before it starts its next fetch). curl sizes its connection
     * cache by the handles it holds (4 per handle): removing a burst of finished ones here,
     * before their tasks run, would shrink the cache under the idle keep-alive connections
     * and close them, and the next fetches would connect again. */
    x->done = 1;
    unnotify(x);
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
  if (!x->attached || x->done) return;
  curl_easy_pause(x->easy, mask);
  after_curl(x->multi);
}

/* Nanoseconds left in the current lasync_step, or UINT64_MAX outside one. */
static uint64_t step_left(const lasync__runtime *rt) {
  uint64_t now;
  if (rt->step_deadline == 0) return UINT64_MAX;
  now = uv_hrtime();
  return now < rt->step_deadline ? rt->step_deadline - now : 0;
}

/* curl_multi_socket_action, timed into *avg when it runs under lasync_step. */
static void socket_action(lasync__curl *m, curl_socket_t fd, int flags, uint64_t *avg) {
  int running;
  uint64_t start = m->rt->step_deadline ? uv_hrtime() : 0;
  curl_multi_socket_action(m->multi, fd, flags, &running);
  if (start) lasync__step_measure(avg, uv_hrtime() - start);
}

/* libuv calls this when a watched socket is ready. */
static void on_poll(uv_poll_t *handle, int status, int events) {
  sock *s = (sock *)handle->data;
  lasync__curl *m = s->m;
  int flags = 0;
  /* Past lasync_step's budget the socket waits; an error, which stopped the poll, cannot. */
  if (status >= 0 && !lasync__step_fits(m->rt, &m->poll_ns)) return;
  if (status < 0) {
    /* POLLERR: libuv reports EBADF and stops the poll. Rather than CURL_CSELECT_ERR (which
     * fails the transfer with "select/poll returned error"), let curl read or write and meet
     * the real error: on a reused keep-alive connection the server closed, curl then retries
     * on a fresh connection instead of failing. */
    events = s->events;
  }
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  socket_action(m, s->fd, flags, &m->poll_ns); /* may close s */
  /* After an error the poll is stopped; if curl still wants the socket watched, watch again. */
  if (status < 0 && !s->closing && s->events && !uv_is_active((uv_handle_t *)&s->poll))
    uv_poll_start(&s->poll, s->events, on_poll);
  after_curl(m);
}

/* libuv calls this when curl's timeout is due. */
static void on_timeout(uv_timer_t *handle) {
  lasync__curl *m = (lasync__curl *)handle->data;
  if (!lasync__step_fits(m->rt, &m->timeout_ns)) {
    uv_timer_start(&m->timer, on_timeout, 1, 0);
    return;
  }
  socket_action(m, CURL_SOCKET_TIMEOUT, 0, &m->timeout_ns);
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

/* A new watch of fd (not started), replacing a stale one; NULL when out of memory. */
static sock *new_sock(lasync__curl *m, curl_socket_t fd) {
  sock *s;
  if (fd < 0) return NULL;
  if ((size_t)fd >= m->by_fd_len) {
    size_t len = m->by_fd_len ? m->by_fd_len : 256;
    sock **by_fd;
    while (len <= (size_t)fd) len *= 2;
    by_fd = (sock **)realloc(m->by_fd, len * sizeof *by_fd);
    if (by_fd == NULL) return NULL;
    memset(by_fd + m->by_fd_len, 0, (len - m->by_fd_len) * sizeof *by_fd);
    m->by_fd = by_fd;
    m->by_fd_len = len;
  }
  if (m->by_fd[fd]) close_sock(m, m->by_fd[fd]); /* a stale watch of a closed socket */
  s = (sock *)calloc(1, sizeof *s);
  if (s == NULL) return NULL;
  if (uv_poll_init_socket(m->rt->loop, &s->poll, fd) != 0) {
    free(s);
    return NULL;
  }
  s->fd = fd;
  s->m = m;
  s->poll.data = s;
  s->next = m->socks;
  if (m->socks) m->socks->prev = s;
  m->socks = s;
  m->by_fd[fd] = s;
  return s;
}

/* curl calls this to open a connection's socket. Without memory for its watch, the socket is
 * still curl's, watched like the others once curl asks. */
static curl_socket_t cb_opensocket(void *clientp, curlsocktype purpose,
                                   struct curl_sockaddr *address) {
  lasync__curl *m = (lasync__curl *)clientp;
  sock *s;
  curl_socket_t fd;
  (void)purpose;
  /* Close-on-exec, which curl's own socket() leaves out: a process the script starts would
   * otherwise inherit every open connection. */
  fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
  if (fd != CURL_SOCKET_BAD && (s = new_sock(m, fd)) != NULL) s->owned = 1;
  return fd;
}

/* curl calls this to close a socket cb_opensocket opened: the watch goes first, while the
 * descriptor is still this socket's. */
static int cb_closesocket(void *clientp, curl_socket_t fd) {
  lasync__curl *m = (lasync__curl *)clientp;
  if (fd >= 0 && (size_t)fd < m->by_fd_len && m->by_fd[fd]) close_sock(m, m->by_fd[fd]);
  return close(fd);
}

/* curl calls this to say which events to watch on a socket, or to stop watching it. */
static int cb_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  lasync__curl *m = (lasync__curl *)userp;
  sock *s = (sock *)socketp;
  int events = 0;
  (void)easy;
  if (action == CURL_POLL_REMOVE) {
    if (s) {
      if (s->owned) { /* a connection going idle: watched again when reused */
        s->events = 0;
        uv_poll_stop(&s->poll);
      } else {
        close_sock(m, s);
      }
      curl_multi_assign(m->multi, fd, NULL);
    }
    return 0;
  }
  if (s == NULL) {
    s = fd >= 0 && (size_t)fd < m->by_fd_len ? m->by_fd[fd] : NULL;
    if (s == NULL || !s->owned) s = new_sock(m, fd);
    if (s == NULL) return -1;
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
  curl_easy_setopt(x->easy, CURLOPT_OPENSOCKETFUNCTION, cb_opensocket);
  curl_easy_setopt(x->easy, CURLOPT_OPENSOCKETDATA, m);
  curl_easy_setopt(x->easy, CURLOPT_CLOSESOCKETFUNCTION, cb_closesocket);
  curl_easy_setopt(x->easy, CURLOPT_CLOSESOCKETDATA, m);
  if (curl_multi_add_handle(m->multi, x->easy) != CURLM_OK) return -1;
  x->prev = NULL;
  x->next = m->transfers;
  if (m->transfers) m->transfers->prev = x;
  m->transfers = x;
  x->attached = 1;
  m->admitted++;
  return 0;
}

/* How many waiting transfers the time left in this step pays for: half of it at most, the
 * rest being for the tasks, each transfer costing what the last ones did, and at most
 * ADMIT_PER_STEP a step; one after ADMIT_STARVE_STEPS steps without any. Unbounded outside
 * lasync_step. */
static unsigned admissible(lasync__curl *m) {
  lasync__runtime *rt = m->rt;
  uint64_t cost = m->admit_ns ? m->admit_ns : ADMIT_COST_GUESS_NS, n;
  if (rt->step_deadline == 0) return UINT_MAX;
  if (m->admission_step != rt->step_seq) { /* a new step */
    m->admission_step = rt->step_seq;
    m->admitted = 0;
  }
  if (m->admitted >= ADMIT_PER_STEP) return 0;
  n = step_left(rt) / 2 / cost; /* half for new transfers, the rest for their tasks */
  if (n > ADMIT_PER_STEP - m->admitted) n = ADMIT_PER_STEP - m->admitted;
  if (n == 0 && m->admitted == 0 && rt->step_seq - m->last_admit_step >= ADMIT_STARVE_STEPS) n = 1;
  return (unsigned)n;
}

/* While transfers wait in the line, the loop must go on turning (on_turn admits them): with
 * nothing else active it would stop, and a host stepping it would see nothing to wait for.
 * curl's timer keeps it alive; running curl's timeout early does no harm. */
static void keep_turning(lasync__curl *m) {
  if (m->admission_head && !uv_is_active((uv_handle_t *)&m->timer))
    uv_timer_start(&m->timer, on_timeout, 0, 0);
}

int lasync__curl_start(lasync__curl *m, lasync__curl_xfer *x) {
  x->multi = m;
  /* Outside lasync_step a transfer goes straight in, unless others wait (they keep their
   * place in the line); under it, always through the line, for on_turn to time. */
  if (m->admission_head == NULL && m->rt->step_deadline == 0) return admit(m, x);
  x->admitting = 1;
  x->next = NULL;
  x->prev = m->admission_tail;
  if (m->admission_tail)
    m->admission_tail->next = x;
  else
    m->admission_head = x;
  m->admission_tail = x;
  keep_turning(m);
  return 0;
}

/* Each loop turn: admits the waiting transfers this step's time allows (all of them outside
 * lasync_step). Under lasync_step it also runs them at once, so their connects are spent, and
 * measured, in the step that counted them, instead of at the start of the next one. A transfer
 * curl refuses fails like any other. */
static void on_turn(lasync__runtime *rt, lasync__service *s) {
  lasync__curl *m = (lasync__curl *)s;
  unsigned n = m->admission_head ? admissible(m) : 0, added = 0;
  uint64_t start = rt->step_deadline && n > 0 ? uv_hrtime() : 0;
  while (m->admission_head && added < n) {
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
    } else {
      added++;
    }
  }
  if (start && added > 0) {
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    lasync__step_measure(&m->admit_ns, (uv_hrtime() - start) / added);
    m->last_admit_step = rt->step_seq;
    after_curl(m);
  }
  keep_turning(m);
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
  while (m->kept_pooled > 0) curl_easy_cleanup(m->kept_pool[--m->kept_pooled]);
  curl_multi_cleanup(m->multi); /* closes the idle connections; may call cb_socket */
  while (m->socks) close_sock(m, m->socks);
  free(m->by_fd);
  m->by_fd = NULL;
  m->by_fd_len = 0;
  uv_close((uv_handle_t *)&m->timer, on_multi_closed);
}

static const lasync__service_ops CURL_SERVICE = {"http", on_turn, multi_close};

lasync__curl *lasync__curl_get(lasync__runtime *rt, const lasync__curl_ops *ops, const char **why) {
  lasync__curl *m = (lasync__curl *)lasync__service_find(rt, &CURL_SERVICE);
  if (m) return m;
  if (lasync__curl_load(why) != 0) return NULL;
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
