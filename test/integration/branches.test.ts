// Branches: dolt_branch, dolt_checkout, dolt_merge (fast-forward), active_branch(), dolt_branches,
// USE db/branch and db/branch connection names, through the front door; and branches replicated
// through a remote (the reference's "Replicate all branches" and "Deleting branches").
import assert from "node:assert/strict";
import { connect } from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type pg from "pg";
import { tempDir, waitFor } from "../support/postgres.ts";
import { failure, rowsOf, Sessions, waitForSetting } from "../support/sessions.ts";
import { type StrataProcess, startStandaloneStrata } from "../support/strata.ts";

let primary: StrataProcess;
let replica: StrataProcess;
let remoteDir: string;
const sessions = new Sessions();

before(async () => {
  remoteDir = tempDir("strata-branch-remote-");
  [primary, replica] = await Promise.all([startStandaloneStrata(), startStandaloneStrata()]);
});
after(async () => {
  await sessions.closeAll();
  if (process.env.STRATA_TEST_LOGS) console.error(primary?.logs.slice(-4000), replica?.logs.slice(-4000));
  await Promise.all([primary?.stop(), replica?.stop()]);
});

const connectTo = (strata: StrataProcess, database?: string) => sessions.open(strata, database);

const ids = async (client: pg.Client) =>
  (await rowsOf(client, "SELECT id FROM items ORDER BY id")).map((r) => r.id as number);
const branchOf = async (client: pg.Client) => (await rowsOf(client, "SELECT active_branch() AS b"))[0].b;

test("each session reads and writes its own branch; a fast-forward merge brings one branch's commits into another", async () => {
  const admin = await connectTo(primary);
  await rowsOf(admin, "CREATE DATABASE shop");
  const s = await connectTo(primary, "shop");
  await rowsOf(s, "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)");
  await rowsOf(s, "INSERT INTO items VALUES (1, 'one'), (2, 'two')");
  await rowsOf(s, "SELECT dolt_commit('-Am', 'two items')");
  assert.equal(await branchOf(s), "main");

  await rowsOf(s, "SELECT dolt_branch('feature')");
  assert.deepEqual(
    (
      await rowsOf(s, "SELECT name, hash = dolt.commit_hash('HEAD') AS at_head, dirty FROM dolt_branches")
    ).map((r) => [r.name, r.at_head, r.dirty]),
    [
      ["feature", true, false],
      ["main", true, false],
    ],
  );
  // The same commit, so the same date, to the microsecond (the heads of other branches were
  // carried as JavaScript dates: milliseconds).
  const dates = await rowsOf(s, "SELECT count(DISTINCT latest_commit_date) AS n FROM dolt_branches");
  assert.equal(Number(dates[0].n), 1, "every branch at this commit shows its date alike");

  // This session moves to feature; another on main sees none of feature's writes.
  const other = await connectTo(primary, "shop");
  assert.deepEqual(await rowsOf(s, "SELECT dolt_checkout('feature')"), [
    { dolt_checkout: ["0", "Switched to branch 'feature'"] },
  ]);
  assert.equal(await branchOf(s), "feature");
  await rowsOf(s, "INSERT INTO items VALUES (3, 'three')");
  const [committed] = await rowsOf(s, "SELECT dolt_commit('-am', 'a third item')");
  assert.deepEqual(await ids(s), [1, 2, 3]);
  assert.deepEqual(await ids(other), [1, 2]);
  // Extended protocol on the new store session: parameters, prepared statements.
  assert.deepEqual(await rowsOf(s, "SELECT name FROM items WHERE id = $1", [3]), [{ name: "three" }]);
  assert.deepEqual(
    await rowsOf(s, { name: "by_id", text: "SELECT name FROM items WHERE id = $1" } as never, [2]),
    [{ name: "two" }],
  );

  // A connection can name the branch directly, as Doltgres's db/branch.
  const direct = await connectTo(primary, "shop/feature");
  assert.deepEqual(await ids(direct), [1, 2, 3]);
  assert.equal(await branchOf(direct), "feature");

  // Fast-forward main to feature.
  await rowsOf(s, "SELECT dolt_checkout('main')");
  assert.deepEqual(await ids(s), [1, 2]);
  const [merged] = await rowsOf(s, "SELECT dolt_merge('feature')");
  assert.deepEqual(merged.dolt_merge.slice(0, 3), [committed.dolt_commit[0], "1", "0"]);
  assert.deepEqual(await ids(s), [1, 2, 3]);
  assert.deepEqual(await ids(other), [1, 2, 3]);
  assert.deepEqual(
    await rowsOf(s, "SELECT commit_hash, message FROM dolt_log"),
    await rowsOf(direct, "SELECT commit_hash, message FROM dolt_log"),
  );
  assert.equal((await rowsOf(s, "SELECT dolt_merge('feature')"))[0].dolt_merge[3], "Everything up-to-date");

  // Diverged branches need a real merge: refused, nothing changes.
  await rowsOf(s, "INSERT INTO items VALUES (4, 'four')");
  await rowsOf(s, "SELECT dolt_commit('-am', 'four on main')");
  await rowsOf(direct, "INSERT INTO items VALUES (5, 'five')");
  await rowsOf(direct, "SELECT dolt_commit('-am', 'five on feature')");
  const diverged = await failure(s, "SELECT dolt_merge('feature')");
  assert.equal(diverged.code, "0A000");
  assert.match(diverged.message, /diverged/);
  assert.deepEqual(await ids(s), [1, 2, 3, 4]);

  // checkout -b takes the session's uncommitted changes along; dolt_branch does not.
  await rowsOf(s, "UPDATE items SET name = 'ONE' WHERE id = 1");
  await rowsOf(s, "SELECT dolt_branch('clean')");
  await rowsOf(s, "SELECT dolt_checkout('-b', 'scratch')");
  assert.equal(await branchOf(s), "scratch");
  assert.deepEqual(await rowsOf(s, "SELECT table_name, status FROM dolt_status"), [
    { table_name: "items", status: "modified" },
  ]);
  assert.equal((await rowsOf(s, "SELECT name FROM items WHERE id = 1"))[0].name, "ONE");
  const clean = await connectTo(primary, "shop/clean");
  assert.deepEqual(await rowsOf(clean, "SELECT * FROM dolt_status"), []);
  assert.equal((await rowsOf(clean, "SELECT name FROM items WHERE id = 1"))[0].name, "one");

  // USE moves a session too.
  await rowsOf(other, 'USE "shop/clean"');
  assert.equal(await branchOf(other), "clean");
  await rowsOf(other, "USE shop");
  assert.equal(await branchOf(other), "main");

  // Rename and delete.
  await rowsOf(s, "SELECT dolt_checkout('main')");
  await clean.end();
  await rowsOf(s, "SELECT dolt_branch('-m', 'clean', 'tidy')");
  assert.deepEqual(
    (await rowsOf(s, "SELECT name FROM dolt_branches")).map((r) => r.name),
    ["feature", "main", "scratch", "tidy"],
  );
  await rowsOf(s, "SELECT dolt_branch('-d', 'tidy')");
  // A branch nobody has checked out deletes with -d: Strata keeps no connection to it.
  await rowsOf(s, "SELECT dolt_branch('unused', 'feature')"); // from a clean branch
  await rowsOf(s, "SELECT dolt_branch('-d', 'unused')");
  const inUse = await failure(s, "SELECT dolt_branch('-d', 'feature')");
  assert.equal(inUse.code, "55006"); // `direct` has it checked out
  await rowsOf(s, "SELECT dolt_branch('-D', 'feature')");
  assert.deepEqual(
    (await rowsOf(s, "SELECT name FROM dolt_branches")).map((r) => r.name),
    ["main", "scratch"],
  );

  // Mistakes: clear errors, and the session stays usable where it was.
  assert.equal((await failure(s, "SELECT dolt_checkout('nope')")).code, "42704");
  assert.equal((await failure(s, "SELECT dolt_branch('main')")).code, "42P04");
  assert.equal((await failure(s, "SELECT dolt_branch('-d', 'main')")).code, "55000");
  assert.equal((await failure(s, "SELECT dolt_branch('bad name')")).code, "42602");
  assert.equal((await failure(s, 'USE "shop/nope"')).code, "3D000");
  await rowsOf(s, "BEGIN");
  assert.equal((await failure(s, "SELECT dolt_checkout('scratch')")).code, "25001");
  await rowsOf(s, "ROLLBACK");
  assert.equal(await branchOf(s), "main");
  assert.deepEqual(await ids(s), [1, 2, 3, 4]);
});

test("a branch's working set is its own: writes on it are staged, reset and committed by table, partitions included", async () => {
  const admin = await connectTo(primary);
  await rowsOf(admin, "CREATE DATABASE yard");
  const s = await connectTo(primary, "yard");
  await rowsOf(s, "CREATE TABLE plots (id int PRIMARY KEY, crop text) PARTITION BY RANGE (id)");
  await rowsOf(s, "CREATE TABLE plots_low PARTITION OF plots FOR VALUES FROM (0) TO (100)");
  await rowsOf(s, "CREATE TABLE plots_high PARTITION OF plots FOR VALUES FROM (100) TO (200)");
  await rowsOf(s, "CREATE TABLE tools (id int PRIMARY KEY)");
  await rowsOf(s, "INSERT INTO plots VALUES (1, 'beans'), (101, 'kale')");
  await rowsOf(s, "INSERT INTO tools VALUES (1)");
  await rowsOf(s, "SELECT dolt_commit('-Am', 'planted')");
  await rowsOf(s, "SELECT dolt_branch('autumn')");
  // The branch is a copy of the database, with tables of other oids than the source's.
  const b = await connectTo(primary, "yard/autumn");
  const plots = async () =>
    (await rowsOf(b, "SELECT id, crop FROM plots ORDER BY id")).map((r) => `${r.id}${r.crop}`);
  await rowsOf(b, "INSERT INTO plots_low VALUES (2, 'leeks')");
  await rowsOf(b, "UPDATE plots SET crop = 'chard' WHERE id = 101");
  await rowsOf(b, "INSERT INTO tools VALUES (2)");
  await rowsOf(b, "SELECT dolt_reset('--hard')");
  assert.deepEqual(await plots(), ["1beans", "101kale"]);
  assert.deepEqual(await rowsOf(b, "SELECT id FROM tools"), [{ id: 1 }]);
  await rowsOf(b, "INSERT INTO tools VALUES (3)");
  await rowsOf(b, "DROP TABLE plots_high");
  await rowsOf(b, "SELECT dolt_add('plots')");
  assert.deepEqual(
    (await rowsOf(b, "SELECT table_name, staged FROM dolt_status ORDER BY table_name")).map(
      (r) => `${r.table_name}:${r.staged}`,
    ),
    ["plots:true", "tools:false"],
  );
  await rowsOf(b, "SELECT dolt_commit('-m', 'high plots gone')");
  assert.deepEqual(
    (await rowsOf(b, "SELECT id, crop FROM plots AS OF 'HEAD~1' ORDER BY id")).map((r) => `${r.id}${r.crop}`),
    ["1beans", "101kale"],
  );
  assert.deepEqual(
    (await rowsOf(b, "SELECT diff_type, from_id FROM dolt_diff('HEAD~1', 'HEAD', 'plots')")).map(
      (r) => `${r.diff_type} ${r.from_id}`,
    ),
    ["removed 101"],
  );
  // A column renamed on the branch keeps its values in older versions, as it does on main.
  await rowsOf(b, "ALTER TABLE plots RENAME COLUMN crop TO planted");
  await rowsOf(b, "ALTER TABLE tools RENAME COLUMN id TO tool");
  await rowsOf(b, "SELECT dolt_commit('-Am', 'renamed')");
  assert.deepEqual(
    (await rowsOf(b, "SELECT id, planted FROM plots AS OF 'HEAD~2' ORDER BY id")).map(
      (r) => `${r.id}${r.planted}`,
    ),
    ["1beans", "101kale"],
  );
  assert.deepEqual(await rowsOf(b, "SELECT tool FROM tools AS OF 'HEAD~2' ORDER BY tool"), [{ tool: 1 }]);
});

test("a query on a branch can be cancelled", async () => {
  const s = await connectTo(primary, "shop");
  await rowsOf(s, "SELECT dolt_checkout('scratch')");
  const sleeping = s.query("SELECT pg_sleep(30)").then(
    () => assert.fail("should be cancelled"),
    (err) => err as pg.DatabaseError,
  );
  await waitFor("the sleep to start", async () => {
    const { rows } = await (await connectTo(primary, "shop")).query(
      "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
    );
    return rows.length ? true : undefined;
  });
  // A CancelRequest with the key the client was given at startup (its first store session's).
  const { processID, secretKey } = s as unknown as { processID: number; secretKey: number };
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(processID, 8);
  packet.writeInt32BE(secretKey, 12);
  const { host, port } = primary.connectionConfig("shop");
  await new Promise<void>((resolveSent, reject) => {
    const socket = connect({ host: String(host), port: Number(port) }, () => socket.end(packet));
    socket.on("close", () => resolveSent()).on("error", reject);
  });
  assert.equal((await sleeping).code, "57014");
  assert.equal(await branchOf(s), "scratch");
});

test("the reference's replicate all branches and deleting branches, verbatim", async () => {
  const url = `file://${join(remoteDir, "branches_example")}`;
  const p = await connectTo(primary);
  await rowsOf(p, "CREATE DATABASE branchy");
  const b = await connectTo(primary, "branchy");
  await rowsOf(b, `select dolt_remote('add', 'origin', '${url}');`);
  await rowsOf(b, "ALTER SYSTEM SET dolt_replicate_to_remote 'origin';");
  await waitForSetting(b, "dolt_replicate_to_remote", "origin");
  await rowsOf(b, "create table test (pk int, c1 int, primary key(pk));");
  await rowsOf(b, "insert into test values (0,0), (1,1), (2,2);");
  await rowsOf(b, "select dolt_commit('-Am', 'three rows');");

  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'branchy');`);
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_heads TO '';");
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_all_heads TO 1");
  await rowsOf(r, "ALTER SYSTEM SET dolt_read_replica_remote TO 'origin';");
  await waitForSetting(r, "dolt_replicate_all_heads", "1");
  await waitForSetting(r, "dolt_read_replica_remote", "origin");

  // "Now I'm going to make a new branch on the primary and insert a new value on it."
  await rowsOf(b, "select dolt_checkout('-b', 'branch1');");
  await rowsOf(b, "insert into test values (3,3);");
  await rowsOf(b, "select dolt_commit('-am', 'Inserted (3,3)');");

  // "The read replica now has the change when I try and read the new branch."
  const rr = await connectTo(replica, "branchy");
  await rowsOf(rr, "select dolt_checkout('branch1');");
  assert.deepEqual(await rowsOf(rr, "select * from test order by pk;"), [
    { pk: 0, c1: 0 },
    { pk: 1, c1: 1 },
    { pk: 2, c1: 2 },
    { pk: 3, c1: 3 },
  ]);
  assert.deepEqual(
    await rowsOf(rr, "SELECT commit_hash, message FROM dolt_log"),
    await rowsOf(b, "SELECT commit_hash, message FROM dolt_log"),
  );
  await rowsOf(rr, "select dolt_checkout('main');");
  assert.deepEqual(await rowsOf(rr, "select count(*)::int AS n from test;"), [{ n: 3 }]);

  // "Branches deleted on a primary database will also be deleted on any read replicas."
  await rowsOf(b, "select dolt_checkout('main');");
  await rowsOf(b, "select dolt_branch('-d', 'branch1');");
  await waitFor("the replica to drop branch1", async () => {
    await rowsOf(rr, "select 1"); // a transaction start: the pull
    const names = (await rowsOf(rr, "SELECT name FROM dolt_branches")).map((x) => x.name);
    return names.includes("branch1") ? undefined : names;
  });
  assert.equal((await failure(rr, "select dolt_checkout('branch1');")).code, "42704");

  // Tags travel with all heads, deletes included.
  await rowsOf(b, "select dolt_tag('v1');");
  const tagsOf = async () => (await rowsOf(rr, "SELECT tag_name FROM dolt_tags")).map((t) => t.tag_name);
  await waitFor("the replica to get tag v1", async () =>
    (await tagsOf()).includes("v1") ? true : undefined,
  );
  await rowsOf(b, "select dolt_tag('-d', 'v1');");
  await waitFor("the replica to drop tag v1", async () =>
    (await tagsOf()).includes("v1") ? undefined : true,
  );

  // Named heads the remote lacks, or that are no branch names: warnings, and reads go on.
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_all_heads TO 0");
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_heads TO 'main,nosuch,bad name'");
  await waitForSetting(r, "dolt_replicate_heads", "main,nosuch,bad name");
  assert.deepEqual(await rowsOf(rr, "select count(*)::int AS n from test;"), [{ n: 3 }]);
  await waitFor("the replica's warnings", async () => {
    await rowsOf(rr, "select 1"); // a transaction start: a pull
    // (The log is JSON lines: quotes inside messages are escaped.)
    return replica.logs.includes('names branch \\"nosuch\\", which remote \\"origin\\" does not have') &&
      replica.logs.includes('names \\"bad name\\", which is not a branch name')
      ? true
      : undefined;
  });

  await rowsOf(b, "ALTER SYSTEM SET dolt_replicate_to_remote '';");
  await rowsOf(r, "ALTER SYSTEM SET dolt_read_replica_remote TO '';");
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_heads TO ''");
});
