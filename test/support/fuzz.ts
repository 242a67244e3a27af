// For the fuzz tests: seeded choices (the seed is printed, and STRATA_FUZZ_SEED=<n> repeats a
// run), and raw bytes sent to a server.
import { connect } from "node:net";
import { seededRandom } from "./workload.ts";

/** This run's seed (STRATA_FUZZ_SEED, or a random one), printed with `what`. */
export function fuzzSeed(what: string): number {
  const seed = process.env.STRATA_FUZZ_SEED
    ? Number(process.env.STRATA_FUZZ_SEED) >>> 0
    : Math.floor(Math.random() * 2 ** 32);
  console.log(`${what}: STRATA_FUZZ_SEED=${seed}`);
  return seed;
}

/** Numbers in [0, 1), integers below n, and picks from a list, all from `seed`. */
export function prng(seed: number) {
  const next = seededRandom(seed);
  const int = (n: number) => Math.floor(next() * n);
  return { next, int, pick: <T>(items: readonly T[]): T => items[int(items.length)] };
}

export type Rng = ReturnType<typeof prng>;

export interface RawReply {
  /** Every byte the server sent before it closed (or the deadline, or `enough`). */
  data: Buffer;
  closed: boolean;
  timedOut: boolean;
}

/**
 * Sends `chunks` (with `gapMs` between them) on a new connection to 127.0.0.1:`port`; resolves
 * when the server closes it, at the deadline, or once `enough` says what arrived will do (a
 * keep-alive connection stays open).
 */
export function rawExchange(
  port: number,
  chunks: (string | Buffer)[],
  options: { deadlineMs: number; gapMs?: number; enough?: (data: Buffer) => boolean },
): Promise<RawReply> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    const socket = connect(port, "127.0.0.1");
    let settled = false;
    const done = (closed: boolean, timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(parts), closed, timedOut });
    };
    const timer = setTimeout(() => done(false, true), options.deadlineMs);
    socket.on("data", (d) => {
      parts.push(d);
      if (options.enough?.(Buffer.concat(parts))) done(false, false);
    });
    socket.on("error", () => {});
    socket.on("close", () => done(true, false));
    socket.on("connect", async () => {
      for (const [i, chunk] of chunks.entries()) {
        if (i > 0 && options.gapMs) await new Promise((r) => setTimeout(r, options.gapMs));
        if (socket.destroyed) return;
        socket.write(chunk);
      }
    });
  });
}
