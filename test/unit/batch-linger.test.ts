import assert from "node:assert/strict";
import { test } from "node:test";
import { BatchLinger } from "../../src/upstream/batch-linger.ts";

/** A linger that has seen transactions arrive every `gap` ms, the last at `last`. */
function after(gap: number, count: number, last = 1000): BatchLinger {
  const linger = new BatchLinger(5);
  for (let i = count - 1; i >= 0; i--) linger.arrived(last - i * gap);
  return linger;
}

test("a lone transaction commits at once: nothing says another is coming", () => {
  const linger = new BatchLinger(5);
  linger.arrived(1000);
  assert.equal(linger.waitMs(1000.2, 1000), 0);
});

test("on a busy stream a batch waits until its first transaction is limitMs old", () => {
  // 1,000 transactions a second: a 5 ms wait gathers about five more.
  const linger = after(1, 50);
  assert.equal(linger.waitMs(1000.5, 1000), 4.5);
  // Counted from the first transaction's arrival, not from when it was read: a batch whose
  // transactions queued behind the last commit has already waited.
  assert.equal(linger.waitMs(1003, 999), 1);
  assert.equal(linger.waitMs(1006, 1000), 0);
});

test("on a quiet stream the wait would gather nothing, so there is none", () => {
  // 100 transactions a second: a 5 ms wait gathers half of one on average.
  assert.equal(after(10, 50).waitMs(1000.5, 1000), 0);
  // 400 a second, two expected in the wait: worth it.
  assert.ok(after(2.5, 50).waitMs(1000.5, 1000) > 0);
  assert.equal(after(2.6, 50).waitMs(1000.5, 1000), 0);
});

test("the estimate follows the rate as it changes, within a few transactions", () => {
  const linger = after(1, 100, 1000);
  // The primary goes quiet: a 50 ms gap, then another.
  linger.arrived(1050);
  assert.equal(linger.waitMs(1050.1, 1050), 0, "one long gap is enough to stop waiting");
  // Busy again: a few closely spaced transactions bring the wait back.
  let t = 1050;
  let arrivals = 0;
  while (linger.waitMs(t, t) === 0) {
    t += 1;
    linger.arrived(t);
    arrivals++;
    assert.ok(arrivals < 10, "the wait comes back within ten busy arrivals");
  }
});

test("a limit of 0 never waits", () => {
  const linger = new BatchLinger(0);
  for (let t = 0; t < 10; t++) linger.arrived(t * 0.01);
  assert.equal(linger.waitMs(0.1, 0.1), 0);
});
