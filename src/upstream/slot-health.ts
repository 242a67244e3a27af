// The health of Strata's replication slot on the primary, seen from the primary's catalog.
//
// A logical slot pins WAL on the primary from its restart_lsn onwards. While Strata is behind or
// not running, that WAL grows, and the primary's disk with it; a primary with
// max_slot_wal_keep_size set removes it past that size instead, and the slot is then "lost":
// replication cannot continue from it and the replica must be copied again. So Strata watches:
//
//   every ~30 s: pg_replication_slots ──▶ SlotHealth { exists, active, wal_status, retained, lost }
//        retained > slot_wal_warning_mb ──▶ warning (logged on crossing, repeated every 10 min)
//        lost / invalidated             ──▶ error with the remedy (slotLostError)
//
// Columns by server version: wal_status and safe_wal_size since 13, `conflicting` since 16
// (invalidated by a recovery conflict, for slots on a standby), `invalidation_reason` since 17.
// An invalidated slot has no restart_lsn, so its retained WAL is unknown (null).
import type pg from "pg";
import { ApplyError } from "../apply/errors.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import type { Logger } from "../log.ts";
import { upstreamConnectionConfig } from "./setup.ts";

export interface SlotHealth {
  checkedAt: Date;
  serverVersion: number;
  slotName: string;
  exists: boolean;
  active: boolean;
  /** The walsender streaming from the slot. */
  activePid: number | null;
  /** reserved / extended / unreserved / lost (PG 13+; null before). */
  walStatus: string | null;
  /** WAL the slot keeps on the primary: current WAL position - restart_lsn, in bytes. */
  retainedBytes: number | null;
  /** WAL that can still be written before the slot is lost (PG 13+, with max_slot_wal_keep_size). */
  safeWalBytes: number | null;
  /** PG 16+: invalidated by a recovery conflict. */
  conflicting: boolean | null;
  /** PG 17+: why the slot was invalidated (wal_removed, rows_removed, wal_level_insufficient, ...). */
  invalidationReason: string | null;
  /** The slot can no longer be streamed from. */
  lost: boolean;
  /** retainedBytes exceeds slot_wal_warning_mb. */
  overWarning: boolean;
  /** The user-facing warning when overWarning. */
  warning?: string;
}

export const MB = 1024 * 1024;

function formatBytes(bytes: number): string {
  if (bytes >= 1024 * MB) return `${(bytes / (1024 * MB)).toFixed(1)} GB`;
  if (bytes >= MB) return `${(bytes / MB).toFixed(1)} MB`;
  return `${(bytes / 1024).toFixed(1)} kB`;
}

function slotQuery(version: number): string {
  const current =
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END";
  const columns = [
    "active",
    "active_pid",
    `(${current} - restart_lsn)::text AS retained`,
    version >= 130000 ? "wal_status" : "NULL::text AS wal_status",
    version >= 130000 ? "safe_wal_size::text AS safe_wal_size" : "NULL::text AS safe_wal_size",
    version >= 160000 ? "conflicting" : "NULL::boolean AS conflicting",
    version >= 170000 ? "invalidation_reason" : "NULL::text AS invalidation_reason",
  ];
  return `SELECT ${columns.join(", ")} FROM pg_replication_slots WHERE slot_name = $1`;
}

/** The slot's state on the primary. Uses `client` (a connection to the primary) if given. */
export async function inspectSlot(cfg: PostgresReplicationConfig, client?: pg.Client): Promise<SlotHealth> {
  const own = client
    ? undefined
    : await connect({ ...upstreamConnectionConfig(cfg), application_name: "strata slot monitor" });
  const c = client ?? own!;
  try {
    const version = Number((await c.query("SHOW server_version_num")).rows[0].server_version_num);
    const { rows } = await c.query(slotQuery(version), [cfg.slot_name]);
    const row = rows[0];
    const health: SlotHealth = {
      checkedAt: new Date(),
      serverVersion: version,
      slotName: cfg.slot_name,
      exists: Boolean(row),
      active: Boolean(row?.active),
      activePid: row?.active_pid ?? null,
      walStatus: row?.wal_status ?? null,
      retainedBytes: row?.retained != null ? Number(row.retained) : null,
      safeWalBytes: row?.safe_wal_size != null ? Number(row.safe_wal_size) : null,
      conflicting: row?.conflicting ?? null,
      invalidationReason: row?.invalidation_reason ?? null,
      lost: false,
      overWarning: false,
    };
    health.lost =
      health.walStatus === "lost" || health.conflicting === true || health.invalidationReason !== null;
    const limit = cfg.slot_wal_warning_mb * MB;
    if (!health.lost && health.retainedBytes !== null && health.retainedBytes > limit) {
      health.overWarning = true;
      health.warning = slotWalWarning(cfg, health);
    }
    return health;
  } finally {
    await own?.end().catch(() => {});
  }
}

function slotWalWarning(cfg: PostgresReplicationConfig, h: SlotHealth): string {
  const why = h.active
    ? "Strata is streaming but has not caught up"
    : "nothing is streaming from it (Strata is stopped, or stopped by an error: see dolt_replication_status)";
  const safe =
    h.safeWalBytes !== null
      ? `; ${formatBytes(h.safeWalBytes)} more and the primary invalidates the slot`
      : "";
  return (
    `replication slot "${cfg.slot_name}" retains ${formatBytes(h.retainedBytes ?? 0)} of WAL on the primary ` +
    `${cfg.postgres_server_address}:${cfg.postgres_port}, more than postgres_replication.slot_wal_warning_mb ` +
    `(${cfg.slot_wal_warning_mb} MB): ${why}${safe}. The primary keeps this WAL on disk until Strata confirms it; ` +
    "if this replica is gone for good, remove the slot with `strata drop-slot`"
  );
}

function describeLoss(h: Pick<SlotHealth, "walStatus" | "conflicting" | "invalidationReason">): string {
  switch (h.invalidationReason) {
    case "wal_removed":
      return "the primary removed WAL the slot still needed (max_slot_wal_keep_size was exceeded)";
    case "rows_removed":
      return "the primary removed catalog rows the slot still needed (a recovery conflict)";
    case "wal_level_insufficient":
      return "the primary's wal_level was lowered below logical";
    case "idle_timeout":
      return "the slot was idle longer than the primary's idle_replication_slot_timeout";
    case null:
      break;
    default:
      return `invalidation_reason = ${h.invalidationReason}`;
  }
  if (h.walStatus === "lost")
    return "wal_status = lost: the primary removed WAL the slot still needed (max_slot_wal_keep_size was exceeded)";
  if (h.conflicting) return "conflicting = true: invalidated by a recovery conflict";
  return "the primary invalidated it";
}

/**
 * The error for a lost/invalidated slot: what happened and what to do. Its message is
 * "<problem>; fix: <remedy>" like every ApplyError.
 */
export function slotLostError(
  cfg: PostgresReplicationConfig,
  health: Pick<SlotHealth, "walStatus" | "conflicting" | "invalidationReason">,
): ApplyError {
  return new ApplyError(
    `replication slot "${cfg.slot_name}" on the primary ${cfg.postgres_server_address}:${cfg.postgres_port} ` +
      `can no longer be used: ${describeLoss(health)}. The changes Strata had not yet replicated are gone from the ` +
      "primary, so the replica cannot continue from where it stopped and must be copied again",
    "set postgres_replication.resync: auto in the config and restart Strata to take a fresh snapshot automatically; " +
      "or run `strata drop-slot --config <file>` and restart `strata serve` with an empty data_dir (move the old " +
      "one aside to keep its history). To keep it from happening again, raise max_slot_wal_keep_size on the " +
      "primary (-1: unlimited) and act on slot_wal_warning_mb warnings",
  );
}

/** slotLostError's message as text. */
export function slotLostMessage(
  cfg: PostgresReplicationConfig,
  health: Pick<SlotHealth, "walStatus" | "conflicting" | "invalidationReason">,
): string {
  return slotLostError(cfg, health).message;
}

export interface SlotMonitorOptions {
  config: PostgresReplicationConfig;
  log: Logger;
  /** Between checks (default 30 s). */
  intervalMs?: number;
  /** Before the first check (default 0: at start, before the stream moves the slot). */
  firstCheckMs?: number;
  /** While above the threshold, the warning is repeated this often (default 10 min). */
  repeatWarningMs?: number;
  /** Told every check's outcome (the replicator shows it in dolt_replication_status). */
  onHealth?: (health: SlotHealth) => void;
}

/**
 * Checks the slot periodically and logs: a warning when retained WAL crosses
 * slot_wal_warning_mb, an error when the slot is lost. Never throws; `latest` and `lastError`
 * hold the outcome of the last check for the status table and the replicator.
 */
export class SlotMonitor {
  latest: SlotHealth | undefined;
  lastError: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private stopped = false;
  private warnedAt = 0;
  private reportedLost = false;
  /** checkSoon() was called during a check. */
  private again = false;
  private readonly intervalMs: number;

  constructor(private readonly options: SlotMonitorOptions) {
    this.intervalMs = options.intervalMs ?? 30_000;
  }

  start(): void {
    this.schedule(this.options.firstCheckMs ?? 0);
  }

  private schedule(delay: number) {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.check().finally(() => {
        this.running = undefined;
        this.schedule(this.again ? 0 : this.intervalMs);
        this.again = false;
      });
    }, delay);
  }

  /**
   * Check soon, out of turn (the replicator made the slot, or started streaming from it): the
   * status row then shows the slot's retained WAL at once, not an interval later.
   */
  checkSoon(): void {
    if (this.stopped) return;
    // A check under way may have asked before the slot existed: another follows it.
    if (this.running) {
      this.again = true;
      return;
    }
    clearTimeout(this.timer);
    this.schedule(0);
  }

  /** Check now; returns the health, or undefined when the primary could not be asked. */
  async check(): Promise<SlotHealth | undefined> {
    const { config, log } = this.options;
    let health: SlotHealth;
    try {
      health = await inspectSlot(config);
    } catch (err) {
      const message = (err as Error).message;
      // The replicator reports an unreachable primary already: say it once, not every interval.
      if (message !== this.lastError)
        log.warn(
          { slot: config.slot_name, err: message },
          "could not check the replication slot on the primary",
        );
      this.lastError = message;
      return undefined;
    }
    if (this.lastError) log.info({ slot: config.slot_name }, "checking the replication slot works again");
    this.lastError = undefined;
    this.latest = health;
    this.options.onHealth?.(health);
    const fields = {
      slot: health.slotName,
      exists: health.exists,
      active: health.active,
      wal_status: health.walStatus,
      retained_bytes: health.retainedBytes,
    };
    log.debug(fields, "replication slot health");
    if (health.lost) {
      if (!this.reportedLost) log.error(fields, slotLostMessage(config, health));
      this.reportedLost = true;
    } else {
      this.reportedLost = false;
    }
    const now = Date.now();
    if (health.overWarning) {
      if (now - this.warnedAt >= (this.options.repeatWarningMs ?? 600_000)) {
        log.warn(fields, health.warning);
        this.warnedAt = now;
      }
    } else if (this.warnedAt) {
      log.info(fields, "the replication slot's retained WAL is below slot_wal_warning_mb again");
      this.warnedAt = 0;
    }
    return health;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }
}
