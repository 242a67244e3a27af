// Streamed transactions (pgoutput protocol >= 2): a primary with logical_decoding_work_mem = 64kB
// streams every transaction larger than that before it commits; Strata buffers the chunks
// (spilling to disk past memory_limit_mb) until Stream Commit. Killed while a streamed transaction
// is still open, and again while applying it, Strata must end with it applied exactly once; and a
// streamed transaction that rolls back subtransactions must apply exactly the surviving rows,
// whether the rolled-back part was buffered in memory or on disk.
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import type pg from "pg";
import { type TestCluster, waitFor } from "../support/postgres.ts";
import { waitForSameRows } from "../support/strata.ts";
import { assertExactReplica, lsnValue, ReplicaPair, startStrata } from "../support/workload.ts";

const STREAMING_PRIMARY = { settings: { logical_decoding_work_mem: "64kB" } };
// Small enough that the larger transactions below spill, large enough that the small one does not.
const REPLICATION = { memory_limit_mb: 0.25 };

const spillDir = (pair: ReplicaPair) => join(pair.strata.dataDir, "spill", "strata_slot");
const spillFiles = (pair: ReplicaPair) =>
  existsSync(spillDir(pair)) ? readdirSync(spillDir(pair)).filter((f) => f.endsWith(".spill")) : [];

/** Transactions the primary has streamed to the slot (pg_stat_replication_slots). */
async function streamedTransactions(primary: TestCluster): Promise<number> {
  const [row] = await primary.query<{ n: string }>(
    "SELECT coalesce(sum(stream_txns), 0) AS n FROM pg_stat_replication_slots WHERE slot_name = 'strata_slot'",
  );
  return Number(row.n);
}

async function relationSize(pair: ReplicaPair, table: string): Promise<number> {
  const [row] = await pair.strata.query<{ size: string }>("SELECT pg_relation_size($1) AS size", [table]);
  return Number(row.size);
}

test("a streamed transaction killed mid-stream and again mid-apply is applied exactly once", async (t) => {
  const pair = await ReplicaPair.start({
    primary: STREAMING_PRIMARY,
    strata: { replication: REPLICATION },
    schema:
      "CREATE TABLE streamed (id int PRIMARY KEY, payload text NOT NULL); CREATE TABLE side (id int PRIMARY KEY, note text)",
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  // The replica table exists before the large transaction (its size shows the apply's progress).
  await primary.query("INSERT INTO streamed VALUES (0, 'first')");
  await waitForSameRows(primary, strata, "streamed", "id");

  const open = await pair.connectPrimary();
  await open.query("BEGIN");
  await open.query("INSERT INTO streamed SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 30000) g");
  // Strata holds the open transaction's streamed changes, spilled to disk.
  await waitFor("Strata to spill the streamed transaction", async () => spillFiles(pair).length > 0);
  // Other transactions commit and are applied meanwhile: the durable position moves past the
  // streamed transaction's first changes.
  await primary.query("INSERT INTO side VALUES (1, 'committed while the streamed transaction is open')");
  await waitForSameRows(primary, strata, "side", "id");
  await strata.kill("SIGKILL");
  await startStrata(strata);
  await open.query(
    "INSERT INTO streamed SELECT g, repeat(md5(g::text), 2) FROM generate_series(30001, 60000) g",
  );
  await open.query("UPDATE streamed SET payload = 'updated' WHERE id % 100 = 0");
  await open.query("DELETE FROM streamed WHERE id % 100 = 50");
  await primary.query(
    "INSERT INTO side VALUES (2, 'committed after the restart, before the streamed commit')",
  );
  const base = await relationSize(pair, "streamed");
  await open.query("COMMIT");
  const [{ lsn }] = await primary.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn");
  // ~75 rows a page: kill about a third of the way through the apply. (Enough rows that the apply
  // is still running when this sees a third of them: runs of inserts are applied fast.)
  await waitFor(
    "the replica to be a third of the way through applying the streamed transaction",
    async () => (await relationSize(pair, "streamed")) >= base + Math.ceil(60_000 / 75 / 3) * 8192,
    60_000,
  );
  await strata.kill("SIGKILL");
  const [{ n: durable }] = await pair.queryStore<{ n: string }>("SELECT count(*) AS n FROM streamed");
  assert.equal(
    Number(durable),
    1,
    "nothing of the interrupted streamed transaction is in the store (if all of it is, the apply finished before the kill: use more rows)",
  );
  assert.ok(
    (await pair.confirmedFlushWhenInactive()) < lsnValue(lsn),
    "the slot is not acknowledged past the streamed transaction that was not durable",
  );
  await startStrata(strata);
  await primary.query("INSERT INTO side VALUES (3, 'after')");
  await assertExactReplica(pair, {
    tables: { "public.streamed": ["id"], "public.side": ["id"] },
    commits: 5,
    timeoutMs: 90_000,
  });
  await waitFor("the primary's slot statistics to show a streamed transaction", async () => {
    return (await streamedTransactions(primary)) >= 1;
  });
  const [big] = await strata.query<{ seq: string; n: string }>(
    `SELECT commit_seq::text AS seq, count(*)::text AS n FROM strata.changes
      WHERE rel = 'public.streamed' AND commit_seq > 1 GROUP BY 1`,
  );
  assert.deepEqual(
    big,
    { seq: "4", n: String(60_000 + 601 + 600) },
    "the streamed transaction is one commit, once (60000 inserts, 601 updates, 600 deletes)",
  );
  assert.deepEqual(spillFiles(pair), [], "no spill file is left behind");
});

/**
 * One transaction with rolled-back subtransactions (nested, released, and released inside a
 * rolled-back one) around rows, updates and deletes. `scale` rows per step.
 */
async function savepointTransaction(client: pg.Client, from: number, scale: number): Promise<void> {
  const insert = (lo: number, hi: number, phase: string) =>
    client.query(
      `INSERT INTO sub SELECT g, repeat(md5(g::text), 2), $3 FROM generate_series($1::int, $2::int) g`,
      [from + lo, from + hi, phase],
    );
  const k = scale;
  await client.query("BEGIN");
  await insert(0, k - 1, "top");
  await client.query("SAVEPOINT a");
  await insert(k, 2 * k - 1, "rolled back a");
  await client.query("UPDATE sub SET phase = 'updated in a' WHERE id BETWEEN $1 AND $2", [from, from + 99]);
  await client.query("DELETE FROM sub WHERE id BETWEEN $1 AND $2", [from + 100, from + 199]);
  await client.query("ROLLBACK TO SAVEPOINT a");
  await insert(2 * k, 3 * k - 1, "after a");
  await client.query("SAVEPOINT b");
  await insert(3 * k, 3 * k + 99, "released b");
  await client.query("RELEASE SAVEPOINT b");
  await client.query("SAVEPOINT c");
  await client.query("SAVEPOINT d");
  await insert(4 * k, 4 * k + 99, "released d in rolled back c");
  await client.query("RELEASE SAVEPOINT d");
  await client.query("UPDATE sub SET phase = 'updated in c' WHERE id BETWEEN $1 AND $2", [from, from + 49]);
  await client.query("ROLLBACK TO SAVEPOINT c");
  await client.query("SAVEPOINT e");
  await client.query("DELETE FROM sub WHERE id BETWEEN $1 AND $2", [from + 200, from + 249]);
  await client.query("RELEASE SAVEPOINT e");
  await client.query("UPDATE sub SET phase = 'updated at top' WHERE id % 10 = 0 AND id BETWEEN $1 AND $2", [
    from,
    from + 5 * k,
  ]);
  await client.query("COMMIT");
}

test("streamed transactions that roll back subtransactions apply exactly the surviving rows", async (t) => {
  const pair = await ReplicaPair.start({
    primary: STREAMING_PRIMARY,
    strata: { replication: REPLICATION },
    schema: "CREATE TABLE sub (id int PRIMARY KEY, payload text NOT NULL, phase text)",
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const client = await pair.connectPrimary();
  // ~100 bytes a row: 600 rows a step stream (> 64kB) and stay in Strata's memory (< 256kB until
  // after the rollback); 2500 rows a step spill in the middle of subtransaction a.
  await savepointTransaction(client, 0, 600);
  await waitForSameRows(primary, strata, "sub", "id");
  assert.ok(!existsSync(spillDir(pair)), "the first transaction was buffered in memory only");
  await savepointTransaction(client, 100_000, 2500);
  await assertExactReplica(pair, { tables: { "public.sub": ["id"] }, commits: 2 });
  assert.ok(existsSync(spillDir(pair)), "the second transaction was spilled to disk");
  await waitFor(
    "the primary's slot statistics to show both streamed",
    async () => (await streamedTransactions(primary)) >= 2,
  );
  const phases = await strata.query<{ phase: string }>("SELECT DISTINCT phase FROM sub ORDER BY 1");
  assert.deepEqual(
    phases.map((p) => p.phase),
    ["after a", "released b", "top", "updated at top"],
    "only the surviving subtransactions' rows",
  );
});

test("a transaction whose every change was rolled back leaves no commit, streamed or not", async (t) => {
  const pair = await ReplicaPair.start({
    primary: STREAMING_PRIMARY,
    strata: { replication: REPLICATION },
    schema: "CREATE TABLE gone (id int PRIMARY KEY, payload text); CREATE TABLE marker (id int PRIMARY KEY)",
  });
  t.after(() => pair.teardown());
  const { primary, strata } = pair;
  const client = await pair.connectPrimary();
  // Small (not streamed: pgoutput sends nothing for it) and large (streamed, then Stream Abort of
  // the subtransaction, then Stream Commit with nothing left).
  for (const rows of [10, 5000]) {
    await client.query("BEGIN");
    await client.query("SAVEPOINT s");
    await client.query("INSERT INTO gone SELECT g, repeat('x', 100) FROM generate_series(1, $1::int) g", [
      rows,
    ]);
    await client.query("ROLLBACK TO SAVEPOINT s");
    await client.query("COMMIT");
  }
  await primary.query("INSERT INTO marker VALUES (1)");
  await waitFor("the primary's slot statistics to show the streamed transaction", async () => {
    return (await streamedTransactions(primary)) >= 1;
  });
  // (No row of "gone" was ever applied, so the replica may not even have the table.)
  await assertExactReplica(pair, { tables: { "public.marker": ["id"] }, commits: 1 });
  const [{ exists }] = await strata.query<{ exists: boolean }>(
    "SELECT to_regclass('public.gone') IS NOT NULL AS exists",
  );
  if (exists)
    assert.equal((await strata.query("SELECT 1 FROM gone")).length, 0, "no rolled-back row on the replica");
});
