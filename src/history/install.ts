// The Strata schema inside a replica database: commits, row changes and the replication position
// (internal, schema `strata`), and the Doltgres-named SQL surface (schema `dolt`, on the database's
// search_path) over them.
//
// Storage of history (designed for the diff and as-of surface):
//   strata.commits  one row per commit, `seq` orders them (linear history on a replica).
//   strata.changes  one row per row change: (commit_seq, ord) orders changes within a commit;
//                   old_row / new_row are the exact row images as stored (to_jsonb), row_key the
//                   replica-identity columns (after the change; before it for deletes), old_key
//                   the key before an update that changed it (so a key's last mention is exact). A diff of two commits touching k rows is an index
//                   range scan on commit_seq (O(k log n)); "the row with key K as of commit C" is
//                   one descent of (rel, row_key, commit_seq).
import type pg from "pg";

export const SCHEMA_VERSION = 1;

const INSTALL = `
CREATE SCHEMA IF NOT EXISTS strata;
CREATE SCHEMA IF NOT EXISTS dolt;
CREATE TABLE IF NOT EXISTS strata.schema_version (version int NOT NULL);
CREATE TABLE IF NOT EXISTS strata.commits (
  seq bigint PRIMARY KEY,
  hash text NOT NULL UNIQUE,
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
CREATE INDEX IF NOT EXISTS commits_upstream_end_lsn ON strata.commits (upstream_end_lsn);
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
CREATE INDEX IF NOT EXISTS changes_row ON strata.changes (rel, row_key, commit_seq);
CREATE INDEX IF NOT EXISTS changes_moved_row ON strata.changes (rel, old_key, commit_seq) WHERE old_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS strata.source_position (
  slot_name text PRIMARY KEY,
  end_lsn pg_lsn NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
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
CREATE OR REPLACE VIEW dolt.dolt_log AS
  SELECT hash AS commit_hash, committer, email, date, message,
         upstream_commit_lsn AS upstream_lsn, upstream_xid, parent_hash, seq AS commit_order
  FROM strata.commits ORDER BY seq DESC;
CREATE OR REPLACE VIEW dolt.dolt_replication_status AS
  SELECT s.slot_name, s.upstream, s.publication, s.state, s.received_lsn, p.end_lsn AS flushed_lsn,
         CASE WHEN s.upstream_lsn IS NOT NULL AND p.end_lsn IS NOT NULL
              THEN greatest(s.upstream_lsn - p.end_lsn, 0)::bigint END AS lag_bytes,
         s.lag_ms, s.last_message_time, s.error AS current_error, s.updated_at
  FROM strata.replication_status s LEFT JOIN strata.source_position p USING (slot_name);
`;

/** Install or upgrade the Strata schema in `database`; idempotent. */
export async function installStrataSchema(client: pg.Client, database: string): Promise<void> {
  await client.query("BEGIN");
  try {
    // One installer at a time (two Strata processes pointed at one external store).
    await client.query("SELECT pg_advisory_xact_lock(hashtext('strata.install'))");
    await client.query(INSTALL);
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
