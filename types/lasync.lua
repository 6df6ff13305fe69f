---@meta lasync
-- LuaLS (lua-language-server) definitions of lasync's public API: `require "lasync"`.
-- Installed under share/lasync/types/; point an editor at it with
--   { "workspace.library": ["/usr/local/share/lasync/types"] }   in .luarc.json
-- (docs/types.md).
--
-- Kept true by spec/types_spec.lua, which walks the loaded module and fails on a public name
-- defined nowhere here, or a definition here that names nothing real. To add a module or class:
--   * a module function:  `function async.net.connect(host, port) end` (with `async.net = {}`
--     declared first, as `async.http` is below);
--   * a class: `---@class lasync.Name` on the line just above `local Name = {}`, then its
--     methods as `function Name:method() end`. The class name must be the `__name` of its
--     metatable (luaL_newmetatable's name for userdata, a `__name` field for Lua tables);
--   * data fields and option tables: `---@field name type description` under the `---@class`.
-- Only the lines starting with `function`, `local X = {}`, `X.y = ` and `---@class` are read by
-- the spec; everything else is for the editor.

---@class lasync
local async = {}

---The version of lasync, as `"0.1.0"`.
---@type string
async.version = "0.1.0"

-- ---------------------------------------------------------------------------------------------
-- Tasks

---@class lasync.SpawnOptions
---@field name? string a name for the task, shown by `async.tasks()`, `async.dump()` and tracebacks

---Schedules `fn(...)` as a new task; it starts on a later loop turn, never inside `spawn`.
---`async.spawn({name = "fetcher"}, fn, ...)` names it.
---@param fn function
---@param ... any
---@return lasync.Task
---@overload fun(opts: lasync.SpawnOptions, fn: function, ...: any): lasync.Task
function async.spawn(fn, ...) end

---Alias of `async.spawn`.
---@param fn function
---@param ... any
---@return lasync.Task
---@overload fun(opts: lasync.SpawnOptions, fn: function, ...: any): lasync.Task
function async.create_task(fn, ...) end

---Waits for a Task, a Future, or any object with an `await` method; returns all its values or
---raises its error. Must run inside a task.
---@param awaitable lasync.Task|lasync.Future|{await: fun(self): ...}
---@return any ...
function async.await(awaitable) end

---The running task; `nil` outside tasks (and inside your own coroutine within a task).
---@return lasync.Task?
function async.current() end

---@alias lasync.TaskStatus "pending"|"running"|"done"|"failed"|"cancelled"

---A task: a coroutine driven by the loop (`async.spawn`).
---@class lasync.Task
local Task = {}

---Waits for the task; returns all its values or raises its error (the very value raised).
---@return any ...
function Task:await() end

---Requests cancellation: the task gets a Cancelled error at its current or next suspension
---point. Returns `true` if the task had not finished, `false` otherwise.
---@param msg? string the Cancelled error's message
---@return boolean
function Task:cancel(msg) end

---`"pending"` (not started), `"running"` (started, also while suspended), `"done"`, `"failed"`
---or `"cancelled"`.
---@return lasync.TaskStatus
function Task:status() end

---True once the task is done, failed or cancelled.
---@return boolean
function Task:done() end

---The task's values, or raises its error; raises if it has not finished.
---@return any ...
function Task:result() end

---The task's name, or nil.
---@return string?
function Task:name() end

---Names the task; returns it.
---@param name string
---@return lasync.Task
function Task:set_name(name) end

-- ---------------------------------------------------------------------------------------------
-- Waiting on many

---An array of each child's first value, in argument order, with field `n`.
---@class lasync.GatherResults: any[]
---@field n integer

---Runs tasks or functions (spawned) concurrently, given as arguments or as one array; returns
---each one's first value. The first failure cancels the others and is raised.
---@param ... lasync.Task|function|(lasync.Task|function)[]
---@return lasync.GatherResults
function async.gather(...) end

---@class lasync.Settled
---@field ok boolean
---@field value? any the first value, when `ok`
---@field error? any the error, when not `ok`

---Like `gather`, but waits for every child and never raises for a child's failure.
---@param ... lasync.Task|function|(lasync.Task|function)[]
---@return lasync.Settled[]
function async.gather_settled(...) end

---@class lasync.WaitOptions
---@field return_when? "all"|"first_completed"|"first_error" default `"all"`
---@field timeout? number seconds; returns what it has then, without raising

---Waits on an array of tasks; returns the done and the pending ones, each in the order given.
---Never raises for a task's failure and never cancels anything.
---@param tasks lasync.Task[]
---@param opts? lasync.WaitOptions
---@return lasync.Task[] done
---@return lasync.Task[] pending
function async.wait(tasks, opts) end

---`for t in async.as_completed(tasks) do ... end`: the tasks in the order they finish.
---@param tasks lasync.Task[]
---@return fun(): lasync.Task?
function async.as_completed(tasks) end

---Runs tasks or functions (spawned); returns all the values of the first to succeed, cancelling
---the others. If all fail, raises the first error (the later ones in its field `others`).
---@param ... lasync.Task|function|(lasync.Task|function)[]
---@return any ...
function async.first(...) end

---@class lasync.MapOptions
---@field concurrency? integer at most this many calls in flight (default: all at once)
---@field settled? boolean results as `{ok, value}` / `{ok = false, error}` instead of raising
---@field progress? boolean|fun(done: integer, total: integer) `true` draws a bar on a terminal

---Calls `fn(item, index)` for each item, each in a task of a scope; returns the first value of
---each call in input order, with field `n`.
---@param fn fun(item: any, index: integer): any
---@param items any[]
---@param opts? lasync.MapOptions
---@return lasync.GatherResults
function async.map(fn, items, opts) end

---@class lasync.RetryOptions
---@field attempts? integer total calls (default 3)
---@field backoff? number the first delay, seconds (default 0.1); each next one doubles
---@field max_delay? number the cap on a delay, seconds (default 30)
---@field jitter? boolean scale each delay by a random factor in [0.5, 1] (default true)
---@field retry_if? fun(err: any, attempt: integer): boolean false raises the error at once

---Calls `fn(attempt)` until it returns, sleeping between attempts; raises the last error.
---A cancellation is never retried.
---@param fn fun(attempt: integer): ...
---@param opts? lasync.RetryOptions
---@return any ...
function async.retry(fn, opts) end

-- ---------------------------------------------------------------------------------------------
-- Time

---Suspends the calling task for `s` seconds (`0`: let the other ready tasks run first;
---`math.huge`: until cancelled).
---@param s number
function async.sleep(s) end

---Runs `fn(...)` in the calling task with a deadline; on expiry its code is cancelled and a
---Timeout error is raised.
---@param s number seconds
---@param fn function
---@param ... any
---@return any ...
function async.timeout(s, fn, ...) end

---Awaits `task` with a deadline; on expiry cancels it, waits for its cleanup, raises Timeout.
---@param task lasync.Task
---@param s number seconds
---@return any ...
function async.wait_for(task, s) end

---Runs `fn(...)` so that a cancellation of the calling task waits for it to finish, then is
---delivered (cleanup that must complete).
---@param fn function
---@param ... any
---@return any ...
function async.shield(fn, ...) end

---A monotonic clock, in float seconds.
---@return number
function async.now() end

-- ---------------------------------------------------------------------------------------------
-- Futures

---A one-shot awaitable.
---@return lasync.Future
function async.future() end

---@class lasync.Future
local Future = {}

---Settles the future with values (from anywhere); a second `set`/`fail` raises.
---@param ... any
function Future:set(...) end

---Settles the future with an error.
---@param err any
function Future:fail(err) end

---Waits; returns the values or raises the error.
---@return any ...
function Future:await() end

---Whether it is settled.
---@return boolean
function Future:done() end

-- ---------------------------------------------------------------------------------------------
-- Running

---Runs `fn(...)` as a task until it finishes. Outside the loop it drives the loop, then cancels
---and awaits what `fn` left behind (asyncio.run); inside a task it runs `fn` as a child task.
---@param fn function
---@param ... any
---@return any ...
function async.run(fn, ...) end

-- ---------------------------------------------------------------------------------------------
-- Errors

---@alias lasync.ErrorKind
---| "cancelled" # a cancelled task's suspension point
---| "timeout" # async.timeout, async.wait_for, a fetch's timeouts
---| "invalid" # a bad option or URL (fetch), raised before any I/O, never retried
---| "dns" # fetch, async.net: the host name does not resolve
---| "connect" # fetch, async.net.connect: refused or failed
---| "tls" # fetch: handshake or certificate
---| "too_large" # fetch: the body outgrew max_body
---| "protocol" # fetch: redirects, malformed or cut-off response
---| "json" # res:json(): invalid JSON
---| "queue_full" # q:put_nowait
---| "queue_empty" # q:get_nowait
---| "queue_closed" # a put on a closed queue
---| "closed" # streams: the stream ended, was closed, or failed (see `code`)
---| "listen" # async.net.listen: cannot listen (see `code`, as `"EADDRINUSE"`)
---| "accept" # a server could not accept a connection (see `code`)
---| "line_too_long" # stream:read_line past max_line
---| "nomem" # not enough memory for a stream or a request
---| string

---An error object: a failed operation, recognisable without string matching.
---`tostring(e)` is `"<kind>: <message>"`.
---@class lasync.Error
---@field kind lasync.ErrorKind
---@field message string
---@field level? integer cancelled: how deep the cancellation is
---@field seconds? number timeout: the deadline
---@field option? string invalid: the option at fault
---@field url? string fetch: the URL
---@field host? string async.net.connect timeout: the host
---@field port? integer async.net.connect timeout: the port
---@field curl_code? integer fetch: curl's CURLcode
---@field code? string libuv errors: the error's name, as `"ECONNREFUSED"`
---@field errno? integer libuv errors: the error number, positive (as errno)
---@field others? any[] scope, first: the errors raised after this one

---Makes an error object (for libraries built on lasync).
---@param kind string
---@param message string
---@param fields? table more fields to set on it
---@return lasync.Error
function async.error(kind, message, fields) end

---Whether `e` is a Cancelled error.
---@param e any
---@return boolean
function async.is_cancelled(e) end

---Whether `e` is a Timeout error.
---@param e any
---@return boolean
function async.is_timeout(e) end

-- ---------------------------------------------------------------------------------------------
-- Diagnostics

---@class lasync.TaskInfo
---@field task lasync.Task
---@field name? string
---@field status lasync.TaskStatus
---@field age number seconds since spawn
---@field site string `file:line` of its function, or that spawned it (debug, C fn); `"?"`
---@field waiting_on string `"sleep"`, `"task"`, `"future"`, `"gather"`, `"fetch"`, `"ready"`, ...
---@field parent? lasync.Task the spawner (debug mode only)

---The live tasks.
---@return lasync.TaskInfo[]
function async.tasks() end

---Prints the live tasks to `file` (default stderr).
---@param file? file*
function async.dump(file) end

---Turns debug mode on or off (slow-step warnings over `seconds`, default 0.1; spawn chains).
---Returns whether it was on.
---@param on boolean
---@param seconds? number
---@return boolean
function async.debug(on, seconds) end

---@class lasync.Counts
---@field tasks integer live tasks other than the caller
---@field timers integer armed deadlines
---@field handles integer active libuv handles other than the runtime's own
---@field refs integer registry references pinned by pending work
---@field requests integer pending libuv requests
---@field owned_handles integer handles owned by Lua objects still open or closing
---@field pooled_coroutines integer

---Internals for tests: `async._debug.counts()`.
async._debug = {}

---@return lasync.Counts
function async._debug.counts() end

---Fault injection for tests: the next task to start fails as if there were no memory for it.
function async._debug.starve_next_start() end

---Fault injection for tests: the next `async.spawn` raises "not enough memory", as at the cap.
function async._debug.fail_next_spawn() end

---Fault injection for tests: the next allocation that grows the Lua heap fails (and Lua's retry
---of it), so "not enough memory" is raised there, as at the cap.
function async._debug.fail_next_alloc() end

-- ---------------------------------------------------------------------------------------------
-- Synchronisation (docs/toolkit.md)

---What `acquire` returns: `local _ <close> = sem:acquire()` releases at the end of the scope.
---@class lasync.Permit
local Permit = {}

---Releases early (once; later calls do nothing).
function Permit:release() end

---`n` permits (an integer >= 0, default 1).
---@param n? integer
---@return lasync.Semaphore
function async.semaphore(n) end

---@class lasync.Semaphore
local Semaphore = {}

---Takes a permit, suspending while none is free (FIFO-fair, cancel-safe).
---@return lasync.Permit
function Semaphore:acquire() end

---A permit or `false`; never suspends.
---@return lasync.Permit|false
function Semaphore:try_acquire() end

---Gives a permit back.
function Semaphore:release() end

---Free permits.
---@return integer
function Semaphore:available() end

---Tasks in line.
---@return integer
function Semaphore:waiting() end

---One holder at a time, not re-entrant.
---@return lasync.Lock
function async.lock() end

---@class lasync.Lock
local Lock = {}

---@return lasync.Permit
function Lock:acquire() end

---@return lasync.Permit|false
function Lock:try_acquire() end

function Lock:release() end

---@return boolean
function Lock:locked() end

---@return integer
function Lock:waiting() end

---@return lasync.Event
function async.event() end

---@class lasync.Event
local Event = {}

---Suspends until the event is set; returns at once if it is.
---@return true
function Event:wait() end

---Wakes every waiter (callable from anywhere).
function Event:set() end

function Event:clear() end

---@return boolean
function Event:is_set() end

---A FIFO queue of at most `maxsize` items (`nil` or 0: unbounded).
---@param maxsize? integer
---@return lasync.Queue
function async.queue(maxsize) end

---@class lasync.Queue
local Queue = {}

---Suspends while the queue is full; raises kind `"queue_closed"` once closed.
---@param v any not nil
function Queue:put(v) end

---Suspends while the queue is empty; `nil` once closed and drained.
---@return any
function Queue:get() end

---Raises kind `"queue_full"` when full.
---@param v any not nil
function Queue:put_nowait(v) end

---Raises kind `"queue_empty"` when empty.
---@return any
function Queue:get_nowait() end

---Refuses new items; getters drain what is left, then get `nil`.
function Queue:close() end

---`for item in q:items() do ... end` until closed and drained.
---@return fun(): any
function Queue:items() end

---@return integer
function Queue:size() end

---@return boolean
function Queue:empty() end

---@return boolean
function Queue:full() end

---@return boolean
function Queue:is_closed() end

-- ---------------------------------------------------------------------------------------------
-- Task scopes

---Runs `body(s, ...)` in the calling task; returns its values once the body and every child
---have finished. A child's failure cancels the rest and is raised.
---@param body fun(s: lasync.Scope, ...): ...
---@param ... any
---@return any ...
function async.scope(body, ...) end

---@class lasync.Scope
---@field errors any[] every error raised in the scope, in order
local Scope = {}

---Starts `fn(...)` as a child of the scope.
---@param fn function
---@param ... any
---@return lasync.Task
function Scope:spawn(fn, ...) end

---Ends the scope early, without an error.
function Scope:cancel() end

-- ---------------------------------------------------------------------------------------------
-- HTTP (docs/fetch.md)

---@class lasync.FetchRetry
---@field attempts? integer
---@field backoff? number
---@field max_delay? number
---@field jitter? boolean
---@field retry_if? fun(err_or_response: lasync.Error|lasync.Response, attempt: integer): boolean

---@class lasync.FetchOptions
---@field method? string default `"GET"`
---@field headers? table<string, string|number>
---@field body? string|fun(): string? a string, or a function returning chunks then nil
---@field json? table encoded with lua-cjson
---@field query? table<string, string|number|(string|number)[]>
---@field timeout? number whole transfer, seconds (default 30; 0: none)
---@field connect_timeout? number seconds (default 10)
---@field low_speed_limit? integer bytes/s
---@field low_speed_time? number seconds (curl counts whole seconds: a fraction is rounded up)
---@field follow_redirects? boolean default true
---@field max_redirects? number a whole number, default 10; math.huge: no limit
---@field max_body? number bytes of decoded body (default 64 MiB); math.huge: no limit; 0: no body
---@field verify_tls? boolean default true
---@field ca_file? string PEM file of trusted CAs
---@field proxy? string
---@field http_version? "1.1"|"2"
---@field decompress? boolean default true
---@field user_agent? string
---@field stream? boolean return at the headers; read the body with `res:read()`
---@field stream_buffer? number bytes unread past which a stream pauses (1 MiB); math.huge: never
---@field retry? lasync.FetchRetry

---Fetches `url`; returns the Response (an HTTP error status is a Response with `ok == false`),
---raises an Error for a transport failure.
---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function async.fetch(url, opts) end

---@class lasync.Timings
---@field dns number
---@field connect number
---@field tls number
---@field first_byte number
---@field total number

---@class lasync.Response
---@field status integer
---@field ok boolean 200-299
---@field url string after redirects
---@field body? string nil when streamed
---@field http_version string
---@field redirects integer
---@field headers table<string, string> lower-case names, looked up ignoring case
---@field headers_list {[1]: string, [2]: string, name: string, value: string}[]
---@field timings lasync.Timings
---@field buffered integer bytes of a stream received and not read yet
local Response = {}

---The body.
---@return string
function Response:text() end

---The body decoded as JSON (integer literals as Lua integers); raises kind `"json"` when invalid.
---@return any
function Response:json() end

---Every value of a header, in the order received.
---@param name string
---@return string[]
function Response:header_values(name) end

---The next chunk of a streamed body, or nil at its end.
---@return string?
function Response:read() end

---`for chunk in res:chunks() do ... end`
---@return fun(): string?
function Response:chunks() end

---Aborts a streamed transfer that still runs; idempotent; also `__close`.
function Response:close() end

---@class lasync.ClientOptions: lasync.FetchOptions
---@field base_url? string prefixed to relative URLs
---@field max_connections? integer at most this many of the client's transfers at once
---@field max_per_host? integer at most this many to one scheme://host:port at once

async.http = {}

---The Response metatable.
async.http.Response = Response

---A client with its own defaults and limits.
---@param opts? lasync.ClientOptions
---@return lasync.Client
function async.http.client(opts) end

---@class lasync.ServeOptions
---@field host? string IP address to listen on (default "127.0.0.1")
---@field port? integer 0 (the default) picks a free one
---@field backlog? integer
---@field max_connections? integer accepting pauses beyond it
---@field max_header_bytes? integer default 16384 (beyond: 431)
---@field max_headers? integer default 100 (beyond: 431)
---@field max_body? integer default 1 MiB (beyond: 413, before reading it)
---@field header_timeout? number seconds from the connection's start to a complete head (408)
---@field keepalive_timeout? number seconds an idle keep-alive connection is kept (default 5)
---@field request_timeout? number seconds a handler may run (default 30; then 503)
---@field cancel_on_disconnect? boolean default true
---@field on_error? fun(err: any, req: lasync.http.Request) instead of the report on stderr
---@field log? boolean|fun(line: string) an access log line per request: to stderr (batched), or to the function

---Serves HTTP/1.1 on TCP: each request runs `handler(req, res)` (or the router) in a task.
---@param handler fun(req: lasync.http.Request, res: lasync.http.Response): any|lasync.http.Router
---@param opts? lasync.ServeOptions
---@return lasync.http.Server
function async.http.serve(handler, opts) end

---A router: `app:get("/items/{id}", fn)`; unknown paths are 404, wrong methods 405 with Allow.
---@return lasync.http.Router
function async.http.router() end

---Decodes "a=1&b=2&a=3" into {a = {"1", "3"}, b = "2"}.
---@param s string
---@return table
function async.http.decode_form(s) end

---Closes every open server gracefully (what the host does on SIGINT and SIGTERM).
---@param grace? number
---@return lasync.Task[]
function async.http.close_servers(grace) end

---@class lasync.http.Server
---@field port integer
---@field host string
local HttpServer = {}

---Stops accepting, closes idle connections, sends Connection: close on in-flight responses,
---waits up to `grace` seconds for them, then cancels the handlers still running.
---@param opts? {grace?: number}
function HttpServer:close(opts) end

---@class lasync.http.Router
local Router = {}
---@param method string
---@param pattern string
---@param handler function
---@param opts? {cancel_on_disconnect?: boolean}
---@return lasync.http.Router
function Router:route(method, pattern, handler, opts) end
---@return lasync.http.Router
function Router:get(pattern, handler, opts) end
---@return lasync.http.Router
function Router:post(pattern, handler, opts) end
---@return lasync.http.Router
function Router:put(pattern, handler, opts) end
---@return lasync.http.Router
function Router:delete(pattern, handler, opts) end
---@return lasync.http.Router
function Router:patch(pattern, handler, opts) end
---@return lasync.http.Router
function Router:options(pattern, handler, opts) end
---Serves GET and HEAD of `prefix/<path>` from `dir/<path>` (Content-Type by extension,
---Last-Modified, 304 on If-Modified-Since); a path escaping `dir` is 404.
---@param prefix string
---@param dir string
---@return lasync.http.Router
function Router:static(prefix, dir) end

---@class lasync.http.Request
---@field method string
---@field path string decoded
---@field target string as sent
---@field query table decoded; repeated keys as arrays
---@field query_string? string
---@field params table from {name} segments
---@field headers table case-insensitive; repeated headers joined with ", "
---@field headers_list {[1]: string, [2]: string}[] in order, with repeats
---@field remote? lasync.Address
---@field http_version string
local Request = {}
---@return string
function Request:body() end
---@return any
function Request:json() end
---@return string?
function Request:read() end
---@return fun(): string?
function Request:chunks() end
---@return table
function Request:form() end
---@param name string
---@return string?
function Request:header(name) end

---@class lasync.http.Response
local HttpResponse = {}
---@param code integer
---@return lasync.http.Response
function HttpResponse:status(code) end
---@param name string
---@param value string
---@return lasync.http.Response
function HttpResponse:header(name, value) end
---Sends the headers (chunked) on the first call, then the pieces; suspends under backpressure.
function HttpResponse:write(...) end
---@param body? string
function HttpResponse:finish(body) end

---@class lasync.Client
local Client = {}

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:fetch(url, opts) end

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:get(url, opts) end

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:post(url, opts) end

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:put(url, opts) end

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:patch(url, opts) end

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:delete(url, opts) end

---@param url string
---@param opts? lasync.FetchOptions
---@return lasync.Response
function Client:head(url, opts) end

-- ---------------------------------------------------------------------------------------------
-- Files (docs/fs.md)

---Files and paths without blocking the loop. Failures raise errors of kind `fs` with `code`
---(`"ENOENT"`), `errno`, `syscall`, `path` and, for two-path calls, `dest`.
async.fs = {}

---@class lasync.fs.Stat
---@field type "file"|"directory"|"link"|"fifo"|"socket"|"char"|"block"|"unknown"
---@field size integer
---@field mode integer permission bits (`tonumber("644", 8)`)
---@field uid integer
---@field gid integer
---@field nlink integer
---@field ino integer
---@field dev integer
---@field blocks integer
---@field atime number seconds, with fractions
---@field mtime number
---@field ctime number
---@field birthtime number

---@class lasync.fs.ReadOptions
---@field max_size? integer fail with kind `too_large` for a larger file

---@class lasync.fs.WriteOptions
---@field mode? string|integer permissions as octal digits, `"644"`
---@field atomic? boolean write a temporary file, fsync it, rename it over the path
---@field exclusive? boolean fail with `EEXIST` if the file exists

---The whole file; reads procfs files (stat size 0) to their end.
---@param path string
---@param opts? lasync.fs.ReadOptions
---@return string
function async.fs.read_file(path, opts) end

---@param path string
---@param data string
---@param opts? lasync.fs.WriteOptions
function async.fs.write_file(path, data, opts) end

---@param path string
---@param data string
---@param opts? {mode?: string|integer}
function async.fs.append_file(path, data, opts) end

---`for line in async.fs.lines(path) do ... end`: LF or CRLF; a line over `max_line` bytes
---(16 MiB by default) fails with kind `too_large`. The file is closed when the loop ends.
---@param path string
---@param opts? {max_line?: integer}
---@return fun(): string?
function async.fs.lines(path, opts) end

---Opens a file with the modes of `io.open` (`r w a`, `+`, `b`) plus `x`: exclusive creation.
---@param path string
---@param mode? string
---@param perm? string|integer permissions of a created file, `"644"`
---@return lasync.File
function async.fs.open(path, mode, perm) end

---@param path string
---@return lasync.fs.Stat
function async.fs.stat(path) end

---Like `stat`, of a symbolic link itself.
---@param path string
---@return lasync.fs.Stat
function async.fs.lstat(path) end

---@param path string
---@return boolean
function async.fs.exists(path) end

---@param path string
---@param opts? {parents?: boolean, mode?: string|integer}
function async.fs.mkdir(path, opts) end

---@param path string
---@return {name: string, type: string}[]
function async.fs.readdir(path) end

---`for name, type in async.fs.dir(path) do ... end`
---@param path string
---@return fun(): string?, string?
function async.fs.dir(path) end

---@param from string
---@param to string
function async.fs.rename(from, to) end

---Removes a file or an empty directory.
---@param path string
function async.fs.remove(path) end

---Removes a file, or a directory tree with `recursive = true`; never follows symbolic links,
---refuses `/`; `force = true` ignores a missing path.
---@param path string
---@param opts? {recursive?: boolean, force?: boolean}
function async.fs.rm(path, opts) end

---@param from string
---@param to string
---@param opts? {exclusive?: boolean}
function async.fs.copyfile(from, to, opts) end

---@param path string
---@return string
function async.fs.realpath(path) end

---@param path string
---@return string
function async.fs.readlink(path) end

---Makes `path` a symbolic link to `target`.
---@param target string
---@param path string
function async.fs.symlink(target, path) end

---@param path string
---@param mode string|integer octal digits, `"640"`
function async.fs.chmod(path, mode) end

---Sets the access and modification times (seconds; now by default).
---@param path string
---@param atime? number
---@param mtime? number
function async.fs.utime(path, atime, mtime) end

---Makes a new directory named `prefix` plus six random characters; returns its path.
---@param prefix string
---@return string
function async.fs.mkdtemp(prefix) end

---Change events under a path: `for ev in async.fs.watch(dir) do ... end`, each
---`{name = "file", change = "change"|"rename"}`; the watcher is also the loop's closing value.
---@param path string
---@return lasync.fs.Watcher
function async.fs.watch(path) end

---An open file (`async.fs.open`).
---@class lasync.File
---@field path string
local File = {}

---Reads a count of bytes, `"a"` (the rest), `"l"` (a line) or `"L"` (a line with its newline);
---nil at the end of the file (`"a"` gives `""`).
---@param ... integer|"a"|"l"|"L"
---@return string? ...
function File:read(...) end

---@param fmt? "l"|"L"|integer
---@return fun(): string?
function File:lines(fmt) end

---Writes strings or numbers in full; returns the file.
---@param ... string|number
---@return lasync.File
function File:write(...) end

---@param whence? "set"|"cur"|"end"
---@param offset? integer
---@return integer position
function File:seek(whence, offset) end

function File:sync() end

---@return lasync.fs.Stat
function File:stat() end

---@param size? integer the current position by default
function File:truncate(size) end

---Waits for the file's pending operations, then closes it; closing twice does nothing.
function File:close() end

---@return boolean
function File:is_open() end

---A pending libuv request (internal: bindings/io/req.c), seen only in the registry.
---@class lasync.Request
local Request = {}

---The descriptor inside a File (internal: use the File's methods).
---@class lasync.fs.fd
local Fd = {}

---@class lasync.fs.Watcher
local Watcher = {}

---The next change event, waiting for it; nil once the watcher is closed.
---@return {name: string, change: "change"|"rename"|"overflow", dropped?: integer}?
function Watcher:next() end

function Watcher:close() end

-- ---------------------------------------------------------------------------------------------
-- Processes (docs/process.md)

---Child processes, each in its own process group.
async.process = {}

---Signal numbers by name: `async.process.signals.SIGTERM`.
---@type table<string, integer>
async.process.signals = {}
-- (Linux numbers shown; the table holds the platform's own.)
async.process.signals.SIGHUP = 1
async.process.signals.SIGINT = 2
async.process.signals.SIGQUIT = 3
async.process.signals.SIGKILL = 9
async.process.signals.SIGUSR1 = 10
async.process.signals.SIGUSR2 = 12
async.process.signals.SIGPIPE = 13
async.process.signals.SIGALRM = 14
async.process.signals.SIGTERM = 15
async.process.signals.SIGCONT = 18
async.process.signals.SIGSTOP = 19
async.process.signals.SIGTSTP = 20
async.process.signals.SIGWINCH = 28

---@class lasync.process.RunOptions
---@field cwd? string
---@field env? table<string, string|number|false> merged into the environment (false removes)
---@field clear_env? boolean start from an empty environment instead
---@field stdin? string|string[]|fun(): string?|"null"|"inherit" "null" by default
---@field stdout? "capture"|"inherit"|"null"|fun(chunk: string) "capture" by default
---@field stderr? "capture"|"inherit"|"null"|fun(chunk: string)
---@field timeout? number seconds; then SIGTERM to the group, SIGKILL after kill_grace
---@field kill_grace? number seconds, 5 by default
---@field max_output? integer bytes of stdout and stderr together (64 MiB); beyond: too_large
---@field check? boolean raise an error of kind `exit` unless the command succeeded

---@class lasync.process.Result
---@field code integer
---@field signal? integer
---@field ok boolean
---@field timed_out boolean
---@field pid integer
---@field stdout? string
---@field stderr? string

---Runs argv (no shell) to its end and the end of its output.
---@param argv string[]
---@param opts? lasync.process.RunOptions
---@return lasync.process.Result
function async.process.run(argv, opts) end

---`run({"/bin/sh", "-c", command}, opts)`.
---@param command string
---@param opts? lasync.process.RunOptions
---@return lasync.process.Result
function async.process.shell(command, opts) end

---@class lasync.process.SpawnOptions
---@field cwd? string
---@field env? table<string, string|number|false>
---@field clear_env? boolean
---@field stdin? "pipe"|"inherit"|"null" "inherit" by default
---@field stdout? "pipe"|"inherit"|"null"
---@field stderr? "pipe"|"inherit"|"null"

---Starts argv; its pipes, when asked for, are byte streams.
---@param argv string[]
---@param opts? lasync.process.SpawnOptions
---@return lasync.Process
function async.process.spawn(argv, opts) end

---A child process (`async.process.spawn`).
---@class lasync.Process
---@field pid integer
---@field stdin? lasync.Stream
---@field stdout? lasync.Stream
---@field stderr? lasync.Stream
local Process = {}

---Waits for the exit: `{code, signal, ok}`.
---@return {code: integer, signal?: integer, ok: boolean}
function Process:wait() end

---`{code, signal, ok}`, or nil while the child runs.
---@return {code: integer, signal?: integer, ok: boolean}?
function Process:status() end

---Signals the child's group (SIGTERM by default); false once it has exited.
---@param signal? string|integer
---@return boolean
function Process:kill(signal) end

---Kills a running child and its group, reaps it, closes the pipes.
function Process:close() end
-- TCP (async.net) and byte streams

async.net = {}

---The addresses a host name resolves to (`{"127.0.0.1", "::1", ...}`); raises kind `"dns"`.
---@param name string
---@return string[]
function async.net.resolve(name) end

---@class lasync.ConnectOptions
---@field timeout? number seconds for the whole connect, every address tried (default 30)

---Connects to `host` port `port`, trying each address in turn under one deadline; raises kind
---`"dns"`, `"connect"` (with `code`, as `"ECONNREFUSED"`) or `"timeout"`. TCP_NODELAY is set.
---@param host string
---@param port integer
---@param opts? lasync.ConnectOptions
---@return lasync.Stream
function async.net.connect(host, port, opts) end

---@class lasync.ListenOptions
---@field host? string default `"127.0.0.1"`; a name is resolved (inside a task)
---@field port? integer default 0: any free port (read it from `srv.port`)
---@field backlog? integer default 511
---@field max_connections? integer at most this many handlers at once; accepting pauses beyond
---@field on_error? fun(err: any, conn: lasync.Stream) gets a handler's error instead of stderr

---Listens on TCP and runs `handler(conn)` in a task of its own for each connection; the
---connection is closed when the handler returns. A handler's error is reported, not raised.
---@param opts lasync.ListenOptions
---@param handler fun(conn: lasync.Stream)
---@return lasync.Server
function async.net.listen(opts, handler) end

---@class lasync.Address
---@field host string
---@field port integer

---@class lasync.Server
---@field host string the address it listens on
---@field port integer the port it listens on (the one chosen, for port 0)
local Server = {}

---@class lasync.ServerCloseOptions
---@field grace? number wait up to this many seconds for the handlers, then cancel the rest

---Stops accepting. With `grace` (inside a task), waits for the handlers up to that long, then
---cancels the rest and waits for their cleanup. Also `__close`.
---@param opts? lasync.ServerCloseOptions
function Server:close(opts) end

---@class lasync.StreamStats
---@field buffered integer bytes received and not read yet
---@field capacity integer bytes of the read buffer
---@field queued integer bytes written and waiting in libuv
---@field reading boolean whether the stream reads from the socket now (false: backpressure)
---@field read_max integer the bound past which reading pauses

---@class lasync.StreamLimits
---@field read_max? integer unread bytes past which reading pauses
---@field write_hwm? integer queued bytes past which `write` suspends
---@field max_line? integer longest line `read_line`/`lines` accept (kind `"line_too_long"`)

---A byte stream (a TCP connection). Reads and writes suspend the calling task; a failure
---raises kind `"closed"` (with `code`, as `"EOF"`, `"ECONNRESET"`). Closed by `close()`,
---`<close>` or collection; queued bytes are still sent.
---@class lasync.Stream
---@field remote? lasync.Address the peer (TCP)
---@field ["local"] lasync.Address? this end (TCP); `conn["local"]`, `local` being a keyword
local Stream = {}

---Up to `n` bytes (everything buffered if `n` is absent), or nil at the end.
---@param n? integer
---@return string?
function Stream:read(n) end

---Exactly `n` bytes; nil if the stream ends before the first of them; raises kind `"closed"`,
---code `"EOF"` (the bytes received in `err.partial`) if it ends midway.
---@param n integer
---@return string?
function Stream:read_exactly(n) end

---The next line without its LF or CRLF (the last may lack one), or nil at the end.
---@param max? integer
---@return string?
function Stream:read_line(max) end

---`for line in s:lines() do ... end`
---@param max? integer
---@return fun(): string?
function Stream:lines(max) end

---Writes each piece (a string, or an array of strings) in order, in one write; suspends while
---more than the high-water mark is queued.
---@param ... string|string[]
function Stream:write(...) end

---No more writes: waits until the queued bytes are sent and the peer reads the end. Reading
---goes on.
function Stream:shutdown() end

---Closes the stream (idempotent); waiting tasks get kind `"closed"`.
function Stream:close() end

---Whether it is closed.
---@return boolean
function Stream:closed() end

---@return lasync.StreamStats
function Stream:stats() end

---Sets this stream's bounds.
---@param limits lasync.StreamLimits
function Stream:set_limits(limits) end

---Reads into `buf` from its start: up to its capacity, at least one byte; returns how many, or
---nil at the end (the Buffer left as it was). No string is made: a bulk reader reuses one
---Buffer. Misuse, errors and cancellation as `read`; a cancelled call leaves `buf` untouched.
---@param buf lasync.Buffer
---@return integer?
function Stream:read_into(buf) end

-- ---------------------------------------------------------------------------------------------
-- Buffers

---A Buffer of `capacity` bytes (1 to 2^30), empty: the reusable memory `stream:read_into` fills.
---@param capacity integer
---@return lasync.Buffer
function async.buffer(capacity) end

---Fixed-capacity bytes; `#buf` is how many it holds (what the last `read_into` put there).
---@class lasync.Buffer
---@operator len: integer
local Buffer = {}

---The most it can hold.
---@return integer
function Buffer:capacity() end

---Its bytes `i` to `j` (string.sub's positions; all of them by default) as a string.
---@param i? integer
---@param j? integer
---@return string
function Buffer:tostring(i, j) end
-- Worker threads (docs/threads.md)

---Runs `fn(...)` on a worker thread of the default pool and returns its values; the calling task
---suspends meanwhile and other tasks run. `fn` is a Lua function whose only upvalue is `_ENV`,
---or a `"module.function"` / `"module:function"` name the worker resolves with `require`.
---Arguments and results are copied (docs/threads.md: nil, booleans, numbers, strings, tables,
---functions without upvalues); anything else is an error of kind `invalid` naming its path.
---A job's error is raised as an error of kind `thread` with `traceback` and `value`.
---@param fn function|string
---@param ... any
---@return any ...
function async.to_thread(fn, ...) end

---The same as `async.to_thread`, under asyncio's name.
---@param fn function|string
---@param ... any
---@return any ...
function async.run_in_executor(fn, ...) end

---@class lasync.ThreadPoolOptions
---@field size? integer threads at most (default: the CPUs available, or LASYNC_THREADS)
---@field max_queue? integer jobs waiting at most; `run` suspends while it is full (0: no limit)
---@field max_memory? integer MiB each worker's Lua state may hold (0: no cap)

---Thread pools. `async.thread.default` is the pool `async.to_thread` uses.
async.thread = {}

---A pool of its own, with its own threads, made lazily as jobs arrive.
---@param opts? lasync.ThreadPoolOptions
---@return lasync.ThreadPool
function async.thread.pool(opts) end

---@class lasync.ThreadPool
local ThreadPool = {}

---Runs `fn(...)` on one of the pool's threads and returns its values (see async.to_thread).
---@param fn function|string
---@param ... any
---@return any ...
function ThreadPool:run(fn, ...) end

---Runs `fn(item)` for each item on the pool; the first results in order, like async.map.
---@param fn function|string
---@param items any[]
---@return any[]
function ThreadPool:map(fn, items) end

---Fails the queued jobs (kind `closed`), waits for the running ones, joins the threads. In a
---task it suspends meanwhile. Also called by `<close>`.
function ThreadPool:close() end

---The number of threads the pool runs at most.
---@return integer
function ThreadPool:size() end

return async
