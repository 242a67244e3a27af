// How busy the whole machine was, and how much of that was not the benchmark's own processes: on a
// shared machine, other work running at the same time skews a measurement, and this says by how
// much. Linux only (/proc).
import { readFileSync } from "node:fs";
import { clockTicks, clusterCpuSeconds, cpuSeconds } from "./procfs.ts";

/**
 * CPU seconds all CPUs spent running processes since boot (user, nice and system time, from
 * /proc/stat). Interrupt and softirq time is left out: the kernel does not charge it to any
 * process, so it could not be told apart from the bench's own (loopback networking is mostly that).
 */
export function machineBusySeconds(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0];
  // cpu user nice system idle iowait irq softirq steal guest guest_nice
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  return (f[0] + f[1] + f[2]) / clockTicks();
}

/** CPU seconds of this process and of its children that have ended (pgbench runs, once reaped). */
export function selfCpuSecondsWithChildren(): number {
  const text = readFileSync("/proc/self/stat", "utf8");
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(fields[i]));
  return (utime + stime + cutime + cstime) / clockTicks();
}

/** The processes a benchmark owns: single processes (by pid) and clusters (by postmaster pid). */
export interface OwnProcesses {
  pids: number[];
  postmasters: number[];
}

function ownCpu(own: OwnProcesses): number {
  let total = selfCpuSecondsWithChildren();
  for (const pid of own.pids) total += cpuSeconds(pid) ?? 0;
  for (const pm of own.postmasters) total += clusterCpuSeconds(pm);
  return total;
}

/**
 * Start a window; its `end()` gives the wall seconds, the machine's busy CPU seconds, and the CPU
 * seconds that the benchmark's own processes did not account for (other work on the machine).
 */
export function loadWindow(
  own: OwnProcesses,
): () => { seconds: number; busyCpuSeconds: number; otherCpuSeconds: number } {
  const started = performance.now();
  const busy0 = machineBusySeconds();
  const own0 = ownCpu(own);
  return () => {
    const busy = machineBusySeconds() - busy0;
    const mine = ownCpu(own) - own0;
    return {
      seconds: (performance.now() - started) / 1000,
      busyCpuSeconds: busy,
      otherCpuSeconds: Math.max(0, busy - mine),
    };
  };
}
