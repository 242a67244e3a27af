import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
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

test("dolt_replication_status reports the stream: LSNs, lag, last message time", async () => {
  await primary.query("INSERT INTO items VALUES (10, 'ten', 10)");
  await waitForSameRows(primary, strata, "items", "id");
  const [{ lsn }] = await primary.query("SELECT pg_current_wal_lsn()::text AS lsn");
  const row = await waitFor("status to catch up with the primary", async () => {
    const [r] = await strata.query(
      "SELECT *, flushed_lsn >= $1::pg_lsn AS caught_up, last_message_time > now() - interval '1 minute' AS recent FROM dolt_replication_status",
      [lsn],
    );
    return r?.caught_up && r.lag_bytes === "0" ? r : undefined;
  });
  assert.equal(row.slot_name, "strata_slot");
  assert.equal(row.publication, "strata_slot");
  assert.equal(row.state, "streaming");
  assert.match(row.upstream, /^127\.0\.0\.1:\d+\/postgres$/);
  assert.ok(row.received_lsn, "received_lsn is reported");
  assert.equal(row.recent, true);
  assert.equal(row.lag_ms, "0");
  assert.equal(row.current_error, null);
});
