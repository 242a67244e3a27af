// The front door: accepts Postgres clients on listener.host:listener.port and proxies each one to
// the store, speaking the wire protocol rather than copying bytes, so that Strata can see (and,
// through a QueryRewriter, replace) the SQL of each Query and Parse, and knows each session's
// database, user, backend pid and transaction state.
//
//   accept ─▶ startup.ts (SSL/GSSENC answers, TLS, StartupMessage | CancelRequest)
//          ─▶ limits (require_secure_transport, max_connections): FATAL ErrorResponse, close
//          ─▶ session.ts (store connection, both directions, registry entry until it ends)
//
// The store authenticates (the client's password goes to it untouched) and keeps its own cancel
// keys: a CancelRequest is forwarded as it came, on a connection of its own.
import { createConnection, createServer, type OnReadOpts, type Server, type Socket } from "node:net";
import type { SecureContext } from "node:tls";
import type { Logger } from "../log.ts";
import type { StoreEndpoint } from "../store/store.ts";
import { passThroughRewriter, type QueryRewriter, Session, type SessionInfo } from "./session.ts";
import { negotiateStartup } from "./startup.ts";
import { loadTlsContext } from "./tls.ts";
import { type ErrorFields, encodeErrorResponse } from "./wire.ts";

export { passThroughRewriter, type QueryRewriter, type RewriteContext, type SessionInfo } from "./session.ts";

/** The `listener` section of the config. */
export interface ListenerOptions {
  host: string;
  port: number;
  tls_key?: string;
  tls_cert?: string;
  /** Refuse clients that did not negotiate TLS. */
  require_secure_transport?: boolean;
  /** Sessions served at once; more get FATAL 53300. */
  max_connections?: number;
}

export interface Listener {
  address: { host: string; port: number };
  /** The sessions being served (past their StartupMessage), oldest first. */
  sessions(): SessionInfo[];
  /** Stop accepting, end every connection. */
  close(): Promise<void>;
}

const DEFAULT_MAX_CONNECTIONS = 100;
/** How long a refused client may take to read its error. */
const REFUSAL_GRACE_MS = 1_000;
/** How long a forwarded cancel may take to reach the store. */
const CANCEL_TIMEOUT_MS = 10_000;

const ignore = () => {};

export async function startListener(
  options: ListenerOptions,
  target: StoreEndpoint,
  rewriter: QueryRewriter = passThroughRewriter,
  log: Logger,
): Promise<Listener> {
  const { host, port } = options;
  const tlsContext = tlsContextFor(options);
  const requireTls = options.require_secure_transport ?? false;
  if (requireTls && !tlsContext) {
    throw new Error(
      "listener.require_secure_transport is true but no TLS is configured: set listener.tls_key and listener.tls_cert",
    );
  }
  const maxConnections = options.max_connections ?? DEFAULT_MAX_CONNECTIONS;
  const sockets = new Set<Socket>();
  const sessions = new Map<number, Session>();
  let nextId = 1;

  const track = (socket: Socket) => {
    socket.on("error", ignore); // an 'error' without a listener would end the process
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };

  const accept = async (client: Socket) => {
    track(client);
    const outcome = await negotiateStartup(client, tlsContext, log);
    if (outcome.kind === "closed") return;
    if (outcome.kind === "cancel") {
      forwardCancel(cancelPacketFor(outcome.packet, sessions.values()), client, target, track, log);
      return;
    }
    const { socket, tls, packet, rest } = outcome;
    if (socket !== client) track(socket);
    if (requireTls && !tls) {
      log.info({ remote: client.remoteAddress }, "front door: refused a client without TLS");
      refuse(socket, {
        code: "28000",
        message: "this server requires TLS (listener.require_secure_transport is on)",
        hint: 'connect with sslmode=require (or verify-ca / verify-full), e.g. psql "host=... sslmode=require"',
      });
      return;
    }
    if (sessions.size >= maxConnections) {
      log.warn({ max_connections: maxConnections }, "front door: too many connections; refused a client");
      refuse(socket, {
        code: "53300",
        message: `too many connections: the front door already serves listener.max_connections (${maxConnections}) sessions`,
        hint: "close idle sessions, or raise listener.max_connections (and the store's max_connections)",
      });
      return;
    }
    const database = packet.parameters.get("database") || packet.parameters.get("user") || "";
    await rewriter
      .beforeSession?.(database)
      ?.catch((err: Error) =>
        log.warn({ database, err: err.message }, "front door: preparing the session's database failed"),
      );
    const id = nextId++;
    const session = new Session({
      id,
      client: socket,
      connectStore: (onread) => {
        const store = connectTo(target, onread);
        track(store);
        return store;
      },
      tls,
      startupPacket: packet.bytes,
      parameters: packet.parameters,
      rest,
      rewriter,
      log,
      onEnd: () => sessions.delete(id),
    });
    sessions.set(id, session);
    log.debug(
      { session: id, database: session.database, user: session.user, tls, remote: client.remoteAddress },
      "front door: session started",
    );
  };

  const server: Server = createServer({ noDelay: true, keepAlive: true }, (client) => {
    accept(client).catch((err) => {
      log.error({ err: (err as Error).message }, "front door: failed to serve a connection");
      client.destroy();
    });
  });
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const hint =
        err.code === "EADDRINUSE"
          ? `; another server already listens there: stop it or set listener.port to a free port`
          : err.code === "EADDRNOTAVAIL"
            ? "; set listener.host to an address of this machine"
            : "";
      reject(new Error(`cannot listen on ${host}:${port}: ${err.code ?? err.message}${hint}`));
    });
    server.listen(port, host, () => resolveListen());
  });
  server.on("error", (err) => log.error({ err: err.message }, "front door: listener error"));
  const address = server.address();
  const bound =
    typeof address === "object" && address ? { host: address.address, port: address.port } : { host, port };
  return {
    address: bound,
    sessions: () => [...sessions.values()],
    close: () =>
      new Promise<void>((resolveClose) => {
        server.close(() => resolveClose());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

function tlsContextFor(options: ListenerOptions): SecureContext | undefined {
  if (!options.tls_key && !options.tls_cert) return undefined;
  if (!options.tls_key || !options.tls_cert) {
    throw new Error(
      `listener.${options.tls_key ? "tls_cert" : "tls_key"} is missing: TLS needs both listener.tls_key and listener.tls_cert (or neither)`,
    );
  }
  return loadTlsContext(options.tls_key, options.tls_cert);
}

function connectTo(target: StoreEndpoint, onread?: OnReadOpts): Socket {
  if ("path" in target) return createConnection({ path: target.path, onread });
  return createConnection({ port: target.port, host: target.host, noDelay: true, onread });
}

/** Send a FATAL error before the session starts, then close. */
function refuse(socket: Socket, error: Omit<ErrorFields, "severity">): void {
  socket.end(encodeErrorResponse({ severity: "FATAL", ...error }));
  socket.resume();
  setTimeout(() => socket.destroy(), REFUSAL_GRACE_MS).unref();
}

/**
 * The CancelRequest for the store: as it came, unless its session has moved to another store
 * session (dolt_checkout): then with that one's key, since the client only knows its first.
 */
function cancelPacketFor(
  packet: { bytes: Buffer; pid: number; secret: Buffer },
  sessions: Iterable<Session>,
): Buffer {
  for (const session of sessions) {
    const key = session.cancelKeyFor(packet.pid, packet.secret);
    if (!key) continue;
    if (key.pid === packet.pid && key.secret.equals(packet.secret)) break;
    const bytes = Buffer.alloc(12 + key.secret.length);
    bytes.writeInt32BE(bytes.length, 0);
    bytes.writeInt32BE(packet.bytes.readInt32BE(4), 4);
    bytes.writeInt32BE(key.pid, 8);
    key.secret.copy(bytes, 12);
    return bytes;
  }
  return packet.bytes;
}

/**
 * A CancelRequest goes to the store as it came (the keys are the store's own); the client's
 * connection closes once the store has closed its end, as a server's would after the cancel.
 */
function forwardCancel(
  packet: Buffer,
  client: Socket,
  target: StoreEndpoint,
  track: (socket: Socket) => void,
  log: Logger,
): void {
  const store = connectTo(target);
  track(store);
  store.on("error", (err) => log.warn({ err: err.message }, "front door: cannot forward a cancel request"));
  store.on("close", () => client.destroy());
  // Not ended when the client closes first (many do, at once): the packet must still get there.
  store.end(packet);
  store.resume();
  setTimeout(() => store.destroy(), CANCEL_TIMEOUT_MS).unref();
  log.debug({ pid: packet.readInt32BE(8) }, "front door: forwarded a cancel request");
}
