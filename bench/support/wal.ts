// The WAL a server wrote: how much, how many full-page images, how many checkpoints. A replica's
// WAL is much of what it costs to apply changes, and full-page images after each checkpoint can
// be most of it (docs/performance.md, "The store's compression and checkpoints").
import { type Endpoint, withClient } from "./workloads.ts";

export interface WalStats {
  mb: number;
  /** Full-page images: after a checkpoint, the first change to a page (hint bits included) logs it whole. */
  fullPageImages: number;
  checkpoints: number;
}

/** The server's WAL counters (pg_stat_wal, PostgreSQL 14+) and checkpoints so far. */
export async function walStats(endpoint: Endpoint): Promise<WalStats | undefined> {
  return withClient(endpoint, async (c) => {
    const version = Number((await c.query("SHOW server_version_num")).rows[0].server_version_num);
    // PostgreSQL 17 moved the checkpoint counters to pg_stat_checkpointer.
    const checkpoints =
      version >= 170000
        ? "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
        : "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter";
    const { rows } = await c.query<{ bytes: string; fpi: string; checkpoints: string }>(
      `SELECT wal_bytes::text AS bytes, wal_fpi::text AS fpi, (${checkpoints})::text AS checkpoints
         FROM pg_stat_wal`,
    );
    return {
      mb: Number((Number(rows[0].bytes) / 1048576).toFixed(0)),
      fullPageImages: Number(rows[0].fpi),
      checkpoints: Number(rows[0].checkpoints),
    };
  }).catch(() => undefined);
}

/** What was written between two readings (undefined if either is missing, or the counters were reset). */
export function walSince(before: WalStats | undefined, after: WalStats | undefined): WalStats | undefined {
  if (!before || !after || after.mb < before.mb) return undefined;
  return {
    mb: after.mb - before.mb,
    fullPageImages: after.fullPageImages - before.fullPageImages,
    checkpoints: after.checkpoints - before.checkpoints,
  };
}
