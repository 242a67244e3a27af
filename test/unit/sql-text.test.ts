import assert from "node:assert/strict";
import { test } from "node:test";
import { mayCallRemote } from "../../src/frontdoor/remote-call.ts";
import { mayRewrite } from "../../src/frontdoor/rewrite.ts";
import { codeOf, LEXED_MAX_CHARS, skipQuoted } from "../../src/frontdoor/sql-text.ts";

test("codeOf: literals and comments become a space; quoted identifiers and parameters stay", () => {
  const cases: [string, string][] = [
    ["SELECT 'as of', 1", "SELECT  , 1"],
    ["SELECT 'it''s', x", "SELECT  , x"],
    ["SELECT E'a\\'b', x", "SELECT E , x"],
    ["SELECT e'\\\\', x", "SELECT e , x"],
    ["SELECT $$ dolt_x $$, $q$ a $$ b $q$, $1", "SELECT  ,  , $1"],
    ["SELECT a$b$c, $2", "SELECT a$b$c, $2"],
    ['SELECT "dolt_x" FROM "it\'s"', 'SELECT "dolt_x" FROM "it\'s"'],
    ["SELECT 1 -- dolt_x\n, 2", "SELECT 1  , 2"],
    ["SELECT /* a /* nested */ still */ 1", "SELECT   1"],
    ["SELECT 'unclosed", "SELECT  "],
    ["SELECT /* unclosed", "SELECT  "],
    ["t AS /* then */ OF 'HEAD'", "t AS   OF  "],
  ];
  for (const [sql, code] of cases) assert.equal(codeOf(sql), code, sql);
  assert.equal(skipQuoted("x 'y' z", 0), 0, "nothing quoted starts at a plain character");
  assert.equal(skipQuoted("x 'y' z", 2), 5);
});

test("the front door's cheap tests look at the code: Strata words in literals and comments cost no scan", () => {
  for (const sql of [
    "SELECT * FROM t AS OF 'HEAD'",
    "SELECT * FROM t AS /* c */ OF 'HEAD'",
    "SHOW dolt_transaction_commit",
    'SHOW "dolt_transaction_commit"',
    "SELECT current_setting('dolt_transaction_commit')",
    "SELECT set_config('dolt_async_replication', '1', false)",
    "ALTER SYSTEM SET dolt_async_replication TO 1",
    "SELECT * FROM dolt_diff('HEAD~1', 'HEAD', 't')",
  ])
    assert.equal(mayRewrite(sql), true, sql);
  for (const sql of [
    "INSERT INTO notes VALUES ('as of today, dolt_log says')",
    "SELECT 1 -- as of dolt_x",
    "SELECT $$ALTER SYSTEM SET dolt_x$$",
    "SELECT 'a' AS of_what", // no OF word
  ])
    assert.equal(mayRewrite(sql), false, sql);
  assert.equal(mayCallRemote("SELECT dolt_push('origin', 'main')"), true);
  assert.equal(mayCallRemote("INSERT INTO notes VALUES ('run dolt_push(origin)')"), false);
  // Past the limit, nothing is lexed or scanned: the statement goes to the store as sent.
  const huge = `SELECT * FROM t AS OF 'HEAD' WHERE v = '${"x".repeat(LEXED_MAX_CHARS)}'`;
  assert.equal(mayRewrite(huge), false);
});

test("codeOf is linear: 10 MB of values with Strata words in them", () => {
  const row = "(1, 'the best of times, as of now, dolt_x', E'it\\'s', $$x$$),";
  const sql = `INSERT INTO t VALUES ${row.repeat(Math.floor(10_000_000 / row.length))}(2, 'x', '', '')`;
  const started = performance.now();
  assert.equal(mayRewrite(sql), false);
  const ms = performance.now() - started;
  // About 120 ms here (a bound for runaway cost on a loaded machine, not a speed target).
  assert.ok(ms < 10_000, `${ms.toFixed(0)} ms`);
});
