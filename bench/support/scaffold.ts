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
