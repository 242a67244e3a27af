// The initial snapshot of pgbench's tables while pgbench writes to them: every table exact
// afterwards, history starting at the snapshot commit, and the stream carrying on.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { findPgBinaries } from "../../src/store/binaries.ts";
import { startPrimary, TEST_PASSWORD, type TestCluster, waitFor } from "../support/postgres.ts";
import { createStrata, type StrataProcess, snapshot, waitForSameRows } from "../support/strata.ts";
import { replayHistory } from "../support/workload.ts";

const run = promisify(execFile);
// Beside the real initdb (the one found may be a symlink in a directory without the client tools).
const PGBENCH = join(dirname(realpathSync(findPgBinaries().initdb)), "pgbench");

let primary: TestCluster;
let strata: StrataProcess;
let bench: ChildProcess | undefined;

function pgbenchArgs(primaryCluster: TestCluster, ...args: string[]): string[] {
  return [
    "-h",
    primaryCluster.host,
    "-p",
    String(primaryCluster.port),
    "-U",
    "postgres",
    ...args,
    "postgres",
  ];
}

before(async () => {
  primary = await startPrimary();
  await run(PGBENCH, pgbenchArgs(primary, "-i", "-s", "2", "-q"), {
    env: { ...process.env, PGPASSWORD: TEST_PASSWORD },
  });
  // A wide table with TOASTed values beside pgbench's.
  await primary.query("CREATE TABLE docs (id int PRIMARY KEY, body text)");
  await primary.query(
    "INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 2000) i) FROM generate_series(1, 30) g",
  );
});
after(async () => {
  bench?.kill("SIGKILL");
  await strata?.stop();
  await primary?.stop();
});

test("pgbench tables and a TOAST table, snapshotted while pgbench writes: exact, then streamed", async () => {
  // pgbench runs until stopped: writes before, during and after the snapshot.
  bench = spawn(PGBENCH, pgbenchArgs(primary, "-c", "2", "-T", "600", "-n"), {
    env: { ...process.env, PGPASSWORD: TEST_PASSWORD },
    stdio: "ignore",
  });
  await waitFor("pgbench to commit transactions", async () => {
    const [row] = await primary.query("SELECT count(*)::int AS n FROM pgbench_history");
    return row.n > 50;
  });
  strata = await createStrata({ primary, replication: { snapshot_workers: 3, snapshot_chunk_mb: 4 } });
  await strata.start();
  await strata.waitForStreaming();
  const [during] = await primary.query("SELECT count(*)::int AS n FROM pgbench_history");
  await waitFor("pgbench to write after the snapshot", async () => {
    const [row] = await primary.query("SELECT count(*)::int AS n FROM pgbench_history");
    return row.n > during.n + 50;
  });
  bench.kill("SIGINT");
  await new Promise((r) => bench!.once("close", r));
  bench = undefined;
  for (const [table, key] of [
    ["pgbench_accounts", "aid"],
    ["pgbench_branches", "bid"],
    ["pgbench_tellers", "tid"],
    ["pgbench_history", "tid, bid, aid, delta, mtime"],
    ["docs", "id"],
  ])
    await waitForSameRows(primary, strata, table, key, 120_000);
  // History alone (the snapshot's base versions, then every change) rebuilds the primary's rows.
  for (const [table, key] of [
    ["pgbench_accounts", "aid"],
    ["pgbench_branches", "bid"],
    ["pgbench_tellers", "tid"],
    ["docs", "id"],
  ]) {
    const expected = (await snapshot((sql) => primary.query(sql), table, key)).sort();
    assert.deepEqual(await replayHistory(strata, table, [key]), expected, `history of ${table}`);
  }
  const [bases] = await strata.query<{ n: number }>("SELECT count(*)::int AS n FROM strata.snapshot_bases");
  assert.equal(bases.n, 4, "the keyed tables' snapshot versions are bases, not history rows");
  const log = await strata.query<{ message: string }>(
    "SELECT message FROM dolt_log ORDER BY commit_order ASC LIMIT 1",
  );
  assert.match(log[0].message, /^initial snapshot at /);
  assert.match(strata.logs, /"split_tables":\[[^\]]*"public.pgbench_accounts"/, "the large table was split");
  const [commits] = await strata.query<{ n: number }>("SELECT count(*)::int AS n FROM dolt_log");
  assert.ok(commits.n > 50, `pgbench's transactions after the snapshot are commits (${commits.n})`);
});
