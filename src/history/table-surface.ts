// The per-table part of the version-control surface, typed with the table's own columns (names as
// in Doltgres): for a table T in schema S,
//
//   S.dolt_history_T            view: every version of every row, with its commit
//   S.dolt_diff_T               view: each commit's changes to T against its parent
//                               (to_<col>, to_commit, to_commit_date, from_<col>, from_commit,
//                               from_commit_date, diff_type added / modified / removed)
//   S.dolt_diff_T(from, to)     function: the same columns between any two commits
//   S.dolt_as_of_T(commit)      function: T's rows as of a commit (the store-side form of
//                               `SELECT ... FROM T AS OF 'commit'`)
//   S.dolt_as_of_T(commit, key columns...)  the row with that key as of a commit (index lookups)
//   S.dolt_blame_T              view: the last commit that touched each row (keyed tables)
//
// They are generated from the table's columns and key and regenerated when either changes (the
// signature kept in strata.table_surfaces), and dropped around DDL on T, since they depend on T's
// row type. The logic lives in the generic functions of surface-sql.ts.
import type pg from "pg";
import { quoteIdent } from "../apply/schema-follow.ts";

/** Bump when the generated SQL changes: existing tables get the new surface at their next use. */
const SURFACE_VERSION = 2;

interface Column {
  name: string;
  type: string;
}

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;
const textArray = (items: string[]) =>
  items.length === 0 ? "ARRAY[]::text[]" : `ARRAY[${items.map(literal).join(", ")}]::text[]`;

/** The objects of T's surface, by kind (views and functions are dropped differently). */
export function surfaceNames(table: string): { views: string[]; functions: string[] } {
  return {
    views: [`dolt_history_${table}`, `dolt_diff_${table}`, `dolt_blame_${table}`],
    functions: [`dolt_as_of_${table}`, `dolt_diff_${table}`],
  };
}

/** The key columns history uses for a replica table: as recorded, else its snapshot base's, else its primary key's. */
export async function historyKeyColumns(
  client: pg.Client,
  rel: string,
  qualified: string,
): Promise<string[] | null> {
  const { rows } = await client.query<{ keys: string[] | null }>(
    `SELECT coalesce(
       (SELECT key_columns FROM strata.table_surfaces WHERE rel = $1),
       (SELECT key_columns FROM strata.snapshot_bases WHERE rel = $1 ORDER BY commit_seq DESC LIMIT 1),
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = to_regclass($2) AND i.indisprimary)) AS keys`,
    [rel, qualified],
  );
  const keys = rows[0]?.keys ?? null;
  return keys && keys.length > 0 ? keys : null;
}

/** Drop T's surface (before DDL on T, or T's removal); it is made again by ensureTableSurface. */
export async function dropTableSurface(client: pg.Client, schema: string, table: string): Promise<void> {
  const names = surfaceNames(table);
  for (const view of names.views)
    await client.query(`DROP VIEW IF EXISTS ${quoteIdent(schema)}.${quoteIdent(view)}`);
  const { rows } = await client.query<{ fn: string }>(
    `SELECT p.oid::regprocedure::text AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = $1 AND p.proname = ANY ($2::text[])`,
    [schema, names.functions],
  );
  for (const { fn } of rows) await client.query(`DROP FUNCTION IF EXISTS ${fn}`);
  await client.query(
    "UPDATE strata.table_surfaces SET signature = '' WHERE schema_name = $1 AND table_name = $2",
    [schema, table],
  );
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
  const qualified = `${quoteIdent(schema)}.${quoteIdent(table)}`;
  const rel = `${schema}.${table}`;
  const { rows: columns } = await client.query<Column>(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [qualified],
  );
  if (columns.length === 0) return;
  const keyColumns = keys ?? (await historyKeyColumns(client, rel, qualified)) ?? [];
  const signature = JSON.stringify({ v: SURFACE_VERSION, columns, keys: keyColumns });
  const { rows: recorded } = await client.query<{ signature: string; present: boolean }>(
    `SELECT signature, to_regclass($2) IS NOT NULL AS present FROM strata.table_surfaces WHERE rel = $1`,
    [rel, `${quoteIdent(schema)}.${quoteIdent(`dolt_history_${table}`)}`],
  );
  if (recorded[0]?.signature === signature && recorded[0].present) return;
  await dropTableSurface(client, schema, table);
  for (const statement of surfaceStatements(schema, table, columns, keyColumns))
    await client.query(statement);
  await client.query(
    `INSERT INTO strata.table_surfaces (rel, schema_name, table_name, key_columns, signature)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (rel) DO UPDATE SET key_columns = excluded.key_columns, signature = excluded.signature`,
    [rel, schema, table, keyColumns, signature],
  );
}

/** Metadata column names, prefixed `strata_` where the table has a column of that name. */
function metaNames<T extends string>(taken: Set<string>, names: T[]): Record<T, string> {
  return Object.fromEntries(names.map((n) => [n, taken.has(n) ? `strata_${n}` : n])) as Record<T, string>;
}

/** The CREATE statements of T's surface (pure: columns and key in, SQL out). */
export function surfaceStatements(
  schema: string,
  table: string,
  columns: Column[],
  keys: string[],
): string[] {
  const q = (name: string) => `${quoteIdent(schema)}.${quoteIdent(name)}`;
  const qualified = q(table);
  const rel = literal(`${schema}.${table}`);
  const regclass = `${literal(qualified)}::regclass`;
  const keyArray = textArray(keys);
  const statements: string[] = [];

  // History: versions written as history, then the versions of snapshot bases (rows untouched
  // since the base as they are now, the others as their first later change found them). A
  // change's identity is the key it found the row under. A later base (a resync) only follows a
  // truncate, which touched every row of the earlier one.
  const hist = metaNames(new Set(columns.map((c) => c.name)), ["commit_hash", "committer", "commit_date"]);
  const histMeta = `k.hash AS ${quoteIdent(hist.commit_hash)}, k.committer AS ${quoteIdent(hist.committer)}, k.date AS ${quoteIdent(hist.commit_date)}`;
  statements.push(
    `CREATE VIEW ${q(`dolt_history_${table}`)} AS
       SELECT r.*, ${histMeta}
         FROM strata.changes c
         JOIN strata.commits k ON k.seq = c.commit_seq
         CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, c.new_row) r
        WHERE c.rel = ${rel} AND c.new_row IS NOT NULL
       UNION ALL
       SELECT r.*, ${histMeta}
         FROM strata.snapshot_bases b
         JOIN strata.commits k ON k.seq = b.commit_seq
         CROSS JOIN LATERAL (
           SELECT t.* FROM ${qualified} t
            WHERE NOT EXISTS (SELECT 1 FROM strata.snapshot_bases later
                               WHERE later.rel = b.rel AND later.commit_seq > b.commit_seq)
              AND NOT EXISTS (SELECT 1 FROM strata.changes c
                               WHERE c.rel = b.rel AND c.row_key = strata.key_of(to_jsonb(t.*), b.key_columns) AND c.commit_seq > b.commit_seq)
              AND NOT EXISTS (SELECT 1 FROM strata.changes c
                               WHERE c.rel = b.rel AND c.old_key = strata.key_of(to_jsonb(t.*), b.key_columns) AND c.commit_seq > b.commit_seq)
           UNION ALL
           SELECT f.* FROM (
             SELECT DISTINCT ON (coalesce(c.old_key, c.row_key)) c.op, c.old_row
               FROM strata.changes c
              WHERE c.rel = b.rel AND c.commit_seq > b.commit_seq
              ORDER BY coalesce(c.old_key, c.row_key), c.commit_seq, c.ord
           ) first_touch
           CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, first_touch.old_row) f
            WHERE first_touch.op <> 'I'
         ) r
        WHERE b.rel = ${rel}`,
  );

  // As of a commit: the whole table, and one row by key.
  statements.push(
    `CREATE FUNCTION ${q(`dolt_as_of_${table}`)}(commit_name text) RETURNS SETOF ${qualified}
       LANGUAGE sql STABLE AS $strata$
         SELECT r.* FROM strata.rows_as_of(${rel}, ${regclass}, ${keyArray}, dolt.commit_seq($1)) AS j(j)
          CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, j.j) r
       $strata$`,
  );
  const keyTypes = keys.map((k) => columns.find((c) => c.name === k));
  if (keys.length > 0 && !keys.includes("commit_name") && keyTypes.every(Boolean)) {
    const params = keyTypes.map((c) => `${quoteIdent(c!.name)} ${c!.type}`).join(", ");
    const key = `jsonb_build_object(${keys.map((k, i) => `${literal(k)}, $${i + 2}`).join(", ")})`;
    statements.push(
      `CREATE FUNCTION ${q(`dolt_as_of_${table}`)}(commit_name text, ${params}) RETURNS SETOF ${qualified}
         LANGUAGE sql STABLE AS $strata$
           SELECT r.* FROM strata.row_as_of(${rel}, ${regclass}, ${keyArray}, dolt.commit_seq($1), ${key}) AS j(j)
            CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, j.j) r
         $strata$`,
    );
  }

  // Diffs: to_<col>, to_commit, to_commit_date, from_<col>, from_commit, from_commit_date, diff_type.
  const diffColumns = new Set(columns.flatMap((c) => [`to_${c.name}`, `from_${c.name}`]));
  const dm = metaNames(diffColumns, [
    "to_commit",
    "to_commit_date",
    "from_commit",
    "from_commit_date",
    "diff_type",
  ]);
  const diffSelect = (to: string, from: string) =>
    [
      ...columns.map((c) => `t.${quoteIdent(c.name)} AS ${quoteIdent(`to_${c.name}`)}`),
      `${to}.hash AS ${quoteIdent(dm.to_commit)}`,
      `${to}.date AS ${quoteIdent(dm.to_commit_date)}`,
      ...columns.map((c) => `f.${quoteIdent(c.name)} AS ${quoteIdent(`from_${c.name}`)}`),
      `${from}.hash AS ${quoteIdent(dm.from_commit)}`,
      `${from}.date AS ${quoteIdent(dm.from_commit_date)}`,
      `CASE WHEN d.from_row IS NULL THEN 'added' WHEN d.to_row IS NULL THEN 'removed' ELSE 'modified' END AS ${quoteIdent(dm.diff_type)}`,
    ].join(", ");
  const rowsOf = `CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, d.to_row) t
         CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, d.from_row) f`;
  const outColumns = [
    ...columns.map((c) => `${quoteIdent(`to_${c.name}`)} ${c.type}`),
    `${quoteIdent(dm.to_commit)} text`,
    `${quoteIdent(dm.to_commit_date)} timestamptz`,
    ...columns.map((c) => `${quoteIdent(`from_${c.name}`)} ${c.type}`),
    `${quoteIdent(dm.from_commit)} text`,
    `${quoteIdent(dm.from_commit_date)} timestamptz`,
    `${quoteIdent(dm.diff_type)} text`,
  ].join(", ");
  statements.push(
    `CREATE FUNCTION ${q(`dolt_diff_${table}`)}(from_revision text, to_revision text) RETURNS TABLE (${outColumns})
       LANGUAGE sql STABLE AS $strata$
         SELECT ${diffSelect("tc", "fc")}
           FROM (SELECT dolt.commit_seq($1) AS fs, dolt.commit_seq($2) AS ts) q
           JOIN strata.commits fc ON fc.seq = q.fs
           JOIN strata.commits tc ON tc.seq = q.ts
          CROSS JOIN LATERAL strata.diff_rows(${rel}, ${regclass}, ${keyArray}, q.fs, q.ts) d
          ${rowsOf}
       $strata$`,
  );
  statements.push(
    `CREATE VIEW ${q(`dolt_diff_${table}`)} AS
       SELECT ${diffSelect("k", "p")}
         FROM strata.commits k
         LEFT JOIN strata.commits p ON p.hash = k.parent_hash
        CROSS JOIN LATERAL strata.diff_rows(${rel}, ${regclass}, ${keyArray}, coalesce(p.seq, 0), k.seq) d
        ${rowsOf}`,
  );

  // Blame: the last commit that touched each row now present (its last change, else its base).
  if (keys.length > 0) {
    const bm = metaNames(new Set(keys), ["commit", "commit_date", "committer", "email", "message"]);
    const keyExpr = `jsonb_build_object(${keys.map((k) => `${literal(k)}, t.${quoteIdent(k)}`).join(", ")})`;
    statements.push(
      `CREATE VIEW ${q(`dolt_blame_${table}`)} AS
         SELECT ${keys.map((k) => `t.${quoteIdent(k)}`).join(", ")}, k.hash AS ${quoteIdent(bm.commit)},
                k.date AS ${quoteIdent(bm.commit_date)}, k.committer AS ${quoteIdent(bm.committer)},
                k.email AS ${quoteIdent(bm.email)}, k.message AS ${quoteIdent(bm.message)}
           FROM ${qualified} t
          CROSS JOIN LATERAL (SELECT coalesce(
                  (SELECT c.commit_seq FROM strata.changes c
                    WHERE c.rel = ${rel} AND c.row_key = ${keyExpr} ORDER BY c.commit_seq DESC LIMIT 1),
                  (SELECT max(b.commit_seq) FROM strata.snapshot_bases b WHERE b.rel = ${rel})) AS seq) last
          JOIN strata.commits k ON k.seq = last.seq`,
    );
  }
  return statements;
}
