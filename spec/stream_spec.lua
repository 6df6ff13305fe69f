package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local raises = require "raises"
local tcp = require "tcp"
local cancel_when_woken = require "woken"

describe("streams", function()
  after_each(assert_clean)

  describe("reading", function()
    it("read() returns what is buffered, read(n) at most n bytes, nil at the end", function()
      local c, s, release = tcp.pair()
      finally(release)
      s:write("hello world")
      assert.are.equal("hel", c:read(3))
      assert.is_true(tcp.wait_until(function() return c:stats().buffered == 8 end))
      assert.are.equal("lo world", c:read())
      s:shutdown()
      assert.is_nil(c:read())
      assert.is_nil(c:read()) -- the end stays the end
    end)

    it("read_line() splits on LF and CRLF and returns a last line without a newline", function()
      local c, s, release = tcp.pair()
      finally(release)
      s:write("one\ntwo\r\n\nthree\r", "\nfour")
      s:shutdown()
      assert.are.equal("one", c:read_line())
      assert.are.equal("two", c:read_line())
      assert.are.equal("", c:read_line())
      assert.are.equal("three", c:read_line())
      assert.are.equal("four", c:read_line())
      assert.is_nil(c:read_line())
    end)

    it("lines() iterates over the lines until the end, across many small packets", function()
      local c, s, release = tcp.pair()
      finally(release)
      local writer = async.spawn(function()
        for i = 1, 200 do
          s:write("line ", tostring(i))
          if i % 7 == 0 then async.sleep(0) end
          s:write(i % 2 == 0 and "\r\n" or "\n")
        end
        s:shutdown()
      end)
      local got = {}
      for line in c:lines() do got[#got + 1] = line end
      writer:await()
      assert.are.equal(200, #got)
      for i = 1, 200 do assert.are.equal("line " .. i, got[i]) end
    end)

    it("read_line() raises kind line_too_long past its maximum, leaving the bytes unread", function()
      local c, s, release = tcp.pair()
      finally(release)
      s:write(string.rep("x", 100), "\nok\n")
      local err = raises(c.read_line, c, 10)
      assert.are.equal("line_too_long", err.kind)
      assert.are.equal(10, err.max)
      assert.are.equal(string.rep("x", 100), c:read_line(200))
      assert.are.equal("ok", c:read_line(2))
    end)

    it("a line longer than read_max is still read when max_line allows it", function()
      local c, s, release = tcp.pair()
      finally(release)
      c:set_limits({ read_max = 1024, max_line = 1024 * 1024 })
      local big = string.rep("y", 300 * 1024)
      s:write(big, "\n")
      assert.are.equal(big, c:read_line())
    end)

    it("read_exactly(n) waits for n bytes and raises kind closed (code EOF) if the end cuts them",
      function()
        local c, s, release = tcp.pair()
        finally(release)
        local big = string.rep("z", 200 * 1024)
        local writer = async.spawn(function()
          s:write("abc")
          async.sleep(0.02)
          s:write("defg", big)
          s:write("tail")
          s:shutdown()
        end)
        assert.are.equal("abcdef", c:read_exactly(6))
        assert.are.equal("g" .. big, c:read_exactly(#big + 1))
        local err = raises(c.read_exactly, c, 10)
        assert.are.equal("closed", err.kind)
        assert.are.equal("EOF", err.code)
        assert.are.equal("tail", err.partial)
        assert.is_nil(c:read_exactly(10)) -- a clean end: nil, as read and read_line
        writer:await()
      end)

    it("refuses a second task reading the same stream at once", function()
      local c, s, release = tcp.pair()
      finally(release)
      local first = async.spawn(function() return c:read() end)
      async.sleep(0.01)
      local err = raises(c.read, c)
      assert.matches("another task is already reading this stream", err)
      s:write("x")
      assert.are.equal("x", first:await())
    end)

    it("stops reading from the socket while the unread bytes exceed read_max", function()
      local c, s, release = tcp.pair()
      finally(release)
      c:set_limits({ read_max = 16 * 1024 })
      local chunk = string.rep("a", 64 * 1024)
      local writer = async.spawn(function()
        for _ = 1, 256 do s:write(chunk) end -- 16 MiB
        s:shutdown()
      end)
      assert.are.equal(1, #c:read(1)) -- starts reading
      assert.is_true(tcp.wait_until(function() return not c:stats().reading end))
      async.sleep(0.1)
      local st = c:stats()
      assert.is_false(st.reading)
      -- bounded: the limit plus at most one read of the shared 64 KiB slab
      assert.is_true(st.buffered <= 16 * 1024 + 64 * 1024, "buffered " .. st.buffered)
      assert.is_false(writer:done()) -- the writer is held back by the kernel's window
      local total = 1
      while true do
        local d = c:read()
        if not d then break end
        total = total + #d
      end
      assert.are.equal(256 * 64 * 1024, total)
      writer:await()
    end)

    it("a busy reader takes the bytes in order, and other tasks still run while it reads",
      function()
      local c, s, release = tcp.pair()
      finally(release)
      -- Numbered pieces, so any reordering or loss shows in the concatenation.
      local pieces = {}
      for i = 1, 4096 do pieces[i] = string.format("%07d", i) .. string.rep("x", 4089) end
      local expected = table.concat(pieces) -- 16 MiB
      s:set_limits({ write_hwm = 32 * 1024 * 1024 })
      local writer = async.spawn(function()
        for i = 1, #pieces, 16 do s:write({ table.unpack(pieces, i, i + 15) }) end
        s:shutdown()
      end)
      local since_tick, worst, ticks, reading = 0, 0, 0, true
      local ticker = async.spawn(function()
        while reading do
          if since_tick > worst then worst = since_tick end
          since_tick, ticks = 0, ticks + 1
          async.sleep(0)
        end
      end)
      local got = {}
      while true do
        local d = c:read()
        if not d then break end
        got[#got + 1] = d
        since_tick = since_tick + #d
      end
      reading = false
      ticker:await()
      writer:await()
      assert.is_true(table.concat(got) == expected, "the bytes arrived out of order or incomplete")
      assert.is_true(ticks > 1)
      -- A reader with bytes always waiting still lets the loop turn: at most its per-turn
      -- budget (256 KiB) plus what one turn of the loop buffers (read_max + a slab) in between.
      assert.is_true(worst <= 1024 * 1024, "read " .. worst .. " bytes without letting a task run")
    end)
  end)

  describe("read_into", function()
    it("fills a Buffer from its start, returns the count, nil at the end, bytes in order",
      function()
      local c, s, release = tcp.pair()
      finally(release)
      local pieces = {}
      for i = 1, 1024 do pieces[i] = string.format("%07d", i) .. string.rep("y", 4089) end
      local expected = table.concat(pieces) -- 4 MiB
      local writer = async.spawn(function()
        for i = 1, #pieces, 16 do s:write({ table.unpack(pieces, i, i + 15) }) end
        s:shutdown()
      end)
      local b = async.buffer(10000) -- not a multiple of anything the writer sends
      local got, reads = {}, 0
      while true do
        local n = c:read_into(b)
        if not n then break end
        assert.is_true(n >= 1 and n <= 10000, "read " .. n)
        assert.are.equal(n, #b)
        got[#got + 1] = b:tostring()
        reads = reads + 1
      end
      writer:await()
      assert.is_true(table.concat(got) == expected, "the bytes arrived out of order or incomplete")
      assert.is_true(reads >= #expected // 10000)
      assert.is_nil(c:read_into(b)) -- the end stays the end
      assert.are.equal(got[#got], b:tostring()) -- and left the Buffer as it was
    end)

    it("takes what read() left buffered first, and mixes with the other reads", function()
      local c, s, release = tcp.pair()
      finally(release)
      s:write("hello world\nrest")
      assert.are.equal("hel", c:read(3))
      local b = async.buffer(4)
      assert.are.equal(4, c:read_into(b))
      assert.are.equal("lo w", b:tostring())
      assert.are.equal("orld", c:read_line())
      s:shutdown()
      assert.are.equal(4, c:read_into(b))
      assert.are.equal("rest", b:tostring())
      assert.is_nil(c:read_into(b))
    end)

    it("a cancelled read_into leaves the Buffer untouched and the bytes for the next reader",
      function()
      local c, s, release = tcp.pair()
      finally(release)
      local b = async.buffer(16)
      local reader = async.spawn(function() return c:read_into(b) end)
      async.sleep(0.01)
      reader:cancel()
      assert.is_true(async.is_cancelled(select(2, pcall(reader.await, reader))))
      assert.are.equal(0, #b)
      s:write("after")
      assert.are.equal(5, c:read_into(b))
      assert.are.equal("after", b:tostring())
    end)

    it("refuses a second reader, a non-Buffer and a call with '.', naming the argument",
      function()
      local c, s, release = tcp.pair()
      finally(release)
      local b = async.buffer(8)
      local first = async.spawn(function() return c:read_into(b) end)
      async.sleep(0.01)
      assert.matches("another task is already reading this stream", raises(c.read_into, c, b))
      s:write("x")
      assert.are.equal(1, first:await())
      assert.matches("stream:read_into: bad argument #1 'buf' %(lasync.Buffer expected, got string%)",
        raises(c.read_into, c, "x"))
      assert.matches("stream:read_into: bad argument #1 'buf' %(lasync.Buffer expected, got no value%)",
        raises(c.read_into, c))
      assert.matches("bad self (lasync.Stream expected, got lasync.Buffer); call it with ':'",
        raises(c.read_into, b), 1, true)
    end)

    it("a task waiting in read_into fails with kind closed when the stream is closed", function()
      local c, _, release = tcp.pair()
      finally(release)
      local b = async.buffer(8)
      local reader = async.spawn(function() return c:read_into(b) end)
      async.sleep(0.01)
      c:close()
      local ok, err = pcall(reader.await, reader)
      assert.is_false(ok)
      assert.are.equal("closed", err.kind)
      assert.are.equal("closed", raises(c.read_into, c, b).kind)
    end)

    it("raises kind closed with the code when the peer resets", function()
      local c, s, release = tcp.pair()
      finally(release)
      s:write("x")
      local b = async.buffer(8)
      assert.are.equal(1, c:read_into(b))
      c:write(string.rep("z", 100)) -- unread on the other side: closing it resets
      async.sleep(0.02)
      s:close()
      local ok, err = pcall(c.read_into, c, b)
      assert.is_false(ok)
      assert.are.equal("closed", err.kind)
      assert.are.equal("ECONNRESET", err.code)
    end)
  end)

  describe("writing", function()
    it("a writer that never has to wait still lets other tasks run every 256 KiB", function()
      local c, s, release = tcp.pair()
      finally(release)
      s:set_limits({ write_hwm = 64 * 1024 * 1024 }) -- the queue never holds it back
      local piece = string.rep("w", 16 * 1024)
      local since_tick, worst, ticks, writing = 0, 0, 0, true
      local ticker = async.spawn(function()
        while writing do
          if since_tick > worst then worst = since_tick end
          since_tick, ticks = 0, ticks + 1
          async.sleep(0)
        end
      end)
      local reader = async.spawn(function()
        local n = 0
        while true do
          local d = c:read()
          if not d then return n end
          n = n + #d
        end
      end)
      for _ = 1, 512 do -- 8 MiB
        s:write(piece)
        since_tick = since_tick + #piece
      end
      writing = false
      s:shutdown()
      assert.are.equal(512 * #piece, reader:await())
      ticker:await()
      assert.is_true(ticks >= 32, "the ticker ran " .. ticks .. " times")
      assert.is_true(worst <= 256 * 1024, "wrote " .. worst .. " bytes without letting a task run")
    end)

    it("writes strings and arrays of strings in order, as one write", function()
      local c, s, release = tcp.pair()
      finally(release)
      c:write("a", { "b", "c", "" }, "d", {})
      c:shutdown()
      local got = {}
      for d in function() return s:read() end do got[#got + 1] = d end
      assert.are.equal("abcd", table.concat(got))
    end)

    it("suspends a fast writer while a slow reader lets bytes queue, keeping memory bounded",
      function()
        local c, s, release = tcp.pair()
        finally(release)
        c:set_limits({ write_hwm = 256 * 1024 })
        local chunk = string.rep("w", 64 * 1024)
        local written, max_queued = 0, 0
        local writer = async.spawn(function()
          for _ = 1, 1024 do -- 64 MiB if nothing held it back
            c:write(chunk)
            written = written + 1
            local q = c:stats().queued
            if q > max_queued then max_queued = q end
          end
          c:shutdown()
        end)
        local mem0 = collectgarbage("count")
        async.sleep(0.3) -- the reader is paused: the writer must stall
        assert.is_false(writer:done())
        -- kernel socket buffers take some megabytes at most, then the writer waits
        assert.is_true(written < 400, "written " .. written)
        assert.is_true(max_queued <= 256 * 1024 + 64 * 1024, "queued " .. max_queued)
        assert.is_true(collectgarbage("count") - mem0 < 16 * 1024, "Lua heap grew")
        local total, max_buffered = 0, 0
        while true do
          local d = s:read(8192)
          if not d then break end
          total = total + #d
          local b = s:stats().buffered
          if b > max_buffered then max_buffered = b end
        end
        writer:await()
        assert.are.equal(1024 * 64 * 1024, total)
        assert.is_true(max_buffered <= s:stats().read_max + 64 * 1024, "buffered " .. max_buffered)
      end)

    it("a cancelled write has queued all its bytes: the stream stays consistent", function()
      local c, s, release = tcp.pair()
      finally(release)
      c:set_limits({ write_hwm = 1024 })
      local chunk = string.rep("q", 256 * 1024)
      local calls = 0
      local writer = async.spawn(function()
        while true do
          calls = calls + 1
          c:write(chunk)
        end
      end)
      assert.is_true(tcp.wait_until(function() return c:stats().queued > 1024 end))
      async.sleep(0.05)
      writer:cancel()
      assert.is_true(async.is_cancelled(select(2, pcall(writer.await, writer))))
      local reader = async.spawn(function()
        local total = 0
        while true do
          local d = s:read()
          if not d then return total end
          total = total + #d
        end
      end)
      c:write("END")
      c:shutdown()
      assert.are.equal(calls * #chunk + 3, reader:await())
    end)

    it("rejects data that is not strings, naming the argument", function()
      local c, _, release = tcp.pair()
      finally(release)
      assert.matches("stream:write: bad argument #1 'data' %(string or array of strings expected, got number%)",
        raises(c.write, c, 42))
      assert.matches("item 2 is a boolean", raises(c.write, c, { "a", true }))
    end)

    it("raises kind closed on a write after shutdown", function()
      local c, _, release = tcp.pair()
      finally(release)
      c:shutdown()
      assert.are.equal("closed", raises(c.write, c, "x").kind)
    end)
  end)

  describe("closing", function()
    it("close() is idempotent; later calls raise kind closed", function()
      local c, _, release = tcp.pair()
      finally(release)
      c:close()
      c:close()
      assert.is_true(c:closed())
      assert.are.equal("closed", raises(c.read, c).kind)
      assert.are.equal("closed", raises(c.write, c, "x").kind)
    end)

    it("closing wakes a task waiting to read with kind closed", function()
      local c, _, release = tcp.pair()
      finally(release)
      local reader = async.spawn(function() return c:read() end)
      async.sleep(0.01)
      c:close()
      local ok, err = pcall(reader.await, reader)
      assert.is_false(ok)
      assert.are.equal("closed", err.kind)
    end)

    it("flushes queued bytes before the handle closes", function()
      local c, s, release = tcp.pair()
      finally(release)
      local big = string.rep("f", 4 * 1024 * 1024)
      c:set_limits({ write_hwm = 2 * #big }) -- the write returns with bytes still queued
      c:write(big)
      assert.is_true(c:stats().queued > 0)
      c:close()
      local total = 0
      while true do
        local d = s:read()
        if not d then break end
        total = total + #d
      end
      assert.are.equal(#big, total)
    end)

    it("<close> closes the stream at the end of its scope, and __gc one that is dropped", function()
      local srv = async.net.listen({ port = 0 }, function(conn) conn:read() end)
      finally(function() srv:close() end)
      do
        local c <close> = async.net.connect("127.0.0.1", srv.port)
        assert.is_false(c:closed())
      end
      async.net.connect("127.0.0.1", srv.port)
      collectgarbage()
      collectgarbage()
      -- assert_clean checks that both handles were closed and freed
    end)
  end)

  describe("cancellation", function()
    it("a cancelled read leaves the stream usable and the bytes for the next reader", function()
      local c, s, release = tcp.pair()
      finally(release)
      local reader = async.spawn(function() return c:read_exactly(10) end)
      async.sleep(0.01)
      s:write("12345")
      async.sleep(0.02)
      reader:cancel()
      assert.is_true(async.is_cancelled(select(2, pcall(reader.await, reader))))
      s:write("67890")
      assert.are.equal("1234567890", c:read_exactly(10))
    end)

    it("a reader woken by its bytes but cancelled before it ran leaves them to the next", function()
      local c, s, release = tcp.pair()
      finally(release)
      local reader = async.spawn(function() return c:read_line() end)
      assert.is_true(cancel_when_woken(reader, function() s:write("kept\n") end))
      assert.is_true(async.is_cancelled(select(2, pcall(reader.await, reader))))
      assert.are.equal("kept", async.timeout(5, c.read_line, c))
    end)

    it("a pending cancellation is raised at read, write and shutdown before they start", function()
      local c, _, release = tcp.pair()
      finally(release)
      for _, call in ipairs({
        function() return c:read() end,
        function() return c:write("x") end,
        function() return c:shutdown() end,
      }) do
        local t = async.spawn(function()
          async.current():cancel()
          return call()
        end)
        assert.is_true(async.is_cancelled(select(2, pcall(t.await, t))))
      end
    end)
  end)
end)
