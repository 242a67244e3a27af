// npm run bench:lag: commit-to-visible lag on a replica while pgbench runs at a fixed rate on the
// primary, for Strata and for a native subscriber (CREATE SUBSCRIPTION), the same way for both
// (issue 5, target 2; with Strata's peak RSS and CPU per replicated row, targets 3 and 4).
//
//   node --import tsx bench/lag.ts [--rate TPS] [--seconds S] [--scale N] [--clients N]
//                                  [--threads N] [--runs N] [--only native,strata]
//                                  [--fsync on|off] [--timeout-min N]
//
// For every run and consumer (native first, then Strata; never both at once), from scratch:
//   primary   a fresh cluster (test/support/postgres.ts), `pgbench -i -I dtGvp -s N` (server-side
//             generation: the same rows on every server), a table
//               lag_probe (id bigserial PRIMARY KEY, sent_at timestamptz DEFAULT clock_timestamp())
//             and a publication of the four pgbench tables and lag_probe
//   replica   the same tables and rows (made the same way), plus, on lag_probe, a deferred
//             constraint trigger, ENABLE ALWAYS (so that it fires under session_replication_role =
//             replica, as both appliers run), which inserts (probe id, sent_at, clock_timestamp())
//             into a local table lag_samples when the apply transaction commits
//     native  a second cluster; CREATE SUBSCRIPTION ... WITH (copy_data = false), its slot made by
//             the subscription
//     strata  `strata serve` (test/support/strata.ts) on a data dir prepared by a `strata serve`
//             without replication (tables made as Strata's own writer), and a pgoutput slot made
//             just before it starts: no snapshot, nothing to catch up
//   warm-up   one pgbench transaction (a first change to every pgbench table: per-table first-change
//             costs are not the load's), then one probe row, waited for on the replica: the trigger
//             fires, or the run fails
//   load      pgbench -n -R <rate> -T <seconds> -c <clients> -j <threads> (default TPC-B-like
//             script) on the primary and, for as long, a probe writer inserting one lag_probe row
//             every 10 ms, each in its own transaction
//   after     every probe is visible on the replica; a scratch slot made just before the load is
//             decoded (pgoutput, the publication) to count the row changes replicated exactly;
//             the consumer's slot confirms the end of the last one; tables checked against the
//             primary (row counts, md5 of every row)
// Lag of one probe = visible_at (replica's clock_timestamp() in the trigger, at the apply
// transaction's commit) - sent_at (primary's clock_timestamp() at the INSERT). Same machine, same
// clock. Reported per consumer: p50 / p99 / max (min / median / max over runs), Strata / native,
// the achieved pgbench TPS, and for Strata its peak RSS during the load (VmHWM, reset just before
// it) and its process CPU per replicated row. See docs/performance.md, "Lag under load".
// Progress goes to stderr, one table to stdout, every figure to bench/results/lag-<ts>.json. Every
// cluster, process and directory is removed at the end, also on failure or Ctrl-C.
import { readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { clusterPaths } from "../src/store/cluster.ts";
import { startPrimary, type TestCluster, tempDir, waitFor } from "../test/support/postgres.ts";
import { createStrata, type StrataProcess } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { type LatencySummary, summarizeLatencies } from "./support/latency.ts";
import { loadWindow } from "./support/machine-load.ts";
import {
  type PgbenchSummary,
  type PgbenchTarget,
  parsePgbenchSummary,
  runPgbench,
} from "./support/pgbench.ts";
import { exitOnSignals, INTERNAL_WRITER } from "./support/processes.ts";
import * as procfs from "./support/procfs.ts";
import { fixed, type Summary, summarize, table, thousands } from "./support/report.ts";
import {
  codeVersion,
  compareChecksums,
  durabilitySettings,
  machineInfo,
  progressReporter,
  runBench,
  usageExits,
  withStrataLogTail,
  writeResults,
} from "./support/scaffold.ts";
import {
  checksums,
  type Endpoint,
  endpointOfCluster,
  endpointOfStrata,
  mixedWorkload,
  type TableCheck,
  withClient,
} from "./support/workloads.ts";

const PUBLICATION = "lag_pub";
const SUBSCRIPTION = "lag_sub";
const STRATA_SLOT = "strata_lag";
const COUNT_SLOT = "lag_count";
const PROBE_INTERVAL_MS = 10;
/** The start of the load left out of lagMsAfterStart (in the JSON only). */
const SETTLE_SECONDS = 5;
const WARMUP_TIMEOUT_MS = 60_000;
const CPUS = os.cpus().length;

const PROBE_TABLE =
  "CREATE TABLE lag_probe (id bigserial PRIMARY KEY, sent_at timestamptz DEFAULT clock_timestamp())";

/**
 * On a replica: the probe's visibility, recorded when the apply transaction commits. A constraint
 * trigger, DEFERRABLE INITIALLY DEFERRED, fires at COMMIT (after the transaction's last statement,
 * just before the commit record); ENABLE ALWAYS makes it fire under session_replication_role =
 * replica. lag_samples has no key: a probe applied twice shows up as a duplicate, not as an
 * apply error.
 */
const REPLICA_PROBE_DDL = [
  PROBE_TABLE,
  "CREATE TABLE lag_samples (probe_id bigint NOT NULL, sent_at timestamptz NOT NULL, visible_at timestamptz NOT NULL)",
  // Schema-qualified: the native apply worker runs with an empty search_path.
  `CREATE FUNCTION public.lag_record() RETURNS trigger LANGUAGE plpgsql AS $fn$
   BEGIN
     INSERT INTO public.lag_samples (probe_id, sent_at, visible_at) VALUES (NEW.id, NEW.sent_at, pg_catalog.clock_timestamp());
     RETURN NULL;
   END
   $fn$`,
  `CREATE CONSTRAINT TRIGGER lag_visible AFTER INSERT ON lag_probe
     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.lag_record()`,
  "ALTER TABLE lag_probe ENABLE ALWAYS TRIGGER lag_visible",
];

// ---------------------------------------------------------------------------------------------
// Options

const CONSUMERS = ["native", "strata"] as const;
type Consumer = (typeof CONSUMERS)[number];

const USAGE = `usage: node --import tsx bench/lag.ts [options]
  --rate TPS         pgbench's fixed rate on the primary (-R), transactions per second (default 1000)
  --seconds S        duration of the load (pgbench -T) (default 60)
  --scale N          pgbench scale of the tables (default 10)
  --clients N        pgbench clients (-c) (default 4)
  --threads N        pgbench threads (-j) (default: the smaller of --clients and 2)
  --runs N           repeat each consumer's measurement N times (default 1)
  --only LIST        comma-separated consumers among native, strata (default both)
  --fsync on|off     durability of both replicas (native subscriber cluster, Strata's store), default on
  --timeout-min N    give up when a consumer has not caught up N minutes after the load (default 10)`;

function options() {
  const fail = (message: string) => usageExits(USAGE, false)(message);
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      options: {
        rate: { type: "string", default: "1000" },
        seconds: { type: "string", default: "60" },
        scale: { type: "string", default: "10" },
        clients: { type: "string", default: "4" },
        threads: { type: "string" },
        runs: { type: "string", default: "1" },
        only: { type: "string", default: CONSUMERS.join(",") },
        fsync: { type: "string", default: "on" },
        "timeout-min": { type: "string", default: "10" },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (err) {
    return fail((err as Error).message);
  }
  usageExits(USAGE, values.help === true);
  const int = (name: string, min: number) => {
    const text = String(values[name]);
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}, got ${text}`);
    return n;
  };
  const only = String(values.only)
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (only.length === 0) fail("--only needs at least one of native, strata");
  for (const c of only)
    if (!(CONSUMERS as readonly string[]).includes(c))
      fail(`--only takes native and/or strata (comma-separated), got ${c}`);
  if (!["on", "off"].includes(String(values.fsync))) fail(`--fsync must be on or off, got ${values.fsync}`);
  const clients = int("clients", 1);
  const threads = values.threads === undefined ? Math.min(clients, 2) : int("threads", 1);
  if (threads > clients) fail(`--threads (${threads}) cannot exceed --clients (${clients})`);
  return {
    rate: int("rate", 1),
    seconds: int("seconds", 1),
    scale: int("scale", 1),
    clients,
    threads,
    runs: int("runs", 1),
    consumers: CONSUMERS.filter((c) => only.includes(c)),
    fsync: values.fsync === "on",
    timeoutMs: int("timeout-min", 1) * 60_000,
  };
}

const opts = options();

/**
 * The same settings on the native subscriber cluster and on Strata's managed store, plus WAL I/O
 * timing (pg_stat_wal's wal_sync_time: what a synchronous commit waits for, which the trigger does
 * not see).
 */
const REPLICA_SETTINGS = { ...durabilitySettings(opts.fsync), track_wal_io_timing: true };
const DURABILITY_TEXT = opts.fsync
  ? "fsync=on, synchronous_commit=on, full_page_writes=on on both replicas (native subscriber cluster, Strata's managed store); the native subscription keeps its default synchronous_commit=off"
  : "fsync=off, synchronous_commit=off, full_page_writes=off on both replicas (native subscriber cluster, Strata's managed store): NOT durable";
/**
 * The primary: the harness's settings (fsync off), but synchronous_commit on. With it off, a commit
 * can wait up to wal_writer_delay (200 ms) before its WAL is flushed, and a walsender sends only
 * flushed WAL: that would be lag of the primary's making, for both consumers alike.
 */
const PRIMARY_SETTINGS = { synchronous_commit: true };

// ---------------------------------------------------------------------------------------------
// Progress and cleanup

const { progress, phase, endPhase } = progressReporter();

// Clusters, Strata processes, pgbench and temp directories are registered with the harness's exit
// clean-up (test/support/cleanup.ts), which also runs on SIGINT/SIGTERM.
exitOnSignals("stopping every cluster and process");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Measurements

const TABLES: TableCheck[] = [...mixedWorkload(0, opts.scale).tables, { name: "lag_probe", order: "id" }];

interface Changes {
  inserts: number;
  updates: number;
  deletes: number;
  commits: number;
  /** Row changes: inserts + updates + deletes. */
  rows: number;
  /** End of the last commit record decoded. */
  endLsn: string;
}

interface LagRun {
  consumer: Consumer;
  run: number;
  ok: boolean;
  error?: string;
  /** Lag of the warm-up probe, sent right after the first pgbench transaction (first-change costs included). */
  warmUpLagMs?: number;
  /** Probe rows inserted on the primary during the load (the warm-up probe excluded). */
  probes?: number;
  /** Probe writer ticks that started late (the previous insert took longer than the interval). */
  probesLate?: number;
  /** Rows in lag_samples for those probes, and how many of them repeat a probe. */
  samples?: number;
  duplicateSamples?: number;
  lagMs?: LatencySummary;
  /** The same without the probes sent in the load's first SETTLE_SECONDS (for reading, not the target). */
  lagMsAfterStart?: LatencySummary;
  /** Highest lag of the probes sent in each second of the load. */
  maxLagMsPerSecond?: number[];
  pgbench?: PgbenchSummary & { scheduleLagAvgMs?: number; scheduleLagMaxMs?: number };
  /** Decoded from a slot made just before the load: what the consumer had to replicate. */
  changes?: Changes;
  /** End of the load → the consumer's slot confirms the last commit. */
  catchUpSeconds?: number;
  /** Load start → caught up. */
  windowSeconds?: number;
  /** Strata only: CPU of the strata (node) process over the window. */
  processCpuSeconds?: number;
  processCpuUsPerRow?: number;
  /** Strata's store / the native subscriber cluster: all its processes, over the window. */
  serverCpuSeconds?: number;
  serverCpuUsPerRow?: number;
  /** Strata only: VmHWM of the strata process over the window (reset just before the load). */
  peakRssMb?: number;
  /** Strata only: VmHWM over the process's whole life (start-up included). */
  lifetimePeakRssMb?: number;
  /** pg_stat_wal on the replica over the window: WAL syncs and their average duration. */
  walSyncs?: number;
  walSyncAvgMs?: number;
  /** Strata only: history commits recorded over the window (one per upstream transaction). */
  replicaCommits?: number;
  /**
   * Strata only: store transactions (batches) that wrote those commits (distinct xmin of their
   * strata.commits rows), and the most upstream transactions one of them held.
   */
  storeTransactions?: number;
  maxCommitsPerStoreTransaction?: number;
  /** CPU time of processes not this bench's, as a share of all CPUs over the window. */
  otherCpuShare?: number;
  /**
   * Time the VM's CPUs were ready but not running (steal) or idle waiting for I/O (iowait), as a
   * share of all CPUs over the window (/proc/stat): contention that other processes' CPU does not show.
   */
  stealShare?: number;
  iowaitShare?: number;
  logWarnings?: number;
  logErrors?: number;
  logTail?: string;
}

/** The pgbench tables (deterministic, server-side generation) and, on a replica, the probe's trigger. */
async function createTables(target: Endpoint, replica: boolean): Promise<void> {
  await mixedWorkload(0, opts.scale).createTables(target);
  await withClient(target, async (c) => {
    for (const sql of replica ? REPLICA_PROBE_DDL : [PROBE_TABLE]) await c.query(sql);
  });
}

/** A fresh primary with the tables and the publication. */
async function preparePrimary(): Promise<TestCluster> {
  const primary = await startPrimary({ settings: PRIMARY_SETTINGS });
  try {
    progress(`primary: pgbench -i -s ${opts.scale} and lag_probe; publication ${PUBLICATION}`);
    await createTables(endpointOfCluster(primary), false);
    await primary.query(
      `CREATE PUBLICATION ${PUBLICATION} FOR TABLE ${TABLES.map((t) => t.name).join(", ")}`,
    );
    return primary;
  } catch (err) {
    await primary.stop().catch(() => {});
    throw err;
  }
}

/** Inserts one lag_probe row every PROBE_INTERVAL_MS, each in its own transaction, until stopped. */
class ProbeWriter {
  private stopping = false;
  private done: Promise<void> | undefined;
  private failure: Error | undefined;
  sent = 0;
  late = 0;

  private constructor(private readonly client: pg.Client) {}

  static async connect(primary: TestCluster): Promise<ProbeWriter> {
    const client = new pg.Client(primary.connectionConfig());
    client.on("error", () => {});
    await client.connect();
    return new ProbeWriter(client);
  }

  start(): void {
    this.done = (async () => {
      let next = performance.now();
      while (!this.stopping) {
        await this.client.query({ name: "probe", text: "INSERT INTO lag_probe DEFAULT VALUES" });
        this.sent++;
        next += PROBE_INTERVAL_MS;
        const wait = next - performance.now();
        if (wait > 0) await sleep(wait);
        else {
          // Behind schedule: the next probe goes now, and the schedule starts again from here
          // (no burst of catch-up probes).
          this.late++;
          next = performance.now();
        }
      }
    })().catch((err) => {
      this.failure = err as Error;
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.done;
    await this.client.end().catch(() => {});
    if (this.failure) throw new Error(`the probe writer failed: ${this.failure.message}`);
  }
}

function pgbenchTarget(primary: TestCluster): PgbenchTarget {
  return {
    host: primary.host,
    port: primary.port,
    user: String(primary.spec.superuser),
    password: String(primary.spec.password),
    database: "postgres",
  };
}

/**
 * Poll `done` (with waitFor's back-off) until it is true. `check` runs about once a second; its
 * error (the consumer has failed) ends the wait at once, not at the deadline.
 */
async function waitChecked(
  what: string,
  done: () => Promise<boolean>,
  check: () => Promise<void>,
  timeoutMs: number,
): Promise<void> {
  let failure: unknown;
  let lastCheck = 0;
  await waitFor(
    what,
    async () => {
      if (performance.now() - lastCheck >= 1000) {
        lastCheck = performance.now();
        try {
          await check();
        } catch (err) {
          failure = err;
          return true;
        }
      }
      return done();
    },
    timeoutMs,
  );
  if (failure) throw failure;
}

/**
 * One pgbench transaction (a change to each pgbench table), then one probe, on the primary; wait
 * until the replica's trigger has recorded the probe. Every published table has then had a change
 * applied: a consumer's first-change costs (per table) are not part of the load's lag. Returns the
 * probe's id and its lag, which includes those costs.
 */
async function warmUp(
  primary: TestCluster,
  replica: Endpoint,
  who: string,
  check: () => Promise<void>,
): Promise<{ id: number; lagMs: number }> {
  await runPgbench(pgbenchTarget(primary), ["-n", "-t", "1", "-c", "1"]);
  const [{ id }] = await primary.query<{ id: string }>("INSERT INTO lag_probe DEFAULT VALUES RETURNING id");
  let lagMs = Number.NaN;
  try {
    await waitChecked(
      `the probe trigger to record probe ${id} on the ${who} replica`,
      () =>
        withClient(replica, async (c) => {
          const { rows } = await c.query<{ ms: number }>(
            "SELECT extract(epoch FROM visible_at - sent_at)::float8 * 1000 AS ms FROM lag_samples WHERE probe_id = $1",
            [id],
          );
          if (rows[0]) lagMs = rows[0].ms;
          return rows.length > 0;
        }),
      check,
      WARMUP_TIMEOUT_MS,
    );
  } catch (err) {
    await check(); // the consumer's own error, when it has one
    const state = await withClient(replica, async (c) => {
      const probe = await c.query("SELECT count(*)::int AS n FROM lag_probe WHERE id = $1", [id]);
      const trigger = await c.query(
        "SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'lag_probe'::regclass AND tgname = 'lag_visible'",
      );
      return `probe row on the replica: ${probe.rows[0].n ? "yes" : "no"}; trigger lag_visible: ${
        trigger.rows[0] ? `tgenabled = ${trigger.rows[0].tgenabled}` : "missing"
      }`;
    }).catch((e) => `(could not inspect the replica: ${(e as Error).message})`);
    throw new Error(`${(err as Error).message}: the trigger did not fire (${state})`);
  }
  return { id: Number(id), lagMs };
}

/** The machine's CPU time since boot from /proc/stat, in ticks: all of it, steal and iowait. */
function cpuStat(): { total: number; steal: number; iowait: number } {
  // cpu user nice system idle iowait irq softirq steal guest guest_nice
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  return { total: f.slice(0, 8).reduce((a, b) => a + b, 0), steal: f[7], iowait: f[4] };
}

/** Decode the scratch slot (without consuming it): the load's row changes and its last commit. */
async function countChanges(primary: TestCluster): Promise<Changes> {
  const [r] = await primary.query(
    `SELECT count(*) FILTER (WHERE get_byte(data, 0) = 73) AS inserts,
            count(*) FILTER (WHERE get_byte(data, 0) = 85) AS updates,
            count(*) FILTER (WHERE get_byte(data, 0) = 68) AS deletes,
            count(*) FILTER (WHERE get_byte(data, 0) = 67) AS commits,
            max(lsn)::text AS end_lsn
       FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`,
    [COUNT_SLOT, PUBLICATION],
  );
  const [inserts, updates, deletes, commits] = [r.inserts, r.updates, r.deletes, r.commits].map(Number);
  if (!r.end_lsn) throw new Error("the load produced no decodable changes");
  return { inserts, updates, deletes, commits, rows: inserts + updates + deletes, endLsn: r.end_lsn };
}

async function waitConfirmed(
  primary: TestCluster,
  slot: string,
  lsn: string,
  what: string,
  check: () => Promise<void>,
): Promise<void> {
  await waitChecked(
    `${what} to confirm ${lsn} on slot ${slot}`,
    async () => {
      const [row] = await primary.query<{ done: boolean }>(
        "SELECT coalesce(confirmed_flush_lsn >= $2::pg_lsn, false) AS done FROM pg_replication_slots WHERE slot_name = $1",
        [slot, lsn],
      );
      return row?.done ?? false;
    },
    check,
    opts.timeoutMs,
  );
}

async function walSyncStats(replica: Endpoint): Promise<{ syncs: number; ms: number }> {
  return withClient(replica, async (c) => {
    const { rows } = await c.query("SELECT wal_sync::text AS n, wal_sync_time AS ms FROM pg_stat_wal");
    return { syncs: Number(rows[0].n), ms: Number(rows[0].ms) };
  });
}

interface Consumed {
  /** The replica, for reads. */
  replica: Endpoint;
  /** The consumer's slot on the primary. */
  slot: string;
  /** Processes measured over the window. */
  processPid?: number;
  serverPostmaster: number;
  /** Run about once a second while waiting: throws when the consumer has failed. */
  check: () => Promise<void>;
  /** Strata only: the newest commit of the replica's history (its seq). */
  historyMark?: () => Promise<string>;
  /** Strata only: history commits after `seq`, and the store transactions that wrote them. */
  historySince?: (
    seq: string,
  ) => Promise<{ commits: number; storeTransactions: number; maxPerStoreTransaction: number }>;
}

/**
 * The load and everything measured around it, once the consumer streams from the primary with
 * nothing to catch up.
 */
async function measure(primary: TestCluster, consumer: Consumer, run: number, c: Consumed): Promise<LagRun> {
  const warmUpProbe = await warmUp(primary, c.replica, consumer, c.check);
  const warm = warmUpProbe.id;
  const mark = await c.historyMark?.();
  progress(
    `the probe trigger fires on the replica (warm-up: one pgbench transaction, then probe ${warm}, visible after ${fixed(warmUpProbe.lagMs)} ms)`,
  );
  const primaryTarget = endpointOfCluster(primary);
  await primary.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [COUNT_SLOT]);
  const writer = await ProbeWriter.connect(primary);
  const wal0 = await walSyncStats(c.replica);
  const server0 = procfs.clusterCpuSeconds(c.serverPostmaster);
  const process0 = c.processPid ? procfs.cpuSeconds(c.processPid) : undefined;
  const lifetimeRss0 = c.processPid ? procfs.peakRssKb(c.processPid) : undefined;
  const rssReset = c.processPid ? procfs.resetPeakRss(c.processPid) : false;
  const primaryPostmaster = procfs.postmasterPid(clusterPaths(primary.spec).pgdata);
  const cpuStat0 = cpuStat();
  const window = loadWindow({
    pids: c.processPid ? [c.processPid] : [],
    postmasters: [c.serverPostmaster, ...(primaryPostmaster ? [primaryPostmaster] : [])],
  });
  const startedAt = performance.now();
  progress(
    `load: pgbench -R ${opts.rate} -T ${opts.seconds} -c ${opts.clients} -j ${opts.threads}, and a probe every ${PROBE_INTERVAL_MS} ms`,
  );
  writer.start();
  let out: string;
  try {
    out = await runPgbench(
      pgbenchTarget(primary),
      [
        "-n",
        "-R",
        String(opts.rate),
        "-T",
        String(opts.seconds),
        "-c",
        String(opts.clients),
        "-j",
        String(opts.threads),
        "-P",
        "10",
      ],
      progress,
    );
  } finally {
    await writer.stop();
  }
  const loadEnd = performance.now();
  const summary = parsePgbenchSummary(out);
  const schedule = /rate limit schedule lag: avg ([\d.]+) \(max ([\d.]+)\) ms/.exec(out);
  const [{ n: probeCount }] = await primary.query<{ n: string }>(
    "SELECT count(*) AS n FROM lag_probe WHERE id > $1",
    [warm],
  );
  const probes = Number(probeCount);
  progress(
    `load done: ${thousands(summary.transactions)} transactions (${fixed(summary.tps, 1)} tps), ${thousands(probes)} probes; waiting for the replica`,
  );

  // Every probe visible first (reads of the replica's local table only), then the count of the
  // load's changes (a decoding pass on the primary, which would otherwise compete with the
  // replica's last applies), then the consumer's confirmation of the last commit.
  await waitChecked(
    `every probe to be visible on the ${consumer} replica`,
    () =>
      withClient(c.replica, async (cl) => {
        const { rows } = await cl.query(
          "SELECT count(DISTINCT probe_id) AS n FROM lag_samples WHERE probe_id > $1",
          [warm],
        );
        return Number(rows[0].n) >= probes;
      }),
    c.check,
    opts.timeoutMs,
  );
  const changes = await countChanges(primary);
  await waitConfirmed(primary, c.slot, changes.endLsn, consumer, c.check);
  const caughtUp = performance.now();
  await sleep(200); // let the postmasters reap what ended, whose CPU then counts
  const load = window();
  const cpuStat1 = cpuStat();
  const allTicks = cpuStat1.total - cpuStat0.total;
  const serverCpu = procfs.clusterCpuSeconds(c.serverPostmaster) - server0;
  const processCpu =
    c.processPid && process0 !== undefined ? (procfs.cpuSeconds(c.processPid) ?? 0) - process0 : undefined;
  const peakRss = c.processPid ? procfs.peakRssKb(c.processPid) : undefined;
  const wal1 = await walSyncStats(c.replica);
  const history = mark !== undefined ? await c.historySince?.(mark) : undefined;
  await primary.query("SELECT pg_drop_replication_slot($1)", [COUNT_SLOT]);

  const samples = await withClient(c.replica, async (cl) => {
    const { rows } = await cl.query<{ probe_id: string; ms: number; second: number }>(
      `SELECT probe_id::text, extract(epoch FROM visible_at - sent_at)::float8 * 1000 AS ms,
              extract(epoch FROM sent_at)::float8 AS second
         FROM lag_samples WHERE probe_id > $1`,
      [warm],
    );
    return rows;
  });
  const distinct = new Set(samples.map((s) => s.probe_id)).size;
  const first = Math.min(...samples.map((s) => s.second));
  const perSecond: number[] = [];
  for (const s of samples) {
    const i = Math.floor(s.second - first);
    perSecond[i] = Math.max(perSecond[i] ?? 0, s.ms);
  }
  const problems: string[] = [];
  if (distinct !== probes)
    problems.push(`the trigger recorded ${distinct} of the ${probes} probes on the ${consumer} replica`);
  if (samples.length !== distinct)
    problems.push(
      `${samples.length - distinct} probes were recorded more than once on the ${consumer} replica`,
    );
  const primarySums = await checksums(primaryTarget, TABLES);
  const replicaSums = await checksums(c.replica, TABLES);
  problems.push(...compareChecksums(primarySums, replicaSums).map((p) => `replica differs: ${p}`));
  const replicaCommits = history?.commits;
  if (replicaCommits !== undefined && replicaCommits !== changes.commits)
    problems.push(
      `${replicaCommits} history commits recorded during the load, expected ${changes.commits} (one per upstream transaction)`,
    );
  const rows = changes.rows;
  const result: LagRun = {
    consumer,
    run,
    ok: problems.length === 0,
    error: problems.length ? problems.join("; ") : undefined,
    warmUpLagMs: warmUpProbe.lagMs,
    probes,
    probesLate: writer.late,
    samples: samples.length,
    duplicateSamples: samples.length - distinct,
    lagMs: summarizeLatencies(samples.map((s) => s.ms)),
    lagMsAfterStart: summarizeLatencies(
      samples.filter((s) => s.second - first >= SETTLE_SECONDS).map((s) => s.ms),
    ),
    maxLagMsPerSecond: Array.from(perSecond, (v) => Number((v ?? 0).toFixed(3))),
    pgbench: {
      ...summary,
      scheduleLagAvgMs: schedule ? Number(schedule[1]) : undefined,
      scheduleLagMaxMs: schedule ? Number(schedule[2]) : undefined,
    },
    changes,
    catchUpSeconds: (caughtUp - loadEnd) / 1000,
    windowSeconds: (caughtUp - startedAt) / 1000,
    processCpuSeconds: processCpu,
    processCpuUsPerRow: processCpu !== undefined ? (processCpu * 1e6) / rows : undefined,
    serverCpuSeconds: serverCpu,
    serverCpuUsPerRow: (serverCpu * 1e6) / rows,
    peakRssMb: peakRss !== undefined && rssReset ? peakRss / 1024 : undefined,
    lifetimePeakRssMb: peakRss !== undefined ? Math.max(peakRss, lifetimeRss0 ?? 0) / 1024 : undefined,
    walSyncs: wal1.syncs - wal0.syncs,
    walSyncAvgMs: wal1.syncs > wal0.syncs ? (wal1.ms - wal0.ms) / (wal1.syncs - wal0.syncs) : undefined,
    replicaCommits,
    storeTransactions: history?.storeTransactions,
    maxCommitsPerStoreTransaction: history?.maxPerStoreTransaction,
    otherCpuShare: load.otherCpuSeconds / (load.seconds * CPUS),
    stealShare: allTicks > 0 ? (cpuStat1.steal - cpuStat0.steal) / allTicks : undefined,
    iowaitShare: allTicks > 0 ? (cpuStat1.iowait - cpuStat0.iowait) / allTicks : undefined,
  };
  progress(
    `lag p50 ${fixed(result.lagMs?.p50Ms)} / p99 ${fixed(result.lagMs?.p99Ms)} / max ${fixed(result.lagMs?.maxMs)} ms over ${thousands(distinct)} probes ` +
      `(after the first ${SETTLE_SECONDS} s: p99 ${fixed(result.lagMsAfterStart?.p99Ms)} / max ${fixed(result.lagMsAfterStart?.maxMs)} ms); ` +
      `${thousands(rows)} row changes in ${thousands(changes.commits)} transactions; caught up ${fixed(result.catchUpSeconds)} s after the load; ` +
      `replica server cpu ${fixed(result.serverCpuUsPerRow, 1)} µs/row` +
      (processCpu !== undefined ? `, strata cpu ${fixed(result.processCpuUsPerRow, 1)} µs/row` : "") +
      (result.peakRssMb !== undefined ? `, strata peak RSS ${fixed(result.peakRssMb, 0)} MB` : "") +
      (result.storeTransactions !== undefined
        ? `; ${thousands(result.replicaCommits ?? 0)} commits in ${thousands(result.storeTransactions)} store transactions (at most ${result.maxCommitsPerStoreTransaction} in one)`
        : "") +
      `; WAL syncs ${thousands(result.walSyncs ?? 0)} (avg ${fixed(result.walSyncAvgMs, 3)} ms); other processes ${fixed(100 * (result.otherCpuShare ?? 0), 0)}% of the CPUs, steal ${fixed(100 * (result.stealShare ?? 0), 1)}%, iowait ${fixed(100 * (result.iowaitShare ?? 0), 1)}%`,
  );
  return result;
}

async function runNative(run: number): Promise<LagRun> {
  const primary = await preparePrimary();
  let sub: TestCluster | undefined;
  try {
    progress("subscriber: a cluster with the same tables and the probe trigger");
    sub = await startPrimary({ settings: REPLICA_SETTINGS });
    const target = endpointOfCluster(sub);
    await createTables(target, true);
    const postmaster = procfs.postmasterPid(clusterPaths(sub.spec).pgdata);
    if (!postmaster) throw new Error(`no postmaster.pid for the subscriber`);
    const conninfo = `host=${primary.host} port=${primary.port} user=${primary.spec.superuser} password=${primary.spec.password} dbname=postgres`;
    await sub.query(
      `CREATE SUBSCRIPTION ${SUBSCRIPTION} CONNECTION '${conninfo}' PUBLICATION ${PUBLICATION} WITH (copy_data = false)`,
    );
    await waitFor("the subscription's apply worker to stream", async () => {
      const [row] = await primary.query<{ active: boolean }>(
        "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
        [SUBSCRIPTION],
      );
      return row?.active;
    });
    const s = sub;
    return await measure(primary, "native", run, {
      replica: target,
      slot: SUBSCRIPTION,
      serverPostmaster: postmaster,
      check: async () => {
        const [row] = await s.query<{ n: string }>(
          "SELECT coalesce(sum(apply_error_count), 0) AS n FROM pg_stat_subscription_stats",
        );
        if (Number(row.n) > 0)
          throw new Error(
            `the native subscriber's apply worker failed (apply_error_count ${row.n}); see ${clusterPaths(s.spec).logFile}`,
          );
      },
    });
  } finally {
    await sub?.stop().catch(() => {});
    await primary.stop().catch(() => {});
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

async function runStrata(run: number): Promise<LagRun> {
  const primary = await preparePrimary();
  const dataDir = join(tempDir("strata-bench-"), "data");
  // Both processes share the data directory; destroySync() stops a store either left running and
  // removes the directory.
  const instances: StrataProcess[] = [];
  const config = {
    log_level: "info",
    store: { settings: REPLICA_SETTINGS },
    behavior: { dolt_transaction_commit: true },
  };
  let strata: StrataProcess | undefined;
  try {
    // The replica's tables, made like the subscriber's, by a first `strata serve` without
    // replication, as Strata's own writer (strata.applying): the tables start as a copy, not as
    // changes of a working set.
    progress(
      "strata: preparing the data directory, tables and probe trigger (strata serve without replication)",
    );
    const prime = await createStrata({
      primary,
      dataDir,
      slot: STRATA_SLOT,
      config: { ...config, postgres_replication: undefined },
    });
    instances.push(prime);
    try {
      await prime.start();
      await createTables(endpointOfStrata(prime, INTERNAL_WRITER), true);
    } finally {
      await prime.stop();
    }
    // The slot just before Strata starts: it streams from here, with no snapshot to take and
    // nothing to catch up.
    await primary.query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", [STRATA_SLOT]);
    strata = await createStrata({
      primary,
      dataDir,
      slot: STRATA_SLOT,
      config,
      replication: { publication_name: PUBLICATION },
    });
    instances.push(strata);
    const s = strata;
    progress("strata serve, replicating");
    await s.start();
    await s.waitForStreaming();
    const pid = s.child?.pid;
    if (!pid) throw new Error("strata has no pid");
    const storePgdata = clusterPaths({ root: join(dataDir, "store") }).pgdata;
    const store = procfs.postmasterPid(storePgdata);
    if (!store) throw new Error(`no postmaster.pid in ${storePgdata}`);
    const replica = endpointOfStrata(s);
    const result = await measure(primary, "strata", run, {
      replica,
      slot: STRATA_SLOT,
      processPid: pid,
      serverPostmaster: store,
      check: async () => {
        const child = s.child;
        if (child && (child.exitCode !== null || child.signalCode !== null))
          throw new Error(`strata exited (${child.exitCode ?? child.signalCode})`);
        const stats = logStats(s.logs);
        if (stats.errors > 0)
          throw new Error(`strata logged an error:\n${stats.notable.slice(-5).join("\n")}`);
      },
      historyMark: async () =>
        (await s.query<{ seq: string }>("SELECT coalesce(max(seq), 0)::text AS seq FROM strata.commits"))[0]
          .seq,
      // The commit rows of one store transaction share its xmin.
      historySince: async (seq) => {
        const [r] = await s.query<{ commits: number; txs: number; max_per: number }>(
          `SELECT count(*)::int AS commits, count(DISTINCT x)::int AS txs, coalesce(max(n), 0)::int AS max_per
             FROM (SELECT xmin::text AS x, count(*) OVER (PARTITION BY xmin::text) AS n
                     FROM strata.commits WHERE seq > $1::bigint) c`,
          [seq],
        );
        return { commits: r.commits, storeTransactions: r.txs, maxPerStoreTransaction: r.max_per };
      },
    });
    const stats = logStats(s.logs);
    result.logWarnings = stats.warnings;
    result.logErrors = stats.errors;
    result.logTail = stats.notable.length ? stats.notable.slice(-10).join("\n") : undefined;
    return result;
  } catch (err) {
    throw withStrataLogTail(err, strata);
  } finally {
    await strata?.stop().catch(() => {});
    for (const instance of instances) instance.destroySync();
    await primary.stop().catch(() => {});
  }
}

/** One consumer measurement; a failure is recorded (and reported) rather than ending the bench. */
async function attempt(consumer: Consumer, run: number): Promise<LagRun> {
  try {
    const r = await (consumer === "native" ? runNative(run) : runStrata(run));
    if (!r.ok) progress(`FAILED CHECK: ${r.error}`);
    return r;
  } catch (err) {
    const message = (err as Error).message;
    progress(`FAILED: ${message}`);
    return { consumer, run, ok: false, error: message };
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const LABEL: Record<Consumer, string> = { native: "native subscriber", strata: "strata" };

function over(runs: LagRun[], pick: (r: LagRun) => number | undefined): Summary {
  return summarize(
    runs
      .filter((r) => r.ok)
      .map(pick)
      .filter((v): v is number => v !== undefined && Number.isFinite(v)),
  );
}

const spread = (s: Summary, digits = 1) =>
  `${fixed(s.min, digits)} / ${fixed(s.median, digits)} / ${fixed(s.max, digits)}`;

function summaries(runs: LagRun[]) {
  return {
    p50Ms: over(runs, (r) => r.lagMs?.p50Ms),
    p99Ms: over(runs, (r) => r.lagMs?.p99Ms),
    maxMs: over(runs, (r) => r.lagMs?.maxMs),
    tps: over(runs, (r) => r.pgbench?.tps),
    probes: over(runs, (r) => r.probes),
    rows: over(runs, (r) => r.changes?.rows),
    serverCpuUsPerRow: over(runs, (r) => r.serverCpuUsPerRow),
    processCpuUsPerRow: over(runs, (r) => r.processCpuUsPerRow),
    peakRssMb: over(runs, (r) => r.peakRssMb),
    lifetimePeakRssMb: over(runs, (r) => r.lifetimePeakRssMb),
    otherCpuShare: over(runs, (r) => r.otherCpuShare),
    stealShare: over(runs, (r) => r.stealShare),
  };
}

function render(results: LagRun[]): { text: string; target?: string } {
  const rows: string[][] = [];
  const sums: Partial<Record<Consumer, ReturnType<typeof summaries>>> = {};
  for (const consumer of opts.consumers) {
    const runs = results.filter((r) => r.consumer === consumer);
    const failed = runs.filter((r) => !r.ok).length;
    const s = summaries(runs);
    sums[consumer] = s;
    const strata = consumer === "strata";
    rows.push([
      `${LABEL[consumer]}${failed ? ` (${failed} FAILED)` : ""}`,
      String(runs.length - failed),
      thousands(s.probes.median),
      spread(s.p50Ms, 2),
      spread(s.p99Ms, 2),
      spread(s.maxMs, 2),
      fixed(s.tps.median, 1),
      thousands(s.rows.median),
      fixed(s.serverCpuUsPerRow.median, 1),
      strata ? fixed(s.processCpuUsPerRow.median, 1) : "-",
      strata ? fixed(s.peakRssMb.median, 0) : "-",
      `${fixed(100 * s.otherCpuShare.median, 0)}`,
      `${fixed(100 * s.stealShare.median, 1)}`,
    ]);
  }
  const n = sums.native;
  const st = sums.strata;
  let target: string | undefined;
  if (n && st) {
    const ratio = (a: Summary, b: Summary) => `${fixed(a.median / b.median, 2)}x`;
    rows.push([
      "strata / native (medians)",
      "-",
      "-",
      ratio(st.p50Ms, n.p50Ms),
      ratio(st.p99Ms, n.p99Ms),
      ratio(st.maxMs, n.maxMs),
      "-",
      "-",
      ratio(st.serverCpuUsPerRow, n.serverCpuUsPerRow),
      "-",
      "-",
      "-",
      "-",
    ]);
  }
  if (st) {
    const under = st.p99Ms.median < 100;
    const notWorse = n ? st.p99Ms.median <= n.p99Ms.median : undefined;
    target =
      `issue 5 target (Strata p99 under 100 ms and not worse than native's): p99 ${fixed(st.p99Ms.median, 2)} ms, ` +
      `under 100 ms: ${under ? "yes" : "NO"}` +
      (n ? `; not worse than native's ${fixed(n.p99Ms.median, 2)} ms: ${notWorse ? "yes" : "NO"}` : "") +
      ` → ${under && notWorse !== false ? "met" : "NOT met"}`;
  }
  const text = table(
    [
      "consumer",
      "runs",
      "probes/run",
      "lag p50 ms min / med / max",
      "lag p99 ms min / med / max",
      "lag max ms min / med / max",
      "pgbench tps",
      "rows/run",
      "replica server cpu µs/row",
      "strata cpu µs/row",
      "strata peak RSS MB",
      "other cpu %",
      "steal %",
    ],
    rows,
  );
  return { text, target };
}

async function main() {
  useCompiledStrata();
  const info = machineInfo();
  const code = codeVersion();
  const startedAt = new Date();
  progress(
    `machine: ${info.cpus} × ${info.cpuModel}, ${info.memoryGb} GB, ${info.os}, node ${info.node}, ${info.postgres}`,
  );
  progress(`durability: ${DURABILITY_TEXT}`);
  const results: LagRun[] = [];
  for (let run = 1; run <= opts.runs; run++) {
    for (const consumer of opts.consumers) {
      phase(`run ${run}/${opts.runs} ${consumer}`);
      results.push(await attempt(consumer, run));
    }
  }
  endPhase();
  const { text, target } = render(results);
  process.stdout.write(
    `\nLag under load: commit-to-visible lag of probe rows while pgbench runs at a fixed rate on the primary\n` +
      `machine: ${info.cpus} CPUs (${info.cpuModel}), ${info.memoryGb} GB RAM, ${info.os}, node ${info.node}, ${info.postgres}\n` +
      `load: pgbench -R ${opts.rate} -T ${opts.seconds} -c ${opts.clients} -j ${opts.threads} (TPC-B-like), scale ${opts.scale}, a probe row every ${PROBE_INTERVAL_MS} ms; runs: ${opts.runs}\n` +
      `durability: ${DURABILITY_TEXT}; primary synchronous_commit=on, fsync=off\n` +
      `strata: history on (default), log_level info; code ${code.commit ?? "unknown"}${code.srcModified ? " with local changes in src/" : ""} (at the start)\n` +
      `lag: replica's clock_timestamp() in a deferred constraint trigger at the apply transaction's commit - primary's clock_timestamp() at the probe's INSERT\n` +
      `cpu µs/row: over load start → caught up, per row change decoded from a slot made just before the load; strata peak RSS: VmHWM over the same window\n` +
      `other cpu %: CPU of processes not this bench's; steal %: time the VM's CPUs waited for the host (/proc/stat); both as a share of all CPUs over the window\n\n` +
      `${text}\n` +
      (target ? `\n${target}\n` : ""),
  );
  const failures = results.filter((r) => !r.ok).map((r) => `${r.consumer} run ${r.run}: ${r.error}`);
  for (const f of failures) process.stdout.write(`FAILED ${f}\n`);
  const bySummary = Object.fromEntries(
    opts.consumers.map((c) => [c, summaries(results.filter((r) => r.consumer === c))]),
  );
  writeResults("lag", startedAt, {
    machine: info,
    code,
    options: { ...opts, probeIntervalMs: PROBE_INTERVAL_MS },
    durability: {
      replicaSettings: REPLICA_SETTINGS,
      primarySettings: PRIMARY_SETTINGS,
      description: DURABILITY_TEXT,
    },
    method: {
      lag: "lag_samples.visible_at (clock_timestamp() in a DEFERRABLE INITIALLY DEFERRED constraint trigger on lag_probe, ENABLE ALWAYS, fired at the apply transaction's commit) - lag_probe.sent_at (clock_timestamp() default on the primary at INSERT)",
      load: `pgbench -n -R ${opts.rate} -T ${opts.seconds} -c ${opts.clients} -j ${opts.threads} on scale ${opts.scale}; one lag_probe INSERT every ${PROBE_INTERVAL_MS} ms in its own transaction`,
      rows: "I/U/D messages of pg_logical_slot_peek_binary_changes over a slot made just before the load (proto 1, the publication): the row changes the consumer replicated",
      cpu: "utime+stime of the strata process; all processes of Strata's store / the native subscriber cluster; from just before the load until the consumer's slot confirms the last commit",
      memory:
        "VmHWM of the strata process, reset (/proc/<pid>/clear_refs 5) just before the load; lifetimePeakRssMb includes start-up",
    },
    runs: results,
    summary: bySummary,
    target,
    failures,
  });
  return failures.length === 0 ? 0 : 1;
}

runBench(main);
