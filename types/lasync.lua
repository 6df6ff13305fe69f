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
---@field site string `file:line` that spawned it
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

---Exactly `n` bytes; raises kind `"closed"`, code `"EOF"` if the stream ends first.
---@param n integer
---@return string
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

return async
