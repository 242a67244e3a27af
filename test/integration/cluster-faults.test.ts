// A two-node cluster under pgbench load, through network partitions (a fault-injecting proxy on
// each direction of the link), SIGKILLed and restarted nodes, and graceful failovers back and
// forth. Beside pgbench, a writer inserts numbered rows one transaction each and keeps the numbers
// whose COMMIT returned. After each step the standby's tables equal the primary's exactly, and at
// the end every acknowledged row is on both: zero acknowledged writes lost.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { findPgBinaries } from "../../src/store/binaries.ts";
import { AckedWriter, assertNoneLost, assertSameRows, PGBENCH_TABLES } from "../support/cluster-load.ts";
import {
  type ClusterNode,
  createClusterNodes,
  destroyClusterNodes,
  heal,
  partition,
  roleOf,
  waitForRole,
} from "../support/cluster-nodes.ts";
import { TEST_PASSWORD, TEST_USER, waitFor } from "../support/postgres.ts";

const PGBENCH = join(dirname(realpathSync(findPgBinaries().initdb)), "pgbench");

/** pgbench against a node's front door; resolves its exit code (a failover aborts its clients). */
function pgbench(node: ClusterNode, args: string[]): { done: Promise<number | null>; child: ChildProcess } {
  const child = spawn(
    PGBENCH,
    [...args, "-h", "127.0.0.1", "-p", String(node.strata.port), "-U", TEST_USER, "postgres"],
    { env: { ...process.env, PGPASSWORD: TEST_PASSWORD }, stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr!.on("data", (d) => {
    stderr += d.toString();
  });
  const done = new Promise<number | null>((resolve) =>
    child.once("close", (code) => {
      if (code !== 0) process.stderr.write(`pgbench exited with ${code}: ${stderr.slice(-500)}\n`);
      resolve(code);
    }),
  );
  return { done, child };
}

const historyRows = async (node: ClusterNode) =>
  Number((await node.strata.query("SELECT count(*) AS n FROM pgbench_history"))[0].n);

describe("cluster: partitions, restarts and failovers under load", { timeout: 600_000 }, () => {
  let a: ClusterNode;
  let b: ClusterNode;
  let primary: ClusterNode;
  let writer: AckedWriter;

  before(async () => {
    [a, b] = await createClusterNodes(
      [
        { name: "a", bootstrap_role: "primary" },
        { name: "b", bootstrap_role: "standby" },
      ],
      undefined,
      { faults: true },
    );
    primary = a;
    await Promise.all([a.strata.start(), b.strata.start()]);
    assert.equal(await pgbench(a, ["-i", "-s", "1", "-q"]).done, 0);
    await a.strata.query("CREATE TABLE acks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    await assertSameRows(a, b, PGBENCH_TABLES);
    writer = new AckedWriter(() => primary);
    writer.start();
  });

  after(async () => {
    await writer?.stop();
    await destroyClusterNodes([a, b]);
  });

  /** Wait until pgbench has committed `count` more transactions on the primary. */
  const load = async (count: number, what: string) => {
    const start = await historyRows(primary);
    await waitFor(
      `${count} pgbench transactions ${what}`,
      async () => (await historyRows(primary)) >= start + count,
      60_000,
    );
  };

  it("a partition under load: the primary keeps committing, the standby catches up exactly, no role changes", async () => {
    const run = pgbench(a, ["-c", "2", "-T", "600", "-n"]);
    try {
      await load(200, "before the partition");
      partition(a, b);
      await load(500, "during the partition");
      await writer.progress(50, "during the partition");
      heal(a, b);
      await load(200, "after the partition");
    } finally {
      run.child.kill("SIGINT");
      await run.done;
    }
    await assertSameRows(a, b, PGBENCH_TABLES, writer);
    assert.equal(await roleOf(a), "primary@1");
    assert.equal(await roleOf(b), "standby@1");
    assert.ok(a.links.get("b")!.refused + b.links.get("a")!.refused > 0, "the partition refused connections");
  });

  it("the standby SIGKILLed and restarted under load", async () => {
    const run = pgbench(a, ["-c", "2", "-T", "600", "-n"]);
    try {
      await load(200, "before the kill");
      await b.strata.kill("SIGKILL");
      await load(300, "with the standby down");
      await b.strata.start();
      await load(200, "after the restart");
    } finally {
      run.child.kill("SIGINT");
      await run.done;
    }
    await assertSameRows(a, b, PGBENCH_TABLES, writer);
  });

  it("the primary SIGKILLed and restarted: it is primary again, with every acknowledged write", async () => {
    await writer.progress(50, "before the kill");
    await a.strata.kill("SIGKILL");
    const before = writer.acknowledged.length;
    await a.strata.start();
    await writer.progress(50, "after the restart");
    assert.ok(writer.acknowledged.length > before);
    await assertNoneLost(a, writer);
    assert.equal(await roleOf(a), "primary@1");
    assert.equal(await roleOf(b), "standby@1");
    await assertSameRows(a, b, PGBENCH_TABLES, writer);
  });

  it("graceful failovers back and forth under load lose no acknowledged write", async () => {
    for (const [from, to, epoch] of [
      [a, b, 2],
      [b, a, 3],
    ] as const) {
      const run = pgbench(from, ["-c", "2", "-T", "600", "-n"]);
      try {
        await load(200, `on ${from.name}`);
        await writer.progress(20, `on ${from.name}`);
        const demoter = new pg.Client(from.strata.connectionConfig());
        await demoter.connect();
        await demoter.query(`SELECT dolt_assume_cluster_role('standby', ${epoch})`);
        await demoter.end().catch(() => {});
        const promoter = new pg.Client(to.strata.connectionConfig());
        await promoter.connect();
        await promoter.query(`SELECT dolt_assume_cluster_role('primary', ${epoch})`);
        await promoter.end().catch(() => {});
        primary = to;
      } finally {
        // The demotion ended pgbench's sessions; it may have stopped already.
        run.child.kill("SIGINT");
        await run.done;
      }
      await writer.progress(20, `on ${to.name}`);
      await waitForRole(from, `standby@${epoch}`);
    }
    await writer.stop();
    await assertNoneLost(a, writer);
    await assertSameRows(a, b, PGBENCH_TABLES);
    assert.equal(await roleOf(a), "primary@3");
    assert.equal(await roleOf(b), "standby@3");
  });
});
