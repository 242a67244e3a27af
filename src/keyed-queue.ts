/**
 * Work run one at a time per key (a database), in the order it was asked for. A failure is its
 * caller's: the work after it still runs. Keys with nothing queued take no memory.
 */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>();

  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const next = previous.then(work, work);
    const settled = next.then(
      () => {},
      () => {},
    );
    this.tails.set(key, settled);
    settled.then(() => {
      if (this.tails.get(key) === settled) this.tails.delete(key);
    });
    return next;
  }

  /** Settles once everything queued now has run. */
  async idle(): Promise<void> {
    await Promise.all([...this.tails.values()]);
  }
}
