// Commit identity: a hash of the commit's canonical encoding, which covers its parent's hash, so
// equal hashes mean equal history. The encoding is built incrementally (a commit may hold more
// changes than fit in memory): a header, then one line per row change in apply order.
//
// Hashes are 20 bytes of SHA-256 written in Dolt's base32 alphabet (32 characters), so they look
// and behave like Dolt's commit hashes (prefixes work the same way).

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

function encodeValue(value: ColumnValue): unknown {
  if (value === null || typeof value === "string") return value;
  if (value === UNCHANGED_TOAST) return { unchanged: true };
  return { binary: value.toString("base64") };
}

function encodeTuple(
  columns: readonly string[],
  tuple: TupleData | undefined,
): Record<string, unknown> | null {
  if (!tuple) return null;
  // No prototype: a column named __proto__ must be a key like any other.
  const out: Record<string, unknown> = Object.create(null);
  for (let i = 0; i < columns.length; i++) out[columns[i]] = encodeValue(tuple[i]);
  return out;
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

export class CommitHasher {
  private readonly hash: Hash = createHash("sha256");

  /**
   * With a header: version 1, the header first and then the body. Without one: version 2, the
   * body alone, sealed by digestWith(header) — for a replicated transaction, whose message can
   * name schema changes found while its rows were applied.
   */
  constructor(header?: CommitHeader) {
    if (header) this.hash.update(`strata-commit 1\n${encodeHeader(header)}\n`);
  }

  /** A schema change applied to the replica (DDL replayed, or followed from a Relation message). */
  addSchemaChange(rel: string, ddl: string): void {
    this.hash.update(`${JSON.stringify(["schema", rel, ddl])}\n`);
  }

  /** The hash of a version-2 commit: its header, then the digest of its body. */
  digestWith(header: CommitHeader): string {
    const body = this.hash.digest("hex");
    return base32(
      createHash("sha256")
        .update(`strata-commit 2\n${encodeHeader(header)}\n${body}\n`)
        .digest()
        .subarray(0, 20),
    );
  }

  /** A row change exactly as it came from upstream (text or binary values, unchanged-TOAST markers). */
  addRowChange(
    rel: string,
    op: ChangeOp,
    columns: readonly string[],
    oldTuple: TupleData | undefined,
    newTuple: TupleData | undefined,
  ): void {
    this.hash.update(
      `${JSON.stringify([rel, op, encodeTuple(columns, oldTuple), encodeTuple(columns, newTuple)])}\n`,
    );
  }

  addTruncate(rels: readonly string[], cascade: boolean, restartIdentity: boolean): void {
    this.hash.update(`${JSON.stringify(["truncate", rels, cascade, restartIdentity])}\n`);
  }

  /** Start of one table's rows in a snapshot commit. */
  addSnapshotTable(rel: string, columns: readonly string[]): void {
    this.hash.update(`${JSON.stringify(["snapshot", rel, columns])}\n`);
  }

  /** End of one table's rows: its size seals where the table's bytes stop. */
  addSnapshotTableEnd(rows: number, bytes: number): void {
    this.hash.update(`\n${JSON.stringify(["end", rows, bytes])}\n`);
  }

  digest(): string {
    return base32(this.hash.digest().subarray(0, 20));
  }

  /**
   * One piece of a table's rows in a snapshot (or a table's copy when it joins mid-stream): the
   * SHA-256 of its COPY data as forwarded (CopyData messages, framing included) with its size. Chunks are added in chunk order (not the order workers finished them), between
   * addSnapshotTable and addSnapshotTableEnd, so the hash does not depend on scheduling.
   */
  addSnapshotChunk(sha256: Buffer, rows: number, bytes: number): void {
    this.hash.update(`${JSON.stringify(["chunk", sha256.toString("hex"), rows, bytes])}\n`);
  }
}
