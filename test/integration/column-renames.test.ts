// Renamed columns in history: versions from before a rename read under today's names, in as-of
// reads (whole table and by key), diffs, dolt_history_<t> and dolt_blame_<t>, for renames of plain
// columns, of key columns, swaps, renames and changes in one commit, and uncommitted renames; and
// a clone through a remote renames its columns (keeping their values) and answers the same.
// The expected states are kept by the test as the statements run (today's names).
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { tempDir } from "../support/postgres.ts";
import { rowsOf, Sessions } from "../support/sessions.ts";
import { type StrataProcess, startStandaloneStrata } from "../support/strata.ts";

let strata: StrataProcess;
const sessions = new Sessions();

before(async () => {
  strata = await startStandaloneStrata();
});
after(async () => {
  await sessions.closeAll();
  await strata?.stop();
});

type Row = Record<string, unknown>;
const byKey = (rows: Row[], key: string) => [...rows].sort((x, y) => Number(x[key]) - Number(y[key]));

/** A state of t under a later commit's names: each row's fields renamed as the map says. */
const renamed = (rows: Row[], map: Record<string, string>): Row[] =>
  rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [map[k] ?? k, v])));

test("versions from before a rename read under today's names, on the writer and on a clone", async () => {
  const admin = await sessions.open(strata);
  await rowsOf(admin, "CREATE DATABASE renames");
  const db = await sessions.open(strata, "renames");
  const q = (sql: string) => rowsOf(db, sql);
  const commit = async (message: string) =>
    (await q(`SELECT dolt_commit('-Am', '${message}')`))[0].dolt_commit[0];

  await q("CREATE TABLE t (id int PRIMARY KEY, a text, b text)");
  await q("CREATE TABLE notes (body text, n int)"); // no key: a multiset
  await q("INSERT INTO t VALUES (1, 'a1', 'b1'), (2, 'a2', 'b2'), (3, 'a3', 'b3')");
  await q("INSERT INTO notes VALUES ('x', 1), ('x', 1), ('y', 2)");
  const states: { hash: string; t: Row[]; notes: Row[] }[] = [];
  const record = async (message: string) => {
    const hash = await commit(message);
    states.push({
      hash,
      t: await q("SELECT * FROM t ORDER BY 1"),
      notes: await q("SELECT * FROM notes ORDER BY 1, 2"),
    });
  };
  /** Every recorded state, brought to the names a rename gave. */
  const rename = (table: "t" | "notes", map: Record<string, string>) => {
    for (const s of states) s[table] = renamed(s[table], map);
  };
  await record("c1");

  await q("UPDATE t SET a = 'a1 changed' WHERE id = 1");
  await q("DELETE FROM notes WHERE body = 'y'");
  await record("c2");

  // A change before the rename and one after it, in the same commit.
  await q("UPDATE t SET a = 'a3 changed' WHERE id = 3");
  await q("ALTER TABLE t RENAME COLUMN a TO label");
  await q("UPDATE t SET label = 'a2 changed' WHERE id = 2");
  await q("ALTER TABLE notes RENAME COLUMN body TO text");
  await q("INSERT INTO notes VALUES ('z', 3)");
  rename("t", { a: "label" });
  rename("notes", { body: "text" });
  await record("c3");

  // A swap, by way of a third name, in one commit.
  await q("ALTER TABLE t RENAME COLUMN label TO tmp");
  await q("ALTER TABLE t RENAME COLUMN b TO label");
  await q("ALTER TABLE t RENAME COLUMN tmp TO b");
  await q("UPDATE t SET b = 'swapped' WHERE id = 1");
  rename("t", { label: "b", b: "label" });
  await record("c4");

  // The key's column, then a key that moves.
  await q("ALTER TABLE t RENAME COLUMN id TO pk");
  await q("UPDATE t SET pk = 30 WHERE pk = 3");
  await q("INSERT INTO t VALUES (4, 'label4', 'b4')");
  rename("t", { id: "pk" });
  await record("c5");

  const check = async (label: string, c: typeof q) => {
    for (const [i, s] of states.entries()) {
      const at = `HEAD~${states.length - 1 - i}`;
      assert.deepEqual(await c(`SELECT * FROM t AS OF '${at}' ORDER BY pk`), s.t, `${label}: t as of ${at}`);
      assert.deepEqual(
        await c(`SELECT * FROM notes AS OF '${at}' ORDER BY 1, 2`),
        s.notes,
        `${label}: notes as of ${at}`,
      );
      for (const row of s.t)
        assert.deepEqual(
          await c(`SELECT * FROM t AS OF '${at}' WHERE pk = ${row.pk}`),
          [row],
          `${label}: t's row ${row.pk} as of ${at}`,
        );
      assert.deepEqual(
        await c(`SELECT * FROM t AS OF '${at}' WHERE pk = 3`),
        s.t.filter((r) => r.pk === 3),
        `${label}: t's row 3 as of ${at}`,
      );
    }
    // Every version dolt_history_t lists is one of the recorded states' rows, and every row of a
    // state is listed at that state's commit unless the row was untouched since an earlier one.
    const history = await c("SELECT pk, b, label, commit_hash FROM dolt_history_t");
    const versions = new Set(history.map((h) => JSON.stringify([h.pk, h.b, h.label])));
    for (const s of states)
      for (const r of s.t)
        assert.ok(
          versions.has(JSON.stringify([r.pk, r.b, r.label])),
          `${label}: history has ${JSON.stringify(r)}`,
        );
    for (const h of history)
      assert.ok(h.b !== null && h.label !== null, `${label}: a version with a null: ${JSON.stringify(h)}`);
    // Diffs across the renames: only what changed, under today's names.
    const diff = await c(
      "SELECT diff_type, from_pk, from_b, from_label, to_pk, to_b, to_label FROM dolt_diff('HEAD~4', 'HEAD', 't') ORDER BY coalesce(to_pk, from_pk)",
    );
    const [first, last] = [states[0].t, states[states.length - 1].t];
    const expected: Row[] = [];
    const keys = [...new Set([...first, ...last].map((r) => r.pk as number))].sort((x, y) => x - y);
    for (const k of keys) {
      const f = first.find((r) => r.pk === k);
      const t = last.find((r) => r.pk === k);
      if (JSON.stringify(f) === JSON.stringify(t)) continue;
      expected.push({
        diff_type: !f ? "added" : !t ? "removed" : "modified",
        from_pk: f?.pk ?? null,
        from_b: f?.b ?? null,
        from_label: f?.label ?? null,
        to_pk: t?.pk ?? null,
        to_b: t?.b ?? null,
        to_label: t?.label ?? null,
      });
    }
    assert.deepEqual(diff, expected, `${label}: diff HEAD~4..HEAD`);
    for (let i = 1; i < states.length; i++) {
      const n = Number(
        (await c(`SELECT count(*) AS n FROM dolt_diff_t WHERE to_commit = '${states[i].hash}'`))[0].n,
      );
      const before = byKey(states[i - 1].t, "pk").map((r) => JSON.stringify(r));
      const now = byKey(states[i].t, "pk").map((r) => JSON.stringify(r));
      const changed = new Set(
        [...before, ...now]
          .filter((r) => !(before.includes(r) && now.includes(r)))
          .map((r) => JSON.parse(r).pk),
      );
      assert.equal(n, changed.size, `${label}: dolt_diff_t of commit ${i + 1}`);
    }
    const blame = await c("SELECT pk, commit FROM dolt_blame_t ORDER BY pk");
    const last4 = states[states.length - 1].hash;
    assert.deepEqual(
      blame.map((r) => [
        r.pk,
        r.commit === last4
          ? "c5"
          : r.commit === states[3].hash
            ? "c4"
            : r.commit === states[2].hash
              ? "c3"
              : r.commit === states[1].hash
                ? "c2"
                : "c1",
      ]),
      [
        [1, "c4"],
        [2, "c3"],
        [4, "c5"],
        [30, "c5"],
      ],
      `${label}: blame`,
    );
  };
  await check("writer", q);

  // A clone through a remote renames its columns (their values kept) and reads history the same.
  const url = `file://${join(tempDir("strata-renames-remote-"), "r")}`;
  await q(`SELECT dolt_remote('add', 'origin', '${url}')`);
  await q("SELECT dolt_push('origin', 'main')");
  await rowsOf(admin, `SELECT dolt_clone('${url}', 'renames_clone')`);
  const clone = await sessions.open(strata, "renames_clone");
  const cq = (sql: string) => rowsOf(clone, sql);
  assert.deepEqual(await cq("SELECT * FROM t ORDER BY pk"), await q("SELECT * FROM t ORDER BY pk"));
  assert.deepEqual(
    await cq("SELECT * FROM notes ORDER BY 1, 2"),
    await q("SELECT * FROM notes ORDER BY 1, 2"),
  );
  await check("clone", cq);

  // Uncommitted: a rename in the working set, and a change after it.
  await q("ALTER TABLE t RENAME COLUMN b TO c");
  await q("UPDATE t SET c = 'working' WHERE pk = 2");
  assert.deepEqual(
    await q("SELECT pk, c FROM t AS OF 'HEAD~4' ORDER BY pk"),
    renamed(states[0].t, { b: "c" }).map((r) => ({ pk: r.pk, c: r.c })),
  );
  assert.deepEqual(await q("SELECT to_c, from_c FROM dolt_diff('HEAD', 'WORKING', 't')"), [
    { to_c: "working", from_c: states[4].t.find((r) => r.pk === 2)?.b },
  ]);
  assert.deepEqual(await q("SELECT pk, c FROM t AS OF 'HEAD~4' WHERE pk = 1"), [
    { pk: 1, c: states[0].t.find((r) => r.pk === 1)?.b },
  ]);
});

test("a rename onto a dropped column's name: the dropped column's old values stay out of today's", async () => {
  const admin = await sessions.open(strata);
  await rowsOf(admin, "CREATE DATABASE renames_dropped");
  const db = await sessions.open(strata, "renames_dropped");
  const q = (sql: string) => rowsOf(db, sql);
  await q("CREATE TABLE u (id int PRIMARY KEY, x text, y text)");
  await q("INSERT INTO u VALUES (1, 'x1', 'y1'), (2, 'x2', 'y2')");
  await q("SELECT dolt_commit('-Am', 'c1')");
  await q("ALTER TABLE u DROP COLUMN x");
  await q("ALTER TABLE u RENAME COLUMN y TO x"); // x is now what was y
  await q("UPDATE u SET x = 'y2 changed' WHERE id = 2");
  await q("SELECT dolt_commit('-Am', 'c2')");
  await q("ALTER TABLE u RENAME COLUMN x TO z");
  await q("ALTER TABLE u ADD COLUMN x text"); // a third column named x, new
  await q("INSERT INTO u VALUES (3, 'z3', 'x3')");
  await q("SELECT dolt_commit('-Am', 'c3')");

  // As of c1, today's z holds what y held, and today's x (new since) holds nothing.
  const c1 = [
    { id: 1, z: "y1", x: null },
    { id: 2, z: "y2", x: null },
  ];
  assert.deepEqual(await q("SELECT * FROM u AS OF 'HEAD~2' ORDER BY id"), c1);
  assert.deepEqual(await q("SELECT * FROM u AS OF 'HEAD~2' WHERE id = 2"), [c1[1]]);
  assert.deepEqual(await q("SELECT * FROM u AS OF 'HEAD~1' ORDER BY id"), [
    { id: 1, z: "y1", x: null },
    { id: 2, z: "y2 changed", x: null },
  ]);
  assert.deepEqual(await q("SELECT id, z, x FROM dolt_history_u ORDER BY id, z"), [
    { id: 1, z: "y1", x: null },
    { id: 2, z: "y2", x: null },
    { id: 2, z: "y2 changed", x: null },
    { id: 3, z: "z3", x: "x3" },
  ]);
  assert.deepEqual(
    await q("SELECT from_z, from_x, to_z, to_x, diff_type FROM dolt_diff('HEAD~2', 'HEAD~1', 'u')"),
    [{ from_z: "y2", from_x: null, to_z: "y2 changed", to_x: null, diff_type: "modified" }],
  );
});
