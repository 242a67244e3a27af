// How long a batch that has caught up with the stream waits for more transactions before it
// commits. Every store transaction costs the same round trips and statements whatever it holds,
// so on a busy primary a batch per upstream transaction costs more CPU than the rate allows and
// the stream falls behind; waiting a few ms gathers transactions. On a quiet primary the wait
// gathers nothing and is pure lag: at 100 pgbench TPS, a 5 ms wait put the replica's median lag at
// 5.9 ms against 0.55 ms without it, for the same CPU (docs/decisions.md §12). So the batch waits
// only while transactions arrive often enough for the wait to gather more of them.
//
// Pure: times are milliseconds from any monotonic clock (performance.now()).

/** The wait is worth it only if it is expected to gather at least this many more transactions. */
const MIN_EXPECTED_TRANSACTIONS = 2;
/** Weight of the newest gap in the running mean of the gaps between arrivals. */
const GAP_WEIGHT = 0.25;

export class BatchLinger {
  private lastArrival: number | undefined;
  /** Running mean of the time between two transactions' arrivals; unknown until two arrive. */
  private meanGap = Number.POSITIVE_INFINITY;

  /** @param limitMs the longest a caught-up batch waits, counted from its first transaction's arrival. */
  constructor(readonly limitMs: number) {}

  /** An upstream transaction began arriving at `at`. */
  arrived(at: number): void {
    if (this.lastArrival !== undefined) {
      const gap = Math.max(0, at - this.lastArrival);
      this.meanGap = Number.isFinite(this.meanGap) ? this.meanGap + GAP_WEIGHT * (gap - this.meanGap) : gap;
    }
    this.lastArrival = at;
  }

  /**
   * How much longer a caught-up batch whose first transaction arrived at `batchArrivedAt` should
   * wait at `now`: 0 to commit now.
   */
  waitMs(now: number, batchArrivedAt: number): number {
    if (this.meanGap * MIN_EXPECTED_TRANSACTIONS > this.limitMs) return 0;
    return Math.max(0, this.limitMs - (now - batchArrivedAt));
  }
}
