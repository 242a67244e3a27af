// The Strata schema inside a replica database: commits, row changes and the replication position
// (internal, schema `strata`), and the Doltgres-named SQL surface (schema `dolt`, on the database's
// search_path) over them.
//
// Storage of history (designed for the diff and as-of surface):
//   strata.commits  one row per commit, `seq` orders them: history is linear and `seq` dense
//                   (commit n's parent is commit n - 1), which HEAD~N relies on.
//   strata.changes  one row per row change: (commit_seq, ord) orders changes within a commit;
//                   old_row / new_row are the exact row images as stored (to_jsonb), row_key the
//                   replica-identity columns (after the change; before it for deletes), old_key
//                   the key before an update that changed it (so a key's last mention is exact). A diff of two commits touching k rows is an index
//                   range scan on commit_seq (O(k log n)); "the row with key K as of commit C" is
//                   one descent of changes_key (a hash of rel and row_key, then commit_seq).
//   strata.snapshot_bases  a table copied by a snapshot (or joining mid-stream) whose rows are not
//                   written as history: each row's version at that commit is the image its first
//                   later change recorded as old_row, or, if nothing has touched it since, the row
//                   as it is now. A snapshot costs one write of the data, not two.
//   strata.schema_changes  DDL applied to the replica, in its commit (by the same ordinal as rows).
//   strata.upstream_tables  what the replica knows of each upstream table (by upstream oid): its
//                   name and columns as last seen, so that later changes to them can be followed.
//   strata.held_tables, strata.held_changes  tables whose changes wait aside (apply/held-tables.ts).

import type pg from "pg";
import { HELD_TABLES_SQL } from "../apply/held-tables.ts";
import { replicaShapeSql } from "../apply/replica-shape.ts";
import { BRANCH_SQL } from "../branches/branch-sql.ts";
import { CLUSTER_STATUS_SQL } from "../cluster/status-sql.ts";
import type { Logger } from "../log.ts";
import { REMOTE_SQL } from "../remotes/remote-sql.ts";
import { COLUMN_ADDITIONS_SQL } from "./column-additions-sql.ts";
import { COLUMN_RENAMES_SQL } from "./column-renames-sql.ts";
import { changesKeyHash } from "./key-hash.ts";
import { SURFACE_SQL } from "./surface-sql.ts";
import { META_NAME_SQL, TABLE_SURFACE_SQL, TABLE_SURFACE_VERSION } from "./table-surface-sql.ts";
import { WORKING_SET_SQL } from "./working-set-sql.ts";

export const SCHEMA_VERSION = 1;

/**
 * An initial snapshot begun (replicator.ts): written before its replication slot exists, so that a
 * replica whose store has this row but not the snapshot's commit takes the snapshot again. The
 * replicator also makes it itself: a cluster standby promoted under a newer Strata than its old
 * primary's has the older schema.
 */
export const SNAPSHOTS_PENDING = `CREATE TABLE IF NOT EXISTS strata.snapshots_pending (
  slot_name text PRIMARY KEY,
  started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);`;

const INSTALL = `
CREATE SCHEMA IF NOT EXISTS strata;
CREATE SCHEMA IF NOT EXISTS dolt;
CREATE TABLE IF NOT EXISTS strata.schema_version (version int NOT NULL);
CREATE TABLE IF NOT EXISTS strata.commits (
  seq bigint PRIMARY KEY,
  hash text NOT NULL,
  parent_hash text,
  committer text NOT NULL,
  email text NOT NULL,
  date timestamptz NOT NULL,
  message text NOT NULL,
  upstream_xid bigint,
  upstream_commit_lsn pg_lsn,
  upstream_end_lsn pg_lsn,
  applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Nothing looks commits up by their end LSN: its index (before 2026-11-24) only cost every commit.
DROP INDEX IF EXISTS strata.commits_upstream_end_lsn;
-- One index on the hash keeps it unique and serves lookups by hash and by prefix (pattern ops
-- order bytes, whatever the store's collation). Until 2026-11-24 a UNIQUE constraint and a
-- pattern index did this between them: each commit's insert paid for two random index entries.
CREATE UNIQUE INDEX IF NOT EXISTS commits_hash ON strata.commits (hash text_pattern_ops);
ALTER TABLE strata.commits DROP CONSTRAINT IF EXISTS commits_hash_key;
DROP INDEX IF EXISTS strata.commits_hash_prefix;
CREATE TABLE IF NOT EXISTS strata.changes (
  commit_seq bigint NOT NULL,
  ord integer NOT NULL,
  rel text NOT NULL,
  op "char" NOT NULL,
  row_key jsonb,
  old_key jsonb,
  old_row jsonb,
  new_row jsonb
);
CREATE INDEX IF NOT EXISTS changes_commit ON strata.changes (commit_seq, ord);
-- A key's changes, found by a 64-bit hash of (table, key): comparing jsonb keys in a B-tree cost
-- the apply about as much as the rest of a history row (docs/decisions.md, section 5). Lookups
-- also compare rel and row_key, so a collision costs a row read, never a wrong answer.
CREATE INDEX IF NOT EXISTS changes_key ON strata.changes ((${changesKeyHash("rel", "row_key")}), commit_seq);
DROP INDEX IF EXISTS strata.changes_row;
-- One table's changes without reading every table's (dolt_history_<table>): few distinct values,
-- so B-tree deduplication keeps it to a few bytes a change and about 1 µs of the apply's time.
CREATE INDEX IF NOT EXISTS changes_rel ON strata.changes (rel);
CREATE INDEX IF NOT EXISTS changes_moved_row ON strata.changes (rel, old_key, commit_seq) WHERE old_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS strata.schema_changes (
  commit_seq bigint NOT NULL,
  ord integer NOT NULL,
  rel text NOT NULL,
  ddl text NOT NULL,
  PRIMARY KEY (commit_seq, ord)
);
CREATE TABLE IF NOT EXISTS strata.snapshot_bases (
  rel text NOT NULL,
  commit_seq bigint NOT NULL,
  key_columns text[] NOT NULL,
  PRIMARY KEY (rel, commit_seq)
);
-- A table's own rows as a FROM item. A plain table's inheritance children are tables of their own,
-- with their own history, so it is read ONLY; a partitioned table's partitions hold its rows.
CREATE OR REPLACE FUNCTION strata.own_rows(tbl regclass) RETURNS text
  LANGUAGE sql STABLE
  AS $$ SELECT CASE WHEN relkind = 'r' THEN 'ONLY ' ELSE '' END || tbl::text FROM pg_class WHERE oid = tbl $$;
-- SQL that deletes one row of tbl's own whose image is $1 (a table without a key: identical rows
-- are interchangeable). Found by table and ctid: a ctid alone names a row in every partition.
CREATE OR REPLACE FUNCTION strata.delete_one_image_sql(tbl regclass) RETURNS text
  LANGUAGE sql STABLE
  AS $$ SELECT format('DELETE FROM %1$s t USING (SELECT s.tableoid AS o, s.ctid AS c FROM %1$s s WHERE to_jsonb(s.*) = $1 LIMIT 1) m
                        WHERE t.tableoid = m.o AND t.ctid = m.c', strata.own_rows(tbl)) $$;
CREATE OR REPLACE FUNCTION strata.key_of(row_image jsonb, key_columns text[]) RETURNS jsonb
  LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT jsonb_object_agg(k, row_image -> k) FROM unnest(key_columns) AS k $$;
${SNAPSHOTS_PENDING}
CREATE TABLE IF NOT EXISTS strata.resyncs (
  slot_name text PRIMARY KEY,
  lost_after_lsn pg_lsn NOT NULL,
  started_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS strata.upstream_tables (
  slot_name text NOT NULL,
  relid oid NOT NULL,
  rel text NOT NULL,
  shape jsonb NOT NULL,
  synced_lsn pg_lsn,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (slot_name, relid)
);
CREATE TABLE IF NOT EXISTS strata.source_position (
  slot_name text PRIMARY KEY,
  end_lsn pg_lsn NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Whether the position began with Strata's own initial snapshot (not a seed or a slot made by
-- hand): only then does Strata copy tables that join the publication later.
ALTER TABLE strata.source_position ADD COLUMN IF NOT EXISTS bootstrapped boolean NOT NULL DEFAULT false;
-- When the table was last seen gone from the publication (a later return copies it anew).
ALTER TABLE strata.upstream_tables ADD COLUMN IF NOT EXISTS unpublished_at timestamptz;
CREATE UNLOGGED TABLE IF NOT EXISTS strata.replication_status (
  slot_name text PRIMARY KEY,
  upstream text NOT NULL,
  publication text NOT NULL,
  state text NOT NULL,
  received_lsn pg_lsn,
  upstream_lsn pg_lsn,
  last_message_time timestamptz,
  lag_ms bigint,
  error text,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Added after the first release: ADD COLUMN IF NOT EXISTS upgrades existing stores in place.
ALTER TABLE strata.replication_status
  ADD COLUMN IF NOT EXISTS phase text,
  ADD COLUMN IF NOT EXISTS snapshot_tables_done integer,
  ADD COLUMN IF NOT EXISTS snapshot_tables_total integer,
  ADD COLUMN IF NOT EXISTS snapshot_rows bigint,
  ADD COLUMN IF NOT EXISTS snapshot_bytes bigint,
  ADD COLUMN IF NOT EXISTS snapshot_rows_estimate bigint,
  ADD COLUMN IF NOT EXISTS snapshot_bytes_estimate bigint,
  ADD COLUMN IF NOT EXISTS slot_retained_wal_bytes bigint,
  ADD COLUMN IF NOT EXISTS warning text,
  ADD COLUMN IF NOT EXISTS held_tables text;
-- The tables an initial snapshot is filling, until its final transaction commits it (and
-- deletes these rows): what the next start empties (or drops, when the snapshot created them)
-- after a crash mid-copy, with the history rows of the unfinished snapshot commit (commit_seq).
CREATE TABLE IF NOT EXISTS strata.snapshot_tables (
  slot_name text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  created boolean NOT NULL,
  commit_seq bigint NOT NULL,
  PRIMARY KEY (slot_name, schema_name, table_name)
);
-- What the apply's fast paths rely on in a replica table (applier.ts collapsible()): its columns
-- and their types, and its row triggers that fire as a replica, partitions' included. Read when
-- Strata resolves the table; its statements check it has not changed since and fail with
-- SQLSTATE SR001 if it has, so the stream retries with the table resolved again.
CREATE OR REPLACE FUNCTION strata.replica_shape(tbl regclass) RETURNS text
LANGUAGE sql STABLE AS $fn$
  SELECT ${replicaShapeSql("tbl")}
$fn$;
CREATE OR REPLACE FUNCTION strata.expect_replica_shape(tbl regclass, shape text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
  IF strata.replica_shape(tbl) IS DISTINCT FROM shape THEN
    RAISE EXCEPTION 'the replica table % changed (its columns, their types or its triggers) while Strata applied to it', tbl
      USING ERRCODE = 'SR001', HINT = 'Strata applies the batch again with the table as it is now';
  END IF;
  RETURN true;
END
$fn$;
CREATE OR REPLACE VIEW dolt.dolt_log AS
  SELECT hash AS commit_hash, committer, email, date, message,
         upstream_commit_lsn AS upstream_lsn, upstream_xid, parent_hash, seq AS commit_order
  FROM strata.commits ORDER BY seq DESC;
CREATE OR REPLACE VIEW dolt.dolt_replication_status AS
  SELECT s.slot_name, s.upstream, s.publication, s.state, s.received_lsn, p.end_lsn AS flushed_lsn,
         CASE WHEN s.upstream_lsn IS NOT NULL AND p.end_lsn IS NOT NULL
              THEN greatest(s.upstream_lsn - p.end_lsn, 0)::bigint END AS lag_bytes,
         -- The status row is written every status interval; the durable position moves on every
         -- flush. Once that reaches what the row saw of the primary, the row's lag is over.
         CASE WHEN s.upstream_lsn IS NOT NULL AND p.end_lsn >= s.upstream_lsn AND s.lag_ms IS NOT NULL
              THEN 0::bigint ELSE s.lag_ms END AS lag_ms,
         s.last_message_time, s.error AS current_error, s.updated_at,
         s.phase, s.snapshot_tables_done, s.snapshot_tables_total, s.snapshot_rows, s.snapshot_bytes,
         s.snapshot_rows_estimate, s.snapshot_bytes_estimate, s.slot_retained_wal_bytes, s.warning,
         s.held_tables
  FROM strata.replication_status s LEFT JOIN strata.source_position p USING (slot_name);
`;

/** Install or upgrade the Strata schema in `database`; idempotent. */
export async function installStrataSchema(client: pg.Client, database: string, log?: Logger): Promise<void> {
  await client.query("BEGIN");
  try {
    // One installer at a time (two Strata processes pointed at one external store).
    await client.query("SELECT pg_advisory_xact_lock(hashtext('strata.install'))");
    // A store from before changes_key or changes_rel (docs/decisions.md §5): the indexes it lacks
    // are built here, once, over its whole history.
    const [upgrade] = (
      await client.query<{ changes: string; key_index: boolean; rel_index: boolean }>(
        `SELECT greatest(reltuples, 0)::bigint::text AS changes,
                to_regclass('strata.changes_row') IS NOT NULL AS key_index,
                to_regclass('strata.changes_rel') IS NULL AS rel_index
           FROM pg_class WHERE oid = to_regclass('strata.changes')`,
      )
    ).rows;
    if (upgrade?.key_index)
      log?.info(
        { database, changes: Number(upgrade.changes) },
        "upgrading the history's key index (once): building changes_key over every recorded change, then dropping changes_row",
      );
    if (upgrade?.rel_index)
      log?.info(
        { database, changes: Number(upgrade.changes) },
        "upgrading the history (once): building changes_rel, the index of each table's changes",
      );
    await client.query(INSTALL);
    // The planner's estimates for the new index's expression come from ANALYZE: without them a
    // point lookup may take a bitmap scan of every version of a key instead of the first it needs.
    if (upgrade?.key_index) await client.query("ANALYZE strata.changes");
    await client.query(HELD_TABLES_SQL);
    await client.query(WORKING_SET_SQL);
    await client.query(COLUMN_RENAMES_SQL);
    await client.query(COLUMN_ADDITIONS_SQL);
    await client.query(SURFACE_SQL);
    await client.query(META_NAME_SQL);
    await client.query(TABLE_SURFACE_SQL);
    // Tables whose surface an older Strata made get this one's (e.g. lookups that use changes_key).
    // A surface dropped for DDL (signature '') is left to whatever dropped it.
    await client.query(
      `SELECT strata.ensure_table_surface(schema_name, table_name, key_columns) FROM strata.table_surfaces
        WHERE CASE WHEN signature LIKE '{%' THEN (signature::jsonb ->> 'v') IS DISTINCT FROM $1 END`,
      [String(TABLE_SURFACE_VERSION)],
    );
    await client.query(REMOTE_SQL);
    await client.query(BRANCH_SQL);
    await client.query(CLUSTER_STATUS_SQL);
    await client.query("DELETE FROM strata.schema_version");
    await client.query("INSERT INTO strata.schema_version VALUES ($1)", [SCHEMA_VERSION]);
    await client.query(
      `ALTER DATABASE "${database.replace(/"/g, '""')}" SET search_path = "$user", public, dolt`,
    );
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
}

/** Record the system variables' defaults (config file values) for dolt.setting(). */
export async function writeSettingDefaults(
  client: pg.Client,
  settings: Record<string, string>,
): Promise<void> {
  await client.query(
    `INSERT INTO strata.setting_defaults (name, value) SELECT key, value FROM jsonb_each_text($1::jsonb)
     ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
    [JSON.stringify(settings)],
  );
}

/**
 * Whether this database replicates from upstream: then clients cannot write to its replicated
 * tables and it makes no commits of its own (see working-set-sql.ts). A database that starts
 * replicating stops capturing; returns how many uncommitted changes it held (dropped).
 */
export async function setDatabaseRole(client: pg.Client, replicating: boolean): Promise<number> {
  await client.query(
    `INSERT INTO strata.database_role (replicating) VALUES ($1)
     ON CONFLICT (singleton) DO UPDATE SET replicating = excluded.replicating`,
    [replicating],
  );
  if (!replicating) return 0;
  const { rows } = await client.query<{ dropped: string }>("SELECT strata.stop_capturing() AS dropped");
  return Number(rows[0]?.dropped ?? 0);
}
