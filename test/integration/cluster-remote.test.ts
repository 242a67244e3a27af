// A cluster that also replicates to a remote (the reference's last paragraph), through a double
// failover with a database created in between:
//
//   both nodes are configured with dolt_replicate_to_remote; only the primary pushes, and its
//   commits are on the remote when dolt_commit returns
//   failover to b: b pushes; a (now standby) never does
//   on b, a new database is created and written; failover back to a: the database, its rows and
//   history are on a, every acknowledged write on either side is there, and a pushes again
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { openRemoteStorage } from "../../src/remotes/storage.ts";
import {
  type ClusterNode,
  createClusterNodes,
  destroyClusterNodes,
  roleOf,
  storeQuery,
  waitForRole,
} from "../support/cluster-nodes.ts";
import { tempDir, waitFor } from "../support/postgres.ts";
import { rowsOf, Sessions } from "../support/sessions.ts";

describe("cluster: replication to a remote across failovers", { timeout: 240_000 }, () => {
  let a: ClusterNode;
  let b: ClusterNode;
  const sessions = new Sessions();
  const remoteUrl = `file://${join(tempDir("strata-cluster-remote-"), "postgres")}`;
  const remote = openRemoteStorage(remoteUrl);
  /** Every item whose INSERT was acknowledged, on whichever node was primary. */
  const acknowledged: number[] = [];

  before(async () => {
    [a, b] = await createClusterNodes(
      [
        { name: "a", bootstrap_role: "primary" },
        { name: "b", bootstrap_role: "standby" },
      ],
      () => ({ system_variables: { dolt_replicate_to_remote: "origin" } }),
    );
    await Promise.all([a.strata.start(), b.strata.start()]);
  });

  after(async () => {
    await sessions.closeAll();
    await destroyClusterNodes([a, b]);
  });

  const remoteHead = async () => (await remote.readRef("heads/main"))?.commit;

  /** Insert items on `node` and commit them with dolt_commit: the commit's hash. */
  const commitItems = async (node: ClusterNode, ids: number[], database = "postgres") => {
    const client = await sessions.open(node.strata, database);
    for (const id of ids) {
      await client.query("INSERT INTO items VALUES ($1)", [id]);
      if (database === "postgres") acknowledged.push(id);
    }
    const [row] = await rowsOf(client, `SELECT dolt_commit('-Am', 'items ${ids.join(",")}') AS c`);
    await client.end();
    return (row.c as string[])[0];
  };

  /** Fail over from `from` to `to` at `epoch`, and wait for `from` to follow `to`. */
  const failover = async (from: ClusterNode, to: ClusterNode, epoch: number) => {
    await rowsOf(await sessions.open(from.strata), `SELECT dolt_assume_cluster_role('standby', ${epoch})`);
    await rowsOf(await sessions.open(to.strata), `SELECT dolt_assume_cluster_role('primary', ${epoch})`);
    assert.equal(await roleOf(to), `primary@${epoch}`);
    await waitForRole(from, `standby@${epoch}`);
  };

  const itemsOn = async (node: ClusterNode) =>
    (await node.strata.query("SELECT id FROM items ORDER BY id")).map((r) => r.id as number);

  const standbyPushes = (node: ClusterNode) =>
    node.strata.logs.split("\n").filter((l) => /replication push failed|"msg":"pushed"/.test(l));

  it("only the primary pushes; its commits are on the remote when dolt_commit returns", async () => {
    // The background push has looked, and found no remote yet: the commit right after the remote
    // is added must still push to it (what the background push saw is not trusted).
    await waitFor("the background push to find no remote", async () =>
      a.strata.logs.includes('has no remote \\"origin\\"'),
    );
    const client = await sessions.open(a.strata);
    await client.query(`SELECT dolt_remote('add', 'origin', '${remoteUrl}')`);
    await client.query("CREATE TABLE items (id int PRIMARY KEY)");
    const first = await commitItems(a, [1, 2]);
    assert.equal(await remoteHead(), first);
    // A commit made on the store directly reaches the remote too (the primary's background push).
    await storeQuery(a, "INSERT INTO items VALUES (50)");
    acknowledged.push(50);
    const [direct] = await storeQuery(a, "SELECT (dolt.dolt_commit('-Am', 'on the store'))[1] AS c");
    await waitFor(
      "the background push of a commit made on the store",
      async () => (await remoteHead()) === direct.c,
    );
    // Reads on the standby (transactions that end there) push nothing, and fail nothing.
    await waitFor(
      "the standby to have the commits",
      async () => (await itemsOn(b).catch(() => [])).length === 3,
    );
    for (let i = 0; i < 5; i++) await b.strata.query("SELECT count(*) FROM dolt_log");
    assert.deepEqual(standbyPushes(b), []);
    assert.equal(await remoteHead(), direct.c);
  });

  it("after a failover the new primary pushes", async () => {
    await failover(a, b, 2);
    const second = await commitItems(b, [3, 4]);
    assert.equal(await remoteHead(), second);
    await waitFor("a to have b's commit", async () => (await itemsOn(a).catch(() => [])).length === 5);
    for (let i = 0; i < 5; i++) await a.strata.query("SELECT count(*) FROM dolt_log");
    assert.equal(await remoteHead(), second);
  });

  it("a database created between two failovers is there after the second, with every write", async () => {
    const client = await sessions.open(b.strata);
    await client.query("CREATE DATABASE between_failovers");
    const db = await sessions.open(b.strata, "between_failovers");
    await db.query("CREATE TABLE items (id int PRIMARY KEY)");
    await commitItems(b, [100, 101], "between_failovers");
    await commitItems(b, [5]);
    await failover(b, a, 3);
    assert.deepEqual(
      (await a.strata.query("SELECT id FROM items ORDER BY id", [], "between_failovers")).map((r) => r.id),
      [100, 101],
    );
    assert.deepEqual(
      (
        await a.strata.query(
          "SELECT message FROM dolt_log ORDER BY commit_order DESC LIMIT 1",
          [],
          "between_failovers",
        )
      )[0].message,
      "items 100,101",
    );
    // a writes to both databases and pushes again; b follows.
    await commitItems(a, [102], "between_failovers");
    const third = await commitItems(a, [6]);
    assert.equal(await remoteHead(), third);
    assert.deepEqual(
      await itemsOn(a),
      [...acknowledged].sort((x, y) => x - y),
    );
    await waitFor(
      "b to have every write",
      async () => (await itemsOn(b).catch(() => [])).length === acknowledged.length,
    );
    assert.deepEqual(await itemsOn(b), await itemsOn(a));
    const between = "SELECT id FROM items ORDER BY id";
    await waitFor(
      "b to have the new database's writes",
      async () => (await b.strata.query(between, [], "between_failovers").catch(() => [])).length === 3,
    );
    assert.equal(await roleOf(b), "standby@3");
  });
});
