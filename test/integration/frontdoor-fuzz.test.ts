// Fuzzing the front door through a live standalone Strata: a few hundred mutated Strata
// statements (simple and extended protocol, and raw bytes that are not UTF-8) on one session.
// Each must get its result or an ErrorResponse, the session must answer SELECT 1 after it, and
// Strata must stay up. Every statement runs in a transaction block that is rolled back, and
// statements that could leave it (COMMIT, ALTER SYSTEM, USE, checkouts, remote calls) are not
// generated. The seed is printed; STRATA_FUZZ_SEED=<n> repeats a run. The defects the first run
// found (all fixed) are kept as tests at the end.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import pg from "pg";
import { fuzzSeed, prng, type Rng } from "../support/fuzz.ts";
import { type StrataProcess, startStandaloneStrata } from "../support/strata.ts";

const SEED = fuzzSeed("frontdoor live fuzz");

let strata: StrataProcess;
let client: pg.Client;

const connect = async () => {
  const c = new pg.Client(strata.connectionConfig());
  c.on("error", () => {}); // a session the front door ends fails its queries, not the test process
  await c.connect();
  await c.query("SET statement_timeout = '3s'");
  return c;
};

before(async () => {
  strata = await startStandaloneStrata();
  client = await connect();
  // t(id, v) keyed by id; pair keyed by (a, b); both committed so that AS OF 'HEAD' reads them.
  await client.query("CREATE TABLE t (id int PRIMARY KEY, v int)");
  await client.query("INSERT INTO t VALUES (1, 2), (2, 1)");
  await client.query("CREATE TABLE pair (a int, b text, PRIMARY KEY (a, b))");
  await client.query("INSERT INTO pair VALUES (1, 'x'), (2, 'é')");
  await client.query("SELECT dolt_commit('-Am', 'fuzz base')");
});
after(async () => {
  await client?.end().catch(() => {});
  await strata?.stop();
});

const CORPUS: readonly string[] = [
  "SELECT * FROM t AS OF 'HEAD'",
  "SELECT * FROM t AS OF 'HEAD' WHERE id = 1",
  "SELECT x.* FROM t AS OF $1 AS x WHERE x.id = $2",
  "SELECT * FROM pair AS OF 'HEAD~0' WHERE b = 'é' AND a = 2",
  "SELECT * FROM t AS OF 'HEAD' JOIN pair AS OF 'HEAD' ON pair.a = t.id",
  "SELECT (SELECT v FROM t AS OF 'HEAD' WHERE id = 2), 1",
  "WITH c AS (SELECT * FROM t AS OF 'HEAD' WHERE id = 1) SELECT * FROM c",
  "SELECT * FROM t AS OF 'nope'",
  "SELECT to_v, from_v, diff_type FROM dolt_diff('HEAD', 'WORKING', 't')",
  "SELECT * FROM dolt_diff('HEAD', 'WORKING', 'public.pair')",
  "SELECT * FROM dolt_log",
  "SELECT * FROM dolt_status",
  "SELECT * FROM dolt_history_t",
  "SHOW dolt_transaction_commit",
  "SHOW dolt_cluster_role",
  "SHOW dolt_bogus",
  "SET dolt_async_replication = on",
  "SET LOCAL dolt_replicate_heads TO 'main,feature-*'",
  "SET dolt_async_replication TO 'sometimes'",
  "SET strata_allow_replica_writes TO DEFAULT",
  "RESET dolt_async_replication",
  "SELECT current_setting('dolt_transaction_commit'), set_config('dolt_async_replication', '1', true)",
  "SHOW dolt_transaction_commit; SELECT * FROM t AS OF 'HEAD' WHERE id = $1",
  "SELECT 'AS OF ''HEAD''' /* dolt_x */ -- current_setting('dolt_x')\n",
  "SELECT $$ dolt_diff('a', 'b', 't') $$, E'\\' AS OF'",
];
const SNIPPETS: readonly string[] = [
  "'",
  '"',
  "$$",
  "/*",
  "*/",
  "--",
  "\n",
  ";",
  "(",
  ")",
  ",",
  "é",
  "😀",
  "\u0001",
  " AS OF 'HEAD' ",
  " AS OF $1 ",
  " $1 ",
  " $2 ",
  " dolt_ ",
  " current_setting('dolt_async_replication') ",
  " dolt_diff('HEAD', 'HEAD', 't') ",
  " WHERE id = 1 ",
  "SHOW ",
  "SET ",
];
/** Statements that could leave the rolled-back block or act outside it are not sent. */
const UNSAFE =
  /\b(commit|end|abort|rollback|release|prepare|alter|use|copy|checkpoint|lock|vacuum|discard|listen|notify|cluster|reindex|pg_sleep|pg_terminate_backend|pg_cancel_backend|dblink)\b|dolt_(?!diff\b|log\b|status\b|history_|as_of_|transaction_commit|async_replication|replicate_heads|cluster_role|bogus)\w*\s*\(?/i;

function generate(rng: Rng): { text: string | Buffer; params?: string[] } {
  for (;;) {
    let sql = rng.pick(CORPUS);
    for (let m = 1 + rng.int(3); m > 0; m--) {
      const at = rng.int(sql.length + 1);
      const choice = rng.int(7);
      if (choice === 0) sql = sql.slice(0, at);
      else if (choice === 1)
        sql = sql.slice(0, at) + String.fromCharCode(33 + rng.int(94)) + sql.slice(at + 1);
      else if (choice <= 3) sql = sql.slice(0, at) + rng.pick(SNIPPETS) + sql.slice(at);
      else if (choice === 4) sql = `${sql}; ${rng.pick(CORPUS)}`;
      else if (choice === 5) sql = `SELECT * FROM (${sql}) s`;
      else sql = `${"(".repeat(1 + rng.int(50))}${sql}${")".repeat(1 + rng.int(50))}`;
    }
    // One in six: raw bytes, some of them not UTF-8 (the session decodes them before the rewriter).
    if (rng.int(6) === 0) {
      const bytes = Buffer.from(sql);
      for (let n = 1 + rng.int(3); n > 0; n--) bytes[rng.int(bytes.length || 1)] = 1 + rng.int(255);
      if (UNSAFE.test(bytes.toString("latin1")) || bytes.includes(0)) continue;
      return { text: bytes };
    }
    if (UNSAFE.test(sql)) continue;
    const highest = Math.max(0, ...[...sql.matchAll(/\$(\d{1,2})\b/g)].map((m) => Number(m[1])));
    if (rng.int(3) === 0 || highest > 0)
      return { text: sql, params: Array.from({ length: highest }, () => rng.pick(["HEAD", "1", "é", ""])) };
    return { text: sql };
  }
}

/** A Query message of raw bytes, sent on a pg.Client (which otherwise only sends UTF-8). */
class RawQuery {
  rows: unknown[][] = [];
  error: (Error & { code?: string }) | undefined;
  readonly done: Promise<void>;
  private settle!: () => void;
  constructor(private readonly sql: Buffer) {
    this.done = new Promise((resolveDone) => {
      this.settle = resolveDone;
    });
  }
  submit(connection: { stream: { write(bytes: Buffer): void } }) {
    const message = Buffer.alloc(1 + 4 + this.sql.length + 1);
    message[0] = 0x51; // 'Q'
    message.writeInt32BE(4 + this.sql.length + 1, 1);
    this.sql.copy(message, 5);
    connection.stream.write(message);
  }
  handleDataRow(msg: { fields: unknown[] }) {
    this.rows.push(msg.fields);
  }
  handleError(err: Error) {
    this.error ??= err;
    this.settle();
  }
  handleReadyForQuery() {
    this.settle();
  }
  handleRowDescription() {}
  handleCommandComplete() {}
  handleEmptyQuery() {}
  handlePortalSuspended() {}
  handleCopyInResponse() {}
  handleCopyData() {}
}

async function raw(c: pg.Client, sql: Buffer): Promise<RawQuery> {
  const query = new RawQuery(sql);
  c.query(query as unknown as pg.Submittable);
  await query.done;
  return query;
}

const withTimeout = <T>(what: string, promise: Promise<T>, ms = 5000): Promise<T> =>
  Promise.race([
    promise,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`no answer in ${ms} ms: ${what}`)), ms).unref(),
    ),
  ]);

/** A JavaScript error of the rewriter's own, passed to the client as if it were the user's. */
const LEAKED =
  /Cannot read propert|is not a function|is not iterable|Maximum call stack|Invalid array length|undefined/;

test("a few hundred mutated statements: each gets a result or an ErrorResponse, and SELECT 1 works after it", async () => {
  const rng = prng(SEED);
  const logStart = strata.logs.length;
  const problems: string[] = [];
  const codes = new Map<string, number>();
  const deadline = Date.now() + 15_000;
  let sent = 0;
  while (sent < 400 && Date.now() < deadline) {
    const { text, params } = generate(rng);
    const shown = typeof text === "string" ? text : `bytes ${text.toString("hex")}`;
    sent++;
    await client.query("BEGIN");
    let error: (Error & { code?: string }) | undefined;
    try {
      if (typeof text === "string")
        await withTimeout(shown, client.query(text, params)).catch((err) => {
          error = err;
        });
      else error = (await withTimeout(shown, raw(client, text))).error;
    } catch (err) {
      problems.push(`${(err as Error).message}`);
      break;
    }
    if (error && !error.code)
      problems.push(`not an ErrorResponse (${error.message}): ${JSON.stringify(shown)}`);
    else if (error && error.code === "XX000" && LEAKED.test(error.message))
      problems.push(
        `the rewriter's own error reached the client (${error.message}): ${JSON.stringify(shown)}`,
      );
    if (error?.code) codes.set(error.code, (codes.get(error.code) ?? 0) + 1);
    try {
      await withTimeout("ROLLBACK", client.query("ROLLBACK"));
      assert.deepEqual((await withTimeout("SELECT 1", client.query("SELECT 1 AS one"))).rows, [{ one: 1 }]);
    } catch (err) {
      problems.push(`session unusable after ${JSON.stringify(shown)}: ${(err as Error).message}`);
      client = await connect();
    }
  }
  console.log(`sent ${sent} statements; SQLSTATEs: ${JSON.stringify(Object.fromEntries(codes))}`);
  assert.ok(sent >= 100, `only ${sent} statements in the time given`);
  assert.deepEqual(problems, [], `seed ${SEED}`);
  const logs = strata.logs.slice(logStart);
  assert.doesNotMatch(logs, /session failed|uncaught|unhandled/i);
  assert.equal(strata.child?.exitCode, null, "Strata exited");
  const fresh = await connect();
  assert.deepEqual((await fresh.query("SELECT 1 AS one")).rows, [{ one: 1 }]);
  await fresh.end();
});

test("errors of the rewriter name their cause and fix, over both protocols, and the session goes on", async () => {
  const refused: [string, unknown[] | undefined, string, RegExp][] = [
    ["SET dolt_no_such_thing = 1", undefined, "42704", /dolt_transaction_commit/],
    ["SET dolt_async_replication TO 'sometimes'", undefined, "22023", /boolean/],
    ["SHOW dolt_bogus", undefined, "42704", /dolt_/],
    ["SET dolt_cluster_role TO 'primary'", undefined, "55P02", /SHOW|dolt_assume_cluster_role/],
    ["SET dolt_async_replication", undefined, "42601", /TO value/],
    ["SET dolt_bogus TO $1", ["x"], "42704", /dolt_transaction_commit/],
    ["SELECT $2::text, $1::int; SET dolt_bogus = 1", ["1", "y"], "42704", /dolt_transaction_commit/],
  ];
  for (const [sql, params, code, hint] of refused) {
    const err = await client.query(sql, params).then(
      () => assert.fail(`${sql} should fail`),
      (e: pg.DatabaseError) => e,
    );
    assert.equal(err.code, code, `${sql}: ${err.message}`);
    assert.match(err.hint ?? "", hint, sql);
    assert.deepEqual((await client.query("SELECT 1 AS one")).rows, [{ one: 1 }]);
  }
  // And the rewrites themselves, over both protocols, several statements in one Query.
  assert.deepEqual((await client.query("SELECT v FROM t AS OF $1 WHERE id = $2", ["HEAD", 1])).rows, [
    { v: 2 },
  ]);
  const many = (await client.query(
    "SHOW dolt_transaction_commit; SELECT v FROM t AS OF 'HEAD' WHERE id = 2",
  )) as unknown as pg.QueryResult[];
  assert.deepEqual(many[1].rows, [{ v: 1 }]);
  // AS OF outside a FROM list is left to Postgres: its syntax error, not a missing function.
  const misplaced = await client.query("SELECT v AS OF 'HEAD' FROM t").then(
    () => assert.fail("AS OF in a select list should fail"),
    (e: pg.DatabaseError) => e,
  );
  assert.equal(misplaced.code, "42601", misplaced.message);
  assert.match(misplaced.message, /syntax error at or near "'HEAD'"/);
  // A U&'' literal is a value like any other.
  await client.query("SET dolt_replicate_heads TO U&'ma\\0069n'");
  assert.deepEqual((await client.query("SHOW dolt_replicate_heads")).rows, [
    { dolt_replicate_heads: "main" },
  ]);
  await client.query("RESET dolt_replicate_heads");
});

// ---- Defects the first fuzzing found (2026-11-24), fixed: each failed then. ----

test("USE with a long run of spaces does not stall the server", async () => {
  const other = await connect();
  try {
    const started = Date.now();
    // 100,000 spaces: the backtracking pattern took over 10 s on them.
    const stalled = client.query(`use a${" ".repeat(100_000)}x`).catch((e) => e);
    await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    await other.query("SELECT 1");
    const otherMs = Date.now() - t0;
    await stalled;
    const ms = Date.now() - started;
    assert.ok(
      otherMs < 3_000 && ms < 3_000,
      `the USE took ${ms} ms; another session's SELECT 1 waited ${otherMs} ms`,
    );
  } finally {
    await other.end();
  }
});

test("a large statement that says 'as of' in its literals does not hold other sessions while it is read", async () => {
  // Found after the fuzzing: the cheap test that keeps the scanner off ordinary statements
  // matched "of" anywhere, so an INSERT of 600,000 short literals saying "as of" was scanned
  // whole (over 5 s on the event loop every session shares); now only the code outside literals
  // counts. The bound is wide: the suite runs on a loaded machine.
  await client.query("CREATE TABLE notes (id int PRIMARY KEY, body text)");
  const items = Array.from({ length: 600_000 }, (_, i) => `'as of ${i}'`).join(",");
  const values = `(1, array_to_string(ARRAY[${items}], ' '))`;
  const other = await connect();
  try {
    let done = false;
    // The store's own work on 600,000 array elements is not what is measured: no 3 s limit.
    await client.query("SET statement_timeout = 0");
    const insert = client.query(`INSERT INTO notes VALUES ${values}`).finally(() => {
      done = true;
    });
    let slowest = 0;
    while (!done) {
      const t0 = Date.now();
      await other.query("SELECT 1");
      slowest = Math.max(slowest, Date.now() - t0);
    }
    await insert;
    await client.query("SET statement_timeout = '3s'");
    assert.ok(slowest < 2_500, `another session's SELECT 1 waited ${slowest} ms`);
    const [{ n }] = (await client.query("SELECT count(*)::int AS n FROM notes")).rows;
    assert.equal(n, 1);
  } finally {
    await other.end();
  }
});

test("a Parse with a parameter beyond $65535 that the rewriter refuses gets an ErrorResponse", async () => {
  const c = await connect();
  try {
    const err = await withTimeout(
      "SET dolt_bogus TO $70000",
      c.query("SET dolt_bogus TO $70000", ["x"]).then(
        () => undefined,
        (e: pg.DatabaseError) => e,
      ),
    );
    // The failing statement takes at most 65535 parameters, so the store refuses the Bind of a
    // statement that names $70000 (08P01), as Postgres itself does without the front door.
    assert.equal(err?.code, "08P01", String(err?.message));
    assert.match(err.message, /bind message supplies 1 parameters/);
    assert.deepEqual((await c.query("SELECT 1 AS one")).rows, [{ one: 1 }]);
    // Beneath the limit, with as many values as it names, the rewriter's own error.
    const named = await c.query("SET dolt_bogus TO $700", Array(700).fill("x")).then(
      () => undefined,
      (e: pg.DatabaseError) => e,
    );
    assert.equal(named?.code, "42704", String(named?.message));
  } finally {
    await c.end().catch(() => {});
  }
});

test("AS OF and SHOW work after non-ASCII text and comments", {}, async () => {
  const c = await connect();
  try {
    const rows = async (sql: string) =>
      (await c.query(sql).catch((e: Error) => assert.fail(`${sql}: ${e.message}`))).rows;
    assert.deepEqual(await rows("SELECT 'é' AS e, v FROM t AS OF 'HEAD' WHERE id = 1"), [{ e: "é", v: 2 }]);
    assert.equal((await rows("/* app=x */ SHOW dolt_transaction_commit")).length, 1);
    assert.equal((await rows("SHOW dolt_transaction_commit -- why")).length, 1);
  } finally {
    await c.end();
  }
});

test("a column alias list on an AS OF table reads the right rows", {}, async () => {
  // id is t's second column here (v renamed): rows where v = 1.
  const { rows } = await client.query("SELECT * FROM t AS OF 'HEAD' AS x(k, id) WHERE id = 1");
  assert.deepEqual(rows, [{ k: 2, id: 1 }]);
});

test("bytes that are not UTF-8 are refused by the store, as without the front door, when the rewriter rewrites", async () => {
  const plain = await raw(client, Buffer.from([...Buffer.from("SELECT '"), 0xff, ...Buffer.from("' AS x")]));
  assert.equal(plain.error?.code, "22021", "without Strata syntax, the store refuses the bytes");
  const rewritten = await raw(
    client,
    Buffer.from([...Buffer.from("SHOW dolt_transaction_commit; SELECT '"), 0xff, ...Buffer.from("' AS x")]),
  );
  assert.equal(rewritten.error?.code, "22021", `got rows ${JSON.stringify(rewritten.rows)}`);
});

test("a rewriter failure of its own is not passed to the client as XX000 with a JavaScript message", {}, async () => {
  // In the server's stack: ~1500 nested terms (or ~1200 nested subqueries), which the store takes.
  const sql = `SELECT * FROM t AS OF 'HEAD' WHERE ${"(id = 1 AND ".repeat(1500)}true${")".repeat(1500)}`;
  const err = await client.query(sql).then(
    () => undefined,
    (e: pg.DatabaseError) => e,
  );
  assert.ok(!err || !LEAKED.test(err.message), `${err?.code}: ${err?.message}`);
});
