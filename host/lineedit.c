/* The REPL's line editor: input read on the loop, so tasks keep running while the prompt waits.
 *
 * On a terminal, libedit in callback mode: a uv_poll on fd 0 calls rl_callback_read_char for
 * each keystroke, and the line handler wakes the task waiting in editor.read. Output written
 * while the prompt shows (a background task's print) first erases the prompt line; a prepare
 * handle redraws prompt and typed text before the loop next blocks. Elsewhere (a pipe, a file)
 * lines are read plainly, on the loop when fd 0 can be polled.
 *
 * libedit keeps its state in globals, so there is one editor per process; lua/repl.lua is the
 * REPL itself and sees these functions as its `editor` argument.
 */
#include "lineedit.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "libedit.h"

enum { GOT_NOTHING, GOT_LINE, GOT_EOF, GOT_INTERRUPT };

typedef struct {
  lasync__handle h;
  uv_poll_t poll;
} input_handle;

typedef struct {
  lasync__handle h;
  uv_prepare_t prepare;
} redraw_handle;

typedef void (*error_hook)(lasync__runtime *rt, const char *report, void *data);

static struct {
  lasync__runtime *rt;
  volatile sig_atomic_t started;
  int tty;               /* libedit on a terminal; else plain lines */
  input_handle *input;   /* fd 0 readable; NULL when fd 0 cannot be polled (a regular file) */
  redraw_handle *redraw; /* before the loop blocks: redraws a prompt that output erased */
  lasync__task *reader;  /* the task in editor.read */
  int suspended;         /* it waits for the loop (else the line was there at once) */
  int got;               /* what it gets: GOT_* */
  char *line;            /* malloc'd, with GOT_LINE */
  char *prompt;
  lasync__task *volatile chunk; /* the running chunk, for Ctrl-C; read by the signal handler */
  int chunk_ref;
  int hidden; /* output has erased the prompt, which awaits its redraw */
  int at_bol; /* that output ended with a newline */
  struct termios saved;
  volatile sig_atomic_t saved_ok;
  int saved_flags; /* fd 0's status flags: uv_poll_init makes it non-blocking */
  volatile sig_atomic_t flags_saved;
  char *history;    /* its file, or NULL */
  int complete_ref; /* the Lua completer */
  char *buf;        /* plain mode: bytes read that are not a whole line yet */
  size_t len, cap;
  int eof;
  error_hook on_error; /* the runtime's, restored at stop */
  void *on_error_data;
} ed = {.chunk_ref = LUA_NOREF, .complete_ref = LUA_NOREF};

/* ---- what the signal handling asks ---- */

int lasync__repl_active(void) { return ed.started; }

lasync__task *lasync__repl_chunk(void) { return ed.chunk; }

/* The descriptor's flags belong to the open file, which the shell shares: a non-blocking stdin
 * left behind would break the next program that reads the terminal. */
void lasync__repl_restore_tty(void) {
  if (ed.saved_ok) tcsetattr(0, TCSANOW, &ed.saved);
  if (ed.flags_saved) fcntl(0, F_SETFL, ed.saved_flags);
}

/* ---- delivering a line to the waiting task ---- */

static void stop_input(void) {
  if (ed.input) uv_poll_stop(&ed.input->poll);
}

static void deliver(int got, char *line) {
  lasync__task *t = ed.reader;
  stop_input();
  if (t == NULL) {
    free(line);
    return;
  }
  ed.reader = NULL;
  ed.got = got;
  free(ed.line); /* left by a push that failed for memory */
  ed.line = line;
  if (ed.suspended) lasync__wake(t);
  ed.suspended = 0;
}

/* libedit calls this from rl_callback_read_char with a whole line (malloc'd), or NULL at EOF. */
static void on_line(char *line) {
  rl_callback_handler_remove();
  deliver(line ? GOT_LINE : GOT_EOF, line);
}

/* Plain mode: takes the first whole line out of the buffer, or at EOF what is left. */
static int take_line(void) {
  char *nl = ed.len ? memchr(ed.buf, '\n', ed.len) : NULL;
  size_t n;
  char *line;
  if (nl == NULL && !(ed.eof && ed.len > 0)) {
    if (ed.eof) deliver(GOT_EOF, NULL);
    return ed.eof;
  }
  n = nl ? (size_t)(nl - ed.buf) : ed.len;
  line = (char *)malloc(n + 1);
  if (line == NULL) { /* out of memory: the REPL ends rather than spin */
    ed.eof = 1;
    ed.len = 0;
    deliver(GOT_EOF, NULL);
    return 1;
  }
  memcpy(line, ed.buf, n);
  line[n] = '\0';
  if (n > 0 && line[n - 1] == '\r') line[n - 1] = '\0';
  if (nl) n++;
  memmove(ed.buf, ed.buf + n, ed.len - n);
  ed.len -= n;
  deliver(GOT_LINE, line);
  return 1;
}

/* Plain mode: one read(2), which does not block once poll said readable (or on a file). */
static void read_some(void) {
  char chunk[4096];
  ssize_t n = read(0, chunk, sizeof chunk);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    ed.eof = 1;
    return;
  }
  if (ed.len + (size_t)n > ed.cap) {
    size_t cap = ed.cap ? ed.cap : 4096;
    char *b;
    while (cap < ed.len + (size_t)n) cap *= 2;
    b = (char *)realloc(ed.buf, cap);
    if (b == NULL) {
      ed.eof = 1; /* out of memory: the REPL ends rather than lose input silently */
      return;
    }
    ed.buf = b;
    ed.cap = cap;
  }
  memcpy(ed.buf + ed.len, chunk, (size_t)n);
  ed.len += (size_t)n;
}

/* libedit 3.1's rl_callback_read_char ends with rl_line_buffer[rl_end] = '\0', through the
 * pointer it last took of its narrow copy of the line, which a growing line reallocates between
 * two of its resize hooks: a pasted line of 6,000 characters wrote into freed memory (heap
 * corruption, then an abort; found by a hostile pass). Before each call the pointer is aimed at
 * a buffer of ours, larger than the line can grow in one call (a key, a completion, a yank of
 * at most a line seen before), where that terminator lands harmlessly. libedit re-aims it at
 * its own copy when its line buffer grows, in bounds then; nothing reads it (lineedit.c reads
 * rl_point only). */
static char *shadow_line;
static size_t shadow_cap, longest_line;

static int aim_line_buffer(void) {
  size_t end = rl_end > 0 ? (size_t)rl_end : 0, need;
  if (end > longest_line) longest_line = end;
  need = 2 * longest_line + 65536;
  if (need > shadow_cap) {
    char *p = (char *)realloc(shadow_line, need);
    if (p == NULL) return -1;
    shadow_line = p;
    shadow_cap = need;
  }
  rl_line_buffer = shadow_line;
  return 0;
}

/* libuv calls this when fd 0 is readable. */
static void on_readable(uv_poll_t *poll, int status, int events) {
  (void)poll;
  (void)events;
  if (ed.reader == NULL) {
    stop_input();
    return;
  }
  if (status < 0) {
    if (ed.tty) rl_callback_handler_remove();
    deliver(GOT_EOF, NULL);
  } else if (ed.tty) {
    if (aim_line_buffer() != 0) { /* out of memory: the REPL ends rather than corrupt it */
      rl_callback_handler_remove();
      deliver(GOT_EOF, NULL);
      return;
    }
    rl_callback_read_char();
  } else {
    read_some();
    take_line();
  }
}

/* ---- output over the prompt ---- */

static void on_redraw(uv_prepare_t *prepare);

static size_t screen_columns(void) {
  struct winsize ws;
  if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

/* Erases the prompt and what was typed so far, so output lands where the prompt was. */
static void hide_prompt(void) {
  size_t row;
  if (!ed.tty || ed.reader == NULL || ed.hidden) return;
  row = (strlen(ed.prompt ? ed.prompt : "") + (size_t)(rl_point > 0 ? rl_point : 0)) /
        screen_columns();
  if (row > 0) fprintf(stdout, "\033[%zuA", row);
  fputs("\r\033[J", stdout);
  fflush(stdout);
  ed.hidden = 1;
  ed.at_bol = 1;
  if (ed.redraw) uv_prepare_start(&ed.redraw->prepare, on_redraw);
}

/* Draws the prompt again below the output that erased it. */
static void redraw_now(void) {
  if (ed.redraw) uv_prepare_stop(&ed.redraw->prepare);
  if (!ed.hidden) return;
  ed.hidden = 0;
  fflush(stdout);
  fflush(stderr);
  if (ed.reader == NULL || !ed.tty) return;
  if (!ed.at_bol) fputs("\n", stdout);
  fflush(stdout);
  rl_forced_update_display();
}

/* libuv calls this before the loop blocks. */
static void on_redraw(uv_prepare_t *prepare) {
  (void)prepare;
  redraw_now();
}

/* The runtime's report of a failure nobody awaited, while the REPL runs: over the prompt too. */
static void on_report(lasync__runtime *rt, const char *report, void *data) {
  (void)data;
  hide_prompt();
  if (ed.on_error) {
    ed.on_error(rt, report, ed.on_error_data);
  } else {
    fprintf(stderr, "lasync: a task failed and nobody awaited it:\n%s\n", report);
    fflush(stderr);
  }
}

/* ---- completion ---- */

static char **matches;
static size_t nmatches, next_match;

static void free_matches(void) {
  size_t i;
  for (i = 0; i < nmatches; i++) free(matches[i]);
  free(matches);
  matches = NULL;
  nmatches = 0;
}

/* Under lua_pcall: calls the completer with the word and copies its list of strings. */
static int collect_matches(lua_State *L) {
  const char *text = (const char *)lua_touserdata(L, 1);
  lua_Integer i, n;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ed.complete_ref);
  lua_pushstring(L, text);
  lua_call(L, 1, 1);
  if (!lua_istable(L, -1)) return 0;
  n = (lua_Integer)lua_rawlen(L, -1);
  if (n <= 0) return 0;
  matches = (char **)calloc((size_t)n, sizeof *matches);
  if (matches == NULL) return 0;
  for (i = 1; i <= n; i++) {
    const char *s;
    lua_rawgeti(L, -1, i);
    s = lua_tostring(L, -1);
    if (s && (matches[nmatches] = strdup(s)) != NULL) nmatches++;
    lua_pop(L, 1);
  }
  return 0;
}

static char *next_completion(const char *text, int state) {
  (void)text;
  if (state == 0) next_match = 0;
  return next_match < nmatches ? strdup(matches[next_match++]) : NULL;
}

/* libedit calls this on Tab with the word before the cursor. */
static char **complete(const char *text, int start, int end) {
  lua_State *L = ed.rt->L;
  int top = lua_gettop(L);
  char **list = NULL;
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* no file names: this is Lua */
  if (ed.complete_ref == LUA_NOREF) return NULL;
  free_matches();
  lua_pushcfunction(L, collect_matches);
  lua_pushlightuserdata(L, (void *)text);
  if (lasync__pcall(L, 1, 0) != LUA_OK) lua_pop(L, 1); /* a broken completer completes nothing */
  lua_settop(L, top);
  if (nmatches > 0) list = rl_completion_matches(text, next_completion);
  free_matches();
  return list;
}

/* ---- the functions lua/repl.lua calls ---- */

static void on_input_closed(lasync__handle *h) {
  (void)h;
  ed.input = NULL;
}

static void on_redraw_closed(lasync__handle *h) {
  (void)h;
  ed.redraw = NULL;
}

static char *dup_field(lua_State *L, int idx, const char *field) {
  char *s = NULL;
  if (lua_getfield(L, idx, field) == LUA_TSTRING) {
    s = strdup(lua_tostring(L, -1));
    if (s == NULL) luaL_error(L, "editor.start: not enough memory");
  }
  lua_pop(L, 1);
  return s;
}

/* editor.start{history = path, complete = fn} -> "tty" or "plain" */
static int l_start(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  int tty = isatty(0) && isatty(1);
  if (!lua_istable(L, 1)) return lasync__argerror(L, 1, "editor.start", "options", "table");
  if (ed.started) return luaL_error(L, "editor.start: the editor is already in use");
  lua_settop(L, 1);
  lua_getfield(L, 1, "complete"); /* [opts, complete] */
  if (!lua_isnil(L, 2) && !lua_isfunction(L, 2))
    return lasync__opterror(L, 2, "editor.start", "complete", "function");
  ed.history = dup_field(L, 1, "history");
  ed.redraw = (redraw_handle *)lasync__handle_new(rt, sizeof *ed.redraw);
  if (ed.redraw == NULL) {
    free(ed.history);
    ed.history = NULL;
    return luaL_error(L, "editor.start: not enough memory");
  }
  uv_prepare_init(rt->loop, &ed.redraw->prepare);
  lasync__handle_init(&ed.redraw->h, (uv_handle_t *)&ed.redraw->prepare);
  ed.redraw->h.on_close = on_redraw_closed;
  uv_unref((uv_handle_t *)&ed.redraw->prepare);
  ed.saved_flags = fcntl(0, F_GETFL);
  ed.flags_saved = ed.saved_flags != -1;
  ed.input = (input_handle *)lasync__handle_new(rt, sizeof *ed.input);
  if (ed.input && uv_poll_init(rt->loop, &ed.input->poll, 0) == 0) {
    lasync__handle_init(&ed.input->h, (uv_handle_t *)&ed.input->poll);
    ed.input->h.on_close = on_input_closed;
  } else if (ed.input) {
    lasync__handle_close(&ed.input->h); /* never initialised: freed at once */
    ed.input = NULL;
  }
  if (ed.input == NULL) tty = 0; /* a terminal can always be polled; this is a file */
  if (tty) {
    const char *why = NULL;
    if (lasync__edit_load(&why) != 0) {
      fprintf(stderr, "lasync: %s; lines are read without editing\n", why);
      tty = 0;
    }
  }
  if (!lua_isnil(L, 2)) {
    lua_pushvalue(L, 2);
    ed.complete_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  ed.rt = rt;
  ed.tty = tty;
  ed.len = 0;
  ed.eof = 0;
  ed.hidden = 0;
  if (tty) {
    ed.saved_ok = tcgetattr(0, &ed.saved) == 0;
    rl_readline_name = "lasync";
    rl_catch_signals = 0; /* the host handles Ctrl-C (host/signals.c) */
    rl_instream = stdin;
    rl_outstream = stdout;
    rl_initialize();
    using_history();
    stifle_history(1000);
    if (ed.history) read_history(ed.history);
    rl_attempted_completion_function = complete;
    /* '.' and ':' are not breaks, so `async.ga` is one word. */
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(+-*/%^~#,[";
    rl_completion_append_character = '\0';
  }
  ed.on_error = rt->on_error;
  ed.on_error_data = rt->data;
  rt->on_error = on_report;
  ed.started = 1;
  lua_pushstring(L, tty ? "tty" : "plain");
  return 1;
}

static void read_cancel(lasync__task *t, void *data) {
  (void)t;
  (void)data;
  ed.reader = NULL;
  ed.suspended = 0;
  stop_input();
  if (ed.tty) {
    rl_callback_handler_remove();
    fputs("\n", stdout);
    fflush(stdout);
  }
}

static int read_finish(lua_State *L, lasync__task *t, void *data) {
  (void)t;
  (void)data;
  if (ed.got == GOT_LINE) {
    lua_pushstring(L, ed.line); /* on a memory error the line stays owned, freed later */
    free(ed.line);
    ed.line = NULL;
  } else if (ed.got == GOT_INTERRUPT) {
    lua_pushboolean(L, 0);
  } else {
    lua_pushnil(L);
  }
  return 1;
}

static void read_abandon(lua_State *L, lasync__task *t, void *data) {
  (void)L;
  (void)t;
  (void)data;
  free(ed.line);
  ed.line = NULL;
}

static const lasync__awaitable_ops READ_OPS = {"repl.read", read_cancel, read_finish, read_abandon};

/* editor.read(prompt) -> the line, nil at end of input, false after a Ctrl-C. Suspends. */
static int l_read(lua_State *L) {
  const char *prompt = lua_tostring(L, 1);
  lasync__task *t;
  char *p;
  if (prompt == NULL) return lasync__argerror(L, 1, "editor.read", "prompt", "string");
  t = lasync__check_task(L, "editor.read");
  if (!ed.started || ed.reader) return luaL_error(L, "editor.read: the editor is not ready");
  p = strdup(prompt);
  if (p == NULL) return luaL_error(L, "editor.read: not enough memory");
  free(ed.prompt);
  ed.prompt = p;
  ed.got = GOT_NOTHING;
  ed.reader = t;
  if (ed.tty) {
    rl_callback_handler_install(ed.prompt, on_line);
  } else {
    fputs(ed.prompt, stdout);
    fflush(stdout);
    if (ed.input == NULL) { /* a file: reading it does not block */
      while (ed.reader && !take_line()) read_some();
      return read_finish(L, t, NULL);
    }
    if (take_line()) return read_finish(L, t, NULL);
  }
  uv_poll_start(&ed.input->poll, UV_READABLE, on_readable);
  ed.suspended = 1;
  return lasync__suspend(L, t, &READ_OPS, NULL);
}

/* editor.add_history(text): remembered, and saved at once so a crash loses nothing. */
static int l_add_history(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  if (!ed.started || !ed.tty || s[0] == '\0') return 0;
  add_history(s);
  if (ed.history) write_history(ed.history);
  return 0;
}

/* editor.running(task or nil): the chunk that Ctrl-C cancels. */
static int l_running(lua_State *L) {
  lasync__task *t = lua_isnoneornil(L, 1) ? NULL : lasync__check_task_arg(L, 1, "editor.running");
  lasync__runtime *rt = lasync__runtime_get(L);
  ed.chunk = NULL;
  lasync__unpin(rt, L, ed.chunk_ref);
  ed.chunk_ref = LUA_NOREF;
  if (t) {
    lua_pushvalue(L, 1);
    ed.chunk_ref = lasync__pin(rt, L);
    ed.chunk = t;
  }
  return 0;
}

/* editor.hide(ends_with_newline): output is about to be written. */
static int l_hide(lua_State *L) {
  hide_prompt();
  ed.at_bol = lua_toboolean(L, 1);
  return 0;
}

/* editor.stop(): history saved, terminal and runtime as they were. Idempotent. */
static int l_stop(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  if (!ed.started) return 0;
  ed.started = 0;
  ed.reader = NULL;
  if (ed.tty) {
    rl_callback_handler_remove();
    if (ed.history) write_history(ed.history);
  }
  if (ed.input) lasync__handle_close(&ed.input->h);
  lasync__repl_restore_tty();
  ed.saved_ok = 0;
  ed.flags_saved = 0;
  if (ed.redraw) lasync__handle_close(&ed.redraw->h);
  ed.chunk = NULL;
  lasync__unpin(rt, L, ed.chunk_ref);
  ed.chunk_ref = LUA_NOREF;
  if (ed.complete_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, ed.complete_ref);
  ed.complete_ref = LUA_NOREF;
  free(ed.history);
  free(ed.prompt);
  free(ed.buf);
  ed.history = ed.prompt = ed.buf = NULL;
  ed.len = ed.cap = 0;
  rt->on_error = ed.on_error;
  return 0;
}

int lasync__repl_interrupt(lasync__runtime *rt) {
  lua_State *L = rt->L;
  if (!ed.started) return 0;
  if (ed.chunk_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ed.chunk_ref);
    lua_pushliteral(L, "interrupted");
    lasync__cancel(L, (lasync__task *)lua_touserdata(L, -2), 0, lua_gettop(L));
    lua_pop(L, 2);
  } else if (ed.reader) {
    if (ed.tty) {
      redraw_now();
      rl_callback_handler_remove();
      fputs("\n", stdout);
      fflush(stdout);
    }
    deliver(GOT_INTERRUPT, NULL);
  }
  return 1;
}

void lasync__repl_push(lua_State *L) {
  static const luaL_Reg funcs[] = {{"start", l_start},
                                   {"read", l_read},
                                   {"add_history", l_add_history},
                                   {"running", l_running},
                                   {"hide", l_hide},
                                   {"stop", l_stop},
                                   {NULL, NULL}};
  lasync__load_lua(L, "repl", LASYNC__LIB_CHUNK);
  luaL_newlib(L, funcs);
  lua_call(L, 1, 1);
}
