// One client session through the front door, from its StartupMessage to its end:
//
//   client ──▶ FrameSplitter(Q, P) ──▶ runs of bytes as they came ───────────────▶ store
//                                 └──▶ Query / Parse ─▶ rewriter ─▶ as is, or re-encoded
//   client ◀──────────────────── chunks as they came ◀───────────────────────────── store
//                                 └──▶ FrameSplitter observes Z, K, S (session state)
//
// A rewriter with a transactionEnded hook takes the store's replies frame by frame instead (runs
// of bytes, and Z, K, S whole), so that a ReadyForQuery that ends a transaction can be held from
// the client, with all that follows it, until the hook's Promise settles (see pumpStore).
//
// Order is kept strictly: while a rewrite is pending, the rest of the client's bytes wait (the
// client socket is paused). Each direction pushes back on its own: when the side being written
// to is full, the side being read is paused until it drains, so a slow client slows only its own
// store backend, and memory per session stays at a few socket buffers (plus the one Query or
// Parse being rewritten). Authentication is the store's: its messages pass through untouched.
//
// The store's replies are the hot path (every query's result): they are read into one buffer per
// session, reused from read to read, and written to the client from it with no copy in between
// (see fromStoreData for when a chunk must leave the buffer). docs/frontdoor.md, "Cost", has
// the measurements.
import type { OnReadOpts, Socket } from "node:net";
import type { Logger } from "../log.ts";
import { errorStatement, highestParameter } from "./error-statement.ts";
import {
  AuthCapture,
  credentialFor,
  type StoreCredential,
  StoreLogin,
  StoreLoginError,
} from "./store-login.ts";
import {
  decodeBackendKeyData,
  decodeErrorFields,
  decodeParameterStatus,
  decodeParse,
  decodeQuery,
  decodeReadyForQuery,
  type ErrorFields,
  encodeErrorResponse,
  encodeParse,
  encodeQuery,
  type Frame,
  FrameSplitter,
  type ParseMessage,
  ProtocolError,
  TAG,
  type TextEncoding,
} from "./wire.ts";

/** What the rest of Strata sees of a session: `listener.sessions()`. */
export interface SessionInfo {
  readonly id: number;
  readonly database: string;
  readonly user: string;
  readonly applicationName: string | undefined;
  readonly remoteAddress: string | undefined;
  /** Whether the client negotiated TLS with the front door. */
  readonly tls: boolean;
  readonly startedAt: Date;
  /** The store backend's pid (from BackendKeyData), once authentication has succeeded. */
  readonly backendPid: number | undefined;
  /** The last ReadyForQuery's status: 'I' idle, 'T' in a transaction block, 'E' in a failed one. */
  readonly txStatus: "I" | "T" | "E" | undefined;
  /**
   * Move the session to another store database (a branch): opens a store session there as the
   * same user (repeating the client's authentication, see store-login.ts) and keeps it ready;
   * the statement being rewritten then runs on it, and the old store session ends once it has
   * answered everything sent before. Rejects (the statement fails, the session stays where it
   * is) when the new session cannot be opened. `secret` gives the role's stored password
   * (pg_authid.rolpassword) when the repeat needs it. Call only from rewrite().
   */
  switchDatabase(database: string, secret: (user: string) => Promise<string | null>): Promise<void>;
  /**
   * End the session: the store backend goes (its socket is closed) and the client gets `error`
   * as a FATAL ErrorResponse when it can be delivered between two messages, then the socket ends.
   */
  terminate(error?: Omit<ErrorFields, "severity">): void;
}

export interface RewriteContext {
  database: string;
  user: string;
  /** "query": a simple-protocol Query; "parse": an extended-protocol Parse. */
  message: "query" | "parse";
  session: SessionInfo;
}

/**
 * Sees the SQL of every Query and Parse a client sends, before the store does. Return undefined to
 * pass the message through unchanged (the common case: decide cheaply), or the SQL to send
 * instead. For a Parse, the replacement must take the same parameters. To fail the statement,
 * throw: an Error whose `code` (SQLSTATE), `hint` and `detail` properties, when present, reach the
 * client with its message, in order (see error-statement.ts). A Promise holds the session's later
 * messages until it settles.
 */
export interface QueryRewriter {
  rewrite(sql: string, context: RewriteContext): string | undefined | Promise<string | undefined>;
  /**
   * Called when the store says a transaction ended: a ReadyForQuery with status 'I' (an autocommit
   * statement, or an extended-protocol Sync outside a block, finished; or COMMIT/ROLLBACK of a
   * block), but not the one that ends the startup (no transaction ran). Return a Promise to hold
   * that ReadyForQuery, and everything the store sends after it, from the client until the Promise
   * settles (Strata uses this to push a commit to a remote before the client hears its COMMIT
   * succeeded). Return undefined (the common case) to pass it on at once. A rejected Promise (or a
   * throw) is logged at warn and the ReadyForQuery is released anyway. Without this method, a
   * session's store replies take the faster path (written as they come, not frame by frame).
   */
  transactionEnded?(context: {
    database: string;
    user: string;
    session: SessionInfo;
  }): Promise<void> | undefined;
  /**
   * Whether transactionEnded may hold a transaction end of a session on `database` (decide
   * cheaply; asked at every ReadyForQuery). False keeps that session on the faster path from its
   * next reply on, and transactionEnded is then not called. Without this method: always true.
   */
  holdsTransactionEnds?(context: { database: string; user: string }): boolean;
  /**
   * Whether the store's errors to the session's client may be replaced (decide cheaply; asked at
   * every ReadyForQuery, like holdsTransactionEnds): true puts the session's replies on the
   * frame-by-frame path, and storeError sees each ErrorResponse.
   */
  rewritesStoreErrors?(): boolean;
  /** The ErrorResponse to send instead of the store's (its fields by code), or undefined for the store's. */
  storeError?(fields: Map<string, string>, context: { database: string }): Buffer | undefined;
  /**
   * Called before a session's StartupMessage reaches the store, with the database it names; the
   * session waits for the Promise (Strata clones a read replica's new database here). Errors are
   * logged, and the session goes on.
   */
  beforeSession?(database: string): Promise<void> | undefined;
}

/** Rewrites nothing: the front door then only decodes Query and Parse when asked to. */
export const passThroughRewriter: QueryRewriter = { rewrite: () => undefined };

/** Postgres's OID of `text`: the type given to parameters a failed Parse left to the server. */
const TEXT_OID = 25;
/** How long a closing client may take to read the last bytes sent to it. */
const CLOSE_GRACE_MS = 5_000;
/** The most read from the store at once (what Node reads into by default). */
const STORE_READ_SIZE = 64 * 1024;
/** How long opening a store session for a switch of database may take. */
const SWITCH_LOGIN_TIMEOUT_MS = 15_000;

type StoreRead = (length: number, buffer: Buffer) => void;
const ignoreError = () => {};

/** A store session opened for a switch of database, logged in, not yet the session's. */
interface PreparedStore {
  database: string;
  socket: Socket;
  login: StoreLogin;
  /** Where the socket's reads go: the login until the switch, then the session. */
  route(read: StoreRead): void;
}

/** A switch under way: the old store answers what it was sent, then a marker (see forward). */
interface Switch {
  next: PreparedStore;
  /** The rewritten statement, sent to the new store once the old one is done. */
  statement: Buffer;
  /** The application_name the marker sets, as the old store reports it back. */
  marker: string;
  /** The marker's ParameterStatus has come: what follows up to its ReadyForQuery is not the client's. */
  swallowing: boolean;
  /** The last bytes of the replies, held back: they may be the marker's CommandComplete. */
  tail: Buffer;
}

/** CommandComplete "SET": what the marker's reply starts with. */
const SET_COMPLETE = Buffer.from("C\u0000\u0000\u0000\u0008SET\u0000", "latin1");

export interface SessionStart {
  id: number;
  client: Socket;
  /** Open the session's connection to the store, reading as `onread` says. */
  connectStore: (onread: OnReadOpts) => Socket;
  tls: boolean;
  /** The StartupMessage as received, forwarded as is. */
  startupPacket: Buffer;
  parameters: Map<string, string>;
  /** Bytes the client sent after its StartupMessage. */
  rest: Buffer;
  rewriter: QueryRewriter;
  log: Logger;
  onEnd: (session: Session) => void;
}

export class Session implements SessionInfo {
  readonly id: number;
  database: string;
  readonly user: string;
  readonly applicationName: string | undefined;
  readonly remoteAddress: string | undefined;
  readonly tls: boolean;
  readonly startedAt = new Date();
  backendPid: number | undefined;
  backendSecret: Buffer | undefined;
  /** The cancel key the client was given (its first store session's), when the store's is another. */
  private clientKey: { pid: number; secret: Buffer } | undefined;
  txStatus: "I" | "T" | "E" | undefined;

  private readonly client: Socket;
  private store: Socket;
  private readonly connectStore: (onread: OnReadOpts) => Socket;
  private readonly startupParameters: Map<string, string>;
  private readonly auth = new AuthCapture();
  private prepared: PreparedStore | undefined;
  private switching: Switch | undefined;
  private readonly rewriter: QueryRewriter | undefined;
  private readonly log: Logger;
  private readonly onEnd: (session: Session) => void;
  private readonly fromClient: FrameSplitter;
  /** Observes the store's replies; with a transactionEnded hook, also hands back the runs between. */
  private fromStore: FrameSplitter;
  /**
   * Whether the store's replies go frame by frame (so that a ReadyForQuery can be held): while the
   * rewriter's transactionEnded may hold this session's transaction ends (holdsTransactionEnds),
   * asked again at every ReadyForQuery; `framed` follows `wantFramed` at the next chunk.
   */
  private framed: boolean;
  private wantFramed: boolean;
  /** A ReadyForQuery (a copy) held from the client until the rewriter's transactionEnded settles. */
  private held: Buffer | undefined;
  /** What the store sent after the held ReadyForQuery (copies, out of `storeBuffer`), in order. */
  private readonly heldFrames: Frame[] = [];
  /** What the store is read into; replaced when the client's socket keeps the last chunk read. */
  private storeBuffer: Buffer | undefined;
  /** Client chunks not yet given to `fromClient` (they arrived while a rewrite was pending). */
  private readonly queued: Buffer[] = [];
  private encoding: TextEncoding = "utf8";
  private rewriting = false;
  private storeFull = false;
  private heardFromStore = false;
  private ended = false;

  constructor(start: SessionStart) {
    this.id = start.id;
    this.client = start.client;
    this.tls = start.tls;
    this.log = start.log;
    this.onEnd = start.onEnd;
    this.user = start.parameters.get("user") ?? "";
    this.database = start.parameters.get("database") || this.user;
    this.applicationName = start.parameters.get("application_name");
    this.remoteAddress = start.client.remoteAddress;
    // Walsender connections speak replication commands, not the SQL the rewriter is for.
    const replication = start.parameters.get("replication");
    const walsender = replication !== undefined && !/^(false|off|no|0)$/i.test(replication);
    this.rewriter = start.rewriter === passThroughRewriter || walsender ? undefined : start.rewriter;
    // Password messages only pass during authentication (watched, for switching databases).
    this.fromClient = new FrameSplitter(this.rewriter ? [TAG.query, TAG.parse, TAG.password] : []);
    this.framed = this.wantFramed = this.hookWanted();
    this.fromStore = this.storeSplitter();
    this.connectStore = start.connectStore;
    this.startupParameters = start.parameters;
    // The session pauses the store itself, when the client is full (or a ReadyForQuery is held).
    this.store = this.openStore().socket;
    this.store.on("error", this.onStoreError).on("close", this.onStoreClose);

    const { client } = this;
    client
      .on("data", (chunk: Buffer) => this.fromClientData(chunk))
      // While a ReadyForQuery is held, the store stays paused: its release resumes it.
      .on("drain", () => {
        if (!this.held) this.store.resume();
      })
      .on("error", (err) => this.fail("client", err))
      .on("close", () => this.end("the client closed the connection"));
    this.toStore(start.startupPacket);
    if (start.rest.length) this.fromClientData(start.rest);
    this.updateClientFlow();
  }

  private storeSplitter(): FrameSplitter {
    const tags = [
      TAG.readyForQuery,
      TAG.backendKeyData,
      TAG.parameterStatus,
      TAG.authentication,
      TAG.errorResponse,
    ];
    return new FrameSplitter(tags, this.framed, true);
  }

  /** A connection to the store whose reads go to `route`'s target: the session's by default. */
  private openStore(): { socket: Socket; route: (read: StoreRead) => void } {
    let read: StoreRead = (length, buffer) => this.fromStoreChunk(length, buffer);
    const socket = this.connectStore({
      buffer: () => {
        this.storeBuffer ??= Buffer.allocUnsafeSlow(STORE_READ_SIZE);
        return this.storeBuffer;
      },
      callback: (length, buffer) => {
        read(length, buffer as Buffer);
        return true;
      },
    });
    socket.on("drain", () => {
      if (socket !== this.store) return;
      this.storeFull = false;
      this.updateClientFlow();
    });
    return { socket, route: (next) => (read = next) };
  }

  private readonly onStoreError = (err: Error) => this.fail("store", err);
  private readonly onStoreClose = () => this.end("the store closed the connection");

  private fromStoreChunk(length: number, buffer: Buffer): void {
    // A change of mode takes effect between chunks, between two messages (a message collected
    // whole that the last chunk ended in was already written, or not yet), and never while
    // something is held.
    if (
      this.wantFramed !== this.framed &&
      !this.held &&
      this.heldFrames.length === 0 &&
      this.fromStore.atMessageBoundary()
    ) {
      this.framed = this.wantFramed;
      this.fromStore.passRuns = this.framed;
    }
    if (this.framed) this.fromStoreFrames(buffer.subarray(0, length));
    else this.fromStoreData(buffer.subarray(0, length));
  }

  /** The cancel key to send the store for a CancelRequest with the key the client was given. */
  cancelKeyFor(pid: number, secret: Buffer): { pid: number; secret: Buffer } | undefined {
    const given =
      this.clientKey ??
      (this.backendPid === undefined ? undefined : { pid: this.backendPid, secret: this.backendSecret! });
    if (!given || given.pid !== pid || !given.secret.equals(secret)) return undefined;
    return { pid: this.backendPid!, secret: this.backendSecret! };
  }

  async switchDatabase(database: string, secret: (user: string) => Promise<string | null>): Promise<void> {
    if (this.prepared || this.switching)
      throw new StoreLoginError("the session is already switching databases", "55000");
    const captured = this.auth.captured;
    const needsSecret = captured.kind === "scram" || captured.kind === "md5";
    const credential: StoreCredential = credentialFor(captured, needsSecret ? await secret(this.user) : null);
    const { socket, route } = this.openStore();
    const login = new StoreLogin(this.user, credential);
    const prepared: PreparedStore = { database, socket, login, route };
    await new Promise<void>((resolveLogin, reject) => {
      const closed = () => fail(new Error("the store closed the connection"));
      const fail = (err: Error) => {
        clearTimeout(timer);
        socket.off("error", fail).off("close", closed);
        socket.destroy();
        reject(
          err instanceof StoreLoginError
            ? err
            : new StoreLoginError(`cannot open a store session on "${database}": ${err.message}`, "08006"),
        );
      };
      const timer = setTimeout(
        () => fail(new StoreLoginError(`opening a store session on "${database}" timed out`, "08006")),
        SWITCH_LOGIN_TIMEOUT_MS,
      );
      socket.on("error", fail).on("close", closed);
      route((length, buffer) => {
        try {
          for (const reply of login.receive(Buffer.from(buffer.subarray(0, length)))) socket.write(reply);
        } catch (err) {
          fail(err as Error);
          return;
        }
        if (!login.ready) return;
        clearTimeout(timer);
        socket.off("close", closed).off("error", fail);
        socket.on("error", ignoreError); // until the switch: the session's own handlers then
        socket.pause(); // nothing more is expected before the session sends something
        resolveLogin();
      });
      socket.write(StoreLogin.startupMessage(this.startupParameters, database));
    });
    if (this.ended) {
      socket.destroy();
      return;
    }
    this.prepared = prepared;
  }

  terminate(error?: Omit<ErrorFields, "severity">): void {
    if (this.ended) return;
    // While a ReadyForQuery is held, the client has had the messages before it, whole.
    if (error && (this.held || this.fromStore.atMessageBoundary()))
      this.client.write(encodeErrorResponse({ severity: "FATAL", ...error }));
    this.end("terminated by the server");
  }

  private fromClientData(chunk: Buffer): void {
    if (this.ended) return;
    if (this.rewriting || this.queued.length) {
      this.queued.push(chunk);
      return;
    }
    this.fromClient.push(chunk);
    this.pumpClient();
  }

  /** Forward what the client sent, up to the end of what arrived or to a pending rewrite. */
  private pumpClient(): void {
    this.store.cork();
    try {
      for (;;) {
        const frame = this.fromClient.next();
        if (!frame) {
          const chunk = this.queued.shift();
          if (!chunk) break;
          this.fromClient.push(chunk);
          continue;
        }
        if (frame.kind === "bytes") {
          this.toStore(frame.bytes);
          continue;
        }
        if (frame.tag === TAG.password) {
          this.auth.fromClient(frame.bytes);
          this.toStore(frame.bytes);
          continue;
        }
        const rewritten = this.rewrite(frame);
        if (!(rewritten instanceof Promise)) {
          this.toStore(rewritten);
          continue;
        }
        this.rewriting = true;
        rewritten
          .then((bytes) => {
            this.rewriting = false;
            if (this.ended) return;
            if (this.prepared) {
              this.beginSwitch(bytes);
              return;
            }
            this.toStore(bytes);
            this.pumpClient();
          })
          .catch((err) => {
            this.log.error({ session: this.id, err: (err as Error).message }, "front door: session failed");
            this.end("internal error");
          });
        break;
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.log.warn({ session: this.id, err: err.message }, "front door: client broke the protocol; closing");
      this.terminate({ code: err.code, message: err.message });
    } finally {
      this.store.uncork();
    }
    this.updateClientFlow();
  }

  /** The bytes to send the store for a Query or Parse: itself, or re-encoded, now or later. */
  private rewrite(frame: Extract<Frame, { kind: "message" }>): Buffer | Promise<Buffer> {
    const rewriter = this.rewriter!;
    let parse: ParseMessage | undefined;
    let sql: string;
    try {
      if (frame.tag === TAG.parse) {
        parse = decodeParse(frame.bytes, this.encoding);
        sql = parse.sql;
      } else sql = decodeQuery(frame.bytes, this.encoding);
    } catch {
      return frame.bytes; // malformed: the store refuses it with its own error
    }
    const context: RewriteContext = {
      database: this.database,
      user: this.user,
      message: parse ? "parse" : "query",
      session: this,
    };
    let result: ReturnType<QueryRewriter["rewrite"]>;
    try {
      result = rewriter.rewrite(sql, context);
    } catch (err) {
      return this.failedStatement(err, sql, parse);
    }
    if (result === undefined || result === null) return frame.bytes;
    if (typeof result === "string") return this.encode(result, sql, parse);
    return Promise.resolve(result).then(
      (text) => (text === undefined || text === null ? frame.bytes : this.encode(text, sql, parse)),
      (err) => this.failedStatement(err, sql, parse),
    );
  }

  /** The rewritten statement's message; one that cannot be encoded fails as the statement. */
  private encode(rewritten: string, sql: string, parse: ParseMessage | undefined): Buffer {
    try {
      return parse
        ? encodeParse({ ...parse, sql: rewritten }, this.encoding)
        : encodeQuery(rewritten, this.encoding);
    } catch (err) {
      return this.failedStatement(err, sql, parse);
    }
  }

  /** The statement that fails with the rewriter's error, in place of the client's. */
  private failedStatement(err: unknown, sql: string, parse: ParseMessage | undefined): Buffer {
    // A store session opened for a switch the statement no longer makes.
    this.prepared?.socket.destroy();
    this.prepared = undefined;
    const e = (err ?? {}) as { message?: unknown; code?: unknown; hint?: unknown; detail?: unknown };
    const text = (value: unknown) => (typeof value === "string" && value ? value : undefined);
    this.log.debug({ session: this.id, err: text(e.message) }, "front door: the rewriter failed a statement");
    const failing = errorStatement({
      message: text(e.message) ?? String(err),
      code: text(e.code),
      hint: text(e.hint),
      detail: text(e.detail),
    });
    if (!parse) return encodeQuery(failing, this.encoding);
    // The client will Bind as many values as the statement has parameters: the DO block must
    // take them all, with types the server accepts (those left to the server become text).
    const count = Math.max(parse.paramTypes.length, highestParameter(sql));
    const paramTypes = Array.from({ length: count }, (_, i) => parse.paramTypes[i] || TEXT_OID);
    return encodeParse({ name: parse.name, sql: failing, paramTypes }, this.encoding);
  }

  private toStore(bytes: Buffer): void {
    if (!this.store.write(bytes)) this.storeFull = true;
  }

  private updateClientFlow(): void {
    if (this.ended) return;
    if (this.rewriting || this.storeFull) this.client.pause();
    else this.client.resume();
  }

  /**
   * A chunk from the store, in `storeBuffer`: written to the client at once, and read for the
   * session's state. The next read reuses the buffer, so a chunk the client's socket keeps (its
   * write did not complete at once: the client is not reading) takes the buffer with it, and the
   * client gets a copy when its write would wait behind another. A TLS socket completes every
   * write later, whatever it did with the bytes: it always gets a copy (as Node's own reads make).
   */
  private fromStoreData(chunk: Buffer): void {
    if (this.ended) return;
    this.heardFromStore = true;
    const client = this.client;
    const copy = this.tls || client.writableLength > 0;
    if (!client.write(copy ? Buffer.from(chunk) : chunk)) this.store.pause();
    if (!copy && client.writableLength > 0) this.storeBuffer = undefined;
    this.fromStore.push(chunk);
    try {
      for (let frame = this.fromStore.next(); frame; frame = this.fromStore.next()) {
        if (frame.kind === "message") this.observe(frame);
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.log.warn({ session: this.id, err: err.message }, "front door: unreadable message from the store");
      this.end("unreadable message from the store");
    }
  }

  /**
   * A chunk from the store, in `storeBuffer`, for a session whose rewriter has transactionEnded:
   * read first, and written to the client frame by frame (see pumpStore). As in fromStoreData, a
   * chunk the client's socket keeps takes the buffer with it, and the client gets a copy when its
   * writes would wait behind others (or go through TLS); what waits behind a held ReadyForQuery is
   * copied out of the buffer.
   */
  private fromStoreFrames(chunk: Buffer): void {
    if (this.ended) return;
    this.heardFromStore = true;
    const copy = this.tls || this.client.writableLength > 0;
    this.fromStore.push(copy ? Buffer.from(chunk) : chunk);
    this.pumpStore(undefined);
    if (!copy && this.client.writableLength > 0) this.storeBuffer = undefined;
  }

  /**
   * Write what the store sent to the client, frame by frame in one cork: first the frames that
   * waited behind a hold now `released` (that ReadyForQuery itself first), then the rest of the
   * chunk in `fromStore`. At a ReadyForQuery that the rewriter's transactionEnded holds, writing
   * stops: the frames after it are copied into `heldFrames` and the store is paused until the hold
   * settles. The store is also paused while the client is full, and resumed on its 'drain' (or, after
   * a release, here) when neither holds it back.
   */
  private pumpStore(released: Buffer | undefined): void {
    const client = this.client;
    const frames = this.heldFrames;
    client.cork();
    try {
      if (released) client.write(released);
      while (!this.held && frames.length) this.forward(frames.shift()!);
      for (let frame = this.fromStore.next(); frame; frame = this.fromStore.next()) {
        if (this.held) frames.push({ ...frame, bytes: Buffer.from(frame.bytes) });
        else this.forward(frame);
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.log.warn({ session: this.id, err: err.message }, "front door: unreadable message from the store");
      this.end("unreadable message from the store");
    } finally {
      client.uncork();
    }
    if (this.ended) return;
    if (this.held || client.writableLength >= client.writableHighWaterMark) this.store.pause();
    else if (released) this.store.resume();
  }

  /** One frame of the store's to the client, unless it is a ReadyForQuery the rewriter holds. */
  private forward(frame: Frame): void {
    if (this.switching && this.switchFrame(frame)) return;
    if (frame.kind === "message") {
      const before = this.txStatus;
      this.observe(frame);
      // The ReadyForQuery that ends the startup (txStatus was unknown) ends no transaction.
      if (frame.tag === TAG.readyForQuery && this.txStatus === "I" && before !== undefined) {
        if (this.holdAtTransactionEnd(frame.bytes)) return;
      }
      if (frame.tag === TAG.errorResponse && this.rewriter?.storeError) {
        const replaced = this.rewriter.storeError(decodeErrorFields(frame.bytes), {
          database: this.database,
        });
        if (replaced) {
          this.client.write(replaced);
          return;
        }
      }
    }
    this.client.write(frame.bytes);
  }

  /**
   * Start moving to the prepared store session: the old store is sent a marker after everything
   * the client sent it, and the client's later messages wait. The marker is a SET of
   * application_name to a value of its own, which the store reports back (ParameterStatus) before
   * its CommandComplete and ReadyForQuery: from it to that ReadyForQuery, nothing is the client's.
   * The replies go frame by frame meanwhile, so that the marker's never reach the client.
   */
  private beginSwitch(statement: Buffer): void {
    const next = this.prepared!;
    this.prepared = undefined;
    const marker = `strata switch ${this.id} ${Date.now()}`;
    this.switching = { next, statement, marker, swallowing: false, tail: Buffer.alloc(0) };
    this.rewriting = true;
    this.wantFramed = true;
    this.toStore(encodeQuery(`SET application_name = '${marker}'`, this.encoding));
    this.updateClientFlow();
  }

  /**
   * During a switch: whether `frame` was dealt with here (the marker's reply, dropped; the switch
   * completes at its ReadyForQuery). The store reports the marker after the SET's CommandComplete,
   * so the last bytes of what passes are held back until it is clear whether they are that.
   */
  private switchFrame(frame: Frame): boolean {
    const switching = this.switching!;
    if (switching.swallowing) {
      if (frame.kind === "message" && frame.tag === TAG.readyForQuery) this.completeSwitch(switching);
      return true;
    }
    if (frame.kind === "bytes") {
      const bytes = switching.tail.length ? Buffer.concat([switching.tail, frame.bytes]) : frame.bytes;
      const keep = Math.min(bytes.length, SET_COMPLETE.length);
      if (bytes.length > keep) this.client.write(bytes.subarray(0, bytes.length - keep));
      switching.tail = Buffer.from(bytes.subarray(bytes.length - keep));
      return true;
    }
    if (frame.tag === TAG.parameterStatus) {
      const { name, value } = decodeParameterStatus(frame.bytes);
      if (name === "application_name" && value === switching.marker && switching.tail.equals(SET_COMPLETE)) {
        switching.swallowing = true;
        return true;
      }
    }
    if (switching.tail.length) this.client.write(switching.tail);
    switching.tail = Buffer.alloc(0);
    return false;
  }

  /** The old store has answered everything: the session is the new store session's from here. */
  private completeSwitch(switching: Switch): void {
    const { next } = switching;
    const old = this.store;
    old.off("error", this.onStoreError).off("close", this.onStoreClose);
    old.destroy();
    this.store = next.socket;
    next.socket.off("error", ignoreError);
    next.socket.on("error", this.onStoreError).on("close", this.onStoreClose);
    this.clientKey ??= { pid: this.backendPid!, secret: this.backendSecret! };
    this.backendPid = next.login.key?.pid;
    this.backendSecret = next.login.key?.secret;
    this.database = next.database;
    this.storeFull = false;
    this.switching = undefined;
    // What the old store had left unread is the old session's; the new one starts clean.
    this.fromStore = this.storeSplitter();
    next.route((length, buffer) => this.fromStoreChunk(length, buffer));
    // The client learns the new session's settings (they are its startup's, not its SETs').
    for (const status of next.login.parameterStatus) this.client.write(status);
    this.rewriting = false;
    this.wantFramed = this.hookWanted();
    this.toStore(switching.statement);
    next.socket.resume();
    this.log.debug(
      { session: this.id, database: this.database },
      "front door: session moved to another database",
    );
    // Later, from the client's queue: not from inside the old store's read.
    setImmediate(() => {
      if (!this.ended) this.pumpClient();
    });
  }

  /** Whether transactionEnded may hold this session's next transaction end. */
  private hookWanted(): boolean {
    if (this.switching) return true;
    const rewriter = this.rewriter;
    if (rewriter?.rewritesStoreErrors?.()) return true;
    if (typeof rewriter?.transactionEnded !== "function") return false;
    return rewriter.holdsTransactionEnds?.({ database: this.database, user: this.user }) ?? true;
  }

  /** Ask the rewriter's transactionEnded about this ReadyForQuery; true when it is held. */
  private holdAtTransactionEnd(readyForQuery: Buffer): boolean {
    let hold: Promise<void> | undefined;
    try {
      hold = this.rewriter!.transactionEnded!({ database: this.database, user: this.user, session: this });
    } catch (err) {
      this.log.warn(
        { session: this.id, err: err instanceof Error ? err.message : String(err) },
        "front door: transactionEnded failed",
      );
      return false;
    }
    if (hold === undefined || hold === null) return false;
    const held = Buffer.from(readyForQuery);
    this.held = held;
    const release = () => {
      if (this.ended || this.held !== held) return;
      this.held = undefined;
      this.pumpStore(held);
    };
    Promise.resolve(hold)
      .then(release, (err) => {
        this.log.warn(
          { session: this.id, err: err instanceof Error ? err.message : String(err) },
          "front door: transactionEnded failed",
        );
        release();
      })
      .catch((err) => {
        this.log.error({ session: this.id, err: (err as Error).message }, "front door: session failed");
        this.end("internal error");
      });
    return true;
  }

  private observe(frame: Extract<Frame, { kind: "message" }>): void {
    switch (frame.tag) {
      case TAG.readyForQuery:
        this.txStatus = decodeReadyForQuery(frame.bytes);
        this.wantFramed = this.hookWanted();
        break;
      case TAG.backendKeyData: {
        const key = decodeBackendKeyData(frame.bytes);
        this.backendPid = key.pid;
        this.backendSecret = Buffer.from(key.secret);
        break;
      }
      case TAG.authentication:
        this.auth.fromStore(frame.bytes);
        break;
      case TAG.parameterStatus: {
        const { name, value } = decodeParameterStatus(frame.bytes);
        // Any encoding but UTF-8 is read as latin1, which gives back the same bytes: the SQL a
        // rewriter leaves alone, and the parts of it a rewriter keeps, reach the store unchanged.
        if (name === "client_encoding") this.encoding = /^utf-?8$/i.test(value) ? "utf8" : "latin1";
        break;
      }
    }
  }

  private fail(side: "client" | "store", err: Error): void {
    if (this.ended) return;
    if (side === "store" && !this.heardFromStore) {
      // Nothing reached the client yet: it can be told why, in its protocol.
      this.log.warn({ session: this.id, err: err.message }, "front door: cannot reach the store");
      this.client.write(
        encodeErrorResponse({
          severity: "FATAL",
          code: "08006",
          message: `the front door cannot reach the store: ${err.message}`,
          hint: "check that the store is running (the Strata log says why it stopped)",
        }),
      );
    } else this.log.debug({ session: this.id, side, err: err.message }, "front door: connection error");
    this.end(`${side} error: ${err.message}`);
  }

  /**
   * Close both sides. The store's socket is destroyed at once: a client that went away can be
   * told nothing, and its backend must end (an open transaction is rolled back). The client's is
   * ended, so that what the store said last (a FATAL error) still reaches it, within a grace time.
   */
  private end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.held = undefined;
    this.heldFrames.length = 0;
    this.log.debug({ session: this.id, reason }, "front door: session ended");
    this.store.destroy();
    this.prepared?.socket.destroy();
    this.switching?.next.socket.destroy();
    this.client.end();
    this.client.resume(); // read (and drop) until the client closes its side
    if (!this.client.destroyed) setTimeout(() => this.client.destroy(), CLOSE_GRACE_MS).unref();
    this.onEnd(this);
  }
}
