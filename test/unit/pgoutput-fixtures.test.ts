// pgoutput decoding and encoding against bytes captured from PostgreSQL 15
// (test/fixtures/capture-pgoutput.ts). Every captured message must decode, re-encode to exactly
// the same bytes, and say what the workload did: the values inserted, the relations, key flags
// and replica identities, xids shared by Begin/Stream messages, LSNs in order.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, test } from "node:test";
import { dateToPgTime, parseLsn } from "../../src/protocol/lsn.ts";
import { type PgoutputMessage, type RelationColumn, UNCHANGED_TOAST } from "../../src/protocol/messages.ts";
import { decodePgoutput, encodePgoutput } from "../../src/protocol/pgoutput.ts";
import {
  type Decoded,
  decodeFixture,
  fact,
  fixtureNames,
  loadFixture,
  type PgoutputFixture,
} from "../fixtures/pgoutput/fixtures.ts";

type Tag = PgoutputMessage["tag"];
type Of<T extends Tag> = Extract<PgoutputMessage, { tag: T }>;

function ofTag<T extends Tag>(decoded: Decoded[], tag: T): Of<T>[] {
  return decoded.filter((d) => d.msg.tag === tag).map((d) => d.msg as Of<T>);
}

function tags(decoded: Decoded[]): string[] {
  return decoded.map((d) => d.msg.tag);
}

function load(name: string): { fx: PgoutputFixture; decoded: Decoded[] } {
  const fx = loadFixture(name);
  return { fx, decoded: decodeFixture(fx) };
}

/** The server's clock and ours are the same machine's; allow slack for scheduling. */
function assertInWindow(fx: PgoutputFixture, time: bigint, what: string): void {
  const slack = 5_000_000n;
  const start = dateToPgTime(new Date(fx.window.start)) - slack;
  const end = dateToPgTime(new Date(fx.window.end)) + slack;
  assert.ok(
    time >= start && time <= end,
    `${what} ${time} outside the capture window ${fx.window.start} .. ${fx.window.end}`,
  );
}

function col(name: string, typeOid: number, isKey = false, typeMod = -1): RelationColumn {
  return { isKey, name, typeOid, typeMod };
}

/** Begin .. Commit pairs: same LSN and time on both ends, the xid of the peek row. */
function assertTransactionsFramed(decoded: Decoded[]): void {
  let open: { begin: Of<"Begin">; row: Decoded } | undefined;
  for (const d of decoded) {
    if (d.msg.tag === "Begin") {
      assert.equal(open, undefined, "Begin inside a transaction");
      assert.equal(d.msg.xid, d.rowXid);
      open = { begin: d.msg, row: d };
    } else if (d.msg.tag === "Commit") {
      assert.ok(open, "Commit without Begin");
      assert.equal(d.msg.commitLsn, open.begin.finalLsn, "Begin.finalLsn is the commit LSN");
      assert.equal(d.msg.commitTime, open.begin.commitTime);
      assert.ok(d.msg.endLsn > d.msg.commitLsn, "the commit record ends after it starts");
      assert.equal(d.msg.flags, 0);
      open = undefined;
    }
  }
  assert.equal(open, undefined, "unterminated transaction");
}

describe("every captured pgoutput message", () => {
  for (const name of fixtureNames()) {
    test(`${name}: decodes and re-encodes byte for byte`, () => {
      const { fx, decoded } = load(name);
      assert.ok(decoded.length > 0);
      let previousLsn = 0n;
      for (const d of decoded) {
        const options = { inStream: d.inStream };
        assert.deepEqual(encodePgoutput(d.msg, options), d.bytes, `${d.msg.tag} at ${formatRow(d)}`);
        // The stateless decoder, told the same context, agrees with the stateful one.
        assert.deepEqual(decodePgoutput(d.bytes, options), d.msg);
        assert.ok(d.rowLsn >= previousLsn, `peek LSNs never go back (${fx.name})`);
        previousLsn = d.rowLsn;
      }
    });
  }
});

function formatRow(d: Decoded): string {
  return `${d.rowLsn} (${d.bytes.toString("hex")})`;
}

describe("protocol 1", () => {
  test("inserts, updates and deletes with NULLs, quoting, unicode, enum and domain types", () => {
    const { fx, decoded } = load("proto1-dml");
    assert.deepEqual(tags(decoded), [
      "Begin",
      "Type",
      "Type",
      "Relation",
      "Insert",
      "Insert",
      "Insert",
      "Insert",
      "Commit",
      "Begin",
      "Update",
      "Update",
      "Commit",
      "Begin",
      "Delete",
      "Commit",
    ]);
    assertTransactionsFramed(decoded);
    const items = fact(fx, "itemsOid");
    const mood = fact(fx, "moodTypeOid");
    const posint = fact(fx, "posintTypeOid");

    const begins = ofTag(decoded, "Begin");
    assert.deepEqual(
      begins.map((b) => b.xid),
      [fact(fx, "insertXid"), fact(fx, "updateXid"), fact(fx, "deleteXid")],
    );
    for (const b of begins) assertInWindow(fx, b.commitTime, "commit time");
    const commits = ofTag(decoded, "Commit");
    assert.ok(commits[0].endLsn <= commits[1].commitLsn && commits[1].endLsn <= commits[2].commitLsn);

    // A domain is described by its base type (pg_catalog is sent as the empty string), under the
    // domain's own oid; an enum by itself.
    assert.deepEqual(ofTag(decoded, "Type"), [
      { tag: "Type", typeOid: posint, namespace: "", name: "int4" },
      { tag: "Type", typeOid: mood, namespace: "public", name: "mood" },
    ]);
    // The generated column `total` is not sent.
    assert.deepEqual(ofTag(decoded, "Relation"), [
      {
        tag: "Relation",
        relationOid: items,
        namespace: "public",
        name: "items",
        replicaIdentity: "d",
        columns: [
          col("id", 23, true),
          col("name", 25),
          col("qty", posint),
          col("price", 1700, false, (10 << 16) + 2 + 4),
          col("mood", mood),
          col("tags", 1009),
          col("seen", 1184),
        ],
      },
    ]);
    const quoted = 'it\'s a "quote", a back\\slash,\na newline and a\ttab';
    assert.deepEqual(ofTag(decoded, "Insert"), [
      {
        tag: "Insert",
        relationOid: items,
        newTuple: ["1", "plain", "3", "9.99", "happy", "{a,b}", "2024-01-02 03:04:05.678901+00"],
      },
      { tag: "Insert", relationOid: items, newTuple: ["2", quoted, null, null, null, null, null] },
      {
        tag: "Insert",
        relationOid: items,
        newTuple: [
          "3",
          "héllo wörld ✓ 😀 日本語",
          "1",
          "0.50",
          "sad",
          '{"with space","quo\\"te"}',
          "-infinity",
        ],
      },
      {
        tag: "Insert",
        relationOid: items,
        newTuple: ["4", "", "2", "-1.00", "ok", "{}", "1999-12-31 23:59:59.999999+00"],
      },
    ]);
    const nulls = [null, null, null, null, null, null];
    assert.deepEqual(ofTag(decoded, "Update"), [
      // A non-key column changed: no old tuple at all.
      {
        tag: "Update",
        relationOid: items,
        newTuple: ["1", "plain", "4", "9.99", "happy", "{a,b}", "2024-01-02 03:04:05.678901+00"],
      },
      // The key changed: the old key, with every non-key column NULL ('n', not 'u').
      {
        tag: "Update",
        relationOid: items,
        oldKind: "K",
        oldTuple: ["2", ...nulls],
        newTuple: ["20", quoted, null, null, null, null, null],
      },
    ]);
    assert.deepEqual(ofTag(decoded, "Delete"), [
      { tag: "Delete", relationOid: items, oldKind: "K", oldTuple: ["3", ...nulls] },
    ]);
  });

  test("replica identity full, using index and nothing", () => {
    const { fx, decoded } = load("proto1-identity");
    assertTransactionsFramed(decoded);
    const full = fact(fx, "full_rowsOid");
    const byIndex = fact(fx, "by_indexOid");
    const none = fact(fx, "no_identityOid");
    assert.deepEqual(
      ofTag(decoded, "Relation").map((r) => [r.relationOid, r.name, r.replicaIdentity, r.columns]),
      [
        // FULL: every column is part of the identity.
        [full, "full_rows", "f", [col("id", 23, true), col("label", 25, true), col("n", 23, true)]],
        [byIndex, "by_index", "i", [col("id", 23), col("code", 25, true), col("label", 25)]],
        [none, "no_identity", "n", [col("id", 23), col("label", 25)]],
      ],
    );
    assert.deepEqual(
      decoded.filter((d) => ["Insert", "Update", "Delete"].includes(d.msg.tag)).map((d) => d.msg),
      [
        { tag: "Insert", relationOid: full, newTuple: ["1", "one", "10"] },
        { tag: "Insert", relationOid: full, newTuple: ["2", null, "20"] },
        {
          tag: "Update",
          relationOid: full,
          oldKind: "O",
          oldTuple: ["1", "one", "10"],
          newTuple: ["1", "one", "11"],
        },
        { tag: "Delete", relationOid: full, oldKind: "O", oldTuple: ["2", null, "20"] },
        { tag: "Insert", relationOid: byIndex, newTuple: ["1", "A", "first"] },
        { tag: "Update", relationOid: byIndex, newTuple: ["1", "A", "changed"] },
        {
          tag: "Update",
          relationOid: byIndex,
          oldKind: "K",
          oldTuple: [null, "A", null],
          newTuple: ["1", "B", "changed"],
        },
        { tag: "Delete", relationOid: byIndex, oldKind: "K", oldTuple: [null, "B", null] },
        { tag: "Insert", relationOid: none, newTuple: ["1", "x"] },
      ],
    );
  });

  test("truncate: cascade and restart identity flags, cascaded relations listed", () => {
    const { fx, decoded } = load("proto1-truncate");
    assertTransactionsFramed(decoded);
    const parent = fact(fx, "parentOid");
    const child = fact(fx, "childOid");
    const solo = fact(fx, "soloOid");
    assert.deepEqual(ofTag(decoded, "Truncate"), [
      { tag: "Truncate", cascade: true, restartIdentity: false, relationOids: [parent, child] },
      { tag: "Truncate", cascade: false, restartIdentity: true, relationOids: [solo] },
      { tag: "Truncate", cascade: true, restartIdentity: true, relationOids: [parent, child] },
      { tag: "Truncate", cascade: false, restartIdentity: false, relationOids: [solo] },
    ]);
    // Each truncated relation is described (Relation) before the Truncate that names it.
    for (let i = 0; i < decoded.length; i++) {
      const m = decoded[i].msg;
      if (m.tag !== "Truncate") continue;
      const described = decoded
        .slice(0, i)
        .map((d) => d.msg)
        .filter((p): p is Of<"Relation"> => p.tag === "Relation")
        .map((r) => r.relationOid);
      for (const oid of m.relationOids) assert.ok(described.includes(oid));
    }
  });

  test("an unchanged TOASTed value is sent as 'u'", () => {
    const { fx, decoded } = load("proto1-toast");
    assertTransactionsFramed(decoded);
    const docs = fact(fx, "docsOid");
    let body = "";
    for (let i = 1; i <= 100; i++) body += createHash("md5").update(String(i)).digest("hex");
    assert.equal(body.length, 3200);
    assert.deepEqual(ofTag(decoded, "Insert"), [
      { tag: "Insert", relationOid: docs, newTuple: ["1", body, "1"] },
    ]);
    assert.deepEqual(ofTag(decoded, "Update"), [
      { tag: "Update", relationOid: docs, newTuple: ["1", UNCHANGED_TOAST, "2"] },
      { tag: "Update", relationOid: docs, newTuple: ["1", "short now", "3"] },
    ]);
  });

  test("binary = true: columns in their binary send format, as views into the message", () => {
    const { fx, decoded } = load("proto1-binary");
    assertTransactionsFramed(decoded);
    const bin = fact(fx, "binOid");
    const [relation] = ofTag(decoded, "Relation");
    assert.equal(relation.relationOid, bin);
    assert.deepEqual(
      relation.columns.map((c) => c.name),
      ["id", "big", "flag", "label", "raw", "ts", "num", "arr", "m", "nothing"],
    );
    const inserts = decoded.filter((d) => d.msg.tag === "Insert");
    assert.equal(inserts.length, 1);
    const { bytes, msg } = inserts[0];
    assert.equal(msg.tag, "Insert");
    const row = (msg as Of<"Insert">).newTuple;
    assert.equal(row.length, 10);
    const [id, big, flag, label, raw, ts, num, arr, m, nothing] = row as (Buffer | null)[];
    assert.equal(id?.readInt32BE(0), 1);
    assert.equal(big?.readBigInt64BE(0), 9007199254740993n);
    assert.deepEqual(flag, Buffer.from([1]));
    assert.equal(label?.toString("utf8"), "héllo");
    assert.deepEqual(raw, Buffer.from("00ff10", "hex"));
    assert.equal(ts?.readBigInt64BE(0), 0n, "2000-01-01 00:00:00+00 is the Postgres epoch");
    // numeric 1.5: ndigits 2, weight 0, sign +, dscale 1, base-10000 digits 1 and 5000.
    assert.deepEqual(num, Buffer.from("0002" + "0000" + "0000" + "0001" + "0001" + "1388", "hex"));
    // int4[] {1,2,3}: ndim 1, no nulls, element type 23, 3 elements from 1, then (len, value)s.
    assert.deepEqual(
      arr,
      Buffer.from(
        "00000001" +
          "00000000" +
          "00000017" +
          "00000003" +
          "00000001" +
          "0000000400000001" +
          "0000000400000002" +
          "0000000400000003",
        "hex",
      ),
    );
    assert.equal(m?.toString("utf8"), "ok", "an enum's binary form is its label");
    assert.equal(nothing, null);
    for (const value of [id, big, raw, arr]) {
      assert.equal(
        value?.buffer,
        bytes.buffer,
        "binary column values are views into the message, not copies",
      );
    }
    const [update] = ofTag(decoded, "Update");
    assert.deepEqual(update.newTuple[2], Buffer.from([0]));
  });

  test("logical decoding messages: transactional and not, in aborted and message-only transactions", () => {
    const { fx, decoded } = load("proto1-messages");
    assertTransactionsFramed(decoded);
    assert.deepEqual(tags(decoded), [
      "Message",
      "Begin",
      "Relation",
      "Insert",
      "Message",
      "Commit",
      "Message",
      "Begin",
      "Message",
      "Commit",
    ]);
    // Message.lsn is what pg_logical_emit_message returned (the end of the message's WAL record).
    assert.deepEqual(ofTag(decoded, "Message"), [
      {
        tag: "Message",
        transactional: false,
        lsn: parseLsn(String(fx.facts.ntLsn)),
        prefix: "strata.nt",
        content: Buffer.from([0, 0xff, 0]),
      },
      {
        tag: "Message",
        transactional: true,
        lsn: parseLsn(String(fx.facts.txMessageLsn)),
        prefix: "strata.tx",
        content: Buffer.from("hello ✓"),
      },
      {
        tag: "Message",
        transactional: false,
        lsn: parseLsn(String(fx.facts.ntInAbortedLsn)),
        prefix: "strata.nt-in-aborted",
        content: Buffer.from("still sent"),
      },
      {
        tag: "Message",
        transactional: true,
        lsn: parseLsn(String(fx.facts.onlyMessageLsn)),
        prefix: "strata.only",
        content: Buffer.alloc(0),
      },
    ]);
    assert.deepEqual(
      ofTag(decoded, "Begin").map((b) => b.xid),
      [fact(fx, "txXid"), fact(fx, "onlyMessageXid")],
    );
    assert.deepEqual(ofTag(decoded, "Insert")[0].newTuple, ["1", "with message"]);
  });

  test("origin: name and origin LSN; the origin timestamp becomes the commit time", () => {
    const { fx, decoded } = load("proto1-origin");
    assertTransactionsFramed(decoded);
    assert.deepEqual(tags(decoded), [
      "Begin",
      "Origin",
      "Relation",
      "Insert",
      "Commit",
      "Begin",
      "Origin",
      "Insert",
      "Commit",
      "Begin",
      "Insert",
      "Commit",
    ]);
    const origin = { tag: "Origin", commitLsn: parseLsn("1/23456789"), name: "strata_upstream" };
    // The session keeps the last origin LSN and timestamp for later transactions.
    assert.deepEqual(ofTag(decoded, "Origin"), [origin, origin]);
    const originTime = dateToPgTime(new Date("2024-05-06T07:08:09.123Z")) + 456n;
    const begins = ofTag(decoded, "Begin");
    assert.equal(begins[0].xid, fact(fx, "originXid"));
    assert.equal(begins[0].commitTime, originTime);
    assert.equal(begins[1].commitTime, originTime);
    assertInWindow(fx, begins[2].commitTime, "commit time without origin");
    assert.deepEqual(
      ofTag(decoded, "Insert").map((i) => i.newTuple),
      [["1"], ["2"], ["3"]],
    );
  });
});

/** Splits a streamed capture into its stream blocks and the messages between them. */
function streamBlocks(decoded: Decoded[]): { start: Of<"StreamStart">; body: PgoutputMessage[] }[] {
  const blocks: { start: Of<"StreamStart">; body: PgoutputMessage[] }[] = [];
  for (const d of decoded) {
    if (d.msg.tag === "StreamStart") blocks.push({ start: d.msg, body: [] });
    else if (d.inStream && d.msg.tag !== "StreamStop") blocks[blocks.length - 1].body.push(d.msg);
  }
  return blocks;
}

function dataXid(m: PgoutputMessage): number | undefined {
  return "xid" in m ? m.xid : undefined;
}

describe("protocol 2, streaming", () => {
  test("a large committed transaction arrives in stream blocks, then Stream Commit", () => {
    const { fx, decoded } = load("proto2-stream-commit");
    const xid = fact(fx, "streamXid");
    const blocks = streamBlocks(decoded);
    assert.ok(blocks.length >= 2, "more than 64kB of changes is streamed in several blocks");
    assert.deepEqual(
      blocks.map((b) => [b.start.xid, b.start.firstSegment]),
      blocks.map((_, i) => [xid, i === 0]),
    );
    // Outside the blocks: only the final Stream Commit.
    const outside = decoded.filter((d) => !d.inStream && d.msg.tag !== "StreamStart");
    assert.deepEqual(
      outside.map((d) => d.msg.tag),
      ["StreamCommit"],
    );
    const commit = outside[0].msg as Of<"StreamCommit">;
    assert.equal(commit.xid, xid);
    assert.equal(commit.flags, 0);
    assert.ok(commit.endLsn > commit.commitLsn);
    assertInWindow(fx, commit.commitTime, "stream commit time");
    assert.ok(decoded.every((d) => d.rowLsn <= commit.endLsn));

    // Inside a block every data message carries the transaction's xid (no subtransactions here).
    const body = blocks.flatMap((b) => b.body);
    for (const m of body) assert.equal(dataXid(m), xid, `${m.tag} carries the xid`);
    const bulk = fact(fx, "bulkOid");
    const side = fact(fx, "bulk_sideOid");
    assert.deepEqual(body[0], {
      tag: "Type",
      xid,
      typeOid: fact(fx, "moodTypeOid"),
      namespace: "public",
      name: "mood",
    });
    assert.deepEqual(body[1], {
      tag: "Relation",
      xid,
      relationOid: bulk,
      namespace: "public",
      name: "bulk",
      replicaIdentity: "d",
      columns: [col("id", 23, true), col("m", fact(fx, "moodTypeOid"))],
    });
    const inserts = body.filter((m): m is Of<"Insert"> => m.tag === "Insert");
    assert.deepEqual(
      inserts.map((i) => i.newTuple),
      Array.from({ length: 600 }, (_, i) => [String(i + 1), (i + 1) % 100 === 0 ? "happy" : null]),
    );
    assert.ok(inserts.every((i) => i.relationOid === bulk));
    assert.deepEqual(body.slice(-5), [
      { tag: "Update", xid, relationOid: bulk, newTuple: ["1", "sad"] },
      { tag: "Delete", xid, relationOid: bulk, oldKind: "K", oldTuple: ["2", null] },
      {
        tag: "Message",
        xid,
        transactional: true,
        lsn: parseLsn(String(fx.facts.streamMessageLsn)),
        prefix: "strata.stream",
        content: Buffer.from("inside the stream"),
      },
      {
        tag: "Relation",
        xid,
        relationOid: side,
        namespace: "public",
        name: "bulk_side",
        replicaIdentity: "d",
        columns: [col("id", 23, true)],
      },
      { tag: "Truncate", xid, cascade: false, restartIdentity: false, relationOids: [side] },
    ]);
  });

  test("Stream Abort: a rolled-back subtransaction (xid != subxid) and a rolled-back transaction (xid = subxid)", () => {
    const { fx, decoded } = load("proto2-stream-abort");
    const top = fact(fx, "subabortXid");
    const aborted = fact(fx, "abortXid");
    const outside = decoded.filter((d) => !d.inStream && d.msg.tag !== "StreamStart").map((d) => d.msg);
    assert.deepEqual(
      outside.map((m) => m.tag),
      ["StreamAbort", "StreamCommit", "StreamAbort"],
    );
    const [subAbort, commit, wholeAbort] = outside as [
      Of<"StreamAbort">,
      Of<"StreamCommit">,
      Of<"StreamAbort">,
    ];
    assert.equal(subAbort.xid, top);
    assert.notEqual(subAbort.subxid, top);
    assert.equal(subAbort.abortLsn, undefined, "protocol < 4: no abort LSN");
    assert.equal(commit.xid, top);
    assert.deepEqual(wholeAbort, { tag: "StreamAbort", xid: aborted, subxid: aborted });

    // Inside a block, data messages carry the xid of the (sub)transaction that made the change,
    // not the top-level xid of Stream Start.
    const blocks = streamBlocks(decoded);
    const topBlocks = blocks.filter((b) => b.start.xid === top);
    const abortedBlocks = blocks.filter((b) => b.start.xid === aborted);
    assert.equal(topBlocks.length + abortedBlocks.length, blocks.length);
    assert.ok(topBlocks[0].start.firstSegment && abortedBlocks[0].start.firstSegment);
    const rowsBy = new Map<number, number[]>();
    for (const b of topBlocks) {
      for (const m of b.body) {
        if (m.tag !== "Insert") continue;
        const list = rowsBy.get(m.xid!) ?? [];
        list.push(Number(m.newTuple[0]));
        rowsBy.set(m.xid!, list);
      }
    }
    const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
    assert.deepEqual(rowsBy.get(top), range(1, 50));
    const subRows = rowsBy.get(subAbort.subxid)!;
    assert.ok(subRows.length > 0, "the subtransaction's rows were streamed before it was rolled back");
    assert.deepEqual(subRows, range(1001, 1000 + subRows.length));
    const others = [...rowsBy.keys()].filter((x) => x !== top && x !== subAbort.subxid);
    assert.equal(others.length, 1, "the row inserted after ROLLBACK TO belongs to a new subtransaction");
    assert.deepEqual(rowsBy.get(others[0]), [51]);

    // The Stream Abort of the subtransaction comes after the block that streamed its rows.
    const subAbortAt = decoded.findIndex((d) => d.msg === subAbort);
    let lastSubRow = -1;
    decoded.forEach((d, i) => {
      if (d.msg.tag === "Insert" && d.msg.xid === subAbort.subxid) lastSubRow = i;
    });
    assert.ok(lastSubRow < subAbortAt);

    const abortedRows = abortedBlocks
      .flatMap((b) => b.body)
      .filter((m): m is Of<"Insert"> => m.tag === "Insert");
    assert.ok(abortedRows.length > 0 && abortedRows.every((m) => m.xid === aborted));
    assert.deepEqual(
      abortedRows.map((m) => Number(m.newTuple[0])),
      range(2001, 2000 + abortedRows.length),
    );
  });
});

describe("protocol 3, two-phase", () => {
  test("Begin Prepare / Prepare / Commit Prepared, Rollback Prepared, and an ordinary commit", () => {
    const { fx, decoded } = load("proto3-two-phase");
    assertTransactionsFramed(decoded);
    assert.deepEqual(tags(decoded), [
      "BeginPrepare",
      "Relation",
      "Insert",
      "Prepare",
      "CommitPrepared",
      "BeginPrepare",
      "Insert",
      "Prepare",
      "RollbackPrepared",
      "Begin",
      "Insert",
      "Commit",
    ]);
    const [bp1, bp2] = ofTag(decoded, "BeginPrepare");
    const [p1, p2] = ofTag(decoded, "Prepare");
    const [cp] = ofTag(decoded, "CommitPrepared");
    const [rp] = ofTag(decoded, "RollbackPrepared");
    const committed = fact(fx, "committedXid");
    const rolledBack = fact(fx, "rolledBackXid");
    assert.deepEqual(bp1, {
      tag: "BeginPrepare",
      prepareLsn: p1.prepareLsn,
      endLsn: p1.endLsn,
      prepareTime: p1.prepareTime,
      xid: committed,
      gid: "strata-gid-1",
    });
    assert.deepEqual(bp2, {
      tag: "BeginPrepare",
      prepareLsn: p2.prepareLsn,
      endLsn: p2.endLsn,
      prepareTime: p2.prepareTime,
      xid: rolledBack,
      gid: "strata-gid-2",
    });
    assert.equal(p1.flags, 0);
    assert.equal(p1.xid, committed);
    assert.equal(p1.gid, "strata-gid-1");
    assert.ok(p1.endLsn > p1.prepareLsn);
    assertInWindow(fx, p1.prepareTime, "prepare time");
    assert.equal(cp.xid, committed);
    assert.equal(cp.gid, "strata-gid-1");
    assert.ok(cp.commitLsn >= p1.endLsn && cp.endLsn > cp.commitLsn);
    assert.ok(cp.commitTime >= p1.prepareTime);
    assert.deepEqual(rp, {
      tag: "RollbackPrepared",
      flags: 0,
      prepareEndLsn: p2.endLsn,
      rollbackEndLsn: rp.rollbackEndLsn,
      prepareTime: p2.prepareTime,
      rollbackTime: rp.rollbackTime,
      xid: rolledBack,
      gid: "strata-gid-2",
    });
    assert.ok(rp.rollbackEndLsn > rp.prepareEndLsn && rp.rollbackTime >= rp.prepareTime);
    assert.equal(ofTag(decoded, "Begin")[0].xid, fact(fx, "plainXid"));
    assert.deepEqual(
      ofTag(decoded, "Insert").map((i) => i.newTuple),
      [
        ["1", "100"],
        ["2", "200"],
        ["3", "300"],
      ],
    );
  });

  test("a large prepared transaction: stream blocks, Stream Prepare, Commit Prepared", () => {
    const { fx, decoded } = load("proto3-stream-prepare");
    const xid = fact(fx, "preparedXid");
    const blocks = streamBlocks(decoded);
    assert.ok(blocks.length >= 2);
    assert.ok(blocks.every((b, i) => b.start.xid === xid && b.start.firstSegment === (i === 0)));
    const inserts = blocks.flatMap((b) => b.body).filter((m): m is Of<"Insert"> => m.tag === "Insert");
    assert.ok(inserts.every((m) => m.xid === xid));
    assert.deepEqual(
      inserts.map((m) => m.newTuple),
      Array.from({ length: 600 }, (_, i) => [String(i + 1)]),
    );
    const outside = decoded.filter((d) => !d.inStream && d.msg.tag !== "StreamStart").map((d) => d.msg);
    assert.deepEqual(
      outside.map((m) => m.tag),
      ["StreamPrepare", "CommitPrepared"],
    );
    const [prepare, commit] = outside as [Of<"StreamPrepare">, Of<"CommitPrepared">];
    assert.equal(prepare.xid, xid);
    assert.equal(prepare.gid, "strata-big");
    assert.equal(prepare.flags, 0);
    assert.ok(prepare.endLsn > prepare.prepareLsn);
    assertInWindow(fx, prepare.prepareTime, "prepare time");
    assert.equal(commit.xid, xid);
    assert.equal(commit.gid, "strata-big");
    assert.ok(commit.commitLsn >= prepare.endLsn);
  });
});
