// The replica's schema follows the primary's: from Relation messages alone (added, dropped and
// retyped columns; an ambiguous rename stops with its remedy), and exactly with the event trigger
// of `strata setup-primary` (renames, new tables, indexes, defaults, drops).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { DDL_TRIGGER_VERSION } from "../../src/upstream/ddl-trigger.ts";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import {
  type StrataProcess,
  snapshot,
  startStrata,
  runStrataCli as strataCli,
  waitForSameRows,
} from "../support/strata.ts";
import { replayHistory } from "../support/workload.ts";

async function replicaColumns(strata: StrataProcess, table: string): Promise<string[]> {
  const rows = await strata.query<{ c: string }>(
    `SELECT attname || ' ' || format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END AS c
       FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
    [table],
  );
  return rows.map((r) => r.c);
}

async function lastMessage(strata: StrataProcess): Promise<string> {
  const [row] = await strata.query<{ message: string }>("SELECT message FROM dolt_log LIMIT 1");
  return row.message;
}

describe("without the event trigger (Relation messages)", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    primary = await startPrimary();
    await primary.query("CREATE TABLE t (id int PRIMARY KEY, a text, n int)");
    await primary.query("INSERT INTO t VALUES (1, 'one', 1)");
    strata = await startStrata({ primary });
  });
  after(async () => {
    await strata?.stop();
    await primary?.stop();
  });

  test("an added column is added before the rows that use it", async () => {
    await primary.query("ALTER TABLE t ADD COLUMN extra text");
    await primary.query("INSERT INTO t VALUES (2, 'two', 2, 'x')");
    await waitForSameRows(primary, strata, "t", "id");
    assert.deepEqual(await replicaColumns(strata, "t"), [
      "id integer not null",
      "a text",
      "n integer",
      "extra text",
    ]);
    assert.match(await lastMessage(strata), /ALTER TABLE "public"\."t" ADD COLUMN "extra" text/);
    const [ddl] = await strata.query(
      "SELECT rel, ddl FROM strata.schema_changes ORDER BY commit_seq DESC LIMIT 1",
    );
    assert.deepEqual(ddl, { rel: "public.t", ddl: 'ALTER TABLE "public"."t" ADD COLUMN "extra" text' });
    // History keeps working across the change.
    const history = await strata.query("SELECT id, extra FROM dolt_history_t ORDER BY id");
    assert.deepEqual(history, [
      { id: 1, extra: null },
      { id: 2, extra: "x" },
    ]);
  });

  test("a widened type and a dropped column follow", async () => {
    await primary.query("ALTER TABLE t ALTER COLUMN n TYPE bigint");
    await primary.query("ALTER TABLE t DROP COLUMN extra");
    await primary.query("INSERT INTO t VALUES (3, 'three', 9000000000)");
    await waitForSameRows(primary, strata, "t", "id");
    assert.deepEqual(await replicaColumns(strata, "t"), ["id integer not null", "a text", "n bigint"]);
  });

  test("a rename cannot be told from a drop and an add: the stream stops with the remedy, and resumes once it is applied", async () => {
    await primary.query("ALTER TABLE t RENAME COLUMN a TO label");
    await primary.query("INSERT INTO t VALUES (4, 'four', 4)");
    const [status] = await waitFor("the schema error in the status", async () => {
      const rows = await strata.query<{ current_error: string | null }>(
        "SELECT current_error FROM dolt_replication_status",
      );
      return rows[0]?.current_error ? rows : undefined;
    });
    assert.match(status.current_error!, /table public\.t/);
    assert.match(status.current_error!, /lost column\(s\) a and gained label/);
    assert.match(status.current_error!, /ALTER TABLE "public"\."t" RENAME COLUMN "a" TO "label"/);
    assert.match(status.current_error!, /strata setup-primary/);
    await strata.query('ALTER TABLE "public"."t" RENAME COLUMN "a" TO "label"');
    await waitForSameRows(primary, strata, "t", "id");
    // The remedy is recorded as the rename: versions from before it read under the new name.
    const renames = await strata.query(
      "SELECT ddl, definition -> 'renamed' AS renamed FROM strata.schema_changes WHERE definition ? 'renamed'",
    );
    assert.deepEqual(renames, [
      { ddl: 'ALTER TABLE "public"."t" RENAME COLUMN "a" TO "label"', renamed: { a: "label" } },
    ]);
    const history = await strata.query("SELECT id, label FROM dolt_history_t ORDER BY id, label");
    assert.deepEqual(history, [
      { id: 1, label: "one" },
      { id: 2, label: "two" },
      { id: 3, label: "three" },
      { id: 4, label: "four" },
    ]);
    const [three] = await strata.query("SELECT commit_hash FROM dolt_history_t WHERE id = 3");
    assert.deepEqual(
      await strata.query(`SELECT id, label FROM t AS OF '${three.commit_hash}' WHERE id = 2`),
      [{ id: 2, label: "two" }],
    );
  });

  test("a column added with a default has that value in the rows that existed (no change carried it), and history says when", async () => {
    const [{ h: before }] = await strata.query("SELECT dolt.commit_hash('HEAD') AS h");
    const ids = (await strata.query("SELECT id FROM t ORDER BY id")).map((r) => r.id);
    await primary.query("ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false");
    await primary.query("ALTER TABLE t ADD COLUMN note text DEFAULT 'it''s new'");
    await primary.query("INSERT INTO t (id, label, n, flag) VALUES (5, 'five', 5, true)");
    await waitForSameRows(primary, strata, "t", "id");
    const [old] = await strata.query("SELECT flag, note FROM t WHERE id = 1");
    assert.deepEqual(old, { flag: false, note: "it's new" });
    // Before the columns the rows had none: null there, the default from the commits that added
    // them on, and the diff across them shows every row that existed as changed.
    const asOf = (commit: string) =>
      strata.query(`SELECT id, flag, note FROM t AS OF '${commit}' ORDER BY id`);
    assert.deepEqual(
      await asOf(before),
      ids.map((id) => ({ id, flag: null, note: null })),
    );
    // (Without the trigger the columns come with the next row change: in the INSERT's commit.)
    assert.deepEqual(await asOf("HEAD"), [
      ...ids.map((id) => ({ id, flag: false, note: "it's new" })),
      { id: 5, flag: true, note: "it's new" },
    ]);
    assert.deepEqual(await strata.query(`SELECT id, flag, note FROM t AS OF '${before}' WHERE id = 1`), [
      { id: 1, flag: null, note: null },
    ]);
    const diff = await strata.query(
      `SELECT coalesce(to_id, from_id) AS id, from_flag, to_flag, to_note, diff_type FROM dolt_diff('${before}', 'HEAD', 't') ORDER BY 1`,
    );
    assert.deepEqual(diff, [
      ...ids.map((id) => ({
        id,
        from_flag: null,
        to_flag: false,
        to_note: "it's new",
        diff_type: "modified",
      })),
      { id: 5, from_flag: null, to_flag: true, to_note: "it's new", diff_type: "added" },
    ]);
  });
});

describe("with the event trigger (strata setup-primary)", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    primary = await startPrimary();
    await primary.query("CREATE TABLE t (id int PRIMARY KEY, a text)");
    strata = await startStrata({ primary });
    const { stdout } = await strataCli("setup-primary", "--config", strata.configFile);
    assert.match(stdout, /installed Strata's DDL event trigger/);
    // Idempotent.
    await strataCli("setup-primary", "--config", strata.configFile);
  });
  after(async () => {
    await strata?.stop();
    await primary?.stop();
  });

  test("a column rename and a table rename are followed exactly", async () => {
    await primary.query("INSERT INTO t VALUES (1, 'one')");
    await primary.query("ALTER TABLE t RENAME COLUMN a TO label");
    await primary.query("ALTER TABLE t RENAME TO things");
    await primary.query("INSERT INTO things VALUES (2, 'two')");
    await waitForSameRows(primary, strata, "things", "id");
    assert.deepEqual(await replicaColumns(strata, "things"), ["id integer not null", "label text"]);
    const [gone] = await strata.query("SELECT to_regclass('public.t') AS t");
    assert.equal(gone.t, null);
    const messages = (await strata.query<{ message: string }>("SELECT message FROM dolt_log")).map(
      (r) => r.message,
    );
    assert.ok(
      messages.some((m) => m.endsWith("ALTER TABLE t RENAME COLUMN a TO label")),
      messages.join("\n"),
    );
    assert.ok(messages.some((m) => m.endsWith("ALTER TABLE t RENAME TO things")));
    // History is per name: t's ends with its rows removed, things' starts with them.
    const expected = (await snapshot((sql) => primary.query(sql), "things", "id")).sort();
    assert.deepEqual(await replayHistory(strata, "things", ["id"]), expected);
    assert.deepEqual(await replayHistory(strata, "t", ["id"]), []);
  });

  test("DDL and rows in one transaction are applied in the order they were made, savepoints too", async () => {
    await primary.query("CREATE TABLE tx (id int PRIMARY KEY, a text)");
    await primary.query("INSERT INTO tx VALUES (1, 'one')");
    await waitForSameRows(primary, strata, "tx", "id");
    // Each rename reaches the replica before the rows written under the new name.
    await primary.query(`BEGIN;
      ALTER TABLE tx RENAME COLUMN a TO label;
      INSERT INTO tx VALUES (2, 'two');
      SAVEPOINT s;
      ALTER TABLE tx RENAME COLUMN label TO name;
      RELEASE s;
      UPDATE tx SET name = name || '!';
      COMMIT`);
    await waitForSameRows(primary, strata, "tx", "id");
    assert.deepEqual(await replicaColumns(strata, "tx"), ["id integer not null", "name text"]);
  });

  test("history from before a rename on the primary, of a key column too, reads under the new names", async () => {
    await primary.query("CREATE TABLE r (id int PRIMARY KEY, a text)");
    await primary.query("INSERT INTO r VALUES (1, 'one'), (2, 'two')");
    await waitForSameRows(primary, strata, "r", "id");
    const [before] = await strata.query("SELECT dolt.commit_hash('HEAD') AS h");
    await primary.query("ALTER TABLE r RENAME COLUMN a TO label");
    await primary.query("ALTER TABLE r RENAME COLUMN id TO rid");
    await primary.query("UPDATE r SET label = 'uno' WHERE rid = 1");
    await waitForSameRows(primary, strata, "r", "rid");
    assert.deepEqual(await strata.query(`SELECT * FROM r AS OF '${before.h}' ORDER BY rid`), [
      { rid: 1, label: "one" },
      { rid: 2, label: "two" },
    ]);
    assert.deepEqual(await strata.query(`SELECT * FROM r AS OF '${before.h}' WHERE rid = 1`), [
      { rid: 1, label: "one" },
    ]);
    assert.deepEqual(
      await strata.query(
        `SELECT diff_type, from_rid, from_label, to_rid, to_label FROM dolt_diff('${before.h}', 'HEAD', 'r')`,
      ),
      [{ diff_type: "modified", from_rid: 1, from_label: "one", to_rid: 1, to_label: "uno" }],
    );
    assert.deepEqual(await strata.query("SELECT rid, label FROM dolt_history_r ORDER BY rid, label"), [
      { rid: 1, label: "one" },
      { rid: 1, label: "uno" },
      { rid: 2, label: "two" },
    ]);
  });

  test("a new table arrives with its keys, defaults and indexes, and DDL with rows in one transaction", async () => {
    await primary.query(`BEGIN;
      CREATE TABLE orders (id bigserial PRIMARY KEY, sku text NOT NULL DEFAULT 'none', qty int DEFAULT 1, UNIQUE (sku, qty));
      CREATE INDEX orders_qty ON orders (qty);
      INSERT INTO orders (sku, qty) VALUES ('a', 2), ('b', DEFAULT);
      COMMIT`);
    await waitForSameRows(primary, strata, "orders", "id");
    assert.deepEqual(await replicaColumns(strata, "orders"), [
      "id bigint not null",
      "sku text not null",
      "qty integer",
    ]);
    const defaults = await strata.query(
      "SELECT column_name, column_default FROM information_schema.columns WHERE table_name = 'orders' ORDER BY ordinal_position",
    );
    assert.deepEqual(defaults, [
      { column_name: "id", column_default: null },
      { column_name: "sku", column_default: "'none'::text" },
      { column_name: "qty", column_default: "1" },
    ]);
    const indexes = await strata.query<{ indexname: string }>(
      "SELECT indexname FROM pg_indexes WHERE tablename = 'orders' ORDER BY indexname",
    );
    assert.deepEqual(
      indexes.map((i) => i.indexname),
      ["orders_pkey", "orders_qty", "orders_sku_qty_key"],
    );
  });

  test("index, default and NOT NULL changes, and DROP TABLE, follow", async () => {
    await primary.query("DROP INDEX orders_qty");
    await primary.query("CREATE INDEX orders_sku ON orders (sku)");
    await primary.query("ALTER TABLE orders ALTER COLUMN qty SET DEFAULT 5, ALTER COLUMN qty SET NOT NULL");
    await primary.query("INSERT INTO orders (sku) VALUES ('c')");
    await waitForSameRows(primary, strata, "orders", "id");
    const indexes = await strata.query<{ indexname: string }>(
      "SELECT indexname FROM pg_indexes WHERE tablename = 'orders' ORDER BY indexname",
    );
    assert.deepEqual(
      indexes.map((i) => i.indexname),
      ["orders_pkey", "orders_sku", "orders_sku_qty_key"],
    );
    assert.deepEqual((await replicaColumns(strata, "orders"))[2], "qty integer not null");
    await primary.query("DROP TABLE orders");
    await waitFor("the replica table to be dropped", async () => {
      const [row] = await strata.query("SELECT to_regclass('public.orders') IS NULL AS gone");
      return row.gone;
    });
    assert.match(await lastMessage(strata), /DROP TABLE orders$/);
    // Its history stays, ending with its rows removed.
    const history = await strata.query(
      "SELECT op::text, count(*)::int AS n FROM strata.changes WHERE rel = 'public.orders' GROUP BY 1 ORDER BY 1",
    );
    assert.deepEqual(history, [
      { op: "I", n: 3 },
      { op: "T", n: 3 },
    ]);
  });

  test("an older Strata's trigger on the primary is named at start, with the remedy", async () => {
    await primary.query("COMMENT ON FUNCTION strata.emit_ddl() IS NULL");
    await strata.stop();
    await strata.start();
    await waitFor("the warning", async () => /older Strata's.*strata setup-primary/.test(strata.logs));
    await strataCli("setup-primary", "--config", strata.configFile);
    const [row] = await primary.query("SELECT obj_description('strata.emit_ddl()'::regprocedure) AS v");
    assert.equal(row.v, DDL_TRIGGER_VERSION);
  });

  test("--uninstall removes the trigger; DDL then follows from Relation messages", async () => {
    // (A partition made meanwhile has its truncate trigger, which goes too.)
    await primary.query("CREATE TABLE parted (k int) PARTITION BY LIST (k)");
    await primary.query("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1)");
    const truncateTriggers =
      "SELECT tgrelid::regclass::text AS t FROM pg_trigger WHERE tgname = 'strata_truncate'";
    assert.deepEqual(await primary.query(truncateTriggers), [{ t: "parted_1" }]);
    const { stdout } = await strataCli("setup-primary", "--uninstall", "--config", strata.configFile);
    assert.match(stdout, /removed/);
    const triggers = await primary.query("SELECT evtname FROM pg_event_trigger");
    assert.deepEqual(triggers, []);
    assert.deepEqual(await primary.query(truncateTriggers), []);
    assert.deepEqual(
      await primary.query(
        "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'strata'",
      ),
      [],
    );
    await primary.query("ALTER TABLE things ADD COLUMN note text");
    await primary.query("INSERT INTO things VALUES (3, 'three', 'n')");
    await waitForSameRows(primary, strata, "things", "id");
  });
});

describe("publication changes", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    primary = await startPrimary();
    await primary.query("CREATE TABLE a (id int PRIMARY KEY, v text)");
    await primary.query("CREATE TABLE b (id int PRIMARY KEY, v text)");
    await primary.query("INSERT INTO b SELECT g, 'before ' || g FROM generate_series(1, 500) g");
    strata = await startStrata({ primary, replication: { publication_tables: ["public.a"] } });
  });
  after(async () => {
    await strata?.stop();
    await primary?.stop();
  });

  test("a table added to the publication is copied, then streamed; dropped from it, it keeps its rows", async () => {
    await primary.query("INSERT INTO a VALUES (1, 'a1')");
    await waitForSameRows(primary, strata, "a", "id");
    const [none] = await strata.query("SELECT to_regclass('public.b') AS b");
    assert.equal(none.b, null, "b is not published yet");
    await primary.query("ALTER PUBLICATION strata_slot ADD TABLE b");
    await primary.query("UPDATE b SET v = 'updated' WHERE id <= 10");
    await primary.query("INSERT INTO b VALUES (501, 'after')");
    await waitForSameRows(primary, strata, "b", "id");
    // The copied rows are in the table a moment before the join's commit is recorded.
    let messages: string[] = [];
    await waitFor("the join's commit", async () => {
      messages = (await strata.query<{ message: string }>("SELECT message FROM dolt_log")).map(
        (r) => r.message,
      );
      return messages.some((m) => /public\.b joined the replica \(50\d rows copied at /.test(m));
    }).catch(() => assert.fail(`no join commit in dolt_log:\n${messages.join("\n")}`));
    await primary.query("ALTER PUBLICATION strata_slot DROP TABLE b");
    await primary.query("INSERT INTO b VALUES (502, 'unpublished')");
    await primary.query("INSERT INTO a VALUES (2, 'a2')");
    await waitForSameRows(primary, strata, "a", "id");
    const [kept] = await strata.query("SELECT count(*)::int AS n, max(id) AS top FROM b");
    assert.deepEqual(kept, { n: 501, top: 501 });
  });
});

describe("partitions published through their root (with the event trigger)", () => {
  let primary: TestCluster;
  let strata: StrataProcess;
  before(async () => {
    primary = await startPrimary();
    await primary.query(`
      CREATE PUBLICATION strata_slot FOR ALL TABLES WITH (publish_via_partition_root = true);
      CREATE TABLE events (id int, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
      CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
      CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
      CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
        PARTITION BY RANGE (at);
      CREATE TABLE events_2025_h1 PARTITION OF events_2025 FOR VALUES FROM ('2025-01-01') TO ('2025-07-01');
      CREATE TABLE events_2025_h2 PARTITION OF events_2025 DEFAULT;
      CREATE TABLE events_later PARTITION OF events DEFAULT;
      CREATE TABLE logs (at int, msg text) PARTITION BY RANGE (at);
      CREATE TABLE logs_low PARTITION OF logs FOR VALUES FROM (MINVALUE) TO (100);
      CREATE TABLE logs_high PARTITION OF logs FOR VALUES FROM (100) TO (MAXVALUE);
      INSERT INTO events SELECT i, date '2023-01-01' + i * 3, (ARRAY['a', 'b', 'c'])[1 + i % 3] FROM generate_series(0, 400) i;
      INSERT INTO logs SELECT i % 200, 'm' || i FROM generate_series(1, 300) i;
      CREATE TABLE h (id int, "Key, two" text, PRIMARY KEY (id, "Key, two")) PARTITION BY HASH (id, "Key, two");
      CREATE TABLE h_0 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 0);
      CREATE TABLE h_1 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 1);
      CREATE TABLE h_2 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 2);
      INSERT INTO h SELECT i, 'k' || (i % 7) FROM generate_series(1, 300) i;
    `);
    strata = await startStrata({ primary });
    await strataCli("setup-primary", "--config", strata.configFile);
    await waitForSameRows(primary, strata, "events", "id, at");
    await waitForSameRows(primary, strata, "logs", "at, msg");
    await waitForSameRows(primary, strata, "h", "id");
  });
  after(async () => {
    await strata?.stop();
    await primary?.stop();
  });

  async function head(): Promise<string> {
    const [row] = await strata.query<{ h: string }>("SELECT dolt.commit_hash('HEAD') AS h");
    return row.h;
  }

  /**
   * The statements in one transaction; on a PostgreSQL 14 primary, each in its own, since a 14
   * walsender sends rows written after an ATTACH or DETACH in its transaction under the table's
   * old place (docs/schema-changes.md, Limits; test/integration/pg-versions.test.ts has the rest).
   */
  async function inOneTransaction(statements: string[]): Promise<void> {
    const [{ v }] = await primary.query<{ v: string }>("SHOW server_version_num");
    if (Number(v) >= 150000) await primary.query(`BEGIN; ${statements.join("; ")}; COMMIT`);
    else for (const statement of statements) await primary.query(statement);
  }

  test("a partition dropped on the primary takes its rows out of the replica's table, as history deletes", async () => {
    const before = await head();
    const rowsBefore = await strata.query("SELECT * FROM events ORDER BY id, at");
    const partitionRows = await primary.query<{ id: number }>("SELECT id FROM events_2023 ORDER BY id");
    assert.ok(partitionRows.length > 100);
    await primary.query("DROP TABLE events_2023");
    await waitForSameRows(primary, strata, "events", "id, at");
    assert.match(await lastMessage(strata), /DROP TABLE events_2023$/);
    // The past is unchanged; the drop's diff removes exactly the partition's rows.
    assert.deepEqual(
      await strata.query(`SELECT * FROM events AS OF '${before}' ORDER BY id, at`),
      rowsBefore,
    );
    const diff = await strata.query<{ diff_type: string; from_id: number }>(
      `SELECT diff_type, from_id FROM dolt_diff('${before}', 'HEAD', 'events') ORDER BY from_id`,
    );
    assert.deepEqual(
      diff,
      partitionRows.map((r) => ({ diff_type: "removed", from_id: r.id })),
    );
  });

  test("a detached partition's rows move to its own replica table, which is streamed from then on", async () => {
    await inOneTransaction([
      "INSERT INTO events VALUES (9001, '2024-06-01', 'late')",
      "ALTER TABLE events DETACH PARTITION events_2024",
      "INSERT INTO events_2024 VALUES (9002, '2024-07-01', 'after the detach')",
    ]);
    await waitForSameRows(primary, strata, "events", "id, at");
    await waitForSameRows(primary, strata, "events_2024", "id, at");
    await primary.query("UPDATE events_2024 SET what = 'changed' WHERE id IN (9001, 150)");
    await primary.query("DELETE FROM events_2024 WHERE id = 151");
    await waitForSameRows(primary, strata, "events_2024", "id, at");
    // Its history starts with the rows it arrived with.
    const [counts] = await strata.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM dolt_history_events_2024 WHERE what = 'changed'",
    );
    assert.equal(counts.n, 2);
  });

  test("a partitioned partition dropped, and a partition of a keyless table: their rows leave too", async () => {
    const before = await head();
    await primary.query("DROP TABLE events_2025");
    await primary.query("DROP TABLE logs_low");
    await waitForSameRows(primary, strata, "events", "id, at");
    await waitForSameRows(primary, strata, "logs", "at, msg");
    const [removed] = await strata.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM dolt_diff('${before}', 'HEAD', 'logs') WHERE diff_type = 'removed' AND from_at < 100`,
    );
    assert.equal(removed.n, 199);
    // Dropping the partitioned table itself still records all of its rows leaving, once.
    await primary.query("DROP TABLE logs");
    await waitFor("the replica's logs to be dropped", async () => {
      const [row] = await strata.query("SELECT to_regclass('public.logs') IS NULL AS gone");
      return row.gone;
    });
    const history = await strata.query(
      "SELECT op::text, count(*)::int AS n FROM strata.changes WHERE rel = 'public.logs' GROUP BY 1 ORDER BY 1",
    );
    // (A keyless table's snapshot is recorded as inserts.)
    assert.deepEqual(history, [
      { op: "D", n: 199 },
      { op: "I", n: 300 },
      { op: "T", n: 101 },
    ]);
  });

  test("a table attached as a partition brings its rows into the replica's table, and a detach takes them back", async () => {
    await primary.query(`CREATE TABLE events_2027 (id int, at date NOT NULL, what text, PRIMARY KEY (id, at));
      INSERT INTO events_2027 SELECT i, date '2027-01-01' + i, 'n' || i FROM generate_series(1, 50) i`);
    await waitForSameRows(primary, strata, "events_2027", "id, at");
    const before = await head();
    await inOneTransaction([
      "INSERT INTO events_2027 VALUES (51, '2027-03-01', 'just before')",
      "ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
      "INSERT INTO events VALUES (52, '2027-04-01', 'routed')",
    ]);
    await waitForSameRows(primary, strata, "events", "id, at");
    const [added] = await strata.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM dolt_diff('${before}', 'HEAD', 'events') WHERE diff_type = 'added'`,
    );
    assert.equal(added.n, 52);
    await primary.query("UPDATE events SET what = 'changed' WHERE id = 1 AND at >= '2027-01-01'");
    await primary.query("ALTER TABLE events DETACH PARTITION events_2027");
    await waitForSameRows(primary, strata, "events", "id, at");
    await waitForSameRows(primary, strata, "events_2027", "id, at");
  });

  test("hash partitions too: their bounds are evaluated on the replica with the same key", async () => {
    await primary.query("ALTER TABLE h DETACH PARTITION h_2");
    await primary.query("DROP TABLE h_1");
    await waitForSameRows(primary, strata, "h", "id");
    await waitForSameRows(primary, strata, "h_2", "id");
    const [left] = await primary.query<{ n: number }>("SELECT count(*)::int AS n FROM h");
    assert.ok(left.n > 50 && left.n < 150, `${left.n} rows in one of three hash partitions`);
  });

  test("a partition truncated on its own takes its rows out of the replica's table; partitions made or attached later too, and the root's own TRUNCATE", async () => {
    await primary.query(`
      CREATE TABLE metrics (k int, at int, v text, PRIMARY KEY (k, at)) PARTITION BY LIST (k);
      CREATE TABLE metrics_1 PARTITION OF metrics FOR VALUES IN (1);
      CREATE TABLE metrics_2 PARTITION OF metrics FOR VALUES IN (2) PARTITION BY RANGE (at);
      CREATE TABLE metrics_2_low PARTITION OF metrics_2 FOR VALUES FROM (MINVALUE) TO (50);
      CREATE TABLE metrics_2_high PARTITION OF metrics_2 FOR VALUES FROM (50) TO (MAXVALUE);
      CREATE TABLE metrics_3 (k int, at int, v text, PRIMARY KEY (k, at));
      INSERT INTO metrics SELECT 1 + i % 2, i, 'v' || i FROM generate_series(1, 200) i`);
    await waitForSameRows(primary, strata, "metrics", "k, at");
    // Every partition has the trigger: those made after setup-primary by the DDL trigger.
    const unwatched =
      "SELECT c.relname FROM pg_class c WHERE c.relispartition AND c.relkind IN ('r', 'p') AND c.relname LIKE 'metrics%' AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'strata_truncate')";
    assert.deepEqual(await primary.query(unwatched), []);

    const before = await head();
    const rowsBefore = await strata.query("SELECT * FROM metrics ORDER BY k, at");
    await primary.query("TRUNCATE metrics_1");
    await waitForSameRows(primary, strata, "metrics", "k, at");
    assert.match(await lastMessage(strata), /TRUNCATE metrics_1$/);
    // The past keeps the rows; the TRUNCATE's diff removes exactly them.
    assert.deepEqual(
      await strata.query(`SELECT * FROM metrics AS OF '${before}' ORDER BY k, at`),
      rowsBefore,
    );
    const removed = await strata.query<{ from_k: number; n: number }>(
      `SELECT from_k, count(*)::int AS n FROM dolt_diff('${before}', 'HEAD', 'metrics') WHERE diff_type = 'removed' GROUP BY 1`,
    );
    assert.deepEqual(removed, [{ from_k: 1, n: 100 }]);

    // In order with the transaction's rows: the row written after the TRUNCATE stays.
    await primary.query(`BEGIN;
      INSERT INTO metrics VALUES (1, 1000, 'before');
      TRUNCATE metrics_1;
      INSERT INTO metrics VALUES (1, 1001, 'after');
      COMMIT`);
    await waitForSameRows(primary, strata, "metrics", "k, at");
    assert.deepEqual(await strata.query("SELECT at, v FROM metrics WHERE k = 1"), [{ at: 1001, v: "after" }]);

    // A leaf of a partitioned partition, and a table attached later.
    await primary.query("TRUNCATE metrics_2_low");
    await waitForSameRows(primary, strata, "metrics", "k, at");
    await primary.query("ALTER TABLE metrics ATTACH PARTITION metrics_3 FOR VALUES IN (3)");
    await primary.query("INSERT INTO metrics SELECT 3, i, 'x' FROM generate_series(1, 20) i");
    await waitForSameRows(primary, strata, "metrics", "k, at");
    assert.deepEqual(await primary.query(unwatched), []);
    await primary.query("TRUNCATE metrics_3");
    await waitForSameRows(primary, strata, "metrics", "k, at");
    assert.equal((await strata.query("SELECT count(*)::int AS n FROM metrics WHERE k = 3"))[0].n, 0);

    // The root's own TRUNCATE comes as the root's; its partitions' triggers then find nothing left.
    await primary.query("INSERT INTO metrics VALUES (1, 1, 'back')");
    await primary.query("TRUNCATE metrics");
    await waitForSameRows(primary, strata, "metrics", "k, at");
    assert.equal((await strata.query("SELECT count(*)::int AS n FROM metrics"))[0].n, 0);
  });
});
