// Buffers the changes of streamed in-progress transactions (pgoutput protocol >= 2) until their
// Stream Commit, and discards them on Stream Abort — of the whole transaction, or of an aborted
// subtransaction (its changes and everything after them, as Postgres's own apply worker does:
// subtransactions nest, so whatever follows an aborted subxact's first change belongs to it).
//
// Memory is bounded: when the bytes held across all open transactions pass `memoryLimit`, the
// largest transaction moves to a spill file in `spillDir`, and every later change of it is
// appended there. Entries are the raw pgoutput messages, replayed in order at commit.
//
//   memory entries ──(over the limit)──▶ spill file [u32 length][message]...  ──▶ replay at commit
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";

interface SubxactMark {
  subxid: number;
  memoryCount: number;
  fileBytes: number;
}

class StreamedTransaction {
  memory: Buffer[] = [];
  memoryBytes = 0;
  fd: number | undefined;
  fileBytes = 0;
  marks: SubxactMark[] = [];
  seen = new Set<number>();
  constructor(
    readonly xid: number,
    readonly path: string,
  ) {}
}

export class StreamBuffer {
  private readonly txs = new Map<number, StreamedTransaction>();
  private memoryBytes = 0;
  /** Bytes written to spill files since start (for status and tests). */
  spilledBytes = 0;

  constructor(
    private readonly spillDir: string,
    private readonly memoryLimit: number,
    private readonly onSpill: (xid: number, bytes: number) => void = () => {},
  ) {
    rmSync(spillDir, { recursive: true, force: true });
  }

  get openTransactions(): number {
    return this.txs.size;
  }

  has(xid: number): boolean {
    return this.txs.has(xid);
  }

  /** Append a message of transaction `xid`; `subxid` is the (sub)transaction that made it. */
  append(xid: number, subxid: number, message: Buffer): void {
    let tx = this.txs.get(xid);
    if (!tx) {
      tx = new StreamedTransaction(xid, join(this.spillDir, `xid-${xid}.spill`));
      this.txs.set(xid, tx);
    }
    if (subxid !== xid && !tx.seen.has(subxid)) {
      tx.seen.add(subxid);
      tx.marks.push({ subxid, memoryCount: tx.memory.length, fileBytes: tx.fileBytes });
    }
    if (tx.fd !== undefined) {
      this.writeEntry(tx, message);
      return;
    }
    tx.memory.push(message);
    tx.memoryBytes += message.length;
    this.memoryBytes += message.length;
    if (this.memoryBytes > this.memoryLimit) this.spillLargest();
  }

  private writeEntry(tx: StreamedTransaction, message: Buffer) {
    const header = Buffer.allocUnsafe(4);
    header.writeUInt32BE(message.length);
    // Positional writes: after a subtransaction abort truncates the file, the next entry must
    // land at the new end, not at the descriptor's old offset.
    writeSync(tx.fd!, header, 0, 4, tx.fileBytes);
    writeSync(tx.fd!, message, 0, message.length, tx.fileBytes + 4);
    tx.fileBytes += 4 + message.length;
    this.spilledBytes += 4 + message.length;
  }

  private spillLargest() {
    let largest: StreamedTransaction | undefined;
    for (const tx of this.txs.values()) if (!largest || tx.memoryBytes > largest.memoryBytes) largest = tx;
    if (!largest || largest.memoryBytes === 0) return;
    if (!existsSync(this.spillDir)) mkdirSync(this.spillDir, { recursive: true, mode: 0o700 });
    largest.fd = openSync(largest.path, "w+", 0o600);
    this.onSpill(largest.xid, largest.memoryBytes);
    // Memory entries move to the file; marks that pointed into memory now point into the file.
    const offsets: number[] = [];
    for (const entry of largest.memory) {
      offsets.push(largest.fileBytes);
      this.writeEntry(largest, entry);
    }
    for (const mark of largest.marks) {
      mark.fileBytes = mark.memoryCount < offsets.length ? offsets[mark.memoryCount] : largest.fileBytes;
      mark.memoryCount = 0;
    }
    this.memoryBytes -= largest.memoryBytes;
    largest.memory = [];
    largest.memoryBytes = 0;
  }

  /** Stream Abort: of the whole transaction (subxid === xid) or of one subtransaction. */
  abort(xid: number, subxid: number): void {
    const tx = this.txs.get(xid);
    if (!tx) return;
    if (subxid === xid) {
      this.discard(tx);
      return;
    }
    const at = tx.marks.findIndex((m) => m.subxid === subxid);
    if (at < 0) return; // the subtransaction made no changes
    const mark = tx.marks[at];
    for (const dropped of tx.marks.splice(at)) tx.seen.delete(dropped.subxid);
    if (tx.fd !== undefined) {
      ftruncateSync(tx.fd, mark.fileBytes);
      tx.fileBytes = mark.fileBytes;
    } else {
      const removed = tx.memory.splice(mark.memoryCount);
      const bytes = removed.reduce((n, b) => n + b.length, 0);
      tx.memoryBytes -= bytes;
      this.memoryBytes -= bytes;
    }
  }

  /** Stream Commit: the transaction's messages in order (reading the spill file in chunks), then forget it. */
  async *take(xid: number): AsyncGenerator<Buffer> {
    const tx = this.txs.get(xid);
    if (!tx) return;
    this.txs.delete(xid);
    this.memoryBytes -= tx.memoryBytes;
    try {
      if (tx.fd !== undefined) yield* readEntries(tx.fd, tx.fileBytes);
      yield* tx.memory;
    } finally {
      this.close(tx);
    }
  }

  private discard(tx: StreamedTransaction) {
    this.txs.delete(tx.xid);
    this.memoryBytes -= tx.memoryBytes;
    this.close(tx);
  }

  private close(tx: StreamedTransaction) {
    if (tx.fd !== undefined) {
      closeSync(tx.fd);
      tx.fd = undefined;
      rmSync(tx.path, { force: true });
    }
    tx.memory = [];
  }

  /** Forget everything (reconnect: the upstream resends open transactions from their start). */
  clear(): void {
    for (const tx of [...this.txs.values()]) this.discard(tx);
  }
}

const READ_CHUNK = 1024 * 1024;

function* readEntries(fd: number, length: number): Generator<Buffer> {
  let position = 0;
  let pending = Buffer.alloc(0);
  while (position < length || pending.length > 0) {
    if (pending.length >= 4) {
      const size = pending.readUInt32BE(0);
      if (pending.length >= 4 + size) {
        yield Buffer.from(pending.subarray(4, 4 + size));
        pending = pending.subarray(4 + size);
        continue;
      }
    }
    if (position >= length) throw new Error("spill file ends inside an entry");
    const chunk = Buffer.allocUnsafe(Math.min(READ_CHUNK, length - position));
    const read = readSync(fd, chunk, 0, chunk.length, position);
    position += read;
    pending = pending.length ? Buffer.concat([pending, chunk.subarray(0, read)]) : chunk.subarray(0, read);
  }
}
