// `strata status`: where replication is (dolt_replication_status), what is uncommitted
// (dolt_status: nothing, on a replica, where every applied transaction is a commit), and HEAD.
// Read in one statement, so that the three agree.
import type pg from "pg";
import type { LoadedConfig } from "../config/load.ts";
import { formatBytes, formatCount } from "../upstream/progress.ts";
import { SHORT_HASH } from "./log.ts";
import { type Output, oneLine, paint, writeTable } from "./output.ts";
import { connectHistoryReader } from "./replica-client.ts";

interface Head {
  commit_hash: string;
  committer: string;
  date: string;
  message: string;
  upstream_lsn: string | null;
}

interface Stream {
  slot_name: string;
  upstream: string;
  publication: string;
  state: string;
  phase: string | null;
  received_lsn: string | null;
  flushed_lsn: string | null;
  lag_bytes: number | null;
  lag_ms: number | null;
  last_message_time: string | null;
  current_error: string | null;
  warning: string | null;
  updated_at: string;
  snapshot_tables_done: number | null;
  snapshot_tables_total: number | null;
  snapshot_rows: number | null;
  snapshot_bytes: number | null;
  snapshot_rows_estimate: number | null;
  snapshot_bytes_estimate: number | null;
  slot_retained_wal_bytes: number | null;
}

interface WorkingChange {
  table_name: string;
  staged: boolean;
  status: string;
}

interface Status {
  head: Head | null;
  replication: Stream[];
  status: WorkingChange[];
}

export async function statusCommand(loaded: LoadedConfig, out: Output): Promise<void> {
  const client = await connectHistoryReader(loaded, "status");
  try {
    await writeStatus(client, out);
  } finally {
    await client.end().catch(() => {});
  }
}

export async function writeStatus(client: pg.Client, out: Output): Promise<void> {
  // JSON made by the store: values keep their exact form (LSNs, 64-bit figures) in --json.
  const { rows } = await client.query<{ json: string }>(
    `SELECT '{"head":' || coalesce((SELECT to_json(l)::text FROM dolt.dolt_log l ORDER BY l.commit_order DESC LIMIT 1), 'null')
         || ',"replication":' || coalesce((SELECT json_agg(r ORDER BY r.slot_name)::text FROM dolt.dolt_replication_status r), '[]')
         || ',"status":' || coalesce((SELECT json_agg(s ORDER BY s.table_name)::text FROM dolt.dolt_status s), '[]')
         || '}' AS json`,
  );
  const json = rows[0].json;
  if (!out.human) {
    await out.line(json);
    return;
  }
  const status = JSON.parse(json) as Status;
  const lines: string[][] = [];
  const head = status.head;
  lines.push([
    "HEAD",
    head
      ? `${paint(out, "yellow", head.commit_hash.slice(0, SHORT_HASH))}  ${when(head.date)}  ${oneLine(head.message)}`
      : "no commits yet",
  ]);
  if (status.replication.length === 0) {
    lines.push([
      "replication",
      "none (no stream has started: a config without postgres_replication, or starting)",
    ]);
  }
  for (const s of status.replication) {
    lines.push(["replication", oneLine(`${s.slot_name} from ${s.upstream} (publication ${s.publication})`)]);
    const state = s.phase && s.phase !== s.state ? `${s.state} (${s.phase})` : s.state;
    lines.push([
      "  state",
      paint(out, s.state === "error" ? "red" : s.state === "streaming" ? "green" : "yellow", state),
    ]);
    const lag = [
      s.lag_bytes !== null ? formatBytes(Number(s.lag_bytes)) : null,
      s.lag_ms !== null ? `${formatCount(Number(s.lag_ms))} ms` : null,
    ].filter(Boolean);
    lines.push([
      "  position",
      `received ${s.received_lsn ?? "-"}  flushed ${s.flushed_lsn ?? "-"}  lag ${lag.length ? lag.join(", ") : "-"}`,
    ]);
    if (s.last_message_time) lines.push(["  last message", when(s.last_message_time)]);
    // The snapshot's figures stay in the row afterwards; they are news only while it runs.
    if (s.phase === "snapshot" || s.state === "snapshot") {
      const rowsEst =
        s.snapshot_rows_estimate !== null ? `/~${formatCount(Number(s.snapshot_rows_estimate))}` : "";
      const bytesEst =
        s.snapshot_bytes_estimate !== null ? `/~${formatBytes(Number(s.snapshot_bytes_estimate))}` : "";
      lines.push([
        "  snapshot",
        `${s.snapshot_tables_done ?? 0}/${s.snapshot_tables_total ?? "?"} tables, ${formatCount(Number(s.snapshot_rows ?? 0))}${rowsEst} rows, ${formatBytes(Number(s.snapshot_bytes ?? 0))}${bytesEst}`,
      ]);
    }
    if (s.slot_retained_wal_bytes !== null) {
      lines.push([
        "  slot",
        `retains ${formatBytes(Number(s.slot_retained_wal_bytes))} of WAL on the primary`,
      ]);
    }
    lines.push(["  error", s.current_error ? paint(out, "red", oneLine(s.current_error)) : "none"]);
    if (s.warning) lines.push(["  warning", paint(out, "yellow", oneLine(s.warning))]);
    lines.push(["  updated", when(s.updated_at)]);
  }
  lines.push([
    "uncommitted",
    status.status.length === 0
      ? status.replication.length > 0
        ? "nothing (every replicated transaction is a commit)"
        : "nothing"
      : `${status.status.length} table${status.status.length === 1 ? "" : "s"}`,
  ]);
  for (const w of status.status) {
    lines.push([`  ${oneLine(w.table_name)}`, `${oneLine(w.status)}${w.staged ? " (staged)" : ""}`]);
  }
  await writeTable(out, [{ header: "" }, { header: "" }], lines, false);
}

/** A UTC timestamp from JSON (the session is in UTC) as "2025-05-01 10:00:03 UTC". */
function when(iso: string): string {
  return `${iso.slice(0, 19).replace("T", " ")} UTC`;
}
