import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startPrimary, type TestCluster } from "../support/postgres.ts";
import { type StrataProcess, startStrata, waitForSameRows } from "../support/strata.ts";

let primary: TestCluster;
let strata: StrataProcess;

before(async () => {
  primary = await startPrimary();
  await primary.query("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)");
  strata = await startStrata({ primary });
});
after(async () => {
  await strata?.stop();
  await primary?.stop();
});

test("inserts, updates and deletes reach the replica, one commit per transaction", async () => {
  await primary.query("INSERT INTO items VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)");
  await primary.query("UPDATE items SET qty = qty * 10 WHERE id >= 2");
  await primary.query("DELETE FROM items WHERE id = 3");
  await waitForSameRows(primary, strata, "items", "id");
  const log = await strata.query("SELECT commit_hash, message, upstream_xid FROM dolt_log");
  assert.equal(log.length, 3, `three upstream transactions, three commits: ${JSON.stringify(log)}`);
  const history = await strata.query(
    "SELECT id, name, qty, commit_hash FROM dolt_history_items ORDER BY commit_hash, id",
  );
  assert.equal(history.length, 5);
});
