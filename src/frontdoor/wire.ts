// The Postgres frontend/backend wire protocol as far as the front door needs it: pure code, no I/O.
//
//   client ──untyped startup packets──▶ StartupReader   (SSLRequest, GSSENCRequest, CancelRequest,
//                                                        StartupMessage: int32 length, int32 code)
//   client ──typed messages──────────▶ FrameSplitter   (1-byte tag, int32 length, body)
//   store  ──typed messages──────────▶ FrameSplitter
//
// The splitter does not decode what it does not have to: it hands back runs of bytes to forward
// unchanged (any number of messages, or part of one, as they came) and, whole, only the messages
// whose tag the caller asked for (Query and Parse one way; ReadyForQuery, BackendKeyData and
// ParameterStatus the other). A message of another kind is never held in memory, however large;
// one asked for whole is bounded by Postgres's own limit (1 GiB - 1, PQ_LARGE_MESSAGE_LIMIT), and
// its memory is taken as its bytes arrive, never from the length a client claims.
//
// The encoders are the few messages the front door writes itself: ErrorResponse, and Query and
// Parse with replaced SQL text.

import { isUtf8 } from "node:buffer";

/** Sent in the code field of an untyped startup packet. */
export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
/** Postgres's MAX_STARTUP_PACKET_LENGTH: longer startup packets are refused as it refuses them. */
export const MAX_STARTUP_PACKET_LENGTH = 10_000;
/** Postgres's PQ_LARGE_MESSAGE_LIMIT: no frontend message may be longer (Query, Bind, CopyData...). */
export const MAX_MESSAGE_LENGTH = 0x3fff_ffff;
/** Protocol 3.2 (PostgreSQL 18) lets cancel keys grow to 256 bytes. */
const MAX_CANCEL_KEY_LENGTH = 256;

export const TAG = {
  query: 0x51, // 'Q'
  parse: 0x50, // 'P'
  errorResponse: 0x45, // 'E'
  readyForQuery: 0x5a, // 'Z'
  backendKeyData: 0x4b, // 'K'
  parameterStatus: 0x53, // 'S'
  authentication: 0x52, // 'R'
  password: 0x70, // 'p' (PasswordMessage, SASLInitialResponse, SASLResponse)
} as const;

/** The one-byte answers to SSLRequest and GSSENCRequest. */
export const ACCEPT_SSL = Buffer.from("S");
export const REFUSE_ENCRYPTION = Buffer.from("N");

/** Text encodings the front door reads SQL in: UTF-8, or latin1 as a byte-exact stand-in for the rest. */
export type TextEncoding = "utf8" | "latin1";

/** Bytes that break the protocol; `code` is the SQLSTATE to report (08P01 unless said otherwise). */
export class ProtocolError extends Error {
  override name = "ProtocolError";
  constructor(
    message: string,
    readonly code = "08P01",
  ) {
    super(message);
  }
}

export type StartupPacket =
  | { kind: "ssl-request"; bytes: Buffer }
  | { kind: "gssenc-request"; bytes: Buffer }
  | { kind: "cancel"; bytes: Buffer; pid: number; secret: Buffer }
  | {
      kind: "startup";
      bytes: Buffer;
      major: number;
      minor: number;
      /** user, database, application_name, options, ... in the order sent. */
      parameters: Map<string, string>;
    };

/**
 * Reads the untyped packets a client sends before its StartupMessage (and the StartupMessage
 * itself) from chunks split anywhere. What arrives after a packet stays buffered: `rest()` hands
 * it over once the caller leaves the startup phase.
 */
export class StartupReader {
  private buffered: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): void {
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, chunk]) : chunk;
  }

  /** The next whole packet, or undefined until more bytes arrive. Throws ProtocolError. */
  next(): StartupPacket | undefined {
    const buf = this.buffered;
    if (buf.length < 4) return undefined;
    const length = buf.readInt32BE(0);
    if (length < 8 || length > MAX_STARTUP_PACKET_LENGTH) {
      // A TLS ClientHello starts 0x16 0x03: libpq 17's sslnegotiation=direct.
      const hint =
        buf[0] === 0x16 && buf[1] === 0x03
          ? " (a TLS handshake without SSLRequest: connect with sslnegotiation=postgres)"
          : "";
      throw new ProtocolError(`invalid length of startup packet${hint}`);
    }
    if (buf.length < length) return undefined;
    const bytes = buf.subarray(0, length);
    this.buffered = buf.subarray(length);
    return decodeStartupPacket(bytes);
  }

  /** Bytes received after the last packet returned. */
  rest(): Buffer {
    return this.buffered;
  }
}

/** Decode one whole untyped packet (length included). Throws ProtocolError. */
export function decodeStartupPacket(bytes: Buffer): StartupPacket {
  const code = bytes.readInt32BE(4);
  switch (code) {
    case SSL_REQUEST_CODE:
      if (bytes.length !== 8) throw new ProtocolError("invalid length of SSLRequest packet");
      return { kind: "ssl-request", bytes };
    case GSSENC_REQUEST_CODE:
      if (bytes.length !== 8) throw new ProtocolError("invalid length of GSSENCRequest packet");
      return { kind: "gssenc-request", bytes };
    case CANCEL_REQUEST_CODE:
      if (bytes.length < 16 || bytes.length > 12 + MAX_CANCEL_KEY_LENGTH)
        throw new ProtocolError("invalid length of CancelRequest packet");
      return { kind: "cancel", bytes, pid: bytes.readInt32BE(8), secret: bytes.subarray(12) };
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== 3) {
    throw new ProtocolError(
      `unsupported frontend protocol ${major}.${minor}: the server supports 3.0 to 3.x`,
      "0A000",
    );
  }
  const parameters = new Map<string, string>();
  let pos = 8;
  for (;;) {
    const keyEnd = bytes.indexOf(0, pos);
    if (keyEnd < 0)
      throw new ProtocolError("invalid startup packet layout: expected terminator as last byte");
    if (keyEnd === pos) {
      if (keyEnd !== bytes.length - 1)
        throw new ProtocolError("invalid startup packet layout: expected terminator as last byte");
      break;
    }
    const valueEnd = bytes.indexOf(0, keyEnd + 1);
    if (valueEnd < 0)
      throw new ProtocolError("invalid startup packet layout: expected terminator as last byte");
    parameters.set(bytes.toString("utf8", pos, keyEnd), bytes.toString("utf8", keyEnd + 1, valueEnd));
    pos = valueEnd + 1;
  }
  return { kind: "startup", bytes, major, minor, parameters };
}

/** What FrameSplitter.next() hands back. */
export type Frame =
  /** Bytes to forward as they are: whole messages, or part of one, never a message asked for whole. */
  | { kind: "bytes"; bytes: Buffer }
  /** One whole message (tag and length included) of a kind asked for whole. */
  | { kind: "message"; tag: number; bytes: Buffer };

const HEADER = 0;
const PASS = 1;
const COLLECT = 2;

/**
 * Splits a stream of typed messages, pushed in chunks cut anywhere. Pull-based, so that the caller
 * can stop between two frames (while a rewrite is pending) and carry on later: push a chunk, call
 * next() until it returns undefined, push the next chunk.
 */
export class FrameSplitter {
  private readonly whole = new Uint8Array(256);
  private chunk: Buffer = Buffer.alloc(0);
  private offset = 0;
  private state = HEADER;
  /** Bytes of the current message not seen yet (PASS, COLLECT). */
  private remaining = 0;
  private readonly header = Buffer.alloc(5);
  private headerHave = 0;
  private parts: Buffer[] = [];
  private tag = 0;

  /**
   * @param wholeTags message tags to hand back whole; every other message is handed back as runs
   * @param passRuns false when the caller only observes the stream (it forwards the chunks
   *   itself): runs are then skipped rather than handed back. May change between two chunks: the
   *   rest of a message the last chunk ended in is then handed back (or skipped) accordingly.
   * @param reusedChunks true when the caller reads the next chunk into the memory of the last one:
   *   the part of a message asked for whole that a chunk ends in is then copied, not kept as a view
   */
  constructor(
    wholeTags: readonly number[],
    public passRuns = true,
    private readonly reusedChunks = false,
  ) {
    for (const tag of wholeTags) this.whole[tag] = 1;
  }

  /** Start on the next chunk; the previous one must have been read to its end. */
  push(chunk: Buffer): void {
    if (this.offset < this.chunk.length) throw new Error("FrameSplitter.push before the last chunk was read");
    this.chunk = chunk;
    this.offset = 0;
  }

  /** True between two messages: nothing of a message has been seen without its end. */
  atMessageBoundary(): boolean {
    return this.state === HEADER && this.headerHave === 0;
  }

  /** The next frame of the current chunk, or undefined when it is used up. Throws ProtocolError. */
  next(): Frame | undefined {
    const chunk = this.chunk;
    const end = chunk.length;
    let pos = this.offset;
    const runStart = pos;
    while (pos < end) {
      if (this.state === PASS) {
        const n = Math.min(this.remaining, end - pos);
        pos += n;
        this.remaining -= n;
        if (this.remaining === 0) this.state = HEADER;
        continue;
      }
      if (this.state === COLLECT) {
        // Only entered at the start of a call (a run before it was handed back first).
        const n = Math.min(this.remaining, end - pos);
        this.parts.push(this.held(chunk.subarray(pos, pos + n)));
        pos += n;
        this.remaining -= n;
        this.offset = pos;
        if (this.remaining > 0) return undefined;
        this.state = HEADER;
        const parts = this.parts;
        this.parts = [];
        return {
          kind: "message",
          tag: this.tag,
          bytes: parts.length === 1 ? parts[0] : Buffer.concat(parts),
        };
      }
      // HEADER: the common case is a whole header in this chunk.
      if (this.headerHave === 0 && end - pos >= 5) {
        const tag = chunk[pos];
        const length = checkedLength(tag, chunk.readInt32BE(pos + 1));
        if (this.whole[tag] === 0) {
          // Step over it, and over the messages after it that this chunk holds whole and that are
          // not asked for either (rows of a result, say), without leaving this loop.
          const whole = this.whole;
          let next = pos + length + 1;
          while (next <= end - 5 && whole[chunk[next]] === 0) {
            const n =
              (chunk[next + 1] << 24) | (chunk[next + 2] << 16) | (chunk[next + 3] << 8) | chunk[next + 4];
            next += (n < 4 || n > MAX_MESSAGE_LENGTH ? checkedLength(chunk[next], n) : n) + 1;
          }
          if (next <= end) pos = next;
          else {
            this.state = PASS;
            this.remaining = next - end;
            pos = end;
          }
          continue;
        }
        if (pos > runStart && this.passRuns) {
          this.offset = pos;
          return { kind: "bytes", bytes: chunk.subarray(runStart, pos) };
        }
        if (end - pos > length) {
          this.offset = pos + length + 1;
          return { kind: "message", tag, bytes: chunk.subarray(pos, pos + length + 1) };
        }
        this.tag = tag;
        this.parts = [this.held(chunk.subarray(pos))];
        this.remaining = length + 1 - (end - pos);
        this.state = COLLECT;
        this.offset = end;
        return undefined;
      }
      // A header cut by the end of a chunk.
      if (this.headerHave === 0) this.tag = chunk[pos];
      const wanted = this.whole[this.tag] === 1;
      if (wanted && pos > runStart && this.passRuns) {
        this.offset = pos;
        return { kind: "bytes", bytes: chunk.subarray(runStart, pos) };
      }
      const n = Math.min(5 - this.headerHave, end - pos);
      chunk.copy(this.header, this.headerHave, pos, pos + n);
      this.headerHave += n;
      pos += n;
      if (this.headerHave < 5) {
        if (!wanted) continue; // its first bytes go with the run
        // Held back in `header`: never part of a run (the run before it was handed back).
        this.offset = pos;
        return undefined;
      }
      this.headerHave = 0;
      const length = checkedLength(this.tag, this.header.readInt32BE(1));
      this.remaining = length + 1 - 5;
      if (!wanted) {
        this.state = this.remaining === 0 ? HEADER : PASS;
        continue;
      }
      this.offset = pos;
      if (this.remaining === 0) return { kind: "message", tag: this.tag, bytes: Buffer.from(this.header) };
      this.parts = [Buffer.from(this.header)];
      this.state = COLLECT;
      return this.next();
    }
    this.offset = pos;
    if (pos > runStart && this.passRuns) return { kind: "bytes", bytes: chunk.subarray(runStart, pos) };
    return undefined;
  }

  /** A part of a message asked for whole, kept until the message ends (perhaps chunks later). */
  private held(part: Buffer): Buffer {
    return this.reusedChunks ? Buffer.from(part) : part;
  }
}

function checkedLength(tag: number, length: number): number {
  if (length < 4 || length > MAX_MESSAGE_LENGTH) {
    throw new ProtocolError(`invalid message length ${length} for message type ${describeTag(tag)}`);
  }
  return length;
}

function describeTag(tag: number): string {
  return tag >= 0x20 && tag < 0x7f
    ? `'${String.fromCharCode(tag)}'`
    : `0x${tag.toString(16).padStart(2, "0")}`;
}

// --- Decoders -----------------------------------------------------------------------------------

/** The end (exclusive) of the C string starting at `pos`; throws when it has no terminator. */
function cstringEnd(bytes: Buffer, pos: number, what: string): number {
  const end = bytes.indexOf(0, pos);
  if (end < 0) throw new ProtocolError(`invalid ${what} message: unterminated string`);
  return end;
}

/**
 * Text of a message, from `start` to `end`. Bytes that are not UTF-8 in a UTF-8 session are
 * refused rather than replaced: rewritten, they would reach the store as U+FFFD where the store
 * itself refuses them (22021).
 */
function decodeText(bytes: Buffer, encoding: TextEncoding, start: number, end: number, what: string): string {
  if (encoding === "utf8" && !isUtf8(bytes.subarray(start, end)))
    throw new ProtocolError(`invalid ${what} message: not valid UTF-8`);
  return bytes.toString(encoding, start, end);
}

/** The SQL text of a Query ('Q') message. */
export function decodeQuery(bytes: Buffer, encoding: TextEncoding = "utf8"): string {
  return decodeText(bytes, encoding, 5, cstringEnd(bytes, 5, "Query"), "Query");
}

export interface ParseMessage {
  /** Prepared statement name; "" is the unnamed statement. */
  name: string;
  sql: string;
  /** Parameter type OIDs as sent (0: left to the server), unsigned. */
  paramTypes: number[];
}

/** A Parse ('P') message. */
export function decodeParse(bytes: Buffer, encoding: TextEncoding = "utf8"): ParseMessage {
  const nameEnd = cstringEnd(bytes, 5, "Parse");
  const sqlEnd = cstringEnd(bytes, nameEnd + 1, "Parse");
  let pos = sqlEnd + 1;
  if (pos + 2 > bytes.length) throw new ProtocolError("invalid Parse message: no parameter count");
  // Unsigned, as the server reads it: up to 65535 parameters.
  const count = bytes.readUInt16BE(pos);
  pos += 2;
  if (pos + 4 * count !== bytes.length)
    throw new ProtocolError("invalid Parse message: parameter types do not match their count");
  const paramTypes = new Array<number>(count);
  for (let i = 0; i < count; i++, pos += 4) paramTypes[i] = bytes.readUInt32BE(pos);
  return {
    name: decodeText(bytes, encoding, 5, nameEnd, "Parse"),
    sql: decodeText(bytes, encoding, nameEnd + 1, sqlEnd, "Parse"),
    paramTypes,
  };
}

/** The transaction status of a ReadyForQuery ('Z') message: 'I' idle, 'T' in a block, 'E' failed. */
export function decodeReadyForQuery(bytes: Buffer): "I" | "T" | "E" {
  const status = String.fromCharCode(bytes[5]);
  if (bytes.length !== 6 || (status !== "I" && status !== "T" && status !== "E"))
    throw new ProtocolError("invalid ReadyForQuery message");
  return status;
}

/** A BackendKeyData ('K') message: the backend's pid and its cancel key (4 bytes before protocol 3.2). */
export function decodeBackendKeyData(bytes: Buffer): { pid: number; secret: Buffer } {
  if (bytes.length < 13) throw new ProtocolError("invalid BackendKeyData message");
  return { pid: bytes.readInt32BE(5), secret: bytes.subarray(9) };
}

/** A ParameterStatus ('S') message. */
export function decodeParameterStatus(bytes: Buffer): { name: string; value: string } {
  const nameEnd = cstringEnd(bytes, 5, "ParameterStatus");
  const valueEnd = cstringEnd(bytes, nameEnd + 1, "ParameterStatus");
  return { name: bytes.toString("utf8", 5, nameEnd), value: bytes.toString("utf8", nameEnd + 1, valueEnd) };
}

/** The fields of an ErrorResponse ('E') or NoticeResponse ('N'), keyed by their one-letter code. */
export function decodeErrorFields(bytes: Buffer): Map<string, string> {
  const fields = new Map<string, string>();
  let pos = 5;
  while (pos < bytes.length && bytes[pos] !== 0) {
    const end = cstringEnd(bytes, pos + 1, "ErrorResponse");
    fields.set(String.fromCharCode(bytes[pos]), bytes.toString("utf8", pos + 1, end));
    pos = end + 1;
  }
  return fields;
}

// --- Encoders -----------------------------------------------------------------------------------

function message(tag: number, bodyLength: number): { buf: Buffer; pos: number } {
  const buf = Buffer.allocUnsafe(5 + bodyLength);
  buf[0] = tag;
  buf.writeInt32BE(4 + bodyLength, 1);
  return { buf, pos: 5 };
}

/** NUL would end a C string early: the protocol cannot carry it, Postgres text cannot hold it. */
function withoutNul(text: string): string {
  return text.includes("\0") ? text.replaceAll("\0", "") : text;
}

/** A Query ('Q') message. */
export function encodeQuery(sql: string, encoding: TextEncoding = "utf8"): Buffer {
  const text = withoutNul(sql);
  const { buf, pos } = message(TAG.query, Buffer.byteLength(text, encoding) + 1);
  buf[pos + buf.write(text, pos, encoding)] = 0;
  return buf;
}

/** A Parse ('P') message; parameter type OIDs are written back exactly (unsigned). */
export function encodeParse(parse: ParseMessage, encoding: TextEncoding = "utf8"): Buffer {
  const name = withoutNul(parse.name);
  const sql = withoutNul(parse.sql);
  const nameLength = Buffer.byteLength(name, encoding);
  const sqlLength = Buffer.byteLength(sql, encoding);
  const count = parse.paramTypes.length;
  if (count > 0xffff)
    throw new RangeError(`a Parse message carries at most 65535 parameter types, not ${count}`);
  const { buf, pos: start } = message(TAG.parse, nameLength + 1 + sqlLength + 1 + 2 + 4 * count);
  let pos = start;
  pos += buf.write(name, pos, encoding);
  buf[pos++] = 0;
  pos += buf.write(sql, pos, encoding);
  buf[pos++] = 0;
  pos = buf.writeUInt16BE(count, pos);
  for (const oid of parse.paramTypes) pos = buf.writeUInt32BE(oid >>> 0, pos);
  return buf;
}

export interface ErrorFields {
  severity: "ERROR" | "FATAL";
  /** SQLSTATE, five characters. */
  code: string;
  message: string;
  detail?: string;
  hint?: string;
}

/** An ErrorResponse ('E') message, with both the localised (S) and the fixed (V) severity. */
export function encodeErrorResponse(error: ErrorFields): Buffer {
  const fields: [string, string][] = [
    ["S", error.severity],
    ["V", error.severity],
    ["C", error.code],
    ["M", error.message],
  ];
  if (error.detail) fields.push(["D", error.detail]);
  if (error.hint) fields.push(["H", error.hint]);
  let length = 1;
  for (const [, value] of fields) length += 1 + Buffer.byteLength(withoutNul(value)) + 1;
  const { buf, pos: start } = message(TAG.errorResponse, length);
  let pos = start;
  for (const [field, value] of fields) {
    buf[pos++] = field.charCodeAt(0);
    pos += buf.write(withoutNul(value), pos, "utf8");
    buf[pos++] = 0;
  }
  buf[pos] = 0;
  return buf;
}
