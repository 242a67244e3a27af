// The front door: accepts Postgres clients on listener.host:listener.port (and, when configured, on
// the Unix socket <listener.unix_socket_directory>/.s.PGSQL.<port>) and proxies each one to
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
import { chmod, lstat, stat, unlink } from "node:fs/promises";
import { createConnection, createServer, type OnReadOpts, type Server, type Socket } from "node:net";
import { dirname, join, resolve } from "node:path";
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
  /** Also listen on <dir>/.s.PGSQL.<port>, where libpq looks for `host=<dir> port=<port>`. */
  unix_socket_directory?: string;
}

export interface Listener {
  /** Where clients connect: TCP, and the Unix socket's path when there is one. */
  address: { host: string; port: number; socket?: string };
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

  const accept = async (client: Socket, local: boolean) => {
    track(client);
    const outcome = await negotiateStartup(client, tlsContext, log);
    if (outcome.kind === "closed") return;
    if (outcome.kind === "cancel") {
      forwardCancel(cancelPacketFor(outcome.packet, sessions.values()), client, target, track, log);
      return;
    }
    const { socket, tls, packet, rest } = outcome;
    if (socket !== client) track(socket);
    // As Postgres's `local` lines: a Unix socket does not leave the machine, and libpq never asks
    // for TLS over one.
    if (requireTls && !tls && !local) {
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

  const serve = (local: boolean) => (client: Socket) => {
    accept(client, local).catch((err) => {
      log.error({ err: (err as Error).message }, "front door: failed to serve a connection");
      client.destroy();
    });
  };
  const server: Server = createServer({ noDelay: true, keepAlive: true }, serve(false));
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
  const bound: Listener["address"] =
    typeof address === "object" && address ? { host: address.address, port: address.port } : { host, port };
  const servers = [server];
  if (options.unix_socket_directory) {
    const local = createServer(serve(true));
    const path = join(resolve(options.unix_socket_directory), `.s.PGSQL.${bound.port}`);
    try {
      await listenOnSocketFile(local, path);
    } catch (err) {
      server.close();
      local.close(); // listening already, when only the chmod failed
      throw err;
    }
    local.on("error", (err) => log.error({ err: err.message }, "front door: Unix socket listener error"));
    servers.push(local);
    bound.socket = path;
  }
  return {
    address: bound,
    sessions: () => [...sessions.values()],
    close: async () => {
      // Closing a Unix-socket server removes its socket file.
      const closed = servers.map((s) => new Promise<void>((resolveClose) => s.close(() => resolveClose())));
      for (const socket of sockets) socket.destroy();
      await Promise.all(closed);
    },
  };
}

/** sockaddr_un's sun_path holds 108 bytes, the terminating NUL included. */
const MAX_SOCKET_PATH_BYTES = 107;

/**
 * Listen on the socket file `path`. A socket file that nothing answers on is what a killed server
 * leaves behind: it is replaced. One that answers belongs to a running server: that is an error,
 * as is any other kind of file there.
 */
async function listenOnSocketFile(server: Server, path: string): Promise<void> {
  const where = `listener.unix_socket_directory: cannot listen on ${path}`;
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES)
    throw new Error(
      `${where}: the path is ${Buffer.byteLength(path)} bytes long and a Unix socket's may be at most ${MAX_SOCKET_PATH_BYTES}; choose a shorter directory`,
    );
  // libuv reports a missing directory as EACCES: look first.
  const directory = await stat(dirname(path)).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") throw new Error(`${where}: the directory does not exist: create it`);
    throw new Error(`${where}: ${err.code ?? err.message}`);
  });
  if (!directory.isDirectory()) throw new Error(`${where}: ${dirname(path)} is not a directory`);
  const existing = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return null;
    throw new Error(`${where}: ${err.code ?? err.message}`);
  });
  if (existing && !existing.isSocket())
    throw new Error(
      `${where}: a file that is not a socket is in the way; move it, or choose another directory`,
    );
  if (existing) {
    if (await socketAnswers(path))
      throw new Error(
        `${where}: another server already listens there: stop it, or set listener.port or listener.unix_socket_directory to another`,
      );
    await unlink(path);
  }
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const hint =
        err.code === "EACCES"
          ? "; Strata may not create files there: choose a directory it can write to"
          : "";
      reject(new Error(`${where}: ${err.code ?? err.message}${hint}`));
    });
    server.listen(path, () => resolveListen());
  });
  // Who may connect is the store's business (it authenticates every session), as with
  // Postgres's default unix_socket_permissions.
  await chmod(path, 0o777);
}

/** Whether a server accepts connections on the socket file `path` (within a second). */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolveAnswer) => {
    const probe = createConnection({ path });
    const done = (answers: boolean) => {
      probe.destroy();
      resolveAnswer(answers);
    };
    probe.once("connect", () => done(true));
    probe.once("error", () => done(false));
    // A server too busy to accept within a second is still a server.
    probe.setTimeout(1_000, () => done(true));
  });
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
