// Runs `strata serve` as a child process against a test primary (or standalone, without
// replication), the way a user does, and compares replica and primary.
import assert from "node:assert/strict";
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { stringify } from "yaml";
import { findPgBinaries } from "../../src/store/binaries.ts";
import { clusterPaths } from "../../src/store/cluster.ts";
import { storeOsUser } from "../../src/store/os-user.ts";
import type { StoreEndpoint } from "../../src/store/store.ts";
import { onProcessExit } from "./cleanup.ts";
import { freePort, TEST_PASSWORD, TEST_USER, type TestCluster, tempDir, waitFor } from "./postgres.ts";

const ROOT = join(import.meta.dirname, "..", "..");

/** Run the `strata` CLI from the sources (e.g. `runStrataCli("setup-primary", "--config", file)`). */
export function runStrataCli(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return promisify(execFile)(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args], {
    cwd: ROOT,
  });
}

export interface StrataOptions {
  primary: TestCluster;
  slot?: string;
  dataDir?: string;
  config?: Record<string, unknown>;
  replication?: Record<string, unknown>;
  /** Environment variables added to Strata's. */
  env?: Record<string, string>;
}

export class StrataProcess {
  child: ChildProcess | undefined;
  logs = "";
  /**
   * Over all starts: lines Node printed outside Strata's JSON log (loose text breaks log readers),
   * and deprecations logged (code a dependency's next major version breaks).
   */
  readonly looseNodeLines: string[] = [];
  readonly configFile: string;
  exited: Promise<number | null> = Promise.resolve(null);
  /** Environment variables added to Strata's (e.g. NODE_EXTRA_CA_CERTS), from the next start(). */
  env: Record<string, string> = {};

  constructor(
    readonly dataDir: string,
    readonly port: number,
    config: Record<string, unknown>,
  ) {
    this.configFile = join(dataDir, "..", `${dataDir.split("/").pop()}.yaml`);
    writeFileSync(this.configFile, stringify(config));
    onProcessExit(() => this.destroySync());
  }

  /** Stop the managed store a SIGKILLed Strata left running (synchronously, for exit handlers). */
  private stopOrphanedStoreSync(): void {
    const pgdata = clusterPaths({ root: join(this.dataDir, "store") }).pgdata;
    if (!existsSync(join(pgdata, "postmaster.pid"))) return;
    const user = storeOsUser();
    const ids = user ? { uid: user.uid, gid: user.gid } : {};
    try {
      execFileSync(findPgBinaries().pgCtl, ["stop", "-D", pgdata, "-m", "immediate", "-w"], {
        ...ids,
        stdio: "ignore",
      });
    } catch {
      // not running
    }
  }

  /** Kill Strata, stop its store, remove its directory: the end of every test's Strata. */
  destroySync(): void {
    this.child?.kill("SIGKILL");
    this.stopOrphanedStoreSync();
    // STRATA_TEST_KEEP=1 keeps the data directories (store logs) of a failing test for a look.
    if (!process.env.STRATA_TEST_KEEP) rmSync(join(this.dataDir, ".."), { recursive: true, force: true });
  }

  async start(): Promise<void> {
    this.logs = "";
    const child = spawn(
      process.execPath,
      // As bin/strata.js runs it: a small young generation keeps the memory bound.
      [
        "--max-semi-space-size=4",
        // Extra node flags for Strata alone, e.g. STRATA_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof"
        // to profile it in a test or benchmark (NODE_OPTIONS refuses --cpu-prof).
        ...(process.env.STRATA_NODE_ARGS ?? "").split(" ").filter(Boolean),
        // The benchmarks run the compiled CLI, as users do (bench/support/compiled.ts).
        ...(process.env.STRATA_RUN_COMPILED === "1"
          ? [join(ROOT, "dist/cli/main.js")]
          : ["--import", "tsx", join(ROOT, "src/cli/main.ts")]),
        "serve",
        "--config",
        this.configFile,
      ],
      {
        cwd: ROOT,
        env: { ...process.env, ...this.env },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    this.child = child;
    child.stderr!.on("data", (d) => {
      const text = d.toString();
      this.logs += text;
      for (const line of text.match(/^(\(node:\d+\) .*|.*"warning":"DeprecationWarning".*)$/gm) ?? [])
        this.looseNodeLines.push(line);
    });
    let closed = false;
    this.exited = new Promise((resolveExit) =>
      child.once("close", (code) => {
        closed = true;
        resolveExit(code);
      }),
    );
    // A Strata that died ends the wait too (`died` below has rejected by then, and wins the race).
    const ready = waitFor(
      "strata to accept connections",
      async () => this.logs.includes("strata is ready for connections") || closed,
      60_000,
    );
    const died = this.exited.then((code) => {
      throw new Error(`strata exited with ${code} before it was ready`);
    });
    await Promise.race([ready, died]).catch((err) => {
      throw new Error(`${err.message}\n--- strata log ---\n${this.logs}${this.storeReport()}`);
    });
  }

  /** The managed store's last log lines and its processes: where a start that hangs is waiting. */
  storeReport(): string {
    const { pgdata, logFile } = clusterPaths({ root: join(this.dataDir, "store") });
    const lines = existsSync(logFile)
      ? readFileSync(logFile, "utf8").split("\n").slice(-30).join("\n")
      : "(none)";
    let processes = "(no postmaster.pid)";
    const pidFile = join(pgdata, "postmaster.pid");
    if (existsSync(pidFile)) {
      const pid = readFileSync(pidFile, "utf8").split("\n")[0];
      try {
        processes = execFileSync("ps", ["-o", "pid,stat,etime,args", "--pid", pid, "--ppid", pid], {
          encoding: "utf8",
        });
      } catch (err) {
        processes = `postmaster ${pid}: ps found nothing (${(err as Error).message.split("\n")[0]})`;
      }
    }
    return `\n--- store log (tail) ---\n${lines}\n--- store processes ---\n${processes}`;
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<number | null> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    child.kill(signal);
    return await this.exited;
  }

  /** Stop with SIGTERM (which stops its store), or stop the store a SIGKILLed Strata left running. */
  async stop(): Promise<void> {
    await this.kill("SIGTERM");
    this.stopOrphanedStoreSync();
    assert.deepEqual(
      this.looseNodeLines,
      [],
      "Strata printed Node warnings outside its log, or deprecations",
    );
  }

  async waitForStreaming(timeoutMs = 60_000): Promise<void> {
    await waitFor(
      "replication to be streaming",
      async () => (await this.query("SELECT state FROM dolt_replication_status"))[0]?.state === "streaming",
      timeoutMs,
    ).catch((err) => {
      throw new Error(`${err.message}\n--- strata log ---\n${this.logs}`);
    });
  }

  /** The managed store's own socket, behind the listener (for tests that start a listener of their own). */
  storeEndpoint(): StoreEndpoint {
    return { path: join(clusterPaths({ root: join(this.dataDir, "store") }).socketDir, ".s.PGSQL.5432") };
  }

  connectionConfig(database = "postgres"): pg.ClientConfig {
    return { host: "127.0.0.1", port: this.port, user: TEST_USER, password: TEST_PASSWORD, database };
  }

  async query<T extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: unknown[] = [],
    database = "postgres",
  ): Promise<T[]> {
    const client = new pg.Client(this.connectionConfig(database));
    client.on("error", () => {}); // a Strata that dies mid-query fails the query, not the test process
    await client.connect();
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end();
    }
  }
}

export async function createStrata(options: StrataOptions): Promise<StrataProcess> {
  const port = await freePort();
  const dataDir = options.dataDir ?? join(tempDir("strata-replica-"), "data");
  const config = {
    log_level: "debug",
    data_dir: dataDir,
    listener: { host: "127.0.0.1", port },
    store: { settings: { fsync: false } },
    postgres_replication: {
      postgres_server_address: options.primary.host,
      postgres_port: options.primary.port,
      postgres_user: TEST_USER,
      postgres_password: TEST_PASSWORD,
      postgres_database: "postgres",
      slot_name: options.slot ?? "strata_slot",
      status_interval_ms: 1000,
      reconnect_max_delay_ms: 1000,
      ...options.replication,
    },
    ...options.config,
  };
  const strata = new StrataProcess(dataDir, port, config);
  strata.env = options.env ?? {};
  return strata;
}

export interface StandaloneStrataOptions {
  dataDir?: string;
  /** Keys added to the `listener` section (its host and port are chosen here). */
  listener?: Record<string, unknown>;
  config?: Record<string, unknown>;
  /** Environment variables added to Strata's. */
  env?: Record<string, string>;
}

/** A Strata without replication (no `postgres_replication`): its listener over its managed store. */
export async function createStandaloneStrata(options: StandaloneStrataOptions = {}): Promise<StrataProcess> {
  const port = await freePort();
  const dataDir = options.dataDir ?? join(tempDir("strata-standalone-"), "data");
  const config = {
    log_level: "debug",
    data_dir: dataDir,
    listener: { host: "127.0.0.1", port, ...options.listener },
    store: { settings: { fsync: false } },
    ...options.config,
  };
  const strata = new StrataProcess(dataDir, port, config);
  strata.env = options.env ?? {};
  return strata;
}

/** Start a standalone Strata and wait until it is ready for connections. */
export async function startStandaloneStrata(options: StandaloneStrataOptions = {}): Promise<StrataProcess> {
  const strata = await createStandaloneStrata(options);
  await strata.start();
  return strata;
}

/**
 * Start Strata and wait until its stream is up (the slot exists), so that every write the test
 * makes on the primary afterwards is replicated.
 */
export async function startStrata(options: StrataOptions): Promise<StrataProcess> {
  const strata = await createStrata(options);
  await strata.start();
  await strata.waitForStreaming();
  return strata;
}

/** Rows of `sql` on a client, as JSON text, for exact comparison across servers. */
export async function snapshot(
  run: (sql: string) => Promise<pg.QueryResultRow[]>,
  table: string,
  orderBy: string,
): Promise<string[]> {
  const rows = await run(`SELECT to_jsonb(t)::text AS j FROM ${table} t ORDER BY ${orderBy}`);
  return rows.map((r) => r.j);
}

/** Wait until the replica's rows of `table` equal the primary's. */
export async function waitForSameRows(
  primary: TestCluster,
  strata: StrataProcess,
  table: string,
  orderBy: string,
  timeoutMs = 60_000,
): Promise<string[]> {
  const expected = await snapshot((sql) => primary.query(sql), table, orderBy);
  let last: string[] = [];
  try {
    await waitFor(
      `replica ${table} to equal the primary`,
      async () => {
        last = await snapshot((sql) => strata.query(sql), table, orderBy);
        return JSON.stringify(last) === JSON.stringify(expected);
      },
      timeoutMs,
    );
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\nexpected ${expected.length} rows, replica has ${last.length}\nfirst difference: ${JSON.stringify(
        expected.find((r, i) => last[i] !== r),
      )} vs ${JSON.stringify(last.find((r, i) => expected[i] !== r))}\n--- strata log (tail) ---\n${strata.logs.split("\n").slice(-30).join("\n")}`,
    );
  }
  return expected;
}
