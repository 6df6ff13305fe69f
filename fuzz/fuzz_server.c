/* fuzz_server: the fuzzer's bytes are what a client sends to async.http.serve.
 *
 * Each input runs in a fresh runtime (lasync_new, a task, lasync_run, lasync_destroy). The
 * task starts a server on 127.0.0.1 with small limits (so 413, 431 and the timeouts are in
 * reach) whose handlers read the body in each of the ways a handler can (body, chunks, json,
 * form, query, headers), stream a chunked response or fail; then a client connects with
 * async.net, writes the input in two pieces (split at its first byte's value, so a head split
 * across reads is covered), half-closes, reads until the server closes, and the server is
 * closed. The harness aborts unless the task ended normally and every count is back to zero;
 * ASan/UBSan catch memory errors, LeakSanitizer leaks, -timeout hangs.
 *
 * Build: fuzz/build.sh. Run: build-fuzz/fuzz_server fuzz/corpus/fuzz_server
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lasync.h"
#include "run_script.h"

static const char SCRIPT[] =
    "local async, input = ...\n"
    "local app = async.http.router()\n"
    "app:get('/', function(req) return 'hi ' .. tostring(req.query.a) end)\n"
    "app:post('/body', function(req) return #req:body() .. '' end)\n"
    "app:post('/json', function(req) return { json = { v = req:json() } } end)\n"
    "app:post('/form', function(req) local f = req:form(); return tostring(next(f)) end)\n"
    "app:put('/{id}', function(req, res)\n"
    "  for c in req:chunks() do res:write(#c, '\\n') end\n"
    "  res:finish()\n"
    "end)\n"
    "app:get('/boom', function(req) error('boom') end)\n"
    "app:get('/late', function(req, res) res:write('x'); error('late') end)\n"
    "app:get('/h/{x}', function(req) local _ = req.headers.host, req.headers_list, req.remote\n"
    "  return { status = 201, headers = { ['X-A'] = req.params.x }, body = req.path } end)\n"
    "local srv = async.http.serve(app, { max_body = 2048, max_header_bytes = 1024,\n"
    "  max_headers = 20, header_timeout = 0.5, keepalive_timeout = 0.5, request_timeout = 1,\n"
    "  on_error = function() end })\n"
    "local conn = async.net.connect('127.0.0.1', srv.port)\n"
    "local cut = #input > 0 and (input:byte(1) % #input) + 1 or 1\n"
    "pcall(conn.write, conn, input:sub(1, cut - 1))\n"
    "async.sleep(0)\n"
    "pcall(conn.write, conn, input:sub(cut))\n"
    "pcall(conn.shutdown, conn)\n"
    "pcall(async.timeout, 3, function()\n"
    "  while conn:read() do end\n"
    "end)\n"
    "conn:close()\n"
    "srv:close { grace = 0.2 }\n"
    "for _ = 1, 5 do async.sleep(0) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 8192) return -1;
  return fuzz_run_script("=fuzz_server", SCRIPT, sizeof SCRIPT - 1, data, size, NULL);
}
