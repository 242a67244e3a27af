// The node's control-plane port (cluster.remotesapi): its public key as a JWKS, heartbeats, and
// store tunnels, each authenticated before anything in it is acted on (Dolt reads the role
// headers first; a forged header must not demote a server).
//
//   GET  /.well-known/jwks.json   unauthenticated: peers verify our tokens with it
//   POST /cluster/heartbeat       → handlers.heartbeat(peer, their heartbeat)  → ours
//   POST /cluster/vote            → handlers.vote(peer, a candidate's request) → granted or not
//   GET  /cluster/store + Upgrade → handlers.storeTunnel(peer, their role): a socket path to pipe to
import http from "node:http";
import https from "node:https";
import { createConnection, type Socket } from "node:net";
import type { Logger } from "../log.ts";
import { loadTlsFiles } from "../tls-files.ts";
import { ClusterAuthError, type NodeKey, type PeerKeys } from "./auth.ts";
import type { VoteRequest } from "./failover.ts";
import {
  EPOCH_HEADER,
  type Heartbeat,
  parseHeartbeat,
  parseVoteRequest,
  ROLE_HEADER,
  TUNNEL_PROTOCOL,
} from "./peers.ts";
import type { RoleState } from "./roles.ts";

export interface ControlServerOptions {
  port: number;
  address?: string;
  tls_key?: string;
  tls_cert?: string;
}

/** A request refused for a reason the peer should see (and log). */
export class ControlRefusal extends Error {
  constructor(
    message: string,
    readonly status = 409,
    /** A machine-readable cause (an authentication failure's ClusterAuthReason). */
    readonly code?: string,
  ) {
    super(message);
  }
}

export interface ControlHandlers {
  /** Our role and epoch, sent back with every answer. */
  self(): RoleState;
  heartbeat(peer: string, theirs: Heartbeat): Promise<Heartbeat>;
  /** A candidate's request for our vote (automatic failover). */
  vote(peer: string, request: VoteRequest): Promise<{ granted: boolean; reason?: string }>;
  /** Where a tunnel from `peer` goes (our store's socket), or a ControlRefusal. */
  storeTunnel(peer: string, theirs: RoleState | undefined): Promise<string>;
  /** A request that failed authentication (shown in the status table). */
  refused(reason: string): void;
}

export interface ControlServer {
  address: { host: string; port: number };
  close(): Promise<void>;
}

const MAX_BODY = 64 * 1024;

/** The peer hung up before sending the whole request: its doing, not a server failure. */
class RequestAborted extends Error {}

/** The path of a request's target; a target that is not a URL (e.g. "//[") is the client's error. */
function requestPath(req: http.IncomingMessage): string {
  try {
    return new URL(req.url ?? "/", "http://x").pathname;
  } catch {
    throw new ControlRefusal(
      `the request target ${JSON.stringify((req.url ?? "").slice(0, 200))} is not a valid URL path`,
      400,
    );
  }
}

export async function startControlServer(
  options: ControlServerOptions,
  key: NodeKey,
  peerKeys: PeerKeys,
  handlers: ControlHandlers,
  log: Logger,
): Promise<ControlServer> {
  const tls =
    options.tls_key && options.tls_cert
      ? loadTlsFiles("cluster.remotesapi", options.tls_key, options.tls_cert)
      : undefined;
  const sockets = new Set<Socket>();
  const roleHeaders = () => {
    const { role, epoch } = handlers.self();
    return { [ROLE_HEADER]: role, [EPOCH_HEADER]: String(epoch) };
  };
  const authenticate = async (req: http.IncomingMessage): Promise<string> => {
    try {
      return (await peerKeys.verify(req.headers.authorization)).peer;
    } catch (err) {
      const reason =
        err instanceof ClusterAuthError
          ? err.message
          : `cannot verify the request: ${(err as Error).message}`;
      const detail = err instanceof ClusterAuthError ? err.detail : undefined;
      log.warn(
        { remote: req.socket.remoteAddress, path: req.url, reason, ...(detail ? { detail } : {}) },
        "cluster: refused an unauthenticated request",
      );
      handlers.refused(reason);
      throw new ControlRefusal(
        `unauthenticated: ${reason}`,
        401,
        err instanceof ClusterAuthError ? err.reason : undefined,
      );
    }
  };
  const theirRole = (req: http.IncomingMessage): RoleState | undefined => {
    const role = req.headers[ROLE_HEADER];
    const epoch = Number(req.headers[EPOCH_HEADER]);
    return typeof role === "string" && Number.isSafeInteger(epoch)
      ? ({ role, epoch } as RoleState)
      : undefined;
  };

  const onRequest = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const reply = (status: number, body: unknown) => {
      // After a 413 the rest of the body is not read: the connection cannot serve another request.
      res.writeHead(status, {
        "content-type": "application/json",
        ...roleHeaders(),
        ...(status === 413 ? { connection: "close" } : {}),
      });
      res.end(JSON.stringify(body));
    };
    try {
      const path = requestPath(req);
      if (req.method === "GET" && path.endsWith("/.well-known/jwks.json")) return reply(200, key.jwks());
      if (req.method === "POST" && path === "/cluster/heartbeat") {
        const peer = await authenticate(req);
        const body = await readBody(req);
        let theirs: Heartbeat;
        try {
          theirs = parseHeartbeat(body);
        } catch (err) {
          throw new ControlRefusal((err as Error).message, 400);
        }
        return reply(200, await handlers.heartbeat(peer, theirs));
      }
      if (req.method === "POST" && path === "/cluster/vote") {
        const peer = await authenticate(req);
        const body = await readBody(req);
        let request: VoteRequest;
        try {
          request = parseVoteRequest(body);
        } catch (err) {
          throw new ControlRefusal((err as Error).message, 400);
        }
        return reply(200, await handlers.vote(peer, request));
      }
      reply(404, { error: `no such endpoint: ${req.method} ${path}` });
    } catch (err) {
      if (err instanceof RequestAborted) {
        log.debug(
          { remote: req.socket.remoteAddress, path: req.url, err: err.message },
          "cluster: peer hung up mid-request",
        );
        return;
      }
      const status = err instanceof ControlRefusal ? err.status : 500;
      if (!(err instanceof ControlRefusal))
        log.error({ err: (err as Error).message }, "cluster: request failed");
      reply(status, {
        error: (err as Error).message,
        code: err instanceof ControlRefusal ? err.code : undefined,
      });
    }
  };

  const onUpgrade = async (req: http.IncomingMessage, socket: Socket, head: Buffer) => {
    sockets.add(socket);
    /** The connection to the store, once made: closed with the peer's, however that ends. */
    let store: Socket | undefined;
    socket.once("close", () => {
      sockets.delete(socket);
      store?.destroy();
    });
    socket.on("error", () => {});
    /** Whether the 101 or a refusal has been sent. */
    let switched = false;
    let refused = false;
    const refuse = (status: number, message: string, code?: string) => {
      if (switched || refused || socket.destroyed) return;
      refused = true;
      const body = JSON.stringify({ error: message, code });
      const headers = Object.entries({
        ...roleHeaders(),
        "content-type": "application/json",
        "content-length": Buffer.byteLength(body),
        connection: "close",
      })
        .map(([k, v]) => `${k}: ${v}`)
        .join("\r\n");
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}\r\n${headers}\r\n\r\n${body}`);
    };
    try {
      if (requestPath(req) !== "/cluster/store" || req.headers.upgrade !== TUNNEL_PROTOCOL)
        return refuse(404, "no such endpoint");
      const peer = await authenticate(req);
      const target = await handlers.storeTunnel(peer, theirRole(req));
      if (socket.destroyed) return; // the peer is gone: no store connection to leak
      const connection = createConnection({ path: target });
      store = connection;
      sockets.add(connection);
      // Before the 101 the peer can still be told why; after it, closing is all there is.
      const storeGone = (cause: string) => {
        if (switched) socket.destroy();
        else refuse(503, `this node's store is not accepting connections: ${cause}`);
      };
      connection.once("close", () => {
        sockets.delete(connection);
        storeGone("it closed the connection");
      });
      connection.on("error", (err) => {
        log.warn({ peer, err: err.message }, "cluster: tunnel to the store failed");
        storeGone(err.message);
      });
      connection.once("connect", () => {
        if (socket.destroyed) {
          connection.destroy();
          return;
        }
        switched = true;
        connection.setNoDelay(true);
        socket.setNoDelay(true);
        const headers = Object.entries(roleHeaders())
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join("");
        socket.write(
          `HTTP/1.1 101 Switching Protocols\r\nupgrade: ${TUNNEL_PROTOCOL}\r\nconnection: Upgrade\r\n${headers}\r\n`,
        );
        if (head.length > 0) connection.write(head);
        socket.pipe(connection);
        connection.pipe(socket);
      });
    } catch (err) {
      refuse(
        err instanceof ControlRefusal ? err.status : 500,
        (err as Error).message,
        err instanceof ControlRefusal ? err.code : undefined,
      );
    }
  };

  const server = tls ? https.createServer({ ...tls }) : http.createServer();
  server.on("request", (req, res) => {
    void onRequest(req, res);
  });
  server.on("upgrade", (req, socket, head) => {
    void onUpgrade(req, socket as Socket, head);
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  const host = options.address ?? "0.0.0.0";
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(
        new Error(
          `cannot listen on ${host}:${options.port} (cluster.remotesapi): ${err.code ?? err.message}${err.code === "EADDRINUSE" ? "; another server listens there: set cluster.remotesapi.port to a free port" : ""}`,
        ),
      ),
    );
    server.listen(options.port, host, () => resolveListen());
  });
  server.on("error", (err) => log.error({ err: err.message }, "cluster: control-plane listener error"));
  const bound = server.address();
  log.info(
    {
      address: host,
      port: typeof bound === "object" && bound ? bound.port : options.port,
      tls: Boolean(tls),
    },
    "cluster: control plane listening (cluster.remotesapi)",
  );
  return {
    address: { host, port: typeof bound === "object" && bound ? bound.port : options.port },
    close: () =>
      new Promise<void>((resolveClose) => {
        server.close(() => resolveClose());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  let text = "";
  req.setEncoding("utf8");
  try {
    for await (const chunk of req) {
      text += chunk;
      if (text.length > MAX_BODY) throw new ControlRefusal("request too large", 413);
    }
  } catch (err) {
    if (err instanceof ControlRefusal) throw err;
    // The request stream fails only when the connection does: the peer hung up ("aborted").
    throw new RequestAborted((err as Error).message);
  }
  return text;
}
