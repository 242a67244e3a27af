// Maps an upstream relation (a pgoutput Relation message) onto its replica table in the store and
// builds the SQL that applies each change shape to it.
//
// Columns are matched by name. The replica may have extra columns (nullable or with defaults) and
// compatible types (values travel as text and are parsed by the replica column's type). A table
// missing on the replica is created from the Relation message. Rows are located by the replica
// identity: key columns (DEFAULT / USING INDEX), or the whole old row (FULL), one row at a time
// via ctid so that duplicates in keyless tables are handled exactly.
import type pg from "pg";
import { ensureTableSurface } from "../history/table-surface.ts";
import type { RelationMessage, TypeMessage } from "../protocol/messages.ts";
import { ApplyError } from "./errors.ts";
import { replicaShapeSql } from "./replica-shape.ts";
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
  /**
   * Every column of the replica table is a replicated one (no extra or generated columns): a
   * row's image in history is then exactly its replicated values, which lets a run of updates
   * write intermediate versions of a row it updates more than once (applier.ts flushUpdates).
   */
  onlyReplicatedColumns: boolean;
  /**
   * Row triggers on the replica table that fire even under session_replication_role = replica
   * (ENABLE ALWAYS or ENABLE REPLICA): they may change what is stored.
   */
  replicaRowTriggers: boolean;
  /**
   * strata.replica_shape() of the replica table when it was resolved: statements that rely on
   * onlyReplicatedColumns and replicaRowTriggers check it is unchanged (sameShapeSql).
   */
  shape: string | null;
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

/** A SQL string literal. */
export const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

export async function resolveTarget(
  client: pg.Client,
  relation: RelationMessage,
  types: TypeResolver,
  history: boolean,
): Promise<TargetTable> {
  const rel = relName(relation);
  if (!(await replicaColumns(client, relation.namespace, relation.name)))
    await createTable(client, relation, types);
  // Read before the columns: a change after this read is caught by the statements' check.
  const shape = await readShape(client, relation);
  const replica = (await replicaColumns(client, relation.namespace, relation.name))!;
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
    onlyReplicatedColumns: replica.length === columns.length,
    shape,
    // A partitioned table's partitions count too: a row trigger on one of them fires for the rows
    // routed there. An unknown shape counts as triggers: the fast paths are not taken.
    replicaRowTriggers: shape === null || shape.split(":")[1] !== "0",
    partitioned:
      (
        await client.query("SELECT relkind FROM pg_class WHERE oid = to_regclass($1)", [
          `${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)}`,
        ])
      ).rows[0]?.relkind === "p",
  };
  // Clients may not write to it (unless strata_allow_replica_writes): the primary owns its rows.
  await client.query("SELECT strata.guard_replicated($1::regclass)", [target.qualified]);
  if (history)
    await ensureTableSurface(
      client,
      relation.namespace,
      relation.name,
      keyIndexes.map((i) => columns[i].name),
    );
  return target;
}

/**
 * A condition, true once per statement, that fails the statement with SQLSTATE SR001 if the
 * replica table's shape is no longer the one `target` was resolved with. The shape is computed
 * in the statement itself, planned with it once per connection: calling strata.replica_shape()
 * planned its body at every call, 130-300 µs of the store's CPU per statement. The function runs
 * only to raise the error.
 */
export function sameShapeSql(target: TargetTable): string {
  const tbl = `${literal(target.qualified)}::regclass`;
  const shape = literal(target.shape ?? "");
  return `(SELECT CASE WHEN ${replicaShapeSql(tbl)} = ${shape} THEN true ELSE strata.expect_replica_shape(${tbl}, ${shape}) END)`;
}

/**
 * strata.replica_shape() of the replica table, or null where the store's Strata schema predates
 * it (a standby promoted before its primary's Strata was upgraded: the install runs at the next
 * start).
 */
async function readShape(client: pg.Client, relation: RelationMessage): Promise<string | null> {
  // Asked first, not caught: a failed statement would abort the batch's transaction.
  const known = await client.query(
    "SELECT to_regprocedure('strata.replica_shape(regclass)') IS NOT NULL AS ok",
  );
  if (!known.rows[0].ok) return null;
  const { rows } = await client.query("SELECT strata.replica_shape(to_regclass($1)) AS shape", [
    `${quoteIdent(relation.namespace)}.${quoteIdent(relation.name)}`,
  ]);
  return rows[0].shape;
}
