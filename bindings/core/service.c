/* Services: the parts of the runtime that need a hook each loop turn or a step at shutdown.
 *
 * The runtime keeps them in one list and never names them, so a new capability (a thread pool,
 * a server) registers itself instead of growing a field in the runtime.
 */
#include "private.h"

void lasync__service_add(lasync__runtime *rt, lasync__service *s,
                         const lasync__service_ops *ops) {
  /* Pushed at the head: walking the list from the head closes the newest first. */
  s->ops = ops;
  s->next = rt->services;
  rt->services = s;
}

void lasync__service_remove(lasync__runtime *rt, lasync__service *s) {
  lasync__service **p;
  for (p = &rt->services; *p; p = &(*p)->next) {
    if (*p == s) {
      *p = s->next;
      s->next = NULL;
      return;
    }
  }
}

lasync__service *lasync__service_find(lasync__runtime *rt, const lasync__service_ops *ops) {
  lasync__service *s;
  for (s = rt->services; s; s = s->next)
    if (s->ops == ops) return s;
  return NULL;
}

void lasync__services_turn(lasync__runtime *rt) {
  lasync__service *s, *next;
  for (s = rt->services; s; s = next) {
    next = s->next; /* a hook may unregister its own service */
    if (s->ops->on_turn) s->ops->on_turn(rt, s);
  }
}

void lasync__services_close(lasync__runtime *rt) {
  /* Each is unlinked before its hook runs, so a hook that frees its state leaves no dangling
   * node and a service registered during shutdown is closed too. */
  while (rt->services) {
    lasync__service *s = rt->services;
    rt->services = s->next;
    s->next = NULL;
    if (s->ops->close) s->ops->close(rt, s);
  }
}
