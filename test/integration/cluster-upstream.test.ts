// A cluster whose primary replicates from an upstream PostgreSQL (postgres_replication), against
// real servers, with a fault-injecting proxy between the two nodes:
//
//   healthy     upstream changes reach the standby, and the upstream slot is acknowledged
//   partition   the primary goes on applying upstream changes, but does not acknowledge them
//               upstream while its standby does not have them
//   failover    the primary is SIGKILLed and the standby promoted: it streams from the upstream
//               slot where its own store ends, and ends up with every change, each applied once;
//               it acknowledges nothing upstream while its standby (the old primary) is down
//   rejoin      the old primary, restarted, is rewound and follows, with the same history, and
//               acknowledgements resume
//
// And an initial snapshot begun while the standby is cut off: no upstream slot is made until the
// standby knows of the snapshot, and the standby, promoted, takes the snapshot itself.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { parseLsn } from "../../src/protocol/lsn.ts";
import {
  type ClusterNode,
  createClusterNodes,
  destroyClusterNodes,
  heal,
  partition,
  waitForRole,
} from "../support/cluster-nodes.ts";
import { startPrimary, TEST_PASSWORD, TEST_USER, type TestCluster, waitFor } from "../support/postgres.ts";
import { waitForSameRows } from "../support/strata.ts";

const SLOT = "strata_cluster_slot";

/** Primary a and standby b, both configured to replicate from `upstream` (only a primary's replicator runs). */
const createNodes = (upstream: TestCluster) =>
  createClusterNodes(
    [
      { name: "a", bootstrap_role: "primary" },
      { name: "b", bootstrap_role: "standby" },
    ],
    () => ({
      postgres_replication: {
        postgres_server_address: upstream.host,
        postgres_port: upstream.port,
        postgres_user: TEST_USER,
        postgres_password: TEST_PASSWORD,
        postgres_database: "postgres",
        slot_name: SLOT,
        status_interval_ms: 200,
        reconnect_max_delay_ms: 500,
      },
    }),
    { faults: true },
  );

describe("cluster: a primary replicating from upstream, and a failover", { timeout: 240_000 }, () => {
  let upstream: TestCluster;
  let a: ClusterNode;
  let b: ClusterNode;
  let next = 1;

  /**
   * One upstream transaction per row; where the upstream's WAL ends after them (its insert
   * position: the test cluster commits asynchronously, so its write position lags).
   */
  const insertRows = async (count: number): Promise<bigint> => {
    for (let i = 0; i < count; i++) await upstream.query("INSERT INTO items VALUES ($1, 'v')", [next++]);
    return parseLsn((await upstream.query("SELECT pg_current_wal_insert_lsn()::text AS lsn"))[0].lsn);
  };
  const slotConfirmed = async (): Promise<bigint> =>
    parseLsn(
      (
        await upstream.query(
          "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1",
          [SLOT],
        )
      )[0].lsn,
    );
  const upstreamCommits = async (node: ClusterNode): Promise<number> =>
    Number(
      (await node.strata.query("SELECT count(*) AS n FROM dolt_log WHERE upstream_xid IS NOT NULL"))[0].n,
    );

  before(async () => {
    upstream = await startPrimary();
    await upstream.query("CREATE TABLE items (id int PRIMARY KEY, v text)");
    [a, b] = await createNodes(upstream);
    await Promise.all([a.strata.start(), b.strata.start()]);
    await a.strata.waitForStreaming();
  });

  after(async () => {
    await destroyClusterNodes([a, b]);
    await upstream?.stop();
  });

  it("healthy: upstream changes reach the standby, and the upstream slot is acknowledged", async () => {
    const end = await insertRows(5);
    await waitForSameRows(upstream, b.strata, "items", "id");
    await waitFor("the upstream slot to be acknowledged", async () => (await slotConfirmed()) >= end);
  });

  it("partition: the primary applies upstream changes but acknowledges none its standby lacks", async () => {
    partition(a, b);
    const end = await insertRows(10);
    await waitForSameRows(upstream, a.strata, "items", "id");
    // Unpartitioned, the acknowledgement follows within about 100 ms (the test above): give it
    // twenty times that to show it does not come.
    const deadline = Date.now() + 2_000;
    while (Date.now() < deadline) {
      const confirmed = await slotConfirmed();
      assert.ok(confirmed < end, `the upstream slot stays before the standby's gap (${confirmed} < ${end})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it("failover: the promoted standby streams from where its store ends, every change once", async () => {
    await a.strata.kill();
    const [{ result }] = await b.strata.query("SELECT dolt_assume_cluster_role('primary', 2) AS result");
    assert.equal(String(result), "0");
    await waitForRole(b, "primary@2");
    await waitForSameRows(upstream, b.strata, "items", "id");
    // One commit per upstream transaction: none lost, none applied twice.
    await waitFor(
      "every upstream transaction to be a commit",
      async () => (await upstreamCommits(b)) >= next - 1,
    );
    assert.equal(await upstreamCommits(b), next - 1);
    // Later changes follow; they are acknowledged upstream only once the old primary, now to be
    // its standby, has them too.
    const before = await slotConfirmed();
    await insertRows(3);
    await waitForSameRows(upstream, b.strata, "items", "id");
    assert.equal(await slotConfirmed(), before);
  });

  it("rejoin: the old primary is rewound and follows, with the new primary's history", async () => {
    heal(a, b);
    await a.strata.start();
    await waitForRole(a, "standby@2", 60_000);
    const end = await insertRows(2);
    await waitFor("the upstream slot to be acknowledged again", async () => (await slotConfirmed()) >= end);
    await waitForSameRows(upstream, b.strata, "items", "id");
    await waitForSameRows(upstream, a.strata, "items", "id");
    const log = async (node: ClusterNode) =>
      JSON.stringify(
        await node.strata.query("SELECT commit_hash, message FROM dolt_log ORDER BY commit_hash"),
      );
    await waitFor("the same history on both", async () => (await log(a)) === (await log(b)));
    assert.equal(await upstreamCommits(a), next - 1);
  });
});

describe("cluster: the initial snapshot while the standby is cut off", { timeout: 240_000 }, () => {
  let upstream: TestCluster;
  let a: ClusterNode;
  let b: ClusterNode;

  before(async () => {
    upstream = await startPrimary();
    await upstream.query("CREATE TABLE items (id int PRIMARY KEY, v text)");
    await upstream.query("INSERT INTO items SELECT g, 'before' FROM generate_series(1, 500) g");
    // Down at first: the standby takes its base backup before the primary can start a snapshot.
    await upstream.stopServer();
    [a, b] = await createNodes(upstream);
    await Promise.all([a.strata.start(), b.strata.start()]);
    await waitForRole(b, "standby@1", 60_000);
  });

  after(async () => {
    await destroyClusterNodes([a, b]);
    await upstream?.stop();
  });

  it("the primary makes no slot its standby does not know of; the promoted standby takes the snapshot itself", async () => {
    const waiting =
      "waiting for this cluster's standbys to have the store's WAL before creating the replication slot";
    partition(a, b);
    await upstream.startServer();
    await waitFor("the primary to wait for its standby before making the slot", async () =>
      a.strata.logs.includes(waiting),
    );
    assert.deepEqual(await upstream.query("SELECT slot_name FROM pg_replication_slots"), []);
    await a.strata.kill();
    await b.strata.query("SELECT dolt_assume_cluster_role('primary', 2)");
    await waitForRole(b, "primary@2");
    // The new primary waits in turn for its own standby, the old primary, which rejoins.
    await waitFor("the new primary to wait for its standby", async () => b.strata.logs.includes(waiting));
    heal(a, b);
    await a.strata.start();
    await waitForRole(a, "standby@2", 60_000);
    await waitForSameRows(upstream, b.strata, "items", "id");
    await upstream.query("INSERT INTO items VALUES (501, 'after')");
    await waitForSameRows(upstream, b.strata, "items", "id");
    await waitForSameRows(upstream, a.strata, "items", "id");
    const snapshots = await b.strata.query(
      "SELECT message FROM dolt_log WHERE message LIKE 'initial snapshot at %'",
    );
    assert.equal(snapshots.length, 1, "the promoted standby's history starts with its own snapshot");
  });
});
