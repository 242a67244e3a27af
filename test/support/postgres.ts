// Throwaway PostgreSQL clusters for tests: initdb in a temp dir, a random loopback port,
// wal_level=logical. Every cluster is stopped and removed when the test process exits, even when
// a test fails; tests should still call stop() in an `after` hook.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { findPgBinaries, type PgBinaries } from "../../src/store/binaries.ts";
import {
  type ClusterSpec,
  clusterPaths,
  initCluster,
  startCluster,
  stopCluster,
} from "../../src/store/cluster.ts";
import { storeOsUser } from "../../src/store/os-user.ts";
import { onProcessExit } from "./cleanup.ts";

export const TEST_USER = "postgres";
export const TEST_PASSWORD = "password";

/** A loopback port nothing listens on now (the kernel's pick). */
function unboundPort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

// Ports handed out, one file each, shared by the test files that run at once: between freePort()
// and the server binding it, the kernel may offer the same unbound port to another test process.
export const PORT_RESERVATIONS = join(tmpdir(), "strata-test-ports");

function reservationHolderAlive(file: string): boolean {
  try {
    process.kill(Number(readFileSync(file, "utf8")), 0);
    return true;
  } catch (err) {
    // EPERM: alive, someone else's; anything else (ESRCH, an unreadable file): gone.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * A free loopback port, reserved for this test process until it exits. `offer` stands in for
 * the kernel's pick in the helper's own test.
 */
export async function freePort(offer: () => Promise<number> = unboundPort): Promise<number> {
  mkdirSync(PORT_RESERVATIONS, { recursive: true, mode: 0o1777 });
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await offer();
    const file = join(PORT_RESERVATIONS, String(port));
    try {
      writeFileSync(file, String(process.pid), { flag: "wx" });
    } catch {
      // Another test process holds it (or a process that died without cleaning up: free it).
      if (!reservationHolderAlive(file)) rmSync(file, { force: true });
      continue;
    }
    onProcessExit(() => rmSync(file, { force: true }));
    return port;
  }
  throw new Error(`no free port: 100 ports offered by the kernel were all reserved in ${PORT_RESERVATIONS}`);
}

/** A fresh directory that the store's unprivileged OS user can traverse, removed at exit. */
export function tempDir(prefix = "strata-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  // Removed when the test process ends, whoever else forgets to.
  // STRATA_TEST_KEEP=1 keeps them, to look at a failing test's store logs.
  if (!process.env.STRATA_TEST_KEEP) onProcessExit(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export class TestCluster {
  readonly host = "127.0.0.1";
  private stopped = false;
  private readonly unregister: () => void;
  constructor(
    readonly spec: ClusterSpec,
    readonly port: number,
  ) {
    this.unregister = onProcessExit(() => this.stopSync());
  }

  get url(): string {
    return `postgres://${TEST_USER}:${TEST_PASSWORD}@${this.host}:${this.port}/postgres`;
  }

  connectionConfig(database = "postgres"): pg.ClientConfig {
    return { host: this.host, port: this.port, user: TEST_USER, password: TEST_PASSWORD, database };
  }

  async connect(database = "postgres"): Promise<pg.Client> {
    const client = new pg.Client(this.connectionConfig(database));
    await client.connect();
    return client;
  }

  /** Run SQL on a fresh connection and return the rows. */
  async query<T extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: unknown[] = [],
    database = "postgres",
  ): Promise<T[]> {
    const client = await this.connect(database);
    try {
      return (await client.query<T>(sql, params)).rows;
    } finally {
      await client.end();
    }
  }

  async restart(): Promise<void> {
    await stopCluster(this.spec);
    await startCluster(this.spec);
  }

  async stopServer(mode: "fast" | "immediate" = "fast"): Promise<void> {
    await stopCluster(this.spec, mode);
  }

  async startServer(): Promise<void> {
    await startCluster(this.spec);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.unregister();
    try {
      await stopCluster(this.spec, "immediate");
    } finally {
      rmSync(this.spec.root, { recursive: true, force: true });
    }
  }

  stopSync(): void {
    if (this.stopped) return;
    this.stopped = true;
    try {
      const opts = this.spec.osUser ? { uid: this.spec.osUser.uid, gid: this.spec.osUser.gid } : {};
      execFileSync(
        this.spec.bin.pgCtl,
        ["stop", "-D", clusterPaths(this.spec).pgdata, "-m", "immediate", "-w"],
        { ...opts, stdio: "ignore" },
      );
    } catch {
      // already stopped
    }
    rmSync(this.spec.root, { recursive: true, force: true });
  }
}

export interface PrimaryOptions {
  settings?: Record<string, string | number | boolean>;
  /** pg_hba.conf lines before the defaults (scram-sha-256 for everyone). */
  hba?: string[];
  /** Server binaries of another version than the machine's (test/support/pg-versions.ts). */
  bin?: PgBinaries;
}

/** A primary for replication tests: wal_level=logical, fsync off (tests never crash the OS). */
export async function startPrimary(options: PrimaryOptions = {}): Promise<TestCluster> {
  const port = await freePort();
  const spec: ClusterSpec = {
    root: tempDir("strata-primary-"),
    bin: options.bin ?? findPgBinaries(),
    osUser: storeOsUser(),
    superuser: TEST_USER,
    password: TEST_PASSWORD,
    port,
    listenAddresses: "127.0.0.1",
    hba: options.hba,
    settings: {
      wal_level: "logical",
      max_wal_senders: 10,
      max_replication_slots: 10,
      fsync: false,
      synchronous_commit: false,
      full_page_writes: false,
      ...options.settings,
    },
  };
  const cluster = new TestCluster(spec, port);
  try {
    await initCluster(spec);
    await startCluster(spec);
  } catch (err) {
    await cluster.stop().catch(() => {});
    throw err;
  }
  return cluster;
}

/** Wait until `check` returns a truthy value, polling; fail with `what` after the deadline. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false | null>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (let delay = 10; ; delay = Math.min(delay * 2, 250)) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: last error ${lastError}` : ""}`,
      );
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}
