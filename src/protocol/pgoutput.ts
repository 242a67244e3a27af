// The pgoutput codec: Postgres's logical replication message formats, protocol versions 1-4
// (docs: "Logical Replication Message Formats"; server side: replication/logical/proto.c).
//
//   XLogData.data ─► decodePgoutput(buf, { inStream }) ─► PgoutputMessage ─► assembler / apply
//                    (one pure decodeX per message tag, picked by a switch on the first byte)
//
// Why it looks like this:
// - Pure functions of (bytes, options): no I/O, no state. The only context a message needs is
//   whether it sits inside a streamed-transaction block (Stream Start .. Stream Stop), where
//   Relation/Type/Insert/Update/Delete/Truncate/Message carry a leading xid, and whether Stream
//   Abort carries its LSN and timestamp (protocol 4, streaming = parallel). The caller knows both;
//   PgoutputStreamDecoder tracks the first for callers that would rather not.
// - Strict: a short message, an unknown tag or kind byte, or bytes left over after the last field
//   is a ProtocolError naming the message and the offset. A misread stream must stop, not apply
//   garbage: decoding never guesses.
// - Hot path: one BufferReader per message, no closures or regexes, column values are views into
//   the received buffer ('b') or one UTF-8 decode ('t'). LSNs and timestamps stay bigint.
// - encodePgoutput is the exact inverse (byte-for-byte on what the server sends), for round-trip
//   tests and for Strata serving the same protocol to its own replicas.
//
// What the server does that is easy to miss (see the fixtures' tests): inside a stream block the
// xid of a data message is that of the (sub)transaction that made the change, not the top-level
// xid of Stream Start; Stream Abort's subxid names the subtransaction to discard (equal to xid
// when the whole transaction aborts). Text values, names and prefixes arrive in the connection's
// client_encoding (pq_sendcountedtext converts), so the replication connection must use UTF8.
//
// What does not survive a round trip, because the message types have no field for it: unknown
// bits in Relation column flags, Message flags and Truncate options, and Stream Start's
// first-segment byte other than 0/1. The server only ever sends the documented values.
import {
  type BeginMessage,
  type BeginPrepareMessage,
  type ColumnValue,
  type CommitMessage,
  type CommitPreparedMessage,
  type DeleteMessage,
  type InsertMessage,
  type LogicalDecodingMessage,
  type OriginMessage,
  type PgoutputMessage,
  type PrepareMessage,
  ProtocolError,
  type RelationColumn,
  type RelationMessage,
  type ReplicaIdentity,
  type RollbackPreparedMessage,
  type StreamAbortMessage,
  type StreamCommitMessage,
  type StreamPrepareMessage,
  type StreamStartMessage,
  type StreamStopMessage,
  type TruncateMessage,
  type TupleData,
  type TypeMessage,
  UNCHANGED_TOAST,
  type UpdateMessage,
} from "./messages.ts";
import { BufferReader, BufferWriter } from "./reader.ts";
import { describeByte } from "./replication-messages.ts";

export interface PgoutputOptions {
  /** Between Stream Start and Stream Stop: data messages carry a leading xid. */
  inStream: boolean;
  /** Stream Abort carries abort LSN and time (protocol 4 with streaming = parallel). */
  streamAbortHasLsn?: boolean;
}

// Message tags (first byte).
const BEGIN = 0x42; // 'B'
const MESSAGE = 0x4d; // 'M'
const COMMIT = 0x43; // 'C'
const ORIGIN = 0x4f; // 'O'
const RELATION = 0x52; // 'R'
const TYPE = 0x59; // 'Y'
const INSERT = 0x49; // 'I'
const UPDATE = 0x55; // 'U'
const DELETE = 0x44; // 'D'
const TRUNCATE = 0x54; // 'T'
const STREAM_START = 0x53; // 'S'
const STREAM_STOP = 0x45; // 'E'
const STREAM_COMMIT = 0x63; // 'c'
const STREAM_ABORT = 0x41; // 'A'
const BEGIN_PREPARE = 0x62; // 'b'
const PREPARE = 0x50; // 'P'
const COMMIT_PREPARED = 0x4b; // 'K'
const ROLLBACK_PREPARED = 0x72; // 'r'
const STREAM_PREPARE = 0x70; // 'p'

// Markers inside Insert/Update/Delete.
const TUPLE_NEW = 0x4e; // 'N'
const TUPLE_KEY = 0x4b; // 'K'
const TUPLE_OLD = 0x4f; // 'O'

// TupleData column kinds.
const COLUMN_NULL = 0x6e; // 'n'
const COLUMN_UNCHANGED = 0x75; // 'u'
const COLUMN_TEXT = 0x74; // 't'
const COLUMN_BINARY = 0x62; // 'b'

const COLUMN_FLAG_KEY = 1;
const MESSAGE_TRANSACTIONAL = 1;
const TRUNCATE_CASCADE = 1;
const TRUNCATE_RESTART_IDENTITY = 2;

// ---- decoding ----

/** Decode one pgoutput message (the payload of one XLogData). */
export function decodePgoutput(buf: Buffer, options: PgoutputOptions): PgoutputMessage {
  if (buf.length === 0) throw new ProtocolError("pgoutput: empty message at offset 0");
  const tag = buf[0];
  switch (tag) {
    case BEGIN:
      return decodeBegin(buf);
    case MESSAGE:
      return decodeMessage(buf, options.inStream);
    case COMMIT:
      return decodeCommit(buf);
    case ORIGIN:
      return decodeOrigin(buf);
    case RELATION:
      return decodeRelation(buf, options.inStream);
    case TYPE:
      return decodeType(buf, options.inStream);
    case INSERT:
      return decodeInsert(buf, options.inStream);
    case UPDATE:
      return decodeUpdate(buf, options.inStream);
    case DELETE:
      return decodeDelete(buf, options.inStream);
    case TRUNCATE:
      return decodeTruncate(buf, options.inStream);
    case STREAM_START:
      return decodeStreamStart(buf);
    case STREAM_STOP:
      return decodeStreamStop(buf);
    case STREAM_COMMIT:
      return decodeStreamCommit(buf);
    case STREAM_ABORT:
      return decodeStreamAbort(buf, options.streamAbortHasLsn === true);
    case BEGIN_PREPARE:
      return decodeBeginPrepare(buf);
    case PREPARE:
      return decodePrepare(buf);
    case COMMIT_PREPARED:
      return decodeCommitPrepared(buf);
    case ROLLBACK_PREPARED:
      return decodeRollbackPrepared(buf);
    case STREAM_PREPARE:
      return decodeStreamPrepare(buf);
    default:
      throw new ProtocolError(
        `pgoutput: unknown message tag ${describeByte(tag)} at offset 0 (message length ${buf.length})`,
      );
  }
}

function decodeBegin(buf: Buffer): BeginMessage {
  const r = new BufferReader(buf, "pgoutput Begin ('B')", 1);
  const finalLsn = r.uint64();
  const commitTime = r.int64();
  const xid = r.uint32();
  r.expectEnd();
  return { tag: "Begin", finalLsn, commitTime, xid };
}

function decodeMessage(buf: Buffer, inStream: boolean): LogicalDecodingMessage {
  const r = new BufferReader(buf, "pgoutput Message ('M')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const flags = r.uint8();
  const lsn = r.uint64();
  const prefix = r.cstring();
  const content = r.bytes(length(r, "content"));
  r.expectEnd();
  const transactional = (flags & MESSAGE_TRANSACTIONAL) !== 0;
  return xid === undefined
    ? { tag: "Message", transactional, lsn, prefix, content }
    : { tag: "Message", xid, transactional, lsn, prefix, content };
}

function decodeCommit(buf: Buffer): CommitMessage {
  const r = new BufferReader(buf, "pgoutput Commit ('C')", 1);
  const flags = r.uint8();
  const commitLsn = r.uint64();
  const endLsn = r.uint64();
  const commitTime = r.int64();
  r.expectEnd();
  return { tag: "Commit", flags, commitLsn, endLsn, commitTime };
}

function decodeOrigin(buf: Buffer): OriginMessage {
  const r = new BufferReader(buf, "pgoutput Origin ('O')", 1);
  const commitLsn = r.uint64();
  const name = r.cstring();
  r.expectEnd();
  return { tag: "Origin", commitLsn, name };
}

function decodeRelation(buf: Buffer, inStream: boolean): RelationMessage {
  const r = new BufferReader(buf, "pgoutput Relation ('R')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const relationOid = r.uint32();
  const namespace = r.cstring();
  const name = r.cstring();
  const replicaIdentity = readReplicaIdentity(r);
  const count = r.uint16();
  const columns: RelationColumn[] = [];
  for (let i = 0; i < count; i++) {
    const flags = r.uint8();
    const columnName = r.cstring();
    const typeOid = r.uint32();
    const typeMod = r.int32();
    columns.push({ isKey: (flags & COLUMN_FLAG_KEY) !== 0, name: columnName, typeOid, typeMod });
  }
  r.expectEnd();
  return xid === undefined
    ? { tag: "Relation", relationOid, namespace, name, replicaIdentity, columns }
    : { tag: "Relation", xid, relationOid, namespace, name, replicaIdentity, columns };
}

function readReplicaIdentity(r: BufferReader): ReplicaIdentity {
  const b = r.uint8();
  switch (b) {
    case 0x64: // 'd'
      return "d";
    case 0x6e: // 'n'
      return "n";
    case 0x66: // 'f'
      return "f";
    case 0x69: // 'i'
      return "i";
    default:
      throw r.error(`unknown replica identity ${describeByte(b)} (expected d, n, f or i)`, r.offset - 1);
  }
}

function decodeType(buf: Buffer, inStream: boolean): TypeMessage {
  const r = new BufferReader(buf, "pgoutput Type ('Y')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const typeOid = r.uint32();
  const namespace = r.cstring();
  const name = r.cstring();
  r.expectEnd();
  return xid === undefined
    ? { tag: "Type", typeOid, namespace, name }
    : { tag: "Type", xid, typeOid, namespace, name };
}

function decodeInsert(buf: Buffer, inStream: boolean): InsertMessage {
  const r = new BufferReader(buf, "pgoutput Insert ('I')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const relationOid = r.uint32();
  expectMarker(r, TUPLE_NEW, "'N' (new tuple)");
  const newTuple = readTuple(r);
  r.expectEnd();
  return xid === undefined
    ? { tag: "Insert", relationOid, newTuple }
    : { tag: "Insert", xid, relationOid, newTuple };
}

function decodeUpdate(buf: Buffer, inStream: boolean): UpdateMessage {
  const r = new BufferReader(buf, "pgoutput Update ('U')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const relationOid = r.uint32();
  const at = r.offset;
  const marker = r.uint8();
  if (marker === TUPLE_KEY || marker === TUPLE_OLD) {
    const oldKind = marker === TUPLE_KEY ? "K" : "O";
    const oldTuple = readTuple(r);
    expectMarker(r, TUPLE_NEW, "'N' (new tuple)");
    const newTuple = readTuple(r);
    r.expectEnd();
    return xid === undefined
      ? { tag: "Update", relationOid, oldKind, oldTuple, newTuple }
      : { tag: "Update", xid, relationOid, oldKind, oldTuple, newTuple };
  }
  if (marker !== TUPLE_NEW) {
    throw r.error(`expected 'K', 'O' or 'N' tuple marker, got ${describeByte(marker)}`, at);
  }
  const newTuple = readTuple(r);
  r.expectEnd();
  return xid === undefined
    ? { tag: "Update", relationOid, newTuple }
    : { tag: "Update", xid, relationOid, newTuple };
}

function decodeDelete(buf: Buffer, inStream: boolean): DeleteMessage {
  const r = new BufferReader(buf, "pgoutput Delete ('D')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const relationOid = r.uint32();
  const at = r.offset;
  const marker = r.uint8();
  if (marker !== TUPLE_KEY && marker !== TUPLE_OLD) {
    throw r.error(`expected 'K' or 'O' tuple marker, got ${describeByte(marker)}`, at);
  }
  const oldKind = marker === TUPLE_KEY ? "K" : "O";
  const oldTuple = readTuple(r);
  r.expectEnd();
  return xid === undefined
    ? { tag: "Delete", relationOid, oldKind, oldTuple }
    : { tag: "Delete", xid, relationOid, oldKind, oldTuple };
}

function decodeTruncate(buf: Buffer, inStream: boolean): TruncateMessage {
  const r = new BufferReader(buf, "pgoutput Truncate ('T')", 1);
  const xid = inStream ? r.uint32() : undefined;
  const count = length(r, "relation count");
  const flags = r.uint8();
  const relationOids: number[] = [];
  for (let i = 0; i < count; i++) relationOids.push(r.uint32());
  r.expectEnd();
  const cascade = (flags & TRUNCATE_CASCADE) !== 0;
  const restartIdentity = (flags & TRUNCATE_RESTART_IDENTITY) !== 0;
  return xid === undefined
    ? { tag: "Truncate", cascade, restartIdentity, relationOids }
    : { tag: "Truncate", xid, cascade, restartIdentity, relationOids };
}

function decodeStreamStart(buf: Buffer): StreamStartMessage {
  const r = new BufferReader(buf, "pgoutput Stream Start ('S')", 1);
  const xid = r.uint32();
  const firstSegment = r.uint8() === 1;
  r.expectEnd();
  return { tag: "StreamStart", xid, firstSegment };
}

function decodeStreamStop(buf: Buffer): StreamStopMessage {
  new BufferReader(buf, "pgoutput Stream Stop ('E')", 1).expectEnd();
  return { tag: "StreamStop" };
}

function decodeStreamCommit(buf: Buffer): StreamCommitMessage {
  const r = new BufferReader(buf, "pgoutput Stream Commit ('c')", 1);
  const xid = r.uint32();
  const flags = r.uint8();
  const commitLsn = r.uint64();
  const endLsn = r.uint64();
  const commitTime = r.int64();
  r.expectEnd();
  return { tag: "StreamCommit", xid, flags, commitLsn, endLsn, commitTime };
}

function decodeStreamAbort(buf: Buffer, hasLsn: boolean): StreamAbortMessage {
  const r = new BufferReader(buf, "pgoutput Stream Abort ('A')", 1);
  const xid = r.uint32();
  const subxid = r.uint32();
  if (!hasLsn) {
    r.expectEnd();
    return { tag: "StreamAbort", xid, subxid };
  }
  const abortLsn = r.uint64();
  const abortTime = r.int64();
  r.expectEnd();
  return { tag: "StreamAbort", xid, subxid, abortLsn, abortTime };
}

function decodeBeginPrepare(buf: Buffer): BeginPrepareMessage {
  const r = new BufferReader(buf, "pgoutput Begin Prepare ('b')", 1);
  const prepareLsn = r.uint64();
  const endLsn = r.uint64();
  const prepareTime = r.int64();
  const xid = r.uint32();
  const gid = r.cstring();
  r.expectEnd();
  return { tag: "BeginPrepare", prepareLsn, endLsn, prepareTime, xid, gid };
}

function decodePrepare(buf: Buffer): PrepareMessage {
  const r = new BufferReader(buf, "pgoutput Prepare ('P')", 1);
  const flags = r.uint8();
  const prepareLsn = r.uint64();
  const endLsn = r.uint64();
  const prepareTime = r.int64();
  const xid = r.uint32();
  const gid = r.cstring();
  r.expectEnd();
  return { tag: "Prepare", flags, prepareLsn, endLsn, prepareTime, xid, gid };
}

function decodeCommitPrepared(buf: Buffer): CommitPreparedMessage {
  const r = new BufferReader(buf, "pgoutput Commit Prepared ('K')", 1);
  const flags = r.uint8();
  const commitLsn = r.uint64();
  const endLsn = r.uint64();
  const commitTime = r.int64();
  const xid = r.uint32();
  const gid = r.cstring();
  r.expectEnd();
  return { tag: "CommitPrepared", flags, commitLsn, endLsn, commitTime, xid, gid };
}

function decodeRollbackPrepared(buf: Buffer): RollbackPreparedMessage {
  const r = new BufferReader(buf, "pgoutput Rollback Prepared ('r')", 1);
  const flags = r.uint8();
  const prepareEndLsn = r.uint64();
  const rollbackEndLsn = r.uint64();
  const prepareTime = r.int64();
  const rollbackTime = r.int64();
  const xid = r.uint32();
  const gid = r.cstring();
  r.expectEnd();
  return {
    tag: "RollbackPrepared",
    flags,
    prepareEndLsn,
    rollbackEndLsn,
    prepareTime,
    rollbackTime,
    xid,
    gid,
  };
}

function decodeStreamPrepare(buf: Buffer): StreamPrepareMessage {
  const r = new BufferReader(buf, "pgoutput Stream Prepare ('p')", 1);
  const flags = r.uint8();
  const prepareLsn = r.uint64();
  const endLsn = r.uint64();
  const prepareTime = r.int64();
  const xid = r.uint32();
  const gid = r.cstring();
  r.expectEnd();
  return { tag: "StreamPrepare", flags, prepareLsn, endLsn, prepareTime, xid, gid };
}

/** int32 length/count field; negative is malformed (Postgres writes them from unsigned sizes). */
function length(r: BufferReader, what: string): number {
  const n = r.int32();
  if (n < 0) throw r.error(`negative ${what} ${n}`, r.offset - 4);
  return n;
}

function expectMarker(r: BufferReader, marker: number, expected: string): void {
  const b = r.uint8();
  if (b !== marker) throw r.error(`expected ${expected}, got ${describeByte(b)}`, r.offset - 1);
}

function readTuple(r: BufferReader): TupleData {
  const count = r.uint16();
  const values: ColumnValue[] = [];
  for (let i = 0; i < count; i++) {
    const kind = r.uint8();
    switch (kind) {
      case COLUMN_NULL:
        values.push(null);
        break;
      case COLUMN_UNCHANGED:
        values.push(UNCHANGED_TOAST);
        break;
      case COLUMN_TEXT:
        values.push(r.utf8(length(r, `length of column ${i + 1}`)));
        break;
      case COLUMN_BINARY:
        values.push(r.bytes(length(r, `length of column ${i + 1}`)));
        break;
      default:
        throw r.error(
          `column ${i + 1}: unknown TupleData kind ${describeByte(kind)} (expected n, u, t or b)`,
          r.offset - 1,
        );
    }
  }
  return values;
}

/**
 * Decodes a pgoutput stream message by message, tracking Stream Start / Stream Stop itself so
 * that callers need not. Also rejects what Postgres's apply worker rejects: nested Stream Start,
 * Stream Stop outside a block, and a stream's Commit/Abort/Prepare inside one.
 */
export class PgoutputStreamDecoder {
  private readonly options: PgoutputOptions;

  constructor(options: { streamAbortHasLsn?: boolean } = {}) {
    this.options = { inStream: false, streamAbortHasLsn: options.streamAbortHasLsn === true };
  }

  /** Whether the last message left us inside a Stream Start .. Stream Stop block. */
  get inStream(): boolean {
    return this.options.inStream;
  }

  decode(buf: Buffer): PgoutputMessage {
    const msg = decodePgoutput(buf, this.options);
    switch (msg.tag) {
      case "StreamStart":
        if (this.options.inStream)
          throw new ProtocolError(`pgoutput: Stream Start for xid ${msg.xid} inside an open stream block`);
        this.options.inStream = true;
        break;
      case "StreamStop":
        if (!this.options.inStream)
          throw new ProtocolError("pgoutput: Stream Stop without a preceding Stream Start");
        this.options.inStream = false;
        break;
      case "StreamCommit":
      case "StreamAbort":
      case "StreamPrepare":
        if (this.options.inStream) {
          throw new ProtocolError(
            `pgoutput: ${msg.tag} for xid ${msg.xid} inside an open stream block (no Stream Stop)`,
          );
        }
        break;
      default:
        break;
    }
    return msg;
  }
}

// ---- encoding ----

/** Encode a message exactly as the server would (inverse of decodePgoutput with the same options). */
export function encodePgoutput(msg: PgoutputMessage, options: PgoutputOptions): Buffer {
  const w = new BufferWriter(64);
  switch (msg.tag) {
    case "Begin":
      encodeBegin(w, msg);
      break;
    case "Message":
      encodeMessage(w, msg, options.inStream);
      break;
    case "Commit":
      encodeCommit(w, msg);
      break;
    case "Origin":
      encodeOrigin(w, msg);
      break;
    case "Relation":
      encodeRelation(w, msg, options.inStream);
      break;
    case "Type":
      encodeType(w, msg, options.inStream);
      break;
    case "Insert":
      encodeInsert(w, msg, options.inStream);
      break;
    case "Update":
      encodeUpdate(w, msg, options.inStream);
      break;
    case "Delete":
      encodeDelete(w, msg, options.inStream);
      break;
    case "Truncate":
      encodeTruncate(w, msg, options.inStream);
      break;
    case "StreamStart":
      encodeStreamStart(w, msg);
      break;
    case "StreamStop":
      w.uint8(STREAM_STOP);
      break;
    case "StreamCommit":
      encodeStreamCommit(w, msg);
      break;
    case "StreamAbort":
      encodeStreamAbort(w, msg, options.streamAbortHasLsn === true);
      break;
    case "BeginPrepare":
      encodeBeginPrepare(w, msg);
      break;
    case "Prepare":
      encodePreparedTail(
        w.uint8(PREPARE).uint8(msg.flags),
        msg.prepareLsn,
        msg.endLsn,
        msg.prepareTime,
        msg.xid,
        msg.gid,
      );
      break;
    case "CommitPrepared":
      encodePreparedTail(
        w.uint8(COMMIT_PREPARED).uint8(msg.flags),
        msg.commitLsn,
        msg.endLsn,
        msg.commitTime,
        msg.xid,
        msg.gid,
      );
      break;
    case "RollbackPrepared":
      encodeRollbackPrepared(w, msg);
      break;
    case "StreamPrepare":
      encodePreparedTail(
        w.uint8(STREAM_PREPARE).uint8(msg.flags),
        msg.prepareLsn,
        msg.endLsn,
        msg.prepareTime,
        msg.xid,
        msg.gid,
      );
      break;
    default: {
      const unknown: never = msg;
      throw new ProtocolError(
        `pgoutput: cannot encode unknown message tag ${JSON.stringify((unknown as { tag: unknown }).tag)}`,
      );
    }
  }
  return w.finish();
}

function encodeBegin(w: BufferWriter, m: BeginMessage): void {
  w.uint8(BEGIN).uint64(m.finalLsn).int64(m.commitTime).uint32(m.xid);
}

function encodeMessage(w: BufferWriter, m: LogicalDecodingMessage, inStream: boolean): void {
  w.uint8(MESSAGE);
  writeStreamXid(w, m, inStream);
  w.uint8(m.transactional ? MESSAGE_TRANSACTIONAL : 0)
    .uint64(m.lsn)
    .cstring(m.prefix)
    .int32(m.content.length)
    .bytes(m.content);
}

function encodeCommit(w: BufferWriter, m: CommitMessage): void {
  w.uint8(COMMIT).uint8(m.flags).uint64(m.commitLsn).uint64(m.endLsn).int64(m.commitTime);
}

function encodeOrigin(w: BufferWriter, m: OriginMessage): void {
  w.uint8(ORIGIN).uint64(m.commitLsn).cstring(m.name);
}

function encodeRelation(w: BufferWriter, m: RelationMessage, inStream: boolean): void {
  w.uint8(RELATION);
  writeStreamXid(w, m, inStream);
  w.uint32(m.relationOid).cstring(m.namespace).cstring(m.name).uint8(m.replicaIdentity.charCodeAt(0));
  w.uint16(m.columns.length);
  for (const c of m.columns) {
    w.uint8(c.isKey ? COLUMN_FLAG_KEY : 0)
      .cstring(c.name)
      .uint32(c.typeOid)
      .int32(c.typeMod);
  }
}

function encodeType(w: BufferWriter, m: TypeMessage, inStream: boolean): void {
  w.uint8(TYPE);
  writeStreamXid(w, m, inStream);
  w.uint32(m.typeOid).cstring(m.namespace).cstring(m.name);
}

function encodeInsert(w: BufferWriter, m: InsertMessage, inStream: boolean): void {
  w.uint8(INSERT);
  writeStreamXid(w, m, inStream);
  w.uint32(m.relationOid).uint8(TUPLE_NEW);
  writeTuple(w, m.newTuple);
}

function encodeUpdate(w: BufferWriter, m: UpdateMessage, inStream: boolean): void {
  w.uint8(UPDATE);
  writeStreamXid(w, m, inStream);
  w.uint32(m.relationOid);
  if (m.oldTuple !== undefined || m.oldKind !== undefined) {
    if (m.oldTuple === undefined || m.oldKind === undefined) {
      throw new ProtocolError("pgoutput Update: oldKind and oldTuple must be given together");
    }
    w.uint8(m.oldKind === "K" ? TUPLE_KEY : TUPLE_OLD);
    writeTuple(w, m.oldTuple);
  }
  w.uint8(TUPLE_NEW);
  writeTuple(w, m.newTuple);
}

function encodeDelete(w: BufferWriter, m: DeleteMessage, inStream: boolean): void {
  w.uint8(DELETE);
  writeStreamXid(w, m, inStream);
  w.uint32(m.relationOid).uint8(m.oldKind === "K" ? TUPLE_KEY : TUPLE_OLD);
  writeTuple(w, m.oldTuple);
}

function encodeTruncate(w: BufferWriter, m: TruncateMessage, inStream: boolean): void {
  w.uint8(TRUNCATE);
  writeStreamXid(w, m, inStream);
  w.int32(m.relationOids.length).uint8(
    (m.cascade ? TRUNCATE_CASCADE : 0) | (m.restartIdentity ? TRUNCATE_RESTART_IDENTITY : 0),
  );
  for (const oid of m.relationOids) w.uint32(oid);
}

function encodeStreamStart(w: BufferWriter, m: StreamStartMessage): void {
  w.uint8(STREAM_START)
    .uint32(m.xid)
    .uint8(m.firstSegment ? 1 : 0);
}

function encodeStreamCommit(w: BufferWriter, m: StreamCommitMessage): void {
  w.uint8(STREAM_COMMIT)
    .uint32(m.xid)
    .uint8(m.flags)
    .uint64(m.commitLsn)
    .uint64(m.endLsn)
    .int64(m.commitTime);
}

function encodeStreamAbort(w: BufferWriter, m: StreamAbortMessage, hasLsn: boolean): void {
  w.uint8(STREAM_ABORT).uint32(m.xid).uint32(m.subxid);
  if (!hasLsn) return;
  if (m.abortLsn === undefined || m.abortTime === undefined) {
    throw new ProtocolError(
      "pgoutput Stream Abort: abortLsn and abortTime are required when streamAbortHasLsn is set",
    );
  }
  w.uint64(m.abortLsn).int64(m.abortTime);
}

function encodeBeginPrepare(w: BufferWriter, m: BeginPrepareMessage): void {
  w.uint8(BEGIN_PREPARE)
    .uint64(m.prepareLsn)
    .uint64(m.endLsn)
    .int64(m.prepareTime)
    .uint32(m.xid)
    .cstring(m.gid);
}

/** The shared tail of Prepare, Commit Prepared and Stream Prepare. */
function encodePreparedTail(
  w: BufferWriter,
  lsn: bigint,
  endLsn: bigint,
  time: bigint,
  xid: number,
  gid: string,
): void {
  w.uint64(lsn).uint64(endLsn).int64(time).uint32(xid).cstring(gid);
}

function encodeRollbackPrepared(w: BufferWriter, m: RollbackPreparedMessage): void {
  w.uint8(ROLLBACK_PREPARED)
    .uint8(m.flags)
    .uint64(m.prepareEndLsn)
    .uint64(m.rollbackEndLsn)
    .int64(m.prepareTime)
    .int64(m.rollbackTime)
    .uint32(m.xid)
    .cstring(m.gid);
}

function writeStreamXid(w: BufferWriter, m: { tag: string; xid?: number }, inStream: boolean): void {
  if (inStream) {
    if (m.xid === undefined)
      throw new ProtocolError(`pgoutput ${m.tag}: inside a stream block the message needs an xid`);
    w.uint32(m.xid);
  } else if (m.xid !== undefined) {
    throw new ProtocolError(
      `pgoutput ${m.tag}: has xid ${m.xid} but is not being encoded inside a stream block`,
    );
  }
}

function writeTuple(w: BufferWriter, tuple: TupleData): void {
  w.uint16(tuple.length);
  for (const v of tuple) {
    if (v === null) w.uint8(COLUMN_NULL);
    else if (v === UNCHANGED_TOAST) w.uint8(COLUMN_UNCHANGED);
    else if (typeof v === "string") w.uint8(COLUMN_TEXT).countedUtf8(v);
    else w.uint8(COLUMN_BINARY).int32(v.length).bytes(v);
  }
}
