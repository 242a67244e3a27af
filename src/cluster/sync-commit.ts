// Synchronous replication to standbys (dolt_cluster_ack_writes_timeout_secs), built on Postgres's
// own: the primary's store lists the standbys that commits wait for in synchronous_standby_names
// (ANY n of n: every one of them) with synchronous_commit = remote_apply, so a commit returns, and
// becomes visible to other sessions, once every listed standby has applied it.
//
// Postgres would wait for ever; Dolt's timeout and circuit breaker are kept here. A commit that has
// waited for the timeout is cancelled out of its wait (it has committed: it returns with Postgres's
// warning), and the standbys that had not caught up leave the list, so later commits stop waiting
// for them; the other commits waiting then are let go with the warning too. After that, until
// the standbys are back, commits return without waiting and without a warning (as in Dolt). A standby joins the list (again) when it is streaming and has replayed what the
// primary had written one observation earlier: it keeps up.
//
// This module decides; the controller observes the store and applies the decisions.

/** A standby's walsender on the primary's store (pg_stat_replication). */
export interface ObservedStandby {
  /** Its application_name: the standby's slot name (store-roles.ts slotName). */
  name: string;
  state: string;
  replayLsn: bigint | undefined;
}

/** A backend waiting in its commit for the standbys (pg_stat_activity wait_event SyncRep). */
export interface ObservedWaiter {
  pid: number;
  /** Its transaction id, so that the next commit of the same backend is a new wait. */
  xid: string;
}

export interface SyncObservation {
  now: number;
  /** dolt_cluster_ack_writes_timeout_secs in ms; 0 is off. */
  timeoutMs: number;
  currentLsn: bigint;
  standbys: ObservedStandby[];
  waiters: ObservedWaiter[];
}

export interface SyncDecision {
  /** The standbys commits wait for now (synchronous_standby_names), sorted. */
  members: string[];
  joined: string[];
  left: string[];
  /**
   * Backends to let go with a warning: the waits that timed out, and with them every other wait
   * on the standbys that leave (the list's change would release them silently).
   */
  cancel: ObservedWaiter[];
}

/** synchronous_standby_names for `members`: all of them ('' when none). */
export function synchronousStandbyNames(members: readonly string[]): string {
  if (members.length === 0) return "";
  return `ANY ${members.length} (${members.map((m) => `"${m.replace(/"/g, '""')}"`).join(", ")})`;
}

interface Wait {
  since: number;
  /** The primary's WAL position when the wait was first seen: at or past the commit's. */
  mark: bigint;
  cancelled: boolean;
}

export class SyncCommitBreaker {
  private current = new Set<string>();
  private readonly waits = new Map<string, Wait>();
  /** Changes at each reset: an observation begun before one is stale (see the controller). */
  generation = 0;
  /** The primary's WAL position at the previous observation. */
  private previousLsn?: bigint;

  /** @param isStandby which application names are this cluster's standbys (not a base backup's). */
  constructor(private readonly isStandby: (name: string) => boolean) {}

  get members(): string[] {
    return [...this.current].sort();
  }

  /** Forget everything (the node is no longer primary, or is leaving primary). */
  reset(): void {
    this.generation++;
    this.current.clear();
    this.waits.clear();
    this.previousLsn = undefined;
  }

  /** What changes after this observation, or undefined when nothing does. */
  observe(o: SyncObservation): SyncDecision | undefined {
    const previous = this.previousLsn;
    this.previousLsn = o.currentLsn;
    const left: string[] = [];
    const joined: string[] = [];
    const cancel: ObservedWaiter[] = [];
    if (o.timeoutMs <= 0) {
      this.waits.clear();
      left.push(...this.current);
      this.current.clear();
      return this.decision(joined, left, cancel);
    }
    // The waits that reached the timeout, and the furthest WAL position one of them waits for.
    let expiredMark: bigint | undefined;
    const seen = new Set<string>();
    for (const waiter of o.waiters) {
      const key = `${waiter.pid}/${waiter.xid}`;
      seen.add(key);
      let wait = this.waits.get(key);
      if (!wait) {
        wait = { since: o.now, mark: o.currentLsn, cancelled: false };
        this.waits.set(key, wait);
      }
      if (wait.cancelled || o.now - wait.since < o.timeoutMs) continue;
      if (expiredMark === undefined || wait.mark > expiredMark) expiredMark = wait.mark;
    }
    for (const key of this.waits.keys()) if (!seen.has(key)) this.waits.delete(key);
    const byName = new Map(o.standbys.map((s) => [s.name, s]));
    if (expiredMark !== undefined) {
      const mark = expiredMark;
      const behind = [...this.current].filter((name) => {
        const s = byName.get(name);
        return s?.state !== "streaming" || s.replayLsn === undefined || s.replayLsn < mark;
      });
      // None is behind by what we see (it caught up a moment ago): the breaker opens for all.
      for (const name of behind.length > 0 ? behind : [...this.current]) {
        this.current.delete(name);
        left.push(name);
      }
      for (const waiter of o.waiters) {
        const wait = this.waits.get(`${waiter.pid}/${waiter.xid}`)!;
        if (wait.cancelled) continue;
        wait.cancelled = true;
        cancel.push(waiter);
      }
      return this.decision(joined, left, cancel);
    }
    const keepsUp = previous ?? o.currentLsn;
    for (const s of o.standbys) {
      if (this.current.has(s.name) || !this.isStandby(s.name)) continue;
      if (s.state === "streaming" && s.replayLsn !== undefined && s.replayLsn >= keepsUp) {
        this.current.add(s.name);
        joined.push(s.name);
      }
    }
    return this.decision(joined, left, cancel);
  }

  private decision(joined: string[], left: string[], cancel: ObservedWaiter[]): SyncDecision | undefined {
    if (left.length === 0 && joined.length === 0 && cancel.length === 0) return undefined;
    return { members: this.members, joined, left, cancel };
  }
}
