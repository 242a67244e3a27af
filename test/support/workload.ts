// Fault-test support: a primary + Strata pair that is always torn down (even after SIGKILLs that
// left the store's postmaster running), a seeded random write workload for the primary that
// counts what it committed, and the exactness checks of a replica's data and history.
//
// Every writer transaction also inserts one row into `tx_log` (n = a number unique across
// writers), so the primary itself says which transactions committed — even when a writer's
// COMMIT was cut off by a crash — and every replica commit can be matched to exactly one of them.
import assert from "node:assert/strict";
import { once } from "node:events";
import { existsSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import pg from "pg";
import { findPgBinaries } from "../../src/store/binaries.ts";
import { type ClusterSpec, clusterPaths, stopCluster } from "../../src/store/cluster.ts";
import { storeOsUser } from "../../src/store/os-user.ts";
import { type PrimaryOptions, startPrimary, type TestCluster, waitFor } from "./postgres.ts";
import { createStrata, type StrataOptions, type StrataProcess, waitForSameRows } from "./strata.ts";

// ---------------------------------------------------------------------------------------------
// Random numbers that can be replayed: FAULTS_SEED=<n> reruns a failing schedule.

export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function testSeed(): number {
  const fromEnv = Number(process.env.FAULTS_SEED);
  return Number.isFinite(fromEnv) && process.env.FAULTS_SEED ? fromEnv : Math.floor(Math.random() * 2 ** 31);
}

// ---------------------------------------------------------------------------------------------
// Primary + Strata, torn down whatever happened.

export interface PairOptions {
  primary?: PrimaryOptions;
  /** SQL run on the primary before Strata starts (tables; no rows: rows before the slot are not replicated). */
  schema?: string;
  strata?: Omit<StrataOptions, "primary">;
}

export class ReplicaPair {
  private torn = false;
  private readonly clients: pg.Client[] = [];
  constructor(
    readonly primary: TestCluster,
    readonly strata: StrataProcess,
  ) {}

  static async start(options: PairOptions = {}): Promise<ReplicaPair> {
    const primary = await startPrimary(options.primary);
    let strata: StrataProcess | undefined;
    try {
      if (options.schema) await primary.query(options.schema);
      strata = await createStrata({ primary, ...options.strata });
      const pair = new ReplicaPair(primary, strata);
      try {
        await startStrata(strata);
        // "ready" comes before the slot exists; rows written before that are never replicated.
        await pair.waitForStreaming();
      } catch (err) {
        await pair.teardown();
        throw err;
      }
      return pair;
    } catch (err) {
      if (!strata) await primary.stop().catch(() => {});
      throw err;
    }
  }

  /** A session on the primary, ended by teardown (its errors, e.g. when the primary stops, are ignored). */
  async connectPrimary(): Promise<pg.Client> {
    const client = new pg.Client(this.primary.connectionConfig());
    client.on("error", () => {});
    await client.connect();
    this.clients.push(client);
    return client;
  }

  /**
   * Query the store directly on its unix socket — also after a SIGKILL, while the killed Strata's
   * postmaster is still running and before a restart recovers it.
   */
  async queryStore<T extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: unknown[] = [],
  ): Promise<T[]> {
    const client = new pg.Client({
      host: clusterPaths(this.storeSpec).socketDir,
      port: 5432,
      user: "postgres",
      password: "password",
      database: "postgres",
    });
    client.on("error", () => {});
    await client.connect();
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** The slot's confirmed_flush_lsn once no walsender uses it (Strata is gone), as a bigint. */
  async confirmedFlushWhenInactive(slot = "strata_slot"): Promise<bigint> {
    const row = await waitFor(`slot ${slot} to be released by the killed Strata`, async () => {
      const [r] = await this.primary.query<{ active: boolean; lsn: string | null }>(
        "SELECT active, confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1",
        [slot],
      );
      return r && !r.active ? r : undefined;
    });
    return row.lsn ? lsnValue(row.lsn) : 0n;
  }

  /**
   * "Never acknowledge what is not durable", checked right after Strata died: every writer
   * transaction that ended at or before the slot's confirmed_flush_lsn is in the store. (The
   * primary skips what precedes confirmed_flush_lsn on reconnection, so any such transaction
   * missing from the store would be lost.)
   */
  async assertAcknowledgedIsDurable(writer: Writer, context = ""): Promise<void> {
    const confirmed = await this.confirmedFlushWhenInactive();
    const durable = new Set(
      (await this.queryStore<{ n: string }>("SELECT n::text AS n FROM tx_log")).map((r) => Number(r.n)),
    );
    const lost = [...writer.endBounds]
      .filter(([n, end]) => end <= confirmed && !durable.has(n))
      .map(([n]) => n);
    assert.deepEqual(
      lost,
      [],
      `the primary's slot is acknowledged up to ${formatLsn(confirmed)}, past the end of writer transactions the store does not hold ${context}`,
    );
  }

  /** dolt_replication_status says the stream is up (the slot exists and START_REPLICATION was sent). */
  async waitForStreaming(timeoutMs = 60_000): Promise<void> {
    await waitFor(
      "the replica to be streaming from the primary",
      async () => {
        const rows = await this.strata.query<{ state: string }>("SELECT state FROM dolt_replication_status");
        return rows[0]?.state === "streaming";
      },
      timeoutMs,
    );
  }

  get storeSpec(): ClusterSpec {
    return storeSpecOf(this.strata);
  }

  /** The store postmaster of this Strata is running (its postmaster.pid exists). */
  storeRunning(): boolean {
    return existsSync(join(this.strata.dataDir, "store", "pgdata", "postmaster.pid"));
  }

  /** Stop everything and remove every directory, even when Strata was SIGKILLed and never restarted. */
  async teardown(): Promise<void> {
    if (this.torn) return;
    this.torn = true;
    const errors: unknown[] = [];
    for (const client of this.clients) await client.end().catch(() => {});
    try {
      await stopStrata(this.strata, 30_000);
    } catch (err) {
      errors.push(err);
    }
    try {
      // A SIGKILLed Strata leaves its store's postmaster running.
      await stopCluster(this.storeSpec, "immediate");
    } catch (err) {
      errors.push(err);
    }
    rmSync(dirname(this.strata.dataDir), { recursive: true, force: true });
    try {
      await this.primary.stop();
    } catch (err) {
      errors.push(err);
    }
    if (errors.length) throw errors[0];
  }
}

function storeSpecOf(strata: StrataProcess): ClusterSpec {
  return {
    root: join(strata.dataDir, "store"),
    bin: findPgBinaries(),
    osUser: storeOsUser(),
    superuser: "postgres",
    password: "password",
    port: 5432,
    listenAddresses: "",
  };
}

/**
 * waitFor, except that it fails at once — with Strata's exit and log — when the Strata process
 * exits, instead of polling a dead listener until the deadline.
 */
export async function waitWhileAlive<T>(
  strata: StrataProcess,
  what: string,
  check: () => Promise<T | undefined | false | null>,
  timeoutMs = 30_000,
): Promise<T> {
  let exited = false;
  const child = strata.child;
  const markExit = () => {
    exited = true;
  };
  child?.once("exit", markExit);
  try {
    return await whileAlive(
      strata,
      waitFor(
        what,
        async () => {
          if (exited) return true as T; // stop polling; whileAlive reports the exit
          return check();
        },
        timeoutMs,
      ),
    );
  } finally {
    child?.off("exit", markExit);
  }
}

/** `work`, failing at once with Strata's log if the Strata process exits before it is done. */
export async function whileAlive<T>(strata: StrataProcess, work: Promise<T>): Promise<T> {
  const child = strata.child;
  if (!child) return work;
  let onExit: ((code: number | null, signal: NodeJS.Signals | null) => void) | undefined;
  const died = new Promise<never>((_, reject) => {
    onExit = (code, signal) => {
      const report = () =>
        reject(
          new Error(
            `strata exited (code ${code}, signal ${signal}) unexpectedly\n--- strata log (tail) ---\n${tail(strata.logs, 40)}`,
          ),
        );
      // Let the last stderr lines arrive first.
      if (child.stderr && !child.stderr.closed) child.stderr.once("close", report);
      else report();
    };
    if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode, child.signalCode);
    else child.once("exit", onExit);
  });
  try {
    return await Promise.race([work, died]);
  } finally {
    if (onExit) child.off("exit", onExit);
    died.catch(() => {});
  }
}

/**
 * strata.start(), with the whole log when it fails: the child's "exit" can come before its last
 * stderr lines are read, so wait for stderr to close before reporting.
 */
export async function startStrata(strata: StrataProcess): Promise<void> {
  try {
    await strata.start();
  } catch (err) {
    const stderr = strata.child?.stderr;
    if (stderr && !stderr.closed) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        once(stderr, "close"),
        new Promise((resolveLater) => {
          timer = setTimeout(resolveLater, 5_000);
        }),
      ]);
      clearTimeout(timer);
    }
    const first = (err as Error).message.split("\n")[0];
    throw new Error(`${first}\n--- strata log ---\n${strata.logs}${strata.storeReport()}`);
  }
}

/** SIGTERM and wait for the exit; SIGKILL and fail when it does not come within `timeoutMs`. */
export async function stopStrata(strata: StrataProcess, timeoutMs = 30_000): Promise<number | null> {
  const child = strata.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolveTimeout) => {
    timer = setTimeout(() => resolveTimeout("timeout"), timeoutMs);
  });
  const result = await Promise.race([strata.kill("SIGTERM"), timeout]);
  clearTimeout(timer);
  if (result === "timeout") {
    await strata.kill("SIGKILL");
    throw new Error(
      `strata did not exit within ${timeoutMs} ms of SIGTERM\n--- strata log (tail) ---\n${tail(strata.logs, 30)}`,
    );
  }
  return result;
}

export function tail(text: string, lines: number): string {
  return text.split("\n").slice(-lines).join("\n");
}

// ---------------------------------------------------------------------------------------------
// The write workload.

export const WORKLOAD_SCHEMA = `
CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE pairs (a int NOT NULL, b text NOT NULL, v int, PRIMARY KEY (a, b));
CREATE TABLE tx_log (n bigint PRIMARY KEY, writer int NOT NULL, ops int NOT NULL);
`;

/** Key columns of the workload's tables (for snapshots and the history replay). */
export const WORKLOAD_KEYS: Record<string, string[]> = {
  "public.acct": ["id"],
  "public.pairs": ["a", "b"],
  "public.tx_log": ["n"],
};

const NOTES = [null, "plain", 'it\'s "quoted"', "back\\slash", "ünïcödé ☃", "tab\tand\nnewline", ""];
const KEYS_PER_TABLE = 240;
const B_VALUES = ["x", "y", "z"];

export interface WriterOptions {
  /** Concurrent writer connections (keys are partitioned between them, so they never conflict). */
  connections?: number;
  seed: number;
  /** Share of transactions that roll back instead of committing. */
  rollbackShare?: number;
  /**
   * Transactions per second over all connections (load shaping, not synchronisation): the
   * primary commits several times faster than Strata applies small transactions, and an
   * unbounded writer would leave the replica minutes behind.
   */
  ratePerSecond?: number;
}

/**
 * Many small transactions on the primary: inserts, updates, deletes, multi-row statements, a
 * primary-key change on the composite-key table, and some rollbacks. Counts what committed.
 */
export class Writer {
  /** Transactions whose COMMIT the primary acknowledged. */
  committed = 0;
  rolledBack = 0;
  /** Transactions whose COMMIT was sent but whose outcome is unknown (the connection broke). */
  uncertain = 0;
  errors: string[] = [];
  /** For each committed transaction n, an LSN at or after its commit record's end (read after COMMIT). */
  readonly endBounds = new Map<number, bigint>();
  private nextN = 1;
  private stopping = false;
  private loops: Promise<void>[] = [];
  private readonly random: () => number;

  constructor(
    private readonly primary: TestCluster,
    private readonly options: WriterOptions,
  ) {
    this.random = seededRandom(options.seed);
  }

  get connections(): number {
    return this.options.connections ?? 1;
  }

  /** Start the writer loops; they run until stop(), or until their connection fails. */
  start(): void {
    this.stopping = false;
    this.loops = [];
    for (let w = 0; w < this.connections; w++) this.loops.push(this.loop(w));
  }

  /** Stop the loops (each finishes its current transaction) and wait for them. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
  }

  /** All loops have ended (e.g. their connections failed). */
  async ended(): Promise<void> {
    await Promise.all(this.loops);
  }

  /** Wait until `count` more transactions have committed than have now. */
  async waitForCommits(count: number, timeoutMs = 30_000): Promise<void> {
    const target = this.committed + count;
    await waitFor(
      `the writer to commit ${target} transactions (errors: ${this.errors.slice(-3).join("; ")})`,
      async () => this.committed >= target,
      timeoutMs,
    );
  }

  private int(n: number): number {
    return Math.floor(this.random() * n);
  }

  private key(w: number): number {
    return w + this.connections * this.int(KEYS_PER_TABLE / this.connections);
  }

  private async loop(w: number): Promise<void> {
    const client = new pg.Client({ ...this.primary.connectionConfig(), application_name: `writer ${w}` });
    client.on("error", () => {});
    try {
      await client.connect();
    } catch (err) {
      this.errors.push(`writer ${w} could not connect: ${(err as Error).message}`);
      return;
    }
    try {
      const interval = this.options.ratePerSecond
        ? (1000 * this.connections) / this.options.ratePerSecond
        : 0;
      let due = Date.now();
      while (!this.stopping) {
        due += interval;
        const wait = due - Date.now();
        if (wait > 0) await new Promise((resolvePace) => setTimeout(resolvePace, wait));
        else due = Date.now();
        if (this.stopping) break;
        let phase: "body" | "commit" = "body";
        try {
          await client.query("BEGIN");
          const ops = await this.body(client, w);
          const n = this.nextN++;
          await client.query("INSERT INTO tx_log (n, writer, ops) VALUES ($1, $2, $3)", [n, w, ops]);
          if (this.random() < (this.options.rollbackShare ?? 0.05)) {
            await client.query("ROLLBACK");
            this.rolledBack++;
          } else {
            phase = "commit";
            await client.query("COMMIT");
            this.committed++;
            phase = "body";
            const { rows } = await client.query<{ lsn: string }>(
              "SELECT pg_current_wal_insert_lsn()::text AS lsn",
            );
            this.endBounds.set(n, lsnValue(rows[0].lsn));
          }
        } catch (err) {
          const message = (err as Error).message;
          this.errors.push(`writer ${w}: ${message}`);
          if (phase === "commit") this.uncertain++;
          // A statement error leaves the transaction aborted; a lost connection ends this loop.
          const alive = await client.query("ROLLBACK").then(
            () => true,
            () => false,
          );
          if (!alive) return;
        }
      }
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** The statements of one transaction; returns how many statements it ran. */
  private async body(client: pg.Client, w: number): Promise<number> {
    const ops = 1 + this.int(4);
    for (let i = 0; i < ops; i++) {
      const note = NOTES[this.int(NOTES.length)];
      switch (this.int(11)) {
        case 0:
        case 1:
          await client.query(
            "INSERT INTO acct (id, balance, note) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET balance = acct.balance + excluded.balance, note = excluded.note",
            [this.key(w), this.int(1000), note],
          );
          break;
        case 2:
          await client.query("UPDATE acct SET balance = balance - $2, note = $3 WHERE id = $1", [
            this.key(w),
            this.int(100),
            note,
          ]);
          break;
        case 3:
          await client.query("DELETE FROM acct WHERE id = $1", [this.key(w)]);
          break;
        case 4:
          // Several rows in one statement: some inserted, some updated.
          await client.query(
            `INSERT INTO acct (id, balance, note)
             SELECT $1::int + $2::int * g, g, 'bulk' FROM generate_series(0, $3::int - 1) g WHERE random() < 0.15
             ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, note = excluded.note`,
            [w, this.connections, KEYS_PER_TABLE / this.connections],
          );
          break;
        case 5:
          await client.query("UPDATE acct SET balance = balance + 1 WHERE id % $1 = $2", [
            this.connections * 16,
            w + this.connections * this.int(16),
          ]);
          break;
        case 6:
          await client.query(
            "INSERT INTO pairs (a, b, v) VALUES ($1, $2, $3) ON CONFLICT (a, b) DO UPDATE SET v = pairs.v + 1",
            [this.key(w), B_VALUES[this.int(3)], this.int(50)],
          );
          break;
        case 7:
          await client.query("UPDATE pairs SET v = coalesce(v, 0) * 2 WHERE a = $1 AND b = $2", [
            this.key(w),
            B_VALUES[this.int(3)],
          ]);
          break;
        case 8: {
          // A change of the composite primary key.
          const from = B_VALUES[this.int(3)];
          const to = B_VALUES[this.int(3)];
          const a = this.key(w);
          await client.query(
            "UPDATE pairs SET b = $3 WHERE a = $1 AND b = $2 AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.a = $1 AND p.b = $3)",
            [a, from, to],
          );
          break;
        }
        case 9:
          await client.query("DELETE FROM pairs WHERE a = $1", [this.key(w)]);
          break;
        default:
          await client.query(
            "INSERT INTO pairs (a, b, v) SELECT $1, b, NULL FROM unnest($2::text[]) b ON CONFLICT DO NOTHING",
            [this.key(w), B_VALUES],
          );
      }
    }
    return ops;
  }
}

// ---------------------------------------------------------------------------------------------
// Exactness of a replica: data, commits, history.

interface CommitRow {
  seq: string;
  hash: string;
  parent_hash: string | null;
  upstream_xid: string;
  upstream_commit_lsn: string;
  upstream_end_lsn: string;
}

interface ChangeRow {
  commit_seq: string;
  ord: number;
  rel: string;
  op: string;
  row_key: string | null;
  old_row: string | null;
  new_row: string | null;
}

export interface ExactOptions {
  /** Table → key columns, e.g. WORKLOAD_KEYS. Each table's replica rows must equal the primary's. */
  tables: Record<string, string[]>;
  /** The number of upstream transactions that touched these tables: dolt_log must have exactly this many. */
  commits: number;
  /** Every commit is one writer transaction: it holds exactly one tx_log insert, and they match the primary's. */
  txLog?: boolean;
  /** Context printed with a failure (seed, schedule). */
  context?: string;
  timeoutMs?: number;
}

export const lsnValue = (lsn: string): bigint => {
  const [hi, lo] = lsn.split("/");
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
};

const formatLsn = (lsn: bigint) =>
  `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;

/**
 * The replica equals the primary, and its history is what happened: one commit per upstream
 * transaction, no duplicates, a linear unbroken parent chain, and a replay of strata.changes that
 * ends exactly at the primary's rows.
 */
export async function assertExactReplica(pair: ReplicaPair, options: ExactOptions): Promise<void> {
  const { primary, strata } = pair;
  const ctx = options.context ? ` [${options.context}]` : "";
  const tables = Object.entries(options.tables);
  for (const [table, keys] of tables)
    await waitForSameRows(primary, strata, table, keys.join(", "), options.timeoutMs ?? 60_000);

  const commits = await strata.query<CommitRow>(
    `SELECT seq::text, hash, parent_hash, upstream_xid::text, upstream_commit_lsn::text, upstream_end_lsn::text
       FROM strata.commits c ORDER BY c.seq`,
  );
  const [{ count: logCount }] = await strata.query<{ count: string }>("SELECT count(*) FROM dolt_log");
  assert.equal(Number(logCount), commits.length, `dolt_log shows every commit${ctx}`);
  assert.equal(
    commits.length,
    options.commits,
    `one commit per upstream transaction: ${options.commits} expected, dolt_log has ${commits.length}${ctx}`,
  );

  // The chain: seq 1..N, each parent the previous hash, no upstream transaction twice, in commit order.
  const xids = new Set<string>();
  const lsns = new Set<string>();
  let previous: CommitRow | undefined;
  for (const [i, c] of commits.entries()) {
    assert.equal(c.seq, String(i + 1), `commit_order is contiguous from 1 (commit ${c.hash})${ctx}`);
    assert.equal(
      c.parent_hash,
      previous ? previous.hash : null,
      `the parent of commit ${c.seq} is commit ${previous?.seq ?? "none"}${ctx}`,
    );
    assert.ok(!xids.has(c.upstream_xid), `upstream_xid ${c.upstream_xid} recorded twice${ctx}`);
    assert.ok(
      !lsns.has(c.upstream_commit_lsn),
      `upstream_commit_lsn ${c.upstream_commit_lsn} recorded twice${ctx}`,
    );
    xids.add(c.upstream_xid);
    lsns.add(c.upstream_commit_lsn);
    assert.ok(
      lsnValue(c.upstream_end_lsn) > lsnValue(c.upstream_commit_lsn),
      `commit ${c.seq}: end LSN ${c.upstream_end_lsn} after commit LSN ${c.upstream_commit_lsn}${ctx}`,
    );
    if (previous)
      assert.ok(
        lsnValue(c.upstream_commit_lsn) > lsnValue(previous.upstream_commit_lsn),
        `commits are in upstream commit order: ${previous.seq} at ${previous.upstream_commit_lsn}, ${c.seq} at ${c.upstream_commit_lsn}${ctx}`,
      );
    previous = c;
  }
  const hashes = new Set(commits.map((c) => c.hash));
  assert.equal(hashes.size, commits.length, `commit hashes are unique${ctx}`);

  // History: every change belongs to a commit, (commit, ord) is unique, every commit changed something.
  const changes = await strata.query<ChangeRow>(
    `SELECT commit_seq::text, ord, rel, op::text, row_key::text, old_row::text, new_row::text
       FROM strata.changes c ORDER BY c.commit_seq, c.ord`,
  );
  const seqs = new Set(commits.map((c) => c.seq));
  const perCommit = new Map<string, ChangeRow[]>();
  for (const ch of changes) {
    assert.ok(seqs.has(ch.commit_seq), `change ${ch.commit_seq}/${ch.ord} belongs to no commit${ctx}`);
    let list = perCommit.get(ch.commit_seq);
    if (!list) {
      list = [];
      perCommit.set(ch.commit_seq, list);
    }
    assert.ok(
      list.length === 0 || list[list.length - 1].ord < ch.ord,
      `change (${ch.commit_seq}, ${ch.ord}) recorded twice${ctx}`,
    );
    list.push(ch);
  }
  for (const c of commits)
    assert.ok(perCommit.has(c.seq), `commit ${c.seq} (xid ${c.upstream_xid}) has no changes${ctx}`);

  if (options.txLog) {
    const seen: string[] = [];
    for (const c of commits) {
      const logged = (perCommit.get(c.seq) ?? []).filter((ch) => ch.rel === "public.tx_log" && ch.op === "I");
      assert.equal(
        logged.length,
        1,
        `commit ${c.seq} (xid ${c.upstream_xid}) is exactly one writer transaction: it has ${logged.length} tx_log inserts${ctx}`,
      );
      seen.push(String(JSON.parse(logged[0].new_row!).n));
    }
    const upstream = (
      await primary.query<{ n: string }>("SELECT t.n::text AS n FROM tx_log t ORDER BY t.n")
    ).map((r) => r.n);
    assert.deepEqual(
      [...seen].sort((a, b) => Number(a) - Number(b)),
      upstream,
      `the replica's commits are exactly the primary's committed writer transactions${ctx}`,
    );
  }

  // Replay history from nothing; it must end at the primary's rows (both ways, key changes included).
  const state = new Map<string, Map<string, string>>();
  for (const [table] of tables) state.set(table, new Map());
  const keyOf = (table: string, row: string) => {
    const parsed = JSON.parse(row) as Record<string, unknown>;
    return JSON.stringify(options.tables[table].map((k) => parsed[k]));
  };
  for (const ch of changes) {
    const rows = state.get(ch.rel);
    if (!rows) continue;
    switch (ch.op) {
      case "I":
        assert.ok(
          !rows.has(keyOf(ch.rel, ch.new_row!)),
          `history inserts a row it already has: ${JSON.stringify(ch)}${ctx}`,
        );
        rows.set(keyOf(ch.rel, ch.new_row!), ch.new_row!);
        break;
      case "U":
        assert.equal(
          rows.get(keyOf(ch.rel, ch.old_row!)),
          ch.old_row,
          `history updates a row it never had: ${JSON.stringify(ch)}${ctx}`,
        );
        rows.delete(keyOf(ch.rel, ch.old_row!));
        rows.set(keyOf(ch.rel, ch.new_row!), ch.new_row!);
        break;
      case "D":
        assert.equal(
          rows.get(keyOf(ch.rel, ch.old_row!)),
          ch.old_row,
          `history deletes a row it never had: ${JSON.stringify(ch)}${ctx}`,
        );
        rows.delete(keyOf(ch.rel, ch.old_row!));
        break;
      case "T":
        rows.delete(keyOf(ch.rel, ch.old_row!));
        break;
      default:
        assert.fail(`unknown op ${ch.op} in strata.changes${ctx}`);
    }
  }
  for (const [table, keys] of tables) {
    const expected = (
      await primary.query<{ j: string }>(
        `SELECT to_jsonb(t)::text AS j FROM ${table} t ORDER BY ${keys.join(", ")}`,
      )
    ).map((r) => r.j);
    const replayed = [...state.get(table)!.values()].sort();
    assert.deepEqual(
      replayed,
      [...expected].sort(),
      `replaying strata.changes of ${table} gives the primary's rows${ctx}`,
    );
    // The literal form: the newest history version of each primary row (by row_key) is that row.
    const latest = await strata.query<{ j: string }>(
      `SELECT DISTINCT ON (row_key) new_row::text AS j FROM strata.changes
        WHERE rel = $1 AND row_key = ANY($2::jsonb[]) ORDER BY row_key, commit_seq DESC, ord DESC`,
      [
        table,
        expected.map((j) => {
          const row = JSON.parse(j) as Record<string, unknown>;
          return JSON.stringify(Object.fromEntries(keys.map((k) => [k, row[k]])));
        }),
      ],
    );
    assert.deepEqual(
      latest.map((r) => r.j).sort(),
      [...expected].sort(),
      `the latest history version of every ${table} row is the primary's row${ctx}`,
    );
  }
}

/** The number of commits in the replica's dolt_log. */
export async function commitCount(strata: StrataProcess): Promise<number> {
  const [row] = await strata.query<{ n: string }>("SELECT count(*) AS n FROM strata.commits");
  return Number(row.n);
}

/**
 * Rebuild `table` from its history alone: the versions of its snapshot bases (read through
 * dolt_history_<table>, i.e. the reconstruction Strata serves) at their commits, and every row
 * change of strata.changes in order. Returns the rows as JSON text, sorted.
 */
export async function replayHistory(strata: StrataProcess, table: string, keys: string[]): Promise<string[]> {
  const [schema, name] = table.includes(".") ? table.split(".") : ["public", table];
  const rel = `${schema}.${name}`;
  const bases = await strata.query<{ seq: string; hash: string }>(
    "SELECT b.commit_seq::text AS seq, k.hash FROM strata.snapshot_bases b JOIN strata.commits k ON k.seq = b.commit_seq WHERE b.rel = $1 ORDER BY b.commit_seq",
    [rel],
  );
  const events: { seq: bigint; ord: number; op: string; oldRow: string | null; newRow: string | null }[] = [];
  for (const base of bases) {
    const rows = await strata.query<{ j: string }>(
      `SELECT (to_jsonb(h) - 'commit_hash' - 'committer' - 'commit_date')::text AS j
         FROM "${schema}"."dolt_history_${name}" h WHERE h.commit_hash = $1`,
      [base.hash],
    );
    for (const r of rows) events.push({ seq: BigInt(base.seq), ord: -1, op: "I", oldRow: null, newRow: r.j });
  }
  const changes = await strata.query<{
    seq: string;
    ord: number;
    op: string;
    old_row: string | null;
    new_row: string | null;
  }>(
    "SELECT commit_seq::text AS seq, ord, op::text, old_row::text, new_row::text FROM strata.changes WHERE rel = $1",
    [rel],
  );
  for (const c of changes)
    events.push({ seq: BigInt(c.seq), ord: c.ord, op: c.op, oldRow: c.old_row, newRow: c.new_row });
  events.sort((a, b) => (a.seq === b.seq ? a.ord - b.ord : a.seq < b.seq ? -1 : 1));
  const keyOf = (row: string) => {
    const parsed = JSON.parse(row) as Record<string, unknown>;
    return JSON.stringify(keys.map((k) => parsed[k]));
  };
  const state = new Map<string, string>();
  for (const e of events) {
    if (e.oldRow) {
      // By key: across a schema change the image a change found has the table's new columns.
      assert.ok(state.has(keyOf(e.oldRow)), `history of ${rel} changes a row it never had: ${e.oldRow}`);
      state.delete(keyOf(e.oldRow));
    }
    if (e.newRow) {
      assert.ok(
        !state.has(keyOf(e.newRow)) || e.op === "U",
        `history of ${rel} inserts a row it already has: ${e.newRow}`,
      );
      state.set(keyOf(e.newRow), e.newRow);
    }
  }
  return [...state.values()].sort();
}

/**
 * Transactions on `cluster` one after another until stopped, each running `body` between BEGIN
 * and COMMIT (`i` counts from 1): writes that go on while a test does something else.
 */
export function backgroundWriter(
  cluster: TestCluster,
  body: (client: pg.Client, i: number) => Promise<void>,
): { stop(): Promise<number>; readonly transactions: number } {
  let running = true;
  let transactions = 0;
  const done = (async () => {
    const client = await cluster.connect();
    try {
      for (let i = 1; running; i++) {
        await client.query("BEGIN");
        await body(client, i);
        await client.query("COMMIT");
        transactions++;
      }
    } finally {
      await client.end();
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return transactions;
    },
    get transactions() {
      return transactions;
    },
  };
}
