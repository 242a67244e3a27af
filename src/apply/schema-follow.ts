// Following the primary's schema: what the replica knows of an upstream table (its "shape"), and
// the DDL that brings a replica table from the last known shape to the new one. Pure: the caller
// reads the replica's state and runs the statements.
//
// Two sources describe a new shape:
//   - a Relation message (always available): column names and type oids, nothing more. Enough to
//     follow an added column, a dropped column and a type change; a column that disappeared while
//     another appeared is a rename or a drop and an add, which the message cannot tell apart, so
//     that case stops with an error and its remedy.
//   - a DDL message from the event trigger that `strata setup-primary` installs: the table as the
//     primary's catalog has it after the statement (attnums, NOT NULL, defaults, keys, indexes),
//     so renames, constraints and indexes are followed exactly.
// Columns are paired by attnum when both shapes have them (a rename keeps its attnum, an added
// column always gets a new one), otherwise by name.
import { ApplyError } from "./errors.ts";

export interface ColumnShape {
  name: string;
  /** The primary's attnum; known only from a DDL message or the catalog. */
  attnum?: number;
  typeOid: number;
  typeMod: number;
  /** The type as SQL (the primary's format_type, or the replica's name for it). */
  type: string;
  notNull?: boolean;
  /** DEFAULT expression (never a sequence's nextval); null when none; undefined when unknown. */
  default?: string | null;
}

export interface NamedDefinition {
  name: string;
  def: string;
}

export interface TableShape {
  schema: string;
  name: string;
  columns: ColumnShape[];
  /** PRIMARY KEY / UNIQUE constraints (pg_get_constraintdef); undefined when unknown. */
  constraints?: NamedDefinition[];
  /** Other indexes (pg_get_indexdef); undefined when unknown. */
  indexes?: NamedDefinition[];
}

/** The replica table as it is now. */
export interface ReplicaState {
  /** Column name → type as the replica's format_type prints it. */
  columns: Map<string, string>;
  constraints: Set<string>;
  indexes: Set<string>;
  /** The name of the replica's primary key constraint, if it has one. */
  primaryKey: string | undefined;
}

export const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
export const qualifiedName = (shape: Pick<TableShape, "schema" | "name">) =>
  `${quoteIdent(shape.schema)}.${quoteIdent(shape.name)}`;

/** Type names compared loosely: the replica prints visible types unqualified, the primary may not. */
export function sameType(a: string, b: string): boolean {
  const norm = (t: string) =>
    t
      .replace(/"/g, "")
      .replace(/^(public|pg_catalog)\./, "")
      .trim()
      .toLowerCase();
  return norm(a) === norm(b);
}

interface Pairing {
  paired: [ColumnShape, ColumnShape][];
  dropped: ColumnShape[];
  added: ColumnShape[];
}

function pairColumns(known: ColumnShape[], next: ColumnShape[], renamed: ReadonlySet<number>): Pairing {
  const byAttnum = known.every((c) => c.attnum !== undefined) && next.every((c) => c.attnum !== undefined);
  const key = (c: ColumnShape) => (byAttnum ? `#${c.attnum}` : c.name);
  const nextByKey = new Map(next.map((c) => [key(c), c]));
  const knownKeys = new Set(known.map(key));
  const paired: [ColumnShape, ColumnShape][] = [];
  const dropped: ColumnShape[] = [];
  for (const k of known) {
    const n = nextByKey.get(key(k));
    if (n) paired.push([k, n]);
    else dropped.push(k);
  }
  const added = next.filter((n) => !knownKeys.has(key(n)));
  // Without attnums on both sides, a DDL message still says which column a RENAME COLUMN renamed
  // (its attnum); and a column that "appeared" with an attnum below one of the columns that were
  // there before cannot be new (new columns get the next attnum). With one vanished column,
  // either makes it a rename.
  if (!byAttnum && dropped.length === 1 && added.length === 1 && added[0].attnum !== undefined) {
    const attnum = added[0].attnum;
    if (renamed.has(attnum) || paired.some(([, n]) => (n.attnum ?? 0) > attnum))
      return { paired: [...paired, [dropped[0], added[0]]], dropped: [], added: [] };
  }
  return { paired, dropped, added };
}

function columnDefinition(col: ColumnShape, precise: boolean): string {
  let def = `${quoteIdent(col.name)} ${col.type}`;
  if (precise && col.default) def += ` DEFAULT ${col.default}`;
  if (precise && col.notNull) def += " NOT NULL";
  return def;
}

/**
 * The statements that take the replica table (already at `next`'s name) from `known` to `next`.
 * `precise`: `next` comes from the primary's catalog (DDL message), so NOT NULL, defaults,
 * constraints and indexes are followed too. Changes the replica already has are not repeated.
 */
export function planTableChanges(
  known: TableShape | undefined,
  next: TableShape,
  replica: ReplicaState,
  precise: boolean,
  /** attnums a DDL message reports as renamed (RENAME COLUMN). */
  renamed: ReadonlySet<number> = new Set(),
  /** For added columns: the value the primary's existing rows have (its attmissingval). */
  missing: ReadonlyMap<string, string> = new Map(),
): string[] {
  const table = qualifiedName(next);
  const rel = `${next.schema}.${next.name}`;
  const statements: string[] = [];
  const { paired, dropped, added } = pairColumns(known?.columns ?? [], next.columns, renamed);
  // Only what the replica does not have yet needs doing (a user may have done it by hand). A
  // column dropped and added again under its name (paired by attnum, they are two columns) is
  // dropped and added here too: the new one does not have the old one's values.
  const readded = new Set(added.filter((a) => dropped.some((d) => d.name === a.name)).map((a) => a.name));
  const toDrop = dropped.filter((c) => replica.columns.has(c.name));
  const toAdd = added.filter((c) => !replica.columns.has(c.name) || readded.has(c.name));
  if (!precise && known && toDrop.length > 0 && toAdd.length > 0) {
    const gone = toDrop.map((c) => c.name).join(", ");
    const came = toAdd.map((c) => c.name).join(", ");
    throw new ApplyError(
      `table ${rel} on the primary lost column(s) ${gone} and gained ${came}: from the replication stream alone Strata cannot tell a rename from a drop and an add`,
      `on the replica run either ALTER TABLE ${table} RENAME COLUMN ${quoteIdent(toDrop[0].name)} TO ${quoteIdent(toAdd[0].name)} (a rename) or ALTER TABLE ${table} DROP COLUMN ${quoteIdent(toDrop[0].name)}, ADD COLUMN ${quoteIdent(toAdd[0].name)} ${toAdd[0].type} (a drop and an add); replication resumes by itself. Run \`strata setup-primary\` so that Strata follows DDL exactly`,
      { table: rel, column: toAdd[0].name },
    );
  }
  for (const [k, n] of paired) {
    if (k.name !== n.name && replica.columns.has(k.name) && !replica.columns.has(n.name))
      statements.push(`ALTER TABLE ${table} RENAME COLUMN ${quoteIdent(k.name)} TO ${quoteIdent(n.name)}`);
  }
  for (const c of toDrop) statements.push(`ALTER TABLE ${table} DROP COLUMN ${quoteIdent(c.name)}`);
  for (const c of toAdd) {
    const fill = missing.get(c.name);
    if (fill !== undefined && !(precise && c.default)) {
      // The rows that existed when the primary added the column have this value there, though no
      // change carried it: they get it here too, then the column keeps the primary's default.
      const literal = `'${fill.replace(/'/g, "''")}'::${c.type}`;
      statements.push(
        `ALTER TABLE ${table} ADD COLUMN ${columnDefinition({ ...c, default: literal }, true)}`,
      );
      statements.push(
        `ALTER TABLE ${table} ALTER COLUMN ${quoteIdent(c.name)} ${precise && c.default ? `SET DEFAULT ${c.default}` : "DROP DEFAULT"}`,
      );
    } else {
      statements.push(`ALTER TABLE ${table} ADD COLUMN ${columnDefinition(c, precise)}`);
    }
  }
  // Without a known shape, a table is adopted as it is: only missing columns are added.
  if (!known) return [...statements, ...(precise ? planKeysAndIndexes(undefined, next, replica) : [])];
  for (const [k, n] of paired) {
    const col = quoteIdent(n.name);
    const current = replica.columns.get(n.name) ?? replica.columns.get(k.name);
    if (current === undefined) continue;
    const typeChanged = k.typeOid !== n.typeOid || k.typeMod !== n.typeMod;
    // A replica column of another type than the primary's was chosen on purpose (a wider type,
    // as the Doltgres guide allows): it is left alone.
    if (typeChanged && sameType(current, k.type) && !sameType(current, n.type))
      statements.push(`ALTER TABLE ${table} ALTER COLUMN ${col} TYPE ${n.type} USING ${col}::${n.type}`);
    if (!precise) continue;
    if (k.notNull !== undefined && n.notNull !== undefined && k.notNull !== n.notNull)
      statements.push(`ALTER TABLE ${table} ALTER COLUMN ${col} ${n.notNull ? "SET" : "DROP"} NOT NULL`);
    if (k.default !== undefined && n.default !== undefined && k.default !== n.default)
      statements.push(
        n.default === null
          ? `ALTER TABLE ${table} ALTER COLUMN ${col} DROP DEFAULT`
          : `ALTER TABLE ${table} ALTER COLUMN ${col} SET DEFAULT ${n.default}`,
      );
  }
  if (precise) statements.push(...planKeysAndIndexes(known, next, replica));
  return statements;
}

function planKeysAndIndexes(
  known: TableShape | undefined,
  next: TableShape,
  replica: ReplicaState,
): string[] {
  const table = qualifiedName(next);
  const out: string[] = [];
  const nextConstraints = new Map((next.constraints ?? []).map((c) => [c.name, c.def]));
  const nextIndexes = new Map((next.indexes ?? []).map((i) => [i.name, i.def]));
  for (const c of known?.constraints ?? []) {
    if (nextConstraints.get(c.name) !== c.def && replica.constraints.has(c.name))
      out.push(`ALTER TABLE ${table} DROP CONSTRAINT ${quoteIdent(c.name)}`);
  }
  for (const i of known?.indexes ?? []) {
    if (nextIndexes.get(i.name) !== i.def && replica.indexes.has(i.name))
      out.push(`DROP INDEX ${quoteIdent(next.schema)}.${quoteIdent(i.name)}`);
  }
  const knownConstraints = new Map((known?.constraints ?? []).map((c) => [c.name, c.def]));
  const knownIndexes = new Map((known?.indexes ?? []).map((i) => [i.name, i.def]));
  for (const [name, def] of nextConstraints) {
    const changed = knownConstraints.has(name) && knownConstraints.get(name) !== def;
    // A replica table made from a Relation message may carry the key under another name.
    if (def.startsWith("PRIMARY KEY") && replica.primaryKey !== undefined && replica.primaryKey !== name)
      continue;
    if (!replica.constraints.has(name) || changed)
      out.push(`ALTER TABLE ${table} ADD CONSTRAINT ${quoteIdent(name)} ${def}`);
  }
  for (const [name, def] of nextIndexes) {
    const changed = knownIndexes.has(name) && knownIndexes.get(name) !== def;
    if (!replica.indexes.has(name) || changed) out.push(def);
  }
  return out;
}

/**
 * The shape to remember after `next` was applied: a Relation message's shape keeps what a DDL
 * message or the catalog told before (attnums, NOT NULL, defaults, keys, indexes).
 */
export function mergeShape(known: TableShape | undefined, next: TableShape): TableShape {
  if (!known) return next;
  const byName = new Map(known.columns.map((c) => [c.name, c]));
  return {
    ...next,
    columns: next.columns.map((c) => {
      const k = byName.get(c.name);
      if (!k || (c.attnum !== undefined && k.attnum !== undefined && c.attnum !== k.attnum)) return c;
      return {
        ...c,
        attnum: c.attnum ?? k.attnum,
        notNull: c.notNull ?? k.notNull,
        default: c.default === undefined ? k.default : c.default,
      };
    }),
    constraints: next.constraints ?? known.constraints,
    indexes: next.indexes ?? known.indexes,
  };
}
