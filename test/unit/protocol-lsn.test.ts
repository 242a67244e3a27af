// LSN text form and Postgres timestamps.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  dateToPgTime,
  formatLsn,
  nowPgTime,
  PG_EPOCH_MS,
  parseLsn,
  pgTimeToDate,
} from "../../src/protocol/lsn.ts";

const MAX = 0xffff_ffff_ffff_ffffn;

describe("parseLsn / formatLsn", () => {
  test("known values", () => {
    assert.equal(parseLsn("16/B374D848"), 0x16_b374_d848n);
    assert.equal(parseLsn("0/0"), 0n);
    assert.equal(parseLsn("FFFFFFFF/FFFFFFFF"), MAX);
    assert.equal(parseLsn("0/16b3748"), 0x16b3748n, "lower case is accepted");
    assert.equal(parseLsn("00000001/00000000"), 1n << 32n, "zero padding is accepted");
    assert.equal(formatLsn(0n), "0/0");
    assert.equal(formatLsn(0x16b3748n), "0/16B3748");
    assert.equal(formatLsn(0x16_b374_d848n), "16/B374D848");
    assert.equal(formatLsn(MAX), "FFFFFFFF/FFFFFFFF");
    assert.equal(formatLsn(1n << 32n), "1/0");
  });

  test("round trip", () => {
    for (const lsn of [
      0n,
      1n,
      0xffff_ffffn,
      1n << 32n,
      (1n << 32n) + 1n,
      MAX - 1n,
      MAX,
      0x1234_5678_9abc_def0n,
    ]) {
      assert.equal(parseLsn(formatLsn(lsn)), lsn);
    }
  });

  test("bad input names the value and the expected form", () => {
    for (const bad of [
      "",
      "0",
      "0/",
      "/0",
      "G/0",
      "0/G",
      "123456789/0",
      "0/123456789",
      " 0/0",
      "0/0 ",
      "0x1/2",
      "-1/0",
      "1/2/3",
      "1//2",
    ]) {
      assert.throws(
        () => parseLsn(bad),
        (err: Error) => err.message.includes(JSON.stringify(bad)) && err.message.includes("X/Y"),
        `rejects ${JSON.stringify(bad)}`,
      );
    }
    assert.throws(() => parseLsn(undefined as unknown as string), /invalid LSN undefined/);
  });

  test("formatLsn rejects values outside 64 bits", () => {
    assert.throws(() => formatLsn(-1n), RangeError);
    assert.throws(() => formatLsn(MAX + 1n), RangeError);
  });
});

describe("Postgres timestamps", () => {
  test("the epoch is 2000-01-01 UTC", () => {
    assert.equal(new Date(PG_EPOCH_MS).toISOString(), "2000-01-01T00:00:00.000Z");
    assert.equal(pgTimeToDate(0n).toISOString(), "2000-01-01T00:00:00.000Z");
    assert.equal(dateToPgTime(new Date("2000-01-01T00:00:00Z")), 0n);
  });

  test("microseconds are dropped towards the past, before and after the epoch", () => {
    assert.equal(pgTimeToDate(1_999n).toISOString(), "2000-01-01T00:00:00.001Z");
    assert.equal(pgTimeToDate(-1n).toISOString(), "1999-12-31T23:59:59.999Z");
    assert.equal(pgTimeToDate(-1_000n).toISOString(), "1999-12-31T23:59:59.999Z");
    assert.equal(pgTimeToDate(-1_001n).toISOString(), "1999-12-31T23:59:59.998Z");
  });

  test("round trip at millisecond precision", () => {
    const d = new Date("2024-05-06T07:08:09.123Z");
    assert.equal(dateToPgTime(d), 768_294_489_123_000n);
    assert.equal(pgTimeToDate(dateToPgTime(d)).getTime(), d.getTime());
    assert.throws(() => dateToPgTime(new Date(Number.NaN)), RangeError);
  });

  test("nowPgTime is now", () => {
    const before = dateToPgTime(new Date());
    const now = nowPgTime();
    const after = dateToPgTime(new Date());
    assert.ok(now >= before && now <= after);
  });
});
