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

/** Commit the working set and keep the tables as they are at that commit, to compare AS OF with. */
async function commitAndKeep(message: string, tables: string[]) {
  const [{ c }] = await q("SELECT dolt_commit('-Am', $1) AS c", [message]);
  const kept: Record<string, Record<string, unknown>[]> = {};
  for (const t of tables) {
    // An inheritance parent's AS OF is its own rows (ONLY), a partitioned table's all of them.
    const [{ from }] = await q("SELECT strata.own_rows($1::regclass) AS from", [t]);
    kept[t] = await q(`SELECT * FROM ${from} ORDER BY id`);
  }
  return { hash: c[0] as string, message, kept };
}

async function assertPastAsKept(states: Awaited<ReturnType<typeof commitAndKeep>>[]) {
  for (const { hash, message, kept } of states)
    for (const [t, rows] of Object.entries(kept))
      assert.deepEqual(
        await q(`SELECT * FROM ${t} AS OF '${hash}' ORDER BY id`),
        rows,
        `${t} as of "${message}"`,
      );
}

test("writes straight into partitions, rows moved between partitions, deletes through an inheritance parent: history is what happened", async () => {
  await q("CREATE TABLE tree (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)");
  await q("CREATE TABLE tree_a PARTITION OF tree FOR VALUES FROM (0) TO (100)");
  await q("CREATE TABLE tree_b PARTITION OF tree FOR VALUES FROM (100) TO (300) PARTITION BY RANGE (id)");
  await q("CREATE TABLE tree_b1 PARTITION OF tree_b FOR VALUES FROM (100) TO (200)");
  await q("CREATE TABLE tree_b2 PARTITION OF tree_b FOR VALUES FROM (200) TO (300)");
  await q("CREATE TABLE base (id int PRIMARY KEY, v text)");
  await q("CREATE TABLE derived () INHERITS (base)");
  await q("INSERT INTO tree VALUES (1, 'a1'), (2, 'a2'), (101, 'b101')");
  await q("INSERT INTO base VALUES (1, 'p1'), (2, 'p2')");
  await q("INSERT INTO derived VALUES (11, 'd11'), (12, 'd12')");
  const tables = ["tree", "base", "derived"];
  const states = [await commitAndKeep("made", tables)];

  // Partitions are no tables of their own: what is written to them is their root's.
  await q("INSERT INTO tree_a VALUES (3, 'a3')");
  await q("INSERT INTO tree_b1 VALUES (102, 'b102')");
  await q("INSERT INTO tree_b VALUES (201, 'b201')");
  await q("UPDATE tree_a SET v = 'a2 again' WHERE id = 2");
  assert.deepEqual(await status(), ["tree:working:modified"]);
  // Undone as well as recorded.
  await q("SELECT dolt_reset('--hard')");
  assert.deepEqual(await q("SELECT * FROM tree ORDER BY id"), states[0].kept.tree);
  await q("INSERT INTO tree_a VALUES (3, 'a3')");
  await q("INSERT INTO tree_b1 VALUES (102, 'b102')");
  await q("INSERT INTO tree_b VALUES (201, 'b201')");
  states.push(await commitAndKeep("straight into partitions", tables));

  // An UPDATE that moves rows to another partition fires no row UPDATE trigger.
  await q("UPDATE tree SET id = id + 250, v = v || ' moved' WHERE id IN (1, 2)");
  await q("UPDATE tree_b SET id = id + 100 WHERE id = 102");
  await q("UPDATE tree_a SET v = 'a3 again' WHERE id = 3");
  await q("DELETE FROM tree_b2 WHERE id = 201");
  states.push(await commitAndKeep("moved", tables));
  const moves = await q(
    "SELECT diff_type, from_id, to_id FROM dolt_diff('HEAD~1', 'HEAD', 'tree') WHERE from_id IN (1, 2, 102) ORDER BY from_id",
  );
  assert.deepEqual(
    moves.map((r) => `${r.diff_type} ${r.from_id} ${r.to_id}`),
    ["removed 1 null", "removed 2 null", "removed 102 null"],
  );

  await q("TRUNCATE tree_b2");
  await q("DELETE FROM tree_a WHERE id = 3");
  states.push(await commitAndKeep("a partition truncated", tables));

  // A DELETE on an inheritance parent deletes its children's rows: those are the children's.
  await q("DELETE FROM base WHERE id IN (2, 12)");
  await q("UPDATE base SET v = v || '!'");
  states.push(await commitAndKeep("through the parent", tables));
  assert.deepEqual(
    (await q("SELECT DISTINCT id FROM dolt_history_base ORDER BY id")).map((r) => r.id),
    [1, 2],
  );
  await assertPastAsKept(states);
});

test("ATTACH and DETACH PARTITION: the rows join or leave the partitioned table's history, and the table leaves or joins the tables", async () => {
  await q("CREATE TABLE loose (id int PRIMARY KEY, v text)");
  await q("INSERT INTO loose VALUES (250, 'l250'), (251, 'l251')");
  await q("INSERT INTO tree VALUES (120, 'b120'), (5, 'a5')");
  // (Once it is a partition, loose has no AS OF of its own, as a dropped table has none.)
  const states = [await commitAndKeep("before", ["tree"])];

  // Out of an inner partitioned table: its rows leave the root, and it is a table of its own.
  await q("ALTER TABLE tree_b DETACH PARTITION tree_b1");
  assert.deepEqual(await status(), ["tree:working:modified", "tree_b1:working:new table"]);
  await q("INSERT INTO tree_b1 VALUES (121, 'b121')");
  states.push(await commitAndKeep("detached", ["tree", "tree_b1"]));
  assert.deepEqual(await q("SELECT * FROM tree_b1 AS OF 'HEAD' ORDER BY id"), [
    { id: 101, v: "b101" },
    { id: 120, v: "b120" },
    { id: 121, v: "b121" },
  ]);
  assert.deepEqual(await q("SELECT id FROM tree AS OF 'HEAD' WHERE id BETWEEN 100 AND 199"), []);
  assert.deepEqual(await q("SELECT id FROM tree AS OF 'HEAD~1' WHERE id BETWEEN 100 AND 199 ORDER BY id"), [
    { id: 101 },
    { id: 120 },
  ]);

  // A table of its own joins the tree: it leaves the tables, its rows join the root's.
  await q("ALTER TABLE tree_b DETACH PARTITION tree_b2");
  await q("DROP TABLE tree_b2");
  await q("ALTER TABLE tree_b ATTACH PARTITION loose FOR VALUES FROM (250) TO (300)");
  const attached = ["loose:working:deleted", "tree:working:modified", "tree_b2:working:deleted"];
  assert.deepEqual(await status(), attached);
  // Written to as a partition: the root's change, not loose's.
  await q("INSERT INTO loose VALUES (252, 'l252')");
  await q("UPDATE tree SET v = 'moved in' WHERE id = 250");
  assert.deepEqual(await status(), attached);
  await q("SELECT dolt_commit('-Am', 'attached')");
  assert.deepEqual(await q("SELECT * FROM tree AS OF 'HEAD' WHERE id >= 250 ORDER BY id"), [
    { id: 250, v: "moved in" },
    { id: 251, v: "l251" },
    { id: 252, v: "l252" },
  ]);
  assert.deepEqual(await q("SELECT id FROM tree AS OF 'HEAD~1' WHERE id >= 250"), []);
  await assertPastAsKept(states);
  // A table that cannot be read AS OF says why, and what to read instead.
  const partition = await failure("SELECT * FROM loose AS OF 'HEAD'");
  assert.equal(partition.code, "42809");
  assert.match(partition.message, /"loose" is a partition of tree: its rows' history is tree's/);
  assert.match(partition.hint ?? "", /FROM tree AS OF/);
  const dropped = await failure("SELECT * FROM tree_b2 AS OF 'HEAD~1' WHERE id = 1");
  assert.equal(dropped.code, "42P01");
  assert.match(dropped.hint ?? "", /strata\.changes \(WHERE rel = 'public\.tree_b2'\)/);
  await q("CREATE TABLE fresh (id int PRIMARY KEY)");
  const fresh = await failure("SELECT * FROM fresh AS OF 'HEAD'");
  assert.equal(fresh.code, "55000");
  assert.match(fresh.hint ?? "", /commit the table first/);
  await q("SELECT dolt_commit('-Am', 'fresh')");
  assert.deepEqual(await q("SELECT * FROM fresh AS OF 'HEAD'"), []);
  for (const t of ["tree", "tree_b1", "derived", "base", "fresh"]) await q(`DROP TABLE ${t}`);
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

test("a dropped table keeps its past: AS OF, dolt_diff and dolt_history read it as it was, and the drop removes its rows", async () => {
  await q("CREATE TABLE gone (id int PRIMARY KEY, v text)");
  await q("CREATE TABLE gone_log (id int, v text)"); // no key: rows are images
  await q("INSERT INTO gone VALUES (1, 'a'), (2, 'b'), (3, 'c')");
  await q("INSERT INTO gone_log VALUES (1, 'x'), (1, 'x'), (2, 'y')");
  const states = [await commitAndKeep("g1", ["gone", "gone_log"])];
  await q("UPDATE gone SET v = 'bb' WHERE id = 2");
  await q("DELETE FROM gone WHERE id = 3");
  await q("UPDATE gone SET id = 4 WHERE id = 1"); // a key that moves
  await q("TRUNCATE gone_log");
  await q("INSERT INTO gone_log VALUES (3, 'z'), (3, 'z')");
  states.push(await commitAndKeep("g2", ["gone", "gone_log"]));
  // Changed and dropped in one transaction, uncommitted until the drop's commit.
  await q("BEGIN");
  await q("INSERT INTO gone VALUES (5, 'e')");
  await q("DELETE FROM gone_log WHERE ctid = (SELECT min(ctid) FROM gone_log)");
  await q("DROP TABLE gone, gone_log");
  await q("COMMIT");
  assert.deepEqual(await status(), ["gone:working:deleted", "gone_log:working:deleted"]);
  await q("SELECT dolt_commit('-Am', 'dropped gone')");
  await assertPastAsKept(states);
  assert.deepEqual(await q("SELECT * FROM gone AS OF 'HEAD'"), []);
  // The drop's commit removed the rows the tables had: the last commit's, and those of the
  // transaction that dropped them.
  assert.deepEqual(
    await q("SELECT from_id, from_v, diff_type FROM dolt_diff('HEAD~1', 'HEAD', 'gone') ORDER BY from_id"),
    [
      { from_id: 2, from_v: "bb", diff_type: "removed" },
      { from_id: 4, from_v: "a", diff_type: "removed" },
    ],
  );
  assert.deepEqual(
    await q(
      "SELECT from_id, from_v, diff_type FROM dolt_diff('HEAD~1', 'HEAD', 'gone_log') ORDER BY from_id",
    ),
    [
      { from_id: 3, from_v: "z", diff_type: "removed" },
      { from_id: 3, from_v: "z", diff_type: "removed" },
    ],
  );
  assert.deepEqual(
    (
      await q(
        "SELECT coalesce(to_row, from_row)->>'id' AS id, diff_type FROM dolt.dolt_diff('HEAD~2', 'HEAD~1', 'gone') ORDER BY 1",
      )
    ).map((r) => `${r.diff_type} ${r.id}`),
    ["removed 1", "modified 2", "removed 3", "added 4"],
  );
  assert.deepEqual(
    (await q("SELECT id, v FROM dolt_history_gone ORDER BY id, v")).map((r) => `${r.id}${r.v}`),
    ["1a", "2b", "2bb", "3c", "4a", "5e"],
  );
  // A table whose history does not hold all its rows (here: renamed, so its first rows are
  // under its old name) is dropped as before: no rows made up, and AS OF says why it cannot.
  await q("CREATE TABLE moved_src (id int PRIMARY KEY)");
  await q("INSERT INTO moved_src VALUES (1)");
  await q("SELECT dolt_commit('-Am', 'moved_src')");
  await q("ALTER TABLE moved_src RENAME TO moved_dst");
  await q("INSERT INTO moved_dst VALUES (2)");
  await q("SELECT dolt_commit('-Am', 'renamed')");
  await q("DROP TABLE moved_dst");
  await q("SELECT dolt_commit('-Am', 'dropped moved_dst')");
  assert.deepEqual(
    await q("SELECT op FROM strata.changes WHERE commit_seq = (SELECT max(seq) FROM strata.commits)"),
    [],
  );
  const unrecorded = await failure("SELECT * FROM moved_dst AS OF 'HEAD~1'");
  assert.equal(unrecorded.code, "42P01");
  assert.match(unrecorded.hint ?? "", /strata\.changes \(WHERE rel = 'public\.moved_dst'\)/);
});

test("DROP TABLE of a partition: its rows leave the partitioned table's history, and every earlier commit still reads them", async () => {
  await q("CREATE TABLE span (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)");
  await q("CREATE TABLE span_a PARTITION OF span FOR VALUES FROM (0) TO (100)");
  await q("CREATE TABLE span_b PARTITION OF span FOR VALUES FROM (100) TO (300) PARTITION BY RANGE (id)");
  await q("CREATE TABLE span_b1 PARTITION OF span_b FOR VALUES FROM (100) TO (200)");
  await q("CREATE TABLE span_b2 PARTITION OF span_b FOR VALUES FROM (200) TO (300)");
  await q("CREATE TABLE span_c PARTITION OF span FOR VALUES FROM (300) TO (400)");
  await q("CREATE TABLE span_log (id int, v text) PARTITION BY LIST (id)"); // no key: rows are images
  await q("CREATE TABLE span_log_1 PARTITION OF span_log FOR VALUES IN (1)");
  await q("CREATE TABLE span_log_2 PARTITION OF span_log FOR VALUES IN (2)");
  await q("INSERT INTO span VALUES (1, 'a1'), (2, 'a2'), (101, 'b101'), (201, 'b201'), (301, 'c301')");
  await q("INSERT INTO span_log VALUES (1, 'x'), (1, 'x'), (2, 'y')");
  const tables = ["span", "span_log"];
  const states = [await commitAndKeep("spans", tables)];
  await q("UPDATE span SET v = v || '!' WHERE id IN (2, 201)");
  states.push(await commitAndKeep("spans changed", tables));

  // A partition dropped with uncommitted changes to it: a change of span, not a table of its own.
  await q("BEGIN");
  await q("INSERT INTO span_a VALUES (3, 'a3')");
  await q("DROP TABLE span_a");
  await q("COMMIT");
  assert.deepEqual(await status(), ["span:working:modified"]);
  states.push(await commitAndKeep("span_a dropped", tables));
  assert.deepEqual(
    (await q("SELECT diff_type, from_id FROM dolt_diff('HEAD~1', 'HEAD', 'span') ORDER BY from_id")).map(
      (r) => `${r.diff_type} ${r.from_id}`,
    ),
    ["removed 1", "removed 2"],
  );
  // A partitioned partition takes its own partitions along; a keyless tree loses its images.
  await q("DROP TABLE span_b");
  await q("DROP TABLE span_log_1");
  assert.deepEqual(await status(), ["span:working:modified", "span_log:working:modified"]);
  states.push(await commitAndKeep("span_b and span_log_1 dropped", tables));
  assert.deepEqual(
    (await q("SELECT diff_type, from_id, from_v FROM dolt_diff('HEAD~1', 'HEAD', 'span_log')")).map(
      (r) => `${r.diff_type} ${r.from_id}${r.from_v}`,
    ),
    ["removed 1x", "removed 1x"],
  );
  await assertPastAsKept(states);

  // Where the table holds a row history never saw (written with the capture triggers off), the
  // rows a partition took cannot be told: refused.
  await q("CREATE TABLE span_d PARTITION OF span FOR VALUES FROM (400) TO (500)");
  await q("SET session_replication_role = replica");
  await q("INSERT INTO span_c VALUES (302, 'unseen')");
  await q("RESET session_replication_role");
  assert.equal((await failure("DROP TABLE span_d")).code, "55000");
  await q("SET session_replication_role = replica");
  await q("DELETE FROM span_c WHERE id = 302");
  await q("RESET session_replication_role");
  await q("DROP TABLE span_d");
  await q("SELECT dolt_commit('-Am', 'span_d dropped')");

  // Where history does not hold every row (after a rename, span2's rows are under span's name),
  // the drop is refused rather than lose the rows from the past; detaching first records them.
  await q("ALTER TABLE span RENAME TO span2");
  await q("SELECT dolt_commit('-Am', 'span renamed')");
  const refused = await failure("DROP TABLE span_c");
  assert.equal(refused.code, "55000");
  assert.match(refused.message, /cannot drop partition public\.span_c of span2/);
  assert.match(refused.hint ?? "", /ALTER TABLE span2 DETACH PARTITION public\.span_c;/);
  assert.deepEqual(await q("SELECT id FROM span_c"), [{ id: 301 }]);
  await q("ALTER TABLE span2 DETACH PARTITION span_c");
  await q("DROP TABLE span_c");
  assert.deepEqual(await status(), ["span2:working:modified", "span_c:working:deleted"]);
  await q("SELECT dolt_commit('-Am', 'span_c detached and dropped')");
  assert.deepEqual(await q("SELECT count(*)::int AS n FROM span2 AS OF 'HEAD~1'"), [{ n: 1 }]);
  assert.deepEqual(await q("SELECT count(*)::int AS n FROM span2 AS OF 'HEAD'"), [{ n: 0 }]);
  await q("DROP TABLE span2, span_log");
  await q("SELECT dolt_commit('-Am', 'spans gone')");
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

test("partitions captured as before 2026-11-24 are captured as now after a restart", async () => {
  await q("CREATE TABLE legacy (id int PRIMARY KEY, v text) PARTITION BY LIST (id)");
  await q("CREATE TABLE legacy_12 PARTITION OF legacy FOR VALUES IN (1, 2)");
  await q("CREATE TABLE legacy_3 PARTITION OF legacy FOR VALUES IN (3)");
  await q("CREATE TABLE legacy_base (id int PRIMARY KEY, v text)");
  await q("CREATE TABLE legacy_child () INHERITS (legacy_base)");
  await q("INSERT INTO legacy VALUES (1, 'a')");
  await q("INSERT INTO legacy_child VALUES (11, 'c')");
  await q("SELECT dolt_commit('-Am', 'legacy made')");
  // As capture was then: the partitioned table's updates per row (which PostgreSQL copies onto
  // its partitions), nothing on the partitions themselves, every delete per statement.
  await q(`DO $$
    DECLARE t record;
    BEGIN
      FOR t IN SELECT tgrelid::regclass AS tbl, tgname FROM pg_trigger
                WHERE tgname LIKE 'strata_capture_%' AND tgparentid = 0
                  AND tgrelid IN ('legacy'::regclass, 'legacy_12'::regclass, 'legacy_3'::regclass)
                  AND (tgrelid <> 'legacy'::regclass OR tgname = 'strata_capture_update') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.tbl);
      END LOOP;
      EXECUTE format('CREATE TRIGGER strata_capture_update AFTER UPDATE ON legacy FOR EACH ROW
                      EXECUTE FUNCTION strata.capture_updated(%L, %L, %L)', 'legacy'::regclass::oid, 'public.legacy', '{id}');
    END $$`);
  await q(`DO $$
    BEGIN
      EXECUTE format('CREATE OR REPLACE TRIGGER strata_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS strata_deleted
                      FOR EACH STATEMENT EXECUTE FUNCTION strata.capture_statement(%L, %L, %L)',
                     'legacy_base'::regclass, 'legacy_base'::regclass::oid, 'public.legacy_base', '{id}');
      EXECUTE format('CREATE OR REPLACE TRIGGER strata_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS strata_deleted
                      FOR EACH STATEMENT EXECUTE FUNCTION strata.capture_statement(%L, %L, %L)',
                     'legacy_child'::regclass, 'legacy_child'::regclass::oid, 'public.legacy_child', '{}');
    END $$`);
  await q("INSERT INTO legacy_3 VALUES (3, 'lost')");
  assert.deepEqual(await status(), [], "a row written straight into a partition was not captured then");
  await q("DELETE FROM legacy_3");

  await client.end();
  await strata.stop();
  await strata.start();
  client = new pg.Client(strata.connectionConfig());
  await client.connect();
  const copies = await q(
    "SELECT tgrelid::regclass::text AS t FROM pg_trigger WHERE tgname LIKE 'strata_%' AND tgparentid <> 0",
  );
  assert.deepEqual(copies, [], "no trigger copied from a partitioned table onto its partitions");
  await q("INSERT INTO legacy_12 VALUES (2, 'b')");
  await q("UPDATE legacy SET id = 3 WHERE id = 1");
  await q("DELETE FROM legacy_base WHERE id = 11");
  await q("SELECT dolt_commit('-Am', 'after the restart')");
  assert.deepEqual(await q("SELECT * FROM legacy AS OF 'HEAD~1' ORDER BY id"), [{ id: 1, v: "a" }]);
  assert.deepEqual(await q("SELECT * FROM legacy AS OF 'HEAD' ORDER BY id"), [
    { id: 2, v: "b" },
    { id: 3, v: "a" },
  ]);
  assert.deepEqual(await q("SELECT * FROM legacy_child AS OF 'HEAD~1'"), [{ id: 11, v: "c" }]);
  assert.deepEqual(await q("SELECT * FROM legacy_child AS OF 'HEAD'"), []);
  assert.deepEqual(await q("SELECT * FROM legacy_base AS OF 'HEAD~1'"), []);
});

test("columns added with a default: AS OF, point lookups and dolt_diff show every commit's rows as they were (null before the column, its value after)", async () => {
  // What happened: each table's rows after each commit, as the store had them then.
  const truth: Record<string, Record<string, unknown>[]>[] = [];
  const commit = async (message: string) => {
    const [{ dolt_commit }] = await q("SELECT dolt_commit('-Am', $1)", [message]);
    truth.push({
      filled_t: await q("SELECT to_jsonb(t) AS r FROM filled_t t ORDER BY id").then((rs) =>
        rs.map((r) => r.r),
      ),
      filled_u: await q("SELECT to_jsonb(u) AS r FROM filled_u u ORDER BY a, b").then((rs) =>
        rs.map((r) => r.r),
      ),
    });
    return dolt_commit[0] as string;
  };
  const hashes: string[] = [];
  await q("CREATE TABLE filled_t (id int PRIMARY KEY, v text)");
  await q("CREATE TABLE filled_u (a int, b text)"); // no key: rows are images
  await q("INSERT INTO filled_t VALUES (1, 'a'), (2, 'b'), (3, 'c')");
  await q("INSERT INTO filled_u VALUES (1, 'x'), (2, 'y')");
  hashes.push(await commit("rows"));
  await q("UPDATE filled_t SET v = 'a2' WHERE id = 1");
  await q("DELETE FROM filled_u WHERE a = 1");
  hashes.push(await commit("changed before the columns"));
  await q("ALTER TABLE filled_t ADD COLUMN w int DEFAULT 7");
  await q("ALTER TABLE filled_u ADD COLUMN z text DEFAULT 'zz'");
  hashes.push(await commit("columns added with defaults"));
  await q("UPDATE filled_t SET v = 'b2' WHERE id = 2");
  await q("INSERT INTO filled_t VALUES (4, 'd', 8)");
  await q("INSERT INTO filled_u VALUES (3, 'w', 'q')");
  hashes.push(await commit("changed after"));
  await q("ALTER TABLE filled_t ADD COLUMN n int");
  await q("UPDATE filled_t SET n = 1 WHERE id = 3");
  hashes.push(await commit("a column without a default"));
  await q("ALTER TABLE filled_u DROP COLUMN z");
  await q("DELETE FROM filled_u WHERE a = 2");
  hashes.push(await commit("a column dropped"));

  // Rows are shown with today's columns: those a commit's rows did not have are null.
  const columns = {
    filled_t: ["id", "v", "w", "n"],
    filled_u: ["a", "b"],
  } as const;
  const shown = (table: keyof typeof columns, row: Record<string, unknown>) =>
    Object.fromEntries(columns[table].map((c) => [c, row[c] ?? null]));
  const at = (table: keyof typeof columns, i: number) => truth[i][table].map((r) => shown(table, r));
  const sortRows = (rows: Record<string, unknown>[]) => rows.map((r) => JSON.stringify(r)).sort();

  const check = async () => {
    for (const [i, hash] of hashes.entries()) {
      assert.deepEqual(
        await q(`SELECT * FROM filled_t AS OF '${hash}' ORDER BY id`),
        at("filled_t", i),
        `filled_t as of commit ${i + 1}`,
      );
      assert.deepEqual(
        sortRows(await q(`SELECT * FROM filled_u AS OF '${hash}'`)),
        sortRows(at("filled_u", i)),
        `filled_u as of commit ${i + 1}`,
      );
      for (const id of [1, 2, 3, 4])
        assert.deepEqual(
          await q(`SELECT * FROM filled_t AS OF '${hash}' WHERE id = ${id}`),
          at("filled_t", i).filter((r) => r.id === id),
          `filled_t row ${id} as of commit ${i + 1}`,
        );
    }

    // A diff is what differs between the two commits' rows, either way round.
    for (const [i, from] of hashes.entries())
      for (const [j, to] of hashes.entries()) {
        if (i === j) continue;
        const keyed = await q(
          `SELECT from_id, from_v, from_w, from_n, to_id, to_v, to_w, to_n, diff_type
             FROM dolt_diff('${from}', '${to}', 'filled_t') ORDER BY coalesce(to_id, from_id)`,
        );
        const before = new Map(at("filled_t", i).map((r) => [r.id, r]));
        const after = new Map(at("filled_t", j).map((r) => [r.id, r]));
        const expected = [...new Set([...before.keys(), ...after.keys()])]
          .sort((x, y) => Number(x) - Number(y))
          .filter((id) => JSON.stringify(before.get(id)) !== JSON.stringify(after.get(id)))
          .map((id) => {
            const f = before.get(id);
            const t = after.get(id);
            return {
              ...Object.fromEntries(columns.filled_t.map((c) => [`from_${c}`, f?.[c] ?? null])),
              ...Object.fromEntries(columns.filled_t.map((c) => [`to_${c}`, t?.[c] ?? null])),
              diff_type: f === undefined ? "added" : t === undefined ? "removed" : "modified",
            };
          });
        assert.deepEqual(keyed, expected, `filled_t diff from commit ${i + 1} to ${j + 1}`);

        const keyless = await q(
          `SELECT from_a, from_b, to_a, to_b FROM dolt_diff('${from}', '${to}', 'filled_u')`,
        );
        const removed = sortRows(at("filled_u", i));
        const added = sortRows(at("filled_u", j));
        for (const r of [...removed]) {
          const k = added.indexOf(r);
          if (k >= 0) {
            added.splice(k, 1);
            removed.splice(removed.indexOf(r), 1);
          }
        }
        assert.deepEqual(
          sortRows(keyless.filter((r) => r.to_a === null).map((r) => ({ a: r.from_a, b: r.from_b }))),
          removed,
          `filled_u rows removed from commit ${i + 1} to ${j + 1}`,
        );
        assert.deepEqual(
          sortRows(keyless.filter((r) => r.from_a === null).map((r) => ({ a: r.to_a, b: r.to_b }))),
          added,
          `filled_u rows added from commit ${i + 1} to ${j + 1}`,
        );
      }
  };
  await check();
  // History written before fills were recorded (no "fills" in its definitions) reads the same:
  // the value comes from the table's own catalog.
  await q(
    "UPDATE strata.schema_changes SET definition = definition - 'fills' WHERE rel IN ('public.filled_t', 'public.filled_u')",
  );
  await check();
});

test("a column whose type changed does not make history unreadable: older values that do not read as the new type are null", async () => {
  await q("CREATE TABLE retyped (id int PRIMARY KEY, v text)");
  await q("INSERT INTO retyped VALUES (1, 'abc'), (2, '42')");
  const [first] = await q("SELECT dolt_commit('-Am', 'text')");
  await q("UPDATE retyped SET v = v || '!' WHERE id = 1");
  await q("UPDATE retyped SET v = '43' WHERE id = 2");
  await q("SELECT dolt_commit('-am', 'changed')");
  await q("ALTER TABLE retyped ALTER COLUMN v TYPE int USING length(v)");
  await q("SELECT dolt_commit('-Am', 'now an int')");
  const at = first.dolt_commit[0];
  assert.deepEqual(await q(`SELECT * FROM retyped AS OF '${at}' ORDER BY id`), [
    { id: 1, v: null },
    { id: 2, v: 42 },
  ]);
  assert.deepEqual(await q(`SELECT * FROM retyped AS OF '${at}' WHERE id = 1`), [{ id: 1, v: null }]);
  // The ALTER rewrote every row: recorded as their changes, from the values before.
  assert.deepEqual(await q("SELECT * FROM retyped AS OF 'HEAD~1' ORDER BY id"), [
    { id: 1, v: null },
    { id: 2, v: 43 },
  ]);
  assert.deepEqual(await q("SELECT id, v FROM dolt_history_retyped ORDER BY commit_date, id"), [
    { id: 1, v: null },
    { id: 2, v: 42 },
    { id: 1, v: null },
    { id: 2, v: 43 },
    { id: 1, v: 4 },
    { id: 2, v: 2 },
  ]);
  // A diff across the ALTER shows every row it rewrote.
  assert.deepEqual(
    await q(
      `SELECT from_id, from_v, to_v, diff_type FROM dolt_diff('${at}', 'HEAD', 'retyped') ORDER BY from_id`,
    ),
    [
      { from_id: 1, from_v: null, to_v: 4, diff_type: "modified" },
      { from_id: 2, from_v: 42, to_v: 2, diff_type: "modified" },
    ],
  );
  assert.deepEqual(
    await q("SELECT diff_type, count(*)::int AS n FROM dolt_diff_retyped GROUP BY 1 ORDER BY 1"),
    [
      { diff_type: "added", n: 2 },
      { diff_type: "modified", n: 4 },
    ],
  );
});

test("a column added with a volatile default, an identity or a generated column: each row's value is history", async () => {
  await q("CREATE TABLE serials (name text PRIMARY KEY)");
  await q("INSERT INTO serials VALUES ('a'), ('b'), ('c')");
  const [first] = await q("SELECT dolt_commit('-Am', 'names')");
  await q("ALTER TABLE serials ADD COLUMN id serial");
  await q("ALTER TABLE serials ADD COLUMN n int GENERATED ALWAYS AS (length(name) * 10) STORED");
  const [second] = await q("SELECT dolt_commit('-Am', 'numbered')");
  await q("UPDATE serials SET name = 'bb' WHERE name = 'b'");
  await q("SELECT dolt_commit('-am', 'renamed b')");
  const now = await q("SELECT name, id, n FROM serials ORDER BY name");
  assert.deepEqual(
    await q(`SELECT name, id, n FROM serials AS OF '${first.dolt_commit[0]}' ORDER BY name`),
    ["a", "b", "c"].map((name) => ({ name, id: null, n: null })),
  );
  // As of the commit that numbered them, every row with the number it got (b's too, changed since).
  const numbered = await q(`SELECT name, id, n FROM serials AS OF '${second.dolt_commit[0]}' ORDER BY name`);
  assert.deepEqual(
    numbered,
    now.map((r) => (r.name === "bb" ? { ...r, name: "b", n: 10 } : r)),
  );
  assert.deepEqual(
    await q(
      `SELECT from_name, to_name, to_id, diff_type FROM dolt_diff('${first.dolt_commit[0]}', '${second.dolt_commit[0]}', 'serials') ORDER BY to_name`,
    ),
    numbered.map((r) => ({ from_name: r.name, to_name: r.name, to_id: r.id, diff_type: "modified" })),
  );
  // A retype and an addition in one statement: one change per row, holding both.
  await q("ALTER TABLE serials ALTER COLUMN n TYPE bigint, ADD COLUMN z uuid DEFAULT gen_random_uuid()");
  await q("SELECT dolt_commit('-Am', 'both')");
  const changes = await q(
    "SELECT count(*)::int AS n FROM strata.changes WHERE rel = 'public.serials' AND commit_seq = (SELECT max(seq) FROM strata.commits)",
  );
  assert.deepEqual(changes, [{ n: 3 }]);
  assert.deepEqual(
    await q(
      "SELECT to_name AS name, to_z AS z FROM dolt_diff('HEAD~1', 'HEAD', 'serials') WHERE from_z IS NULL ORDER BY 1",
    ),
    await q("SELECT name, z FROM serials ORDER BY 1"),
  );
});
