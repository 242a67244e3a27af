// A cluster over HTTPS (docs/cluster.md, "Security"): two nodes whose control-plane ports present
// certificates from the CA in cluster.remotesapi.tls_ca, checked against server_name_dns; the
// standby's base backup and WAL stream go through the TLS tunnel. Peers that present a
// certificate from another CA, an expired one, or one for a name not listed are refused, each
// with its reason in dolt_cluster_status.current_error.
import assert from "node:assert/strict";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { clusterTls, makeLeaf } from "../support/cluster-tls.ts";
import { freePort, tempDir, waitFor } from "../support/postgres.ts";
import { createStandaloneStrata, type StrataProcess } from "../support/strata.ts";

describe("cluster: TLS between nodes", () => {
  const tls = clusterTls();
  const servers: https.Server[] = [];
  let primary: StrataProcess;
  let standby: StrataProcess;

  /** An HTTPS server with `leaf`'s certificate, answering nothing useful: a peer's TLS check fails first. */
  const impostor = async (pem: { key: Buffer; cert: Buffer }) => {
    const server = https.createServer(pem, (_req, res) => res.end("{}"));
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    return (server.address() as AddressInfo).port;
  };

  before(async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const wrongCa = await impostor(
      makeLeaf(tls.otherCa, { ips: ["127.0.0.1"], dns: ["peer-a.strata.test"] }).pem,
    );
    const expired = await impostor(tls.expired.pem);
    const wrongName = await impostor(
      makeLeaf(tls.ca, { ips: ["127.0.0.1"], dns: ["elsewhere.strata.test"] }).pem,
    );
    const remotesapi = (port: number) => ({
      address: "127.0.0.1",
      port,
      tls_key: tls.peerA.key,
      tls_cert: tls.peerA.cert,
      tls_ca: tls.ca.cert,
      server_name_dns: ["peer-a.strata.test"],
    });
    primary = await createStandaloneStrata({
      dataDir: join(tempDir("strata-node-tls-a-"), "data"),
      config: {
        cluster: {
          standby_remotes: [
            { name: "standby", remote_url_template: `https://127.0.0.1:${portB}/{database}` },
            { name: "wrong_ca", remote_url_template: `https://127.0.0.1:${wrongCa}/{database}` },
            { name: "expired", remote_url_template: `https://127.0.0.1:${expired}/{database}` },
            { name: "wrong_name", remote_url_template: `https://127.0.0.1:${wrongName}/{database}` },
          ],
          bootstrap_role: "primary",
          bootstrap_epoch: 1,
          remotesapi: remotesapi(portA),
        },
      },
    });
    standby = await createStandaloneStrata({
      dataDir: join(tempDir("strata-node-tls-b-"), "data"),
      config: {
        cluster: {
          standby_remotes: [
            { name: "primary", remote_url_template: `https://127.0.0.1:${portA}/{database}` },
          ],
          bootstrap_role: "standby",
          bootstrap_epoch: 1,
          remotesapi: remotesapi(portB),
        },
      },
    });
    await Promise.all([primary.start(), standby.start()]);
  });

  after(async () => {
    await Promise.all([primary?.stop(), standby?.stop()]);
    primary?.destroySync();
    standby?.destroySync();
    for (const server of servers) server.close();
  });

  it("copies and streams the primary's store over TLS", async () => {
    await primary.query("CREATE TABLE t (id int PRIMARY KEY)");
    await primary.query("INSERT INTO t SELECT generate_series(1, 100)");
    await waitFor("the standby to have the primary's rows", async () => {
      const rows = await standby.query("SELECT count(*)::int AS n FROM t").catch(() => []);
      return rows[0]?.n === 100;
    });
  });

  it("refuses peers whose certificates fail the checks, saying why", async () => {
    const errors = await waitFor("the three refused peers' errors", async () => {
      const rows = await primary.query<{ standby_remote: string; current_error: string | null }>(
        "SELECT standby_remote, current_error FROM dolt_cluster.dolt_cluster_status WHERE database = 'postgres' ORDER BY 1",
      );
      const byName = Object.fromEntries(rows.map((r) => [r.standby_remote, r.current_error]));
      return byName.wrong_ca && byName.expired && byName.wrong_name ? byName : undefined;
    });
    assert.equal(errors.standby, null);
    assert.match(errors.wrong_ca!, /tls_ca/);
    assert.match(errors.expired!, /expired/);
    assert.match(errors.wrong_name!, /server_name_dns/);
  });
});
