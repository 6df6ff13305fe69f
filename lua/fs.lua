-- async.fs: files and paths without blocking the loop (docs/fs.md). The C half (bindings/io/fs.c)
-- makes one libuv request per call; this file composes them: Files with buffered lines, whole
-- files, atomic writes, parents, recursive removal.
local core, async = ...

local raw = core.fs
local fd = raw.fd
local concat, type, error, select, setmetatable = table.concat, type, error, select, setmetatable
local format, tostring, pcall = string.format, tostring, pcall
local find, sub = string.find, string.sub

local CHUNK = 65536        -- what lines and read("l") read ahead
local WHOLE_CHUNK = 1 << 20 -- what read("a") asks for at a time
local DEFAULT_MAX_LINE = 16 << 20

local fs = {}

-- The options each call knows: anything else is a misspelling, refused at the call.
local KNOWN = {
  ["async.fs.read_file"] = { max_size = true },
  ["async.fs.write_file"] = { mode = true, exclusive = true, atomic = true },
  ["async.fs.append_file"] = { mode = true },
  ["async.fs.lines"] = { max_line = true },
  ["async.fs.copyfile"] = { exclusive = true },
  ["async.fs.mkdir"] = { parents = true, mode = true },
  ["async.fs.rm"] = { force = true, recursive = true },
}

local function check_opts(fname, n, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    core._check.misuse(format("%s: bad argument #%d 'opts' (table expected, got %s)", fname, n,
      type(opts)))
  end
  opts = core._check.options(fname, n, opts, KNOWN[fname])
  -- checked here, so the error names this call's option and not the open it is passed to
  local mode = opts.mode
  if mode ~= nil and not (type(mode) == "string" and mode:match("^[0-7][0-7]?[0-7]?[0-7]?$")
      or math.type(mode) == "integer" and mode >= 0 and mode <= 4095) then
    local got = (type(mode) == "string" or math.type(mode)) and tostring(mode) or type(mode)
    core._check.misuse(format(
      "%s: bad option 'mode' (octal digits such as \"644\" expected, got %s)", fname, got))
  end
  return opts
end

local function too_long(fname, path, max)
  return core.error("too_large",
    format("%s: a line of '%s' is longer than max_line (%d bytes)", fname, path, max),
    { path = path, max_line = max })
end

-- Files ---------------------------------------------------------------------------------------

local File = { __name = "lasync.File" }
File.__index = File

local function wrap(handle, path, max_line)
  return setmetatable({ _fd = handle, _buf = "", _pos = 1, path = path,
    _max_line = max_line or DEFAULT_MAX_LINE }, File)
end

-- Bytes read ahead and not yet returned.
local function buffered(self) return #self._buf - self._pos + 1 end

local function take(self, n)
  local s = sub(self._buf, self._pos, self._pos + n - 1)
  self._pos = self._pos + #s
  if self._pos > #self._buf then self._buf, self._pos = "", 1 end
  return s
end

-- Before a write or a seek: the descriptor's offset goes back to what the caller has read.
local function drop_readahead(self)
  local n = buffered(self)
  if n > 0 then fd.seek(self._fd, "cur", -n) end
  self._buf, self._pos = "", 1
end

local function read_line(self, keep_nl)
  local parts, len = nil, 0
  while true do
    local buf, pos = self._buf, self._pos
    local nl = find(buf, "\n", pos, true)
    if nl then
      local piece = sub(buf, pos, nl)
      self._pos = nl + 1
      if self._pos > #buf then self._buf, self._pos = "", 1 end
      if len + #piece - 1 > self._max_line then
        error(too_long("file:read", self.path, self._max_line), 0)
      end
      local line = parts and (concat(parts) .. piece) or piece
      if keep_nl then return line end
      if sub(line, -2, -2) == "\r" then return sub(line, 1, -3) end
      return sub(line, 1, -2)
    end
    if pos <= #buf then
      parts = parts or {}
      parts[#parts + 1] = sub(buf, pos)
      len = len + #buf - pos + 1
      if len > self._max_line then error(too_long("file:read", self.path, self._max_line), 0) end
    end
    local chunk = fd.read(self._fd, CHUNK)
    if chunk == nil then
      self._buf, self._pos = "", 1
      if not parts then return nil end
      local line = concat(parts)
      if not keep_nl and sub(line, -1) == "\r" then line = sub(line, 1, -2) end
      return line
    end
    self._buf, self._pos = chunk, 1
  end
end

local function read_n(self, n)
  if n == 0 then return "" end
  local have = buffered(self)
  if have >= n then return take(self, n) end
  local parts, got = {}, 0
  if have > 0 then parts[1] = take(self, have); got = have end
  while got < n do
    local chunk = fd.read(self._fd, n - got)
    if chunk == nil then break end
    parts[#parts + 1] = chunk
    got = got + #chunk
  end
  if got == 0 then return nil end
  if #parts == 1 then return parts[1] end -- concat would copy the chunk twice more
  return concat(parts)
end

local function read_all(self)
  local parts = {}
  if buffered(self) > 0 then parts[1] = take(self, buffered(self)) end
  while true do
    local chunk = fd.read(self._fd, WHOLE_CHUNK)
    if chunk == nil then break end
    parts[#parts + 1] = chunk
  end
  if #parts == 1 then return parts[1] end
  return concat(parts)
end

local function read_one(self, fmt, n)
  if math.type(fmt) == "integer" then
    if fmt < 0 then
      core._check.misuse(format("file:read: bad argument #%d (non-negative count expected)", n))
    end
    return read_n(self, fmt)
  end
  if type(fmt) == "string" then
    local f = fmt:gsub("^%*", ""):sub(1, 1)
    if f == "a" then return read_all(self) end
    if f == "l" then return read_line(self, false) end
    if f == "L" then return read_line(self, true) end
  end
  core._check.misuse(format(
    "file:read: bad argument #%d 'format' (a count, \"a\", \"l\" or \"L\" expected, got %s)", n,
    tostring(fmt)))
end

--- file:read(fmt...): a count of bytes, "a" (the rest), "l" (a line), "L" (with its newline);
--- nil at end of file (read("a") then returns "").
function File:read(...)
  local n = select("#", ...)
  if n == 0 then return read_one(self, "l", 2) end
  if n == 1 then return read_one(self, (...), 2) end
  local out = {}
  for i = 1, n do
    out[i] = read_one(self, (select(i, ...)), i + 1)
    if out[i] == nil then return table.unpack(out, 1, i) end
  end
  return table.unpack(out, 1, n)
end

function File:lines(fmt)
  fmt = fmt or "l"
  return function() return self:read(fmt) end
end

--- file:write(...): strings or numbers, written in full (a short write is continued).
function File:write(...)
  local n = select("#", ...)
  local data
  if n == 1 and type((...)) == "string" then
    data = ...
  else
    local parts = { ... }
    for i = 1, n do
      local v = parts[i]
      if type(v) == "number" then
        parts[i] = tostring(v)
      elseif type(v) ~= "string" then
        core._check.misuse(format("file:write: bad argument #%d (string expected, got %s)", i + 1,
          type(v)))
      end
    end
    data = concat(parts, "", 1, n)
  end
  drop_readahead(self)
  local done = fd.write(self._fd, data)
  while done < #data do
    data = sub(data, done + 1)
    done = fd.write(self._fd, data)
  end
  return self
end

function File:seek(whence, offset)
  whence = whence or "cur"
  offset = offset or 0
  if whence == "cur" and math.type(offset) == "integer" then offset = offset - buffered(self) end
  self._buf, self._pos = "", 1
  return fd.seek(self._fd, whence, offset)
end

function File:sync() fd.sync(self._fd) end

function File:stat() return fd.stat(self._fd) end

--- file:truncate([size]): to size bytes, by default to the current position.
function File:truncate(size)
  if size == nil then size = self:seek("cur", 0) end
  drop_readahead(self)
  fd.truncate(self._fd, size)
end

--- file:close(): waits for the file's pending operations; closing twice does nothing.
function File:close()
  self._buf, self._pos = "", 1
  fd.close(self._fd)
end

function File:is_open() return raw.is_open(self._fd) end

File.__close = File.close
function File.__tostring(self) return tostring(self._fd) end
-- Every method checks its self here: f.read() says "call it with ':'".
core._check.methods(File, "file")

--- fs.open(path [, mode [, perm]]): the modes of io.open plus "x" (exclusive creation).
function fs.open(path, mode, perm)
  return wrap(raw.open(path, mode, perm), path)
end

-- Whole files -------------------------------------------------------------------------------

function fs.read_file(path, opts)
  opts = check_opts("async.fs.read_file", 2, opts)
  return raw.read_file(path, opts.max_size)
end

local function check_data(fname, data)
  if type(data) ~= "string" then
    core._check.misuse(format("%s: bad argument #2 'data' (string expected, got %s)", fname,
      type(data)))
  end
end

local tmp_seq = 0

-- Writes data to a new file next to path, synced, then renames it over path: a reader sees the
-- old content or the new, never half of it.
local function write_atomic(path, data, opts)
  local tmp, f
  repeat
    tmp_seq = tmp_seq + 1
    tmp = format("%s.tmp-%x-%d", path, math.random(0, 0x7fffffff), tmp_seq)
    local ok, err = pcall(raw.open, tmp, "wx", opts.mode)
    if ok then f = wrap(err, tmp) elseif err.code ~= "EEXIST" then error(err, 0) end
  until f
  local ok, err = pcall(function()
    local file <close> = f
    file:write(data)
    file:sync()
    file:close()
    if opts.exclusive and raw.exists(path) then
      raw.open(path, "wx") -- raises EEXIST, as the exclusive non-atomic write does
    end
    raw.rename(tmp, path)
  end)
  if not ok then
    async.shield(pcall, raw.unlink, tmp)
    error(err, 0)
  end
end

--- fs.write_file(path, data [, {mode = "644", atomic = bool, exclusive = bool}])
function fs.write_file(path, data, opts)
  check_data("async.fs.write_file", data)
  opts = check_opts("async.fs.write_file", 3, opts)
  if opts.atomic then return write_atomic(path, data, opts) end
  local f <close> = wrap(raw.open(path, opts.exclusive and "wx" or "w", opts.mode), path)
  f:write(data)
  f:close()
end

function fs.append_file(path, data, opts)
  check_data("async.fs.append_file", data)
  opts = check_opts("async.fs.append_file", 3, opts)
  local f <close> = wrap(raw.open(path, "a", opts.mode), path)
  f:write(data)
  f:close()
end

--- for line in fs.lines(path [, {max_line = bytes}]) do ... end: LF or CRLF, a last line
--- without a newline included; the file is closed at the end or when the loop is left.
function fs.lines(path, opts)
  opts = check_opts("async.fs.lines", 2, opts)
  local max = opts.max_line
  if max ~= nil and (math.type(max) ~= "integer" or max < 1) then
    error(format("async.fs.lines: bad option 'max_line' (positive integer expected, got %s)",
      tostring(max)), 2)
  end
  local f = wrap(raw.open(path, "r"), path, max)
  local function next_line()
    local line = read_line(f, false)
    if line == nil then f:close() end
    return line
  end
  return next_line, nil, nil, f
end

-- Paths --------------------------------------------------------------------------------------

fs.stat, fs.lstat, fs.exists = raw.stat, raw.lstat, raw.exists
fs.rename, fs.remove = raw.rename, raw.remove
fs.realpath, fs.readlink, fs.symlink = raw.realpath, raw.readlink, raw.symlink
fs.chmod, fs.utime, fs.mkdtemp = raw.chmod, raw.utime, raw.mkdtemp
fs.readdir, fs.watch = raw.readdir, raw.watch

function fs.copyfile(from, to, opts)
  opts = check_opts("async.fs.copyfile", 3, opts)
  return raw.copyfile(from, to, opts.exclusive)
end

local function mkdir_parents(path, mode)
  local ok, err = pcall(raw.mkdir, path, mode)
  if ok then return end
  if type(err) ~= "table" then error(err, 0) end
  if err.code == "EEXIST" then
    if raw.stat(path).type == "directory" then return end
    error(err, 0)
  end
  if err.code ~= "ENOENT" then error(err, 0) end
  local parent = path:match("^(.*[^/])/+[^/]+/*$")
  if not parent then error(err, 0) end
  mkdir_parents(parent, mode)
  ok, err = pcall(raw.mkdir, path, mode)
  if not ok and not (type(err) == "table" and err.code == "EEXIST") then error(err, 0) end
end

--- fs.mkdir(path [, {parents = bool, mode = "755"}])
function fs.mkdir(path, opts)
  opts = check_opts("async.fs.mkdir", 2, opts)
  if opts.parents then
    if type(path) ~= "string" then return raw.mkdir(path) end -- its misuse message
    return mkdir_parents(path, opts.mode)
  end
  return raw.mkdir(path, opts.mode)
end

--- for name, type in fs.dir(path) do ... end
function fs.dir(path)
  local list = raw.readdir(path)
  local i = 0
  return function()
    i = i + 1
    local e = list[i]
    if e then return e.name, e.type end
  end
end

local function refuse(path, code, why)
  error(core.error("fs", format("%s: %s, rm '%s'", code, why, path),
    { code = code, syscall = "rm", path = path }), 0)
end

local function rm_tree(path)
  for _, e in ipairs(raw.readdir(path)) do
    local child = path .. "/" .. e.name
    local kind = e.type
    if kind == "unknown" then kind = raw.lstat(child).type end
    if kind == "directory" then rm_tree(child) else raw.unlink(child) end
  end
  raw.rmdir(path)
end

--- fs.rm(path [, {recursive = bool, force = bool}]): a directory needs recursive; symlinks are
--- removed, never followed; "/" is refused. force: a missing path is not an error.
function fs.rm(path, opts)
  opts = check_opts("async.fs.rm", 2, opts)
  local ok, st = pcall(raw.lstat, path)
  if not ok then
    if opts.force and type(st) == "table" and st.code == "ENOENT" then return end
    error(st, 0)
  end
  if st.type ~= "directory" then return raw.unlink(path) end
  if path:match("^/+$") or raw.realpath(path) == "/" then
    refuse(path, "EPERM", "refusing to remove the root directory")
  end
  if not opts.recursive then
    refuse(path, "EISDIR", "is a directory (recursive = true removes it)")
  end
  rm_tree(path)
end

async.fs = fs
