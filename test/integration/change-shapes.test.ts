// Every change shape and common type, applied exactly; history equal to the transactions that ran.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";

let primary: TestCluster;
let strata: StrataProcess;

before(async () => {
  // A small logical_decoding_work_mem makes pgoutput stream large transactions in progress;
  // a small memory_limit_mb makes Strata spill them to disk.
  primary = await startPrimary({ settings: { logical_decoding_work_mem: "64kB" } });
  strata = await startStrata({ primary, replication: { memory_limit_mb: 0.25 } });
});
after(async () => {
  await strata?.stop();
  await primary?.stop();
});

const commitCount = async () => Number((await strata.query("SELECT count(*) AS n FROM dolt_log"))[0].n);

test("composite keys and primary-key changes", async () => {
  await primary.query("CREATE TABLE comp (a int, b text, v text, PRIMARY KEY (a, b))");
  await primary.query("INSERT INTO comp VALUES (1, 'x', 'one'), (1, 'y', 'two'), (2, 'x', 'three')");
  await primary.query("UPDATE comp SET b = 'z' WHERE a = 1 AND b = 'x'");
  await primary.query("UPDATE comp SET a = a + 10, v = v || '!'");
  await primary.query("DELETE FROM comp WHERE a = 11 AND b = 'y'");
  await waitForSameRows(primary, strata, "comp", "a, b");
});

test("REPLICA IDENTITY FULL on a keyless table with duplicate rows, and USING INDEX", async () => {
  await primary.query("CREATE TABLE dup (a int, b text, j json)");
  await primary.query("ALTER TABLE dup REPLICA IDENTITY FULL");
  await primary.query(
    `INSERT INTO dup VALUES (1, 'same', '{"k": 1}'), (1, 'same', '{"k": 1}'), (1, 'same', '{"k": 1}'), (2, NULL, NULL)`,
  );
  // Postgres changes one physical row per duplicate here; so must the replica.
  await primary.query("DELETE FROM dup WHERE ctid = (SELECT ctid FROM dup WHERE a = 1 LIMIT 1)");
  await primary.query("UPDATE dup SET b = 'changed' WHERE ctid = (SELECT ctid FROM dup WHERE a = 1 LIMIT 1)");
  await primary.query("UPDATE dup SET b = 'was null' WHERE a = 2");
  await waitForSameRows(primary, strata, "dup", "a, b");

  await primary.query("CREATE TABLE byidx (id int NOT NULL, code text NOT NULL, v int)");
  await primary.query("CREATE UNIQUE INDEX byidx_code ON byidx (code)");
  await primary.query("ALTER TABLE byidx REPLICA IDENTITY USING INDEX byidx_code");
  await primary.query("INSERT INTO byidx VALUES (1, 'a', 1), (2, 'b', 2)");
  await primary.query("UPDATE byidx SET code = 'c', v = 3 WHERE code = 'a'");
  await primary.query("DELETE FROM byidx WHERE code = 'b'");
  await waitForSameRows(primary, strata, "byidx", "id");
});

test("REPLICA IDENTITY FULL changes the very row the primary changed, even where equality cannot tell", async () => {
  await primary.query("CREATE TABLE amounts (amount numeric, note text)");
  await primary.query("ALTER TABLE amounts REPLICA IDENTITY FULL");
  // 1.0 = 1.00 for numeric equality, but they are different values.
  await primary.query("INSERT INTO amounts VALUES (1.0, 'x'), (1.00, 'x')");
  await primary.query("DELETE FROM amounts WHERE amount::text = '1.00'");
  await primary.query("UPDATE amounts SET note = 'kept' WHERE amount::text = '1.0'");
  await waitForSameRows(primary, strata, "amounts", "amount::text");
});

test("a partitioned table on the replica, and a column named like history metadata", async () => {
  await strata.query(`CREATE TABLE parted (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
    CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');`);
  await primary.query(
    "CREATE TABLE parted (id int, region text, v text, commit_hash text, PRIMARY KEY (id, region))",
  );
  await strata.query("ALTER TABLE parted ADD COLUMN commit_hash text");
  // Both partitions hold a row at the same ctid (0,1): the row is found by tableoid and ctid.
  await primary.query("INSERT INTO parted VALUES (1, 'eu', 'a', 'mine'), (1, 'us', 'b', 'mine')");
  await primary.query("UPDATE parted SET v = 'changed' WHERE region = 'us'");
  await primary.query("DELETE FROM parted WHERE region = 'eu'");
  await waitForSameRows(primary, strata, "parted", "id, region");
  const history = await strata.query(
    "SELECT v, commit_hash, strata_commit_hash IS NOT NULL AS has_meta FROM dolt_history_parted ORDER BY commit_date, v",
  );
  assert.deepEqual(history.at(-1), { v: "changed", commit_hash: "mine", has_meta: true });
  await primary.query("TRUNCATE parted");
  await waitForSameRows(primary, strata, "parted", "id, region");
});

test("a table without a key replicates its inserts, each history row in its own commit", async () => {
  await primary.query("CREATE TABLE nokey (a int, b text)");
  // Several transactions written while Strata is down, so that on restart one batch (one run of
  // inserts) holds duplicates from different commits: each must be recorded in the commit that
  // made it.
  await strata.stop();
  const writer = await primary.connect();
  try {
    await writer.query("INSERT INTO nokey VALUES (1, 'a'), (1, 'a'), (2, 'b')");
    await writer.query("INSERT INTO nokey VALUES (1, 'a'), (3, NULL)");
    await writer.query("INSERT INTO nokey VALUES (3, NULL), (2, 'b'), (2, 'b')");
  } finally {
    await writer.end();
  }
  await strata.start();
  await strata.waitForStreaming();
  await waitForSameRows(primary, strata, "nokey", "a, b");
  const perCommit = await strata.query<{ rows: string }>(
    `SELECT string_agg(coalesce(c.new_row->>'a', '') || ':' || coalesce(c.new_row->>'b', 'NULL'), ',' ORDER BY c.ord) AS rows
       FROM strata.changes c WHERE c.rel = 'public.nokey' GROUP BY c.commit_seq ORDER BY c.commit_seq`,
  );
  assert.deepEqual(
    perCommit.map((r) => r.rows),
    ["1:a,1:a,2:b", "1:a,3:NULL", "3:NULL,2:b,2:b"],
  );
});

test("unchanged TOASTed values keep the replica's current value; history has the full row", async () => {
  await primary.query("CREATE TABLE toasty (id int PRIMARY KEY, big text, n int)");
  // Incompressible, larger than the TOAST threshold: stored out of line.
  await primary.query(
    "INSERT INTO toasty SELECT 1, string_agg(md5(i::text), '') , 0 FROM generate_series(1, 500) i",
  );
  await primary.query("UPDATE toasty SET n = n + 1 WHERE id = 1");
  await primary.query("UPDATE toasty SET n = n + 1 WHERE id = 1");
  await waitForSameRows(primary, strata, "toasty", "id");
  const history = await strata.query("SELECT n, length(big) AS len FROM dolt_history_toasty ORDER BY n");
  assert.deepEqual(
    history.map((r) => [r.n, r.len]),
    [
      [0, 16000],
      [1, 16000],
      [2, 16000],
    ],
  );
});

test("every common type round-trips exactly", async () => {
  await primary.query("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')");
  await primary.query(`CREATE TABLE types (
    id int PRIMARY KEY, i2 int2, i8 int8, num numeric(30, 10), numbig numeric, f4 float4, f8 float8, b bool,
    t text, vc varchar(20), ch char(5), u uuid, j json, jb jsonb, d date, tm time, ttz timetz, ts timestamp,
    tstz timestamptz, iv interval, ia int[], ta text[], m mood, ip inet, net cidr, by bytea)`);
  await primary.query(`INSERT INTO types VALUES
    (1, -32768, 9223372036854775807, 12345678901234567890.0123456789, 1e-30, 1.5, 0.1, true,
     'it''s "quoted" \\ back\\slash ☃ 𝄞 ünïcödé', 'varchar', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
     '{"a": [1, 2.50, "x"],  "b": null}', '{"z": 1, "a": {"n": 1.50}}', '2024-02-29', '23:59:59.999999',
     '12:00:00+05:30', '2000-01-01 00:00:00.000001', '2024-06-01 12:34:56.789+02', '1 year 2 mons 3 days 04:05:06.7',
     '{1,NULL,3}', '{"a b","c,d","e\\"f",NULL}', 'happy', '192.168.1.5/24', '10.0.0.0/8', '\\x00ff10'),
    (2, NULL, NULL, 'NaN', '-0.0000001', 'Infinity', '-Infinity', false, '', NULL, NULL, NULL, NULL, NULL,
     'infinity', NULL, NULL, '-infinity', NULL, NULL, '{}', '{}', 'sad', '::1', '2001:db8::/32', '\\x'),
    (3, 0, 0, 0, 0, 'NaN', 'NaN', NULL, NULL, NULL, NULL, NULL, 'null', '[]', NULL, NULL, NULL, NULL, NULL,
     '-1 days', NULL, NULL, NULL, NULL, NULL, NULL)`);
  await primary.query("UPDATE types SET f8 = 1e308, t = t || E'\\n\\t' WHERE id = 1");
  await waitForSameRows(primary, strata, "types", "id");
  // The replica created the table from the Relation message, with the primary's column types.
  const types = await strata.query(
    "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) AS t FROM pg_attribute WHERE attrelid = 'types'::regclass AND attnum > 0",
  );
  const expected = await primary.query(
    "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) AS t FROM pg_attribute WHERE attrelid = 'types'::regclass AND attnum > 0",
  );
  assert.equal(types[0].t, expected[0].t);
  // History's image of each row's last change is the row as stored, for every type (an insert's
  // image is built from the typed values it inserted, not read back from the table).
  const images = await strata.query<{ id: number; same: boolean }>(
    `SELECT t.id, c.new_row = to_jsonb(t.*) AS same FROM types t
       JOIN LATERAL (SELECT new_row FROM strata.changes WHERE rel = 'public.types' AND row_key = jsonb_build_object('id', t.id)
                      ORDER BY commit_seq DESC, ord DESC LIMIT 1) c ON true
      ORDER BY t.id`,
  );
  assert.deepEqual(images, [
    { id: 1, same: true },
    { id: 2, same: true },
    { id: 3, same: true },
  ]);
  // Row 1 was updated since: its insert's image is the row as the update found it.
  const [inserted] = await strata.query<{ same: boolean }>(
    `SELECT i.new_row = u.old_row AS same FROM strata.changes i JOIN strata.changes u USING (rel, row_key)
      WHERE i.rel = 'public.types' AND i.row_key = '{"id": 1}' AND i.op = 'I' AND u.op = 'U'`,
  );
  assert.equal(inserted?.same, true);
});

test("a replica table with extra columns and a wider type is used as it is", async () => {
  await strata.query(
    "CREATE TABLE wide (id int8 PRIMARY KEY, v int8, note text, added timestamptz DEFAULT now())",
  );
  await primary.query("CREATE TABLE wide (id int4 PRIMARY KEY, v int4)");
  await primary.query("INSERT INTO wide VALUES (1, 10), (2, 20)");
  await primary.query("UPDATE wide SET v = 2147483647 WHERE id = 2");
  await primary.query("DELETE FROM wide WHERE id = 1");
  const rows = await waitFor("wide to match", async () => {
    const r = await strata.query(
      "SELECT id, v, note, added IS NOT NULL AS has_default FROM wide ORDER BY id",
    );
    return r.length === 1 && r[0].v === "2147483647" ? r : undefined;
  });
  assert.deepEqual(rows, [{ id: "2", v: "2147483647", note: null, has_default: true }]);
});

test("TRUNCATE, rollbacks, and concurrent transactions committed out of order", async () => {
  await primary.query("CREATE TABLE seqd (id serial PRIMARY KEY, v text)");
  await primary.query("INSERT INTO seqd (v) VALUES ('a'), ('b')");
  const before = await waitFor(
    "seqd rows",
    async () => (await strata.query("SELECT count(*) AS n FROM seqd"))[0].n === "2",
  );
  assert.ok(before);
  const commitsBefore = await commitCount();

  await primary.query("BEGIN; INSERT INTO seqd (v) VALUES ('rolled back'); ROLLBACK;");
  await primary.query("TRUNCATE seqd RESTART IDENTITY");
  const c1 = await primary.connect();
  const c2 = await primary.connect();
  try {
    await c1.query("BEGIN");
    await c1.query("INSERT INTO seqd (id, v) VALUES (100, 'first begun')");
    await c2.query("BEGIN");
    await c2.query("INSERT INTO seqd (id, v) VALUES (200, 'second begun')");
    await c2.query("COMMIT");
    await c1.query("COMMIT");
  } finally {
    await c1.end();
    await c2.end();
  }
  await waitForSameRows(primary, strata, "seqd", "id");
  // TRUNCATE + two committed transactions; the rollback left nothing.
  await waitFor("three new commits", async () => (await commitCount()) === commitsBefore + 3);
  const log = await strata.query("SELECT message FROM dolt_log LIMIT 2");
  const lastTwo = await strata.query(
    "SELECT c.seq, (SELECT new_row->>'v' FROM strata.changes WHERE commit_seq = c.seq) AS v FROM strata.commits c ORDER BY seq DESC LIMIT 2",
  );
  // History follows commit order, not begin order.
  assert.deepEqual(
    lastTwo.map((r) => r.v),
    ["first begun", "second begun"],
    JSON.stringify(log),
  );
});

test("a large transaction streamed in progress and spilled to disk applies exactly once", async () => {
  await primary.query("CREATE TABLE bulk (id int PRIMARY KEY, payload text)");
  const commitsBefore = await commitCount();
  await primary.query("INSERT INTO bulk SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 30000) i");
  await primary.query(`BEGIN;
    UPDATE bulk SET payload = 'updated' WHERE id % 3 = 0;
    SAVEPOINT s1; DELETE FROM bulk WHERE id <= 10000; ROLLBACK TO SAVEPOINT s1;
    DELETE FROM bulk WHERE id % 7 = 0;
    COMMIT;`);
  await waitForSameRows(primary, strata, "bulk", "id", 120_000);
  await waitFor("two new commits", async () => (await commitCount()) === commitsBefore + 2);
  assert.match(
    strata.logs,
    /streamed transaction spilling to disk/,
    "the transaction went through the spill path",
  );
});

test("history equals the transactions that ran", async () => {
  const commits = await strata.query(
    "SELECT commit_hash, parent_hash, commit_order FROM dolt_log ORDER BY commit_order",
  );
  for (let i = 1; i < commits.length; i++)
    assert.equal(commits[i].parent_hash, commits[i - 1].commit_hash, "a linear chain");
  const dupes = await strata.query(
    "SELECT upstream_xid FROM strata.commits GROUP BY upstream_xid HAVING count(*) > 1",
  );
  assert.deepEqual(dupes, []);
  // A key's last mention in history is the row as it stands, or its removal (a delete, or an
  // update that moved the row to another key).
  const wrong = await strata.query(`
    WITH mentions AS (
      SELECT row_key AS k, commit_seq, ord, new_row FROM strata.changes WHERE rel = 'public.comp'
      UNION ALL
      SELECT old_key, commit_seq, ord, NULL FROM strata.changes WHERE rel = 'public.comp' AND old_key IS NOT NULL),
    last AS (SELECT DISTINCT ON (k) k, new_row FROM mentions ORDER BY k, commit_seq DESC, ord DESC, new_row NULLS FIRST)
    SELECT last.k, last.new_row, to_jsonb(t) AS actual FROM last
      FULL JOIN public.comp t ON last.k = jsonb_build_object('a', t.a, 'b', t.b)
     WHERE last.new_row IS DISTINCT FROM to_jsonb(t)`);
  assert.deepEqual(wrong, []);
  const moved = await strata.query(
    "SELECT count(*) AS n FROM strata.changes WHERE rel = 'public.comp' AND old_key IS NOT NULL",
  );
  assert.equal(Number(moved[0].n), 4, "two updates moved keys: one row, then three");
});

test("a row updated again within a batch is written once, and history keeps every version in order", async () => {
  await primary.query("CREATE TABLE counter (id int PRIMARY KEY, n int, label text)");
  await primary.query("INSERT INTO counter VALUES (1, 0, 'a'), (2, 0, 'b')");
  await waitForSameRows(primary, strata, "counter", "id");
  const bump = "UPDATE counter SET n = n + 1, label = 'v' || (n + 1) WHERE id = $1";
  // One transaction updating the same rows several times (one run of updates), then many small
  // transactions sent back to back (batched together as they arrive).
  const client = await primary.connect();
  try {
    await client.query("BEGIN");
    for (const id of [1, 2, 1, 1, 2]) await client.query(bump, [id]);
    await client.query("COMMIT");
    await Promise.all(Array.from({ length: 30 }, (_, i) => client.query(bump, [(i % 2) + 1])));
  } finally {
    await client.end();
  }
  await waitForSameRows(primary, strata, "counter", "id");
  const versions = await strata.query<{
    id: string;
    old_row: { n: number };
    new_row: { n: number; label: string };
  }>(
    "SELECT row_key->>'id' AS id, old_row, new_row FROM strata.changes WHERE rel = 'public.counter' AND op = 'U' ORDER BY commit_seq, ord",
  );
  for (const id of ["1", "2"]) {
    const mine = versions.filter((v) => v.id === id);
    assert.equal(mine.length, id === "1" ? 18 : 17, `every update of row ${id} is a version`);
    let before: unknown = { id: Number(id), n: 0, label: id === "1" ? "a" : "b" };
    for (const [i, v] of mine.entries()) {
      assert.deepEqual(
        v.old_row,
        before,
        `row ${id}, version ${i + 1}: its image before is the version before`,
      );
      assert.deepEqual(v.new_row, { id: Number(id), n: i + 1, label: `v${i + 1}` });
      before = v.new_row;
    }
    const [now] = await strata.query("SELECT to_jsonb(c) AS row FROM counter c WHERE id = $1", [id]);
    assert.deepEqual(now.row, before, `row ${id}'s last version is the row as it stands`);
  }
});

test("a replica table given a column or an ALWAYS trigger while Strata streams: history keeps the rows as stored", async () => {
  await primary.query("CREATE TABLE shaped (id int PRIMARY KEY, v text)");
  await primary.query("INSERT INTO shaped VALUES (1, 'one')");
  await waitForSameRows(primary, strata, "shaped", "id");
  // Strata has resolved the table: every column replicated, no trigger. Both change by hand.
  await strata.query("ALTER TABLE shaped ADD COLUMN note text DEFAULT 'local'");
  await primary.query("INSERT INTO shaped VALUES (2, 'two'), (3, 'three')");
  /** Whether each row's last version in history is the row as stored (rows after the first). */
  const storedRowsMatchHistory = () =>
    strata.query<{ id: number; same: boolean }>(
      `SELECT t.id, c.new_row = to_jsonb(t.*) AS same FROM shaped t
         JOIN LATERAL (SELECT new_row FROM strata.changes WHERE rel = 'public.shaped' AND row_key = jsonb_build_object('id', t.id)
                        ORDER BY commit_seq DESC, ord DESC LIMIT 1) c ON true
        WHERE t.id > 1 ORDER BY t.id`,
    );
  await waitFor("rows 2 and 3 on the replica", async () =>
    (await strata.query("SELECT count(*)::int AS n FROM shaped"))[0].n === 3 ? true : undefined,
  );
  assert.deepEqual(await storedRowsMatchHistory(), [
    { id: 2, same: true },
    { id: 3, same: true },
  ]);
  await strata.query(`CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN NEW.v := upper(NEW.v); RETURN NEW; END $$`);
  await strata.query(
    "CREATE TRIGGER shout BEFORE INSERT OR UPDATE ON shaped FOR EACH ROW EXECUTE FUNCTION shout()",
  );
  await strata.query("ALTER TABLE shaped ENABLE ALWAYS TRIGGER shout");
  await primary.query("INSERT INTO shaped VALUES (4, 'four')");
  await primary.query("UPDATE shaped SET v = 'deux' WHERE id = 2; UPDATE shaped SET v = 'dos' WHERE id = 2");
  await waitFor("row 4 and the updates on the replica", async () =>
    (await strata.query("SELECT v FROM shaped WHERE id = 2"))[0]?.v === "DOS" &&
    (await strata.query("SELECT count(*)::int AS n FROM shaped"))[0].n === 4
      ? true
      : undefined,
  );
  assert.deepEqual(await storedRowsMatchHistory(), [
    { id: 2, same: true },
    { id: 3, same: true },
    { id: 4, same: true },
  ]);
  // A column's type changed on the replica (numeric rounded to whole numbers there).
  await primary.query("CREATE TABLE amounts_typed (id int PRIMARY KEY, amount numeric)");
  await primary.query("INSERT INTO amounts_typed VALUES (1, 1.25)");
  await waitForSameRows(primary, strata, "amounts_typed", "id");
  await strata.query("ALTER TABLE amounts_typed ALTER COLUMN amount TYPE numeric(10, 0)");
  await primary.query("INSERT INTO amounts_typed VALUES (2, 1.6), (3, 2.4)");
  await waitFor("rows 2 and 3 of amounts_typed", async () =>
    (await strata.query("SELECT count(*)::int AS n FROM amounts_typed"))[0].n === 3 ? true : undefined,
  );
  const typed = await strata.query<{ id: number; same: boolean }>(
    `SELECT t.id, c.new_row = to_jsonb(t.*) AS same FROM amounts_typed t
       JOIN strata.changes c ON c.rel = 'public.amounts_typed' AND c.row_key = jsonb_build_object('id', t.id)
      WHERE t.id > 1 ORDER BY t.id`,
  );
  assert.deepEqual(typed, [
    { id: 2, same: true },
    { id: 3, same: true },
  ]);
});
