import assert from "node:assert/strict";
import { test } from "node:test";
import { VariableError } from "../../src/config/variables.ts";
import { findRemoteCall } from "../../src/frontdoor/remote-call.ts";
import {
  droppedDatabases,
  loadParser,
  type RewriteCatalog,
  rewriteSql,
} from "../../src/frontdoor/rewrite.ts";

/** A catalog where table t is keyed by id, pair by (a, b), and u has no key. */
const catalog: RewriteCatalog = {
  asOfKeys: async (_schema, table) => (table === "t" ? ["id"] : table === "pair" ? ["a", "b"] : undefined),
};
const sql = async (text: string) => (await rewriteSql(text, catalog))?.sql;

test("queries without Strata syntax pass through untouched", async () => {
  for (const text of [
    "SELECT 1",
    "SELECT * FROM dolt_log",
    "SELECT 'FROM t AS OF ''x''' AS s",
    "SELECT * FROM t /* AS OF 'HEAD' */",
    "SELECT * FROM t -- AS OF 'HEAD'\n",
    "SELECT * FROM t FOR UPDATE OF t",
    "SET search_path TO public",
    "SELECT current_setting('work_mem')",
    "SELECT 'unterminated",
    // Outside a FROM list, `x AS OF` is a column aliased "of": Postgres's syntax error, not a call.
    "SELECT x AS OF 'HEAD' FROM t",
    "SELECT count(x AS OF 'HEAD') FROM t",
    "SELECT * FROM t WHERE x AS OF 'HEAD'",
    "SELECT * FROM t JOIN u ON t.k = u.k AS OF 'HEAD'",
    "UPDATE t SET v = x AS OF 'HEAD'",
    "SELECT * FROM t; SELECT x AS OF 'HEAD'",
  ])
    assert.equal(await sql(text), undefined, text);
});

test("AS OF in every FROM list: joins, parentheses, subqueries, after other clauses", async () => {
  assert.equal(
    await sql("SELECT * FROM (u AS OF 'HEAD' JOIN w USING (k)), v AS OF 'HEAD~1'"),
    `SELECT * FROM ("dolt_as_of_u"('HEAD') AS "u" JOIN w USING (k)), "dolt_as_of_v"('HEAD~1') AS "v"`,
  );
  assert.equal(
    await sql(
      "SELECT (SELECT max(v) FROM u AS OF 'HEAD') AS m, a FROM w WHERE a IN (SELECT a FROM v AS OF 'HEAD')",
    ),
    `SELECT (SELECT max(v) FROM "dolt_as_of_u"('HEAD') AS "u") AS m, a FROM w WHERE a IN (SELECT a FROM "dolt_as_of_v"('HEAD') AS "v")`,
  );
  assert.equal(
    await sql("UPDATE w SET a = 1 FROM u AS OF 'HEAD' WHERE w.k = u.k"),
    `UPDATE w SET a = 1 FROM "dolt_as_of_u"('HEAD') AS "u" WHERE w.k = u.k`,
  );
});

test("AS OF becomes the table's as-of function, under the table's name or the alias given", async () => {
  assert.equal(await sql("SELECT * FROM u AS OF 'HEAD~3'"), `SELECT * FROM "dolt_as_of_u"('HEAD~3') AS "u"`);
  assert.equal(
    await sql("SELECT x.v FROM u AS OF 'abc' AS x ORDER BY 1"),
    `SELECT x.v FROM "dolt_as_of_u"('abc') AS x ORDER BY 1`,
  );
  assert.equal(await sql("select * from u as of $1 x"), `select * from "dolt_as_of_u"($1) x`);
  assert.equal(
    await sql(`SELECT * FROM "My Schema"."Odd" AS OF '2026-01-01 00:00:00+00'`),
    `SELECT * FROM "My Schema"."dolt_as_of_Odd"('2026-01-01 00:00:00+00') AS "Odd"`,
  );
  assert.equal(
    await sql("SELECT * FROM u AS OF 'HEAD' JOIN w AS OF 'HEAD~1' ON u.k = w.k"),
    `SELECT * FROM "dolt_as_of_u"('HEAD') AS "u" JOIN "dolt_as_of_w"('HEAD~1') AS "w" ON u.k = w.k`,
  );
});

test("a lookup of every key column by equality uses the keyed as-of form; other queries do not", async () => {
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD~1' WHERE id = 5"),
    `SELECT * FROM "dolt_as_of_t"('HEAD~1', 5) AS "t" WHERE id = 5`,
  );
  assert.equal(
    await sql("SELECT v FROM t AS OF $1 AS x WHERE x.id = $2 AND v > 0"),
    `SELECT v FROM "dolt_as_of_t"($1, $2) AS x WHERE x.id = $2 AND v > 0`,
  );
  assert.equal(
    await sql("SELECT * FROM pair AS OF 'HEAD' WHERE b = 'x' AND a = -2"),
    `SELECT * FROM "dolt_as_of_pair"('HEAD', -2, 'x') AS "pair" WHERE b = 'x' AND a = -2`,
  );
  // Each branch of a UNION / EXCEPT on its own (a row's two versions side by side).
  assert.equal(
    await sql(
      "SELECT * FROM t AS OF 'HEAD' WHERE id = 1 UNION ALL SELECT * FROM t AS OF 'HEAD~1' WHERE id = 1 EXCEPT SELECT * FROM t AS OF 'HEAD~2' WHERE id > 1",
    ),
    `SELECT * FROM "dolt_as_of_t"('HEAD', 1) AS "t" WHERE id = 1 UNION ALL SELECT * FROM "dolt_as_of_t"('HEAD~1', 1) AS "t" WHERE id = 1 EXCEPT SELECT * FROM "dolt_as_of_t"('HEAD~2') AS "t" WHERE id > 1`,
  );
  // Not every key column, an OR, or a join: the whole table as of then, filtered as written.
  assert.equal(
    await sql("SELECT * FROM pair AS OF 'HEAD' WHERE a = 1"),
    `SELECT * FROM "dolt_as_of_pair"('HEAD') AS "pair" WHERE a = 1`,
  );
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD' WHERE id = 1 OR id = 2"),
    `SELECT * FROM "dolt_as_of_t"('HEAD') AS "t" WHERE id = 1 OR id = 2`,
  );
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD', u WHERE id = 1"),
    `SELECT * FROM "dolt_as_of_t"('HEAD') AS "t", u WHERE id = 1`,
  );
});

test("dolt_diff(from, to, table) becomes the table's typed diff function", async () => {
  assert.equal(
    await sql("SELECT * FROM dolt_diff('HEAD~', 'HEAD', 'orders')"),
    `SELECT * FROM "dolt_diff_orders"('HEAD~', 'HEAD')`,
  );
  assert.equal(
    await sql("SELECT count(*) FROM dolt_diff('a1', 'b2', 'sales.orders') WHERE diff_type = 'added'"),
    `SELECT count(*) FROM "sales"."dolt_diff_orders"('a1', 'b2') WHERE diff_type = 'added'`,
  );
  // A table named by a parameter: the store's jsonb form answers.
  assert.equal(await sql("SELECT * FROM dolt_diff($1, $2, $3)"), undefined);
});

test("system variables: SHOW, SET, RESET, current_setting and set_config map onto strata.* settings", async () => {
  assert.equal(
    await sql("SHOW dolt_transaction_commit"),
    `SELECT dolt.setting('dolt_transaction_commit') AS "dolt_transaction_commit"`,
  );
  assert.equal(await sql("SET dolt_async_replication = on"), "SET strata.dolt_async_replication TO '1'");
  assert.equal(
    await sql("SET LOCAL dolt_replicate_heads TO 'main,feature-*'"),
    "SET LOCAL strata.dolt_replicate_heads TO 'main,feature-*'",
  );
  assert.equal(
    await sql("SET SESSION dolt_async_replication TO DEFAULT"),
    "SET strata.dolt_async_replication TO DEFAULT",
  );
  assert.equal(await sql("RESET dolt_async_replication"), "RESET strata.dolt_async_replication");
  assert.equal(
    await sql(
      "SELECT current_setting('dolt_transaction_commit'), current_setting('dolt_async_replication', true)",
    ),
    "SELECT dolt.setting('dolt_transaction_commit'), dolt.setting('dolt_async_replication')",
  );
  assert.equal(
    await sql("SELECT set_config('dolt_async_replication', '1', false)"),
    "SELECT set_config('strata.dolt_async_replication', '1', false)",
  );
  assert.equal(
    await sql("SET dolt_async_replication TO 1; SELECT * FROM u AS OF 'HEAD'"),
    `SET strata.dolt_async_replication TO '1'; SELECT * FROM "dolt_as_of_u"('HEAD') AS "u"`,
  );
});

test("ALTER SYSTEM: the reference's forms, persisted under strata.*, and what to reload", async () => {
  const cases: [string, string, { name: string; value: string | null }][] = [
    [
      "ALTER SYSTEM SET dolt_replicate_to_remote 'origin';",
      "ALTER SYSTEM SET strata.dolt_replicate_to_remote TO 'origin';",
      { name: "strata.dolt_replicate_to_remote", value: "origin" },
    ],
    [
      "ALTER SYSTEM SET dolt_transaction_commit TO 1;",
      "ALTER SYSTEM SET strata.dolt_transaction_commit TO '1';",
      { name: "strata.dolt_transaction_commit", value: "1" },
    ],
    [
      'ALTER SYSTEM SET dolt_replicate_all_heads TO 1"',
      "ALTER SYSTEM SET strata.dolt_replicate_all_heads TO '1'",
      { name: "strata.dolt_replicate_all_heads", value: "1" },
    ],
    [
      "ALTER SYSTEM SET dolt_replication_remote_url_template = 'file:///share/doltRemotes/{database}'; -- file based remote",
      "ALTER SYSTEM SET strata.dolt_replication_remote_url_template TO 'file:///share/doltRemotes/{database}'; -- file based remote",
      { name: "strata.dolt_replication_remote_url_template", value: "file:///share/doltRemotes/{database}" },
    ],
    [
      "ALTER SYSTEM SET dolt_replicate_to_remote '';",
      "ALTER SYSTEM SET strata.dolt_replicate_to_remote TO '';",
      { name: "strata.dolt_replicate_to_remote", value: "" },
    ],
    [
      "alter system reset dolt_async_replication",
      "ALTER SYSTEM RESET strata.dolt_async_replication",
      { name: "strata.dolt_async_replication", value: null },
    ],
  ];
  for (const [input, output, altered] of cases) {
    const result = await rewriteSql(input, catalog);
    assert.equal(result?.sql, output, input);
    assert.deepEqual(result?.altersSystem, [altered], input);
  }
  assert.equal(await sql("ALTER SYSTEM SET work_mem = '64MB'"), undefined);
});

test("a bad variable name or value is refused with what is wrong and what to write", async () => {
  const refused = async (text: string) => {
    const err = await rewriteSql(text, catalog).then(
      () => assert.fail(`${text} should be refused`),
      (e: unknown) => e,
    );
    assert.ok(err instanceof VariableError, String(err));
    return err;
  };
  const unknown = await refused("SET dolt_no_such_thing = 1");
  assert.equal(unknown.code, "42704");
  assert.match(unknown.message, /unrecognized configuration parameter "dolt_no_such_thing"/);
  assert.match(unknown.hint, /dolt_transaction_commit/);
  const bad = await refused("ALTER SYSTEM SET dolt_async_replication TO 'sometimes'");
  assert.equal(bad.code, "22023");
  assert.match(bad.hint, /boolean/);
  assert.match(
    (await refused("ALTER SYSTEM SET dolt_replication_remote_url_template = 'file:///x'")).message,
    /no \{database\}/,
  );
  assert.match((await refused("SHOW dolt_bogus")).message, /dolt_bogus/);
});

test("values in any string literal Postgres reads: E'' escapes, dollar quotes", async () => {
  assert.equal(
    await sql("SET dolt_replicate_heads TO E'ma\\'in,d\\x65v'"),
    "SET strata.dolt_replicate_heads TO 'ma''in,dev'",
  );
  assert.equal(
    await sql("SET dolt_replicate_heads TO $$main$$"),
    "SET strata.dolt_replicate_heads TO 'main'",
  );
  assert.equal(
    await sql("SET dolt_replicate_heads TO $h$main,it's$h$"),
    "SET strata.dolt_replicate_heads TO 'main,it''s'",
  );
  const altered = await rewriteSql("ALTER SYSTEM SET dolt_replicate_to_remote E'orig\\u0069n'", catalog);
  assert.deepEqual(altered?.altersSystem, [{ name: "strata.dolt_replicate_to_remote", value: "origin" }]);
  // Octal and hex escapes are bytes: two of them make one UTF-8 character.
  assert.equal(
    await sql("SET dolt_replicate_heads TO E'caf\\303\\251'"),
    "SET strata.dolt_replicate_heads TO 'café'",
  );
  assert.equal(
    await sql("SELECT current_setting(E'dolt_transaction_commit')"),
    "SELECT dolt.setting('dolt_transaction_commit')",
  );
  // Escapes that make no valid UTF-8, or a NUL: the scanner refuses them, so the statement goes
  // to the store as it is, which refuses it too.
  for (const bad of ["E'\\xc3'", "E'a\\0b'", "E'\\U00110000'"])
    assert.equal(await sql(`SET dolt_replicate_heads TO ${bad}`), undefined, bad);
});

test("values in U&'' literals: Unicode escapes, surrogate pairs, a UESCAPE character", async () => {
  assert.equal(
    await sql("SET dolt_replicate_heads TO U&'caf\\00e9,\\+01F600,\\d83d\\de00,a\\\\b,it''s'"),
    "SET strata.dolt_replicate_heads TO 'café,😀,😀,a\\b,it''s'",
  );
  assert.equal(
    await sql("SET dolt_replicate_heads TO u&'ma!0069n' UESCAPE '!'"),
    "SET strata.dolt_replicate_heads TO 'main'",
  );
  assert.equal(
    await sql("SELECT current_setting(U&'dolt_transaction\\005fcommit')"),
    "SELECT dolt.setting('dolt_transaction_commit')",
  );
  // What Postgres refuses is refused as an invalid value: a bad escape, a lone surrogate, NUL, a
  // hex digit as the escape character.
  for (const bad of [
    "U&'\\00'",
    "U&'\\d83d'",
    "U&'\\d83dx'",
    "U&'\\0000'",
    "U&'\\+110000'",
    "U&'a' UESCAPE 'a'",
  ])
    await assert.rejects(sql(`SET dolt_replicate_heads TO ${bad}`), (e: VariableError) => {
      assert.equal(e.code, "22023", bad);
      assert.ok(e.message.startsWith(`invalid value for dolt_replicate_heads: ${bad}`), e.message);
      return true;
    });
});

test("text before Strata syntax that is not ASCII: the rewrite is made where the syntax is", async () => {
  // libpg-query counts UTF-8 bytes: é is 2, 😀 4 (and 2 UTF-16 units).
  assert.equal(
    await sql("SELECT 'é' AS a, * FROM t AS OF 'HEAD' WHERE id = 1"),
    `SELECT 'é' AS a, * FROM "dolt_as_of_t"('HEAD', 1) AS "t" WHERE id = 1`,
  );
  assert.equal(
    await sql("SELECT '😀', current_setting('dolt_transaction_commit')"),
    "SELECT '😀', dolt.setting('dolt_transaction_commit')",
  );
  assert.equal(
    await sql("/* é */ SET dolt_async_replication TO 1"),
    "/* é */ SET strata.dolt_async_replication TO '1'",
  );
});

test("comments around or between the tokens of Strata syntax: matched around, kept outside a replaced statement", async () => {
  assert.equal(
    await sql("/* app */ SHOW dolt_transaction_commit -- c"),
    `/* app */ SELECT dolt.setting('dolt_transaction_commit') AS "dolt_transaction_commit" -- c`,
  );
  assert.equal(
    await sql("SET dolt_async_replication TO /* on */ 1 -- c"),
    "SET strata.dolt_async_replication TO '1' -- c",
  );
  assert.equal(
    await sql("SELECT * FROM u AS /* c */ OF 'HEAD' /* c */ x -- AS OF 'y'"),
    `SELECT * FROM "dolt_as_of_u"('HEAD') /* c */ x -- AS OF 'y'`,
  );
});

test("a column list on the alias renames the columns: no keyed lookup by name", async () => {
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD' AS x(k, id) WHERE id = 1"),
    `SELECT * FROM "dolt_as_of_t"('HEAD') AS x(k, id) WHERE id = 1`,
  );
});

test("deep nesting around AS OF: the keyed form, without running out of stack", async () => {
  const terms = `${"(id = 1 AND ".repeat(700)}true${")".repeat(700)}`;
  assert.equal(
    await sql(`SELECT * FROM t AS OF 'HEAD' WHERE ${terms}`),
    `SELECT * FROM "dolt_as_of_t"('HEAD', 1) AS "t" WHERE ${terms}`,
  );
  const open = "(SELECT * FROM ".repeat(1000);
  const close = ") s".repeat(1000);
  assert.equal(
    await sql(`SELECT * FROM ${open}t AS OF 'HEAD' WHERE id = 1${close}`),
    `SELECT * FROM ${open}"dolt_as_of_t"('HEAD', 1) AS "t" WHERE id = 1${close}`,
  );
});

test("current_setting: the whole call to its own closing parenthesis; unclosed calls in linear time", async () => {
  assert.equal(
    await sql("SELECT current_setting('dolt_async_replication', (true))"),
    "SELECT dolt.setting('dolt_async_replication')",
  );
  const start = performance.now();
  assert.equal(
    await sql(`SELECT ${"current_setting('dolt_transaction_commit', ".repeat(16_000)}`),
    undefined,
  );
  assert.ok(performance.now() - start < 2000);
});

test("dolt_diff is the three-argument form only with exactly three literal arguments", async () => {
  assert.equal(await sql("SELECT * FROM dolt_diff('HEAD', 'WORKING' || 't')"), undefined);
  assert.equal(await sql("SELECT * FROM dolt_diff('HEAD' || 'x', 't')"), undefined);
});

test("Postgres's current_setting and set_config, qualified by pg_catalog or not; another schema's are left alone", async () => {
  assert.equal(
    await sql("SELECT pg_catalog.current_setting('dolt_transaction_commit')"),
    "SELECT dolt.setting('dolt_transaction_commit')",
  );
  assert.equal(
    await sql("SELECT pg_catalog.set_config('dolt_async_replication', '1', false)"),
    "SELECT pg_catalog.set_config('strata.dolt_async_replication', '1', false)",
  );
  assert.equal(await sql("SELECT app.current_setting('dolt_transaction_commit')"), undefined);
  assert.equal(await sql("SELECT app.set_config('dolt_async_replication', '1', false)"), undefined);
});

test("key values libpg-query leaves out of its JSON ($0, ''): never $undefined", async () => {
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD' WHERE id = $0"),
    `SELECT * FROM "dolt_as_of_t"('HEAD') AS "t" WHERE id = $0`,
  );
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD' WHERE id = ''"),
    `SELECT * FROM "dolt_as_of_t"('HEAD', '') AS "t" WHERE id = ''`,
  );
  assert.equal(
    await sql("SELECT * FROM t AS OF 'HEAD' WHERE id = 0"),
    `SELECT * FROM "dolt_as_of_t"('HEAD', 0) AS "t" WHERE id = 0`,
  );
});

test("the front door's own calls are found with their literal arguments, and the name given to their result", async () => {
  await loadParser();
  assert.deepEqual(findRemoteCall("SELECT dolt_push('origin', 'main')"), {
    kind: "remote",
    fn: "dolt_push",
    args: ["origin", "main"],
    alias: undefined,
  });
  assert.deepEqual(findRemoteCall("select dolt.dolt_assume_cluster_role('primary', 2) AS result"), {
    kind: "cluster",
    fn: "dolt_assume_cluster_role",
    args: ["primary", "2"],
    star: false,
    alias: "result",
  });
  assert.equal(
    findRemoteCall("SELECT * FROM dolt_cluster_transition_to_standby(2, 1) AS t")?.alias,
    undefined,
  );
  for (const text of [
    "SELECT dolt_push($1, 'main')",
    "SELECT dolt_push('origin', 'main'), 1",
    "SELECT 'dolt_push(''origin'')'",
    "SELECT other.dolt_push('origin')",
    "SELECT * FROM dolt_push('origin')",
  ])
    assert.equal(findRemoteCall(text), undefined, text);
});

test("the databases a statement drops, found by the parser", async () => {
  assert.deepEqual(await droppedDatabases('drop database a; DROP DATABASE IF EXISTS "My/db" WITH (FORCE)'), [
    "a",
    "My/db",
  ]);
  for (const other of [
    "SELECT 'drop database x'",
    "-- drop database x\nSELECT 1",
    "DROP DATABASE",
    "DROP TABLE d",
  ])
    assert.deepEqual(await droppedDatabases(other), [], other);
});
