// pgoutput on bad input: every captured message cut short at every byte, trailing bytes,
// unknown tags and kinds, out-of-order stream control, and the protocol 4 Stream Abort, which
// PostgreSQL 15 cannot produce (built by hand here from the documented layout).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type PgoutputMessage, ProtocolError, type StreamAbortMessage } from "../../src/protocol/messages.ts";
import { decodePgoutput, encodePgoutput, PgoutputStreamDecoder } from "../../src/protocol/pgoutput.ts";
import { decodeFixture, fixtureNames, loadFixture } from "../fixtures/pgoutput/fixtures.ts";

const notStreaming = { inStream: false };

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ""), "hex");
}

function throwsProtocolError(fn: () => unknown, pattern?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ProtocolError, `expected ProtocolError, got ${err}`);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

describe("truncated and padded messages", () => {
  for (const name of fixtureNames()) {
    test(`${name}: every message cut at every byte offset throws ProtocolError; an extra byte too`, () => {
      for (const d of decodeFixture(loadFixture(name))) {
        const options = { inStream: d.inStream };
        for (let cut = 0; cut < d.bytes.length; cut++) {
          const short = d.bytes.subarray(0, cut);
          try {
            decodePgoutput(short, options);
          } catch (err) {
            if (err instanceof ProtocolError) continue;
            assert.fail(
              `${d.msg.tag} cut at ${cut}/${d.bytes.length}: threw ${err} instead of ProtocolError`,
            );
          }
          assert.fail(
            `${d.msg.tag} cut at ${cut}/${d.bytes.length} (${short.toString("hex")}) decoded without error`,
          );
        }
        const padded = Buffer.concat([d.bytes, Buffer.from([0])]);
        throwsProtocolError(() => decodePgoutput(padded, options), /trailing byte\(s\) at offset \d+/);
      }
    });
  }

  test("the error names the message and the offset", () => {
    // Insert: tag, relation oid, 'N', 1 column, text of length 5 but only 2 bytes present.
    const bytes = hex("49 00004000 4e 0001 74 00000005 6869");
    throwsProtocolError(
      () => decodePgoutput(bytes, notStreaming),
      /^pgoutput Insert \('I'\): message too short: needs 5 byte\(s\) at offset 13 but only 2 remain/,
    );
    throwsProtocolError(() => decodePgoutput(hex("42 0000"), notStreaming), /Begin \('B'\).*offset 1/);
    throwsProtocolError(() => decodePgoutput(Buffer.alloc(0), notStreaming), /empty message/);
    throwsProtocolError(
      () => decodePgoutput(hex("4f 0000000000000001 6f72"), notStreaming),
      /Origin.*no terminating NUL/,
    );
  });
});

describe("malformed content", () => {
  test("unknown message tag", () => {
    throwsProtocolError(
      () => decodePgoutput(hex("5a 00"), notStreaming),
      /unknown message tag 'Z' \(0x5a\) at offset 0/,
    );
    throwsProtocolError(() => decodePgoutput(hex("00"), notStreaming), /unknown message tag 0x00/);
  });

  test("unknown TupleData kind names the column", () => {
    throwsProtocolError(
      () => decodePgoutput(hex("49 00004000 4e 0002 6e 78"), notStreaming),
      /Insert.*column 2: unknown TupleData kind 'x' \(0x78\).*at offset 9/,
    );
  });

  test("bad tuple markers", () => {
    throwsProtocolError(
      () => decodePgoutput(hex("49 00004000 4b 0000"), notStreaming),
      /Insert.*expected 'N'/,
    );
    throwsProtocolError(
      () => decodePgoutput(hex("55 00004000 58 0000"), notStreaming),
      /Update.*'K', 'O' or 'N'.*offset 5/,
    );
    throwsProtocolError(
      () => decodePgoutput(hex("55 00004000 4b 0000 4f 0000"), notStreaming),
      /Update.*expected 'N'/,
    );
    throwsProtocolError(() => decodePgoutput(hex("44 00004000 4e 0000"), notStreaming), /Delete.*'K' or 'O'/);
  });

  test("bad replica identity", () => {
    throwsProtocolError(
      () => decodePgoutput(hex("52 00004000 7075626c696300 7400 78 0000"), notStreaming),
      /Relation.*unknown replica identity 'x'.*offset 14/,
    );
  });

  test("negative lengths", () => {
    throwsProtocolError(
      () => decodePgoutput(hex("49 00004000 4e 0001 74 ffffffff"), notStreaming),
      /negative length of column 1/,
    );
    throwsProtocolError(() => decodePgoutput(hex("54 ffffffff 00"), notStreaming), /negative relation count/);
    throwsProtocolError(
      () => decodePgoutput(hex("4d 01 0000000000000001 7000 ffffffff"), notStreaming),
      /Message.*negative content/,
    );
  });

  test("a huge declared count fails on the missing bytes, without allocating for it", () => {
    throwsProtocolError(() => decodePgoutput(hex("54 7fffffff 00 00000001"), notStreaming), /too short/);
    throwsProtocolError(() => decodePgoutput(hex("49 00004000 4e ffff 6e"), notStreaming), /too short/);
  });
});

describe("PgoutputStreamDecoder", () => {
  const start = hex("53 000003e8 01");
  const stop = hex("45");
  const insertInStream = hex("49 000003e8 00004000 4e 0001 74 00000001 31");
  const insertOutside = hex("49 00004000 4e 0001 74 00000001 31");
  const streamCommit = hex("63 000003e8 00 0000000000000010 0000000000000020 0000000000000030");

  test("tracks Stream Start / Stream Stop and decodes the xid prefix only inside", () => {
    const d = new PgoutputStreamDecoder();
    assert.deepEqual(d.decode(insertOutside), { tag: "Insert", relationOid: 0x4000, newTuple: ["1"] });
    assert.deepEqual(d.decode(start), { tag: "StreamStart", xid: 1000, firstSegment: true });
    assert.equal(d.inStream, true);
    assert.deepEqual(d.decode(insertInStream), {
      tag: "Insert",
      xid: 1000,
      relationOid: 0x4000,
      newTuple: ["1"],
    });
    assert.deepEqual(d.decode(stop), { tag: "StreamStop" });
    assert.equal(d.inStream, false);
    assert.deepEqual(d.decode(streamCommit), {
      tag: "StreamCommit",
      xid: 1000,
      flags: 0,
      commitLsn: 0x10n,
      endLsn: 0x20n,
      commitTime: 0x30n,
    });
  });

  test("rejects what the apply worker rejects", () => {
    const nested = new PgoutputStreamDecoder();
    nested.decode(start);
    throwsProtocolError(() => nested.decode(start), /Stream Start for xid 1000 inside an open stream block/);
    throwsProtocolError(
      () => new PgoutputStreamDecoder().decode(stop),
      /Stream Stop without a preceding Stream Start/,
    );
    const open = new PgoutputStreamDecoder();
    open.decode(start);
    throwsProtocolError(
      () => open.decode(streamCommit),
      /StreamCommit for xid 1000 inside an open stream block/,
    );
  });

  test("decoding a stream block's message as if outside it fails rather than misreads", () => {
    // Outside a block the xid would be read as the relation oid and the oid's first byte as the
    // tuple marker: 0x00 is not 'N'.
    throwsProtocolError(() => decodePgoutput(insertInStream, notStreaming), /expected 'N'/);
  });
});

describe("protocol 4 Stream Abort (streaming = parallel)", () => {
  // PostgreSQL 15 cannot send this form (it appeared in 16), so it is built by hand from the
  // documented layout: 'A', xid, subxid, abort LSN, abort timestamp.
  const bytes = hex("41 000003e8 000003e9 0000000116b37480 0002d4f5a1b2c3d4");
  const message: StreamAbortMessage = {
    tag: "StreamAbort",
    xid: 1000,
    subxid: 1001,
    abortLsn: 0x116b37480n,
    abortTime: 0x2d4f5a1b2c3d4n,
  };

  test("decodes with streamAbortHasLsn and encodes back to the same bytes", () => {
    assert.deepEqual(decodePgoutput(bytes, { inStream: false, streamAbortHasLsn: true }), message);
    assert.deepEqual(encodePgoutput(message, { inStream: false, streamAbortHasLsn: true }), bytes);
    assert.deepEqual(new PgoutputStreamDecoder({ streamAbortHasLsn: true }).decode(bytes), message);
  });

  test("the forms are not interchangeable", () => {
    throwsProtocolError(
      () => decodePgoutput(bytes, notStreaming),
      /Stream Abort.*16 unexpected trailing byte\(s\) at offset 9/,
    );
    throwsProtocolError(
      () => decodePgoutput(bytes.subarray(0, 9), { inStream: false, streamAbortHasLsn: true }),
      /too short/,
    );
    throwsProtocolError(
      () =>
        encodePgoutput(
          { tag: "StreamAbort", xid: 1, subxid: 1 },
          { inStream: false, streamAbortHasLsn: true },
        ),
      /abortLsn and abortTime are required/,
    );
    // Encoding without the option drops the LSN and time, as the protocol < 4 form has none.
    assert.deepEqual(encodePgoutput(message, notStreaming), bytes.subarray(0, 9));
  });

  test("cut at every offset", () => {
    for (let cut = 0; cut < bytes.length; cut++) {
      throwsProtocolError(() =>
        decodePgoutput(bytes.subarray(0, cut), { inStream: false, streamAbortHasLsn: true }),
      );
    }
  });
});

describe("encoder preconditions", () => {
  test("the xid prefix must match the stream context", () => {
    throwsProtocolError(
      () => encodePgoutput({ tag: "Insert", relationOid: 1, newTuple: [] }, { inStream: true }),
      /Insert: inside a stream block the message needs an xid/,
    );
    throwsProtocolError(
      () => encodePgoutput({ tag: "Insert", xid: 5, relationOid: 1, newTuple: [] }, notStreaming),
      /Insert: has xid 5 but is not being encoded inside a stream block/,
    );
  });

  test("old tuple kind and data go together; C strings cannot hold NUL", () => {
    throwsProtocolError(
      () => encodePgoutput({ tag: "Update", relationOid: 1, oldKind: "K", newTuple: [] }, notStreaming),
      /oldKind and oldTuple must be given together/,
    );
    assert.throws(
      () => encodePgoutput({ tag: "Origin", commitLsn: 0n, name: "a\0b" }, notStreaming),
      RangeError,
    );
  });

  test("every message kind round-trips, in and out of a stream block", () => {
    const lsn = 0x1_0000_0001n;
    const time = -1n; // before the epoch: signed
    const messages: PgoutputMessage[] = [
      { tag: "Begin", finalLsn: lsn, commitTime: time, xid: 0xffffffff },
      { tag: "Commit", flags: 0, commitLsn: lsn, endLsn: lsn + 1n, commitTime: time },
      { tag: "Origin", commitLsn: 0n, name: "" },
      { tag: "StreamStart", xid: 7, firstSegment: false },
      { tag: "StreamStop" },
      { tag: "StreamCommit", xid: 7, flags: 0, commitLsn: lsn, endLsn: lsn, commitTime: time },
      { tag: "StreamAbort", xid: 7, subxid: 8 },
      { tag: "BeginPrepare", prepareLsn: lsn, endLsn: lsn, prepareTime: time, xid: 7, gid: "g ✓" },
      { tag: "Prepare", flags: 0, prepareLsn: lsn, endLsn: lsn, prepareTime: time, xid: 7, gid: "g" },
      { tag: "CommitPrepared", flags: 0, commitLsn: lsn, endLsn: lsn, commitTime: time, xid: 7, gid: "g" },
      {
        tag: "RollbackPrepared",
        flags: 0,
        prepareEndLsn: lsn,
        rollbackEndLsn: lsn,
        prepareTime: time,
        rollbackTime: 0n,
        xid: 7,
        gid: "g",
      },
      { tag: "StreamPrepare", flags: 0, prepareLsn: lsn, endLsn: lsn, prepareTime: time, xid: 7, gid: "g" },
    ];
    for (const m of messages) {
      assert.deepEqual(decodePgoutput(encodePgoutput(m, notStreaming), notStreaming), m);
    }
    const xid = 0xfffffffe;
    const data: PgoutputMessage[] = [
      {
        tag: "Relation",
        relationOid: 0xffffffff,
        namespace: "",
        name: "t",
        replicaIdentity: "i",
        columns: [],
      },
      { tag: "Type", typeOid: 1, namespace: "s", name: "t" },
      { tag: "Insert", relationOid: 1, newTuple: [null, "", Buffer.alloc(0), "ü"] },
      { tag: "Update", relationOid: 1, oldKind: "O", oldTuple: [null], newTuple: [Buffer.from([1, 2])] },
      { tag: "Delete", relationOid: 1, oldKind: "K", oldTuple: [] },
      { tag: "Truncate", cascade: true, restartIdentity: false, relationOids: [] },
      { tag: "Message", transactional: false, lsn, prefix: "", content: Buffer.from([0]) },
    ];
    for (const m of data) {
      assert.deepEqual(decodePgoutput(encodePgoutput(m, notStreaming), notStreaming), m);
      const inStream = { ...m, xid } as PgoutputMessage;
      assert.deepEqual(
        decodePgoutput(encodePgoutput(inStream, { inStream: true }), { inStream: true }),
        inStream,
      );
    }
  });
});
