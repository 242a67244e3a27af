import assert from "node:assert/strict";
import { test } from "node:test";
import {
  formatBytes,
  formatCount,
  formatDuration,
  progressFields,
  renderDisplay,
  SnapshotProgress,
} from "../../src/upstream/progress.ts";

const T0 = 1_000_000;

function planned() {
  const p = new SnapshotProgress(T0);
  p.plan(
    [
      { rel: "public.big", rowsEstimate: 1000, bytesEstimate: 8000, items: 2 },
      { rel: "public.small", rowsEstimate: null, bytesEstimate: 2000, items: 1 },
    ],
    T0,
  );
  return p;
}

test("figures, rates and ETAs from the estimates", () => {
  const p = planned();
  p.itemStarted(0, T0);
  p.add(0, 250, 2500);
  const s = p.summary(T0 + 10_000);
  assert.equal(s.tablesTotal, 2);
  assert.equal(s.tablesDone, 0);
  const big = s.tables[0];
  assert.equal(big.state, "copying");
  assert.equal(big.fraction, 0.25, "rows against reltuples");
  assert.equal(big.rowsPerSecond, 25);
  assert.equal(big.etaSeconds, 30);
  assert.equal(s.tables[1].state, "pending");
  assert.equal(s.tables[1].etaSeconds, null, "nothing copied: no ETA");
  // Overall: weighted by estimated bytes (8000 of 10000 at 25%).
  assert.equal(s.total.fraction, 0.2);
  assert.equal(s.total.rows, 250);
  assert.equal(s.total.rowsEstimate, 1000, "the sum of the known estimates");
  assert.equal(s.total.bytesEstimate, 10_000);
  assert.equal(s.total.etaSeconds, 40);
});

test("a table is done when its last item is, never before, and estimates do not cap it", () => {
  const p = planned();
  p.itemStarted(0, T0);
  p.add(0, 2000, 9000); // more rows than reltuples said
  assert.equal(p.summary(T0 + 1000).tables[0].fraction, 0.99, "capped below 1 while copying");
  assert.equal(p.itemDone(0, T0 + 1000), false);
  assert.equal(p.itemDone(0, T0 + 2000), true);
  assert.equal(p.tableSeconds(0, T0 + 5000), 2);
  p.itemStarted(1, T0 + 2000);
  p.add(1, 5, 1000);
  assert.equal(p.summary(T0 + 3000).tables[1].fraction, 0.5, "bytes when rows are unknown");
  assert.equal(p.itemDone(1, T0 + 3000), true);
  const s = p.summary(T0 + 60_000);
  assert.equal(s.tablesDone, 2);
  assert.equal(s.total.fraction, 1);
  assert.equal(s.total.etaSeconds, 0);
  p.finish(T0 + 4000);
  assert.equal(p.summary(T0 + 60_000).elapsedSeconds, 4, "the clock stops at the end");
});

test("the display fits the terminal and shows the tables being copied", () => {
  const p = new SnapshotProgress(T0);
  p.plan(
    Array.from({ length: 30 }, (_, i) => ({
      rel: `public.t${i}`,
      rowsEstimate: 100,
      bytesEstimate: 1000 * (i + 1),
      items: i === 29 ? 4 : 1,
    })),
    T0,
  );
  for (let i = 0; i < 20; i++) {
    p.itemStarted(i + 10, T0);
    p.add(i + 10, 50, 500);
  }
  p.itemDone(29, T0 + 1);
  const lines = renderDisplay(p.summary(T0 + 5000), 80, 6);
  assert.equal(lines.length, 6);
  assert.ok(lines.every((l) => l.length <= 80));
  assert.match(lines[0], /^initial snapshot \(5s\): 0\/30 tables +\d+% {2}ETA \d+s/);
  assert.match(lines[1], /public\.t29 \[1\/4 chunks\]/, "largest first");
  assert.match(lines[5], /16 more copying, 10 waiting/);
});

test("log fields carry the same totals as the summary", () => {
  const p = planned();
  p.itemStarted(0, T0);
  p.add(0, 100, 1000);
  const f = progressFields(p.summary(T0 + 1000));
  assert.equal(f.rows, 100);
  assert.equal(f.bytes, 1000);
  assert.equal(f.tables_total, 2);
  assert.deepEqual(
    (f.copying as { table: string }[]).map((c) => c.table),
    ["public.big"],
  );
});

test("units", () => {
  assert.equal(formatCount(9999), "9999");
  assert.equal(formatCount(250_000), "250.0k");
  assert.equal(formatCount(1_000_000), "1.0M");
  assert.equal(formatBytes(512), "512 B");
  assert.equal(formatBytes(1536), "1.5 kB");
  assert.equal(formatBytes(3 * 1024 * 1024 * 1024), "3.0 GB");
  assert.equal(formatDuration(null), "?");
  assert.equal(formatDuration(59.4), "59s");
  assert.equal(formatDuration(61), "1m01s");
  assert.equal(formatDuration(7322), "2h02m");
});
