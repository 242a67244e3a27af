// CopyData payloads of the streaming replication protocol: XLogData, Primary keepalive and
// Standby status update, checked against bytes laid out by hand from the protocol docs.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseLsn } from "../../src/protocol/lsn.ts";
import { ProtocolError } from "../../src/protocol/messages.ts";
import { decodePgoutput } from "../../src/protocol/pgoutput.ts";
import {
  decodeReplicationMessage,
  decodeStandbyStatusUpdate,
  encodePrimaryKeepalive,
  encodeReplicationMessage,
  encodeStandbyStatusUpdate,
  encodeXLogData,
} from "../../src/protocol/replication-messages.ts";
import { loadFixture } from "../fixtures/pgoutput/fixtures.ts";

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ""), "hex");
}

function assertEveryCutThrows(bytes: Buffer, decode: (b: Buffer) => unknown): void {
  for (let cut = 0; cut < bytes.length; cut++) {
    assert.throws(() => decode(bytes.subarray(0, cut)), ProtocolError, `cut at ${cut}`);
  }
}

describe("XLogData ('w')", () => {
  // A Begin captured from PostgreSQL 15, framed the way the walsender frames it.
  const begin = Buffer.from(loadFixture("proto1-dml").messages[0].hex, "hex");
  const payload = Buffer.concat([hex("77 0000000016B374D8 0000000016B37500 0002d4f5a1b2c3d4"), begin]);

  test("decodes the header and hands the pgoutput message on as a view", () => {
    const m = decodeReplicationMessage(payload);
    assert.equal(m.tag, "XLogData");
    if (m.tag !== "XLogData") return;
    assert.equal(m.walStart, parseLsn("0/16B374D8"));
    assert.equal(m.walEnd, parseLsn("0/16B37500"));
    assert.equal(m.sendTime, 0x2d4f5a1b2c3d4n);
    assert.deepEqual(m.data, begin);
    assert.equal(m.data.buffer, payload.buffer, "no copy");
    assert.equal(m.data.byteOffset, payload.byteOffset + 25);
    assert.equal(decodePgoutput(m.data, { inStream: false }).tag, "Begin");
    assert.deepEqual(encodeReplicationMessage(m), payload);
    assert.deepEqual(encodeXLogData(m), payload);
  });

  test("an empty data part is allowed; a short header is not", () => {
    const headerOnly = payload.subarray(0, 25);
    const m = decodeReplicationMessage(headerOnly);
    assert.equal(m.tag === "XLogData" && m.data.length, 0);
    assertEveryCutThrows(headerOnly, decodeReplicationMessage);
    assert.throws(
      () => decodeReplicationMessage(payload.subarray(0, 10)),
      /XLogData \('w'\): message too short: needs 8 byte\(s\) at offset 9/,
    );
  });
});

describe("Primary keepalive ('k')", () => {
  const bytes = hex("6b 0000000116B37480 fffffffffffffffe 01");

  test("round trip on exact bytes", () => {
    const m = decodeReplicationMessage(bytes);
    assert.deepEqual(m, {
      tag: "PrimaryKeepalive",
      walEnd: 0x1_16b3_7480n,
      sendTime: -2n,
      replyRequested: true,
    });
    assert.deepEqual(encodeReplicationMessage(m), bytes);
    assert.deepEqual(
      encodePrimaryKeepalive({ walEnd: 0n, sendTime: 0n, replyRequested: false }),
      hex("6b" + "00".repeat(17)),
    );
  });

  test("short and long payloads are errors", () => {
    assertEveryCutThrows(bytes, decodeReplicationMessage);
    assert.throws(
      () => decodeReplicationMessage(Buffer.concat([bytes, hex("00")])),
      /keepalive.*1 unexpected trailing byte\(s\) at offset 18/,
    );
  });
});

describe("Standby status update ('r')", () => {
  const update = {
    written: parseLsn("0/16B37480"),
    flushed: parseLsn("0/16B37400"),
    applied: parseLsn("0/16B37400"),
    sendTime: 0x2d4f5a1b2c3d4n,
    replyRequested: false,
  };
  const bytes = hex("72 0000000016B37480 0000000016B37400 0000000016B37400 0002d4f5a1b2c3d4 00");

  test("is 34 bytes laid out as the docs say, and round-trips", () => {
    const encoded = encodeStandbyStatusUpdate(update);
    assert.equal(encoded.length, 34);
    assert.deepEqual(encoded, bytes);
    assert.deepEqual(decodeStandbyStatusUpdate(encoded), update);
    assert.deepEqual(
      decodeStandbyStatusUpdate(encodeStandbyStatusUpdate({ ...update, replyRequested: true })),
      {
        ...update,
        replyRequested: true,
      },
    );
  });

  test("bad payloads are errors", () => {
    assertEveryCutThrows(bytes, decodeStandbyStatusUpdate);
    assert.throws(() => decodeStandbyStatusUpdate(hex("6b")), /expected type 'r'/);
    assert.throws(() => decodeStandbyStatusUpdate(Buffer.concat([bytes, hex("00")])), /trailing/);
    assert.throws(() => encodeStandbyStatusUpdate({ ...update, written: -1n }), RangeError);
  });
});

test("an unknown or empty payload is a ProtocolError naming the type byte", () => {
  assert.throws(
    () => decodeReplicationMessage(hex("72 00")),
    /unknown message type 'r' \(0x72\) at offset 0/,
  );
  assert.throws(() => decodeReplicationMessage(hex("01")), /unknown message type 0x01 at offset 0/);
  assert.throws(() => decodeReplicationMessage(Buffer.alloc(0)), /empty CopyData payload/);
});
