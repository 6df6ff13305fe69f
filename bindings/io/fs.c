/* Files: the C half of async.fs, one libuv request per call (lua/fs.lua composes them).
 *
 * Every call is a uv_fs_* request through io/req.c: the request is pinned until libuv calls
 * back, so a cancelled waiter never frees memory a thread-pool worker still writes, and what a
 * late completion produced (an opened descriptor) is released by the discard hook. A descriptor
 * lives in a small userdata (lasync.fs.fd) that counts the requests using it: closing it while
 * one is pending waits for that request, since closing a descriptor a worker is reading from
 * could hand the number to the next open. read_file is one thread-pool job (open, fstat, read,
 * close): one round trip instead of four, the call scripts make most.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "private.h"

#define FD_MT "lasync.fs.fd"
#define WATCH_MT "lasync.fs.Watcher"

/* ---- descriptors ---- */

typedef struct fsreq fsreq;

typedef struct {
  int fd;                /* -1 once closed (or closing) */
  int pending;           /* requests on fd not yet called back */
  fsreq *deferred_close; /* a close waiting for them */
  int closing_fd;        /* the descriptor that close will release */
  /* One read buffer kept between reads: a fresh 1 MiB malloc per read costs page faults
   * that doubled a file copy's time. A read that finds it busy (another task reads the same
   * file) mallocs its own. */
  char *rbuf;
  size_t rbuf_cap;
  int rbuf_busy;
  char path[1]; /* for messages; the userdata is sized for it */
} fsfile;

enum {
  OP_OPEN,
  OP_CLOSE,
  OP_READ,
  OP_WRITE,
  OP_FSYNC,
  OP_FTRUNCATE,
  OP_FSTAT,
  OP_STAT,
  OP_LSTAT,
  OP_EXISTS,
  OP_MKDIR,
  OP_RMDIR,
  OP_UNLINK,
  OP_REMOVE,
  OP_RENAME,
  OP_COPYFILE,
  OP_REALPATH,
  OP_READLINK,
  OP_SYMLINK,
  OP_CHMOD,
  OP_UTIME,
  OP_MKDTEMP,
  OP_SCANDIR
};

static const char *const SYSCALLS[] = {
    "open",     "close",    "read",    "write", "fsync",  "ftruncate", "fstat",  "stat",
    "lstat",    "stat",     "mkdir",   "rmdir", "unlink", "unlink",    "rename", "copyfile",
    "realpath", "readlink", "symlink", "chmod", "utime",  "mkdtemp",   "scandir"};

struct fsreq {
  lasync__req base;
  uv_fs_t fs;
  int op;
  int taken;        /* open: the descriptor went to a File, discard must not close it */
  int remove_if_left; /* open "wx": the file it creates is removed if its waiter left first */
  fsfile *file;     /* the descriptor's userdata (anchored in user value 1), for fd calls */
  const char *path; /* anchored in user value 1 (path calls) */
  const char *dest; /* anchored in user value 2 */
  size_t len;       /* read: the buffer's size */
  int data_ref;     /* write: pins the string until cleanup. A user value would keep it until
                     * the userdata's finalizer has run and one more GC cycle has passed:
                     * 13 MB held after a 200 MB copy. */
  int has_data_ref;
  char *buf;        /* read: malloc'd, freed by cleanup as soon as the string is made (in a
                     * userdata with a finalizer, 1 MiB reads would wait two GC cycles) */
};

/* Pushes the error object of a failed call: kind "fs", code, errno, syscall, path, dest, and
 * the message "ENOENT: no such file or directory, open 'x.txt'". */
static void push_fs_error(lua_State *L, int err, const char *syscall, const char *path,
                          const char *dest) {
  if (path && dest)
    lua_pushfstring(L, "%s '%s' -> '%s'", syscall, path, dest);
  else if (path)
    lua_pushfstring(L, "%s '%s'", syscall, path);
  else
    lua_pushstring(L, syscall);
  lasync__push_uv_error(L, "fs", err, lua_tostring(L, -1));
  lua_remove(L, -2);
  lua_pushstring(L, syscall);
  lua_setfield(L, -2, "syscall");
  if (path) {
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
  }
  if (dest) {
    lua_pushstring(L, dest);
    lua_setfield(L, -2, "dest");
  }
}

static const char *req_path(fsreq *r) { return r->file ? r->file->path : r->path; }

static const char *type_name(uint64_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "file";
    case S_IFDIR:
      return "directory";
    case S_IFLNK:
      return "link";
    case S_IFIFO:
      return "fifo";
    case S_IFSOCK:
      return "socket";
    case S_IFCHR:
      return "char";
    case S_IFBLK:
      return "block";
    default:
      return "unknown";
  }
}

static void set_time(lua_State *L, const char *k, uv_timespec_t ts) {
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
  lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static void push_stat(lua_State *L, const uv_stat_t *s) {
  lua_createtable(L, 0, 14);
  lua_pushstring(L, type_name(s->st_mode));
  lua_setfield(L, -2, "type");
  set_int(L, "size", s->st_size);
  set_int(L, "mode", s->st_mode & 07777);
  set_int(L, "uid", s->st_uid);
  set_int(L, "gid", s->st_gid);
  set_int(L, "nlink", s->st_nlink);
  set_int(L, "ino", s->st_ino);
  set_int(L, "dev", s->st_dev);
  set_int(L, "blocks", s->st_blocks);
  set_time(L, "atime", s->st_atim);
  set_time(L, "mtime", s->st_mtim);
  set_time(L, "ctime", s->st_ctim);
  set_time(L, "birthtime", s->st_birthtim);
}

static const char *dirent_type(uv_dirent_type_t t) {
  switch (t) {
    case UV_DIRENT_FILE:
      return "file";
    case UV_DIRENT_DIR:
      return "directory";
    case UV_DIRENT_LINK:
      return "link";
    case UV_DIRENT_FIFO:
      return "fifo";
    case UV_DIRENT_SOCKET:
      return "socket";
    case UV_DIRENT_CHAR:
      return "char";
    case UV_DIRENT_BLOCK:
      return "block";
    default:
      return "unknown";
  }
}

/* A descriptor closed from a __gc, or produced for a waiter that left: closing a file does
 * not block on anything worth a thread-pool trip. */
static void close_now(int fd) {
  if (fd >= 0) close(fd);
}

/* ---- the request hooks ---- */

static void on_fs(uv_fs_t *req);

/* A close waiting for the descriptor's last pending request: that request's callback starts
 * it. A failure to start completes it at once with the error. */
static void start_deferred_close(lasync__runtime *rt, fsfile *f) {
  fsreq *c = f->deferred_close;
  int err;
  f->deferred_close = NULL;
  err = uv_fs_close(rt->loop, &c->fs, f->closing_fd, on_fs);
  if (err < 0) {
    close_now(f->closing_fd);
    c->fs.result = err;
    lasync__req_done(&c->base);
  }
}

static void on_fs(uv_fs_t *req) {
  fsreq *r = (fsreq *)LASYNC__REQ_OF(req);
  if (r->op == OP_REMOVE && (req->result == UV_EISDIR || req->result == UV_EPERM)) {
    /* unlink refused a directory: remove is rmdir then, on the same request */
    uv_fs_req_cleanup(req);
    r->op = OP_RMDIR;
    if (uv_fs_rmdir(r->base.rt->loop, req, r->path, on_fs) == 0) return;
    req->result = UV_ENOMEM;
  }
  if (r->file && r->op != OP_CLOSE) {
    fsfile *f = r->file;
    if (--f->pending == 0 && f->deferred_close) start_deferred_close(r->base.rt, f);
  }
  lasync__req_done(&r->base);
}

static int fs_push(lua_State *L, lasync__req *base) {
  fsreq *r = (fsreq *)base;
  ssize_t res = r->fs.result;
  if (r->op == OP_EXISTS) {
    if (res == UV_ENOENT || res == UV_ENOTDIR) {
      lua_pushboolean(L, 0);
      return 1;
    }
    if (res >= 0) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  if (res < 0) {
    push_fs_error(L, (int)res, SYSCALLS[r->op], req_path(r), r->dest);
    return -1;
  }
  switch (r->op) {
    case OP_OPEN: {
      size_t n = strlen(r->path);
      fsfile *f = (fsfile *)lua_newuserdatauv(L, sizeof(fsfile) + n, 0);
      f->fd = -1;
      f->pending = 0;
      f->deferred_close = NULL;
      f->closing_fd = -1;
      f->rbuf = NULL;
      f->rbuf_cap = 0;
      f->rbuf_busy = 0;
      memcpy(f->path, r->path, n + 1);
      luaL_setmetatable(L, FD_MT);
      f->fd = (int)res; /* from here the File owns it */
      r->taken = 1;
      return 1;
    }
    case OP_READ:
      if (res == 0)
        lua_pushnil(L);
      else
        lua_pushlstring(L, r->buf, (size_t)res);
      return 1;
    case OP_WRITE:
      lua_pushinteger(L, (lua_Integer)res);
      return 1;
    case OP_FSTAT:
    case OP_STAT:
    case OP_LSTAT:
      push_stat(L, &r->fs.statbuf);
      return 1;
    case OP_REALPATH:
    case OP_READLINK:
      lua_pushstring(L, (const char *)r->fs.ptr);
      return 1;
    case OP_MKDTEMP:
      lua_pushstring(L, r->fs.path);
      return 1;
    case OP_SCANDIR: {
      uv_dirent_t ent;
      lua_Integer i = 0;
      lua_createtable(L, (int)(res > 0 ? res : 0), 0);
      while (uv_fs_scandir_next(&r->fs, &ent) != UV_EOF) {
        lua_createtable(L, 0, 2);
        lua_pushstring(L, ent.name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, dirent_type(ent.type));
        lua_setfield(L, -2, "type");
        lua_rawseti(L, -2, ++i);
      }
      return 1;
    }
    default:
      return 0;
  }
}

static void fs_discard(lasync__req *base) {
  fsreq *r = (fsreq *)base;
  if (r->op == OP_OPEN && r->fs.result >= 0 && !r->taken) {
    close_now((int)r->fs.result);
    /* O_EXCL made the file, and the caller left before it heard of it (a cancelled atomic
     * write's temporary): nobody else can own it, and nobody would remove it. */
    if (r->remove_if_left) unlink(r->path);
  }
}

/* The file's buffer is handed back; any other is freed (a file collected or closed while its
 * buffer was lent has let go of it: rbuf no longer points there). */
static void release_buffer(fsreq *r) {
  if (r->buf && r->file && r->file->rbuf == r->buf)
    r->file->rbuf_busy = 0;
  else
    free(r->buf);
  r->buf = NULL;
}

static void drop_file_buffer(fsfile *f) {
  if (!f->rbuf_busy) free(f->rbuf);
  f->rbuf = NULL; /* if lent, the read's cleanup frees it */
  f->rbuf_cap = 0;
  f->rbuf_busy = 0;
}

static void fs_cleanup(lasync__req *base) {
  fsreq *r = (fsreq *)base;
  uv_fs_req_cleanup(&r->fs);
  release_buffer(r);
  if (r->has_data_ref) {
    r->has_data_ref = 0;
    lasync__unpin(r->base.rt, r->base.rt->L, r->data_ref);
  }
}

/* A close must happen even when its waiter was cancelled (else the descriptor leaks), and a
 * deferred one has not started: neither is stopped. */
static void fs_cancel(lasync__req *base) {
  fsreq *r = (fsreq *)base;
  if (r->op != OP_CLOSE) uv_cancel(base->uv);
}

static const lasync__req_ops FS_REQ = {"fs", fs_push, fs_discard, fs_cleanup, fs_cancel};

/* ---- argument checks (all before the request is made) ---- */

static const char *check_path(lua_State *L, int arg, const char *fname, const char *argname) {
  size_t len;
  const char *s;
  if (lua_type(L, arg) != LUA_TSTRING) lasync__argerror(L, arg, fname, argname, "string");
  s = lua_tolstring(L, arg, &len);
  if (strlen(s) != len)
    lasync__misuse(L, "%s: bad argument #%d '%s' (path contains a NUL byte)", fname, arg, argname);
  if (len == 0) lasync__misuse(L, "%s: bad argument #%d '%s' (empty path)", fname, arg, argname);
  return s;
}

static fsfile *check_file(lua_State *L, int arg, const char *fname) {
  fsfile *f = (fsfile *)luaL_testudata(L, arg, FD_MT);
  if (f == NULL) lasync__argerror(L, arg, fname, "file", "File");
  if (f->fd < 0) {
    lua_pushfstring(L, "%s: the file '%s' is closed", fname, f->path);
    lasync__push_error(L, "closed", lua_tostring(L, -1));
    lua_error(L);
  }
  return f;
}

/* Permission bits as a string of octal digits ("644"; Lua has no octal literals) or an
 * integer; name is the argument's name in the error ('mode', or open's 'perm'). */
static int check_mode(lua_State *L, int arg, const char *fname, const char *name, int dflt) {
  if (lua_isnoneornil(L, arg)) return dflt;
  if (lua_type(L, arg) == LUA_TSTRING) {
    /* Octal digits only, at most four: strtol would also take " +644", "-0" and a NUL. */
    size_t len, i;
    const char *s = lua_tolstring(L, arg, &len);
    int m = 0;
    for (i = 0; i < len && s[i] >= '0' && s[i] <= '7'; i++) m = m * 8 + (s[i] - '0');
    if (len > 0 && len <= 4 && i == len) return m;
  } else if (lua_isinteger(L, arg)) {
    lua_Integer m = lua_tointeger(L, arg);
    if (m >= 0 && m <= 07777) return (int)m;
  }
  return lasync__misuse(
      L, "%s: bad argument #%d '%s' (octal digits such as \"644\" expected, got %s)", fname, arg,
      name, lua_type(L, arg) == LUA_TSTRING ? lua_tostring(L, arg) : lasync__typename(L, arg));
}

/* io.open's modes (r w a, +, b) plus x: exclusive creation. */
static int parse_open_mode(const char *m, int *flags) {
  int rw = 0, plus = 0, excl = 0;
  switch (*m++) {
    case 'r':
      rw = 'r';
      break;
    case 'w':
      rw = 'w';
      break;
    case 'a':
      rw = 'a';
      break;
    case 'x':
      rw = 'w';
      excl = 1;
      break;
    default:
      return -1;
  }
  for (; *m; m++) {
    if (*m == '+' && !plus)
      plus = 1;
    else if (*m == 'b')
      continue;
    else if (*m == 'x' && rw == 'w' && !excl)
      excl = 1;
    else
      return -1;
  }
  *flags = plus ? O_RDWR : rw == 'r' ? O_RDONLY : O_WRONLY;
  if (rw == 'w') *flags |= O_CREAT | O_TRUNC;
  if (rw == 'a') *flags |= O_CREAT | O_APPEND;
  if (excl) *flags |= O_EXCL;
  return 0;
}

/* ---- starting a request ---- */

static fsreq *new_req(lua_State *L, int op, size_t extra) {
  fsreq *r = (fsreq *)lasync__req_new_uv(L, &FS_REQ, sizeof(fsreq) + extra, offsetof(fsreq, fs), 2);
  r->op = op;
  return r;
}

/* Anchors the string at arg in the request's user value uv, so libuv may read it. */
static const char *anchor(lua_State *L, int req_idx, int arg, int uv) {
  lua_pushvalue(L, arg);
  lua_setiuservalue(L, req_idx, uv);
  return lua_tostring(L, arg);
}

static fsreq *new_path_req(lua_State *L, int op, int path_arg, int dest_arg) {
  fsreq *r = new_req(L, op, 0);
  int idx = lua_gettop(L);
  r->path = anchor(L, idx, path_arg, 1);
  if (dest_arg) r->dest = anchor(L, idx, dest_arg, 2);
  return r;
}

static fsreq *new_file_req(lua_State *L, int op, int file_arg, size_t extra) {
  fsfile *f = (fsfile *)lua_touserdata(L, file_arg);
  fsreq *r = new_req(L, op, extra);
  lua_pushvalue(L, file_arg);
  lua_setiuservalue(L, -2, 1);
  r->file = f;
  return r;
}

/* After the uv call: suspends the task, or raises the synchronous failure. */
static int started(lua_State *L, lasync__task *t, fsreq *r, int err) {
  if (err < 0) {
    lasync__req_abort(&r->base);
    fs_cleanup(&r->base); /* abort releases nothing: libuv's and our memory go here */
    if (r->file && r->op != OP_CLOSE) r->file->pending--;
    push_fs_error(L, err, SYSCALLS[r->op], req_path(r), r->dest);
    return lua_error(L);
  }
  return lasync__req_await(L, t, &r->base);
}

static uv_loop_t *loop_of(lua_State *L) { return lasync__runtime_get(L)->loop; }

/* ---- the calls ---- */

static int l_open(lua_State *L) {
  const char *fname = "async.fs.open";
  const char *mode;
  int flags, perm;
  lasync__task *t;
  fsreq *r;
  size_t mode_len = 1;
  check_path(L, 1, fname, "path");
  if (lua_type(L, 2) != LUA_TSTRING && !lua_isnoneornil(L, 2))
    lasync__argerror(L, 2, fname, "mode", "string");
  mode = lua_isnoneornil(L, 2) ? "r" : lua_tolstring(L, 2, &mode_len);
  if (strlen(mode) != mode_len || parse_open_mode(mode, &flags) != 0)
    return lasync__misuse(L, "%s: bad argument #2 'mode' (invalid mode '%s')", fname, mode);
  perm = check_mode(L, 3, fname, "perm", 0666);
  t = lasync__check_task(L, fname);
  r = new_path_req(L, OP_OPEN, 1, 0);
  r->remove_if_left = (flags & O_EXCL) != 0;
  return started(L, t, r, uv_fs_open(loop_of(L), &r->fs, r->path, flags, perm, on_fs));
}

static int l_close(lua_State *L) {
  fsfile *f = (fsfile *)luaL_testudata(L, 1, FD_MT);
  lasync__runtime *rt;
  lasync__task *t;
  fsreq *r;
  int fd;
  if (f == NULL) return lasync__argerror(L, 1, "file:close", "file", "File");
  if (f->fd < 0) return 0; /* closing twice is harmless, as __close then close() */
  rt = lasync__runtime_get(L);
  if (rt == NULL || rt->current == NULL || rt->current->co != L || !lua_isyieldable(L)) {
    /* Outside a task, or where it cannot suspend (a __close run by an error that crossed a C
     * call): the descriptor is released without waiting, never leaked. */
    if (f->pending == 0) {
      close_now(f->fd);
      f->fd = -1;
      drop_file_buffer(f);
      return 0;
    }
    t = NULL;
  } else {
    t = lasync__check_suspendable(L, "file:close");
  }
  r = new_req(L, OP_CLOSE, 0);
  r->file = f;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  fd = f->fd;
  f->fd = -1; /* refused from now on, even while the close waits */
  drop_file_buffer(f);
  if (f->pending > 0) {
    f->closing_fd = fd;
    f->deferred_close = r;
    return t ? lasync__req_await(L, t, &r->base) : 0;
  }
  if (t == NULL) { /* not reached: a file with nothing pending was closed above */
    lasync__req_abort(&r->base);
    close_now(fd);
    return 0;
  }
  return started(L, t, r, uv_fs_close(loop_of(L), &r->fs, fd, on_fs));
}

static int l_read(lua_State *L) {
  const char *fname = "file:read";
  fsfile *f = check_file(L, 1, fname);
  lua_Integer n = lua_isinteger(L, 2) ? lua_tointeger(L, 2) : -1;
  lasync__task *t;
  fsreq *r;
  uv_buf_t buf;
  if (n < 0) return lasync__argerror(L, 2, fname, "n", "non-negative integer");
  if (n > INT32_MAX)
    return lasync__misuse(L, "%s: bad argument #2 'n' (at most %d bytes a read, got %I)", fname,
                          INT32_MAX, (LUAI_UACINT)n);
  t = lasync__check_task(L, fname);
  r = new_file_req(L, OP_READ, 1, 0);
  r->len = (size_t)n;
  if (!f->rbuf_busy && n <= (8 << 20)) {
    if (f->rbuf_cap < (size_t)n || f->rbuf == NULL) {
      char *more = (char *)realloc(f->rbuf, n > 0 ? (size_t)n : 1);
      if (more) {
        f->rbuf = more;
        f->rbuf_cap = (size_t)n;
      }
    }
    if (f->rbuf && f->rbuf_cap >= (size_t)n) {
      r->buf = f->rbuf;
      f->rbuf_busy = 1;
    }
  }
  if (r->buf == NULL) r->buf = (char *)malloc(n > 0 ? (size_t)n : 1);
  if (r->buf == NULL) {
    lasync__req_abort(&r->base);
    lasync__push_error(L, "nomem", "file:read: not enough memory for the buffer");
    return lua_error(L);
  }
  buf = uv_buf_init(r->buf, (unsigned)n);
  f->pending++;
  return started(L, t, r, uv_fs_read(loop_of(L), &r->fs, f->fd, &buf, 1, -1, on_fs));
}

static int l_write(lua_State *L) {
  const char *fname = "file:write";
  fsfile *f = check_file(L, 1, fname);
  size_t len;
  const char *s;
  lasync__task *t;
  fsreq *r;
  uv_buf_t buf;
  if (lua_type(L, 2) != LUA_TSTRING) return lasync__argerror(L, 2, fname, "data", "string");
  s = lua_tolstring(L, 2, &len);
  t = lasync__check_task(L, fname);
  r = new_file_req(L, OP_WRITE, 1, 0);
  lua_pushvalue(L, 2);
  r->data_ref = lasync__pin(r->base.rt, L); /* the bytes live until the worker wrote them */
  r->has_data_ref = 1;
  buf = uv_buf_init((char *)s, (unsigned)(len > UINT32_MAX ? UINT32_MAX : len));
  f->pending++;
  return started(L, t, r, uv_fs_write(loop_of(L), &r->fs, f->fd, &buf, 1, -1, on_fs));
}

static int file_call(lua_State *L, int op, const char *fname) {
  fsfile *f = check_file(L, 1, fname);
  lua_Integer size = 0;
  lasync__task *t;
  fsreq *r;
  int err;
  if (op == OP_FTRUNCATE) {
    if (!lua_isinteger(L, 2) || (size = lua_tointeger(L, 2)) < 0)
      return lasync__argerror(L, 2, fname, "size", "non-negative integer");
  }
  t = lasync__check_task(L, fname);
  r = new_file_req(L, op, 1, 0);
  f->pending++;
  if (op == OP_FSYNC)
    err = uv_fs_fsync(loop_of(L), &r->fs, f->fd, on_fs);
  else if (op == OP_FTRUNCATE)
    err = uv_fs_ftruncate(loop_of(L), &r->fs, f->fd, size, on_fs);
  else
    err = uv_fs_fstat(loop_of(L), &r->fs, f->fd, on_fs);
  return started(L, t, r, err);
}

static int l_fsync(lua_State *L) { return file_call(L, OP_FSYNC, "file:sync"); }
static int l_ftruncate(lua_State *L) { return file_call(L, OP_FTRUNCATE, "file:truncate"); }
static int l_fstat(lua_State *L) { return file_call(L, OP_FSTAT, "file:stat"); }

/* lseek only moves the descriptor's offset: nothing to wait for, so no thread-pool trip. */
static int l_seek(lua_State *L) {
  static const char *const whences[] = {"set", "cur", "end", NULL};
  static const int values[] = {SEEK_SET, SEEK_CUR, SEEK_END};
  const char *fname = "file:seek";
  fsfile *f = check_file(L, 1, fname);
  int w = 1;
  lua_Integer off = 0;
  off_t pos;
  if (!lua_isnoneornil(L, 2)) {
    const char *s = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
    for (w = 0; s && whences[w] && strcmp(whences[w], s) != 0; w++) {
    }
    if (s == NULL || whences[w] == NULL)
      return lasync__argerror(L, 2, fname, "whence", "\"set\", \"cur\" or \"end\"");
  }
  if (!lua_isnoneornil(L, 3)) {
    if (!lua_isinteger(L, 3)) return lasync__argerror(L, 3, fname, "offset", "integer");
    off = lua_tointeger(L, 3);
  }
  pos = lseek(f->fd, (off_t)off, values[w]);
  if (pos < 0) {
    push_fs_error(L, -errno, "lseek", f->path, NULL);
    return lua_error(L);
  }
  lua_pushinteger(L, (lua_Integer)pos);
  return 1;
}

static int fd_gc(lua_State *L) {
  fsfile *f = (fsfile *)lua_touserdata(L, 1);
  if (f->fd >= 0) {
    lasync__runtime *rt = lasync__runtime_get(L);
    if (rt && rt->debug) {
      fprintf(stderr,
              "lasync: a File of '%s' was collected while open; closed it (close files, or "
              "declare them <close>)\n",
              f->path);
      fflush(stderr);
    }
    close_now(f->fd);
    f->fd = -1;
  }
  drop_file_buffer(f);
  return 0;
}

static int fd_tostring(lua_State *L) {
  fsfile *f = (fsfile *)lua_touserdata(L, 1);
  lua_pushfstring(L, "File (%s%s)", f->path, f->fd < 0 ? ", closed" : "");
  return 1;
}

static int fd_isopen(lua_State *L) {
  fsfile *f = (fsfile *)luaL_testudata(L, 1, FD_MT);
  lua_pushboolean(L, f && f->fd >= 0);
  return 1;
}

/* path calls: stat(path) and the like */
static int path_call(lua_State *L, int op, const char *fname, int two_paths) {
  lasync__task *t;
  fsreq *r;
  uv_loop_t *loop = loop_of(L);
  int err, mode = 0, flags = 0;
  double atime = 0, mtime = 0;
  check_path(L, 1, fname, two_paths ? (op == OP_SYMLINK ? "target" : "from") : "path");
  if (two_paths) check_path(L, 2, fname, op == OP_SYMLINK ? "path" : "to");
  if (op == OP_MKDIR) mode = check_mode(L, 2, fname, "mode", 0777);
  if (op == OP_CHMOD) {
    if (lua_isnoneornil(L, 2)) return lasync__argerror(L, 2, fname, "mode", "string");
    mode = check_mode(L, 2, fname, "mode", 0);
  }
  if (op == OP_COPYFILE && lua_toboolean(L, 3)) flags = UV_FS_COPYFILE_EXCL;
  if (op == OP_UTIME) {
    uv_timeval64_t now;
    uv_gettimeofday(&now);
    atime = mtime = (double)now.tv_sec + (double)now.tv_usec / 1e6;
    if (!lua_isnoneornil(L, 2)) {
      if (!lua_isnumber(L, 2)) return lasync__argerror(L, 2, fname, "atime", "number");
      atime = lua_tonumber(L, 2);
    }
    if (!lua_isnoneornil(L, 3)) {
      if (!lua_isnumber(L, 3)) return lasync__argerror(L, 3, fname, "mtime", "number");
      mtime = lua_tonumber(L, 3);
    }
  }
  t = lasync__check_task(L, fname);
  if (op == OP_MKDTEMP) {
    lua_pushvalue(L, 1);
    lua_pushliteral(L, "XXXXXX");
    lua_concat(L, 2);
    lua_replace(L, 1);
  }
  r = new_path_req(L, op, 1, two_paths ? 2 : 0);
  switch (op) {
    case OP_STAT:
    case OP_EXISTS:
      err = uv_fs_stat(loop, &r->fs, r->path, on_fs);
      break;
    case OP_LSTAT:
      err = uv_fs_lstat(loop, &r->fs, r->path, on_fs);
      break;
    case OP_MKDIR:
      err = uv_fs_mkdir(loop, &r->fs, r->path, mode, on_fs);
      break;
    case OP_RMDIR:
      err = uv_fs_rmdir(loop, &r->fs, r->path, on_fs);
      break;
    case OP_UNLINK:
    case OP_REMOVE:
      err = uv_fs_unlink(loop, &r->fs, r->path, on_fs);
      break;
    case OP_RENAME:
      err = uv_fs_rename(loop, &r->fs, r->path, r->dest, on_fs);
      break;
    case OP_COPYFILE:
      err = uv_fs_copyfile(loop, &r->fs, r->path, r->dest, flags, on_fs);
      break;
    case OP_REALPATH:
      err = uv_fs_realpath(loop, &r->fs, r->path, on_fs);
      break;
    case OP_READLINK:
      err = uv_fs_readlink(loop, &r->fs, r->path, on_fs);
      break;
    case OP_SYMLINK:
      err = uv_fs_symlink(loop, &r->fs, r->path, r->dest, 0, on_fs);
      break;
    case OP_CHMOD:
      err = uv_fs_chmod(loop, &r->fs, r->path, mode, on_fs);
      break;
    case OP_UTIME:
      err = uv_fs_utime(loop, &r->fs, r->path, atime, mtime, on_fs);
      break;
    case OP_MKDTEMP:
      err = uv_fs_mkdtemp(loop, &r->fs, r->path, on_fs);
      break;
    default:
      err = uv_fs_scandir(loop, &r->fs, r->path, 0, on_fs);
      break;
  }
  return started(L, t, r, err);
}

static int l_stat(lua_State *L) { return path_call(L, OP_STAT, "async.fs.stat", 0); }
static int l_lstat(lua_State *L) { return path_call(L, OP_LSTAT, "async.fs.lstat", 0); }
static int l_exists(lua_State *L) { return path_call(L, OP_EXISTS, "async.fs.exists", 0); }
static int l_mkdir(lua_State *L) { return path_call(L, OP_MKDIR, "async.fs.mkdir", 0); }
static int l_rmdir(lua_State *L) { return path_call(L, OP_RMDIR, "async.fs.rmdir", 0); }
static int l_unlink(lua_State *L) { return path_call(L, OP_UNLINK, "async.fs.unlink", 0); }
static int l_remove(lua_State *L) { return path_call(L, OP_REMOVE, "async.fs.remove", 0); }
static int l_rename(lua_State *L) { return path_call(L, OP_RENAME, "async.fs.rename", 1); }
static int l_copyfile(lua_State *L) { return path_call(L, OP_COPYFILE, "async.fs.copyfile", 1); }
static int l_realpath(lua_State *L) { return path_call(L, OP_REALPATH, "async.fs.realpath", 0); }
static int l_readlink(lua_State *L) { return path_call(L, OP_READLINK, "async.fs.readlink", 0); }
static int l_symlink(lua_State *L) { return path_call(L, OP_SYMLINK, "async.fs.symlink", 1); }
static int l_chmod(lua_State *L) { return path_call(L, OP_CHMOD, "async.fs.chmod", 0); }
static int l_utime(lua_State *L) { return path_call(L, OP_UTIME, "async.fs.utime", 0); }
static int l_mkdtemp(lua_State *L) { return path_call(L, OP_MKDTEMP, "async.fs.mkdtemp", 0); }
static int l_readdir(lua_State *L) { return path_call(L, OP_SCANDIR, "async.fs.readdir", 0); }

/* ---- read_file: one thread-pool job ---- */

typedef struct {
  lasync__req base;
  uv_work_t work;
  const char *path; /* anchored in user value 1 */
  int64_t max_size; /* -1: no limit */
  int err;          /* a negative errno, or 0 */
  const char *syscall;
  int too_large;
  char *data;
  size_t len;
} rfreq;

/* In a worker thread: no Lua, only the request's own memory. A size of 0 from fstat (procfs,
 * sysfs) or a file that grows is read until read() returns 0. */
static void read_file_work(uv_work_t *w) {
  rfreq *r = (rfreq *)LASYNC__REQ_OF(w);
  struct stat st;
  size_t cap;
  int fd = open(r->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    r->err = -errno;
    r->syscall = "open";
    return;
  }
  if (fstat(fd, &st) != 0) {
    r->err = -errno;
    r->syscall = "fstat";
    close(fd);
    return;
  }
  if (r->max_size >= 0 && st.st_size > r->max_size) {
    r->too_large = 1;
    close(fd);
    return;
  }
  cap = st.st_size > 0 ? (size_t)st.st_size + 1 : 65536; /* +1: the read that sees the end */
  r->data = (char *)malloc(cap);
  for (;;) {
    ssize_t n;
    if (r->data == NULL) {
      r->err = UV_ENOMEM;
      r->syscall = "read";
      break;
    }
    if (r->len == cap) {
      char *more = NULL;
      if (cap <= SIZE_MAX / 2) more = (char *)realloc(r->data, cap * 2);
      if (more == NULL) {
        free(r->data);
        r->data = NULL;
        continue;
      }
      r->data = more;
      cap *= 2;
    }
    n = read(fd, r->data + r->len, cap - r->len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      r->err = -errno;
      r->syscall = "read";
      break;
    }
    if (n == 0) break;
    r->len += (size_t)n;
    if (r->max_size >= 0 && r->len > (size_t)r->max_size) {
      r->too_large = 1;
      break;
    }
  }
  close(fd);
}

static void read_file_done(uv_work_t *w, int status) {
  rfreq *r = (rfreq *)LASYNC__REQ_OF(w);
  if (status < 0) {
    r->err = status;
    r->syscall = "open";
  }
  lasync__req_done(&r->base);
}

static int read_file_push(lua_State *L, lasync__req *base) {
  rfreq *r = (rfreq *)base;
  if (r->too_large) {
    lua_pushfstring(L, "async.fs.read_file: '%s' is larger than max_size (%I bytes)", r->path,
                    (lua_Integer)r->max_size);
    lasync__push_error(L, "too_large", lua_tostring(L, -1));
    lua_pushstring(L, r->path);
    lua_setfield(L, -2, "path");
    lua_pushinteger(L, (lua_Integer)r->max_size);
    lua_setfield(L, -2, "max_size");
    return -1;
  }
  if (r->err < 0) {
    push_fs_error(L, r->err, r->syscall, r->path, NULL);
    return -1;
  }
  lua_pushlstring(L, r->data ? r->data : "", r->len);
  return 1;
}

static void read_file_cleanup(lasync__req *base) {
  rfreq *r = (rfreq *)base;
  free(r->data);
  r->data = NULL;
}

static const lasync__req_ops READ_FILE_REQ = {"fs.read_file", read_file_push, NULL,
                                              read_file_cleanup, NULL};

/* read_file(path [, max_size]) */
static int l_read_file(lua_State *L) {
  const char *fname = "async.fs.read_file";
  lua_Integer max = -1;
  lasync__task *t;
  rfreq *r;
  int err;
  check_path(L, 1, fname, "path");
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isinteger(L, 2) || lua_tointeger(L, 2) < 0)
      return lasync__opterror(L, 2, fname, "max_size", "non-negative integer");
    max = lua_tointeger(L, 2);
  }
  t = lasync__check_task(L, fname);
  r = (rfreq *)lasync__req_new_uv(L, &READ_FILE_REQ, sizeof *r, offsetof(rfreq, work), 1);
  r->path = anchor(L, lua_gettop(L), 1, 1);
  r->max_size = max;
  err = uv_queue_work(loop_of(L), &r->work, read_file_work, read_file_done);
  if (err < 0) {
    lasync__req_abort(&r->base);
    push_fs_error(L, err, "open", r->path, NULL);
    return lua_error(L);
  }
  return lasync__req_await(L, t, &r->base);
}

/* ---- watch: change events from uv_fs_event ---- */

typedef struct event_node {
  struct event_node *next;
  int events;
  char name[];
} event_node;

#define WATCH_QUEUE_MAX 4096 /* beyond, events are dropped and the next one says so */

typedef struct {
  lasync__handle h;
  uv_fs_event_t ev;
  lasync__task *waiter;
  event_node *head, *tail;
  int queued;
  int dropped;
  int err;
} watcher;

static void wake_watcher(watcher *w) {
  lasync__task *t = w->waiter;
  w->waiter = NULL;
  if (t) lasync__wake(t);
}

/* Called by libuv with a change under the watched path. */
static void on_change(uv_fs_event_t *ev, const char *filename, int events, int status) {
  watcher *w = (watcher *)LASYNC__HANDLE_OF(ev);
  if (status < 0) {
    w->err = status;
  } else if (w->queued >= WATCH_QUEUE_MAX) {
    w->dropped++;
  } else {
    size_t n = filename ? strlen(filename) : 0;
    event_node *e = (event_node *)malloc(sizeof *e + n + 1);
    if (e == NULL) {
      w->dropped++;
    } else {
      e->next = NULL;
      e->events = events;
      memcpy(e->name, filename ? filename : "", n + 1);
      if (w->tail)
        w->tail->next = e;
      else
        w->head = e;
      w->tail = e;
      w->queued++;
    }
  }
  wake_watcher(w);
}

static void watcher_on_close(lasync__handle *h) { wake_watcher((watcher *)h); }

static void watcher_on_free(lasync__handle *h) {
  watcher *w = (watcher *)h;
  while (w->head) {
    event_node *e = w->head;
    w->head = e->next;
    free(e);
  }
}

/* Pushes the next event, nil once closed, or raises the watch's error; returns -1 when there
 * is nothing yet. */
static int pop_event(lua_State *L, lasync__handle **box) {
  watcher *w = (watcher *)*box;
  event_node *e;
  if (w == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (w->head == NULL && w->dropped) { /* the queue overflowed and has drained */
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "overflow");
    lua_setfield(L, -2, "change");
    lua_pushinteger(L, w->dropped);
    lua_setfield(L, -2, "dropped");
    w->dropped = 0;
    return 1;
  }
  if (w->head == NULL) {
    if (w->err < 0) {
      push_fs_error(L, w->err, "watch", NULL, NULL);
      return lua_error(L);
    }
    return -1;
  }
  e = w->head;
  lua_createtable(L, 0, 3);
  lua_pushstring(L, e->name);
  lua_setfield(L, -2, "name");
  lua_pushstring(L, (e->events & UV_RENAME) ? "rename" : "change");
  lua_setfield(L, -2, "change");
  if (w->dropped) {
    lua_pushinteger(L, w->dropped);
    lua_setfield(L, -2, "dropped");
    w->dropped = 0;
  }
  w->head = e->next;
  if (w->head == NULL) w->tail = NULL;
  w->queued--;
  free(e);
  return 1;
}

static void watch_cancel(lasync__task *t, void *data) {
  lasync__handle **box = (lasync__handle **)data;
  (void)t;
  if (*box) ((watcher *)*box)->waiter = NULL;
}

static int watch_finish(lua_State *L, lasync__task *t, void *data) {
  int n = pop_event(L, (lasync__handle **)data);
  (void)t;
  if (n < 0) lua_pushnil(L); /* woken by a close */
  return 1;
}

static const lasync__awaitable_ops WATCH_AWAIT = {"fs.watch", watch_cancel, watch_finish, NULL};

/* watcher:next() -> the next event {name, change}, waiting for it; nil once closed. */
/* watcher:close(); __gc and __close share the unchecked lasync__handle_box_close. */
static int watch_close(lua_State *L) {
  if (luaL_testudata(L, 1, WATCH_MT) == NULL)
    return lasync__argerror(L, 1, "watcher:close", NULL, "Watcher");
  return lasync__handle_box_close(L);
}

static int watch_next(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, WATCH_MT);
  lasync__task *t;
  watcher *w;
  if (box == NULL) return lasync__argerror(L, 1, "watcher:next", "watcher", "Watcher");
  t = lasync__check_task(L, "watcher:next");
  if (pop_event(L, box) > 0) return 1;
  w = (watcher *)*box;
  if (w->waiter)
    return lasync__misuse(L, "watcher:next: another task is already waiting on this watcher");
  w->waiter = t;
  return lasync__suspend(L, t, &WATCH_AWAIT, box);
}

static int l_watch(lua_State *L) {
  const char *fname = "async.fs.watch";
  const char *path = check_path(L, 1, fname, "path");
  lasync__runtime *rt = lasync__runtime_get(L);
  watcher *w;
  int err;
  lua_settop(L, 1);
  lasync__check_task(L, fname);
  w = (watcher *)lasync__handle_new(rt, sizeof *w);
  if (w == NULL) return lasync__misuse(L, "%s: out of memory", fname);
  w->h.on_close = watcher_on_close;
  w->h.on_free = watcher_on_free;
  uv_fs_event_init(rt->loop, &w->ev);
  lasync__handle_init(&w->h, (uv_handle_t *)&w->ev);
  err = uv_fs_event_start(&w->ev, on_change, path, 0);
  if (err < 0) {
    lasync__handle_close(&w->h);
    push_fs_error(L, err, "watch", path, NULL);
    return lua_error(L);
  }
  lasync__handle_box_new(L, &w->h, WATCH_MT); /* a memory error here: shutdown closes it */
  /* for ev in fs.watch(p) do ... end: the watcher is the iterator and the closing value */
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, -3);
  return 4;
}

static int watch_call(lua_State *L) {
  lua_settop(L, 1);
  return watch_next(L);
}

/* ---- registration ---- */

void lasync__open_fs(lua_State *L) {
  static const luaL_Reg fd_methods[] = {
      {"read", l_read},          {"write", l_write}, {"seek", l_seek},   {"sync", l_fsync},
      {"truncate", l_ftruncate}, {"stat", l_fstat},  {"close", l_close}, {NULL, NULL}};
  static const luaL_Reg watch_methods[] = {
      {"next", watch_next}, {"close", watch_close}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"open", l_open},         {"stat", l_stat},         {"lstat", l_lstat},
      {"exists", l_exists},     {"mkdir", l_mkdir},       {"rmdir", l_rmdir},
      {"unlink", l_unlink},     {"remove", l_remove},     {"rename", l_rename},
      {"copyfile", l_copyfile}, {"realpath", l_realpath}, {"readlink", l_readlink},
      {"symlink", l_symlink},   {"chmod", l_chmod},       {"utime", l_utime},
      {"mkdtemp", l_mkdtemp},   {"readdir", l_readdir},   {"read_file", l_read_file},
      {"watch", l_watch},       {"is_open", fd_isopen},   {NULL, NULL}};
  luaL_newmetatable(L, FD_MT);
  lua_pushcfunction(L, fd_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, fd_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newmetatable(L, WATCH_MT);
  lua_pushcfunction(L, lasync__handle_box_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, lasync__handle_box_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, watch_call);
  lua_setfield(L, -2, "__call");
  luaL_newlib(L, watch_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_newtable(L); /* core.fs: the raw calls lua/fs.lua builds async.fs from */
  luaL_setfuncs(L, funcs, 0);
  luaL_newlib(L, fd_methods);
  lua_setfield(L, -2, "fd");
  lua_setfield(L, -2, "fs");
}
