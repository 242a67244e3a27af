import assert from "node:assert/strict";
import { test } from "node:test";
import { DurableAcks } from "../../src/upstream/durable-acks.ts";

test("a position is durable once the store's WAL is flushed past its batch's commit, in order", () => {
  const acks = new DurableAcks();
  assert.equal(acks.waiting, false);
  assert.equal(acks.flushedTo(1000n), undefined, "nothing committed, nothing to acknowledge");
  acks.committed(100n, 10n);
  acks.committed(200n, 20n);
  acks.committed(300n, 30n);
  assert.equal(acks.waiting, true);
  assert.equal(acks.flushedTo(99n), undefined, "not flushed past the first commit");
  assert.equal(acks.flushedTo(250n), 20n, "the second batch is the furthest durable");
  assert.equal(acks.flushedTo(250n), undefined, "already acknowledged");
  assert.equal(acks.flushedTo(300n), 30n);
  assert.equal(acks.waiting, false);
});
