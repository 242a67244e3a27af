// The buffer cursors under every decoder and encoder.
import assert from "node:assert/strict";
import { test } from "node:test";
import { ProtocolError } from "../../src/protocol/messages.ts";
import { BufferReader, BufferWriter } from "../../src/protocol/reader.ts";

test("reads big-endian integers, C strings and byte views", () => {
  const buf = Buffer.from("ff" + "fffe" + "fffffffd" + "fffffffffffffffc" + "68c3a900" + "010203", "hex");
  const r = new BufferReader(buf, "test");
  assert.equal(r.int8(), -1);
  assert.equal(r.uint16(), 0xfffe);
  assert.equal(r.uint32(), 0xfffffffd);
  assert.equal(r.int64(), -4n);
  assert.equal(r.cstring(), "hé");
  assert.equal(r.remaining(), 3);
  const view = r.bytes(2);
  assert.deepEqual(view, Buffer.from([1, 2]));
  assert.equal(view.buffer, buf.buffer, "bytes() is a view, not a copy");
  assert.equal(view.byteOffset, buf.byteOffset + 19);
  assert.equal(r.atEnd(), false);
  assert.deepEqual(r.rest(), Buffer.from([3]));
  assert.equal(r.atEnd(), true);
  r.expectEnd();
});

test("signed and unsigned views of the same bytes", () => {
  const buf = Buffer.from("ffff" + "ffffffff" + "ffffffffffffffff", "hex");
  const r = new BufferReader(buf, "test");
  assert.equal(r.int16(), -1);
  assert.equal(r.int32(), -1);
  assert.equal(r.uint64(), 0xffff_ffff_ffff_ffffn);
  const u = new BufferReader(buf, "test");
  assert.equal(u.uint8(), 255);
});

test("reading past the end throws ProtocolError with the message name and offset, and does not move", () => {
  const r = new BufferReader(Buffer.from([1, 2, 3]), "pgoutput Example ('X')", 1);
  assert.throws(
    () => r.uint32(),
    (err: unknown) =>
      err instanceof ProtocolError &&
      err.message ===
        "pgoutput Example ('X'): message too short: needs 4 byte(s) at offset 1 but only 2 remain (message length 3)",
  );
  assert.equal(r.offset, 1);
  assert.throws(() => r.cstring(), /no terminating NUL/);
  assert.throws(() => r.bytes(3), ProtocolError);
  assert.throws(() => r.expectEnd(), /2 unexpected trailing byte\(s\) at offset 1/);
});

test("the writer grows across every kind of field", () => {
  const w = new BufferWriter(1);
  const text = "ü".repeat(40);
  for (let i = 0; i < 50; i++) {
    w.uint8(i)
      .int8(-1)
      .int16(-2)
      .uint16(65535)
      .int32(-3)
      .uint32(0xffffffff)
      .int64(-4n)
      .uint64(5n)
      .cstring(text)
      .countedUtf8(text)
      .bytes(Buffer.from([i]));
  }
  const r = new BufferReader(w.finish(), "test");
  for (let i = 0; i < 50; i++) {
    assert.equal(r.uint8(), i);
    assert.equal(r.int8(), -1);
    assert.equal(r.int16(), -2);
    assert.equal(r.uint16(), 65535);
    assert.equal(r.int32(), -3);
    assert.equal(r.uint32(), 0xffffffff);
    assert.equal(r.int64(), -4n);
    assert.equal(r.uint64(), 5n);
    assert.equal(r.cstring(), text);
    assert.equal(r.utf8(r.int32()), text);
    assert.equal(r.uint8(), i);
  }
  r.expectEnd();
  assert.equal(w.length, r.buf.length);
});

test("the writer refuses what it cannot represent", () => {
  assert.throws(() => new BufferWriter().cstring("a\0b"), RangeError);
  assert.throws(() => new BufferWriter().uint32(-1), RangeError);
  assert.throws(() => new BufferWriter().uint64(-1n), RangeError);
});
