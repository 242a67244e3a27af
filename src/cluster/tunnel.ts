// The standby side of the store tunnel: a unix socket that this node's store (its walreceiver),
// pg_basebackup and pg_rewind connect to as if it were the primary's store. Each connection is
// carried to the current primary's control-plane port (peers.ts openTunnel) and piped both ways;
// with no primary known, the connection is closed at once and the walreceiver tries again.
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import type { Logger } from "../log.ts";
import type { PeerClient } from "./peers.ts";

/** The port that names the tunnel's socket file (.s.PGSQL.<port>) in its directory. */
export const TUNNEL_PORT = 5432;

export interface StoreTunnel {
  /** Directory of the socket (libpq host=). */
  dir: string;
  port: number;
  close(): Promise<void>;
}

export async function startStoreTunnel(
  dir: string,
  primary: () => PeerClient | undefined,
  log: Logger,
): Promise<StoreTunnel> {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(dir, 0o755);
  const path = join(dir, `.s.PGSQL.${TUNNEL_PORT}`);
  rmSync(path, { force: true });
  const sockets = new Set<Socket>();
  let lastError = "";
  const server: Server = createServer((local) => {
    sockets.add(local);
    local.once("close", () => sockets.delete(local));
    local.on("error", () => {});
    local.pause();
    const peer = primary();
    if (!peer) {
      local.destroy();
      return;
    }
    peer.openTunnel().then(
      (remote) => {
        sockets.add(remote);
        remote.once("close", () => {
          sockets.delete(remote);
          local.destroy();
        });
        remote.on("error", () => local.destroy());
        local.once("close", () => remote.destroy());
        local.setNoDelay?.(true);
        local.pipe(remote);
        remote.pipe(local);
        local.resume();
        lastError = "";
      },
      (err: Error) => {
        // The walreceiver retries every half second: log a failure once, not each time.
        if (err.message !== lastError)
          log.warn(
            { peer: peer.peer.name, err: err.message },
            "cluster: cannot open a tunnel to the primary's store",
          );
        lastError = err.message;
        local.destroy();
      },
    );
  });
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolveListen());
  });
  // The store runs as its own OS user: its walreceiver must be able to connect.
  chmodSync(path, 0o777);
  return {
    dir,
    port: TUNNEL_PORT,
    close: () =>
      new Promise<void>((resolveClose) => {
        server.close(() => resolveClose());
        for (const socket of sockets) socket.destroy();
      }),
  };
}
