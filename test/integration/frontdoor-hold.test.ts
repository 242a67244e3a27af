// The rewriter's transactionEnded hook: a front door over a throwaway cluster whose rewriter can
// hold the ReadyForQuery that ends a transaction (and all after it) until the test releases it.
// Autocommit statements and COMMIT are held, BEGIN and statements inside a block are not; a large
// result (behind backpressure) arrives whole and in order; a client that goes away while held, or
// a session terminated while held, leaves nothing behind; pipelined queries each wait their turn.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import { after, before, test } from "node:test";
import pg from "pg";
import { type Listener, type QueryRewriter, startListener } from "../../src/frontdoor/listener.ts";
import { encodeParse, FrameSplitter, TAG } from "../../src/frontdoor/wire.ts";
import { createLogger } from "../../src/log.ts";
import { startPrimary, TEST_PASSWORD, TEST_USER, type TestCluster, waitFor } from "../support/postgres.ts";
import { selfSignedCertificate } from "../support/tls.ts";

const log = createLogger("fatal");
let cluster: TestCluster | undefined;
let listener: Listener | undefined;

/** One call of the hook: what it was told, and the hold it returned (when holding). */
interface Call {
  pid: number | undefined;
  database: string;
  user: string;
  txStatus: string | undefined;
  release: () => void;
  reject: (err: Error) => void;
}
const calls: Call[] = [];
/** Whether the hook holds (returns a Promise the test settles) or passes (returns undefined). */
let holding = false;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);

const rewriter: QueryRewriter = {
  rewrite: () => undefined,
  transactionEnded({ database, user, session }) {
    const call: Call = {
      pid: session.backendPid,
      database,
      user,
      txStatus: session.txStatus,
      release: () => {},
      reject: () => {},
    };
    const hold = holding
      ? new Promise<void>((resolveHold, rejectHold) => {
          call.release = () => resolveHold();
          call.reject = rejectHold;
        })
      : undefined;
    calls.push(call);
    return hold;
  },
};

before(async () => {
  process.on("unhandledRejection", onUnhandled);
  cluster = await startPrimary();
  listener = await startListener(
    { host: "127.0.0.1", port: 0 },
    { host: cluster.host, port: cluster.port },
    rewriter,
    log,
  );
});

after(async () => {
  process.off("unhandledRejection", onUnhandled);
  await listener?.close();
  await cluster?.stop();
});

function store(): TestCluster {
  assert.ok(cluster, "the cluster started");
  return cluster;
}

function frontDoor(): Listener {
  assert.ok(listener, "the listener started");
  return listener;
}

/** A client of the front door; its 'error' events are kept rather than thrown. */
async function connect(extra: pg.ClientConfig = {}): Promise<pg.Client & { errors: Error[] }> {
  const client = Object.assign(
    new pg.Client({
      host: "127.0.0.1",
      port: frontDoor().address.port,
      user: TEST_USER,
      password: TEST_PASSWORD,
      database: "postgres",
      ...extra,
    }),
    { errors: [] as Error[] },
  );
  client.on("error", (err) => client.errors.push(err));
  await client.connect();
  return client;
}

function internals(client: pg.Client): { processID: number; stream: Socket } {
  const c = client as unknown as { processID: number; connection: { stream: Socket } };
  return { processID: c.processID, stream: c.connection.stream };
}

function callsOf(pid: number): Call[] {
  return calls.filter((c) => c.pid === pid);
}

async function waitForCalls(pid: number, count: number): Promise<Call> {
  await waitFor(`call ${count} of transactionEnded`, async () => callsOf(pid).length >= count, 10_000);
  const mine = callsOf(pid);
  assert.equal(mine.length, count, "no more calls than expected");
  return mine[count - 1];
}

/** Whether `promise` is still pending (an already-resolved marker wins the race only then). */
async function isPending(promise: Promise<unknown>): Promise<boolean> {
  const marker = Symbol("pending");
  const first = await Promise.race([promise, Promise.resolve(marker)]).catch(() => undefined);
  return first === marker;
}

/**
 * A round trip on another connection, straight to the store: time (and I/O turns) enough for a
 * ReadyForQuery the front door had passed on to have reached its client.
 */
async function roundTrip(): Promise<void> {
  await store().query("SELECT 1");
}

async function backendExists(pid: number): Promise<boolean> {
  return (await store().query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid])).length > 0;
}

test("an autocommit statement's ReadyForQuery waits for the hold; released (or rejected), it goes on", async () => {
  holding = true;
  const client = await connect();
  try {
    const { processID: pid } = internals(client);
    assert.equal(callsOf(pid).length, 0, "the startup's ReadyForQuery ends no transaction");

    const first = client.query("SELECT 1 AS n");
    const call = await waitForCalls(pid, 1);
    assert.deepEqual(
      { database: call.database, user: call.user, txStatus: call.txStatus },
      { database: "postgres", user: TEST_USER, txStatus: "I" },
    );
    await roundTrip();
    assert.equal(await isPending(first), true, "the query waits while held");
    call.release();
    assert.deepEqual((await first).rows, [{ n: 1 }]);

    // The extended protocol (Parse, Bind, Execute, Sync), and a hold that fails: released anyway.
    const second = client.query("SELECT $1::int AS n", [2]);
    const failing = await waitForCalls(pid, 2);
    await roundTrip();
    assert.equal(await isPending(second), true, "the query waits while held");
    failing.reject(new Error("the remote is away"));
    assert.deepEqual((await second).rows, [{ n: 2 }]);

    holding = false;
    assert.deepEqual((await client.query("SELECT 3 AS n")).rows, [{ n: 3 }]);
    assert.equal(callsOf(pid).length, 3, "one call per ReadyForQuery 'I'");
    assert.deepEqual(client.errors, []);
  } finally {
    holding = false;
    await client.end().catch(() => {});
  }
});

test("in a block, only COMMIT's (or ROLLBACK's) ReadyForQuery is held; the rows are there", async () => {
  const client = await connect();
  try {
    const { processID: pid } = internals(client);
    await client.query("CREATE TABLE held_rows (n int)");
    const base = callsOf(pid).length;
    assert.equal(base, 1);

    holding = true;
    await client.query("BEGIN");
    await client.query("INSERT INTO held_rows SELECT generate_series(1, 3)");
    assert.equal(callsOf(pid).length, base, "no call while the block is open ('T')");
    const commit = client.query("COMMIT");
    const call = await waitForCalls(pid, base + 1);
    assert.equal(call.txStatus, "I");
    // Committed in the store already: only the client has not heard so.
    const [{ n }] = await store().query<{ n: number }>("SELECT count(*)::int AS n FROM held_rows");
    assert.equal(n, 3);
    assert.equal(await isPending(commit), true, "COMMIT waits while held");
    call.release();
    assert.equal((await commit).command, "COMMIT");

    // A failed block ('E') is not held either: its ROLLBACK is.
    await client.query("BEGIN");
    await assert.rejects(client.query("SELECT 1 / 0"), (err: pg.DatabaseError) => err.code === "22012");
    assert.equal(callsOf(pid).length, base + 1, "no call for 'T' or 'E'");
    const rollback = client.query("ROLLBACK");
    const rolledBack = await waitForCalls(pid, base + 2);
    await roundTrip();
    assert.equal(await isPending(rollback), true, "ROLLBACK waits while held");
    rolledBack.release();
    await rollback;

    holding = false;
    const { rows } = await client.query("SELECT n FROM held_rows ORDER BY n");
    assert.deepEqual(rows, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    assert.equal(callsOf(pid).length, base + 3);
  } finally {
    holding = false;
    await client.end().catch(() => {});
  }
});

test("a large result, slowed by its client then held at its end, arrives whole and in order", async () => {
  const rowCount = 50_000;
  const sql = `SELECT i, repeat('x', 1000) AS x FROM generate_series(1, ${rowCount}) i`;
  const [{ md5: expected }] = await store().query<{ md5: string }>(
    `SELECT md5(string_agg(i || ':' || x, ',' ORDER BY i)) AS md5 FROM (${sql}) r`,
  );
  const client = await connect();
  const { processID: pid, stream } = internals(client);
  try {
    holding = true;
    stream.pause();
    const result = client.query<{ i: number; x: string }>(sql);
    await waitFor("the store backend to wait on the front door (backpressure)", async () => {
      const rows = await store().query("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", [pid]);
      return rows[0]?.wait_event === "ClientWrite";
    });
    assert.equal(callsOf(pid).length, 0, "the result's end is not read yet");
    stream.resume();
    const call = await waitForCalls(pid, 1);
    await roundTrip();
    assert.equal(await isPending(result), true, "the result waits for its ReadyForQuery");
    call.release();
    const { rows } = await result;
    assert.equal(rows.length, rowCount);
    rows.forEach((row, k) => {
      if (row.i !== k + 1) assert.fail(`row ${k} is ${row.i}`);
    });
    const md5 = createHash("md5")
      .update(rows.map((r) => `${r.i}:${r.x}`).join(","))
      .digest("hex");
    assert.equal(md5, expected);

    holding = false;
    assert.deepEqual((await client.query("SELECT 'after' AS v")).rows, [{ v: "after" }]);
  } finally {
    holding = false;
    stream.resume();
    await client.end().catch(() => {});
  }
});

test("a client that goes away while held, or a session terminated while held, leaves nothing behind", async () => {
  holding = true;
  const gone = await connect();
  const { processID: gonePid, stream } = internals(gone);
  const query = gone.query("SELECT 1").catch((err: Error) => err);
  const call = await waitForCalls(gonePid, 1);
  stream.destroy();
  assert.ok((await query) instanceof Error);
  await waitFor("the session to end", async () =>
    frontDoor()
      .sessions()
      .every((s) => s.backendPid !== gonePid),
  );
  await waitFor("its backend to end", async () => !(await backendExists(gonePid)));
  call.release(); // after the session ended: nothing to do

  // Terminated while held: the client hears why (it is between two messages).
  const terminated = await connect();
  const { processID: terminatedPid } = internals(terminated);
  const ended = new Promise((resolveEnd) => terminated.once("end", resolveEnd));
  const held = terminated.query("SELECT 2").catch((err: Error) => err);
  const heldCall = await waitForCalls(terminatedPid, 1);
  const session = frontDoor()
    .sessions()
    .find((s) => s.backendPid === terminatedPid);
  assert.ok(session);
  session.terminate({ code: "57P01", message: "terminating connection: the test ends it" });
  await ended;
  // node-postgres gives the FATAL error to the query under way.
  assert.equal(((await held) as pg.DatabaseError).code, "57P01", String(await held));
  heldCall.reject(new Error("too late")); // after the session ended: nothing to do
  await waitFor("its backend to end", async () => !(await backendExists(terminatedPid)));

  // The front door serves on.
  holding = false;
  const next = await connect();
  try {
    assert.deepEqual((await next.query("SELECT 'next' AS v")).rows, [{ v: "next" }]);
  } finally {
    await next.end().catch(() => {});
  }
  await roundTrip();
  assert.deepEqual(unhandled, []);
});

test("several statements in one Query: one ReadyForQuery, held once", async () => {
  holding = true;
  const client = await connect();
  try {
    const { processID: pid } = internals(client);
    const both = client.query("SELECT 1 AS a; SELECT 2 AS b") as unknown as Promise<pg.QueryResult[]>;
    const call = await waitForCalls(pid, 1);
    await roundTrip();
    assert.equal(await isPending(both), true);
    call.release();
    const results = await both;
    assert.deepEqual(
      results.map((r) => r.rows),
      [[{ a: 1 }], [{ b: 2 }]],
    );
    assert.equal(callsOf(pid).length, 1);
  } finally {
    holding = false;
    await client.end().catch(() => {});
  }
});

/** Bind (unnamed portal and statement, no parameters, text results), Execute (all rows), Sync. */
function bindExecuteSync(): Buffer {
  const bind = Buffer.from([0x42, 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
  const execute = Buffer.from([0x45, 0, 0, 0, 9, 0, 0, 0, 0, 0]);
  const sync = Buffer.from([0x53, 0, 0, 0, 4]);
  return Buffer.concat([bind, execute, sync]);
}

test("pipelined extended-protocol queries are each held in turn, the replies after a held one kept back", async () => {
  const count = 20;
  holding = true;
  const client = await connect();
  const { processID: pid, stream } = internals(client);
  // Past its startup, the client's socket is the test's: its queries are written and read raw.
  stream.removeAllListeners("data");
  const replies = new FrameSplitter([TAG.readyForQuery, 0x44 /* DataRow */], false);
  const values: number[] = [];
  let readyCount = 0;
  let readyStatuses = "";
  stream.on("data", (chunk: Buffer) => {
    replies.push(chunk);
    for (let frame = replies.next(); frame; frame = replies.next()) {
      if (frame.kind !== "message") continue;
      if (frame.tag === TAG.readyForQuery) {
        readyCount++;
        readyStatuses += String.fromCharCode(frame.bytes[5]);
      } else {
        // One column: int16 count, int32 length, the text.
        const length = frame.bytes.readInt32BE(7);
        values.push(Number(frame.bytes.toString("utf8", 11, 11 + length)));
      }
    }
  });
  try {
    const queries = Array.from({ length: count }, (_, k) =>
      Buffer.concat([encodeParse({ name: "", sql: `SELECT ${k + 1}`, paramTypes: [] }), bindExecuteSync()]),
    );
    stream.write(Buffer.concat(queries));
    for (let k = 1; k <= count; k++) {
      const call = await waitForCalls(pid, k);
      await waitFor(`query ${k}'s row`, async () => values.length >= k, 10_000);
      await roundTrip();
      assert.equal(readyCount, k - 1, `query ${k}'s ReadyForQuery is held`);
      assert.equal(values.length, k, "nothing after the held ReadyForQuery reaches the client");
      call.release();
      await waitFor(`query ${k}'s ReadyForQuery`, async () => readyCount >= k, 10_000);
    }
    await roundTrip();
    assert.equal(readyCount, count);
    assert.equal(readyStatuses, "I".repeat(count));
    assert.deepEqual(
      values,
      Array.from({ length: count }, (_, k) => k + 1),
    );
    assert.equal(callsOf(pid).length, count);
  } finally {
    holding = false;
    stream.destroy();
  }
});

test("over TLS, a held result arrives whole and in order", async () => {
  const { key: tlsKey, cert: tlsCert } = selfSignedCertificate("strata-hold-tls-");
  const tlsListener = await startListener(
    { host: "127.0.0.1", port: 0, tls_key: tlsKey, tls_cert: tlsCert },
    { host: store().host, port: store().port },
    rewriter,
    log,
  );
  const rowCount = 20_000;
  const sql = `SELECT i, repeat('x', 1000) AS x FROM generate_series(1, ${rowCount}) i`;
  holding = true;
  const client = await connect({ port: tlsListener.address.port, ssl: { rejectUnauthorized: false } });
  try {
    const { processID: pid } = internals(client);
    assert.equal(tlsListener.sessions()[0]?.tls, true);
    for (let round = 1; round <= 2; round++) {
      const result = client.query<{ i: number; x: string }>(sql);
      const call = await waitForCalls(pid, round);
      await roundTrip();
      assert.equal(await isPending(result), true, "the result waits for its ReadyForQuery");
      call.release();
      const { rows } = await result;
      assert.equal(rows.length, rowCount);
      rows.forEach((row, k) => {
        if (row.i !== k + 1 || row.x.length !== 1000) assert.fail(`row ${k} is ${row.i}`);
      });
    }
  } finally {
    holding = false;
    await client.end().catch(() => {});
    await tlsListener.close();
  }
});
