// Strata cluster nodes on one machine (separate data directories and ports), each configured
// with the others as its standby_remotes, as the reference's two-node example does.
import { join } from "node:path";
import { freePort, tempDir } from "./postgres.ts";
import { createStandaloneStrata, type StrataProcess } from "./strata.ts";

export interface ClusterNode {
  name: string;
  strata: StrataProcess;
  /** The control-plane (cluster.remotesapi) port. */
  controlPort: number;
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
): Promise<ClusterNode[]> {
  const ports = await Promise.all(specs.map(() => freePort()));
  const nodes: ClusterNode[] = [];
  for (const [i, spec] of specs.entries()) {
    const others = specs
      .map((other, j) => ({ other, j }))
      .filter(({ j }) => j !== i)
      .map(({ other, j }) => ({
        name: other.name,
        remote_url_template: `http://127.0.0.1:${ports[j]}/{database}`,
      }));
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
    nodes.push({ name: spec.name, strata, controlPort: ports[i] });
  }
  return nodes;
}
