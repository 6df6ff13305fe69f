/* The REPL's line editor (host/lineedit.c) and the signal handling (host/signals.c), for
 * host/main.c; and what the signal handling needs to know of the editor. Only the executable has
 * it: libedit is linked there and nowhere else, since the Lua module is loaded into lua5.4, which
 * brings GNU readline and its clashing symbols. */
#ifndef LASYNC_LINEEDIT_H
#define LASYNC_LINEEDIT_H

#include "../bindings/private.h"

/* Pushes the REPL: a function to call in a task, which reads, runs and prints until the user
 * leaves (lua/repl.lua, given the editor's functions). */
void lasync__repl_push(lua_State *L);
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

/* host/signals.c: SIGINT and SIGTERM, as lua.c's laction (see docs/repl.md). */
void lasync__signals_watch(lasync__runtime *rt);
void lasync__signals_unwatch(void); /* before the runtime closes */
/* 0, or the exit status once a signal cancelled everything: 130 (SIGINT) or 143 (SIGTERM). */
int lasync__signals_status(void);

#endif
