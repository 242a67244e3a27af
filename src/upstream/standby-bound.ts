// How far every hot standby of a cluster primary has flushed the primary's store WAL: what a
// replicating primary may acknowledge upstream is bounded by it (replicator.ts), so that the
// upstream slot never lets go of a change some standby lacks.
//
// Each standby streams through its own physical slot on the primary's store. A slot's restart_lsn
// is the flush position its standby last reported, but only once it has reported one: a slot made
// with reserved WAL starts at the last checkpoint's redo point, which says nothing about the
// standby. So a standby counts by the flush it reports while it streams (pg_stat_replication),
// and, once it has reported one to this store since this process began, by its slot's restart_lsn
// while it does not. Until then, and while its node id or its slot is unknown, it holds
// everything back. So does a lost slot (as with PostgreSQL 17's synchronized_standby_slots): its
// standby can no longer stream, but it could still be promoted with what it has.

/** One configured standby: its standby_remotes name, and its slot's name once its node id is known. */
export interface ClusterStandby {
  name: string;
  slot?: string;
}

/** A slot as the store shows it (pg_replication_slots, with its walsender's pg_stat_replication row). */
export interface StandbySlotRow {
  slot: string;
  lost: boolean;
  restartLsn: bigint | null;
  /** The flush position its standby reports while it streams (null when it does not). */
  streamingFlush: bigint | null;
}

export interface StandbyPosition {
  name: string;
  /** How far it has flushed, as far as is known (0 when nothing is). */
  flushed: bigint;
  /** Why nothing is known, when nothing is. */
  unknown?: string;
}

export class StandbyBound {
  /** Slots whose standby has reported a flush to this store since this object was made. */
  private readonly reported = new Set<string>();

  /** Each standby, with how far it has flushed; an empty list means nothing bounds the acknowledgements. */
  positions(standbys: readonly ClusterStandby[], rows: readonly StandbySlotRow[]): StandbyPosition[] {
    const bySlot = new Map(rows.map((r) => [r.slot, r]));
    const positions: StandbyPosition[] = [];
    for (const standby of standbys) {
      if (!standby.slot) {
        positions.push({
          name: standby.name,
          flushed: 0n,
          unknown: "never heard from by this node, so its slot is not known",
        });
        continue;
      }
      const row = bySlot.get(standby.slot);
      if (!row) {
        positions.push({
          name: standby.name,
          flushed: 0n,
          unknown: `its slot ${standby.slot} does not exist yet`,
        });
        continue;
      }
      if (row.lost) {
        positions.push({
          name: standby.name,
          flushed: 0n,
          unknown: `its slot ${row.slot} was lost (this store removed WAL it still needed): stop it, empty its data directory and start it again, to take a new base backup`,
        });
        continue;
      }
      if (row.streamingFlush !== null) {
        this.reported.add(row.slot);
        positions.push({ name: standby.name, flushed: row.streamingFlush });
      } else if (this.reported.has(row.slot) && row.restartLsn !== null) {
        positions.push({ name: standby.name, flushed: row.restartLsn });
      } else {
        positions.push({
          name: standby.name,
          flushed: 0n,
          unknown: "it has not streamed from this server yet",
        });
      }
    }
    return positions;
  }
}

/** The least of the positions, or null when none bounds (no standby waited for). */
export function leastFlushed(positions: readonly StandbyPosition[]): bigint | null {
  let least: bigint | null = null;
  for (const p of positions) if (least === null || p.flushed < least) least = p.flushed;
  return least;
}
