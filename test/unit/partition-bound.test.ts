// Partition bounds as PostgreSQL 15's pg_get_partition_constraintdef printed them (captured from a
// real server), pointed at the replica's stand-in tables.
import assert from "node:assert/strict";
import { test } from "node:test";
import { findHashCalls, pointHashCalls } from "../../src/apply/partition-bound.ts";

const HASH_TWO_KEYS = `satisfies_hash_partition('16384'::oid, 2, 1, id, "Odd, name")`;
const HASH_UNDER_HASH_THEN_RANGE = `(satisfies_hash_partition('16384'::oid, 2, 1, id, "Odd, name") AND (at IS NOT NULL) AND (at < '2020-01-01'::date))`;
const RANGE_THEN_HASH = `((at IS NOT NULL) AND (at >= '2020-01-01'::date) AND (at < '2021-01-01'::date) AND satisfies_hash_partition('16411'::oid, 3, 2, id))`;
const HASH_OF_EXPRESSION = "satisfies_hash_partition('16417'::oid, 2, 0, (id + v))";
const LIST_NAMING_THE_FUNCTION = `((k IS NOT NULL) AND (k = ANY (ARRAY['satisfies_hash_partition(''1''::oid, 2, 0, k)'::text, 'x'::text])))`;

test("range and list bounds are evaluable as they are, a string that looks like a call included", () => {
  const range = "((at IS NOT NULL) AND (at >= '2020-01-01'::date) AND (at < '2021-01-01'::date))";
  assert.deepEqual(findHashCalls(range), []);
  assert.deepEqual(findHashCalls(LIST_NAMING_THE_FUNCTION), []);
  assert.equal(pointHashCalls(range, [], []), range);
});

test("a hash bound's key columns are found, quoted names unquoted, and the call pointed at a stand-in", () => {
  const calls = findHashCalls(HASH_TWO_KEYS)!;
  assert.deepEqual(calls, [
    { start: 0, end: HASH_TWO_KEYS.length, modulus: 2, remainder: 1, columns: ["id", "Odd, name"] },
  ]);
  assert.equal(
    pointHashCalls(HASH_TWO_KEYS, calls, [90001]),
    `satisfies_hash_partition('90001'::oid, 2, 1, id, "Odd, name")`,
  );
});

test("hash calls within a multi-level bound are pointed, the rest kept", () => {
  const first = findHashCalls(HASH_UNDER_HASH_THEN_RANGE)!;
  assert.equal(first.length, 1);
  assert.equal(
    pointHashCalls(HASH_UNDER_HASH_THEN_RANGE, first, [7]),
    `(satisfies_hash_partition('7'::oid, 2, 1, id, "Odd, name") AND (at IS NOT NULL) AND (at < '2020-01-01'::date))`,
  );
  const second = findHashCalls(RANGE_THEN_HASH)!;
  assert.deepEqual(
    second.map((c) => [c.modulus, c.remainder, c.columns]),
    [[3, 2, ["id"]]],
  );
  assert.equal(
    pointHashCalls(RANGE_THEN_HASH, second, [8]),
    "((at IS NOT NULL) AND (at >= '2020-01-01'::date) AND (at < '2021-01-01'::date) AND satisfies_hash_partition('8'::oid, 3, 2, id))",
  );
});

test("a hash of an expression cannot be pointed at a stand-in", () => {
  assert.equal(findHashCalls(HASH_OF_EXPRESSION), undefined);
});
