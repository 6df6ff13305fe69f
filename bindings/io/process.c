/* Processes: the C half of async.process (lua/process.lua composes run, shell and timeouts).
 *
 * A child is a uv_process_t on the handle layer, started in its own session and so its own
 * process group (UV_PROCESS_DETACHED: setsid), so that a timeout, a cancellation or a close
 * signals everything it started, and a grandchild still holding the pipes cannot outlive the
 * caller's patience. Its pipes are the byte streams of io/stream.c. libuv reaps the child (its
 * SIGCHLD watcher) and calls on_child_exit; from then on the pid is never signalled again, except
 * its group while that group still holds our pipes (a live member keeps the id from being
 * reused). A handle closed before the exit (close, __gc, shutdown) kills the group and reaps
 * the child itself, so no zombie is left.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "private.h"

#define PROC_MT "lasync.Process"

typedef struct {
  lasync__handle h;
  uv_process_t proc;
  int pid;
  int exited;
  int64_t code;
  int signal;
  lasync__waitlist waiters;
} process;

/* The children not yet reaped, for a host that exits at once from a signal handler
 * (lasync__kill_children_now): they are in their own groups, so the terminal's Ctrl-C never
 * reached them, and _exit would leave them running. A fixed table, since the handler can
 * neither lock nor walk a list being changed: slots are claimed with a compare-and-swap (loop
 * threads of several runtimes) and read one aligned int at a time. A child past the table's
 * size is not killed there, only by the normal paths. */
#define CHILD_SLOTS 1024
static int child_pids[CHILD_SLOTS];

static void track_child(int pid) {
  int i;
  for (i = 0; i < CHILD_SLOTS; i++) {
    int free_slot = 0;
    if (__atomic_compare_exchange_n(&child_pids[i], &free_slot, pid, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      return;
  }
}

static void untrack_child(int pid) {
  int i;
  for (i = 0; i < CHILD_SLOTS; i++) {
    int mine = pid;
    if (__atomic_compare_exchange_n(&child_pids[i], &mine, 0, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      return;
  }
}

void lasync__kill_children_now(void) {
  int i;
  for (i = 0; i < CHILD_SLOTS; i++) {
    int pid = __atomic_load_n(&child_pids[i], __ATOMIC_SEQ_CST);
    if (pid > 0) kill(-pid, SIGKILL); /* async-signal-safe; reaped ones were untracked */
  }
}

/* Called by libuv once the child has been reaped. */
static void on_child_exit(uv_process_t *p, int64_t code, int signal) {
  process *pr = (process *)LASYNC__HANDLE_OF(p);
  untrack_child(pr->pid);
  pr->exited = 1;
  pr->code = code;
  pr->signal = signal;
  lasync__waitlist_settle(&pr->waiters);
}


/* Closed before its exit: the group is killed, and the child reaped in on_free, once libuv has
 * forgotten the pid (waitpid there cannot race libuv's own). */
static void process_on_close(lasync__handle *h) {
  process *pr = (process *)h;
  if (!pr->exited && pr->pid > 0) kill(-pr->pid, SIGKILL);
  lasync__waitlist_settle(&pr->waiters); /* they find the object closed */
}

static void process_on_free(lasync__handle *h) {
  process *pr = (process *)h;
  if (!pr->exited && pr->pid > 0) {
    int status;
    while (waitpid(pr->pid, &status, 0) < 0 && errno == EINTR) {
    }
    untrack_child(pr->pid);
  }
}

/* ---- spawn(file, args, cwd, env, stdio[3]) ---- */

static int stdio_kind(lua_State *L, int idx, int fd) {
  static const char *const kinds[] = {"inherit", "null", "pipe", NULL};
  const char *s;
  int i;
  if (lua_isnoneornil(L, idx)) return 0;
  s = lua_tostring(L, idx);
  for (i = 0; s && kinds[i]; i++)
    if (strcmp(kinds[i], s) == 0) return i;
  return lasync__misuse(L,
                    "async.process.spawn: bad option '%s' (\"pipe\", \"inherit\" or \"null\" "
                    "expected, got %s)",
                    fd == 0   ? "stdin"
                    : fd == 1 ? "stdout"
                              : "stderr",
                    s ? s : lasync__typename(L, idx));
}

/* Strings of the array at idx, NULL-terminated, pointing into Lua strings anchored there; in
 * a userdata pushed on the stack (freed by the GC, so a raise leaks nothing). */
static char **string_array(lua_State *L, int idx) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), i;
  char **v = (char **)lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    v[i - 1] = (char *)lua_tostring(L, -1);
    lua_pop(L, 1); /* still anchored in the array */
  }
  v[n] = NULL;
  return v;
}

/* core.process.spawn(args, cwd, env, stdin, stdout, stderr) -> proc, pid, in, out, err. The
 * Lua side has checked args (a non-empty array of strings without NUL) and env (an array of
 * "K=V" or nil). */
static int l_spawn(lua_State *L) {
  lasync__runtime *rt = lasync__runtime_get(L);
  const char *cwd = luaL_optstring(L, 2, NULL);
  int kinds[3], i, err;
  char **args, **env = NULL;
  uv_process_options_t opts;
  uv_stdio_container_t stdio[3];
  lasync__stream *pipes[3] = {NULL, NULL, NULL};
  process *pr;
  lasync__handle **box;
  luaL_checktype(L, 1, LUA_TTABLE);
  for (i = 0; i < 3; i++) kinds[i] = stdio_kind(L, 4 + i, i);
  lua_settop(L, 6);
  args = string_array(L, 1); /* 7 */
  if (lua_istable(L, 3))
    env = string_array(L, 3); /* 8 */
  else
    lua_pushnil(L);
  /* Every Lua object before the handle: a memory error then leaves nothing running. */
  box = (lasync__handle **)lua_newuserdatauv(L, sizeof *box, 0); /* 9 */
  *box = NULL;
  luaL_setmetatable(L, PROC_MT);
  for (i = 0; i < 3; i++) {
    if (kinds[i] != 2) {
      lua_pushnil(L);
      continue;
    }
    pipes[i] = lasync__stream_new(L, LASYNC__STREAM_PIPE);
    err = uv_pipe_init(rt->loop, &pipes[i]->u.pipe, 0);
    if (err < 0) goto fail_pipes;
    lasync__stream_init(pipes[i]);
  }
  pr = (process *)lasync__handle_new(rt, sizeof *pr);
  if (pr == NULL) {
    err = UV_ENOMEM;
    goto fail_pipes;
  }
  pr->h.on_close = process_on_close;
  pr->h.on_free = process_on_free;
  memset(&opts, 0, sizeof opts);
  opts.exit_cb = on_child_exit;
  opts.file = args[0];
  opts.args = args;
  opts.env = env;
  opts.cwd = cwd;
  opts.flags = UV_PROCESS_DETACHED;
  opts.stdio_count = 3;
  opts.stdio = stdio;
  for (i = 0; i < 3; i++) {
    if (kinds[i] == 0) {
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = i;
    } else if (kinds[i] == 1) {
      stdio[i].flags = UV_IGNORE; /* /dev/null */
    } else {
      stdio[i].flags =
          (uv_stdio_flags)(UV_CREATE_PIPE | (i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE));
      stdio[i].data.stream = &pipes[i]->u.stream;
    }
  }
  /* uv_spawn initialises the handle even when it fails: record it first, so closing it is
   * libuv's business either way. */
  lasync__handle_init(&pr->h, (uv_handle_t *)&pr->proc);
  err = uv_spawn(rt->loop, &pr->proc, &opts);
  if (err < 0) {
    lasync__handle_close(&pr->h);
    goto fail_pipes;
  }
  pr->pid = pr->proc.pid;
  track_child(pr->pid);
  *box = &pr->h;
  pr->h.owner = box;
  lua_pushvalue(L, 9);
  lua_pushinteger(L, pr->pid);
  for (i = 0; i < 3; i++) lua_pushvalue(L, 10 + i);
  return 5;

fail_pipes:
  for (i = 0; i < 3; i++)
    if (pipes[i]) lasync__stream_close(pipes[i]);
  lasync__push_uv_error(L, "spawn", err, NULL);
  lua_pushfstring(L, "%s: %s, spawn '%s'", uv_err_name(err), uv_strerror(err), args[0]);
  lua_setfield(L, -2, "message");
  lua_pushstring(L, args[0]);
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "spawn");
  lua_setfield(L, -2, "syscall");
  return lua_error(L);
}

/* ---- the process object ---- */

static process *check_proc(lua_State *L, const char *fname) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, PROC_MT);
  if (box == NULL) lasync__argerror(L, 1, fname, "self", PROC_MT);
  return box ? (process *)*box : NULL;
}

static void push_status(lua_State *L, process *pr) {
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)pr->code);
  lua_setfield(L, -2, "code");
  if (pr->signal) {
    lua_pushinteger(L, pr->signal);
    lua_setfield(L, -2, "signal");
  }
  lua_pushboolean(L, pr->code == 0 && pr->signal == 0);
  lua_setfield(L, -2, "ok");
}

static void wait_cancel(lasync__task *t, void *data) {
  lasync__handle **box = (lasync__handle **)data;
  if (*box) lasync__waitlist_remove(&((process *)*box)->waiters, &t->waiter);
}

static int wait_finish(lua_State *L, lasync__task *t, void *data) {
  lasync__handle **box = (lasync__handle **)data;
  (void)t;
  if (*box == NULL || !((process *)*box)->exited) {
    lasync__push_error(L, "closed", "process:wait: the process object was closed");
    return lua_error(L);
  }
  push_status(L, (process *)*box);
  return 1;
}

static const lasync__awaitable_ops WAIT_OPS = {"process.wait", wait_cancel, wait_finish, NULL};

/* proc:wait() -> {code, signal, ok} once the child has exited. */
static int proc_wait(lua_State *L) {
  process *pr = check_proc(L, "process:wait");
  lasync__task *t;
  if (pr == NULL) {
    lasync__push_error(L, "closed", "process:wait: the process object is closed");
    return lua_error(L);
  }
  if (pr->exited) {
    push_status(L, pr);
    return 1;
  }
  t = lasync__check_task(L, "process:wait");
  lasync__waitlist_add_task(&pr->waiters, t);
  return lasync__suspend(L, t, &WAIT_OPS, lua_touserdata(L, 1));
}

/* proc:kill(signum, group_after_exit) -> whether a signal was sent. The whole group is
 * signalled; after the exit, only when asked (the caller knows the group still holds its
 * pipes), since the pid may otherwise belong to someone else by now. */
static int proc_kill(lua_State *L) {
  process *pr = check_proc(L, "process:kill");
  lua_Integer signum = luaL_optinteger(L, 2, SIGTERM);
  int sig, err;
  if (signum < 0 || signum > 64) /* (int) would wrap 2^32 + 9 to SIGKILL */
    return lasync__misuse(L, "process:kill: bad argument #2 'signal' (no signal %I)",
                          (LUAI_UACINT)signum);
  sig = (int)signum;
  if (pr == NULL || (pr->exited && !lua_toboolean(L, 3))) {
    lua_pushboolean(L, 0);
    return 1;
  }
  err = kill(-pr->pid, sig) == 0 ? 0 : -errno;
  if (err == UV_ESRCH && !pr->exited) err = uv_process_kill(&pr->proc, sig);
  if (err < 0 && err != UV_ESRCH) {
    lasync__push_uv_error(L, "spawn", err, "kill");
    return lua_error(L);
  }
  lua_pushboolean(L, err == 0);
  return 1;
}

/* proc:status() -> {code, signal, ok} or nil while it runs. */
static int proc_status(lua_State *L) {
  process *pr = check_proc(L, "process:status");
  if (pr == NULL || !pr->exited) return 0;
  push_status(L, pr);
  return 1;
}

/* process:close(), and __gc (which always gets the right self). */
static int proc_close(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, PROC_MT);
  if (box == NULL) return lasync__argerror(L, 1, "process:close", NULL, PROC_MT);
  if (*box) lasync__handle_close(*box);
  return 0;
}

/* The current environment as {name = value}, for run's env merging. */
static int l_environ(lua_State *L) {
  uv_env_item_t *items;
  int n, i, err = uv_os_environ(&items, &n);
  if (err < 0) {
    lasync__push_uv_error(L, "spawn", err, "environ");
    return lua_error(L);
  }
  lua_createtable(L, 0, n);
  for (i = 0; i < n; i++) {
    lua_pushstring(L, items[i].value);
    lua_setfield(L, -2, items[i].name);
  }
  uv_os_free_environ(items, n);
  return 1;
}

void lasync__open_process(lua_State *L) {
  static const luaL_Reg methods[] = {{"wait", proc_wait},
                                     {"kill", proc_kill},
                                     {"status", proc_status},
                                     {"close", proc_close},
                                     {NULL, NULL}};
  static const struct {
    const char *name;
    int num;
  } sigs[] = {{"SIGHUP", SIGHUP},    {"SIGINT", SIGINT},   {"SIGQUIT", SIGQUIT},
              {"SIGKILL", SIGKILL},  {"SIGUSR1", SIGUSR1}, {"SIGUSR2", SIGUSR2},
              {"SIGPIPE", SIGPIPE},  {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM},
              {"SIGCONT", SIGCONT},  {"SIGSTOP", SIGSTOP}, {"SIGTSTP", SIGTSTP},
              {"SIGWINCH", SIGWINCH}};
  size_t i;
  luaL_newmetatable(L, PROC_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, proc_close);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_createtable(L, 0, 3); /* core.process */
  lua_pushcfunction(L, l_spawn);
  lua_setfield(L, -2, "spawn");
  lua_pushcfunction(L, l_environ);
  lua_setfield(L, -2, "environ");
  lua_createtable(L, 0, (int)(sizeof sigs / sizeof sigs[0]));
  for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    lua_pushinteger(L, sigs[i].num);
    lua_setfield(L, -2, sigs[i].name);
  }
  lua_setfield(L, -2, "signals");
  lua_setfield(L, -2, "process");
}
