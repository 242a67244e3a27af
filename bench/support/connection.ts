// One connection for one piece of a benchmark's work, closed whatever happens. A server that goes
// away fails the query, not the benchmark (src/db.ts's connect gives every client an error listener).
import type pg from "pg";
import { connect } from "../../src/db.ts";

export { connect };

export async function withConnection<T>(
  config: pg.ClientConfig,
  fn: (c: pg.Client) => Promise<T>,
): Promise<T> {
  const client = await connect(config);
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}
