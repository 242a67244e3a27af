// What every benchmark script repeats: the durability settings its target clusters share, and
// its progress lines on stderr.
import { clock } from "./report.ts";

/** The same durability on every target cluster (and on Strata's managed store). */
export function durabilitySettings(fsync: boolean): Record<string, boolean> {
  return fsync
    ? { fsync: true, synchronous_commit: true, full_page_writes: true }
    : { fsync: false, synchronous_commit: false, full_page_writes: false };
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
