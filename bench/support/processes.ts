// The processes a bench starts: standalone Stratas (with their managed stores), Postgres clusters
// and client programs (pg_dump, pg_restore), all stopped at exit, also on failure or Ctrl-C; and
// how a bench reaches a Strata's store and its processes.
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import type pg from "pg";
import { clusterPaths } from "../../src/store/cluster.ts";
import { onProcessExit } from "../../test/support/cleanup.ts";
import { TEST_PASSWORD, TEST_USER, type TestCluster, tempDir } from "../../test/support/postgres.ts";
import { createStandaloneStrata, StrataProcess } from "../../test/support/strata.ts";
import * as procfs from "./procfs.ts";
import { pgProgram } from "./scaffold.ts";

// ---------------------------------------------------------------------------------------------
// The exit clean-up

const stratas = new Set<StrataProcess>();
const clusters = new Set<TestCluster>();
const children = new Set<ChildProcess>();

/**
 * Stop, at exit whatever the exit, every Strata (and its store), cluster and child program started
 * here or handed to `tracked`; temp directories (tempDir) are removed by the harness
 * (test/support/cleanup.ts), which removes a temp dir registered before a server only after the
 * server. On SIGINT/SIGTERM, see exitOnSignals.
 */
export function cleanUpAtExit(signalMessage: string): void {
  onProcessExit(() => {
    for (const child of children) child.kill("SIGKILL");
    for (const s of stratas) s.destroySync();
    for (const c of clusters) c.stopSync();
  });
  exitOnSignals(signalMessage);
}

/** On SIGINT/SIGTERM: `<signal>: <message>` on stderr and exit 130 (the exit runs the clean-up). */
export function exitOnSignals(message: string): void {
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: ${message}\n`);
      process.exit(130);
    });
  }
}

/** A Strata or cluster the bench started itself, stopped by the exit clean-up unless stopped before. */
export function tracked<T extends StrataProcess | TestCluster>(server: T): T {
  if (server instanceof StrataProcess) stratas.add(server);
  else clusters.add(server);
  return server;
}

/** `work`, or an error naming `what` once `ms` have passed (the work itself is left to the exit clean-up). */
export async function withDeadline<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 60_000} min`)), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// Stratas and clusters

/**
 * A standalone Strata in a directory of the bench's own (`<dirPrefix>*`): log_level info, its
 * managed store with `storeSettings`, `config` added; started with `env` added to its environment.
 */
export async function startBenchStrata(
  dirPrefix: string,
  storeSettings: Record<string, unknown>,
  options: { config?: Record<string, unknown>; env?: Record<string, string> } = {},
): Promise<StrataProcess> {
  const strata = await createStandaloneStrata({
    dataDir: join(tempDir(dirPrefix), "data"),
    config: { log_level: "info", store: { settings: storeSettings }, ...options.config },
  });
  tracked(strata);
  strata.env = options.env ?? {};
  await strata.start();
  return strata;
}

export async function stopStrata(s: StrataProcess | undefined): Promise<void> {
  if (!s) return;
  await s.stop().catch(() => {});
  s.destroySync();
  stratas.delete(s);
}

export async function stopCluster(c: TestCluster | undefined): Promise<void> {
  if (!c) return;
  await c.stop().catch(() => {});
  clusters.delete(c);
}

/** Throw when the Strata process has exited. */
export function checkAlive(s: StrataProcess): void {
  const child = s.child;
  if (child && (child.exitCode !== null || child.signalCode !== null))
    throw new Error(`strata exited (${child.exitCode ?? child.signalCode})`);
}

export function strataPid(s: StrataProcess): number {
  const pid = s.child?.pid;
  if (!pid) throw new Error("strata has no pid");
  return pid;
}

export function storePostmaster(s: StrataProcess): number {
  const pgdata = clusterPaths({ root: join(s.dataDir, "store") }).pgdata;
  const pid = procfs.postmasterPid(pgdata);
  if (!pid) throw new Error(`no postmaster.pid in ${pgdata}`);
  return pid;
}

/**
 * What Strata's own store connections send (src/store/store.ts) as their options: the store's
 * triggers let their DDL and writes (and restores) through.
 */
export const INTERNAL_WRITER = "-c strata.applying=on";

/** How to reach a Strata's managed store directly: its unix socket directory (port 5432 names the socket). */
export function storeConfig(s: StrataProcess, database = "postgres"): pg.ClientConfig {
  const socketDir = clusterPaths({ root: join(s.dataDir, "store") }).socketDir;
  return { host: socketDir, port: 5432, user: TEST_USER, password: TEST_PASSWORD, database };
}

// ---------------------------------------------------------------------------------------------
// Client programs

export interface PgProgramRun {
  child: ChildProcess;
  /** Resolves when the program exits 0; rejects with the tail of its stderr otherwise. */
  done: Promise<void>;
}

/**
 * A Postgres client program (pg_dump, pg_restore, ...) of the server's installation, with `pgEnv`
 * in place of the PG* variables of the bench's own environment; stopped by the exit clean-up.
 * `onLine` gets each stderr line as it arrives, with when.
 */
export function runPgProgram(
  program: string,
  args: string[],
  options: {
    pgEnv: Record<string, string>;
    stdin: "ignore" | "pipe";
    stdout: "ignore" | "pipe";
    onLine?: (line: string, at: number) => void;
  },
): PgProgramRun {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith("PG")) delete env[key];
  Object.assign(env, options.pgEnv);
  const child = spawn(pgProgram(program), args, { env, stdio: [options.stdin, options.stdout, "pipe"] });
  children.add(child);
  const onLine = options.onLine;
  let stderr = "";
  let partial = "";
  child.stderr!.on("data", (d: Buffer) => {
    const at = performance.now();
    stderr = (stderr + d.toString()).slice(-4000);
    if (!onLine) return;
    partial += d.toString();
    const lines = partial.split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) onLine(line, at);
  });
  const done = new Promise<void>((resolveDone, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => {
      children.delete(child);
      if (code === 0) resolveDone();
      else reject(new Error(`${program} exited with ${code ?? signal}: ${stderr.slice(-2000)}`));
    });
  });
  done.catch(() => {});
  return { child, done };
}

/**
 * pg_dump with `dumpArgs` piped into pg_restore with `restoreArgs`, both with `pgEnv` (see
 * runPgProgram). Resolves to the bytes of the dump.
 */
export async function dumpIntoRestore(
  dumpArgs: string[],
  restoreArgs: string[],
  pgEnv: Record<string, string>,
): Promise<number> {
  const dump = runPgProgram("pg_dump", dumpArgs, { pgEnv, stdin: "ignore", stdout: "pipe" });
  const restore = runPgProgram("pg_restore", restoreArgs, { pgEnv, stdin: "pipe", stdout: "ignore" });
  let bytes = 0;
  dump.child.stdout!.on("data", (d: Buffer) => {
    bytes += d.length;
  });
  dump.child.stdout!.pipe(restore.child.stdin!);
  restore.child.stdin!.on("error", () => {}); // pg_restore gone: its own exit says why
  await Promise.all([dump.done, restore.done]);
  return bytes;
}
