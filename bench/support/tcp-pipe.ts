// The simplest possible proxy in Node: a TCP listener whose every connection is piped, byte for
// byte, to a unix socket (or TCP endpoint). A baseline for the cost of one extra hop through a
// Node process, against which a protocol-aware proxy (Strata's front door) can be compared.
import { createConnection, createServer, type Socket } from "node:net";

export interface TcpPipe {
  host: string;
  port: number;
  close(): Promise<void>;
}

/** Listen on 127.0.0.1 (a free port) and pipe each connection to `target`. */
export async function startTcpPipe(
  target: { path: string } | { host: string; port: number },
): Promise<TcpPipe> {
  const sockets = new Set<Socket>();
  const track = (socket: Socket) => {
    sockets.add(socket);
    socket.on("error", () => socket.destroy());
    socket.once("close", () => sockets.delete(socket));
  };
  const server = createServer({ noDelay: true }, (client) => {
    const upstream =
      "path" in target ? createConnection(target.path) : createConnection(target.port, target.host);
    if (!("path" in target)) upstream.setNoDelay(true);
    track(client);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.once("close", () => upstream.destroy());
    upstream.once("close", () => client.destroy());
  });
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolveListen());
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    host: "127.0.0.1",
    port,
    close: () =>
      new Promise<void>((resolveClose) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolveClose());
      }),
  };
}
