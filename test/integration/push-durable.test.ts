// A push ships only durable commits (src/remotes/push.ts, flushVisibleCommits): a commit the
// apply path made visible without waiting for its WAL flush is flushed before it is pushed. The
// WAL writer is slowed down here (wal_writer_delay = 10 s), so an asynchronous commit's WAL stays
// unflushed long enough to be seen unflushed, then flushed by the call.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type pg from "pg";
import { installStrataSchema } from "../../src/history/install.ts";
import { flushVisibleCommits } from "../../src/remotes/push.ts";
import { startPrimary, type TestCluster } from "../support/postgres.ts";

let cluster: TestCluster;
let client: pg.Client;

before(async () => {
  cluster = await startPrimary({ settings: { wal_writer_delay: "10s", wal_writer_flush_after: 0 } });
  client = await cluster.connect();
  await installStrataSchema(client, "postgres");
  await client.query("CREATE TABLE commits_seen (seq bigint PRIMARY KEY)");
});

after(async () => {
  await client?.end().catch(() => {});
  await cluster?.stop();
});

/** An asynchronous commit (as the apply path's), and the WAL position just after it. */
async function asyncCommit(seq: number): Promise<string> {
  await client.query(
    `BEGIN; SET LOCAL synchronous_commit = off; INSERT INTO commits_seen VALUES (${seq}); COMMIT`,
  );
  const { rows } = await client.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn");
  return rows[0].lsn;
}

async function flushedPast(lsn: string): Promise<boolean> {
  const { rows } = await client.query<{ flushed: boolean }>(
    "SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn AS flushed",
    [lsn],
  );
  return rows[0].flushed;
}

test("a commit visible but not yet flushed is flushed before a push reads on", async () => {
  // The WAL writer may still flush on its own (a full page, its timer); take a commit it has not.
  let lsn = "";
  for (let seq = 1; seq <= 20; seq++) {
    lsn = await asyncCommit(seq);
    if (!(await flushedPast(lsn))) break;
    lsn = "";
  }
  assert.ok(lsn, "every asynchronous commit was flushed at once: the test cannot see the difference");
  await flushVisibleCommits(client);
  assert.equal(await flushedPast(lsn), true, "the visible commit's WAL is flushed");
});

test("it keeps the database's identity and leaves no transaction open", async () => {
  await flushVisibleCommits(client);
  const first = await client.query<{ id: string }>("SELECT id FROM strata.database_identity");
  const lsn = await asyncCommit(1000);
  await flushVisibleCommits(client);
  assert.equal(await flushedPast(lsn), true);
  const second = await client.query<{ id: string }>("SELECT id FROM strata.database_identity");
  assert.equal(second.rows.length, 1);
  assert.equal(second.rows[0].id, first.rows[0].id);
  // Outside a transaction block, SAVEPOINT fails.
  await assert.rejects(client.query("SAVEPOINT s"), /only be used in transaction blocks/);
});

test("refused (a read-only database), it says why and leaves the connection usable", async () => {
  await client.query("SET default_transaction_read_only = on");
  try {
    await assert.rejects(flushVisibleCommits(client), /cannot execute INSERT in a read-only transaction/);
    const { rows } = await client.query<{ one: number }>("SELECT 1 AS one");
    assert.equal(rows[0].one, 1);
  } finally {
    await client.query("SET default_transaction_read_only = off");
  }
});
