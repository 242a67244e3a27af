import assert from "node:assert/strict";
import { test } from "node:test";
import {
  describeRange,
  piecesFor,
  planSnapshot,
  rangeCondition,
  type SourceRelation,
  splitBlocks,
} from "../../src/upstream/snapshot-plan.ts";

const MB = 1024 * 1024;
const opts = { chunkBytes: MB, blockSize: 8192, tidRangeScans: true }; // 128 blocks a chunk

const heap = (relation: string, blocks: number, rows = blocks * 10): SourceRelation => ({
  relation,
  relkind: "r",
  blocks,
  bytes: blocks * 8192,
  rows,
});

test("a heap of about one chunk is one item; a larger one is split, the last range open-ended", () => {
  assert.equal(splitBlocks(0, 128), null);
  assert.equal(splitBlocks(150, 128), null, "1.2 chunks: no sliver of a second chunk");
  assert.deepEqual(splitBlocks(400, 128), [
    { start: 0, end: 133 },
    { start: 133, end: 266 },
    { start: 266, end: null },
  ]);
});

test("ranges cover every block exactly once, whatever the sizes", () => {
  for (const blocks of [1, 127, 128, 129, 255, 256, 257, 1000, 12345]) {
    for (const per of [1, 7, 128]) {
      const ranges = splitBlocks(blocks, per) ?? [{ start: 0, end: null }];
      assert.equal(ranges[0].start, 0);
      assert.equal(ranges.at(-1)!.end, null);
      for (let i = 1; i < ranges.length; i++) {
        assert.equal(ranges[i].start, ranges[i - 1].end, `contiguous (${blocks}/${per})`);
        assert.ok(ranges[i].start > ranges[i - 1].start, `non-empty (${blocks}/${per})`);
      }
    }
  }
});

test("items are largest first, keep their (table, chunk) place, and split estimates by share", () => {
  const items = planSnapshot(
    [
      { sources: [heap('"public"."small"', 10)] },
      { sources: [heap('"public"."big"', 384, 3840)] },
      { sources: [heap('"public"."p_1"', 20), heap('"public"."p_2"', 256)] },
      { sources: [] },
    ],
    opts,
  );
  assert.deepEqual(
    items.map((i) => [i.table, i.chunk, i.relation, describeRange(i.range)]),
    [
      [1, 0, '"public"."big"', "blocks 0-127"],
      [1, 1, '"public"."big"', "blocks 128-255"],
      [1, 2, '"public"."big"', "blocks 256-end"],
      [2, 1, '"public"."p_2"', "blocks 0-127"],
      [2, 2, '"public"."p_2"', "blocks 128-end"],
      [2, 0, '"public"."p_1"', "whole"],
      [0, 0, '"public"."small"', "whole"],
    ],
  );
  const big = items.filter((i) => i.table === 1);
  assert.equal(
    big.reduce((n, i) => n + (i.estimatedRows ?? 0), 0),
    3840,
  );
  assert.equal(
    big.reduce((n, i) => n + i.estimatedBytes, 0),
    384 * 8192,
  );
});

test("never split without TID range scans, nor anything but a heap; unknown row counts stay unknown", () => {
  const old = planSnapshot([{ sources: [heap("t", 1000)] }], { ...opts, tidRangeScans: false });
  assert.equal(old.length, 1);
  assert.equal(old[0].range, null);
  const foreign = planSnapshot([{ sources: [{ ...heap("f", 1000), relkind: "f" }] }], opts);
  assert.equal(foreign.length, 1);
  const unanalyzed = planSnapshot([{ sources: [heap("u", 1000, -1)] }], opts);
  assert.ok(unanalyzed.length > 1);
  assert.ok(unanalyzed.every((i) => i.estimatedRows === null));
});

test("range conditions select blocks with TID comparisons", () => {
  assert.equal(rangeCondition(null), null);
  assert.equal(rangeCondition({ start: 0, end: 128 }), "ctid < '(128,0)'::tid");
  assert.equal(rangeCondition({ start: 128, end: 256 }), "ctid >= '(128,0)'::tid AND ctid < '(256,0)'::tid");
  assert.equal(rangeCondition({ start: 256, end: null }), "ctid >= '(256,0)'::tid");
});

test("a table whose bytes are mostly TOAST is split by its whole size", () => {
  const opts = { chunkBytes: 8192 * 100, blockSize: 8192, tidRangeScans: true };
  // 50 heap blocks (half a chunk) but 10 chunks of bytes in all: 10 pieces.
  assert.equal(
    piecesFor({ relation: "t", relkind: "r", blocks: 50, bytes: 8192 * 1000, rows: 100 }, opts),
    10,
  );
  // Never more pieces than blocks.
  assert.equal(piecesFor({ relation: "t", relkind: "r", blocks: 3, bytes: 8192 * 1000, rows: 10 }, opts), 3);
  const items = planSnapshot(
    [{ sources: [{ relation: "t", relkind: "r", blocks: 50, bytes: 8192 * 1000, rows: 100 }] }],
    opts,
  );
  assert.equal(items.length, 10);
  assert.equal(items.filter((i) => i.range?.end === null).length, 1, "one open-ended range");
});
