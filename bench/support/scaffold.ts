// What every benchmark script repeats: its usage and option errors, the durability settings its
// target clusters share, its progress lines on stderr, the Postgres programs it runs, the
// machine and code it ran on, and the file of its figures.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, realpathSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { findPgBinaries, type PgBinaries } from "../../src/store/binaries.ts";
import { clock } from "./report.ts";

/**
 * A bench's usage text: with `help` (its -h/--help option) it is printed to stdout and the process
 * exits 0; the function returned prints an option error and the usage to stderr and exits 2.
 */
export function usageExits(usage: string, help: boolean | undefined): (message: string) => never {
  if (help) {
    process.stdout.write(`${usage}\n`);
    process.exit(0);
  }
  return (message: string): never => {
    process.stderr.write(`${message}\n${usage}\n`);
    process.exit(2);
  };
}

/** The same durability on every target cluster (and on Strata's managed store). */
export function durabilitySettings(fsync: boolean): Record<string, boolean> {
  return fsync
    ? { fsync: true, synchronous_commit: true, full_page_writes: true }
    : { fsync: false, synchronous_commit: false, full_page_writes: false };
}

/**
 * durabilitySettings, and fewer forced checkpoints for bulk loads and restores: the same for Strata
 * and for pg_restore on a store.
 */
export function bulkLoadSettings(fsync: boolean): Record<string, boolean | string> {
  return { ...durabilitySettings(fsync), max_wal_size: "4GB", checkpoint_timeout: "30min" };
}

/** Progress lines on stderr, stamped with the time since the bench started and the current phase. */
export function progressReporter(): {
  progress: (message: string) => void;
  phase: (name: string) => void;
  endPhase: () => void;
} {
  const benchStart = performance.now();
  let phaseName = "";
  const progress = (message: string) => {
    process.stderr.write(`[${clock(performance.now() - benchStart)}] ${phaseName}${message}\n`);
  };
  return {
    progress,
    phase(name: string) {
      phaseName = `${name}: `;
      progress("start");
    },
    endPhase() {
      phaseName = "";
    },
  };
}

/** A table's row count and a digest of its contents, compared across a primary and a replica. */
export interface TableSum {
  rows: number;
  digest: string;
}

/** What differs between the primary's sums and a target's (empty when they agree). */
export function compareChecksums(
  expected: Record<string, TableSum>,
  got: Record<string, TableSum>,
): string[] {
  const problems: string[] = [];
  for (const [name, want] of Object.entries(expected)) {
    const have = got[name];
    if (!have) problems.push(`${name}: missing`);
    else if (have.rows !== want.rows)
      problems.push(`${name}: ${have.rows} rows, the primary has ${want.rows}`);
    else if (have.digest !== want.digest)
      problems.push(`${name}: same row count (${want.rows}) but different contents`);
  }
  return problems;
}

let binaries: PgBinaries | undefined;

/** The Postgres server binaries (looked up once). */
function serverBinaries(): PgBinaries {
  binaries ??= findPgBinaries();
  return binaries;
}

/**
 * A client program (pgbench, psql, pg_dump, ...) of the same installation as the server binaries
 * (which may be symlinks into it); its bare name, for the PATH, when there is none there.
 */
export function pgProgram(name: string): string {
  const bin = serverBinaries();
  for (const dir of [dirname(realpathSync(bin.postgres)), bin.dir]) {
    const path = join(dir, name);
    if (existsSync(path)) return path;
  }
  return name;
}

/** The machine a bench ran on, for its report and its JSON: CPUs, memory, OS, Node and Postgres. */
export function machineInfo() {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpuModel: cpus[0]?.model,
    memoryGb: Number((os.totalmem() / 1024 ** 3).toFixed(1)),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: execFileSync(serverBinaries().postgres, ["--version"], { encoding: "utf8" }).trim(),
  };
}

/** The commit of the Strata code under test, and whether src/ differs from it. */
export function codeVersion(): { commit?: string; srcModified?: boolean } {
  const git = (args: string[]) =>
    execFileSync("git", args, {
      cwd: join(import.meta.dirname, "..", ".."),
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  try {
    return {
      commit: git(["rev-parse", "--short", "HEAD"]),
      srcModified: git(["status", "--porcelain", "src"]) !== "",
    };
  } catch {
    return {};
  }
}

/**
 * Write a bench's figures to bench/results/<benchmark>-<startedAt>.json (after its name, start and
 * finish) and say where on stdout.
 */
export function writeResults(benchmark: string, startedAt: Date, figures: Record<string, unknown>): void {
  const dir = join(import.meta.dirname, "..", "results");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${benchmark}-${startedAt.toISOString().replace(/[:.]/g, "-")}.json`);
  const json = {
    benchmark,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    ...figures,
  };
  writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
  process.stdout.write(`\nfigures written to ${file}\n`);
}

/** Run a bench's main: its result is the exit code; an error is printed with its stack, exit 1. */
export function runBench(main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
      process.exit(1);
    },
  );
}

/** Add the tail of a Strata process's log to an error from a run that used it. */
export function withStrataLogTail(err: unknown, strata: { logs: string } | undefined): unknown {
  if (strata && err instanceof Error)
    err.message += `\n--- strata log (tail) ---\n${strata.logs.split("\n").slice(-20).join("\n")}`;
  return err;
}
