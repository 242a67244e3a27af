// npm run bench:snapshot: how long Strata's initial snapshot of a ~2 GB database takes, next to
// `pg_dump | psql`, `pg_dump -Fd -j | pg_restore -j` and a native subscriber (CREATE SUBSCRIPTION
// with copy_data = true) copying the very same data on the same machine.
//
//   node --import tsx bench/snapshot.ts [--scale N] [--toast-mb N] [--runs N] [--workers N]
//                                       [--fsync on|off] [--only strata,native,dump]
//                                       [--history on|off|both] [--timeout-min N]
//
// Once per bench: a primary (test/support/postgres.ts), `pgbench -i -s N` and a wide table of
// ~100 kB rows of md5 chains (incompressible for pglz, so they really live in TOAST), one
// publication of all these tables. Then, per run, every target gets a fresh cluster or store:
//   pg_dump | psql     plain dump streamed into psql (one connection), timed until psql exits
//   pg_dump -Fd -j W   directory dump (uncompressed) + pg_restore -j W, timed until both finished
//   native             tables pre-created from a schema-only dump (not timed); CREATE SUBSCRIPTION
//                      ... WITH (copy_data = true), max_sync_workers_per_subscription = W, timed
//                      until every pg_subscription_rel.srsubstate is 'r'
//   strata             `strata serve` on a data dir whose store was initialised by an earlier
//                      `strata serve` without replication (initdb is not timed, as for the others);
//                      snapshot_workers = W; timed from the spawn until the "initial snapshot
//                      complete" log line (then: state streaming and, with history, the commit
//                      "initial snapshot at ..." in dolt_log are checked)
//   strata (no history)  the same with behavior.dolt_transaction_commit = false
// Each target is then compared with the primary: per table, the row count and an
// order-independent sum of md5(row::text) over every row. A failed check marks the run FAILED and
// leaves it out of the figures. Progress goes to stderr, the table to stdout, every figure to
// bench/results/snapshot-<ts>.json. See docs/performance.md, "Initial snapshot".
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { rmSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { clusterPaths } from "../src/store/cluster.ts";
import { onProcessExit } from "../test/support/cleanup.ts";
import { startPrimary, TestCluster, tempDir, waitFor } from "../test/support/postgres.ts";
import { createStrata, type StrataProcess } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import * as procfs from "./support/procfs.ts";
import { fixed, type Summary, summarize, table, thousands } from "./support/report.ts";
import {
  compareChecksums,
  durabilitySettings,
  machineInfo,
  pgProgram,
  progressReporter,
  runBench,
  type TableSum,
  usageExits,
  withStrataLogTail,
  writeResults,
} from "./support/scaffold.ts";
import { type WalStats, walStats } from "./support/wal.ts";
import { type Endpoint, withClient } from "./support/workloads.ts";

const PUBLICATION = "bench_pub";
const POLL_MS = 50;
const PROGRESS_MS = 10_000;
const CHECK_SESSION = "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3";
/** Bytes of one row of the wide table: 3,200 md5 hex digests. */
const WIDE_ROW_MD5S = 3200;
const WIDE_ROW_BYTES = WIDE_ROW_MD5S * 32;

const TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history", "bench_wide"];

// ---------------------------------------------------------------------------------------------
// Options

const TARGETS = ["dump", "native", "strata"] as const;
type TargetGroup = (typeof TARGETS)[number];

const USAGE = `usage: node --import tsx bench/snapshot.ts [options]
  --scale N          pgbench scale of the dataset (default 100: 10,000,000 accounts, ~1.5 GB)
  --toast-mb N       size of the wide TOAST table in MB (default 700; ~100 kB rows)
  --runs N           repeat each target N times (default 1)
  --workers N        parallelism: Strata's snapshot_workers, the native subscription's
                     max_sync_workers_per_subscription, pg_dump/pg_restore -j (default 4)
  --fsync on|off     durability of every target (default on)
  --only LIST        comma-separated targets among dump, native, strata (default all)
  --history on|off|both  Strata's behavior.dolt_transaction_commit (default both: two Strata rows)
  --chunk-mb N       Strata's snapshot_chunk_mb (default: Strata's default, 128)
  --setting K=V      a server setting for every target (dump targets, native subscriber, Strata's
                     store), e.g. default_toast_compression=lz4 to give the others Strata's; repeatable
  --timeout-min N    give up on one target after N minutes (default 60)`;

function options() {
  const { values } = parseArgs({
    options: {
      scale: { type: "string", default: "100" },
      "toast-mb": { type: "string", default: "700" },
      runs: { type: "string", default: "1" },
      workers: { type: "string", default: "4" },
      fsync: { type: "string", default: "on" },
      only: { type: "string", default: TARGETS.join(",") },
      history: { type: "string", default: "both" },
      "chunk-mb": { type: "string" },
      setting: { type: "string", multiple: true, default: [] },
      "timeout-min": { type: "string", default: "60" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const fail = usageExits(USAGE, values.help);
  const int = (name: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max)
      fail(`--${name} must be an integer from ${min} to ${max}, got ${text}`);
    return n;
  };
  if (!["on", "off"].includes(values.fsync)) fail(`--fsync must be on or off, got ${values.fsync}`);
  if (!["on", "off", "both"].includes(values.history))
    fail(`--history must be on, off or both, got ${values.history}`);
  const settings: Record<string, string> = {};
  for (const pair of values.setting) {
    const eq = pair.indexOf("=");
    if (eq < 1) fail(`--setting takes NAME=VALUE, got ${pair}`);
    settings[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const only = values.only.split(",").map((s) => s.trim());
  for (const t of only)
    if (!(TARGETS as readonly string[]).includes(t)) fail(`--only takes ${TARGETS.join(", ")}; got ${t}`);
  return {
    scale: int("scale", values.scale, 1),
    toastMb: int("toast-mb", values["toast-mb"], 0),
    runs: int("runs", values.runs, 1),
    workers: int("workers", values.workers, 1, 64),
    fsync: values.fsync === "on",
    only: new Set(only as TargetGroup[]),
    histories: values.history === "both" ? [true, false] : [values.history === "on"],
    timeoutMs: int("timeout-min", values["timeout-min"], 1) * 60_000,
    settings,
    chunkMb: values["chunk-mb"] === undefined ? undefined : int("chunk-mb", values["chunk-mb"], 1),
  };
}

const opts = options();

/** The same durability on every target: both dump targets, the native subscriber, Strata's store. */
const DURABILITY = durabilitySettings(opts.fsync);
/** Every target's server settings: the durability, then --setting's. */
const TARGET_SETTINGS = { ...DURABILITY, ...opts.settings };
const SETTINGS_TEXT = Object.keys(opts.settings).length
  ? `${Object.entries(opts.settings)
      .map(([k, v]) => `${k}=${v}`)
      .join(", ")} on every target`
  : "PostgreSQL's defaults on every target but for Strata's own choices for its store (TOAST compression lz4 where the server has it; checkpoints spaced out while the snapshot copies)";
const DURABILITY_TEXT = opts.fsync
  ? "fsync=on, synchronous_commit=on, full_page_writes=on on every target cluster (dump targets, native subscriber, Strata's managed store); the primary is the test harness's (fsync=off)"
  : "fsync=off, synchronous_commit=off, full_page_writes=off on every target cluster: NOT durable";

// ---------------------------------------------------------------------------------------------
// Progress, child processes and cleanup

const { progress, phase, endPhase } = progressReporter();

// Clusters, Strata processes and temp dirs are registered with the harness's exit clean-up
// (test/support/cleanup.ts), which runs on exit; so are the client programs below.
const children = new Set<ChildProcess>();
// Servers are stopped here, first: the harness registers the removal of a server's temp dir
// before the server's own stop, and pg_ctl cannot stop a cluster whose postmaster.pid is gone.
const clusters = new Set<TestCluster>();
const stratas = new Set<StrataProcess>();
onProcessExit(() => {
  for (const s of stratas) s.destroySync();
  for (const c of clusters) c.stopSync();
  for (const child of children) {
    try {
      // Each shell pipeline is its own process group: kill pg_dump and psql with it.
      if (child.pid) process.kill(-child.pid, "SIGKILL");
    } catch {
      child.kill("SIGKILL");
    }
  }
});
// The harness exits at once on SIGINT/SIGTERM. A cluster (or Strata's store) that is still
// starting then has no postmaster.pid yet, so `pg_ctl stop` misses it and it comes up after its
// directory was removed. So here a signal waits for any start in progress, then exits (which runs
// the clean-up); a second signal exits at once.
let starting = 0;
let interrupted: NodeJS.Signals | undefined;
function exitOnSignal(signal: NodeJS.Signals) {
  process.stderr.write(`\n${signal}: stopping every cluster and process\n`);
  process.exit(130);
}
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.removeAllListeners(signal);
  process.on(signal, () => {
    if (starting > 0 && !interrupted) {
      interrupted = signal;
      process.stderr.write(`\n${signal}: stopping once the server being started is up\n`);
      return;
    }
    exitOnSignal(signal);
  });
}

/** Start a server; a signal that arrives meanwhile is acted on once it is up (see above). */
async function guarded<T>(start: () => Promise<T>): Promise<T> {
  starting++;
  try {
    const server = await start();
    if (server instanceof TestCluster) clusters.add(server);
    return server;
  } finally {
    starting--;
    if (interrupted && starting === 0) exitOnSignal(interrupted);
  }
}

const quote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

function connArgs(c: TestCluster): string {
  return ["-h", c.host, "-p", String(c.port), "-U", c.spec.superuser, "-d", "postgres"].map(quote).join(" ");
}

/** Run a shell command line (pipefail), with the harness's password; reject with its stderr tail. */
async function sh(line: string, timeoutMs = opts.timeoutMs): Promise<string> {
  const env: NodeJS.ProcessEnv = { ...process.env, PGPASSWORD: "password" };
  for (const key of Object.keys(env)) if (key.startsWith("PG") && key !== "PGPASSWORD") delete env[key];
  return new Promise((resolveRun, reject) => {
    const child = spawn("bash", ["-o", "pipefail", "-c", line], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    children.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (d) => {
      stdout += d.toString();
    });
    child.stderr!.on("data", (d) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        // gone
      }
    }, timeoutMs);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) resolveRun(stdout);
      else
        reject(
          new Error(
            `${line.slice(0, 200)} exited with ${code ?? signal}${signal === "SIGKILL" ? " (timed out)" : ""}\n${stderr.slice(-2000)}`,
          ),
        );
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The dataset

interface TableInfo {
  name: string;
  rows: number;
  heapBytes: number;
  toastBytes: number;
  indexBytes: number;
  totalBytes: number;
}

interface Dataset {
  scale: number;
  wideRows: number;
  wideRowBytes: number;
  generateSeconds: number;
  databaseBytes: number;
  /** Sum of pg_total_relation_size of the published tables (heap, TOAST, indexes). */
  bytes: number;
  rows: number;
  tables: TableInfo[];
  checksums: Record<string, TableSum>;
}

function endpointOfCluster(c: TestCluster): Endpoint {
  return { host: c.host, port: c.port, config: c.connectionConfig() };
}

function endpointOfStrata(s: StrataProcess): Endpoint {
  return { host: "127.0.0.1", port: s.port, config: s.connectionConfig() };
}

/**
 * Per table: the row count and the sum of the first 60 bits of md5(row::text) over every row, as
 * numeric (order-independent, so no sort of 10 million rows and no 300 MB string_agg).
 */
async function checksums(target: Endpoint): Promise<Record<string, TableSum>> {
  return withClient(
    target,
    async (c) => {
      const out: Record<string, TableSum> = {};
      for (const name of TABLES) {
        const { rows } = await c.query<{ n: string; s: string }>(
          `SELECT count(*)::text AS n, coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)::text AS s FROM ${name} t`,
        );
        out[name] = { rows: Number(rows[0].n), digest: rows[0].s };
      }
      return out;
    },
    CHECK_SESSION,
  );
}

async function verify(
  target: Endpoint,
  dataset: Dataset,
): Promise<{ sums: Record<string, TableSum>; problems: string[] }> {
  const sums = await checksums(target);
  return { sums, problems: compareChecksums(dataset.checksums, sums) };
}

async function generate(primary: TestCluster): Promise<Dataset> {
  const started = performance.now();
  progress(`pgbench -i -s ${opts.scale} (${thousands(opts.scale * 100_000)} accounts)`);
  // pgbench's -d is --debug: the database name goes last.
  const pgbenchConn = connArgs(primary).replace(/ -d postgres$/, " postgres");
  await sh(`${quote(pgProgram("pgbench"))} -i -I dtGvp -s ${opts.scale} -q ${pgbenchConn}`);
  const wideRows = Math.ceil((opts.toastMb * 1024 * 1024) / WIDE_ROW_BYTES);
  progress(`bench_wide: ${thousands(wideRows)} rows of ${thousands(WIDE_ROW_BYTES)} bytes (md5 chains)`);
  await withClient(endpointOfCluster(primary), async (c) => {
    await c.query("CREATE TABLE bench_wide (id int PRIMARY KEY, label text NOT NULL, payload text NOT NULL)");
    const batch = 500;
    let lastLog = performance.now();
    for (let first = 1; first <= wideRows; first += batch) {
      const last = Math.min(wideRows, first + batch - 1);
      // Every digest differs (row id and position): pglz finds too few repeats to compress it.
      await c.query(
        `INSERT INTO bench_wide
           SELECT i, 'row ' || i,
                  (SELECT string_agg(md5(i::text || '.' || j::text), '') FROM generate_series(1, ${WIDE_ROW_MD5S}) j)
             FROM generate_series($1::int, $2::int) i`,
        [first, last],
      );
      if (performance.now() - lastLog > PROGRESS_MS) {
        lastLog = performance.now();
        progress(`bench_wide: ${thousands(last)} of ${thousands(wideRows)} rows`);
      }
    }
    await c.query("VACUUM (ANALYZE) bench_wide");
    await c.query("CHECKPOINT");
    await c.query(`CREATE PUBLICATION ${PUBLICATION} FOR TABLE ${TABLES.join(", ")}`);
  });
  const generateSeconds = (performance.now() - started) / 1000;
  const tables = await withClient(endpointOfCluster(primary), async (c) => {
    const out: TableInfo[] = [];
    for (const name of TABLES) {
      const { rows } = await c.query<Record<string, string>>(
        `SELECT (SELECT count(*) FROM ${name})::text AS rows,
                pg_relation_size($1)::text AS heap,
                (pg_table_size($1) - pg_relation_size($1))::text AS toast,
                pg_indexes_size($1)::text AS idx,
                pg_total_relation_size($1)::text AS total`,
        [name],
      );
      const r = rows[0];
      out.push({
        name,
        rows: Number(r.rows),
        heapBytes: Number(r.heap),
        toastBytes: Number(r.toast),
        indexBytes: Number(r.idx),
        totalBytes: Number(r.total),
      });
    }
    return out;
  });
  const [{ size }] = await primary.query<{ size: string }>(
    "SELECT pg_database_size(current_database())::text AS size",
  );
  progress("checksumming the primary's tables");
  const sums = await checksums(endpointOfCluster(primary));
  return {
    scale: opts.scale,
    wideRows,
    wideRowBytes: WIDE_ROW_BYTES,
    generateSeconds,
    databaseBytes: Number(size),
    bytes: tables.reduce((n, t) => n + t.totalBytes, 0),
    rows: tables.reduce((n, t) => n + t.rows, 0),
    tables,
    checksums: sums,
  };
}

/** Drop the slots a finished target left on the primary (Strata's, a subscriber's sync slots). */
async function dropIdleSlots(primary: TestCluster) {
  await waitFor(
    "the primary's replication slots to be released",
    async () => {
      const rows = await primary.query<{ slot_name: string; active: boolean }>(
        "SELECT slot_name, active FROM pg_replication_slots",
      );
      for (const r of rows.filter((s) => !s.active))
        await primary.query("SELECT pg_drop_replication_slot($1)", [r.slot_name]).catch(() => {});
      return rows.every((r) => !r.active);
    },
    30_000,
  ).catch((err) => progress(`warning: ${(err as Error).message}`));
}

// ---------------------------------------------------------------------------------------------
// Targets

interface TargetRun {
  target: string;
  run: number;
  ok: boolean;
  error?: string;
  seconds?: number;
  /** Sub-steps: dump / restore; Strata's start-up and its own "initial snapshot complete" seconds. */
  steps?: Record<string, number>;
  /** The target's server (cluster or Strata's store): CPU seconds of all its processes. */
  serverCpuSeconds?: number;
  /** The target's server: WAL written since it was made, up to the end of the copy (native, Strata). */
  wal?: WalStats;
  /** Strata only. */
  processCpuSeconds?: number;
  processPeakRssMb?: number;
  storeDatabaseBytes?: number;
  storeDirBytes?: number;
  historyBytes?: number;
  historyRows?: number;
  /** Strata only: per-table seconds from its "initial snapshot: table copied" lines. */
  tableSeconds?: Record<string, number>;
  /** Strata: seconds each table's keys and indexes took to build, by table. */
  indexSeconds?: Record<string, number>;
  /** Strata: its "initial snapshot…" log lines, each with its time in seconds from the spawn. */
  timeline?: { msg: string; at: number; tables?: string }[];
  checksums?: Record<string, TableSum>;
}

function targetNames(): string[] {
  const names: string[] = [];
  if (opts.only.has("dump")) names.push("pg_dump | psql", `pg_dump -Fd -j ${opts.workers} | pg_restore -j`);
  if (opts.only.has("native")) names.push("native subscription");
  if (opts.only.has("strata"))
    for (const h of opts.histories) names.push(h ? "strata" : "strata (no history)");
  return names;
}

async function targetCluster(settings: Record<string, string | number | boolean> = {}) {
  const cluster = await guarded(() => startPrimary({ settings: { ...TARGET_SETTINGS, ...settings } }));
  const postmaster = procfs.postmasterPid(clusterPaths(cluster.spec).pgdata);
  if (!postmaster) throw new Error("no postmaster.pid in the target cluster");
  return { cluster, postmaster, cpuBefore: procfs.clusterCpuSeconds(postmaster) };
}

const tableArgs = TABLES.map((t) => `-t ${t}`).join(" ");

async function runDumpPlain(primary: TestCluster, dataset: Dataset, run: number): Promise<TargetRun> {
  const { cluster, postmaster, cpuBefore } = await targetCluster();
  try {
    progress("pg_dump -Fp | psql");
    const started = performance.now();
    await sh(
      `${quote(pgProgram("pg_dump"))} -Fp ${tableArgs} ${connArgs(primary)} | ${quote(pgProgram("psql"))} -X -q -v ON_ERROR_STOP=1 ${connArgs(cluster)} >/dev/null`,
    );
    const seconds = (performance.now() - started) / 1000;
    const serverCpu = procfs.clusterCpuSeconds(postmaster) - cpuBefore;
    progress(`done in ${seconds.toFixed(1)} s; checking the tables`);
    const { sums, problems } = await verify(endpointOfCluster(cluster), dataset);
    return {
      target: "pg_dump | psql",
      run,
      ok: problems.length === 0,
      error: problems.length ? problems.join("; ") : undefined,
      seconds,
      serverCpuSeconds: serverCpu,
      checksums: sums,
    };
  } finally {
    await cluster.stop();
  }
}

async function runDumpDir(primary: TestCluster, dataset: Dataset, run: number): Promise<TargetRun> {
  const { cluster, postmaster, cpuBefore } = await targetCluster();
  const dir = join(tempDir("strata-bench-dump-"), "dump");
  try {
    const w = opts.workers;
    progress(`pg_dump -Fd -j ${w} -Z 0, then pg_restore -j ${w}`);
    const started = performance.now();
    await sh(
      `${quote(pgProgram("pg_dump"))} -Fd -j ${w} -Z 0 -f ${quote(dir)} ${tableArgs} ${connArgs(primary)}`,
    );
    const dumped = performance.now();
    await sh(`${quote(pgProgram("pg_restore"))} -j ${w} -e ${connArgs(cluster)} ${quote(dir)}`);
    const seconds = (performance.now() - started) / 1000;
    const restoreSeconds = (performance.now() - dumped) / 1000;
    const serverCpu = procfs.clusterCpuSeconds(postmaster) - cpuBefore;
    progress(`done in ${seconds.toFixed(1)} s; checking the tables`);
    const { sums, problems } = await verify(endpointOfCluster(cluster), dataset);
    return {
      target: `pg_dump -Fd -j ${w} | pg_restore -j`,
      run,
      ok: problems.length === 0,
      error: problems.length ? problems.join("; ") : undefined,
      seconds,
      steps: { dump: (dumped - started) / 1000, restore: restoreSeconds },
      serverCpuSeconds: serverCpu,
      checksums: sums,
    };
  } finally {
    rmSync(dirname(dir), { recursive: true, force: true });
    await cluster.stop();
  }
}

async function runNative(primary: TestCluster, dataset: Dataset, run: number): Promise<TargetRun> {
  const w = opts.workers;
  const { cluster, postmaster } = await targetCluster({
    max_sync_workers_per_subscription: w,
    max_logical_replication_workers: w + 4,
    max_worker_processes: w + 12,
  });
  try {
    progress("creating the tables (schema-only dump, not timed)");
    await sh(
      `${quote(pgProgram("pg_dump"))} --schema-only ${tableArgs} ${connArgs(primary)} | ${quote(pgProgram("psql"))} -X -q -v ON_ERROR_STOP=1 ${connArgs(cluster)} >/dev/null`,
    );
    const cpuBefore = procfs.clusterCpuSeconds(postmaster);
    const conninfo = `host=${primary.host} port=${primary.port} user=${primary.spec.superuser} password=${primary.spec.password} dbname=postgres`;
    const seconds = await withClient(endpointOfCluster(cluster), async (c) => {
      progress(`CREATE SUBSCRIPTION ... WITH (copy_data = true), ${w} sync workers`);
      const started = performance.now();
      await c.query(
        `CREATE SUBSCRIPTION bench_sub CONNECTION '${conninfo}' PUBLICATION ${PUBLICATION} WITH (copy_data = true)`,
      );
      let lastCheck = performance.now();
      let lastProgress = performance.now();
      for (;;) {
        const { rows } = await c.query<{ ready: string; total: string }>(
          "SELECT count(*) FILTER (WHERE srsubstate = 'r')::text AS ready, count(*)::text AS total FROM pg_subscription_rel",
        );
        const now = performance.now();
        const ready = Number(rows[0].ready);
        if (Number(rows[0].total) === TABLES.length && ready === TABLES.length) return (now - started) / 1000;
        if (now - lastCheck > 1000) {
          lastCheck = now;
          const { rows: e } = await c.query<{ n: string }>(
            "SELECT coalesce(sum(sync_error_count + apply_error_count), 0)::text AS n FROM pg_stat_subscription_stats",
          );
          if (Number(e[0].n) > 0)
            throw new Error(
              `the native subscription's workers failed (${e[0].n} errors); see ${clusterPaths(cluster.spec).logFile}`,
            );
        }
        if (now - lastProgress > PROGRESS_MS) {
          lastProgress = now;
          progress(`${ready} of ${TABLES.length} tables ready, ${((now - started) / 1000).toFixed(0)} s`);
        }
        if (now - started > opts.timeoutMs)
          throw new Error(`the native subscription did not finish within ${opts.timeoutMs / 60_000} min`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    });
    const serverCpu = procfs.clusterCpuSeconds(postmaster) - cpuBefore;
    const wal = await walStats(endpointOfCluster(cluster));
    progress(`all tables ready in ${seconds.toFixed(1)} s; checking the tables`);
    const { sums, problems } = await verify(endpointOfCluster(cluster), dataset);
    await cluster.query("DROP SUBSCRIPTION bench_sub").catch(() => {});
    return {
      target: "native subscription",
      run,
      ok: problems.length === 0,
      error: problems.length ? problems.join("; ") : undefined,
      seconds,
      serverCpuSeconds: serverCpu,
      wal,
      checksums: sums,
    };
  } finally {
    await cluster.stop();
    await dropIdleSlots(primary);
  }
}

/** The log lines whose message is `msg` (or, with `prefix`, starts with it), parsed. */
function logLines(logs: string, msg: string, prefix = false): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  const needle = prefix ? `"msg":"${msg}` : `"msg":"${msg}"`;
  for (const line of logs.split("\n")) {
    if (!line.includes(needle)) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a partial line
    }
  }
  return out;
}

function duBytes(path: string): number | undefined {
  try {
    return Number(execFileSync("du", ["-sb", path], { encoding: "utf8" }).split("\t")[0]);
  } catch {
    return undefined;
  }
}

async function runStrata(
  primary: TestCluster,
  dataset: Dataset,
  run: number,
  history: boolean,
): Promise<TargetRun> {
  const name = history ? "strata" : "strata (no history)";
  const slot = `strata_bench_${run}_${history ? "h" : "n"}`;
  const dataDir = join(tempDir("strata-bench-"), "data");
  const instances: StrataProcess[] = [];
  const config = {
    log_level: "info",
    store: { settings: TARGET_SETTINGS },
    behavior: { dolt_transaction_commit: history },
  };
  let strata: StrataProcess | undefined;
  try {
    // initdb of the store by a first `strata serve` without replication: the other targets'
    // clusters are not timed from initdb either.
    progress("initialising Strata's store (strata serve without replication, not timed)");
    const prime = await createStrata({
      primary,
      dataDir,
      slot,
      config: { ...config, postgres_replication: undefined },
    });
    instances.push(prime);
    stratas.add(prime);
    try {
      await guarded(() => prime.start());
    } finally {
      await prime.stop();
    }
    strata = await createStrata({
      primary,
      dataDir,
      slot,
      config,
      replication: {
        publication_name: PUBLICATION,
        snapshot_workers: opts.workers,
        ...(opts.chunkMb !== undefined ? { snapshot_chunk_mb: opts.chunkMb } : {}),
      },
    });
    instances.push(strata);
    stratas.add(strata);
    const s = strata;
    progress(`strata serve, snapshot_workers ${opts.workers}`);
    const started = performance.now();
    const spawnedAt = Date.now();
    await guarded(() => s.start());
    const startupSeconds = (performance.now() - started) / 1000;
    const pid = s.child?.pid;
    if (!pid) throw new Error("strata has no pid");
    let lastProgress = performance.now();
    let seconds: number | undefined;
    for (;;) {
      const now = performance.now();
      if (s.logs.includes('"msg":"initial snapshot complete"')) {
        seconds = (now - started) / 1000;
        break;
      }
      const child = s.child;
      if (child && (child.exitCode !== null || child.signalCode !== null))
        throw new Error(`strata exited (${child.exitCode ?? child.signalCode}) during the snapshot`);
      if (/"level":(5|6)\d/.test(s.logs))
        throw new Error(
          `strata logged an error:\n${s.logs
            .split("\n")
            .filter((l) => /"level":(5|6)\d/.test(l))
            .slice(-3)
            .join("\n")}`,
        );
      if (now - lastProgress > PROGRESS_MS) {
        lastProgress = now;
        const status = await s
          .query<Record<string, string | null>>(
            "SELECT phase, snapshot_tables_done, snapshot_tables_total, snapshot_rows, snapshot_bytes FROM dolt_replication_status",
          )
          .catch(() => []);
        const st = status[0];
        progress(
          st
            ? `${st.phase ?? "-"}: ${st.snapshot_tables_done ?? 0}/${st.snapshot_tables_total ?? "?"} tables, ${thousands(Number(st.snapshot_rows ?? 0))} rows, ${(Number(st.snapshot_bytes ?? 0) / 1048576).toFixed(0)} MB, ${((now - started) / 1000).toFixed(0)} s`
            : `${((now - started) / 1000).toFixed(0)} s`,
        );
      }
      if (now - started > opts.timeoutMs)
        throw new Error(`strata did not finish its snapshot within ${opts.timeoutMs / 60_000} min`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    const processCpu = procfs.cpuSeconds(pid);
    const peakRss = procfs.peakRssKb(pid);
    const storePgdata = clusterPaths({ root: join(dataDir, "store") }).pgdata;
    const store = procfs.postmasterPid(storePgdata);
    const serverCpu = store ? procfs.clusterCpuSeconds(store) : undefined;
    const wal = await walStats(endpointOfStrata(s));
    progress(`snapshot complete in ${seconds.toFixed(1)} s; waiting for streaming, checking the tables`);
    await s.waitForStreaming(60_000);
    const problems: string[] = [];
    const commits = await s.query<{ message: string }>(
      "SELECT message FROM dolt_log WHERE message LIKE 'initial snapshot at %'",
    );
    if (history && commits.length !== 1)
      problems.push(`${commits.length} "initial snapshot at ..." commits in dolt_log, expected 1`);
    const { sums, problems: diff } = await verify(endpointOfStrata(s), dataset);
    problems.push(...diff);
    const sizes = await s
      .query<{ db: string; changes: string; rows: string }>(
        `SELECT pg_database_size(current_database())::text AS db,
                pg_total_relation_size('strata.changes')::text AS changes,
                (SELECT count(*) FROM strata.changes)::text AS rows`,
      )
      .catch(() => []);
    const historyRows = sizes[0] ? Number(sizes[0].rows) : undefined;
    if (history) {
      // The snapshot's versions as dolt_history_<table> serves them (history rows for keyless
      // tables, snapshot bases for the others): one per copied row.
      let versions = 0;
      for (const table of TABLES) {
        const [row] = await s.query<{ n: string }>(
          `SELECT count(*)::text AS n FROM public.${`"dolt_history_${table}"`} h
            WHERE h.commit_hash = (SELECT hash FROM strata.commits ORDER BY seq LIMIT 1)`,
        );
        versions += Number(row.n);
      }
      if (versions !== dataset.rows)
        problems.push(
          `${versions} versions at the snapshot commit in dolt_history_*, expected ${dataset.rows}`,
        );
    }
    const complete = logLines(s.logs, "initial snapshot complete")[0];
    const tableSeconds: Record<string, number> = {};
    for (const l of logLines(s.logs, "initial snapshot: table copied"))
      tableSeconds[String(l.table)] = Number(l.seconds);
    // When each step of the snapshot ended, in seconds from the spawn (its log lines' times).
    const timeline: { msg: string; at: number; tables?: string }[] = [];
    for (const l of logLines(s.logs, "initial snapshot", true)) {
      const tables = l.table ?? (Array.isArray(l.tables) ? l.tables.join(",") : undefined);
      timeline.push({
        msg: String(l.msg),
        at: Number(((Date.parse(String(l.time)) - spawnedAt) / 1000).toFixed(2)),
        ...(tables === undefined ? {} : { tables: String(tables) }),
      });
    }
    const indexSeconds: Record<string, number> = {};
    for (const l of logLines(s.logs, "initial snapshot: keys and indexes built"))
      indexSeconds[(l.tables as string[]).join(",")] = Number(l.seconds);
    return {
      target: name,
      run,
      ok: problems.length === 0,
      error: problems.length ? problems.join("; ") : undefined,
      seconds,
      steps: {
        startup: startupSeconds,
        ...(complete?.seconds !== undefined ? { snapshot: Number(complete.seconds) } : {}),
      },
      serverCpuSeconds: serverCpu,
      wal,
      processCpuSeconds: processCpu,
      processPeakRssMb: peakRss !== undefined ? peakRss / 1024 : undefined,
      storeDatabaseBytes: sizes[0] ? Number(sizes[0].db) : undefined,
      storeDirBytes: duBytes(join(dataDir, "store")),
      historyBytes: sizes[0] ? Number(sizes[0].changes) : undefined,
      historyRows,
      tableSeconds,
      indexSeconds,
      timeline,
      checksums: sums,
    };
  } catch (err) {
    throw withStrataLogTail(err, strata);
  } finally {
    await strata?.stop().catch(() => {});
    for (const instance of instances) {
      instance.destroySync();
      stratas.delete(instance);
    }
    await dropIdleSlots(primary);
  }
}

/** Run one target; a failure is recorded (and reported) rather than ending the bench. */
async function attempt(target: string, run: number, fn: () => Promise<TargetRun>): Promise<TargetRun> {
  phase(`run ${run}/${opts.runs} ${target}`);
  try {
    const r = await fn();
    if (!r.ok) progress(`FAILED CHECK: ${r.error}`);
    return r;
  } catch (err) {
    const message = (err as Error).message;
    progress(`FAILED: ${message}`);
    return { target, run, ok: false, error: message };
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function machine() {
  return { ...machineInfo(), loadAverage: os.loadavg().map((l) => Number(l.toFixed(2))) };
}

const MB = 1024 * 1024;

function summaryOf(runs: TargetRun[]): Summary {
  return summarize(runs.filter((r) => r.ok && r.seconds !== undefined).map((r) => r.seconds!));
}

function medianOf(runs: TargetRun[], pick: (r: TargetRun) => number | undefined): number | undefined {
  const values = runs
    .filter((r) => r.ok)
    .map(pick)
    .filter((v): v is number => v !== undefined);
  return values.length ? summarize(values).median : undefined;
}

function render(dataset: Dataset, byTarget: Map<string, TargetRun[]>): string {
  const strata = byTarget.has("strata") ? summaryOf(byTarget.get("strata")!).median : Number.NaN;
  const main: string[][] = [];
  const detail: string[][] = [];
  for (const [target, runs] of byTarget) {
    const s = summaryOf(runs);
    const failed = runs.filter((r) => !r.ok).length;
    main.push([
      `${target}${failed ? ` (${failed} FAILED)` : ""}`,
      `${fixed(s.min, 1)} / ${fixed(s.median, 1)} / ${fixed(s.max, 1)}`,
      thousands(dataset.rows / s.median),
      fixed(dataset.bytes / MB / s.median, 1),
      Number.isFinite(strata) ? `${fixed(strata / s.median)}x` : "-",
    ]);
    const steps = Object.keys(runs.find((r) => r.ok)?.steps ?? {});
    detail.push([
      target,
      steps
        .map(
          (k) =>
            `${k} ${fixed(
              medianOf(runs, (r) => r.steps?.[k]),
              1,
            )}`,
        )
        .join(", ") || "-",
      fixed(
        medianOf(runs, (r) => r.serverCpuSeconds),
        1,
      ),
      fixed(
        medianOf(runs, (r) => r.wal?.mb),
        0,
      ),
      fixed(
        medianOf(runs, (r) => r.wal?.fullPageImages),
        0,
      ),
      fixed(
        medianOf(runs, (r) => r.processCpuSeconds),
        1,
      ),
      fixed(
        medianOf(runs, (r) => r.processPeakRssMb),
        0,
      ),
      fixed((medianOf(runs, (r) => r.storeDatabaseBytes) ?? Number.NaN) / MB, 0),
      fixed((medianOf(runs, (r) => r.historyBytes) ?? Number.NaN) / MB, 0),
    ]);
  }
  const tables = dataset.tables.map((t) => [
    t.name,
    thousands(t.rows),
    fixed(t.heapBytes / MB, 1),
    fixed(t.toastBytes / MB, 1),
    fixed(t.indexBytes / MB, 1),
    fixed(t.totalBytes / MB, 1),
  ]);
  return [
    `dataset: pgbench scale ${dataset.scale} + bench_wide (${thousands(dataset.wideRows)} rows of ${thousands(dataset.wideRowBytes)} bytes); ${thousands(dataset.rows)} rows, ${fixed(dataset.bytes / MB, 0)} MB in the published tables (pg_database_size ${fixed(dataset.databaseBytes / MB, 0)} MB), generated in ${fixed(dataset.generateSeconds, 0)} s`,
    table(["table", "rows", "heap MB", "toast MB", "index MB", "total MB"], tables),
    "",
    table(["target", "seconds min / median / max", "rows/s", "MB/s", "strata ÷ target (time)"], main),
    "",
    "Medians: steps (s), CPU (s), memory and sizes (MB)",
    table(
      [
        "target",
        "steps",
        "server cpu",
        "WAL MB",
        "full-page images",
        "strata process cpu",
        "strata peak RSS",
        "store db size",
        "strata.changes size",
      ],
      detail,
    ),
  ].join("\n");
}

async function main() {
  useCompiledStrata();
  const info = machine();
  const startedAt = new Date();
  progress(
    `machine: ${info.cpus} × ${info.cpuModel}, ${info.memoryGb} GB, ${info.os}, node ${info.node}, ${info.postgres}, load ${info.loadAverage.join(" ")}`,
  );
  progress(`durability: ${DURABILITY_TEXT}`);
  progress(`settings: ${SETTINGS_TEXT}`);
  phase("dataset");
  const primary = await guarded(() =>
    startPrimary({ settings: { max_replication_slots: 40, max_wal_senders: 40, max_wal_size: "4GB" } }),
  );
  const byTarget = new Map<string, TargetRun[]>(targetNames().map((n) => [n, []]));
  let dataset: Dataset;
  try {
    dataset = await generate(primary);
    progress(
      `${thousands(dataset.rows)} rows, ${(dataset.bytes / MB).toFixed(0)} MB in the published tables, generated in ${dataset.generateSeconds.toFixed(0)} s`,
    );
    const add = (r: TargetRun) => byTarget.get(r.target)?.push(r);
    for (let run = 1; run <= opts.runs; run++) {
      if (opts.only.has("dump")) {
        add(await attempt("pg_dump | psql", run, () => runDumpPlain(primary, dataset, run)));
        const dir = `pg_dump -Fd -j ${opts.workers} | pg_restore -j`;
        add(await attempt(dir, run, () => runDumpDir(primary, dataset, run)));
      }
      if (opts.only.has("native"))
        add(await attempt("native subscription", run, () => runNative(primary, dataset, run)));
      if (opts.only.has("strata"))
        for (const history of opts.histories) {
          const name = history ? "strata" : "strata (no history)";
          add(await attempt(name, run, () => runStrata(primary, dataset, run, history)));
        }
    }
  } finally {
    await primary.stop();
  }
  endPhase();
  const text = render(dataset, byTarget);
  process.stdout.write(
    `\nInitial snapshot: Strata vs pg_dump | psql, pg_dump -Fd -j | pg_restore -j, and native CREATE SUBSCRIPTION (copy_data = true)\n` +
      `machine: ${info.cpus} CPUs (${info.cpuModel}), ${info.memoryGb} GB RAM, ${info.os}, node ${info.node}, ${info.postgres}; load average at start ${info.loadAverage.join(" ")} (shared machine)\n` +
      `durability: ${DURABILITY_TEXT}\n` +
      `settings: ${SETTINGS_TEXT}\n` +
      `parallelism: ${opts.workers} (strata snapshot_workers, native max_sync_workers_per_subscription, pg_dump/pg_restore -j); strata snapshot_chunk_mb: ${opts.chunkMb ?? "default (128)"}; runs: ${opts.runs}\n` +
      `seconds: start of the copy until all data is present (dump: until psql / pg_restore exit, indexes included; native: until every table is 'r'; strata: spawn until "initial snapshot complete"); MB/s = published tables' on-disk size / seconds\n\n` +
      `${text}\n`,
  );
  const failures = [...byTarget.values()]
    .flat()
    .filter((r) => !r.ok)
    .map((r) => `${r.target} run ${r.run}: ${r.error}`);
  for (const f of failures) process.stdout.write(`FAILED ${f}\n`);
  const strataMedian = summaryOf(byTarget.get("strata") ?? []).median;
  writeResults("snapshot", startedAt, {
    machine: { ...info, loadAverageAtEnd: os.loadavg().map((l) => Number(l.toFixed(2))) },
    note: "shared machine: other sessions may run tests at the same time",
    options: {
      scale: opts.scale,
      toastMb: opts.toastMb,
      runs: opts.runs,
      workers: opts.workers,
      fsync: opts.fsync,
      only: [...opts.only],
      strataHistory: opts.histories,
      strataChunkMb: opts.chunkMb ?? "default",
      targetSettings: opts.settings,
    },
    durability: { settings: DURABILITY, description: DURABILITY_TEXT },
    dataset,
    targets: [...byTarget].map(([target, runs]) => {
      const s = summaryOf(runs);
      return {
        target,
        summary: {
          seconds: s,
          rowsPerSecond: dataset.rows / s.median,
          mbPerSecond: dataset.bytes / MB / s.median,
          /** Strata's median time ÷ this target's: above 1, Strata is slower. */
          strataTimeRatio: strataMedian / s.median,
        },
        runs,
      };
    }),
    failures,
  });
  return failures.length === 0 ? 0 : 1;
}

runBench(main);
