// The primary goes away under Strata: stopped cleanly (fast) while idle, and killed (immediate)
// with writes in flight. While it is down the replica says so in dolt_replication_status (not
// streaming, with the error); when it is back, replication resumes on its own and the replica
// catches up exactly. After an immediate stop the primary's slot may restart from an older
// position than Strata has applied: what Strata already has must not be applied again.
import assert from "node:assert/strict";
import { test } from "node:test";
import { waitFor } from "../support/postgres.ts";
import {
  assertExactReplica,
  commitCount,
  ReplicaPair,
  testSeed,
  WORKLOAD_KEYS,
  WORKLOAD_SCHEMA,
  Writer,
} from "../support/workload.ts";

interface Status {
  state: string;
  current_error: string | null;
}

async function status(pair: ReplicaPair): Promise<Status | undefined> {
  const rows = await pair.strata.query<Status>("SELECT state, current_error FROM dolt_replication_status");
  return rows[0];
}

/** Wait until the replica reports that it is not streaming, with an error message; returns it. */
async function waitForOutage(pair: ReplicaPair): Promise<Status> {
  let last: Status | undefined;
  try {
    return await waitFor(
      "dolt_replication_status to report the primary's outage",
      async () => {
        last = await status(pair);
        return last && last.state !== "streaming" && last.current_error ? last : undefined;
      },
      30_000,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; last status ${JSON.stringify(last)}`);
  }
}

// Acknowledged commits on the primary are durable (a crash must not undo them), so the writer's
// count is a lower bound on what the primary holds after an immediate stop.
const PRIMARY = { settings: { synchronous_commit: "on" } };

test("primary stopped (fast) and started again: the replica reports it, then catches up exactly", async (t) => {
  const seed = testSeed();
  const pair = await ReplicaPair.start({ schema: WORKLOAD_SCHEMA, primary: PRIMARY });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const writer = new Writer(primary, { seed, ratePerSecond: 60 });
  writer.start();
  try {
    await writer.waitForCommits(40);
  } finally {
    await writer.stop();
  }
  await waitFor("the replica to catch up", async () => (await commitCount(strata)) === writer.committed);

  const stopping = Date.now();
  await primary.stopServer("fast");
  const stopMs = Date.now() - stopping;
  const outage = await waitForOutage(pair);
  assert.ok(
    ["reconnecting", "error"].includes(outage.state),
    `state while the primary is down: ${outage.state}`,
  );
  t.diagnostic(`primary fast stop took ${stopMs} ms; status while down: ${JSON.stringify(outage)}`);
  // Still down: the status keeps saying so, the replica keeps serving reads.
  const [{ n }] = await strata.query<{ n: string }>("SELECT count(*) AS n FROM tx_log");
  assert.equal(Number(n), writer.committed, "the replica serves reads while the primary is down");
  // Once reconnecting finds nothing listening, the status names the server and the settings.
  const refused = await waitFor(
    "the status to say the primary refuses connections",
    async () => {
      const s = await status(pair);
      return s?.current_error?.includes("connection refused") ? s : undefined;
    },
    30_000,
  );
  assert.match(
    refused.current_error ?? "",
    /^cannot reach the primary at \S+:\d+: connection refused; .*postgres_server_address and postgres_port/,
  );

  await primary.startServer();
  await pair.waitForStreaming(30_000);
  writer.start();
  try {
    await writer.waitForCommits(40);
  } finally {
    await writer.stop();
  }
  assert.deepEqual(writer.errors, [], "the writer saw no errors");
  await assertExactReplica(pair, {
    tables: WORKLOAD_KEYS,
    commits: writer.committed,
    txLog: true,
    context: `seed ${seed}`,
  });
  const after = await status(pair);
  assert.equal(
    after?.current_error ?? null,
    null,
    `the error is cleared once streaming again: ${JSON.stringify(after)}`,
  );
});

test("primary killed (immediate) with writes in flight: the replica catches up exactly", async (t) => {
  const seed = testSeed();
  const pair = await ReplicaPair.start({ schema: WORKLOAD_SCHEMA, primary: PRIMARY });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const writer = new Writer(primary, { connections: 2, seed, ratePerSecond: 100 });
  writer.start();
  try {
    await writer.waitForCommits(150);
    // Kill it while the replica is applying what was just written.
    await waitFor("the replica to be applying", async () => (await commitCount(strata)) >= 100);
    await primary.stopServer("immediate");
    await writer.ended(); // the writers' connections fail
    const outage = await waitForOutage(pair);
    t.diagnostic(`status while down: ${JSON.stringify(outage)}`);
    await primary.startServer();
    writer.start();
    await writer.waitForCommits(80);
  } finally {
    await writer.stop();
  }
  const [{ n }] = await primary.query<{ n: string }>("SELECT count(*) AS n FROM tx_log");
  const onPrimary = Number(n);
  t.diagnostic(
    `seed ${seed}: writer committed ${writer.committed}, ${writer.uncertain} commits cut off, primary holds ${onPrimary}`,
  );
  assert.ok(
    onPrimary >= writer.committed && onPrimary <= writer.committed + writer.uncertain,
    `the primary holds the acknowledged transactions and at most the cut-off ones: ${onPrimary} vs ${writer.committed} + ${writer.uncertain}`,
  );
  await assertExactReplica(pair, {
    tables: WORKLOAD_KEYS,
    commits: onPrimary,
    txLog: true,
    context: `seed ${seed}`,
  });
});
