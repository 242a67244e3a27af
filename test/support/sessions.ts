// Client sessions through a Strata's front door, as the remotes and branches tests use them:
// opened per test, all closed in the file's after(), and the small SQL helpers they share.
import assert from "node:assert/strict";
import pg from "pg";
import { waitFor } from "./postgres.ts";
import type { StrataProcess } from "./strata.ts";

/** The sessions a test file opens; closeAll() in its after(). */
export class Sessions {
  private readonly clients: pg.Client[] = [];

  /** A session of `strata`'s front door; `as` logs in as another user. */
  async open(
    strata: StrataProcess,
    database = "postgres",
    as?: { user: string; password: string },
  ): Promise<pg.Client> {
    const client = new pg.Client({ ...strata.connectionConfig(database), ...as });
    client.on("error", () => {}); // a session the server ends fails its query, not the test process
    await client.connect();
    this.clients.push(client);
    return client;
  }

  /** A session already connected elsewhere, closed with the others. */
  track(client: pg.Client): pg.Client {
    this.clients.push(client);
    return client;
  }

  async closeAll(): Promise<void> {
    await Promise.all(this.clients.splice(0).map((c) => c.end().catch(() => {})));
  }
}

export const rowsOf = async (client: pg.Client, sql: string, values?: unknown[]) =>
  (await client.query(sql, values)).rows;

/** The error `sql` fails with (the test fails if it succeeds). */
export const failure = async (client: pg.Client, sql: string | pg.QueryConfig) =>
  (await client.query(sql).then(
    () => assert.fail(`${typeof sql === "string" ? sql : sql.text} should fail`),
    (err) => err,
  )) as pg.DatabaseError;

/** ALTER SYSTEM reaches new sessions once the store has reloaded its configuration. */
export async function waitForSetting(client: pg.Client, name: string, value: string): Promise<void> {
  await waitFor(`${name} = '${value}'`, async () =>
    (await rowsOf(client, `SELECT dolt.setting('${name}') AS v`))[0].v === value ? true : undefined,
  );
}
