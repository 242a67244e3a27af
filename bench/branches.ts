// npm run bench:branches: what a branch costs (docs/branches.md, "Cost"), measured on one
// standalone Strata with a managed store. A branch `b` of database `db` is the store database
// `db/b`: dolt_branch copies the database it starts from (pg_dump --format=custom --compress=0
// piped into pg_restore, src/branches/copy-database.ts), dolt_checkout opens a store session on
// the branch's database (Session.switchDatabase), and the branch then reads as any database does.
//
//   node --import tsx bench/branches.ts [--quick] [--sizes MB,MB,...] [--commits N] [--runs N]
//        [--checkouts N] [--reads N] [--read-rounds N] [--seed N] [--fsync on|off]
//        [--max-load L] [--load-wait-min N] [--timeout-min N]
//
// Every option also has an environment variable (STRATA_BENCH_SIZES, ...; see USAGE); an option
// given on the command line wins. --quick runs tiny sizes and few iterations: a smoke check.
//
// 1. Branch creation time against database size. One database `bench`, built through the front
//    door and grown in stages, one per --sizes entry (MB of user tables + Strata's history tables,
//    pg_total_relation_size): a table `bulk` bulk-loaded with INSERT ... SELECT generate_series (a
//    commit each, up to 1,000,000 rows), then --commits small commits (UPDATE of one bulk row +
//    INSERT into `events`, each BEGIN ... dolt_commit ... COMMIT), then VACUUM ANALYZE. At each
//    size, --runs runs, each of these (the order turning from run to run; a CHECKPOINT on the store
//    before each, untimed, so that none pays for the dirty buffers of the one before):
//      dolt_branch         SELECT dolt_branch('b<k>') through the front door, on a session on main
//                          (the branch is checked: rows, commits, HEAD, clean working set), then
//                          SELECT dolt_branch('-D', 'b<k>'), timed too
//      dump|restore (as Strata)  pg_dump --format=custom --compress=0 | pg_restore into a fresh
//                          database (CREATE DATABASE ... TEMPLATE template0 included), on the store
//                          directly: what dolt_branch runs, without Strata around it
//      pg_dump -Fc | pg_restore  the same with pg_dump's default compression (bench/remotes.ts's
//                          baseline)
//      FILE_COPY           CREATE DATABASE x TEMPLATE bench STRATEGY FILE_COPY on the store: the
//                          lower bound, which Strata cannot use on a live database (it needs the
//                          source to have no other session: the bench closes its own and waits for
//                          the source to have none)
//    MB/s are of the source's pg_database_size. Then, once per size, where the copy's time goes:
//    pg_dump --compress=0 into a file, then pg_restore -v of its pre-data, data and post-data
//    sections (post-data: indexes, primary keys, constraints, triggers), each timed, and each
//    restored item timed by when pg_restore announced it and the next one.
// 2. Checkout cost (at the largest size, branch `b`): --checkouts round trips of
//    SELECT dolt_checkout('b') and SELECT dolt_checkout('main') on one front-door session, each
//    checked with active_branch() (untimed); for reference, as many new front-door connections to
//    bench/b (connect + SELECT 1 + close). Then one dolt_checkout('b') sent 200 ms after another
//    session started SELECT dolt_branch('c') of the same database (Strata runs one database's
//    branch calls one at a time: the checkout waits for the copy).
// 3. Reads on a branch: --reads point lookups by primary key (SELECT grp, payload FROM bulk WHERE
//    id = $1, prepared, random keys from --seed, one connection, one at a time) through the front
//    door on: a session on main; a session moved to b with dolt_checkout; a session connected to
//    bench/b directly. Each target is warmed up with one unmeasured pass first; then
//    --read-rounds rounds of every target in a turning order. Queries per second and latency.
//
// Progress goes to stderr, one table to stdout, every figure to bench/results/branches-<ts>.json.
// Before it starts, the bench waits (up to --load-wait-min) for the 1-minute load average to fall
// below --max-load. The Strata, its store, every child process and directory are removed at the
// end, also on failure or Ctrl-C (test/support/cleanup.ts).
import { rmSync, statSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { tempDir } from "../test/support/postgres.ts";
import type { StrataProcess } from "../test/support/strata.ts";
import { seededRandom } from "../test/support/workload.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { connect, withConnection } from "./support/connection.ts";
import { type LatencySummary, randomInt, summarizeLatencies } from "./support/latency.ts";
import { loadWindow, type OwnProcesses } from "./support/machine-load.ts";
import {
  checkAlive,
  cleanUpAtExit,
  dumpIntoRestore,
  INTERNAL_WRITER,
  runPgProgram,
  startBenchStrata,
  stopStrata,
  storeConfig,
  storePostmaster,
  strataPid,
  withDeadline,
} from "./support/processes.ts";
import { fixed, type Summary, summarize, table, thousands } from "./support/report.ts";
import {
  bulkLoadSettings,
  codeVersion,
  machineInfo,
  progressReporter,
  runBench,
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

const USAGE = `usage: node --import tsx bench/branches.ts [options]   (env variable in brackets)
  --quick               tiny sizes and few iterations, a smoke check (defaults in parentheses) [STRATA_BENCH_QUICK=1]
  --sizes LIST          database sizes to measure, MB of user tables + history tables, ascending
                        (default 60,250,800; quick 6,12)                               [STRATA_BENCH_SIZES]
  --commits N           small commits (UPDATE + INSERT) added at each size (default 300; quick 20)
                                                                                       [STRATA_BENCH_COMMITS]
  --runs N              runs of each copy at each size (default 3; quick 2)            [STRATA_BENCH_RUNS]
  --checkouts N         dolt_checkout round trips (default 50; quick 5)                [STRATA_BENCH_CHECKOUTS]
  --reads N             point lookups per target and round (default 20000; quick 1000) [STRATA_BENCH_READS]
  --read-rounds N       rounds of lookups over the targets (default 3; quick 2)        [STRATA_BENCH_READ_ROUNDS]
  --seed N              seed of the lookups' keys (default 1)                          [STRATA_BENCH_SEED]
  --fsync on|off        durability of the store (default on)                           [STRATA_BENCH_FSYNC]
  --max-load L          wait until the 1-minute load average is below L before starting (default 1.0;
                        quick 0: no wait)                                              [STRATA_BENCH_MAX_LOAD]
  --load-wait-min N     wait for that at most N minutes, then start anyway (default 10) [STRATA_BENCH_LOAD_WAIT_MIN]
  --timeout-min N       deadline of each copy (default 30)                             [STRATA_BENCH_TIMEOUT_MIN]`;

function options() {
  const env = (name: string) => process.env[`STRATA_BENCH_${name}`] || undefined;
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      options: {
        quick: { type: "boolean", default: env("QUICK") === "1" },
        sizes: { type: "string", default: env("SIZES") },
        commits: { type: "string", default: env("COMMITS") },
        runs: { type: "string", default: env("RUNS") },
        checkouts: { type: "string", default: env("CHECKOUTS") },
        reads: { type: "string", default: env("READS") },
        "read-rounds": { type: "string", default: env("READ_ROUNDS") },
        seed: { type: "string", default: env("SEED") },
        fsync: { type: "string", default: env("FSYNC") ?? "on" },
        "max-load": { type: "string", default: env("MAX_LOAD") },
        "load-wait-min": { type: "string", default: env("LOAD_WAIT_MIN") },
        "timeout-min": { type: "string", default: env("TIMEOUT_MIN") },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (err) {
    return usageExits(USAGE, false)((err as Error).message);
  }
  const fail = usageExits(USAGE, values.help === true);
  const quick = values.quick === true;
  /** The option's value, else its default (the quick one with --quick). */
  const text = (name: string, normal: string, small = normal) =>
    typeof values[name] === "string" ? (values[name] as string) : quick ? small : normal;
  const num = (name: string, min: number, normal: string, small = normal, integer = true) => {
    const t = text(name, normal, small);
    const n = Number(t.replace(/_/g, ""));
    if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min)
      fail(`--${name} must be ${integer ? "an integer" : "a number"} >= ${min}, got ${t}`);
    return n;
  };
  const sizes = text("sizes", "60,250,800", "6,12")
    .split(",")
    .map((s) => Number(s.trim()));
  if (sizes.length === 0 || sizes.some((s) => !Number.isFinite(s) || s <= 0))
    fail(`--sizes must be a comma-separated list of sizes in MB, got ${text("sizes", "")}`);
  sizes.sort((a, b) => a - b);
  if (!["on", "off"].includes(String(values.fsync))) fail("--fsync must be on or off");
  return {
    quick,
    sizesMb: sizes,
    commits: num("commits", 1, "300", "20"),
    runs: num("runs", 1, "3", "2"),
    checkouts: num("checkouts", 1, "50", "5"),
    reads: num("reads", 1, "20000", "1000"),
    readRounds: num("read-rounds", 1, "3", "2"),
    seed: num("seed", 0, "1"),
    fsync: values.fsync === "on",
    maxLoad: num("max-load", 0, "1.0", "0", false),
    loadWaitMs: num("load-wait-min", 0, "10", "10", false) * 60_000,
    timeoutMs: num("timeout-min", 1, "30") * 60_000,
  };
}

const opts = options();

const MB = 1024 * 1024;
const CPUS = os.cpus().length;
const SOURCE_DATABASE = "bench";
/** The branch kept for the checkout and read measurements. */
const READ_BRANCH = "b";
/** Rows per bulk-load commit, at most. */
const BULK_CHUNK_ROWS = 1_000_000;
/**
 * First guess of what a bulk row adds to user tables + history (heap, index, and its change row in
 * strata.changes), corrected after the first commit. On the low side: the first stage overshoots less.
 */
const BULK_ROW_BYTES_GUESS = 600;
/** Small commits per round trip while generating. */
const GEN_BATCH = 50;
/** How long FILE_COPY waits for the source to have no session left before it ends them itself. */
const QUIET_SOURCE_WAIT_MS = 30_000;
/** The branch made while a checkout is measured (section 2), and how long after it the checkout goes. */
const CONCURRENT_BRANCH = "c";
const DURING_BRANCH_DELAY_MS = 200;
/** Checkout round trips before the measured ones. */
const CHECKOUT_WARMUP = 3;

const STORE_SETTINGS = bulkLoadSettings(opts.fsync);
const DURABILITY_TEXT = opts.fsync
  ? "fsync=on, synchronous_commit=on, full_page_writes=on"
  : "fsync=off, synchronous_commit=off, full_page_writes=off: NOT durable";

// ---------------------------------------------------------------------------------------------
// Progress and cleanup

const { progress, phase, endPhase } = progressReporter();

cleanUpAtExit("stopping Strata and every process");

/** The bench's own processes: Strata with its children (pg_dump, pg_restore), the store, and this one. */
function ownProcesses(s: StrataProcess): OwnProcesses {
  return { pids: [], postmasters: [strataPid(s), storePostmaster(s)] };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ident = (name: string) => pg.escapeIdentifier(name);
const literal = (text: string) => `'${text.replace(/'/g, "''")}'`;
const seconds = (fromMs: number) => (performance.now() - fromMs) / 1000;

interface LoadSeen {
  /** 1-, 5- and 15-minute load averages when the bench started. */
  atStart: number[];
  waitedSeconds: number;
  /** The 1-minute load average when the measurements started. */
  whenStarted: number;
  /** Whether it was below --max-load then (undefined: not asked to wait). */
  quiet?: boolean;
  atEnd?: number[];
}

/** Wait, up to --load-wait-min, until the 1-minute load average is below --max-load. */
async function waitForQuietMachine(): Promise<LoadSeen> {
  const atStart = os.loadavg().map((l) => Number(l.toFixed(2)));
  progress(`load average (1, 5, 15 min): ${atStart.join(", ")} on ${CPUS} CPUs`);
  if (opts.maxLoad <= 0) return { atStart, waitedSeconds: 0, whenStarted: atStart[0] };
  const t0 = performance.now();
  let load = os.loadavg()[0];
  let lastReport = t0;
  while (load >= opts.maxLoad && performance.now() - t0 < opts.loadWaitMs) {
    if (performance.now() - lastReport > 30_000) {
      lastReport = performance.now();
      progress(`  waiting for the 1-minute load average (${load.toFixed(2)}) to fall below ${opts.maxLoad}`);
    }
    await sleep(5_000);
    load = os.loadavg()[0];
  }
  const quiet = load < opts.maxLoad;
  const waitedSeconds = seconds(t0);
  progress(
    quiet
      ? `1-minute load average ${load.toFixed(2)} < ${opts.maxLoad}${waitedSeconds > 1 ? ` after ${fixed(waitedSeconds, 0)} s` : ""}: starting`
      : `1-minute load average still ${load.toFixed(2)} after ${fixed(waitedSeconds / 60, 1)} min: starting anyway`,
  );
  return { atStart, waitedSeconds, whenStarted: Number(load.toFixed(2)), quiet };
}

// ---------------------------------------------------------------------------------------------
// Child processes: pg_dump and pg_restore against the store

/**
 * libpq's environment for `s`'s store, as copy-database.ts sets it (with Strata's INTERNAL_WRITER
 * options), for pg_dump and pg_restore.
 */
function storeEnv(s: StrataProcess): Record<string, string> {
  const config = storeConfig(s);
  return {
    PGHOST: String(config.host),
    PGPORT: String(config.port),
    PGUSER: String(config.user),
    PGPASSWORD: String(config.password),
    PGOPTIONS: INTERNAL_WRITER,
  };
}

/**
 * pg_dump --format=custom of `source` piped into pg_restore into `target`, both on `s`'s store;
 * `compress0`: --compress=0, as Strata's copy. Resolves to the bytes of the dump.
 */
async function dumpRestore(s: StrataProcess, source: string, target: string, compress0: boolean) {
  return dumpIntoRestore(
    ["--format=custom", ...(compress0 ? ["--compress=0"] : []), "--dbname", source],
    ["--exit-on-error", "--dbname", target],
    storeEnv(s),
  );
}

// ---------------------------------------------------------------------------------------------
// The source database, grown in stages

interface Stage {
  targetMb: number;
  /** Rows of `bulk` (ids 1..rows). */
  rows: number;
  /** Rows of `events`: one per small commit so far. */
  events: number;
  /** Commits of the database so far (dolt_log). */
  commits: number;
  bulkCommitsAdded: number;
  smallCommitsAdded: number;
  bulkSeconds: number;
  smallSeconds: number;
  vacuumSeconds: number;
  head: string;
  /** bytes (user tables + history): what --sizes sets; databaseBytes: the basis of every MB/s. */
  sizes: DatabaseSizes;
}

/** What a copy of the source must hold: rows, commits and HEAD. */
interface Expected {
  rows: number;
  events: number;
  commits: number;
  head: string;
}

/**
 * The front-door session on main that grows the source and makes and deletes the branches; closed
 * for FILE_COPY (the source must have no session), opened again when next needed.
 */
class MainSession {
  client: pg.Client | undefined;
  constructor(private readonly s: StrataProcess) {}
  async get(): Promise<pg.Client> {
    this.client ??= await connect(this.s.connectionConfig(SOURCE_DATABASE));
    return this.client;
  }
  async close(): Promise<void> {
    await this.client?.end().catch(() => {});
    this.client = undefined;
  }
}

/** Grows the source through the front-door session on main, stage by stage. */
class Source {
  rows = 0;
  events = 0;
  bulkCommits = 0;

  constructor(private readonly session: MainSession) {}

  async create(): Promise<void> {
    const c = await this.session.get();
    await c.query(CREATE_BULK_TABLE);
    await c.query("CREATE TABLE events (id bigint PRIMARY KEY, n int NOT NULL, note text NOT NULL)");
  }

  async growTo(targetMb: number): Promise<Stage> {
    const c = await this.session.get();
    const target = targetMb * MB;
    const bulkStart = performance.now();
    let sizes = await databaseSizes(c);
    let perRow = this.rows > 0 ? sizes.bytes / this.rows : BULK_ROW_BYTES_GUESS;
    let bulkCommitsAdded = 0;
    // The small commits add little: the bulk load stops a little short of the target.
    while (sizes.bytes < target * 0.97) {
      const chunk = Math.max(1, Math.min(BULK_CHUNK_ROWS, Math.ceil((target * 0.97 - sizes.bytes) / perRow)));
      await bulkLoadCommit(c, this.rows + 1, this.rows + chunk, this.bulkCommits === 0);
      this.rows += chunk;
      this.bulkCommits++;
      bulkCommitsAdded++;
      sizes = await databaseSizes(c);
      perRow = sizes.bytes / this.rows;
      progress(
        `  bulk commit: ${thousands(this.rows)} rows, ${fixed(sizes.userBytes / MB, 0)} MB of tables + ${fixed(sizes.historyBytes / MB, 0)} MB of history (${fixed(seconds(bulkStart), 1)} s)`,
      );
    }
    const bulkSeconds = seconds(bulkStart);
    // As bench/remotes.ts: the bulk commits left strata.working_changes full of dead rows and with
    // statistics that say it is full; do what autovacuum would do, now.
    if (bulkCommitsAdded > 0)
      await c.query("VACUUM ANALYZE strata.working_changes, strata.working_schema_changes");

    const smallStart = performance.now();
    for (let done = 0; done < opts.commits; ) {
      const parts: string[] = [];
      for (let i = 0; i < GEN_BATCH && done < opts.commits; i++, done++) {
        const n = ++this.events;
        const id = 1 + ((n * 7919) % this.rows);
        parts.push(
          `BEGIN; UPDATE bulk SET grp = grp + 1 WHERE id = ${id}; ` +
            `INSERT INTO events VALUES (${n}, ${n % 1000}, md5('${n}')); ` +
            `SELECT dolt_commit('-am', 'small commit ${n}'); COMMIT;`,
        );
      }
      await c.query(parts.join("\n"));
    }
    const smallSeconds = seconds(smallStart);
    const vacuumStart = performance.now();
    await c.query("VACUUM ANALYZE");
    const vacuumSeconds = seconds(vacuumStart);

    const [state] = (
      await c.query<{ commits: number; head: string; dirty: number; rows: number; events: number }>(
        `SELECT (SELECT count(*)::int FROM dolt_log) AS commits, dolt.commit_hash('HEAD') AS head,
                (SELECT count(*)::int FROM dolt_status) AS dirty,
                (SELECT count(*)::int FROM bulk) AS rows, (SELECT count(*)::int FROM events) AS events`,
      )
    ).rows;
    if (state.dirty !== 0) throw new Error(`the source has ${state.dirty} uncommitted tables (dolt_status)`);
    if (state.rows !== this.rows || state.events !== this.events)
      throw new Error(
        `the source has ${state.rows} bulk rows and ${state.events} events, expected ${this.rows} and ${this.events}`,
      );
    if (state.commits !== this.bulkCommits + this.events)
      throw new Error(`the source has ${state.commits} commits, expected ${this.bulkCommits + this.events}`);
    return {
      targetMb,
      rows: this.rows,
      events: this.events,
      commits: state.commits,
      bulkCommitsAdded,
      smallCommitsAdded: opts.commits,
      bulkSeconds,
      smallSeconds,
      vacuumSeconds,
      head: state.head,
      sizes: await databaseSizes(c),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Branch creation against database size

type Method = "dolt_branch" | "dump_strata" | "dump_fc" | "file_copy";
const METHODS: Method[] = ["dolt_branch", "dump_strata", "dump_fc", "file_copy"];
const METHOD_LABEL: Record<Method, string> = {
  dolt_branch: "SELECT dolt_branch('b<k>')",
  dump_strata: "pg_dump -Fc --compress=0 | pg_restore",
  dump_fc: "pg_dump -Fc | pg_restore (gzip)",
  file_copy: "CREATE DATABASE ... STRATEGY FILE_COPY",
};

interface Step {
  run: number;
  method: Method;
  seconds?: number;
  /** dolt_branch: Strata's "branch created" log line (the copy and its working-set reset). */
  serverSeconds?: number;
  /** dolt_branch('-D', ...) of the branch just made. */
  deleteSeconds?: number;
  /** pg_dump's output, for the dump | restore methods. */
  dumpBytes?: number;
  /** FILE_COPY: how long the source took to have no other session (untimed), and sessions ended. */
  quietWaitSeconds?: number;
  sessionsEnded?: number;
  /** Share of the machine's CPUs used by processes not this bench's during the step. */
  otherCpuShare?: number;
  error?: string;
}

interface RestoreItem {
  section: "pre-data" | "data" | "post-data";
  item: string;
  seconds: number;
}

interface Breakdown {
  dumpSeconds?: number;
  dumpBytes?: number;
  createSeconds?: number;
  preDataSeconds?: number;
  dataSeconds?: number;
  postDataSeconds?: number;
  /** The longest restored items (by pg_restore -v's announcements), longest first. */
  longest?: RestoreItem[];
  /** Seconds per kind of item (INDEX, CONSTRAINT, TRIGGER, data, ...), over all sections. */
  byKind?: Record<string, number>;
  error?: string;
}

interface SizeResult {
  targetMb: number;
  stage?: Stage;
  steps: Step[];
  breakdown?: Breakdown;
  error?: string;
}

async function checkpoint(s: StrataProcess): Promise<void> {
  await withConnection(storeConfig(s), (c) => c.query("CHECKPOINT"));
}

/** A copy on the store (reached directly) holds the source's rows and history. */
async function checkStoreCopy(s: StrataProcess, database: string, want: Expected): Promise<void> {
  await withConnection(storeConfig(s, database), async (c) => {
    const [got] = (
      await c.query<{ rows: number; events: number; commits: number; head: string }>(
        `SELECT (SELECT count(*)::int FROM public.bulk) AS rows, (SELECT count(*)::int FROM public.events) AS events,
                (SELECT count(*)::int FROM strata.commits) AS commits,
                (SELECT hash FROM strata.commits ORDER BY seq DESC LIMIT 1) AS head`,
      )
    ).rows;
    compare(database, got, want);
  });
}

/** A branch, read through the front door, holds the source's rows and history, and nothing uncommitted. */
async function checkBranch(s: StrataProcess, branch: string, want: Expected): Promise<void> {
  const database = `${SOURCE_DATABASE}/${branch}`;
  await withConnection(s.connectionConfig(database), async (c) => {
    const [got] = (
      await c.query<{
        rows: number;
        events: number;
        commits: number;
        head: string;
        dirty: number;
        b: string;
      }>(
        `SELECT (SELECT count(*)::int FROM bulk) AS rows, (SELECT count(*)::int FROM events) AS events,
                (SELECT count(*)::int FROM dolt_log) AS commits, dolt.commit_hash('HEAD') AS head,
                (SELECT count(*)::int FROM dolt_status) AS dirty, active_branch() AS b`,
      )
    ).rows;
    compare(database, got, want);
    if (got.dirty !== 0) throw new Error(`${database} has ${got.dirty} uncommitted tables`);
    if (got.b !== branch) throw new Error(`${database}: active_branch() is ${got.b}`);
  });
}

function compare(what: string, got: Expected, want: Expected): void {
  const problems: string[] = [];
  if (got.rows !== want.rows) problems.push(`bulk has ${got.rows} rows, expected ${want.rows}`);
  if (got.events !== want.events) problems.push(`events has ${got.events} rows, expected ${want.events}`);
  if (got.commits !== want.commits) problems.push(`${got.commits} commits, expected ${want.commits}`);
  if (got.head !== want.head) problems.push(`HEAD ${got.head}, expected ${want.head}`);
  if (problems.length) throw new Error(`the copy ${what} differs from the source: ${problems.join("; ")}`);
}

/** Strata's "branch created" line for `branch` (its own timing of the copy), in seconds. */
function branchCreatedSeconds(s: StrataProcess, branch: string): number | undefined {
  for (const line of s.logs.split("\n").reverse()) {
    if (!line.includes('"msg":"branch created"')) continue;
    try {
      const entry = JSON.parse(line);
      if (entry.database === SOURCE_DATABASE && entry.branch === branch) return entry.ms / 1000;
    } catch {
      // not a JSON line
    }
  }
  return undefined;
}

/** Wait until `database` has no session but ours; after QUIET_SOURCE_WAIT_MS, end the rest. */
async function quietSource(admin: pg.Client, database: string): Promise<{ waited: number; ended: number }> {
  const t0 = performance.now();
  for (;;) {
    const { rows } = await admin.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
      [database],
    );
    if (rows[0].n === 0) return { waited: seconds(t0), ended: 0 };
    if (performance.now() - t0 > QUIET_SOURCE_WAIT_MS) {
      const ended = await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        [database],
      );
      progress(`  ${ended.rowCount} sessions on ${database} did not go: ended them for FILE_COPY`);
      await sleep(200);
      return { waited: seconds(t0), ended: ended.rowCount ?? 0 };
    }
    await sleep(50);
  }
}

let branchCounter = 0;
let copyCounter = 0;

async function runStep(
  s: StrataProcess,
  main: MainSession,
  method: Method,
  step: Step,
  want: Expected,
  mb: number,
): Promise<void> {
  checkAlive(s);
  await checkpoint(s);
  const own = ownProcesses(s);
  let window = loadWindow(own);
  let t0 = performance.now();
  const done = () => {
    step.seconds = seconds(t0);
    const load = window();
    step.otherCpuShare = load.otherCpuSeconds / (load.seconds * CPUS);
  };
  const mbps = () => `${fixed(step.seconds, 2)} s, ${fixed(mb / step.seconds!, 1)} MB/s`;
  if (method === "dolt_branch") {
    const branch = `b${++branchCounter}`;
    const client = await main.get();
    window = loadWindow(own);
    t0 = performance.now();
    await withDeadline(client.query(`SELECT dolt_branch(${literal(branch)})`), opts.timeoutMs, "dolt_branch");
    done();
    step.serverSeconds = branchCreatedSeconds(s, branch);
    try {
      await checkBranch(s, branch, want);
    } finally {
      const d0 = performance.now();
      await client.query(`SELECT dolt_branch('-D', ${literal(branch)})`);
      step.deleteSeconds = seconds(d0);
    }
    progress(
      `  run ${step.run}: dolt_branch('${branch}') ${mbps()} (Strata's log: ${fixed(step.serverSeconds, 2)} s); ` +
        `dolt_branch('-D') ${fixed(step.deleteSeconds, 2)} s`,
    );
    return;
  }
  const target = `${SOURCE_DATABASE}_copy_${++copyCounter}`;
  const admin = await connect(storeConfig(s));
  try {
    if (method === "file_copy") {
      await main.close();
      const quiet = await quietSource(admin, SOURCE_DATABASE);
      step.quietWaitSeconds = quiet.waited;
      step.sessionsEnded = quiet.ended;
      window = loadWindow(own);
      t0 = performance.now();
      await withDeadline(
        admin.query(`CREATE DATABASE ${ident(target)} TEMPLATE ${ident(SOURCE_DATABASE)} STRATEGY FILE_COPY`),
        opts.timeoutMs,
        "CREATE DATABASE ... FILE_COPY",
      );
      done();
      progress(
        `  run ${step.run}: FILE_COPY ${mbps()} (the source was quiet after ${fixed(quiet.waited, 1)} s, untimed)`,
      );
    } else {
      window = loadWindow(own);
      t0 = performance.now();
      await admin.query(`CREATE DATABASE ${ident(target)} TEMPLATE template0`);
      step.dumpBytes = await withDeadline(
        dumpRestore(s, SOURCE_DATABASE, target, method === "dump_strata"),
        opts.timeoutMs,
        "pg_dump | pg_restore",
      );
      done();
      progress(
        `  run ${step.run}: ${METHOD_LABEL[method]} ${mbps()}, dump ${fixed(step.dumpBytes / MB, 1)} MB`,
      );
    }
    await checkStoreCopy(s, target, want);
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${ident(target)} WITH (FORCE)`).catch(() => {});
    await admin.end().catch(() => {});
  }
}

/** Where the copy's time goes: pg_dump into a file, then pg_restore of each section, item by item. */
async function breakdown(s: StrataProcess, dir: string): Promise<Breakdown> {
  const out: Breakdown = {};
  const file = join(dir, "bench.dump");
  const target = `${SOURCE_DATABASE}_sections`;
  const admin = await connect(storeConfig(s));
  try {
    await checkpoint(s);
    let t0 = performance.now();
    const dump = runPgProgram(
      "pg_dump",
      ["--format=custom", "--compress=0", "--file", file, "--dbname", SOURCE_DATABASE],
      { pgEnv: storeEnv(s), stdin: "ignore", stdout: "ignore" },
    );
    await withDeadline(dump.done, opts.timeoutMs, "pg_dump");
    out.dumpSeconds = seconds(t0);
    out.dumpBytes = statSync(file).size;
    await checkpoint(s);
    t0 = performance.now();
    await admin.query(`CREATE DATABASE ${ident(target)} TEMPLATE template0`);
    out.createSeconds = seconds(t0);
    const items: RestoreItem[] = [];
    for (const section of ["pre-data", "data", "post-data"] as const) {
      let current: { item: string; at: number } | undefined;
      const close = (at: number) => {
        if (current) items.push({ section, item: current.item, seconds: (at - current.at) / 1000 });
        current = undefined;
      };
      t0 = performance.now();
      // pg_restore -v announces each item before it restores it: an item lasts until the next.
      const restore = runPgProgram(
        "pg_restore",
        ["--exit-on-error", "--verbose", `--section=${section}`, "--dbname", target, file],
        {
          pgEnv: storeEnv(s),
          stdin: "ignore",
          stdout: "ignore",
          onLine: (line, at) => {
            const m = /^pg_restore: (?:creating|processing|executing) (.*)$/.exec(line);
            if (!m) return;
            close(at);
            current = { item: m[1], at };
          },
        },
      );
      await withDeadline(restore.done, opts.timeoutMs, `pg_restore --section=${section}`);
      close(performance.now());
      const took = seconds(t0);
      if (section === "pre-data") out.preDataSeconds = took;
      else if (section === "data") out.dataSeconds = took;
      else out.postDataSeconds = took;
    }
    out.longest = [...items].sort((a, b) => b.seconds - a.seconds).slice(0, 10);
    const byKind: Record<string, number> = {};
    for (const i of items) {
      const kind = /^data for/.test(i.item)
        ? "table data"
        : (/^([A-Z][A-Z ]*[A-Z])\b/.exec(i.item)?.[1] ?? "other");
      byKind[kind] = (byKind[kind] ?? 0) + i.seconds;
    }
    out.byKind = byKind;
    progress(
      `  breakdown: pg_dump to a file ${fixed(out.dumpSeconds, 2)} s (${fixed(out.dumpBytes / MB, 0)} MB); pg_restore pre-data ${fixed(out.preDataSeconds, 2)} s, ` +
        `data ${fixed(out.dataSeconds, 2)} s, post-data ${fixed(out.postDataSeconds, 2)} s; longest: ` +
        out.longest
          .slice(0, 3)
          .map((i) => `${i.item} ${fixed(i.seconds, 2)} s`)
          .join("; "),
    );
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${ident(target)} WITH (FORCE)`).catch(() => {});
    await admin.end().catch(() => {});
    rmSync(file, { force: true });
  }
  return out;
}

interface CreationResult {
  sizes: SizeResult[];
  error?: string;
}

async function creationPart(s: StrataProcess, main: MainSession, source: Source): Promise<CreationResult> {
  phase("creation");
  const out: CreationResult = { sizes: [] };
  const dumpDir = tempDir("strata-bench-branches-dump-");
  try {
    await source.create();
    for (const targetMb of opts.sizesMb) {
      const size: SizeResult = { targetMb, steps: [] };
      out.sizes.push(size);
      progress(
        `growing ${SOURCE_DATABASE} to about ${targetMb} MB of tables + history, + ${opts.commits} small commits`,
      );
      const stage = await source.growTo(targetMb);
      size.stage = stage;
      const mb = stage.sizes.databaseBytes / MB;
      progress(
        `${SOURCE_DATABASE}: ${thousands(stage.rows)} rows, ${thousands(stage.commits)} commits; tables ${fixed(stage.sizes.userBytes / MB, 1)} MB + ` +
          `history ${fixed(stage.sizes.historyBytes / MB, 1)} MB; pg_database_size ${fixed(mb, 1)} MB ` +
          `(bulk ${fixed(stage.bulkSeconds, 1)} s, small commits ${fixed(stage.smallSeconds, 1)} s, VACUUM ${fixed(stage.vacuumSeconds, 1)} s)`,
      );
      const want: Expected = {
        rows: stage.rows,
        events: stage.events,
        commits: stage.commits,
        head: stage.head,
      };
      for (let run = 1; run <= opts.runs; run++) {
        const k = (run - 1) % METHODS.length;
        const order = [...METHODS.slice(k), ...METHODS.slice(0, k)];
        for (const method of order) {
          const step: Step = { run, method };
          size.steps.push(step);
          try {
            await runStep(s, main, method, step, want, mb);
          } catch (err) {
            const message = (withStrataLogTail(err, method === "dolt_branch" ? s : undefined) as Error)
              .message;
            progress(`  run ${run} ${method} FAILED: ${message}`);
            step.error = message;
            step.seconds = undefined;
          }
        }
      }
      try {
        size.breakdown = await breakdown(s, dumpDir);
      } catch (err) {
        const message = (err as Error).message;
        progress(`  breakdown FAILED: ${message}`);
        size.breakdown = { error: message };
      }
    }
  } catch (err) {
    const message = (withStrataLogTail(err, s) as Error).message;
    progress(`FAILED: ${message}`);
    out.error = message;
  } finally {
    rmSync(dumpDir, { recursive: true, force: true });
    endPhase();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 2. Checkout, 3. reads

interface CheckoutResult {
  toBranchMs: number[];
  toMainMs: number[];
  /** New front-door connection to bench/b: connect + SELECT 1 + close. */
  connectMs: number[];
  /**
   * One dolt_checkout('b') sent DURING_BRANCH_DELAY_MS after another session started
   * dolt_branch('c') of the same database (Strata runs a database's branch calls one at a time).
   */
  duringBranch?: { checkoutMs: number; branchMs: number; checkoutDoneBeforeBranch: boolean };
  otherCpuShare?: number;
  error?: string;
}

async function checkoutPart(s: StrataProcess): Promise<CheckoutResult> {
  phase("checkout");
  const out: CheckoutResult = { toBranchMs: [], toMainMs: [], connectMs: [] };
  const client = await connect(s.connectionConfig(SOURCE_DATABASE));
  try {
    const branchOf = async () => (await client.query<{ b: string }>("SELECT active_branch() AS b")).rows[0].b;
    const checkout = async (branch: string) => {
      const t0 = performance.now();
      await client.query(`SELECT dolt_checkout(${literal(branch)})`);
      const ms = performance.now() - t0;
      const now = await branchOf();
      if (now !== branch) throw new Error(`after dolt_checkout('${branch}') the session is on ${now}`);
      return ms;
    };
    progress(`${opts.checkouts} round trips of dolt_checkout('${READ_BRANCH}') and dolt_checkout('main')`);
    for (let i = 0; i < CHECKOUT_WARMUP; i++) {
      await checkout(READ_BRANCH);
      await checkout("main");
    }
    const window = loadWindow(ownProcesses(s));
    for (let i = 0; i < opts.checkouts; i++) {
      out.toBranchMs.push(await checkout(READ_BRANCH));
      out.toMainMs.push(await checkout("main"));
    }
    const load = window();
    out.otherCpuShare = load.otherCpuSeconds / (load.seconds * CPUS);
    progress(
      `  dolt_checkout('${READ_BRANCH}') p50 ${fixed(summarizeLatencies(out.toBranchMs).p50Ms, 2)} ms, ` +
        `dolt_checkout('main') p50 ${fixed(summarizeLatencies(out.toMainMs).p50Ms, 2)} ms`,
    );
    const database = `${SOURCE_DATABASE}/${READ_BRANCH}`;
    for (let i = 0; i < CHECKOUT_WARMUP + opts.checkouts; i++) {
      const t0 = performance.now();
      await withConnection(s.connectionConfig(database), (c) => c.query("SELECT 1"));
      if (i >= CHECKOUT_WARMUP) out.connectMs.push(performance.now() - t0);
    }
    progress(`  new connection to ${database} p50 ${fixed(summarizeLatencies(out.connectMs).p50Ms, 2)} ms`);

    // A checkout while another session makes a branch of the same database.
    progress(
      `dolt_checkout('${READ_BRANCH}') ${DURING_BRANCH_DELAY_MS} ms after another session started dolt_branch('${CONCURRENT_BRANCH}')`,
    );
    await checkpoint(s);
    const maker = await connect(s.connectionConfig(SOURCE_DATABASE));
    try {
      let branchDoneAt = 0;
      const b0 = performance.now();
      const making = maker.query(`SELECT dolt_branch(${literal(CONCURRENT_BRANCH)})`).then(() => {
        branchDoneAt = performance.now();
      });
      making.catch(() => {});
      await sleep(DURING_BRANCH_DELAY_MS);
      const c0 = performance.now();
      const checkoutMs = await checkout(READ_BRANCH);
      const checkoutDoneAt = c0 + checkoutMs;
      await making;
      out.duringBranch = {
        checkoutMs,
        branchMs: branchDoneAt - b0,
        checkoutDoneBeforeBranch: branchDoneAt === 0 || checkoutDoneAt < branchDoneAt,
      };
      progress(
        `  dolt_checkout took ${fixed(checkoutMs, 1)} ms; the dolt_branch ${fixed(out.duringBranch.branchMs, 0)} ms` +
          (out.duringBranch.checkoutDoneBeforeBranch ? "" : " (the checkout returned after it)"),
      );
      await checkout("main");
      await maker.query(`SELECT dolt_branch('-D', ${literal(CONCURRENT_BRANCH)})`);
    } finally {
      await maker.end().catch(() => {});
    }
  } catch (err) {
    const message = (withStrataLogTail(err, s) as Error).message;
    progress(`FAILED: ${message}`);
    out.error = message;
  } finally {
    await client.end().catch(() => {});
    endPhase();
  }
  return out;
}

type ReadTarget = "main" | "checkout" | "direct";
const READ_TARGETS: ReadTarget[] = ["main", "checkout", "direct"];
const READ_LABEL: Record<ReadTarget, string> = {
  main: "session on main (bench)",
  checkout: `session moved with dolt_checkout('${READ_BRANCH}')`,
  direct: `session connected to bench/${READ_BRANCH}`,
};

interface ReadPass {
  queriesPerSecond: number;
  latency: LatencySummary;
  otherCpuShare: number;
}

interface ReadRound {
  round: number;
  order: ReadTarget[];
  passes: Partial<Record<ReadTarget, ReadPass>>;
}

interface ReadResult {
  rows?: number;
  rounds: ReadRound[];
  error?: string;
}

/** `count` point lookups over `client`, one at a time, with keys from `seed`. */
async function lookups(s: StrataProcess, client: pg.Client, rows: number, count: number, seed: number) {
  const random = seededRandom(seed);
  const ms: number[] = [];
  const window = loadWindow(ownProcesses(s));
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const id = randomInt(random, 1, rows);
    const q0 = performance.now();
    const r = await client.query({
      name: "lookup",
      text: "SELECT grp, payload FROM bulk WHERE id = $1",
      values: [id],
    });
    ms.push(performance.now() - q0);
    if (r.rowCount !== 1) throw new Error(`no row with id ${id}`);
  }
  const took = seconds(t0);
  const load = window();
  return {
    queriesPerSecond: count / took,
    latency: summarizeLatencies(ms),
    otherCpuShare: load.otherCpuSeconds / (load.seconds * CPUS),
  };
}

async function readPart(s: StrataProcess, rows: number): Promise<ReadResult> {
  phase("reads");
  const out: ReadResult = { rows, rounds: [] };
  const clients: Partial<Record<ReadTarget, pg.Client>> = {};
  try {
    clients.main = await connect(s.connectionConfig(SOURCE_DATABASE));
    clients.checkout = await connect(s.connectionConfig(SOURCE_DATABASE));
    await clients.checkout.query(`SELECT dolt_checkout(${literal(READ_BRANCH)})`);
    clients.direct = await connect(s.connectionConfig(`${SOURCE_DATABASE}/${READ_BRANCH}`));
    for (const t of READ_TARGETS) {
      const [{ b }] = (await clients[t]!.query<{ b: string }>("SELECT active_branch() AS b")).rows;
      if (b !== (t === "main" ? "main" : READ_BRANCH)) throw new Error(`the ${t} session is on branch ${b}`);
    }
    progress(`warm-up: ${thousands(opts.reads)} lookups on each target`);
    for (const t of READ_TARGETS) await lookups(s, clients[t]!, rows, opts.reads, opts.seed + 1_000_000);
    for (let round = 1; round <= opts.readRounds; round++) {
      const k = (round - 1) % READ_TARGETS.length;
      const order = [...READ_TARGETS.slice(k), ...READ_TARGETS.slice(0, k)];
      const r: ReadRound = { round, order, passes: {} };
      out.rounds.push(r);
      for (const t of order) {
        checkAlive(s);
        r.passes[t] = await lookups(s, clients[t]!, rows, opts.reads, opts.seed + round);
      }
      progress(
        `round ${round}: ` +
          READ_TARGETS.map(
            (t) =>
              `${t} ${fixed(r.passes[t]!.queriesPerSecond, 0)}/s (p50 ${fixed(r.passes[t]!.latency.p50Ms, 3)} ms)`,
          ).join(", "),
      );
    }
  } catch (err) {
    const message = (withStrataLogTail(err, s) as Error).message;
    progress(`FAILED: ${message}`);
    out.error = message;
  } finally {
    for (const c of Object.values(clients)) await c?.end().catch(() => {});
    endPhase();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Report

const ok = (steps: Step[], method: Method) =>
  steps.filter((x) => x.method === method && x.seconds !== undefined);

function sizeSummary(size: SizeResult) {
  const mb = (size.stage?.sizes.databaseBytes ?? Number.NaN) / MB;
  const of = (method: Method, pick: (x: Step) => number | undefined) => {
    const values = ok(size.steps, method)
      .map(pick)
      .filter((v): v is number => v !== undefined && Number.isFinite(v));
    return { n: values.length, s: summarize(values) };
  };
  /** dolt_branch's seconds / `method`'s, run by run (both succeeded). */
  const ratio = (method: Method) => {
    const values: number[] = [];
    for (let run = 1; run <= opts.runs; run++) {
      const a = size.steps.find((x) => x.run === run && x.method === "dolt_branch")?.seconds;
      const b = size.steps.find((x) => x.run === run && x.method === method)?.seconds;
      if (a !== undefined && b !== undefined) values.push(a / b);
    }
    return { n: values.length, s: summarize(values) };
  };
  const methods = Object.fromEntries(
    METHODS.map((m) => [
      m,
      { seconds: of(m, (x) => x.seconds), mbps: of(m, (x) => mb / (x.seconds ?? Number.NaN)) },
    ]),
  ) as Record<Method, { seconds: ReturnType<typeof of>; mbps: ReturnType<typeof of> }>;
  return {
    mb,
    methods,
    serverSeconds: of("dolt_branch", (x) => x.serverSeconds),
    deleteSeconds: of("dolt_branch", (x) => x.deleteSeconds),
    dumpMb: of("dump_strata", (x) => (x.dumpBytes ?? Number.NaN) / MB),
    dumpFcMb: of("dump_fc", (x) => (x.dumpBytes ?? Number.NaN) / MB),
    ratioDumpStrata: ratio("dump_strata"),
    ratioDumpFc: ratio("dump_fc"),
    ratioFileCopy: ratio("file_copy"),
    otherCpuShare: summarize(
      size.steps.map((x) => x.otherCpuShare).filter((v): v is number => v !== undefined),
    ),
  };
}

function row(label: string, n: number, s: Summary, unit: string, note = "", digits = 2): string[] {
  return [label, String(n), fixed(s.min, digits), fixed(s.median, digits), fixed(s.max, digits), unit, note];
}

const one = (v: number | undefined): Summary => ({
  min: v ?? Number.NaN,
  median: v ?? Number.NaN,
  max: v ?? Number.NaN,
});

function creationRows(creation: CreationResult): string[][] {
  const rows: string[][] = [];
  for (const size of creation.sizes) {
    if (!size.stage) continue;
    const x = sizeSummary(size);
    const tag = `${fixed(x.mb, 0)} MB db`;
    const m = x.methods;
    const mbpsNote = (method: Method) => `${fixed(m[method].mbps.s.median, 1)} MB/s (median)`;
    rows.push(
      row(
        `[${tag}] dolt_branch (front door)`,
        m.dolt_branch.seconds.n,
        m.dolt_branch.seconds.s,
        "s",
        mbpsNote("dolt_branch"),
      ),
      row(
        `[${tag}]   dolt_branch throughput`,
        m.dolt_branch.mbps.n,
        m.dolt_branch.mbps.s,
        "MB/s",
        "of pg_database_size",
        1,
      ),
      row(
        `[${tag}]   Strata's own timing of it`,
        x.serverSeconds.n,
        x.serverSeconds.s,
        "s",
        "'branch created' log line",
      ),
      row(
        `[${tag}] ${METHOD_LABEL.dump_strata}`,
        m.dump_strata.seconds.n,
        m.dump_strata.seconds.s,
        "s",
        `${mbpsNote("dump_strata")}; what dolt_branch runs`,
      ),
      row(
        `[${tag}] ${METHOD_LABEL.dump_fc}`,
        m.dump_fc.seconds.n,
        m.dump_fc.seconds.s,
        "s",
        `${mbpsNote("dump_fc")}; dump ${fixed(x.dumpFcMb.s.median, 0)} MB vs ${fixed(x.dumpMb.s.median, 0)} uncompressed`,
      ),
      row(
        `[${tag}] ${METHOD_LABEL.file_copy}`,
        m.file_copy.seconds.n,
        m.file_copy.seconds.s,
        "s",
        `${mbpsNote("file_copy")}; needs the source idle`,
      ),
      row(
        `[${tag}] dolt_branch / pg_dump --compress=0|restore`,
        x.ratioDumpStrata.n,
        x.ratioDumpStrata.s,
        "x",
        "time, per run",
      ),
      row(
        `[${tag}] dolt_branch / pg_dump -Fc|restore`,
        x.ratioDumpFc.n,
        x.ratioDumpFc.s,
        "x",
        "time, per run",
      ),
      row(`[${tag}] dolt_branch / FILE_COPY`, x.ratioFileCopy.n, x.ratioFileCopy.s, "x", "time, per run"),
      row(
        `[${tag}] dolt_branch('-D', ...)`,
        x.deleteSeconds.n,
        x.deleteSeconds.s,
        "s",
        "DROP DATABASE ... WITH (FORCE)",
      ),
    );
    const b = size.breakdown;
    if (b && !b.error) {
      const total =
        (b.dumpSeconds ?? 0) +
        (b.createSeconds ?? 0) +
        (b.preDataSeconds ?? 0) +
        (b.dataSeconds ?? 0) +
        (b.postDataSeconds ?? 0);
      const share = (v: number | undefined) =>
        `${fixed((100 * (v ?? Number.NaN)) / total, 0)}% of the sequential total`;
      const indexes = (b.byKind?.INDEX ?? 0) + (b.byKind?.CONSTRAINT ?? 0);
      rows.push(
        row(
          `[${tag}]   breakdown: pg_dump --compress=0 to a file`,
          1,
          one(b.dumpSeconds),
          "s",
          share(b.dumpSeconds),
        ),
        row(
          `[${tag}]   breakdown: pg_restore pre-data`,
          1,
          one(b.preDataSeconds),
          "s",
          share(b.preDataSeconds),
        ),
        row(`[${tag}]   breakdown: pg_restore data (COPY)`, 1, one(b.dataSeconds), "s", share(b.dataSeconds)),
        row(
          `[${tag}]   breakdown: pg_restore post-data`,
          1,
          one(b.postDataSeconds),
          "s",
          `${share(b.postDataSeconds)}; indexes + keys ${fixed(indexes, 2)} s`,
        ),
      );
    }
  }
  return rows;
}

function checkoutSummary(c: CheckoutResult) {
  return {
    toBranch: summarizeLatencies(c.toBranchMs),
    toMain: summarizeLatencies(c.toMainMs),
    connect: summarizeLatencies(c.connectMs),
  };
}

function checkoutRows(c: CheckoutResult): string[][] {
  const lat = (l: LatencySummary): Summary => ({ min: l.minMs, median: l.p50Ms, max: l.maxMs });
  const x = checkoutSummary(c);
  return [
    row(
      `dolt_checkout('${READ_BRANCH}'), main → branch`,
      x.toBranch.samples,
      lat(x.toBranch),
      "ms",
      `p90 ${fixed(x.toBranch.p90Ms, 2)} ms`,
    ),
    row(
      "dolt_checkout('main'), branch → main",
      x.toMain.samples,
      lat(x.toMain),
      "ms",
      `p90 ${fixed(x.toMain.p90Ms, 2)} ms`,
    ),
    ...(c.duringBranch
      ? [
          row(
            `dolt_checkout('${READ_BRANCH}') during a dolt_branch('${CONCURRENT_BRANCH}')`,
            1,
            one(c.duringBranch.checkoutMs),
            "ms",
            `sent ${DURING_BRANCH_DELAY_MS} ms into a ${fixed(c.duringBranch.branchMs / 1000, 2)} s dolt_branch by another session`,
            1,
          ),
        ]
      : []),
    row(
      `new connection to bench/${READ_BRANCH} (reference)`,
      x.connect.samples,
      lat(x.connect),
      "ms",
      "connect + SELECT 1 + close",
    ),
  ];
}

function readSummary(r: ReadResult) {
  const over = (pick: (round: ReadRound) => number | undefined) => {
    const values = r.rounds.map(pick).filter((v): v is number => v !== undefined && Number.isFinite(v));
    return { n: values.length, s: summarize(values) };
  };
  const per = (t: ReadTarget) => ({
    qps: over((x) => x.passes[t]?.queriesPerSecond),
    p50: over((x) => x.passes[t]?.latency.p50Ms),
    p99: over((x) => x.passes[t]?.latency.p99Ms),
  });
  const ratio = (t: ReadTarget) =>
    over((x) => {
      const a = x.passes[t]?.queriesPerSecond;
      const b = x.passes.main?.queriesPerSecond;
      return a !== undefined && b !== undefined ? a / b : undefined;
    });
  return {
    main: per("main"),
    checkout: per("checkout"),
    direct: per("direct"),
    checkoutRatio: ratio("checkout"),
    directRatio: ratio("direct"),
  };
}

function readRows(r: ReadResult): string[][] {
  const x = readSummary(r);
  const rows: string[][] = [];
  for (const t of READ_TARGETS) {
    const p = x[t];
    rows.push(
      row(
        `point lookups, ${READ_LABEL[t]}`,
        p.qps.n,
        p.qps.s,
        "q/s",
        `${thousands(opts.reads)} per round`,
        0,
      ),
      row(`  latency p50`, p.p50.n, p.p50.s, "ms", "", 3),
      row(`  latency p99`, p.p99.n, p.p99.s, "ms", "", 3),
    );
  }
  rows.push(
    row("branch (dolt_checkout) / main", x.checkoutRatio.n, x.checkoutRatio.s, "x", "q/s, per round", 3),
    row(`branch (bench/${READ_BRANCH}) / main`, x.directRatio.n, x.directRatio.s, "x", "q/s, per round", 3),
  );
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
  progress(`durability: ${DURABILITY_TEXT}${opts.quick ? "; --quick: a smoke check, not figures" : ""}`);
  const load = await waitForQuietMachine();

  let strata: StrataProcess | undefined;
  let creation: CreationResult = { sizes: [] };
  let checkout: CheckoutResult | undefined;
  let reads: ReadResult | undefined;
  let fatal: string | undefined;
  let session: MainSession | undefined;
  try {
    progress("starting a standalone Strata (managed store)");
    strata = await startBenchStrata("strata-bench-branches-", STORE_SETTINGS);
    await withConnection(strata.connectionConfig(), (c) => c.query(`CREATE DATABASE ${SOURCE_DATABASE}`));
    session = new MainSession(strata);
    creation = await creationPart(strata, session, new Source(session));
    const last = creation.sizes.at(-1)?.stage;
    if (!creation.error && last) {
      progress(
        `making branch '${READ_BRANCH}' of the ${fixed(last.sizes.databaseBytes / MB, 0)} MB database`,
      );
      const c = await session.get();
      await c.query(`SELECT dolt_branch(${literal(READ_BRANCH)})`);
      checkout = await checkoutPart(strata);
      reads = await readPart(strata, last.rows);
    }
  } catch (err) {
    fatal = (withStrataLogTail(err, strata) as Error).message;
    progress(`FAILED: ${fatal}`);
  } finally {
    await session?.close();
    await stopStrata(strata);
  }
  load.atEnd = os.loadavg().map((l) => Number(l.toFixed(2)));

  const rows = [
    ...creationRows(creation),
    ...(checkout ? checkoutRows(checkout) : []),
    ...(reads ? readRows(reads) : []),
  ];
  const otherShares = [
    ...creation.sizes.flatMap((s) => s.steps.map((x) => x.otherCpuShare)),
    checkout?.otherCpuShare,
    ...(reads?.rounds ?? []).flatMap((r) => Object.values(r.passes).map((p) => p?.otherCpuShare)),
  ].filter((v): v is number => v !== undefined && Number.isFinite(v));
  const others = summarize(otherShares);
  const lines = [
    "",
    `Branches: the cost of dolt_branch, dolt_checkout and reads on a branch${opts.quick ? " (--quick: smoke check only)" : ""}`,
    `machine: ${info.cpus} CPUs (${info.cpuModel}), ${info.memoryGb} GB RAM, ${info.os}, node ${info.node}, ${info.postgres}`,
    `strata: standalone, managed store (${DURABILITY_TEXT}, max_wal_size 4GB); code ${code.commit ?? "unknown"}${code.srcModified ? " with local changes in src/" : ""}`,
    `load average (1 min): ${load.atStart[0]} at the start${load.waitedSeconds > 1 ? `, ${load.whenStarted} after waiting ${fixed(load.waitedSeconds, 0)} s` : ""}, ${load.atEnd[0]} at the end; ` +
      `other processes' share of the CPUs during the timed steps: median ${fixed(100 * others.median, 0)}%, max ${fixed(100 * others.max, 0)}%`,
  ];
  for (const size of creation.sizes) {
    const st = size.stage;
    if (!st) continue;
    lines.push(
      `database at ${size.targetMb} MB: ${thousands(st.rows)} rows in bulk, ${thousands(st.events)} in events, ${thousands(st.commits)} commits; ` +
        `tables ${fixed(st.sizes.userBytes / MB, 1)} MB + history ${fixed(st.sizes.historyBytes / MB, 1)} MB = ${fixed(st.sizes.bytes / MB, 1)} MB; ` +
        `pg_database_size ${fixed(st.sizes.databaseBytes / MB, 1)} MB (MB/s are of this)`,
    );
  }
  lines.push(
    `copies: ${opts.runs} runs of each at each size, in a turning order, a CHECKPOINT before each (untimed); the dump | restore baselines and FILE_COPY on the store directly; breakdown: one run`,
    `checkout: ${opts.checkouts} round trips on one session (after ${CHECKOUT_WARMUP} unmeasured); reads: ${thousands(opts.reads)} prepared point lookups by key per target and round, ` +
      `${opts.readRounds} rounds after a warm-up pass, keys uniform over ${thousands(reads?.rows ?? Number.NaN)} rows`,
    "min / median / max: over the runs (copies), the round trips (checkout), the rounds (reads)",
    "",
    table(["measurement", "n", "min", "median", "max", "unit", "note"], rows),
  );
  const slowest = creation.sizes.at(-1)?.breakdown?.longest;
  if (slowest?.length)
    lines.push(
      "",
      `longest restored items at the largest size: ${slowest
        .slice(0, 5)
        .map((i) => `${i.item} (${i.section}) ${fixed(i.seconds, 2)} s`)
        .join("; ")}`,
    );
  const failures = [
    ...(fatal ? [fatal] : []),
    ...(creation.error ? [`creation: ${creation.error}`] : []),
    ...creation.sizes.flatMap((s) =>
      s.steps.filter((x) => x.error).map((x) => `${s.targetMb} MB run ${x.run} ${x.method}: ${x.error}`),
    ),
    ...creation.sizes
      .filter((s) => s.breakdown?.error)
      .map((s) => `${s.targetMb} MB breakdown: ${s.breakdown!.error}`),
    ...(checkout?.error ? [`checkout: ${checkout.error}`] : []),
    ...(reads?.error ? [`reads: ${reads.error}`] : []),
  ];
  for (const f of failures) lines.push(`FAILED ${f}`);
  process.stdout.write(`${lines.join("\n")}\n`);
  writeResults("branches", startedAt, {
    machine: info,
    code,
    options: opts,
    load,
    durability: { storeSettings: STORE_SETTINGS, description: DURABILITY_TEXT },
    method: {
      source: `one database '${SOURCE_DATABASE}' grown through the front door in stages (--sizes, MB of user tables + ${HISTORY_TABLES.join(", ")}): bulk commits of INSERT ... SELECT generate_series (up to ${thousands(BULK_CHUNK_ROWS)} rows each), then --commits small commits (UPDATE one bulk row + INSERT into events, BEGIN ... dolt_commit ... COMMIT, ${GEN_BATCH} per round trip), VACUUM ANALYZE`,
      creation:
        "per size, --runs runs of each method in a turning order, a CHECKPOINT on the store (untimed) before each: dolt_branch through the front door on a session on main (checked through the front door: rows, commits, HEAD, clean dolt_status; then dolt_branch('-D'), timed); CREATE DATABASE TEMPLATE template0 + pg_dump --format=custom [--compress=0] | pg_restore --exit-on-error on the store socket (PGOPTIONS as Strata's copy); CREATE DATABASE x TEMPLATE bench STRATEGY FILE_COPY after the bench's session closed and the source had no other session (waited for, untimed). Copies checked (rows, strata.commits count and head). MB/s of pg_database_size",
      breakdown:
        "per size once: pg_dump --format=custom --compress=0 --file, then pg_restore --verbose --section=pre-data|data|post-data into a fresh database; each item timed from its announcement to the next",
      checkout: `one front-door session: SELECT dolt_checkout('b') then SELECT dolt_checkout('main'), each followed by SELECT active_branch() (untimed check); client-side ms; then one dolt_checkout('b') sent ${DURING_BRANCH_DELAY_MS} ms after another session started dolt_branch('${CONCURRENT_BRANCH}')`,
      reads:
        "node-postgres, one connection per target, prepared SELECT grp, payload FROM bulk WHERE id = $1, one at a time, uniform random keys (seeded, the same keys for every target within a round); warm-up pass per target",
    },
    creation: {
      ...creation,
      summary: creation.sizes.map((s) => ({ targetMb: s.targetMb, ...sizeSummary(s) })),
    },
    checkout: checkout && { ...checkout, summary: checkoutSummary(checkout) },
    reads: reads && { ...reads, summary: readSummary(reads) },
    failures,
  });
  return failures.length === 0 ? 0 : 1;
}

runBench(main);
