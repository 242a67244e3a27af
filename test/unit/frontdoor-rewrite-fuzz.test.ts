// Fuzzing the front door's rewriter (src/frontdoor/rewrite.ts) and the pure helpers on its error
// path (remote-call.ts, error-statement.ts): statements from the README's, docs' and unit tests'
// Strata SQL, truncated at every character, mutated at random (flips, quotes, dollar quotes,
// comments, Unicode, control characters, long names, deep nesting, AS OF in odd places, several
// statements, $n parameters). For every input the rewriter must return a rewrite that parses, or
// nothing, or throw a VariableError (which the session turns into an ErrorResponse naming cause
// and fix), within 5 seconds (a bound for runaway cost, not speed: the suite runs on a loaded
// machine); never a TypeError or RangeError of its own.
//
// The seed is printed; STRATA_FUZZ_SEED=<n> repeats a run. The defects the first run found (all
// fixed) are kept as tests at the end.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseSync, scanSync } from "libpg-query";
import { VariableError } from "../../src/config/variables.ts";
import { errorStatement, highestParameter } from "../../src/frontdoor/error-statement.ts";
import { findRemoteCall } from "../../src/frontdoor/remote-call.ts";
import { loadParser, type RewriteCatalog, type Rewritten, rewriteSql } from "../../src/frontdoor/rewrite.ts";
import { fuzzSeed, prng, type Rng } from "../support/fuzz.ts";

/** Longer than this for one statement is runaway cost (a quadratic scan took seconds to minutes). */
const SLOW_MS = 5_000;
const SEED = fuzzSeed("frontdoor rewrite fuzz");

/** Keys as the store would give them: t(id), pair(a, b), accounts(id), test(pk); others keyless. */
const KEYS: Record<string, string[]> = { t: ["id"], pair: ["a", "b"], accounts: ["id"], test: ["pk"] };
const catalog: RewriteCatalog = {
  asOfKeys: async (schema, table) => {
    assert.ok(schema === undefined || typeof schema === "string");
    assert.equal(typeof table, "string");
    return KEYS[table];
  },
};

/** Strata SQL from README.md, docs/*.md and test/unit/frontdoor-rewrite.test.ts. */
const CORPUS: readonly string[] = [
  "select * from test as of 'HEAD~1';",
  "select to_c1, from_c1, diff_type from dolt_diff('HEAD', 'WORKING', 'test');",
  "select dolt_commit('-Am', 'first commit');",
  "select * from dolt_status;",
  "SELECT * FROM dolt_log;",
  "SELECT * FROM dolt_history_mytable;",
  "SELECT * FROM accounts AS OF 'HEAD~3';",
  "SELECT * FROM accounts AS OF 'HEAD~3' WHERE id = 42;",
  "SELECT a.* FROM accounts AS OF $1 AS a WHERE a.id = $2;",
  "SELECT * FROM dolt_as_of_accounts('HEAD~3', 42);",
  "SELECT * FROM dolt_diff('HEAD~5', 'HEAD', 'accounts');",
  "SELECT * FROM dolt.dolt_diff('HEAD~5', 'HEAD', 'accounts');",
  "SELECT * FROM dolt_diff_accounts WHERE to_commit = 'k3v1...';",
  "SELECT * FROM accounts AS OF 'lsn:0/16B3748' WHERE id = 1",
  "SELECT * FROM accounts AS OF '2026-11-22 15:00:00+00'",
  "SELECT * FROM u AS OF 'HEAD~3'",
  "SELECT x.v FROM u AS OF 'abc' AS x ORDER BY 1",
  "select * from u as of $1 x",
  `SELECT * FROM "My Schema"."Odd" AS OF '2026-01-01 00:00:00+00'`,
  "SELECT * FROM u AS OF 'HEAD' JOIN w AS OF 'HEAD~1' ON u.k = w.k",
  "SELECT v FROM t AS OF $1 AS x WHERE x.id = $2 AND v > 0",
  "SELECT * FROM pair AS OF 'HEAD' WHERE b = 'x' AND a = -2",
  "SELECT * FROM t AS OF 'HEAD' WHERE id = 1 OR id = 2",
  "SELECT * FROM t AS OF 'HEAD', u WHERE id = 1",
  "SELECT count(*) FROM dolt_diff('a1', 'b2', 'sales.orders') WHERE diff_type = 'added'",
  "SELECT * FROM dolt_diff($1, $2, $3)",
  "SHOW dolt_transaction_commit",
  "SHOW dolt_cluster_role;",
  "SHOW dolt_cluster_role_epoch;",
  "SET dolt_async_replication = on",
  "SET LOCAL dolt_replicate_heads TO 'main,feature-*'",
  "SET SESSION dolt_async_replication TO DEFAULT",
  "RESET dolt_async_replication",
  "SET strata_allow_replica_writes TO 1",
  "SELECT current_setting('dolt_transaction_commit'), current_setting('dolt_async_replication', true)",
  "SELECT set_config('dolt_async_replication', '1', false)",
  "SET dolt_async_replication TO 1; SELECT * FROM u AS OF 'HEAD'",
  "ALTER SYSTEM SET dolt_replicate_to_remote 'origin';",
  "ALTER SYSTEM SET dolt_transaction_commit TO 1;",
  'ALTER SYSTEM SET dolt_replicate_all_heads TO 1"',
  "ALTER SYSTEM SET dolt_replication_remote_url_template = 'file:///share/doltRemotes/{database}'; -- file based remote",
  "ALTER SYSTEM SET dolt_replication_remote_url_template = 's3://my-bucket/strata/{database}';",
  "ALTER SYSTEM SET dolt_cluster_ack_writes_timeout_secs TO 5;   -- 0 (default): commits do not wait",
  "alter system reset dolt_async_replication",
  "ALTER SYSTEM SET work_mem = '64MB'",
  "SET dolt_no_such_thing = 1",
  "ALTER SYSTEM SET dolt_async_replication TO 'sometimes'",
  "SHOW dolt_bogus",
  "SELECT 'FROM t AS OF ''x''' AS s",
  "SELECT * FROM t /* AS OF 'HEAD' */",
  "SELECT * FROM t -- AS OF 'HEAD'\n",
  "SELECT * FROM t FOR UPDATE OF t",
  "SELECT 'unterminated",
  "SELECT dolt_push('origin', 'main')",
  "select dolt.dolt_assume_cluster_role('primary', 2) AS result",
  "SELECT * FROM dolt_cluster_transition_to_standby(2, 1) AS t",
  "select dolt_checkout('-b', 'branch1');",
  "SELECT dolt_remote('add', 'origin', 'file:///var/share/myremote/');",
  "select dolt_clone('file:///var/share/myremote/', 'read_replica');",
  "SELECT * FROM dolt_branches",
  'USE "postgres/feature"',
  "create table test (pk int, c1 int, primary key(pk));",
  "insert into test values (0,0);",
  "update test set c1 = 1;",
  "SELECT dolt.commit_hash('HEAD~2')",
  "WITH c AS (SELECT * FROM t AS OF 'HEAD' WHERE id = 1) SELECT * FROM c",
  "SELECT (SELECT v FROM t AS OF 'HEAD' WHERE id = o.k) FROM o",
  "SELECT * FROM o WHERE k IN (SELECT id FROM t AS OF $1 WHERE id = $2)",
  "SELECT * FROM t AS OF 'HEAD' x LEFT JOIN pair AS OF 'HEAD~1' p ON p.a = x.id WHERE x.id = 3",
];

const ALPHABET: readonly string[] = [
  ..."abcXYZ019 _.,;:()[]{}*+-/<>=!~^%&|@#?`\\'\"$\t\n\r",
  "\u0001",
  "\u0007",
  "\u001b",
  "\u007f",
  "é",
  "ß",
  "Ω",
  "中",
  "😀",
  "\u00a0",
  "\u2028",
  "\ufeff",
  "\u0301",
  "\ufffd", // what the session decodes invalid UTF-8 into (never a lone surrogate)
];
const SNIPPETS: readonly string[] = [
  "'",
  "''",
  '"',
  '""',
  "$$",
  "$a$",
  "$fz$x$fz$",
  "E'\\''",
  "U&'\\0041'",
  'U&"\\0041"',
  "B'01'",
  "X'ff'",
  "/*",
  "*/",
  "/* é */",
  "/* /* nested */ */",
  "--",
  "-- é\n",
  "\n",
  ";",
  "(",
  ")",
  ",",
  ".",
  "::text",
  " AS OF 'HEAD' ",
  " AS OF $1 ",
  " AS OF 'HEAD~1' AS x ",
  " as of 'é' ",
  " AS OF ",
  " AS ",
  " OF ",
  " $1 ",
  " $0 ",
  " $65536 ",
  " $99999999999 ",
  " dolt_ ",
  " strata_ ",
  " current_setting('dolt_transaction_commit') ",
  " set_config('dolt_async_replication', '1', false) ",
  " dolt_diff('HEAD', 'WORKING', 't') ",
  " WHERE id = 1 ",
  " AND id = $2 ",
  " JOIN u AS OF 'HEAD' ON true ",
  " UNION ALL SELECT * FROM t AS OF 'HEAD' ",
  "é",
  "😀",
  "\u0001",
  "\ufffd",
  "ALTER SYSTEM ",
  "SET ",
  "SHOW ",
];
const WRAPPERS: readonly ((x: string, y: string) => string)[] = [
  (x) => `SELECT * FROM (${x}) s`,
  (x) => `WITH c AS (${x}) SELECT * FROM c`,
  (x) => `EXPLAIN ${x}`,
  (x) => `(${x})`,
  (x, y) => `${x}; ${y}`,
  (x, y) => `${x}\n;\n${y};`,
  (x, y) => `${x} UNION ALL ${y}`,
  (x) => `PREPARE p AS ${x}`,
  (x) => `DO $$ BEGIN ${x}; END $$`,
  (x) => `CREATE VIEW v AS ${x}`,
  (x) => `SELECT EXISTS (${x})`,
  (x) => `SELECT * FROM t AS OF 'HEAD' WHERE id IN (${x})`,
  (x) => x.toUpperCase(),
  (x) => x.toLowerCase(),
  (x) => x.replace(/ /g, "/**/"),
  (x) => x.replace(/ /g, "\n\t "),
  (x) => `/* é ü 😀 */ ${x}`,
];

/** One random change to `sql`. */
function mutate(rng: Rng, sql: string): string {
  const at = rng.int(sql.length + 1);
  switch (rng.int(11)) {
    case 0:
      return sql.slice(0, at);
    case 1:
      return sql.slice(at);
    case 2:
      return sql.slice(0, at) + rng.pick(ALPHABET) + sql.slice(at + 1);
    case 3:
      return sql.slice(0, at) + rng.pick(ALPHABET) + sql.slice(at);
    case 4:
    case 5:
      return sql.slice(0, at) + rng.pick(SNIPPETS) + sql.slice(at);
    case 6: {
      const end = at + rng.int(12);
      return sql.slice(0, at) + sql.slice(end);
    }
    case 7:
      return rng.pick(WRAPPERS)(sql, rng.pick(CORPUS));
    case 8:
      return atTokens(rng, sql);
    case 9: {
      // A long name, or a long quoted name with quotes in it.
      const name = rng.next() < 0.5 ? "x".repeat(1 + rng.int(5000)) : `"${'a""'.repeat(1 + rng.int(2000))}"`;
      return sql.slice(0, at) + name + sql.slice(at);
    }
    default: {
      const depth = 1 + rng.int(300);
      return `SELECT ${"(".repeat(depth)}${sql}${")".repeat(rng.next() < 0.8 ? depth : rng.int(depth))}`;
    }
  }
}

/** Changes at token boundaries: AS OF after a name, a literal in another form, a token dropped. */
function atTokens(rng: Rng, sql: string): string {
  let tokens: { start: number; end: number; text: string; tokenName: string }[];
  try {
    tokens = scanSync(sql).tokens;
  } catch {
    return sql;
  }
  if (tokens.length === 0) return sql;
  // Scanner offsets are UTF-8 bytes: work on the bytes.
  const bytes = Buffer.from(sql);
  const token = rng.pick(tokens);
  const splice = (start: number, end: number, text: string) =>
    Buffer.concat([bytes.subarray(0, start), Buffer.from(text), bytes.subarray(end)]).toString();
  switch (rng.int(5)) {
    case 0:
      return splice(
        token.end,
        token.end,
        rng.pick([" AS OF 'HEAD'", " AS OF $1", " AS OF 'x' AS y", " AS OF"]),
      );
    case 1:
      if (token.tokenName === "SCONST") {
        const value = token.text.slice(1, -1);
        return splice(token.start, token.end, rng.pick([`E'${value}'`, `$$${value}$$`, `$q$${value}$q$`]));
      }
      return splice(token.start, token.end, `"${token.text}"`);
    case 2:
      return splice(token.start, token.end, "");
    case 3:
      return splice(token.start, token.end, `${token.text} ${token.text}`);
    default:
      return splice(token.start, token.end, `/*${rng.pick(SNIPPETS)}*/${token.text}`);
  }
}

type Outcome = { ms: number; result?: Rewritten; error?: unknown };

async function run(sql: string): Promise<Outcome> {
  const start = performance.now();
  try {
    const result = await rewriteSql(sql, catalog);
    return { ms: performance.now() - start, result };
  } catch (error) {
    return { ms: performance.now() - start, error };
  }
}

/** What is wrong with the rewriter's answer to `sql`, or undefined. */
function problem(sql: string, o: Outcome): string | undefined {
  if (o.ms > SLOW_MS) return `slow: ${Math.round(o.ms)} ms`;
  if (o.error !== undefined) {
    const e = o.error as Error;
    if (!(e instanceof VariableError))
      return `unexpected ${e?.constructor?.name}: ${e?.message} @ ${e?.stack?.split("\n").slice(1, 4).join(" ").replace(/\s+/g, " ")}`;
    if (!e.message || !e.hint) return `VariableError without message or hint: ${e.message}`;
    if (!/^[0-9A-Z]{5}$/.test(e.code)) return `VariableError with code ${e.code}`;
    return undefined;
  }
  const r = o.result;
  if (r === undefined) return undefined;
  if (typeof r.sql !== "string" || !Array.isArray(r.altersSystem)) return "malformed result";
  for (const word of ["undefined", "NaN", "[object"])
    if (r.sql.includes(word) && !sql.includes(word)) return `rewrite contains ${word}: ${r.sql}`;
  // The one rewrite without a parse: the documentation's stray trailing double quote, dropped.
  if (r.sql === sql.replace(/"\s*$/, "")) return undefined;
  try {
    parseSync(r.sql);
  } catch (err) {
    return `rewrite does not parse (${(err as Error).message}): ${r.sql}`;
  }
  return undefined;
}

/** A shorter input that still has a problem of the same kind (greedy chunk removal, bounded). */
async function shrink(sql: string, kind: string): Promise<string> {
  const same = async (candidate: string) => problem(candidate, await run(candidate))?.split(":")[0] === kind;
  let best = sql;
  const deadline = Date.now() + 2000;
  for (let chunk = Math.max(1, best.length >> 1); chunk >= 1 && Date.now() < deadline; chunk >>= 1) {
    for (let i = 0; i + chunk <= best.length && Date.now() < deadline; ) {
      const candidate = best.slice(0, i) + best.slice(i + chunk);
      if (await same(candidate)) best = candidate;
      else i += chunk;
    }
  }
  return best;
}

/** Run every input; fail with the problems found, each kind with its shortest input. */
async function fuzz(inputs: Iterable<string>): Promise<number> {
  await loadParser();
  const found = new Map<string, { sql: string; detail: string }>();
  let count = 0;
  for (const sql of inputs) {
    count++;
    const detail = problem(sql, await run(sql));
    if (!detail) continue;
    const kind = detail.split(":")[0];
    const seen = found.get(kind);
    if (!seen || sql.length < seen.sql.length) found.set(kind, { sql, detail });
  }
  const report: string[] = [];
  for (const [kind, { sql, detail }] of found) {
    const minimal = await shrink(sql, kind);
    report.push(
      `${detail.slice(0, 300)}\n  input: ${JSON.stringify(sql.slice(0, 300))}\n  minimal: ${JSON.stringify(minimal.slice(0, 300))}`,
    );
  }
  assert.deepEqual(report, [], `seed ${SEED}: the rewriter mis-handled inputs`);
  return count;
}

test("every truncation of every corpus statement is rewritten, passed on, or refused with a VariableError", async () => {
  const inputs = function* () {
    for (const sql of CORPUS) for (let i = 0; i <= sql.length; i++) yield sql.slice(0, i);
  };
  assert.ok((await fuzz(inputs())) > 3000);
});

test("random mutations of the corpus: no unexpected error, no unparseable rewrite, none slower than 1 s", async () => {
  const rng = prng(SEED);
  const inputs = function* () {
    for (let n = 0; n < 3000; n++) {
      let sql = rng.pick(CORPUS);
      for (let m = 1 + rng.int(4); m > 0; m--) sql = mutate(rng, sql);
      yield sql;
    }
  };
  await fuzz(inputs());
});

test("Strata syntax inside a string literal, a dollar quote or a comment is never rewritten", async () => {
  await loadParser();
  const rng = prng(SEED ^ 0x5eed);
  for (let n = 0; n < 1500; n++) {
    let sql = rng.pick(CORPUS);
    for (let m = rng.int(3); m > 0; m--) sql = mutate(rng, sql);
    const hidden: string[] = [];
    if (!sql.includes("$fz$")) hidden.push(`SELECT $fz$${sql}$fz$`);
    if (!/[\r\n]/.test(sql)) hidden.push(`SELECT 1 -- ${sql}`);
    if (!sql.includes("*/") && !sql.includes("/*")) hidden.push(`SELECT 1 /* ${sql} */`);
    hidden.push(`SELECT '${sql.replace(/'/g, "''")}'`);
    for (const text of hidden) {
      const o = await run(text);
      assert.equal(o.error, undefined, `seed ${SEED}: ${JSON.stringify(text)}`);
      assert.equal(o.result?.sql, undefined, `seed ${SEED}: ${JSON.stringify(text)}`);
    }
  }
});

test("leading whitespace does not change a statement's rewrite", async () => {
  await loadParser();
  const rng = prng(SEED ^ 0xc0de);
  for (let n = 0; n < 1500; n++) {
    let sql = rng.pick(CORPUS);
    for (let m = rng.int(3); m > 0; m--) sql = mutate(rng, sql);
    const plain = await run(sql);
    if (plain.error !== undefined || plain.result === undefined) continue;
    const prefixed = await run(`\n\t  ${sql}`);
    assert.equal(prefixed.result?.sql, `\n\t  ${plain.result.sql}`, `seed ${SEED}: ${JSON.stringify(sql)}`);
  }
});

test("deep nesting, long names and many statements are answered without runaway cost", async () => {
  await loadParser();
  const inputs = function* () {
    for (const depth of [10, 100, 500, 700, 2000, 5000, 20000]) {
      yield `SELECT ${"(".repeat(depth)}1${")".repeat(depth)} FROM u AS OF 'HEAD'`;
      yield `SELECT ${"(".repeat(depth)}1 FROM u AS OF 'HEAD'`;
      yield `SELECT * FROM t AS OF 'HEAD' WHERE ${"(id = 1 AND ".repeat(depth)}true${")".repeat(depth)}`;
    }
    // Beyond ~1600 nested subqueries the parser refuses them itself.
    for (const depth of [10, 100, 500, 1000, 2000, 5000])
      yield `SELECT * FROM ${"(SELECT * FROM ".repeat(depth)}t AS OF 'HEAD' WHERE id = 1${") s".repeat(depth)}`;
    for (const length of [63, 64, 1000, 100_000]) {
      yield `SELECT * FROM ${"x".repeat(length)} AS OF 'HEAD' WHERE id = 1`;
      yield `SELECT * FROM "${"é".repeat(length)}" AS OF 'HEAD'`;
      yield `SHOW dolt_${"x".repeat(length)}`;
      yield `SET dolt_replicate_heads TO '${"'".repeat(length)}'`;
      yield `SELECT * FROM dolt_diff('a', 'b', '${"t".repeat(length)}')`;
    }
    yield Array.from({ length: 5000 }, (_, i) => `SELECT * FROM u${i} AS OF 'HEAD'`).join(";");
    yield Array.from({ length: 5000 }, () => "SHOW dolt_transaction_commit").join(";");
    yield `SELECT * FROM ${Array.from({ length: 3000 }, (_, i) => `u${i} AS OF $${i + 1}`).join(", ")}`;
    yield `SELECT ${"current_setting('dolt_transaction_commit'), ".repeat(5000)}1`;
    yield ";".repeat(100_000);
    yield `${"/*".repeat(10_000)} dolt_`;
    yield `SELECT $${"$".repeat(10_000)} dolt_`;
  };
  await fuzz(inputs());
});

test("the helpers on the error path take any statement: findRemoteCall, highestParameter, errorStatement", async () => {
  await loadParser();
  const rng = prng(SEED ^ 0xe7707);
  for (let n = 0; n < 2000; n++) {
    let sql = rng.pick(CORPUS);
    for (let m = 1 + rng.int(3); m > 0; m--) sql = mutate(rng, sql);
    const start = performance.now();
    findRemoteCall(sql);
    const highest = highestParameter(sql);
    assert.ok(Number.isInteger(highest) && highest >= 0, `${highest} for ${JSON.stringify(sql)}`);
    // The session raises a rewriter's error with a DO block whose texts may hold the client's SQL.
    const failing = errorStatement({ message: sql, hint: sql, detail: sql, code: sql.slice(0, 5) });
    const tree = parseSync(failing) as { stmts: { stmt: { DoStmt?: unknown } }[] };
    assert.equal(tree.stmts.length, 1, failing);
    assert.ok(tree.stmts[0].stmt.DoStmt, failing);
    assert.ok(performance.now() - start < SLOW_MS, `slow: ${JSON.stringify(sql)}`);
  }
});

// ---- Defects the fuzzing found, fixed: their cases, exactly. ----

const rewrite = async (sql: string) => (await rewriteSql(sql, catalog))?.sql;

test("non-ASCII text before Strata syntax: the rewrite is made at the right place", async () => {
  await loadParser();
  assert.equal(
    await rewrite("SELECT 'é' AS a, * FROM u AS OF 'HEAD'"),
    `SELECT 'é' AS a, * FROM "dolt_as_of_u"('HEAD') AS "u"`,
  );
  assert.equal(
    await rewrite("/* é */ SET dolt_async_replication TO 1"),
    "/* é */ SET strata.dolt_async_replication TO '1'",
  );
  assert.equal(
    await rewrite("SELECT 'é', current_setting('dolt_transaction_commit')"),
    "SELECT 'é', dolt.setting('dolt_transaction_commit')",
  );
  const rng = prng(SEED ^ 0xc0de);
  for (let n = 0; n < 500; n++) {
    const sql = mutate(rng, rng.pick(CORPUS));
    const plain = await run(sql);
    if (plain.error !== undefined || plain.result === undefined) continue;
    assert.equal((await run(`/* ü */ ${sql}`)).result?.sql, `/* ü */ ${plain.result.sql}`, sql);
  }
});

test("comments between or around the tokens of Strata syntax change nothing", async () => {
  await loadParser();
  const cases: [string, string][] = [
    [
      "/* app */ SHOW dolt_transaction_commit",
      `/* app */ SELECT dolt.setting('dolt_transaction_commit') AS "dolt_transaction_commit"`,
    ],
    [
      "SHOW dolt_transaction_commit -- c",
      `SELECT dolt.setting('dolt_transaction_commit') AS "dolt_transaction_commit" -- c`,
    ],
    ["SET dolt_async_replication TO /* on */ 1", "SET strata.dolt_async_replication TO '1'"],
    // A comment inside a replaced statement goes with it; one before or after it stays, as for SHOW.
    [
      "ALTER SYSTEM SET dolt_async_replication TO 1 -- c",
      "ALTER SYSTEM SET strata.dolt_async_replication TO '1' -- c",
    ],
    ["SELECT * FROM u AS /* c */ OF 'HEAD'", `SELECT * FROM "dolt_as_of_u"('HEAD') AS "u"`],
    ["SELECT * FROM u AS OF 'HEAD' /* c */ x", `SELECT * FROM "dolt_as_of_u"('HEAD') /* c */ x`],
  ];
  for (const [input, output] of cases) assert.equal(await rewrite(input), output, input);
  const rng = prng(SEED ^ 0xc0de);
  for (let n = 0; n < 500; n++) {
    const sql = mutate(rng, rng.pick(CORPUS));
    if (/[^\x00-\x7f]/.test(sql)) continue;
    const plain = await run(sql);
    if (plain.error !== undefined || plain.result === undefined) continue;
    assert.equal((await run(`/* ab */ ${sql}`)).result?.sql, `/* ab */ ${plain.result.sql}`, sql);
  }
});

test("deeply nested subqueries or WHERE terms around AS OF: no RangeError", async () => {
  await loadParser();
  for (const sql of [
    `SELECT * FROM ${"(SELECT * FROM ".repeat(1000)}t AS OF 'HEAD' WHERE id = 1${") s".repeat(1000)}`,
    `SELECT * FROM t AS OF 'HEAD' WHERE ${"(id = 1 AND ".repeat(700)}true${")".repeat(700)}`,
  ])
    assert.equal(problem(sql, await run(sql)), undefined);
});

test("many unclosed current_setting( calls: linear time", async () => {
  await loadParser();
  const sql = `SELECT ${"current_setting('dolt_transaction_commit', ".repeat(16_000)}`;
  assert.equal(problem(sql, await run(sql)), undefined);
});

test("dolt_diff with two arguments (an expression in one) is not taken for the three-argument form", async () => {
  await loadParser();
  assert.equal(await rewrite("SELECT * FROM dolt_diff('HEAD', 'WORKING' || 't')"), undefined);
  assert.equal(await rewrite("SELECT * FROM dolt_diff('HEAD' || 'x', 't')"), undefined);
});

test("a column alias list on an AS OF table: no keyed lookup by a renamed column", async () => {
  await loadParser();
  // id here is t's second column (renamed): the key is k.
  assert.equal(
    await rewrite("SELECT * FROM t AS OF 'HEAD' AS x(k, id) WHERE id = 5"),
    `SELECT * FROM "dolt_as_of_t"('HEAD') AS x(k, id) WHERE id = 5`,
  );
});

test("a qualified current_setting call is rewritten whole", async () => {
  await loadParser();
  assert.equal(
    await rewrite("SELECT pg_catalog.current_setting('dolt_transaction_commit')"),
    "SELECT dolt.setting('dolt_transaction_commit')",
  );
});

test("$0 compared to a key column is left as written", async () => {
  await loadParser();
  const sql = "SELECT * FROM t AS OF 'HEAD' WHERE id = $0";
  assert.equal(problem(sql, await run(sql)), undefined);
});

// ---- Defects the first fuzzing found (2026-11-24), fixed: each failed then. ----

test("the parameter count a failed Parse is padded to stays within the protocol's 65535", () => {
  assert.ok(highestParameter("SET dolt_bogus TO $70000") <= 65535);
  assert.ok(highestParameter("SET dolt_bogus TO $99999999999") <= 65535);
});
