/* TCP: name resolution, connecting and listening, the C half of async.net (lua/net.lua holds
 * the policy: trying each address, the timeout, one task per connection, max_connections).
 *
 * Resolving and connecting are requests (io/req.c): a cancelled resolve is uv_cancel()ed or
 * orphaned, a cancelled connect closes its socket, whose callback then finds the request
 * orphaned. A connection is a Stream (io/stream.c). The listening socket is a handle
 * (io/handle.c) with one acceptor task at a time: libuv signals a connection and holds it
 * until uv_accept, and that happens in the acceptor task, so a connection never meets Lua in a
 * libuv callback, and a server that stops calling accept (max_connections) lets the kernel's
 * backlog fill instead of accepting without bound.
 */
#include <stddef.h>
#include <string.h>

#include "private.h"

#define SERVER_MT "lasync.TcpServer"

/* ---- addresses ---- */

/* Parses an IPv4 or IPv6 literal; returns 0 or a libuv error. */
static int parse_ip(const char *ip, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0) return 0;
  return uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss);
}

static int check_port(lua_State *L, int arg, const char *fname) {
  lua_Integer port;
  if (!lua_isinteger(L, arg)) return lasync__argerror(L, arg, fname, "port", "integer");
  port = lua_tointeger(L, arg);
  if (port < 0 || port > 65535)
    return lasync__misuse(L, "%s: bad argument #%d 'port' (0 to 65535 expected, got %I)", fname, arg,
                      port);
  return (int)port;
}

static const char *check_ip(lua_State *L, int arg, const char *fname,
                            struct sockaddr_storage *ss, int port) {
  const char *ip;
  if (lua_type(L, arg) != LUA_TSTRING) lasync__argerror(L, arg, fname, "host", "string");
  ip = lua_tostring(L, arg);
  if (parse_ip(ip, port, ss) != 0)
    lasync__misuse(L, "%s: bad argument #%d 'host' (an IP address expected, got '%s')", fname, arg,
               ip);
  return ip;
}

/* Pushes {host = "127.0.0.1", port = 5000}, or nil. */
static void push_sockaddr(lua_State *L, const struct sockaddr_storage *ss) {
  char ip[64];
  int port;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    uv_ip4_name(a, ip, sizeof ip);
    port = ntohs(a->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    uv_ip6_name(a, ip, sizeof ip);
    port = ntohs(a->sin6_port);
  } else {
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 0, 2);
  lua_pushstring(L, ip);
  lua_setfield(L, -2, "host");
  lua_pushinteger(L, port);
  lua_setfield(L, -2, "port");
}

/* A new connection: no Nagle (request/response protocols would wait 40 ms per reply), and its
 * two ends as fields of the object at idx (conn.remote, conn.local). */
static void setup_connection(lua_State *L, int idx, lasync__stream *s) {
  struct sockaddr_storage ss;
  int len;
  uv_tcp_nodelay(&s->u.tcp, 1);
  lua_createtable(L, 0, 2);
  len = sizeof ss;
  if (uv_tcp_getpeername(&s->u.tcp, (struct sockaddr *)&ss, &len) == 0) {
    push_sockaddr(L, &ss);
    lua_setfield(L, -2, "remote");
  }
  len = sizeof ss;
  if (uv_tcp_getsockname(&s->u.tcp, (struct sockaddr *)&ss, &len) == 0) {
    push_sockaddr(L, &ss);
    lua_setfield(L, -2, "local");
  }
  lua_setiuservalue(L, idx, 1);
}

/* ---- core._net_resolve(name) -> {"127.0.0.1", "::1", ...} ---- */

typedef struct {
  lasync__req r;
  int status;
  struct addrinfo *res;
  uv_getaddrinfo_t gai;
} resolve_req;

static void on_resolved(uv_getaddrinfo_t *gai, int status, struct addrinfo *res) {
  resolve_req *rr = (resolve_req *)LASYNC__REQ_OF(gai);
  rr->status = status;
  rr->res = res;
  lasync__req_done(&rr->r);
}

/* In the task: the name is still its first argument. */
static int resolve_push(lua_State *L, lasync__req *r) {
  resolve_req *rr = (resolve_req *)r;
  struct addrinfo *ai;
  int n = 0;
  if (rr->status < 0) {
    lua_pushfstring(L, "resolving '%s'", lua_tostring(L, 1));
    lasync__push_uv_error(L, "dns", rr->status, lua_tostring(L, -1));
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "host");
    return -1;
  }
  lua_newtable(L); /* [..., list] */
  lua_newtable(L); /* [..., list, seen] */
  for (ai = rr->res; ai; ai = ai->ai_next) {
    char ip[64];
    if (ai->ai_family == AF_INET)
      uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
    else if (ai->ai_family == AF_INET6)
      uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
    else
      continue;
    if (lua_getfield(L, -1, ip) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, ip);
      lua_pushstring(L, ip);
      lua_rawseti(L, -3, ++n);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return 1;
}

static void resolve_cleanup(lasync__req *r) {
  resolve_req *rr = (resolve_req *)r;
  uv_freeaddrinfo(rr->res); /* NULL-safe */
  rr->res = NULL;
}

static const lasync__req_ops RESOLVE_REQ = {"net.resolve", resolve_push, NULL, resolve_cleanup,
                                            NULL};

static int l_resolve(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "async.net.resolve");
  struct sockaddr_storage ss;
  struct addrinfo hints;
  resolve_req *rr;
  const char *name;
  int err;
  if (lua_type(L, 1) != LUA_TSTRING) return lasync__argerror(L, 1, "async.net.resolve", "name",
                                                             "string");
  name = lua_tostring(L, 1);
  lua_settop(L, 1);
  if (parse_ip(name, 0, &ss) == 0) { /* a literal needs no lookup */
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    return 1;
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  rr = (resolve_req *)lasync__req_new(L, &RESOLVE_REQ, sizeof *rr, offsetof(resolve_req, gai));
  err = uv_getaddrinfo(t->rt->loop, &rr->gai, on_resolved, name, NULL, &hints);
  if (err) {
    lasync__req_abort(&rr->r);
    lua_pushfstring(L, "resolving '%s'", name);
    lasync__push_uv_error(L, "dns", err, lua_tostring(L, -1));
    return lua_error(L);
  }
  return lasync__req_await(L, t, &rr->r);
}

/* ---- core._net_connect(ip, port) -> Stream ---- */

typedef struct {
  lasync__req r;
  lasync__stream *s; /* not yet visible to Lua: only this request closes it */
  int status;
  uv_connect_t c;
} connect_req;

static void on_connected(uv_connect_t *c, int status) {
  connect_req *cr = (connect_req *)LASYNC__REQ_OF(c);
  cr->status = status;
  lasync__req_done(&cr->r);
}

/* In the task, whose stack is [ip, port, stream, request]. */
static int connect_push(lua_State *L, lasync__req *r) {
  connect_req *cr = (connect_req *)r;
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 3);
  if (cr->status < 0 || *box == NULL) {
    int err = cr->status < 0 ? cr->status : UV_ECANCELED;
    if (*box) lasync__stream_close(cr->s);
    lua_pushfstring(L, "connecting to %s port %d", lua_tostring(L, 1), (int)lua_tointeger(L, 2));
    lasync__push_uv_error(L, "connect", err, lua_tostring(L, -1));
    return -1;
  }
  setup_connection(L, 3, cr->s);
  lua_pushvalue(L, 3);
  return 1;
}

/* The waiter left: the socket, connected or not, goes. */
static void connect_discard(lasync__req *r) { lasync__stream_close(((connect_req *)r)->s); }

/* Closing the socket makes libuv call back with ECANCELED, which then discards. */
static void connect_cancel(lasync__req *r) { lasync__stream_close(((connect_req *)r)->s); }

static const lasync__req_ops CONNECT_REQ = {"net.connect", connect_push, connect_discard, NULL,
                                            connect_cancel};

static int l_connect(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "async.net.connect");
  struct sockaddr_storage ss;
  lasync__stream *s;
  connect_req *cr;
  int port = check_port(L, 2, "async.net.connect"), err;
  check_ip(L, 1, "async.net.connect", &ss, port);
  lua_settop(L, 2);
  s = lasync__stream_new(L, LASYNC__STREAM_TCP); /* [ip, port, stream] */
  err = uv_tcp_init(t->rt->loop, &s->u.tcp);
  if (err == 0) {
    lasync__stream_init(s);
    cr = (connect_req *)lasync__req_new(L, &CONNECT_REQ, sizeof *cr, offsetof(connect_req, c));
    cr->s = s;
    err = uv_tcp_connect(&cr->c, &s->u.tcp, (const struct sockaddr *)&ss, on_connected);
    if (err == 0) return lasync__req_await(L, t, &cr->r);
    lasync__req_abort(&cr->r);
  }
  lasync__stream_close(s);
  lua_pushfstring(L, "connecting to %s port %d", lua_tostring(L, 1), port);
  lasync__push_uv_error(L, "connect", err, lua_tostring(L, -1));
  return lua_error(L);
}

/* ---- core._net_listen(ip, port, backlog) -> server ---- */

typedef struct {
  lasync__handle h;
  uv_tcp_t tcp;
  lasync__task *acceptor; /* the task waiting in accept */
  int err;                /* a failure libuv reported instead of a connection */
  uint8_t pending;        /* libuv holds a connection for uv_accept */
  uint8_t acceptor_woken;
} server;

static void on_connection(uv_stream_t *stream, int status) {
  server *sv = (server *)LASYNC__HANDLE_OF(stream);
  if (status < 0)
    sv->err = status;
  else
    sv->pending = 1;
  if (sv->acceptor && !sv->acceptor_woken) {
    sv->acceptor_woken = 1;
    lasync__wake(sv->acceptor);
  }
}

static void server_on_close(lasync__handle *h) {
  server *sv = (server *)h;
  if (sv->acceptor) {
    if (!sv->acceptor_woken) lasync__wake(sv->acceptor);
    sv->acceptor = NULL;
  }
}

static server *resumed_server(lua_State *L) {
  lasync__handle **box = (lasync__handle **)lua_touserdata(L, 1);
  return box ? (server *)*box : NULL;
}

static void accept_cancel(lasync__task *t, void *data) {
  (void)t;
  ((server *)data)->acceptor = NULL;
}

static int accept_finish(lua_State *L, lasync__task *t, void *data);

static void accept_abandon(lua_State *L, lasync__task *t, void *data) {
  server *sv = resumed_server(L);
  (void)data;
  if (sv && sv->acceptor == t) sv->acceptor = NULL;
}

static const lasync__awaitable_ops ACCEPT_OPS = {"net.accept", accept_cancel, accept_finish,
                                                 accept_abandon};

static int try_accept(lua_State *L, lasync__task *t, server *sv) {
  if (sv->pending) {
    lasync__handle **box = lasync__stream_pushbox(L); /* [server, conn] */
    lasync__stream *s = lasync__stream_alloc(sv->h.rt, LASYNC__STREAM_TCP);
    int err;
    if (s == NULL) {
      lasync__push_error(L, "nomem", "not enough memory to accept a connection");
      return lua_error(L); /* the connection waits in libuv for a later accept */
    }
    err = uv_tcp_init(sv->h.rt->loop, &s->u.tcp);
    if (err == 0) {
      lasync__stream_init(s);
      err = uv_accept((uv_stream_t *)&sv->tcp, &s->u.stream);
    }
    if (err == 0) {
      sv->pending = 0;
      lasync__stream_attach(box, s);
      setup_connection(L, 2, s);
      return 1;
    }
    lasync__stream_close(s);
    if (err != UV_EAGAIN) {
      lasync__push_uv_error(L, "accept", err, "accepting a connection");
      return lua_error(L);
    }
    sv->pending = 0;
    lua_settop(L, 1);
  }
  if (sv->err) {
    int err = sv->err;
    sv->err = 0;
    lasync__push_uv_error(L, "accept", err, "accepting a connection");
    return lua_error(L);
  }
  sv->acceptor = t;
  sv->acceptor_woken = 0;
  return lasync__suspend(L, t, &ACCEPT_OPS, sv);
}

static int accept_finish(lua_State *L, lasync__task *t, void *data) {
  server *sv = resumed_server(L);
  (void)data;
  if (sv == NULL) {
    lasync__push_error(L, "closed", "the server was closed while a task was accepting");
    return lua_error(L);
  }
  sv->acceptor = NULL;
  return try_accept(L, t, sv);
}

/* server:accept() -> Stream: waits for the next connection. */
static int server_accept(lua_State *L) {
  lasync__task *t = lasync__check_task(L, "server:accept");
  server *sv = (server *)lasync__handle_check(L, 1, SERVER_MT, "server:accept");
  if (sv->acceptor)
    return lasync__misuse(L, "server:accept: another task is already accepting on this server");
  lua_settop(L, 1);
  return try_accept(L, t, sv);
}

static int server_address(lua_State *L) {
  server *sv = (server *)lasync__handle_check(L, 1, SERVER_MT, "server:address");
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(&sv->tcp, (struct sockaddr *)&ss, &len) != 0) return 0;
  push_sockaddr(L, &ss);
  return 1;
}

static int server_close(lua_State *L) {
  lasync__handle **box = (lasync__handle **)luaL_testudata(L, 1, SERVER_MT);
  if (box == NULL) return lasync__argerror(L, 1, "server:close", "self", SERVER_MT);
  if (*box) lasync__handle_close(*box);
  return 0;
}

static int l_listen(lua_State *L) {
  static const luaL_Reg methods[] = {{"accept", server_accept},
                                     {"address", server_address},
                                     {"close", server_close},
                                     {NULL, NULL}};
  lasync__runtime *rt = lasync__runtime_get(L);
  struct sockaddr_storage ss;
  int port = check_port(L, 2, "async.net.listen"), err;
  lua_Integer backlog = luaL_optinteger(L, 3, 511);
  lasync__handle **box;
  server *sv;
  check_ip(L, 1, "async.net.listen", &ss, port);
  if (backlog < 0 || backlog > INT_MAX) backlog = 511;
  box = (lasync__handle **)lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, SERVER_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lasync__handle_box_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, lasync__handle_box_close);
    lua_setfield(L, -2, "__close");
  }
  lua_setmetatable(L, -2);
  sv = (server *)lasync__handle_new(rt, sizeof *sv);
  if (sv == NULL) {
    lasync__push_error(L, "nomem", "not enough memory for a server");
    return lua_error(L);
  }
  *box = &sv->h;
  sv->h.owner = box;
  sv->h.on_close = server_on_close;
  err = uv_tcp_init(rt->loop, &sv->tcp);
  if (err == 0) {
    lasync__handle_init(&sv->h, (uv_handle_t *)&sv->tcp);
    err = uv_tcp_bind(&sv->tcp, (const struct sockaddr *)&ss, 0);
    if (err == 0) err = uv_listen((uv_stream_t *)&sv->tcp, (int)backlog, on_connection);
  }
  if (err) {
    lasync__handle_close(&sv->h);
    lua_pushfstring(L, "listening on %s port %d", lua_tostring(L, 1), port);
    lasync__push_uv_error(L, "listen", err, lua_tostring(L, -1));
    return lua_error(L);
  }
  return 1;
}

/* core._net_report(text): a handler's failure, reported as an unawaited task's would be. */
static int l_report(lua_State *L) {
  lasync__report(lasync__runtime_get(L), luaL_checkstring(L, 1));
  return 0;
}

void lasync__open_net(lua_State *L) {
  static const luaL_Reg funcs[] = {{"_net_resolve", l_resolve},
                                   {"_net_connect", l_connect},
                                   {"_net_listen", l_listen},
                                   {"_net_report", l_report},
                                   {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
