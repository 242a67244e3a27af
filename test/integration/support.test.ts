import assert from "node:assert/strict";
import { after, test } from "node:test";
import { startPrimary } from "../support/postgres.ts";

test("the test harness starts a logical-replication primary", async () => {
  const primary = await startPrimary();
  after(() => primary.stop());
  const [row] = await primary.query("SHOW wal_level");
  assert.equal(row.wal_level, "logical");
});
