// CPU time and memory of processes and of whole PostgreSQL clusters, read from /proc (Linux).
//
// A cluster is its postmaster plus the children it forked. CPU time of a cluster is the
// postmaster's own time, the time of children it already reaped (cutime/cstime) and the time of
// the children still alive. Memory of a cluster is the sum of its processes' PSS (proportional
// set size), so shared buffers mapped by every backend are counted once, not once per process.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

let ticks: number | undefined;

/** Clock ticks per second (the unit of utime/stime in /proc/<pid>/stat). */
export function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

interface Stat {
  ppid: number;
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
}

function readStat(pid: number): Stat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // fields[0] is field 3 (state); utime is field 14 → fields[11].
  return {
    ppid: Number(fields[1]),
    utime: Number(fields[11]),
    stime: Number(fields[12]),
    cutime: Number(fields[13]),
    cstime: Number(fields[14]),
  };
}

/** utime + stime of one process, in seconds (undefined when it is gone). */
export function cpuSeconds(pid: number): number | undefined {
  const stat = readStat(pid);
  return stat ? (stat.utime + stat.stime) / clockTicks() : undefined;
}

/** Live direct children of `pid`. */
export function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readStat(Number(name));
    if (stat?.ppid === pid) children.push(Number(name));
  }
  return children;
}

function statusKb(pid: number, field: string): number | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text);
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Peak resident set size of a process (VmHWM), in kB. */
export function peakRssKb(pid: number): number | undefined {
  return statusKb(pid, "VmHWM");
}

/**
 * Reset a process's peak RSS (VmHWM) to its current RSS, so that a later peakRssKb() is the peak
 * since now: writes "5" to /proc/<pid>/clear_refs (Linux 4.0+; the process must be ours). False
 * when that is not possible.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** Proportional set size of a process, in kB (0 when it is gone). */
export function pssKb(pid: number): number {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const match = /^Pss:\s+(\d+) kB/m.exec(text);
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/** The postmaster's pid from PGDATA/postmaster.pid (undefined when the cluster is not running). */
export function postmasterPid(pgdata: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(pgdata, "postmaster.pid"), "utf8").split("\n")[0]);
    return pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds consumed so far by a cluster: postmaster, its reaped children and live children. */
export function clusterCpuSeconds(postmaster: number): number {
  const own = readStat(postmaster);
  if (!own) return 0;
  let total = own.utime + own.stime + own.cutime + own.cstime;
  for (const child of childrenOf(postmaster)) {
    const stat = readStat(child);
    if (stat) total += stat.utime + stat.stime;
  }
  return total / clockTicks();
}

/** Sum of the PSS of a cluster's processes, in kB. */
export function clusterPssKb(postmaster: number): number {
  let total = pssKb(postmaster);
  for (const child of childrenOf(postmaster)) total += pssKb(child);
  return total;
}
