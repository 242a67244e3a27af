// A slot lost under a running replica: without `resync: auto` the stream stops with the remedy;
// with it, Strata records the gap as commits and copies the tables again, and the replica is
// exact once more.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { type StrataProcess, snapshot, startStrata, waitForSameRows } from "../support/strata.ts";
import { replayHistory } from "../support/workload.ts";

/** Drop the slot under a running Strata: end its walsender, drop before it reconnects. */
async function dropSlotUnderStrata(primary: TestCluster, slot: string): Promise<void> {
  await waitFor("the slot to be dropped", async () => {
    await primary.query(
      "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
      [slot],
    );
    try {
      await primary.query("SELECT pg_drop_replication_slot($1)", [slot]);
      return true;
    } catch {
      return false;
    }
  });
}

/** The status row's error once it matches `pattern` (a reconnect's error may come first). */
async function statusError(strata: StrataProcess, pattern: RegExp): Promise<string> {
  return waitFor(`an error matching ${pattern} in dolt_replication_status`, async () => {
    const [row] = await strata.query<{ current_error: string | null }>(
      "SELECT current_error FROM dolt_replication_status",
    );
    return row?.current_error && pattern.test(row.current_error) ? row.current_error : undefined;
  });
}

describe("a slot dropped under a running replica", () => {
  let primary: TestCluster;
  const stratas: StrataProcess[] = [];
  before(async () => {
    primary = await startPrimary();
    await primary.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
    await primary.query("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g");
  });
  after(async () => {
    for (const s of stratas) await s.stop();
    await primary?.stop();
  });

  test("without resync: the stream stops and says what to do", async () => {
    const strata = await startStrata({ primary, slot: "plain" });
    stratas.push(strata);
    await waitForSameRows(primary, strata, "t", "id");
    await dropSlotUnderStrata(primary, "plain");
    await primary.query("UPDATE t SET v = 'lost' WHERE id = 1");
    const error = await statusError(strata, /replication slot "plain" is missing on the primary/);
    assert.match(error, /resync: auto/);
    const [row] = await strata.query("SELECT v FROM t WHERE id = 1");
    assert.equal(row.v, "v1", "nothing is applied on top of a gap");
  });

  test("with resync: auto: the gap is recorded, the tables are copied again, and history stays exact", async () => {
    const strata = await startStrata({ primary, slot: "auto", replication: { resync: "auto" } });
    stratas.push(strata);
    await primary.query("INSERT INTO t VALUES (101, 'streamed')");
    await waitForSameRows(primary, strata, "t", "id");
    await dropSlotUnderStrata(primary, "auto");
    // Changes made while no slot exists: no stream can carry them.
    await primary.query("UPDATE t SET v = 'changed in the gap' WHERE id <= 5");
    await primary.query("DELETE FROM t WHERE id BETWEEN 90 AND 100");
    await primary.query("INSERT INTO t VALUES (200, 'inserted in the gap')");
    await waitForSameRows(primary, strata, "t", "id");
    const log = await strata.query<{ message: string }>("SELECT message FROM dolt_log LIMIT 2");
    assert.match(
      log[0].message,
      /^initial snapshot at [0-9A-F]+\/[0-9A-F]+ \(resync: changes between [0-9A-F]+\/[0-9A-F]+ and [0-9A-F]+\/[0-9A-F]+ could not be replicated/,
    );
    assert.match(log[1].message, /^resync: the replication slot is missing/);
    // The two commits together take the history from the last replicated state to the primary's:
    // every row removed, then the fresh copy as a new snapshot base.
    const [ops] = await strata.query<{ removed: number }>(
      `SELECT count(*) FILTER (WHERE op = 'T')::int AS removed
         FROM strata.changes WHERE commit_seq = (SELECT max(seq) - 1 FROM strata.commits)`,
    );
    assert.equal(ops.removed, 101);
    const bases = await strata.query("SELECT commit_seq::int AS seq FROM strata.snapshot_bases ORDER BY 1");
    assert.equal(bases.length, 2, "the first snapshot and the resync's");
    const expected = (await snapshot((sql) => primary.query(sql), "t", "id")).sort();
    assert.deepEqual(
      await replayHistory(strata, "t", ["id"]),
      expected,
      "history replays to the primary's rows",
    );
    // And the stream goes on from the new slot.
    await primary.query("INSERT INTO t VALUES (300, 'after the resync')");
    await waitForSameRows(primary, strata, "t", "id");
    const [status] = await strata.query("SELECT state, current_error FROM dolt_replication_status");
    assert.deepEqual(status, { state: "streaming", current_error: null });
  });
});
