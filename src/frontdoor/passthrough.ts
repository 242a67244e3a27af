// The listener: accepts Postgres clients on listener.host:listener.port and passes each connection
// through, byte for byte, to the store. It is the front door that later grows the
// version-control functions; for now it only guarantees that clients reach the replica and that a
// client that goes away leaves no store session behind.
import { createConnection, createServer, type Server, type Socket } from "node:net";
import type { Logger } from "../log.ts";
import type { StoreEndpoint } from "../store/store.ts";

export interface Listener {
  address: { host: string; port: number };
  close(): Promise<void>;
}

export async function startListener(
  host: string,
  port: number,
  target: StoreEndpoint,
  log: Logger,
): Promise<Listener> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream =
      "path" in target ? createConnection(target.path) : createConnection(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    client.setNoDelay(true);
    const closeBoth = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", closeBoth).on("close", closeBoth);
    upstream
      .on("error", (err) => {
        log.warn({ err: err.message }, "listener: cannot reach the store for a client connection");
        closeBoth();
      })
      .on("close", closeBoth);
    client.pipe(upstream);
    upstream.pipe(client);
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
  const address = server.address();
  const bound =
    typeof address === "object" && address ? { host: address.address, port: address.port } : { host, port };
  return {
    address: bound,
    close: () =>
      new Promise<void>((resolveClose) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolveClose());
      }),
  };
}
