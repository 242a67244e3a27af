// Progress of an initial snapshot: one object fed by the copy workers and read by three views
// that always show the same figures —
//
//   workers ──add(rows, bytes)/itemDone──▶ SnapshotProgress ──summary(now)──▶ live display (TTY)
//                                                                       ├──▶ progress log lines
//                                                                       └──▶ dolt_replication_status
//
// Estimates come from the primary's catalog read under the snapshot: pg_class.reltuples for rows
// (unknown for a never-analyzed table) and pg_table_size for bytes (on-disk, with TOAST; the
// copied figure is COPY text, so the two only roughly agree). A table's completion fraction uses
// rows when their estimate is known, bytes otherwise, capped below 1 until its last item is done;
// the overall fraction weighs tables by estimated bytes. ETAs extrapolate the elapsed time by
// the remaining fraction. Everything here is pure except ProgressReporter, which owns the timer
// and the terminal.
import type { Logger } from "../log.ts";

export interface TableEstimate {
  rel: string;
  /** null: never analyzed on the primary. */
  rowsEstimate: number | null;
  bytesEstimate: number;
  items: number;
}

interface TableState extends TableEstimate {
  rows: number;
  bytes: number;
  itemsDone: number;
  startedAt: number | undefined;
  doneAt: number | undefined;
}

export interface Figures {
  rows: number;
  bytes: number;
  rowsEstimate: number | null;
  bytesEstimate: number;
  rowsPerSecond: number;
  bytesPerSecond: number;
  /** 0..1 */
  fraction: number;
  /** Seconds left; null before anything was copied, 0 once done. */
  etaSeconds: number | null;
}

export interface TableFigures extends Figures {
  rel: string;
  state: "pending" | "copying" | "done";
  items: number;
  itemsDone: number;
}

export interface ProgressSummary {
  total: Figures;
  tablesDone: number;
  tablesTotal: number;
  tables: TableFigures[];
  elapsedSeconds: number;
}

const FRACTION_CAP = 0.99;

function fractionOf(rows: number, bytes: number, rowsEstimate: number | null, bytesEstimate: number): number {
  if (rowsEstimate !== null && rowsEstimate > 0) return rows / rowsEstimate;
  if (bytesEstimate > 0) return bytes / bytesEstimate;
  return 0;
}

function figures(
  rows: number,
  bytes: number,
  rowsEstimate: number | null,
  bytesEstimate: number,
  fraction: number,
  done: boolean,
  seconds: number,
): Figures {
  const f = done ? 1 : Math.min(FRACTION_CAP, Math.max(0, fraction));
  return {
    rows,
    bytes,
    rowsEstimate,
    bytesEstimate,
    rowsPerSecond: seconds > 0 ? rows / seconds : 0,
    bytesPerSecond: seconds > 0 ? bytes / seconds : 0,
    fraction: f,
    etaSeconds: done ? 0 : f > 0 && seconds > 0 ? (seconds * (1 - f)) / f : null,
  };
}

export class SnapshotProgress {
  private tables: TableState[] = [];
  private startedAt: number;
  private finishedAt: number | undefined;

  constructor(now = Date.now()) {
    this.startedAt = now;
  }

  /** The tables and their estimates, once planned (the clock starts here). */
  plan(tables: readonly TableEstimate[], now = Date.now()): void {
    this.startedAt = now;
    this.finishedAt = undefined;
    this.tables = tables.map((t) => ({
      ...t,
      rows: 0,
      bytes: 0,
      itemsDone: 0,
      startedAt: undefined,
      doneAt: t.items === 0 ? now : undefined,
    }));
  }

  get planned(): boolean {
    return this.tables.length > 0;
  }

  /** A worker began an item of `table`. */
  itemStarted(table: number, now = Date.now()): void {
    const t = this.tables[table];
    if (t && t.startedAt === undefined) t.startedAt = now;
  }

  add(table: number, rows: number, bytes: number): void {
    const t = this.tables[table];
    if (!t) return;
    t.rows += rows;
    t.bytes += bytes;
  }

  /** An item of `table` is durable in the store; true when it was the table's last. */
  itemDone(table: number, now = Date.now()): boolean {
    const t = this.tables[table];
    if (!t) return false;
    t.itemsDone++;
    if (t.itemsDone >= t.items && t.doneAt === undefined) {
      t.doneAt = now;
      return true;
    }
    return false;
  }

  finish(now = Date.now()): void {
    this.finishedAt = now;
  }

  tableSeconds(table: number, now = Date.now()): number {
    const t = this.tables[table];
    if (!t || t.startedAt === undefined) return 0;
    return ((t.doneAt ?? now) - t.startedAt) / 1000;
  }

  summary(now = Date.now()): ProgressSummary {
    const end = this.finishedAt ?? now;
    const elapsed = Math.max(0, (end - this.startedAt) / 1000);
    const tables: TableFigures[] = this.tables.map((t) => {
      const done = t.doneAt !== undefined;
      const seconds = t.startedAt === undefined ? 0 : ((t.doneAt ?? now) - t.startedAt) / 1000;
      return {
        rel: t.rel,
        state: done ? "done" : t.startedAt === undefined ? "pending" : "copying",
        items: t.items,
        itemsDone: t.itemsDone,
        ...figures(
          t.rows,
          t.bytes,
          t.rowsEstimate,
          t.bytesEstimate,
          fractionOf(t.rows, t.bytes, t.rowsEstimate, t.bytesEstimate),
          done,
          seconds,
        ),
      };
    });
    const rows = tables.reduce((n, t) => n + t.rows, 0);
    const bytes = tables.reduce((n, t) => n + t.bytes, 0);
    const known = tables.filter((t) => t.rowsEstimate !== null);
    const rowsEstimate = known.length ? known.reduce((n, t) => n + (t.rowsEstimate ?? 0), 0) : null;
    const bytesEstimate = tables.reduce((n, t) => n + t.bytesEstimate, 0);
    const tablesDone = tables.filter((t) => t.state === "done").length;
    const allDone = this.finishedAt !== undefined || (tables.length > 0 && tablesDone === tables.length);
    // Tables weigh by their estimated size; when nothing has a size, by count.
    const weight = (t: TableFigures) => (bytesEstimate > 0 ? t.bytesEstimate : 1);
    const totalWeight = tables.reduce((n, t) => n + weight(t), 0);
    const fraction =
      totalWeight > 0 ? tables.reduce((n, t) => n + weight(t) * t.fraction, 0) / totalWeight : 0;
    return {
      total: figures(rows, bytes, rowsEstimate, bytesEstimate, fraction, allDone, elapsed),
      tablesDone,
      tablesTotal: tables.length,
      tables,
      elapsedSeconds: elapsed,
    };
  }
}

// Rendering.

const UNITS = ["B", "kB", "MB", "GB", "TB"];

export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v.toFixed(0) : v.toFixed(1)} ${UNITS[u]}`;
}

export function formatCount(n: number): string {
  if (Math.abs(n) < 10_000) return String(Math.round(n));
  if (Math.abs(n) < 1_000_000) return `${(n / 1000).toFixed(1)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

// Most telling first: a narrow terminal clips the rates, not the percentage or the ETA.
function line(label: string, f: Figures): string {
  const est = f.rowsEstimate !== null ? `/~${formatCount(f.rowsEstimate)}` : "";
  return `${label}  ${(f.fraction * 100).toFixed(0).padStart(3)}%  ETA ${formatDuration(f.etaSeconds)}  ${formatCount(f.rows)}${est} rows  ${formatBytes(f.bytes)}  ${formatCount(f.rowsPerSecond)} rows/s  ${formatBytes(f.bytesPerSecond)}/s`;
}

const clip = (text: string, width: number) => (text.length > width ? `${text.slice(0, width - 1)}…` : text);

/**
 * The live display: an overall line, then the tables being copied (largest estimate first), then
 * a line counting the rest; at most `maxLines` lines of at most `width` characters.
 */
export function renderDisplay(summary: ProgressSummary, width: number, maxLines: number): string[] {
  const lines = [
    line(
      `initial snapshot (${formatDuration(summary.elapsedSeconds)}): ${summary.tablesDone}/${summary.tablesTotal} tables`,
      summary.total,
    ),
  ];
  const copying = summary.tables
    .filter((t) => t.state === "copying")
    .sort((a, b) => b.bytesEstimate - a.bytesEstimate);
  const room = Math.max(0, maxLines - 2);
  for (const t of copying.slice(0, room)) {
    const chunks = t.items > 1 ? ` [${t.itemsDone}/${t.items} chunks]` : "";
    lines.push(line(`  ${t.rel}${chunks}`, t));
  }
  const pending = summary.tables.filter((t) => t.state === "pending").length;
  const hidden = Math.max(0, copying.length - room);
  const rest = [
    hidden ? `${hidden} more copying` : "",
    pending ? `${pending} waiting` : "",
    summary.tablesDone ? `${summary.tablesDone} done` : "",
  ].filter(Boolean);
  if (rest.length && lines.length < maxLines) lines.push(`  ${rest.join(", ")}`);
  return lines.map((l) => clip(l, Math.max(20, width)));
}

/** The figures as log fields (the progress line and the status table use the same ones). */
export function progressFields(summary: ProgressSummary): Record<string, unknown> {
  const t = summary.total;
  return {
    tables_done: summary.tablesDone,
    tables_total: summary.tablesTotal,
    rows: t.rows,
    rows_estimate: t.rowsEstimate,
    bytes: t.bytes,
    bytes_estimate: t.bytesEstimate,
    percent: Number((t.fraction * 100).toFixed(1)),
    rows_per_second: Math.round(t.rowsPerSecond),
    bytes_per_second: Math.round(t.bytesPerSecond),
    eta_seconds: t.etaSeconds === null ? null : Math.round(t.etaSeconds),
    copying: summary.tables
      .filter((x) => x.state === "copying")
      .map((x) => ({
        table: x.rel,
        rows: x.rows,
        bytes: x.bytes,
        percent: Number((x.fraction * 100).toFixed(1)),
        eta_seconds: x.etaSeconds === null ? null : Math.round(x.etaSeconds),
      })),
  };
}

const DISPLAY_INTERVAL_MS = 1000;
const LOG_INTERVAL_MS = 5000;

/**
 * Shows a SnapshotProgress: redrawn in place on a terminal about once a second, otherwise a log
 * line every few seconds. Log lines of the snapshot itself go through `log()`, which lifts the
 * display off the screen first so that the two do not overwrite each other.
 */
export class ProgressReporter {
  private timer: NodeJS.Timeout | undefined;
  private drawn = 0;

  constructor(
    private readonly progress: SnapshotProgress,
    private readonly logger: Logger,
    private readonly terminal: NodeJS.WriteStream | undefined = process.stderr.isTTY
      ? process.stderr
      : undefined,
  ) {}

  start(): void {
    const tick = () => {
      if (this.terminal) this.draw();
      else this.logger.info(progressFields(this.progress.summary()), "initial snapshot: progress");
    };
    this.timer = setInterval(tick, this.terminal ? DISPLAY_INTERVAL_MS : LOG_INTERVAL_MS);
    this.timer.unref();
    if (this.terminal) this.draw();
  }

  /** Write a log line without tearing the display. */
  log(write: (logger: Logger) => void): void {
    this.erase();
    write(this.logger);
    if (this.timer && this.terminal) this.draw();
  }

  /** Stop; the last frame stays on a terminal as the record of the copy. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.terminal) {
      this.draw();
      this.drawn = 0;
    }
  }

  private erase(): void {
    if (!this.terminal || this.drawn === 0) return;
    this.terminal.write(`\x1b[${this.drawn}F\x1b[J`);
    this.drawn = 0;
  }

  private draw(): void {
    const t = this.terminal;
    if (!t) return;
    const lines = renderDisplay(
      this.progress.summary(),
      t.columns || 100,
      Math.max(3, Math.min(12, (t.rows || 24) - 4)),
    );
    this.erase();
    t.write(`${lines.join("\n")}\n`);
    this.drawn = lines.length;
  }
}
