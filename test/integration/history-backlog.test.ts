// History under a backlog, checked against a model of the primary. Strata is stopped after its
// snapshot; 300 random transactions run on the primary (one connection, a small key space so
// that keys repeat within and across transactions); then Strata catches up, many upstream
// transactions per batch (docs/decisions.md §12: runs of inserts and updates, repeated keys
// collapsed, tables interleaved). The tables: a keyed one (key changes, swaps, multi-row key
// shifts, deletes and re-inserts, upserts), a composite key, a keyless REPLICA IDENTITY FULL
// one with duplicate rows and TRUNCATEs, and one whose TOASTed column most updates leave
// unchanged (and whose all-bodies updates pgoutput streams in progress). Some transactions roll
// back, some roll back to a savepoint. A JS model of every table, updated as the SQL does,
// records each committed transaction's state, the row versions it wrote and its xid; every
// commit's as-of state, its diff against its parent (and diffs between distant commits), its
// history versions and point lookups must equal the model's.
//
// The seed is printed (t.diagnostic) and in every failure; FAULTS_SEED=<n> replays a run.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, test } from "node:test";
import pg from "pg";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";
import { seededRandom, testSeed } from "../support/workload.ts";

const seed = testSeed();
const SEED = `seed ${seed} (replay: FAULTS_SEED=${seed})`;
const TRANSACTIONS = 300;
const KV_KEYS = 12;
const DOC_KEYS = 5;
const PAIR_A = [1, 2, 3];
const PAIR_B = ["x", "y", "z"];

type Value = string | number | null;
type Row = Value[];
type TableName = "kv" | "pair" | "bag" | "doc";
const TABLES: TableName[] = ["kv", "pair", "bag", "doc"];

/** Columns as compared (doc.body as its md5, in the model too), and key columns ([]: keyless). */
const SPECS: Record<TableName, { columns: string[]; key: string[]; orderBy: string }> = {
  kv: { columns: ["id", "v", "n"], key: ["id"], orderBy: "id" },
  pair: { columns: ["a", "b", "v"], key: ["a", "b"], orderBy: "a, b" },
  bag: { columns: ["v", "w"], key: [], orderBy: "v, w" },
  doc: { columns: ["id", "body", "tag"], key: ["id"], orderBy: "id" },
};

/** A select list of `table`'s compared columns, named `prefix<column>` (doc.body hashed). */
const selectList = (table: TableName, prefix = "") =>
  SPECS[table].columns
    .map((c) => (table === "doc" && c === "body" ? `md5(${prefix}${c}) AS ${prefix}${c}` : `${prefix}${c}`))
    .join(", ");
const canon = (table: TableName, r: Record<string, unknown>, prefix = "") =>
  JSON.stringify(SPECS[table].columns.map((c) => r[prefix + c]));
const keyOf = (table: TableName, row: Row) =>
  JSON.stringify(SPECS[table].key.map((k) => row[SPECS[table].columns.indexOf(k)]));

const md5 = (text: string) => createHash("md5").update(text).digest("hex");
/** A body of 300 md5s (9,600 hex characters, incompressible enough): TOASTed out of line. */
const makeBody = (tag: string) => Array.from({ length: 300 }, (_, i) => md5(`${tag}:${i}`)).join("");

/** The tables' rows: keyed tables by key (JSON of the key values), the keyless one as a list. */
interface TableState {
  kv: Map<string, Row>;
  pair: Map<string, Row>;
  doc: Map<string, Row>;
  bag: Row[];
}
const cloneState = (s: TableState): TableState => ({
  kv: new Map(s.kv),
  pair: new Map(s.pair),
  doc: new Map(s.doc),
  bag: [...s.bag],
});
const rowsOf = (s: TableState, table: TableName): Row[] => (table === "bag" ? s.bag : [...s[table].values()]);
const sortedCanon = (s: TableState, table: TableName) =>
  rowsOf(s, table)
    .map((r) => JSON.stringify(r))
    .sort();

/** What the primary had after each committed transaction, oldest first; [0] is the snapshot's. */
interface Recorded {
  xid: string | null;
  state: TableState;
  /** Row images the transaction wrote (inserts, updates' images after), per table. */
  versions: Record<TableName, string[]>;
  /** Its statements, for failure messages. */
  statements: string[];
}
const recorded: Recorded[] = [];
let commits: { commit_hash: string; upstream_xid: string | null; message: string }[] = [];
let primary: TestCluster;
let strata: StrataProcess;
let replica: pg.Client;
let catchUpMs = 0;
let storeTransactions = 0;
let streamedTransactions = 0;
let rolledBack = 0;

const random = seededRandom(seed);
const int = (n: number) => Math.floor(random() * n);
const pick = <T>(items: readonly T[]): T => items[int(items.length)];
const chance = (p: number) => random() < p;
let serial = 0;
const TEXTS = ["", "plain", `it's "quoted"`, "back\\slash", "ünïcödé ☃", "tab\tand\nnewline"];
const text = (): string | null => (chance(0.1) ? null : `${pick(TEXTS)}#${++serial}`);
const small = (): number | null => (chance(0.1) ? null : int(1000));

const showParam = (p: unknown) =>
  typeof p === "string" && p.length > 100 ? `<${p.length} chars, md5 ${md5(p)}>` : JSON.stringify(p);

/** One primary transaction and the model's copy of the tables it changes. */
class Tx {
  versions: Record<TableName, string[]> = { kv: [], pair: [], bag: [], doc: [] };
  statements: string[] = [];
  changed = false;
  constructor(
    readonly client: pg.Client,
    public state: TableState,
  ) {}

  /** Run a statement that must change `rows` rows (null: not checked, e.g. TRUNCATE). */
  async exec(rows: number | null, sql: string, params: unknown[] = []): Promise<void> {
    this.statements.push(params.length ? `${sql} -- ${params.map(showParam).join(", ")}` : sql);
    const result = await this.client.query(sql, params);
    if (rows !== null)
      assert.equal(result.rowCount, rows, `${SEED}: the model expected ${rows} rows changed by ${sql}`);
  }

  put(table: Exclude<TableName, "bag">, row: Row): void {
    this.state[table].set(keyOf(table, row), row);
    this.versions[table].push(JSON.stringify(row));
    this.changed = true;
  }

  remove(table: Exclude<TableName, "bag">, row: Row): void {
    assert.ok(this.state[table].delete(keyOf(table, row)), `${SEED}: the model removes a row it has`);
    this.changed = true;
  }

  bagAdd(row: Row): void {
    this.state.bag.push(row);
    this.versions.bag.push(JSON.stringify(row));
    this.changed = true;
  }

  bagRemove(row: Row): void {
    const at = this.state.bag.findIndex((r) => JSON.stringify(r) === JSON.stringify(row));
    assert.ok(at >= 0, `${SEED}: the model removes a bag row it has`);
    this.state.bag.splice(at, 1);
    this.changed = true;
  }

  save() {
    return {
      state: cloneState(this.state),
      versions: Object.fromEntries(TABLES.map((t) => [t, [...this.versions[t]]])) as Record<
        TableName,
        string[]
      >,
      changed: this.changed,
    };
  }

  restore(saved: ReturnType<Tx["save"]>): void {
    this.state = saved.state;
    this.versions = saved.versions;
    this.changed = saved.changed;
  }
}

/** An operation: false when it does not apply to the rows there are (another is picked). */
type Op = (tx: Tx) => Promise<boolean>;

const freeIds = (m: Map<string, Row>, n: number) =>
  Array.from({ length: n }, (_, i) => i + 1).filter((id) => !m.has(JSON.stringify([id])));
const someRow = (m: Map<string, Row>) => (m.size ? pick([...m.values()]) : undefined);

const KV_OPS: Op[] = [
  async function insert(tx) {
    const free = freeIds(tx.state.kv, KV_KEYS);
    if (!free.length) return false;
    const row = [pick(free), text(), small()];
    await tx.exec(1, "INSERT INTO kv VALUES ($1, $2, $3)", row);
    tx.put("kv", row);
    return true;
  },
  async function update(tx) {
    const old = someRow(tx.state.kv);
    if (!old) return false;
    const row = [old[0], text(), small()];
    await tx.exec(1, "UPDATE kv SET v = $2, n = $3 WHERE id = $1", row);
    tx.put("kv", row);
    return true;
  },
  async function updateOneColumn(tx) {
    const old = someRow(tx.state.kv);
    if (!old) return false;
    // Sometimes to the same value: a version that changes nothing.
    const v = chance(0.3) ? old[1] : text();
    await tx.exec(1, "UPDATE kv SET v = $2 WHERE id = $1", [old[0], v]);
    tx.put("kv", [old[0], v, old[2]]);
    return true;
  },
  async function moveKey(tx) {
    const old = someRow(tx.state.kv);
    const free = freeIds(tx.state.kv, KV_KEYS);
    if (!old || !free.length) return false;
    const to = pick(free);
    await tx.exec(1, "UPDATE kv SET id = $2, v = v || '>' WHERE id = $1", [old[0], to]);
    tx.remove("kv", old);
    tx.put("kv", [to, old[1] === null ? null : `${old[1]}>`, old[2]]);
    return true;
  },
  async function swapKeys(tx) {
    if (tx.state.kv.size < 2) return false;
    const a = someRow(tx.state.kv)!;
    let b = someRow(tx.state.kv)!;
    while (b[0] === a[0]) b = someRow(tx.state.kv)!;
    // Through key 0 (outside the key space): three key changes.
    await tx.exec(1, "UPDATE kv SET id = 0 WHERE id = $1", [a[0]]);
    tx.remove("kv", a);
    tx.put("kv", [0, a[1], a[2]]);
    await tx.exec(1, "UPDATE kv SET id = $1 WHERE id = $2", [a[0], b[0]]);
    tx.remove("kv", b);
    tx.put("kv", [a[0], b[1], b[2]]);
    await tx.exec(1, "UPDATE kv SET id = $1 WHERE id = 0", [b[0]]);
    tx.remove("kv", [0]);
    tx.put("kv", [b[0], a[1], a[2]]);
    return true;
  },
  async function remove(tx) {
    const old = someRow(tx.state.kv);
    if (!old) return false;
    await tx.exec(1, "DELETE FROM kv WHERE id = $1", [old[0]]);
    tx.remove("kv", old);
    return true;
  },
  async function deleteReinsert(tx) {
    const old = someRow(tx.state.kv);
    if (!old) return false;
    await tx.exec(1, "DELETE FROM kv WHERE id = $1", [old[0]]);
    tx.remove("kv", old);
    const row = [old[0], text(), small()];
    await tx.exec(1, "INSERT INTO kv VALUES ($1, $2, $3)", row);
    tx.put("kv", row);
    return true;
  },
  async function multiUpdate(tx) {
    const k = 2 + int(KV_KEYS);
    const rows = [...tx.state.kv.values()].filter((r) => (r[0] as number) < k);
    await tx.exec(rows.length, "UPDATE kv SET n = coalesce(n, 0) + 1 WHERE id < $1", [k]);
    for (const r of rows) tx.put("kv", [r[0], r[1], ((r[2] as number | null) ?? 0) + 1]);
    return true;
  },
  async function multiDelete(tx) {
    const k = 6 + int(7);
    const rows = [...tx.state.kv.values()].filter((r) => (r[0] as number) > k);
    await tx.exec(rows.length, "DELETE FROM kv WHERE id > $1", [k]);
    for (const r of rows) tx.remove("kv", r);
    return true;
  },
  async function shiftKeys(tx) {
    // Many key changes in one statement: rows below k move up by 100 (where that key is free),
    // or rows up there move back down (where theirs is free).
    const has = (id: number) => tx.state.kv.has(JSON.stringify([id]));
    const all = [...tx.state.kv.values()];
    if (chance(0.5)) {
      const k = 2 + int(KV_KEYS);
      const rows = all.filter((r) => (r[0] as number) < k && !has((r[0] as number) + 100));
      await tx.exec(
        rows.length,
        "UPDATE kv SET id = id + 100 WHERE id < $1 AND id + 100 NOT IN (SELECT id FROM kv)",
        [k],
      );
      for (const r of rows) tx.remove("kv", r);
      for (const r of rows) tx.put("kv", [(r[0] as number) + 100, r[1], r[2]]);
    } else {
      const rows = all.filter((r) => (r[0] as number) > 100 && !has((r[0] as number) - 100));
      await tx.exec(
        rows.length,
        "UPDATE kv SET id = id - 100 WHERE id > 100 AND id - 100 NOT IN (SELECT id FROM kv)",
      );
      for (const r of rows) tx.remove("kv", r);
      for (const r of rows) tx.put("kv", [(r[0] as number) - 100, r[1], r[2]]);
    }
    return true;
  },
  async function upsert(tx) {
    const id = 1 + int(KV_KEYS);
    const v = text();
    const n = small();
    await tx.exec(1, "INSERT INTO kv VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET v = excluded.v", [
      id,
      v,
      n,
    ]);
    const old = tx.state.kv.get(JSON.stringify([id]));
    tx.put("kv", [id, v, old ? old[2] : n]);
    return true;
  },
];

const pairKey = (a: number, b: string) => JSON.stringify([a, b]);
const PAIR_OPS: Op[] = [
  async function insert(tx) {
    const free = PAIR_A.flatMap((a) => PAIR_B.map((b) => [a, b] as const)).filter(
      ([a, b]) => !tx.state.pair.has(pairKey(a, b)),
    );
    if (!free.length) return false;
    const [a, b] = pick(free);
    const row = [a, b, small()];
    await tx.exec(1, "INSERT INTO pair VALUES ($1, $2, $3)", row);
    tx.put("pair", row);
    return true;
  },
  async function updateValue(tx) {
    const old = someRow(tx.state.pair);
    if (!old) return false;
    const row = [old[0], old[1], small()];
    await tx.exec(1, "UPDATE pair SET v = $3 WHERE a = $1 AND b = $2", row);
    tx.put("pair", row);
    return true;
  },
  async function moveKey(tx) {
    const old = someRow(tx.state.pair);
    if (!old) return false;
    const free = PAIR_B.filter((b) => !tx.state.pair.has(pairKey(old[0] as number, b)));
    if (!free.length) return false;
    const to = pick(free);
    await tx.exec(1, "UPDATE pair SET b = $3 WHERE a = $1 AND b = $2", [old[0], old[1], to]);
    tx.remove("pair", old);
    tx.put("pair", [old[0], to, old[2]]);
    return true;
  },
  async function bumpGroup(tx) {
    const a = pick(PAIR_A);
    const rows = [...tx.state.pair.values()].filter((r) => r[0] === a);
    await tx.exec(rows.length, "UPDATE pair SET v = v + 1 WHERE a = $1", [a]);
    for (const r of rows) tx.put("pair", [r[0], r[1], r[2] === null ? null : (r[2] as number) + 1]);
    return true;
  },
  async function shiftKeys(tx) {
    // Several composite keys changed by one statement, up by 10 or back down.
    const has = (a: number, b: Value) => tx.state.pair.has(JSON.stringify([a, b]));
    const all = [...tx.state.pair.values()];
    if (chance(0.5)) {
      const b = pick(PAIR_B);
      const rows = all.filter((r) => r[1] === b && (r[0] as number) < 10 && !has((r[0] as number) + 10, b));
      await tx.exec(
        rows.length,
        "UPDATE pair SET a = a + 10 WHERE b = $1 AND a < 10 AND NOT EXISTS (SELECT 1 FROM pair p WHERE p.a = pair.a + 10 AND p.b = pair.b)",
        [b],
      );
      for (const r of rows) tx.remove("pair", r);
      for (const r of rows) tx.put("pair", [(r[0] as number) + 10, r[1], r[2]]);
    } else {
      const rows = all.filter((r) => (r[0] as number) > 10 && !has((r[0] as number) - 10, r[1]));
      await tx.exec(
        rows.length,
        "UPDATE pair SET a = a - 10 WHERE a > 10 AND NOT EXISTS (SELECT 1 FROM pair p WHERE p.a = pair.a - 10 AND p.b = pair.b)",
      );
      for (const r of rows) tx.remove("pair", r);
      for (const r of rows) tx.put("pair", [(r[0] as number) - 10, r[1], r[2]]);
    }
    return true;
  },
  async function deleteGroup(tx) {
    const a = pick(PAIR_A);
    const rows = [...tx.state.pair.values()].filter((r) => r[0] === a);
    await tx.exec(rows.length, "DELETE FROM pair WHERE a = $1", [a]);
    for (const r of rows) tx.remove("pair", r);
    return true;
  },
  async function remove(tx) {
    const old = someRow(tx.state.pair);
    if (!old) return false;
    await tx.exec(1, "DELETE FROM pair WHERE a = $1 AND b = $2", [old[0], old[1]]);
    tx.remove("pair", old);
    return true;
  },
];

const BAG_W = ["a", "b", null];
const ONE_BAG_ROW = "(SELECT ctid FROM bag WHERE v = $1 AND w IS NOT DISTINCT FROM $2 LIMIT 1)";
const BAG_OPS: Op[] = [
  async function insertTwice(tx) {
    const row = [int(3), pick(BAG_W)];
    await tx.exec(2, "INSERT INTO bag VALUES ($1, $2), ($1, $2)", row);
    tx.bagAdd(row);
    tx.bagAdd([...row]);
    return true;
  },
  async function insert(tx) {
    const row = [int(3), pick(BAG_W)];
    await tx.exec(1, "INSERT INTO bag VALUES ($1, $2)", row);
    tx.bagAdd(row);
    return true;
  },
  async function deleteOne(tx) {
    if (!tx.state.bag.length) return false;
    const row = pick(tx.state.bag);
    await tx.exec(1, `DELETE FROM bag WHERE ctid = ${ONE_BAG_ROW}`, row);
    tx.bagRemove(row);
    return true;
  },
  async function updateOne(tx) {
    if (!tx.state.bag.length) return false;
    const row = pick(tx.state.bag);
    const w = pick(["a", "b", "c", null]);
    await tx.exec(1, `UPDATE bag SET w = $3 WHERE ctid = ${ONE_BAG_ROW}`, [...row, w]);
    tx.bagRemove(row);
    tx.bagAdd([row[0], w]);
    return true;
  },
  async function deleteValue(tx) {
    const v = int(3);
    const rows = tx.state.bag.filter((r) => r[0] === v);
    await tx.exec(rows.length, "DELETE FROM bag WHERE v = $1", [v]);
    for (const r of rows) tx.bagRemove(r);
    return true;
  },
  async function truncate(tx) {
    if (!chance(0.25)) return false; // rarer than the others
    await tx.exec(null, "TRUNCATE bag");
    tx.state.bag = [];
    tx.changed = true;
    return true;
  },
];

const DOC_OPS: Op[] = [
  async function updateTag(tx) {
    // The body is not changed: pgoutput sends it as an unchanged-TOAST marker.
    const old = someRow(tx.state.doc);
    if (!old) return false;
    const tag = int(1000);
    await tx.exec(1, "UPDATE doc SET tag = $2 WHERE id = $1", [old[0], tag]);
    tx.put("doc", [old[0], old[1], tag]);
    return true;
  },
  async function updateAllTags(tx) {
    const rows = [...tx.state.doc.values()];
    await tx.exec(rows.length, "UPDATE doc SET tag = tag + 1");
    for (const r of rows) tx.put("doc", [r[0], r[1], (r[2] as number) + 1]);
    return true;
  },
  async function updateBody(tx) {
    const old = someRow(tx.state.doc);
    if (!old) return false;
    const body = makeBody(`b${++serial}`);
    const tag = int(1000);
    await tx.exec(1, "UPDATE doc SET body = $2, tag = $3 WHERE id = $1", [old[0], body, tag]);
    tx.put("doc", [old[0], md5(body), tag]);
    return true;
  },
  async function updateAllBodies(tx) {
    // Every body at once (tens of kB of TOAST in one transaction: past logical_decoding_work_mem,
    // so pgoutput streams the transaction before it commits).
    const rows = [...tx.state.doc.values()];
    const body = makeBody(`all${++serial}`);
    await tx.exec(rows.length, "UPDATE doc SET body = $1 || id, tag = tag + 1", [body]);
    for (const r of rows) tx.put("doc", [r[0], md5(`${body}${r[0]}`), (r[2] as number) + 1]);
    return true;
  },
  async function insert(tx) {
    const free = freeIds(tx.state.doc, DOC_KEYS);
    if (!free.length) return false;
    const id = pick(free);
    const body = makeBody(`b${++serial}`);
    await tx.exec(1, "INSERT INTO doc VALUES ($1, $2, $3)", [id, body, 0]);
    tx.put("doc", [id, md5(body), 0]);
    return true;
  },
  async function remove(tx) {
    const old = someRow(tx.state.doc);
    if (!old) return false;
    await tx.exec(1, "DELETE FROM doc WHERE id = $1", [old[0]]);
    tx.remove("doc", old);
    return true;
  },
  async function moveKey(tx) {
    // A key change with the body unchanged (a TOAST marker in the new tuple).
    const old = someRow(tx.state.doc);
    const free = freeIds(tx.state.doc, DOC_KEYS);
    if (!old || !free.length) return false;
    const to = pick(free);
    await tx.exec(1, "UPDATE doc SET id = $2 WHERE id = $1", [old[0], to]);
    tx.remove("doc", old);
    tx.put("doc", [to, old[1], old[2]]);
    return true;
  },
];

const OPS: Record<TableName, Op[]> = { kv: KV_OPS, pair: PAIR_OPS, bag: BAG_OPS, doc: DOC_OPS };

async function randomOp(tx: Tx, tables: TableName[]): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt++) if (await pick(OPS[pick(tables)])(tx)) return;
}

/** One random transaction; its record if it committed. */
async function randomTransaction(client: pg.Client, state: TableState): Promise<Recorded | undefined> {
  // Now and then a transaction touches one table only.
  const tables = chance(0.25) ? [pick(TABLES)] : TABLES;
  const tx = new Tx(client, cloneState(state));
  await tx.exec(null, "BEGIN");
  const ops = 1 + int(6);
  for (let i = 0; i < ops; i++) {
    if (chance(0.08)) {
      // A savepoint, rolled back (its changes are never sent) or released.
      await tx.exec(null, "SAVEPOINT s");
      const saved = tx.save();
      for (let j = 0; j <= int(2); j++) await randomOp(tx, tables);
      if (chance(0.5)) {
        await tx.exec(null, "ROLLBACK TO SAVEPOINT s");
        tx.restore(saved);
      } else await tx.exec(null, "RELEASE SAVEPOINT s");
    } else await randomOp(tx, tables);
  }
  // Every committed transaction changes a row (one that changes none is no commit).
  while (!tx.changed) await randomOp(tx, tables);
  const { rows } = await client.query<{ xid: string }>("SELECT txid_current()::text AS xid");
  if (chance(0.05)) {
    await tx.exec(null, "ROLLBACK");
    rolledBack++;
    return undefined;
  }
  await tx.exec(null, "COMMIT");
  return { xid: rows[0].xid, state: tx.state, versions: tx.versions, statements: tx.statements };
}

/** The primary's rows of every table, as the model writes them. */
async function primaryRows(): Promise<Record<TableName, string[]>> {
  const out = {} as Record<TableName, string[]>;
  for (const table of TABLES)
    out[table] = (await primary.query(`SELECT ${selectList(table)} FROM ${table}`))
      .map((r) => canon(table, r))
      .sort();
  return out;
}

before(async () => {
  // Transactions past 64 kB of changes are streamed by pgoutput while in progress (and applied
  // by Strata at their Stream Commit, in the batch of the transactions around them).
  primary = await startPrimary({ settings: { logical_decoding_work_mem: "64kB" } });
  await primary.query(`
    CREATE TABLE kv (id int PRIMARY KEY, v text, n int);
    CREATE TABLE pair (a int, b text, v int, PRIMARY KEY (a, b));
    CREATE TABLE bag (v int, w text);
    ALTER TABLE bag REPLICA IDENTITY FULL;
    CREATE TABLE doc (id int PRIMARY KEY, body text NOT NULL, tag int NOT NULL);
  `);
  // Rows before Strata starts: its snapshot copies them (commit 0).
  const initial: TableState = { kv: new Map(), pair: new Map(), doc: new Map(), bag: [] };
  for (const row of [
    [1, "start1", 10],
    [2, "start2", null],
    [3, null, 30],
    [4, "start4", 40],
    [5, "start5", 50],
    [6, "", 60],
  ]) {
    await primary.query("INSERT INTO kv VALUES ($1, $2, $3)", row);
    initial.kv.set(keyOf("kv", row), row);
  }
  for (const row of [
    [1, "x", 1],
    [1, "y", null],
    [2, "x", 5],
  ]) {
    await primary.query("INSERT INTO pair VALUES ($1, $2, $3)", row);
    initial.pair.set(keyOf("pair", row), row);
  }
  for (const row of [
    [1, "a"],
    [1, "a"],
    [2, null],
    [0, "b"],
  ]) {
    await primary.query("INSERT INTO bag VALUES ($1, $2)", row);
    initial.bag.push(row);
  }
  for (const id of [1, 2, 3]) {
    const body = makeBody(`init${id}`);
    await primary.query("INSERT INTO doc VALUES ($1, $2, 0)", [id, body]);
    initial.doc.set(JSON.stringify([id]), [id, md5(body), 0]);
  }
  const toasted = await primary.query<{ n: string }>(
    "SELECT count(*) AS n FROM doc WHERE pg_column_size(body) > 8000",
  );
  assert.equal(Number(toasted[0].n), 3, "doc bodies are stored out of line, uncompressed");
  recorded.push({
    xid: null,
    state: initial,
    versions: Object.fromEntries(TABLES.map((t) => [t, sortedCanon(initial, t)])) as Record<
      TableName,
      string[]
    >,
    statements: ["(the initial snapshot)"],
  });

  strata = await startStrata({ primary });
  await waitFor(
    "the snapshot commit",
    async () => Number((await strata.query("SELECT count(*) AS n FROM dolt_log"))[0].n) === 1,
  );
  // The backlog: written while Strata is down, applied when it comes back.
  await strata.stop();
  const client = await primary.connect();
  try {
    let state = initial;
    for (let i = 0; i < TRANSACTIONS; i++) {
      const done = await randomTransaction(client, state);
      if (done) {
        recorded.push(done);
        state = done.state;
      }
    }
  } finally {
    await client.end();
  }
  // The model is what the primary has.
  const actual = await primaryRows();
  for (const table of TABLES)
    assert.deepEqual(actual[table], sortedCanon(recorded.at(-1)!.state, table), `${SEED}: model of ${table}`);

  const started = Date.now();
  await strata.start();
  await strata.waitForStreaming();
  await waitFor(
    `${recorded.length} commits`,
    async () => Number((await strata.query("SELECT count(*) AS n FROM dolt_log"))[0].n) >= recorded.length,
    90_000,
  );
  for (const table of TABLES) await waitForSameRows(primary, strata, table, SPECS[table].orderBy);
  catchUpMs = Date.now() - started;
  streamedTransactions = Number(
    (await primary.query("SELECT coalesce(sum(stream_txns), 0) AS n FROM pg_stat_replication_slots"))[0].n,
  );
  // Commit rows are written one statement per batch: their xmin tells the store transactions.
  storeTransactions = Number(
    (await strata.query("SELECT count(DISTINCT xmin::text) AS n FROM strata.commits"))[0].n,
  );
  replica = new pg.Client(strata.connectionConfig());
  await replica.connect();
  commits = (
    await replica.query("SELECT commit_hash, upstream_xid::text, message FROM dolt_log ORDER BY commit_order")
  ).rows;
});
after(async () => {
  await replica?.end();
  await strata?.stop();
  await primary?.stop();
});

/** Where a failure is: the commit, its transaction and that transaction's statements. */
const at = (i: number) =>
  `commit ${i} (${commits[i]?.commit_hash}, xid ${recorded[i]?.xid}), ${SEED}; its transaction:\n  ${recorded[i]?.statements.join("\n  ")}`;

/** Lines of `expected` missing from `actual`, and lines of `actual` not expected (multisets). */
function difference(expected: string[], actual: string[]): string | undefined {
  const extra = [...actual];
  const missing: string[] = [];
  for (const line of expected) {
    const i = extra.indexOf(line);
    if (i >= 0) extra.splice(i, 1);
    else missing.push(line);
  }
  if (!missing.length && !extra.length) return undefined;
  return `missing: ${JSON.stringify(missing)}\nunexpected: ${JSON.stringify(extra)}`;
}

function assertSame(expected: string[], actual: string[], what: string): void {
  const diff = difference(expected, actual);
  if (diff) assert.fail(`${what}\n${diff}`);
}

/** The expected diff of `table` between two recorded states, as "type from to" lines. */
function expectedDiff(table: TableName, from: TableState, to: TableState): string[] {
  if (table === "bag") {
    const before = sortedCanon(from, table);
    const afterRows = sortedCanon(to, table);
    const lines: string[] = [];
    const rest = [...afterRows];
    for (const r of before) {
      const i = rest.indexOf(r);
      if (i >= 0) rest.splice(i, 1);
      else lines.push(`removed ${r} -`);
    }
    for (const r of rest) lines.push(`added - ${r}`);
    return lines.sort();
  }
  const a = from[table];
  const b = to[table];
  const lines: string[] = [];
  for (const key of new Set([...a.keys(), ...b.keys()])) {
    const x = a.has(key) ? JSON.stringify(a.get(key)) : undefined;
    const y = b.has(key) ? JSON.stringify(b.get(key)) : undefined;
    if (x === y) continue;
    const type = x === undefined ? "added" : y === undefined ? "removed" : "modified";
    lines.push(`${type} ${x ?? "-"} ${y ?? "-"}`);
  }
  return lines.sort();
}

async function actualDiff(table: TableName, fromHash: string, toHash: string): Promise<string[]> {
  const { rows } = await replica.query(
    `SELECT diff_type, from_commit, to_commit, ${selectList(table, "from_")}, ${selectList(table, "to_")}
       FROM dolt_diff_${table}($1, $2)`,
    [fromHash, toHash],
  );
  return rows
    .map((r) => {
      assert.equal(r.from_commit, fromHash, `${SEED}: from_commit of dolt_diff_${table}`);
      assert.equal(r.to_commit, toHash, `${SEED}: to_commit of dolt_diff_${table}`);
      const from = r.diff_type === "added" ? "-" : canon(table, r, "from_");
      const to = r.diff_type === "removed" ? "-" : canon(table, r, "to_");
      return `${r.diff_type} ${from} ${to}`;
    })
    .sort();
}

test("one commit per committed transaction, in order, each naming its upstream transaction", (t) => {
  t.diagnostic(SEED);
  t.diagnostic(
    `${TRANSACTIONS} transactions (${rolledBack} rolled back), ${commits.length} commits; caught up in ${catchUpMs} ms; commits written in ${storeTransactions} store transactions (snapshot included); ${streamedTransactions} transactions streamed in progress by pgoutput`,
  );
  const statements = recorded.flatMap((r) => r.statements);
  const count = (pattern: RegExp) => statements.filter((sql) => pattern.test(sql)).length;
  t.diagnostic(
    `committed: ${statements.length} statements; ${count(/^TRUNCATE/)} truncates, ${count(/^ROLLBACK TO/)} savepoints rolled back, ${count(/^UPDATE doc SET (tag|id) /)} updates leaving a TOASTed body unchanged, ${count(/SET (id|a) = (id|a) [+-]/)} multi-row key shifts`,
  );
  assert.equal(
    commits.length,
    recorded.length,
    `${SEED}: the snapshot's commit and one per committed transaction`,
  );
  assert.match(commits[0].message, /snapshot/, `${SEED}: commit 0 is the snapshot`);
  assert.deepEqual(
    commits.slice(1).map((c) => c.upstream_xid),
    recorded.slice(1).map((r) => r.xid),
    `${SEED}: the upstream xids, oldest first`,
  );
});

test("as of every commit, each table is what the primary had after that transaction", async (t) => {
  t.diagnostic(SEED);
  for (const [i, c] of commits.entries()) {
    for (const table of TABLES) {
      const { rows } = await replica.query(`SELECT ${selectList(table)} FROM dolt_as_of_${table}($1)`, [
        c.commit_hash,
      ]);
      assertSame(
        sortedCanon(recorded[i].state, table),
        rows.map((r) => canon(table, r)).sort(),
        `${table} as of ${at(i)}`,
      );
    }
  }
});

test("each commit's diff against its parent is what its transaction changed", async (t) => {
  t.diagnostic(SEED);
  for (let i = 1; i < commits.length; i++)
    for (const table of TABLES)
      assertSame(
        expectedDiff(table, recorded[i - 1].state, recorded[i].state),
        await actualDiff(table, commits[i - 1].commit_hash, commits[i].commit_hash),
        `dolt_diff_${table} into ${at(i)}`,
      );
});

test("dolt_diff_<table>(from, to) between distant commits, either way round", async (t) => {
  t.diagnostic(SEED);
  const choose = seededRandom(seed + 1);
  const n = commits.length;
  const pairs = [
    [0, n - 1],
    [n - 1, 0],
    ...Array.from({ length: 20 }, () => [Math.floor(choose() * n), Math.floor(choose() * n)]),
  ];
  for (const [a, b] of pairs)
    for (const table of TABLES)
      assertSame(
        expectedDiff(table, recorded[a].state, recorded[b].state),
        await actualDiff(table, commits[a].commit_hash, commits[b].commit_hash),
        `${SEED}: dolt_diff_${table} from commit ${a} to commit ${b}`,
      );
});

test("dolt_history_<table> holds every version each transaction wrote, under its commit", async (t) => {
  t.diagnostic(SEED);
  for (const table of TABLES) {
    const { rows } = await replica.query(
      `SELECT commit_hash, ${selectList(table)} FROM dolt_history_${table}`,
    );
    const byCommit = new Map<string, string[]>();
    for (const r of rows) {
      const list = byCommit.get(r.commit_hash) ?? [];
      list.push(canon(table, r));
      byCommit.set(r.commit_hash, list);
    }
    for (const [i, c] of commits.entries())
      assertSame(
        [...recorded[i].versions[table]].sort(),
        (byCommit.get(c.commit_hash) ?? []).sort(),
        `dolt_history_${table} of ${at(i)}`,
      );
  }
});

test("a point lookup of a kv key as of a commit finds the row the primary had, or none", async (t) => {
  t.diagnostic(SEED);
  const choose = seededRandom(seed + 2);
  for (const [i, c] of commits.entries()) {
    for (let k = 0; k < 3; k++) {
      // 0: the key swaps pass through; 101..: where shifted rows go.
      const id = Math.floor(choose() * (KV_KEYS + 1)) + (choose() < 0.25 ? 100 : 0);
      const { rows } = await replica.query(`SELECT ${selectList("kv")} FROM dolt_as_of_kv($1, $2)`, [
        c.commit_hash,
        id,
      ]);
      const expected = recorded[i].state.kv.get(JSON.stringify([id]));
      assertSame(
        expected ? [JSON.stringify(expected)] : [],
        rows.map((r) => canon("kv", r)),
        `kv key ${id} as of ${at(i)}`,
      );
    }
  }
});
