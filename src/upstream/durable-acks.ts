// Which upstream position may be acknowledged to the primary. The apply connection commits with
// synchronous_commit = off (a batch is visible at once, without waiting for the store's WAL
// flush), so a committed batch is durable only once the store's WAL is flushed past its commit
// record. Each batch's commit is recorded with where the store's WAL ended after it; a position is
// acknowledged once the store reports its WAL flushed that far. A crash of the store before that
// loses the batch and its position together, and the primary, never told, sends it again: no
// change lost, none applied twice. (PostgreSQL's own subscriber does the same.)

export class DurableAcks {
  /** Committed batches not yet known durable, oldest first: store WAL end, upstream position. */
  private readonly pending: { wal: bigint; position: bigint }[] = [];

  /** A batch committed: durable once the store's WAL is flushed to `wal`. */
  committed(wal: bigint, position: bigint): void {
    this.pending.push({ wal, position });
  }

  /** Where the store's WAL must be flushed to for the oldest waiting batch to be durable. */
  get oldestWal(): bigint | undefined {
    return this.pending[0]?.wal;
  }

  /** Whether committed batches wait for the store's WAL flush. */
  get waiting(): boolean {
    return this.pending.length > 0;
  }

  /**
   * The store's WAL is flushed to `flushed`: the furthest upstream position now durable, if any
   * batch became so.
   */
  flushedTo(flushed: bigint): bigint | undefined {
    let durable: bigint | undefined;
    while (this.pending.length > 0 && this.pending[0].wal <= flushed)
      durable = this.pending.shift()!.position;
    return durable;
  }
}
