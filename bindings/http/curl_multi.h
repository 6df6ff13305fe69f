/* The runtime's curl multi handle, driven by the libuv loop (curl_multi.c). No Lua here: the
 * transfers' owner (client.c) starts and stops transfers through these calls, and hears back
 * through one callback, so the two files never include each other's internals.
 *
 * Neither curl nor Lua is called from inside a curl callback: the easy handle's callbacks only
 * fill C buffers and call lasync__curl_notify; once curl has returned, the multi reads the
 * finished transfers and calls on_wake for each finished or notified one. */
#ifndef LASYNC_CURL_MULTI_H
#define LASYNC_CURL_MULTI_H

#include "libcurl.h"
#include "private.h"

typedef struct lasync__curl lasync__curl;
typedef struct lasync__curl_xfer lasync__curl_xfer;

typedef struct lasync__curl_ops {
  /* The transfer finished (x->done, x->result set) or a callback notified it: wake whoever
   * waits. Runs outside curl's callbacks, never from inside a Lua call that drives curl
   * itself (lasync__curl_pause calls it too: it must not re-enter the caller). */
  void (*on_wake)(lasync__curl_xfer *x);
} lasync__curl_ops;

/* The multi's part of a transfer: the owner's struct begins with it. */
struct lasync__curl_xfer {
  lasync__curl *multi;
  CURL *easy;
  lasync__curl_xfer *next, *prev; /* in flight, or waiting for admission */
  lasync__curl_xfer *notify_next;
  CURLcode result;        /* once done */
  unsigned attached : 1;  /* in curl's multi (until detached, even once done) */
  unsigned admitting : 1; /* waiting for a later lasync_step to enter the multi */
  unsigned notify_queued : 1;
  unsigned done : 1; /* finished or detached: curl will not call back again */
};

/* The runtime's multi, made on first use (a service: closed at shutdown, when every transfer
 * is detached), after loading libcurl (libcurl.h). NULL on failure, with *why set. */
lasync__curl *lasync__curl_get(lasync__runtime *rt, const lasync__curl_ops *ops, const char **why);
/* An easy handle, reused from a finished transfer when one is pooled; NULL when out of memory. */
CURL *lasync__curl_easy(lasync__curl *m);
/* Resets the handle into the pool of m, or cleans it up (m NULL: the multi may be gone). */
void lasync__curl_easy_release(lasync__curl *m, CURL *easy);
/* Pools a finished transfer's handle without resetting it, for a later transfer whose options
 * are the same (it then sets only the URL and its own pointers: error buffer, write and header
 * data); or releases it when that pool is full. */
void lasync__curl_easy_keep(lasync__curl *m, CURL *easy);
/* A handle lasync__curl_easy_keep pooled, or NULL. */
CURL *lasync__curl_easy_kept(lasync__curl *m);
/* Hands x (easy set up) to curl, or queues it while lasync_step's admission quota is spent.
 * -1 when curl refuses it. */
int lasync__curl_start(lasync__curl *m, lasync__curl_xfer *x);
/* Takes x out of the multi (or its queue): curl never calls back for it again; sets done.
 * Idempotent; must not be called from inside a curl callback. */
void lasync__curl_detach(lasync__curl_xfer *x);
/* From an easy-handle callback: have on_wake called for x once curl has returned. */
void lasync__curl_notify(lasync__curl_xfer *x);
/* Sets x's pause mask (CURLPAUSE_RECV | CURLPAUSE_SEND); curl may call the write and read
 * callbacks at once. Then wakes what they notified. Never from inside a curl callback. */
void lasync__curl_pause(lasync__curl_xfer *x, int mask);

#endif
