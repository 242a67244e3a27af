// The version-control SQL surface through the front door, with psql and node-postgres: AS OF
// (simple and extended protocol), dolt_diff with the table's own columns, system variables with
// SHOW / SET / current_setting / ALTER SYSTEM (persisted across a restart), and the reference's
// statements verbatim.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import pg from "pg";
import { startPrimary, TEST_PASSWORD, type TestCluster, tempDir, waitFor } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";

const run = promisify(execFile);
let primary: TestCluster;
let strata: StrataProcess;

before(async () => {
  primary = await startPrimary();
  await primary.query("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(10,2))");
  strata = await startStrata({
    primary,
    config: { system_variables: { dolt_replicate_heads: "main" } },
  });
  await strata.waitForStreaming();
  await primary.query("INSERT INTO accounts VALUES (1, 'ann', 10), (2, 'bob', 20)");
  await primary.query("UPDATE accounts SET balance = balance + 5 WHERE id = 1");
  await primary.query("DELETE FROM accounts WHERE id = 2");
  await primary.query("INSERT INTO accounts VALUES (3, 'cy', 30)");
  await waitForSameRows(primary, strata, "accounts", "id");
});
after(async () => {
  await strata?.stop();
  await primary?.stop();
});

/** psql through the front door, as the reference's reader would type the statements. */
async function psql(...args: string[]): Promise<string> {
  const { stdout } = await run(
    "psql",
    [
      "-h",
      "127.0.0.1",
      "-p",
      String(strata.port),
      "-U",
      "postgres",
      "-d",
      "postgres",
      "-v",
      "ON_ERROR_STOP=1",
      ...args,
    ],
    { env: { ...process.env, PGPASSWORD: TEST_PASSWORD } },
  );
  return stdout;
}

async function withClient<T>(body: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(strata.connectionConfig());
  await client.connect();
  try {
    return await body(client);
  } finally {
    await client.end();
  }
}

const rowsOf = (rows: { id: number; owner: string; balance: string }[]) =>
  rows.map((r) => `${r.id}:${r.owner}:${r.balance}`).sort();

test("AS OF names a commit by HEAD~N, hash, timestamp or LSN, over both protocols", async () => {
  await withClient(async (client) => {
    const log = (
      await client.query("SELECT commit_hash, date::text AS date, upstream_lsn::text AS lsn FROM dolt_log")
    ).rows;
    // Newest first: 0 = insert cy, 1 = delete bob, 2 = update ann, 3 = insert ann and bob.
    const expected = [
      ["1:ann:15.00", "3:cy:30.00"],
      ["1:ann:15.00"],
      ["1:ann:15.00", "2:bob:20.00"],
      ["1:ann:10.00", "2:bob:20.00"],
    ];
    for (const [n, rows] of expected.entries()) {
      const byName = await client.query(`SELECT * FROM accounts AS OF 'HEAD~${n}' ORDER BY id`);
      assert.deepEqual(rowsOf(byName.rows), rows, `HEAD~${n}`);
      const byHash = await client.query(`SELECT a.* FROM accounts AS OF '${log[n].commit_hash}' a`);
      assert.deepEqual(rowsOf(byHash.rows), rows, `hash of HEAD~${n}`);
      const byPrefix = await client.query({
        text: "SELECT * FROM accounts AS OF $1",
        values: [log[n].commit_hash.slice(0, 10)],
      });
      assert.deepEqual(rowsOf(byPrefix.rows), rows, `prefix of HEAD~${n} (extended protocol)`);
      const byTime = await client.query("SELECT * FROM accounts AS OF $1", [log[n].date]);
      assert.deepEqual(rowsOf(byTime.rows), rows, `time of HEAD~${n}`);
      const byLsn = await client.query("SELECT * FROM accounts AS OF $1", [`lsn:${log[n].lsn}`]);
      assert.deepEqual(rowsOf(byLsn.rows), rows, `lsn of HEAD~${n}`);
      // A point lookup (the keyed form), with a parameter and as a prepared statement.
      const point = await client.query({
        name: `point-${n}`,
        text: "SELECT owner, balance FROM accounts AS OF $1 WHERE id = $2",
        values: [`HEAD~${n}`, 2],
      });
      assert.deepEqual(
        point.rows.map((r) => `2:${r.owner}:${r.balance}`),
        rows.filter((r) => r.startsWith("2:")),
        `id 2 as of HEAD~${n}`,
      );
    }
    // A row's versions side by side: each UNION branch a point lookup.
    const versions = await client.query(
      "SELECT 0 AS n, owner, balance FROM accounts AS OF 'HEAD' WHERE id = 2 UNION ALL SELECT 1, owner, balance FROM accounts AS OF 'HEAD~1' WHERE id = 2 ORDER BY n",
    );
    assert.deepEqual(
      versions.rows.map((r) => `${r.n}:2:${r.owner}:${r.balance}`),
      [0, 1].flatMap((n) => expected[n].filter((r) => r.startsWith("2:")).map((r) => `${n}:${r}`)),
      "id 2 at HEAD and HEAD~1 in one UNION",
    );
    const binary = await client.query({
      text: "SELECT id FROM accounts AS OF 'HEAD~3' WHERE id = 1",
      binary: true,
    } as pg.QueryConfig);
    assert.deepEqual(binary.rows, [{ id: 1 }], "binary results through a rewrite");
    const missing = await client.query("SELECT * FROM accounts AS OF 'HEAD~99'").catch((err) => err);
    assert.match(missing.message, /goes back before the first commit/);
    assert.match(missing.hint, /ancestors/);
  });
});

test("dolt_diff returns the table's columns as to_ and from_, with commits and diff_type", async () => {
  await withClient(async (client) => {
    const { rows, fields } = await client.query(
      "SELECT * FROM dolt_diff('HEAD~3', 'HEAD', 'accounts') ORDER BY coalesce(to_id, from_id)",
    );
    assert.deepEqual(
      fields.map((f) => f.name),
      [
        "to_id",
        "to_owner",
        "to_balance",
        "to_commit",
        "to_commit_date",
        "from_id",
        "from_owner",
        "from_balance",
        "from_commit",
        "from_commit_date",
        "diff_type",
      ],
    );
    assert.deepEqual(
      rows.map((r) => [r.diff_type, r.from_balance, r.to_balance]),
      [
        ["modified", "10.00", "15.00"],
        ["removed", "20.00", null],
        ["added", null, "30.00"],
      ],
    );
    const head = (await client.query("SELECT commit_hash FROM dolt_log LIMIT 1")).rows[0].commit_hash;
    assert.ok(rows.every((r) => r.to_commit === head));
    const perCommit = await client.query(
      "SELECT diff_type, to_id FROM dolt_diff_accounts WHERE to_commit = $1",
      [head],
    );
    assert.deepEqual(perCommit.rows, [{ diff_type: "added", to_id: 3 }]);
    const blame = await client.query("SELECT id, commit FROM dolt_blame_accounts ORDER BY id");
    assert.deepEqual(
      blame.rows.map((r) => r.commit === head),
      [false, true],
    );
  });
});

test("system variables: SHOW, SET, current_setting, and bad names and values refused", async () => {
  await withClient(async (client) => {
    const show = await client.query("SHOW dolt_transaction_commit");
    assert.deepEqual(show.rows, [{ dolt_transaction_commit: "1" }], "a replica records commits by default");
    assert.deepEqual((await client.query("SHOW dolt_replicate_heads")).rows, [
      { dolt_replicate_heads: "main" },
    ]);
    await client.query("SET dolt_async_replication TO on");
    assert.equal(
      (await client.query("SELECT current_setting('dolt_async_replication') AS v")).rows[0].v,
      "1",
      "SET lasts for the session",
    );
    await client.query("BEGIN");
    await client.query("SET LOCAL dolt_replicate_heads = 'feature-*'");
    assert.equal((await client.query("SHOW dolt_replicate_heads")).rows[0].dolt_replicate_heads, "feature-*");
    await client.query("ROLLBACK");
    assert.equal((await client.query("SHOW dolt_replicate_heads")).rows[0].dolt_replicate_heads, "main");
    const unknown = await client.query("SET dolt_nonsense = 1").catch((err) => err);
    assert.equal(unknown.code, "42704");
    assert.match(unknown.hint, /dolt_transaction_commit/);
    const bad = await client.query("SET dolt_async_replication = 'perhaps'").catch((err) => err);
    assert.equal(bad.code, "22023");
    assert.match(bad.message, /invalid value for dolt_async_replication/);
    // The session is still usable after the errors.
    assert.equal((await client.query("SELECT 1 AS one")).rows[0].one, 1);
  });
  // Other sessions do not see a SET.
  await withClient(async (client) => {
    assert.equal((await client.query("SHOW dolt_async_replication")).rows[0].dolt_async_replication, "0");
  });
});

test("a replica refuses clients' writes to replicated tables (unless allowed) and makes no commits of its own", async () => {
  await withClient(async (client) => {
    const refused = await client.query("UPDATE accounts SET balance = 0").catch((err) => err);
    assert.equal(refused.code, "25006");
    assert.match(refused.message, /table public\.accounts is replicated from the primary/);
    assert.match(refused.hint, /strata_allow_replica_writes/);
    const truncate = await client.query("TRUNCATE accounts").catch((err) => err);
    assert.equal(truncate.code, "25006");
    const commit = await client
      .query("SELECT dolt_commit('--allow-empty', '-m', 'mine')")
      .catch((err) => err);
    assert.match(commit.message, /replicates from upstream/);
    // A table of the replica's own takes writes (not versioned: the replica's history is the primary's).
    await client.query("CREATE TABLE notes (id int PRIMARY KEY, body text)");
    await client.query("INSERT INTO notes VALUES (1, 'local')");
    assert.deepEqual((await client.query("SELECT * FROM dolt_status")).rows, []);
    await client.query("SET strata_allow_replica_writes TO 1");
    await client.query("UPDATE accounts SET owner = 'local edit' WHERE id = 3");
    await client.query("UPDATE accounts SET owner = 'cy' WHERE id = 3");
  });
  // Replication carries on.
  await primary.query("INSERT INTO accounts VALUES (4, 'dee', 40)");
  await waitForSameRows(primary, strata, "accounts", "id");
});

test("CREATE DATABASE through the front door makes a database with the version-control surface; \\c and DROP work", async () => {
  await withClient((client) => client.query("CREATE DATABASE inventory"));
  const stdout = await psql(
    "-Atc",
    "\\c inventory",
    "-c",
    "SELECT current_database(), (SELECT count(*) FROM dolt_log), current_setting('dolt_transaction_commit')",
  );
  assert.match(stdout, /inventory\|0\|1/);
  // A keyed as-of read there: the front door looks the key up on a connection of its own to
  // "inventory", which it closes before a DROP DATABASE (it failed: "being accessed by other users").
  const read = await psql(
    "-Atc",
    "\\c inventory",
    "-c",
    "CREATE TABLE t (id int PRIMARY KEY, v text)",
    "-c",
    "INSERT INTO t VALUES (1, 'one')",
    "-c",
    "SELECT v FROM t AS OF 'HEAD' WHERE id = 1",
  );
  assert.match(read, /one/);
  await withClient((client) => client.query("DROP DATABASE inventory"));
  const left = await withClient((client) =>
    client.query("SELECT 1 FROM pg_database WHERE datname = 'inventory'"),
  );
  assert.equal(left.rowCount, 0);
});

test("a database made through the front door is brought up to this Strata's schema and the config's defaults at each start", async () => {
  await withClient((client) => client.query("CREATE DATABASE depot"));
  const depot = async (sql: string) => {
    const client = new pg.Client(strata.connectionConfig("depot"));
    await client.connect();
    try {
      return (await client.query(sql)).rows;
    } finally {
      await client.end();
    }
  };
  // As a database an older Strata made: without a function this one has, and other defaults.
  await depot("DROP FUNCTION strata.rebind_capture()");
  const heads = "SELECT value FROM strata.setting_defaults WHERE name = 'strata.dolt_replicate_heads'";
  await depot(
    `UPDATE strata.setting_defaults SET value = 'stale' WHERE name = 'strata.dolt_replicate_heads'`,
  );
  assert.deepEqual(await depot(heads), [{ value: "stale" }]);
  await strata.stop();
  await strata.start();
  assert.deepEqual(await depot("SELECT to_regprocedure('strata.rebind_capture()') IS NOT NULL AS has"), [
    { has: true },
  ]);
  assert.deepEqual(await depot(heads), [{ value: "main" }], "the config file's value");
  await withClient((client) => client.query("DROP DATABASE depot"));
});

test("ALTER SYSTEM SET persists (the reference's statements verbatim), across a restart; RESET returns to the config", async () => {
  // The reference's statements, with the remotes in this test's directory rather than /share:
  // Strata acts on them (a replica of Postgres pushes its commits there).
  const remotes = tempDir("strata-frontdoor-remotes-");
  const reference = [
    "ALTER SYSTEM SET dolt_replicate_to_remote 'origin';",
    "ALTER SYSTEM SET dolt_async_replication TO 1",
    "ALTER SYSTEM SET dolt_replicate_heads TO '';",
    `ALTER SYSTEM SET dolt_replication_remote_url_template = 'file://${remotes}/{database}'; -- file based remote`,
  ];
  for (const statement of reference) assert.match(await psql("-c", statement), /ALTER SYSTEM/);
  const expected = {
    dolt_replicate_to_remote: "origin",
    dolt_async_replication: "1",
    dolt_replicate_heads: "",
    dolt_replication_remote_url_template: `file://${remotes}/{database}`,
  };
  const current = async () =>
    await withClient(async (client) => {
      const values: Record<string, string> = {};
      for (const name of Object.keys(expected))
        values[name] = (await client.query(`SELECT current_setting('${name}') AS v`)).rows[0].v;
      return values;
    });
  await waitFor(
    "new sessions to see ALTER SYSTEM's values",
    async () => JSON.stringify(await current()) === JSON.stringify(expected),
  );
  // Strata acts on them without a restart: the replica's commits reach the remote the template
  // names for its database (asynchronously, as set).
  await waitFor("the log to say the store's configuration was reloaded", async () =>
    /ALTER SYSTEM: store configuration reloaded"/.test(strata.logs),
  );
  assert.doesNotMatch(strata.logs, /dolt_replicate_to_remote takes effect when Strata restarts/);
  await waitFor("the replica's commits in the remote", async () =>
    existsSync(join(remotes, "postgres", "refs", "heads", "main")) ? true : undefined,
  );
  await strata.stop();
  await strata.start();
  assert.deepEqual(await current(), expected, "persisted across a restart");
  await withClient((client) => client.query("ALTER SYSTEM RESET dolt_replicate_heads"));
  await waitFor("RESET to bring back the config file's value", async () =>
    withClient(
      async (client) =>
        (await client.query("SHOW dolt_replicate_heads")).rows[0].dolt_replicate_heads === "main",
    ),
  );
  assert.equal((await psql("-Atc", "SHOW dolt_async_replication")).trim(), "1");
});
