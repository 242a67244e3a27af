// `strata diff FROM TO [TABLE]`: what changed between two commits. Without TABLE, the tables
// that changed in the commits after FROM up to TO (the dolt_diff view, per commit, gathered over
// the range) with the rows added, modified and removed in each (dolt_diff(from, to, table));
// with TABLE, those rows, from the table's typed dolt_diff_<table>(from, to) where it exists.
// Everything is read in one REPEATABLE READ transaction, so that the names (HEAD) and the rows
// agree while replication goes on; rows come through a cursor, so a diff of any size streams.
import pg from "pg";
import type { LoadedConfig } from "../config/load.ts";
import { SHORT_HASH } from "./log.ts";
import { displayValue, type Output, oneLine, paint, writeTable } from "./output.ts";
import { connectHistoryReader } from "./replica-client.ts";

export interface DiffOptions {
  from: string;
  to: string;
  /** A table name as SQL resolves it (search_path applies; quote mixed case: '"Mixed"'). */
  table?: string;
}

interface Ends {
  fromSeq: string;
  toSeq: string;
  fromHash: string;
  toHash: string;
}

const FETCH = 500;

export async function diffCommand(loaded: LoadedConfig, options: DiffOptions, out: Output): Promise<void> {
  const client = await connectHistoryReader(loaded, "diff");
  try {
    await writeDiff(client, options, out);
  } finally {
    await client.end().catch(() => {});
  }
}

export async function writeDiff(client: pg.Client, options: DiffOptions, out: Output): Promise<void> {
  await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  try {
    const ends = await resolveEnds(client, options);
    if (options.table === undefined) await writeChangedTables(client, options, ends, out);
    else await writeRows(client, options, options.table, ends, out);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
}

async function resolveEnds(client: pg.Client, options: DiffOptions): Promise<Ends> {
  // FROM is resolved before TO, so a mistake in both is reported for FROM first.
  const { rows } = await client.query<Ends>(
    `SELECT q.f::text AS "fromSeq", q.t::text AS "toSeq", f.hash AS "fromHash", t.hash AS "toHash"
       FROM (SELECT dolt.commit_seq($1) AS f, dolt.commit_seq($2) AS t) q
       JOIN strata.commits f ON f.seq = q.f
       JOIN strata.commits t ON t.seq = q.t`,
    [options.from, options.to],
  );
  return rows[0];
}

/** "k2h9f0ab (HEAD~3)": the short hash, and the name given when it is not the hash itself. */
function describeEnd(out: Output, name: string, hash: string): string {
  const short = paint(out, "yellow", hash.slice(0, SHORT_HASH));
  return hash.startsWith(name) ? short : `${short} (${oneLine(name)})`;
}

function rangeTitle(out: Output, options: DiffOptions, ends: Ends): string {
  return `${describeEnd(out, options.from, ends.fromHash)} → ${describeEnd(out, options.to, ends.toHash)}`;
}

interface ChangedTable {
  table_name: string;
  qualified: string | null;
  data_change: boolean;
  schema_change: boolean;
}

interface Counts {
  added: number;
  modified: number;
  removed: number;
}

async function writeChangedTables(
  client: pg.Client,
  options: DiffOptions,
  ends: Ends,
  out: Output,
): Promise<void> {
  const [lo, hi] =
    BigInt(ends.fromSeq) <= BigInt(ends.toSeq) ? [ends.fromSeq, ends.toSeq] : [ends.toSeq, ends.fromSeq];
  // The tables a commit in (lo, hi] changed; those touched and then restored are listed too,
  // with no rows differing.
  const { rows: tables } = await client.query<ChangedTable>(
    `SELECT d.table_name, bool_or(d.data_change) AS data_change, bool_or(d.schema_change) AS schema_change,
            (SELECT format('%I.%I', s.schema_name, s.table_name) FROM strata.table_surfaces s
              WHERE s.rel = d.table_name) AS qualified
       FROM dolt.dolt_diff d JOIN strata.commits c ON c.hash = d.commit_hash
      WHERE c.seq > $1 AND c.seq <= $2
      GROUP BY d.table_name
      ORDER BY d.table_name`,
    [lo, hi],
  );
  const results: { table: ChangedTable; counts: Counts | null; note: string | null }[] = [];
  for (const table of tables) {
    let counts: Counts | null = null;
    let note: string | null = null;
    if (table.qualified === null) {
      note = "no row history is kept for this table";
    } else {
      // A table dropped since has no rows to compare: its counts are unknown, not an error.
      await client.query("SAVEPOINT strata_counts");
      try {
        const { rows } = await client.query<Counts>(
          `SELECT count(*) FILTER (WHERE diff_type = 'added')::int AS added,
                  count(*) FILTER (WHERE diff_type = 'modified')::int AS modified,
                  count(*) FILTER (WHERE diff_type = 'removed')::int AS removed
             FROM dolt.dolt_diff($1, $2, $3)`,
          [ends.fromHash, ends.toHash, table.qualified],
        );
        counts = rows[0];
        await client.query("RELEASE SAVEPOINT strata_counts");
      } catch (err) {
        await client.query("ROLLBACK TO SAVEPOINT strata_counts");
        note = `rows not compared: ${(err as Error).message}`;
      }
    }
    results.push({ table, counts, note });
  }

  if (!out.human) {
    for (const { table, counts, note } of results) {
      await out.line(
        JSON.stringify({
          table: table.table_name,
          added: counts?.added ?? null,
          modified: counts?.modified ?? null,
          removed: counts?.removed ?? null,
          data_change: table.data_change,
          schema_change: table.schema_change,
          ...(note === null ? {} : { note }),
        }),
      );
    }
    return;
  }
  const title = rangeTitle(out, options, ends);
  if (results.length === 0) {
    await out.line(`${title}: no tables changed`);
    return;
  }
  await out.line(`${title}: ${results.length} table${results.length === 1 ? "" : "s"} changed`);
  const count = (n: number | undefined) => (n === undefined ? "?" : String(n));
  await writeTable(
    out,
    [
      { header: "table" },
      { header: "added", align: "right" },
      { header: "modified", align: "right" },
      { header: "removed", align: "right" },
      { header: "notes" },
    ],
    results.map(({ table, counts, note }) => [
      oneLine(table.table_name),
      count(counts?.added),
      count(counts?.modified),
      count(counts?.removed),
      oneLine([table.schema_change ? "schema changed" : "", note ?? ""].filter(Boolean).join("; ")),
    ]),
  );
}

interface TableInfo {
  schema_name: string;
  table_name: string;
  key_columns: string[];
  columns: string[];
  /** The typed diff function, when it exists ("schema"."dolt_diff_t"), and its result columns. */
  fn: string | null;
  fn_columns: string[] | null;
}

// The cursor's query is one statement with its values written in (DECLARE takes no parameters).
const sqlString = (text: string) => pg.escapeLiteral(text);
const ident = (name: string) => pg.escapeIdentifier(name);

/**
 * The metadata columns' names in the typed function: as Doltgres names them, prefixed strata_
 * where the table's own columns take the name (see table-surface.ts).
 */
function metaNames(
  columns: string[],
): Record<"to_commit" | "to_commit_date" | "from_commit" | "from_commit_date", string> {
  const taken = new Set(columns.flatMap((c) => [`to_${c}`, `from_${c}`]));
  const name = (n: string) => (taken.has(n) ? `strata_${n}` : n);
  return {
    to_commit: name("to_commit"),
    to_commit_date: name("to_commit_date"),
    from_commit: name("from_commit"),
    from_commit_date: name("from_commit_date"),
  };
}

/** The query of a table's differing rows: its JSON line, diff type, and values as text, key order. */
function rowsQuery(info: TableInfo, ends: Ends, tableName: string): string {
  const from = sqlString(ends.fromHash);
  const to = sqlString(ends.toHash);
  const typed =
    info.fn !== null &&
    info.fn_columns !== null &&
    ["diff_type", ...info.columns.flatMap((c) => [`to_${c}`, `from_${c}`])].every((c) =>
      info.fn_columns!.includes(c),
    );
  if (typed) {
    // The typed function's rows as they are: its values in their own types' text forms.
    const values = (side: string) =>
      info.columns.length
        ? `ARRAY[${info.columns.map((c) => `d.${ident(`${side}_${c}`)}::text`).join(", ")}]`
        : "ARRAY[]::text[]";
    const order = info.key_columns.length
      ? `ORDER BY ${info.key_columns.map((k) => `coalesce(d.${ident(`to_${k}`)}, d.${ident(`from_${k}`)})`).join(", ")}`
      : "";
    return `SELECT d.diff_type, to_json(d)::text AS json, ${values("from")} AS from_values, ${values("to")} AS to_values
              FROM ${info.fn}(${from}, ${to}) d ${order}`;
  }
  // No typed function (it is remade after DDL on the table): the row images, in the typed
  // function's shape, so that scripts read one format.
  const meta = metaNames(info.columns);
  const pair = (key: string, value: string) =>
    `${sqlString(`${JSON.stringify(key)}:`)} || coalesce(${value}, 'null')`;
  const parts = [
    ...info.columns.map((c) => pair(`to_${c}`, `(d.to_row -> ${sqlString(c)})::text`)),
    pair(meta.to_commit, "to_json(d.to_commit)::text"),
    pair(meta.to_commit_date, "to_json(d.to_commit_date)::text"),
    ...info.columns.map((c) => pair(`from_${c}`, `(d.from_row -> ${sqlString(c)})::text`)),
    pair(meta.from_commit, "to_json(d.from_commit)::text"),
    pair(meta.from_commit_date, "to_json(d.from_commit_date)::text"),
    pair("diff_type", "to_json(d.diff_type)::text"),
  ];
  const values = (side: string) =>
    info.columns.length
      ? `ARRAY[${info.columns.map((c) => `d.${side}_row ->> ${sqlString(c)}`).join(", ")}]`
      : "ARRAY[]::text[]";
  const order = info.key_columns.length
    ? `ORDER BY ${info.key_columns.map((k) => `coalesce(d.to_row -> ${sqlString(k)}, d.from_row -> ${sqlString(k)})`).join(", ")}`
    : "";
  return `SELECT d.diff_type, '{' || ${parts.join(" || ',' || ")} || '}' AS json,
                 ${values("from")} AS from_values, ${values("to")} AS to_values
            FROM dolt.dolt_diff(${from}, ${to}, ${sqlString(tableName)}) d ${order}`;
}

interface DiffRow {
  diff_type: "added" | "modified" | "removed";
  json: string;
  from_values: (string | null)[];
  to_values: (string | null)[];
}

async function writeRows(
  client: pg.Client,
  options: DiffOptions,
  tableName: string,
  ends: Ends,
  out: Output,
): Promise<void> {
  // strata.surface_of names the table's absence or lack of history, with the remedy.
  const { rows } = await client.query<TableInfo>(
    `SELECT t.schema_name, t.table_name, s.key_columns,
            (SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}') FROM pg_attribute a
              WHERE a.attrelid = s.tbl AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
            CASE WHEN p.oid IS NOT NULL THEN format('%I.%I', t.schema_name, 'dolt_diff_' || t.table_name) END AS fn,
            (SELECT array_agg(u.name ORDER BY u.i) FROM unnest(p.proargnames, p.proargmodes) WITH ORDINALITY u(name, mode, i)
              WHERE u.mode = 't') AS fn_columns
       FROM strata.surface_of($1) s
       JOIN strata.table_surfaces t ON t.rel = s.rel
       LEFT JOIN pg_proc p ON p.oid = to_regprocedure(format('%I.%I(text, text)', t.schema_name, 'dolt_diff_' || t.table_name))`,
    [tableName],
  );
  const info = rows[0];
  const qualified = `${info.schema_name}.${info.table_name}`;
  const counts: Counts = { added: 0, modified: 0, removed: 0 };
  if (out.human) await out.line(`${oneLine(qualified)}: ${rangeTitle(out, options, ends)}`);
  await client.query(`DECLARE strata_diff NO SCROLL CURSOR FOR ${rowsQuery(info, ends, tableName)}`);
  for (;;) {
    const page = await client.query<DiffRow>(`FETCH FORWARD ${FETCH} FROM strata_diff`);
    for (const row of page.rows) {
      counts[row.diff_type]++;
      await out.line(out.human ? describeRow(out, info, row) : row.json);
    }
    if (page.rows.length < FETCH) break;
  }
  await client.query("CLOSE strata_diff");
  if (out.human) {
    const total = counts.added + counts.modified + counts.removed;
    await out.line(
      total === 0
        ? "no rows differ"
        : `${total} row${total === 1 ? "" : "s"}: ${counts.added} added, ${counts.modified} modified, ${counts.removed} removed`,
    );
  }
}

/**
 * A row for people: `+ id=7  v=new` (added), `- id=7  v=old` (removed), `~ id=7  v: old → new`
 * (modified: the key, then only the columns that changed).
 */
function describeRow(out: Output, info: TableInfo, row: DiffRow): string {
  const keyFirst = [
    ...info.key_columns.map((k) => info.columns.indexOf(k)).filter((i) => i >= 0),
    ...info.columns.map((_, i) => i).filter((i) => !info.key_columns.includes(info.columns[i])),
  ];
  const name = (i: number) => oneLine(info.columns[i]);
  const value = (v: string | null) => oneLine(displayValue(v));
  if (row.diff_type !== "modified") {
    const values = row.diff_type === "added" ? row.to_values : row.from_values;
    const fields = keyFirst.map((i) => `${name(i)}=${value(values[i])}`);
    const sign = row.diff_type === "added" ? paint(out, "green", "+") : paint(out, "red", "-");
    return `${sign} ${fields.join("  ")}`;
  }
  const fields: string[] = [];
  for (const i of keyFirst) {
    const before = row.from_values[i];
    const after = row.to_values[i];
    const isKey = info.key_columns.includes(info.columns[i]);
    if (before !== after) fields.push(`${name(i)}: ${value(before)} → ${value(after)}`);
    else if (isKey) fields.push(`${name(i)}=${value(after)}`);
  }
  return `${paint(out, "yellow", "~")} ${fields.join("  ")}`;
}
