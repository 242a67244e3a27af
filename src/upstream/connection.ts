// One replication connection to the upstream primary (`replication=database`).
//
// `pg` does the startup, authentication (SCRAM/MD5) and simple queries (IDENTIFY_SYSTEM,
// CREATE_REPLICATION_SLOT); once START_REPLICATION switches the connection to CopyBoth, the raw
// CopyData payloads are framed by Strata's own decoder and handed out through an async iterator
// with a bounded queue: when the consumer falls behind, the socket is paused, so TCP pushes back
// on the walsender and memory stays bounded whatever the backlog.
import pg from "pg";
import { parseLsn } from "../protocol/lsn.ts";
import type { ReplicationMessage, StandbyStatusUpdate } from "../protocol/messages.ts";
import { decodeReplicationMessage, encodeStandbyStatusUpdate } from "../protocol/replication-messages.ts";

export interface SystemIdentity {
  systemId: string;
  timeline: number;
  xlogpos: bigint;
  dbname: string | null;
}

/** Not a message from the primary: the consumer asked to be woken (poke()), e.g. for a timer's work. */
export const WAKE_UP = Object.freeze({ tag: "WakeUp" as const });

const QUEUE_HIGH_BYTES = 8 * 1024 * 1024;
const QUEUE_LOW_BYTES = 2 * 1024 * 1024;

// The parts of pg's connection this module drives; pg exposes them but does not type them.
interface RawConnection {
  stream: NodeJS.ReadableStream & { pause(): void; resume(): void };
  on(event: "copyData", listener: (msg: { chunk: Buffer }) => void): void;
  sendCopyFromChunk(chunk: Buffer): void;
}

export class ReplicationConnection {
  private readonly client: pg.Client;
  private raw!: RawConnection;
  // A FIFO as an array plus a head index: Array#shift is O(n), and the queue holds thousands of
  // small messages when the consumer falls behind. Compacted when the head passes half.
  private queue: Buffer[] = [];
  /** When each queued message arrived (performance.now()), in step with queue. */
  private arrivals: number[] = [];
  private head = 0;
  private lastArrival = 0;
  private queuedBytes = 0;
  private paused = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private poked = false;
  private streaming = false;
  private lastDataAt = Date.now();

  private constructor(config: pg.ClientConfig) {
    this.client = new pg.Client({ ...config, replication: "database" } as pg.ClientConfig);
  }

  static async open(config: pg.ClientConfig): Promise<ReplicationConnection> {
    const conn = new ReplicationConnection(config);
    conn.client.on("error", (err) => conn.fail(err));
    conn.client.on("end", () => conn.fail(new Error("the upstream replication connection closed")));
    await conn.client.connect();
    conn.raw = (conn.client as unknown as { connection: RawConnection }).connection;
    return conn;
  }

  async identifySystem(): Promise<SystemIdentity> {
    const { rows } = await this.client.query("IDENTIFY_SYSTEM");
    const row = rows[0];
    return {
      systemId: String(row.systemid),
      timeline: Number(row.timeline),
      xlogpos: parseLsn(row.xlogpos),
      dbname: row.dbname,
    };
  }

  /**
   * CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (syntax valid on 10-17). With `exportSnapshot`,
   * the returned snapshot stays usable by other sessions until this connection runs its next
   * command, which is how the initial copy and the stream meet exactly at the consistent point.
   */
  async createSlot(
    slot: string,
    exportSnapshot = false,
    temporary = false,
  ): Promise<{ consistentPoint: bigint; snapshotName: string | null }> {
    const { rows } = await this.client.query(
      `CREATE_REPLICATION_SLOT ${pg.escapeIdentifier(slot)}${temporary ? " TEMPORARY" : ""} LOGICAL pgoutput ${exportSnapshot ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT"}`,
    );
    return {
      consistentPoint: parseLsn(rows[0].consistent_point),
      snapshotName: rows[0].snapshot_name ?? null,
    };
  }

  /**
   * START_REPLICATION and return the messages as they arrive. The iterator ends with an error
   * when the connection fails or the server ends the stream.
   */
  startReplication(
    slot: string,
    startLsn: string,
    options: Record<string, string>,
  ): AsyncIterable<ReplicationMessage | typeof WAKE_UP> {
    const opts = Object.entries(options)
      .map(([k, v]) => `${pg.escapeIdentifier(k)} ${pg.escapeLiteral(v)}`)
      .join(", ");
    this.raw.on("copyData", ({ chunk }) => {
      this.lastDataAt = Date.now();
      // pg's parser reuses its buffer: keep a copy, since messages outlive this callback.
      const copy = Buffer.from(chunk);
      this.queue.push(copy);
      this.arrivals.push(performance.now());
      this.queuedBytes += copy.length;
      if (!this.paused && this.queuedBytes > QUEUE_HIGH_BYTES) {
        this.paused = true;
        this.raw.stream.pause();
      }
      this.wake?.();
    });
    this.streaming = true;
    this.client
      .query(`START_REPLICATION SLOT ${pg.escapeIdentifier(slot)} LOGICAL ${startLsn} (${opts})`)
      .then(() => this.fail(new Error("the upstream ended the replication stream")))
      .catch((err: Error) => this.fail(err));
    return { [Symbol.asyncIterator]: () => this.iterate() };
  }

  /** Make the message iterator yield WAKE_UP once it has nothing else to give (see WAKE_UP). */
  poke(): void {
    this.poked = true;
    this.wake?.();
  }

  private async *iterate(): AsyncGenerator<ReplicationMessage | typeof WAKE_UP> {
    for (;;) {
      const next = this.queue[this.head];
      if (next) {
        this.lastArrival = this.arrivals[this.head];
        this.queue[this.head++] = undefined as unknown as Buffer;
        if (this.head > 1024 && this.head * 2 > this.queue.length) {
          this.queue = this.queue.slice(this.head);
          this.arrivals = this.arrivals.slice(this.head);
          this.head = 0;
        }
        this.queuedBytes -= next.length;
        if (this.paused && this.queuedBytes < QUEUE_LOW_BYTES) {
          this.paused = false;
          this.raw.stream.resume();
        }
        yield decodeReplicationMessage(next);
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.poked) {
        this.poked = false;
        yield WAKE_UP;
        continue;
      }
      await new Promise<void>((resolveWake) => {
        this.wake = resolveWake;
      });
      this.wake = undefined;
    }
  }

  /** When the message last handed out arrived from the primary (performance.now()). */
  get arrivedAt(): number {
    return this.lastArrival;
  }

  /** Messages received and not yet taken by the consumer. */
  get backlog(): number {
    return this.queue.length - this.head;
  }

  /**
   * How long the primary has been silent. Zero while Strata itself paused the socket (a long
   * apply): then the silence is ours, not a dead connection.
   */
  get silentMs(): number {
    return this.paused ? 0 : Date.now() - this.lastDataAt;
  }

  sendStatus(update: StandbyStatusUpdate): void {
    if (!this.streaming || this.failure) return;
    this.raw.sendCopyFromChunk(encodeStandbyStatusUpdate(update));
  }

  private fail(err: Error) {
    if (!this.failure) this.failure = err;
    this.wake?.();
  }

  async close(reason = "replication connection closed by Strata"): Promise<void> {
    this.fail(new Error(reason));
    await this.client.end().catch(() => {});
  }
}
