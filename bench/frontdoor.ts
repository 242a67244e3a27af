// npm run bench:frontdoor: what Strata's front door costs an ordinary read workload, and how fast
// the version-control queries answer on a replica with real replicated history (issue 4).
//
//   node --import tsx bench/frontdoor.ts [--only pgbench|history|all] [--runs N] [--duration S]
//        [--scale N] [--clients N] [--threads N] [--modes prepared,simple] [--pipe on|off]
//        [--rows N] [--commits N] [--log-commits N] [--iterations N] [--seed N] [--timeout-min N]
//
// Every option also has an environment variable (STRATA_BENCH_ROWS, STRATA_BENCH_COMMITS, ...;
// see USAGE); an option given on the command line wins.
//
// 1. pgbench -S (select-only) against one standalone Strata: through its front door (the
//    listener's TCP port, and its Unix socket, listener.unix_socket_directory), directly against
//    its store (the unix socket in the data dir:
//    clusterPaths(<data_dir>/store).socketDir), and through a plain Node TCP→socket pipe (the
//    floor of any one-hop proxy in Node); same data (pgbench -i -s N into a plain database made
//    on the store directly), same clients, threads and duration, per query mode (-M prepared,
//    -M simple). The targets rotate within each run. Reported: TPS and pgbench's average latency
//    (min / median / max over the runs), TPS ÷ the store's, and the CPU the proxy and the store
//    spent per transaction.
// 2. History queries on a replica with real replicated history: a primary with a table `t` of
//    --rows rows, snapshotted by Strata, then --commits single-row UPDATE transactions (pgbench,
//    random keys) replicated as one commit each; the bench waits (with a deadline) until the
//    replica holds every commit and checks it against the primary. Then, --iterations times each,
//    with a seeded random commit HEAD~k and key, through the front door (and the same query on
//    the store itself, to separate the front door's share):
//       SELECT * FROM dolt_diff('HEAD~k', 'HEAD~(k-1)', 't')      (adjacent commits)
//       SELECT * FROM t AS OF 'HEAD~k' WHERE id = $1               (point lookup by key)
//       SELECT * FROM dolt_log LIMIT 50                             (first page)
//    and finally, after inserting SYNTHETIC rows into strata.commits directly (same columns,
//    increasing seq, random hashes, no row changes) up to --log-commits commits, dolt_log's first
//    page again (and a point lookup over the whole range of commit names). Latencies are
//    client-side (node-postgres, one connection, one query at a time): p50 / p99 / max in ms.
// Progress goes to stderr, one table to stdout, every figure to bench/results/frontdoor-<ts>.json.
// Every cluster, Strata process, pgbench and directory is removed at the end, also on failure or
// Ctrl-C (test/support/cleanup.ts). See docs/performance.md, "Front door and history queries".
import { writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type pg from "pg";
import { clusterPaths } from "../src/store/cluster.ts";
import { startPrimary, type TestCluster, tempDir, waitFor } from "../test/support/postgres.ts";
import { createStandaloneStrata, createStrata, type StrataProcess } from "../test/support/strata.ts";
import { seededRandom } from "../test/support/workload.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { connect, withConnection } from "./support/connection.ts";
import { type LatencySummary, randomInt, summarizeLatencies } from "./support/latency.ts";
import { loadWindow } from "./support/machine-load.ts";
import { type PgbenchTarget, parsePgbenchSummary, pgbenchClientArgs, runPgbench } from "./support/pgbench.ts";
import {
  cleanUpAtExit,
  stopCluster,
  stopStrata,
  storeConfig,
  storePostmaster,
  tracked,
} from "./support/processes.ts";
import * as procfs from "./support/procfs.ts";
import { fixed, type Summary, summarize, table, thousands } from "./support/report.ts";
import {
  machineInfo,
  progressReporter,
  runBench,
  usageExits,
  withStrataLogTail,
  writeResults,
} from "./support/scaffold.ts";
import { startTcpPipe, type TcpPipe } from "./support/tcp-pipe.ts";

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: node --import tsx bench/frontdoor.ts [options]   (env variable in brackets)
  --only P           pgbench | history | all (default all)                          [STRATA_BENCH_ONLY]
 pgbench -S, front door vs store:
  --scale N          pgbench scale (default 10: 1,000,000 accounts)                 [STRATA_BENCH_SCALE]
  --clients N        pgbench -c (default 4)                                         [STRATA_BENCH_CLIENTS]
  --threads N        pgbench -j (default 2)                                         [STRATA_BENCH_THREADS]
  --duration S       seconds per pgbench run (default 10)                           [STRATA_BENCH_DURATION]
  --runs N           runs per target and mode (default 3)                           [STRATA_BENCH_RUNS]
  --modes LIST       pgbench -M modes, comma-separated (default prepared,simple)    [STRATA_BENCH_MODES]
  --pipe on|off      also measure a plain Node TCP→socket pipe as a third target (default on)
                                                                                    [STRATA_BENCH_PIPE]
 history queries on a replica:
  --rows N           rows of the replicated table (default 1000000; full: 10000000) [STRATA_BENCH_ROWS]
  --commits N        replicated single-row update commits (default 10000; full: 100000) [STRATA_BENCH_COMMITS]
  --log-commits N    total commits after adding synthetic ones, for dolt_log (default 1000000; 0: skip)
                                                                                    [STRATA_BENCH_LOG_COMMITS]
  --iterations N     timed iterations per query (default 1000)                      [STRATA_BENCH_ITERATIONS]
  --seed N           seed of the random commits and keys (default 1)                [STRATA_BENCH_SEED]
  --timeout-min N    deadline for the snapshot and for the catch-up, each (default 30) [STRATA_BENCH_TIMEOUT_MIN]`;

function options() {
  const env = (name: string, fallback: string) => process.env[`STRATA_BENCH_${name}`] || fallback;
  const { values } = parseArgs({
    options: {
      only: { type: "string", default: env("ONLY", "all") },
      scale: { type: "string", default: env("SCALE", "10") },
      clients: { type: "string", default: env("CLIENTS", "4") },
      threads: { type: "string", default: env("THREADS", "2") },
      duration: { type: "string", default: env("DURATION", "10") },
      runs: { type: "string", default: env("RUNS", "3") },
      modes: { type: "string", default: env("MODES", "prepared,simple") },
      pipe: { type: "string", default: env("PIPE", "on") },
      rows: { type: "string", default: env("ROWS", "1000000") },
      commits: { type: "string", default: env("COMMITS", "10000") },
      "log-commits": { type: "string", default: env("LOG_COMMITS", "1000000") },
      iterations: { type: "string", default: env("ITERATIONS", "1000") },
      seed: { type: "string", default: env("SEED", "1") },
      "timeout-min": { type: "string", default: env("TIMEOUT_MIN", "30") },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const fail = usageExits(USAGE, values.help);
  const int = (name: keyof typeof values, min: number) => {
    const text = String(values[name]);
    const n = Number(text.replace(/_/g, ""));
    if (!Number.isInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}, got ${text}`);
    return n;
  };
  if (!["pgbench", "history", "all"].includes(values.only)) fail(`--only must be pgbench, history or all`);
  if (!["on", "off"].includes(values.pipe)) fail(`--pipe must be on or off`);
  const modes = values.modes.split(",").map((m) => m.trim());
  for (const m of modes)
    if (!["prepared", "simple", "extended"].includes(m))
      fail(`--modes: ${m} is not a pgbench -M mode (prepared, simple, extended)`);
  const o = {
    pgbench: values.only !== "history",
    history: values.only !== "pgbench",
    scale: int("scale", 1),
    clients: int("clients", 1),
    threads: int("threads", 1),
    duration: int("duration", 1),
    runs: int("runs", 1),
    modes,
    pipe: values.pipe === "on",
    rows: int("rows", 100),
    commits: int("commits", 10),
    logCommits: int("log-commits", 0),
    iterations: int("iterations", 10),
    seed: int("seed", 0),
    timeoutMs: int("timeout-min", 1) * 60_000,
  };
  if (o.clients % o.threads !== 0) fail("--clients must be a multiple of --threads (as pgbench requires)");
  return o;
}

const opts = options();

/** Targets of issue 4. */
const TARGETS = {
  frontDoorOverheadPct: 10,
  diffMs: 10,
  asOfMs: 2,
  logMs: 10,
  logCommits: 1_000_000,
};

const TABLE = "t";
const PGBENCH_DATABASE = "pgbench";
const CPUS = os.cpus().length;
const WARMUP_ITERATIONS = 20;
const WARMUP_SECONDS = 2;
/** Iterations of the as-of lookup over the whole synthetic range (each resolves a far HEAD~k). */
const FAR_ITERATIONS = 200;

// ---------------------------------------------------------------------------------------------
// Progress and cleanup

const { progress, phase, endPhase } = progressReporter();

cleanUpAtExit("stopping every cluster and process");

function primaryPostmaster(c: TestCluster): number {
  const pgdata = clusterPaths(c.spec).pgdata;
  const pid = procfs.postmasterPid(pgdata);
  if (!pid) throw new Error(`no postmaster.pid in ${pgdata}`);
  return pid;
}

function pgbenchTarget(config: pg.ClientConfig): PgbenchTarget {
  return {
    host: String(config.host),
    port: Number(config.port),
    user: String(config.user),
    password: String(config.password),
    database: String(config.database),
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// 1. pgbench -S through the front door vs directly against the store

type Via = "store" | "front door" | "front door (unix)" | "tcp pipe";

interface PgbenchRun {
  run: number;
  mode: string;
  via: Via;
  tps: number;
  latencyAverageMs: number;
  transactions: number;
  failed: number;
  /** CPU of the strata (node) process during the run: the front door's work (idle otherwise). */
  strataCpuSeconds?: number;
  /** CPU of this bench's process during the run: the tcp pipe's work (idle otherwise). */
  benchCpuSeconds?: number;
  /** CPU of every process of the store during the run (backends included). */
  storeCpuSeconds?: number;
  /** Share of the machine's CPUs (0–1) used by processes that are not this bench's during the run. */
  otherCpuShare?: number;
}

interface PgbenchResult {
  scale: number;
  clients: number;
  threads: number;
  durationSeconds: number;
  runs: PgbenchRun[];
}

async function pgbenchPart(): Promise<PgbenchResult> {
  phase("pgbench -S");
  let strata: StrataProcess | undefined;
  let pipe: TcpPipe | undefined;
  try {
    progress("starting a standalone Strata (front door over its managed store)");
    const socketDir = tempDir("strata-bench-sock-");
    strata = await createStandaloneStrata({
      listener: { unix_socket_directory: socketDir },
      config: { log_level: "info", store: { settings: { fsync: false } } },
    });
    tracked(strata);
    await strata.start();
    const s = strata;
    // A plain database (from template0, made on the store directly): a standalone Strata captures
    // the writes to its own databases (its working set), which would only slow the load down.
    await withConnection(storeConfig(s), (c) =>
      c.query(`CREATE DATABASE ${PGBENCH_DATABASE} TEMPLATE template0`),
    );
    const store = pgbenchTarget(storeConfig(s, PGBENCH_DATABASE));
    const front = pgbenchTarget(s.connectionConfig(PGBENCH_DATABASE));
    const targets: [Via, PgbenchTarget][] = [
      ["store", store],
      ["front door", front],
      ["front door (unix)", { ...front, host: socketDir }],
    ];
    if (opts.pipe) {
      pipe = await startTcpPipe({ path: join(store.host, ".s.PGSQL.5432") });
      targets.push(["tcp pipe", { ...store, host: pipe.host, port: pipe.port }]);
    }
    progress(
      `store socket: ${store.host}; front door: ${front.host}:${front.port} and ${socketDir}` +
        (pipe ? `; tcp pipe (baseline, in this process): ${pipe.host}:${pipe.port}` : ""),
    );
    progress(`pgbench -i -s ${opts.scale} (server-side generation, into the store directly)`);
    await runPgbench(store, ["-i", "-I", "dtGvp", "-s", String(opts.scale), "-q"]);
    const common = ["-n", "-S", "-c", String(opts.clients), "-j", String(opts.threads)];
    for (const mode of opts.modes)
      for (const [via, target] of targets) {
        progress(`warm-up: -M ${mode}, ${via}, ${WARMUP_SECONDS} s`);
        await runPgbench(target, [...common, "-M", mode, "-T", String(WARMUP_SECONDS)]);
      }
    const strataPid = s.child?.pid;
    if (!strataPid) throw new Error("strata has no pid");
    const postmaster = storePostmaster(s);
    const runs: PgbenchRun[] = [];
    for (let run = 1; run <= opts.runs; run++) {
      for (const mode of opts.modes) {
        // Rotate which target goes first, so that a drift on the machine hits all alike.
        const first = (run - 1) % targets.length;
        const order = [...targets.slice(first), ...targets.slice(0, first)];
        for (const [via, target] of order) {
          const window = loadWindow({ pids: [strataPid], postmasters: [postmaster] });
          const benchBefore = process.cpuUsage();
          const strataBefore = procfs.cpuSeconds(strataPid) ?? 0;
          const storeBefore = procfs.clusterCpuSeconds(postmaster);
          const out = await runPgbench(target, [...common, "-M", mode, "-T", String(opts.duration)]);
          await sleep(200); // let the postmaster reap the backends, whose CPU then counts
          const load = window();
          const summary = parsePgbenchSummary(out);
          const r: PgbenchRun = {
            run,
            mode,
            via,
            ...summary,
            strataCpuSeconds: (procfs.cpuSeconds(strataPid) ?? 0) - strataBefore,
            benchCpuSeconds: cpuSecondsSince(benchBefore),
            storeCpuSeconds: procfs.clusterCpuSeconds(postmaster) - storeBefore,
            otherCpuShare: load.otherCpuSeconds / (load.seconds * CPUS),
          };
          runs.push(r);
          progress(
            `run ${run}/${opts.runs} -M ${mode} ${via}: ${thousands(r.tps)} tps, ${fixed(r.latencyAverageMs, 3)} ms average, ` +
              `strata cpu ${fixed(r.strataCpuSeconds, 1)} s, bench (pipe) cpu ${fixed(r.benchCpuSeconds, 1)} s, store cpu ${fixed(r.storeCpuSeconds, 1)} s` +
              `, other processes ${fixed(100 * (r.otherCpuShare ?? 0), 0)}% of the CPUs` +
              (r.failed ? `, ${r.failed} FAILED transactions` : ""),
          );
        }
      }
    }
    return {
      scale: opts.scale,
      clients: opts.clients,
      threads: opts.threads,
      durationSeconds: opts.duration,
      runs,
    };
  } catch (err) {
    throw withStrataLogTail(err, strata);
  } finally {
    await pipe?.close();
    await stopStrata(strata);
    endPhase();
  }
}

function cpuSecondsSince(before: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(before);
  return (d.user + d.system) / 1e6;
}

// ---------------------------------------------------------------------------------------------
// 2. History queries on a replica with replicated history

interface LatencyResult {
  id: string;
  label: string;
  via: Via;
  /** The SQL sent (one example: the commits and keys vary). */
  sql: string;
  /** Commits in the replica's history when measured. */
  commits: number;
  synthetic: boolean;
  targetMs?: number;
  summary: LatencySummary;
  /** Iterations whose result had the wrong number of rows. */
  wrongResults: number;
  /** Share of the machine's CPUs (0–1) used by processes that are not this bench's meanwhile. */
  otherCpuShare?: number;
  firstWrong?: string;
}

interface HistoryResult {
  rows: number;
  commitsReplicated: number;
  loadSeconds: number;
  snapshotSeconds: number;
  generateSeconds: number;
  generateTps?: number;
  catchUpSeconds: number;
  replicaMatches: boolean;
  storeSizes: Record<string, string>;
  syntheticCommitsAdded: number;
  syntheticInsertSeconds?: number;
  latencies: LatencyResult[];
}

type QueryOf = (i: number) => string | pg.QueryConfig;

/** One query measured: how it is labelled, the connection it runs on, its i-th instance. */
interface Variant {
  spec: Omit<LatencyResult, "summary" | "wrongResults" | "firstWrong" | "commits">;
  client: pg.Client;
  query: QueryOf;
  /** Rows the i-th instance must return (checked on every iteration). */
  expectRows: (i: number) => number;
}

/**
 * Time `iterations` runs of each variant, interleaved (variant A's i-th query, then B's i-th, ...)
 * after a short warm-up of each, so that variants given the same commits and keys meet the same
 * cache state and the same background load.
 */
async function timeVariants(variants: Variant[], iterations: number) {
  for (const v of variants)
    for (let i = 0; i < Math.min(WARMUP_ITERATIONS, iterations); i++) await v.client.query(v.query(i));
  const out = variants.map(() => ({
    latencies: [] as number[],
    wrong: 0,
    firstWrong: undefined as string | undefined,
  }));
  for (let i = 0; i < iterations; i++) {
    for (const [j, v] of variants.entries()) {
      const q = v.query(i);
      const started = performance.now();
      const result = await v.client.query(q);
      out[j].latencies.push(performance.now() - started);
      if (result.rows.length !== v.expectRows(i)) {
        out[j].wrong++;
        out[j].firstWrong ??=
          `${typeof q === "string" ? q : `${q.text} ${JSON.stringify(q.values)}`}: ${result.rows.length} rows, expected ${v.expectRows(i)}`;
      }
    }
  }
  return out;
}

async function historyPart(): Promise<HistoryResult> {
  phase("history");
  let primary: TestCluster | undefined;
  let strata: StrataProcess | undefined;
  const clients: pg.Client[] = [];
  try {
    progress("starting the primary");
    primary = await startPrimary({ settings: { max_wal_size: "4GB", checkpoint_timeout: "30min" } });
    tracked(primary);
    const p = primary;
    progress(`loading ${thousands(opts.rows)} rows into ${TABLE}`);
    const loadStart = performance.now();
    await withConnection(p.connectionConfig(), async (c) => {
      await c.query(
        `CREATE TABLE ${TABLE} (id bigint PRIMARY KEY, balance bigint NOT NULL, updates int NOT NULL, note text NOT NULL)`,
      );
      const chunk = 1_000_000;
      for (let lo = 1; lo <= opts.rows; lo += chunk) {
        const hi = Math.min(opts.rows, lo + chunk - 1);
        await c.query(
          `INSERT INTO ${TABLE} SELECT g, 0, 0, md5(g::text) FROM generate_series($1::bigint, $2::bigint) g`,
          [lo, hi],
        );
        if (opts.rows > chunk) progress(`  ${thousands(hi)} rows`);
      }
      await c.query(`VACUUM ANALYZE ${TABLE}`);
    });
    const loadSeconds = (performance.now() - loadStart) / 1000;

    progress("starting Strata on the primary: initial snapshot");
    strata = await createStrata({
      primary: p,
      config: { log_level: "info", store: { settings: { fsync: false } } },
    });
    tracked(strata);
    const s = strata;
    const snapStart = performance.now();
    await s.start();
    const store = await connect(storeConfig(s));
    clients.push(store);
    await waitFor(
      "the initial snapshot to complete and replication to stream",
      async () => {
        if (s.child && (s.child.exitCode !== null || s.child.signalCode !== null))
          throw new Error(`strata exited (${s.child.exitCode ?? s.child.signalCode})`);
        const { rows } = await store.query<{ state: string; n: string }>(
          "SELECT (SELECT state FROM dolt_replication_status LIMIT 1) AS state, (SELECT count(*) FROM strata.commits) AS n",
        );
        return rows[0]?.state === "streaming" && Number(rows[0].n) >= 1;
      },
      opts.timeoutMs,
    );
    const snapshotSeconds = (performance.now() - snapStart) / 1000;
    progress(
      `snapshot of ${thousands(opts.rows)} rows done in ${fixed(snapshotSeconds, 1)} s (spawn to streaming)`,
    );
    const [{ n: baseCommits }] = (
      await store.query<{ n: string }>("SELECT count(*) AS n FROM strata.commits")
    ).rows;

    // Single-row UPDATE transactions on random keys, one replicated commit each.
    const clientsGen = Math.min(4, opts.commits);
    const perClient = Math.ceil(opts.commits / clientsGen);
    const scriptDir = tempDir("strata-bench-frontdoor-");
    const script = join(scriptDir, "update.sql");
    writeFileSync(
      script,
      `\\set id random(1, ${opts.rows})\n\\set delta random(-5000, 5000)\nUPDATE ${TABLE} SET balance = balance + :delta, updates = updates + 1 WHERE id = :id;\n`,
    );
    progress(
      `generating ${thousands(perClient * clientsGen)} single-row UPDATE transactions on the primary (pgbench, ${clientsGen} clients)`,
    );
    const genStart = performance.now();
    const genOut = await runPgbench(
      pgbenchTarget(p.connectionConfig()),
      ["-n", "-f", script, ...pgbenchClientArgs(clientsGen, perClient)],
      progress,
    );
    const generateSeconds = (performance.now() - genStart) / 1000;
    const gen = parsePgbenchSummary(genOut);
    if (gen.failed > 0) throw new Error(`${gen.failed} update transactions failed on the primary`);
    const expectedCommits = Number(baseCommits) + gen.transactions;
    progress(
      `${thousands(gen.transactions)} transactions in ${fixed(generateSeconds, 1)} s on the primary; waiting for the replica to hold ${thousands(expectedCommits)} commits`,
    );
    let lastProgress = performance.now();
    await waitFor(
      "Strata to catch up with the primary",
      async () => {
        if (s.child && (s.child.exitCode !== null || s.child.signalCode !== null))
          throw new Error(`strata exited (${s.child.exitCode ?? s.child.signalCode})`);
        const { rows } = await store.query<{ n: string }>("SELECT count(*) AS n FROM strata.commits");
        const n = Number(rows[0].n);
        if (performance.now() - lastProgress > 10_000) {
          lastProgress = performance.now();
          progress(`  ${thousands(n)} / ${thousands(expectedCommits)} commits replicated`);
        }
        if (n > expectedCommits)
          throw new Error(`${n} commits on the replica, more than the ${expectedCommits} expected`);
        return n === expectedCommits;
      },
      opts.timeoutMs,
    );
    const catchUpSeconds = (performance.now() - genStart) / 1000;
    progress(`replica caught up ${fixed(catchUpSeconds, 1)} s after the workload started`);
    const sums = `SELECT count(*)::text AS n, sum(balance)::text AS b, sum(updates)::text AS u FROM ${TABLE}`;
    const [want] = await p.query<{ n: string; b: string; u: string }>(sums);
    const [have] = (await store.query<{ n: string; b: string; u: string }>(sums)).rows;
    const replicaMatches = want.n === have.n && want.b === have.b && want.u === have.u;
    if (!replicaMatches)
      throw new Error(
        `the replica differs from the primary: ${JSON.stringify(have)} vs ${JSON.stringify(want)}`,
      );
    const commits = expectedCommits;
    // The statistics autovacuum would gather on a replica left running.
    await store.query(`ANALYZE strata.commits; ANALYZE strata.changes; ANALYZE ${TABLE}`);
    const storeSizes = (
      await store.query<{ name: string; size: string }>(
        `SELECT c.relname AS name, pg_size_pretty(pg_total_relation_size(c.oid)) AS size FROM pg_class c
          WHERE c.oid IN ('strata.commits'::regclass, 'strata.changes'::regclass, '${TABLE}'::regclass)`,
      )
    ).rows.reduce<Record<string, string>>((acc, r) => {
      acc[r.name] = r.size;
      return acc;
    }, {});
    progress(`store sizes: ${JSON.stringify(storeSizes)}`);

    const front = await connect(s.connectionConfig());
    clients.push(front);
    const latencies: LatencyResult[] = [];
    const random = seededRandom(opts.seed);
    const n = opts.iterations;
    const replicated = gen.transactions; // HEAD~replicated is the (last) commit before the workload
    const own = { pids: [s.child?.pid ?? 0], postmasters: [storePostmaster(s), primaryPostmaster(p)] };
    const measure = async (iterations: number, variants: Variant[], commitCount = commits) => {
      const window = loadWindow(own);
      const timed = await timeVariants(variants, iterations);
      const load = window();
      for (const [j, v] of variants.entries()) {
        const r: LatencyResult = {
          ...v.spec,
          commits: commitCount,
          summary: summarizeLatencies(timed[j].latencies),
          wrongResults: timed[j].wrong,
          firstWrong: timed[j].firstWrong,
          otherCpuShare: load.otherCpuSeconds / (load.seconds * CPUS),
        };
        latencies.push(r);
        progress(
          `${r.label} (${r.via}): p50 ${fixed(r.summary.p50Ms, 3)} ms, p99 ${fixed(r.summary.p99Ms, 3)} ms, max ${fixed(r.summary.maxMs, 2)} ms, ` +
            `other processes ${fixed(100 * (r.otherCpuShare ?? 0), 0)}% of the CPUs` +
            (r.wrongResults ? `; ${r.wrongResults} WRONG results, e.g. ${r.firstWrong}` : ""),
        );
      }
    };

    // Adjacent commits: HEAD~k against HEAD~(k-1), k in 1..replicated; each replicated commit
    // updated one row, so each diff has exactly one row.
    const ks = Array.from({ length: n }, () => randomInt(random, 1, replicated));
    await measure(n, [
      {
        spec: {
          id: "diff_adjacent",
          label: "dolt_diff, adjacent commits",
          via: "front door",
          sql: `SELECT * FROM dolt_diff('HEAD~k', 'HEAD~(k-1)', '${TABLE}')`,
          synthetic: false,
          targetMs: TARGETS.diffMs,
        },
        client: front,
        query: (i) => `SELECT * FROM dolt_diff('HEAD~${ks[i]}', 'HEAD~${ks[i] - 1}', '${TABLE}')`,
        expectRows: () => 1,
      },
      {
        spec: {
          id: "diff_adjacent_store",
          label: "dolt_diff, adjacent commits",
          via: "store",
          sql: `SELECT * FROM dolt_diff_${TABLE}('HEAD~k', 'HEAD~(k-1)')`,
          synthetic: false,
        },
        client: store,
        query: (i) => `SELECT * FROM dolt_diff_${TABLE}('HEAD~${ks[i]}', 'HEAD~${ks[i] - 1}')`,
        expectRows: () => 1,
      },
    ]);

    // As-of point lookups: HEAD~k for k in 0..replicated, a random key (most were never updated)
    // or a key that has history; every key exists at every commit since the snapshot.
    const asOfKs = Array.from({ length: n }, () => randomInt(random, 0, replicated));
    const ids = Array.from({ length: n }, () => randomInt(random, 1, opts.rows));
    const changedIds = (
      await store.query<{ id: string }>(
        `SELECT (row_key->>'id') AS id FROM strata.changes WHERE rel = 'public.${TABLE}' ORDER BY random() LIMIT $1`,
        [n],
      )
    ).rows.map((r) => Number(r.id));
    const changedAt = (i: number) => changedIds[i % changedIds.length];
    const asOfSql = `SELECT * FROM ${TABLE} AS OF 'HEAD~k' WHERE id = $1`;
    const asOfStoreSql = `SELECT * FROM dolt_as_of_${TABLE}('HEAD~k', $1)`;
    /** The as-of point lookup through the front door and on the store; the i-th at HEAD~ks[i], key(i). */
    const asOfVariants = (
      id: string,
      label: string,
      synthetic: boolean,
      ks: number[],
      key: (i: number) => number,
    ): Variant[] => {
      const instance = (sql: string) => (i: number) => ({
        text: sql.replace("HEAD~k", `HEAD~${ks[i]}`),
        values: [key(i)],
      });
      return [
        {
          spec: { id, label, via: "front door", sql: asOfSql, synthetic, targetMs: TARGETS.asOfMs },
          client: front,
          query: instance(asOfSql),
          expectRows: () => 1,
        },
        {
          spec: { id: `${id}_store`, label, via: "store", sql: asOfStoreSql, synthetic },
          client: store,
          query: instance(asOfStoreSql),
          expectRows: () => 1,
        },
      ];
    };
    await measure(
      n,
      asOfVariants("as_of_point", "AS OF point lookup, random key", false, asOfKs, (i) => ids[i]),
    );
    await measure(
      n,
      asOfVariants("as_of_point_changed", "AS OF point lookup, key with history", false, asOfKs, changedAt),
    );
    await measure(n, [
      {
        spec: {
          id: "as_of_point_prepared",
          label: "AS OF point lookup, random key, prepared",
          via: "front door",
          sql: `SELECT * FROM ${TABLE} AS OF $1 WHERE id = $2 (one named statement, Bind/Execute per query)`,
          synthetic: false,
          targetMs: TARGETS.asOfMs,
        },
        client: front,
        query: (i) => ({
          name: "bench_as_of",
          text: `SELECT * FROM ${TABLE} AS OF $1 WHERE id = $2`,
          values: [`HEAD~${asOfKs[i]}`, ids[i]],
        }),
        expectRows: () => 1,
      },
    ]);

    // dolt_log's first page at the replicated size.
    const logSql = "SELECT * FROM dolt_log LIMIT 50";
    const logVariants = (synthetic: boolean, expected: number): Variant[] => [
      {
        spec: {
          id: synthetic ? "log_first_page_synthetic" : "log_first_page",
          label: "dolt_log LIMIT 50",
          via: "front door",
          sql: logSql,
          synthetic,
          targetMs: TARGETS.logMs,
        },
        client: front,
        query: () => logSql,
        expectRows: () => expected,
      },
      {
        spec: {
          id: synthetic ? "log_first_page_synthetic_store" : "log_first_page_store",
          label: "dolt_log LIMIT 50",
          via: "store",
          sql: logSql,
          synthetic,
        },
        client: store,
        query: () => logSql,
        expectRows: () => expected,
      },
    ];
    await measure(n, logVariants(false, Math.min(50, commits)));

    // SYNTHETIC commits: rows in strata.commits without row changes, up to --log-commits.
    let syntheticCommitsAdded = 0;
    let syntheticInsertSeconds: number | undefined;
    if (opts.logCommits > commits) {
      const total = opts.logCommits;
      progress(
        `adding ${thousands(total - commits)} SYNTHETIC commits to strata.commits directly (up to ${thousands(total)})`,
      );
      const insertStart = performance.now();
      const salt = `bench-${Date.now()}-${opts.seed}`;
      const chunk = 100_000;
      for (let lo = commits + 1; lo <= total; lo += chunk) {
        const hi = Math.min(total, lo + chunk - 1);
        const [head] = (
          await store.query<{ hash: string; date: Date }>(
            "SELECT hash, date FROM strata.commits ORDER BY seq DESC LIMIT 1",
          )
        ).rows;
        // Hashes in Strata's alphabet (Dolt's base32), 32 characters (the first 32 of sha256's
        // base64, mapped onto the 32 letters); each commit's parent is the one before.
        await store.query(
          `INSERT INTO strata.commits (seq, hash, parent_hash, committer, email, date, message)
           SELECT g, hash, coalesce(lag(hash) OVER (ORDER BY g), $3), 'strata bench', 'bench@strata.invalid',
                  $4::timestamptz + (g - $1 + 1) * interval '1 millisecond',
                  'synthetic commit ' || g || ' (bench/frontdoor.ts: no row changes)'
             FROM (SELECT g, translate(left(encode(sha256(convert_to($5 || g::text, 'UTF8')), 'base64'), 32),
                                       'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/',
                                       '0123456789abcdefghijklmnopqrstuv0123456789abcdefghijklmnopqrstuv') AS hash
                     FROM generate_series($1::bigint, $2::bigint) g) h`,
          [lo, hi, head.hash, head.date, salt],
        );
        progress(`  ${thousands(hi)} commits`);
      }
      syntheticInsertSeconds = (performance.now() - insertStart) / 1000;
      syntheticCommitsAdded = total - commits;
      await store.query("VACUUM ANALYZE strata.commits");
      const [{ n: now }] = (await store.query<{ n: string }>("SELECT count(*) AS n FROM strata.commits"))
        .rows;
      if (Number(now) !== total) throw new Error(`strata.commits has ${now} rows, expected ${total}`);
      progress(`added in ${fixed(syntheticInsertSeconds, 1)} s; ${thousands(total)} commits now`);
      await measure(n, logVariants(true, 50), total);
      // Naming a commit far back: HEAD~k over the whole range. The synthetic commits have no
      // changes, so the lookup itself is as cheap as at the replicated size; what grows is
      // finding HEAD~k.
      const farKs = Array.from({ length: n }, () => randomInt(random, 0, total - 1));
      await measure(
        // Each takes tens of ms: fewer iterations.
        Math.min(n, FAR_ITERATIONS),
        asOfVariants(
          "as_of_point_synthetic",
          "AS OF point lookup, random key, HEAD~k over all commits",
          true,
          farKs,
          (i) => ids[i],
        ),
        total,
      );
    }
    return {
      rows: opts.rows,
      commitsReplicated: replicated,
      loadSeconds,
      snapshotSeconds,
      generateSeconds,
      generateTps: gen.tps,
      catchUpSeconds,
      replicaMatches,
      storeSizes,
      syntheticCommitsAdded,
      syntheticInsertSeconds,
      latencies,
    };
  } catch (err) {
    throw withStrataLogTail(err, strata);
  } finally {
    for (const c of clients) await c.end().catch(() => {});
    await stopStrata(strata);
    await stopCluster(primary);
    endPhase();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

interface PgbenchSummaryRow {
  mode: string;
  via: Via;
  tps: Summary;
  latencyMs: Summary;
  /** CPU of the proxy (strata process, or this process for the tcp pipe) per transaction. */
  proxyCpuUsPerTx?: number;
  storeCpuUsPerTx?: number;
}

function pgbenchSummaries(r: PgbenchResult): PgbenchSummaryRow[] {
  const out: PgbenchSummaryRow[] = [];
  for (const mode of opts.modes)
    for (const via of ["store", "front door", "front door (unix)", "tcp pipe"] as const) {
      const runs = r.runs.filter((x) => x.mode === mode && x.via === via);
      if (runs.length === 0) continue;
      const tx = runs.reduce((a, x) => a + x.transactions, 0);
      const cpu = (pick: (x: PgbenchRun) => number | undefined) =>
        tx ? (runs.reduce((a, x) => a + (pick(x) ?? 0), 0) * 1e6) / tx : undefined;
      out.push({
        mode,
        via,
        tps: summarize(runs.map((x) => x.tps)),
        latencyMs: summarize(runs.map((x) => x.latencyAverageMs)),
        proxyCpuUsPerTx:
          via === "front door" || via === "front door (unix)"
            ? cpu((x) => x.strataCpuSeconds)
            : via === "tcp pipe"
              ? cpu((x) => x.benchCpuSeconds)
              : undefined,
        storeCpuUsPerTx: cpu((x) => x.storeCpuSeconds),
      });
    }
  return out;
}

/** Whether a latency meets its target: "yes" (p99 under it), "p50 only", or "NO". */
function verdict(s: LatencySummary, target: number): string {
  if (s.p99Ms <= target) return "yes";
  if (s.p50Ms <= target) return "p50 only";
  return "NO";
}

function render(pgbench: PgbenchResult | undefined, history: HistoryResult | undefined): string {
  const rows: string[][] = [];
  if (pgbench) {
    const sums = pgbenchSummaries(pgbench);
    const samples = `${opts.runs} × ${opts.duration} s`;
    for (const mode of opts.modes) {
      const store = sums.find((x) => x.mode === mode && x.via === "store")!;
      for (const x of sums.filter((y) => y.mode === mode)) {
        const ratio = x.tps.median / store.tps.median;
        const overhead = (1 - ratio) * 100;
        const cpu = `${x.proxyCpuUsPerTx !== undefined ? fixed(x.proxyCpuUsPerTx, 1) : "-"} / ${fixed(x.storeCpuUsPerTx, 1)}`;
        rows.push([
          `pgbench -S -M ${mode}: TPS`,
          x.via,
          samples,
          ...tpsCells(x.tps),
          "tps",
          x.via === "store" ? "-" : `${fixed(ratio, 2)}x`,
          cpu,
          x.via.startsWith("front door") ? `overhead ≤ ${TARGETS.frontDoorOverheadPct}%` : "-",
          x.via.startsWith("front door")
            ? `${overhead <= TARGETS.frontDoorOverheadPct ? "yes" : "NO"} (${fixed(overhead, 1)}% fewer TPS)`
            : "-",
        ]);
      }
      for (const x of sums.filter((y) => y.mode === mode))
        rows.push([
          `pgbench -S -M ${mode}: average latency`,
          x.via,
          samples,
          ...latCells(x.latencyMs),
          "ms",
          x.via === "store" ? "-" : `+${fixed(x.latencyMs.median - store.latencyMs.median, 3)} ms`,
          "-",
          "-",
          "-",
        ]);
    }
  }
  if (history) {
    for (const l of history.latencies) {
      const size = `${thousands(l.commits)} commits${l.synthetic ? ", SYNTHETIC" : ""}`;
      const onStore =
        l.via === "front door"
          ? history.latencies.find((x) => x.via === "store" && x.label === l.label && x.commits === l.commits)
          : undefined;
      rows.push([
        `${l.label} (${size})`,
        l.via,
        thousands(l.summary.samples),
        fixed(l.summary.minMs, 3),
        fixed(l.summary.p50Ms, 3),
        fixed(l.summary.p99Ms, 3),
        fixed(l.summary.maxMs, 3),
        "ms",
        onStore ? `+${fixed(l.summary.p50Ms - onStore.summary.p50Ms, 3)} ms (p50)` : "-",
        "-",
        l.targetMs !== undefined ? `< ${l.targetMs} ms` : "-",
        (l.targetMs !== undefined ? verdict(l.summary, l.targetMs) : "-") +
          (l.wrongResults ? ` (${l.wrongResults} WRONG)` : ""),
      ]);
    }
  }
  return table(
    [
      "measurement",
      "via",
      "samples",
      "min",
      "p50 / median",
      "p99",
      "max",
      "unit",
      "vs store",
      "cpu µs/tx proxy / store",
      "target",
      "met",
    ],
    rows,
  );
}

function tpsCells(s: Summary): string[] {
  return [thousands(s.min), thousands(s.median), "-", thousands(s.max)];
}

function latCells(s: Summary): string[] {
  return [fixed(s.min, 3), fixed(s.median, 3), "-", fixed(s.max, 3)];
}

async function main() {
  useCompiledStrata();
  const info = machineInfo();
  const startedAt = new Date();
  progress(
    `machine: ${info.cpus} × ${info.cpuModel}, ${info.memoryGb} GB, ${info.os}, node ${info.node}, ${info.postgres}`,
  );
  const pgbench = opts.pgbench ? await pgbenchPart() : undefined;
  const history = opts.history ? await historyPart() : undefined;
  const text = render(pgbench, history);
  const lines = [
    "",
    "Front door and history queries",
    `machine: ${info.cpus} CPUs (${info.cpuModel}), ${info.memoryGb} GB RAM, ${info.os}, node ${info.node}, ${info.postgres}`,
  ];
  if (pgbench)
    lines.push(
      `pgbench: select-only (-S), scale ${opts.scale}, -c ${opts.clients} -j ${opts.threads}, ${opts.runs} runs × ${opts.duration} s per target and mode, targets alternating; ` +
        `store = its unix socket; front door = Strata's listener over TCP, front door (unix) = the same over its Unix socket (listener.unix_socket_directory)${opts.pipe ? "; tcp pipe = a plain Node TCP→socket byte pipe (baseline for any one-hop proxy)" : ""}; ` +
        "cpu: the proxy's process (strata, or the pipe's) and the store's, per transaction",
    );
  if (history)
    lines.push(
      `history: table ${TABLE} of ${thousands(history.rows)} rows snapshotted, then ${thousands(history.commitsReplicated)} replicated single-row UPDATE commits (caught up in ${fixed(history.catchUpSeconds, 1)} s); ` +
        `${thousands(opts.iterations)} iterations per query, one connection, random HEAD~k and keys (seed ${opts.seed}); latencies client-side` +
        (history.syntheticCommitsAdded
          ? `; SYNTHETIC: ${thousands(history.syntheticCommitsAdded)} commits inserted into strata.commits directly (no row changes) to reach ${thousands(opts.logCommits)}`
          : ""),
    );
  const share = (values: (number | undefined)[]) => {
    const s = summarize(values.filter((v): v is number => v !== undefined).map((v) => 100 * v));
    return `${fixed(s.median, 0)}% (max ${fixed(s.max, 0)}%)`;
  };
  const others = [
    pgbench && `pgbench runs ${share(pgbench.runs.map((r) => r.otherCpuShare))}`,
    history && `history queries ${share(history.latencies.map((l) => l.otherCpuShare))}`,
  ].filter(Boolean);
  lines.push(
    `other processes on the machine (not this bench's), share of the ${CPUS} CPUs, median: ${others.join(", ")}`,
    'met: latency targets are met when p99 is under them ("p50 only": the median is, p99 is not)',
    "",
    text,
  );
  process.stdout.write(`${lines.join("\n")}\n`);
  const wrong = history?.latencies.filter((l) => l.wrongResults > 0) ?? [];
  const failedTx = pgbench?.runs.filter((r) => r.failed > 0) ?? [];
  for (const l of wrong) process.stdout.write(`WRONG RESULTS: ${l.label} (${l.via}): ${l.firstWrong}\n`);
  for (const r of failedTx)
    process.stdout.write(
      `FAILED: pgbench run ${r.run} -M ${r.mode} ${r.via}: ${r.failed} failed transactions\n`,
    );
  writeResults("frontdoor", startedAt, {
    machine: info,
    options: opts,
    targets: TARGETS,
    method: {
      pgbench:
        "pgbench -n -S -M <mode> -c C -j J -T D against the store's unix socket (store) and Strata's listener (front door), alternating per run, after a warm-up of each; TPS as pgbench reports it (without initial connection time); CPU from /proc",
      history:
        "client-side latency of one query at a time on one node-postgres connection, after 20 warm-up iterations; HEAD~k and keys drawn with a seeded generator; the store rows run the store-side form of the same query on the store's socket",
      synthetic:
        "rows inserted into strata.commits directly (seq increasing after HEAD, 32-character base32 hashes of sha256, parent_hash chained, no strata.changes rows) so that dolt_log has --log-commits commits",
      verdict: "latency target met when p99 ≤ target",
    },
    pgbench: pgbench && { ...pgbench, summary: pgbenchSummaries(pgbench) },
    history,
  });
  return wrong.length === 0 && failedTx.length === 0 ? 0 : 1;
}

runBench(main);
