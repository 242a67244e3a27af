// Direct-to-standby clusters (docs/cluster.md): the reference's two-node walkthrough against real
// stores — a primary and a hot standby that takes its first copy by itself, every commit (and new
// databases, roles) replicated, reads on the standby and writes refused, an orderly failover and
// back with no write lost, and the refusals of dolt_assume_cluster_role.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { type ClusterNode, createClusterNodes, destroyClusterNodes } from "../support/cluster-nodes.ts";
import { waitFor } from "../support/postgres.ts";
import { failure, rowsOf, Sessions } from "../support/sessions.ts";

describe("cluster: a primary and a hot standby", () => {
  let a: ClusterNode;
  let b: ClusterNode;
  const sessions = new Sessions();

  before(async () => {
    [a, b] = await createClusterNodes([
      { name: "dolt-1", bootstrap_role: "primary" },
      { name: "dolt-2", bootstrap_role: "standby" },
    ]);
    // The standby's data directory is empty: it waits for the primary, then copies its store.
    await Promise.all([a.strata.start(), b.strata.start()]);
  });

  after(async () => {
    await sessions.closeAll();
    await destroyClusterNodes([a, b]);
  });

  const role = async (node: ClusterNode) => {
    const client = await sessions.open(node.strata);
    const r = (await rowsOf(client, "SHOW dolt_cluster_role"))[0].dolt_cluster_role;
    const e = (await rowsOf(client, "SHOW dolt_cluster_role_epoch"))[0].dolt_cluster_role_epoch;
    await client.end();
    return `${r}@${e}`;
  };

  const waitForRows = async (node: ClusterNode, sql: string, expected: unknown[], database = "postgres") =>
    waitFor(
      `${node.name}: ${sql} = ${JSON.stringify(expected)}`,
      async () => {
        const rows = await node.strata.query(sql, [], database);
        return JSON.stringify(rows) === JSON.stringify(expected) ? true : undefined;
      },
      30_000,
    ).catch((err: Error) => {
      const lines = node.strata.logs
        .split("\n")
        .filter((l) => l.includes("cluster") || /"level":[456]0/.test(l));
      throw new Error(
        `${err.message}\n--- ${node.name} log (cluster lines) ---\n${lines.slice(-40).join("\n")}`,
      );
    });

  it("starts each node in its bootstrap role, and the standby copies the primary", async () => {
    assert.equal(await role(a), "primary@1");
    assert.equal(await role(b), "standby@1");
    assert.match(b.strata.logs, /base backup complete/);
  });

  it("replicates every commit, new databases and roles, and serves history on the standby", async () => {
    const primary = await sessions.open(a.strata);
    await primary.query("CREATE TABLE items (id int PRIMARY KEY, name text)");
    await primary.query("INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    await primary.query("SELECT dolt_commit('-Am', 'two items')");
    await primary.query("CREATE DATABASE appdb");
    await primary.query("CREATE ROLE reader LOGIN PASSWORD 'secret'");
    await waitForRows(b, "SELECT id, name FROM items ORDER BY id", [
      { id: 1, name: "one" },
      { id: 2, name: "two" },
    ]);
    await waitForRows(b, "SELECT message FROM dolt_log ORDER BY commit_order DESC LIMIT 1", [
      { message: "two items" },
    ]);
    await waitForRows(b, "SELECT count(*)::int AS n FROM pg_database WHERE datname = 'appdb'", [{ n: 1 }]);
    await waitForRows(b, "SELECT rolname FROM pg_roles WHERE rolname = 'reader'", [{ rolname: "reader" }]);
    // Grants, and a database dropped: the standby has them too, and the user logs in there.
    await primary.query("GRANT SELECT ON items TO reader");
    await primary.query("CREATE DATABASE short_lived");
    await waitForRows(b, "SELECT count(*)::int AS n FROM pg_database WHERE datname = 'short_lived'", [
      { n: 1 },
    ]);
    await primary.query("DROP DATABASE short_lived");
    await waitForRows(b, "SELECT count(*)::int AS n FROM pg_database WHERE datname = 'short_lived'", [
      { n: 0 },
    ]);
    const asReader = await sessions.open(b.strata, "postgres", { user: "reader", password: "secret" });
    assert.deepEqual(await rowsOf(asReader, "SELECT count(*)::int AS n FROM items"), [{ n: 2 }]);
    // Branches: made and written on the primary, listed and read on the standby.
    await primary.query("SELECT dolt_branch('feature')");
    const feature = await sessions.open(a.strata, "postgres/feature");
    await feature.query("INSERT INTO items VALUES (10, 'ten')");
    await feature.query("SELECT dolt_commit('-am', 'ten on feature')");
    await waitForRows(b, "SELECT name FROM dolt_branches ORDER BY name", [
      { name: "feature" },
      { name: "main" },
    ]);
    // The history surface on the standby.
    await primary.query("CREATE TABLE notes (id int PRIMARY KEY, v text)");
    await primary.query("INSERT INTO notes VALUES (1, 'a')");
    await primary.query("SELECT dolt_commit('-Am', 'note 1')");
    await primary.query("UPDATE notes SET v = 'b'");
    await primary.query("SELECT dolt_commit('-am', 'note 1 changed')");
    await waitForRows(b, "SELECT v FROM notes", [{ v: "b" }]);
    const history = await sessions.open(b.strata);
    assert.deepEqual(await rowsOf(history, "SELECT id, v FROM notes AS OF 'HEAD~1'"), [{ id: 1, v: "a" }]);
    assert.deepEqual(
      await rowsOf(history, "SELECT diff_type, from_v, to_v FROM dolt_diff('HEAD~1', 'HEAD', 'notes')"),
      [{ diff_type: "modified", from_v: "a", to_v: "b" }],
    );
    assert.deepEqual(await rowsOf(history, "SELECT count(*)::int AS n FROM dolt_history_notes"), [{ n: 2 }]);
    assert.deepEqual(await rowsOf(history, "SELECT count(*)::int AS n FROM dolt_blame_notes"), [{ n: 1 }]);
    assert.deepEqual(await rowsOf(history, "SELECT count(*)::int AS n FROM dolt_diff_notes"), [{ n: 2 }]);
    assert.deepEqual(await rowsOf(history, "SELECT * FROM dolt_status"), []);
    const onStandby = await sessions.open(b.strata);
    await onStandby.query('USE "postgres/feature"');
    assert.deepEqual(await rowsOf(onStandby, "SELECT id FROM items ORDER BY id"), [
      { id: 1 },
      { id: 2 },
      { id: 10 },
    ]);
    assert.deepEqual(
      await rowsOf(onStandby, "SELECT message FROM dolt_log ORDER BY commit_order DESC LIMIT 1"),
      [{ message: "ten on feature" }],
    );
  });

  it("refuses writes on the standby", async () => {
    const standby = await sessions.open(b.strata);
    const err = await failure(standby, "INSERT INTO items VALUES (3, 'three')");
    assert.equal(err.code, "25006");
    // Postgres's message; Doltgres's words and where the writes go beside it.
    assert.equal(err.message, "cannot execute INSERT in a read-only transaction");
    assert.equal(err.detail, "Database postgres is read-only.");
    assert.equal(
      err.hint,
      "this server is a standby at epoch 1 in its cluster: write to the primary, dolt-1 (SHOW dolt_cluster_role on each server)",
    );
    // Extended protocol too, and the session goes on.
    const prepared = await failure(standby, { text: "UPDATE items SET name = $1", values: ["x"] });
    assert.equal(prepared.hint, err.hint);
    assert.deepEqual(await rowsOf(standby, "SELECT count(*)::int AS n FROM items"), [{ n: 2 }]);
    const sneaky = await failure(standby, "SET default_transaction_read_only = off");
    assert.equal(sneaky.code, "25006");
    assert.equal(sneaky.hint, err.hint);
  });

  it("shows the status of replication on the primary", async () => {
    await waitFor("a caught-up standby in dolt_cluster_status", async () => {
      const rows = await a.strata.query(
        "SELECT database, standby_remote, role, epoch, replication_lag_millis, current_error FROM dolt_cluster.dolt_cluster_status WHERE database = 'postgres'",
      );
      return rows.length === 1 && rows[0].replication_lag_millis === "0" && rows[0].current_error === null
        ? rows
        : undefined;
    });
    const rows = await a.strata.query(
      "SELECT database, standby_remote, role, epoch FROM dolt_cluster.dolt_cluster_status ORDER BY 1",
    );
    assert.deepEqual(rows, [
      { database: "appdb", standby_remote: "dolt-2", role: "primary", epoch: "1" },
      { database: "postgres", standby_remote: "dolt-2", role: "primary", epoch: "1" },
    ]);
    const standbyRows = await b.strata.query(
      "SELECT role, replication_lag_millis, now() - last_update < interval '5 seconds' AS fresh FROM dolt_cluster.dolt_cluster_status WHERE database = 'postgres'",
    );
    assert.deepEqual(standbyRows, [{ role: "standby", replication_lag_millis: null, fresh: true }]);
  });

  it("refuses what dolt_assume_cluster_role must refuse", async () => {
    const client = await sessions.open(a.strata);
    for (const [sql, message] of [
      [
        "SELECT dolt_assume_cluster_role('standby', 0)",
        "error assuming role 'standby' at epoch 0; already at epoch 1",
      ],
      [
        "SELECT dolt_assume_cluster_role('standby', 1)",
        "error assuming role 'standby' at epoch 1; already at epoch 1 with different role, 'primary'",
      ],
      [
        "SELECT dolt_assume_cluster_role('leader', 2)",
        "error assuming role 'leader'; valid roles are 'primary' and 'standby'",
      ],
      [
        "SELECT dolt_assume_cluster_role('detected_broken_config', 2)",
        "cannot set role to detected_broken_config; valid values are 'primary' and 'standby'",
      ],
    ] as const) {
      assert.equal((await failure(client, sql)).message, message);
    }
    assert.deepEqual(await rowsOf(client, "SELECT dolt_assume_cluster_role('primary', 1)"), [
      { dolt_assume_cluster_role: "0" },
    ]);
    assert.equal(await role(a), "primary@1");
  });

  it("fails over in order and back, losing no write", async () => {
    const writer = await sessions.open(a.strata);
    await writer.query("INSERT INTO items VALUES (3, 'three')");
    const other = await sessions.open(a.strata);
    await other.query("SELECT 1");
    // Demote the primary: it waits for the standby, and the calling connection is done.
    assert.deepEqual(await rowsOf(writer, "SELECT dolt_assume_cluster_role('standby', 2)"), [
      { dolt_assume_cluster_role: "0" },
    ]);
    assert.equal(
      (await failure(writer, "SELECT 1")).message,
      "this server transitioned cluster roles. this connection can no longer be used. please reconnect.",
    );
    await assert.rejects(other.query("SELECT 1"));
    assert.equal(await role(a), "standby@2");
    // Everything the old primary committed is on the standby before it is promoted.
    assert.deepEqual(await b.strata.query("SELECT count(*)::int AS n FROM items"), [{ n: 3 }]);
    const promoter = await sessions.open(b.strata);
    assert.deepEqual(await rowsOf(promoter, "SELECT dolt_assume_cluster_role('primary', 2)"), [
      { dolt_assume_cluster_role: "0" },
    ]);
    assert.equal(await role(b), "primary@2");
    await b.strata.query("INSERT INTO items VALUES (4, 'four')");
    // The old primary follows the new one (rewound onto its history) and serves its writes.
    await waitForRows(a, "SELECT count(*)::int AS n FROM items", [{ n: 4 }]);
    assert.match(a.strata.logs, /store checked against the new primary/);
    assert.doesNotMatch(a.strata.logs, /cannot rewind this former primary/);
    const err = await failure(await sessions.open(a.strata), "INSERT INTO items VALUES (5, 'five')");
    assert.equal(err.code, "25006");
    // And back.
    const demoter = await sessions.open(b.strata);
    await rowsOf(demoter, "SELECT dolt_assume_cluster_role('standby', 3)");
    await rowsOf(await sessions.open(a.strata), "SELECT dolt_assume_cluster_role('primary', 3)");
    await a.strata.query("INSERT INTO items VALUES (5, 'five')");
    await waitForRows(b, "SELECT count(*)::int AS n FROM items", [{ n: 5 }]);
    assert.doesNotMatch(b.strata.logs, /cannot rewind this former primary/);
    assert.equal(await role(a), "primary@3");
    assert.equal(await role(b), "standby@3");
  });
});
