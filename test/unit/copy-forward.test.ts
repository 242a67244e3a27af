// Forwarding a COPY's CopyData messages from one server to another (src/upstream/copy-forward.ts):
// the header walker on bytes captured from a real server, split at every kind of boundary, and
// forwardCopy between two real connections, with its failures on either side.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import type { Socket } from "node:net";
import { pipeline } from "node:stream/promises";
import { after, afterEach, before, describe, test } from "node:test";
import pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import { CopyOutWalker, copyErrorSide, forwardCopy } from "../../src/upstream/copy-forward.ts";
import { copyFormat, type PublishedTable } from "../../src/upstream/snapshot.ts";
import { startPrimary, type TestCluster } from "../support/postgres.ts";
import { seededRandom } from "../support/workload.ts";

let cluster: TestCluster;
const clients: pg.Client[] = [];

async function connect(database = "postgres"): Promise<pg.Client> {
  const client = new pg.Client(cluster.connectionConfig(database));
  client.on("error", () => {});
  await client.connect();
  clients.push(client);
  return client;
}

before(async () => {
  cluster = await startPrimary();
  await cluster.query("CREATE DATABASE target");
  await cluster.query(`
    CREATE FUNCTION noisy(i int) RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
      IF i % 3 = 0 THEN RAISE NOTICE 'row % of a noisy copy', i; END IF;
      RETURN i;
    END $$;
    CREATE TABLE mixed (id int PRIMARY KEY, t text, n numeric, b bytea, j jsonb, a int[]);
    INSERT INTO mixed
      SELECT i,
             CASE i % 5 WHEN 0 THEN NULL WHEN 1 THEN E'tab\\there\\nnewline \\\\ backslash' WHEN 2 THEN 'ünïcødé ✓' ELSE repeat('x', i % 300) END,
             i * 1.25, decode(md5(i::text), 'hex'), jsonb_build_object('i', i, 's', 'q"uote'), ARRAY[i, -i]
      FROM generate_series(1, 20000) i;
    INSERT INTO mixed SELECT 100000 + i, repeat(md5(i::text), 100000), i, NULL, NULL, NULL FROM generate_series(1, 3) i;
  `);
  await cluster.query(
    `CREATE TABLE mixed (id int PRIMARY KEY, t text, n numeric, b bytea, j jsonb, a int[]);
     CREATE TABLE ints (i int CHECK (i <> 50));
     CREATE TABLE nums (i int);
     CREATE TABLE wide (i int, t text CHECK (t <> 'stop'));`,
    [],
    "target",
  );
});
// Each test's connections end with it: a failed test's open transaction must not block the next.
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.end().catch(() => {})));
});
after(async () => {
  await cluster?.stop();
});

// ---------------------------------------------------------------------------------------------
// The header walker, on captured bytes

/** Every byte a query's reply brings on `client`'s socket, as the server sent it. */
async function capture(client: pg.Client, sql: string): Promise<Buffer> {
  const stream = (client as unknown as { connection: { stream: Socket } }).connection.stream;
  const chunks: Buffer[] = [];
  let readyForQuery!: () => void;
  const ready = new Promise<void>((resolve) => {
    readyForQuery = resolve;
  });
  // Up to the ReadyForQuery, which comes after node-postgres has already failed a query.
  const record = (chunk: Buffer) => {
    chunks.push(Buffer.from(chunk));
    const all = Buffer.concat(chunks);
    if (all.length >= 6 && all[all.length - 6] === 0x5a && all.readUInt32BE(all.length - 5) === 5)
      readyForQuery();
  };
  stream.on("data", record);
  try {
    await client.query(sql).catch(() => {});
    await ready;
  } finally {
    stream.removeListener("data", record);
  }
  return Buffer.concat(chunks);
}

interface Message {
  type: string;
  start: number;
  end: number;
}

/** A plain reading of a reply's messages, to check the walker against. */
function messages(bytes: Buffer): Message[] {
  const out: Message[] = [];
  for (let pos = 0; pos < bytes.length; ) {
    const end = pos + 1 + bytes.readUInt32BE(pos + 1);
    out.push({ type: String.fromCharCode(bytes[pos]), start: pos, end });
    pos = end;
  }
  assert.equal(out.at(-1)?.type, "Z", "a whole reply");
  return out;
}

/** What forwarding `bytes` should produce: the copy's CopyData messages and where the copy ends. */
function expected(bytes: Buffer) {
  const all = messages(bytes);
  const endIndex = all.findIndex((m) => !"dHNSA".includes(m.type));
  const data = all.slice(0, endIndex).filter((m) => m.type === "d");
  return {
    framed: Buffer.concat(data.map((m) => bytes.subarray(m.start, m.end))),
    messages: data.length,
    payloadBytes: data.reduce((n, m) => n + (m.end - m.start - 5), 0),
    end: all[endIndex].start,
    endType: all[endIndex].type,
  };
}

/** Walk `bytes` cut at `cuts`; returns what came out, checking the walker's figures on the way. */
function walk(bytes: Buffer, cuts: number[]) {
  const walker = new CopyOutWalker();
  const pieces: Buffer[] = [];
  let messageCount = 0;
  let payloadBytes = 0;
  let end = -1;
  let offset = 0;
  for (const cut of [...cuts, bytes.length]) {
    if (cut <= offset) continue;
    // A fresh copy, as a socket read would be.
    const chunk = Buffer.from(bytes.subarray(offset, cut));
    const step = walker.walk(chunk);
    for (const piece of step.pieces) pieces.push(Buffer.from(piece));
    assert.equal(
      step.pieces.reduce((n, p) => n + p.length, 0) >= step.payloadBytes,
      true,
      "payload within the pieces",
    );
    messageCount += step.messages;
    payloadBytes += step.payloadBytes;
    if (step.end >= 0) {
      end = offset + step.end;
      assert.equal(walker.done, true);
      assert.equal(walker.owed, 0);
      break;
    }
    offset = cut;
  }
  return { framed: Buffer.concat(pieces), messages: messageCount, payloadBytes, end };
}

function assertWalks(bytes: Buffer, label: string) {
  const want = expected(bytes);
  const random = seededRandom(bytes.length);
  const splits: [string, number[]][] = [["whole", []]];
  for (const size of [1, 2, 3, 4, 5, 6, 7, 9, 64, 1000, 65536]) {
    splits.push([
      `every ${size} bytes`,
      Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => i * size),
    ]);
  }
  for (let r = 0; r < 20; r++) {
    const cuts = Array.from({ length: 1 + Math.floor(random() * 40) }, () =>
      Math.floor(random() * bytes.length),
    );
    splits.push([`random cuts ${r}`, cuts.sort((a, b) => a - b)]);
  }
  // Cuts at every position of the header of a message in the middle, and around the end.
  const all = messages(bytes);
  for (const m of [all[Math.floor(all.length / 2)], ...all.filter((x) => x.start === want.end)]) {
    for (let k = -1; k <= 6; k++) splits.push([`cut at ${m.type} header + ${k}`, [m.start + k]]);
  }
  for (const [name, cuts] of splits) {
    const got = walk(bytes, cuts);
    assert.equal(got.messages, want.messages, `${label}, ${name}: messages`);
    assert.equal(got.payloadBytes, want.payloadBytes, `${label}, ${name}: payload bytes`);
    assert.equal(got.end, want.end, `${label}, ${name}: end`);
    assert.ok(got.framed.equals(want.framed), `${label}, ${name}: forwarded bytes`);
  }
  return want;
}

describe("CopyOutWalker on a real server's replies", () => {
  test("text COPY: rows with escapes, NULLs, unicode, and values larger than a socket read", async () => {
    const client = await connect();
    const bytes = await capture(
      client,
      "COPY (SELECT id, substr(t, 1, 150000), n, b, j, a FROM mixed WHERE id % 97 = 0 OR id > 100000) TO STDOUT",
    );
    const want = assertWalks(bytes, "text");
    assert.equal(want.messages, 206 + 3);
    assert.equal(want.endType, "c");
  });

  test("a zero-row COPY", async () => {
    const client = await connect();
    const bytes = await capture(client, "COPY (SELECT * FROM mixed WHERE false) TO STDOUT");
    const want = assertWalks(bytes, "empty");
    assert.equal(want.messages, 0);
    assert.equal(want.endType, "c");
  });

  test("NoticeResponse and ParameterStatus between CopyData messages are skipped", async () => {
    const client = await connect();
    const bytes = await capture(
      client,
      "COPY (SELECT noisy(i), repeat('y', i) FROM generate_series(1, 200) i) TO STDOUT",
    );
    const kinds = new Set(messages(bytes).map((m) => m.type));
    assert.ok(kinds.has("N"), "the server sent notices during the copy");
    assertWalks(bytes, "notices");
    // The server reports a changed setting before ReadyForQuery, never in a COPY: splice one
    // (as a server sent it) between two rows to cover the case.
    const set = await capture(client, "SET application_name = 'copy forward walker'");
    const status = messages(set).find((m) => m.type === "S")!;
    const copy = messages(bytes);
    const at = copy.filter((m) => m.type === "d")[50].end;
    const spliced = Buffer.concat([
      bytes.subarray(0, at),
      set.subarray(status.start, status.end),
      bytes.subarray(at),
    ]);
    const want = assertWalks(spliced, "parameter status");
    assert.equal(want.messages, 200);
  });

  test("an ErrorResponse in the middle of the rows ends the copy there", async () => {
    const client = await connect();
    const bytes = await capture(
      client,
      "COPY (SELECT i, 1 / (i - 3000) FROM generate_series(1, 5000) i) TO STDOUT",
    );
    const want = assertWalks(bytes, "error");
    assert.equal(want.endType, "E");
    assert.equal(want.messages, 2999);
  });

  test("an ErrorResponse before any COPY message, and a reply that is not a COPY", async () => {
    const client = await connect();
    const denied = assertWalks(await capture(client, "COPY (SELECT * FROM missing) TO STDOUT"), "no table");
    assert.equal(denied.endType, "E");
    assert.equal(denied.end, 0);
    const select = assertWalks(await capture(client, "SELECT 1"), "select");
    assert.equal(select.endType, "T");
  });

  test("binary COPY", async () => {
    const client = await connect();
    const bytes = await capture(
      client,
      "COPY (SELECT * FROM mixed WHERE id % 101 = 0) TO STDOUT (FORMAT binary)",
    );
    const want = assertWalks(bytes, "binary");
    // The file header travels with the first row; the trailer is a message of its own.
    assert.equal(want.messages, 198 + 1);
  });

  test("a malformed length is an error", () => {
    const walker = new CopyOutWalker();
    assert.throws(() => walker.walk(Buffer.from([0x64, 0, 0, 0, 2, 1, 2])), /malformed message/);
  });
});

// ---------------------------------------------------------------------------------------------
// forwardCopy between two connections

const MIXED_COLS = "id, t, n, b, j, a";

/** The COPY text of a query, as pg-copy-streams reads it: its size and rows. */
async function copyText(client: pg.Client, sql: string): Promise<{ bytes: number; lines: number }> {
  let bytes = 0;
  let lines = 0;
  await pipeline(client.query(copyTo(`COPY (${sql}) TO STDOUT`)), async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) {
      bytes += chunk.length;
      for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
    }
  });
  return { bytes, lines };
}

async function tableDigest(client: pg.Client, table: string): Promise<string> {
  const { rows } = await client.query(
    `SELECT count(*)::int AS n, md5(string_agg(t::text, '|' ORDER BY t.id)) AS d FROM ${table} t`,
  );
  return `${rows[0].n}:${rows[0].d}`;
}

async function assertUsable(client: pg.Client) {
  assert.equal((await client.query("SELECT 42 AS x")).rows[0].x, 42);
}

describe("forwardCopy", () => {
  test("copies every row unchanged, reports rows and COPY text bytes, and hashes deterministically", async () => {
    const source = await connect();
    const target = await connect("target");
    const select = `SELECT ${MIXED_COLS} FROM mixed`;
    const digests: string[] = [];
    for (let run = 0; run < 2; run++) {
      await target.query("TRUNCATE mixed");
      await target.query("BEGIN");
      const sha = createHash("sha256");
      let rows = 0;
      let bytes = 0;
      const result = await forwardCopy(
        source,
        `COPY (${select}) TO STDOUT`,
        target,
        `COPY mixed (${MIXED_COLS}) FROM STDIN`,
        (framed, r, b) => {
          sha.update(framed);
          rows += r;
          bytes += b;
        },
      );
      await target.query("COMMIT");
      const text = await copyText(source, select);
      assert.deepEqual(result, { rows: 20003, bytes: text.bytes });
      assert.equal(rows, 20003);
      assert.equal(bytes, text.bytes);
      assert.equal(text.lines, 20003);
      digests.push(sha.digest("hex"));
    }
    assert.equal(digests[0], digests[1]);
    assert.equal(await tableDigest(target, "mixed"), await tableDigest(source, "mixed"));
    await assertUsable(source);
    await assertUsable(target);
  });

  test("a zero-row copy", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE ints");
    let calls = 0;
    const result = await forwardCopy(
      source,
      "COPY (SELECT 1 WHERE false) TO STDOUT",
      target,
      "COPY ints (i) FROM STDIN",
      () => calls++,
    );
    assert.deepEqual(result, { rows: 0, bytes: 0 });
    assert.equal(calls, 0);
    assert.equal((await target.query("SELECT count(*)::int AS n FROM ints")).rows[0].n, 0);
  });

  test("notices of the source during the copy are dropped", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE ints");
    let notices = 0;
    source.on("notice", () => notices++);
    const result = await forwardCopy(
      source,
      "COPY (SELECT noisy(i) FROM generate_series(1, 30) i) TO STDOUT",
      target,
      "COPY ints (i) FROM STDIN",
    );
    assert.equal(result.rows, 30);
    assert.equal(notices, 0);
    assert.equal((await target.query("SELECT sum(i)::int AS s FROM ints")).rows[0].s, 465);
    await assertUsable(source);
  });

  test("binary format on both sides", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE mixed");
    const result = await forwardCopy(
      source,
      `COPY (SELECT ${MIXED_COLS} FROM mixed) TO STDOUT (FORMAT binary)`,
      target,
      `COPY mixed (${MIXED_COLS}) FROM STDIN (FORMAT binary)`,
    );
    assert.equal(result.rows, 20003);
    assert.equal(await tableDigest(target, "mixed"), await tableDigest(source, "mixed"));
  });

  test("the source's error mid-copy fails the target's COPY and is thrown as it is", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE ints");
    await source.query("BEGIN");
    await target.query("BEGIN");
    const err = await forwardCopy(
      source,
      "COPY (SELECT 1 / (i - 40000) FROM generate_series(1, 50000) i) TO STDOUT",
      target,
      "COPY ints (i) FROM STDIN",
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error & { code?: string },
    );
    assert.equal(err.message, "division by zero");
    assert.equal(err.code, "22012");
    assert.equal(copyErrorSide(err), "source");
    // Both transactions are aborted; both connections take the next query.
    await assert.rejects(target.query("SELECT 1"), /current transaction is aborted/);
    await target.query("ROLLBACK");
    await source.query("ROLLBACK");
    await assertUsable(source);
    await assertUsable(target);
    assert.equal((await target.query("SELECT count(*)::int AS n FROM ints")).rows[0].n, 0);
  });

  test("the source failing before its data (no such table)", async () => {
    const source = await connect();
    const target = await connect("target");
    const err = await forwardCopy(
      source,
      "COPY (SELECT * FROM nowhere) TO STDOUT",
      target,
      "COPY ints (i) FROM STDIN",
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error & { code?: string },
    );
    assert.equal(err.code, "42P01");
    assert.equal(copyErrorSide(err), "source");
    await assertUsable(source);
    await assertUsable(target);
  });

  test("the target failing at once (no such table) never starts the source's COPY", async () => {
    const source = await connect();
    const target = await connect("target");
    const err = await forwardCopy(
      source,
      "COPY (SELECT 1) TO STDOUT",
      target,
      "COPY nowhere (i) FROM STDIN",
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error & { code?: string },
    );
    assert.equal(err.code, "42P01");
    assert.equal(copyErrorSide(err), "target");
    await assertUsable(source);
    await assertUsable(target);
  });

  test("the target's error mid-copy cancels the source's COPY, and both connections stay usable", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE ints");
    await source.query("BEGIN ISOLATION LEVEL REPEATABLE READ");
    const started = Date.now();
    // 20 million rows: far more than the time the test allows if they were read to the end.
    const err = await forwardCopy(
      source,
      "COPY (SELECT i FROM generate_series(1, 20000000) i) TO STDOUT",
      target,
      "COPY ints (i) FROM STDIN",
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error & { code?: string },
    );
    assert.equal(err.code, "23514", err.message);
    assert.match(err.message, /ints_i_check/);
    assert.equal(copyErrorSide(err), "target");
    assert.ok(Date.now() - started < 5000, `cancelled, not read to the end (${Date.now() - started} ms)`);
    await source.query("ROLLBACK");
    await assertUsable(source);
    await assertUsable(target);
  });

  test("the target failing while a large row is half sent: the message is completed, the connection stays in step", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE wide");
    await target.query("BEGIN");
    const err = await forwardCopy(
      source,
      "COPY (SELECT i, CASE WHEN i = 1 THEN 'stop' ELSE repeat(md5(i::text), 1000000) END FROM generate_series(1, 4) i) TO STDOUT",
      target,
      "COPY wide (i, t) FROM STDIN",
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error & { code?: string },
    );
    assert.equal(err.code, "23514", err.message);
    assert.equal(copyErrorSide(err), "target");
    await target.query("ROLLBACK");
    await assertUsable(target);
    await assertUsable(source);
  });

  test("backpressure: the source is not read while the target's socket is full", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE wide");
    // The target turns each 32 MB row into a slow insert, so its socket fills up.
    const stream = (source as unknown as { connection: { stream: Socket } }).connection.stream;
    let pauses = 0;
    let maxBuffered = 0;
    const targetStream = (target as unknown as { connection: { stream: Socket } }).connection.stream;
    const pause = stream.pause;
    stream.pause = function (this: Socket) {
      pauses++;
      return pause.call(this);
    };
    try {
      const result = await forwardCopy(
        source,
        "COPY (SELECT i, repeat(md5(i::text), 1000000) FROM generate_series(1, 6) i) TO STDOUT",
        target,
        "COPY wide (i, t) FROM STDIN",
        () => {
          maxBuffered = Math.max(maxBuffered, targetStream.writableLength);
        },
      );
      assert.equal(result.rows, 6);
    } finally {
      stream.pause = pause;
    }
    assert.ok(pauses > 0, "the source was paused");
    // Bounded by about one socket read beyond the high-water mark, not by the 192 MB copied.
    assert.ok(maxBuffered < 4 * 1024 * 1024, `target write buffer peaked at ${maxBuffered} bytes`);
    assert.equal((await target.query("SELECT count(*)::int AS n FROM wide")).rows[0].n, 6);
  });

  test("the source's connection ending mid-copy fails the target's COPY", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("TRUNCATE nums");
    await target.query("BEGIN");
    const pid = (await source.query("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    let killed = false;
    const err = await forwardCopy(
      source,
      "COPY (SELECT i FROM generate_series(1, 20000000) i) TO STDOUT",
      target,
      "COPY nums (i) FROM STDIN",
      (_framed, rows) => {
        if (!killed && rows > 0) {
          killed = true;
          void cluster.query("SELECT pg_terminate_backend($1)", [pid]);
        }
      },
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error,
    );
    assert.equal(copyErrorSide(err), "source");
    assert.match(err.message, /terminat/);
    await target.query("ROLLBACK");
    await assertUsable(target);
    assert.equal((await target.query("SELECT count(*)::int AS n FROM nums")).rows[0].n, 0);
  });

  test("an error thrown by onData fails both sides and is thrown", async () => {
    const source = await connect();
    const target = await connect("target");
    await target.query("BEGIN");
    const err = await forwardCopy(
      source,
      "COPY (SELECT i FROM generate_series(1, 20000000) i) TO STDOUT",
      target,
      "COPY nums (i) FROM STDIN",
      () => {
        throw new Error("enough");
      },
    ).then(
      () => assert.fail("the copy should fail"),
      (e: unknown) => e as Error,
    );
    assert.equal(err.message, "enough");
    assert.equal(copyErrorSide(err), undefined);
    await target.query("ROLLBACK");
    await assertUsable(source);
    await assertUsable(target);
  });
});

describe("the snapshot's COPY format", () => {
  test("binary only when every column has the same built-in type and typmod on both sides", async () => {
    const ddl = `CREATE TYPE hue AS ENUM ('red');
      CREATE DOMAIN positive AS int CHECK (VALUE > 0);
      CREATE TABLE fmt_plain (a int, b numeric(12, 2), c char(84), d text[], e timestamptz, f jsonb, g bytea);
      CREATE TABLE fmt_enum (a int, h hue);
      CREATE TABLE fmt_domain (a int, p positive);
      CREATE TABLE fmt_enum_array (a int, hs hue[]);`;
    await cluster.query(
      `${ddl} CREATE TABLE fmt_typmod (a varchar(10)); CREATE TABLE fmt_type (a int, b int)`,
    );
    await cluster.query(
      `${ddl} CREATE TABLE fmt_typmod (a varchar(20)); CREATE TABLE fmt_type (a int, b bigint)`,
      [],
      "target",
    );
    const primary = await connect();
    const store = await connect("target");
    const shape = (name: string, columns: string[]): PublishedTable => ({
      schema: "public",
      name,
      columns,
      rowFilter: null,
      partitioned: false,
      keyColumns: [],
    });
    const format = (name: string, columns: string[]) => copyFormat(primary, store, shape(name, columns));
    assert.equal(await format("fmt_plain", ["a", "b", "c", "d", "e", "f", "g"]), "binary");
    assert.equal(await format("fmt_plain", ["a", "c"]), "binary");
    assert.equal(await format("fmt_enum", ["a", "h"]), "text");
    assert.equal(await format("fmt_enum", ["a"]), "binary");
    assert.equal(await format("fmt_domain", ["a", "p"]), "text");
    assert.equal(await format("fmt_enum_array", ["a", "hs"]), "text");
    assert.equal(await format("fmt_typmod", ["a"]), "text");
    assert.equal(await format("fmt_type", ["a", "b"]), "text");
    assert.equal(await format("fmt_missing", ["a"]), "text");
  });
});
