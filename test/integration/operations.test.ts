// Operating a replica: bad config, apply errors that stop the stream visibly and resume after the
// fix, the Doltgres seeding flow, acknowledging an idle primary, an external store, clean stop.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import { startPrimary, type TestCluster, tempDir, waitFor } from "../support/postgres.ts";
import { createStrata, startStrata, waitForSameRows } from "../support/strata.ts";

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..", "..");

let primary: TestCluster;
before(async () => {
  primary = await startPrimary();
});
after(async () => {
  await primary?.stop();
});

test("a malformed config exits non-zero naming the key, value and expected form; unknown keys warn", async () => {
  const dir = tempDir();
  const file = join(dir, "bad.yaml");
  writeFileSync(
    file,
    "listener:\n  port: 99999\npostgres_replication:\n  postgres_server_address: 127.0.0.1\n",
  );
  const err = await run(
    process.execPath,
    ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "serve", "--config", file],
    { cwd: ROOT },
  ).then(
    () => assert.fail("strata should have refused the config"),
    (e) => e,
  );
  assert.equal(err.code, 2);
  assert.match(
    err.stderr,
    /listener\.port: listener\.port must be a TCP port number \(an integer 1-65535\); got 99999/,
  );
  assert.match(err.stderr, /postgres_replication\.slot_name: .*got nothing \(the key is missing\)/);
});

test("an apply error holds that table visibly, keeps the server up, and resumes after the fix", async () => {
  await primary.query("CREATE TABLE narrow (id int PRIMARY KEY, a text, b text)");
  // A slot made by hand (Doltgres's flow): no initial snapshot, the replica's tables are the user's.
  await primary.query("SELECT pg_create_logical_replication_slot('narrow_slot', 'pgoutput')");
  const strata = await startStrata({ primary, slot: "narrow_slot" });
  try {
    // The replica's table has a replica-only NOT NULL column the primary's rows cannot fill.
    await strata.query("CREATE TABLE narrow (id int PRIMARY KEY, a text, b text, extra text NOT NULL)");
    await primary.query("INSERT INTO narrow VALUES (1, 'a', 'b')");
    const status = await waitFor("the error in dolt_replication_status", async () => {
      const [row] = await strata.query(
        "SELECT state, current_error, held_tables FROM dolt_replication_status",
      );
      return row?.current_error ? row : undefined;
    });
    // Only the table is held: the stream itself goes on.
    assert.equal(status.state, "streaming");
    assert.equal(status.held_tables, "public.narrow (schema)");
    assert.match(status.current_error, /public\.narrow is held/);
    assert.match(status.current_error, /column "extra"/);
    assert.match(status.current_error, /make the replica-only column extra nullable or give it a default/);
    assert.match(strata.logs, /holding this table's changes until the error is fixed/);
    // The change is kept, in the store, until it can be applied.
    const [held] = await strata.query(
      "SELECT table_name, reason, held_changes FROM dolt_replication_held_tables",
    );
    assert.deepEqual(held, { table_name: "public.narrow", reason: "schema", held_changes: "1" });
    // The server still answers, then the fix lets replication resume by itself.
    await strata.query("ALTER TABLE narrow ALTER COLUMN extra DROP NOT NULL");
    const rows = await waitFor("the row after the fix", async () => {
      const r = await strata.query("SELECT id, a, b, extra FROM narrow");
      return r.length > 0 ? r : undefined;
    });
    assert.deepEqual(rows, [{ id: 1, a: "a", b: "b", extra: null }]);
    await waitFor("state streaming, error cleared", async () => {
      const [row] = await strata.query(
        "SELECT state, current_error, held_tables FROM dolt_replication_status",
      );
      return row.state === "streaming" && row.current_error === null && row.held_tables === null;
    });
    const commits = await strata.query("SELECT upstream_xid FROM dolt_log");
    assert.equal(commits.length, 1, "applied exactly once after the retries");
  } finally {
    await strata.stop();
  }
});

test("seeding: an LSN in <data_dir>/.doltcfg/pg_wal_location starts replication just after it", async () => {
  await primary.query("CREATE TABLE seeded (id int PRIMARY KEY)");
  await primary.query("SELECT pg_create_logical_replication_slot('seed_slot', 'pgoutput')");
  await primary.query("CREATE PUBLICATION seed_pub FOR TABLE seeded");
  // As in Doltgres's guide: the dump's rows, then pg_current_wal_lsn(), then more writes. The test
  // primary runs synchronous_commit=off; a real one (on) has written the commit by then.
  const writer = await primary.connect();
  let lsn: string;
  try {
    await writer.query("SET synchronous_commit = on");
    await writer.query("INSERT INTO seeded SELECT generate_series(1, 10)");
    lsn = (await writer.query("SELECT pg_current_wal_lsn()::text AS lsn")).rows[0].lsn;
    await writer.query("INSERT INTO seeded SELECT generate_series(11, 15)");
  } finally {
    await writer.end();
  }
  const strata = await createStrata({
    primary,
    slot: "seed_slot",
    replication: { publication_name: "seed_pub" },
  });
  mkdirSync(join(strata.dataDir, ".doltcfg"), { recursive: true });
  writeFileSync(join(strata.dataDir, ".doltcfg", "pg_wal_location"), `${lsn}\n`);
  try {
    await strata.start();
    // The dump would have brought rows 1-10; replication brings exactly 11-15.
    const rows = await waitFor("the rows after the seed", async () => {
      const r = await strata.query("SELECT id FROM seeded ORDER BY id").catch(() => []);
      return r.length > 0 ? r : undefined;
    });
    assert.deepEqual(
      rows.map((r) => r.id),
      [11, 12, 13, 14, 15],
    );
    assert.match(strata.logs, /starting replication just after the seeded WAL location/);
  } finally {
    await strata.stop();
  }
});

test("an idle or filtered primary's WAL is not pinned: the slot advances without published changes", async () => {
  await primary.query("CREATE TABLE published (id int PRIMARY KEY)");
  await primary.query("CREATE TABLE unpublished (id int PRIMARY KEY, pad text)");
  await primary.query("CREATE PUBLICATION only_published FOR TABLE published");
  const strata = await startStrata({
    primary,
    slot: "idle_slot",
    replication: { publication_name: "only_published" },
  });
  try {
    await primary.query(
      "INSERT INTO unpublished SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i",
    );
    const [{ lsn }] = await primary.query("SELECT pg_current_wal_lsn()::text AS lsn");
    await waitFor("the slot's confirmed_flush_lsn to pass the unpublished writes", async () => {
      const [row] = await primary.query(
        "SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'idle_slot'",
        [lsn],
      );
      return row.ok;
    });
    const commits = await strata.query("SELECT count(*) AS n FROM dolt_log");
    assert.equal(commits[0].n, "0", "no commits for unpublished changes");
  } finally {
    await strata.stop();
  }
});

test("store.url: an existing Postgres as the store; SIGTERM stops cleanly", async () => {
  const store = await startPrimary();
  await primary.query("CREATE TABLE external_t (id int PRIMARY KEY, v text)");
  const strata = await createStrata({
    primary,
    slot: "external_slot",
    config: { store: { url: store.url.replace(/\/postgres$/, "/postgres") } },
  });
  try {
    await strata.start();
    await strata.waitForStreaming();
    await primary.query("INSERT INTO external_t VALUES (1, 'x'), (2, 'y')");
    await waitForSameRows(primary, strata, "external_t", "id");
    // The data is in the external store itself.
    const rows = await store.query("SELECT count(*) AS n FROM external_t");
    assert.equal(rows[0].n, "2");
    assert.equal(existsSync(join(strata.dataDir, "store")), false, "no managed store was created");
    assert.equal(await strata.kill("SIGTERM"), 0, "a clean exit");
    assert.match(strata.logs, /replication stopped/);
  } finally {
    await strata.stop();
    await store.stop();
  }
});

test("SIGTERM stops the managed store too", async () => {
  const strata = await startStrata({ primary, slot: "term_slot" });
  assert.equal(await strata.kill("SIGTERM"), 0);
  assert.match(strata.logs, /managed store stopped/);
  assert.equal(existsSync(join(strata.dataDir, "store", "pgdata", "postmaster.pid")), false);
});

test("a slot lost after changes were applied is not silently recreated", async () => {
  await primary.query("CREATE TABLE lost_t (id int PRIMARY KEY)");
  const strata = await startStrata({ primary, slot: "lost_slot" });
  try {
    await primary.query("INSERT INTO lost_t VALUES (1)");
    await waitForSameRows(primary, strata, "lost_t", "id");
    await strata.kill("SIGTERM");
    await primary.query("SELECT pg_drop_replication_slot('lost_slot')");
    await strata.start();
    const [status] = await waitFor("the error", async () => {
      const rows = await strata.query("SELECT state, current_error FROM dolt_replication_status");
      return rows[0]?.state === "error" ? rows : undefined;
    });
    assert.match(status.current_error, /replication slot "lost_slot" is missing on the primary/);
    assert.match(status.current_error, /pg_create_logical_replication_slot\('lost_slot', 'pgoutput'\)/);
    const slots = await primary.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'lost_slot'");
    assert.equal(slots.length, 0, "no slot was created behind the user's back");
  } finally {
    await strata.stop();
  }
});

test("a seed without its slot is refused: a slot made now would skip what happened since the seed", async () => {
  const [{ lsn }] = await primary.query("SELECT pg_current_wal_lsn()::text AS lsn");
  const strata = await createStrata({ primary, slot: "seed_noslot" });
  mkdirSync(join(strata.dataDir, ".doltcfg"), { recursive: true });
  writeFileSync(join(strata.dataDir, ".doltcfg", "pg_wal_location"), `${lsn}\n`);
  try {
    await strata.start();
    const [status] = await waitFor("the error", async () => {
      const rows = await strata.query("SELECT state, current_error FROM dolt_replication_status");
      return rows[0]?.state === "error" ? rows : undefined;
    });
    assert.match(status.current_error, /replication slot "seed_noslot" does not exist/);
    assert.match(status.current_error, /create the slot before taking the dump/);
    const slots = await primary.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'seed_noslot'");
    assert.equal(slots.length, 0);
  } finally {
    await strata.stop();
  }
});

test("an idle primary keeps answering: no false reconnects from the silence watchdog", async () => {
  const idle = await startPrimary({ settings: { wal_sender_timeout: "1s" } });
  const strata = await startStrata({ primary: idle, slot: "idle_watch" });
  try {
    const [{ t0 }] = await strata.query("SELECT now() AS t0");
    // With nothing to replicate, messages keep arriving for more than twice wal_sender_timeout.
    await waitFor("keepalives from the idle primary for 3 s", async () => {
      const [row] = await strata.query(
        "SELECT state, last_message_time > $1::timestamptz + interval '3 seconds' AS later FROM dolt_replication_status",
        [t0],
      );
      return row.later && row.state === "streaming";
    });
    assert.doesNotMatch(strata.logs, /no message from the primary/);
    assert.doesNotMatch(strata.logs, /reconnecting/);
  } finally {
    await strata.stop();
    await idle.stop();
  }
});
