// Commit identity: a hash of the commit's canonical encoding, which covers its parent's hash, so
// equal hashes mean equal history. The encoding is built incrementally (a commit may hold more
// changes than fit in memory): a header, then one line per row change in apply order.
//
// Hashes are 20 bytes of SHA-256 written in Dolt's base32 alphabet (32 characters), so they look
// and behave like Dolt's commit hashes (prefixes work the same way).

import * as crypto from "node:crypto";
import { createHash, type Hash } from "node:crypto";
import { formatLsn } from "../protocol/lsn.ts";
import { type ColumnValue, type TupleData, UNCHANGED_TOAST } from "../protocol/messages.ts";

const ALPHABET = "0123456789abcdefghijklmnopqrstuv";

export function base32(bytes: Uint8Array): string {
  let out = "";
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
    buffer &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(buffer << (5 - bits)) & 31];
  return out;
}

export interface CommitHeader {
  parentHash: string | null;
  committer: string;
  email: string;
  /** ISO-8601 with microseconds. */
  date: string;
  message: string;
  upstreamXid?: number;
  upstreamCommitLsn?: bigint;
  upstreamEndLsn?: bigint;
}

export type ChangeOp = "I" | "U" | "D" | "T";

/** A value as the encoding has it (JSON text). */
function valueJson(value: ColumnValue): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (value === null) return "null";
  if (value === UNCHANGED_TOAST) return '{"unchanged":true}';
  return `{"binary":"${value.toString("base64")}"}`;
}

/**
 * How a tuple of these columns is written: the order of the columns and each one's `"name":`.
 * The encoding was defined as JSON.stringify of an object with a property per column, and an
 * object lists integer-like names ("2", "10") first, in numeric order, then the rest in column
 * order: kept so, or every hash would change.
 */
interface TupleLayout {
  order: number[];
  prefixes: string[];
}

const layouts = new WeakMap<readonly string[], TupleLayout>();

function isArrayIndex(name: string): boolean {
  return /^(?:0|[1-9][0-9]*)$/.test(name) && Number(name) < 4294967295;
}

function layoutOf(columns: readonly string[]): TupleLayout {
  let layout = layouts.get(columns);
  if (layout) return layout;
  const indices = columns.map((_, i) => i);
  const order = [
    ...indices
      .filter((i) => isArrayIndex(columns[i]))
      .sort((a, b) => Number(columns[a]) - Number(columns[b])),
    ...indices.filter((i) => !isArrayIndex(columns[i])),
  ];
  const prefixes = order.map((i, k) => `${k === 0 ? "" : ","}${JSON.stringify(columns[i])}:`);
  layout = { order, prefixes };
  layouts.set(columns, layout);
  return layout;
}

/** A tuple as JSON text, written directly: this runs for every replicated row. */
function tupleJson(columns: readonly string[], tuple: TupleData | undefined): string {
  if (!tuple) return "null";
  const { order, prefixes } = layoutOf(columns);
  let out = "{";
  for (let k = 0; k < order.length; k++) out += prefixes[k] + valueJson(tuple[order[k]]);
  return `${out}}`;
}

function encodeHeader(header: CommitHeader): string {
  return JSON.stringify([
    header.parentHash,
    header.committer,
    header.email,
    header.date,
    header.message,
    header.upstreamXid ?? null,
    header.upstreamCommitLsn === undefined ? null : formatLsn(header.upstreamCommitLsn),
    header.upstreamEndLsn === undefined ? null : formatLsn(header.upstreamEndLsn),
  ]);
}

/** Encoded lines are hashed in pieces of about this many characters. */
const PIECE_CHARS = 64 * 1024;

// One-shot SHA-256 (Node 20.12+) spares a Hash object per commit; older Node 20s make one.
type OneShotHash = (algorithm: string, data: string, outputEncoding: "buffer") => Buffer;
const oneShotHash = (crypto as { hash?: OneShotHash }).hash;

function sha256(data: string): Buffer {
  return oneShotHash ? oneShotHash("sha256", data, "buffer") : createHash("sha256").update(data).digest();
}

export class CommitHasher {
  /** Made once the encoded lines outgrow one piece; a small commit is hashed in one call. */
  private hash: Hash | undefined;
  /** Encoded lines not hashed yet (whole lines: no character is ever split from its pair). */
  private pending = "";

  /**
   * With a header: version 1, the header first and then the body. Without one: version 2, the
   * body alone, sealed by digestWith(header) — for a replicated transaction, whose message can
   * name schema changes found while its rows were applied.
   */
  constructor(header?: CommitHeader) {
    if (header) this.add(`strata-commit 1\n${encodeHeader(header)}\n`);
  }

  private add(text: string): void {
    this.pending += text;
    if (this.pending.length >= PIECE_CHARS) {
      this.hash ??= createHash("sha256");
      this.hash.update(this.pending);
      this.pending = "";
    }
  }

  /** The digest of everything added. */
  private finish(): Buffer {
    if (!this.hash) return sha256(this.pending);
    this.hash.update(this.pending);
    this.pending = "";
    return this.hash.digest();
  }

  /** A schema change applied to the replica (DDL replayed, or followed from a Relation message). */
  addSchemaChange(rel: string, ddl: string): void {
    this.add(`${JSON.stringify(["schema", rel, ddl])}\n`);
  }

  /** The hash of a version-2 commit: its header, then the digest of its body. */
  digestWith(header: CommitHeader): string {
    const body = this.finish().toString("hex");
    return base32(sha256(`strata-commit 2\n${encodeHeader(header)}\n${body}\n`).subarray(0, 20));
  }

  /** A row change exactly as it came from upstream (text or binary values, unchanged-TOAST markers). */
  addRowChange(
    rel: string,
    op: ChangeOp,
    columns: readonly string[],
    oldTuple: TupleData | undefined,
    newTuple: TupleData | undefined,
  ): void {
    this.add(
      `[${JSON.stringify(rel)},"${op}",${tupleJson(columns, oldTuple)},${tupleJson(columns, newTuple)}]\n`,
    );
  }

  /**
   * A partition dropped or detached on the primary: the root's rows within its bound left the
   * root (and moved to `into`, the detached table, when that is replicated).
   */
  addPartitionRowsLeft(rel: string, partition: string, bound: string, into: string | undefined): void {
    this.add(`${JSON.stringify(["partition-rows", rel, partition, bound, into ?? null])}\n`);
  }

  /** A table attached as a partition on the primary: its rows (as replicated) joined the root's. */
  addPartitionRowsJoined(rel: string, table: string): void {
    this.add(`${JSON.stringify(["partition-attached", rel, table])}\n`);
  }

  addTruncate(rels: readonly string[], cascade: boolean, restartIdentity: boolean): void {
    this.add(`${JSON.stringify(["truncate", rels, cascade, restartIdentity])}\n`);
  }

  /** Start of one table's rows in a snapshot commit. */
  addSnapshotTable(rel: string, columns: readonly string[]): void {
    this.add(`${JSON.stringify(["snapshot", rel, columns])}\n`);
  }

  /** End of one table's rows: its size seals where the table's bytes stop. */
  addSnapshotTableEnd(rows: number, bytes: number): void {
    this.add(`\n${JSON.stringify(["end", rows, bytes])}\n`);
  }

  digest(): string {
    return base32(this.finish().subarray(0, 20));
  }

  /**
   * One piece of a table's rows in a snapshot (or a table's copy when it joins mid-stream): the
   * SHA-256 of its COPY data as forwarded (CopyData messages, framing included) with its size. Chunks are added in chunk order (not the order workers finished them), between
   * addSnapshotTable and addSnapshotTableEnd, so the hash does not depend on scheduling.
   */
  addSnapshotChunk(sha256: Buffer, rows: number, bytes: number): void {
    this.add(`${JSON.stringify(["chunk", sha256.toString("hex"), rows, bytes])}\n`);
  }
}
