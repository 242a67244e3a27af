// The initial snapshot: a consistent copy of every published table, taken under the snapshot that
// the replication slot exported when it was created, so that streaming from the slot's consistent
// point continues exactly where the copy ends — no gap, no duplicate — while the primary keeps
// taking writes.
//
//   CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT   (replication connection, then left idle)
//        │ snapshot name, consistent point
//        ▼
//   primary: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT; COPY (SELECT published columns
//            FROM t WHERE row filter) TO STDOUT          ──text rows──▶  store: COPY t FROM STDIN
//        ▼
//   store, one transaction: tables (created from the primary's catalog when missing), their rows,
//   the rows as history, one commit "initial snapshot at <LSN>", the source position
//
// Tables are copied one after another into that single store transaction, which is what makes the
// snapshot atomic: a crash mid-copy leaves nothing behind, and the next start drops the slot and
// begins again (see the bootstrap marker in replicator.ts).
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import pg from "pg";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import { insertCommitRow } from "../apply/applier.ts";
import { ApplyError, explainStoreError } from "../apply/errors.ts";
import { ensureHistoryView, quoteIdent } from "../apply/target-table.ts";
import { CommitHasher, type CommitHeader } from "../commits/hash.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import type { Logger } from "../log.ts";
import { formatLsn } from "../protocol/lsn.ts";
import { describeUpstreamType, upstreamConnectionConfig } from "./setup.ts";

export interface PublishedTable {
  schema: string;
  name: string;
  /** Published columns (a column list on PostgreSQL 15+), in table order. */
  columns: string[];
  /** The publication's row filter (PostgreSQL 15+), as SQL, or null. */
  rowFilter: string | null;
  /** A partitioned table (published through its root): copied with its partitions. */
  partitioned: boolean;
  /** Replica-identity columns (primary key or the REPLICA IDENTITY index); empty for FULL/NOTHING. */
  keyColumns: string[];
}

export interface SnapshotOptions {
  cfg: PostgresReplicationConfig;
  publication: string;
  snapshotName: string;
  consistentPoint: bigint;
  /** The apply connection to the store; the snapshot runs in one transaction on it. */
  store: pg.Client;
  history: boolean;
  parent: { seq: bigint; hash: string | null };
  committer: string;
  email: string;
  log: Logger;
  /** Checked between tables: a stop abandons the snapshot (it starts over at the next start). */
  shouldStop: () => boolean;
}

export interface SnapshotResult {
  tables: number;
  rows: number;
  bytes: number;
  committed: boolean;
}

async function publishedTables(primary: pg.Client, publication: string): Promise<PublishedTable[]> {
  const version = Number((await primary.query("SHOW server_version_num")).rows[0].server_version_num);
  // Column lists and row filters exist from PostgreSQL 15 on.
  const extra =
    version >= 150000
      ? ", attnames::text[] AS attnames, rowfilter"
      : ", NULL::text[] AS attnames, NULL::text AS rowfilter";
  const { rows } = await primary.query<{
    schemaname: string;
    tablename: string;
    attnames: string[] | null;
    rowfilter: string | null;
  }>(
    `SELECT schemaname, tablename${extra} FROM pg_publication_tables WHERE pubname = $1 ORDER BY schemaname, tablename`,
    [publication],
  );
  const tables: PublishedTable[] = [];
  for (const r of rows) {
    const cols = await primary.query<{ attname: string }>(
      `SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum`,
      [`${quoteIdent(r.schemaname)}.${quoteIdent(r.tablename)}`],
    );
    const all = cols.rows.map((c) => c.attname);
    // History keys follow the replica identity, exactly as the streamed changes' keys do.
    const { rows: ident } = await primary.query<{ relkind: string; keys: string[] | null }>(
      `SELECT c.relkind,
              (SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                WHERE i.indrelid = c.oid
                  AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))) AS keys
         FROM pg_class c WHERE c.oid = to_regclass($1)`,
      [`${quoteIdent(r.schemaname)}.${quoteIdent(r.tablename)}`],
    );
    const listed = r.attnames ? new Set(r.attnames) : undefined;
    tables.push({
      schema: r.schemaname,
      name: r.tablename,
      columns: listed ? all.filter((c) => listed.has(c)) : all,
      rowFilter: r.rowfilter,
      partitioned: ident[0]?.relkind === "p",
      keyColumns: ident[0]?.keys ?? [],
    });
  }
  return tables;
}

/** CREATE TABLE (and its indexes) for `table` from the primary's catalog: types with typmods, NOT NULL, keys, unique constraints, indexes. */
async function createReplicaTable(
  primary: pg.Client,
  store: pg.Client,
  table: PublishedTable,
  cfg: PostgresReplicationConfig,
): Promise<void> {
  const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
  const { rows: cols } = await primary.query<{
    attname: string;
    type: string;
    notnull: boolean;
    typtype: string;
    typid: number;
    typns: string;
    typname: string;
    basetype: string;
  }>(
    `SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull, t.typtype, t.oid::int AS typid,
            n.nspname AS typns, t.typname, format_type(t.typbasetype, t.typtypmod) AS basetype
       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum`,
    [qualified],
  );
  const published = new Set(table.columns);
  const defs: string[] = [];
  for (const c of cols.filter((col) => published.has(col.attname))) {
    let type = c.type;
    if (c.typtype === "e") {
      type = `${quoteIdent(c.typns)}.${quoteIdent(c.typname)}`;
      const exists = await store.query("SELECT to_regtype($1) IS NOT NULL AS ok", [type]);
      if (!exists.rows[0].ok) {
        const ddl = await describeUpstreamType(cfg, c.typid, type);
        if (ddl) {
          await store.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(c.typns)}`);
          await store.query(ddl);
        }
      }
    } else if (c.typtype === "d") {
      type = c.basetype; // domains replicate as their base type
    }
    defs.push(`${quoteIdent(c.attname)} ${type}${c.notnull ? " NOT NULL" : ""}`);
  }
  const { rows: constraints } = await primary.query<{ def: string }>(
    "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY contype, conname",
    [qualified],
  );
  for (const con of constraints) defs.push(con.def);
  await store.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(table.schema)}`);
  await store.query(`CREATE TABLE ${qualified} (${defs.join(", ")})`);
  // Other indexes: same definitions (they name the same schema and table on the replica).
  const { rows: indexes } = await primary.query<{ def: string }>(
    `SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
      WHERE i.indrelid = $1::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)`,
    [qualified],
  );
  for (const index of indexes) {
    await store.query(index.def).catch((err: Error) => {
      throw new ApplyError(
        `cannot create index on the replica for ${table.schema}.${table.name} (${index.def}): ${err.message}`,
        "create an equivalent index on the replica by hand, or drop it on the primary, then restart Strata",
      );
    });
  }
}

async function replicaHasRows(store: pg.Client, qualified: string): Promise<boolean | undefined> {
  const exists = await store.query("SELECT to_regclass($1) IS NOT NULL AS ok", [qualified]);
  if (!exists.rows[0].ok) return undefined;
  const { rowCount } = await store.query(`SELECT 1 FROM ${qualified} LIMIT 1`);
  return Boolean(rowCount);
}

/** Counts lines and bytes of a COPY text stream, and feeds them to the commit hash. */
function meter(onChunk: (chunk: Buffer) => void) {
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      onChunk(chunk);
      done(null, chunk);
    },
  });
}

export async function copyInitialSnapshot(opts: SnapshotOptions): Promise<SnapshotResult> {
  const { cfg, store, log } = opts;
  const primary = await connect(upstreamConnectionConfig(cfg));
  const lsn = formatLsn(opts.consistentPoint);
  const date = new Date().toISOString().replace("Z", "000Z");
  const message = `initial snapshot at ${lsn}`;
  const seq = opts.parent.seq + 1n;
  const header: CommitHeader = {
    parentHash: opts.parent.hash,
    committer: opts.committer,
    email: opts.email,
    date,
    message,
    upstreamEndLsn: opts.consistentPoint,
  };
  const hasher = new CommitHasher(header);
  const result: SnapshotResult = { tables: 0, rows: 0, bytes: 0, committed: false };
  const started = Date.now();
  try {
    await primary.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    await primary.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(opts.snapshotName)}`);
    const tables = await publishedTables(primary, opts.publication);
    // As pg_dump does: from here on no table-rewriting DDL (whose old rows this snapshot could
    // no longer see) can commit on a table until it is copied.
    if (tables.length > 0) {
      await primary.query(
        `LOCK TABLE ${tables.map((t) => `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`).join(", ")} IN ACCESS SHARE MODE`,
      );
    }
    log.info(
      { tables: tables.length, consistent_point: lsn },
      "initial snapshot: copying the published tables",
    );
    await store.query("BEGIN");
    for (const table of tables) {
      if (opts.shouldStop())
        throw new Error("stopped during the initial snapshot; it starts over at the next start");
      const qualified = `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
      const hasRows = await replicaHasRows(store, qualified);
      if (hasRows) {
        throw new ApplyError(
          `the replica table ${table.schema}.${table.name} already has rows, and an initial snapshot copies into empty tables`,
          "empty the replica table, or seed the replica yourself and name the dump's WAL location in .doltcfg/pg_wal_location",
          { table: `${table.schema}.${table.name}` },
        );
      }
      if (hasRows === undefined) {
        await createReplicaTable(primary, store, table, cfg).catch((err) => {
          throw explainStoreError(err, `${table.schema}.${table.name}`);
        });
      }
      const cols = table.columns.map(quoteIdent).join(", ");
      const where = table.rowFilter ? ` WHERE ${table.rowFilter}` : "";
      const tableStarted = Date.now();
      let bytes = 0;
      let lines = 0;
      hasher.addSnapshotTable(`${table.schema}.${table.name}`, table.columns);
      await pipeline(
        primary.query(
          copyTo(
            `COPY (SELECT ${cols} FROM ${table.partitioned ? "" : "ONLY "}${qualified}${where}) TO STDOUT`,
          ),
        ),
        meter((chunk) => {
          bytes += chunk.length;
          for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
          hasher.addSnapshotData(chunk);
        }),
        store.query(copyFrom(`COPY ${qualified} (${cols}) FROM STDIN`)),
      );
      hasher.addSnapshotTableEnd(lines, bytes);
      if (opts.history && lines > 0) {
        const key = table.keyColumns.length
          ? `jsonb_build_object(${table.keyColumns.map((k) => `${pg.escapeLiteral(k)}, strata_t.${quoteIdent(k)}`).join(", ")})`
          : "NULL::jsonb";
        await store.query(
          `INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, new_row)
           SELECT $1::bigint, $2::int, $3::text, 'I', ${key}, to_jsonb(strata_t.*) FROM ${qualified} strata_t`,
          [String(seq), result.tables, `${table.schema}.${table.name}`],
        );
      }
      if (opts.history) await ensureHistoryView(store, table.schema, table.name);
      const seconds = (Date.now() - tableStarted) / 1000;
      log.info(
        {
          table: `${table.schema}.${table.name}`,
          rows: lines,
          bytes,
          seconds: Number(seconds.toFixed(2)),
          rows_per_second: seconds > 0 ? Math.round(lines / seconds) : lines,
        },
        "initial snapshot: table copied",
      );
      result.tables++;
      result.rows += lines;
      result.bytes += bytes;
    }
    if (opts.history && result.rows > 0) {
      await insertCommitRow(store, { ...header, seq, hash: hasher.digest() });
      result.committed = true;
    }
    await store.query(
      `INSERT INTO strata.source_position (slot_name, end_lsn) VALUES ($1, $2)
       ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, updated_at = clock_timestamp()`,
      [cfg.slot_name, lsn],
    );
    await store.query("COMMIT");
    const seconds = (Date.now() - started) / 1000;
    log.info(
      {
        tables: result.tables,
        rows: result.rows,
        bytes: result.bytes,
        seconds: Number(seconds.toFixed(2)),
        consistent_point: lsn,
      },
      "initial snapshot complete",
    );
    return result;
  } catch (err) {
    await store.query("ROLLBACK").catch(() => {});
    throw err;
  } finally {
    await primary.query("COMMIT").catch(() => {});
    await primary.end().catch(() => {});
  }
}
