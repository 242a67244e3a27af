// Maps an upstream relation (a pgoutput Relation message) onto its replica table in the store and
// builds the SQL that applies each change shape to it.
//
// Columns are matched by name. The replica may have extra columns (nullable or with defaults) and
// compatible types (values travel as text and are parsed by the replica column's type). A table
// missing on the replica is created from the Relation message. Rows are located by the replica
// identity: key columns (DEFAULT / USING INDEX), or the whole old row (FULL), one row at a time
// via ctid so that duplicates in keyless tables are handled exactly.
import type pg from "pg";
import type { RelationMessage, TypeMessage } from "../protocol/messages.ts";
import { ApplyError } from "./errors.ts";
import { quoteIdent, type ReplicaState, type TableShape } from "./schema-follow.ts";

export interface TargetColumn {
  name: string;
  quoted: string;
  /** The replica column's type, as format_type prints it. */
  type: string;
  isKey: boolean;
  /** Types without an equality operator are matched on their text form. */
  compareAsText: boolean;
}

export interface TargetTable {
  /** "schema.table", the name used in history rows and messages. */
  rel: string;
  qualified: string;
  relation: RelationMessage;
  /** Indexed like the relation's columns. */
  columns: TargetColumn[];
  /** The columns' names, for the commit hash (built once, not per change). */
  columnNames: string[];
  keyIndexes: number[];
  keyJson: (alias: string) => string;
  /** A partitioned table on the replica (TRUNCATE cannot take ONLY). */
  partitioned: boolean;
  sqlCache: Map<string, string>;
}

const NO_EQUALITY = /^(json|xml|point|line|lseg|box|path|polygon|circle)(\[\])?$/;

export { quoteIdent };

export function relName(relation: Pick<RelationMessage, "namespace" | "name">): string {
  return `${relation.namespace}.${relation.name}`;
}

interface ReplicaColumn {
  name: string;
  type: string;
}

async function replicaColumns(
  client: pg.Client,
  schema: string,
  table: string,
): Promise<ReplicaColumn[] | undefined> {
  const { rows } = await client.query<{ attname: string; type: string }>(
    `SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [schema, table],
  );
  if (rows.length === 0) {
    const exists = await client.query(
      "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
      [schema, table],
    );
    if (!exists.rowCount) return undefined;
  }
  return rows.map((r) => ({ name: r.attname, type: r.type }));
}

/** Type names for the columns of a relation that the replica must create. */
export interface TypeResolver {
  /** SQL type for an upstream type oid + typmod, creating user-defined types when it can. */
  typeName(typeOid: number, typeMod: number): Promise<string>;
}

export function createTypeResolver(
  client: pg.Client,
  types: Map<number, TypeMessage>,
  defineUpstreamType: (oid: number, name: string) => Promise<string | undefined>,
): TypeResolver {
  return {
    async typeName(typeOid, typeMod) {
      const custom = types.get(typeOid);
      // pgoutput names pg_catalog "" (e.g. a domain arrives under its base type's name).
      if (custom && custom.namespace === "") return `pg_catalog.${quoteIdent(custom.name)}`;
      if (!custom) {
        // Built-in types have the same oid everywhere.
        const { rows } = await client.query<{ t: string }>("SELECT format_type($1::oid, $2::int) AS t", [
          typeOid,
          typeMod,
        ]);
        return rows[0].t;
      }
      const qualified = `${quoteIdent(custom.namespace)}.${quoteIdent(custom.name)}`;
      const exists = await client.query("SELECT to_regtype($1) IS NOT NULL AS ok", [qualified]);
      if (!exists.rows[0].ok) {
        const ddl = await defineUpstreamType(typeOid, qualified);
        if (!ddl) {
          throw new ApplyError(
            `type ${custom.namespace}.${custom.name} used by a replicated column does not exist on the replica`,
            `create it on the replica (the same definition as on the primary), then replication resumes`,
          );
        }
        await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(custom.namespace)}`);
        await client.query(ddl);
      }
      return qualified;
    },
  };
}

/** The replica table's columns, constraints and indexes; undefined when it does not exist. */
export async function readReplicaState(
  client: pg.Client,
  schema: string,
  table: string,
): Promise<ReplicaState | undefined> {
  const columns = await replicaColumns(client, schema, table);
  if (!columns) return undefined;
  const qualified = `${quoteIdent(schema)}.${quoteIdent(table)}`;
  const { rows: constraints } = await client.query<{ conname: string; contype: string }>(
    "SELECT conname, contype FROM pg_constraint WHERE conrelid = to_regclass($1)",
    [qualified],
  );
  const { rows: indexes } = await client.query<{ relname: string }>(
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass($1)",
    [qualified],
  );
  return {
    columns: new Map(columns.map((c) => [c.name, c.type])),
    constraints: new Set(constraints.map((c) => c.conname)),
    indexes: new Set(indexes.map((i) => i.relname)),
    primaryKey: constraints.find((c) => c.contype === "p")?.conname,
  };
}

/** Whether the replica table has any row (undefined: no such table). */
export async function replicaTableHasRows(
  client: pg.Client,
  qualified: string,
): Promise<boolean | undefined> {
  const exists = await client.query("SELECT to_regclass($1) IS NOT NULL AS ok", [qualified]);
  if (!exists.rows[0].ok) return undefined;
  const { rowCount } = await client.query(`SELECT 1 FROM ${qualified} LIMIT 1`);
  return Boolean(rowCount);
}

/** CREATE TABLE (and indexes) from a shape read from the primary's catalog: defaults, NOT NULL, keys. */
export function createTableStatements(shape: TableShape): string[] {
  const defs = shape.columns.map(
    (c) =>
      `${quoteIdent(c.name)} ${c.type}${c.default ? ` DEFAULT ${c.default}` : ""}${c.notNull ? " NOT NULL" : ""}`,
  );
  for (const c of shape.constraints ?? []) defs.push(`CONSTRAINT ${quoteIdent(c.name)} ${c.def}`);
  return [
    `CREATE TABLE ${quoteIdent(shape.schema)}.${quoteIdent(shape.name)} (${defs.join(", ")})`,
    ...(shape.indexes ?? []).map((i) => i.def),
  ];
}

/** The key columns history uses for a replica table: its snapshot base's, else its primary key's. */
export async function historyKeyColumns(
  client: pg.Client,
  rel: string,
  qualified: string,
): Promise<string[] | null> {
  const { rows } = await client.query<{ keys: string[] | null }>(
    `SELECT coalesce(
       (SELECT key_columns FROM strata.snapshot_bases WHERE rel = $1 ORDER BY commit_seq DESC LIMIT 1),
       (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = to_regclass($2) AND i.indisprimary)) AS keys`,
    [rel, qualified],
  );
  return rows[0]?.keys ?? null;
}

/** Drop `<schema>.dolt_history_<table>`: it depends on the table's row type, which DDL may change. */
export async function dropHistoryView(client: pg.Client, schema: string, table: string): Promise<void> {
  await client.query(`DROP VIEW IF EXISTS ${quoteIdent(schema)}.${quoteIdent(`dolt_history_${table}`)}`);
}

export async function createTable(
  client: pg.Client,
  relation: RelationMessage,
  types: TypeResolver,
): Promise<void> {
  const defs: string[] = [];
  for (const col of relation.columns)
    defs.push(`${quoteIdent(col.name)} ${await types.typeName(col.typeOid, col.typeMod)}`);
  const keys = relation.columns.filter((c) => c.isKey).map((c) => quoteIdent(c.name));
  if (keys.length > 0 && relation.replicaIdentity === "d") defs.push(`PRIMARY KEY (${keys.join(", ")})`);
  if (keys.length > 0 && relation.replicaIdentity === "i") defs.push(`UNIQUE (${keys.join(", ")})`);
  await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(relation.namespace)}`);
  await client.query(
    `CREATE TABLE ${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)} (${defs.join(", ")})`,
  );
}

/** (Re)create `<schema>.dolt_history_<table>` when it is missing or the table's columns changed. */
export async function ensureHistoryView(client: pg.Client, schema: string, table: string): Promise<void> {
  const replica = (await replicaColumns(client, schema, table)) ?? [];
  const qualified = `${quoteIdent(schema)}.${quoteIdent(table)}`;
  const qualifiedView = `${quoteIdent(schema)}.${quoteIdent(`dolt_history_${table}`)}`;
  // Doltgres's column names, unless the table has columns of those names (then prefixed strata_).
  const taken = new Set(replica.map((c) => c.name));
  const meta = ["commit_hash", "committer", "commit_date"].map((name) =>
    taken.has(name) ? `strata_${name}` : name,
  );
  const wanted = [...replica.map((c) => c.name), ...meta];
  const { rows } = await client.query<{ cols: string[] | null }>(
    `SELECT array_agg(a.attname::text ORDER BY a.attnum) AS cols FROM pg_attribute a
      WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`,
    [qualifiedView],
  );
  const current = rows[0]?.cols;
  if (current && current.join("\u0000") === wanted.join("\u0000")) return;
  await client.query(`DROP VIEW IF EXISTS ${qualifiedView}`);
  const rel = literal(`${schema}.${table}`);
  const metaColumns = `k.hash AS ${quoteIdent(meta[0])}, k.committer AS ${quoteIdent(meta[1])}, k.date AS ${quoteIdent(meta[2])}`;
  // Versions written as history, then the versions of snapshot bases (strata.snapshot_bases):
  // rows untouched since the base as they are now, and the others as their first later change
  // found them (its old_row). A change's identity is the key it found the row under. A later base
  // (a resync) only follows a truncate, which touched every row of the earlier one.
  await client.query(
    `CREATE VIEW ${qualifiedView} AS
       SELECT r.*, ${metaColumns}
         FROM strata.changes c
         JOIN strata.commits k ON k.seq = c.commit_seq
         CROSS JOIN LATERAL jsonb_populate_record(NULL::${qualified}, c.new_row) r
        WHERE c.rel = ${rel} AND c.new_row IS NOT NULL
       UNION ALL
       SELECT r.*, ${metaColumns}
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
}

const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

export async function resolveTarget(
  client: pg.Client,
  relation: RelationMessage,
  types: TypeResolver,
  history: boolean,
): Promise<TargetTable> {
  const rel = relName(relation);
  let replica = await replicaColumns(client, relation.namespace, relation.name);
  if (!replica) {
    await createTable(client, relation, types);
    replica = (await replicaColumns(client, relation.namespace, relation.name))!;
  }
  const byName = new Map(replica.map((c) => [c.name, c]));
  const columns: TargetColumn[] = relation.columns.map((col) => {
    const match = byName.get(col.name);
    if (!match) {
      throw new ApplyError(
        `column "${col.name}" of table ${rel} exists on the primary but not on the replica`,
        `add it on the replica (ALTER TABLE ${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)} ADD COLUMN ${quoteIdent(col.name)} <type>), then replication resumes`,
        { table: rel, column: col.name },
      );
    }
    return {
      name: col.name,
      quoted: quoteIdent(col.name),
      type: match.type,
      isKey: col.isKey,
      compareAsText: NO_EQUALITY.test(match.type),
    };
  });
  const keyIndexes = relation.replicaIdentity === "f" ? [] : columns.flatMap((c, i) => (c.isKey ? [i] : []));
  const keyJson = (alias: string) =>
    keyIndexes.length === 0
      ? "NULL::jsonb"
      : `jsonb_build_object(${keyIndexes.map((i) => `${literal(columns[i].name)}, ${alias}.${columns[i].quoted}`).join(", ")})`;
  const target: TargetTable = {
    rel,
    qualified: `${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)}`,
    relation,
    columns,
    columnNames: columns.map((c) => c.name),
    keyIndexes,
    keyJson,
    sqlCache: new Map(),
    partitioned:
      (
        await client.query("SELECT relkind FROM pg_class WHERE oid = to_regclass($1)", [
          `${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)}`,
        ])
      ).rows[0]?.relkind === "p",
  };
  if (history) await ensureHistoryView(client, relation.namespace, relation.name);
  return target;
}
