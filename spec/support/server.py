#!/usr/bin/env python3
"""lasync test HTTP/HTTPS server with faults on demand.

Python 3 standard library only.  Listens on 127.0.0.1 only.

Usage:
    python3 spec/support/server.py [--port 0] [--tls-port 0]
                                   [--ready-file PATH] [--cert-out PATH]
                                   [--parent-pid PID]

Once both listeners are bound it prints exactly one line to stdout

    READY http=<port> https=<port>

and flushes.  With --ready-file the same line (plus "\\n") is written to PATH
atomically (temp file + rename).  With --cert-out the self-signed certificate
(PEM) is written there (atomically, before READY); it is also served at
GET /cert.pem.

The server exits (status 0) on SIGTERM/SIGINT, when its parent process dies
(checked every second; --parent-pid PID watches PID instead of the parent at
startup, --parent-pid 0 disables this), and when stdout is a pipe whose
reading end has been closed.

Endpoints (both listeners; every method is accepted on every path; HEAD gets
the headers only):

  /get                        200 {"ok":true}
  /delay?s=1                  sleep s seconds (fractional ok), 200 "ok"
  /slow-headers?s=1           same: nothing is sent for s seconds
  /status/<code>              that status (200..599), short text body
  /redirect/<n>[?status=302]  n redirects: /redirect/n -> ... -> /redirect/1 -> /get
                              (/redirect/0 answers like /get)
  /redirect-loop              302 to itself forever
  /redirect-to?url=U&status=302   redirect to any URL U
  /bytes/<n>                  n bytes "abcd...zabc..." with Content-Length
  /stream-bytes/<n>?chunk=1024    the same n bytes, chunked encoding
  /endless[?chunk=4096&delay=0]   chunked body that never ends
  /drip?n=10&delay=0.1        n bytes (Content-Length n), one per delay seconds
  /cut?n=1000&send=100        Content-Length n, only `send` bytes, then close
  /garbage                    "HELLO WORLD garbage\\r\\n\\r\\n" then close
  /nothing                    close without sending anything
  /reset                      close with a TCP RST (SO_LINGER 0)
  /big-headers?kb=200         response headers totalling about kb KiB
  /gzip?n=1000                n pattern bytes, gzip Content-Encoding
  /gzip-bomb?mb=100           gzip body expanding to mb MiB of zeros
  /echo                       JSON description of the request (see below)
  /json                       fixed JSON document (~300 bytes)
  /bad-json                   Content-Type application/json, invalid body
  /headers-multi              two Set-Cookie headers, one X-Single header
  /retry-after?status=503&after=1   status with Retry-After header
  /count                      {"requests":N,"connections":M,"connection_requests":K}
  /cert.pem                   the server certificate (PEM)
  anything else               404

/echo answers
  {"method", "path", "target", "query": {name: value or [values...]},
   "headers": {lower-case name: value}, "body": text (utf-8, invalid bytes
   replaced), "body_length": raw byte count, "body_sha256": hex,
   "chunked": bool (request body was chunked), "tls": bool}

/count: "requests" counts every request received so far on both listeners,
including this /count request; "connections" counts every client connection
accepted so far (both listeners, including the current one);
"connection_requests" is the number of requests seen on the current
connection, including this one.
"""

import argparse
import gzip
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"

ALPHABET = b"abcdefghijklmnopqrstuvwxyz"
# A block whose length is a multiple of 26, plus one extra alphabet so that
# any slice starting at offset % 26 of up to BLOCK_STEP bytes is available.
BLOCK_STEP = 26 * 2520  # 65520 bytes
_BLOCK = ALPHABET * (2520 + 1)

JSON_DOC = json.dumps(
    {
        "name": "lasync",
        "version": 1,
        "ok": True,
        "nothing": None,
        "pi": 3.14159,
        "negative": -42,
        "unicode": "h\u00e9llo w\u00f6rld \u2713",
        "escapes": "quote \" backslash \\ tab \t newline \n",
        "list": [1, 2, 3, "four", False],
        "nested": {"a": {"b": {"c": "deep"}}, "empty_list": [], "empty_obj": {}},
        "description": "fixed document served by spec/support/server.py",
    },
    separators=(",", ":"),
    ensure_ascii=False,
).encode("utf-8")

BAD_JSON = b'{"ok": tru, "list": [1, 2,, "unterminated'
# res:json()'s integers: integer literals among floats, in strings, nested; and a document
# with only fractions and exponents.
JSON_NUMBERS = ('{"int": 1, "neg": -42, "zero": 0, "float": 1.5, "exp": 2e3, "list": [1, 2, 3],'
                ' "nested": {"id": 7, "deeper": [{"n": 12345678901}]}, "text": "12 not a number"}')
JSON_FLOATS = '[1.5, 2.5e1, "7"]'

DISCONNECT_ERRORS = (OSError,)  # BrokenPipe, ConnectionReset, ssl errors, timeouts


def pattern(offset, length):
    """`length` bytes of the repeating alphabet starting at stream `offset`."""
    out = []
    while length > 0:
        take = min(length, BLOCK_STEP)
        start = offset % 26
        out.append(_BLOCK[start:start + take])
        offset += take
        length -= take
    return b"".join(out)


@lru_cache(maxsize=8)
def gzip_bomb(mb):
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip wrapper
    zeros = bytes(1 << 20)
    parts = []
    for _ in range(mb):
        parts.append(comp.compress(zeros))
    parts.append(comp.flush())
    return b"".join(parts)


@lru_cache(maxsize=8)
def gzip_pattern(n):
    return gzip.compress(pattern(0, n), compresslevel=6, mtime=0)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.connections = 0

    def new_connection(self):
        with self.lock:
            self.connections += 1

    def new_request(self):
        with self.lock:
            self.requests += 1

    def snapshot(self):
        with self.lock:
            return self.requests, self.connections


STATS = Stats()
CERT_PEM = b""


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK hold the second write back ~40 ms on a reused connection.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "lasync-test-server/1.0"
    sys_version = ""

    def version_string(self):
        return self.server_version
    timeout = 120  # idle keep-alive connections / stuck writes give up eventually

    # --- plumbing -------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - quiet
        if os.environ.get("LASYNC_TEST_SERVER_VERBOSE"):
            sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))

    def setup(self):
        super().setup()
        self.conn_requests = 0
        self.want_reset = False
        STATS.new_connection()

    def handle(self):
        try:
            super().handle()
        except DISCONNECT_ERRORS:
            self.close_connection = True
        except Exception:
            self.close_connection = True
            traceback.print_exc(file=sys.stderr)

    def __getattr__(self, name):
        # Route every method (GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD,
        # anything) to the dispatcher.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    @property
    def is_head(self):
        return self.command == "HEAD"

    @property
    def is_tls(self):
        return isinstance(self.connection, ssl.SSLSocket)

    def write(self, data):
        if data and not self.is_head:
            self.wfile.write(data)

    def write_chunk(self, data):
        if data and not self.is_head:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self):
        if not self.is_head:
            self.wfile.write(b"0\r\n\r\n")

    def respond(self, status, body=b"", ctype="text/plain; charset=utf-8",
                headers=(), content_length=True):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        if ctype and (body or status not in (204, 304)):
            self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        if content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.write(body)

    def respond_json(self, status, obj, headers=()):
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self.respond(status, body, "application/json", headers)

    def read_body(self):
        """Read the request body (chunked or Content-Length) completely."""
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionResetError("eof in chunked body")
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise BadRequest("bad chunk size line %r" % line)
                if size == 0:
                    # trailers until empty line
                    while True:
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    break
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ConnectionResetError("eof in chunk")
                parts.append(data)
                self.rfile.readline(65537)  # CRLF after chunk data
            return b"".join(parts), True
        cl = self.headers.get("Content-Length")
        if cl:
            try:
                n = int(cl)
            except ValueError:
                raise BadRequest("bad Content-Length")
            if n < 0:
                raise BadRequest("bad Content-Length")
            data = self.rfile.read(n)
            if len(data) < n:
                raise ConnectionResetError("eof in body")
            return data, False
        return b"", False

    def hard_close(self, reset=False):
        """Close the connection now (optionally with RST) from inside a handler."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        if reset:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
            except OSError:
                pass
            self.want_reset = True
        # The server thread closes the socket after finish(); see
        # Server.process_request_thread.

    # --- parameters -----------------------------------------------------

    def qnum(self, name, default, cast=float):
        vals = self.query.get(name)
        if not vals:
            return default
        try:
            v = cast(vals[-1])
        except ValueError:
            raise BadRequest("bad value for %s: %r" % (name, vals[-1]))
        if v < 0:
            raise BadRequest("negative value for %s" % name)
        return v

    def qint(self, name, default):
        return self.qnum(name, default, int)

    def qstr(self, name, default=None):
        vals = self.query.get(name)
        return vals[-1] if vals else default

    @staticmethod
    def path_int(s):
        try:
            v = int(s)
        except ValueError:
            raise BadRequest("bad number in path: %r" % s)
        if v < 0:
            raise BadRequest("negative number in path")
        return v

    # --- dispatch -------------------------------------------------------

    def _dispatch(self):
        STATS.new_request()
        self.conn_requests += 1
        parts = urlsplit(self.path)
        self.req_path = parts.path or "/"
        self.query = parse_qs(parts.query, keep_blank_values=True)
        try:
            self.body, self.body_chunked = self.read_body()
            segs = self.req_path.strip("/").split("/")
            name = segs[0]
            arg = segs[1] if len(segs) > 1 else None
            fn = ROUTES.get(name)
            if fn is None or (len(segs) > (2 if name in ROUTES_WITH_ARG else 1)):
                return self.respond(404, "not found: %s\n" % self.req_path)
            if name in ROUTES_WITH_ARG and arg is None:
                return self.respond(404, "missing argument: %s\n" % self.req_path)
            if name in ROUTES_WITH_ARG:
                fn(self, arg)
            else:
                fn(self)
        except BadRequest as e:
            self.close_connection = True
            self.respond(400, "bad request: %s\n" % e, headers=[("Connection", "close")])

    # --- endpoints ------------------------------------------------------

    def ep_get(self):
        self.respond_json(200, {"ok": True})

    def ep_delay(self):
        s = self.qnum("s", 1.0)
        time.sleep(s)
        self.respond(200, "ok")

    def ep_status(self, arg):
        code = self.path_int(arg)
        if not 200 <= code <= 599:
            raise BadRequest("status must be 200..599")
        if code in (204, 304):
            self.send_response(code)
            self.end_headers()
        else:
            self.respond(code, "status %d\n" % code)

    def redirect(self, location, status=302):
        if not 300 <= status <= 399:
            raise BadRequest("redirect status must be 3xx")
        self.respond(status, "redirecting to %s\n" % location,
                     headers=[("Location", location)])

    def ep_redirect(self, arg):
        n = self.path_int(arg)
        status = self.qint("status", 302)
        if n == 0:
            return self.ep_get()
        suffix = "?status=%d" % status if "status" in self.query else ""
        self.redirect("/get" if n == 1 else "/redirect/%d%s" % (n - 1, suffix), status)

    def ep_redirect_loop(self):
        self.redirect("/redirect-loop", self.qint("status", 302))

    def ep_redirect_to(self):
        url = self.qstr("url")
        if url is None:
            raise BadRequest("url parameter required")
        self.redirect(url, self.qint("status", 302))

    def ep_bytes(self, arg):
        n = self.path_int(arg)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        off = 0
        while off < n:
            take = min(BLOCK_STEP, n - off)
            self.write(pattern(off, take))
            off += take

    def ep_stream_bytes(self, arg):
        n = self.path_int(arg)
        chunk = max(1, self.qint("chunk", 1024))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        off = 0
        while off < n:
            take = min(chunk, n - off)
            self.write_chunk(pattern(off, take))
            off += take
        self.end_chunks()

    def ep_endless(self):
        chunk = max(1, self.qint("chunk", 4096))
        delay = self.qnum("delay", 0.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.is_head:
            return
        off = 0
        while True:  # ends with an OSError when the client goes away
            self.write_chunk(pattern(off, chunk))
            off += chunk
            if delay:
                time.sleep(delay)

    def ep_drip(self):
        n = self.qint("n", 10)
        delay = self.qnum("delay", 0.1)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.is_head:
            return
        self.wfile.flush()
        for i in range(n):
            time.sleep(delay)
            self.write(pattern(i, 1))

    def ep_cut(self):
        n = self.qint("n", 1000)
        send = min(self.qint("send", 100), n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.write(pattern(0, send))
        self.hard_close()

    def ep_garbage(self):
        self.wfile.write(b"HELLO WORLD garbage\r\n\r\n")
        self.hard_close()

    def ep_nothing(self):
        self.hard_close()

    def ep_reset(self):
        self.hard_close(reset=True)

    def ep_big_headers(self):
        kb = self.qnum("kb", 200)
        target = int(kb * 1024)
        self.send_response(200)
        i = 0
        total = 0
        while total < target:
            name = "X-Filler-%05d" % i
            # line is "Name: value\r\n"
            room = target - total - len(name) - 4
            val = "x" * max(1, min(1000, room))
            self.send_header(name, val)
            total += len(name) + 4 + len(val)
            i += 1
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.write(b"ok")

    def ep_gzip(self):
        n = self.qint("n", 1000)
        body = gzip_pattern(n)
        self.respond(200, body, "text/plain",
                     headers=[("Content-Encoding", "gzip")])

    def ep_gzip_bomb(self):
        mb = self.qint("mb", 100)
        body = gzip_bomb(mb)
        self.respond(200, body, "application/octet-stream",
                     headers=[("Content-Encoding", "gzip")])

    def ep_echo(self):
        query = {k: (v[0] if len(v) == 1 else v) for k, v in self.query.items()}
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        self.respond_json(200, {
            "method": self.command,
            "path": self.req_path,
            "target": self.path,
            "query": query,
            "headers": headers,
            "body": self.body.decode("utf-8", errors="replace"),
            "body_length": len(self.body),
            "body_sha256": hashlib.sha256(self.body).hexdigest(),
            "chunked": self.body_chunked,
            "tls": self.is_tls,
        })

    def ep_json(self):
        self.respond(200, JSON_DOC, "application/json")

    def ep_json_numbers(self):
        self.respond(200, JSON_NUMBERS if self.qint("floats", 0) == 0 else JSON_FLOATS,
                     "application/json")

    def ep_bad_json(self):
        self.respond(200, BAD_JSON, "application/json")

    def ep_headers_multi(self):
        self.respond(200, "ok", headers=[
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2; Path=/"),
            ("X-Single", "one"),
        ])

    def ep_retry_after(self):
        status = self.qint("status", 503)
        if not 200 <= status <= 599:
            raise BadRequest("status must be 200..599")
        after = self.qstr("after", "1")
        self.respond(status, "retry after %s\n" % after,
                     headers=[("Retry-After", after)])

    def ep_flaky(self):
        # /flaky?key=K&fail=N&status=503&after=S: the first N requests with key K get the status
        # (with Retry-After: S when given), later ones 200 "recovered after N".
        key = self.qstr("key", "")
        fail = self.qint("fail", 1)
        status = self.qint("status", 503)
        with FLAKY_LOCK:
            seen = FLAKY.get(key, 0) + 1
            FLAKY[key] = seen
        if seen <= fail:
            after = self.qstr("after", "")
            self.respond(status, "failing %d/%d\n" % (seen, fail),
                         headers=[("Retry-After", after)] if after else [])
        else:
            self.respond(200, "recovered after %d\n" % fail)

    def ep_count(self):
        requests, connections = STATS.snapshot()
        self.respond_json(200, {"requests": requests, "connections": connections,
                                "connection_requests": self.conn_requests})

    def ep_cert(self):
        self.respond(200, CERT_PEM, "application/x-pem-file")


FLAKY = {}
FLAKY_LOCK = threading.Lock()

ROUTES = {
    "get": Handler.ep_get,
    "delay": Handler.ep_delay,
    "slow-headers": Handler.ep_delay,
    "status": Handler.ep_status,
    "redirect": Handler.ep_redirect,
    "redirect-loop": Handler.ep_redirect_loop,
    "redirect-to": Handler.ep_redirect_to,
    "bytes": Handler.ep_bytes,
    "stream-bytes": Handler.ep_stream_bytes,
    "endless": Handler.ep_endless,
    "drip": Handler.ep_drip,
    "cut": Handler.ep_cut,
    "garbage": Handler.ep_garbage,
    "nothing": Handler.ep_nothing,
    "reset": Handler.ep_reset,
    "big-headers": Handler.ep_big_headers,
    "gzip": Handler.ep_gzip,
    "gzip-bomb": Handler.ep_gzip_bomb,
    "echo": Handler.ep_echo,
    "json": Handler.ep_json,
    "bad-json": Handler.ep_bad_json,
    "json-numbers": Handler.ep_json_numbers,
    "headers-multi": Handler.ep_headers_multi,
    "retry-after": Handler.ep_retry_after,
    "count": Handler.ep_count,
    "flaky": Handler.ep_flaky,
    "cert.pem": Handler.ep_cert,
}
ROUTES_WITH_ARG = {"status", "redirect", "bytes", "stream-bytes"}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, port, ssl_context=None):
        self.ssl_context = ssl_context
        super().__init__((HOST, port), Handler)

    def server_bind(self):
        # HTTPServer.server_bind would call socket.getfqdn() (a DNS lookup).
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = self.server_address[1]

    def process_request_thread(self, request, client_address):
        conn = request
        handler = None
        try:
            if self.ssl_context is not None:
                request.settimeout(10)
                conn = self.ssl_context.wrap_socket(request, server_side=True)
                conn.settimeout(None)
            handler = Handler.__new__(Handler)
            handler.__init__(conn, client_address, self)
        except DISCONNECT_ERRORS:
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
        finally:
            if handler is None or not getattr(handler, "want_reset", False):
                try:
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            try:
                conn.close()
            except OSError:
                pass
            if conn is not request:
                try:
                    request.close()
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if not isinstance(exc, DISCONNECT_ERRORS):
            traceback.print_exc(file=sys.stderr)


def atomic_write(path, data):
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def make_cert(tmpdir):
    openssl = shutil.which("openssl")
    if not openssl:
        raise RuntimeError("the `openssl` command is required "
                           "(Debian: apt-get install -y openssl)")
    cert = os.path.join(tmpdir, "cert.pem")
    key = os.path.join(tmpdir, "key.pem")
    cmd = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-subj", "/CN=localhost",
           "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
           "-keyout", key, "-out", cert]
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise RuntimeError("openssl failed: %s" % res.stderr.decode(errors="replace"))
    return cert, key


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def main():
    global CERT_PEM
    ap = argparse.ArgumentParser(description="lasync test HTTP server (127.0.0.1 only)")
    ap.add_argument("--port", type=int, default=0, help="plain HTTP port (0: any free)")
    ap.add_argument("--tls-port", type=int, default=0, help="HTTPS port (0: any free)")
    ap.add_argument("--ready-file", help="also write the READY line to this file (atomically)")
    ap.add_argument("--cert-out", help="write the self-signed certificate PEM here")
    ap.add_argument("--parent-pid", type=int, default=None,
                    help="exit when this pid dies (default: the parent at startup; 0: never)")
    args = ap.parse_args()

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)

    tmpdir = tempfile.mkdtemp(prefix="lasync-test-server-")
    servers = []
    try:
        try:
            cert, key = make_cert(tmpdir)
        except Exception as e:
            sys.stderr.write("server.py: cannot create certificate: %s\n" % e)
            return 2
        with open(cert, "rb") as f:
            CERT_PEM = f.read()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])

        try:
            http = Server(args.port)
            https = Server(args.tls_port, ctx)
        except OSError as e:
            sys.stderr.write("server.py: cannot listen: %s\n" % e)
            return 2
        servers = [http, https]
        for s in servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.25},
                             daemon=True).start()

        if args.cert_out:
            atomic_write(args.cert_out, CERT_PEM)
        line = "READY http=%d https=%d" % (http.server_port, https.server_port)
        if args.ready_file:
            atomic_write(args.ready_file, (line + "\n").encode())
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            pass

        # Watchdog: parent death, closed stdout pipe.
        parent = args.parent_pid if args.parent_pid is not None else os.getppid()
        watch_by_ppid = args.parent_pid is None and parent > 1
        watch_pid = args.parent_pid is not None and args.parent_pid > 0
        poller = None
        try:
            if stat.S_ISFIFO(os.fstat(1).st_mode):
                poller = select.poll()
                poller.register(1, 0)  # POLLERR/POLLHUP are always reported
        except (OSError, ValueError):
            poller = None

        while not stop.wait(1.0):
            if watch_by_ppid and os.getppid() != parent:
                break
            if watch_pid and not pid_alive(parent):
                break
            if poller is not None:
                for _fd, ev in poller.poll(0):
                    if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        stop.set()
                if stop.is_set():
                    break
        return 0
    finally:
        for s in servers:
            try:
                s.shutdown()
                s.server_close()
            except Exception:
                pass
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    rc = main()
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(rc or 0)
