// The version-control read surface against what happened on the primary: after each primary
// transaction the test records the tables' rows; then every commit's as-of state, point lookups,
// diffs between any two commits, per-commit diffs, blame and commit names are checked against
// those records. Tables start with rows (an initial snapshot: a snapshot base for the keyed table,
// history rows for the keyless one), and the workload changes keys, deletes and reinserts, and
// repeats rows in the keyless table.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import pg from "pg";
import { changesKeyHash } from "../../src/history/key-hash.ts";
import { TABLE_SURFACE_VERSION } from "../../src/history/table-surface-sql.ts";
import { startPrimary, type TestCluster } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";
import { seededRandom, testSeed } from "../support/workload.ts";

let primary: TestCluster;
let strata: StrataProcess;
let replica: pg.Client;
const seed = testSeed();

/** Rows of each table after each commit, oldest first; [0] is the snapshot's. */
const states: { xid: string | null; kv: Map<number, string>; bag: string[] }[] = [];
/** dolt_log, oldest first, aligned with `states`. */
let commits: {
  commit_hash: string;
  upstream_xid: string | null;
  date: string;
  upstream_lsn: string | null;
}[] = [];

async function recordState(xid: string | null): Promise<void> {
  const kv = await primary.query<{ id: number; v: string }>("SELECT id, v FROM kv");
  const bag = await primary.query<{ v: number; w: string }>("SELECT v, w FROM bag");
  states.push({
    xid,
    kv: new Map(kv.map((r) => [r.id, r.v])),
    bag: bag.map((r) => `${r.v}|${r.w}`).sort(),
  });
}

const kvRows = (rows: { id: number; v: string }[]) =>
  rows.map((r) => `${r.id}=${r.v}`).sort((a, b) => a.localeCompare(b));
const kvOf = (state: Map<number, string>) =>
  [...state].map(([id, v]) => `${id}=${v}`).sort((a, b) => a.localeCompare(b));

before(async () => {
  primary = await startPrimary();
  await primary.query(`
    CREATE TABLE kv (id int PRIMARY KEY, v text NOT NULL);
    CREATE TABLE bag (v int, w text);
    ALTER TABLE bag REPLICA IDENTITY FULL;
    INSERT INTO kv SELECT g, 'start' || g FROM generate_series(1, 20) g;
    INSERT INTO bag VALUES (1, 'a'), (1, 'a'), (2, 'b');
  `);
  await recordState(null);
  strata = await startStrata({ primary });
  await strata.waitForStreaming();

  const random = seededRandom(seed);
  const pick = (n: number) => Math.floor(random() * n);
  let nextId = 100;
  for (let i = 0; i < 30; i++) {
    const client = await primary.connect();
    try {
      await client.query("BEGIN");
      const ids = (await client.query<{ id: number }>("SELECT id FROM kv ORDER BY id")).rows.map((r) => r.id);
      for (let op = 0; op < 1 + pick(3); op++) {
        const kind = pick(6);
        const id = ids[pick(ids.length)];
        if (kind === 0 || ids.length === 0) {
          await client.query("INSERT INTO kv VALUES ($1, $2)", [nextId, `new${nextId}`]);
          ids.push(nextId++);
        } else if (kind === 1) {
          await client.query("DELETE FROM kv WHERE id = $1", [id]);
          ids.splice(ids.indexOf(id), 1);
        } else if (kind === 2) {
          // A key change: the row moves from id to a new key.
          await client.query("UPDATE kv SET id = $1, v = v || '>' WHERE id = $2", [nextId, id]);
          ids.splice(ids.indexOf(id), 1, nextId++);
        } else if (kind === 3) {
          await client.query("INSERT INTO bag VALUES ($1, $2), ($1, $2)", [pick(3), "abc"[pick(3)]]);
        } else if (kind === 4) {
          await client.query("DELETE FROM bag WHERE ctid = (SELECT min(ctid) FROM bag)");
        } else {
          await client.query("UPDATE kv SET v = v || $1 WHERE id = $2", [`.${i}`, id]);
        }
      }
      // Every transaction changes something (an empty one is not a commit).
      if (ids.length === 0) await client.query("INSERT INTO kv VALUES ($1, 'refill')", [nextId++]);
      else await client.query("UPDATE kv SET v = v || '+' WHERE id = $1", [ids[pick(ids.length)]]);
      // A deleted key comes back now and then, in a later transaction.
      if (i % 7 === 6) await client.query("INSERT INTO kv VALUES (1, 'back') ON CONFLICT (id) DO NOTHING");
      const { rows } = await client.query<{ xid: string }>("SELECT txid_current()::text AS xid");
      await client.query("COMMIT");
      await recordState(rows[0].xid);
    } finally {
      await client.end();
    }
  }
  await waitForSameRows(primary, strata, "kv", "id");
  await waitForSameRows(primary, strata, "bag", "v, w");
  replica = new pg.Client(strata.connectionConfig());
  await replica.connect();
  commits = (
    await replica.query(
      "SELECT commit_hash, upstream_xid::text, date::text, upstream_lsn::text FROM dolt_log ORDER BY commit_order",
    )
  ).rows;
  // Only transactions that changed a published table are commits; every recorded one did.
  assert.equal(commits.length, states.length, `seed ${seed}: one commit per transaction plus the snapshot`);
  for (const [i, c] of commits.entries())
    if (i > 0)
      assert.equal(
        c.upstream_xid,
        states[i].xid,
        `seed ${seed}: commit ${i} is transaction ${states[i].xid}`,
      );
});
after(async () => {
  await replica?.end();
  await strata?.stop();
  await primary?.stop();
});

test("as of every commit, each table is what the primary had after that transaction", async () => {
  for (const [i, c] of commits.entries()) {
    const kv = await replica.query("SELECT id, v FROM dolt_as_of_kv($1)", [c.commit_hash]);
    assert.deepEqual(kvRows(kv.rows), kvOf(states[i].kv), `seed ${seed}: kv as of commit ${i}`);
    const bag = await replica.query<{ v: number; w: string }>("SELECT v, w FROM dolt_as_of_bag($1)", [
      c.commit_hash,
    ]);
    assert.deepEqual(
      bag.rows.map((r) => `${r.v}|${r.w}`).sort(),
      states[i].bag,
      `seed ${seed}: bag as of ${i}`,
    );
  }
});

/** Every key ever present, looked up as of every commit: the row the primary had, or none. */
async function assertPointLookups(): Promise<void> {
  const keys = new Set(states.flatMap((s) => [...s.kv.keys()]));
  for (const [i, c] of commits.entries()) {
    for (const id of keys) {
      const { rows } = await replica.query("SELECT id, v FROM dolt_as_of_kv($1, $2)", [c.commit_hash, id]);
      const expected = states[i].kv.get(id);
      assert.deepEqual(
        rows.map((r) => r.v),
        expected === undefined ? [] : [expected],
        `seed ${seed}: key ${id} as of commit ${i}`,
      );
    }
  }
}

test("a point lookup by key as of a commit finds the row the primary had, or none", async () => {
  await assertPointLookups();
  // The lookup strata.row_as_of makes. The table is small enough for a scan to be cheaper, so
  // scans are off: what matters is that the key index can serve it (its expression matches).
  await replica.query("SET enable_seqscan = off");
  const plan = (
    await replica.query(
      `EXPLAIN SELECT * FROM strata.changes c
        WHERE ${changesKeyHash("c.rel", "c.row_key")} = ${changesKeyHash("$1::text", "$2::jsonb")}
          AND c.rel = $1 AND c.row_key = $2 AND c.commit_seq > 3 ORDER BY c.commit_seq LIMIT 1`,
      ["public.kv", { id: 1 }],
    )
  ).rows
    .map((r) => r["QUERY PLAN"])
    .join("\n");
  await replica.query("RESET enable_seqscan");
  assert.match(plan, /Index Scan using changes_key/, `the lookup descends the key index:\n${plan}`);
});

test("dolt_history_<table> reads its own table's changes from changes_rel, not every table's", async () => {
  // As above: scans off, so that the plan shows whether the index can serve the query.
  await replica.query("SET enable_seqscan = off");
  const plan = (await replica.query("EXPLAIN SELECT * FROM dolt_history_kv")).rows
    .map((r) => r["QUERY PLAN"])
    .join("\n");
  await replica.query("RESET enable_seqscan");
  assert.match(
    plan,
    /Index Scan on changes_rel .*\n\s*Index Cond: \(rel = 'public\.kv'::text\)/,
    `changes found by their table:\n${plan}`,
  );
});

/** The expected diff of kv between two recorded states, as "diff_type from->to" lines. */
function expectedKvDiff(from: Map<number, string>, to: Map<number, string>): string[] {
  const lines: string[] = [];
  for (const id of new Set([...from.keys(), ...to.keys()])) {
    const a = from.get(id);
    const b = to.get(id);
    if (a === b) continue;
    const type = a === undefined ? "added" : b === undefined ? "removed" : "modified";
    lines.push(`${type} ${a === undefined ? "-" : `${id}=${a}`} ${b === undefined ? "-" : `${id}=${b}`}`);
  }
  return lines.sort();
}

const diffLines = (rows: Record<string, unknown>[]) =>
  rows
    .map(
      (r) =>
        `${r.diff_type} ${r.from_id === null ? "-" : `${r.from_id}=${r.from_v}`} ${r.to_id === null ? "-" : `${r.to_id}=${r.to_v}`}`,
    )
    .sort();

test("dolt_diff_<table>(from, to) between any two commits is the difference of their states", async () => {
  const random = seededRandom(seed + 1);
  const pairs = [
    [0, commits.length - 1],
    [commits.length - 1, 0],
    ...Array.from({ length: 25 }, () => [
      Math.floor(random() * commits.length),
      Math.floor(random() * commits.length),
    ]),
  ];
  for (const [a, b] of pairs) {
    const { rows } = await replica.query("SELECT * FROM dolt_diff_kv($1, $2)", [
      commits[a].commit_hash,
      commits[b].commit_hash,
    ]);
    assert.deepEqual(
      diffLines(rows),
      expectedKvDiff(states[a].kv, states[b].kv),
      `seed ${seed}: diff ${a}..${b}`,
    );
    for (const r of rows) {
      assert.equal(r.from_commit, commits[a].commit_hash);
      assert.equal(r.to_commit, commits[b].commit_hash);
    }
    // The keyless table: added and removed rows, as many times as they were.
    const bag = await replica.query(
      "SELECT diff_type, from_v, from_w, to_v, to_w FROM dolt_diff_bag($1, $2)",
      [commits[a].commit_hash, commits[b].commit_hash],
    );
    const before = [...states[a].bag];
    for (const r of bag.rows) {
      if (r.diff_type === "removed") {
        const at = before.indexOf(`${r.from_v}|${r.from_w}`);
        assert.ok(at >= 0, `seed ${seed}: removed row ${r.from_v}|${r.from_w} was there`);
        before.splice(at, 1);
      } else {
        assert.equal(r.diff_type, "added");
        before.push(`${r.to_v}|${r.to_w}`);
      }
    }
    assert.deepEqual(
      before.sort(),
      states[b].bag,
      `seed ${seed}: bag diff ${a}..${b} turns one into the other`,
    );
  }
});

test("dolt_diff_<table> (the view) holds each commit's changes against its parent", async () => {
  for (let i = 1; i < commits.length; i++) {
    const { rows } = await replica.query("SELECT * FROM dolt_diff_kv WHERE to_commit = $1", [
      commits[i].commit_hash,
    ]);
    assert.deepEqual(
      diffLines(rows),
      expectedKvDiff(states[i - 1].kv, states[i].kv),
      `seed ${seed}: commit ${i}`,
    );
    for (const r of rows) assert.equal(r.from_commit, commits[i - 1].commit_hash);
  }
  // The snapshot commit added every row it copied.
  const first = await replica.query("SELECT * FROM dolt_diff_kv WHERE to_commit = $1", [
    commits[0].commit_hash,
  ]);
  assert.deepEqual(diffLines(first.rows), expectedKvDiff(new Map(), states[0].kv));
  // The same through dolt_diff on the store (row images as jsonb) and the list of changed tables.
  const generic = await replica.query(
    "SELECT diff_type, from_row->>'id' AS from_id, from_row->>'v' AS from_v, to_row->>'id' AS to_id, to_row->>'v' AS to_v FROM dolt.dolt_diff($1, $2, 'kv')",
    [commits[0].commit_hash, "HEAD"],
  );
  assert.deepEqual(diffLines(generic.rows), expectedKvDiff(states[0].kv, states.at(-1)!.kv));
  const tables = await replica.query("SELECT table_name FROM dolt_diff WHERE commit_hash = $1 ORDER BY 1", [
    commits[0].commit_hash,
  ]);
  assert.deepEqual(
    tables.rows.map((r) => r.table_name),
    ["public.bag", "public.kv"],
  );
});

test("dolt_history_<table> at the snapshot's commit holds every row the snapshot copied, as it was", async () => {
  // The snapshot writes no history rows: untouched rows are read from the table, the others from
  // their first later change (under their key then, also when a later update moved it; a key a
  // row was moved to, and then changed again, had no row at the base).
  const { rows } = await replica.query("SELECT id, v FROM dolt_history_kv WHERE commit_hash = $1", [
    commits[0].commit_hash,
  ]);
  assert.deepEqual(kvRows(rows), kvOf(states[0].kv), `seed ${seed}`);
});

test("dolt_blame_<table> names the last commit that changed each row", async () => {
  const { rows } = await replica.query("SELECT id, commit FROM dolt_blame_kv");
  const last = states.length - 1;
  assert.equal(rows.length, states[last].kv.size);
  for (const r of rows) {
    let at = last;
    while (at > 0 && states[at - 1].kv.get(r.id) === states[at].kv.get(r.id)) at--;
    assert.equal(r.commit, commits[at].commit_hash, `seed ${seed}: blame of key ${r.id}`);
  }
});

test("commits are named by HEAD~N, hash prefixes, timestamps and upstream LSNs", async () => {
  const seqOf = async (name: string) =>
    (await replica.query<{ s: string }>("SELECT dolt.commit_seq($1)::text AS s", [name])).rows[0].s;
  const n = commits.length;
  const order = (
    await replica.query("SELECT commit_order::text AS s FROM dolt_log ORDER BY commit_order")
  ).rows.map((r) => r.s);
  assert.equal(await seqOf("HEAD"), order[n - 1]);
  assert.equal(await seqOf("head~3"), order[n - 4]);
  assert.equal(await seqOf("HEAD^^"), order[n - 3]);
  assert.equal(await seqOf(`${commits[5].commit_hash}~2`), order[3]);
  assert.equal(await seqOf(commits[7].commit_hash.slice(0, 12)), order[7]);
  assert.equal(await seqOf(`lsn:${commits[9].upstream_lsn}`), order[9]);
  assert.equal(await seqOf(commits[10].date), order[10]);
  const log = await replica.query("SELECT commit_hash FROM dolt_log('HEAD~2')");
  assert.equal(log.rows.length, n - 2);
  assert.equal(log.rows[0].commit_hash, commits[n - 3].commit_hash);

  const failure = async (name: string) =>
    (await replica.query("SELECT dolt.commit_seq($1)", [name]).then(
      () => assert.fail(`${name} should not name a commit`),
      (err) => err,
    )) as pg.DatabaseError;
  const unknown = await failure("no-such-commit");
  assert.match(unknown.message, /no commit named "no-such-commit"/);
  assert.match(unknown.hint ?? "", /HEAD~N/);
  assert.match((await failure(`HEAD~${n + 5}`)).message, /goes back before the first commit/);
  const early = await failure("lsn:0/1");
  assert.match(early.message, /no replicated commit at or before upstream LSN/);
  assert.match(
    early.hint ?? "",
    /the first replicated commit is at upstream LSN [0-9A-F]+\/[0-9A-F]+; the primary's state before it is not here/,
  );
  assert.match((await failure("lsn:nope")).message, /is not an LSN/);
  assert.match((await failure("1999-01-01")).message, /no commit at or before/);
  const firstChars = commits.map((c) => c.commit_hash[0]);
  const repeated = firstChars.find((ch, i) => firstChars.indexOf(ch) !== i);
  if (repeated) assert.match((await failure(repeated)).message, /ambiguous/);
  const missing = await replica.query("SELECT * FROM dolt_as_of_kv('HEAD~999')").then(
    () => undefined,
    (err) => err,
  );
  assert.match(String(missing), /goes back before the first commit/);
});

test("a store whose history predates changes_key, changes_rel and commits_hash gets them at start, and lookups find the same rows", async () => {
  // The key index as Strata built it before changes_key (docs/decisions.md, section 5), the
  // commits' two hash indexes before commits_hash, and per-table objects made by the Strata of then.
  await replica.query(
    "CREATE INDEX changes_row ON strata.changes (rel, row_key, commit_seq); DROP INDEX strata.changes_key; DROP INDEX strata.changes_rel",
  );
  await replica.query(
    `DROP INDEX strata.commits_hash; ALTER TABLE strata.commits ADD CONSTRAINT commits_hash_key UNIQUE (hash);
     CREATE INDEX commits_hash_prefix ON strata.commits (hash text_pattern_ops)`,
  );
  await replica.query(
    `UPDATE strata.table_surfaces SET signature = jsonb_set(signature::jsonb, '{v}', '6')::text`,
  );
  await restartStrata();
  assert.match(strata.logs, /upgrading the history's key index/);
  assert.match(strata.logs, /building changes_rel/);
  const { rows } = await replica.query(
    "SELECT relname FROM pg_class WHERE relnamespace = 'strata'::regnamespace AND relname IN ('changes_row', 'changes_key', 'changes_rel') ORDER BY 1",
  );
  assert.deepEqual(
    rows.map((r) => r.relname),
    ["changes_key", "changes_rel"],
  );
  // Analyzed with it, so that the planner knows how the index's hash is spread.
  const stats = await replica.query(
    "SELECT 1 FROM pg_stats WHERE schemaname = 'strata' AND tablename = 'changes_key'",
  );
  assert.equal(stats.rows.length, 1, "statistics on changes_key's expression");
  const versions = await replica.query(
    "SELECT DISTINCT signature::jsonb ->> 'v' AS v FROM strata.table_surfaces",
  );
  assert.deepEqual(
    versions.rows.map((r) => r.v),
    [String(TABLE_SURFACE_VERSION)],
    "every table's surface made again",
  );
  await assertPointLookups();
  const hashIndexes = await replica.query(
    `SELECT indexrelid::regclass::text AS name, indisunique AS is_unique FROM pg_index
      WHERE indrelid = 'strata.commits'::regclass AND indkey::text = (SELECT attnum::text FROM pg_attribute
            WHERE attrelid = 'strata.commits'::regclass AND attname = 'hash')`,
  );
  assert.deepEqual(hashIndexes.rows, [{ name: "strata.commits_hash", is_unique: true }]);
  const head = (await replica.query("SELECT hash, seq FROM strata.commits ORDER BY seq DESC LIMIT 1"))
    .rows[0];
  assert.equal(
    (await replica.query("SELECT dolt.commit_seq($1) AS seq", [head.hash.slice(0, 10)])).rows[0].seq,
    head.seq,
    "a hash prefix still names its commit",
  );
  await assert.rejects(
    replica.query(
      "INSERT INTO strata.commits (seq, hash, committer, email, date, message) VALUES ($1, $2, 'x', 'x', now(), 'x')",
      [Number(head.seq) + 1000, head.hash],
    ),
    /commits_hash/,
    "hashes stay unique",
  );
  // Started again with changes_key in place: nothing to upgrade.
  await restartStrata();
  assert.doesNotMatch(strata.logs, /upgrading the history/);
});

/** Stop Strata and start it again on the same data directory; `replica` is connected anew. */
async function restartStrata(): Promise<void> {
  await replica.end();
  await strata.stop();
  await strata.start();
  replica = new pg.Client(strata.connectionConfig());
  await replica.connect();
}
