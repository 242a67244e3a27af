// Strata against the PostgreSQL versions it supports (14-17), not only the machine's: a primary of
// the oldest with a store of the newest, and the other way round. Each replicates a snapshot, a
// stream (a streamed large transaction, a new column, a renamed column, a partition truncated on
// its own, partitions detached and attached) and keeps history; each store also takes SQL writes
// and commits. Where the machine's client programs are older than the store (pg_dump for a
// branch, pg_basebackup for a standby), the errors say which version is needed. The machine's own
// version runs the rest of the suite. The other versions' server binaries come from npm
// (test/support/pg-versions.ts); where npm did not install them the tests skip, saying why.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { findClientProgram, type PgBinaries } from "../../src/store/binaries.ts";
import { createClusterNodes, destroyClusterNodes } from "../support/cluster-nodes.ts";
import { bundledPgBinaries } from "../support/pg-versions.ts";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { failure, rowsOf } from "../support/sessions.ts";
import {
  runStrataCli,
  type StrataProcess,
  snapshot,
  startStandaloneStrata,
  startStrata,
  waitForSameRows,
} from "../support/strata.ts";

const bundled = { 14: bundledPgBinaries(14), 17: bundledPgBinaries(17) };
const missing = Object.entries(bundled)
  .filter(([, bin]) => !bin)
  .map(([major]) => major);
const skip =
  missing.length > 0 &&
  `PostgreSQL ${missing.join(" and ")} binaries not installed (optional dependencies postgres-14 and postgres-17; linux-x64 only)`;

const serverMajor = async (query: (sql: string) => Promise<pg.QueryResultRow[]>) =>
  Math.floor(Number((await query("SHOW server_version_num"))[0].server_version_num) / 10000);

for (const [upstream, downstream] of [
  [14, 17],
  [17, 14],
] as const) {
  describe(`a PostgreSQL ${upstream} primary replicated into a PostgreSQL ${downstream} store`, {
    skip,
  }, () => {
    let primary: TestCluster;
    let strata: StrataProcess;

    before(async () => {
      primary = await startPrimary({
        bin: bundled[upstream] as PgBinaries,
        // Transactions over 64 kB are streamed while they run (protocol 2 and up).
        settings: { logical_decoding_work_mem: "64kB" },
      });
      await primary.query(`
        CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
        CREATE TABLE notes (body text);
        CREATE TABLE events (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
        CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        INSERT INTO items SELECT i, 'item ' || i, i FROM generate_series(1, 500) i;
        INSERT INTO notes VALUES ('first'), ('first');
        INSERT INTO events SELECT i, date '2025-06-01' + i, 'e' || i FROM generate_series(1, 300) i;
        CREATE PUBLICATION strata_slot FOR ALL TABLES WITH (publish_via_partition_root = true);
      `);
      strata = await startStrata({
        primary,
        config: { store: { bin_dir: (bundled[downstream] as PgBinaries).dir, settings: { fsync: false } } },
      });
      await runStrataCli("setup-primary", "--config", strata.configFile);
    });
    after(async () => {
      await strata?.stop();
      await primary?.stop();
    });
    const sameRowsEverywhere = async () => {
      for (const [table, key] of [
        ["items", "id"],
        ["notes", "body"],
        ["events", "id"],
      ])
        await waitForSameRows(primary, strata, table, key);
    };

    test("the versions are the ones named", async () => {
      assert.equal(await serverMajor((sql) => primary.query(sql)), upstream);
      assert.equal(await serverMajor((sql) => strata.query(sql)), downstream);
    });

    test("snapshot and stream: the replica's rows are the primary's, and history is what happened", async () => {
      await sameRowsEverywhere();
      const commitCount = async () =>
        (await strata.query<{ n: number }>("SELECT count(*)::int AS n FROM dolt_log"))[0].n;
      const [{ h: start }] = await strata.query<{ h: string }>("SELECT dolt.commit_hash('HEAD') AS h");
      const commitsAtStart = await commitCount();
      const itemsAtStart = await snapshot((sql) => primary.query(sql), "items", "id");

      await primary.query("UPDATE items SET qty = qty + 1 WHERE id <= 10");
      await primary.query("DELETE FROM items WHERE id > 490");
      await primary.query("INSERT INTO notes VALUES ('second')");
      // Streamed: about 1 MB in one transaction.
      await primary.query(
        "INSERT INTO items SELECT i, repeat('x', 200) || i, i FROM generate_series(1001, 6000) i",
      );
      await primary.query("ALTER TABLE items ADD COLUMN note text DEFAULT 'n'");
      await primary.query("UPDATE items SET note = 'changed' WHERE id = 1");
      await primary.query("ALTER TABLE items RENAME COLUMN name TO label");
      await primary.query("TRUNCATE events_2025");
      await primary.query("INSERT INTO events VALUES (9999, '2025-02-02', 'after the truncate')");
      await sameRowsEverywhere();

      // The replica's history: the table as it was at the snapshot's commit, and the diff since.
      const asOfStart = await strata.query<{ j: string }>(
        `SELECT to_jsonb(t)::text AS j FROM items AS OF '${start}' AS t ORDER BY id`,
      );
      // In today's shape: the renamed column under its new name, the added one null.
      assert.deepEqual(
        asOfStart.map((r) => JSON.parse(r.j)),
        itemsAtStart.map((j) => {
          const { name, ...row } = JSON.parse(j);
          return { ...row, label: name, note: null };
        }),
      );
      const diff = await strata.query<{ diff_type: string; n: number }>(
        `SELECT diff_type, count(*)::int AS n FROM dolt_diff('${start}', 'HEAD', 'items') GROUP BY 1 ORDER BY 1`,
      );
      // 5,000 added, 10 deleted; every row that stayed has the new column's value now.
      assert.deepEqual(diff, [
        { diff_type: "added", n: 5000 },
        { diff_type: "modified", n: 490 },
        { diff_type: "removed", n: 10 },
      ]);
      // One commit per transaction and per schema change (at least the 9 statements above).
      const commits = (await commitCount()) - commitsAtStart;
      assert.ok(commits >= 9, `${commits} commits since the snapshot`);
    });

    test("a partition detached, then written, and a table attached, then written: each change reaches its table", async () => {
      // Each partition's changes are streamed first, so the walsender has mapped it already.
      await primary.query("UPDATE events SET v = 'before' WHERE id = 249");
      await primary.query(
        "CREATE TABLE events_2027 (id int, at date, v text, PRIMARY KEY (id, at)); INSERT INTO events_2027 VALUES (6001, '2027-01-05', 'standalone')",
      );
      await waitForSameRows(primary, strata, "events_2027", "id, at");
      await primary.query("ALTER TABLE events DETACH PARTITION events_2026");
      await primary.query("INSERT INTO events_2026 VALUES (5001, '2026-02-01', 'after the detach')");
      await primary.query("UPDATE events_2026 SET v = 'changed' WHERE id IN (249, 250)");
      await primary.query(
        "ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
      );
      await primary.query("INSERT INTO events VALUES (6002, '2027-02-01', 'routed')");
      await primary.query("UPDATE events SET v = 'changed' WHERE id = 6001");
      await waitForSameRows(primary, strata, "events", "id, at");
      await waitForSameRows(primary, strata, "events_2026", "id, at");
    });
  });

  describe(`SQL writes and commits on a PostgreSQL ${downstream} store`, { skip }, () => {
    let strata: StrataProcess;
    let client: pg.Client;
    before(async () => {
      strata = await startStandaloneStrata({
        config: { store: { bin_dir: (bundled[downstream] as PgBinaries).dir, settings: { fsync: false } } },
      });
      client = new pg.Client(strata.connectionConfig());
      client.on("error", () => {});
      await client.connect();
    });
    after(async () => {
      await client?.end().catch(() => {});
      await strata?.stop();
    });

    test("writes are committed, and AS OF and dolt_diff read them back", async () => {
      assert.equal(await serverMajor((sql) => rowsOf(client, sql)), downstream);
      await rowsOf(client, "CREATE TABLE t (id int PRIMARY KEY, v text)");
      await rowsOf(client, "INSERT INTO t VALUES (1, 'one'), (2, 'two')");
      await rowsOf(client, "SELECT dolt_commit('-Am', 'first')");
      await rowsOf(client, "UPDATE t SET v = 'uno' WHERE id = 1");
      await rowsOf(client, "ALTER TABLE t ADD COLUMN n int DEFAULT 7");
      await rowsOf(client, "DELETE FROM t WHERE id = 2");
      await rowsOf(client, "SELECT dolt_commit('-Am', 'second')");
      assert.deepEqual(await rowsOf(client, "SELECT * FROM t AS OF 'HEAD~1' ORDER BY id"), [
        { id: 1, v: "one", n: null },
        { id: 2, v: "two", n: null },
      ]);
      assert.deepEqual(
        await rowsOf(
          client,
          "SELECT from_id, from_v, to_id, to_v, to_n, diff_type FROM dolt_diff('HEAD~1', 'HEAD', 't') ORDER BY coalesce(to_id, from_id)",
        ),
        [
          { from_id: 1, from_v: "one", to_id: 1, to_v: "uno", to_n: 7, diff_type: "modified" },
          { from_id: 2, from_v: "two", to_id: null, to_v: null, to_n: null, diff_type: "removed" },
        ],
      );
      assert.deepEqual(
        (await rowsOf(client, "SELECT message FROM dolt_log LIMIT 2")).map((r) => r.message),
        ["second", "first"],
      );
    });

    test("a branch copies the database with pg_dump, which must take the store's version", async () => {
      const pgDump = findClientProgram("pg_dump");
      const dumpMajor = Number(
        /\(PostgreSQL\) (\d+)/.exec(execFileSync(pgDump, ["--version"], { encoding: "utf8" }))?.[1],
      );
      if (dumpMajor >= downstream) {
        await rowsOf(client, "SELECT dolt_branch('feature')");
        assert.deepEqual(await rowsOf(client, "SELECT name FROM dolt_branches ORDER BY name"), [
          { name: "feature" },
          { name: "main" },
        ]);
        return;
      }
      // pg_dump refuses a newer server; pg_restore, left with nothing, fails too, and may exit
      // first: the error is pg_dump's, with what to install.
      const error = await failure(client, "SELECT dolt_branch('feature')");
      assert.match(error.message, /failed in pg_dump: .*server version mismatch/s);
      assert.match(error.hint ?? "", /must be of the store's major version or newer/);
    });
  });
}

// The npm binaries hold no pg_basebackup; where the machine's is older than the store, a standby
// cannot be made, and its log says why and what to install (not only pg_basebackup's refusal).
const machinePgBasebackup = Number(
  /\(PostgreSQL\) (\d+)/.exec(
    execFileSync(findClientProgram("pg_basebackup"), ["--version"], { encoding: "utf8" }),
  )?.[1],
);
test("a hot standby of a PostgreSQL 17 store with an older pg_basebackup: the log names both versions and the remedy", {
  skip: skip || (machinePgBasebackup >= 17 && "the machine's pg_basebackup takes PostgreSQL 17"),
}, async () => {
  const nodes = await createClusterNodes(
    [
      { name: "a", bootstrap_role: "primary" },
      { name: "b", bootstrap_role: "standby" },
    ],
    () => ({ store: { bin_dir: (bundled[17] as PgBinaries).dir, settings: { fsync: false } } }),
  );
  const [a, b] = nodes;
  try {
    await a.strata.start();
    void b.strata.start().catch(() => {});
    await waitFor("the standby's log to name the pg_basebackup it needs", async () =>
      b.strata.logs.includes(
        `is PostgreSQL ${machinePgBasebackup}'s, and the store is PostgreSQL 17: install PostgreSQL 17's pg_basebackup`,
      ),
    );
  } finally {
    await destroyClusterNodes(nodes);
  }
});
