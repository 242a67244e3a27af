// Strata stopped and started again while the primary keeps working: a transaction left open on
// the primary across the restart, and repeated clean stops (SIGTERM) under write load. A clean
// stop must exit 0, stop the store with it, and lose or repeat nothing.
import assert from "node:assert/strict";
import { test } from "node:test";
import { waitFor } from "../support/postgres.ts";
import { waitForSameRows } from "../support/strata.ts";
import {
  assertExactReplica,
  commitCount,
  ReplicaPair,
  seededRandom,
  startStrata,
  stopStrata,
  testSeed,
  WORKLOAD_KEYS,
  WORKLOAD_SCHEMA,
  Writer,
} from "../support/workload.ts";

for (const signal of ["SIGTERM", "SIGKILL"] as const) {
  test(`a transaction open on the primary across a Strata restart (${signal}) arrives once, as one commit`, async (t) => {
    const pair = await ReplicaPair.start({
      schema: "CREATE TABLE items (id int PRIMARY KEY, label text); CREATE TABLE other (id int PRIMARY KEY)",
    });
    t.after(() => pair.teardown());
    const { primary, strata } = pair;
    const open = await pair.connectPrimary();
    await open.query("BEGIN");
    await open.query("INSERT INTO items SELECT g, 'before ' || g FROM generate_series(1, 50) g");
    const [{ lsn }] = (await open.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")).rows;
    // Another transaction commits meanwhile; once it is applied, the slot is acknowledged past the
    // open transaction's first changes, and the primary must still send all of them later.
    await primary.query("INSERT INTO other VALUES (1)");
    await waitForSameRows(primary, strata, "other", "id");
    await waitFor("the slot to be acknowledged past the open transaction's first changes", async () => {
      const [slot] = await primary.query<{ past: boolean }>(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn AS past FROM pg_replication_slots WHERE slot_name = 'strata_slot'",
        [lsn],
      );
      return slot?.past;
    });
    if (signal === "SIGTERM") {
      assert.equal(await stopStrata(strata), 0, "a clean stop exits 0");
      assert.ok(!pair.storeRunning(), "a clean stop stops the store");
    } else {
      await strata.kill("SIGKILL");
    }
    await open.query("INSERT INTO items SELECT g, 'while down ' || g FROM generate_series(51, 80) g");
    await startStrata(strata);
    await open.query("UPDATE items SET label = label || ' (updated)' WHERE id % 10 = 0");
    await open.query("DELETE FROM items WHERE id % 7 = 0");
    await open.query("INSERT INTO items SELECT g, 'after ' || g FROM generate_series(81, 100) g");
    await open.query("COMMIT");
    await primary.query("INSERT INTO other VALUES (2)");
    await assertExactReplica(pair, {
      tables: { "public.items": ["id"], "public.other": ["id"] },
      commits: 3,
    });
    const perCommit = await strata.query<{ seq: string; n: string }>(
      "SELECT commit_seq::text AS seq, count(*)::text AS n FROM strata.changes WHERE rel = 'public.items' GROUP BY 1",
    );
    const changes = 80 + 8 + 11 + 20; // inserts, updates (id % 10), deletes (id % 7), inserts
    assert.deepEqual(
      perCommit,
      [{ seq: "2", n: String(changes) }],
      "the open transaction is one commit, once",
    );
  });
}

test("repeated stop/start (SIGTERM) while the primary keeps writing: nothing lost, nothing repeated", async (t) => {
  const seed = testSeed();
  const pair = await ReplicaPair.start({ schema: WORKLOAD_SCHEMA });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const random = seededRandom(seed ^ 0x7e57);
  const writer = new Writer(primary, { connections: 2, seed, ratePerSecond: 60 });
  const schedule: string[] = [];
  writer.start();
  try {
    for (let round = 0; round < 4; round++) {
      const from = await commitCount(strata);
      const more = 1 + Math.floor(random() * 60);
      await waitFor(
        `the replica to apply ${more} more commits (round ${round})`,
        async () => (await commitCount(strata)) >= from + more,
        60_000,
      );
      const code = await stopStrata(strata);
      assert.equal(code, 0, `a clean stop exits 0 (round ${round})`);
      assert.match(strata.logs, /"msg":"stopped"/, "Strata logs its clean stop");
      assert.ok(!pair.storeRunning(), "a clean stop stops the store");
      // The primary keeps writing while Strata is down.
      const whileDown = 10 + Math.floor(random() * 50);
      await writer.waitForCommits(whileDown);
      schedule.push(`stopped after ${from}+${more} commits, ${whileDown} written while down`);
      await startStrata(strata);
      assert.doesNotMatch(
        strata.logs,
        /postmaster still running|stale postmaster/,
        "a clean stop leaves no orphan",
      );
    }
    await writer.waitForCommits(30);
  } finally {
    await writer.stop();
  }
  t.diagnostic(`seed ${seed}: ${writer.committed} committed; ${schedule.join(", ")}`);
  assert.deepEqual(writer.errors, [], "the writer saw no errors");
  await assertExactReplica(pair, {
    tables: WORKLOAD_KEYS,
    commits: writer.committed,
    txLog: true,
    context: `seed ${seed}; ${schedule.join(", ")}`,
  });
});

test("stopped (SIGTERM) in the middle of applying a large transaction: exits cleanly, applied exactly once", async (t) => {
  const rows = 40_000;
  const pair = await ReplicaPair.start({
    schema: "CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL)",
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  await primary.query("INSERT INTO big VALUES (0, 'first')");
  await waitForSameRows(primary, strata, "big", "id");
  const size = async () =>
    Number((await strata.query<{ size: string }>("SELECT pg_relation_size('big') AS size"))[0].size);
  const base = await size();
  await primary.query(`INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, ${rows}) g`);
  await waitFor(
    "the replica to be a fifth of the way through applying the large transaction",
    async () => (await size()) >= base + Math.ceil(rows / 120 / 5) * 8192,
    60_000,
  );
  const stopping = Date.now();
  assert.equal(await stopStrata(strata), 0, "a clean stop exits 0");
  const stopMs = Date.now() - stopping;
  t.diagnostic(`SIGTERM in the middle of a ${rows}-row transaction: stopped after ${stopMs} ms`);
  await startStrata(strata);
  await assertExactReplica(pair, { tables: { "public.big": ["id"] }, commits: 2, timeoutMs: 90_000 });
});
