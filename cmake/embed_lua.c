/* Build-time tool: writes a C file holding every lua/ file given, precompiled, and the table
 * lasync__lua_files[] naming them by their path under lua/ without ".lua" ("lasync",
 * "http/client"); a new file in lua/ needs no line anywhere (CMakeLists.txt globs them).
 *
 * Each file is compiled here, with the chunk name it will carry at run time, and dumped with its
 * debug information (lines, local and upvalue names), so tracebacks and error positions read
 * "[lasync]:123:" exactly as when the source was compiled at start-up, which cost most of a
 * lasync start-up (docs/design.md, "Start-up"). The source is embedded too: a Lua whose binary
 * format differs from the headers this was built with (another lua_Number, say) refuses the
 * bytecode, and the loader compiles the source instead (bindings/lasync.c).
 *
 * usage: embed_lua OUT LUA_DIR [--chunkname NAME CHUNK]... FILE...
 * A file's chunk name is "=[lasync]" (LASYNC__LIB_CHUNK) unless a --chunkname names it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "private.h" /* LASYNC__LIB_CHUNK, lasync__lua_file */

#define MAX_NAMED 16

typedef struct {
  FILE *out;
  size_t n;
} sink;

static void die(const char *what, const char *detail) {
  fprintf(stderr, "embed_lua: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(1);
}

static void put_bytes(sink *s, const unsigned char *p, size_t len) {
  size_t i;
  for (i = 0; i < len; i++, s->n++) fprintf(s->out, "%s%d,", s->n % 24 ? "" : "\n", p[i]);
}

static int writer(lua_State *L, const void *p, size_t len, void *ud) {
  (void)L;
  put_bytes((sink *)ud, (const unsigned char *)p, len);
  return 0;
}

static char *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long size = 0;
  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0) die("cannot read", path);
  rewind(f);
  buf = (char *)malloc((size_t)size + 1);
  if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) die("cannot read", path);
  fclose(f);
  *len = (size_t)size;
  return buf;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Writes lua_dir/rel as the arrays source<i> and code<i>; returns its table entry. */
typedef struct {
  char name[256];
  const char *chunkname;
  size_t source_len, code_len;
} entry;

static void embed(lua_State *L, FILE *out, size_t i, const char *path, size_t rootlen,
                  const char *const (*named)[2], size_t nnamed, entry *e) {
  size_t len, j, nlen = strlen(path + rootlen + 1);
  char *src = read_all(path, &len);
  sink s = {out, 0};
  if (nlen < 5 || nlen - 4 >= sizeof e->name || strcmp(path + rootlen + 1 + nlen - 4, ".lua"))
    die("not a .lua file", path);
  memcpy(e->name, path + rootlen + 1, nlen - 4);
  e->name[nlen - 4] = '\0';
  e->chunkname = LASYNC__LIB_CHUNK;
  for (j = 0; j < nnamed; j++)
    if (strcmp(named[j][0], e->name) == 0) e->chunkname = named[j][1];
  if (luaL_loadbufferx(L, src, len, e->chunkname, "t") != LUA_OK) die(lua_tostring(L, -1), NULL);
  fprintf(out, "static const unsigned char source%zu[] = {", i);
  put_bytes(&s, (const unsigned char *)src, len);
  fprintf(out, "0};\n");
  e->source_len = len;
  free(src);
  s.n = 0;
  fprintf(out, "static const unsigned char code%zu[] = {", i);
  lua_dump(L, writer, &s, 0); /* 0: keep the debug information */
  fprintf(out, "0};\n");
  e->code_len = s.n;
  lua_pop(L, 1);
}

int main(int argc, char **argv) {
  const char *named[MAX_NAMED][2];
  const char **files;
  entry *entries;
  size_t nnamed = 0, nfiles = 0, rootlen, i;
  FILE *out;
  lua_State *L;
  if (argc < 3) die("usage: embed_lua OUT LUA_DIR [--chunkname NAME CHUNK]... FILE...", NULL);
  rootlen = strlen(argv[2]);
  files = (const char **)calloc((size_t)argc, sizeof *files);
  entries = (entry *)calloc((size_t)argc, sizeof *entries);
  if (files == NULL || entries == NULL) die("not enough memory", NULL);
  for (i = 3; i < (size_t)argc; i++) {
    if (strcmp(argv[i], "--chunkname") == 0) {
      if (i + 2 >= (size_t)argc || nnamed == MAX_NAMED) die("bad --chunkname", NULL);
      named[nnamed][0] = argv[i + 1];
      named[nnamed++][1] = argv[i + 2];
      i += 2;
    } else {
      if (strncmp(argv[i], argv[2], rootlen) != 0 || argv[i][rootlen] != '/')
        die("not under LUA_DIR", argv[i]);
      files[nfiles++] = argv[i];
    }
  }
  qsort(files, nfiles, sizeof *files, by_name); /* the same output whatever the glob's order */
  out = fopen(argv[1], "w");
  if (out == NULL) die("cannot write", argv[1]);
  L = luaL_newstate();
  if (L == NULL) die("not enough memory", NULL);
  fprintf(out, "/* Generated from lua/ by cmake/embed_lua.c: do not edit. */\n");
  fprintf(out, "#include \"private.h\"\n");
  for (i = 0; i < nfiles; i++)
    embed(L, out, i, files[i], rootlen, (const char *const(*)[2])named, nnamed, &entries[i]);
  fprintf(out, "const lasync__lua_file lasync__lua_files[] = {\n");
  for (i = 0; i < nfiles; i++)
    fprintf(out, "  {\"%s\", \"%s\", (const char *)source%zu, %zu, (const char *)code%zu, %zu},\n",
            entries[i].name, entries[i].chunkname, i, entries[i].source_len, i,
            entries[i].code_len);
  fprintf(out, "  {0, 0, 0, 0, 0, 0}};\n");
  lua_close(L);
  free(files);
  free(entries);
  if (fclose(out) != 0) die("cannot write", argv[1]);
  return 0;
}
