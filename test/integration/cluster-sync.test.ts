// Synchronous replication to a hot standby (dolt_cluster_ack_writes_timeout_secs), against real
// nodes whose network a fault-injecting proxy cuts:
//
//   on        every commit on the primary is applied on the standby before it returns: a read
//             on the standby right after each commit sees it
//   partition the next commit waits for the timeout, then returns with a warning; later commits
//             no longer wait (the circuit breaker), and no write is lost
//   healed    once the standby has caught up, commits wait for it again
//   off (0)   nothing waits
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type pg from "pg";
import {
  type ClusterNode,
  createClusterNodes,
  destroyClusterNodes,
  heal,
  partition,
} from "../support/cluster-nodes.ts";
import { waitFor } from "../support/postgres.ts";
import { rowsOf, Sessions } from "../support/sessions.ts";

const TIMEOUT_SECS = 2;
const PG_WARNING = "canceling wait for synchronous replication due to user request";

describe("cluster: synchronous replication with a timeout", { timeout: 180_000 }, () => {
  let a: ClusterNode;
  let b: ClusterNode;
  let primary: pg.Client;
  let standby: pg.Client;
  const sessions = new Sessions();
  const notices: string[] = [];
  let next = 1;

  before(async () => {
    [a, b] = await createClusterNodes(
      [
        { name: "a", bootstrap_role: "primary" },
        { name: "b", bootstrap_role: "standby" },
      ],
      undefined,
      { faults: true },
    );
    await Promise.all([a.strata.start(), b.strata.start()]);
    primary = await sessions.open(a.strata);
    primary.on("notice", (n) => notices.push(n.message ?? ""));
    await primary.query("CREATE TABLE items (id int PRIMARY KEY, v text)");
    await waitFor(
      "the standby to have the table",
      async () =>
        (await b.strata.query("SELECT to_regclass('items') IS NOT NULL AS ok").catch(() => []))[0]?.ok,
    );
    standby = await sessions.open(b.strata);
  });

  after(async () => {
    await sessions.closeAll();
    await destroyClusterNodes([a, b]);
  });

  const syncNames = async () =>
    (await rowsOf(primary, "SHOW synchronous_standby_names"))[0].synchronous_standby_names as string;

  /** Insert the next row on the primary: how long the commit took. */
  const insert = async (): Promise<number> => {
    const started = Date.now();
    await primary.query("INSERT INTO items VALUES ($1, 'x')", [next++]);
    return Date.now() - started;
  };

  const onStandby = async (id: number) =>
    (await rowsOf(standby, "SELECT count(*)::int AS n FROM items WHERE id = $1", [id]))[0].n === 1;

  it("on: each commit returns once the standby has applied it", async () => {
    await primary.query(`ALTER SYSTEM SET dolt_cluster_ack_writes_timeout_secs TO ${TIMEOUT_SECS}`);
    await waitFor("commits to wait for the standby", async () => (await syncNames()).startsWith("ANY 1 ("));
    const replication = await rowsOf(primary, "SELECT sync_state FROM pg_stat_replication");
    assert.deepEqual(
      replication.map((r) => r.sync_state),
      ["quorum"],
    );
    for (let i = 0; i < 30; i++) {
      await insert();
      assert.ok(
        await onStandby(next - 1),
        `row ${next - 1} is on the standby as soon as its commit returned`,
      );
    }
    assert.deepEqual(notices, []);
  });

  it("partition: a commit waits for the timeout and returns with a warning; later ones do not wait", async () => {
    partition(a, b);
    const waited = await insert();
    assert.ok(waited >= TIMEOUT_SECS * 1000 - 50, `the commit waited for the timeout (${waited} ms)`);
    assert.ok(waited < TIMEOUT_SECS * 1000 + 3_000, `and not much longer (${waited} ms)`);
    assert.deepEqual(notices, [PG_WARNING]);
    // The commit happened.
    assert.equal(
      (await rowsOf(primary, "SELECT count(*)::int AS n FROM items WHERE id = $1", [next - 1]))[0].n,
      1,
    );
    await waitFor("commits to stop waiting for the standby", async () => (await syncNames()) === "");
    const quick = await insert();
    assert.ok(quick < 1_000, `a later commit does not wait (${quick} ms)`);
    assert.equal(notices.length, 1);
  });

  it("healed: once caught up the standby is waited for again, with every write", async () => {
    heal(a, b);
    await waitFor(
      "the standby to be waited for again",
      async () => (await syncNames()).startsWith("ANY 1 ("),
      30_000,
    );
    for (let i = 0; i < 5; i++) {
      await insert();
      assert.ok(
        await onStandby(next - 1),
        `row ${next - 1} is on the standby as soon as its commit returned`,
      );
    }
    const ids = (await rowsOf(standby, "SELECT id FROM items ORDER BY id")).map((r) => r.id);
    assert.deepEqual(
      ids,
      Array.from({ length: next - 1 }, (_, i) => i + 1),
    );
    assert.equal((await rowsOf(standby, "SHOW dolt_cluster_role"))[0].dolt_cluster_role, "standby");
  });

  it("off: 0 stops the waiting", async () => {
    await primary.query("ALTER SYSTEM SET dolt_cluster_ack_writes_timeout_secs TO 0");
    await waitFor("commits to stop waiting", async () => (await syncNames()) === "");
    partition(a, b);
    try {
      const quick = await insert();
      assert.ok(quick < 1_000, `nothing waits (${quick} ms)`);
    } finally {
      heal(a, b);
    }
    const bad = await primary
      .query("ALTER SYSTEM SET dolt_cluster_ack_writes_timeout_secs TO -1")
      .catch((e) => e);
    assert.match(String(bad.message), /invalid value for dolt_cluster_ack_writes_timeout_secs/);
  });
});
