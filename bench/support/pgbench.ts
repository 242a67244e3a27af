// pgbench as a benchmark client: run it against a server reached over TCP or a unix socket
// directory, and read its summary (transactions, failures, average latency, TPS).
import { type ChildProcess, spawn } from "node:child_process";
import { onProcessExit } from "../../test/support/cleanup.ts";
import { pgProgram } from "./scaffold.ts";

/** Where pgbench connects: `host` is an address or a unix socket directory (as libpq's -h). */
export interface PgbenchTarget {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** Startup options (PGOPTIONS), e.g. `-c name=value`. */
  options?: string;
}

// pgbench processes still running when the bench ends (an error elsewhere, Ctrl-C) are killed.
const running = new Set<ChildProcess>();
let cleanupInstalled = false;

/** Run pgbench with `args` against `target`; resolves to its stdout, rejects on a non-zero exit. */
export function runPgbench(
  target: PgbenchTarget,
  args: string[],
  log: (line: string) => void = () => {},
): Promise<string> {
  if (!cleanupInstalled) {
    cleanupInstalled = true;
    onProcessExit(() => {
      for (const child of running) child.kill("SIGKILL");
    });
  }
  const env: NodeJS.ProcessEnv = { ...process.env, PGPASSWORD: target.password };
  for (const key of Object.keys(env)) if (key.startsWith("PG") && key !== "PGPASSWORD") delete env[key];
  if (target.options) env.PGOPTIONS = target.options;
  const full = [...args, "-h", target.host, "-p", String(target.port), "-U", target.user, target.database];
  return new Promise((resolveRun, reject) => {
    const child = spawn(pgProgram("pgbench"), full, { env, stdio: ["ignore", "pipe", "pipe"] });
    running.add(child);
    let stdout = "";
    let stderr = "";
    let partial = "";
    child.stdout.on("data", (d) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d) => {
      stderr += d.toString();
      partial += d.toString();
      const lines = partial.split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) if (/^progress:/.test(line)) log(`pgbench ${line}`);
    });
    child.once("error", (err) => {
      running.delete(child);
      reject(err);
    });
    child.once("close", (code, signal) => {
      running.delete(child);
      if (code === 0) resolveRun(stdout);
      else
        reject(
          new Error(
            `pgbench ${args.join(" ")} (-h ${target.host} -p ${target.port}) exited with ${code ?? signal}\n${stderr.slice(-2000)}${stdout.slice(-2000)}`,
          ),
        );
    });
  });
}

/**
 * pgbench options for a fixed number of transactions from several clients: `clients` clients on up
 * to two threads, `transactionsPerClient` transactions each, prepared statements, a progress line
 * every 10 s (passed to runPgbench's `log`).
 */
export function pgbenchClientArgs(clients: number, transactionsPerClient: number): string[] {
  return [
    "-c",
    String(clients),
    "-j",
    String(Math.min(clients, 2)),
    "-t",
    String(transactionsPerClient),
    "-M",
    "prepared",
    "-P",
    "10",
  ];
}

/** What pgbench's closing summary says. */
export interface PgbenchSummary {
  transactions: number;
  failed: number;
  latencyAverageMs: number;
  /** Transactions per second, without the initial connection time (as pgbench reports it). */
  tps: number;
  initialConnectionMs?: number;
}

export function parsePgbenchSummary(stdout: string): PgbenchSummary {
  const number = (re: RegExp) => {
    const match = re.exec(stdout);
    return match ? Number(match[1]) : undefined;
  };
  const transactions = number(/number of transactions actually processed: (\d+)/);
  const tps = number(/tps = ([\d.]+)/);
  const latency = number(/latency average = ([\d.]+) ms/);
  if (transactions === undefined || tps === undefined || latency === undefined)
    throw new Error(`cannot read pgbench's summary:\n${stdout.slice(-2000)}`);
  return {
    transactions,
    failed: number(/number of failed transactions: (\d+)/) ?? 0,
    latencyAverageMs: latency,
    tps,
    initialConnectionMs: number(/initial connection time = ([\d.]+) ms/),
  };
}
