// Writes and comparisons for cluster tests under load: a writer that keeps the numbers of the rows
// whose COMMIT returned, and exact comparisons of two nodes' tables.
import assert from "node:assert/strict";
import pg from "pg";
import type { ClusterNode } from "./cluster-nodes.ts";
import { waitFor } from "./postgres.ts";

export const PGBENCH_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"];

/**
 * Inserts numbered rows into `acks` on whichever node `target()` names, one per transaction, and
 * keeps the numbers whose COMMIT returned. A failed insert's number is never used again (it may
 * or may not have committed); after a failure it reconnects.
 */
export class AckedWriter {
  readonly acknowledged: number[] = [];
  failures = 0;
  private next = 1;
  private stopped = false;
  private paused = false;
  private idle = false;
  private running?: Promise<void>;

  constructor(private readonly target: () => ClusterNode) {}

  start(): void {
    this.running = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
  }

  /** Stop writing for a moment (a comparison of the nodes' rows): resolves once nothing is in flight. */
  async pause(): Promise<void> {
    this.paused = true;
    await waitFor("the writer to pause", async () => this.idle || this.stopped, 30_000);
  }

  resume(): void {
    this.paused = false;
  }

  /** Wait until `count` more inserts were acknowledged. */
  async progress(count: number, what: string): Promise<void> {
    const goal = this.acknowledged.length + count;
    await waitFor(
      `${count} acknowledged writes ${what}`,
      async () => this.acknowledged.length >= goal,
      60_000,
    );
  }

  private async loop(): Promise<void> {
    let client: pg.Client | undefined;
    while (!this.stopped) {
      this.idle = this.paused;
      if (this.paused) {
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      try {
        if (!client) {
          client = new pg.Client(this.target().strata.connectionConfig());
          client.on("error", () => {});
          await client.connect();
        }
        const id = this.next++;
        await client.query("INSERT INTO acks (id) VALUES ($1)", [id]);
        this.acknowledged.push(id);
        // A few hundred a second: enough to be writing at every moment, not to fill the table.
        await new Promise((r) => setTimeout(r, 2));
      } catch {
        this.failures++;
        await client?.end().catch(() => {});
        client = undefined;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    await client?.end().catch(() => {});
  }
}

/** Each table's row count and a hash of its rows (sorted), read on `node`. */
async function fingerprint(node: ClusterNode, tables: string[]): Promise<Record<string, string>> {
  const client = new pg.Client(node.strata.connectionConfig());
  client.on("error", () => {});
  await client.connect();
  try {
    const out: Record<string, string> = {};
    for (const table of tables) {
      const { rows } = await client.query(
        `SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h FROM ${table} t`,
      );
      out[table] = `${rows[0].n} rows, ${rows[0].h}`;
    }
    return out;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * The standby has exactly the primary's rows in `tables` (and `acks`), once it has caught up; the
 * writer pauses meanwhile.
 */
export async function assertSameRows(
  primary: ClusterNode,
  standby: ClusterNode,
  tables: string[],
  writer?: AckedWriter,
): Promise<void> {
  await writer?.pause();
  try {
    await compareRows(primary, standby, [...tables, "acks"]);
  } finally {
    writer?.resume();
  }
}

async function compareRows(primary: ClusterNode, standby: ClusterNode, tables: string[]): Promise<void> {
  const expected = await fingerprint(primary, tables);
  let seen: Record<string, string> = {};
  await waitFor(
    `${standby.name} to have exactly ${primary.name}'s rows`,
    async () => {
      seen = await fingerprint(standby, tables).catch(() => ({}));
      return JSON.stringify(seen) === JSON.stringify(expected);
    },
    60_000,
  ).catch(() => assert.deepEqual(seen, expected));
}

/** Every write the writer saw acknowledged is on `node`. */
export async function assertNoneLost(node: ClusterNode, writer: AckedWriter): Promise<void> {
  const acknowledged = [...writer.acknowledged];
  const present = new Set((await node.strata.query("SELECT id FROM acks")).map((r) => r.id as number));
  const lost = acknowledged.filter((id) => !present.has(id));
  assert.deepEqual(lost, [], `acknowledged writes missing on ${node.name} (of ${acknowledged.length})`);
}
