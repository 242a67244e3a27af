// npm run bench:cluster: a two-node hot-standby cluster (docs/cluster.md) on this machine.
//
//   node --import tsx bench/cluster.ts [--seconds N] [--probe-rate N] [--pgbench-rate N]
//        [--failovers N] [--commits N] [--sync-seconds N]
//
// 1. Standby lag under load: pgbench (scale 5, 2 clients, -R --pgbench-rate TPS, its default
//    mixed script) runs against the primary's front door for --seconds; beside it a probe inserts
//    one row a transaction at --probe-rate per second on the primary, and a reader on the
//    standby's front door polls max(id) without pause. A probe row's lag is the time from its
//    COMMIT returning on the primary to the reader first seeing it on the standby (one process,
//    one clock). p50/p99/max. The baseline, measured first the same way: a plain Postgres
//    primary and its streaming standby (pg_basebackup -R, physical replication over TCP), with
//    pgbench, probe and reader connected to them directly.
// 2. Graceful failover: --failovers round trips, each dolt_assume_cluster_role('standby', e) on
//    the primary then dolt_assume_cluster_role('primary', e) on the standby, timed apart and
//    together; after each, every probe row acknowledged before it is checked on the new primary
//    (zero lost writes), and a write there must succeed.
// 3. Cost of synchronous replication (dolt_cluster_ack_writes_timeout_secs): on the primary, in
//    turn without and with it, --commits one-row INSERT commits one after another (latency
//    p50/p99), then pgbench's simple-update script (-N, 2 clients, unthrottled) for --sync-seconds
//    (TPS); the ratios with/without.
// 4. Automatic failover (cluster.automatic_failover, after_secs 4) on three nodes with synchronous
//    replication: a writer commits one row at a time; the primary's Strata is SIGKILLed; the time
//    to a new primary and to the writer's next acknowledged commit, and acknowledged rows lost.
//
// One table on stdout, the figures in bench/results/cluster-<ts>.json. The nodes, their stores and
// directories are removed at the end, also on failure or Ctrl-C.
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { asUser, type ClusterSpec, clusterPaths, own, startCluster } from "../src/store/cluster.ts";
import { AckedWriter } from "../test/support/cluster-load.ts";
import { createClusterNodes } from "../test/support/cluster-nodes.ts";
import {
  freePort,
  startPrimary,
  TEST_PASSWORD,
  TEST_USER,
  TestCluster,
  tempDir,
  waitFor,
} from "../test/support/postgres.ts";
import type { StrataProcess } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { summarizeLatencies } from "./support/latency.ts";
import { type PgbenchTarget, runPgbench } from "./support/pgbench.ts";
import { cleanUpAtExit, stopCluster, stopStrata, tracked } from "./support/processes.ts";
import { fixed, table } from "./support/report.ts";
import { pgProgram } from "./support/scaffold.ts";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: process.env.STRATA_BENCH_SECONDS ?? "30" },
    "probe-rate": { type: "string", default: "100" },
    "pgbench-rate": { type: "string", default: "500" },
    failovers: { type: "string", default: "3" },
    commits: { type: "string", default: "2000" },
    "sync-seconds": { type: "string", default: "10" },
  },
});
const seconds = Number(values.seconds);
const probeRate = Number(values["probe-rate"]);
const pgbenchRate = Number(values["pgbench-rate"]);
const failovers = Number(values.failovers);
const commits = Number(values.commits);
const syncSeconds = Number(values["sync-seconds"]);
const progress = (line: string) =>
  process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);

cleanUpAtExit("bench:cluster interrupted; the nodes are being removed");

const connectTo = async (config: pg.ClientConfig) => {
  const client = new pg.Client(config);
  client.on("error", () => {});
  await client.connect();
  return client;
};
const connect = (s: StrataProcess) => connectTo(s.connectionConfig());

/** Lag under load (see the header): pgbench and the probe on `primary`, the reader on `standby`. */
async function measureLag(primary: pg.ClientConfig, standby: pg.ClientConfig, target: PgbenchTarget) {
  const writer = await connectTo(primary);
  const reader = await connectTo(standby);
  const committedAt = new Map<number, number>();
  const lags: number[] = [];
  let seen = 0;
  let stop = false;
  let stoppedAt = 0;
  const readLoop = (async () => {
    while (!stop || seen < committedAt.size) {
      const { rows } = await reader.query<{ m: number | null }>("SELECT max(id) AS m FROM probe");
      const now = performance.now();
      const max = rows[0].m ?? 0;
      for (let id = seen + 1; id <= max; id++) {
        const at = committedAt.get(id);
        lags.push(at === undefined ? 0 : Math.max(0, now - at));
      }
      if (max > seen) seen = max;
      if (stop && performance.now() - stoppedAt > 30_000)
        throw new Error("the standby never saw every probe row");
    }
  })();
  const load = runPgbench(target, [
    "-c",
    "2",
    "-j",
    "2",
    "-R",
    String(pgbenchRate),
    "-T",
    String(seconds),
    "-M",
    "prepared",
  ]);
  const started = performance.now();
  let next = 1;
  while (performance.now() - started < seconds * 1000) {
    const due = started + ((next - 1) * 1000) / probeRate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await writer.query("INSERT INTO probe (id) VALUES ($1)", [next]);
    committedAt.set(next, performance.now());
    next++;
  }
  stop = true;
  stoppedAt = performance.now();
  const pgbenchOut = await load;
  await readLoop;
  await writer.end();
  await reader.end();
  return {
    lag: summarizeLatencies(lags),
    tps: Number(/tps = ([\d.]+)/.exec(pgbenchOut)?.[1] ?? Number.NaN),
    probes: next - 1,
  };
}

/**
 * The baseline: the same measurement on a plain Postgres primary and its streaming standby
 * (pg_basebackup -R, physical replication straight over TCP), same settings as Strata's stores.
 */
async function nativeLag() {
  const primary = tracked(
    await startPrimary({
      settings: { synchronous_commit: true, full_page_writes: true },
      hba: ["host replication all 127.0.0.1/32 scram-sha-256"],
    }),
  );
  const port = await freePort();
  const spec: ClusterSpec = { ...primary.spec, root: tempDir("strata-native-standby-"), port };
  const standby = tracked(new TestCluster(spec, port));
  try {
    own(spec, spec.root, 0o700);
    await new Promise<void>((resolve, reject) =>
      execFile(
        pgProgram("pg_basebackup"),
        [
          "-D",
          clusterPaths(spec).pgdata,
          "-R",
          "-X",
          "stream",
          "-d",
          `host=127.0.0.1 port=${primary.port} user=${TEST_USER} password=${TEST_PASSWORD} application_name=native_standby`,
        ],
        asUser(spec),
        (err, _out, stderr) =>
          err ? reject(new Error(`pg_basebackup: ${stderr || err.message}`)) : resolve(),
      ),
    );
    await startCluster(spec);
    const target = {
      host: "127.0.0.1",
      port: primary.port,
      user: TEST_USER,
      password: TEST_PASSWORD,
      database: "postgres",
    };
    await primary.query("CREATE TABLE probe (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    await runPgbench(target, ["-i", "-s", "5", "-q"]);
    await waitFor(
      "the native standby to have pgbench's tables",
      async () => {
        const rows = await standby.query("SELECT count(*)::int AS n FROM pgbench_branches").catch(() => []);
        return rows[0]?.n === 5;
      },
      120_000,
    );
    return await measureLag(primary.connectionConfig(), standby.connectionConfig(), target);
  } finally {
    await stopCluster(standby);
    await stopCluster(primary);
  }
}

async function main() {
  useCompiledStrata();
  progress(
    `native streaming replication (baseline): pgbench -R ${pgbenchRate} and ${probeRate} probes/s for ${seconds} s`,
  );
  const native = await nativeLag();
  const [a, b] = await createClusterNodes(
    [
      { name: "node-a", bootstrap_role: "primary" },
      { name: "node-b", bootstrap_role: "standby" },
    ],
    () => ({ log_level: "info" }),
  );
  tracked(a.strata);
  tracked(b.strata);
  progress("starting a primary and a standby (the standby takes a base backup)");
  await Promise.all([a.strata.start(), b.strata.start()]);
  const setup = await connect(a.strata);
  await setup.query("CREATE TABLE probe (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
  await setup.end();
  const pgbenchTarget = (s: StrataProcess) => ({
    host: "127.0.0.1",
    port: s.port,
    user: TEST_USER,
    password: TEST_PASSWORD,
    database: "postgres",
  });
  const target = pgbenchTarget(a.strata);
  progress("pgbench -i -s 5 on the primary");
  await runPgbench(target, ["-i", "-s", "5", "-q"]);
  await waitFor(
    "the standby to have pgbench's tables",
    async () => {
      const rows = await b.strata.query("SELECT count(*)::int AS n FROM pgbench_branches").catch(() => []);
      return rows[0]?.n === 5;
    },
    120_000,
  );

  // 1. Lag under load.
  progress(`lag: pgbench -R ${pgbenchRate} and ${probeRate} probes/s for ${seconds} s`);
  const strataLag = await measureLag(a.strata.connectionConfig(), b.strata.connectionConfig(), target);
  const lag = strataLag.lag;
  const tps = strataLag.tps;
  let next = strataLag.probes + 1;

  // 2. Failover round trips.
  const rounds: { demoteMs: number; promoteMs: number; totalMs: number; lost: number }[] = [];
  let [primary, standby] = [a.strata, b.strata];
  let epoch = 1;
  for (let i = 0; i < failovers; i++) {
    epoch++;
    const acknowledged = next - 1;
    const demoter = await connect(primary);
    const promoter = await connect(standby);
    const t0 = performance.now();
    await demoter.query(`SELECT dolt_assume_cluster_role('standby', ${epoch})`);
    const t1 = performance.now();
    await promoter.query(`SELECT dolt_assume_cluster_role('primary', ${epoch})`);
    const t2 = performance.now();
    await demoter.end().catch(() => {});
    await promoter.end().catch(() => {});
    [primary, standby] = [standby, primary];
    const rows = await primary.query<{ n: number }>("SELECT count(*)::int AS n FROM probe");
    const lost = acknowledged - rows[0].n;
    await primary.query("INSERT INTO probe (id) VALUES ($1)", [next++]);
    rounds.push({ demoteMs: t1 - t0, promoteMs: t2 - t1, totalMs: t2 - t0, lost });
    progress(
      `failover ${i + 1}: demote ${fixed(t1 - t0, 0)} ms, promote ${fixed(t2 - t1, 0)} ms, lost ${lost}`,
    );
    // The old primary rejoins as a standby before the next round trip.
    const expect = next - 1;
    await waitFor(
      "the old primary to follow the new one",
      async () => {
        const r = await standby.query<{ n: number }>("SELECT count(*)::int AS n FROM probe").catch(() => []);
        return r[0]?.n === expect;
      },
      60_000,
    );
  }

  // 3. Synchronous replication's cost, on the primary the failovers left.
  const modes: { mode: string; commit: ReturnType<typeof summarizeLatencies>; tps: number }[] = [];
  for (const [mode, timeout] of [
    ["async", 0],
    ["sync", 10],
  ] as const) {
    const client = await connect(primary);
    await client.query(`ALTER SYSTEM SET dolt_cluster_ack_writes_timeout_secs TO ${timeout}`);
    await waitFor(`commits to be ${mode}`, async () => {
      const { rows } = await client.query("SHOW synchronous_standby_names");
      return (rows[0].synchronous_standby_names !== "") === timeout > 0;
    });
    progress(`${mode}: ${commits} one-row commits, then pgbench -N for ${syncSeconds} s`);
    const latencies: number[] = [];
    for (let i = 0; i < commits; i++) {
      const t0 = performance.now();
      await client.query("INSERT INTO probe (id) VALUES ($1)", [next++]);
      latencies.push(performance.now() - t0);
    }
    await client.end();
    const out = await runPgbench(pgbenchTarget(primary), [
      "-N",
      "-c",
      "2",
      "-j",
      "2",
      "-T",
      String(syncSeconds),
      "-M",
      "prepared",
    ]);
    modes.push({
      mode,
      commit: summarizeLatencies(latencies),
      tps: Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? Number.NaN),
    });
  }
  const [async_, sync] = modes;
  await stopStrata(a.strata);
  await stopStrata(b.strata);

  // 4. Automatic failover on three nodes.
  progress(`automatic failover: three nodes, after_secs ${AUTO_AFTER_SECS}, synchronous replication on`);
  const auto = await automaticFailover();
  progress(`automatic failover: writes again after ${fixed(auto.writableMs, 0)} ms, lost ${auto.lost}`);

  const rows: string[][] = [
    ["standby lag p50 (ms)", fixed(lag.p50Ms, 1), `native streaming: ${fixed(native.lag.p50Ms, 1)}`],
    [
      "standby lag p99 (ms)",
      fixed(lag.p99Ms, 1),
      `native: ${fixed(native.lag.p99Ms, 1)}; target < 50: ${lag.p99Ms < 50 ? "met" : "NOT met"}`,
    ],
    [
      "standby lag max (ms)",
      fixed(lag.maxMs, 1),
      `native: ${fixed(native.lag.maxMs, 1)}; ${lag.samples} probe rows`,
    ],
    ["standby lag p99, Strata / native", fixed(lag.p99Ms / native.lag.p99Ms, 2), ""],
    ["pgbench TPS on the primary", fixed(tps, 0), `-R ${pgbenchRate}; native: ${fixed(native.tps, 0)}`],
    ...rounds.map((r, i) => [
      `failover ${i + 1} (demote + promote, ms)`,
      fixed(r.totalMs, 0),
      `${fixed(r.demoteMs, 0)} + ${fixed(r.promoteMs, 0)}; lost writes ${r.lost}; target < 2000`,
    ]),
    ...modes.flatMap((m) => [
      [`${m.mode} commit p50 (ms)`, fixed(m.commit.p50Ms, 2), `${m.commit.samples} one-row commits`],
      [`${m.mode} commit p99 (ms)`, fixed(m.commit.p99Ms, 2), ""],
      [`${m.mode} pgbench -N TPS`, fixed(m.tps, 0), "2 clients, unthrottled"],
    ]),
    [
      "sync / async commit p50",
      fixed(sync.commit.p50Ms / async_.commit.p50Ms, 2),
      "dolt_cluster_ack_writes_timeout_secs = 10",
    ],
    ["sync / async pgbench -N TPS", fixed(sync.tps / async_.tps, 2), ""],
    [
      "automatic failover: kill → new primary (ms)",
      fixed(auto.electedMs, 0),
      `after_secs ${AUTO_AFTER_SECS}; a standby waits that long for the primary`,
    ],
    [
      "automatic failover: kill → next write acknowledged (ms)",
      fixed(auto.writableMs, 0),
      `lost acknowledged writes ${auto.lost} of ${auto.acknowledged}`,
    ],
  ];
  process.stdout.write(`${table(["figure", "value", "note"], rows)}\n`);
  const dir = join(import.meta.dirname, "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `cluster-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
  writeFileSync(
    file,
    `${JSON.stringify({ machine: { cpus: os.cpus().length, memGiB: Math.round(os.totalmem() / 2 ** 30) }, seconds, probeRate, pgbenchRate, tps, lag, native, failovers: rounds, synchronous: modes, automaticFailover: auto }, null, 2)}\n`,
  );
  progress(`wrote ${file}`);
}

const AUTO_AFTER_SECS = 4;

/**
 * Three nodes with cluster.automatic_failover and synchronous replication; a writer commits one
 * row at a time on the primary; the primary's Strata is SIGKILLed. Times to a new primary and to
 * the writer's next acknowledged commit, and the acknowledged rows missing on the new primary.
 */
async function automaticFailover() {
  const nodes = await createClusterNodes(
    [
      { name: "auto-a", bootstrap_role: "primary" },
      { name: "auto-b", bootstrap_role: "standby" },
      { name: "auto-c", bootstrap_role: "standby" },
    ],
    () => ({
      log_level: "info",
      cluster: { automatic_failover: { after_secs: AUTO_AFTER_SECS } },
      system_variables: { dolt_cluster_ack_writes_timeout_secs: 10 },
    }),
  );
  for (const n of nodes) tracked(n.strata);
  try {
    await Promise.all(nodes.map((n) => n.strata.start()));
    let primary = nodes[0];
    await waitFor("the primary to take writes", async () =>
      primary.strata
        .query("CREATE TABLE acks (id int PRIMARY KEY)")
        .then(() => true)
        .catch(() => false),
    );
    const writer = new AckedWriter(() => primary);
    writer.start();
    await writer.progress(200, "before the kill");
    await nodes[0].strata.kill("SIGKILL");
    const killedAt = performance.now();
    const before = writer.acknowledged.length;
    const survivors = nodes.slice(1);
    primary = await waitFor(
      "a new primary",
      async () => {
        for (const n of survivors) {
          const rows = await n.strata.query("SHOW dolt_cluster_role").catch(() => []);
          if (rows[0]?.dolt_cluster_role === "primary") return n;
        }
        return undefined;
      },
      60_000,
    );
    const electedMs = performance.now() - killedAt;
    await waitFor("a write on the new primary", async () => writer.acknowledged.length > before, 60_000);
    const writableMs = performance.now() - killedAt;
    await writer.stop();
    const present = new Set((await primary.strata.query("SELECT id FROM acks")).map((r) => r.id as number));
    const lost = writer.acknowledged.filter((id) => !present.has(id)).length;
    return {
      afterSecs: AUTO_AFTER_SECS,
      electedMs,
      writableMs,
      lost,
      acknowledged: writer.acknowledged.length,
    };
  } finally {
    for (const n of nodes) await stopStrata(n.strata);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench:cluster failed: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
