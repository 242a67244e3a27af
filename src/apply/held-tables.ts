// Held tables: an upstream table whose changes are kept aside, in order, instead of applied, while
// the rest of the stream goes on. Two reasons:
//
//   schema   a change to it could not be applied (a schema change Strata cannot follow, a row the
//            replica lacks): it waits for the remedy the error names, retried every few seconds.
//   joining  it joined the replica mid-stream and its rows are being copied in the background.
//
//   stream ──change to a held table──▶ strata.held_changes (raw pgoutput, same store transaction
//                                      as the batch: durable with the position)
//   remedy applied / copy committed ──▶ replay: the held changes, oldest first, each upstream
//                                      transaction as a commit of its own, in chunks; the table
//                                      is released in the transaction that applies the last one.
//
// Held changes are the raw pgoutput messages (and the Relation message in effect before them), so
// a replay decodes exactly what the stream carried: unchanged TOAST, binary values, DDL messages.
import type pg from "pg";
import { formatLsn, parseLsn } from "../protocol/lsn.ts";

export type HoldReason = "schema" | "joining" | "catching up";

export interface HeldTable {
  relid: number;
  rel: string;
  reason: HoldReason;
  error: string | null;
}

export interface HeldCopy {
  lsn: bigint;
  rows: number;
  bytes: number;
  sha256: Buffer;
}

/** A committed copy, with the Relation message it selected by. */
export interface RecordedCopy extends HeldCopy {
  relation: Buffer;
}

/** One held message: a Relation ('R') or a change ('C': row change, truncate, DDL message). */
export interface HeldMessage {
  id: string;
  kind: "R" | "C";
  xid: number;
  commitLsn: bigint;
  commitTime: bigint;
  inStream: boolean;
  message: Buffer;
}

export const HELD_TABLES_SQL = `
CREATE TABLE IF NOT EXISTS strata.held_tables (
  slot_name text NOT NULL,
  relid oid NOT NULL,
  rel text NOT NULL,
  reason text NOT NULL,
  error text,
  -- joining: the Relation message the copy selects by, then the copy's figures once it committed
  relation bytea,
  copied_lsn pg_lsn,
  copied_rows bigint,
  copied_bytes bigint,
  copied_sha256 bytea,
  held_since_lsn pg_lsn,
  held_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (slot_name, relid)
);
CREATE TABLE IF NOT EXISTS strata.held_changes (
  slot_name text NOT NULL,
  relid oid NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  kind "char" NOT NULL,
  xid bigint NOT NULL,
  commit_lsn pg_lsn NOT NULL,
  commit_time bigint NOT NULL,
  in_stream boolean NOT NULL,
  message bytea NOT NULL,
  PRIMARY KEY (slot_name, relid, id)
);
CREATE OR REPLACE VIEW dolt.dolt_replication_held_tables AS
  SELECT h.slot_name, h.rel AS table_name, h.reason, h.error, h.held_since_lsn, h.held_at,
         (SELECT count(*) FROM strata.held_changes c
           WHERE c.slot_name = h.slot_name AND c.relid = h.relid AND c.kind = 'C') AS held_changes,
         h.copied_lsn, h.copied_rows
    FROM strata.held_tables h;
`;

export async function loadHeldTables(client: pg.Client, slot: string): Promise<HeldTable[]> {
  const { rows } = await client.query<{
    relid: string;
    rel: string;
    reason: HoldReason;
    error: string | null;
  }>("SELECT relid::text, rel, reason, error FROM strata.held_tables WHERE slot_name = $1 ORDER BY held_at", [
    slot,
  ]);
  return rows.map((r) => ({ ...r, relid: Number(r.relid) }));
}

/** Start holding a table (or update why it is held). */
export async function holdTable(
  client: pg.Client,
  slot: string,
  table: HeldTable,
  since: bigint,
  relation?: Buffer,
): Promise<void> {
  await client.query(
    `INSERT INTO strata.held_tables (slot_name, relid, rel, reason, error, relation, held_since_lsn)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (slot_name, relid) DO UPDATE SET rel = excluded.rel, reason = excluded.reason, error = excluded.error,
       relation = coalesce(excluded.relation, strata.held_tables.relation)`,
    [slot, table.relid, table.rel, table.reason, table.error, relation ?? null, formatLsn(since)],
  );
}

export async function setHoldError(client: pg.Client, slot: string, relid: number, error: string | null) {
  await client.query("UPDATE strata.held_tables SET error = $3 WHERE slot_name = $1 AND relid = $2", [
    slot,
    relid,
    error,
  ]);
}

export async function setHoldReason(client: pg.Client, slot: string, relid: number, reason: HoldReason) {
  await client.query("UPDATE strata.held_tables SET reason = $3 WHERE slot_name = $1 AND relid = $2", [
    slot,
    relid,
    reason,
  ]);
}

/** Statement and parameters that keep one message of a held table (sent with the batch). */
export function holdMessageQuery(
  slot: string,
  relid: number,
  kind: "R" | "C",
  meta: { xid: number; commitLsn: bigint; commitTime: bigint },
  inStream: boolean,
  message: Buffer,
): { text: string; values: unknown[] } {
  return {
    text: `INSERT INTO strata.held_changes (slot_name, relid, kind, xid, commit_lsn, commit_time, in_stream, message)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    values: [
      slot,
      relid,
      kind,
      meta.xid,
      formatLsn(meta.commitLsn),
      String(meta.commitTime),
      inStream,
      message,
    ],
  };
}

/** The oldest held messages of a table: at most `limit` + 1, so the caller knows if more wait. */
export async function readHeldMessages(
  client: pg.Client,
  slot: string,
  relid: number,
  limit: number,
): Promise<HeldMessage[]> {
  const { rows } = await client.query<{
    id: string;
    kind: "R" | "C";
    xid: string;
    commit_lsn: string;
    commit_time: string;
    in_stream: boolean;
    message: Buffer;
  }>(
    // Ordered by the column, not the text output of the same name (which sorts "10" before "9").
    `SELECT h.id::text, h.kind, h.xid::text, h.commit_lsn::text, h.commit_time::text, h.in_stream, h.message
       FROM strata.held_changes h WHERE h.slot_name = $1 AND h.relid = $2 ORDER BY h.id LIMIT $3`,
    [slot, relid, limit + 1],
  );
  return rows.map((r) => ({
    id: r.id,
    kind: r.kind,
    xid: Number(r.xid),
    commitLsn: parseLsn(r.commit_lsn),
    commitTime: BigInt(r.commit_time),
    inStream: r.in_stream,
    message: r.message,
  }));
}

/**
 * Forget held messages up to `lastId`, keeping the last Relation message among them (`keepId`):
 * the changes held after them need the description they were sent under.
 */
export async function dropHeldMessages(
  client: pg.Client,
  slot: string,
  relid: number,
  lastId: string,
  keepId: string | undefined,
): Promise<void> {
  await client.query(
    "DELETE FROM strata.held_changes WHERE slot_name = $1 AND relid = $2 AND id <= $3 AND id IS DISTINCT FROM $4::bigint",
    [slot, relid, lastId, keepId ?? null],
  );
}

/** Whether changes (not only a kept description) still wait. */
export async function hasHeldChanges(client: pg.Client, slot: string, relid: number): Promise<boolean> {
  const { rowCount } = await client.query(
    "SELECT 1 FROM strata.held_changes WHERE slot_name = $1 AND relid = $2 AND kind = 'C' LIMIT 1",
    [slot, relid],
  );
  return Boolean(rowCount);
}

export async function releaseTable(client: pg.Client, slot: string, relid: number): Promise<void> {
  await client.query("DELETE FROM strata.held_changes WHERE slot_name = $1 AND relid = $2", [slot, relid]);
  await client.query("DELETE FROM strata.held_tables WHERE slot_name = $1 AND relid = $2", [slot, relid]);
}

/** A joining table's copy, once it committed, with the Relation message it selected by. */
export async function readHeldCopy(
  client: pg.Client,
  slot: string,
  relid: number,
): Promise<RecordedCopy | undefined> {
  const { rows } = await client.query<{
    lsn: string | null;
    rows: string;
    bytes: string;
    sha: Buffer;
    relation: Buffer;
  }>(
    `SELECT copied_lsn::text AS lsn, copied_rows AS rows, copied_bytes AS bytes, copied_sha256 AS sha, relation
       FROM strata.held_tables WHERE slot_name = $1 AND relid = $2`,
    [slot, relid],
  );
  const row = rows[0];
  if (!row?.lsn) return undefined;
  return {
    lsn: parseLsn(row.lsn),
    rows: Number(row.rows),
    bytes: Number(row.bytes),
    sha256: row.sha,
    relation: row.relation,
  };
}

/** Joining tables whose copy has not committed yet, with the Relation message to copy by. */
export async function pendingCopies(
  client: pg.Client,
  slot: string,
): Promise<{ relid: number; rel: string; relation: Buffer }[]> {
  const { rows } = await client.query<{ relid: string; rel: string; relation: Buffer }>(
    `SELECT relid::text, rel, relation FROM strata.held_tables
      WHERE slot_name = $1 AND reason = 'joining' AND copied_lsn IS NULL AND relation IS NOT NULL`,
    [slot],
  );
  return rows.map((r) => ({ ...r, relid: Number(r.relid) }));
}

/** Record a finished copy (inside the copy's own store transaction). */
export async function recordHeldCopy(client: pg.Client, slot: string, relid: number, copy: HeldCopy) {
  await client.query(
    `UPDATE strata.held_tables SET copied_lsn = $3, copied_rows = $4, copied_bytes = $5, copied_sha256 = $6, error = NULL
      WHERE slot_name = $1 AND relid = $2`,
    [slot, relid, formatLsn(copy.lsn), copy.rows, copy.bytes, copy.sha256],
  );
}

/**
 * Compare the publication's tables now with the tables the replica knows: mark those gone from
 * it, and return the known ones that are back after being gone (they are copied anew).
 */
export async function notePublicationMembers(
  client: pg.Client,
  slot: string,
  published: number[],
): Promise<number[]> {
  await client.query(
    `UPDATE strata.upstream_tables SET unpublished_at = clock_timestamp()
      WHERE slot_name = $1 AND unpublished_at IS NULL AND NOT (relid::bigint = ANY ($2::bigint[]))`,
    [slot, published],
  );
  const { rows } = await client.query<{ relid: string }>(
    `SELECT relid::text FROM strata.upstream_tables
      WHERE slot_name = $1 AND unpublished_at IS NOT NULL AND relid::bigint = ANY ($2::bigint[])`,
    [slot, published],
  );
  return rows.map((r) => Number(r.relid));
}
