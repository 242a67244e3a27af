// Strata cluster nodes on one machine (separate data directories and ports), each configured
// with the others as its standby_remotes, as the reference's two-node example does. With
// `faults`, each node reaches each other one through a fault-injecting proxy of its own (one per
// direction), so that a test can partition two nodes (partition / heal).
import { join } from "node:path";
import pg from "pg";
import { clusterPaths } from "../../src/store/cluster.ts";
import { FaultProxy } from "./fault-proxy.ts";
import { freePort, TEST_PASSWORD, TEST_USER, tempDir, waitFor } from "./postgres.ts";
import { createStandaloneStrata, type StrataProcess } from "./strata.ts";

export interface ClusterNode {
  name: string;
  strata: StrataProcess;
  /** The control-plane (cluster.remotesapi) port. */
  controlPort: number;
  /** With `faults`: the proxy each of the other nodes is reached through, by name. */
  links: Map<string, FaultProxy>;
}

export interface NodeSpec {
  name: string;
  bootstrap_role: "primary" | "standby";
  bootstrap_epoch?: number;
}

/** Create (not start) nodes that name each other as standby remotes. */
export async function createClusterNodes(
  specs: NodeSpec[],
  extra: (name: string) => Record<string, unknown> = () => ({}),
  options: { faults?: boolean } = {},
): Promise<ClusterNode[]> {
  const ports = await Promise.all(specs.map(() => freePort()));
  const nodes: ClusterNode[] = [];
  for (const [i, spec] of specs.entries()) {
    const links = new Map<string, FaultProxy>();
    const others = [];
    for (const [j, other] of specs.entries()) {
      if (j === i) continue;
      let port = ports[j];
      if (options.faults) {
        const proxy = await FaultProxy.start(ports[j]);
        links.set(other.name, proxy);
        port = proxy.port;
      }
      others.push({ name: other.name, remote_url_template: `http://127.0.0.1:${port}/{database}` });
    }
    const { cluster: clusterExtra, ...rest } = extra(spec.name) as { cluster?: Record<string, unknown> };
    const strata = await createStandaloneStrata({
      dataDir: join(tempDir(`strata-node-${spec.name}-`), "data"),
      config: {
        cluster: {
          standby_remotes: others,
          bootstrap_role: spec.bootstrap_role,
          bootstrap_epoch: spec.bootstrap_epoch ?? 1,
          remotesapi: { address: "127.0.0.1", port: ports[i] },
          ...clusterExtra,
        },
        ...rest,
      },
    });
    nodes.push({ name: spec.name, strata, controlPort: ports[i], links });
  }
  return nodes;
}

/** Cut (or restore) the network between two nodes, both ways. */
export function partition(a: ClusterNode, b: ClusterNode, cut = true): void {
  for (const link of [a.links.get(b.name), b.links.get(a.name)]) {
    if (!link) throw new Error(`${a.name} and ${b.name} were created without faults`);
    if (cut) link.partition();
    else link.heal();
  }
}

export const heal = (a: ClusterNode, b: ClusterNode) => partition(a, b, false);

/** Stop the nodes and their proxies, and remove their directories. */
export async function destroyClusterNodes(nodes: (ClusterNode | undefined)[]): Promise<void> {
  await Promise.all(nodes.map((n) => n?.strata.stop().catch(() => {})));
  for (const node of nodes) {
    node?.strata.destroySync();
    for (const link of node?.links.values() ?? []) await link.close();
  }
}

/** role@epoch, read on a new connection. */
export async function roleOf(node: ClusterNode): Promise<string> {
  const client = new pg.Client(node.strata.connectionConfig());
  client.on("error", () => {});
  await client.connect();
  try {
    const r = (await client.query("SHOW dolt_cluster_role")).rows[0].dolt_cluster_role;
    const e = (await client.query("SHOW dolt_cluster_role_epoch")).rows[0].dolt_cluster_role_epoch;
    return `${r}@${e}`;
  } finally {
    await client.end().catch(() => {});
  }
}

export async function waitForRole(node: ClusterNode, expected: string, timeoutMs = 10_000): Promise<void> {
  let last = "";
  await waitFor(
    `${node.name} to be ${expected}`,
    async () => {
      last = await roleOf(node).catch(() => "");
      return last === expected;
    },
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message} (last seen: ${last || "nothing"})`);
  });
}

/** SQL on a node's store itself (its unix socket), bypassing Strata: works while Strata is down. */
export async function storeQuery(node: ClusterNode, sql: string): Promise<pg.QueryResultRow[]> {
  const client = new pg.Client({
    host: clusterPaths({ root: join(node.strata.dataDir, "store") }).socketDir,
    port: 5432,
    user: TEST_USER,
    password: TEST_PASSWORD,
    database: "postgres",
  });
  client.on("error", () => {});
  await client.connect();
  try {
    return (await client.query(sql)).rows;
  } finally {
    await client.end().catch(() => {});
  }
}
