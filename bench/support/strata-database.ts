// A Strata database a bench builds through the front door and measures: its bulk-loaded table, and
// how big it is (user tables, Strata's history tables: what a push reads and a clone writes with
// the tables, and what a branch copies; the whole database).
import type pg from "pg";

/** The bulk-loaded table (see bulkLoadCommit). */
export const CREATE_BULK_TABLE =
  "CREATE TABLE bulk (id bigint PRIMARY KEY, grp int NOT NULL, payload text NOT NULL)";

/**
 * One bulk-load commit: rows firstRow..lastRow of `bulk`, then dolt_commit (-Am for the database's
 * first commit, which also adds the tables). A row's payload is 96 hex characters of three md5s no
 * other row repeats: gzip (packs, pg_dump) gets hex's redundancy (about 2:1), not copies of
 * neighbouring rows.
 */
export async function bulkLoadCommit(
  client: pg.Client,
  firstRow: number,
  lastRow: number,
  firstCommit: boolean,
): Promise<void> {
  await client.query(
    `INSERT INTO bulk SELECT g, (g % 1000)::int, md5(g::text) || md5('a' || g) || md5('b' || g)
       FROM generate_series($1::bigint, $2::bigint) g`,
    [firstRow, lastRow],
  );
  await client.query(
    `SELECT dolt_commit(${firstCommit ? "'-Am'" : "'-am'"}, 'bulk load: rows ${firstRow}..${lastRow}')`,
  );
}

/** Strata's history tables. */
export const HISTORY_TABLES = [
  "strata.commits",
  "strata.changes",
  "strata.schema_changes",
  "strata.snapshot_bases",
];

export interface DatabaseSizes {
  /** User tables (schema public), pg_total_relation_size: heap, indexes, TOAST. */
  userBytes: number;
  /** HISTORY_TABLES, the same way. */
  historyBytes: number;
  /** userBytes + historyBytes. */
  bytes: number;
  /** pg_database_size (catalogs, Strata's other tables, free space included). */
  databaseBytes: number;
}

/** The sizes of the database `client` is connected to. */
export async function databaseSizes(client: pg.Client): Promise<DatabaseSizes> {
  const { rows } = await client.query<{ user_bytes: string; history_bytes: string; db: string }>(
    `SELECT (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p'))::text AS user_bytes,
            (SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM unnest($1::text[]) t
              WHERE to_regclass(t) IS NOT NULL)::text AS history_bytes,
            pg_database_size(current_database())::text AS db`,
    [HISTORY_TABLES],
  );
  const userBytes = Number(rows[0].user_bytes);
  const historyBytes = Number(rows[0].history_bytes);
  return { userBytes, historyBytes, bytes: userBytes + historyBytes, databaseBytes: Number(rows[0].db) };
}
