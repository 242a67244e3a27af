// The opt-in automatic failover policy (cluster.automatic_failover, src/cluster/failover.ts) on
// three real nodes, with synchronous replication on, while a writer commits rows one by one:
//
//   the primary's Strata SIGKILLed    one standby promotes itself at the next epoch, the other
//                                     follows it; the old primary, restarted, rejoins as a standby
//   the primary cut off from both     it fences itself (read-only) before the others elect a new
//   (fault-injecting proxies)         primary; after the heal it follows the new one
//
// After each, every node has exactly the same rows and no acknowledged write is lost.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { AckedWriter, assertNoneLost, assertSameRows } from "../support/cluster-load.ts";
import {
  type ClusterNode,
  createClusterNodes,
  destroyClusterNodes,
  heal,
  partition,
  roleOf,
  waitForRole,
} from "../support/cluster-nodes.ts";
import { waitFor } from "../support/postgres.ts";

const AFTER_SECS = 4;
const FENCED = /cannot reach a majority of its cluster and is read-only/;

describe("cluster: automatic failover (opt-in)", { timeout: 300_000 }, () => {
  let nodes: ClusterNode[] = [];
  let primary: ClusterNode;
  let writer: AckedWriter;

  before(async () => {
    nodes = await createClusterNodes(
      [
        { name: "a", bootstrap_role: "primary" },
        { name: "b", bootstrap_role: "standby" },
        { name: "c", bootstrap_role: "standby" },
      ],
      () => ({
        cluster: { automatic_failover: { after_secs: AFTER_SECS } },
        system_variables: { dolt_cluster_ack_writes_timeout_secs: 10 },
      }),
      { faults: true },
    );
    primary = nodes[0];
    await Promise.all(nodes.map((n) => n.strata.start()));
    // A primary is fenced (read-only) until it has exchanged heartbeats with a majority.
    await waitFor("the primary to take writes", async () =>
      primary.strata
        .query("CREATE TABLE acks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        .then(() => true)
        .catch(() => false),
    );
    for (const standby of nodes.slice(1)) await assertSameRows(primary, standby, []);
    writer = new AckedWriter(() => primary);
    writer.start();
  });

  after(async () => {
    await writer?.stop();
    await destroyClusterNodes(nodes);
  });

  /** The one node among `candidates` that is primary at `epoch`, once the others are its standbys. */
  const electedAt = async (candidates: ClusterNode[], epoch: number): Promise<ClusterNode> => {
    let roles: string[] = [];
    const elected = await waitFor(
      `a primary at epoch ${epoch} among ${candidates.map((n) => n.name).join(", ")}`,
      async () => {
        roles = await Promise.all(candidates.map((n) => roleOf(n).catch(() => "down")));
        const primaries = candidates.filter((_, i) => roles[i] === `primary@${epoch}`);
        return primaries.length === 1 ? primaries[0] : undefined;
      },
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message} (roles: ${roles.join(", ")})`);
    });
    for (const other of candidates) if (other !== elected) await waitForRole(other, `standby@${epoch}`);
    return elected;
  };

  it("the primary's Strata killed: a standby takes over, the other follows, the old primary rejoins", async () => {
    const old = primary;
    await writer.progress(50, "before the kill");
    await old.strata.kill("SIGKILL");
    const killedAt = Date.now();
    const survivors = nodes.filter((n) => n !== old);
    primary = await electedAt(survivors, 2);
    const tookMs = Date.now() - killedAt;
    assert.ok(tookMs >= AFTER_SECS * 1000 - 500, `no promotion before after_secs (${tookMs} ms)`);
    assert.match(primary.strata.logs, /won its vote: promoting itself \(cluster\.automatic_failover\)/);
    const other = survivors.find((n) => n !== primary)!;
    assert.match(other.strata.logs, /"granted":true[^\n]*asked for this server.s vote/);
    await writer.progress(50, "on the new primary");
    await assertNoneLost(primary, writer);
    // The old primary comes back as primary@1, hears of epoch 2, and follows.
    await old.strata.start();
    await waitForRole(old, "standby@2", 30_000);
    for (const standby of nodes.filter((n) => n !== primary))
      await assertSameRows(primary, standby, [], writer);
  });

  it("a primary cut off from both standbys fences itself before they elect another", async () => {
    const old = primary;
    const others = nodes.filter((n) => n !== old);
    await writer.progress(50, "before the partition");
    for (const other of others) partition(old, other);
    const cutAt = Date.now();
    // A client that reaches the old primary gets its writes refused once it is fenced. Each try
    // is a new session (the fence ends the old ones) with a row of its own; a row whose insert
    // returned must survive like the writer's.
    const acknowledged: number[] = [];
    let attempt = 0;
    const fencedAt = await waitFor(
      "the cut-off primary to refuse writes",
      async () => {
        const id = -++attempt;
        const client = new pg.Client(old.strata.connectionConfig());
        client.on("error", () => {});
        try {
          await client.connect();
          await client.query("INSERT INTO acks (id) VALUES ($1)", [id]);
          acknowledged.push(id);
          return undefined;
        } catch (err) {
          const message = (err as Error).message;
          return FENCED.test(message) || /read-only transaction/.test(message) ? Date.now() : undefined;
        } finally {
          await client.end().catch(() => {});
        }
      },
      15_000,
    );
    assert.ok(fencedAt - cutAt < AFTER_SECS * 1000, `fenced within after_secs (${fencedAt - cutAt} ms)`);
    assert.equal(await roleOf(old), "primary@2");
    const status = await old.strata.query(
      "SELECT DISTINCT current_error FROM dolt_cluster.dolt_cluster_status",
    );
    assert.match(String(status[0]?.current_error), FENCED);
    // The front door refuses to make a transaction read-write there, comments or not.
    const refused = new pg.Client(old.strata.connectionConfig());
    refused.on("error", () => {});
    await refused.connect();
    const readWrite = await refused.query("BEGIN READ/**/WRITE").catch((err: pg.DatabaseError) => err);
    assert.equal((readWrite as pg.DatabaseError).code, "25006");
    await refused.end().catch(() => {});
    // A transaction made read-write in a way the front door does not recognise (an escaped
    // setting name) commits on the store, but is never acknowledged: its commit waits, and fails
    // when the session is ended.
    const sneaky = new pg.Client(old.strata.connectionConfig());
    sneaky.on("error", () => {});
    await sneaky.connect();
    let sneakyDone = false;
    const sneakyCommit = sneaky
      .query(
        'BEGIN; SET LOCAL U&"transaction_read_onl\\0079" TO off; INSERT INTO acks (id) VALUES (-1000); COMMIT',
      )
      .then(
        () => "acknowledged",
        (err: Error) => err.message,
      )
      .finally(() => {
        sneakyDone = true;
      });
    primary = await electedAt(others, 3);
    const electedAfter = Date.now() - cutAt;
    assert.ok(electedAfter >= AFTER_SECS * 1000 - 500, `elected after after_secs (${electedAfter} ms)`);
    await writer.progress(50, "on the new primary");
    for (const other of others) heal(old, other);
    assert.equal(sneakyDone, false, "the read-write commit on the fenced primary is still waiting");
    await waitForRole(old, "standby@3", 30_000);
    assert.notEqual(await sneakyCommit, "acknowledged");
    await sneaky.end().catch(() => {});
    await assertNoneLost(primary, writer);
    for (const standby of nodes.filter((n) => n !== primary))
      await assertSameRows(primary, standby, [], writer);
    // What the cut-off primary acknowledged before its fence is on the new primary; what it
    // refused is nowhere.
    const negatives = (await primary.strata.query("SELECT id FROM acks WHERE id < 0 ORDER BY id DESC")).map(
      (r) => r.id as number,
    );
    assert.deepEqual(negatives, acknowledged);
  });
});
