// Crash safety under SIGKILL: Strata killed at random moments under sustained write load, during
// its own startup, and in the middle of applying one large transaction. After every restart (the
// killed Strata's store postmaster is still running and must be recovered) the replica must equal
// the primary and its history must be exactly what happened upstream: nothing applied twice,
// nothing skipped, one commit per transaction, one unbroken chain.
import assert from "node:assert/strict";
import { test } from "node:test";
import { waitFor } from "../support/postgres.ts";
import { runStrataCli, waitForSameRows } from "../support/strata.ts";
import {
  assertExactReplica,
  commitCount,
  lsnValue,
  ReplicaPair,
  seededRandom,
  startStrata,
  tail,
  testSeed,
  WORKLOAD_KEYS,
  WORKLOAD_SCHEMA,
  Writer,
} from "../support/workload.ts";

const RECOVERED = /postmaster still running from a previous run|removed a stale postmaster\.pid/;

test("repeated SIGKILL under sustained writes: the replica and its history stay exact", async (t) => {
  const seed = testSeed();
  // Standby status updates every 100 ms: an acknowledgement that runs ahead of the store has
  // many chances to reach the primary before a kill.
  const pair = await ReplicaPair.start({
    schema: WORKLOAD_SCHEMA,
    strata: { replication: { status_interval_ms: 100 } },
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const random = seededRandom(seed ^ 0x5eed);
  const writer = new Writer(primary, { connections: 2, seed, ratePerSecond: 60 });
  const schedule: string[] = [];
  const context = () => `seed ${seed}; ${schedule.join(", ")}`;
  // Each step is a diagnostic as it happens, so a failing run's report says how it got there.
  t.diagnostic(`seed ${seed}`);
  const step = (what: string) => {
    schedule.push(what);
    t.diagnostic(what);
  };
  writer.start();
  try {
    for (let round = 0; round < 5; round++) {
      if (round === 2) {
        // Killed while starting: after the store is up, before or while replication starts.
        await strata.kill("SIGKILL");
        step("killed right after a restart");
        await pair.assertAcknowledgedIsDurable(writer, context());
        const point = random() < 0.5 ? "managed store started" : "starting replication";
        const starting = strata.start().then(
          () => undefined,
          (err: Error) => err,
        );
        await waitFor(`strata to log "${point}"`, async () => strata.logs.includes(`"msg":"${point}"`));
        await strata.kill("SIGKILL");
        await starting;
        step(`killed during startup at "${point}"`);
        await pair.assertAcknowledgedIsDurable(writer, context());
        await startStrata(strata);
        assert.match(strata.logs, RECOVERED, "the restart recovers the store left by the killed Strata");
      }
      // Killed at a random point of progress: some commits after the last start.
      const from = await commitCount(strata);
      const more = 1 + Math.floor(random() * 200);
      await waitFor(
        `the replica to apply ${more} more commits (round ${round})`,
        async () => (await commitCount(strata)) >= from + more,
        60_000,
      );
      await strata.kill("SIGKILL");
      step(`killed after ${from}+${more} commits`);
      assert.ok(
        pair.storeRunning(),
        "the killed Strata left its store running (what a restart must recover)",
      );
      await pair.assertAcknowledgedIsDurable(writer, context());
      await startStrata(strata);
      assert.match(strata.logs, RECOVERED, "the restart recovers the store left by the killed Strata");
    }
    await writer.waitForCommits(100);
  } finally {
    await writer.stop();
  }
  t.diagnostic(`${writer.committed} transactions committed, ${writer.rolledBack} rolled back`);
  assert.equal(writer.uncertain, 0, `no commit was cut off: ${writer.errors.join("; ")}`);
  assert.deepEqual(writer.errors, [], "the writer saw no errors");
  await assertExactReplica(pair, {
    tables: WORKLOAD_KEYS,
    commits: writer.committed,
    txLog: true,
    context: context(),
    timeoutMs: 90_000,
  });
  assert.doesNotMatch(
    strata.logs,
    /"level":50/,
    `no errors after the last restart:\n${tail(strata.logs, 20)}`,
  );
});

test("SIGKILL in the middle of applying a large transaction: it is applied exactly once", async (t) => {
  const rows = 250_000;
  const pair = await ReplicaPair.start({
    schema: "CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL, n int)",
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  await primary.query("INSERT INTO big VALUES (0, 'first', 0)");
  await waitForSameRows(primary, strata, "big", "id");
  const size = async () =>
    Number((await strata.query<{ size: string }>("SELECT pg_relation_size('big') AS size"))[0].size);
  const base = await size();
  await primary.query(`INSERT INTO big SELECT g, md5(g::text), g % 97 FROM generate_series(1, ${rows}) g`);
  const [{ lsn }] = await primary.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn");
  // The apply is under way when the replica table's file grows: its pages fill with rows that are
  // not committed yet (~110 rows a page; wait for about a third of them).
  const pages = Math.ceil(rows / 110 / 3);
  await waitFor(
    "the replica to be a third of the way through applying the large transaction",
    async () => (await size()) >= base + pages * 8192,
    60_000,
  );
  const [{ n: visible }] = await strata.query<{ n: string }>("SELECT count(*) AS n FROM big");
  assert.equal(Number(visible), 1, "the large transaction is not visible while it is being applied");
  await strata.kill("SIGKILL");
  const [{ n: durable }] = await pair.queryStore<{ n: string }>("SELECT count(*) AS n FROM big");
  assert.equal(
    Number(durable),
    1,
    "nothing of the interrupted transaction is in the store (if all of it is, the apply finished before the kill: raise `rows`)",
  );
  const confirmed = await pair.confirmedFlushWhenInactive();
  assert.ok(
    confirmed < lsnValue(lsn),
    "the slot is not acknowledged past the transaction that was not durable",
  );
  await startStrata(strata);
  assert.match(strata.logs, RECOVERED, "the restart recovers the store left by the killed Strata");
  await assertExactReplica(pair, { tables: { "public.big": ["id"] }, commits: 2, timeoutMs: 90_000 });
  const [{ n }] = await strata.query<{ n: string }>(
    "SELECT count(*) AS n FROM strata.changes WHERE rel = 'public.big' AND commit_seq = 2",
  );
  assert.equal(Number(n), rows, "the large transaction is one commit holding every row once");
});

test("SIGKILL while a dropped partition's rows leave the replica: they leave exactly once", async (t) => {
  const rows = 200_000;
  const pair = await ReplicaPair.start({
    schema: `CREATE PUBLICATION strata_slot FOR ALL TABLES WITH (publish_via_partition_root = true);
      CREATE TABLE ev (id int, part int, payload text, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
      CREATE TABLE ev_old PARTITION OF ev FOR VALUES IN (0);
      CREATE TABLE ev_new PARTITION OF ev FOR VALUES IN (1);`,
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  await runStrataCli("setup-primary", "--config", strata.configFile);
  await primary.query(`INSERT INTO ev SELECT g, 0, md5(g::text) FROM generate_series(1, ${rows}) g`);
  await primary.query("INSERT INTO ev VALUES (1, 1, 'kept')");
  await waitForSameRows(primary, strata, "ev", "id, part");
  const before = await commitCount(strata);
  await primary.query("DROP TABLE ev_old");
  await waitFor(
    "the replica to be deleting the dropped partition's rows",
    async () =>
      (
        await pair.queryStore(
          "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%strata_gone AS (DELETE%' AND pid <> pg_backend_pid()",
        )
      ).length > 0,
    60_000,
  );
  await strata.kill("SIGKILL");
  const [{ n: durable }] = await pair.queryStore<{ n: string }>("SELECT count(*) AS n FROM ev");
  assert.equal(
    Number(durable),
    rows + 1,
    "nothing of the interrupted drop is in the store (if all of it is, the delete finished before the kill: raise `rows`)",
  );
  await startStrata(strata);
  await assertExactReplica(pair, {
    tables: { "public.ev": ["id", "part"] },
    commits: before + 1,
    timeoutMs: 90_000,
  });
  const [{ n }] = await strata.query<{ n: string }>(
    "SELECT count(*) AS n FROM strata.changes WHERE rel = 'public.ev' AND op = 'D'",
  );
  assert.equal(Number(n), rows, "the drop is one commit removing every row of the partition once");
});
