import assert from "node:assert/strict";
import { test } from "node:test";
import { leastFlushed, StandbyBound, type StandbySlotRow } from "../../src/upstream/standby-bound.ts";

const slot = (name: string, fields: Partial<StandbySlotRow> = {}): StandbySlotRow => ({
  slot: name,
  lost: false,
  restartLsn: null,
  streamingFlush: null,
  ...fields,
});

test("a streaming standby counts by the flush it reports, and afterwards by its slot", () => {
  const bound = new StandbyBound();
  const b = [{ name: "b", slot: "strata_standby_b" }];
  // A fresh slot's restart_lsn is a checkpoint's redo point, not anything the standby has.
  assert.deepEqual(bound.positions(b, [slot("strata_standby_b", { restartLsn: 900n })]), [
    { name: "b", flushed: 0n, unknown: "it has not streamed from this server yet" },
  ]);
  assert.deepEqual(
    bound.positions(b, [slot("strata_standby_b", { restartLsn: 900n, streamingFlush: 500n })]),
    [{ name: "b", flushed: 500n }],
  );
  // Disconnected: its slot keeps the last flush it reported.
  assert.deepEqual(bound.positions(b, [slot("strata_standby_b", { restartLsn: 500n })]), [
    { name: "b", flushed: 500n },
  ]);
});

test("an unknown node id or a missing slot holds everything back; a lost slot is not waited for", () => {
  const bound = new StandbyBound();
  const positions = bound.positions(
    [{ name: "b" }, { name: "c", slot: "strata_standby_c" }, { name: "d", slot: "strata_standby_d" }],
    [slot("strata_standby_d", { lost: true, restartLsn: 10n })],
  );
  assert.deepEqual(positions, [
    { name: "b", flushed: 0n, unknown: "not heard from since this node has run" },
    { name: "c", flushed: 0n, unknown: "its slot strata_standby_c does not exist yet" },
  ]);
  assert.equal(leastFlushed(positions), 0n);
  assert.deepEqual(
    bound.positions([{ name: "d", slot: "strata_standby_d" }], [slot("strata_standby_d", { lost: true })]),
    [],
  );
});

test("the bound is the least standby's position, and none without standbys", () => {
  assert.equal(
    leastFlushed([
      { name: "b", flushed: 700n },
      { name: "c", flushed: 300n },
    ]),
    300n,
  );
  assert.equal(leastFlushed([]), null);
});
