// Copying a table from one server to another without re-framing it: the primary's CopyData
// messages are forwarded to the store's socket as they were read.
//
//   primary socket ──read──▶ CopyOutWalker ──subarrays of CopyData runs──▶ store socket
//                            (headers only)                                 (COPY ... FROM STDIN)
//
// A CopyData message ('d', int32 length, payload) is the same bytes in both directions of the
// protocol, and the backend sends one per row of COPY TO output, so the walker only has to read
// the five-byte headers: to find where runs of CopyData messages end, to count rows, and to stop
// at the first message that is not part of the copy (CopyDone, ErrorResponse, ...). Everything
// from there on is handed back to node-postgres, which reads the CommandComplete and
// ReadyForQuery (or the error) as for any query. pg-copy-streams instead takes every message
// apart into its own buffer, concatenates the payloads, and frames them again on the other side.
//
// The source connection's socket is taken from node-postgres for the length of the copy, as
// pg-copy-streams' copy-to does: its 'data' listener (pg-protocol's parser) is replaced by ours,
// and given back the unread bytes at the end. The target side is an ordinary node-postgres
// query: its replies (CopyInResponse, the error or the CommandComplete) come through the client.
import { connect as netConnect, type Socket } from "node:net";
import type pg from "pg";

const CODE_COPY_DATA = 0x64; // 'd'
const CODE_COPY_DONE = 0x63; // 'c'
/** Messages that may come between a COPY's messages and are not part of it: skipped. */
const SKIPPED = new Set([
  0x48, // 'H' CopyOutResponse (the first message)
  0x4e, // 'N' NoticeResponse
  0x53, // 'S' ParameterStatus
  0x41, // 'A' NotificationResponse
]);
const HEADER = 5;

/** What one chunk of the source's bytes holds. */
export interface WalkStep {
  /** Runs of whole or partial CopyData messages, framing included, in order: forward as they are. */
  pieces: Buffer[];
  /** CopyData messages whose header completed in this chunk (one per row in text format). */
  messages: number;
  /** Payload bytes (framing excluded) in `pieces`. */
  payloadBytes: number;
  /**
   * Where the copy's messages stop, as an offset into the chunk: the first byte of the first
   * message that is not a CopyData or a skipped one (CopyDone, ErrorResponse, ...); -1 when the
   * copy goes on in the next chunk. From there on the bytes belong to node-postgres.
   */
  end: number;
}

/**
 * The header walker: the pure part of forwarding. Fed the source connection's bytes chunk by
 * chunk as they were read (a message, its header included, may be split anywhere), it says which
 * ranges are CopyData messages and where the copy ends. It copies nothing but the header of a
 * CopyData message split across chunks (five bytes).
 */
export class CopyOutWalker {
  /** Payload bytes of the current message still to come in later chunks. */
  private remaining = 0;
  /** Whether the current message (body or held header) is a CopyData one. */
  private inData = false;
  /** A header split across chunks: its bytes so far. */
  private readonly held = Buffer.alloc(HEADER);
  private heldBytes = 0;
  private ended = false;

  /** Whether the copy's end (or a message not its own) has been found. */
  get done(): boolean {
    return this.ended;
  }

  /**
   * Payload bytes of a CopyData message already partly returned in `pieces` and not yet
   * complete: a receiver that stops here must be sent that many bytes to stay in step.
   */
  get owed(): number {
    return this.inData ? this.remaining : 0;
  }

  walk(chunk: Buffer): WalkStep {
    if (this.ended) throw new Error("CopyOutWalker: the copy has already ended");
    const n = chunk.length;
    const pieces: Buffer[] = [];
    let messages = 0;
    let payload = 0;
    let pos = 0;
    let runStart = -1;
    if (this.remaining > 0) {
      const take = Math.min(this.remaining, n);
      if (this.inData) {
        runStart = 0;
        payload += take;
      }
      this.remaining -= take;
      pos = take;
    } else if (this.heldBytes > 0) {
      const take = Math.min(HEADER - this.heldBytes, n);
      chunk.copy(this.held, this.heldBytes, 0, take);
      this.heldBytes += take;
      pos = take;
      if (this.heldBytes < HEADER) return { pieces, messages, payloadBytes: 0, end: -1 };
      this.heldBytes = 0;
      const body = messageLength(this.held, 0) - 4;
      if (this.inData) {
        pieces.push(Buffer.from(this.held));
        messages++;
        runStart = pos;
      }
      const take2 = Math.min(body, n - pos);
      if (this.inData) payload += take2;
      this.remaining = body - take2;
      pos += take2;
    }
    while (pos < n) {
      const type = chunk[pos];
      if (type === CODE_COPY_DATA) {
        if (n - pos < HEADER) {
          this.hold(chunk, pos, true);
          break;
        }
        if (runStart < 0) runStart = pos;
        messages++;
        const body = messageLength(chunk, pos) - 4;
        const avail = n - pos - HEADER;
        if (body <= avail) {
          payload += body;
          pos += HEADER + body;
        } else {
          payload += avail;
          this.remaining = body - avail;
          this.inData = true;
          pos = n;
        }
        continue;
      }
      if (runStart >= 0) {
        pieces.push(chunk.subarray(runStart, pos));
        runStart = -1;
      }
      if (!SKIPPED.has(type)) {
        this.ended = true;
        return { pieces, messages, payloadBytes: payload, end: pos };
      }
      if (n - pos < HEADER) {
        this.hold(chunk, pos, false);
        pos = n;
        break;
      }
      const body = messageLength(chunk, pos) - 4;
      const avail = n - pos - HEADER;
      if (body <= avail) {
        pos += HEADER + body;
      } else {
        this.remaining = body - avail;
        this.inData = false;
        pos = n;
      }
    }
    if (runStart >= 0) pieces.push(chunk.subarray(runStart, pos));
    return { pieces, messages, payloadBytes: payload, end: -1 };
  }

  private hold(chunk: Buffer, pos: number, data: boolean): void {
    chunk.copy(this.held, 0, pos);
    this.heldBytes = chunk.length - pos;
    this.inData = data;
  }
}

function messageLength(buf: Buffer, pos: number): number {
  const length = ((buf[pos + 1] << 24) | (buf[pos + 2] << 16) | (buf[pos + 3] << 8) | buf[pos + 4]) >>> 0;
  if (length < 4 || length > 0x7fffffff) {
    throw new Error(`malformed message from the server: type 0x${buf[pos].toString(16)}, length ${length}`);
  }
  return length;
}

/** The part of node-postgres's connection that forwarding uses (not in its type definitions). */
interface PgConnection {
  stream: Socket;
  query(text: string): void;
  endCopyFrom(): void;
  sendCopyFail(message: string): void;
}

type Side = "source" | "target";
const errorSides = new WeakMap<object, Side>();

/**
 * Which side of a forwardCopy an error it threw came from: "source" for the COPY TO's server or
 * connection (a malformed message from it included), "target" for the COPY FROM's; undefined for
 * an error thrown by the caller's `onData`.
 */
export function copyErrorSide(err: unknown): Side | undefined {
  return typeof err === "object" && err !== null ? errorSides.get(err) : undefined;
}

function sideError(err: unknown, side: Side): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  if (!errorSides.has(e)) errorSides.set(e, side);
  return e;
}

/**
 * One side's COPY statement as a node-postgres query (a Submittable). node-postgres calls these
 * handlers with the replies it parses; after an ErrorResponse it calls handleError and nothing
 * more, the ReadyForQuery that follows being its own business.
 */
class CopyStatement {
  connection: PgConnection | undefined;
  /** The reply that started the COPY (CopyInResponse; for the source, its data) has come. */
  started = false;
  /** The statement is over: ReadyForQuery, or an error. */
  settled = false;
  error: Error | undefined;
  /** The row count of the CommandComplete ("COPY n"). */
  commandRows: number | undefined;
  constructor(
    readonly text: string,
    private readonly expected: string,
    private readonly onSettled: () => void,
  ) {}
  submit(connection: PgConnection): Error | undefined {
    this.connection = connection;
    connection.query(this.text);
    return undefined;
  }
  callback(): void {}
  protected unexpected(what: string): void {
    this.error ??= new Error(`the COPY statement returned ${what}, not ${this.expected}: ${this.text}`);
  }
  handleRowDescription(): void {
    this.unexpected("rows");
  }
  handleDataRow(): void {}
  handlePortalSuspended(): void {}
  handleEmptyQuery(): void {
    this.unexpected("nothing");
  }
  handleCopyData(): void {
    this.unexpected("COPY data");
  }
  handleCopyInResponse(connection: PgConnection): void {
    this.unexpected("COPY FROM STDIN");
    connection.sendCopyFail(`not ${this.expected}`);
  }
  handleCommandComplete(msg: { text?: string } | undefined): void {
    const m = /^COPY (\d+)/.exec(msg?.text ?? "");
    if (m) this.commandRows = Number(m[1]);
  }
  handleError(err: Error): void {
    this.error ??= err;
    this.settle();
  }
  handleReadyForQuery(): void {
    if (!this.started) this.unexpected("no COPY");
    this.settle();
  }
  protected settle(): void {
    if (this.settled) return;
    this.settled = true;
    this.onSettled();
  }
}

/** The target's `COPY ... FROM STDIN`: started by node-postgres, then written to through its socket. */
class CopyIn extends CopyStatement {
  constructor(
    text: string,
    private readonly onStarted: () => void,
    onSettled: () => void,
  ) {
    super(text, "COPY FROM STDIN", onSettled);
  }
  override handleCopyInResponse(): void {
    this.started = true;
    this.onStarted();
  }
}

/** The source's `COPY ... TO STDOUT`, its socket read by `onChunk` until the copy's messages end. */
class CopyOut extends CopyStatement {
  readonly walker = new CopyOutWalker();
  private pgHandler: ((chunk: Buffer) => void) | undefined;
  private readonly onData = (chunk: Buffer) => this.onChunk(chunk);
  attached = false;
  constructor(
    text: string,
    private readonly onChunk: (chunk: Buffer) => void,
    onSettled: () => void,
  ) {
    super(text, "COPY TO STDOUT", onSettled);
  }
  override submit(connection: PgConnection): Error | undefined {
    // Called when the connection is idle, so node-postgres's parser holds no unread bytes.
    const stream = connection.stream;
    const listeners = stream.listeners("data") as ((chunk: Buffer) => void)[];
    if (listeners.length !== 1) {
      // node-postgres fails the query with this error (and never sent it).
      return new Error(`cannot forward a COPY: its connection has ${listeners.length} data listeners, not 1`);
    }
    this.connection = connection;
    this.pgHandler = listeners[0];
    stream.removeListener("data", this.pgHandler);
    stream.on("data", this.onData);
    this.attached = true;
    this.started = true;
    connection.query(this.text);
    return undefined;
  }
  /** Stop or go on reading the source (backpressure from the target). */
  pause(paused: boolean): void {
    if (!this.attached) return;
    if (paused) this.connection!.stream.pause();
    else this.connection!.stream.resume();
  }
  /** Give node-postgres its socket back, with the bytes of `rest` it is to read first. */
  detach(rest?: Buffer): void {
    if (!this.attached) return;
    this.attached = false;
    const stream = this.connection!.stream;
    stream.removeListener("data", this.onData);
    stream.on("data", this.pgHandler!);
    if (rest && rest.length > 0) this.pgHandler!(rest);
    if (stream.isPaused()) stream.resume();
  }
  override handleReadyForQuery(): void {
    if (!this.walker.done) this.unexpected("an end before the end of its data");
    super.handleReadyForQuery();
  }
  protected override settle(): void {
    this.detach();
    super.settle();
  }
}

export interface ForwardResult {
  /** Rows copied: the source's count (COPY n), which is its CopyData messages in text format. */
  rows: number;
  /** Payload bytes copied: the COPY text's size in text format (framing excluded). */
  bytes: number;
}

/**
 * Runs `COPY (...) TO STDOUT` on `source` and `COPY ... FROM STDIN` on `target`, forwarding the
 * source's CopyData messages to the target unchanged; both statements must name the same format
 * and columns. `onData` sees every forwarded run of messages in order, framing included, with
 * the rows (CopyData messages) and payload bytes counted since its previous call. The target's
 * socket is written to only as fast as it drains: the source is not read meanwhile.
 *
 * A failure on either side leaves both connections ready for the next query. When the source's
 * COPY fails (or its connection ends), the target's is failed with CopyFail; when the target's
 * fails, the source's is cancelled (a CancelRequest) and read to its end. The error thrown is the
 * failing side's own, its message unchanged: `copyErrorSide` tells which side it came from. The
 * side whose statement failed has its transaction, if any, aborted; the caller rolls back. The
 * target may be inside a transaction. Notices the source sends during the copy are dropped.
 * `source` and `target` are two different connections, each with nothing else queued.
 */
export async function forwardCopy(
  source: pg.Client,
  copyOutSql: string,
  target: pg.Client,
  copyInSql: string,
  onData?: (framed: Buffer, rows: number, payloadBytes: number) => void,
): Promise<ForwardResult> {
  let rows = 0;
  let bytes = 0;
  let failure: Error | undefined;
  let failed = false;
  /** CopyDone or CopyFail has been sent to the target (or its statement is over). */
  let targetEnded = false;
  let sourceSubmitted = false;
  let sourceDestroyed = false;
  /** Payload bytes of the CopyData message cut short in what the target was sent. */
  let owed = 0;
  let cancelled: Promise<void> | undefined;
  let waitingDrain: (() => void) | undefined;
  let resolveStarted!: () => void;
  let resolveDone!: () => void;
  const started = new Promise<void>((r) => {
    resolveStarted = r;
  });
  const done = new Promise<void>((r) => {
    resolveDone = r;
  });

  const settled = () => {
    if (copyIn.settled && (!sourceSubmitted || copyOut.settled)) resolveDone();
  };

  const copyIn = new CopyIn(
    copyInSql,
    () => resolveStarted(),
    () => {
      if (copyIn.error) fail(sideError(copyIn.error, "target"));
      resolveStarted();
      settled();
    },
  );

  const copyOut = new CopyOut(
    copyOutSql,
    (chunk) => {
      let step: WalkStep;
      try {
        step = copyOut.walker.walk(chunk);
      } catch (err) {
        // Out of step with the source's messages: its connection can only be closed.
        sourceDestroyed = true;
        fail(sideError(err, "source"));
        copyOut.connection!.stream.destroy();
        return;
      }
      if (!targetEnded) {
        const stream = copyIn.connection!.stream;
        let ok = true;
        for (const piece of step.pieces) ok = stream.write(piece);
        owed = copyOut.walker.owed;
        rows += step.messages;
        bytes += step.payloadBytes;
        if (onData && step.pieces.length > 0) {
          try {
            const last = step.pieces.length - 1;
            for (let i = 0; i < last; i++) onData(step.pieces[i], 0, 0);
            onData(step.pieces[last], step.messages, step.payloadBytes);
          } catch (err) {
            fail(err instanceof Error ? err : new Error(String(err)));
          }
        }
        if (step.end >= 0) {
          // The source's CopyDone ends the target's COPY; anything else (an ErrorResponse, a reply
          // that is no COPY) is node-postgres's to read, and fails it through the handlers.
          if (chunk[step.end] === CODE_COPY_DONE) endTarget(undefined);
        } else if (!ok && !failed && !waitingDrain) {
          const resume = () => {
            if (waitingDrain !== resume) return;
            waitingDrain = undefined;
            copyOut.pause(false);
          };
          waitingDrain = resume;
          copyOut.pause(true);
          stream.once("drain", resume);
        }
      }
      if (step.end >= 0) copyOut.detach(chunk.subarray(step.end));
    },
    () => {
      if (copyOut.error) fail(sideError(copyOut.error, "source"));
      settled();
    },
  );

  /** CopyDone (no reason) or CopyFail to the target, completing the message in flight first. */
  function endTarget(failReason: string | undefined) {
    const conn = copyIn.connection;
    // Even after the target's own error, its server reads on (and drops) the messages sent: a
    // message cut short would swallow the next query. Its contents no longer matter.
    if (conn && owed > 0 && !targetEnded) {
      const zeros = Buffer.alloc(Math.min(owed, 65536));
      while (owed > 0) {
        const n = Math.min(owed, zeros.length);
        conn.stream.write(n === zeros.length ? zeros : zeros.subarray(0, n));
        owed -= n;
      }
    }
    owed = 0;
    if (targetEnded || !conn || copyIn.settled) {
      targetEnded = true;
      return;
    }
    targetEnded = true;
    if (failReason === undefined) conn.endCopyFrom();
    else conn.sendCopyFail(failReason);
  }

  function fail(err: Error) {
    if (failed) return;
    failed = true;
    failure = err;
    endTarget(err.message || "the copy failed");
    if (waitingDrain) {
      waitingDrain = undefined;
      copyOut.pause(false);
    }
    if (sourceSubmitted && !sourceDestroyed && !copyOut.settled && copyOut.attached && !copyOut.walker.done) {
      // A COPY TO cannot be stopped in the protocol: its server is asked to cancel it, and what
      // it still sends is read to the end and dropped (the walker keeps its place).
      cancelled = cancelRequest(source);
    }
  }

  target.query(copyIn as unknown as pg.Submittable);
  await started;
  if (!failed) {
    sourceSubmitted = true;
    source.query(copyOut as unknown as pg.Submittable);
  }
  await done;
  if (cancelled) await cancelled;
  if (failure) throw failure;
  return { rows: copyOut.commandRows ?? rows, bytes };
}

/** Ask the server of `client` to cancel what that connection is running (a CancelRequest). */
function cancelRequest(client: pg.Client): Promise<void> {
  const c = client as unknown as {
    processID: number | null;
    secretKey: number | null;
    host: string;
    port: number;
  };
  if (typeof c.processID !== "number" || typeof c.secretKey !== "number") return Promise.resolve();
  return new Promise((resolve) => {
    const socket = c.host?.startsWith("/")
      ? netConnect(`${c.host}/.s.PGSQL.${c.port}`)
      : netConnect(c.port, c.host);
    const timer = setTimeout(() => socket.destroy(), 10_000);
    socket.on("connect", () => {
      const packet = Buffer.alloc(16);
      packet.writeInt32BE(16, 0);
      packet.writeInt32BE(80877102, 4);
      packet.writeInt32BE(c.processID!, 8);
      packet.writeInt32BE(c.secretKey!, 12);
      socket.end(packet);
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
