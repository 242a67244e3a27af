// Cursors over protocol buffers: BufferReader for decoding, BufferWriter for encoding.
//
// Every decoder reads through a BufferReader so that bounds are checked in one place: a read past
// the end throws ProtocolError naming the message being decoded and the offset, never a
// RangeError from Buffer and never a silently short value. All integers are big-endian (network
// order), as everywhere in the Postgres protocol. Byte runs are returned as views (subarray) into
// the received buffer, so column data is never copied; callers that keep a value beyond the life
// of the buffer must copy it themselves.
import { ProtocolError } from "./messages.ts";

export class BufferReader {
  /** Offset of the next byte to read. */
  offset: number;

  /**
   * @param buf the whole message
   * @param what names the message in errors, e.g. "pgoutput Insert ('I')"
   * @param offset where to start reading (e.g. 1 to skip the tag byte already looked at)
   */
  constructor(
    readonly buf: Buffer,
    readonly what: string,
    offset = 0,
  ) {
    this.offset = offset;
  }

  remaining(): number {
    return this.buf.length - this.offset;
  }

  atEnd(): boolean {
    return this.offset >= this.buf.length;
  }

  /** Throws unless the whole message has been consumed: trailing bytes mean we misread it. */
  expectEnd(): void {
    if (this.offset !== this.buf.length) {
      throw new ProtocolError(
        `${this.what}: ${this.buf.length - this.offset} unexpected trailing byte(s) at offset ${this.offset} (message length ${this.buf.length})`,
      );
    }
  }

  /** A ProtocolError about the value just read (which ended at the current offset). */
  error(detail: string, at = this.offset): ProtocolError {
    return new ProtocolError(`${this.what}: ${detail} at offset ${at}`);
  }

  private need(n: number): number {
    const at = this.offset;
    if (at + n > this.buf.length) {
      throw new ProtocolError(
        `${this.what}: message too short: needs ${n} byte(s) at offset ${at} but only ${this.buf.length - at} remain (message length ${this.buf.length})`,
      );
    }
    this.offset = at + n;
    return at;
  }

  int8(): number {
    return this.buf.readInt8(this.need(1));
  }

  uint8(): number {
    return this.buf[this.need(1)];
  }

  int16(): number {
    return this.buf.readInt16BE(this.need(2));
  }

  uint16(): number {
    return this.buf.readUInt16BE(this.need(2));
  }

  int32(): number {
    return this.buf.readInt32BE(this.need(4));
  }

  uint32(): number {
    return this.buf.readUInt32BE(this.need(4));
  }

  /** Signed 64-bit (timestamps). */
  int64(): bigint {
    return this.buf.readBigInt64BE(this.need(8));
  }

  /** Unsigned 64-bit (LSNs). */
  uint64(): bigint {
    return this.buf.readBigUInt64BE(this.need(8));
  }

  /** A NUL-terminated UTF-8 string; the NUL is consumed. */
  cstring(): string {
    const start = this.offset;
    const end = this.buf.indexOf(0, start);
    if (end < 0) {
      throw new ProtocolError(
        `${this.what}: message too short: string starting at offset ${start} has no terminating NUL (message length ${this.buf.length})`,
      );
    }
    this.offset = end + 1;
    return this.buf.toString("utf8", start, end);
  }

  /** The next n bytes as a view into the message (no copy). */
  bytes(n: number): Buffer {
    const at = this.need(n);
    return this.buf.subarray(at, at + n);
  }

  /** The next n bytes decoded as UTF-8. */
  utf8(n: number): string {
    const at = this.need(n);
    return this.buf.toString("utf8", at, at + n);
  }

  /** Everything left, as a view (no copy). */
  rest(): Buffer {
    const at = this.offset;
    this.offset = this.buf.length;
    return this.buf.subarray(at);
  }
}

/** A growable big-endian buffer for encoders. `finish()` returns the bytes written. */
export class BufferWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initialSize = 64) {
    this.buf = Buffer.allocUnsafe(Math.max(initialSize, 16));
  }

  // Callers must take the offset from room() before touching this.buf: it may replace the buffer.
  private room(n: number): number {
    const at = this.pos;
    if (at + n > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < at + n) size *= 2;
      const grown = Buffer.allocUnsafe(size);
      this.buf.copy(grown, 0, 0, at);
      this.buf = grown;
    }
    this.pos = at + n;
    return at;
  }

  get length(): number {
    return this.pos;
  }

  int8(v: number): this {
    const at = this.room(1);
    this.buf.writeInt8(v, at);
    return this;
  }

  uint8(v: number): this {
    const at = this.room(1);
    this.buf.writeUInt8(v, at);
    return this;
  }

  int16(v: number): this {
    const at = this.room(2);
    this.buf.writeInt16BE(v, at);
    return this;
  }

  uint16(v: number): this {
    const at = this.room(2);
    this.buf.writeUInt16BE(v, at);
    return this;
  }

  int32(v: number): this {
    const at = this.room(4);
    this.buf.writeInt32BE(v, at);
    return this;
  }

  uint32(v: number): this {
    const at = this.room(4);
    this.buf.writeUInt32BE(v, at);
    return this;
  }

  int64(v: bigint): this {
    const at = this.room(8);
    this.buf.writeBigInt64BE(v, at);
    return this;
  }

  uint64(v: bigint): this {
    const at = this.room(8);
    this.buf.writeBigUInt64BE(v, at);
    return this;
  }

  /** A NUL-terminated UTF-8 string. A string containing NUL cannot be represented. */
  cstring(s: string): this {
    if (s.includes("\0"))
      throw new RangeError(`cannot encode a string containing NUL as a C string: ${JSON.stringify(s)}`);
    const n = Buffer.byteLength(s, "utf8");
    const at = this.room(n + 1);
    this.buf.write(s, at, n, "utf8");
    this.buf[at + n] = 0;
    return this;
  }

  /** int32 byte length, then the UTF-8 bytes. */
  countedUtf8(s: string): this {
    const n = Buffer.byteLength(s, "utf8");
    this.int32(n);
    const at = this.room(n);
    this.buf.write(s, at, n, "utf8");
    return this;
  }

  bytes(b: Uint8Array): this {
    const at = this.room(b.length);
    this.buf.set(b, at);
    return this;
  }

  /** The bytes written so far (a view; do not keep writing after taking it). */
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}
