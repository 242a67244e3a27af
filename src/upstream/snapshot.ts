// The initial snapshot: a consistent copy of every published table, taken under the snapshot that
// the replication slot exported when it was created, so that streaming from the slot's consistent
// point continues exactly where the copy ends — no gap, no duplicate — while the primary keeps
// taking writes.
//
//   CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT   (replication connection, then left idle, which
//        │ snapshot name, consistent point         keeps the exported snapshot importable)
//        ▼
//   plan (coordinator = worker 0): published tables, ACCESS SHARE locks, sizes ──▶ work items
//        │   (snapshot-plan.ts: leaf partitions, ctid ranges of ~snapshot_chunk_mb, largest first)
//        ▼
//   store, prepare transaction: refuse tables with rows, create missing ones, record them in
//        │   strata.snapshot_tables (the "unfinished snapshot" state)
//        ▼
//   snapshot_workers × { primary: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT
//                        COPY (SELECT columns FROM ONLY rel WHERE filter AND ctid range) TO STDOUT
//                          ──CopyData messages, forwarded as read (copy-forward.ts)──▶
//                        store, one transaction per item: COPY, history rows, COMMIT }
//        ▼
//   store, final transaction: the commit row "initial snapshot at <LSN>", the source position,
//                             strata.snapshot_tables emptied
//
// States of a snapshot, as the store records them (the next start reads them):
//   none ──prepare commits──▶ filling (rows in strata.snapshot_tables; source position absent)
//        ──final commits────▶ done (position present, snapshot_tables empty)
// A crash while filling leaves partial tables behind, so the position is written only by the
// final transaction: without it the replicator never streams, and cleanUpUnfinishedSnapshot
// empties (or drops, when the snapshot created them) the recorded tables and deletes the history
// rows of the unfinished commit before the slot is recreated and the copy starts over. Resuming
// is impossible by construction: the exported snapshot died with the replication connection.
//
// The commit hash must not depend on which worker finished first: each item's COPY data (its
// CopyData messages, framing included) is hashed on its own and the digests are combined in
// (table, chunk) order at the end.
import { createHash } from "node:crypto";
import pg from "pg";
import { insertCommitRow } from "../apply/applier.ts";
import { ApplyError, explainStoreError } from "../apply/errors.ts";
import type { TableShape } from "../apply/schema-follow.ts";
import { quoteIdent } from "../apply/target-table.ts";
import { CommitHasher, type CommitHeader } from "../commits/hash.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import { dropTableSurface, ensureTableSurface } from "../history/table-surface.ts";
import type { Logger } from "../log.ts";
import { formatLsn } from "../protocol/lsn.ts";
import { copyErrorSide, forwardCopy } from "./copy-forward.ts";
import { ProgressReporter, SnapshotProgress } from "./progress.ts";
import { describeUpstreamType, upstreamConnectionConfig } from "./setup.ts";
import {
  describeRange,
  type PlannedTable,
  planSnapshot,
  rangeCondition,
  type SourceRelation,
  type WorkItem,
} from "./snapshot-plan.ts";

export interface PublishedTable {
  schema: string;
  name: string;
  /** Published columns (a column list on PostgreSQL 15+), in table order. */
  columns: string[];
  /** The publication's row filter (PostgreSQL 15+), as SQL, or null. */
  rowFilter: string | null;
  /** A partitioned table (published through its root): copied partition by partition. */
  partitioned: boolean;
  /** Replica-identity columns (primary key or the REPLICA IDENTITY index); empty for FULL/NOTHING. */
  keyColumns: string[];
}

export interface SnapshotOptions {
  cfg: PostgresReplicationConfig;
  publication: string;
  snapshotName: string;
  consistentPoint: bigint;
  /** The apply connection to the store: the prepare and final transactions run on it. */
  store: pg.Client;
  /** How the workers connect to the store (one connection each). */
  storeConfig: pg.ClientConfig;
  history: boolean;
  parent: { seq: bigint; hash: string | null };
  committer: string;
  email: string;
  log: Logger;
  /** Checked between work items: a stop abandons the snapshot (it starts over at the next start). */
  shouldStop: () => boolean;
  /** Fed with the copy's figures (the status row reads it too). */
  progress?: SnapshotProgress;
  /** The commit message (default "initial snapshot at <LSN>"). */
  message?: string;
  /**
   * Called once the copy's size is known (bytes, on the primary), before the first row: spaces
   * out the store's checkpoints for it (src/store/bulk-load.ts). Resolves what puts them back.
   */
  spaceOutCheckpoints?: (bytes: number) => Promise<() => Promise<void>>;
}

export interface SnapshotResult {
  tables: number;
  rows: number;
  bytes: number;
  items: number;
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

/**
 * CREATE TABLE (and its indexes) for `table` from the primary's catalog: types with typmods,
 * NOT NULL, column defaults, keys, unique constraints, indexes. Defaults that draw from a sequence
 * are left out (the sequence is the primary's; a replica never generates keys), and so are
 * foreign keys (the replica applies rows in the primary's commit order, table by table during a
 * snapshot, so they could only get in the way).
 */
async function createReplicaTable(
  primary: pg.Client,
  store: pg.Client,
  table: PublishedTable,
  cfg: PostgresReplicationConfig,
  log: Logger,
): Promise<string[]> {
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
    default: string | null;
  }>(
    `SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull, t.typtype, t.oid::int AS typid,
            n.nspname AS typns, t.typname, format_type(t.typbasetype, t.typtypmod) AS basetype,
            pg_get_expr(d.adbin, d.adrelid) AS default
       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
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
      // The domain itself, created like the primary's (its checks held there, so they hold here);
      // if the replica cannot have it (say its base type is missing), the base type.
      const domain = `${quoteIdent(c.typns)}.${quoteIdent(c.typname)}`;
      const exists = await store.query("SELECT to_regtype($1) IS NOT NULL AS ok", [domain]);
      type = domain;
      if (!exists.rows[0].ok) {
        const ddl = await describeUpstreamType(cfg, c.typid, domain);
        await store.query("SAVEPOINT strata_domain");
        try {
          if (!ddl) throw new Error("not a domain Strata can describe");
          await store.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(c.typns)}`);
          await store.query(ddl);
          await store.query("RELEASE SAVEPOINT strata_domain");
        } catch (err) {
          await store.query("ROLLBACK TO SAVEPOINT strata_domain");
          log.warn(
            { domain, base: c.basetype, err: (err as Error).message },
            "initial snapshot: the replica uses the domain's base type (the domain could not be created)",
          );
          type = c.basetype;
        }
      }
    }
    defs.push(`${quoteIdent(c.attname)} ${type}${c.notnull ? " NOT NULL" : ""}`);
  }
  // Keys and indexes are built after the rows are in (as pg_restore does): one sorted build is
  // much cheaper than maintaining them row by row during the copy.
  const { rows: constraints } = await primary.query<{ name: string; def: string }>(
    "SELECT conname AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = $1::regclass AND contype IN ('p', 'u') ORDER BY contype, conname",
    [qualified],
  );
  const deferred = constraints.map(
    (con) => `ALTER TABLE ${qualified} ADD CONSTRAINT ${quoteIdent(con.name)} ${con.def}`,
  );
  await store.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(table.schema)}`);
  await store.query(`CREATE TABLE ${qualified} (${defs.join(", ")})`);
  // Each default on its own, under a savepoint: one naming a function or type the replica lacks
  // costs that default (with a warning), not the snapshot.
  for (const c of cols.filter((col) => published.has(col.attname) && col.default !== null)) {
    if (/\bnextval\s*\(/i.test(c.default!)) continue;
    await store.query("SAVEPOINT strata_default");
    try {
      await store.query(
        `ALTER TABLE ${qualified} ALTER COLUMN ${quoteIdent(c.attname)} SET DEFAULT ${c.default}`,
      );
      await store.query("RELEASE SAVEPOINT strata_default");
    } catch (err) {
      await store.query("ROLLBACK TO SAVEPOINT strata_default");
      log.warn(
        {
          table: `${table.schema}.${table.name}`,
          column: c.attname,
          default: c.default,
          err: (err as Error).message,
        },
        "initial snapshot: the replica table gets no default for this column (it does not work on the replica)",
      );
    }
  }
  // Other indexes: same definitions (they name the same schema and table on the replica).
  const { rows: indexes } = await primary.query<{ def: string }>(
    `SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
      WHERE i.indrelid = $1::regclass AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)`,
    [qualified],
  );
  const statements = [...deferred, ...indexes.map((i) => i.def)];
  // Each is tried now on the empty table and rolled back, so one the replica cannot build (an
  // operator class it lacks, say) stops the snapshot before the copy, not after it.
  for (const sql of statements) {
    await store.query("SAVEPOINT strata_try_index");
    try {
      await store.query(sql);
    } catch (err) {
      await store.query("ROLLBACK TO SAVEPOINT strata_try_index");
      throw new ApplyError(
        `cannot create a key or index on the replica for ${table.schema}.${table.name} (${sql}): ${(err as Error).message}`,
        "install what it needs on the store (an extension, an operator class), or drop it on the primary, then restart Strata",
        { table: `${table.schema}.${table.name}` },
      );
    }
    await store.query("ROLLBACK TO SAVEPOINT strata_try_index");
  }
  return statements;
}

/** Build the keys and indexes of tables the snapshot created and filled, spread over `stores`. */
async function buildDeferred(
  stores: pg.Client[],
  deferred: { table: string; statements: string[] }[],
  log: Logger,
): Promise<void> {
  const pending = deferred.filter((d) => d.statements.length > 0);
  if (pending.length === 0) return;
  const started = Date.now();
  let next = 0;
  await Promise.all(
    stores.map(async (store) => {
      for (let job = pending[next++]; job; job = pending[next++]) {
        for (const sql of job.statements) {
          await store.query(sql).catch((err: Error) => {
            throw new ApplyError(
              `cannot create a key or index on the replica for ${job.table} (${sql}): ${err.message}`,
              "install what it needs on the store (an extension, an operator class), or drop it on the primary, then restart Strata",
              { table: job.table },
            );
          });
        }
      }
    }),
  );
  log.info(
    {
      tables: pending.map((d) => d.table),
      statements: pending.reduce((n, d) => n + d.statements.length, 0),
      seconds: Number(((Date.now() - started) / 1000).toFixed(2)),
    },
    "initial snapshot: keys and indexes built",
  );
}

async function replicaHasRows(store: pg.Client, qualified: string): Promise<boolean | undefined> {
  const exists = await store.query("SELECT to_regclass($1) IS NOT NULL AS ok", [qualified]);
  if (!exists.rows[0].ok) return undefined;
  const { rowCount } = await store.query(`SELECT 1 FROM ${qualified} LIMIT 1`);
  return Boolean(rowCount);
}

const rel = (t: Pick<PublishedTable, "schema" | "name">) => `${t.schema}.${t.name}`;
const qualify = (t: Pick<PublishedTable, "schema" | "name">) =>
  `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`;

/** Each published table's oid and shape (published columns with attnums and types). */
async function upstreamShapes(
  primary: pg.Client,
  tables: PublishedTable[],
): Promise<{ oid: number; schema: string; name: string; shape: TableShape }[]> {
  const out: { oid: number; schema: string; name: string; shape: TableShape }[] = [];
  for (const table of tables) {
    const { rows } = await primary.query<{
      oid: number;
      attname: string;
      attnum: number;
      typid: number;
      typmod: number;
      type: string;
    }>(
      `SELECT a.attrelid::int AS oid, a.attname, a.attnum, a.atttypid::int AS typid, a.atttypmod AS typmod,
              format_type(a.atttypid, a.atttypmod) AS type
         FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attnum`,
      [qualify(table)],
    );
    if (rows.length === 0) continue;
    const published = new Set(table.columns);
    out.push({
      oid: rows[0].oid,
      schema: table.schema,
      name: table.name,
      shape: {
        schema: table.schema,
        name: table.name,
        columns: rows
          .filter((r) => published.has(r.attname))
          .map((r) => ({
            name: r.attname,
            attnum: r.attnum,
            typeOid: r.typid,
            typeMod: r.typmod,
            type: r.type,
          })),
      },
    });
  }
  return out;
}

/**
 * Undo an initial snapshot that never reached its final transaction (crash, kill, stop, error):
 * drop the tables it created, empty the ones it filled, delete its history rows. Returns whether
 * there was one. Run before anything else touches those tables, and never once a source position
 * exists (the final transaction removes the record together with writing the position).
 */
export async function cleanUpUnfinishedSnapshot(
  store: pg.Client,
  slot: string,
  log: Logger,
): Promise<boolean> {
  const { rows } = await store.query<{
    schema_name: string;
    table_name: string;
    created: boolean;
    commit_seq: string;
  }>(
    "SELECT schema_name, table_name, created, commit_seq FROM strata.snapshot_tables WHERE slot_name = $1 ORDER BY schema_name, table_name",
    [slot],
  );
  if (rows.length === 0) return false;
  await store.query("BEGIN");
  try {
    for (const r of rows) {
      const t = { schema: r.schema_name, name: r.table_name };
      const exists = await store.query("SELECT to_regclass($1) IS NOT NULL AS ok", [qualify(t)]);
      if (!exists.rows[0].ok) continue;
      if (r.created) {
        await dropTableSurface(store, t.schema, t.name);
        // Something made on the replica in the meantime may depend on the table: then keep it, empty.
        await store.query("SAVEPOINT strata_drop");
        try {
          await store.query(`DROP TABLE ${qualify(t)}`);
          await store.query("RELEASE SAVEPOINT strata_drop");
          continue;
        } catch {
          await store.query("ROLLBACK TO SAVEPOINT strata_drop");
        }
      }
      await store.query(`TRUNCATE ${qualify(t)}`).catch((err) => {
        throw new ApplyError(
          `cannot empty ${rel(t)}, which the unfinished initial snapshot was filling: ${(err as Error).message}`,
          `empty or drop ${rel(t)} on the replica yourself (and whatever prevents it, such as a replica-only foreign key), then restart Strata`,
          { table: rel(t) },
        );
      });
    }
    // History rows of the commit that never came to be (no commit row has that seq).
    await store.query(
      `DELETE FROM strata.changes c WHERE c.commit_seq = ANY($1::bigint[])
         AND NOT EXISTS (SELECT 1 FROM strata.commits k WHERE k.seq = c.commit_seq)`,
      [[...new Set(rows.map((r) => r.commit_seq))]],
    );
    await store.query("DELETE FROM strata.snapshot_tables WHERE slot_name = $1", [slot]);
    await store.query("COMMIT");
  } catch (err) {
    await store.query("ROLLBACK").catch(() => {});
    throw err;
  }
  log.warn(
    { tables: rows.length },
    "removed what an unfinished initial snapshot had copied into the replica; a new snapshot starts",
  );
  return true;
}

/** Where a table's rows are read from: the table, or the leaf partitions of a partitioned one. */
async function tableSources(
  primary: pg.Client,
  table: PublishedTable,
  blockSize: number,
): Promise<SourceRelation[]> {
  const { rows } = await primary.query<{
    nspname: string;
    relname: string;
    relkind: string;
    heap: string;
    total: string;
    reltuples: number;
  }>(
    table.partitioned
      ? `SELECT n.nspname, c.relname, c.relkind, pg_relation_size(c.oid) AS heap, pg_table_size(c.oid) AS total, c.reltuples
           FROM pg_partition_tree($1::regclass) p JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE p.isleaf ORDER BY n.nspname, c.relname`
      : `SELECT n.nspname, c.relname, c.relkind, pg_relation_size(c.oid) AS heap, pg_table_size(c.oid) AS total, c.reltuples
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass`,
    [qualify(table)],
  );
  return rows.map((r) => ({
    relation: `${quoteIdent(r.nspname)}.${quoteIdent(r.relname)}`,
    relkind: r.relkind,
    blocks: Math.ceil(Number(r.heap) / blockSize),
    bytes: Number(r.total),
    rows: Number(r.reltuples),
  }));
}

async function openPrimary(cfg: PostgresReplicationConfig, snapshotName: string): Promise<pg.Client> {
  const primary = await connect({ ...upstreamConnectionConfig(cfg), application_name: "strata snapshot" });
  try {
    await primary.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    await primary.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(snapshotName)}`);
  } catch (err) {
    await primary.end().catch(() => {});
    throw err;
  }
  return primary;
}

async function openStore(config: pg.ClientConfig): Promise<pg.Client> {
  const store = await connect(config);
  // As on the apply connection: replica-only triggers do not fire for replicated rows.
  await store.query("SET session_replication_role = replica").catch(() => {});
  // The pieces need not wait for their own WAL flush: the final transaction (synchronous, on
  // the apply connection) commits after them, and WAL is flushed in order, so once it is durable
  // they are too; before it, a lost piece is cleaned up like any unfinished snapshot.
  await store.query("SET synchronous_commit = off");
  return store;
}

/** Errors raised by the primary's side of a COPY (the store's are explained differently). */
const primaryErrors = new WeakSet<Error>();

function explainCopyError(err: unknown, table: string, user: string): unknown {
  if (err instanceof ApplyError) return err;
  const e = err as { code?: unknown; message?: string };
  if (err instanceof Error && primaryErrors.has(err)) {
    if (e.code === "42501") {
      return new ApplyError(
        `cannot read ${table} on the primary: ${e.message}`,
        `GRANT SELECT ON ${table} TO ${user} on the primary (on its partitions too), then restart Strata`,
        { table },
      );
    }
    // Anything else on the primary's side (a lost connection, a cancelled query) is retried.
    return new Error(`copying ${table} from the primary failed: ${e.message}`);
  }
  return typeof e.code === "string" ? explainStoreError(err, table) : err;
}

interface ItemResult {
  rows: number;
  bytes: number;
  sha256: Buffer;
}

interface CopyContext {
  tables: PublishedTable[];
  /** Items per table: one item copies straight into the table, several through a temp table. */
  itemsPerTable: number[];
  seq: bigint;
  history: boolean;
  progress: SnapshotProgress;
  /** Each table's COPY format, decided by the first of its items to be copied. */
  formats: Map<number, Promise<CopyFormat>>;
}

export type CopyFormat = "text" | "binary";

/** Type oids below this are built in, the same in every cluster (FirstNormalObjectId). */
const FIRST_NORMAL_OID = 16384;

/**
 * How a table's pieces travel. Binary COPY saves both servers the text conversion of every value
 * (about 15 % of their CPU on the pgbench tables), but a value's binary form is only read back as
 * the same value by the same type: it is used when every published column has the same built-in
 * type and typmod on both sides (so no enum, domain or extension type, whose oids differ between
 * clusters) and both servers are of the same major version. Anything else goes as text.
 */
export async function copyFormat(
  primary: pg.Client,
  store: pg.Client,
  table: PublishedTable,
): Promise<CopyFormat> {
  const sql = `SELECT current_setting('server_version_num')::int / 10000 AS major,
            coalesce(json_object_agg(a.attname, json_build_array(a.atttypid::bigint, a.atttypmod, t.typsend::oid <> 0 AND t.typreceive::oid <> 0)), '{}') AS cols
       FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
      WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attname = ANY($2::text[])`;
  type Row = { major: number; cols: Record<string, [number, number, boolean]> };
  const params = [qualify(table), table.columns];
  const [up, down] = [
    (
      await primary.query<Row>(sql, params).catch((err) => {
        primaryErrors.add(err);
        throw err;
      })
    ).rows[0],
    (await store.query<Row>(sql, params)).rows[0],
  ];
  if (up.major !== down.major) return "text";
  for (const column of table.columns) {
    const [a, b] = [up.cols[column], down.cols[column]];
    if (!a || !b || a[0] >= FIRST_NORMAL_OID || a[0] !== b[0] || a[1] !== b[1] || !a[2] || !b[2])
      return "text";
  }
  return "binary";
}

/**
 * Copy one work item in one store transaction. A keyed table needs no history rows (its snapshot
 * base stands for them). A keyless one has its rows written as history too: copied in one item,
 * the table is empty but for this transaction, so its history rows are simply its rows; split,
 * it is written by several transactions at once, so each chunk lands in a temporary table first
 * and moves on with INSERT ... RETURNING, whose rows are exactly this chunk's, as stored.
 */
async function copyItem(
  primary: pg.Client,
  store: pg.Client,
  item: WorkItem,
  ctx: CopyContext,
): Promise<ItemResult> {
  const table = ctx.tables[item.table];
  const qualified = qualify(table);
  const cols = table.columns.map(quoteIdent).join(", ");
  const conditions = [table.rowFilter && `(${table.rowFilter})`, rangeCondition(item.range)].filter(Boolean);
  const select = `SELECT ${cols} FROM ONLY ${item.relation}${conditions.length ? ` WHERE ${conditions.join(" AND ")}` : ""}`;
  // A keyed table's snapshot versions are not written as history (a snapshot base stands for
  // them: see strata.snapshot_bases), so its pieces go straight into the table; only a keyless
  // table's rows are written as history too.
  const historyRows = ctx.history && table.keyColumns.length === 0;
  const direct = !historyRows || ctx.itemsPerTable[item.table] === 1;
  const sha = createHash("sha256");
  let rows = 0;
  let bytes = 0;
  ctx.progress.itemStarted(item.table);
  await store.query("BEGIN");
  try {
    let format = ctx.formats.get(item.table);
    if (!format) {
      format = copyFormat(primary, store, table);
      ctx.formats.set(item.table, format);
    }
    const options = (await format) === "binary" ? " (FORMAT binary)" : "";
    if (!direct) {
      // Only the published columns: replica-only columns get their defaults on the way in.
      await store.query(
        `CREATE TEMP TABLE strata_snapshot_chunk ON COMMIT DROP AS SELECT ${cols} FROM ${qualified} WITH NO DATA`,
      );
    }
    // The primary's CopyData messages go to the store as they were read (one per row); the
    // digest covers them framing included, which the same rows always give the same way.
    const copied = await forwardCopy(
      primary,
      `COPY (${select}) TO STDOUT${options}`,
      store,
      `COPY ${direct ? qualified : "strata_snapshot_chunk"} (${cols}) FROM STDIN${options}`,
      (framed, r, b) => {
        rows += r;
        bytes += b;
        sha.update(framed);
        ctx.progress.add(item.table, r, b);
      },
    ).catch((err) => {
      if (copyErrorSide(err) === "source") primaryErrors.add(err);
      throw err;
    });
    if (options) {
      // Binary COPY data ends with a trailer message of its own (its header rides with the
      // first row): the primary's count (COPY n) is the rows.
      ctx.progress.add(item.table, copied.rows - rows, 0);
      rows = copied.rows;
    } else if (copied.rows !== rows) {
      // The primary's count against its CopyData messages: one per row in text format.
      throw new Error(`copying ${rel(table)}: the primary reported ${copied.rows} rows and sent ${rows}`);
    }
    if (historyRows && rows > 0) {
      const key = table.keyColumns.length
        ? `jsonb_build_object(${table.keyColumns.map((k) => `${pg.escapeLiteral(k)}, strata_t.${quoteIdent(k)}`).join(", ")})`
        : "NULL::jsonb";
      const insert = `INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, new_row)
           SELECT $1::bigint, $2::int, $3::text, 'I', ${key}, to_jsonb(strata_t.*) FROM`;
      await store.query(
        direct
          ? `${insert} ${qualified} strata_t`
          : `WITH strata_t AS (INSERT INTO ${qualified} (${cols}) SELECT ${cols} FROM strata_snapshot_chunk RETURNING *) ${insert} strata_t`,
        [String(ctx.seq), item.table, rel(table)],
      );
    }
    await store.query("COMMIT");
  } catch (err) {
    ctx.progress.add(item.table, -rows, -bytes);
    await store.query("ROLLBACK").catch(() => {});
    throw err;
  }
  return { rows, bytes, sha256: sha.digest() };
}

/**
 * A test hook: a pause after each copied piece, so that a test can kill Strata at a moment it
 * chooses in the middle of a snapshot however fast the copy is. Never set in production.
 */
const PAUSE_AFTER_ITEM_MS = Number(process.env.STRATA_TEST_SNAPSHOT_PAUSE_MS ?? 0);

export async function copyInitialSnapshot(opts: SnapshotOptions): Promise<SnapshotResult> {
  const { cfg, store, log } = opts;
  const lsn = formatLsn(opts.consistentPoint);
  const date = new Date().toISOString().replace("Z", "000Z");
  const seq = opts.parent.seq + 1n;
  const header: CommitHeader = {
    parentHash: opts.parent.hash,
    committer: opts.committer,
    email: opts.email,
    date,
    message: opts.message ?? `initial snapshot at ${lsn}`,
    // The snapshot holds every transaction that committed before its consistent point, and the
    // stream every one after: as a commit LSN, it is where `AS OF 'lsn:…'` finds the snapshot.
    upstreamCommitLsn: opts.consistentPoint,
    upstreamEndLsn: opts.consistentPoint,
  };
  const progress = opts.progress ?? new SnapshotProgress();
  const reporter = new ProgressReporter(progress, log);
  const primaries: pg.Client[] = [];
  const stores: pg.Client[] = [];
  const started = Date.now();
  let restoreCheckpoints: (() => Promise<void>) | undefined;
  try {
    // The coordinator: plans, holds the locks for the whole copy, and is worker 0.
    const coordinator = await openPrimary(cfg, opts.snapshotName);
    primaries.push(coordinator);
    const tables = await publishedTables(coordinator, opts.publication);
    // As pg_dump does: from here on no table-rewriting DDL (whose old rows this snapshot could
    // no longer see) can commit on a table until the copy ends.
    if (tables.length > 0) {
      await coordinator
        .query(`LOCK TABLE ${tables.map(qualify).join(", ")} IN ACCESS SHARE MODE`)
        .catch((err) => {
          if ((err as { code?: string }).code !== "42501") throw err;
          throw new ApplyError(
            `cannot read the published tables on the primary: ${(err as Error).message}`,
            `GRANT SELECT ON the published tables TO ${cfg.postgres_user} on the primary, then restart Strata`,
          );
        });
    }
    const settings = await coordinator.query<{ version: string; block_size: string }>(
      "SELECT current_setting('server_version_num') AS version, current_setting('block_size') AS block_size",
    );
    const blockSize = Number(settings.rows[0].block_size);
    const planned: PlannedTable[] = [];
    for (const table of tables) planned.push({ sources: await tableSources(coordinator, table, blockSize) });
    const items = planSnapshot(planned, {
      chunkBytes: cfg.snapshot_chunk_mb * 1024 * 1024,
      blockSize,
      tidRangeScans: Number(settings.rows[0].version) >= 140000,
    });
    const itemsPerTable = tables.map((_, i) => items.filter((it) => it.table === i).length);
    progress.plan(
      tables.map((t, i) => {
        const sources = planned[i].sources;
        return {
          rel: rel(t),
          rowsEstimate: sources.some((s) => s.rows < 0) ? null : sources.reduce((n, s) => n + s.rows, 0),
          bytesEstimate: sources.reduce((n, s) => n + s.bytes, 0),
          items: itemsPerTable[i],
        };
      }),
    );
    const workers = Math.max(1, Math.min(cfg.snapshot_workers, items.length));
    restoreCheckpoints = await opts.spaceOutCheckpoints?.(
      planned.reduce((n, t) => n + t.sources.reduce((m, s) => m + s.bytes, 0), 0),
    );
    log.info(
      {
        tables: tables.length,
        work_items: items.length,
        split_tables: tables.filter((_, i) => itemsPerTable[i] > 1).map(rel),
        workers,
        consistent_point: lsn,
      },
      "initial snapshot: copying the published tables",
    );

    // Prepare: refuse, create, and record what this snapshot is about to fill.
    const deferredByTable = new Map<number, { table: string; statements: string[] }>();
    await store.query("BEGIN");
    try {
      for (const table of tables) {
        const hasRows = await replicaHasRows(store, qualify(table));
        if (hasRows) {
          throw new ApplyError(
            `the replica table ${rel(table)} already has rows, and an initial snapshot copies into empty tables`,
            "empty the replica table, or seed the replica yourself and name the dump's WAL location in .doltcfg/pg_wal_location",
            { table: rel(table) },
          );
        }
        if (hasRows === undefined) {
          const statements = await createReplicaTable(coordinator, store, table, cfg, log).catch((err) => {
            throw explainStoreError(err, rel(table));
          });
          deferredByTable.set(tables.indexOf(table), { table: rel(table), statements });
        }
        await store.query("SELECT strata.guard_replicated($1::regclass)", [qualify(table)]);
        if (opts.history) await ensureTableSurface(store, table.schema, table.name, table.keyColumns);
        await store.query(
          "INSERT INTO strata.snapshot_tables (slot_name, schema_name, table_name, created, commit_seq) VALUES ($1, $2, $3, $4, $5)",
          [cfg.slot_name, table.schema, table.name, hasRows === undefined, String(seq)],
        );
      }
      await store.query("COMMIT");
    } catch (err) {
      await store.query("ROLLBACK").catch(() => {});
      throw err;
    }

    for (let i = 1; i < workers; i++) primaries.push(await openPrimary(cfg, opts.snapshotName));
    for (let i = 0; i < workers; i++) {
      stores.push(await openStore({ ...opts.storeConfig, application_name: `strata snapshot ${i + 1}` }));
    }
    reporter.start();
    const ctx: CopyContext = {
      tables,
      itemsPerTable,
      seq,
      history: opts.history,
      progress,
      formats: new Map(),
    };
    const results = new Map<string, ItemResult>();
    let next = 0;
    let failure: unknown;
    const work = async (w: number) => {
      while (failure === undefined && !opts.shouldStop()) {
        const item = items[next++];
        if (!item) return;
        const table = tables[item.table];
        try {
          const result = await copyItem(primaries[w], stores[w], item, ctx);
          if (PAUSE_AFTER_ITEM_MS > 0) await new Promise((r) => setTimeout(r, PAUSE_AFTER_ITEM_MS));
          results.set(`${item.table}/${item.chunk}`, result);
          if (itemsPerTable[item.table] > 1) {
            log.debug(
              {
                table: rel(table),
                chunk: item.chunk + 1,
                of: itemsPerTable[item.table],
                relation: item.relation,
                range: describeRange(item.range),
                rows: result.rows,
                bytes: result.bytes,
              },
              "initial snapshot: chunk copied",
            );
          }
          if (progress.itemDone(item.table)) {
            // Its keys and indexes are built now, while other workers still copy other tables.
            const job = deferredByTable.get(item.table);
            deferredByTable.delete(item.table);
            if (job) await buildDeferred([stores[w]], [job], log);
            const f = progress.summary().tables[item.table];
            const seconds = progress.tableSeconds(item.table);
            reporter.log((l) =>
              l.info(
                {
                  table: rel(table),
                  rows: f.rows,
                  bytes: f.bytes,
                  chunks: itemsPerTable[item.table],
                  seconds: Number(seconds.toFixed(2)),
                  rows_per_second: seconds > 0 ? Math.round(f.rows / seconds) : f.rows,
                },
                "initial snapshot: table copied",
              ),
            );
          }
        } catch (err) {
          failure ??= explainCopyError(err, rel(table), cfg.postgres_user);
          return;
        }
      }
    };
    await Promise.all(Array.from({ length: workers }, (_, w) => work(w)));
    reporter.stop();
    if (failure !== undefined) throw failure;
    if (results.size < items.length) {
      throw new Error("stopped during the initial snapshot; it starts over at the next start");
    }
    // Tables with nothing to copy (a partitioned table without partitions) still get theirs.
    await buildDeferred(stores, [...deferredByTable.values()], log);

    // What the replica knows of each table from here on (schema following starts from it), read
    // under the snapshot: the columns' attnums tell later renames from drops and adds.
    const shapes = await upstreamShapes(coordinator, tables);
    // Final: the hash, in table and chunk order, then commit row, position and the end of the record.
    const hasher = new CommitHasher(header);
    const result: SnapshotResult = {
      tables: tables.length,
      rows: 0,
      bytes: 0,
      items: items.length,
      committed: false,
    };
    tables.forEach((table, t) => {
      hasher.addSnapshotTable(rel(table), table.columns);
      let rows = 0;
      let bytes = 0;
      for (let c = 0; c < itemsPerTable[t]; c++) {
        const r = results.get(`${t}/${c}`)!;
        hasher.addSnapshotChunk(r.sha256, r.rows, r.bytes);
        rows += r.rows;
        bytes += r.bytes;
      }
      hasher.addSnapshotTableEnd(rows, bytes);
      result.rows += rows;
      result.bytes += bytes;
    });
    await store.query("BEGIN");
    try {
      if (opts.history && result.rows > 0) {
        await insertCommitRow(store, { ...header, seq, hash: hasher.digest() });
        result.committed = true;
      }
      await store.query(
        `INSERT INTO strata.source_position (slot_name, end_lsn, bootstrapped) VALUES ($1, $2, true)
         ON CONFLICT (slot_name) DO UPDATE SET end_lsn = excluded.end_lsn, bootstrapped = true, updated_at = clock_timestamp()`,
        [cfg.slot_name, lsn],
      );
      await store.query("DELETE FROM strata.snapshot_tables WHERE slot_name = $1", [cfg.slot_name]);
      if (opts.history && result.committed) {
        for (const table of tables.filter((t) => t.keyColumns.length > 0)) {
          await store.query(
            "INSERT INTO strata.snapshot_bases (rel, commit_seq, key_columns) VALUES ($1, $2, $3)",
            [rel(table), String(seq), table.keyColumns],
          );
        }
      }
      if (opts.history) {
        // Each table's definition as it enters history (at the snapshot's commit, or after its
        // parent when every table was empty), for pushes (strata.table_entries).
        const at = String(result.committed ? seq : seq - 1n);
        for (const table of tables)
          await store.query("SELECT strata.note_table_entry($1, $2)", [rel(table), at]);
      }
      for (const shape of shapes) {
        await store.query(
          `INSERT INTO strata.upstream_tables (slot_name, relid, rel, shape) VALUES ($1, $2, $3, $4)
           ON CONFLICT (slot_name, relid) DO UPDATE SET rel = excluded.rel, shape = excluded.shape, synced_lsn = NULL, updated_at = clock_timestamp()`,
          [cfg.slot_name, shape.oid, `${shape.schema}.${shape.name}`, JSON.stringify(shape.shape)],
        );
      }
      await store.query("COMMIT");
    } catch (err) {
      await store.query("ROLLBACK").catch(() => {});
      throw err;
    }
    progress.finish();
    const seconds = (Date.now() - started) / 1000;
    log.info(
      {
        tables: result.tables,
        rows: result.rows,
        bytes: result.bytes,
        work_items: result.items,
        workers,
        seconds: Number(seconds.toFixed(2)),
        consistent_point: lsn,
      },
      "initial snapshot complete",
    );
    return result;
  } finally {
    reporter.stop();
    await restoreCheckpoints?.().catch((err) =>
      log.warn({ err: (err as Error).message }, "could not put the store's checkpoint settings back"),
    );
    await Promise.all([
      ...primaries.map(async (p) => {
        await p.query("COMMIT").catch(() => {});
        await p.end().catch(() => {});
      }),
      ...stores.map((s) => s.end().catch(() => {})),
    ]);
  }
}
