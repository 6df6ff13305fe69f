package.path = "spec/support/?.lua;" .. package.path
local async = require "lasync"
local assert_clean = require "clean"
local raises = require "raises"
local tcp = require "tcp"

-- Buffers (bindings/io/bytes.c): the reusable memory stream:read_into fills. Reading into one
-- is in stream_spec.lua; here, the object itself.
describe("async.buffer", function()
  after_each(assert_clean)

  it("makes an empty Buffer of a fixed capacity", function()
    local b = async.buffer(100)
    assert.are.equal(0, #b)
    assert.are.equal(100, b:capacity())
    assert.are.equal("", b:tostring())
    assert.are.equal("lasync.Buffer (0 of 100 bytes)", tostring(b))
  end)

  it("refuses a capacity that is not an integer from 1 to 1 GiB, naming the argument", function()
    assert.matches("async.buffer: bad argument #1 'capacity' %(integer expected, got string%)",
      raises(async.buffer, "10"))
    assert.matches("async.buffer: bad argument #1 'capacity' %(integer expected, got number%)",
      raises(async.buffer, 1.5))
    assert.matches("async.buffer: bad argument #1 'capacity' %(integer expected, got no value%)",
      raises(async.buffer))
    assert.matches("'capacity' %(1 to 1073741824 expected, got 0%)", raises(async.buffer, 0))
    assert.matches("got %-5%)", raises(async.buffer, -5))
    assert.matches("got 1073741825%)", raises(async.buffer, (1 << 30) + 1))
    assert.is_truthy(raises(async.buffer, math.mininteger):find("got " .. math.mininteger, 1, true))
  end)

  it("tostring(i, j) takes string.sub's positions over the bytes it holds", function()
    local c, s, release = tcp.pair()
    finally(release)
    local text = "0123456789"
    s:write("x" .. text)
    assert.are.equal("x", c:read(1)) -- reading starts with the first read
    assert.is_true(tcp.wait_until(function() return c:stats().buffered == #text end))
    local b = async.buffer(64)
    assert.are.equal(#text, c:read_into(b))
    for i = -12, 12 do
      for j = -12, 12 do
        assert.are.equal(text:sub(i, j), b:tostring(i, j), ("tostring(%d, %d)"):format(i, j))
      end
      assert.are.equal(text:sub(i), b:tostring(i))
    end
    assert.are.equal(text, b:tostring(math.mininteger, math.maxinteger))
    assert.are.equal("", b:tostring(math.maxinteger, math.mininteger))
    assert.are.equal("lasync.Buffer (10 of 64 bytes)", tostring(b))
  end)

  it("refuses positions that are not integers, and a call on something else", function()
    local b = async.buffer(8)
    assert.matches("buffer:tostring: bad argument #1 'i' %(integer expected, got string%)",
      raises(b.tostring, b, "1"))
    assert.matches("buffer:tostring: bad argument #2 'j' %(integer expected, got number%)",
      raises(b.tostring, b, 1, 2.5))
    assert.matches(
      "buffer:tostring: bad self (lasync.Buffer expected, got string); call it with ':'",
      raises(b.tostring, "x"), 1, true)
    assert.matches(
      "buffer:capacity: bad self (lasync.Buffer expected, got no value); call it with ':'",
      raises(b.capacity), 1, true)
  end)
end)
