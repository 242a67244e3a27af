// Writes and commits from SQL on a Strata that does not replicate: the working set, dolt_add,
// dolt_commit, dolt_reset, dolt_status, every COMMIT a commit with dolt_transaction_commit, and
// the history surface over SQL commits. The reference's statements run verbatim.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import pg from "pg";
import { statusCommand } from "../../src/cli/status.ts";
import { loadConfig } from "../../src/config/load.ts";
import { textOutput } from "../support/cli-output.ts";
import { type StrataProcess, startStandaloneStrata } from "../support/strata.ts";

let strata: StrataProcess;
let client: pg.Client;

before(async () => {
  strata = await startStandaloneStrata();
  client = new pg.Client(strata.connectionConfig());
  await client.connect();
});
after(async () => {
  await client?.end();
  await strata?.stop();
});

const q = async (sql: string, params: unknown[] = []) => (await client.query(sql, params)).rows;
const status = async () =>
  (await q("SELECT table_name, staged, status FROM dolt_status ORDER BY table_name, staged")).map(
    (r) => `${r.table_name}:${r.staged ? "staged" : "working"}:${r.status}`,
  );
const failure = async (sql: string) =>
  (await client.query(sql).then(
    () => assert.fail(`${sql} should fail`),
    (err) => err,
  )) as pg.DatabaseError;

test("the reference's example: create, insert, dolt_commit('-Am', ...), then -am", async () => {
  await q("create table test (pk int, c1 int, primary key(pk));");
  await q("insert into test values (0,0);");
  assert.deepEqual(await status(), ["test:working:new table"]);
  const [first] = await q("select dolt_commit('-Am', 'trigger replication');");
  assert.match(first.dolt_commit[0], /^[0-9a-v]{32}$/);
  assert.deepEqual(await status(), []);
  await q("insert into test values (1,1);");
  await q("insert into test values (2,2);");
  const [second] = await q("select dolt_commit('-am', 'Inserted (2,2)');");
  const log = await q("SELECT commit_hash, message, parent_hash, committer FROM dolt_log");
  assert.deepEqual(
    log.map((c) => [c.commit_hash, c.message]),
    [
      [second.dolt_commit[0], "Inserted (2,2)"],
      [first.dolt_commit[0], "trigger replication"],
    ],
  );
  assert.equal(log[0].parent_hash, first.dolt_commit[0]);
  assert.equal(log[0].committer, "postgres");
  const history = await q("SELECT pk, c1, commit_hash FROM dolt_history_test ORDER BY pk");
  assert.deepEqual(
    history.map((r) => [r.pk, r.commit_hash === first.dolt_commit[0] ? "first" : "second"]),
    [
      [0, "first"],
      [1, "second"],
      [2, "second"],
    ],
  );
  const asOf = await q("SELECT pk FROM test AS OF 'HEAD~1' ORDER BY pk");
  assert.deepEqual(
    asOf.map((r) => r.pk),
    [0],
  );
  const diff = await q("SELECT diff_type, to_pk FROM dolt_diff('HEAD~1', 'HEAD', 'test') ORDER BY to_pk");
  assert.deepEqual(diff, [
    { diff_type: "added", to_pk: 1 },
    { diff_type: "added", to_pk: 2 },
  ]);
});

test("the README's example: status, commits, AS OF", async () => {
  await q("CREATE DATABASE readme");
  const readme = new pg.Client(strata.connectionConfig("readme"));
  await readme.connect();
  try {
    const run = async (sql: string) => (await readme.query(sql)).rows;
    const none = await readme.query("SELECT dolt.commit_seq('HEAD')").catch((err) => err);
    assert.match(none.message, /there are no commits yet, so "HEAD" names none/);
    assert.match(none.hint, /dolt_commit/);
    await run("create table test (pk int, c1 int, primary key(pk));");
    await run("insert into test values (0,0);");
    await run("select dolt_commit('-Am', 'first commit');");
    await run("update test set c1 = 1;");
    assert.deepEqual(await run("select * from dolt_status;"), [
      { table_name: "test", staged: false, status: "modified" },
    ]);
    assert.deepEqual(
      await run("select to_c1, from_c1, diff_type from dolt_diff('HEAD', 'WORKING', 'test');"),
      [{ to_c1: 1, from_c1: 0, diff_type: "modified" }],
    );
    await run("select dolt_commit('-am', 'c1 = 1');");
    assert.deepEqual(await run("select * from test as of 'HEAD~1';"), [{ pk: 0, c1: 0 }]);
  } finally {
    await readme.end();
  }
});

test("dolt_add stages, dolt_commit -m commits only what is staged, dolt_reset unstages", async () => {
  await q("CREATE TABLE other (id int PRIMARY KEY, v text)");
  await q("INSERT INTO other VALUES (1, 'one')");
  await q("UPDATE test SET c1 = 10 WHERE pk = 1");
  assert.deepEqual(await status(), ["other:working:new table", "test:working:modified"]);
  const nothing = await failure("SELECT dolt_commit('-m', 'nothing staged')");
  assert.equal(nothing.message, "nothing to commit");
  assert.match(nothing.hint ?? "", /dolt_add/);
  await q("SELECT dolt_add('test')");
  assert.deepEqual(await status(), ["other:working:new table", "test:staged:modified"]);
  await q("SELECT dolt_reset()");
  assert.deepEqual(await status(), ["other:working:new table", "test:working:modified"]);
  await q("SELECT dolt_add('test')");
  await q("UPDATE test SET c1 = 20 WHERE pk = 2"); // after dolt_add: not staged
  await q("SELECT dolt_commit('-m', 'only the staged update', '--author', 'Ann Example <ann@example.com>')");
  const [head] = await q("SELECT message, committer, email FROM dolt_log LIMIT 1");
  assert.deepEqual(head, {
    message: "only the staged update",
    committer: "Ann Example",
    email: "ann@example.com",
  });
  const changed = await q("SELECT to_pk, to_c1 FROM dolt_diff_test('HEAD~1', 'HEAD')");
  assert.deepEqual(changed, [{ to_pk: 1, to_c1: 10 }]);
  assert.deepEqual(await status(), ["other:working:new table", "test:working:modified"]);
  await q("SELECT dolt_add('.')");
  await q("SELECT dolt_commit('-m', 'the rest')");
  assert.deepEqual(await status(), []);
  await q("SELECT dolt_commit('--allow-empty', '-m', 'empty')");
  assert.equal((await q("SELECT message FROM dolt_log LIMIT 1"))[0].message, "empty");
  assert.match((await failure("SELECT dolt_commit('-x', 'y')")).message, /unknown option -x/);
  assert.match((await failure("SELECT dolt_commit('-a')")).message, /needs a message/);
});

test("dolt_reset --hard puts rows back as committed and drops tables made since", async () => {
  const before = await q("SELECT pk, c1 FROM test ORDER BY pk");
  const otherBefore = await q("SELECT * FROM other");
  await q("INSERT INTO test VALUES (7, 7)");
  await q("UPDATE test SET pk = 70, c1 = -1 WHERE pk = 1");
  await q("DELETE FROM test WHERE pk = 2");
  await q("TRUNCATE other");
  await q("CREATE TABLE scratch AS SELECT generate_series(1, 3) AS n");
  assert.deepEqual(await status(), [
    "other:working:modified",
    "scratch:working:new table",
    "test:working:modified",
  ]);
  // As of the last commit, uncommitted changes are not there: whole table and by key.
  assert.deepEqual(await q("SELECT pk, c1 FROM test AS OF 'HEAD' ORDER BY pk"), before);
  assert.deepEqual(
    await q("SELECT pk, c1 FROM test AS OF 'HEAD' WHERE pk = 1"),
    before.filter((r) => r.pk === 1),
  );
  assert.deepEqual(await q("SELECT pk FROM test AS OF 'HEAD' WHERE pk = 7"), []);
  assert.deepEqual(await q("SELECT * FROM other AS OF 'HEAD'"), otherBefore);
  // WORKING names the tables as they are now: diffs against it show what is uncommitted.
  const now = await q("SELECT pk, c1 FROM test ORDER BY pk");
  assert.deepEqual(await q("SELECT pk, c1 FROM test AS OF 'WORKING' ORDER BY pk"), now);
  const expected = [...new Set([...before, ...now].map((r) => r.pk))]
    .flatMap((pk) => {
      const a = before.find((r) => r.pk === pk);
      const b = now.find((r) => r.pk === pk);
      if (JSON.stringify(a) === JSON.stringify(b)) return [];
      return [`${a ? (b ? "modified" : "removed") : "added"} ${pk}`];
    })
    .sort();
  const lines = (rows: Record<string, unknown>[]) =>
    rows.map((r) => `${r.diff_type} ${r.to_pk ?? r.from_pk}`).sort();
  assert.deepEqual(lines(await q("SELECT * FROM dolt_diff('HEAD', 'WORKING', 'test')")), expected);
  const working = await q("SELECT * FROM dolt_diff_test WHERE to_commit = 'WORKING'");
  assert.deepEqual(lines(working), expected);
  assert.equal(working[0].from_commit, (await q("SELECT commit_hash FROM dolt_log LIMIT 1"))[0].commit_hash);
  await q("SELECT dolt_reset('--hard')");
  assert.deepEqual(await q("SELECT pk, c1 FROM test ORDER BY pk"), before);
  assert.deepEqual(await q("SELECT * FROM other"), otherBefore);
  assert.deepEqual(await status(), []);
  assert.equal((await q("SELECT to_regclass('scratch') AS t"))[0].t, null);
  await q("ALTER TABLE test ADD COLUMN c2 text");
  const refused = await failure("SELECT dolt_reset('--hard')");
  assert.match(refused.message, /cannot undo "ALTER TABLE public.test"/);
  await q("SELECT dolt_commit('-am', 'add c2')");
  // The history surface follows the new column.
  const columns = await q(
    "SELECT array_agg(attname::text ORDER BY attnum) AS cols FROM pg_attribute WHERE attrelid = 'dolt_history_test'::regclass AND attnum > 0",
  );
  assert.deepEqual(columns[0].cols, ["pk", "c1", "c2", "commit_hash", "committer", "commit_date"]);
});

test("partitioned and inherited tables: dolt_reset --hard touches only the rows it undoes, and history is each table's own", async () => {
  const rows = (table: string) => q(`SELECT tableoid::regclass::text AS t, * FROM ${table} ORDER BY id`);
  const past = (table: string, asOf: string) => q(`SELECT * FROM ${table} AS OF '${asOf}' ORDER BY id`);
  const values = (table: Record<string, unknown>[]) => table.map(({ t, ...row }) => row);
  // A partition's rows and another's can share a ctid: undoing one must not delete the other.
  await q("CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)");
  await q("CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (100)");
  await q("CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (100) TO (200)");
  await q("CREATE TABLE parted_log (id int, v text) PARTITION BY RANGE (id)"); // no key: rows are images
  await q("CREATE TABLE parted_log_a PARTITION OF parted_log FOR VALUES FROM (0) TO (100)");
  await q("CREATE TABLE parted_log_b PARTITION OF parted_log FOR VALUES FROM (100) TO (200)");
  // An inheritance child is a table of its own, with its own history.
  await q("CREATE TABLE parent (id int PRIMARY KEY, v text)");
  await q("CREATE TABLE child () INHERITS (parent)");
  for (const t of ["parted", "parted_log", "parent"])
    await q(`INSERT INTO ${t} VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')`);
  await q("INSERT INTO parted VALUES (101, 'b101')");
  await q("INSERT INTO parted_log VALUES (101, 'b101')");
  await q("INSERT INTO child VALUES (11, 'c11'), (12, 'c12'), (13, 'c13'), (14, 'c14')");
  await q("SELECT dolt_commit('-Am', 'partitioned and inherited')");
  const committed = {
    parted: await rows("parted"),
    parted_log: await rows("parted_log"),
    parent: await rows("parent"),
    child: await rows("child"),
  };
  // Each new version lands where a committed row of another partition or the child lives: (0,2) of
  // parted_b and parted_log_b, (0,4) of parent.
  await q("UPDATE parted SET v = 'x' WHERE id = 101");
  await q("UPDATE parted_log SET v = 'x' WHERE id = 101");
  await q("UPDATE parent SET v = 'x' WHERE id = 1");
  await q("SELECT dolt_reset('--hard')");
  for (const [table, before] of Object.entries(committed))
    assert.deepEqual(await rows(table), before, `${table} as committed`);
  assert.deepEqual(await status(), []);

  // The parent's history and its past are its own rows; the child's are the child's.
  await q("UPDATE child SET v = 'c11b' WHERE id = 11");
  await q("INSERT INTO child VALUES (15, 'c15')");
  await q("UPDATE parent SET v = 'p1b' WHERE id = 1");
  await q("SELECT dolt_commit('-am', 'both')");
  // As ONLY reads it: the child's rows are in the child's AS OF.
  assert.deepEqual(await past("parent", "HEAD~1"), values(committed.parent.filter((r) => r.t === "parent")));
  assert.deepEqual(await past("child", "HEAD~1"), values(committed.child));
  assert.deepEqual(await q("SELECT v FROM parent AS OF 'HEAD~1' WHERE id = 11"), []);
  assert.deepEqual(
    (await q("SELECT DISTINCT id FROM dolt_history_parent ORDER BY id")).map((r) => r.id),
    [1, 2, 3],
  );
  // TRUNCATE parent empties the child too: each records its own rows.
  await q("TRUNCATE parent");
  await q("SELECT dolt_commit('-Am', 'truncated')");
  assert.deepEqual(
    (await q("SELECT diff_type, from_id FROM dolt_diff('HEAD~1', 'HEAD', 'parent') ORDER BY from_id")).map(
      (r) => `${r.diff_type} ${r.from_id}`,
    ),
    ["removed 1", "removed 2", "removed 3"],
  );
  assert.deepEqual(
    (await q("SELECT id FROM child AS OF 'HEAD~1' ORDER BY id")).map((r) => r.id),
    [11, 12, 13, 14, 15],
  );
  for (const t of ["child", "parent", "parted_log", "parted"]) await q(`DROP TABLE ${t}`);
  await q("SELECT dolt_commit('-Am', 'dropped')");
});

test("with dolt_transaction_commit, every COMMIT is a commit (and a rollback none)", async () => {
  const count = async () => Number((await q("SELECT count(*) AS n FROM dolt_log"))[0].n);
  const start = await count();
  await q("SET dolt_transaction_commit TO 1");
  await q("BEGIN");
  await q("INSERT INTO test VALUES (100, 100, 'x')");
  await q("UPDATE test SET c1 = 101 WHERE pk = 100");
  await q("COMMIT");
  assert.equal(await count(), start + 1);
  const [head] = await q("SELECT message FROM dolt_log LIMIT 1");
  assert.equal(head.message, "Transaction commit: public.test");
  assert.deepEqual(await q("SELECT diff_type, to_c1 FROM dolt_diff('HEAD~1', 'HEAD', 'test')"), [
    { diff_type: "added", to_c1: 101 },
  ]);
  await q("BEGIN");
  await q("DELETE FROM test WHERE pk = 100");
  await q("ROLLBACK");
  await q("INSERT INTO test VALUES (200, 200, 'autocommit')");
  assert.equal(
    await count(),
    start + 2,
    "a rolled-back transaction is no commit; an autocommitted statement is one",
  );
  // dolt_commit inside a transaction that rolls back leaves no commit.
  await q("SET dolt_transaction_commit TO 0");
  await q("BEGIN");
  await q("INSERT INTO test VALUES (300, 300, 'y')");
  await q("SELECT dolt_commit('-am', 'rolled back')");
  await q("ROLLBACK");
  assert.equal(await count(), start + 2);
  assert.deepEqual(await status(), []);
});

test("DROP TABLE is a change too; the table's history stays in the log", async () => {
  await q("DROP TABLE other");
  assert.deepEqual(await status(), ["other:working:deleted"]);
  await q("SELECT dolt_commit('-Am', 'drop other')");
  assert.deepEqual(await status(), []);
  const [change] = await q(
    "SELECT ddl FROM strata.schema_changes WHERE commit_seq = (SELECT max(seq) FROM strata.commits)",
  );
  assert.equal(change.ddl, "DROP TABLE public.other");
});

test("RENAME COLUMN is a change: committed, and the table's diff and as-of functions take the new name", async () => {
  await q("CREATE TABLE ren (id int PRIMARY KEY, a text)");
  await q("INSERT INTO ren VALUES (1, 'one')");
  await q("SELECT dolt_commit('-Am', 'ren made')");
  await q("ALTER TABLE ren RENAME COLUMN a TO b");
  assert.deepEqual(await status(), ["ren:working:modified"]);
  await q("UPDATE ren SET b = 'uno' WHERE id = 1");
  await q("SELECT dolt_commit('-Am', 'ren renamed')");
  assert.deepEqual(await status(), []);
  const [change] = await q(
    "SELECT ddl FROM strata.schema_changes WHERE commit_seq = (SELECT max(seq) FROM strata.commits)",
  );
  assert.equal(change.ddl, "ALTER TABLE public.ren");
  assert.deepEqual(await q("SELECT id, b FROM ren AS OF 'HEAD'"), [{ id: 1, b: "uno" }]);
  const diff = await q("SELECT diff_type, to_id, to_b FROM dolt_diff('HEAD~1', 'HEAD', 'ren')");
  assert.deepEqual(diff, [{ diff_type: "modified", to_id: 1, to_b: "uno" }]);
});

test("lsn: names no commit where none is replicated, and the hint says what does", async () => {
  const err = await failure("SELECT * FROM dolt_log('lsn:0/16B3748')");
  assert.match(err.message, /no replicated commit at or before upstream LSN 0\/16B3748/);
  assert.match(err.hint ?? "", /no commit here names an upstream LSN .*hash, HEAD~N or a time/);
});

test("strata status on a server that does not replicate: what is uncommitted, and no talk of replication", async () => {
  const clean = textOutput();
  await statusCommand(loadConfig(strata.configFile), clean);
  const text = clean.lines.join("\n");
  assert.match(text, /\nreplication +none/);
  assert.match(text, /\nuncommitted +nothing$/);
  await q("CREATE TABLE pending (id int PRIMARY KEY)");
  const pending = textOutput();
  await statusCommand(loadConfig(strata.configFile), pending);
  assert.match(pending.lines.join("\n"), /\nuncommitted +1 table\n +pending +new table/);
  await q("SELECT dolt_commit('-Am', 'pending made')");
});
