/* The lasync executable: the `lua` command, with the script's main chunk running as the main
 * task of an event loop. Options follow lua.c (Lua 5.4) so scripts, shebangs and tools such as
 * busted run unchanged. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "cli.h"    /* the executable-only parts: line editor, signals */
#include "lasync.h" /* only the public API, as lua.c uses only lua.h */

static const char *progname = "lasync";

/* What collect_args found on the command line. */
enum {
  HAS_ERROR = 1,
  HAS_I = 2,
  HAS_V = 4,
  HAS_E = 8,
  HAS_LOWER_E = 16,
  HAS_HELP = 32,
  HAS_DEBUG = 64
};

static lasync_runtime *runtime;
static long unhandled; /* failures nobody awaited, as on_error last saw the count */

/* LASYNC_MAX_MEMORY=<MiB>: a cap on the Lua heap (lasync_options.max_memory). An allocation
 * past it fails, which Lua turns into a "not enough memory" error in the task that asked; the
 * host and other tasks go on. */

static lasync_task *main_task;

/* A failed task nobody awaited (exit status 1), or a failure handled by reporting it, such as a
 * server's handler (exit status unchanged): the same lines as the default handler. */
static void on_error(lasync_runtime *rt, const char *report, void *data) {
  (void)data;
  unhandled = lasync_unhandled_failures(rt);
  fprintf(stderr, "lasync: a task failed and nobody awaited it:\n%s\n", report);
  fflush(stderr);
}

/* Prints the usage, to stdout when asked for (badoption NULL), else to stderr after the error. */
static void print_usage(const char *badoption) {
  FILE *out = badoption ? stderr : stdout;
  if (badoption && (badoption[1] == 'e' || badoption[1] == 'l'))
    fprintf(stderr, "%s: '%s' needs argument\n", progname, badoption);
  else if (badoption)
    fprintf(stderr, "%s: unrecognized option '%s'\n", progname, badoption);
  fprintf(out,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat        execute string 'stat'\n"
          "  -i             enter interactive mode after executing 'script'\n"
          "  -l mod         require library 'mod' into global 'mod'\n"
          "  -l g=mod       require library 'mod' into global 'g'\n"
          "  -v, --version  show version information\n"
          "  -E             ignore environment variables\n"
          "  -W             turn warnings on\n"
          "  -h, --help     show this help\n"
          "  --debug        debug mode: report task steps that hold the loop > 100 ms\n"
          "  --             stop handling options\n"
          "  -              stop handling options and execute stdin\n"
          "The script's main chunk runs as the main task: async calls work at top level.\n",
          progname);
}

static void print_version(void) {
  printf("lasync %s (%s, libuv %s)\n", lasync_version(), LUA_RELEASE, uv_version_string());
  fflush(stdout);
}

/* Scans the options as lua.c does; returns the index of the script, or argc if none. */
static int collect_args(int argc, char **argv, int *flags) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') return i;
    if (strcmp(a, "--version") == 0) {
      *flags |= HAS_V;
      continue;
    }
    if (strcmp(a, "--debug") == 0) {
      *flags |= HAS_DEBUG;
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      *flags |= HAS_HELP;
      return argc;
    }
    switch (a[1]) {
      case '-':
        if (a[2] != '\0') goto bad;
        return i + 1 < argc ? i + 1 : argc;
      case '\0':
        return i;
      case 'E':
        if (a[2] != '\0') goto bad;
        *flags |= HAS_E;
        break;
      case 'W':
        if (a[2] != '\0') goto bad;
        break;
      case 'i':
        if (a[2] != '\0') goto bad;
        *flags |= HAS_I | HAS_V;
        break;
      case 'v':
        if (a[2] != '\0') goto bad;
        *flags |= HAS_V;
        break;
      case 'e':
        *flags |= HAS_LOWER_E;
        /* fall through */
      case 'l':
        /* A missing argument is the option's error ("'-e' needs argument"), as in lua.c. */
        if (a[2] == '\0' && (i + 1 >= argc || argv[i + 1][0] == '-')) goto bad;
        if (a[2] == '\0') i++;
        break;
      default:
        goto bad;
    }
  }
  return argc;
bad:
  *flags = HAS_ERROR;
  return i;
}

/* arg[0] is the script, negative indices the interpreter and its options, as lua.c does. */
static void create_arg_table(lua_State *L, char **argv, int argc, int script) {
  int i, narg = argc - (script + 1);
  if (script == argc) script = 0;
  lua_createtable(L, narg > 0 ? narg : 0, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static void add_step(lua_State *L, int plan, const char *kind) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvalue(L, -1);
  lua_rawseti(L, plan, (lua_Integer)luaL_len(L, plan) + 1);
}

/* The plan the main task carries out: LUA_INIT, then -e/-l/-W in order, then the script or
 * stdin or the REPL. */
static void build_plan(lua_State *L, char **argv, int argc, int script, int flags) {
  int plan, i;
  lua_newtable(L);
  plan = lua_gettop(L);
  if (!(flags & HAS_E)) {
    const char *name = "=LUA_INIT_5_4";
    const char *init = getenv("LUA_INIT_5_4");
    if (init == NULL) {
      name = "=LUA_INIT";
      init = getenv("LUA_INIT");
    }
    if (init != NULL) {
      if (init[0] == '@') {
        add_step(L, plan, "f");
        lua_pushstring(L, init + 1);
        lua_setfield(L, -2, "path");
      } else {
        add_step(L, plan, "e");
        lua_pushstring(L, init);
        lua_setfield(L, -2, "code");
        lua_pushstring(L, name);
        lua_setfield(L, -2, "name");
      }
      lua_pop(L, 1);
    }
  }
  for (i = 1; i < script; i++) {
    const char *a = argv[i];
    if (a[1] == 'e' || a[1] == 'l') {
      const char *value = a[2] ? a + 2 : argv[++i];
      add_step(L, plan, a[1] == 'e' ? "e" : "l");
      lua_pushstring(L, value);
      lua_setfield(L, -2, a[1] == 'e' ? "code" : "name");
      lua_pop(L, 1);
    } else if (a[1] == 'W') {
      add_step(L, plan, "W");
      lua_pop(L, 1);
    }
  }
  if (script < argc) {
    add_step(L, plan, "script");
    /* "-" is stdin unless it came after "--". */
    if (strcmp(argv[script], "-") != 0 || strcmp(argv[script - 1], "--") == 0)
      lua_pushstring(L, argv[script]);
    else
      lua_pushnil(L);
    lua_setfield(L, -2, "path");
    lua_createtable(L, argc - script - 1, 1);
    for (i = script + 1; i < argc; i++) {
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, i - script);
    }
    lua_pushinteger(L, argc - script - 1);
    lua_setfield(L, -2, "n");
    lua_setfield(L, -2, "args");
    lua_pop(L, 1);
  }
  if ((flags & HAS_I) || (script == argc && !(flags & (HAS_LOWER_E | HAS_V)))) {
    if ((flags & HAS_I) || isatty(0)) {
      if (!(flags & HAS_V)) print_version();
      add_step(L, plan, "repl");
      lasync__repl_push(L); /* host/lineedit.c */
      lua_setfield(L, -2, "run");
    } else {
      add_step(L, plan, "script"); /* no path: stdin */
      lua_createtable(L, 0, 1);
      lua_pushinteger(L, 0);
      lua_setfield(L, -2, "n");
      lua_setfield(L, -2, "args");
    }
    lua_pop(L, 1);
  }
}

static void on_signal_closed(uv_handle_t *handle) { (void)handle; }

/* libuv calls this on SIGQUIT (Ctrl-\\): prints the live tasks, as async.dump() does, from a
 * task of its own, so a failure there is reported like any other. */
static void on_sigquit(uv_signal_t *handle, int signum) {
  lua_State *L = lasync_lua(runtime);
  (void)handle;
  (void)signum;
  if (lasync_spawn_string(runtime, "require('lasync').dump()", "=[SIGQUIT]", NULL) != LASYNC_OK) {
    fprintf(stderr, "lasync: cannot dump the tasks: %s\n",
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "not enough memory");
    lua_settop(L, 0);
  }
}

/* Runs the loop until no task is left; tasks that wait on something nothing can complete are
 * cancelled so their cleanup runs, and reported. */
static int run_to_completion(lasync_runtime *rt) {
  int rounds = 0;
  while (lasync_run(rt) == LASYNC_EBUSY) {
    if (rounds++ == 3) {
      fputs("lasync: tasks still wait after being cancelled; giving up\n", stderr);
      break;
    }
    fputs("lasync: tasks wait on something that nothing can complete (deadlock); "
          "cancelling them\n", stderr);
    lasync_cancel_all(rt, "deadlock: nothing left could wake this task");
  }
  return rounds > 0;
}

/* What the host does in the state before the main task starts, under one protected call as
 * lua.c's pmain: [argv, argc, script, flags] -> [host chunk, plan]. */
static int pmain(lua_State *L) {
  char **argv = (char **)lua_touserdata(L, 1);
  int argc = (int)lua_tointeger(L, 2), script = (int)lua_tointeger(L, 3);
  int flags = (int)lua_tointeger(L, 4);
  lua_settop(L, 0);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lasync");
  lua_call(L, 1, 1); /* [async] */
  if (flags & HAS_DEBUG) {
    lua_getfield(L, 1, "debug");
    lua_pushboolean(L, 1);
    lua_call(L, 1, 0);
  }
  create_arg_table(L, argv, argc, script);
  lua_getfield(L, 1, "_host"); /* lua/host.lua, the main task's body */
  lua_call(L, 0, 1);
  build_plan(L, argv, argc, script, flags);
  lua_remove(L, 1);
  return 2;
}

/* A load failure (a syntax error, a missing script) is one line, as lua5.4 prints it: the host
 * returns it as {lasync_load_error = message} rather than raising it from its own frames. */
static const char *load_error(lua_State *L, int n) {
  if (n < 1 || lua_type(L, -n) != LUA_TTABLE) return NULL;
  lua_getfield(L, -n, "lasync_load_error");
  if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
  lua_pop(L, 1);
  return NULL;
}

int main(int argc, char **argv) {
  lua_State *L;
  lasync_options opts;
  uv_signal_t sigquit;
  const char *cap = getenv("LASYNC_MAX_MEMORY");
  int flags = 0, script, status = 0, deadlocked, err, n;
  if (argv[0] && argv[0][0]) progname = argv[0];
  signal(SIGPIPE, SIG_IGN);
  script = collect_args(argc, argv, &flags);
  if (flags & HAS_HELP) {
    print_version();
    print_usage(NULL);
    return 0;
  }
  if (flags & HAS_ERROR) {
    print_usage(argv[script]);
    return 1;
  }
  if (flags & HAS_V) print_version();
  memset(&opts, 0, sizeof opts);
  opts.on_error = on_error;
  opts.ignore_env = (flags & HAS_E) != 0;
  if (cap != NULL && atof(cap) > 0) {
    /* MiB; past what a size_t holds (1e30, inf) the cap is no cap: the cast would be undefined */
    double bytes = atof(cap) * 1024 * 1024;
    opts.max_memory = bytes < (double)SIZE_MAX ? (size_t)bytes : SIZE_MAX;
  }
  /* lua.c switches to the generational collector; it measured slower here, where many tasks
   * stay alive together (bench/), so the host keeps Lua's incremental default. */
  if ((err = lasync_new(&runtime, &opts)) != LASYNC_OK) {
    fprintf(stderr, "%s: cannot start: %s\n", progname, lasync_strerror(err));
    return 1;
  }
  L = lasync_lua(runtime);
  lua_pushcfunction(L, pmain);
  lua_pushlightuserdata(L, argv);
  lua_pushinteger(L, argc);
  lua_pushinteger(L, script);
  lua_pushinteger(L, flags);
  if (lua_pcall(L, 4, 2, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname,
            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "not enough memory");
    lasync_destroy(runtime);
    return 1;
  }
  if ((err = lasync_spawn_call(runtime, 1, &main_task)) != LASYNC_OK ||
      (err = lasync_task_set_name(main_task, "main")) != LASYNC_OK) {
    fprintf(stderr, "%s: cannot start the main task: %s\n", progname, lasync_strerror(err));
    lasync_destroy(runtime);
    return 1;
  }

  lasync__signals_watch(runtime); /* SIGINT, SIGTERM: host/signals.c */
  uv_signal_init(lasync_loop(runtime), &sigquit);
  uv_signal_start(&sigquit, on_sigquit, SIGQUIT);
  uv_unref((uv_handle_t *)&sigquit);

  deadlocked = run_to_completion(runtime);

  switch (lasync_task_status(main_task)) {
    case LASYNC_TASK_DONE: {
      const char *msg;
      n = lasync_task_result(main_task, L);
      if ((msg = load_error(L, n)) != NULL) {
        fprintf(stderr, "%s: %s\n", progname, msg);
        status = 1;
      }
      lua_settop(L, 0);
      break;
    }
    case LASYNC_TASK_CANCELLED:
      if (lasync__signals_status()) {
        status = lasync__signals_status();
        break;
      }
      /* Cancelled by a deadlock, say: a failure of the program. */
      /* fall through */
    default: {
      const char *report = lasync_task_report(main_task, L);
      if (report == NULL && lasync_task_result(main_task, L) == LASYNC_ELUA)
        report = luaL_tolstring(L, -1, NULL);
      fprintf(stderr, "%s: %s\n", progname, report ? report : "the main task did not finish");
      lua_settop(L, 0);
      status = 1;
    }
  }
  if (lasync__signals_status() && status == 0) status = lasync__signals_status();
  if (deadlocked && status == 0) status = 1;
  lasync_task_release(main_task);

  lasync__signals_unwatch();
  uv_close((uv_handle_t *)&sigquit, on_signal_closed);
  lasync_destroy(runtime); /* failures found as the state closes are counted too */
  if (unhandled && status == 0) status = 1;
  return status;
}
