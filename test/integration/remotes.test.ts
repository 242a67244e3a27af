// Remotes through a directory: dolt_remote, dolt_push, dolt_clone, dolt_fetch, dolt_pull, and
// replication through a remote as the Doltgres reference configures it (its statements verbatim).
// Two standalone Stratas share one directory remote; the outcome checked is that the replica's
// rows and history equal the primary's.
import assert from "node:assert/strict";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import pg from "pg";
import { startPrimary, type TestCluster, tempDir, waitFor } from "../support/postgres.ts";
import { failure, rowsOf, Sessions, waitForSetting } from "../support/sessions.ts";
import {
  runStrataCli,
  type StrataOptions,
  type StrataProcess,
  startStandaloneStrata,
  startStrata,
  waitForSameRows,
} from "../support/strata.ts";

let primary: StrataProcess;
let replica: StrataProcess;
let remoteDir: string;
const sessions = new Sessions();

before(async () => {
  remoteDir = join(tempDir("strata-remote-"), "myremote");
  [primary, replica] = await Promise.all([startStandaloneStrata(), startStandaloneStrata()]);
});
after(async () => {
  await sessions.closeAll();
  if (process.env.STRATA_TEST_LOGS) console.error(primary?.logs.slice(-3000), replica?.logs.slice(-5000));
  await Promise.all([primary?.stop(), replica?.stop()]);
});

const connectTo = (strata: StrataProcess, database?: string) => sessions.open(strata, database);

/** Every object in a remote (its packs). */
function packFiles(remote: string): string[] {
  const root = join(remote, "objects");
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && /^[0-9a-f]{64}$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

/** Clone `url` as `name` on the replica, loaded from a snapshot: the clone's session and head. */
async function cloneFromSnapshot(url: string, name: string): Promise<{ c: pg.Client; head: string }> {
  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', '${name}')`);
  assert.match(replica.logs, new RegExp(`"database":"${name}".*"from_snapshot":[1-9]`));
  const c = await connectTo(replica, name);
  const [{ head }] = await rowsOf(c, "SELECT dolt.commit_hash('HEAD') AS head");
  return { c, head };
}

/** Wait until a session (a push the test holds back) waits for a lock on `relation`. */
async function waitForLockWaiter(run: (sql: string) => Promise<pg.QueryResultRow[]>, relation: string) {
  await waitFor(`a session waiting for ${relation}`, async () => {
    const [{ n }] = await run(
      `SELECT count(*)::int AS n FROM pg_locks WHERE relation = '${relation}'::regclass AND NOT granted`,
    );
    return n > 0 ? true : undefined;
  });
}

/** A throwaway primary, made ready by `setup`, and a Strata replicating it, for `body`; both stopped after. */
async function withReplicaOfPostgres(
  setup: (upstream: TestCluster) => Promise<void>,
  options: Omit<StrataOptions, "primary">,
  body: (upstream: TestCluster, versioned: StrataProcess) => Promise<void>,
) {
  const upstream = await startPrimary();
  try {
    await setup(upstream);
    const versioned = await startStrata({ primary: upstream, ...options });
    try {
      await body(upstream, versioned);
    } finally {
      if (process.env.STRATA_TEST_LOGS) console.error(versioned.logs.slice(-6000));
      await versioned.stop();
    }
  } finally {
    await upstream.stop();
  }
}

test("push, clone, pull: the clone's rows and history equal the primary's", async () => {
  const db = await connectTo(primary);
  await rowsOf(db, "CREATE DATABASE pushed");
  const p = await connectTo(primary, "pushed");
  const url = `file://${remoteDir}/pushed`;
  await rowsOf(p, `select dolt_remote('add', 'origin', '${url}')`);
  assert.deepEqual(await rowsOf(p, "SELECT name, url FROM dolt_remotes"), [{ name: "origin", url }]);
  await rowsOf(
    p,
    "create table items (id int primary key, name text not null, price numeric(8,2) default 1.5)",
  );
  await rowsOf(p, "create index items_name on items (name)");
  await rowsOf(p, "create table notes (body text)"); // no key
  await rowsOf(p, "insert into items select g, 'item ' || g from generate_series(1, 50) g");
  await rowsOf(p, "insert into notes values ('a'), ('a'), ('b')");
  await rowsOf(p, "select dolt_commit('-Am', 'first')");
  const pushed = await rowsOf(p, "select dolt_push('origin', 'main')");
  assert.match(pushed[0].dolt_push[1], /pushed 1 commit/);

  // More than nine commits: commit order is numeric (a text sort would put 10 before 9).
  for (let i = 0; i < 11; i++) {
    await rowsOf(p, `update items set name = 'renamed ${i}' where id = ${20 + i}`);
    await rowsOf(p, `select dolt_commit('-am', 'rename ${i}')`);
  }
  assert.match((await rowsOf(p, "select dolt_push('origin', 'main')"))[0].dolt_push[1], /pushed 11 commits/);
  await rowsOf(p, "update items set price = price * 2 where id <= 10");
  await rowsOf(p, "delete from items where id > 45");
  await rowsOf(p, "update items set id = 100 where id = 1"); // a key that moves
  await rowsOf(p, "delete from notes where body = 'b'");
  await rowsOf(p, "alter table items add column stock int not null default 0");
  await rowsOf(p, "update items set stock = id where id < 5");
  await rowsOf(p, "select dolt_commit('-am', 'second')");
  await rowsOf(p, "alter table notes rename to memos");
  await rowsOf(p, "insert into memos values ('c')");
  await rowsOf(p, "select dolt_commit('-Am', 'renamed')");
  await rowsOf(p, "select dolt_tag('v1', 'HEAD~1')");
  await rowsOf(p, "select dolt_tag('-m', 'the release', 'v2')");
  assert.equal((await failure(p, "select dolt_tag('v1')")).code, "42710");
  // Every tag can be pushed: a name too long for a remote's file name is refused when it is made.
  const long = await failure(p, `select dolt_tag('${"t".repeat(201)}')`);
  assert.equal(long.code, "42622");
  assert.match(long.message, /201 bytes is too long to push/);
  await rowsOf(p, `select dolt_tag('${"t".repeat(200)}'), dolt_tag('-d', '${"t".repeat(200)}')`);
  assert.match(
    (await rowsOf(p, "select dolt_push('origin', 'main')"))[0].dolt_push[1],
    /pushed 2 commits and 2 tags/,
  );
  assert.equal(
    (await rowsOf(p, "select dolt_push('origin', 'main')"))[0].dolt_push[1],
    "Everything up-to-date",
  );

  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'cloned')`);
  const c = await connectTo(replica, "cloned");
  const same = async (sql: string) => assert.deepEqual(await rowsOf(c, sql), await rowsOf(p, sql), sql);
  await same("SELECT * FROM items ORDER BY id");
  await same("SELECT body FROM memos ORDER BY body");
  await same("SELECT commit_hash, parent_hash, message, committer, date FROM dolt_log");
  await same("SELECT id, price, stock, commit_hash FROM dolt_history_items ORDER BY commit_hash, id");
  await same("SELECT * FROM dolt_diff('HEAD~2', 'HEAD', 'items') ORDER BY to_id, from_id");
  await same("SELECT * FROM items AS OF 'HEAD~2' ORDER BY id");
  // (HEAD~2 is before stock was added: null there, on the clone too, from the definitions it pulled.)
  assert.deepEqual(await rowsOf(c, "SELECT DISTINCT stock FROM items AS OF 'HEAD~2'"), [{ stock: null }]);
  assert.deepEqual(await rowsOf(c, "SELECT DISTINCT stock FROM items AS OF 'HEAD~1' WHERE id >= 5"), [
    { stock: 0 },
  ]);
  await same(
    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('items', 'memos') ORDER BY indexname",
  );
  await same("SELECT * FROM dolt_tags");
  await same("SELECT * FROM items AS OF 'v1' ORDER BY id");
  assert.deepEqual(await rowsOf(c, "SELECT name FROM dolt_remotes"), [{ name: "origin" }]);
  assert.deepEqual(await rowsOf(c, "SELECT * FROM dolt_status"), []);

  // More commits on the primary reach the clone by dolt_pull; dolt_fetch only looks.
  await rowsOf(p, "insert into items (id, name) values (200, 'late')");
  await rowsOf(p, "select dolt_commit('-am', 'late')");
  await rowsOf(p, "select dolt_push()");
  const head = (await rowsOf(p, "SELECT dolt.commit_hash('HEAD') AS h"))[0].h;
  assert.equal(
    (await rowsOf(c, "select dolt_fetch('origin')"))[0].dolt_fetch[1],
    `origin/main is at ${head}`,
  );
  assert.deepEqual(await rowsOf(c, "SELECT hash FROM dolt_remote_branches"), [{ hash: head }]);
  assert.equal((await rowsOf(c, "SELECT count(*)::int AS n FROM items WHERE id = 200"))[0].n, 0);
  await rowsOf(p, "select dolt_tag('v3')");
  await rowsOf(p, "select dolt_push()");
  assert.match((await rowsOf(c, "select dolt_pull('origin')"))[0].dolt_pull[1], /fast-forward: 1 commit/);
  await same("SELECT * FROM dolt_tags");
  await same("SELECT * FROM items ORDER BY id");
  await same("SELECT commit_hash FROM dolt_log");
  assert.equal(
    (await rowsOf(c, "select dolt_pull('origin', 'main')"))[0].dolt_pull[1],
    "Everything up-to-date",
  );

  // Errors name the cause and the fix.
  const noRemote = await failure(p, "select dolt_push('nowhere', 'main')");
  assert.equal(noRemote.code, "42704");
  assert.match(noRemote.hint ?? "", /dolt_remote\('add'/);
  const noBranch = await failure(p, "select dolt_push('origin', 'feature')");
  assert.equal(noBranch.code, "42704");
  const exists = await failure(r, `select dolt_clone('${url}', 'cloned')`);
  assert.equal(exists.code, "42P04");
  const nothing = await failure(r, `select dolt_clone('file://${remoteDir}/empty', 'empty_clone')`);
  assert.equal(nothing.code, "42704");
  assert.equal(
    (await rowsOf(r, "SELECT count(*)::int AS n FROM pg_database WHERE datname = 'empty_clone'"))[0].n,
    0,
  );
  const bad = await failure(p, "select dolt_remote('add', 'gcs', 'gs://bucket/x')");
  assert.equal(bad.code, "22023");

  // The clone committed nothing of its own, and a push from it to the same remote is up to date.
  assert.equal(
    (await rowsOf(c, "select dolt_push('origin', 'main')"))[0].dolt_push[1],
    "Everything up-to-date",
  );
});

test("partitioned tables push and pull: the clone's rows are the origin's (as plain tables: partitioning is not carried)", async () => {
  await withSnapshottingPusher(async (run) => {
    const url = `file://${remoteDir}/parted`;
    await run(`select dolt_remote('add', 'origin', '${url}')`);
    for (const [table, key] of [
      ["parted", "PRIMARY KEY"],
      ["parted_log", ""], // no key: rows are images
    ]) {
      await run(`create table ${table} (id int ${key}, v text) partition by range (id)`);
      await run(`create table ${table}_a partition of ${table} for values from (0) to (100)`);
      await run(`create table ${table}_b partition of ${table} for values from (100) to (200)`);
      await run(`insert into ${table} values (1, 'a1'), (2, 'a2'), (3, 'a3'), (101, 'b101')`);
    }
    await run("select dolt_commit('-Am', 'c1')");
    await run("select dolt_push('origin', 'main')");
    await rowsOf(await connectTo(replica), `select dolt_clone('${url}', 'parted')`);
    const c = await connectTo(replica, "parted");
    await run("update parted set v = 'x' where id = 101");
    await run("update parted_log set v = 'x' where id = 101");
    await run("create table loose (id int primary key, v text)");
    await run("insert into loose values (250, 'l250')");
    await run("select dolt_commit('-Am', 'c2')");
    // Written straight into partitions, moved between them, detached and attached: the clone
    // (whose tables are plain) gets the same rows and past.
    await run("insert into parted_a values (4, 'a4')");
    await run("insert into parted_log_b values (102, 'b102')");
    await run("update parted set id = id + 100 where id = 2");
    await run("update parted_log set id = id + 100 where id = 3");
    await run("alter table parted detach partition parted_b");
    await run("alter table parted attach partition loose for values from (200) to (300)");
    await run("select dolt_commit('-Am', 'c3')");
    await run("select dolt_push('origin', 'main')");
    await rowsOf(c, "select dolt_pull('origin')");
    for (const table of ["parted", "parted_log", "parted_b"]) {
      const sql = `SELECT * FROM ${table} ORDER BY id`;
      assert.deepEqual(await rowsOf(c, sql), await run(sql), table);
      for (const back of table === "parted_b" ? [0] : [0, 1, 2]) {
        const past = `SELECT * FROM ${table} AS OF 'HEAD~${back}' ORDER BY id, v`;
        assert.deepEqual(await rowsOf(c, past), await run(past), past);
      }
    }
    assert.deepEqual(
      await rowsOf(c, "SELECT to_regclass('loose') AS t"),
      [{ t: null }],
      "loose is a partition now",
    );
    // Dropped: the drop commit removes their rows, and the clone keeps their past as the origin does.
    await run("drop table parted, parted_log");
    await run("select dolt_commit('-Am', 'c4')");
    await run("select dolt_push('origin', 'main')");
    await rowsOf(c, "select dolt_pull('origin')");
    for (const table of ["parted", "parted_log"]) {
      for (const sql of [
        `SELECT * FROM ${table} AS OF 'HEAD~1' ORDER BY id, v`,
        `SELECT * FROM ${table} AS OF 'HEAD~3' ORDER BY id, v`,
        `SELECT from_id, from_v, diff_type FROM dolt_diff('HEAD~1', 'HEAD', '${table}') ORDER BY from_id, from_v`,
      ])
        assert.deepEqual(await rowsOf(c, sql), await run(sql), sql);
      assert.equal(
        (await run(`SELECT count(*)::int AS n FROM dolt_diff('HEAD~1', 'HEAD', '${table}')`))[0].n,
        (await run(`SELECT count(*)::int AS n FROM ${table} AS OF 'HEAD~1'`))[0].n,
        `the drop removed every row of ${table}`,
      );
    }
  });
});

test("non-fast-forward pushes are refused; a damaged pack is detected and never applied", async () => {
  const admin = await connectTo(primary);
  await rowsOf(admin, "CREATE DATABASE left_side");
  await rowsOf(admin, "CREATE DATABASE right_side");
  const url = `file://${remoteDir}/race`;
  const left = await connectTo(primary, "left_side");
  const right = await connectTo(primary, "right_side");
  for (const [client, name] of [
    [left, "left"],
    [right, "right"],
  ] as const) {
    await rowsOf(client, `select dolt_remote('add', 'origin', '${url}')`);
    await rowsOf(client, "create table t (k int primary key, v text)");
    await rowsOf(client, `insert into t values (1, '${name}')`);
    await rowsOf(client, `select dolt_commit('-Am', '${name}')`);
  }
  await rowsOf(left, "select dolt_push('origin', 'main')");
  const refused = await failure(right, "select dolt_push('origin', 'main')");
  assert.equal(refused.code, "55000");
  assert.match(refused.hint ?? "", /dolt_pull|--force/);
  await rowsOf(right, "select dolt_push('--force', 'origin', 'main')");

  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'race_clone')`);
  const c = await connectTo(replica, "race_clone");
  assert.deepEqual(await rowsOf(c, "SELECT v FROM t"), [{ v: "right" }]);

  // The next pack is damaged in the remote: the pull fails naming it, and applies nothing.
  const before = new Set(packFiles(join(remoteDir, "race")));
  await rowsOf(right, "insert into t values (2, 'two')");
  await rowsOf(right, "select dolt_commit('-am', 'two')");
  await rowsOf(right, "select dolt_push('origin', 'main')");
  const [fresh] = packFiles(join(remoteDir, "race")).filter((f) => !before.has(f));
  const bytes = readFileSync(fresh);
  bytes[bytes.length >> 1] ^= 0xff;
  writeFileSync(fresh, bytes);
  const damaged = await failure(c, "select dolt_pull('origin')");
  assert.match(damaged.message, /corrupt|damaged|hash/i);
  assert.deepEqual(await rowsOf(c, "SELECT k FROM t ORDER BY k"), [{ k: 1 }]);
  assert.equal((await rowsOf(c, "SELECT count(*)::int AS n FROM dolt_log"))[0].n, 1);
  // Truncated: the same.
  writeFileSync(fresh, bytes.subarray(0, bytes.length >> 1));
  await failure(c, "select dolt_pull('origin')");
  assert.deepEqual(await rowsOf(c, "SELECT k FROM t ORDER BY k"), [{ k: 1 }]);
  rmSync(fresh);
  const missing = await failure(c, "select dolt_pull('origin')");
  assert.match(missing.message, /missing|not found|no object/i);
});

test("a replica reading while the primary pushes and the replica pulls sees whole commits only", async () => {
  const url = `file://${remoteDir}/ledger`;
  const admin = await connectTo(primary);
  await rowsOf(admin, "CREATE DATABASE ledger");
  const p = await connectTo(primary, "ledger");
  await rowsOf(p, `select dolt_remote('add', 'origin', '${url}')`);
  await rowsOf(p, "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL)");
  await rowsOf(p, "INSERT INTO acct SELECT g, 100 FROM generate_series(1, 10) g");
  await rowsOf(p, "SELECT dolt_commit('-Am', 'ten accounts of 100')");
  await rowsOf(p, "SELECT dolt_push('origin', 'main')");
  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'ledger_copy')`);
  const puller = await connectTo(replica, "ledger_copy");
  const reader = await connectTo(replica, "ledger_copy");

  // Each commit moves money between two accounts (two row changes); pushes carry several commits.
  const COMMITS = 60;
  let pushing = true;
  const primarySide = (async () => {
    try {
      for (let i = 0; i < COMMITS; i++) {
        const from = (i % 10) + 1;
        const to = ((i * 7) % 10) + 1 === from ? (from % 10) + 1 : ((i * 7) % 10) + 1;
        await rowsOf(p, `UPDATE acct SET balance = balance - ${i + 1} WHERE id = ${from}`);
        await rowsOf(p, `UPDATE acct SET balance = balance + ${i + 1} WHERE id = ${to}`);
        await rowsOf(p, `SELECT dolt_commit('-am', 'move ${i + 1}')`);
        if (i % 3 === 2) await rowsOf(p, "SELECT dolt_push('origin', 'main')");
      }
      await rowsOf(p, "SELECT dolt_push('origin', 'main')");
    } finally {
      pushing = false;
    }
  })();
  const pullerSide = (async () => {
    while (pushing) await rowsOf(puller, "SELECT dolt_pull('origin')");
    await rowsOf(puller, "SELECT dolt_pull('origin')");
  })();
  const heads = new Set<string>();
  let reads = 0;
  while (pushing || reads === 0) {
    const [seen] = await rowsOf(
      reader,
      "SELECT sum(balance)::int AS total, count(*)::int AS n, dolt.commit_hash('HEAD') AS head FROM acct",
    );
    assert.deepEqual([seen.total, seen.n], [1000, 10], "a read saw part of a commit");
    heads.add(seen.head);
    reads++;
  }
  await Promise.all([primarySide, pullerSide]);
  assert.ok(heads.size > 2, `the reader saw the replica move (${heads.size} heads in ${reads} reads)`);
  assert.deepEqual(
    await rowsOf(reader, "SELECT * FROM acct ORDER BY id"),
    await rowsOf(p, "SELECT * FROM acct ORDER BY id"),
  );
  assert.equal((await rowsOf(reader, "SELECT count(*)::int AS n FROM dolt_log"))[0].n, COMMITS + 1);
});

test("the reference's replication through a remote, verbatim: every commit reaches the read replica", async () => {
  const url = `file://${remoteDir}/replication_example`;
  const p = await connectTo(primary);
  await rowsOf(p, `select dolt_remote('add', 'origin', '${url}');`);
  await rowsOf(p, "ALTER SYSTEM SET dolt_replicate_to_remote 'origin';");
  // In effect once the store has reloaded its configuration (a moment; Doltgres: a restart).
  await waitForSetting(p, "dolt_replicate_to_remote", "origin");
  await rowsOf(p, "create table test (pk int, c1 int, primary key(pk));");
  await rowsOf(p, "insert into test values (0,0);");
  await rowsOf(p, "select dolt_commit('-Am', 'trigger replication');");

  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'read_replica');`);
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_heads TO 'main';");
  await rowsOf(r, "ALTER SYSTEM SET dolt_read_replica_remote TO 'origin';");
  await waitForSetting(r, "dolt_read_replica_remote", "origin");
  const rr = await connectTo(replica, "read_replica");
  assert.deepEqual(await rowsOf(rr, "select * from test;"), [{ pk: 0, c1: 0 }]);

  // The push completes before the commit returns; the replica pulls when its transaction starts.
  await rowsOf(p, "insert into test values (2,2);");
  const [committed] = await rowsOf(p, "select dolt_commit('-am', 'Inserted (2,2)');");
  assert.deepEqual(await rowsOf(rr, "select * from test order by pk;"), [
    { pk: 0, c1: 0 },
    { pk: 2, c1: 2 },
  ]);
  assert.equal((await rowsOf(rr, "SELECT dolt.commit_hash('HEAD') AS h"))[0].h, committed.dolt_commit[0]);

  // Every transaction COMMIT a commit, replicated the same way.
  await rowsOf(p, "ALTER SYSTEM SET dolt_transaction_commit TO 1;");
  await waitForSetting(p, "dolt_transaction_commit", "1");
  await rowsOf(p, "insert into test values (3,3);");
  assert.deepEqual(await rowsOf(rr, "select * from test where pk = 3;"), [{ pk: 3, c1: 3 }]);

  // Asynchronous: eventually there.
  await rowsOf(p, "ALTER SYSTEM SET dolt_async_replication TO 1");
  await waitForSetting(p, "dolt_async_replication", "1");
  await rowsOf(p, "insert into test values (4,4);");
  await waitFor("the asynchronous push to reach the replica", async () =>
    (await rowsOf(rr, "select 1 from test where pk = 4;")).length ? true : undefined,
  );

  // New databases get a remote from the URL template, and replicate from their first commit.
  await rowsOf(
    p,
    `ALTER SYSTEM SET dolt_replication_remote_url_template = 'file://${remoteDir}/{database}';`,
  );
  await waitForSetting(p, "dolt_replication_remote_url_template", `file://${remoteDir}/{database}`);
  await rowsOf(p, "CREATE DATABASE newdb");
  const n = await connectTo(primary, "newdb");
  await rowsOf(n, "create table fresh (k int primary key)");
  await rowsOf(n, "insert into fresh values (1)");
  // "On read replicas, setting @@dolt_replication_remote_url_template will cause new databases
  // created on the primary to be cloned to the replica when they are first used."
  await rowsOf(
    r,
    `ALTER SYSTEM SET dolt_replication_remote_url_template = 'file://${remoteDir}/{database}';`,
  );
  await waitForSetting(r, "dolt_replication_remote_url_template", `file://${remoteDir}/{database}`);
  // (Replication is asynchronous at this point: the push may come a moment later.)
  const nr = await waitFor("newdb to be cloned on first use", async () => {
    const client = new pg.Client(replica.connectionConfig("newdb"));
    return client.connect().then(
      () => {
        sessions.track(client);
        return client;
      },
      () => undefined,
    );
  });
  assert.equal((await rowsOf(n, "SELECT url FROM dolt_remotes"))[0]?.url, `file://${remoteDir}/newdb`);
  assert.deepEqual(await rowsOf(nr, "select * from fresh"), [{ k: 1 }]);
  assert.deepEqual(await rowsOf(nr, "SELECT name, url FROM dolt_remotes"), [
    { name: "origin", url: `file://${remoteDir}/newdb` },
  ]);

  // Stopping replication: later commits stay on the primary.
  await rowsOf(p, "ALTER SYSTEM SET dolt_replicate_to_remote '';");
  await rowsOf(p, "ALTER SYSTEM SET dolt_async_replication TO 0");
  await waitForSetting(p, "dolt_replicate_to_remote", "");
  await rowsOf(p, "insert into test values (5,5);");
  await rowsOf(p, "insert into test values (6,6);"); // a second transaction: the first surely ended
  assert.deepEqual(await rowsOf(rr, "select count(*)::int AS n from test;"), [{ n: 4 }]);
  await rowsOf(p, "ALTER SYSTEM SET dolt_transaction_commit TO 0;");

  // Both head settings: the replica says so in its log and keeps serving reads.
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_all_heads TO 1");
  await waitForSetting(r, "dolt_replicate_all_heads", "1");
  assert.deepEqual(await rowsOf(rr, "select count(*)::int AS n from test;"), [{ n: 4 }]);
  await waitFor("the replica's warning", async () =>
    replica.logs.includes("dolt_replicate_heads and dolt_replicate_all_heads are both set")
      ? true
      : undefined,
  );
});

test("a replica of Postgres is a primary for remotes: its replicated commits reach a clone", async () => {
  await withReplicaOfPostgres(
    async (upstream) => {
      await upstream.query("CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance bigint)");
      await upstream.query("CREATE TABLE events (at int, what text)"); // no key
      await upstream.query(
        "INSERT INTO accounts SELECT g, 'owner ' || g, g * 100 FROM generate_series(1, 300) g",
      );
      await upstream.query("INSERT INTO events SELECT g, 'boot' FROM generate_series(1, 5) g");
    },
    {
      config: { system_variables: { dolt_replicate_to_remote: "origin" } },
    },
    async (upstream, versioned) => {
      const url = `file://${remoteDir}/from_postgres`;
      await versioned.query(`select dolt_remote('add', 'origin', '${url}')`);
      await upstream.query("UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0");
      await upstream.query("DELETE FROM accounts WHERE id > 290");
      await upstream.query("INSERT INTO events VALUES (6, 'after')");
      await upstream.query("ALTER TABLE accounts ADD COLUMN note text");
      await upstream.query("UPDATE accounts SET note = 'noted' WHERE id < 3");
      await waitForSameRows(upstream, versioned, "accounts", "id");
      // The background push takes every replicated commit to the remote.
      const head = (await versioned.query("SELECT dolt.commit_hash('HEAD') AS h"))[0].h;
      const r = await connectTo(replica);
      await waitFor("the replicated head in the remote", async () => {
        const refs = join(remoteDir, "from_postgres", "refs", "heads", "main");
        try {
          return readdirSync(refs).some((v) => readFileSync(join(refs, v), "utf8").includes(head))
            ? true
            : undefined;
        } catch {
          return undefined;
        }
      });
      await rowsOf(r, `select dolt_clone('${url}', 'from_postgres')`);
      const c = await connectTo(replica, "from_postgres");
      const same = async (sql: string) =>
        assert.deepEqual(await rowsOf(c, sql), await versioned.query(sql), sql);
      await same("SELECT * FROM accounts ORDER BY id");
      await same("SELECT * FROM events ORDER BY at");
      await same("SELECT commit_hash, parent_hash, message, upstream_lsn FROM dolt_log");
      await same("SELECT id, balance, note, commit_hash FROM dolt_history_accounts ORDER BY commit_hash, id");
      await same("SELECT * FROM accounts AS OF 'HEAD~3' ORDER BY id");
    },
  );
});

test("a replica's first push after its snapshot tables changed shape: the clone has the same rows and history", async () => {
  await withReplicaOfPostgres(
    async (upstream) => {
      await upstream.query("CREATE TABLE shaped (id int PRIMARY KEY, owner text NOT NULL, gone text, n int)");
      await upstream.query(
        "INSERT INTO shaped SELECT g, 'owner ' || g, 'old ' || g, g FROM generate_series(1, 50) g",
      );
      await upstream.query("CREATE TABLE shaped_log (at int, who text)"); // no key: its rows are history rows
      await upstream.query("INSERT INTO shaped_log SELECT g, 'who ' || g FROM generate_series(1, 20) g");
    },
    {},
    async (upstream, versioned) => {
      // The DDL event trigger: renames and drops reach the replica.
      await runStrataCli("setup-primary", "--config", versioned.configFile);
      // The table entered history through the snapshot, and changes shape before any push.
      await upstream.query("UPDATE shaped SET n = n + 1 WHERE id <= 5");
      await upstream.query("ALTER TABLE shaped ADD COLUMN note text NOT NULL DEFAULT 'd'");
      await upstream.query("ALTER TABLE shaped RENAME COLUMN owner TO holder");
      await upstream.query("ALTER TABLE shaped DROP COLUMN gone");
      await upstream.query("ALTER TABLE shaped_log RENAME COLUMN who TO actor");
      await upstream.query("INSERT INTO shaped_log VALUES (21, 'after')");
      await upstream.query("UPDATE shaped SET note = 'changed', holder = 'h' WHERE id <= 2");
      await waitForSameRows(upstream, versioned, "shaped", "id");
      await waitForSameRows(upstream, versioned, "shaped_log", "at");
      const url = `file://${remoteDir}/shaped`;
      await versioned.query(`select dolt_remote('add', 'origin', '${url}')`);
      await versioned.query("select dolt_push('origin', 'main')");
      const r = await connectTo(replica);
      await rowsOf(r, `select dolt_clone('${url}', 'shaped')`);

      const c = await connectTo(replica, "shaped");
      const same = async (sql: string) =>
        assert.deepEqual(await rowsOf(c, sql), await versioned.query(sql), sql);
      await same("SELECT * FROM shaped ORDER BY id");
      await same("SELECT * FROM shaped_log ORDER BY at");
      await same(
        "SELECT column_name, data_type, column_default FROM information_schema.columns WHERE table_name = 'shaped' ORDER BY ordinal_position",
      );
      await same("SELECT id, holder, n, note, commit_hash FROM dolt_history_shaped ORDER BY commit_hash, id");
      for (let back = 0; back <= 7; back++) {
        await same(`SELECT * FROM shaped AS OF 'HEAD~${back}' ORDER BY id`);
        await same(`SELECT * FROM shaped_log AS OF 'HEAD~${back}' ORDER BY at`);
      }
    },
  );
});

test("a replica pushing while it replicates: the snapshot holds exactly the commit the clone's head names", async () => {
  await withReplicaOfPostgres(
    async (upstream) => {
      await upstream.query("CREATE TABLE ticks (id int PRIMARY KEY, v int)");
      await upstream.query("CREATE TABLE tick_log (at int, what text)"); // no key
      await upstream.query("INSERT INTO ticks SELECT g, g FROM generate_series(1, 100) g");
    },
    { env: { STRATA_SNAPSHOT_MIN_BYTES: "1" } },
    async (upstream, versioned) => {
      // Commits keep arriving while the push runs: one upstream transaction at a time.
      const writer = await upstream.connect();
      let writing = true;
      let written = 0;
      const load = (async () => {
        while (writing) {
          written++;
          await writer.query(
            `BEGIN; INSERT INTO ticks VALUES (${100 + written}, ${written}); UPDATE ticks SET v = v + 1 WHERE id = ${1 + (written % 100)};
           INSERT INTO tick_log VALUES (${written}, 'tick'); COMMIT`,
          );
        }
      })();
      const replicated = async () =>
        Number((await versioned.query<{ n: string }>("SELECT count(*)::text AS n FROM tick_log"))[0].n);
      const hold = await connectTo(versioned);
      try {
        await waitFor("replication under way", async () => ((await replicated()) >= 20 ? true : undefined));
        const url = `file://${remoteDir}/busy`;
        await versioned.query(`select dolt_remote('add', 'origin', '${url}')`);
        // Hold the push between choosing what to push and reading it, while commits go on: it makes
        // the database's identity durable in between (push.ts, flushVisibleCommits).
        await rowsOf(hold, "BEGIN; LOCK TABLE strata.database_identity IN SHARE ROW EXCLUSIVE MODE");
        const push = versioned.query("select dolt_push('origin', 'main')");
        push.catch(() => {});
        await waitForLockWaiter((sql) => rowsOf(hold, sql), "strata.database_identity");
        const before = await replicated();
        await waitFor("more commits", async () => ((await replicated()) >= before + 20 ? true : undefined));
        await rowsOf(hold, "COMMIT");
        await push;

        const { c, head } = await cloneFromSnapshot(url, "busy");
        for (const [table, order] of [
          ["ticks", "id"],
          ["tick_log", "at"],
        ])
          assert.deepEqual(
            await rowsOf(c, `SELECT * FROM ${table} ORDER BY ${order}`),
            await versioned.query(`SELECT * FROM ${table} AS OF '${head}' ORDER BY ${order}`),
            `${table} equals the replica's as of the clone's head`,
          );
      } finally {
        writing = false;
        await load.catch(() => {});
        await writer.end();
      }
    },
  );
});

test("a TRUNCATE replicated while a replica's first push waits to read its copied tables: the clone holds the pushed head's rows", async () => {
  await withReplicaOfPostgres(
    async (upstream) => {
      await upstream.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await upstream.query("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g");
      await upstream.query("CREATE TABLE u (id int PRIMARY KEY)");
    },
    { env: { STRATA_SNAPSHOT_MIN_BYTES: "1" } },
    async (upstream, versioned) => {
      await waitForSameRows(upstream, versioned, "t", "id");
      const url = `file://${remoteDir}/truncated_base`;
      await versioned.query(`select dolt_remote('add', 'origin', '${url}')`);
      // The apply holds the TRUNCATE's lock on t while it waits for u, which the test holds.
      const hold = await connectTo(versioned);
      await rowsOf(hold, "BEGIN; LOCK TABLE u IN ACCESS EXCLUSIVE MODE");
      await upstream.query(
        "BEGIN; TRUNCATE t; INSERT INTO t VALUES (1000, 'after'); INSERT INTO u VALUES (1); COMMIT",
      );
      await waitForLockWaiter((sql) => rowsOf(hold, sql), "u");
      // The initial snapshot's commit copied t whole: the push reads its rows from t, locked.
      const push = versioned.query("select dolt_push('origin', 'main')");
      push.catch(() => {});
      await waitForLockWaiter((sql) => rowsOf(hold, sql), "t");
      await rowsOf(hold, "COMMIT");
      await push;
      await waitForSameRows(upstream, versioned, "t", "id");

      // The pack carries the snapshot commit's rows, read from t after the TRUNCATE committed and
      // taken back through history to what they were.
      await rowsOf(await connectTo(replica), `select dolt_clone('${url}', 'truncated_base')`);
      const c = await connectTo(replica, "truncated_base");
      const [{ head }] = await rowsOf(c, "SELECT dolt.commit_hash('HEAD') AS head");
      assert.deepEqual(
        await rowsOf(c, "SELECT * FROM t ORDER BY id"),
        await versioned.query(`SELECT * FROM t AS OF '${head}' ORDER BY id`),
      );
      assert.equal((await rowsOf(c, "SELECT * FROM t")).length, 50);
      const log = await rowsOf(c, "SELECT commit_hash FROM dolt_log");
      assert.deepEqual(log, await versioned.query(`SELECT commit_hash FROM dolt_log('${head}')`));
      for (const { commit_hash } of log)
        assert.deepEqual(
          await rowsOf(c, `SELECT * FROM t AS OF '${commit_hash}' ORDER BY id`),
          await versioned.query(`SELECT * FROM t AS OF '${commit_hash}' ORDER BY id`),
          commit_hash,
        );
    },
  );
});

test("a push killed midway leaves the remote consistent, and the next push completes", async () => {
  // The pusher's own temporary directory: its pack files are told apart from any other process's.
  const scratch = tempDir("strata-push-tmp-");
  const pusher = await startStandaloneStrata({ env: { TMPDIR: scratch } });
  try {
    const url = `file://${remoteDir}/killed`;
    const p = new pg.Client(pusher.connectionConfig());
    p.on("error", () => {}); // the kill below ends its connection
    await p.connect();
    await p.query(`select dolt_remote('add', 'origin', '${url}')`);
    await p.query("create table big (id int primary key, payload text)");
    await p.query("insert into big select g, repeat(md5(g::text), 4) from generate_series(1, 1000) g");
    await p.query("select dolt_commit('-Am', 'small')");
    await p.query("select dolt_push('origin', 'main')");
    const first = (await p.query("SELECT dolt.commit_hash('HEAD') AS h")).rows[0].h;
    await p.query("insert into big select g, repeat(md5(g::text), 4) from generate_series(1001, 300000) g");
    await p.query("select dolt_commit('-am', 'big')");
    const packDirsBefore = new Set(readdirSync(scratch).filter((e) => e.startsWith("strata-pack-")));
    const pending = p.query("select dolt_push('origin', 'main')").catch((err) => err);
    // Killed while the pack is being written or stored.
    await waitFor("the push to be under way", async () =>
      readdirSync(scratch).some((e) => e.startsWith("strata-pack-") && !packDirsBefore.has(e))
        ? true
        : undefined,
    );
    await pusher.kill("SIGKILL");
    assert.ok((await pending) instanceof Error);
    await p.end().catch(() => {});

    const r = await connectTo(replica);
    await rowsOf(r, `select dolt_clone('${url}', 'after_kill')`);
    const c = await connectTo(replica, "after_kill");
    assert.equal((await rowsOf(c, "SELECT dolt.commit_hash('HEAD') AS h"))[0].h, first);
    assert.equal((await rowsOf(c, "SELECT count(*)::int AS n FROM big"))[0].n, 1000);

    await pusher.start();
    const again = new pg.Client(pusher.connectionConfig());
    await again.connect();
    try {
      assert.match(
        (await again.query("select dolt_push('origin', 'main')")).rows[0].dolt_push[1],
        /pushed 1 commit/,
      );
    } finally {
      await again.end();
    }
    await rowsOf(c, "select dolt_pull('origin')");
    assert.equal((await rowsOf(c, "SELECT count(*)::int AS n FROM big"))[0].n, 300000);
    assert.equal(
      (await rowsOf(c, "SELECT md5(string_agg(payload, ',' ORDER BY id)) AS m FROM big"))[0].m,
      (await pusher.query("SELECT md5(string_agg(payload, ',' ORDER BY id)) AS m FROM big"))[0].m,
    );
  } finally {
    await pusher.stop();
  }
});

/**
 * A standalone Strata whose every push with history writes a snapshot, and `run` on a session of
 * it; both end with the body.
 */
async function withSnapshottingPusher(
  body: (run: (sql: string) => Promise<pg.QueryResultRow[]>, pusher: StrataProcess) => Promise<void>,
  env: Record<string, string> = {},
) {
  const pusher = await startStandaloneStrata({ env: { STRATA_SNAPSHOT_MIN_BYTES: "1", ...env } });
  try {
    const p = new pg.Client(pusher.connectionConfig());
    await p.connect();
    try {
      await body(async (sql) => (await p.query(sql)).rows, pusher);
    } finally {
      await p.end();
    }
  } finally {
    await pusher.stop();
  }
}

test("a clone loads the history before the remote's latest snapshot as rows and the tables from it", async () => {
  await withSnapshottingPusher(async (run) => {
    const url = `file://${remoteDir}/snapshots`;
    await run(`select dolt_remote('add', 'origin', '${url}')`);
    await run("create table acct (id int primary key, owner text, balance int default 0)");
    await run("create table log (line text)");
    await run("insert into acct select g, 'o' || g, g from generate_series(1, 200) g");
    await run("insert into log values ('one'), ('two')");
    await run("select dolt_commit('-Am', 'c1')");
    await run("update acct set balance = balance + 5 where id % 3 = 0");
    await run("select dolt_commit('-am', 'c2')");
    await run("select dolt_push('origin', 'main')"); // history → a snapshot at c2
    await run("delete from acct where id > 190");
    await run("alter table acct add column note text");
    await run("update acct set note = 'x' where id < 4");
    await run("insert into log values ('three')");
    await run("select dolt_commit('-Am', 'c3')");
    await run("insert into acct (id, owner) values (500, 'new')");
    await run("select dolt_commit('-am', 'c4')");
    await run("select dolt_push('origin', 'main')"); // c3..c4, and a new snapshot at c4
    await run("update acct set balance = 0 where id = 500");
    await run("select dolt_commit('-am', 'c5')");
    await run("select dolt_push('origin', 'main')");
    assert.ok(readdirSync(join(remoteDir, "snapshots", "objects"), { recursive: true }).length >= 4);

    const r = await connectTo(replica);
    await rowsOf(r, `select dolt_clone('${url}', 'from_snapshot')`);
    assert.match(replica.logs, /"database":"from_snapshot".*"from_snapshot":[1-9]/);
    const c = await connectTo(replica, "from_snapshot");
    const same = async (sql: string) => assert.deepEqual(await rowsOf(c, sql), await run(sql), sql);
    await same("SELECT * FROM acct ORDER BY id");
    await same("SELECT * FROM log ORDER BY line");
    await same("SELECT commit_hash, parent_hash, message, date FROM dolt_log");
    await same("SELECT id, balance, note, commit_hash FROM dolt_history_acct ORDER BY commit_hash, id");
    await same("SELECT * FROM dolt_diff('HEAD~4', 'HEAD', 'acct') ORDER BY to_id, from_id");
    await same("SELECT * FROM acct AS OF 'HEAD~3' ORDER BY id");
    await same("SELECT line, commit_hash FROM dolt_history_log ORDER BY commit_hash, line");
    assert.deepEqual(await rowsOf(c, "SELECT * FROM dolt_status"), []);

    // A shallow clone: history starts at the newest snapshot (c4), c5 applied on top.
    const [cloned] = await rowsOf(r, `select dolt_clone('--depth', '1', '${url}', 'shallow')`);
    assert.match(cloned.dolt_clone[1], /shallow: history from the remote's newest snapshot/);
    const sh = await connectTo(replica, "shallow");
    const sameShallow = async (sql: string, primarySql = sql) =>
      assert.deepEqual(await rowsOf(sh, sql), await run(primarySql), sql);
    await sameShallow("SELECT * FROM acct ORDER BY id");
    await sameShallow("SELECT * FROM log ORDER BY line");
    await sameShallow(
      "SELECT commit_hash, parent_hash, message FROM dolt_log",
      "SELECT commit_hash, parent_hash, message FROM dolt_log LIMIT 2",
    );
    await sameShallow("SELECT * FROM acct AS OF 'HEAD~1' ORDER BY id");
    await sameShallow("SELECT * FROM dolt_diff('HEAD~1', 'HEAD', 'acct') ORDER BY to_id, from_id");
    const before = await failure(sh, "SELECT * FROM acct AS OF 'HEAD~2'");
    assert.equal(before.code, "22023");
    assert.match(before.message, /goes back before the first commit/);
    // Later commits apply one by one on top.
    await run("update acct set owner = 'later' where id = 1");
    await run("select dolt_commit('-am', 'c6')");
    await run("select dolt_push('origin', 'main')");
    await rowsOf(c, "select dolt_pull('origin')");
    await same("SELECT * FROM acct ORDER BY id");
    await same("SELECT commit_hash FROM dolt_log");
    await rowsOf(sh, "select dolt_pull('origin')");
    await sameShallow("SELECT * FROM acct ORDER BY id");
    await sameShallow("SELECT commit_hash FROM dolt_log", "SELECT commit_hash FROM dolt_log LIMIT 3");
    // Writes on the clone are captured as on any database.
    await rowsOf(c, "insert into log values ('local')");
    assert.deepEqual(await rowsOf(c, "SELECT table_name, status FROM dolt_status"), [
      { table_name: "log", status: "modified" },
    ]);
  });
});

/** Remote `origin` (a new directory `name`) added, and table t of 20 rows committed: its URL. */
async function originAndTableT(
  run: (sql: string) => Promise<pg.QueryResultRow[]>,
  name: string,
): Promise<string> {
  const url = `file://${remoteDir}/${name}`;
  await run(`select dolt_remote('add', 'origin', '${url}')`);
  await run("create table t (id int primary key, v text)");
  await run("insert into t select g, 'v' || g from generate_series(1, 20) g");
  await run("select dolt_commit('-Am', 'c1')");
  return url;
}

test("a push while a schema change is uncommitted writes no snapshot of it", async () => {
  await withSnapshottingPusher(async (run) => {
    const url = await originAndTableT(run, "uncommitted_ddl");
    await run("alter table t add column extra int default 7"); // not committed
    await run("select dolt_push('origin', 'main')");
    const r = await connectTo(replica);
    await rowsOf(r, `select dolt_clone('${url}', 'uncommitted_ddl')`);
    const c = await connectTo(replica, "uncommitted_ddl");
    const columns =
      "SELECT column_name FROM information_schema.columns WHERE table_name = 't' ORDER BY ordinal_position";
    assert.deepEqual(await rowsOf(c, columns), [{ column_name: "id" }, { column_name: "v" }]);
    await run("select dolt_commit('-Am', 'c2')");
    await run("select dolt_push('origin', 'main')");
    await rowsOf(c, "select dolt_pull('origin')");
    assert.deepEqual(
      await rowsOf(c, "SELECT * FROM t ORDER BY id"),
      await run("SELECT * FROM t ORDER BY id"),
    );
    assert.deepEqual(await rowsOf(c, columns), await run(columns));
  });
});

test("a TRUNCATE that commits while a push writes its snapshot: the snapshot still holds the pushed head's rows", async () => {
  await withSnapshottingPusher(async (run, pusher) => {
    const url = await originAndTableT(run, "truncated");
    // TRUNCATE is not MVCC-safe: a snapshot of the store taken before it commits sees the table empty.
    const other = await connectTo(pusher);
    await rowsOf(other, "BEGIN; TRUNCATE t");
    const push = run("select dolt_push('origin', 'main')");
    push.catch(() => {});
    await waitForLockWaiter((sql) => pusher.query(sql), "t");
    await rowsOf(other, "COMMIT");
    await push;
    const { c, head } = await cloneFromSnapshot(url, "truncated");
    const expected = await run(`SELECT * FROM t AS OF '${head}' ORDER BY id`);
    assert.equal(expected.length, 20);
    assert.deepEqual(await rowsOf(c, "SELECT * FROM t ORDER BY id"), expected);
  });
});

test("a push that cannot lock a table for its snapshot in time pushes without one", async () => {
  await withSnapshottingPusher(
    async (run, pusher) => {
      const url = await originAndTableT(run, "unlockable");
      const other = await connectTo(pusher);
      await rowsOf(other, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE");
      await run("select dolt_push('origin', 'main')");
      await rowsOf(other, "ROLLBACK");
      assert.match(
        pusher.logs,
        /"reason":"the tables could not be locked \(canceling statement due to lock timeout\): a later push writes it".*"msg":"push wrote no snapshot"/,
      );
      const r = await connectTo(replica);
      await rowsOf(r, `select dolt_clone('${url}', 'unlockable')`);
      assert.match(replica.logs, /"database":"unlockable".*"from_snapshot":0/);
      const c = await connectTo(replica, "unlockable");
      assert.deepEqual(
        await rowsOf(c, "SELECT * FROM t ORDER BY id"),
        await run("SELECT * FROM t ORDER BY id"),
      );
    },
    { STRATA_SNAPSHOT_LOCK_TIMEOUT: "200ms" },
  );
});

test("an idle server opens no store sessions, whatever its databases; settings made on the store itself still take effect", async () => {
  const strata = await startStandaloneStrata();
  try {
    const s = await connectTo(strata);
    for (const name of ["idle_a", "idle_b", "idle_c", "idle_d"]) await rowsOf(s, `CREATE DATABASE ${name}`);
    // The background push looks at every database each second: count its turns by the kept
    // connection's query, and the sessions the store established meanwhile.
    const turns = new Set<string>();
    const waitForTurns = (n: number) =>
      waitFor(`${n} turns of the background push`, async () => {
        const rows = await rowsOf(
          s,
          "SELECT query_start::text AS at FROM pg_stat_activity WHERE query LIKE '%pg_conf_load_time%' AND pid <> pg_backend_pid()",
        );
        for (const r of rows) turns.add(r.at);
        return turns.size >= n ? true : undefined;
      });
    const established = async () =>
      Number((await rowsOf(s, "SELECT sum(sessions)::bigint AS n FROM pg_stat_database"))[0].n);
    await waitForTurns(3); // every database's settings read once
    const before = await established();
    await waitForTurns(7);
    assert.equal((await established()) - before, 0, "sessions the idle server opened on its store");

    // A setting made on the store (not ALTER SYSTEM through the front door) is seen: the
    // database's commits are pushed to the remote it names.
    const dir = join(tempDir("strata-remote-"), "settings");
    await rowsOf(s, `select dolt_remote('add', 'origin', 'file://${dir}')`);
    await rowsOf(s, "ALTER DATABASE postgres SET strata.dolt_replicate_to_remote = 'origin'");
    await rowsOf(s, "CREATE TABLE pushed (k int PRIMARY KEY)");
    await rowsOf(s, "INSERT INTO pushed VALUES (1)");
    const [{ dolt_commit }] = await rowsOf(s, "select dolt_commit('-Am', 'pushed by the setting')");
    await waitFor("the commit to reach the remote", async () => {
      const heads = join(dir, "refs", "heads", "main");
      const versions = readdirSync(heads, { withFileTypes: true }).filter((e) => e.isFile());
      return versions.some((e) => readFileSync(join(heads, e.name), "utf8").includes(dolt_commit[0]))
        ? true
        : undefined;
    }).catch((err) => {
      throw new Error(`${err.message}\n${strata.logs.slice(-3000)}`);
    });
  } finally {
    await strata.stop();
  }
});

test("a database that has just pushed to its remote can be dropped through the front door at once", async () => {
  const s = await connectTo(primary);
  await rowsOf(s, "CREATE DATABASE pushes_then_drops");
  const d = await connectTo(primary, "pushes_then_drops");
  const dir = join(remoteDir, "pushes_then_drops");
  await rowsOf(d, `select dolt_remote('add', 'origin', 'file://${dir}')`);
  await rowsOf(d, "ALTER DATABASE pushes_then_drops SET strata.dolt_replicate_to_remote = 'origin'");
  await rowsOf(d, "CREATE TABLE t (k int PRIMARY KEY)");
  await rowsOf(d, "INSERT INTO t VALUES (1)");
  await rowsOf(d, "select dolt_commit('-Am', 'pushed')");
  await waitFor("the push", async () => (readdirSync(dir).includes("refs") ? true : undefined));
  await d.end();
  // Strata's own connections to it (the pushes') end before the DROP: it does not fail with
  // "database is being accessed by other users".
  await rowsOf(s, "DROP DATABASE pushes_then_drops");
  assert.deepEqual(
    await rowsOf(s, "SELECT datname FROM pg_database WHERE datname = 'pushes_then_drops'"),
    [],
  );
});
