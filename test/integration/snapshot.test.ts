// A new replica of a primary that already has data: a consistent initial snapshot while the
// primary keeps taking writes, then streaming from the slot's consistent point — no gap, no duplicate.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { formatLsn, parseLsn } from "../../src/protocol/lsn.ts";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { createStrata, type StrataProcess, waitForSameRows } from "../support/strata.ts";
import { backgroundWriter } from "../support/workload.ts";

let primary: TestCluster;
before(async () => {
  primary = await startPrimary();
  await primary.query(`
    CREATE TYPE color AS ENUM ('red', 'green', 'blue');
    CREATE DOMAIN positive AS int CHECK (VALUE > 0);
    CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL UNIQUE, balance numeric(12, 2) NOT NULL, color color, qty positive);
    CREATE INDEX accounts_balance ON accounts (balance);
    CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
    CREATE TABLE loose (x int, y text);
    INSERT INTO accounts SELECT i, 'user' || i || '@example.com', i * 1.5, (ARRAY['red', 'green', 'blue'])[1 + i % 3]::color, i FROM generate_series(1, 20000) i;
    INSERT INTO pairs SELECT i % 100, 'k' || i, 'v' || i FROM generate_series(1, 5000) i;
    INSERT INTO loose SELECT i % 10, 'dup' FROM generate_series(1, 300) i;
  `);
});
after(async () => {
  await primary?.stop();
});

/** Writes on the primary until stopped: updates of snapshot rows, inserts, deletes. */
function writer(cluster: TestCluster) {
  return backgroundWriter(cluster, async (client, i) => {
    await client.query("UPDATE accounts SET balance = balance + 1 WHERE id = $1", [1 + ((i * 7919) % 20000)]);
    await client.query("INSERT INTO accounts VALUES ($1, $2, 1, 'red', 1)", [
      100000 + i,
      `new${i}@example.com`,
    ]);
    await client.query("DELETE FROM pairs WHERE a = $1 AND b = $2", [i % 100, `k${i}`]);
  });
}

async function assertExact(strata: StrataProcess) {
  await waitForSameRows(primary, strata, "accounts", "id", 120_000);
  await waitForSameRows(primary, strata, "pairs", "a, b");
  await waitForSameRows(primary, strata, "loose", "x, y");
}

test("a primary with data: snapshot under concurrent writes, then streaming, exactly", async () => {
  const strata = await createStrata({ primary, slot: "snap_slot" });
  const load = writer(primary);
  try {
    await waitFor("a few writes before Strata starts", async () => load.transactions > 20);
    await strata.start();
    await strata.waitForStreaming(120_000);
    await waitFor("writes after the snapshot", async () => load.transactions > 200);
    const transactions = await load.stop();
    await assertExact(strata);
    const log = await strata.query(
      "SELECT message, upstream_lsn, commit_order FROM dolt_log ORDER BY commit_order",
    );
    assert.match(log[0].message, /^initial snapshot at [0-9A-F]+\/[0-9A-F]+$/);
    // The snapshot is named by its consistent point: AS OF 'lsn:…' finds it there (or a
    // transaction that committed at that very LSN), and nothing before it.
    const consistentPoint = log[0].message.split(" ").at(-1);
    assert.equal(log[0].upstream_lsn, consistentPoint);
    const [named] = await strata.query(
      "SELECT upstream_lsn FROM dolt_log WHERE commit_order = dolt.commit_seq($1)",
      [`lsn:${consistentPoint}`],
    );
    assert.equal(named.upstream_lsn, consistentPoint);
    await assert.rejects(
      strata.query("SELECT dolt.commit_seq($1)", [`lsn:${formatLsn(parseLsn(consistentPoint) - 1n)}`]),
      /no replicated commit at or before upstream LSN/,
    );
    assert.ok(
      log.length > 1 && log.length <= transactions + 1,
      `one snapshot commit, then at most one per transaction: ${log.length}`,
    );
    assert.match(
      strata.logs,
      /initial snapshot: table copied.*public\.accounts|public\.accounts.*initial snapshot: table copied/,
    );
    // History starts at the snapshot: every copied row is a version there.
    const [first] = await strata.query(
      "SELECT count(*) AS n FROM dolt_history_accounts WHERE commit_hash = (SELECT commit_hash FROM dolt_log WHERE commit_order = 1)",
    );
    assert.ok(Number(first.n) >= 20000);
    // The schema came from the primary's catalog.
    const indexes = await strata.query(
      "SELECT indexname FROM pg_indexes WHERE tablename = 'accounts' ORDER BY indexname",
    );
    assert.deepEqual(
      indexes.map((r) => r.indexname),
      ["accounts_balance", "accounts_email_key", "accounts_pkey"],
    );
    const [notNull] = await strata.query(
      "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'email'",
    );
    assert.equal(notNull.attnotnull, true);
    // Enums and domains used by published columns exist on the replica as on the primary.
    const types = await strata.query(
      `SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute
        WHERE attrelid = 'accounts'::regclass AND attname IN ('color', 'qty') ORDER BY attname`,
    );
    assert.deepEqual(types, [
      { attname: "color", type: "color" },
      { attname: "qty", type: "positive" },
    ]);
    const [domain] = await strata.query(
      "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE contypid = 'positive'::regtype",
    );
    assert.equal(domain.def, "CHECK ((VALUE > 0))");
    const [state] = await strata.query("SELECT state FROM dolt_replication_status");
    assert.equal(state.state, "streaming");
  } finally {
    await load.stop();
    await strata.stop();
  }
});

test("SIGKILL during the snapshot: the next start drops the unfinished slot and snapshots again", async () => {
  await primary.query(
    "CREATE TABLE heavy (id int PRIMARY KEY, pad text); INSERT INTO heavy SELECT i, repeat('x', 500) FROM generate_series(1, 300000) i",
  );
  const strata = await createStrata({ primary, slot: "snap_kill_slot" });
  try {
    strata.start().catch(() => {});
    await waitFor(
      "the snapshot to start copying",
      async () => /initial snapshot: copying/.test(strata.logs),
      60_000,
    );
    await strata.kill("SIGKILL");
    assert.doesNotMatch(strata.logs, /initial snapshot complete/, "killed before the snapshot finished");
    await primary.query("INSERT INTO heavy VALUES (0, 'after the kill')");
    await strata.start();
    await strata.waitForStreaming(120_000);
    assert.match(strata.logs, /the previous initial snapshot did not finish/);
    await assertExact(strata);
    await waitForSameRows(primary, strata, "heavy", "id", 120_000);
    const snapshots = await strata.query(
      "SELECT count(*) AS n FROM dolt_log WHERE message LIKE 'initial snapshot at %'",
    );
    assert.equal(snapshots[0].n, "1");
  } finally {
    await strata.stop();
  }
});
