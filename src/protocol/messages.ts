// The messages of the streaming replication protocol and of pgoutput (protocol versions 1-4),
// as a discriminated union on `tag`. Pure data: decoding lives in pgoutput.ts and
// replication-messages.ts. LSNs are bigint; timestamps are microseconds since 2000-01-01 UTC
// (Postgres epoch) as bigint, converted to Date only at the edges.

/** A column value in TupleData. */
export const UNCHANGED_TOAST: unique symbol = Symbol("unchanged-toast");
export type ColumnValue = string | Buffer | null | typeof UNCHANGED_TOAST;
/** string: text format ('t'); Buffer: binary format ('b'); null ('n'); UNCHANGED_TOAST ('u'). */
export type TupleData = ColumnValue[];

export interface RelationColumn {
  /** Part of the replica identity (pgoutput flag 1). */
  isKey: boolean;
  name: string;
  typeOid: number;
  typeMod: number;
}

/** Replica identity setting: d(efault), n(othing), f(ull), i(ndex). */
export type ReplicaIdentity = "d" | "n" | "f" | "i";

// ---- pgoutput (logical replication message formats) ----
// `xid` on Relation/Type/Insert/Update/Delete/Truncate/Message is present only inside a streamed
// transaction block (between Stream Start and Stream Stop, protocol >= 2); otherwise undefined.

export interface BeginMessage {
  tag: "Begin";
  finalLsn: bigint;
  commitTime: bigint;
  xid: number;
}
export interface CommitMessage {
  tag: "Commit";
  flags: number;
  commitLsn: bigint;
  endLsn: bigint;
  commitTime: bigint;
}
export interface OriginMessage {
  tag: "Origin";
  commitLsn: bigint;
  name: string;
}
export interface RelationMessage {
  tag: "Relation";
  xid?: number;
  relationOid: number;
  namespace: string;
  name: string;
  replicaIdentity: ReplicaIdentity;
  columns: RelationColumn[];
}
export interface TypeMessage {
  tag: "Type";
  xid?: number;
  typeOid: number;
  namespace: string;
  name: string;
}
export interface InsertMessage {
  tag: "Insert";
  xid?: number;
  relationOid: number;
  newTuple: TupleData;
}
export interface UpdateMessage {
  tag: "Update";
  xid?: number;
  relationOid: number;
  /** 'K': old key columns only (others null); 'O': the whole old row (REPLICA IDENTITY FULL). */
  oldKind?: "K" | "O";
  oldTuple?: TupleData;
  newTuple: TupleData;
}
export interface DeleteMessage {
  tag: "Delete";
  xid?: number;
  relationOid: number;
  oldKind: "K" | "O";
  oldTuple: TupleData;
}
export interface TruncateMessage {
  tag: "Truncate";
  xid?: number;
  cascade: boolean;
  restartIdentity: boolean;
  relationOids: number[];
}
export interface LogicalDecodingMessage {
  tag: "Message";
  xid?: number;
  transactional: boolean;
  lsn: bigint;
  prefix: string;
  content: Buffer;
}
export interface StreamStartMessage {
  tag: "StreamStart";
  xid: number;
  firstSegment: boolean;
}
export interface StreamStopMessage {
  tag: "StreamStop";
}
export interface StreamCommitMessage {
  tag: "StreamCommit";
  xid: number;
  flags: number;
  commitLsn: bigint;
  endLsn: bigint;
  commitTime: bigint;
}
export interface StreamAbortMessage {
  tag: "StreamAbort";
  xid: number;
  subxid: number;
  /** Protocol 4 with streaming = parallel only. */
  abortLsn?: bigint;
  abortTime?: bigint;
}
export interface BeginPrepareMessage {
  tag: "BeginPrepare";
  prepareLsn: bigint;
  endLsn: bigint;
  prepareTime: bigint;
  xid: number;
  gid: string;
}
export interface PrepareMessage {
  tag: "Prepare";
  flags: number;
  prepareLsn: bigint;
  endLsn: bigint;
  prepareTime: bigint;
  xid: number;
  gid: string;
}
export interface CommitPreparedMessage {
  tag: "CommitPrepared";
  flags: number;
  commitLsn: bigint;
  endLsn: bigint;
  commitTime: bigint;
  xid: number;
  gid: string;
}
export interface RollbackPreparedMessage {
  tag: "RollbackPrepared";
  flags: number;
  prepareEndLsn: bigint;
  rollbackEndLsn: bigint;
  prepareTime: bigint;
  rollbackTime: bigint;
  xid: number;
  gid: string;
}
export interface StreamPrepareMessage {
  tag: "StreamPrepare";
  flags: number;
  prepareLsn: bigint;
  endLsn: bigint;
  prepareTime: bigint;
  xid: number;
  gid: string;
}

export type PgoutputMessage =
  | BeginMessage
  | CommitMessage
  | OriginMessage
  | RelationMessage
  | TypeMessage
  | InsertMessage
  | UpdateMessage
  | DeleteMessage
  | TruncateMessage
  | LogicalDecodingMessage
  | StreamStartMessage
  | StreamStopMessage
  | StreamCommitMessage
  | StreamAbortMessage
  | BeginPrepareMessage
  | PrepareMessage
  | CommitPreparedMessage
  | RollbackPreparedMessage
  | StreamPrepareMessage;

// ---- streaming replication protocol (CopyData payloads) ----

export interface XLogData {
  tag: "XLogData";
  walStart: bigint;
  walEnd: bigint;
  sendTime: bigint;
  /** The pgoutput message; a view into the received buffer (no copy). */
  data: Buffer;
}
export interface PrimaryKeepalive {
  tag: "PrimaryKeepalive";
  walEnd: bigint;
  sendTime: bigint;
  replyRequested: boolean;
}
export type ReplicationMessage = XLogData | PrimaryKeepalive;

export interface StandbyStatusUpdate {
  written: bigint;
  flushed: bigint;
  applied: bigint;
  sendTime: bigint;
  replyRequested: boolean;
}

/** A malformed or unexpected message from the server: definite, the stream cannot continue. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}
