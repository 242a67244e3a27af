// Copying one table that joins the replica mid-stream: a table created on the primary after the
// initial snapshot, or one added to the publication (ALTER PUBLICATION ... ADD TABLE). The table
// is held meanwhile (apply/held-tables.ts): the stream goes on for every other table, and this
// one's changes wait aside until the copy has committed.
//
//   replication connection: CREATE_REPLICATION_SLOT <temp> TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT
//        │ snapshot name, consistent point S
//        ▼
//   primary: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT; COPY (published columns, row filter)
//        ──CopyData messages, forwarded as read (copy-forward.ts)──▶ store, a transaction of its own: TRUNCATE, COPY into the replica table,
//                        strata.held_tables records S and the copy's figures, COMMIT
//
// The copy holds every change to the table committed before S, so the replay skips the held
// changes whose commit LSN is below S, and so does the stream afterwards (as PostgreSQL's table
// sync does with its sync LSN). A crash mid-copy rolls the copy back; the next start copies again
// under a new snapshot. The temporary slot goes away with its connection.
import { createHash } from "node:crypto";
import pg from "pg";
import { type HeldCopy, recordHeldCopy } from "../apply/held-tables.ts";
import { quoteIdent } from "../apply/schema-follow.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import type { RelationMessage } from "../protocol/messages.ts";
import { ReplicationConnection } from "./connection.ts";
import { forwardCopy } from "./copy-forward.ts";
import { upstreamConnectionConfig } from "./setup.ts";

/**
 * A test hook: a pause before a joining table's copy commits, so that a test can watch the stream
 * go on (or kill Strata) while a copy runs, however fast the copy is. Never set in production.
 */
const PAUSE_BEFORE_COMMIT_MS = Number(process.env.STRATA_TEST_TABLE_SYNC_PAUSE_MS ?? 0);

export interface JoiningTableCopy {
  cfg: PostgresReplicationConfig;
  publication: string;
  slot: string;
  relid: number;
  /** The Relation message the table was held under: its columns are the ones copied. */
  relation: RelationMessage;
  storeConfig: pg.ClientConfig;
  /** Aborting closes the copy's connections (the store rolls the copy back). */
  signal: AbortSignal;
}

export async function copyJoiningTable(job: JoiningTableCopy): Promise<HeldCopy> {
  const { cfg, relation } = job;
  const opened: { end(): Promise<void> }[] = [];
  const closeAll = () => Promise.all(opened.map((c) => c.end().catch(() => {})));
  const onAbort = () => void closeAll();
  job.signal.addEventListener("abort", onAbort, { once: true });
  try {
    const repl = await ReplicationConnection.open(upstreamConnectionConfig(cfg));
    opened.push({ end: () => repl.close() });
    const slot = `strata_sync_${process.pid}_${relation.relationOid}`.slice(0, 63);
    const created = await repl.createSlot(slot, true, true);
    const primary = await connect(upstreamConnectionConfig(cfg));
    opened.push(primary);
    const store = await connect(job.storeConfig);
    opened.push(store);
    if (job.signal.aborted) throw new Error("the copy was stopped");
    await store.query("SET session_replication_role = replica").catch(() => {});
    await primary.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    await primary.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(created.snapshotName ?? "")}`);
    const target = `${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)}`;
    const cols = relation.columns.map((c) => quoteIdent(c.name)).join(", ");
    await store.query("BEGIN");
    await store.query(`TRUNCATE ${target}`);
    const sha = createHash("sha256");
    let bytes = 0;
    let rows = 0;
    const source = await copySource(primary, job.publication, relation.relationOid, cols);
    if (source) {
      const copied = await forwardCopy(
        primary,
        `COPY (${source}) TO STDOUT`,
        store,
        `COPY ${target} (${cols}) FROM STDIN`,
        (framed) => sha.update(framed),
      );
      rows = copied.rows;
      bytes = copied.bytes;
    }
    const copy: HeldCopy = { lsn: created.consistentPoint, rows, bytes, sha256: sha.digest() };
    await recordHeldCopy(store, job.slot, job.relid, copy);
    if (PAUSE_BEFORE_COMMIT_MS > 0) await new Promise((r) => setTimeout(r, PAUSE_BEFORE_COMMIT_MS));
    if (job.signal.aborted) throw new Error("the copy was stopped");
    await store.query("COMMIT");
    return copy;
  } finally {
    job.signal.removeEventListener("abort", onAbort);
    await closeAll();
  }
}

/** The SELECT that copies the table (by oid: it may have been renamed since), or none if it is gone. */
async function copySource(
  primary: pg.Client,
  publication: string,
  relid: number,
  cols: string,
): Promise<string | undefined> {
  const { rows } = await primary.query<{ schema: string; name: string; relkind: string }>(
    `SELECT n.nspname AS schema, c.relname AS name, c.relkind FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1`,
    [relid],
  );
  const table = rows[0];
  if (!table) return undefined;
  const version = Number((await primary.query("SHOW server_version_num")).rows[0].server_version_num);
  let where = "";
  if (version >= 150000) {
    const filter = await primary.query<{ rowfilter: string | null }>(
      "SELECT rowfilter FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
      [publication, table.schema, table.name],
    );
    if (filter.rows[0]?.rowfilter) where = ` WHERE ${filter.rows[0].rowfilter}`;
  }
  const from = `${table.relkind === "p" ? "" : "ONLY "}${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
  return `SELECT ${cols} FROM ${from}${where}`;
}
