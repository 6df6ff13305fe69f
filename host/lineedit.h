/* What the signal handling (host/signals.c) needs to know of the REPL's line editor
 * (host/lineedit.c); what main.c uses of both is in cli.h. Only the executable has
 * it: libedit is linked there and nowhere else, since the Lua module is loaded into lua5.4, which
 * brings GNU readline and its clashing symbols. */
#ifndef LASYNC_LINEEDIT_H
#define LASYNC_LINEEDIT_H

#include "../bindings/private.h"
#include "cli.h"

/* Whether a REPL has started and not stopped. Async-signal-safe. */
int lasync__repl_active(void);
/* The task running the chunk the user entered last, or NULL. Async-signal-safe. */
lasync__task *lasync__repl_chunk(void);
/* On the loop, for a Ctrl-C: cancels the running chunk, or clears the line being edited and
 * shows a fresh prompt. Returns 0 when no REPL is active, so the caller cancels everything. */
int lasync__repl_interrupt(lasync__runtime *rt);
/* Puts the terminal back as it was before the editor took it. Async-signal-safe, for a signal
 * handler about to _exit. */
void lasync__repl_restore_tty(void);

#endif
