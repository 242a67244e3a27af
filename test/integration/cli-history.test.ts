// `strata log`, `strata diff` and `strata status`, run as a user runs them (a child process with
// --config) against a running Strata, checked against the SQL surface in the store (dolt_log,
// dolt_diff_<table>, dolt_replication_status) and against what happened on the primary. The text
// form for terminals is checked in-process (a child's stdout is a pipe, never a terminal).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import pg from "pg";
import { diffCommand } from "../../src/cli/diff.ts";
import { logCommand } from "../../src/cli/log.ts";
import { statusCommand } from "../../src/cli/status.ts";
import { loadConfig } from "../../src/config/load.ts";
import { clusterPaths } from "../../src/store/cluster.ts";
import { textOutput } from "../support/cli-output.ts";
import { startPrimary, TEST_PASSWORD, TEST_USER, type TestCluster } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..", "..");

let primary: TestCluster;
let strata: StrataProcess;
/** HEAD before and after the transactions the diffs are about. */
let before_: string;
let after_: string;
/** The primary's rows at those two points. */
let kvBefore: Map<number, string>;
let kvAfter: Map<number, string>;
let bagBefore: string[];
let bagAfter: string[];

/** SQL on the store itself (its unix socket), in UTC like the commands: the surface, not the front door. */
async function storeQuery<T extends pg.QueryResultRow = pg.QueryResultRow>(
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({
    host: clusterPaths({ root: join(strata.dataDir, "store") }).socketDir,
    port: 5432,
    user: TEST_USER,
    password: TEST_PASSWORD,
    database: "postgres",
    options: "-c TimeZone=UTC",
  });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

const head = async () => (await storeQuery("SELECT dolt.commit_hash('HEAD') AS h"))[0].h as string;

async function cli(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run(
    process.execPath,
    ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args, "--config", strata.configFile],
    { cwd: ROOT, maxBuffer: 64 * 1024 * 1024 },
  );
}

/** A command that must fail: its exit code and stderr. */
async function cliFails(...args: string[]): Promise<{ code: number; stderr: string }> {
  return cli(...args).then(
    () => assert.fail(`strata ${args.join(" ")} should fail`),
    (err) => ({ code: err.code, stderr: err.stderr }),
  );
}

const jsonLines = (text: string) =>
  text
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line));

const loaded = () => loadConfig(strata.configFile);

async function primaryState() {
  const kv = await primary.query<{ id: number; v: string }>("SELECT id, v FROM kv");
  const bag = await primary.query<{ a: number; b: string | null }>("SELECT a, b FROM bag");
  return {
    kv: new Map(kv.map((r) => [r.id, r.v])),
    bag: bag.map((r) => JSON.stringify([r.a, r.b])).sort(),
  };
}

async function caughtUp() {
  await waitForSameRows(primary, strata, "kv", "id");
  await waitForSameRows(primary, strata, "bag", "a, b");
  await waitForSameRows(primary, strata, "tick", "n");
}

before(async () => {
  primary = await startPrimary();
  await primary.query(`
    CREATE TABLE kv (id int PRIMARY KEY, v text NOT NULL);
    CREATE TABLE bag (a int, b text);
    ALTER TABLE bag REPLICA IDENTITY FULL;
    CREATE TABLE tick (n int PRIMARY KEY);
    INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 5) g;
    INSERT INTO bag VALUES (1, 'a'), (1, 'a');
  `);
  strata = await startStrata({ primary });
  // More commits than the log's default limit of 50.
  for (let n = 1; n <= 55; n++) await primary.query("INSERT INTO tick VALUES ($1)", [n]);
  await caughtUp();
  before_ = await head();
  ({ kv: kvBefore, bag: bagBefore } = await primaryState());
  await primary.query("INSERT INTO kv VALUES (6, 'six')");
  await primary.query("UPDATE kv SET v = 'two, changed' WHERE id = 2");
  await primary.query("BEGIN; DELETE FROM kv WHERE id = 3; INSERT INTO bag VALUES (2, NULL); COMMIT");
  await primary.query("UPDATE kv SET id = 30 WHERE id = 4");
  await primary.query("DELETE FROM bag WHERE ctid = (SELECT ctid FROM bag WHERE a = 1 LIMIT 1)");
  await caughtUp();
  after_ = await head();
  ({ kv: kvAfter, bag: bagAfter } = await primaryState());
});

after(async () => {
  await strata?.stop();
  await primary?.stop();
});

test("log --json is dolt_log: every column, newest first, from a revision, with --limit", async () => {
  const surface = (await storeQuery<{ j: string }>("SELECT to_json(l)::text AS j FROM dolt.dolt_log l")).map(
    (r) => JSON.parse(r.j),
  );
  assert.ok(surface.length > 60, `expected a history longer than the default limit, got ${surface.length}`);

  const all = jsonLines((await cli("log", "--limit", "0", "--json")).stdout);
  assert.deepEqual(all, surface);
  assert.deepEqual(
    all.map((c) => c.commit_order),
    [...all.map((c) => c.commit_order)].sort((a, b) => b - a),
  );
  assert.equal(all[0].commit_hash, after_);
  assert.match(all[0].message, /^replicated transaction \d+ \(commit LSN [0-9A-F]+\/[0-9A-F]+\)/);
  assert.match(all.at(-1).message, /^initial snapshot at /);

  // Without --json on a pipe: the same JSON lines; 50 commits by default.
  const piped = (await cli("log")).stdout;
  assert.deepEqual(jsonLines(piped), surface.slice(0, 50));
  assert.equal(piped.split("\n").filter(Boolean).length, 50);

  assert.deepEqual(jsonLines((await cli("log", "--limit", "3", "--json")).stdout), surface.slice(0, 3));
  // From a revision: by ancestry, and by a prefix of a hash.
  assert.deepEqual(jsonLines((await cli("log", "HEAD~2", "-n", "2")).stdout), surface.slice(2, 4));
  const fifth = surface[5].commit_hash as string;
  assert.deepEqual(jsonLines((await cli("log", fifth.slice(0, 10), "--limit", "1")).stdout), [surface[5]]);

  const bad = await cliFails("log", "--limit", "-1");
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--limit.*is invalid.*whole number/);
});

test("log on a terminal: a table with short hashes, and a note when the limit cut it", async () => {
  const surface = await storeQuery<{ commit_hash: string; message: string }>(
    "SELECT commit_hash, message FROM dolt.dolt_log LIMIT 3",
  );
  const out = textOutput();
  await logCommand(loaded(), { limit: 3 }, out);
  assert.match(out.lines[0], /^commit\s+date \(UTC\)\s+committer\s+upstream lsn\s+message$/);
  assert.equal(out.lines.length, 5);
  surface.forEach((commit, i) => {
    const line = out.lines[i + 1];
    assert.ok(line.startsWith(`${commit.commit_hash.slice(0, 8)}  `), line);
    assert.match(line, /\d{4}-\d\d-\d\d \d\d:\d\d:\d\d {2}strata {5}[0-9A-F]+\/[0-9A-F]+ +/);
    assert.ok(line.endsWith(commit.message), line);
  });
  assert.match(out.lines[4], /older commits not shown: --limit N for more, --limit 0 for all/);
});

test("diff FROM TO --json lists the tables changed in between, with their row counts", async () => {
  const { stdout } = await cli("diff", before_, after_, "--json");
  assert.deepEqual(jsonLines(stdout), [
    {
      table: "public.bag",
      added: 1,
      modified: 0,
      removed: 1,
      data_change: true,
      schema_change: false,
    },
    {
      table: "public.kv",
      added: 2,
      modified: 1,
      removed: 2,
      data_change: true,
      schema_change: false,
    },
  ]);
  // The other way round, the counts swap; HEAD~5 names the same commit as before_.
  const back = jsonLines((await cli("diff", "HEAD", "HEAD~5")).stdout);
  assert.deepEqual(
    back.map((t) => [t.table, t.added, t.modified, t.removed]),
    [
      ["public.bag", 1, 0, 1],
      ["public.kv", 2, 1, 2],
    ],
  );
  assert.deepEqual(jsonLines((await cli("diff", "HEAD~1", "HEAD~1")).stdout), []);

  const out = textOutput();
  await diffCommand(loaded(), { from: before_, to: after_ }, out);
  assert.deepEqual(out.lines, [
    `${before_.slice(0, 8)} → ${after_.slice(0, 8)}: 2 tables changed`,
    "table       added  modified  removed  notes",
    "public.bag      1         0        1",
    "public.kv       2         1        2",
  ]);
});

test("diff FROM TO TABLE gives the rows that differ, as dolt_diff_<table> does and as the primary changed", async () => {
  const surface = (
    await storeQuery<{ j: string }>("SELECT to_json(d)::text AS j FROM public.dolt_diff_kv($1, $2) d", [
      before_,
      after_,
    ])
  ).map((r) => JSON.parse(r.j));
  const rows = jsonLines((await cli("diff", before_, after_, "kv", "--json")).stdout);
  const byKey = (a: { to_id: number | null; from_id: number | null }, b: typeof a) =>
    (a.to_id ?? a.from_id)! - (b.to_id ?? b.from_id)!;
  assert.deepEqual(rows, [...surface].sort(byKey));
  for (const r of rows) {
    assert.equal(r.from_commit, before_);
    assert.equal(r.to_commit, after_);
  }

  // What happened on the primary between the two points, key by key.
  const expected: unknown[] = [];
  for (const id of new Set([...kvBefore.keys(), ...kvAfter.keys()])) {
    const from = kvBefore.get(id) ?? null;
    const to = kvAfter.get(id) ?? null;
    if (from === to) continue;
    expected.push({
      diff_type: from === null ? "added" : to === null ? "removed" : "modified",
      from_id: from === null ? null : id,
      from_v: from,
      to_id: to === null ? null : id,
      to_v: to,
    });
  }
  assert.deepEqual(
    rows.map(({ diff_type, from_id, from_v, to_id, to_v }) => ({ diff_type, from_id, from_v, to_id, to_v })),
    expected.sort((a, b) => byKey(a as never, b as never)),
  );

  // A table without a key: a multiset of rows.
  const bagRows = jsonLines((await cli("diff", "HEAD~5", "HEAD", "public.bag")).stdout);
  const changed = (side: "from" | "to") =>
    bagRows
      .filter((r) => r[`${side}_a`] !== null)
      .map((r) => JSON.stringify([r[`${side}_a`], r[`${side}_b`]]));
  const minus = (a: string[], b: string[]) => {
    const rest = [...b];
    return a.filter((x) => {
      const i = rest.indexOf(x);
      if (i < 0) return true;
      rest.splice(i, 1);
      return false;
    });
  };
  assert.deepEqual(changed("to").sort(), minus(bagAfter, bagBefore).sort());
  assert.deepEqual(changed("from").sort(), minus(bagBefore, bagAfter).sort());

  const out = textOutput();
  await diffCommand(loaded(), { from: "HEAD~5", to: after_, table: "kv" }, out);
  assert.deepEqual(out.lines, [
    `public.kv: ${before_.slice(0, 8)} (HEAD~5) → ${after_.slice(0, 8)}`,
    '~ id=2  v: v2 → "two, changed"',
    "- id=3  v=v3",
    "- id=4  v=v4",
    "+ id=6  v=six",
    "+ id=30  v=v4",
    "5 rows: 2 added, 1 modified, 2 removed",
  ]);
});

test("a bad commit or table name: the store's message and hint, exit 1, no stack trace", async () => {
  const named = await cliFails("diff", "nope", "HEAD", "kv");
  assert.equal(named.code, 1);
  assert.equal(
    named.stderr,
    'strata: no commit named "nope"\nhint: name a commit by its hash (or a unique prefix of it), HEAD, HEAD~N, a tag, a timestamp, or lsn:X/Y; SELECT * FROM dolt_log lists them\n',
  );
  const tooFar = await cliFails("log", "HEAD~1000");
  assert.equal(tooFar.code, 1);
  assert.match(
    tooFar.stderr,
    /^strata: commit name "HEAD~1000" goes back before the first commit\nhint: HEAD has \d+ ancestors?\n$/,
  );
  const table = await cliFails("diff", "HEAD~1", "HEAD", "no_such_table");
  assert.equal(table.code, 1);
  assert.equal(table.stderr, 'strata: table "no_such_table" does not exist\n');
});

test("status: replication, uncommitted changes and HEAD, as the surface has them", async () => {
  const status = JSON.parse((await cli("status", "--json")).stdout);
  const [headRow] = await storeQuery<{ j: string }>(
    "SELECT to_json(l)::text AS j FROM dolt.dolt_log l ORDER BY commit_order DESC LIMIT 1",
  );
  assert.deepEqual(status.head, JSON.parse(headRow.j));
  assert.equal(status.replication.length, 1);
  const stream = status.replication[0];
  assert.equal(stream.slot_name, "strata_slot");
  assert.equal(stream.state, "streaming");
  assert.equal(stream.current_error, null);
  assert.match(stream.flushed_lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
  assert.deepEqual(status.status, []);
  // A pipe without --json gets the same JSON line.
  assert.deepEqual(Object.keys(JSON.parse((await cli("status")).stdout)), ["head", "replication", "status"]);

  const out = textOutput();
  await statusCommand(loaded(), out);
  const text = out.lines.join("\n");
  assert.match(
    text,
    new RegExp(
      `^HEAD {2,}${status.head.commit_hash.slice(0, 8)} {2}\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d UTC {2}replicated transaction`,
    ),
  );
  assert.match(
    text,
    /\nreplication +strata_slot from 127\.0\.0\.1:\d+\/postgres \(publication strata_slot\)\n/,
  );
  assert.match(text, /\n {2}state +streaming\n/);
  assert.match(text, /\n {2}position +received [0-9A-F]+\/[0-9A-F]+ {2}flushed [0-9A-F]+\/[0-9A-F]+ {2}lag /);
  assert.match(text, /\n {2}error +none\n/);
  assert.match(text, /\nuncommitted +nothing \(every replicated transaction is a commit\)$/);
});

test("diff without the table's typed function reads the row images, in the same shape", async () => {
  const typed = (await cli("diff", before_, after_, "kv")).stdout;
  await storeQuery("DROP FUNCTION public.dolt_diff_kv(text, text)");
  const fromImages = (await cli("diff", before_, after_, "kv")).stdout;
  assert.deepEqual(jsonLines(fromImages), jsonLines(typed));
});

// Last: it stops Strata.
test("with Strata stopped, the commands say to start it, and start nothing", async () => {
  await strata.stop();
  const pidFile = join(clusterPaths({ root: join(strata.dataDir, "store") }).pgdata, "postmaster.pid");
  for (const args of [["log"], ["diff", "HEAD~1", "HEAD"], ["status"]]) {
    const { code, stderr } = await cliFails(...args);
    assert.equal(code, 1);
    assert.match(
      stderr,
      /^strata: the managed store in .* is not running .*start `strata serve` with this config first/,
    );
    assert.equal(existsSync(pidFile), false, `strata ${args[0]} must not start the store`);
  }
});
