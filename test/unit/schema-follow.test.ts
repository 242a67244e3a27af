// The DDL that takes a replica table from the last known upstream shape to a new one (pure).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ApplyError } from "../../src/apply/errors.ts";
import {
  type ColumnShape,
  planTableChanges,
  type ReplicaState,
  type TableShape,
} from "../../src/apply/schema-follow.ts";

const col = (name: string, attnum?: number, type = "integer", typeOid = 23): ColumnShape => ({
  name,
  attnum,
  type,
  typeOid,
  typeMod: -1,
});
const shape = (...columns: ColumnShape[]): TableShape => ({ schema: "public", name: "t", columns });
const replica = (...columns: [string, string][]): ReplicaState => ({
  columns: new Map(columns),
  constraints: new Set(),
  indexes: new Set(),
  primaryKey: undefined,
});
const T = '"public"."t"';

test("with attnums a rename is a rename, and a column dropped and added under its name is both", () => {
  const known = shape(col("id", 1), col("a", 2), col("b", 3));
  const next = shape(col("id", 1), col("label", 2), col("b", 4));
  const plan = planTableChanges(
    known,
    next,
    replica(["id", "integer"], ["a", "integer"], ["b", "integer"]),
    true,
  );
  assert.deepEqual(plan, [
    `ALTER TABLE ${T} RENAME COLUMN "a" TO "label"`,
    `ALTER TABLE ${T} DROP COLUMN "b"`,
    `ALTER TABLE ${T} ADD COLUMN "b" integer`,
  ]);
});

test("from Relation messages alone, a column gone and another come is refused with both remedies", () => {
  const known = shape(col("id"), col("a"));
  const next = shape(col("id"), col("label"));
  assert.throws(
    () => planTableChanges(known, next, replica(["id", "integer"], ["a", "integer"]), false),
    (err: unknown) =>
      err instanceof ApplyError &&
      /lost column\(s\) a and gained label/.test(err.message) &&
      /RENAME COLUMN "a" TO "label"/.test(err.message) &&
      /DROP COLUMN "a", ADD COLUMN "label" integer/.test(err.message),
  );
  // Once the user has applied either remedy on the replica, there is nothing left to do.
  assert.deepEqual(
    planTableChanges(known, next, replica(["id", "integer"], ["label", "integer"]), false),
    [],
  );
});

test("an added column gets the value the primary's existing rows have, then no default", () => {
  const plan = planTableChanges(
    shape(col("id")),
    shape(col("id"), col("flag", undefined, "boolean", 16)),
    replica(["id", "integer"]),
    false,
    new Set(),
    new Map([["flag", "f"]]),
  );
  assert.deepEqual(plan, [
    `ALTER TABLE ${T} ADD COLUMN "flag" boolean DEFAULT 'f'::boolean`,
    `ALTER TABLE ${T} ALTER COLUMN "flag" DROP DEFAULT`,
  ]);
});

test("a type change follows only where the replica had the primary's type", () => {
  const known = shape(col("id"), col("n"));
  const next = shape(col("id"), col("n", undefined, "bigint", 20));
  assert.deepEqual(planTableChanges(known, next, replica(["id", "integer"], ["n", "integer"]), false), [
    `ALTER TABLE ${T} ALTER COLUMN "n" TYPE bigint USING "n"::bigint`,
  ]);
  // A replica column widened on purpose (numeric here) is left alone.
  assert.deepEqual(planTableChanges(known, next, replica(["id", "integer"], ["n", "numeric"]), false), []);
});
