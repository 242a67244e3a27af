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
      log.warn(
        { remote: req.socket.remoteAddress, path: req.url, reason },
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
      res.writeHead(status, { "content-type": "application/json", ...roleHeaders() });
      res.end(JSON.stringify(body));
    };
    try {
      const path = new URL(req.url ?? "/", "http://x").pathname;
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
        let request: VoteRequest;
        try {
          request = parseVoteRequest(await readBody(req));
        } catch (err) {
          throw new ControlRefusal((err as Error).message, 400);
        }
        return reply(200, await handlers.vote(peer, request));
      }
      reply(404, { error: `no such endpoint: ${req.method} ${path}` });
    } catch (err) {
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
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    const refuse = (status: number, message: string, code?: string) => {
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
      if (
        new URL(req.url ?? "/", "http://x").pathname !== "/cluster/store" ||
        req.headers.upgrade !== TUNNEL_PROTOCOL
      )
        return refuse(404, "no such endpoint");
      const peer = await authenticate(req);
      const target = await handlers.storeTunnel(peer, theirRole(req));
      const store = createConnection({ path: target });
      sockets.add(store);
      store.once("close", () => {
        sockets.delete(store);
        socket.destroy();
      });
      store.on("error", (err) => {
        log.warn({ peer, err: err.message }, "cluster: tunnel to the store failed");
        socket.destroy();
      });
      socket.once("close", () => store.destroy());
      store.once("connect", () => {
        store.setNoDelay(true);
        socket.setNoDelay(true);
        const headers = Object.entries(roleHeaders())
          .map(([k, v]) => `${k}: ${v}\r\n`)
          .join("");
        socket.write(
          `HTTP/1.1 101 Switching Protocols\r\nupgrade: ${TUNNEL_PROTOCOL}\r\nconnection: Upgrade\r\n${headers}\r\n`,
        );
        if (head.length > 0) store.write(head);
        socket.pipe(store);
        store.pipe(socket);
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
  for await (const chunk of req) {
    text += chunk;
    if (text.length > MAX_BODY) throw new ControlRefusal("request too large", 413);
  }
  return text;
}
