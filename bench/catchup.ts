// npm run bench: how long Strata takes to catch up a replication backlog, next to a native
// Postgres subscriber (CREATE SUBSCRIPTION) catching up the very same backlog on the same machine.
//
//   node --import tsx bench/catchup.ts [--runs N] [--rows N] [--workload bulk|mixed|all]
//                                      [--scale N] [--fsync on|off] [--history on|off]
//                                      [--timeout-min N]
//
// Per workload: a fresh primary; its tables; a publication; one pgoutput slot per consumer run and
// one scratch slot, all made BEFORE the workload so that every consumer starts from the same point
// with the whole backlog waiting. Then, for each run:
//   decoding ceiling  pg_logical_slot_peek_binary_changes over the scratch slot (also counts the
//                     row changes exactly and finds the end LSN: the end of the last commit)
//   native            a subscriber cluster with the same tables; time from CREATE SUBSCRIPTION
//                     until the slot's confirmed_flush_lsn on the primary reaches the end LSN
//   strata            `strata serve` (test/support/strata.ts) on a pre-made data dir with the same
//                     tables; time from spawning the process until the same condition
// Both replicas are then checked against the primary (row counts and an md5 of every table, and
// for Strata one history commit per upstream transaction); a run that fails a check is reported
// as FAILED and left out of the figures. See docs/performance.md.
// Progress goes to stderr; the tables to stdout; all figures to bench/results/catchup-<ts>.json.
import { join } from "node:path";
import { parseArgs } from "node:util";
import type pg from "pg";
import { clusterPaths } from "../src/store/cluster.ts";
import { startPrimary, type TestCluster, tempDir, waitFor } from "../test/support/postgres.ts";
import { createStrata, type StrataProcess } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { exitOnSignals, INTERNAL_WRITER } from "./support/processes.ts";
import * as procfs from "./support/procfs.ts";
import { fixed, type Summary, summarize, table, thousands } from "./support/report.ts";
import {
  compareChecksums,
  durabilitySettings,
  machineInfo,
  progressReporter,
  runBench,
  type TableSum,
  usageExits,
  withStrataLogTail,
  writeResults,
} from "./support/scaffold.ts";
import { type WalStats, walSince, walStats } from "./support/wal.ts";
import {
  bulkWorkload,
  checksums,
  endpointOfCluster,
  endpointOfStrata,
  mixedWorkload,
  type Workload,
  withClient,
} from "./support/workloads.ts";

const PUBLICATION = "bench_pub";
const DECODE_SLOT = "bench_decode";
const POLL_MS = 50;
const SAMPLE_MS = 500;
const PROGRESS_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: node --import tsx bench/catchup.ts [options]
  --runs N           repeat each measurement N times (default 1)
  --rows N           row changes per workload, at least (default 2000000)
  --workload W       bulk | mixed | all (default all)
  --scale N          pgbench scale of the mixed workload's tables (default 10)
  --fsync on|off     durability of both replicas (native subscriber cluster, Strata's store), default on
  --timeout-min N    give up on one catch-up after N minutes (default 60)
  --history on|off   Strata's behavior.dolt_transaction_commit (default on, Strata's default)`;

function options() {
  const { values } = parseArgs({
    options: {
      runs: { type: "string", default: "1" },
      rows: { type: "string", default: "2000000" },
      workload: { type: "string", default: "all" },
      scale: { type: "string", default: "10" },
      fsync: { type: "string", default: "on" },
      "timeout-min": { type: "string", default: "60" },
      history: { type: "string", default: "on" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const fail = usageExits(USAGE, values.help);
  const int = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}, got ${text}`);
    return n;
  };
  const workload = values.workload;
  if (!["bulk", "mixed", "all"].includes(workload))
    fail(`--workload must be bulk, mixed or all, got ${workload}`);
  for (const name of ["fsync", "history"] as const) {
    if (!["on", "off"].includes(values[name])) fail(`--${name} must be on or off, got ${values[name]}`);
  }
  return {
    runs: int("runs", values.runs, 1),
    rows: int("rows", values.rows, 1000),
    workloads: (workload === "all" ? ["bulk", "mixed"] : [workload]) as ("bulk" | "mixed")[],
    scale: int("scale", values.scale, 1),
    fsync: values.fsync === "on",
    history: values.history === "on",
    timeoutMs: int("timeout-min", values["timeout-min"], 1) * 60_000,
  };
}

const opts = options();

/** The same settings on the native subscriber cluster and on Strata's managed store. */
const DURABILITY = durabilitySettings(opts.fsync);
const DURABILITY_TEXT = opts.fsync
  ? "fsync=on, synchronous_commit=on, full_page_writes=on on both replicas (native subscriber cluster, Strata's managed store); the native subscription keeps its default synchronous_commit=off, which still acknowledges only flushed WAL"
  : "fsync=off, synchronous_commit=off, full_page_writes=off on both replicas (native subscriber cluster, Strata's managed store): NOT durable";

// ---------------------------------------------------------------------------------------------
// Progress and cleanup

const { progress, phase, endPhase } = progressReporter();

// Clusters and Strata processes are registered with the harness's exit clean-up
// (test/support/cleanup.ts), which also runs on SIGINT/SIGTERM.
exitOnSignals("stopping every cluster and process");

// ---------------------------------------------------------------------------------------------
// Measurements

interface Counts {
  messages: number;
  inserts: number;
  updates: number;
  deletes: number;
  commits: number;
  /** End of the last commit record in the backlog: where a caught-up consumer's slot stands. */
  endLsn: string;
}

interface DecodeRun {
  run: number;
  seconds: number;
  rowsPerSecond: number;
}

interface ConsumerRun {
  run: number;
  ok: boolean;
  error?: string;
  seconds?: number;
  rowsPerSecond?: number;
  /** Strata only: spawn → "ready for connections" (part of `seconds`). */
  startupSeconds?: number;
  /** Strata only: CPU time of the strata (node) process. */
  processCpuSeconds?: number;
  /** Strata's managed store / the native subscriber cluster (all its processes). */
  serverCpuSeconds?: number;
  /** The primary's walsender that decoded the backlog for this consumer. */
  walsenderCpuSeconds?: number;
  /** Strata only: peak RSS (VmHWM) of the strata process. */
  processPeakRssMb?: number;
  /** Peak of the summed PSS of the server's processes (sampled every 0.5 s). */
  serverPeakPssMb?: number;
  /** The replica server's WAL during the catch-up (its tables' creation excluded). */
  wal?: WalStats;
  checksums?: Record<string, TableSum>;
  /** Strata only: commits recorded in the replica's history (one per upstream transaction). */
  replicaCommits?: number;
  logWarnings?: number;
  logErrors?: number;
  logTail?: string;
}

interface WorkloadResult {
  workload: string;
  description: string;
  rowChanges: number;
  counts: Counts;
  startLsn: string;
  walBytes: number;
  generateSeconds: number;
  generator: Record<string, unknown>;
  primaryChecksums: Record<string, TableSum>;
  decode: DecodeRun[];
  native: ConsumerRun[];
  strata: ConsumerRun[];
}

/** One pass of pgoutput (proto 1) over the scratch slot's backlog, counting messages by kind. */
async function decodeOnce(primary: TestCluster): Promise<{ seconds: number; counts: Counts }> {
  return withClient(endpointOfCluster(primary), async (c) => {
    const started = performance.now();
    const { rows } = await c.query(
      `SELECT count(*) AS messages,
              count(*) FILTER (WHERE get_byte(data, 0) = 73) AS inserts,
              count(*) FILTER (WHERE get_byte(data, 0) = 85) AS updates,
              count(*) FILTER (WHERE get_byte(data, 0) = 68) AS deletes,
              count(*) FILTER (WHERE get_byte(data, 0) = 67) AS commits,
              max(lsn)::text AS end_lsn
         FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
      [DECODE_SLOT, PUBLICATION],
    );
    const seconds = (performance.now() - started) / 1000;
    const r = rows[0];
    return {
      seconds,
      counts: {
        messages: Number(r.messages),
        inserts: Number(r.inserts),
        updates: Number(r.updates),
        deletes: Number(r.deletes),
        commits: Number(r.commits),
        endLsn: r.end_lsn,
      },
    };
  });
}

interface CatchUp {
  seconds: number;
  walsenderCpuSeconds?: number;
}

/**
 * Poll the primary until `slot`'s confirmed_flush_lsn reaches `target`. `check` runs about once
 * a second and throws when the consumer has failed; `sample` runs every SAMPLE_MS.
 */
async function waitCatchUp(args: {
  primary: pg.Client;
  slot: string;
  target: string;
  startedAt: number;
  what: string;
  sample: () => void;
  check: () => Promise<void>;
}): Promise<CatchUp> {
  const { primary, slot, target, startedAt, what } = args;
  const deadline = startedAt + opts.timeoutMs;
  let walsender: number | undefined;
  let lastSample = 0;
  let lastCheck = performance.now();
  let lastProgress = performance.now();
  let total: number | undefined;
  for (;;) {
    const { rows } = await primary.query<{ active_pid: number | null; done: boolean; behind: string | null }>(
      `SELECT active_pid, coalesce(confirmed_flush_lsn >= $2::pg_lsn, false) AS done,
              ($2::pg_lsn - confirmed_flush_lsn)::bigint::text AS behind
         FROM pg_replication_slots WHERE slot_name = $1`,
      [slot, target],
    );
    const row = rows[0];
    if (!row) throw new Error(`slot ${slot} is gone from the primary`);
    if (row.active_pid) walsender = row.active_pid;
    const now = performance.now();
    if (row.done) {
      args.sample();
      return {
        seconds: (now - startedAt) / 1000,
        walsenderCpuSeconds: walsender ? procfs.cpuSeconds(walsender) : undefined,
      };
    }
    const behind = Number(row.behind ?? 0);
    total ??= behind;
    if (now - lastSample >= SAMPLE_MS) {
      lastSample = now;
      args.sample();
    }
    if (now - lastCheck >= 1000) {
      lastCheck = now;
      await args.check();
    }
    if (now - lastProgress >= PROGRESS_MS) {
      lastProgress = now;
      const pct = total ? (100 * (total - behind)) / total : 0;
      progress(
        `${what}: ${pct.toFixed(1)}% of the backlog confirmed, ${(behind / 1048576).toFixed(1)} MB of WAL to go, ${((now - startedAt) / 1000).toFixed(0)} s`,
      );
    }
    if (now > deadline)
      throw new Error(
        `${what} did not catch up within ${opts.timeoutMs / 60_000} min (${(behind / 1048576).toFixed(1)} MB of WAL behind)`,
      );
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

function logStats(logs: string) {
  const lines = logs.split("\n").filter((l) => l.trim());
  const level = (l: string) => Number(/"level":(\d+)/.exec(l)?.[1] ?? 0);
  return {
    warnings: lines.filter((l) => level(l) === 40).length,
    errors: lines.filter((l) => level(l) >= 50).length,
    notable: lines.filter((l) => level(l) >= 40),
  };
}

async function runNative(
  w: Workload,
  primary: TestCluster,
  primaryClient: pg.Client,
  expected: WorkloadResult,
  run: number,
): Promise<ConsumerRun> {
  const slot = `native_${run}`;
  const rows = expected.rowChanges;
  progress("starting a subscriber cluster and creating its tables");
  const sub = await startPrimary({ settings: DURABILITY });
  try {
    const target = endpointOfCluster(sub);
    await w.createTables(target);
    // Strata's store restarts between making its tables and the catch-up, which checkpoints it.
    // The subscriber checkpoints here, so that both start right after one: the first change to
    // each page after a checkpoint logs the whole page, on both (as on any replica that has run
    // for a while).
    await withClient(target, (c) => c.query("CHECKPOINT"));
    const walBefore = await walStats(target);
    const pgdata = clusterPaths(sub.spec).pgdata;
    const postmaster = procfs.postmasterPid(pgdata);
    if (!postmaster) throw new Error(`no postmaster.pid in ${pgdata}`);
    const cpuBefore = procfs.clusterCpuSeconds(postmaster);
    let peakPss = 0;
    const conninfo = `host=${primary.host} port=${primary.port} user=${primary.spec.superuser} password=${primary.spec.password} dbname=postgres`;
    const result = await withClient(target, async (c) => {
      let statsView = true;
      progress(`CREATE SUBSCRIPTION on slot ${slot}; catching up ${thousands(rows)} row changes`);
      const startedAt = performance.now();
      await c.query(
        `CREATE SUBSCRIPTION bench_sub CONNECTION '${conninfo}' PUBLICATION ${PUBLICATION}
           WITH (create_slot = false, slot_name = '${slot}', copy_data = false)`,
      );
      return waitCatchUp({
        primary: primaryClient,
        slot,
        target: expected.counts.endLsn,
        startedAt,
        what: "native",
        sample: () => {
          peakPss = Math.max(peakPss, procfs.clusterPssKb(postmaster));
        },
        check: async () => {
          if (!statsView) return;
          try {
            const { rows: s } = await c.query<{ n: string }>(
              "SELECT coalesce(sum(apply_error_count), 0) AS n FROM pg_stat_subscription_stats",
            );
            if (Number(s[0].n) > 0)
              throw new Error(
                `the native subscriber's apply worker failed (apply_error_count ${s[0].n}); see ${clusterPaths(sub.spec).logFile}`,
              );
          } catch (err) {
            if (/apply worker failed/.test((err as Error).message)) throw err;
            statsView = false; // PostgreSQL < 15: no such view
          }
        },
      });
    });
    const serverCpu = procfs.clusterCpuSeconds(postmaster) - cpuBefore;
    const wal = walSince(walBefore, await walStats(target));
    progress(`caught up in ${result.seconds.toFixed(2)} s; checking the subscriber's tables`);
    const sums = await checksums(target, w.tables);
    const problems = compareChecksums(expected.primaryChecksums, sums);
    return {
      run,
      ok: problems.length === 0,
      error: problems.length ? `replica differs from the primary: ${problems.join("; ")}` : undefined,
      seconds: result.seconds,
      rowsPerSecond: rows / result.seconds,
      serverCpuSeconds: serverCpu,
      walsenderCpuSeconds: result.walsenderCpuSeconds,
      serverPeakPssMb: peakPss / 1024,
      wal,
      checksums: sums,
    };
  } finally {
    await sub.stop();
  }
}

async function runStrata(
  w: Workload,
  primary: TestCluster,
  primaryClient: pg.Client,
  expected: WorkloadResult,
  run: number,
): Promise<ConsumerRun> {
  const slot = `strata_${run}`;
  const rows = expected.rowChanges;
  const dataDir = join(tempDir("strata-bench-"), "data");
  // Both processes share the data directory; destroySync() stops a store either left running
  // and removes the directory.
  const instances: StrataProcess[] = [];
  const config = {
    log_level: "info",
    store: { settings: DURABILITY },
    behavior: { dolt_transaction_commit: opts.history },
  };
  let strata: StrataProcess | undefined;
  let walBefore: WalStats | undefined;
  try {
    // The replica's tables, made like the subscriber's: by a first `strata serve` without
    // replication, through its listener. This also initialises the store, so initdb is not timed.
    progress("preparing Strata's data directory and replica tables (strata serve without replication)");
    const prime = await createStrata({
      primary,
      dataDir,
      slot,
      config: { ...config, postgres_replication: undefined },
    });
    instances.push(prime);
    try {
      await prime.start();
      // As Strata's own writer (strata.applying): the replica's tables start as a copy, not as
      // changes of a working set that a standalone Strata would otherwise capture.
      const prep = endpointOfStrata(prime);
      await w.createTables({ ...prep, config: { ...prep.config, options: INTERNAL_WRITER } });
      walBefore = await walStats(prep);
    } finally {
      await prime.stop();
    }
    strata = await createStrata({
      primary,
      dataDir,
      slot,
      config,
      replication: { publication_name: PUBLICATION },
    });
    instances.push(strata);
    const s = strata;
    progress(`strata serve on slot ${slot}; catching up ${thousands(rows)} row changes`);
    const startedAt = performance.now();
    await s.start();
    const startupSeconds = (performance.now() - startedAt) / 1000;
    const pid = s.child?.pid;
    if (!pid) throw new Error("strata has no pid");
    const storePgdata = clusterPaths({ root: join(dataDir, "store") }).pgdata;
    const store = procfs.postmasterPid(storePgdata);
    if (!store) throw new Error(`no postmaster.pid in ${storePgdata}`);
    let peakPss = 0;
    const result = await waitCatchUp({
      primary: primaryClient,
      slot,
      target: expected.counts.endLsn,
      startedAt,
      what: "strata",
      sample: () => {
        peakPss = Math.max(peakPss, procfs.clusterPssKb(store));
      },
      check: async () => {
        const child = s.child;
        if (child && (child.exitCode !== null || child.signalCode !== null))
          throw new Error(`strata exited (${child.exitCode ?? child.signalCode}) before catching up`);
        const stats = logStats(s.logs);
        if (stats.errors > 0)
          throw new Error(`strata logged an error while catching up:\n${stats.notable.slice(-5).join("\n")}`);
      },
    });
    const processCpu = procfs.cpuSeconds(pid);
    const peakRss = procfs.peakRssKb(pid);
    const serverCpu = procfs.clusterCpuSeconds(store);
    // The store's counters survive its clean restart, so this counts from when the tables were
    // made (the restart's shutdown checkpoint in between writes a few kB).
    const wal = walSince(walBefore, await walStats(endpointOfStrata(s)));
    progress(`caught up in ${result.seconds.toFixed(2)} s; checking the replica's tables`);
    const sums = await checksums(endpointOfStrata(s), w.tables);
    const problems = compareChecksums(expected.primaryChecksums, sums);
    const commits = await withClient(endpointOfStrata(s), async (c) =>
      Number((await c.query("SELECT count(*) AS n FROM strata.commits")).rows[0].n),
    );
    const wantCommits = opts.history ? expected.counts.commits : 0;
    if (commits !== wantCommits)
      problems.push(`${commits} commits in the replica's history, expected ${wantCommits}`);
    const stats = logStats(s.logs);
    return {
      run,
      ok: problems.length === 0,
      error: problems.length ? `replica differs from the primary: ${problems.join("; ")}` : undefined,
      seconds: result.seconds,
      rowsPerSecond: rows / result.seconds,
      startupSeconds,
      processCpuSeconds: processCpu,
      serverCpuSeconds: serverCpu,
      walsenderCpuSeconds: result.walsenderCpuSeconds,
      processPeakRssMb: peakRss !== undefined ? peakRss / 1024 : undefined,
      serverPeakPssMb: peakPss / 1024,
      wal,
      checksums: sums,
      replicaCommits: commits,
      logWarnings: stats.warnings,
      logErrors: stats.errors,
      logTail: stats.notable.length ? stats.notable.slice(-10).join("\n") : undefined,
    };
  } catch (err) {
    throw withStrataLogTail(err, strata);
  } finally {
    await strata?.stop().catch(() => {});
    for (const instance of instances) instance.destroySync();
  }
}

async function benchWorkload(w: Workload): Promise<WorkloadResult> {
  phase(`${w.name}`);
  progress(w.description);
  const primary = await startPrimary({
    settings: { max_replication_slots: 2 * opts.runs + 4, max_wal_senders: 2 * opts.runs + 6 },
  });
  let primaryClient: pg.Client | undefined;
  try {
    const target = endpointOfCluster(primary);
    progress("creating the tables on the primary");
    await w.createTables(target);
    await primary.query(
      `CREATE PUBLICATION ${PUBLICATION} FOR TABLE ${w.tables.map((t) => t.name).join(", ")}`,
    );
    // Every slot before the workload: each consumer has the whole backlog to catch up.
    for (let run = 1; run <= opts.runs; run++) {
      await primary.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [`native_${run}`]);
      await primary.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [`strata_${run}`]);
    }
    await primary.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [DECODE_SLOT]);
    const [{ lsn: startLsn }] = await primary.query<{ lsn: string }>(
      "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1",
      [DECODE_SLOT],
    );
    progress(`generating the backlog (${thousands(opts.rows)} row changes or more)`);
    const genStart = performance.now();
    const generated = await w.generate(target, progress);
    const generateSeconds = (performance.now() - genStart) / 1000;
    // The primary commits asynchronously (synchronous_commit=off in the harness) and logical
    // decoding reads only flushed WAL: wait until everything the workload inserted is flushed, or
    // the count below (and so the end LSN every consumer is timed to) would miss the last commits.
    const [{ lsn: insertLsn }] = await primary.query<{ lsn: string }>(
      "SELECT pg_current_wal_insert_lsn()::text AS lsn",
    );
    await waitFor("the primary to flush the backlog's WAL", async () => {
      const [{ ok }] = await primary.query<{ ok: boolean }>(
        "SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn AS ok",
        [insertLsn],
      );
      return ok;
    });
    progress(`backlog generated in ${generateSeconds.toFixed(1)} s; counting it (decoding ceiling, run 1)`);

    const first = await decodeOnce(primary);
    const counts = first.counts;
    const rowChanges = counts.inserts + counts.updates + counts.deletes;
    if (!counts.endLsn) throw new Error("the backlog is empty: the workload produced no decodable changes");
    const [{ bytes }] = await primary.query<{ bytes: string }>(
      "SELECT ($1::pg_lsn - $2::pg_lsn)::bigint::text AS bytes",
      [counts.endLsn, startLsn],
    );
    progress(
      `${thousands(rowChanges)} row changes (${thousands(counts.inserts)} I, ${thousands(counts.updates)} U, ${thousands(counts.deletes)} D) in ${thousands(counts.commits)} transactions, ${(Number(bytes) / 1048576).toFixed(0)} MB of WAL, ends at ${counts.endLsn}; decoded in ${first.seconds.toFixed(2)} s`,
    );
    const primaryChecksums = await checksums(target, w.tables);
    const result: WorkloadResult = {
      workload: w.name,
      description: w.description,
      rowChanges,
      counts,
      startLsn,
      walBytes: Number(bytes),
      generateSeconds,
      generator: { plannedTransactions: generated.plannedTransactions, ...generated.detail },
      primaryChecksums,
      decode: [{ run: 1, seconds: first.seconds, rowsPerSecond: rowChanges / first.seconds }],
      native: [],
      strata: [],
    };
    primaryClient = await primary.connect();
    for (let run = 1; run <= opts.runs; run++) {
      if (run > 1) {
        phase(`${w.name} run ${run}/${opts.runs} decoding ceiling`);
        const d = await decodeOnce(primary);
        result.decode.push({ run, seconds: d.seconds, rowsPerSecond: rowChanges / d.seconds });
      }
      phase(`${w.name} run ${run}/${opts.runs} native`);
      result.native.push(await consumer(() => runNative(w, primary, primaryClient!, result, run), run));
      phase(`${w.name} run ${run}/${opts.runs} strata`);
      result.strata.push(await consumer(() => runStrata(w, primary, primaryClient!, result, run), run));
    }
    return result;
  } finally {
    await primaryClient?.end().catch(() => {});
    await primary.stop();
  }
}

/** Run one consumer measurement; a failure is recorded (and reported) rather than ending the bench. */
async function consumer(fn: () => Promise<ConsumerRun>, run: number): Promise<ConsumerRun> {
  try {
    const r = await fn();
    if (!r.ok) progress(`FAILED CHECK: ${r.error}`);
    return r;
  } catch (err) {
    const message = (err as Error).message;
    progress(`FAILED: ${message}`);
    return { run, ok: false, error: message };
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const seconds = (s: Summary) => `${fixed(s.min)} / ${fixed(s.median)} / ${fixed(s.max)}`;

function summaryOf(runs: { seconds?: number; ok?: boolean }[]): Summary {
  return summarize(runs.filter((r) => r.ok !== false && r.seconds !== undefined).map((r) => r.seconds!));
}

function render(results: WorkloadResult[]): string {
  const main: string[][] = [];
  const resources: string[][] = [];
  for (const r of results) {
    const decode = summaryOf(r.decode);
    const native = summaryOf(r.native);
    const strata = summaryOf(r.strata);
    const failed = (runs: ConsumerRun[]) =>
      runs.some((x) => !x.ok) ? ` (${runs.filter((x) => !x.ok).length} FAILED)` : "";
    main.push([
      r.workload,
      "decoding ceiling (peek)",
      thousands(r.rowChanges),
      seconds(decode),
      thousands(r.rowChanges / decode.median),
      "-",
    ]);
    main.push([
      r.workload,
      `native subscriber${failed(r.native)}`,
      thousands(r.rowChanges),
      seconds(native),
      thousands(r.rowChanges / native.median),
      "1.0x",
    ]);
    main.push([
      r.workload,
      `strata${failed(r.strata)}`,
      thousands(r.rowChanges),
      seconds(strata),
      thousands(r.rowChanges / strata.median),
      `${fixed(strata.median / native.median, 1)}x`,
    ]);
    const med = (runs: ConsumerRun[], pick: (x: ConsumerRun) => number | undefined) =>
      summarize(
        runs
          .filter((x) => x.ok)
          .map(pick)
          .filter((v): v is number => v !== undefined),
      ).median;
    const perRow = (s: number) => fixed((s * 1e6) / r.rowChanges, 1);
    for (const [name, runs] of [
      ["native subscriber", r.native],
      ["strata", r.strata],
    ] as const) {
      const proc = med(runs, (x) => x.processCpuSeconds);
      const server = med(runs, (x) => x.serverCpuSeconds);
      const ws = med(runs, (x) => x.walsenderCpuSeconds);
      resources.push([
        r.workload,
        name,
        name === "strata" ? `${fixed(proc, 1)} / ${perRow(proc)}` : "-",
        `${fixed(server, 1)} / ${perRow(server)}`,
        `${fixed(ws, 1)} / ${perRow(ws)}`,
        name === "strata"
          ? fixed(
              med(runs, (x) => x.processPeakRssMb),
              0,
            )
          : "-",
        fixed(
          med(runs, (x) => x.serverPeakPssMb),
          0,
        ),
        name === "strata"
          ? fixed(
              med(runs, (x) => x.startupSeconds),
              2,
            )
          : "-",
        [
          med(runs, (x) => x.wal?.mb),
          med(runs, (x) => x.wal?.fullPageImages),
          med(runs, (x) => x.wal?.checkpoints),
        ]
          .map((v) => thousands(v))
          .join(" / "),
      ]);
    }
  }
  return [
    table(
      [
        "workload",
        "consumer",
        "rows",
        "seconds min / median / max",
        "rows/s (median)",
        "strata/native (time)",
      ],
      main,
    ),
    "",
    "CPU (seconds / µs per row, medians), memory (MB), and the replica server's WAL (MB / full-page images / checkpoints)",
    table(
      [
        "workload",
        "consumer",
        "strata process cpu",
        "replica server cpu",
        "primary walsender cpu",
        "strata peak RSS",
        "replica server peak PSS",
        "strata startup s",
        "replica WAL",
      ],
      resources,
    ),
  ].join("\n");
}

async function main() {
  useCompiledStrata();
  const info = machineInfo();
  const startedAt = new Date();
  progress(
    `machine: ${info.cpus} × ${info.cpuModel}, ${info.memoryGb} GB, ${info.os}, node ${info.node}, ${info.postgres}`,
  );
  progress(`durability: ${DURABILITY_TEXT}`);
  const results: WorkloadResult[] = [];
  for (const name of opts.workloads) {
    const w = name === "bulk" ? bulkWorkload(opts.rows) : mixedWorkload(opts.rows, opts.scale);
    results.push(await benchWorkload(w));
  }
  endPhase();
  const text = render(results);
  process.stdout.write(
    `\nCatch-up of a replication backlog: Strata vs a native subscriber (CREATE SUBSCRIPTION)\n` +
      `machine: ${info.cpus} CPUs (${info.cpuModel}), ${info.memoryGb} GB RAM, ${info.os}, node ${info.node}, ${info.postgres}\n` +
      `durability: ${DURABILITY_TEXT}\n` +
      `strata: records history (behavior.dolt_transaction_commit) ${opts.history ? "on (default)" : "OFF"}, log_level info\n` +
      `runs: ${opts.runs}; seconds: from CREATE SUBSCRIPTION / spawning strata until the slot's confirmed_flush_lsn reaches the end of the backlog\n\n` +
      `${text}\n`,
  );
  const failures = results.flatMap((r) =>
    [...r.native.map((x) => ["native", x] as const), ...r.strata.map((x) => ["strata", x] as const)]
      .filter(([, x]) => !x.ok)
      .map(([who, x]) => `${r.workload} ${who} run ${x.run}: ${x.error}`),
  );
  for (const f of failures) process.stdout.write(`FAILED ${f}\n`);
  writeResults("catchup", startedAt, {
    machine: info,
    options: {
      runs: opts.runs,
      rows: opts.rows,
      workloads: opts.workloads,
      scale: opts.scale,
      fsync: opts.fsync,
      strataHistory: opts.history,
    },
    durability: { settings: DURABILITY, description: DURABILITY_TEXT },
    method: {
      timing:
        "native: CREATE SUBSCRIPTION (create_slot=false, copy_data=false) → slot confirmed_flush_lsn >= end LSN; strata: spawn of `strata serve` → same condition",
      endLsn: "end of the last commit record of the backlog (max lsn of pg_logical_slot_peek_binary_changes)",
      decodingCeiling:
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', '1', 'publication_names', pub)",
      memory:
        "strata: VmHWM of the strata process; servers: peak of the summed PSS of all processes, sampled every 0.5 s",
    },
    workloads: results.map((r) => ({
      ...r,
      summary: {
        decode: summaryOf(r.decode),
        native: summaryOf(r.native),
        strata: summaryOf(r.strata),
        ratioStrataToNative: summaryOf(r.strata).median / summaryOf(r.native).median,
      },
    })),
    failures,
  });
  return failures.length === 0 ? 0 : 1;
}

runBench(main);
