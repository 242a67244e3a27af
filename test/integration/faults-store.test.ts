// Faults of the store under a running Strata: its apply session terminated (as an administrator
// or the OOM killer would), and the store's postmaster restarted in immediate mode (a crash of
// the store). Strata keeps running through both, recovers on its own, and the replica and its
// history stay exact.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { test } from "node:test";
import { promisify } from "node:util";
import pg from "pg";
import { clusterPaths } from "../../src/store/cluster.ts";
import {
  assertExactReplica,
  commitCount,
  lsnValue,
  ReplicaPair,
  seededRandom,
  testSeed,
  WORKLOAD_KEYS,
  WORKLOAD_SCHEMA,
  Writer,
  waitWhileAlive,
  whileAlive,
} from "../support/workload.ts";

const run = promisify(execFile);

/** Crash-restart the store under Strata: pg_ctl restart -m immediate, as the store's OS user. */
async function crashRestartStore(pair: ReplicaPair): Promise<void> {
  const spec = pair.storeSpec;
  const paths = clusterPaths(spec);
  await run(
    spec.bin.pgCtl,
    ["restart", "-D", paths.pgdata, "-m", "immediate", "-w", "-t", "60", "-l", paths.logFile],
    {
      ...(spec.osUser ? { uid: spec.osUser.uid, gid: spec.osUser.gid } : {}),
      env: { PATH: process.env.PATH, HOME: "/tmp", LC_ALL: "C" },
    },
  );
}

/** pg_terminate_backend on Strata's apply session, through Strata's own listener. */
async function terminateApplySession(pair: ReplicaPair): Promise<{ ok: boolean }[]> {
  const client = new pg.Client(pair.strata.connectionConfig());
  client.on("error", () => {});
  try {
    await client.connect();
    const { rows } = await client.query<{ ok: boolean }>(
      "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = 'strata apply'",
    );
    return rows;
  } catch (err) {
    // The listener went away under the query: if Strata died, fail with its exit and log.
    let timer: NodeJS.Timeout | undefined;
    await whileAlive(
      pair.strata,
      new Promise((resolveLater) => {
        timer = setTimeout(resolveLater, 5_000);
      }),
    ).finally(() => clearTimeout(timer));
    throw err;
  } finally {
    await client.end().catch(() => {});
  }
}

test("the store's apply session killed, and the store crash-restarted again and again under load: Strata recovers, exactly", async (t) => {
  const seed = testSeed();
  const pair = await ReplicaPair.start({ schema: WORKLOAD_SCHEMA });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const random = seededRandom(seed ^ 0x5704e);
  const writer = new Writer(primary, { connections: 2, seed, ratePerSecond: 60 });
  const schedule: string[] = [];
  // Strata must survive each fault: if its process exits, fail at once with its log.
  const progress = async (what: string) => {
    const from = await waitWhileAlive(strata, "the replica to answer", async () =>
      String(await commitCount(strata)),
    );
    const more = 1 + Math.floor(random() * 80);
    await waitWhileAlive(
      strata,
      `${what}: the replica to apply ${more} more commits`,
      async () => (await commitCount(strata)) >= Number(from) + more,
      60_000,
    );
    return `${from}+${more}`;
  };
  writer.start();
  try {
    for (let round = 0; round < 3; round++) {
      const at = await progress(`before terminating the apply session (round ${round})`);
      const killed = await terminateApplySession(pair);
      assert.deepEqual(killed, [{ ok: true }], "one apply session to terminate");
      schedule.push(`apply session terminated after ${at} commits`);
      await progress(`after terminating the apply session (round ${round})`);
    }
    // Several crashes: each lands at a different point of a batch's life (applying, committed
    // but not yet flushed, acknowledged).
    for (let crash = 0; crash < 4; crash++) {
      const at = await progress(`before store crash ${crash}`);
      await crashRestartStore(pair);
      schedule.push(`store crash-restarted after ${at} commits`);
    }
    await progress("after the store crashes");
    await writer.waitForCommits(30);
  } finally {
    await writer.stop();
  }
  t.diagnostic(`seed ${seed}: ${writer.committed} committed; ${schedule.join(", ")}`);
  const reported = strata.logs
    .split("\n")
    .filter((l) => l.includes('"level":40') || l.includes('"level":50'))
    .map((l) => {
      const entry = JSON.parse(l) as { msg: string; err?: string };
      return `${entry.msg}: ${entry.err ?? ""}`;
    });
  for (const line of new Set(reported)) t.diagnostic(`Strata reported: ${line}`);
  assert.deepEqual(writer.errors, [], "the writer saw no errors");
  await assertExactReplica(pair, {
    tables: WORKLOAD_KEYS,
    commits: writer.committed,
    txLog: true,
    context: `seed ${seed}; ${schedule.join(", ")}`,
  });
  await pair.waitForStreaming();
});

test("a store crash loses batches whose WAL was not flushed: the primary is never told of them, so they come again", async (t) => {
  // The store commits batches without waiting for its WAL flush (synchronous_commit = off), and
  // here flushes only every 10 s, so a crash right after a batch loses it. Nothing more is written
  // upstream, so Strata learns of the crash only from the store.
  const pair = await ReplicaPair.start({
    schema: "CREATE TABLE marks (n int PRIMARY KEY)",
    strata: {
      config: { store: { settings: { fsync: false, synchronous_commit: "off", wal_writer_delay: "10s" } } },
    },
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const has = async (n: number) =>
    (await strata.query("SELECT 1 FROM marks WHERE n = $1", [n]).catch(() => [])).length > 0;
  // The initial snapshot made durable (a switch of WAL segment flushes the WAL), or the first crash
  // loses it and a new one copies the rows.
  await strata.query("SELECT pg_switch_wal()");
  let lost: number | undefined;
  let n = 0;
  // A batch's WAL may reach the OS before the crash (a full page is written at once): try again.
  while (lost === undefined && n < 8) {
    n++;
    await primary.query("INSERT INTO marks VALUES ($1)", [n]);
    await waitWhileAlive(strata, `row ${n} on the replica`, () => has(n));
    await crashRestartStore(pair);
    await waitWhileAlive(strata, "the replica to answer after the crash", () =>
      strata.query("SELECT 1").then(
        () => true,
        () => false,
      ),
    );
    if (!(await has(n))) lost = n;
  }
  assert.ok(lost !== undefined, `a crash right after a batch lost it once in ${n} tries`);
  t.diagnostic(`the crash after row ${lost} lost it`);
  // The store's WAL flushed past where it ended before the crash: a flush position read now
  // must not count for the lost batch, which lay at the same WAL positions.
  await strata.query("SELECT pg_switch_wal()");
  await waitWhileAlive(strata, `the lost row ${lost} to be applied again`, () => has(lost!), 30_000);
  for (let more = 1; more <= 3; more++) await primary.query("INSERT INTO marks VALUES ($1)", [100 + more]);
  await assertExactReplica(pair, { tables: { "public.marks": ["n"] }, commits: n + 3 });
  const [slot] = await primary.query<{ confirmed: string }>(
    "SELECT confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots WHERE slot_name = 'strata_slot'",
  );
  const [held] = await strata.query<{ end_lsn: string }>("SELECT end_lsn::text FROM strata.source_position");
  assert.ok(
    lsnValue(slot.confirmed) <= lsnValue(held.end_lsn),
    `the primary was told ${slot.confirmed}, the store holds up to ${held.end_lsn}`,
  );
});
