// The streaming replication protocol's CopyData payloads (Postgres docs, "Streaming Replication
// Protocol", START_REPLICATION): what the walsender sends ('w' XLogData, 'k' Primary keepalive)
// and what the client answers ('r' Standby status update).
//
//   CopyData ─► decodeReplicationMessage ─► XLogData.data ─► pgoutput.ts ─► apply
//                                          └► PrimaryKeepalive ─► reply if requested
//
// This layer only frames: XLogData.data is handed on as a view into the received payload, never
// parsed or copied here. Reassembling CopyData from socket chunks is the transport's job
// (pg-protocol); this module sees one complete payload at a time.
import {
  type PrimaryKeepalive,
  ProtocolError,
  type ReplicationMessage,
  type StandbyStatusUpdate,
  type XLogData,
} from "./messages.ts";
import { BufferReader, BufferWriter } from "./reader.ts";

const XLOG_DATA = 0x77; // 'w'
const PRIMARY_KEEPALIVE = 0x6b; // 'k'
const STANDBY_STATUS_UPDATE = 0x72; // 'r'

/** Header of 'w': tag, walStart, walEnd, sendTime. */
export const XLOG_DATA_HEADER_LENGTH = 25;
export const PRIMARY_KEEPALIVE_LENGTH = 18;
export const STANDBY_STATUS_UPDATE_LENGTH = 34;

/** Decode one CopyData payload received during START_REPLICATION. */
export function decodeReplicationMessage(payload: Buffer): ReplicationMessage {
  if (payload.length === 0)
    throw new ProtocolError("replication message: empty CopyData payload at offset 0");
  const tag = payload[0];
  switch (tag) {
    case XLOG_DATA:
      return decodeXLogData(payload);
    case PRIMARY_KEEPALIVE:
      return decodePrimaryKeepalive(payload);
    default:
      throw new ProtocolError(
        `replication message: unknown message type ${describeByte(tag)} at offset 0 (expected 'w' XLogData or 'k' keepalive)`,
      );
  }
}

export function decodeXLogData(payload: Buffer): XLogData {
  const r = new BufferReader(payload, "replication XLogData ('w')", 1);
  const walStart = r.uint64();
  const walEnd = r.uint64();
  const sendTime = r.int64();
  return { tag: "XLogData", walStart, walEnd, sendTime, data: r.rest() };
}

export function decodePrimaryKeepalive(payload: Buffer): PrimaryKeepalive {
  const r = new BufferReader(payload, "replication Primary keepalive ('k')", 1);
  const walEnd = r.uint64();
  const sendTime = r.int64();
  const replyRequested = r.uint8() !== 0;
  r.expectEnd();
  return { tag: "PrimaryKeepalive", walEnd, sendTime, replyRequested };
}

/** Decode a client's 'r' message (the server side of Strata-to-Strata replication, and tests). */
export function decodeStandbyStatusUpdate(payload: Buffer): StandbyStatusUpdate {
  if (payload.length === 0 || payload[0] !== STANDBY_STATUS_UPDATE) {
    throw new ProtocolError(
      `replication Standby status update: expected type 'r' at offset 0, got ${payload.length === 0 ? "an empty payload" : describeByte(payload[0])}`,
    );
  }
  const r = new BufferReader(payload, "replication Standby status update ('r')", 1);
  const written = r.uint64();
  const flushed = r.uint64();
  const applied = r.uint64();
  const sendTime = r.int64();
  const replyRequested = r.uint8() !== 0;
  r.expectEnd();
  return { written, flushed, applied, sendTime, replyRequested };
}

export function encodeStandbyStatusUpdate(u: StandbyStatusUpdate): Buffer {
  return new BufferWriter(STANDBY_STATUS_UPDATE_LENGTH)
    .uint8(STANDBY_STATUS_UPDATE)
    .uint64(u.written)
    .uint64(u.flushed)
    .uint64(u.applied)
    .int64(u.sendTime)
    .uint8(u.replyRequested ? 1 : 0)
    .finish();
}

export function encodeXLogData(m: Omit<XLogData, "tag">): Buffer {
  return new BufferWriter(XLOG_DATA_HEADER_LENGTH + m.data.length)
    .uint8(XLOG_DATA)
    .uint64(m.walStart)
    .uint64(m.walEnd)
    .int64(m.sendTime)
    .bytes(m.data)
    .finish();
}

export function encodePrimaryKeepalive(m: Omit<PrimaryKeepalive, "tag">): Buffer {
  return new BufferWriter(PRIMARY_KEEPALIVE_LENGTH)
    .uint8(PRIMARY_KEEPALIVE)
    .uint64(m.walEnd)
    .int64(m.sendTime)
    .uint8(m.replyRequested ? 1 : 0)
    .finish();
}

export function encodeReplicationMessage(m: ReplicationMessage): Buffer {
  switch (m.tag) {
    case "XLogData":
      return encodeXLogData(m);
    case "PrimaryKeepalive":
      return encodePrimaryKeepalive(m);
    default: {
      const unknown: never = m;
      throw new ProtocolError(
        `replication message: cannot encode unknown tag ${JSON.stringify((unknown as { tag: unknown }).tag)}`,
      );
    }
  }
}

/** 'w' (0x77) — printable bytes shown as characters, others as hex only. */
export function describeByte(b: number): string {
  const hex = `0x${b.toString(16).padStart(2, "0")}`;
  return b >= 0x20 && b < 0x7f ? `'${String.fromCharCode(b)}' (${hex})` : hex;
}
