// A table the stream cannot apply to, or one being copied because it joined mid-stream, is held:
// its changes wait aside (durably, in order) while every other table keeps replicating, and are
// replayed once the remedy is applied or the copy has committed. Checked against the primary's
// rows and the history, across SIGKILLs while a table is held.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";

async function status(strata: StrataProcess) {
  const [row] = await strata.query<{
    state: string;
    current_error: string | null;
    held_tables: string | null;
  }>("SELECT state, current_error, held_tables FROM dolt_replication_status");
  return row;
}

async function heldChanges(strata: StrataProcess, table: string): Promise<number> {
  const rows = await strata.query<{ n: string }>(
    "SELECT held_changes AS n FROM dolt_replication_held_tables WHERE table_name = $1",
    [table],
  );
  return Number(rows[0]?.n ?? 0);
}

describe("a table whose schema change cannot be followed is held; the others go on", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    // Transactions over 64 kB are streamed before they commit: held changes come from those too.
    primary = await startPrimary({ settings: { logical_decoding_work_mem: "64kB" } });
    await primary.query(
      "CREATE TABLE t (id int PRIMARY KEY, a text); CREATE TABLE u (id int PRIMARY KEY, v text)",
    );
    await primary.query("INSERT INTO t VALUES (1, 'one'); INSERT INTO u VALUES (1, 'u1')");
    strata = await startStrata({ primary });
  });
  after(async () => {
    await strata?.stop();
    await primary?.stop();
  });

  test("held with the remedy named, kept across a SIGKILL, replayed in order once the remedy is applied", async () => {
    await waitForSameRows(primary, strata, "t", "id");
    // Without the event trigger a rename cannot be told from a drop and an add: t is held.
    await primary.query("ALTER TABLE t RENAME COLUMN a TO label");
    await primary.query("BEGIN; INSERT INTO t VALUES (2, 'two'); INSERT INTO u VALUES (2, 'u2'); COMMIT");
    await primary.query("UPDATE t SET label = 'uno' WHERE id = 1");
    await primary.query("INSERT INTO u VALUES (3, 'u3')");
    await primary.query("DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (3, 'three')");
    // u replicates while t is held.
    await waitForSameRows(primary, strata, "u", "id");
    const held = await waitFor("t to be held with its error", async () => {
      const s = await status(strata);
      return s.held_tables && s.current_error ? s : undefined;
    });
    assert.equal(held.state, "streaming");
    assert.equal(held.held_tables, "public.t (schema)");
    assert.match(held.current_error!, /public\.t is held, the other tables replicate/);
    assert.match(held.current_error!, /lost column\(s\) a and gained label/);
    assert.match(held.current_error!, /ALTER TABLE "public"\."t" RENAME COLUMN "a" TO "label"/);
    // Every change to t since the hold is kept, in order (the last transaction may still be on its way).
    await waitFor("the four changes to t to be held", async () =>
      (await heldChanges(strata, "public.t")) === 4 ? true : undefined,
    );
    assert.deepEqual(await strata.query("SELECT id, a FROM t ORDER BY id"), [{ id: 1, a: "one" }]);

    // A crash while held: the held changes are durable with the position, and stay in order.
    await strata.kill("SIGKILL");
    await primary.query("INSERT INTO t VALUES (4, 'four'); INSERT INTO u VALUES (4, 'u4')");
    await strata.start();
    // A streamed (large) transaction touching both tables.
    await primary.query(
      "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(100, 1099) g; INSERT INTO u VALUES (5, 'u5')",
    );
    await waitForSameRows(primary, strata, "u", "id");
    await waitFor("the changes after the restart to be held too", async () =>
      (await heldChanges(strata, "public.t")) === 1005 ? true : undefined,
    );

    // The remedy the error names: t catches up by itself.
    await strata.query('ALTER TABLE "public"."t" RENAME COLUMN "a" TO "label"');
    await waitForSameRows(primary, strata, "t", "id");
    await waitFor("the hold to be gone from the status", async () => {
      const s = await status(strata);
      return s.held_tables === null && s.current_error === null ? true : undefined;
    });
    assert.deepEqual(await strata.query("SELECT * FROM dolt_replication_held_tables"), []);
    // Each held upstream transaction became a commit of its own, in the order they happened.
    const replayed = await strata.query<{ message: string; upstream_lsn: string | null }>(
      "SELECT message, upstream_lsn FROM dolt_log WHERE message LIKE '%held for public.t%' ORDER BY commit_order",
    );
    assert.equal(replayed.length, 5, JSON.stringify(replayed));
    assert.ok(replayed.every((c) => c.upstream_lsn === null));
    const versions = await strata.query<{ id: number; label: string }>(
      `SELECT h.id, h.label FROM dolt_history_t h JOIN strata.commits c ON c.hash = h.commit_hash
        WHERE c.message LIKE '%held for public.t%' AND h.id < 100 ORDER BY c.seq, h.id`,
    );
    assert.deepEqual(versions, [
      { id: 2, label: "two" },
      { id: 1, label: "uno" },
      { id: 3, label: "three" },
      { id: 4, label: "four" },
    ]);
    // Streamed normally again.
    await primary.query("INSERT INTO t VALUES (5, 'five')");
    await waitForSameRows(primary, strata, "t", "id");
  });
});

describe("a row the replica lost holds its table until it is restored", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    primary = await startPrimary();
    await primary.query("CREATE TABLE d (id int PRIMARY KEY, n int); CREATE TABLE e (id int PRIMARY KEY)");
    await primary.query("INSERT INTO d SELECT g, 0 FROM generate_series(1, 5) g");
    strata = await startStrata({ primary });
  });
  after(async () => {
    await strata?.stop();
    await primary?.stop();
  });

  test("updates applied as one statement find every row, or hold the table with the count missing", async () => {
    await strata.query("SET strata_allow_replica_writes TO 1; DELETE FROM d WHERE id = 2");
    await primary.query("UPDATE d SET n = n + 1; INSERT INTO e VALUES (1)");
    await primary.query("UPDATE d SET n = n + 10 WHERE id >= 4; INSERT INTO e VALUES (2)");
    await waitForSameRows(primary, strata, "e", "id");
    const held = await waitFor("d to be held", async () => {
      const s = await status(strata);
      return s.current_error ? s : undefined;
    });
    assert.equal(held.held_tables, "public.d (schema)");
    assert.match(held.current_error!, /1 of 5 rows to update are missing on the replica/);
    assert.match(held.current_error!, /the replica table public\.d diverged from the primary/);
    // Restoring the row as it was lets the held updates apply, in order.
    await strata.query("SET strata_allow_replica_writes TO 1; INSERT INTO d VALUES (2, 0)");
    await waitForSameRows(primary, strata, "d", "id");
    assert.deepEqual(
      await strata.query("SELECT id, n FROM d ORDER BY id"),
      [1, 2, 3, 4, 5].map((id) => ({ id, n: id >= 4 ? 11 : 1 })),
    );
  });
});

describe("a table joining mid-stream is copied in the background", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    primary = await startPrimary();
    await primary.query(
      "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)",
    );
    await primary.query("INSERT INTO b SELECT g, 'before ' || g FROM generate_series(1, 20000) g");
    await primary.query("CREATE TABLE c (code text PRIMARY KEY, label text)");
    await primary.query("INSERT INTO c SELECT 'k' || g, 'label ' || g FROM generate_series(1, 100) g");
    strata = await startStrata({ primary, replication: { publication_tables: ["public.a"] } });
  });
  after(async () => {
    delete process.env.STRATA_TEST_TABLE_SYNC_PAUSE_MS;
    await strata?.stop();
    await primary?.stop();
  });

  test("the stream does not wait for the copy, a SIGKILL mid-copy copies again, and nothing is lost or doubled", async () => {
    // Each copy waits before it commits, so the test sees the stream move on meanwhile.
    process.env.STRATA_TEST_TABLE_SYNC_PAUSE_MS = "6000";
    await strata.stop();
    await strata.start();
    await primary.query("ALTER PUBLICATION strata_slot ADD TABLE b");
    await primary.query("UPDATE b SET v = 'first' WHERE id <= 10");
    await waitFor("b to be copying", async () =>
      (await status(strata)).held_tables === "public.b (copying)" ? true : undefined,
    );
    // While b is copied, a keeps replicating.
    await primary.query("INSERT INTO a VALUES (1, 'during the copy')");
    await waitForSameRows(primary, strata, "a", "id", 4000);
    assert.equal((await status(strata)).held_tables, "public.b (copying)");

    // Killed mid-copy: the copy rolls back, and the next start copies again under a new snapshot.
    await strata.kill("SIGKILL");
    await primary.query("UPDATE b SET v = 'second' WHERE id <= 5; DELETE FROM b WHERE id = 20000");
    delete process.env.STRATA_TEST_TABLE_SYNC_PAUSE_MS;
    await strata.start();
    await primary.query("INSERT INTO b VALUES (20001, 'after the restart'); INSERT INTO a VALUES (2, 'a2')");
    await waitForSameRows(primary, strata, "a", "id");
    await waitForSameRows(primary, strata, "b", "id");
    await waitFor("the hold to end", async () =>
      (await status(strata)).held_tables === null ? true : undefined,
    );
    const joined = await strata.query<{ message: string }>(
      "SELECT message FROM dolt_log WHERE message LIKE 'public.b joined the replica%'",
    );
    assert.equal(joined.length, 1, JSON.stringify(joined));
    assert.match(
      joined[0].message,
      /^public\.b joined the replica \(\d+ rows copied at [0-9A-F]+\/[0-9A-F]+\)$/,
    );
    // History of b starts at the copy: every row's first version is there (a snapshot base).
    const [first] = await strata.query<{ n: number }>(
      `SELECT count(DISTINCT id)::int AS n FROM dolt_history_b h JOIN strata.commits c ON c.hash = h.commit_hash
        WHERE c.message LIKE 'public.b joined the replica%'`,
    );
    assert.ok(first.n >= 19999, `versions at the copy: ${first.n}`);
    // b streams normally afterwards.
    await primary.query("UPDATE b SET v = 'streamed' WHERE id = 1");
    await waitForSameRows(primary, strata, "b", "id");
  });

  test("a table that leaves the publication and comes back is copied anew: what changed while it was out is not lost", async () => {
    await primary.query("ALTER PUBLICATION strata_slot DROP TABLE b");
    await waitFor("the replica to notice b left the publication", async () => {
      const rows = await strata.query(
        "SELECT 1 FROM strata.upstream_tables WHERE rel = 'public.b' AND unpublished_at IS NOT NULL",
      );
      return rows.length ? true : undefined;
    });
    // Not published: the stream never carries these.
    await primary.query("UPDATE b SET v = 'while out' WHERE id <= 100; DELETE FROM b WHERE id > 19000");
    await primary.query("ALTER PUBLICATION strata_slot ADD TABLE b");
    await primary.query("INSERT INTO b VALUES (30000, 'back')");
    await waitForSameRows(primary, strata, "b", "id");
    const messages = (await strata.query<{ message: string }>("SELECT message FROM dolt_log")).map(
      (r) => r.message,
    );
    assert.ok(
      messages.some((m) => /^public\.b was added to the publication again/.test(m)),
      messages.join("\n"),
    );
    assert.equal(messages.filter((m) => /^public\.b joined the replica/.test(m)).length, 2);
  });

  test("a table added to the publication is copied even if nothing ever writes to it", async () => {
    await primary.query("ALTER PUBLICATION strata_slot ADD TABLE c");
    await waitForSameRows(primary, strata, "c", "code");
    assert.match(strata.logs, /a table was added to the publication/);
  });
});
