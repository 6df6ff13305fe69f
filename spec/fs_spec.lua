package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local raises = require "raises"
local sub = require "subprocess"

local fs = async.fs

-- The descriptors this process holds: a leak shows up here whatever the counts say.
local function open_fds()
  return #fs.readdir("/proc/self/fd")
end

local function rss_kb()
  return tonumber(fs.read_file("/proc/self/status"):match("VmRSS:%s*(%d+)"))
end

local function wait_until(pred, seconds)
  local deadline = async.now() + (seconds or 5)
  while not pred() do
    assert(async.now() < deadline, "timed out waiting")
    async.sleep(0.005)
  end
end

describe("async.fs", function()
  local dir
  before_each(function() dir = fs.mkdtemp("/tmp/lasync-fs-") end)
  after_each(function()
    fs.rm(dir, { recursive = true, force = true })
    assert_clean()
  end)

  describe("whole files", function()
    it("write_file then read_file round-trips bytes, NUL and high bytes included", function()
      local data = "a\0b\255\n" .. ("x"):rep(100000)
      fs.write_file(dir .. "/f", data)
      assert.are.equal(data, fs.read_file(dir .. "/f"))
      fs.write_file(dir .. "/f", "short")
      assert.are.equal("short", fs.read_file(dir .. "/f")) -- truncated, not overwritten in place
    end)

    it("write_file takes mode as octal digits, and exclusive refuses an existing file", function()
      fs.write_file(dir .. "/m", "x", { mode = "600" })
      assert.are.equal(tonumber("600", 8), fs.stat(dir .. "/m").mode)
      local err = raises(fs.write_file, dir .. "/m", "y", { exclusive = true })
      assert.are.equal("fs", err.kind)
      assert.are.equal("EEXIST", err.code)
      assert.are.equal("x", fs.read_file(dir .. "/m"))
    end)

    it("write_file atomic replaces the file whole and leaves no temporary file", function()
      fs.write_file(dir .. "/a", "old")
      fs.write_file(dir .. "/a", "new content", { atomic = true, mode = "640" })
      assert.are.equal("new content", fs.read_file(dir .. "/a"))
      assert.are.equal(tonumber("640", 8), fs.stat(dir .. "/a").mode)
      assert.are.equal(1, #fs.readdir(dir))
      local err = raises(fs.write_file, dir .. "/a", "z", { atomic = true, exclusive = true })
      assert.are.equal("EEXIST", err.code)
      assert.are.equal("new content", fs.read_file(dir .. "/a"))
      assert.are.equal(1, #fs.readdir(dir))
      err = raises(fs.write_file, dir .. "/no/such/a", "z", { atomic = true })
      assert.are.equal("ENOENT", err.code)
    end)

    it("append_file appends", function()
      fs.append_file(dir .. "/log", "one\n")
      fs.append_file(dir .. "/log", "two\n")
      assert.are.equal("one\ntwo\n", fs.read_file(dir .. "/log"))
    end)

    it("read_file reads a procfs file whose stat size is 0 to its end", function()
      assert.are.equal(0, fs.stat("/proc/self/status").size)
      local text = fs.read_file("/proc/self/status")
      assert.truthy(text:match("\nVmRSS:"))
      assert.truthy(#fs.read_file("/proc/self/maps") > 0)
    end)

    it("read_file with max_size fails with kind too_large before reading a huge file", function()
      local f <close> = fs.open(dir .. "/huge", "w")
      f:truncate(8 << 30) -- sparse: 8 GiB that would not fit in memory
      local t0 = async.now()
      local err = raises(fs.read_file, dir .. "/huge", { max_size = 1 << 20 })
      assert.are.equal("too_large", err.kind)
      assert.are.equal(1 << 20, err.max_size)
      assert.truthy(async.now() - t0 < 1)
      fs.write_file(dir .. "/small", "12345")
      assert.are.equal("12345", fs.read_file(dir .. "/small", { max_size = 5 }))
      assert.are.equal("too_large", raises(fs.read_file, dir .. "/small", { max_size = 4 }).kind)
    end)

    it("failures are error objects of kind fs with code, errno, syscall and path", function()
      local err = raises(fs.read_file, dir .. "/x.txt")
      assert.are.equal("fs", err.kind)
      assert.are.equal("ENOENT", err.code)
      assert.are.equal(2, err.errno)
      assert.are.equal("open", err.syscall)
      assert.are.equal(dir .. "/x.txt", err.path)
      assert.are.equal("fs: ENOENT: no such file or directory, open '" .. dir .. "/x.txt'",
        tostring(err))
      err = raises(fs.rename, dir .. "/a", dir .. "/b")
      assert.are.equal("rename", err.syscall)
      assert.are.equal(dir .. "/b", err.dest)
      assert.are.equal("fs: ENOENT: no such file or directory, rename '" .. dir .. "/a' -> '" ..
        dir .. "/b'", tostring(err))
      assert.are.equal("EISDIR", raises(fs.read_file, dir).code)
    end)
  end)

  describe("lines", function()
    it("splits LF and CRLF and keeps a last line without a newline", function()
      fs.write_file(dir .. "/l", "one\ntwo\r\n\nthree")
      local got = {}
      for line in fs.lines(dir .. "/l") do got[#got + 1] = line end
      assert.are.same({ "one", "two", "", "three" }, got)
      fs.write_file(dir .. "/e", "")
      for _ in fs.lines(dir .. "/e") do error("no line expected") end
    end)

    it("joins lines across read-ahead chunk boundaries", function()
      local want, parts = {}, {}
      for i = 1, 300 do
        want[i] = ("%d:"):format(i) .. ("y"):rep((i * 7919) % 150000)
        parts[i] = want[i] .. (i % 3 == 0 and "\r\n" or "\n")
      end
      fs.write_file(dir .. "/big", table.concat(parts))
      local i = 0
      for line in fs.lines(dir .. "/big") do
        i = i + 1
        assert.are.equal(want[i], line)
      end
      assert.are.equal(300, i)
    end)

    it("fails with kind too_large for a line over max_line", function()
      fs.write_file(dir .. "/long", "ok\n" .. ("z"):rep(200000) .. "\nafter\n")
      local lines = {}
      local ok, err = pcall(function()
        for line in fs.lines(dir .. "/long", { max_line = 100000 }) do lines[#lines + 1] = line end
      end)
      assert.is_false(ok)
      assert.are.equal("too_large", err.kind)
      assert.are.same({ "ok" }, lines)
    end)

    it("closes the file when the loop is left early", function()
      fs.write_file(dir .. "/l", "a\nb\nc\n")
      local before = open_fds()
      for line in fs.lines(dir .. "/l") do if line == "a" then break end end
      assert.are.equal(before, open_fds())
    end)
  end)

  describe("open", function()
    it("reads counts, lines and the rest, nil at end of file", function()
      fs.write_file(dir .. "/r", "hello\nworld\nend")
      local f <close> = fs.open(dir .. "/r")
      assert.are.equal("hel", f:read(3))
      assert.are.equal("lo", f:read("l"))
      assert.are.equal("world\n", f:read("L"))
      assert.are.equal("end", f:read("a"))
      assert.is_nil(f:read(1))
      assert.is_nil(f:read("l"))
      assert.are.equal("", f:read("a"))
      f:seek("set", 6)
      local a, b = f:read(5, 1)
      assert.are.equal("world", a)
      assert.are.equal("\n", b)
      local lines = {}
      f:seek("set")
      for l in f:lines() do lines[#lines + 1] = l end
      assert.are.same({ "hello", "world", "end" }, lines)
    end)

    it("writes, seeks, truncates, syncs and stats", function()
      local f <close> = fs.open(dir .. "/w", "w+")
      assert.are.equal(f, f:write("abc", 12, "def"))
      assert.are.equal(8, f:seek("cur"))
      assert.are.equal(0, f:seek("set", 0))
      assert.are.equal("ab", f:read(2))
      f:write("X") -- after buffered read-ahead, writes land where the reader is
      assert.are.equal(3, f:seek())
      f:sync()
      assert.are.equal(8, f:stat().size)
      assert.are.equal("file", f:stat().type)
      f:truncate(4)
      assert.are.equal(4, f:seek("end"))
      f:close()
      assert.are.equal("abX1", fs.read_file(dir .. "/w"))
    end)

    it("supports io.open's modes plus x (exclusive)", function()
      fs.write_file(dir .. "/m", "123")
      local f = fs.open(dir .. "/m", "a")
      f:write("4")
      f:close()
      assert.are.equal("1234", fs.read_file(dir .. "/m"))
      f = fs.open(dir .. "/m", "r+b")
      f:write("X")
      f:close()
      assert.are.equal("X234", fs.read_file(dir .. "/m"))
      assert.are.equal("EEXIST", raises(fs.open, dir .. "/m", "x").code)
      f = fs.open(dir .. "/new", "wx", "600")
      f:close()
      assert.are.equal(tonumber("600", 8), fs.stat(dir .. "/new").mode)
      f = fs.open(dir .. "/m", "r")
      local err = raises(f.write, f, "no")
      assert.are.equal("EBADF", err.code)
      f:close()
      assert.truthy(raises(fs.open, dir .. "/m", "rw"):match("invalid mode 'rw'"))
    end)

    it("reads from several tasks at once on one File get distinct bytes", function()
      local parts = {}
      for i = 1, 64 do parts[i] = ("%04d"):format(i):rep(256) end -- 1 KiB each
      fs.write_file(dir .. "/shared", table.concat(parts))
      local f <close> = fs.open(dir .. "/shared")
      local got = {}
      local readers = {}
      for r = 1, 4 do
        readers[r] = async.spawn(function()
          while true do
            local s = f:read(1024)
            if not s then return end
            got[#got + 1] = s
          end
        end)
      end
      async.gather(table.unpack(readers))
      table.sort(got)
      assert.are.same(parts, got)
    end)

    it("closing twice is harmless; using a closed file raises kind closed", function()
      fs.write_file(dir .. "/c", "x")
      local f = fs.open(dir .. "/c")
      f:close()
      f:close()
      assert.is_false(f:is_open())
      local err = raises(f.read, f, 1)
      assert.are.equal("closed", err.kind)
      assert.truthy(err.message:match("/c' is closed"))
    end)

    it("<close> closes the file", function()
      fs.write_file(dir .. "/c", "x")
      local before, f = open_fds(), nil
      do
        local g <close> = fs.open(dir .. "/c")
        f = g
        assert.are.equal(before + 1, open_fds())
      end
      assert.is_false(f:is_open())
      assert.are.equal(before, open_fds())
    end)

    it("a forgotten File is closed when collected", function()
      fs.write_file(dir .. "/g", "x")
      local before = open_fds()
      for _ = 1, 20 do fs.open(dir .. "/g") end
      assert.are.equal(before + 20, open_fds())
      collectgarbage()
      collectgarbage()
      assert.are.equal(before, open_fds())
    end)

    it("says so in debug mode when it collects an open File", function()
      if not sub.LASYNC then pending("needs the lasync executable") return end
      local path = dir .. "/d"
      fs.write_file(path, "x")
      local _, err, code = sub.run("--debug -e " .. sub.q(
        "local a = require 'lasync'; a.fs.open('" .. path .. "'); collectgarbage(); collectgarbage()"))
      assert.are.equal(0, code)
      assert.truthy(err:find("File of '" .. path .. "' was collected while open", 1, true), err)
    end)

    it("a 200 MB file goes through read and write with flat memory", function()
      local chunk = ("0123456789abcdef"):rep(65536) -- 1 MiB
      local f <close> = fs.open(dir .. "/src", "w")
      for _ = 1, 200 do f:write(chunk) end
      f:close()
      collectgarbage()
      local base, heap_base = rss_kb(), collectgarbage("count")
      local peak, heap_peak = base, heap_base
      local src <close> = fs.open(dir .. "/src")
      local dst <close> = fs.open(dir .. "/dst", "w")
      local n = 0
      while true do
        local s = src:read(1 << 20)
        if not s then break end
        dst:write(s)
        n = n + #s
        if n % (16 << 20) == 0 then
          peak = math.max(peak, rss_kb())
          heap_peak = math.max(heap_peak, collectgarbage("count"))
        end
      end
      src:close()
      dst:close()
      assert.are.equal(200 << 20, n)
      assert.are.equal(200 << 20, fs.stat(dir .. "/dst").size)
      -- Garbage waits for the collector's pause (the heap may grow to twice what it held when
      -- a cycle ended), so the bound scales with what the heap held before; it must stay far
      -- below the 200 MB that went through, and nothing may be retained after a collection.
      local slack = 2 * heap_base
      assert.is_true(heap_peak - heap_base < 64 * 1024 + slack,
        ("the Lua heap grew by %.0f KiB from %.0f KiB"):format(heap_peak - heap_base, heap_base))
      collectgarbage()
      local kept = collectgarbage("count") - heap_base
      assert.is_true(kept < 4 * 1024, ("%.0f KiB kept after a collection"):format(kept))
      -- AddressSanitizer keeps freed memory in quarantine (256 MB), so RSS says nothing there.
      if not require("spec.support.sanitized") then
        assert.is_true(peak - base < 80 * 1024 + slack, ("RSS grew by %d KiB"):format(peak - base))
      end
    end)
  end)

  describe("paths", function()
    it("stat and lstat give the type, size, mode and times as float seconds", function()
      fs.write_file(dir .. "/f", "12345")
      fs.symlink(dir .. "/f", dir .. "/l")
      local st = fs.stat(dir .. "/f")
      assert.are.equal("file", st.type)
      assert.are.equal(5, st.size)
      assert.are.equal("number", type(st.mtime))
      assert.is_true(math.abs(st.mtime - os.time()) < 60)
      assert.are.equal("file", fs.stat(dir .. "/l").type)
      assert.are.equal("link", fs.lstat(dir .. "/l").type)
      assert.are.equal("directory", fs.stat(dir).type)
      assert.are.equal("char", fs.stat("/dev/null").type)
      os.execute("mkfifo " .. dir .. "/p")
      assert.are.equal("fifo", fs.stat(dir .. "/p").type)
      assert.are.equal("ENOENT", raises(fs.stat, dir .. "/none").code)
    end)

    it("exists is true or false, and raises on other failures", function()
      fs.write_file(dir .. "/f", "")
      assert.is_true(fs.exists(dir .. "/f"))
      assert.is_false(fs.exists(dir .. "/none"))
      assert.is_false(fs.exists(dir .. "/f/under-a-file"))
    end)

    it("mkdir makes one directory, or all its parents, with a mode", function()
      fs.mkdir(dir .. "/one", { mode = "700" })
      assert.are.equal(tonumber("700", 8), fs.stat(dir .. "/one").mode)
      assert.are.equal("ENOENT", raises(fs.mkdir, dir .. "/a/b/c").code)
      fs.mkdir(dir .. "/a/b/c", { parents = true })
      assert.are.equal("directory", fs.stat(dir .. "/a/b/c").type)
      fs.mkdir(dir .. "/a/b/c", { parents = true }) -- already there: fine, as mkdir -p
      assert.are.equal("EEXIST", raises(fs.mkdir, dir .. "/a").code)
      fs.write_file(dir .. "/file", "")
      assert.are.equal("EEXIST", raises(fs.mkdir, dir .. "/file", { parents = true }).code)
    end)

    it("readdir lists names and types; dir iterates them", function()
      fs.write_file(dir .. "/f", "")
      fs.mkdir(dir .. "/d")
      fs.symlink("f", dir .. "/l")
      local list = fs.readdir(dir)
      table.sort(list, function(a, b) return a.name < b.name end)
      assert.are.same({ { name = "d", type = "directory" }, { name = "f", type = "file" },
        { name = "l", type = "link" } }, list)
      local seen = {}
      for name, kind in fs.dir(dir) do seen[name] = kind end
      assert.are.same({ d = "directory", f = "file", l = "link" }, seen)
    end)

    it("rename, remove (a file or an empty directory) and copyfile", function()
      fs.write_file(dir .. "/a", "A")
      fs.rename(dir .. "/a", dir .. "/b")
      assert.is_false(fs.exists(dir .. "/a"))
      fs.copyfile(dir .. "/b", dir .. "/c")
      assert.are.equal("A", fs.read_file(dir .. "/c"))
      assert.are.equal("EEXIST", raises(fs.copyfile, dir .. "/b", dir .. "/c", { exclusive = true }).code)
      fs.remove(dir .. "/b")
      assert.is_false(fs.exists(dir .. "/b"))
      fs.mkdir(dir .. "/e")
      fs.remove(dir .. "/e")
      assert.is_false(fs.exists(dir .. "/e"))
      fs.mkdir(dir .. "/full")
      fs.write_file(dir .. "/full/x", "")
      assert.are.equal("ENOTEMPTY", raises(fs.remove, dir .. "/full").code)
    end)

    it("rm needs recursive for a directory, never follows symlinks, and refuses /", function()
      local outside = fs.mkdtemp("/tmp/lasync-keep-")
      fs.write_file(outside .. "/precious", "keep")
      fs.mkdir(dir .. "/t/u", { parents = true })
      fs.write_file(dir .. "/t/u/f", "")
      fs.symlink(outside, dir .. "/t/link-to-dir")
      fs.symlink(outside .. "/precious", dir .. "/t/u/link-to-file")
      local err = raises(fs.rm, dir .. "/t")
      assert.are.equal("EISDIR", err.code)
      fs.rm(dir .. "/t", { recursive = true })
      assert.is_false(fs.exists(dir .. "/t"))
      assert.are.equal("keep", fs.read_file(outside .. "/precious"))
      fs.symlink(outside, dir .. "/top-link")
      fs.rm(dir .. "/top-link", { recursive = true }) -- the link goes, not what it points to
      assert.are.equal("keep", fs.read_file(outside .. "/precious"))
      fs.rm(outside, { recursive = true })
      for _, root in ipairs({ "/", "//", "/tmp/.." }) do
        err = raises(fs.rm, root, { recursive = true })
        assert.are.equal("fs", err.kind)
        assert.are.equal("EPERM", err.code)
      end
      assert.are.equal("ENOENT", raises(fs.rm, dir .. "/none").code)
      fs.rm(dir .. "/none", { force = true })
    end)

    it("realpath, readlink, symlink, chmod, utime and mkdtemp", function()
      fs.write_file(dir .. "/f", "")
      fs.symlink("f", dir .. "/l")
      assert.are.equal("f", fs.readlink(dir .. "/l"))
      assert.are.equal(fs.realpath(dir) .. "/f", fs.realpath(dir .. "/./l"))
      fs.chmod(dir .. "/f", "640")
      assert.are.equal(tonumber("640", 8), fs.stat(dir .. "/f").mode)
      fs.utime(dir .. "/f", 1000000000.5, 1234567890.25)
      local st = fs.stat(dir .. "/f")
      assert.are.equal(1234567890.25, st.mtime)
      assert.are.equal(1000000000.5, st.atime)
      local t = fs.mkdtemp(dir .. "/tmp-")
      assert.truthy(t:match("/tmp%-......$"))
      assert.are.equal("directory", fs.stat(t).type)
    end)

    it("watch reports a write to a watched file and ends when closed", function()
      fs.write_file(dir .. "/w", "")
      local events = {}
      local w = fs.watch(dir)
      local reader = async.spawn(function()
        for ev in w do
          events[#events + 1] = ev
          if ev.name == "w" and ev.change == "change" then break end
        end
      end)
      async.sleep(0.05)
      fs.append_file(dir .. "/w", "more")
      async.wait_for(reader, 5)
      assert.are.equal("w", events[#events].name)
      local n = 0
      local waiting = async.spawn(function() for _ in w do n = n + 1 end return "ended" end)
      async.sleep(0.01)
      w:close()
      assert.are.equal("ended", async.wait_for(waiting, 5))
      local closer
      do
        local v <close> = fs.watch(dir)
        closer = v
      end
      assert.is_nil(closer:next())
      assert.are.equal("ENOENT", raises(fs.watch, dir .. "/none").code)
    end)
  end)

  describe("misuse", function()
    it("names the call and the argument", function()
      assert.are.equal("async.fs.read_file: bad argument #1 'path' (string expected, got nil)",
        raises(fs.read_file):match("async.fs.*"))
      assert.truthy(raises(fs.stat, 42):match("async.fs.stat: bad argument #1 'path' %(string expected, got number%)"))
      assert.truthy(raises(fs.open, "a\0b"):match("NUL"))
      assert.truthy(raises(fs.write_file, dir .. "/x", {}):match("bad argument #2 'data'"))
      assert.truthy(raises(fs.write_file, dir .. "/x", "", { mode = "9z" }):match("async.fs.write_file: bad option 'mode'"))
      assert.truthy(raises(fs.open, dir .. "/x", "w", "9z"):match("bad argument #3 'perm'"))
      assert.truthy(raises(fs.chmod, dir .. "/x", "9z"):match("bad argument #2 'mode'"))
      assert.truthy(raises(fs.read_file, "x", { max_size = -1 }):match("bad option 'max_size'"))
      assert.truthy(raises(fs.mkdir, "x", 5):match("bad argument #2 'opts'"))
      local f = fs.open(dir .. "/f", "w")
      assert.truthy(raises(f.read, f, "q"):match("file:read: bad argument #2 'format'"))
      assert.truthy(raises(f.seek, f, "middle"):match("file:seek: bad argument #2 'whence'"))
      assert.truthy(raises(f.write, f, {}):match("file:write: bad argument #2"))
      f:close()
    end)

    it("refuses to suspend outside a task", function()
      local ok, err = coroutine.wrap(function() return pcall(fs.stat, "/") end)()
      assert.is_false(ok)
      assert.truthy(err:match("async.fs.stat must be called inside a task"), err)
    end)
  end)

  describe("cancellation", function()
    -- A FIFO opened for reading blocks in the worker until a writer comes, so the request is
    -- certainly running (uv_cancel cannot stop it) when the task is cancelled.
    it("of an open whose request already started closes the descriptor it produced", function()
      local fifo = dir .. "/fifo"
      os.execute("mkfifo " .. fifo)
      local before = open_fds()
      local t = async.spawn(function() return fs.open(fifo, "r") end)
      async.sleep(0.05)
      assert.are.equal(1, async._debug.counts().requests)
      t:cancel()
      assert.is_true(async.is_cancelled(select(2, pcall(t.await, t))))
      local writer = io.open(fifo, "w") -- lets the worker's open return its descriptor
      wait_until(function() return async._debug.counts().requests == 0 end)
      writer:close()
      assert.are.equal(before, open_fds())
    end)

    it("at every kind of call leaves no request and no descriptor behind", function()
      fs.write_file(dir .. "/f", ("data\n"):rep(50000))
      local before = open_fds()
      local calls = {
        function() return fs.read_file(dir .. "/f") end,
        function() return fs.open(dir .. "/f") end,
        function() return fs.stat(dir .. "/f") end,
        function() local f <close> = fs.open(dir .. "/f"); return f:read("a") end,
        function() local f <close> = fs.open(dir .. "/f", "a"); return f:write(("x"):rep(100000)) end,
        function() for _ in fs.lines(dir .. "/f") do end end,
        function() return fs.readdir(dir) end,
        function() return fs.copyfile(dir .. "/f", dir .. "/copy") end,
        function() local w <close> = fs.watch(dir); return w:next() end,
      }
      for _, call in ipairs(calls) do
        for delay = 0, 6 do
          local t = async.spawn(call)
          for _ = 1, delay do async.sleep(0) end
          t:cancel()
          pcall(t.await, t)
        end
      end
      wait_until(function() return async._debug.counts().requests == 0 end)
      collectgarbage()
      collectgarbage()
      assert.are.equal(before, open_fds())
    end)

    it("a File closed while its read is pending waits for the read", function()
      local fifo = dir .. "/fifo"
      os.execute("mkfifo " .. fifo)
      local f = fs.open(fifo, "r+") -- O_RDWR: does not wait for a writer
      local reader = async.spawn(function() return f:read(5) end)
      async.sleep(0.05)
      reader:cancel() -- its request keeps running in the worker
      pcall(reader.await, reader)
      local closed = false
      local closer = async.spawn(function() f:close(); closed = true end)
      async.sleep(0.05)
      assert.is_false(closed)
      assert.is_false(f:is_open())
      local w = io.open(fifo, "w")
      w:write("hello")
      w:close()
      async.wait_for(closer, 5)
      assert.is_true(closed)
    end)
  end)
end)

describe("async.fs misuse and cancellation found by a hostile pass", function()
  after_each(assert_clean)

  it("leaves no temporary file behind when an atomic write is cancelled", function()
    local dir = fs.mkdtemp("/tmp/lasync-atomic-")
    for i = 1, 40 do
      local t = async.spawn(fs.write_file, dir .. "/a", "data", { atomic = true })
      for _ = 1, i % 4 do async.sleep(0) end -- cancelled at the open, the write or the sync
      t:cancel()
      pcall(t.await, t)
    end
    async.sleep(0.1) -- an open the cancel left running ends in the thread pool meanwhile
    local left = {}
    for _, e in ipairs(fs.readdir(dir)) do
      if e.name ~= "a" then left[#left + 1] = e.name end
    end
    fs.rm(dir, { recursive = true })
    assert.are.same({}, left)
  end)

  it("checks open's mode and permission strictly", function()
    local path = os.tmpname()
    assert.matches("bad argument #2 'mode' (string expected, got table)",
      raises(fs.open, path, {}), 1, true)
    assert.matches("bad argument #2 'mode' (invalid mode", raises(fs.open, path, "r\0w"), 1, true)
    for _, perm in ipairs { " +644", "-0", "644\0", "77777", "" } do
      assert.matches("bad argument #3 'perm'", raises(fs.open, path, "w", perm), 1, true)
    end
    assert.matches("bad option 'mode'",
      raises(fs.write_file, path, "x", { mode = ("7"):rep(40) }), 1, true)
    os.remove(path)
  end)

  it("says how large a read may be", function()
    local f <close> = fs.open("/dev/zero")
    assert.matches("at most 2147483647 bytes a read", raises(f.read, f, 1 << 40), 1, true)
  end)
end)
