/* Reading a file for the server's static routes (app:static in lua/http/server.lua), on libuv's fs
 * requests until async.fs exists: one request (io/req.c) runs the chain realpath, open, fstat,
 * read..., close on its one uv_fs_t, and the task resumes once, with the whole file or an
 * error. The real path is checked against the root's, so a symlink out of the directory reads
 * as not found. A cancelled waiter orphans the request; the chain still closes what it opened,
 * and discard frees the bytes.
 */
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "private.h"

#define MAX_FILE (64 * 1024 * 1024) /* larger files are refused: they would be one string */

enum { S_REALPATH, S_OPEN, S_STAT, S_READ, S_CLOSE };

typedef struct {
  lasync__req r;
  uv_fs_t fs;
  int stage;
  uv_file fd;
  int err; /* the first failure, or 1 for "outside the root" / "not a regular file" */
  char *data;
  size_t size, got;
  double mtime;
  char root[PATH_MAX];
  char real[PATH_MAX];
} file_req;

static void on_fs(uv_fs_t *fs);

static void step(file_req *fr) {
  int rc = 0;
  uv_loop_t *loop = fr->r.rt->loop;
  void *data = fr->fs.data;
  uv_fs_req_cleanup(&fr->fs);
  fr->fs.data = data;
  switch (fr->stage) {
    case S_OPEN:
      rc = uv_fs_open(loop, &fr->fs, fr->real, O_RDONLY, 0, on_fs);
      break;
    case S_STAT:
      rc = uv_fs_fstat(loop, &fr->fs, fr->fd, on_fs);
      break;
    case S_READ: {
      uv_buf_t b = uv_buf_init(fr->data + fr->got, (unsigned)(fr->size - fr->got));
      rc = uv_fs_read(loop, &fr->fs, fr->fd, &b, 1, (int64_t)fr->got, on_fs);
      break;
    }
    case S_CLOSE:
      rc = uv_fs_close(loop, &fr->fs, fr->fd, on_fs);
      break;
  }
  if (rc < 0) {
    /* Could not even start: a close that fails is given up; the rest goes to close. */
    if (!fr->err) fr->err = rc;
    if (fr->stage != S_CLOSE && fr->fd >= 0) {
      fr->stage = S_CLOSE;
      step(fr);
    } else {
      lasync__req_done(&fr->r);
    }
  }
}

static void fail(file_req *fr, int err) {
  if (!fr->err) fr->err = err;
  if (fr->fd >= 0) {
    fr->stage = S_CLOSE;
    step(fr);
  } else {
    lasync__req_done(&fr->r);
  }
}

static void on_fs(uv_fs_t *fs) {
  file_req *fr = (file_req *)LASYNC__REQ_OF(fs);
  ssize_t res = fs->result;
  switch (fr->stage) {
    case S_REALPATH: {
      size_t n = strlen(fr->root);
      const char *real = (const char *)fs->ptr;
      if (res < 0) return fail(fr, (int)res);
      if (strlen(real) >= sizeof fr->real || strncmp(real, fr->root, n) != 0 ||
          (real[n] != '/' && real[n] != '\0'))
        return fail(fr, 1);
      strcpy(fr->real, real);
      fr->stage = S_OPEN;
      return step(fr);
    }
    case S_OPEN:
      if (res < 0) return fail(fr, (int)res);
      fr->fd = (uv_file)res;
      fr->stage = S_STAT;
      return step(fr);
    case S_STAT:
      if (res < 0) return fail(fr, (int)res);
      if ((fs->statbuf.st_mode & S_IFMT) != S_IFREG || fs->statbuf.st_size > MAX_FILE)
        return fail(fr, 1);
      fr->size = (size_t)fs->statbuf.st_size;
      fr->mtime = (double)fs->statbuf.st_mtim.tv_sec;
      fr->data = (char *)malloc(fr->size ? fr->size : 1);
      if (fr->data == NULL) return fail(fr, UV_ENOMEM);
      fr->stage = fr->size ? S_READ : S_CLOSE;
      return step(fr);
    case S_READ:
      if (res < 0) return fail(fr, (int)res);
      if (res == 0) fr->size = fr->got; /* it shrank meanwhile */
      fr->got += (size_t)res;
      fr->stage = fr->got < fr->size ? S_READ : S_CLOSE;
      return step(fr);
    case S_CLOSE:
      fr->fd = -1;
      lasync__req_done(&fr->r);
      return;
  }
}

static int file_push(lua_State *L, lasync__req *r) {
  file_req *fr = (file_req *)r;
  if (fr->err == 1 || fr->err == UV_ENOENT || fr->err == UV_ENOTDIR || fr->err == UV_EACCES ||
      fr->err == UV_ELOOP || fr->err == UV_ENAMETOOLONG) {
    lasync__push_error(L, "not_found", "no such file");
    return -1;
  }
  if (fr->err) {
    lasync__push_uv_error(L, "fs", fr->err, "reading a static file");
    return -1;
  }
  lua_pushlstring(L, fr->data, fr->size);
  lua_pushnumber(L, fr->mtime);
  return 2;
}

static void file_cleanup(lasync__req *r) {
  file_req *fr = (file_req *)r;
  uv_fs_req_cleanup(&fr->fs);
  free(fr->data);
  fr->data = NULL;
}

static const lasync__req_ops FILE_REQ = {"http.static", file_push, NULL, file_cleanup, NULL};

/* core._http_readfile(root_realpath, path) -> bytes, mtime; raises kind "not_found" */
static int l_readfile(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "app:static");
  const char *root = luaL_checkstring(L, 1);
  const char *path = luaL_checkstring(L, 2);
  file_req *fr;
  int rc;
  if (strlen(root) >= PATH_MAX || strlen(path) >= PATH_MAX) {
    lasync__push_error(L, "not_found", "no such file");
    return lua_error(L);
  }
  fr = (file_req *)lasync__req_new(L, &FILE_REQ, sizeof *fr, offsetof(file_req, fs));
  fr->fd = -1;
  strcpy(fr->root, root);
  fr->stage = S_REALPATH;
  rc = uv_fs_realpath(fr->r.rt->loop, &fr->fs, path, on_fs);
  if (rc < 0) {
    lasync__req_abort(&fr->r);
    lasync__push_uv_error(L, "fs", rc, "reading a static file");
    return lua_error(L);
  }
  return lasync__req_await(L, t, &fr->r);
}

/* core._http_realpath(dir) -> the absolute path, or nil, message (at setup: blocking) */
static int l_realpath(lua_State *L) {
  char buf[PATH_MAX];
  const char *dir = luaL_checkstring(L, 1);
  if (realpath(dir, buf) == NULL) {
    luaL_pushfail(L);
    lua_pushfstring(L, "'%s' is not a directory that exists", dir);
    return 2;
  }
  lua_pushstring(L, buf);
  return 1;
}

void lasync__open_static(lua_State *L) {
  lua_pushcfunction(L, l_readfile);
  lua_setfield(L, -2, "_http_readfile");
  lua_pushcfunction(L, l_realpath);
  lua_setfield(L, -2, "_http_realpath");
}
