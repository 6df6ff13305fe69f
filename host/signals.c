/* SIGINT and SIGTERM for the lasync executable (host/main.c calls the three functions at the
 * end). It reaches into the scheduler (the task step running now), so it lives apart from
 * main.c, which keeps to the public API. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "lineedit.h"

static lasync__runtime *runtime;

/* As lua.c's laction: the handler itself sets a hook on the task step that is running, which
 * raises a Cancelled error there at the next Lua instruction, so a step that blocks the loop
 * (`while true do end`) is interrupted and its cleanup runs. It then wakes the loop, which
 * cancels every task (or, at the REPL, only the chunk running). A second signal before that is
 * done, or after everything was cancelled, exits at once. */

static volatile sig_atomic_t signal_pending; /* taken by the handler, not yet by the loop */
static volatile sig_atomic_t stopping;       /* everything was cancelled: the exit status */
static volatile sig_atomic_t hook_armed;     /* the hook raises once, then disarms */
static uv_async_t signal_async;

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!hook_armed) return; /* left on a coroutine that went on to run something else */
  hook_armed = 0;
  lasync__push_error(L, "cancelled", stopping == 143 ? "terminated" : "interrupted");
  lua_error(L);
}

static void exit_now(int code) {
  static const char msg[] = "\nlasync: signalled again, exiting now\n";
  ssize_t ignored;
  lasync__repl_restore_tty();
  lasync__kill_children_now(); /* in their own groups: nothing else would stop them */
  ignored = write(2, msg, sizeof msg - 1);
  (void)ignored;
  _exit(code);
}

static void on_signal(int signum) {
  int code = signum == SIGTERM ? 143 : 130;
  int repl = signum == SIGINT && lasync__repl_active();
  lasync__task *t = runtime->current;
  if (signal_pending || stopping) exit_now(code);
  signal_pending = signum;
  if (!repl) stopping = code;
  /* At the REPL only the chunk is interrupted: a background task's step that happens to be
   * running is left alone (a blocked loop is what a second Ctrl-C is for). */
  if (t && t->co && (!repl || t == lasync__repl_chunk())) {
    hook_armed = 1;
    lua_sethook(t->co, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  }
  uv_async_send(&signal_async);
}

/* While HTTP servers are open, a first SIGINT or SIGTERM closes them gracefully (5 s, see
 * async.http.close_servers in lua/http/server.lua) before cancelling every task: responses in
 * flight are finished with Connection: close, then the tasks left are cancelled. A second
 * signal exits at once, as always. */
/* Once the servers have closed: the rest is cancelled, as the signal asked. Its upvalue is
 * the signal's number. */
static int cancel_the_rest(lua_State *L) {
  int signum = (int)lua_tointeger(L, lua_upvalueindex(1));
  lasync__cancel_all(runtime, signum == SIGTERM ? "terminated" : "interrupted");
  return 0;
}

typedef struct {
  int signum; /* the signal being handled */
  int took;   /* out: servers were open and are closing */
} server_close;

/* Under lasync__cpcall: [light server_close *] -> []. */
static int close_servers_protected(lua_State *L) {
  server_close *sc = (server_close *)lua_touserdata(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lasync");
  lua_call(L, 1, 1);
  /* rawget: a script that never read async.http has not loaded it (bindings/lasync.c), and then
   * has no server to close. */
  if (lua_type(L, -1) == LUA_TTABLE &&
      (lua_pushliteral(L, "http"), lua_rawget(L, -2)) == LUA_TTABLE &&
      lua_getfield(L, -1, "close_servers") == LUA_TFUNCTION) {
    lua_pushnumber(L, 5);
    lua_pushinteger(L, sc->signum);
    lua_pushcclosure(L, cancel_the_rest, 1);
    lua_call(L, 2, 1);
    sc->took = lua_istable(L, -1) && lua_rawlen(L, -1) > 0;
  }
  return 0;
}

/* Whether open servers took the signal; a failure there (out of memory, say) falls back to
 * cancelling everything, which is what the signal asks for anyway. */
static int close_servers(lasync__runtime *rt, int signum) {
  server_close sc = {signum, 0};
  if (lasync__cpcall(rt->L, close_servers_protected, &sc) != LUA_OK) return 0;
  return sc.took;
}

/* libuv calls this on the loop after on_signal. */
static void on_signal_async(uv_async_t *handle) {
  int signum = signal_pending;
  (void)handle;
  hook_armed = 0;
  signal_pending = 0;
  if (signum == 0) return;
  if (signum == SIGINT && !stopping && lasync__repl_interrupt(runtime)) return;
  if (close_servers(runtime, signum)) return;
  lasync__cancel_all(runtime, signum == SIGTERM ? "terminated" : "interrupted");
}

void lasync__signals_watch(lasync__runtime *rt) {
  struct sigaction sa;
  runtime = rt;
  uv_async_init(rt->loop, &signal_async, on_signal_async);
  uv_unref((uv_handle_t *)&signal_async);
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

static void on_async_closed(uv_handle_t *handle) { (void)handle; }

/* Before the runtime closes: the handler must not wake a closed handle. */
void lasync__signals_unwatch(void) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  uv_close((uv_handle_t *)&signal_async, on_async_closed);
}

int lasync__signals_status(void) { return stopping; }
