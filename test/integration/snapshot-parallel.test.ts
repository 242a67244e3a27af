// The parallel initial snapshot: several workers under one exported snapshot, large tables split
// into ctid ranges, partitions copied leaf by leaf, each item in its own store transaction — and
// still one exact, atomic "initial snapshot at <LSN>" commit, even when Strata is killed mid-copy.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { BULK_LOAD_SETTINGS_FILE, clusterPaths } from "../../src/store/cluster.ts";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { createStrata, type StrataProcess, waitForSameRows } from "../support/strata.ts";
import { backgroundWriter } from "../support/workload.ts";

const PARALLEL = { publication_name: "pub_root", snapshot_workers: 3, snapshot_chunk_mb: 1 };
const TABLES: [string, string][] = [
  ["big", "id"],
  ["wide", "id"],
  ["events", "id"],
  ["defaults_t", "id"],
  ["small_a", "id"],
  ["small_b", "k"],
];

let primary: TestCluster;
before(async () => {
  primary = await startPrimary();
  await primary.query(`
    CREATE PUBLICATION pub_root FOR ALL TABLES WITH (publish_via_partition_root = true);
    CREATE TABLE big (id int PRIMARY KEY, n numeric(12, 2) NOT NULL, v text);
    INSERT INTO big SELECT i, i / 7.0, md5(i::text) || repeat('b', i % 40) FROM generate_series(1, 120000) i;
    CREATE TABLE wide (id int PRIMARY KEY, doc text, note text);
    INSERT INTO wide SELECT i, (SELECT string_agg(md5(i::text || '.' || j), '') FROM generate_series(1, 3200) j), 'w' || i
      FROM generate_series(1, 40) i;
    CREATE TABLE events (id int, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
    CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    INSERT INTO events SELECT i, date '2024-01-01' + (i % 700), 'e' || i FROM generate_series(1, 30000) i;
    CREATE TABLE defaults_t (id serial PRIMARY KEY, status text NOT NULL DEFAULT 'new', n int DEFAULT 42,
      created date DEFAULT CURRENT_DATE, tag text);
    INSERT INTO defaults_t (tag) SELECT 't' || i FROM generate_series(1, 100) i;
    CREATE TABLE small_a (id int PRIMARY KEY, v text);
    INSERT INTO small_a SELECT i, 'a' || i FROM generate_series(1, 500) i;
    CREATE TABLE small_b (k text PRIMARY KEY);
    INSERT INTO small_b SELECT 'k' || i FROM generate_series(1, 50) i;
    ANALYZE;
  `);
});
after(async () => {
  await primary?.stop();
});

/** Writes on the primary until stopped: updates and deletes of snapshot rows, inserts. */
function writer(cluster: TestCluster) {
  return backgroundWriter(cluster, async (client, i) => {
    await client.query("UPDATE big SET n = n + 1 WHERE id = $1", [1 + ((i * 7919) % 120000)]);
    await client.query("INSERT INTO big VALUES ($1, 0, 'new')", [1_000_000 + i]);
    await client.query("INSERT INTO events VALUES ($1, date '2025-06-01', 'late')", [1_000_000 + i]);
    await client.query("DELETE FROM events WHERE id = $1", [1 + ((i * 104729) % 30000)]);
    if (i % 20 === 0) await client.query("UPDATE wide SET note = note || '+' WHERE id = $1", [1 + (i % 40)]);
  });
}

/**
 * Wait until the replica has acknowledged everything the primary has written so far (the slot's
 * confirmed position moves only once applied changes are durable, and on an idle stream with
 * keepalives): cheaper than polling large tables until they match.
 */
async function caughtUp(slot: string) {
  const [{ lsn }] = await primary.query("SELECT pg_current_wal_lsn()::text AS lsn");
  await waitFor(
    `slot ${slot} to confirm the primary's WAL up to ${lsn}`,
    async () => {
      const [s] = await primary.query(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $2",
        [lsn, slot],
      );
      return s?.ok;
    },
    120_000,
  );
}

async function assertExact(strata: StrataProcess, slot: string) {
  await caughtUp(slot);
  for (const [table, key] of TABLES) await waitForSameRows(primary, strata, table, key, 120_000);
}

/** One snapshot commit, first; its history rows are exactly the rows it copied; nothing orphaned. */
async function assertOneCleanSnapshot(strata: StrataProcess) {
  const log = await strata.query("SELECT message FROM dolt_log ORDER BY commit_order");
  assert.match(log[0].message, /^initial snapshot at [0-9A-F]+\/[0-9A-F]+$/);
  assert.equal(log.filter((r) => r.message.startsWith("initial snapshot")).length, 1);
  const [orphans] = await strata.query(
    "SELECT count(*)::int AS n FROM strata.changes c WHERE NOT EXISTS (SELECT 1 FROM strata.commits k WHERE k.seq = c.commit_seq)",
  );
  assert.equal(orphans.n, 0, "no history rows of an unfinished snapshot");
  const [pending] = await strata.query("SELECT count(*)::int AS n FROM strata.snapshot_tables");
  assert.equal(pending.n, 0);
  // No duplicates: per table, the snapshot's versions are distinct keys.
  const dup = await strata.query(
    `SELECT rel, count(*) AS n, count(DISTINCT row_key) AS keys FROM strata.changes
      WHERE commit_seq = 1 GROUP BY rel HAVING count(*) <> count(DISTINCT row_key)`,
  );
  assert.deepEqual(dup, []);
}

test("parallel snapshot: split tables, partitions, TOAST, under concurrent writes, exactly", async () => {
  const strata = await createStrata({ primary, slot: "par_slot", replication: PARALLEL });
  const load = writer(primary);
  try {
    await waitFor("a few writes before Strata starts", async () => load.transactions > 10);
    await strata.start();
    await strata.waitForStreaming(120_000);
    const atStreaming = load.transactions;
    await waitFor("writes after the snapshot", async () => load.transactions > atStreaming + 100);
    await load.stop();
    await assertExact(strata, "par_slot");
    await assertOneCleanSnapshot(strata);

    // big was split into ctid ranges, events copied leaf by leaf.
    const copied = strata.logs
      .split("\n")
      .filter((l) => l.includes("initial snapshot: table copied"))
      .map((l) => JSON.parse(l));
    const big = copied.find((l) => l.table === "public.big");
    assert.ok(big && big.chunks > 3, `big copied in several chunks: ${JSON.stringify(big)}`);
    assert.equal(copied.find((l) => l.table === "public.events")?.chunks, 2, "one item per partition");
    assert.equal(copied.length, TABLES.length);
    assert.match(strata.logs, /"split_tables":\[[^\]]*"public\.big"/);
    assert.match(strata.logs, /"workers":3/);
    // The snapshot's history has every copied row once.
    const [versions] = await strata.query(
      "SELECT count(*)::int AS n FROM dolt_history_big WHERE commit_hash = (SELECT commit_hash FROM dolt_log WHERE commit_order = 1)",
    );
    assert.equal(versions.n, big.rows);
    assert.ok(big.rows >= 120000);

    // Status after the snapshot: the final figures stay.
    const [status] = await strata.query("SELECT * FROM dolt_replication_status");
    assert.equal(status.state, "streaming");
    assert.ok(["streaming", "catching up"].includes(status.phase), status.phase);
    assert.equal(status.snapshot_tables_total, TABLES.length);
    assert.equal(status.snapshot_tables_done, TABLES.length);
    assert.equal(
      Number(status.snapshot_rows),
      copied.reduce((n, l) => n + l.rows, 0),
    );
    assert.ok(Number(status.snapshot_bytes) > 5_000_000);
    assert.ok(Number(status.snapshot_rows_estimate) >= 120000);
    assert.ok(Number(status.snapshot_bytes_estimate) > 0);
    assert.ok("slot_retained_wal_bytes" in status && "warning" in status);
    await waitFor("phase streaming once caught up", async () => {
      const [s] = await strata.query("SELECT phase FROM dolt_replication_status");
      return s.phase === "streaming";
    });
  } finally {
    await load.stop();
    await strata.stop();
  }
});

test("replica tables get the primary's defaults, except sequence defaults", async () => {
  const strata = await createStrata({ primary, slot: "par_defaults_slot", replication: PARALLEL });
  try {
    await strata.start();
    await strata.waitForStreaming(120_000);
    // The slot was made after the slot monitor's first check: it is checked again at once, not
    // at the next interval (30 s).
    await waitFor(
      "the slot's retained WAL in the status row",
      async () => {
        const [s] = await strata.query("SELECT slot_retained_wal_bytes FROM dolt_replication_status");
        return s.slot_retained_wal_bytes !== null;
      },
      10_000,
    );
    const rows = await strata.query(
      `SELECT column_name, column_default FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'defaults_t' ORDER BY ordinal_position`,
    );
    assert.deepEqual(Object.fromEntries(rows.map((r) => [r.column_name, r.column_default])), {
      id: null,
      status: "'new'::text",
      n: "42",
      created: "CURRENT_DATE",
      tag: null,
    });
    await waitForSameRows(primary, strata, "defaults_t", "id");
  } finally {
    await strata.stop();
  }
});

test("SIGKILL mid-snapshot: the next start empties the partial copy and snapshots again, never a mix", async () => {
  await primary.query(
    "CREATE TABLE heavy (id int PRIMARY KEY, pad text); INSERT INTO heavy SELECT i, repeat(md5(i::text), 6) FROM generate_series(1, 250000) i; ANALYZE heavy",
  );
  const strata = await createStrata({ primary, slot: "par_kill_slot", replication: PARALLEL });
  try {
    // Each copied piece is followed by a pause, so the kill lands mid-snapshot however fast it is.
    process.env.STRATA_TEST_SNAPSHOT_PAUSE_MS = "1000";
    strata.start().catch(() => {});
    // The status row, during the snapshot: rows copied so far, against the estimates.
    const during = await waitFor(
      "the status row to show rows copied by the snapshot",
      async () => {
        const [s] = await strata.query("SELECT * FROM dolt_replication_status").catch(() => []);
        return s?.phase === "snapshot" && Number(s.snapshot_rows) > 0 ? s : undefined;
      },
      60_000,
    );
    await strata.kill("SIGKILL");
    delete process.env.STRATA_TEST_SNAPSHOT_PAUSE_MS;
    assert.equal(during.state, "snapshot");
    assert.equal(during.snapshot_tables_total, TABLES.length + 1);
    assert.ok(Number(during.snapshot_rows_estimate) >= 250000 + 120000);
    assert.ok(Number(during.snapshot_bytes_estimate) > 0);
    assert.ok(Number(during.snapshot_rows) < Number(during.snapshot_rows_estimate));
    assert.doesNotMatch(strata.logs, /initial snapshot complete/, "killed before the snapshot finished");

    await primary.query("INSERT INTO heavy VALUES (0, 'after the kill')");
    await strata.start();
    await strata.waitForStreaming(120_000);
    assert.match(strata.logs, /removed what an unfinished initial snapshot had copied/);
    assert.match(strata.logs, /the previous initial snapshot did not finish/);
    await assertExact(strata, "par_kill_slot");
    await waitForSameRows(primary, strata, "heavy", "id");
    await assertOneCleanSnapshot(strata);
  } finally {
    delete process.env.STRATA_TEST_SNAPSHOT_PAUSE_MS;
    await strata.stop();
  }
});

test("the store's checkpoints are spaced out while the snapshot copies, and put back after", async () => {
  // A store that checkpoints every 16 MB of WAL. With data checksums, a checkpoint during the copy
  // makes the key build that follows (it sets every row's hint bits) log the pages copied before
  // it whole: 2 GB of WAL for the 2.2 GB of bench/snapshot.ts. Spaced out, the copy has none.
  const own = await startPrimary();
  let strata: StrataProcess | undefined;
  try {
    await own.query(`
      CREATE TABLE bulk (id int PRIMARY KEY, filler char(200) NOT NULL);
      INSERT INTO bulk SELECT i, 'row ' || i FROM generate_series(1, 200000) i;
      CREATE PUBLICATION pub_bulk FOR TABLE bulk;
      ANALYZE bulk;
    `);
    strata = await createStrata({
      primary: own,
      slot: "strata_bulk",
      replication: { publication_name: "pub_bulk", snapshot_workers: 2, snapshot_chunk_mb: 4 },
      config: { store: { settings: { fsync: false, max_wal_size: "32MB" } } },
    });
    await strata.start();
    await strata.waitForStreaming();
    const [{ n }] = await strata.query("SELECT count(*)::int AS n FROM bulk");
    assert.equal(n, 200000);
    assert.match(strata.logs, /the store's checkpoints are spaced out until it ends/);
    // The store's log: raised for the copy (49 MB of WAL here: two or three checkpoints at 32 MB), no
    // checkpoint for WAL until put back, then 32 MB again and the file gone.
    const paths = clusterPaths({ root: join(strata.dataDir, "store") });
    const log = readFileSync(paths.logFile, "utf8");
    const raised = log.search(/parameter "max_wal_size" changed to "\d+MB"/);
    const restored = log.search(/parameter "max_wal_size" changed to "32MB"/);
    assert.ok(raised >= 0 && restored > raised, "max_wal_size raised for the snapshot, then put back");
    assert.doesNotMatch(log.slice(raised, restored), /checkpoint starting: wal/);
    const [store] = await strata.query("SELECT current_setting('max_wal_size') AS max_wal_size");
    assert.equal(store.max_wal_size, "32MB");
    assert.equal(existsSync(join(paths.pgdata, BULK_LOAD_SETTINGS_FILE)), false);
  } finally {
    await strata?.stop();
    await own.stop();
  }
});
