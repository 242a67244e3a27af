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

test("the store's apply session killed and the store crash-restarted under load: Strata recovers, exactly", async (t) => {
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
    const at = await progress("before the store crash");
    await crashRestartStore(pair);
    schedule.push(`store crash-restarted after ${at} commits`);
    await progress("after the store crash");
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
