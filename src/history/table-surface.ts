// The per-table surface (dolt_history_<t>, dolt_diff_<t>, dolt_as_of_<t>, dolt_blame_<t>) is made
// by the store itself (table-surface-sql.ts), so that the apply path and dolt_commit() make the
// same objects; these are the apply path's calls to it.
import type pg from "pg";

/** The key columns history uses for a replica table: as recorded, else its snapshot base's, else its primary key's. */
export async function historyKeyColumns(
  client: pg.Client,
  rel: string,
  qualified: string,
): Promise<string[] | null> {
  const { rows } = await client.query<{ keys: string[] | null }>(
    "SELECT strata.history_keys($1, to_regclass($2)) AS keys",
    [rel, qualified],
  );
  return rows[0]?.keys ?? null;
}

/** Drop T's surface (before DDL on T, or T's removal); it is made again by ensureTableSurface. */
export async function dropTableSurface(client: pg.Client, schema: string, table: string): Promise<void> {
  await client.query("SELECT strata.drop_table_surface($1, $2)", [schema, table]);
}

/**
 * (Re)create T's surface when it is missing or T's columns or key changed. `keys` is the key the
 * stream records T's changes under ([] for none); unknown (undefined) keeps the recorded one.
 */
export async function ensureTableSurface(
  client: pg.Client,
  schema: string,
  table: string,
  keys?: string[],
): Promise<void> {
  await client.query("SELECT strata.ensure_table_surface($1, $2, $3)", [schema, table, keys ?? null]);
}
