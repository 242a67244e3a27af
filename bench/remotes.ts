// npm run bench:remotes: remotes and replication through a remote (docs/remotes.md), measured on
// standalone Stratas sharing a directory remote.
//
//   node --import tsx bench/remotes.ts [--only latency|transfer|all] [--runs N]
//        [--commits N] [--rate N] [--visible-timeout-s N] [--latency-remotes directory,s3]
//        [--history-commits N] [--mb N] [--gen-batch N] [--gen-clients N]
//        [--fsync on|off] [--timeout-min N]
//
// Every option also has an environment variable (STRATA_BENCH_COMMITS, STRATA_BENCH_MB, ...; see
// USAGE); an option given on the command line wins.
//
// 1. Commit-to-visible latency through a directory remote, and through a local S3-compatible remote
//    (s3rver in this process, with the conditional writes Strata needs added by
//    test/support/s3-server.ts: its figures include s3rver's own cost, on the same 2 cores). A
//    primary Strata with a remote `origin`
//    and, while measured, `ALTER SYSTEM SET dolt_replicate_to_remote 'origin'` (synchronous: each
//    commit is pushed before its statement returns); a replica Strata that cloned it
//    (dolt_clone) and has `dolt_replicate_heads = 'main'`, `dolt_read_replica_remote = 'origin'`
//    (it pulls when a transaction starts). Per run, a fresh database and remote. On the primary,
//    --commits commits at a fixed pace (--rate per second), each
//        INSERT INTO t VALUES (k, ...)              (autocommit: no commit of its own)
//        SELECT dolt_commit('-am', 'commit k')      (the commit, pushed before it returns)
//    as the reference walkthrough does (dolt_transaction_commit stays 0). Meanwhile one replica
//    connection runs `SELECT max(k) FROM t` in a tight loop; each of its statements starts a
//    transaction, so each pulls first. Latency of commit k = when a poll first returned max(k) >=
//    k (replica side, its result received) - when the dolt_commit statement was sent (primary
//    side); one process, one clock. The same paced commits then run on the same primary with
//    dolt_replicate_to_remote unset (the poller still running, for the same load): the
//    difference of the statement latencies is what the synchronous push costs. The two phases
//    alternate in order from run to run. After each run the replica's table and history are
//    checked against the primary's.
// 2. Push and clone throughput. A database of --history-commits commits and about --mb MB of
//    table data: most rows bulk-loaded in a few big commits (INSERT ... SELECT generate_series, up
//    to 1,000,000 rows each), then many small commits (one UPDATE of the big table and one INSERT
//    into a small one each), --gen-batch of them per round trip, each in its own
//    BEGIN ... dolt_commit ... COMMIT. Then, per run, twice: dolt_push of everything to a fresh
//    directory remote (seconds, objects on disk) and dolt_clone of it on a second Strata (seconds),
//    the clone checked against the source (per table: row count and a digest of every row;
//    dolt_log count, HEAD, and a digest of the commit chain). Once without a snapshot in the remote
//    (the clone applies every commit) and once with one (the push writes a snapshot of every table
//    at its head; the clone loads the history as rows and the tables from it): the source Strata
//    is started with STRATA_SNAPSHOT_MIN_BYTES set so that its push never / always writes one (by
//    default it does once the history pushed reaches 64 MiB). Baseline, on the same two stores:
//    pg_dump -Fc of the whole database (tables and Strata's history tables) piped into pg_restore
//    into a fresh database on the second store, checked the same way. MB/s are of the source's
//    size: user tables + Strata's history tables (pg_total_relation_size: heap, indexes, TOAST).
// 3. Peak RSS (VmHWM, reset just before) of the pushing and of the cloning Strata process, and the
//    peak PSS of their stores (sampled every second).
//
// Progress goes to stderr, one table to stdout, every figure to bench/results/remotes-<ts>.json.
// Every Strata, store, remote, child process and directory is removed at the end, also on failure
// or Ctrl-C (test/support/cleanup.ts). See docs/performance.md, "Remotes".
import { readdirSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { TEST_PASSWORD, tempDir } from "../test/support/postgres.ts";
import { startS3Server, strataRemotesConfig, type TestS3Server } from "../test/support/s3-server.ts";
import type { StrataProcess } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { connect, withConnection } from "./support/connection.ts";
import { type LatencySummary, summarizeLatencies } from "./support/latency.ts";
import { loadWindow } from "./support/machine-load.ts";
import {
  checkAlive,
  cleanUpAtExit,
  dumpIntoRestore,
  startBenchStrata,
  stopStrata,
  storeConfig,
  storePostmaster,
  strataPid,
  withDeadline,
} from "./support/processes.ts";
import * as procfs from "./support/procfs.ts";
import { fixed, type Summary, summarize, table, thousands } from "./support/report.ts";
import {
  bulkLoadSettings,
  codeVersion,
  compareChecksums,
  machineInfo,
  progressReporter,
  runBench,
  type TableSum,
  usageExits,
  withStrataLogTail,
  writeResults,
} from "./support/scaffold.ts";
import {
  bulkLoadCommit,
  CREATE_BULK_TABLE,
  type DatabaseSizes,
  databaseSizes,
  HISTORY_TABLES,
} from "./support/strata-database.ts";

// ---------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: node --import tsx bench/remotes.ts [options]   (env variable in brackets)
  --only P              latency | transfer | all (default all)                      [STRATA_BENCH_ONLY]
  --runs N              runs of each measurement (default 3)                        [STRATA_BENCH_RUNS]
  --fsync on|off        durability of every store (default on)                      [STRATA_BENCH_FSYNC]
 1. commit-to-visible latency through a directory remote:
  --commits N           commits on the primary per phase and run (default 300)      [STRATA_BENCH_COMMITS]
  --rate N              commits per second on the primary (default 20)              [STRATA_BENCH_RATE]
  --visible-timeout-s N fail when a commit is not visible on the replica after N s (default 60)
                                                                                    [STRATA_BENCH_VISIBLE_TIMEOUT_S]
  --latency-remotes L   remotes to measure through: directory, s3, or both (default directory,s3)
                                                                                    [STRATA_BENCH_LATENCY_REMOTES]
 2. push and clone throughput:
  --history-commits N   commits in the database (default 10000; full: 100000)       [STRATA_BENCH_HISTORY_COMMITS]
  --mb N                MB of table data, about (default 200; full: 1024)           [STRATA_BENCH_MB]
  --gen-batch N         small commits per round trip while generating (default 50)  [STRATA_BENCH_GEN_BATCH]
  --gen-clients N       connections generating small commits, each on its own table (default 1)
                                                                                    [STRATA_BENCH_GEN_CLIENTS]
  --timeout-min N       deadline of each push, clone and dump (default 60)          [STRATA_BENCH_TIMEOUT_MIN]
  --steps L             transfer steps: replay, snapshot, pg_dump (default all three)
                                                                                    [STRATA_BENCH_STEPS]`;

function options() {
  const env = (name: string, fallback: string) => process.env[`STRATA_BENCH_${name}`] || fallback;
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      options: {
        only: { type: "string", default: env("ONLY", "all") },
        runs: { type: "string", default: env("RUNS", "3") },
        fsync: { type: "string", default: env("FSYNC", "on") },
        commits: { type: "string", default: env("COMMITS", "300") },
        rate: { type: "string", default: env("RATE", "20") },
        "visible-timeout-s": { type: "string", default: env("VISIBLE_TIMEOUT_S", "60") },
        "latency-remotes": { type: "string", default: env("LATENCY_REMOTES", "directory,s3") },
        "history-commits": { type: "string", default: env("HISTORY_COMMITS", "10000") },
        mb: { type: "string", default: env("MB", "200") },
        "gen-batch": { type: "string", default: env("GEN_BATCH", "50") },
        "gen-clients": { type: "string", default: env("GEN_CLIENTS", "1") },
        "timeout-min": { type: "string", default: env("TIMEOUT_MIN", "60") },
        steps: { type: "string", default: env("STEPS", "replay,snapshot,pg_dump") },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (err) {
    return usageExits(USAGE, false)((err as Error).message);
  }
  const fail = usageExits(USAGE, values.help === true);
  const num = (name: string, min: number, integer = true) => {
    const text = String(values[name]);
    const n = Number(text.replace(/_/g, ""));
    if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min)
      fail(`--${name} must be ${integer ? "an integer" : "a number"} >= ${min}, got ${text}`);
    return n;
  };
  const only = String(values.only);
  if (!["latency", "transfer", "all"].includes(only)) fail(`--only must be latency, transfer or all`);
  if (!["on", "off"].includes(String(values.fsync))) fail(`--fsync must be on or off`);
  const latencyRemotes = String(values["latency-remotes"])
    .split(",")
    .map((r) => r.trim())
    .filter(Boolean) as RemoteKind[];
  if (latencyRemotes.length === 0 || latencyRemotes.some((r) => r !== "directory" && r !== "s3"))
    fail(`--latency-remotes must be directory, s3 or directory,s3`);
  return {
    latencyRemotes,
    latency: only !== "transfer",
    transfer: only !== "latency",
    runs: num("runs", 1),
    fsync: values.fsync === "on",
    commits: num("commits", 1),
    rate: num("rate", 0.1, false),
    visibleTimeoutMs: num("visible-timeout-s", 1) * 1000,
    historyCommits: num("history-commits", 1),
    mb: num("mb", 1, false),
    genBatch: num("gen-batch", 1),
    genClients: num("gen-clients", 1),
    timeoutMs: num("timeout-min", 1) * 60_000,
    steps: transferSteps(String(values.steps), fail),
  };
}

/** --steps: which transfer steps run (a replay of 100,000 commits takes over an hour). */
function transferSteps(text: string, fail: (message: string) => never): TransferStep[] {
  const steps = text
    .split(",")
    .map((step) => step.trim())
    .filter(Boolean);
  const known: TransferStep[] = ["replay", "snapshot", "pg_dump"];
  if (steps.length === 0 || steps.some((step) => !known.includes(step as TransferStep)))
    fail(`--steps must list replay, snapshot and/or pg_dump, got ${text}`);
  return known.filter((step) => steps.includes(step));
}

const opts = options();

/** Issue target: a commit visible on the read replica within 100 ms (p50). */
const TARGET_P50_MS = 100;
const MB = 1024 * 1024;
const CPUS = os.cpus().length;
/** Rows per bulk-load commit, at most (~165 MB of table with this row shape). */
const BULK_CHUNK_ROWS = 1_000_000;
/** First guess of a bulk row's size in the table (heap + index), corrected after the first commit. */
const BULK_ROW_BYTES_GUESS = 165;
/** The replication settings are cached by Strata for 2 s (src/remotes/service.ts): wait longer. */
const SETTINGS_SETTLE_MS = 2_500;
const LATENCY_TABLE = "t";
const SOURCE_DATABASE = "hist";
/** Each Strata's temp directory: strata-bench-remotes-*. */
const DIR_PREFIX = "strata-bench-remotes-";

const STORE_SETTINGS = bulkLoadSettings(opts.fsync);
const DURABILITY_TEXT = opts.fsync
  ? "fsync=on, synchronous_commit=on, full_page_writes=on on every store"
  : "fsync=off, synchronous_commit=off, full_page_writes=off on every store: NOT durable";

// ---------------------------------------------------------------------------------------------
// Progress and cleanup

const { progress, phase, endPhase } = progressReporter();

cleanUpAtExit("stopping every Strata and process");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ident = (name: string) => pg.escapeIdentifier(name);
const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;

/** Poll `check` until it is true; its errors end the wait at once (unlike test/support's waitFor). */
async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number) {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** ALTER SYSTEM through the front door, then wait until sessions see it and Strata's cache has expired. */
async function setSystemVariable(client: pg.Client, name: string, value: string): Promise<void> {
  await client.query(`ALTER SYSTEM SET ${name} TO ${literal(value)}`);
  await until(
    `${name} = '${value}'`,
    async () => (await client.query(`SELECT dolt.setting($1) AS v`, [name])).rows[0]?.v === value,
    30_000,
  );
  await sleep(SETTINGS_SETTLE_MS);
}

// ---------------------------------------------------------------------------------------------
// Checks: the same tables and the same history

/**
 * Per user table: row count and a digest of every row that does not depend on row order (the sum
 * of two 64-bit slices of each row's md5, streamed: no aggregate of the whole table's text).
 */
async function tableSums(client: pg.Client): Promise<Record<string, TableSum>> {
  const { rows: tables } = await client.query<{ name: string }>(
    "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
  );
  const out: Record<string, TableSum> = {};
  for (const { name } of tables) {
    const { rows } = await client.query<{ n: string; a: string; b: string }>(
      `SELECT count(*)::text AS n,
              coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text AS a,
              coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text AS b
         FROM (SELECT md5(x::text) AS h FROM public.${ident(name)} x) r`,
    );
    out[name] = { rows: Number(rows[0].n), digest: `${rows[0].a}/${rows[0].b}` };
  }
  return out;
}

interface HistorySum {
  commits: number;
  head: string | null;
  /** md5 of every commit's hash and parent, in commit order. */
  chain: string | null;
}

async function historySum(client: pg.Client, viaFrontDoor: boolean): Promise<HistorySum> {
  const { rows } = await client.query<{ n: number; head: string | null; chain: string | null }>(
    `SELECT count(*)::int AS n, (array_agg(hash ORDER BY seq DESC))[1] AS head,
            md5(string_agg(hash || ':' || coalesce(parent_hash, '-'), ',' ORDER BY seq)) AS chain
       FROM strata.commits`,
  );
  const sum = { commits: rows[0].n, head: rows[0].head, chain: rows[0].chain };
  if (viaFrontDoor) {
    // What a user sees: dolt_log and HEAD agree with the commit table.
    const [log] = (await client.query<{ n: number }>("SELECT count(*)::int AS n FROM dolt_log")).rows;
    const [head] = (await client.query<{ h: string }>("SELECT dolt.commit_hash('HEAD') AS h")).rows;
    if (log.n !== sum.commits || head.h !== sum.head)
      throw new Error(
        `dolt_log has ${log.n} commits and HEAD is ${head.h}; strata.commits has ${sum.commits}, latest ${sum.head}`,
      );
  }
  return sum;
}

function compareHistory(expected: HistorySum, got: HistorySum): string[] {
  const problems: string[] = [];
  if (got.commits !== expected.commits)
    problems.push(`dolt_log: ${got.commits} commits, the source has ${expected.commits}`);
  if (got.head !== expected.head) problems.push(`HEAD is ${got.head}, the source's is ${expected.head}`);
  else if (got.chain !== expected.chain) problems.push("same HEAD but a different commit chain");
  return problems;
}

/** Throw (loudly: the result would be wrong) when `target` differs from the source. */
function assertSame(
  what: string,
  source: { tables: Record<string, TableSum>; history?: HistorySum },
  target: { tables: Record<string, TableSum>; history?: HistorySum },
): void {
  const problems = compareChecksums(source.tables, target.tables);
  for (const name of Object.keys(target.tables))
    if (!(name in source.tables)) problems.push(`${name}: not in the source`);
  if (source.history && target.history) problems.push(...compareHistory(source.history, target.history));
  if (problems.length) throw new Error(`${what} differs from the source: ${problems.join("; ")}`);
}

// ---------------------------------------------------------------------------------------------
// 1. Commit-to-visible latency

type LatencyPhase = "sync push" | "no push";
type RemoteKind = "directory" | "s3";
const S3_BUCKET = "strata-bench";

/** Where a latency run's remote is: a directory, or a prefix of the local S3 server's bucket. */
interface RemoteTarget {
  kind: RemoteKind;
  url(database: string): string;
  /** Remove the run's remote (a directory; S3 objects go with the server at the end). */
  remove(database: string): void;
}

interface LatencyRun {
  remote: RemoteKind;
  run: number;
  ok: boolean;
  error?: string;
  order?: LatencyPhase[];
  /** dolt_commit sent on the primary → a replica poll first returned max(k) >= k. */
  visibleMs?: LatencySummary;
  /** Client-side latency of the dolt_commit statement, per phase. */
  commitMs?: Partial<Record<LatencyPhase, LatencySummary>>;
  /** Client-side latency of the INSERT before it (its own autocommit transaction), per phase. */
  insertMs?: Partial<Record<LatencyPhase, LatencySummary>>;
  /** Commits per second achieved (the pace is --rate, unless a commit takes longer than its slot). */
  commitsPerSecond?: Partial<Record<LatencyPhase, number>>;
  /** Commits that started late: the one before took longer than 1/rate. */
  late?: Partial<Record<LatencyPhase, number>>;
  /** The replica's poll: pull at transaction start + SELECT max(k), client-side. */
  pollMs?: LatencySummary;
  pollsPerSecond?: number;
  /** After the no-push phase: one dolt_push of its commits, until the replica saw them. */
  catchUpAfterNoPushMs?: number;
  /** Share of the machine's CPUs used by processes not this bench's, per phase. */
  otherCpuShare?: Partial<Record<LatencyPhase, number>>;
  commitsChecked?: number;
}

/** The replica connection's tight loop: SELECT max(k), each one a transaction (so a pull). */
class Poller {
  maxSeen = -1;
  readonly seenAt = new Map<number, number>();
  pollMs: number[] = [];
  polls = 0;
  error: Error | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private startedAt = 0;
  private stoppedAt = 0;

  constructor(private readonly client: pg.Client) {}

  start(): void {
    this.startedAt = performance.now();
    this.loop = (async () => {
      while (!this.stopped) {
        const sent = performance.now();
        let m: number;
        try {
          const { rows } = await this.client.query<{ m: number | null }>(
            `SELECT max(k) AS m FROM ${LATENCY_TABLE}`,
          );
          m = rows[0]?.m ?? -1;
        } catch (err) {
          this.error = err as Error;
          return;
        }
        const at = performance.now();
        this.pollMs.push(at - sent);
        this.polls++;
        // Commits apply in order: every k up to max(k) is visible now.
        for (let k = this.maxSeen + 1; k <= m; k++) this.seenAt.set(k, at);
        if (m > this.maxSeen) this.maxSeen = m;
      }
    })();
  }

  check(): void {
    if (this.error) throw new Error(`the replica's poll failed: ${this.error.message}`);
  }

  async waitFor(k: number, timeoutMs: number): Promise<void> {
    await until(
      `the replica to see k = ${k} (it has ${this.maxSeen})`,
      () => {
        this.check();
        return this.maxSeen >= k;
      },
      timeoutMs,
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
    this.stoppedAt = performance.now();
  }

  get pollsPerSecond(): number {
    return this.polls / ((this.stoppedAt - this.startedAt) / 1000);
  }
}

/** --commits paced INSERT + dolt_commit pairs on the primary, from k = first. */
async function pacedCommits(client: pg.Client, first: number, label: string) {
  const interval = 1000 / opts.rate;
  const insertMs: number[] = [];
  const commitMs: number[] = [];
  const sentAt = new Map<number, number>();
  let late = 0;
  const start = performance.now();
  let lastReport = start;
  for (let i = 0; i < opts.commits; i++) {
    const k = first + i;
    const wait = start + i * interval - performance.now();
    if (wait > 0) await sleep(wait);
    else if (i > 0) late++;
    let t0 = performance.now();
    await client.query(`INSERT INTO ${LATENCY_TABLE} VALUES (${k}, 'row ${k}')`);
    insertMs.push(performance.now() - t0);
    t0 = performance.now();
    sentAt.set(k, t0);
    await client.query(`SELECT dolt_commit('-am', 'commit ${k}')`);
    commitMs.push(performance.now() - t0);
    if (performance.now() - lastReport > 10_000) {
      lastReport = performance.now();
      progress(`  ${label}: ${i + 1} / ${opts.commits} commits`);
    }
  }
  const seconds = (performance.now() - start) / 1000;
  return { insertMs, commitMs, sentAt, late, commitsPerSecond: opts.commits / seconds };
}

async function latencyRun(
  run: number,
  primary: StrataProcess,
  replica: StrataProcess,
  remote: RemoteTarget,
): Promise<LatencyRun> {
  const database = `lat_${remote.kind}_r${run}`;
  const url = remote.url(database);
  const order: LatencyPhase[] = run % 2 === 1 ? ["sync push", "no push"] : ["no push", "sync push"];
  const result: LatencyRun = {
    remote: remote.kind,
    run,
    ok: false,
    order,
    commitMs: {},
    insertMs: {},
    commitsPerSecond: {},
    late: {},
    otherCpuShare: {},
  };
  const clients: pg.Client[] = [];
  const open = async (config: pg.ClientConfig) => {
    const c = await connect(config);
    clients.push(c);
    return c;
  };
  let poller: Poller | undefined;
  const pAdmin = await open(primary.connectionConfig());
  const rAdmin = await open(replica.connectionConfig());
  try {
    progress(`run ${run}: database ${database} on the primary, pushed to ${url}, cloned on the replica`);
    await pAdmin.query(`CREATE DATABASE ${ident(database)}`);
    const setup = await open(primary.connectionConfig(database));
    await setup.query(`SELECT dolt_remote('add', 'origin', ${literal(url)})`);
    await setup.query(`CREATE TABLE ${LATENCY_TABLE} (k int PRIMARY KEY, v text NOT NULL)`);
    await setup.query(`INSERT INTO ${LATENCY_TABLE} VALUES (0, 'row 0')`);
    await setup.query("SELECT dolt_commit('-Am', 'create t')");
    await setup.query("SELECT dolt_push('origin', 'main')");
    await rAdmin.query(`SELECT dolt_clone(${literal(url)}, ${literal(database)})`);
    poller = new Poller(await open(replica.connectionConfig(database)));
    poller.start();
    await poller.waitFor(0, 30_000);

    const own = {
      pids: [strataPid(primary), strataPid(replica)],
      postmasters: [storePostmaster(primary), storePostmaster(replica)],
    };
    const visible: number[] = [];
    let next = 1;
    for (const p of order) {
      const push = p === "sync push";
      await setSystemVariable(pAdmin, "dolt_replicate_to_remote", push ? "origin" : "");
      progress(
        `run ${run}, ${p}: ${opts.commits} commits at ${opts.rate}/s (INSERT, then dolt_commit)` +
          (push ? "; the replica polls SELECT max(k)" : "; the replica keeps polling (same load)"),
      );
      // A fresh session: whether it waits for pushes is decided per session.
      const writer = await open(primary.connectionConfig(database));
      const window = loadWindow(own);
      const paced = await pacedCommits(writer, next, p);
      const last = next + opts.commits - 1;
      if (push) {
        await poller.waitFor(last, opts.visibleTimeoutMs);
        for (const [k, sent] of paced.sentAt) visible.push(poller.seenAt.get(k)! - sent);
      }
      const load = window();
      poller.check();
      result.commitMs![p] = summarizeLatencies(paced.commitMs);
      result.insertMs![p] = summarizeLatencies(paced.insertMs);
      result.commitsPerSecond![p] = paced.commitsPerSecond;
      result.late![p] = paced.late;
      result.otherCpuShare![p] = load.otherCpuSeconds / (load.seconds * CPUS);
      if (!push) {
        // Nothing was pushed: one push now, so that the next phase starts with the replica even.
        if (poller.maxSeen >= next)
          throw new Error(`the replica saw k = ${poller.maxSeen} although nothing was pushed`);
        const t0 = performance.now();
        await writer.query("SELECT dolt_push('origin', 'main')");
        await poller.waitFor(last, opts.visibleTimeoutMs);
        result.catchUpAfterNoPushMs = performance.now() - t0;
      }
      progress(
        `run ${run}, ${p}: dolt_commit p50 ${fixed(result.commitMs![p]!.p50Ms, 1)} ms, p99 ${fixed(result.commitMs![p]!.p99Ms, 1)} ms; ` +
          `INSERT p50 ${fixed(result.insertMs![p]!.p50Ms, 1)} ms; ${fixed(paced.commitsPerSecond, 1)} commits/s (${paced.late} late)` +
          (push
            ? `; visible on the replica p50 ${fixed(summarizeLatencies(visible).p50Ms, 1)} ms, p99 ${fixed(summarizeLatencies(visible).p99Ms, 1)} ms`
            : `; pushed afterwards, on the replica ${fixed(result.catchUpAfterNoPushMs, 0)} ms later`) +
          `; other processes ${fixed(100 * result.otherCpuShare![p]!, 0)}% of the CPUs`,
      );
      next = last + 1;
    }
    await poller.stop();
    result.visibleMs = summarizeLatencies(visible);
    result.pollMs = summarizeLatencies(poller.pollMs);
    result.pollsPerSecond = poller.pollsPerSecond;

    // The replica's table and history are the primary's.
    const p = await open(primary.connectionConfig(database));
    const r = await open(replica.connectionConfig(database));
    const source = { tables: await tableSums(p), history: await historySum(p, true) };
    const target = { tables: await tableSums(r), history: await historySum(r, true) };
    assertSame(`the replica's ${database}`, source, target);
    const rows = source.tables[LATENCY_TABLE]?.rows;
    if (rows !== 2 * opts.commits + 1)
      throw new Error(`t has ${rows} rows, expected ${2 * opts.commits + 1}`);
    result.commitsChecked = source.history.commits;
    result.ok = true;
    return result;
  } finally {
    await poller?.stop().catch(() => {});
    for (const c of clients.splice(2)) await c.end().catch(() => {});
    // Each run's database goes, so that the background push has only the next one to look at.
    await pAdmin.query(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`).catch(() => {});
    await rAdmin.query(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`).catch(() => {});
    for (const c of clients) await c.end().catch(() => {});
    remote.remove(database);
  }
}

async function latencyPart(): Promise<LatencyRun[]> {
  phase("latency");
  let primary: StrataProcess | undefined;
  let replica: StrataProcess | undefined;
  let s3: TestS3Server | undefined;
  const runs: LatencyRun[] = [];
  try {
    if (opts.latencyRemotes.includes("s3")) {
      s3 = await startS3Server({ buckets: [S3_BUCKET] });
      progress(
        `local S3-compatible server at ${s3.endpoint} (s3rver with conditional writes), bucket ${S3_BUCKET}`,
      );
    }
    progress("starting two standalone Stratas: the primary and the read replica");
    const s3Config = s3 && { remotes: strataRemotesConfig(s3) };
    [primary, replica] = await Promise.all([
      startBenchStrata(DIR_PREFIX, STORE_SETTINGS, { config: s3Config }),
      startBenchStrata(DIR_PREFIX, STORE_SETTINGS, { config: s3Config }),
    ]);
    const remoteRoot = tempDir("strata-bench-remotes-remote-");
    const targets: Record<RemoteKind, RemoteTarget> = {
      directory: {
        kind: "directory",
        url: (database) => `file://${join(remoteRoot, database)}`,
        remove: (database) => rmSync(join(remoteRoot, database), { recursive: true, force: true }),
      },
      s3: { kind: "s3", url: (database) => `s3://${S3_BUCKET}/${database}`, remove: () => {} },
    };
    // The replica's settings, as the reference sets them (for every database with a remote `origin`).
    await withConnection(replica.connectionConfig(), async (c) => {
      await setSystemVariable(c, "dolt_replicate_heads", "main");
      await setSystemVariable(c, "dolt_read_replica_remote", "origin");
    });
    for (const kind of opts.latencyRemotes)
      for (let run = 1; run <= opts.runs; run++) {
        try {
          checkAlive(primary);
          checkAlive(replica);
          progress(`${kind} remote, run ${run}`);
          runs.push(await latencyRun(run, primary, replica, targets[kind]));
        } catch (err) {
          const message = (withStrataLogTail(withStrataLogTail(err, primary), replica) as Error).message;
          progress(`${kind} remote, run ${run} FAILED: ${message}`);
          runs.push({ remote: kind, run, ok: false, error: message });
        }
      }
    return runs;
  } finally {
    await Promise.all([stopStrata(primary), stopStrata(replica)]);
    await s3?.stop();
    endPhase();
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Push and clone throughput

interface Generated {
  commits: number;
  bulkCommits: number;
  smallCommits: number;
  bulkRows: number;
  bulkSeconds: number;
  smallSeconds: number;
  smallCommitsPerSecond: number;
  /** VACUUM ANALYZE after generating (what autovacuum would do to a database left running). */
  vacuumSeconds: number;
  seconds: number;
  /** bytes (user tables + history): the basis of every MB/s; databaseBytes for reference. */
  sizes: DatabaseSizes;
  tables: Record<string, TableSum>;
  history: HistorySum;
}

/**
 * How the remote is pushed, which decides how the clone is made: "replay" (no snapshot in the
 * remote: the clone applies every commit in order) or "snapshot" (the push also writes a snapshot
 * of every table at its head: the clone loads the history as rows and the tables from it). Strata
 * writes a snapshot once the history pushed since the last one is as large as it and past
 * STRATA_SNAPSHOT_MIN_BYTES (default 64 MiB, read by the pushing Strata when it starts): the
 * source is started with a floor no push reaches, or with 1 byte.
 */
type CloneVariant = "replay" | "snapshot";
const SNAPSHOT_FLOOR: Record<CloneVariant, string> = {
  replay: String(Number.MAX_SAFE_INTEGER),
  snapshot: "1",
};
type TransferStep = CloneVariant | "pg_dump";

interface StrataTransfer {
  pushSeconds?: number;
  pushedCommits?: number;
  /** Every object the push wrote to the fresh remote: its pack (and snapshot). */
  objectBytes?: number;
  objectFiles?: number;
  cloneSeconds?: number;
  /** From Strata's "cloned" log line: commits applied one by one, and loaded under a snapshot. */
  replayedCommits?: number;
  snapshotCommits?: number;
  /** VmHWM of the pushing / cloning strata process, reset just before. */
  pushPeakRssMb?: number;
  clonePeakRssMb?: number;
  /** Highest PSS sum of the source's / the target's store processes, sampled every second. */
  pushStorePeakPssMb?: number;
  cloneStorePeakPssMb?: number;
  otherCpuShare: { push?: number; clone?: number };
}

interface DumpTransfer {
  seconds?: number;
  bytes?: number;
  storePeakPssMb?: number;
  otherCpuShare?: number;
}

interface TransferRun {
  run: number;
  ok: boolean;
  /** "<step>: <message>" of each step that failed (its figures are left out). */
  errors: string[];
  order: TransferStep[];
  strata: Partial<Record<CloneVariant, StrataTransfer>>;
  dump?: DumpTransfer;
}

/** The source database on `s`: bulk-loaded, then many small commits; checked and measured. */
async function generate(s: StrataProcess): Promise<Generated> {
  const started = performance.now();
  await withConnection(s.connectionConfig(), (c) => c.query(`CREATE DATABASE ${SOURCE_DATABASE}`));
  const workers = opts.genClients;
  const clients: pg.Client[] = [];
  try {
    for (let w = 0; w < workers; w++) clients.push(await connect(s.connectionConfig(SOURCE_DATABASE)));
    const c = clients[0];
    await c.query(CREATE_BULK_TABLE);
    for (let w = 0; w < workers; w++)
      await c.query(
        `CREATE TABLE events_${w} (id bigint PRIMARY KEY, worker int NOT NULL, n int NOT NULL, note text NOT NULL)`,
      );

    // Bulk: a few big commits (the first also creates the tables), until the tables reach --mb.
    const target = opts.mb * MB;
    let rows = 0;
    let bulkCommits = 0;
    let chunk = Math.min(BULK_CHUNK_ROWS, Math.ceil(target / BULK_ROW_BYTES_GUESS));
    progress(`bulk load: about ${opts.mb} MB into bulk, up to ${thousands(BULK_CHUNK_ROWS)} rows per commit`);
    for (;;) {
      await bulkLoadCommit(c, rows + 1, rows + chunk, bulkCommits === 0);
      rows += chunk;
      bulkCommits++;
      const { rows: sz } = await c.query<{ b: string }>(
        "SELECT sum(pg_total_relation_size(c.oid))::text AS b FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'",
      );
      const bytes = Number(sz[0].b);
      progress(
        `  commit ${bulkCommits}: ${thousands(rows)} rows, ${fixed(bytes / MB, 0)} MB of tables (${fixed((performance.now() - started) / 1000, 1)} s)`,
      );
      if (bytes >= target * 0.98) break;
      chunk = Math.min(BULK_CHUNK_ROWS, Math.ceil((target - bytes) / (bytes / rows)));
    }
    const bulkSeconds = (performance.now() - started) / 1000;
    const smallCommits = opts.historyCommits - bulkCommits;
    if (smallCommits < 0)
      throw new Error(
        `--history-commits ${opts.historyCommits} is fewer than the bulk load's ${bulkCommits} commits: raise it or lower --mb`,
      );
    // The bulk commits left strata.working_changes with ~all its rows dead and statistics that say
    // it is full: until autovacuum comes by (up to a minute), every commit's plan over it costs
    // enough to be JIT-compiled (~100 ms a commit). Do what autovacuum would do, now.
    await c.query("VACUUM ANALYZE strata.working_changes, strata.working_schema_changes");

    // Small commits: one UPDATE of a bulk row (each worker its own rows) and one INSERT into the
    // worker's own table each, in BEGIN ... COMMIT, --gen-batch per round trip.
    progress(
      `small commits: ${thousands(smallCommits)}, ${opts.genBatch} per round trip, ${workers} connection${workers === 1 ? "" : "s"}`,
    );
    const smallStart = performance.now();
    let done = 0;
    let lastReport = smallStart;
    const share = (w: number) => Math.floor(smallCommits / workers) + (w < smallCommits % workers ? 1 : 0);
    const stride = Math.floor(rows / workers);
    if (stride < 1) throw new Error(`too few bulk rows (${rows}) for ${workers} generating connections`);
    await Promise.all(
      clients.map(async (client, w) => {
        const mine = share(w);
        for (let n = 1; n <= mine; ) {
          const parts: string[] = [];
          for (let i = 0; i < opts.genBatch && n <= mine; i++, n++) {
            const id = 1 + w + workers * ((n * 7919) % stride);
            parts.push(
              `BEGIN; UPDATE bulk SET grp = grp + 1 WHERE id = ${id}; ` +
                `INSERT INTO events_${w} VALUES (${n}, ${w}, ${n % 1000}, md5('${w}:${n}')); ` +
                `SELECT dolt_commit('-am', 'small commit ${w}.${n}'); COMMIT;`,
            );
          }
          await client.query(parts.join("\n"));
          done += parts.length;
          if (performance.now() - lastReport > 10_000) {
            lastReport = performance.now();
            const rate = done / ((lastReport - smallStart) / 1000);
            progress(`  ${thousands(done)} / ${thousands(smallCommits)} small commits (${fixed(rate, 0)}/s)`);
          }
        }
      }),
    );
    const smallSeconds = (performance.now() - smallStart) / 1000;
    const generated = (performance.now() - started) / 1000;
    const vacuumStart = performance.now();
    await c.query("VACUUM ANALYZE");
    const vacuumSeconds = (performance.now() - vacuumStart) / 1000;
    const history = await historySum(c, true);
    if (history.commits !== opts.historyCommits)
      throw new Error(`the source has ${history.commits} commits, expected ${opts.historyCommits}`);
    const [{ n: pending }] = (await c.query<{ n: number }>("SELECT count(*)::int AS n FROM dolt_status"))
      .rows;
    if (pending !== 0) throw new Error(`the source has ${pending} uncommitted tables (dolt_status)`);
    return {
      commits: history.commits,
      bulkCommits,
      smallCommits,
      bulkRows: rows,
      bulkSeconds,
      smallSeconds,
      smallCommitsPerSecond: smallCommits / smallSeconds,
      vacuumSeconds,
      seconds: generated,
      sizes: await databaseSizes(c),
      tables: await tableSums(c),
      history,
    };
  } finally {
    for (const client of clients) await client.end().catch(() => {});
  }
}

/** Bytes and files of a directory remote's objects (its packs). */
function objectsOf(remoteDir: string): { bytes: number; files: number } {
  let bytes = 0;
  let files = 0;
  const root = join(remoteDir, "objects");
  for (const e of readdirSync(root, { recursive: true, withFileTypes: true })) {
    if (!e.isFile() || e.parentPath.endsWith("tmp")) continue;
    bytes += statSync(join(e.parentPath, e.name)).size;
    files++;
  }
  return { bytes, files };
}

/** Peak PSS of a store's processes, sampled every second until stopped. */
function sampleStorePss(postmaster: number): () => number {
  let peak = procfs.clusterPssKb(postmaster);
  const timer = setInterval(() => {
    peak = Math.max(peak, procfs.clusterPssKb(postmaster));
  }, 1000);
  return () => {
    clearInterval(timer);
    return Math.max(peak, procfs.clusterPssKb(postmaster)) / 1024;
  };
}

/** pg_dump -Fc of `database` on `from`'s store, piped into pg_restore into `into` on `to`'s store. */
async function dumpRestore(from: StrataProcess, database: string, to: StrataProcess, into: string) {
  const src = storeConfig(from, database);
  const dst = storeConfig(to, into);
  const connArgs = (c: pg.ClientConfig) => ["-h", String(c.host), "-p", String(c.port), "-U", String(c.user)];
  return dumpIntoRestore(
    ["-Fc", ...connArgs(src), "-d", database],
    ["--exit-on-error", ...connArgs(dst), "-d", into],
    { PGPASSWORD: TEST_PASSWORD },
  );
}

/** The latest "cloned" line Strata logged for `database`. */
function clonedLogLine(s: StrataProcess, database: string): { commits?: number; from_snapshot?: number } {
  const lines = s.logs.split("\n").filter((l) => l.includes('"msg":"cloned"'));
  for (const line of lines.reverse()) {
    try {
      const entry = JSON.parse(line);
      if (entry.database === database) return entry;
    } catch {
      // not a JSON line
    }
  }
  throw new Error(`strata logged no "cloned" line for ${database}`);
}

/** The source, running with the snapshot floor of `variant` (started again when it had another). */
const sourceFloor = new Map<StrataProcess, string>();
async function sourceFor(source: StrataProcess, variant: CloneVariant): Promise<void> {
  const floor = SNAPSHOT_FLOOR[variant];
  if (sourceFloor.get(source) === floor) return;
  progress(`restarting the source with STRATA_SNAPSHOT_MIN_BYTES=${floor} (${variant})`);
  await source.stop();
  source.env = { STRATA_SNAPSHOT_MIN_BYTES: floor };
  await source.start();
  sourceFloor.set(source, floor);
}

/** dolt_push of the whole source to a fresh remote, dolt_clone of it on the target, the clone checked. */
async function strataTransfer(
  run: number,
  variant: CloneVariant,
  source: StrataProcess,
  target: StrataProcess,
  gen: Generated,
  remoteRoot: string,
  out: StrataTransfer,
): Promise<void> {
  await sourceFor(source, variant);
  const own = {
    pids: [strataPid(source), strataPid(target)],
    postmasters: [storePostmaster(source), storePostmaster(target)],
  };
  const mb = gen.sizes.bytes / MB;
  const remote = `${variant}_r${run}`;
  const remoteDir = join(remoteRoot, remote);
  const url = `file://${remoteDir}`;
  const clone = `clone_${variant}_r${run}`;
  const src = await connect(source.connectionConfig(SOURCE_DATABASE));
  const admin = await connect(target.connectionConfig());
  try {
    await src.query(`SELECT dolt_remote('add', ${literal(remote)}, ${literal(url)})`);
    progress(`run ${run}, ${variant}: dolt_push('${remote}', 'main') of ${thousands(gen.commits)} commits`);
    const pid = strataPid(source);
    procfs.resetPeakRss(pid);
    let pss = sampleStorePss(storePostmaster(source));
    let window = loadWindow(own);
    let t0 = performance.now();
    const [pushed] = (
      await withDeadline(
        src.query<{ dolt_push: string[] }>(`SELECT dolt_push(${literal(remote)}, 'main')`),
        opts.timeoutMs,
        "dolt_push",
      )
    ).rows;
    out.pushSeconds = (performance.now() - t0) / 1000;
    out.otherCpuShare.push = shareOf(window());
    out.pushPeakRssMb = (procfs.peakRssKb(pid) ?? Number.NaN) / 1024;
    out.pushStorePeakPssMb = pss();
    const message = pushed.dolt_push[1];
    out.pushedCommits = Number(/^pushed (\d+) commits? /.exec(message)?.[1] ?? Number.NaN);
    if (out.pushedCommits !== gen.commits)
      throw new Error(`dolt_push said "${message}": the database has ${gen.commits} commits to push`);
    const objects = objectsOf(remoteDir);
    out.objectBytes = objects.bytes;
    out.objectFiles = objects.files;
    progress(
      `run ${run}, ${variant}: pushed in ${fixed(out.pushSeconds, 2)} s (${fixed(mb / out.pushSeconds, 1)} MB/s), ` +
        `${objects.files} object${objects.files === 1 ? "" : "s"}, ${fixed(objects.bytes / MB, 1)} MB; strata peak RSS ${fixed(out.pushPeakRssMb, 0)} MB`,
    );

    progress(`run ${run}, ${variant}: dolt_clone('${url}', '${clone}') on the second Strata`);
    checkAlive(target);
    const targetPid = strataPid(target);
    procfs.resetPeakRss(targetPid);
    pss = sampleStorePss(storePostmaster(target));
    window = loadWindow(own);
    t0 = performance.now();
    await withDeadline(
      admin.query(`SELECT dolt_clone(${literal(url)}, ${literal(clone)})`),
      opts.timeoutMs,
      "dolt_clone",
    );
    out.cloneSeconds = (performance.now() - t0) / 1000;
    out.otherCpuShare.clone = shareOf(window());
    out.clonePeakRssMb = (procfs.peakRssKb(targetPid) ?? Number.NaN) / 1024;
    out.cloneStorePeakPssMb = pss();
    const cloned = clonedLogLine(target, clone);
    out.snapshotCommits = cloned.from_snapshot ?? 0;
    out.replayedCommits = (cloned.commits ?? Number.NaN) - out.snapshotCommits;
    progress(
      `run ${run}, ${variant}: cloned in ${fixed(out.cloneSeconds, 2)} s (${fixed(mb / out.cloneSeconds, 1)} MB/s), ` +
        `${thousands(out.snapshotCommits)} commits loaded under a snapshot, ${thousands(out.replayedCommits)} applied one by one; ` +
        `strata peak RSS ${fixed(out.clonePeakRssMb, 0)} MB; checking the clone`,
    );
    // The figures must be of the clone they are labelled with.
    if (variant === "replay" && out.snapshotCommits !== 0)
      throw new Error(`the clone loaded ${out.snapshotCommits} commits from a snapshot: the push wrote one`);
    if (variant === "snapshot" && out.snapshotCommits === 0)
      throw new Error("the clone used no snapshot: the push wrote none");
    await withConnection(target.connectionConfig(clone), async (c) =>
      assertSame(
        `the clone ${clone}`,
        { tables: gen.tables, history: gen.history },
        {
          tables: await tableSums(c),
          history: await historySum(c, true),
        },
      ),
    );
  } finally {
    // Closed first, and the clean-up on connections of its own: after a missed deadline the push
    // or clone still holds `src` or `admin`, and a query queued behind it would wait it out. The
    // forced drop ends a clone still running on the target (its pull fails, and it leaves nothing).
    await Promise.all([src.end().catch(() => {}), admin.end().catch(() => {})]);
    await withConnection(target.connectionConfig(), (c) =>
      c.query(`DROP DATABASE IF EXISTS ${ident(clone)} WITH (FORCE)`),
    ).catch(() => {});
    await withConnection(source.connectionConfig(SOURCE_DATABASE), (c) =>
      c.query(`SELECT dolt_remote('remove', ${literal(remote)})`),
    ).catch(() => {});
    rmSync(remoteDir, { recursive: true, force: true });
  }
}

/** The baseline: pg_dump -Fc | pg_restore from the source's store into a fresh database on the target's. */
async function dumpTransfer(
  run: number,
  source: StrataProcess,
  target: StrataProcess,
  gen: Generated,
  out: DumpTransfer,
): Promise<void> {
  const own = {
    pids: [strataPid(source), strataPid(target)],
    postmasters: [storePostmaster(source), storePostmaster(target)],
  };
  const mb = gen.sizes.bytes / MB;
  const restored = `restore_r${run}`;
  const store = await connect(storeConfig(target));
  try {
    await store.query(`CREATE DATABASE ${ident(restored)} TEMPLATE template0`);
    progress(`run ${run}: pg_dump -Fc ${SOURCE_DATABASE} | pg_restore -d ${restored} (store to store)`);
    const pss = sampleStorePss(storePostmaster(target));
    const window = loadWindow(own);
    const t0 = performance.now();
    const bytes = await withDeadline(
      dumpRestore(source, SOURCE_DATABASE, target, restored),
      opts.timeoutMs,
      "pg_dump | pg_restore",
    );
    out.seconds = (performance.now() - t0) / 1000;
    out.otherCpuShare = shareOf(window());
    out.storePeakPssMb = pss();
    out.bytes = bytes;
    progress(
      `run ${run}: pg_dump | pg_restore in ${fixed(out.seconds, 2)} s (${fixed(mb / out.seconds, 1)} MB/s), ` +
        `dump ${fixed(bytes / MB, 1)} MB; checking the restored database`,
    );
    await withConnection(storeConfig(target, restored), async (c) =>
      assertSame(
        `the restored ${restored}`,
        { tables: gen.tables, history: gen.history },
        {
          tables: await tableSums(c),
          history: await historySum(c, false),
        },
      ),
    );
  } finally {
    await store.query(`DROP DATABASE IF EXISTS ${ident(restored)} WITH (FORCE)`).catch(() => {});
    await store.end().catch(() => {});
  }
}

async function transferRun(
  run: number,
  source: StrataProcess,
  target: StrataProcess,
  gen: Generated,
  remoteRoot: string,
): Promise<TransferRun> {
  // The order turns from run to run, so that a drift on the machine does not always hit the same step.
  const steps = opts.steps;
  const turn = (run - 1) % steps.length;
  const order = [...steps.slice(turn), ...steps.slice(0, turn)];
  const result: TransferRun = { run, ok: false, errors: [], order, strata: {} };
  for (const step of order) {
    try {
      checkAlive(source);
      checkAlive(target);
      if (step === "pg_dump") {
        result.dump = {};
        await dumpTransfer(run, source, target, gen, result.dump);
      } else {
        const out: StrataTransfer = { otherCpuShare: {} };
        result.strata[step] = out;
        await strataTransfer(run, step, source, target, gen, remoteRoot, out);
      }
    } catch (err) {
      const message = (withStrataLogTail(err, step === "pg_dump" ? undefined : source) as Error).message;
      progress(`run ${run} ${step} FAILED: ${message}`);
      result.errors.push(`${step}: ${message}`);
    }
  }
  result.ok = result.errors.length === 0;
  return result;
}

function shareOf(load: { seconds: number; otherCpuSeconds: number }): number {
  return load.otherCpuSeconds / (load.seconds * CPUS);
}

interface TransferResult {
  generated?: Generated;
  error?: string;
  runs: TransferRun[];
}

async function transferPart(): Promise<TransferResult> {
  phase("transfer");
  let source: StrataProcess | undefined;
  let target: StrataProcess | undefined;
  const out: TransferResult = { runs: [] };
  try {
    progress("starting two standalone Stratas: the source and the clone's");
    const first = SNAPSHOT_FLOOR.replay;
    [source, target] = await Promise.all([
      startBenchStrata(DIR_PREFIX, STORE_SETTINGS, { env: { STRATA_SNAPSHOT_MIN_BYTES: first } }),
      startBenchStrata(DIR_PREFIX, STORE_SETTINGS),
    ]);
    sourceFloor.set(source, first);
    progress(
      `generating ${SOURCE_DATABASE}: ${thousands(opts.historyCommits)} commits, about ${opts.mb} MB of table data`,
    );
    const gen = await generate(source);
    out.generated = gen;
    progress(
      `generated in ${fixed(gen.seconds, 1)} s: ${gen.bulkCommits} bulk commits (${thousands(gen.bulkRows)} rows, ${fixed(gen.bulkSeconds, 1)} s) + ` +
        `${thousands(gen.smallCommits)} small commits (${fixed(gen.smallSeconds, 1)} s, ${fixed(gen.smallCommitsPerSecond, 0)}/s); ` +
        `VACUUM ANALYZE ${fixed(gen.vacuumSeconds, 1)} s; user tables ${fixed(gen.sizes.userBytes / MB, 1)} MB + history ${fixed(gen.sizes.historyBytes / MB, 1)} MB`,
    );
    const remoteRoot = tempDir("strata-bench-remotes-remote-");
    for (let run = 1; run <= opts.runs; run++)
      out.runs.push(await transferRun(run, source, target, gen, remoteRoot));
  } catch (err) {
    const message = (withStrataLogTail(err, source) as Error).message;
    progress(`FAILED: ${message}`);
    out.error = message;
  } finally {
    await Promise.all([stopStrata(source), stopStrata(target)]);
    endPhase();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Report

const over = <R extends { ok: boolean }>(runs: R[], pick: (r: R) => number | undefined): Summary =>
  summarize(
    runs
      .filter((r) => r.ok)
      .map(pick)
      .filter((v): v is number => v !== undefined && Number.isFinite(v)),
  );

const count = (runs: { ok: boolean }[]) => runs.filter((r) => r.ok).length;

function row(label: string, n: number, s: Summary, unit: string, note = "", digits = 1): string[] {
  return [label, String(n), fixed(s.min, digits), fixed(s.median, digits), fixed(s.max, digits), unit, note];
}

function latencySummary(runs: LatencyRun[]) {
  const phaseOf = (p: LatencyPhase) => ({
    commitP50: over(runs, (r) => r.commitMs?.[p]?.p50Ms),
    commitP99: over(runs, (r) => r.commitMs?.[p]?.p99Ms),
    insertP50: over(runs, (r) => r.insertMs?.[p]?.p50Ms),
    rate: over(runs, (r) => r.commitsPerSecond?.[p]),
    late: over(runs, (r) => r.late?.[p]),
  });
  return {
    visibleP50: over(runs, (r) => r.visibleMs?.p50Ms),
    visibleP99: over(runs, (r) => r.visibleMs?.p99Ms),
    visibleMax: over(runs, (r) => r.visibleMs?.maxMs),
    push: phaseOf("sync push"),
    noPush: phaseOf("no push"),
    pushCostP50: over(runs, (r) =>
      r.commitMs?.["sync push"] && r.commitMs["no push"]
        ? r.commitMs["sync push"].p50Ms - r.commitMs["no push"].p50Ms
        : undefined,
    ),
    pollP50: over(runs, (r) => r.pollMs?.p50Ms),
    pollsPerSecond: over(runs, (r) => r.pollsPerSecond),
  };
}

function latencyRows(all: LatencyRun[]): { rows: string[][]; target: string } {
  const rows: string[][] = [];
  let target = "target: no successful run through a directory remote";
  for (const kind of opts.latencyRemotes) {
    const part = latencyRowsOf(
      all.filter((r) => r.remote === kind),
      kind,
    );
    rows.push(...part.rows);
    if (kind === "directory") target = part.target;
  }
  return { rows, target };
}

function latencyRowsOf(runs: LatencyRun[], kind: RemoteKind): { rows: string[][]; target: string } {
  const n = count(runs);
  const s = latencySummary(runs);
  const met = s.visibleP50.median < TARGET_P50_MS;
  const rows = [
    row(
      `[${kind}] commit → visible on the replica, p50`,
      n,
      s.visibleP50,
      "ms",
      kind === "directory"
        ? `target < ${TARGET_P50_MS} ms: ${Number.isFinite(s.visibleP50.median) ? (met ? "yes" : "NO") : "-"}`
        : "no target: s3rver runs in the bench's process",
    ),
    row(`[${kind}] commit → visible on the replica, p99`, n, s.visibleP99, "ms"),
    row(`[${kind}] commit → visible on the replica, max`, n, s.visibleMax, "ms"),
    row(
      `[${kind}] dolt_commit statement, sync push, p50`,
      n,
      s.push.commitP50,
      "ms",
      "push before it returns",
    ),
    row(`[${kind}] dolt_commit statement, sync push, p99`, n, s.push.commitP99, "ms"),
    row(
      `[${kind}] dolt_commit statement, no push, p50`,
      n,
      s.noPush.commitP50,
      "ms",
      "dolt_replicate_to_remote unset",
    ),
    row(`[${kind}] dolt_commit statement, no push, p99`, n, s.noPush.commitP99, "ms"),
    row(`[${kind}] cost of the sync push (p50 push - p50 no push)`, n, s.pushCostP50, "ms"),
    row(
      `[${kind}] INSERT before it (autocommit), sync push, p50`,
      n,
      s.push.insertP50,
      "ms",
      "no new commit: finds the remote up to date",
    ),
    row(`[${kind}] INSERT before it (autocommit), no push, p50`, n, s.noPush.insertP50, "ms"),
    row(
      `[${kind}] replica statement (pull + SELECT max(k)), p50`,
      n,
      s.pollP50,
      "ms",
      `${fixed(s.pollsPerSecond.median, 0)} polls/s (median)`,
    ),
    row(
      `[${kind}] commits/s achieved, sync push`,
      n,
      s.push.rate,
      "1/s",
      `paced at ${opts.rate}/s; late starts (median) ${fixed(s.push.late.median, 0)}`,
    ),
    row(
      `[${kind}] commits/s achieved, no push`,
      n,
      s.noPush.rate,
      "1/s",
      `late starts ${fixed(s.noPush.late.median, 0)}`,
    ),
  ];
  const target = Number.isFinite(s.visibleP50.median)
    ? `target (commit visible on a read replica through a directory remote, p50 < ${TARGET_P50_MS} ms): p50 ${fixed(s.visibleP50.median, 1)} ms (median of ${n} runs) → ${met ? "met" : "NOT met"}`
    : "target: no successful run";
  return { rows, target };
}

function transferSummary(t: TransferResult) {
  const mb = (t.generated?.sizes.bytes ?? Number.NaN) / MB;
  const failed = (r: TransferRun, step: TransferStep) => r.errors.some((e) => e.startsWith(`${step}:`));
  /** The runs whose `step` succeeded (a failed step's figures are left out), as `pick` reads them. */
  const of = <T>(step: TransferStep, pick: (r: TransferRun) => T | undefined) =>
    t.runs.map((r) => ({ ok: !failed(r, step) && pick(r) !== undefined, value: pick(r) }));
  const strata = (variant: CloneVariant) => {
    const runs = of(variant, (r) => r.strata[variant]);
    const s = (f: (x: StrataTransfer) => number | undefined) =>
      over(runs, (r) => (r.value ? f(r.value) : undefined));
    return {
      runs: count(runs),
      push: s((x) => x.pushSeconds),
      pushMbps: s((x) => mb / (x.pushSeconds ?? Number.NaN)),
      objectMb: s((x) => (x.objectBytes ?? Number.NaN) / MB),
      clone: s((x) => x.cloneSeconds),
      cloneMbps: s((x) => mb / (x.cloneSeconds ?? Number.NaN)),
      pushClone: s((x) => (x.pushSeconds ?? Number.NaN) + (x.cloneSeconds ?? Number.NaN)),
      pushRss: s((x) => x.pushPeakRssMb),
      cloneRss: s((x) => x.clonePeakRssMb),
      pushPss: s((x) => x.pushStorePeakPssMb),
      clonePss: s((x) => x.cloneStorePeakPssMb),
    };
  };
  const dumpRuns = of("pg_dump", (r) => r.dump?.seconds);
  const dump = (f: (x: DumpTransfer) => number | undefined) =>
    over(
      t.runs.map((r, i) => ({ ok: dumpRuns[i].ok, r })),
      (x) => (x.r.dump ? f(x.r.dump) : undefined),
    );
  /** Strata's time / pg_dump | pg_restore's, per run where both succeeded. */
  const ratio = (variant: CloneVariant, f: (x: StrataTransfer) => number | undefined) =>
    over(
      t.runs.map((r) => ({ ok: !failed(r, variant) && !failed(r, "pg_dump"), r })),
      (x) => {
        const v = x.r.strata[variant];
        return v && x.r.dump?.seconds ? (f(v) ?? Number.NaN) / x.r.dump.seconds : undefined;
      },
    );
  return {
    replay: strata("replay"),
    snapshot: strata("snapshot"),
    dumpRuns: count(dumpRuns),
    dump: dump((x) => x.seconds),
    dumpMbps: dump((x) => mb / (x.seconds ?? Number.NaN)),
    dumpMb: dump((x) => (x.bytes ?? Number.NaN) / MB),
    dumpPss: dump((x) => x.storePeakPssMb),
    cloneRatio: {
      replay: ratio("replay", (x) => x.cloneSeconds),
      snapshot: ratio("snapshot", (x) => x.cloneSeconds),
    },
    pushCloneRatio: {
      replay: ratio("replay", (x) => (x.pushSeconds ?? Number.NaN) + (x.cloneSeconds ?? Number.NaN)),
      snapshot: ratio("snapshot", (x) => (x.pushSeconds ?? Number.NaN) + (x.cloneSeconds ?? Number.NaN)),
    },
    ratioRuns: {
      replay: t.runs.filter((r) => !failed(r, "replay") && !failed(r, "pg_dump") && r.strata.replay).length,
      snapshot: t.runs.filter((r) => !failed(r, "snapshot") && !failed(r, "pg_dump") && r.strata.snapshot)
        .length,
    },
  };
}

function transferRows(t: TransferResult): string[][] {
  const s = transferSummary(t);
  const rows: string[][] = [];
  const label: Record<CloneVariant, string> = {
    replay: "no snapshot: the clone applies every commit",
    snapshot: "with a snapshot: the clone loads history + tables",
  };
  for (const v of ["replay", "snapshot"] as const) {
    const x = s[v];
    rows.push(
      row(
        `dolt_push, ${label[v]}`,
        x.runs,
        x.push,
        "s",
        v === "snapshot" ? "pack + snapshot written" : "",
        2,
      ),
      row(`  dolt_push throughput`, x.runs, x.pushMbps, "MB/s", "of user tables + history"),
      row(`  remote objects on disk`, x.runs, x.objectMb, "MB", "gzip"),
      row(`dolt_clone, ${label[v]}`, x.runs, x.clone, "s", "on a second Strata", 2),
      row(`  dolt_clone throughput`, x.runs, x.cloneMbps, "MB/s", "of user tables + history"),
      row(`  dolt_push + dolt_clone`, x.runs, x.pushClone, "s", "", 2),
    );
  }
  rows.push(
    row("pg_dump -Fc | pg_restore (baseline)", s.dumpRuns, s.dump, "s", "whole database, store to store", 2),
    row("  pg_dump | pg_restore throughput", s.dumpRuns, s.dumpMbps, "MB/s", "of user tables + history"),
    row("  pg_dump -Fc output", s.dumpRuns, s.dumpMb, "MB"),
    row(
      "dolt_clone (no snapshot) / pg_dump|pg_restore",
      s.ratioRuns.replay,
      s.cloneRatio.replay,
      "x",
      "time",
      2,
    ),
    row(
      "dolt_clone (snapshot) / pg_dump|pg_restore",
      s.ratioRuns.snapshot,
      s.cloneRatio.snapshot,
      "x",
      "time",
      2,
    ),
    row(
      "push + clone (no snapshot) / pg_dump|pg_restore",
      s.ratioRuns.replay,
      s.pushCloneRatio.replay,
      "x",
      "time",
      2,
    ),
    row(
      "push + clone (snapshot) / pg_dump|pg_restore",
      s.ratioRuns.snapshot,
      s.pushCloneRatio.snapshot,
      "x",
      "time",
      2,
    ),
  );
  for (const v of ["replay", "snapshot"] as const) {
    const x = s[v];
    const tag = v === "replay" ? "no snapshot" : "snapshot";
    rows.push(
      row(`strata peak RSS, pushing (${tag})`, x.runs, x.pushRss, "MB", "VmHWM, source", 0),
      row(`strata peak RSS, cloning (${tag})`, x.runs, x.cloneRss, "MB", "VmHWM, target", 0),
      row(`store peak PSS, push (${tag})`, x.runs, x.pushPss, "MB", "source's store, sampled 1/s", 0),
      row(`store peak PSS, clone (${tag})`, x.runs, x.clonePss, "MB", "target's store, sampled 1/s", 0),
    );
  }
  rows.push(row("store peak PSS, pg_restore", s.dumpRuns, s.dumpPss, "MB", "target's store, sampled 1/s", 0));
  return rows;
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
  const latency = opts.latency ? await latencyPart() : undefined;
  const transfer = opts.transfer ? await transferPart() : undefined;

  const rows: string[][] = [];
  let target: string | undefined;
  if (latency) {
    const l = latencyRows(latency);
    rows.push(...l.rows);
    target = l.target;
  }
  if (transfer) rows.push(...transferRows(transfer));
  const lines = [
    "",
    `Remotes: replication through ${opts.latencyRemotes.join(" and ")} remotes, push and clone`,
    `machine: ${info.cpus} CPUs (${info.cpuModel}), ${info.memoryGb} GB RAM, ${info.os}, node ${info.node}, ${info.postgres}`,
    `strata: standalone, log_level info; code ${code.commit ?? "unknown"}${code.srcModified ? " with local changes in src/" : ""} (at the start); ${DURABILITY_TEXT}`,
  ];
  if (latency)
    lines.push(
      `latency: ${opts.runs} runs × ${opts.commits} commits per phase at ${opts.rate}/s: INSERT INTO t (autocommit), then SELECT dolt_commit('-am', ...); ` +
        "the replica polls SELECT max(k) FROM t in a tight loop (a pull before each); commit → visible = poll result received - dolt_commit sent",
    );
  if (transfer?.generated) {
    const g = transfer.generated;
    lines.push(
      `transfer: ${thousands(g.commits)} commits (${g.bulkCommits} bulk of ${thousands(g.bulkRows)} rows in all, ${thousands(g.smallCommits)} small), ` +
        `user tables ${fixed(g.sizes.userBytes / MB, 1)} MB + history tables ${fixed(g.sizes.historyBytes / MB, 1)} MB = ${fixed(g.sizes.bytes / MB, 1)} MB ` +
        `(pg_total_relation_size; MB/s are of this), pg_database_size ${fixed(g.sizes.databaseBytes / MB, 1)} MB; ` +
        `generated in ${fixed(g.seconds, 1)} s (bulk ${fixed(g.bulkSeconds, 1)} s, small commits ${fixed(g.smallSeconds, 1)} s at ${fixed(g.smallCommitsPerSecond, 0)}/s), ` +
        `${opts.runs} runs of push + clone without and with a snapshot (source started with STRATA_SNAPSHOT_MIN_BYTES=${SNAPSHOT_FLOOR.replay} / =${SNAPSHOT_FLOOR.snapshot}) and of pg_dump | pg_restore, the order turning per run`,
    );
  }
  lines.push(
    "min / median / max: over the runs (of each run's p50, p99, ... for latencies)",
    "",
    table(["measurement", "runs", "min", "median", "max", "unit", "note"], rows),
  );
  if (target) lines.push("", target);
  const failures = [
    ...(latency ?? []).filter((r) => !r.ok).map((r) => `latency (${r.remote}) run ${r.run}: ${r.error}`),
    ...(transfer?.error ? [`transfer: ${transfer.error}`] : []),
    ...(transfer?.runs ?? []).flatMap((r) => r.errors.map((e) => `transfer run ${r.run} ${e}`)),
  ];
  for (const f of failures) lines.push(`FAILED ${f}`);
  process.stdout.write(`${lines.join("\n")}\n`);
  writeResults("remotes", startedAt, {
    machine: info,
    code,
    options: opts,
    durability: { storeSettings: STORE_SETTINGS, description: DURABILITY_TEXT },
    method: {
      latency:
        "per remote kind (a directory; a prefix of a bucket of s3rver, with conditional writes, in the bench's process) and run a fresh database and remote; primary: INSERT (autocommit) then SELECT dolt_commit('-am', ...) at a fixed pace, with dolt_replicate_to_remote = 'origin' (sync push) and then unset (no push), the order alternating per run; replica (dolt_clone, dolt_replicate_heads = 'main', dolt_read_replica_remote = 'origin'): one connection running SELECT max(k) FROM t back to back; visible latency = poll result received - dolt_commit sent (performance.now(), one process)",
      transfer: `source: bulk commits of INSERT ... SELECT generate_series (up to 1,000,000 rows each) then small commits (UPDATE one bulk row + INSERT one row, BEGIN ... dolt_commit ... COMMIT, --gen-batch per round trip), VACUUM ANALYZE; per run and variant: the source started with STRATA_SNAPSHOT_MIN_BYTES = ${SNAPSHOT_FLOOR.replay} (replay: no snapshot written, the clone applies every commit) or 1 (snapshot: the push writes one at its head, the clone loads the history as rows and the tables from it; Strata's 'cloned' log line says how many commits each way, checked), dolt_push to a fresh directory remote, dolt_clone on a second Strata, the clone checked (per table count + sum of md5 slices of every row; dolt_log count, HEAD, md5 of the commit chain), the clone dropped; baseline: pg_dump -Fc of the whole source database (store socket) | pg_restore --exit-on-error into a fresh database (template0) on the second store, checked the same way`,
      size: `user tables (schema public) + ${HISTORY_TABLES.join(", ")}, pg_total_relation_size (heap + indexes + TOAST)`,
      memory:
        "VmHWM of the strata process, reset (/proc/<pid>/clear_refs 5) just before the push / clone; store: highest sum of PSS of its processes, sampled every second",
    },
    latency: latency && {
      runs: latency,
      summary: Object.fromEntries(
        opts.latencyRemotes.map((kind) => [kind, latencySummary(latency.filter((r) => r.remote === kind))]),
      ),
      target,
    },
    transfer: transfer && { ...transfer, summary: transferSummary(transfer) },
    failures,
  });
  return failures.length === 0 ? 0 : 1;
}

runBench(main);
