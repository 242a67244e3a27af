// How far the store's checkpoints are spaced out, always and while a snapshot copies
// (src/store/bulk-load.ts).
import assert from "node:assert/strict";
import { test } from "node:test";
import { bulkLoadMaxWalMb, steadyMaxWalMb } from "../../src/store/bulk-load.ts";

const MB = 1024 * 1024;
const GB = 1024 * MB;

test("twice the snapshot's size and 1 GB, so that its WAL triggers no checkpoint", () => {
  assert.equal(bulkLoadMaxWalMb(2 * GB, 100 * GB, 1024), 4096 + 1024);
});

test("never below the store's own max_wal_size", () => {
  assert.equal(bulkLoadMaxWalMb(10 * MB, 100 * GB, 8192), 8192);
});

test("never above a quarter of the free disk space", () => {
  assert.equal(bulkLoadMaxWalMb(100 * GB, 40 * GB, 1024), 10 * 1024);
  // A nearly full disk: the store's own value stands.
  assert.equal(bulkLoadMaxWalMb(100 * GB, 1 * GB, 1024), 1024);
});

test("the store's own max_wal_size: 4 GB, an eighth of the free space if less, at least 1 GB", () => {
  assert.equal(steadyMaxWalMb(100 * GB), 4096);
  assert.equal(steadyMaxWalMb(16 * GB), 2048);
  assert.equal(steadyMaxWalMb(2 * GB), 1024);
});
