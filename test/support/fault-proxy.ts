// A TCP proxy that injects network faults between two processes on one machine: a partition cuts
// every connection through it and refuses new ones (accepted, then reset at once, as a dead
// route looks to a client that retries) until it heals.
import net from "node:net";

export class FaultProxy {
  private readonly sockets = new Set<net.Socket>();
  private cut = false;
  /** Connections made through the proxy, and the ones it refused. */
  accepted = 0;
  refused = 0;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    private readonly target: number,
  ) {}

  /** Listen on a free loopback port; forward to 127.0.0.1:`target`. */
  static async start(target: number, port = 0): Promise<FaultProxy> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
    const proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port, target);
    server.on("connection", (client) => proxy.connection(client));
    return proxy;
  }

  get partitioned(): boolean {
    return this.cut;
  }

  /** Cut every connection through the proxy, and refuse new ones until heal(). */
  partition(): void {
    this.cut = true;
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  heal(): void {
    this.cut = false;
  }

  async close(): Promise<void> {
    this.partition();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private connection(client: net.Socket): void {
    if (this.cut) {
      this.refused++;
      client.resetAndDestroy();
      return;
    }
    this.accepted++;
    const upstream = net.connect(this.target, "127.0.0.1");
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      this.sockets.add(a);
      a.on("error", () => b.destroy());
      a.on("close", () => {
        this.sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  }
}
