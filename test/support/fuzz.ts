// Seeded choices for the fuzz tests: the seed is printed, and STRATA_FUZZ_SEED=<n> repeats a run.
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
