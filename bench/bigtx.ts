// Memory while replicating one very large transaction (default 2 GB of WAL):
//
//   node --import tsx bench/bigtx.ts [--gb 2] [--memory-limit-mb 64]
//
// The primary (default logical_decoding_work_mem = 64MB) streams the transaction in progress, so
// Strata buffers it until Stream Commit: in memory up to memory_limit_mb, then in a spill file.
// The bound documented in the README holds if Strata's peak RSS stays under it. Strata's RSS is
// sampled every 250 ms and its VmHWM read at the end; the replica is checked against the primary.
// Prints a table; writes bench/results/bigtx-<timestamp>.json.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startPrimary, waitFor } from "../test/support/postgres.ts";
import { startStrata } from "../test/support/strata.ts";
import { useCompiledStrata } from "./support/compiled.ts";
import { peakRssKb } from "./support/procfs.ts";
import { fixed, table, thousands } from "./support/report.ts";

const { values } = parseArgs({
  options: { gb: { type: "string", default: "2" }, "memory-limit-mb": { type: "string", default: "64" } },
});
const gb = Number(values.gb);
const memoryLimitMb = Number(values["memory-limit-mb"]);
// ~1.1 kB of WAL per row: a 992-byte payload plus tuple and record headers.
const rows = Math.round((gb * 1024 ** 3) / 1130);
const BOUND_MB = 256;
const log = (m: string) => process.stderr.write(`[bigtx ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

/** Current resident set size of a process, in kB (0 when it is gone). */
function rssKb(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

useCompiledStrata();
const primary = await startPrimary();
let strata: Awaited<ReturnType<typeof startStrata>> | undefined;
try {
  await primary.query("CREATE TABLE big (id bigint PRIMARY KEY, payload text)");
  strata = await startStrata({
    primary,
    replication: { memory_limit_mb: memoryLimitMb },
    config: { log_level: "info", store: { settings: { fsync: true } } },
  });
  const pid = strata.child!.pid!;
  let peakSampled = 0;
  const sampler = setInterval(() => {
    peakSampled = Math.max(peakSampled, rssKb(pid));
  }, 250);
  const [{ start }] = await primary.query("SELECT pg_current_wal_insert_lsn()::text AS start");
  log(`primary: one transaction inserting ${thousands(rows)} rows`);
  const t0 = Date.now();
  await primary.query(
    `INSERT INTO big SELECT i, repeat(md5(i::text), 31) FROM generate_series(1, ${rows}) i`,
  );
  const [{ end, wal }] = await primary.query(
    "SELECT pg_current_wal_insert_lsn()::text AS end, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)::bigint AS wal",
    [start],
  );
  log(
    `generated ${(Number(wal) / 1024 ** 3).toFixed(2)} GB of WAL in ${((Date.now() - t0) / 1000).toFixed(0)} s; waiting for Strata`,
  );
  const t1 = Date.now();
  let lastProgress = t1;
  await waitFor(
    "Strata to acknowledge the transaction",
    async () => {
      const [r] = await primary.query(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'strata_slot'",
        [end],
      );
      if (Date.now() - lastProgress > 30_000) {
        lastProgress = Date.now();
        log(`... ${((Date.now() - t1) / 1000).toFixed(0)} s, RSS ${(rssKb(pid) / 1024).toFixed(0)} MB`);
      }
      return r?.ok;
    },
    4 * 3600_000,
  );
  const applySeconds = (Date.now() - t1) / 1000;
  clearInterval(sampler);
  const hwmKb = peakRssKb(pid) ?? peakSampled;
  const [count] = await strata.query("SELECT count(*) AS n, sum(length(payload))::bigint AS bytes FROM big");
  const ok = Number(count.n) === rows;
  const spilled = /streamed transaction spilling to disk/.test(strata.logs);
  const result = {
    benchmark: "bigtx",
    machine: {
      cpus: os.cpus().length,
      memoryGb: Number((os.totalmem() / 1024 ** 3).toFixed(1)),
      node: process.version,
    },
    rows,
    walBytes: Number(wal),
    memoryLimitMb,
    spilledToDisk: spilled,
    applySeconds,
    strataPeakRssMb: Number((hwmKb / 1024).toFixed(1)),
    boundMb: BOUND_MB,
    withinBound: hwmKb / 1024 < BOUND_MB,
    replicaRowsMatch: ok,
  };
  console.log(
    table(
      [
        "transaction WAL",
        "rows",
        "memory_limit_mb",
        "spilled",
        "apply s",
        "strata peak RSS MB",
        "bound MB",
        "replica ok",
      ],
      [
        [
          `${(Number(wal) / 1024 ** 3).toFixed(2)} GB`,
          thousands(rows),
          String(memoryLimitMb),
          spilled ? "yes" : "no",
          fixed(applySeconds, 0),
          fixed(hwmKb / 1024, 0),
          String(BOUND_MB),
          ok ? "yes" : "NO",
        ],
      ],
    ),
  );
  mkdirSync(join(import.meta.dirname, "results"), { recursive: true });
  writeFileSync(
    join(import.meta.dirname, "results", `bigtx-${new Date().toISOString().replace(/[:.]/g, "-")}.json`),
    `${JSON.stringify(result, null, 2)}\n`,
  );
  if (!ok || !result.withinBound) process.exitCode = 1;
} finally {
  await strata?.stop();
  await primary.stop();
}
