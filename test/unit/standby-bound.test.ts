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

test("an unknown node id, a missing slot or a lost one holds everything back", () => {
  const bound = new StandbyBound();
  const positions = bound.positions(
    [{ name: "b" }, { name: "c", slot: "strata_standby_c" }, { name: "d", slot: "strata_standby_d" }],
    [slot("strata_standby_d", { lost: true, restartLsn: 10n })],
  );
  assert.deepEqual(
    positions.map((p) => [p.name, p.flushed, p.unknown?.replace(/ \(.*/, "")]),
    [
      ["b", 0n, "never heard from by this node, so its slot is not known"],
      ["c", 0n, "its slot strata_standby_c does not exist yet"],
      ["d", 0n, "its slot strata_standby_d was lost"],
    ],
  );
  assert.equal(leastFlushed(positions), 0n);
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
