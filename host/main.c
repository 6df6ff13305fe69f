/* The lasync executable: the `lua` command, with the script's main chunk running as the main
 * task of an event loop. Options follow lua.c (Lua 5.4) so scripts, shebangs and tools such as
 * busted run unchanged. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lualib.h>

#include "../bindings/private.h"
#include "lineedit.h"

int luaopen_lasync(lua_State *L);

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

static lasync__runtime *runtime;

/* LASYNC_MAX_MEMORY=<MiB>: a cap on the Lua heap. An allocation past it fails, which Lua turns
 * into a "not enough memory" error in the task that asked; the host and other tasks go on. The
 * state lives on lasync's size-class heap (bindings/core/alloc.c), which counts as it goes, so
 * the cap costs nothing. */
static lasync__heap *heap;

static lua_State *new_state(void) {
  const char *cap = getenv("LASYNC_MAX_MEMORY");
  lua_State *L;
  heap = lasync__heap_new(cap && atof(cap) > 0 ? (size_t)(atof(cap) * 1024 * 1024) : 0);
  if (heap == NULL) return NULL;
  if ((L = lasync__heap_newstate(heap)) == NULL) lasync__heap_free(heap);
  return L;
}

static lasync__task *main_task;

/* Pushes lua/host.lua as a chunk, under lua_pcall. */
static int load_host(lua_State *L) {
  lasync__load_lua(L, "host", "=[lasync host]");
  return 1;
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
  printf("lasync %s (%s, libuv %s)\n", LASYNC_VERSION, LUA_RELEASE, uv_version_string());
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
        if (a[2] == '\0' && (++i >= argc || argv[i][0] == '-')) goto bad;
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

/* libuv calls this on SIGQUIT (Ctrl-\\): prints the live tasks, as async.dump() does. */
static void on_sigquit(uv_signal_t *handle, int signum) {
  lua_State *L = runtime->L;
  (void)handle;
  (void)signum;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lasync");
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_getfield(L, -1, "dump") == LUA_TFUNCTION) {
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
  }
  lua_settop(L, 0);
}

/* Runs the loop until no task is left; a task that waits on something nothing can complete is
 * cancelled so its cleanup runs, and reported. */
static int run_to_completion(lasync__runtime *rt) {
  int rounds = 0;
  while (lasync__run_until_done(rt, NULL) != 0) {
    if (rounds++ == 3) {
      fprintf(stderr, "lasync: %ld task(s) still wait after being cancelled; giving up\n",
              rt->live_tasks);
      break;
    }
    fprintf(stderr, "lasync: %ld task(s) wait on something that nothing can complete "
                    "(deadlock); cancelling them\n", rt->live_tasks);
    lasync__cancel_all(rt, "deadlock: nothing left could wake this task");
  }
  return rounds > 0;
}

int main(int argc, char **argv) {
  lua_State *L;
  uv_signal_t sigquit;
  int flags = 0, script, status = 0, deadlocked;
  int main_ref;
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
  L = new_state();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return 1;
  }
  if (flags & HAS_E) {
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
  }
  luaL_openlibs(L);
  /* lua.c switches to the generational collector; it measured slower here, where many tasks
   * stay alive together (bench/), so the host keeps Lua's incremental default. */
  runtime = lasync__runtime_open(L, NULL);
  if (runtime == NULL) {
    fprintf(stderr, "%s: cannot open the event loop\n", progname);
    return 1;
  }
  /* Loaded before the main task exists, since the module registers the Task type. */
  luaL_requiref(L, "lasync", luaopen_lasync, 0);
  if (flags & HAS_DEBUG) {
    lua_getfield(L, -1, "debug");
    lua_pushboolean(L, 1);
    lua_call(L, 1, 0);
  }
  lua_pop(L, 1);
  create_arg_table(L, argv, argc, script);

  lua_pushcfunction(L, load_host);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    return 1;
  }
  build_plan(L, argv, argc, script, flags);
  main_task = lasync__spawn(L, -2, 1);
  lasync__push_extra(L, -1); /* it shows as 'main' in async.tasks() and tracebacks' labels */
  lua_pushliteral(L, "main");
  lua_setfield(L, -2, "name");
  lua_pop(L, 1);
  main_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* the host looks at it after it finishes */

  lasync__signals_watch(runtime); /* SIGINT, SIGTERM: host/signals.c */
  uv_signal_init(runtime->loop, &sigquit);
  uv_signal_start(&sigquit, on_sigquit, SIGQUIT);
  uv_unref((uv_handle_t *)&sigquit);

  deadlocked = run_to_completion(runtime);

  if (main_task->status != LASYNC__DONE) {
    if (main_task->status == LASYNC__CANCELLED && lasync__signals_status()) {
      status = lasync__signals_status();
    } else {
      lua_rawgeti(L, LUA_REGISTRYINDEX, main_ref);
      lasync__mark_observed(L, main_task, -1); /* reported here, not again at collection */
      lua_getiuservalue(L, -1, LASYNC__UV_FN);
      fprintf(stderr, "%s: %s\n", progname, lasync__describe(L, -1));
      lua_pop(L, 2);
      if (lua_getiuservalue(L, -1, LASYNC__UV_ARGS) == LUA_TSTRING)
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
      lua_pop(L, 2);
      status = 1;
    }
  }
  if (lasync__signals_status() && status == 0) status = lasync__signals_status();
  if (deadlocked && status == 0) status = 1;
  luaL_unref(L, LUA_REGISTRYINDEX, main_ref);

  lasync__signals_unwatch();
  uv_close((uv_handle_t *)&sigquit, on_signal_closed);
  lasync__runtime_close(runtime);
  lua_close(L);
  lasync__heap_free(heap);
  if (runtime->unhandled_failures && status == 0) status = 1;
  free(runtime);
  return status;
}
