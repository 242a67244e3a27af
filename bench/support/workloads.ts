// The two backlogs of the catch-up benchmark, and how to create their tables on any server (the
// primary, the native subscriber, Strata's replica through its listener).
//
//   bulk   few large transactions: INSERT ... SELECT generate_series into a pgbench-like table
//   mixed  many small transactions: pgbench's default (TPC-B like) script, 3 UPDATEs + 1 INSERT
//          each, from several concurrent clients
import pg from "pg";
import type { TestCluster } from "../../test/support/postgres.ts";
import type { StrataProcess } from "../../test/support/strata.ts";
import { pgbenchClientArgs, runPgbench } from "./pgbench.ts";
import type { TableSum } from "./scaffold.ts";

/** A server the benchmark connects to. */
export interface Endpoint {
  host: string;
  port: number;
  config: pg.ClientConfig;
}

export interface TableCheck {
  name: string;
  /** ORDER BY for the checksum: all columns when the table has no key. */
  order: string;
}

export interface GenerateResult {
  /** Upstream transactions the workload was asked to run. */
  plannedTransactions: number;
  /** What the generator reported (pgbench's summary), for the JSON. */
  detail: Record<string, unknown>;
}

export interface Workload {
  name: "bulk" | "mixed";
  description: string;
  tables: TableCheck[];
  createTables(target: Endpoint): Promise<void>;
  generate(primary: Endpoint, log: (line: string) => void): Promise<GenerateResult>;
}

export async function withClient<T>(
  target: Endpoint,
  fn: (client: pg.Client) => Promise<T>,
  options?: string,
): Promise<T> {
  const client = new pg.Client({ ...target.config, ...(options ? { options } : {}) });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Session settings that make table checksums independent of each server's defaults. */
const CHECK_SESSION = "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3";

/** Row count and an md5 over every row (in key order) of each table: equal tables, equal sums. */
export async function checksums(target: Endpoint, tables: TableCheck[]): Promise<Record<string, TableSum>> {
  return withClient(
    target,
    async (c) => {
      const out: Record<string, TableSum> = {};
      for (const t of tables) {
        const { rows } = await c.query<{ n: string; h: string }>(
          `SELECT count(*) AS n, md5(coalesce(string_agg(md5(t::text), '' ORDER BY ${t.order}), '')) AS h FROM ${t.name} t`,
        );
        out[t.name] = { rows: Number(rows[0].n), digest: rows[0].h };
      }
      return out;
    },
    CHECK_SESSION,
  );
}

export function endpointOfCluster(c: TestCluster): Endpoint {
  return { host: c.host, port: c.port, config: c.connectionConfig() };
}

/** Strata's listener, optionally with session options (e.g. `-c strata.applying=on`). */
export function endpointOfStrata(s: StrataProcess, options?: string): Endpoint {
  const config = s.connectionConfig();
  return { host: "127.0.0.1", port: s.port, config: options ? { ...config, options } : config };
}

/** Run pgbench against `target`; its progress lines go to `log`, its stdout is returned. */
function pgbench(target: Endpoint, args: string[], log: (line: string) => void): Promise<string> {
  return runPgbench(
    {
      host: target.host,
      port: target.port,
      user: String(target.config.user),
      password: String(target.config.password ?? ""),
      database: String(target.config.database ?? "postgres"),
      options: target.config.options,
    },
    args,
    log,
  );
}

const ROWS_PER_BRANCH = 100_000; // as pgbench

export function bulkWorkload(rows: number): Workload {
  const transactions = 10;
  const perTransaction = Math.ceil(rows / transactions);
  return {
    name: "bulk",
    description: `${transactions} transactions × ${perTransaction.toLocaleString("en-US")} INSERTs (INSERT … SELECT generate_series) into bench_accounts (pgbench_accounts' columns)`,
    tables: [{ name: "bench_accounts", order: "aid" }],
    async createTables(target) {
      await withClient(target, (c) =>
        c.query(
          "CREATE TABLE bench_accounts (aid bigint PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84))",
        ),
      );
    },
    async generate(primary, log) {
      await withClient(primary, async (c) => {
        for (let t = 0; t < transactions; t++) {
          const first = t * perTransaction + 1;
          await c.query(
            `INSERT INTO bench_accounts SELECT g, (g - 1) / ${ROWS_PER_BRANCH} + 1, (g * 7919) % 100000, ''
               FROM generate_series($1::bigint, $2::bigint) g`,
            [first, first + perTransaction - 1],
          );
          log(`transaction ${t + 1}/${transactions} committed`);
        }
      });
      return {
        plannedTransactions: transactions,
        detail: { transactions, rowsPerTransaction: perTransaction },
      };
    },
  };
}

export function mixedWorkload(rows: number, scale: number, clients = 4): Workload {
  // pgbench's default script changes 4 rows per transaction: 3 UPDATEs and 1 INSERT.
  const perClient = Math.ceil(rows / 4 / clients);
  return {
    name: "mixed",
    description: `pgbench default (TPC-B like) script, ${clients} clients × ${perClient.toLocaleString("en-US")} transactions, scale ${scale}: 3 UPDATEs + 1 INSERT per transaction`,
    tables: [
      { name: "pgbench_accounts", order: "aid" },
      { name: "pgbench_branches", order: "bid" },
      { name: "pgbench_tellers", order: "tid" },
      // No key: order by every column, so ties are identical rows.
      { name: "pgbench_history", order: "tid, bid, aid, delta, mtime, filler" },
    ],
    async createTables(target) {
      // Server-side data generation (G): deterministic, so every server starts from the same rows,
      // and no COPY through the listener.
      await pgbench(target, ["-i", "-I", "dtGvp", "-s", String(scale), "-q"], () => {});
    },
    async generate(primary, log) {
      const out = await pgbench(primary, ["-n", ...pgbenchClientArgs(clients, perClient)], log);
      const processed = /number of transactions actually processed: (\d+)/.exec(out)?.[1];
      const tps = /tps = ([\d.]+)/.exec(out)?.[1];
      return {
        plannedTransactions: perClient * clients,
        detail: {
          clients,
          transactionsPerClient: perClient,
          scale,
          processed: processed ? Number(processed) : undefined,
          tps: tps ? Number(tps) : undefined,
        },
      };
    },
  };
}
