/* What host/main.c needs from the parts only the executable has (host/lineedit.c, the REPL's
 * line editor; host/signals.c, SIGINT and SIGTERM), in terms of the public API, so main.c stays
 * on lasync.h as lua.c stays on lua.h. Those two files reach into the scheduler; main.c does
 * not. */
#ifndef LASYNC_CLI_H
#define LASYNC_CLI_H

#include "lasync.h"

/* Pushes the REPL: a function to call in a task, which reads, runs and prints until the user
 * leaves (lua/repl.lua, given the editor's functions). */
void lasync__repl_push(lua_State *L);

/* SIGINT and SIGTERM, as lua.c's laction (see docs/repl.md). */
void lasync__signals_watch(lasync_runtime *rt);
void lasync__signals_unwatch(void); /* before the runtime closes */
/* 0, or the exit status once a signal cancelled everything: 130 (SIGINT) or 143 (SIGTERM). */
int lasync__signals_status(void);

#endif
