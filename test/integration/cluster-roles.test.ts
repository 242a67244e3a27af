// Cluster roles against real nodes (docs/design/cluster-research.md, Dolt's semantics): the
// failure cases and the automatic transitions the walkthrough (cluster.test.ts) does not cover.
//
//   a graceful demotion whose standby is down      fails after Dolt's 10 s, stays primary@old
//   dolt_cluster_transition_to_standby             Dolt's rows (database × standby); refused on a standby
//   two primaries at one epoch                     both detected_broken_config, until one is promoted;
//                                                  the other (an unrelated store) follows it by itself
//   an older-epoch primary rejoining               becomes the new primary's standby, whatever the
//                                                  start order, and ends up with exactly its rows
//   the control plane                              refuses requests without a peer's token (401),
//                                                  shows it in the status table; the JWKS is open
//   another primary at the epoch, heard while a    the node still starts, its store prepared, and
//   node starts (a peer played by the test)        is detected_broken_config
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, it } from "node:test";
import { generateKeyPair, SignJWT } from "jose";
import type pg from "pg";

import { NodeKey } from "../../src/cluster/auth.ts";
import {
  type ClusterNode,
  createClusterNodes,
  destroyClusterNodes,
  roleOf,
  storeQuery,
  waitForRole,
} from "../support/cluster-nodes.ts";
import { waitFor } from "../support/postgres.ts";
import { failure, rowsOf, Sessions } from "../support/sessions.ts";

const DEMOTE_FAILED =
  "cluster/controller: failed to transition from primary to standby gracefully; could not replicate databases to standby in a timely manner.";
const ALREADY_STANDBY = "failed to transition server to standby; it is already standby.";
const BROKEN_PREFIX = "error: more than one server was configured as primary in the same epoch";
const TRANSITIONED =
  "this server transitioned cluster roles. this connection can no longer be used. please reconnect.";

/** The cluster lines of a node's log (its current run), for a failure's message. */
function clusterLog(node: ClusterNode, lines = 40): string {
  const picked = node.strata.logs
    .split("\n")
    .filter((l) => l.includes("cluster") || /"level":[456]0/.test(l));
  return `--- ${node.name} log (cluster lines) ---\n${picked.slice(-lines).join("\n")}`;
}

/** Fail with the nodes' cluster log lines appended. */
async function explained<T>(nodes: ClusterNode[], work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    (err as Error).message += `\n${nodes.map((n) => clusterLog(n)).join("\n")}`;
    throw err;
  }
}

const itemsSql = "SELECT id, v FROM items ORDER BY id";
type Item = { id: number; v: string };

async function waitForItems(node: ClusterNode, expected: Item[], timeoutMs = 30_000): Promise<void> {
  let last = "";
  await waitFor(
    `${node.name}: ${itemsSql} = ${JSON.stringify(expected)}`,
    async () => {
      last = JSON.stringify(await node.strata.query(itemsSql));
      return last === JSON.stringify(expected);
    },
    timeoutMs,
  ).catch((err: Error) => {
    throw new Error(`${err.message} (last seen: ${last || "nothing"})`);
  });
}

/** dolt_cluster.dolt_cluster_status's current_error for the postgres database (one peer). */
async function currentError(node: ClusterNode): Promise<string | null> {
  const rows = await node.strata.query<{ current_error: string | null }>(
    "SELECT current_error FROM dolt_cluster.dolt_cluster_status WHERE database = 'postgres'",
  );
  assert.equal(rows.length, 1, `${node.name}: one status row for postgres`);
  return rows[0].current_error;
}

async function cleanUp(nodes: (ClusterNode | undefined)[], sessions: Sessions): Promise<void> {
  await sessions.closeAll();
  await destroyClusterNodes(nodes);
}

/**
 * A peer played by the test on a node's peer's control port: it publishes a key (so the node
 * accepts its tokens), answers the node's heartbeats with the role `answer` gives, and can send
 * the node a heartbeat of its own.
 */
async function scriptedPeer(port: number, answer: () => { role: string; epoch: number }) {
  const key = await NodeKey.generate();
  const server = http.createServer((req, res) => {
    const reply = (status: number, body: unknown) => {
      const { role, epoch } = answer();
      res.writeHead(status, {
        "content-type": "application/json",
        "x-dolt-cluster-role": role,
        "x-dolt-cluster-role-epoch": String(epoch),
      });
      res.end(JSON.stringify(body));
    };
    req.resume();
    req.once("end", () => {
      if (req.method === "GET" && req.url?.endsWith("/.well-known/jwks.json")) return reply(200, key.jwks());
      if (req.method === "POST" && req.url === "/cluster/heartbeat")
        return reply(200, { ...answer(), node_id: "scripted" });
      reply(404, { error: "no such endpoint" });
    });
  });
  await new Promise<void>((resolveListen) => server.listen(port, "127.0.0.1", resolveListen));
  return {
    /** Send `node` a heartbeat saying we are `role`@`epoch`: resolves the HTTP status. */
    async heartbeat(node: ClusterNode, role: string, epoch: number): Promise<number> {
      const base = `http://127.0.0.1:${node.controlPort}`;
      const jwks = (await (await fetch(`${base}/.well-known/jwks.json`)).json()) as {
        keys: { kid: string }[];
      };
      const res = await fetch(`${base}/cluster/heartbeat`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${await key.sign(jwks.keys[0].kid)}`,
          "x-dolt-cluster-role": role,
          "x-dolt-cluster-role-epoch": String(epoch),
        },
        body: JSON.stringify({ role, epoch, node_id: "scripted" }),
      });
      await res.arrayBuffer();
      return res.status;
    },
    close: () =>
      new Promise<void>((resolveClose) => {
        server.close(() => resolveClose());
        server.closeAllConnections();
      }),
  };
}

describe("cluster roles: another primary at the node's epoch, heard while the node starts (a scripted peer)", () => {
  const nodes: ClusterNode[] = [];
  const peers: { close(): Promise<void> }[] = [];
  const sessions = new Sessions();

  after(async () => {
    await Promise.all(peers.map((p) => p.close()));
    await cleanUp(nodes, sessions);
  });

  const brokenAndPrepared = async (node: ClusterNode) => {
    assert.equal(await roleOf(node), "detected_broken_config@1");
    // The status view is part of the Strata schema: the store was prepared.
    await waitFor("the broken-config error in dolt_cluster_status", async () =>
      (await currentError(node))?.startsWith(BROKEN_PREFIX),
    );
    const refused = await failure(await sessions.open(node.strata), "CREATE TABLE items (id int)");
    assert.equal(refused.code, "25006");
  };

  it("heard before its store is made: it starts (its store prepared), detected_broken_config", async () => {
    const [node, other] = await createClusterNodes([
      { name: "dolt-1", bootstrap_role: "primary" },
      { name: "dolt-2", bootstrap_role: "primary" },
    ]);
    nodes.push(node, other);
    peers.push(await scriptedPeer(other.controlPort, () => ({ role: "primary", epoch: 1 })));
    await explained([node], node.strata.start());
    // It learned its role before it made its store.
    const logs = node.strata.logs;
    const learned = logs.indexOf("this server is now detected_broken_config");
    assert.ok(learned >= 0 && learned < logs.indexOf("initialised the managed store"), clusterLog(node));
    await explained([node], brokenAndPrepared(node));
  });

  it("heard while it prepares its store: it starts, detected_broken_config", async () => {
    const [node, other] = await createClusterNodes(
      [
        { name: "dolt-1", bootstrap_role: "primary" },
        { name: "dolt-2", bootstrap_role: "primary" },
      ],
      // A prepared transaction holds the installer's lock across a restart (see below).
      () => ({ store: { settings: { fsync: false, max_prepared_transactions: 2 } } }),
    );
    nodes.push(node, other);
    const peer = await scriptedPeer(other.controlPort, () => ({ role: "standby", epoch: 1 }));
    peers.push(peer);
    await node.strata.start();
    // Its next start's preparation waits on the lock of Strata's schema installer, held here.
    await storeQuery(
      node,
      "BEGIN; SELECT pg_advisory_xact_lock(hashtext('strata.install')); PREPARE TRANSACTION 'hold_install'",
    );
    await node.strata.stop();
    const started = node.strata.start();
    started.catch(() => {}); // awaited below
    try {
      await explained(
        [node],
        waitFor("its preparation to wait for the installer's lock", async () => {
          const rows = await storeQuery(
            node,
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
          );
          return rows.length > 0;
        }),
      );
      // Now a primary at its epoch calls: the node is detected_broken_config (its control plane
      // says so in every answer).
      assert.equal(await peer.heartbeat(node, "primary", 1), 200);
      const jwks = await fetch(`http://127.0.0.1:${node.controlPort}/.well-known/jwks.json`);
      await jwks.arrayBuffer();
      assert.equal(jwks.headers.get("x-dolt-cluster-role"), "detected_broken_config");
      // If it has made its store's sessions read-only already (its settings file says so before it
      // answers), that reaches the store before the preparation goes on.
      const [file] = await storeQuery(
        node,
        "SELECT setting FROM pg_file_settings WHERE name = 'default_transaction_read_only' AND applied",
      );
      if (file?.setting === "on")
        await explained(
          [node],
          waitFor("the store's new sessions to be read-only", async () => {
            const rows = await storeQuery(node, "SHOW default_transaction_read_only");
            return rows[0].default_transaction_read_only === "on";
          }),
        );
    } finally {
      await storeQuery(node, "ROLLBACK PREPARED 'hold_install'").catch(() => {});
    }
    await started;
    await explained([node], brokenAndPrepared(node));
  });
});

describe("cluster roles: a primary whose standby is down, transition_to_standby, the control plane", () => {
  let a: ClusterNode;
  let b: ClusterNode;
  const sessions = new Sessions();

  before(async () => {
    [a, b] = await createClusterNodes([
      { name: "dolt-1", bootstrap_role: "primary" },
      { name: "dolt-2", bootstrap_role: "standby" },
    ]);
    await Promise.all([a.strata.start(), b.strata.start()]);
  });

  after(() => cleanUp([a, b], sessions));

  it("a demotion whose standby is down fails after the wait, and the server stays primary at its epoch", async () => {
    assert.match(b.strata.logs, /base backup complete/);
    const caller = await sessions.open(a.strata);
    await caller.query("CREATE TABLE items (id int PRIMARY KEY, v text)");
    await caller.query("INSERT INTO items VALUES (1, 'one')");
    await b.strata.stop();

    const started = Date.now();
    const demotion = failure(caller, "SELECT dolt_assume_cluster_role('standby', 2)");
    demotion.catch(() => {}); // awaited below; not an unhandled rejection if the wait fails first
    // While it waits for its standby the primary is read-only (Dolt: setProviderIsStandby(true)).
    let waitedFor = 0;
    await explained(
      [a],
      waitFor(
        "a write on a new session to be refused while the demotion waits",
        async () => {
          const client = await sessions.open(a.strata);
          try {
            await client.query("INSERT INTO items VALUES (100, 'during the demotion')");
            await client.query("DELETE FROM items WHERE id = 100");
            return false;
          } catch (err) {
            waitedFor = Date.now() - started;
            return (err as pg.DatabaseError).code === "25006";
          } finally {
            await client.end().catch(() => {});
          }
        },
        8_000,
      ),
    );
    assert.ok(waitedFor < 9_000, `read-only only after ${waitedFor} ms`);

    const err = await demotion;
    const elapsed = Date.now() - started;
    assert.equal(err.message, DEMOTE_FAILED);
    assert.ok(elapsed >= 9_000 && elapsed < 16_000, `the demotion failed after ${elapsed} ms, not ~10 s`);
    // Nothing changed: the caller is not tainted, the role and epoch are the old ones, writes open.
    assert.deepEqual(await rowsOf(caller, "SELECT 1 AS one"), [{ one: 1 }]);
    assert.equal(await roleOf(a), "primary@1");
    await a.strata.query("INSERT INTO items VALUES (2, 'two')");
    assert.deepEqual(await a.strata.query(itemsSql), [
      { id: 1, v: "one" },
      { id: 2, v: "two" },
    ]);
  });

  it("dolt_cluster_transition_to_standby: one row per database and standby, then standby; refused on a standby", async () => {
    // The standby comes back (its persisted role, its own store) and catches up.
    await b.strata.start();
    assert.equal(await roleOf(b), "standby@1");
    await a.strata.query("CREATE DATABASE appdb");
    await a.strata.query("INSERT INTO items VALUES (3, 'three')");
    await explained(
      [a, b],
      waitForItems(b, [
        { id: 1, v: "one" },
        { id: 2, v: "two" },
        { id: 3, v: "three" },
      ]),
    );
    await explained(
      [a, b],
      waitFor("a caught-up standby in the primary's status", async () => {
        const rows = await a.strata.query(
          "SELECT database, replication_lag_millis, current_error FROM dolt_cluster.dolt_cluster_status ORDER BY 1",
        );
        return rows.length === 2 &&
          rows.every((r) => r.replication_lag_millis === "0" && r.current_error === null)
          ? rows
          : undefined;
      }),
    );

    const caller = await sessions.open(a.strata);
    const rows = await rowsOf(caller, "SELECT * FROM dolt_cluster_transition_to_standby(2, 1)");
    const template = `http://127.0.0.1:${b.controlPort}/{database}`;
    assert.deepEqual(
      rows.sort((x, y) => String(x.database).localeCompare(String(y.database))),
      ["appdb", "postgres"].map((database) => ({
        caught_up: 1,
        database,
        remote: "dolt-2",
        remote_url: template.replace("{database}", database),
      })),
    );
    assert.equal((await failure(caller, "SELECT 1")).message, TRANSITIONED);
    assert.equal(await roleOf(a), "standby@2");
    assert.equal(
      (await failure(await sessions.open(a.strata), "INSERT INTO items VALUES (4, 'four')")).code,
      "25006",
    );
    // The old primary's last write was on the standby before it let go.
    assert.equal((await b.strata.query("SELECT count(*)::int AS n FROM items"))[0].n, 3);

    // Now a standby: refused with Dolt's text.
    const again = await failure(
      await sessions.open(a.strata),
      "SELECT * FROM dolt_cluster_transition_to_standby(2, 1)",
    );
    assert.equal(again.message, ALREADY_STANDBY);
    assert.equal(await roleOf(a), "standby@2");
  });

  it("the control plane refuses requests without a peer's token (401), shows it in the status, and serves its JWKS openly", async () => {
    const base = `http://127.0.0.1:${a.controlPort}`;
    const jwks = await fetch(`${base}/.well-known/jwks.json`);
    assert.equal(jwks.status, 200);
    const { keys } = (await jwks.json()) as { keys: { kid: string; kty: string; crv: string }[] };
    assert.equal(keys.length, 1);
    assert.equal(keys[0].kty, "OKP");
    assert.equal(keys[0].crv, "Ed25519");
    const aKid = keys[0].kid;
    const bKeys = (await (await fetch(`http://127.0.0.1:${b.controlPort}/.well-known/jwks.json`)).json()) as {
      keys: { kid: string }[];
    };
    const bKid = bKeys.keys[0].kid;

    const before = await roleOf(a);
    // A forged heartbeat claims a primary at a much higher epoch: it must not move the server.
    const heartbeat = (authorization?: string) =>
      fetch(`${base}/cluster/heartbeat`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-dolt-cluster-role": "primary",
          "x-dolt-cluster-role-epoch": "99",
          ...(authorization ? { authorization } : {}),
        },
        body: JSON.stringify({ role: "primary", epoch: 99, node_id: "intruder" }),
      });
    const refusedWith = async (what: string, res: Response, reason: RegExp) => {
      assert.equal(res.status, 401, `${what}: HTTP ${res.status}`);
      const body = (await res.json()) as { error: string };
      assert.match(body.error, reason, what);
      await explained(
        [a],
        waitFor(
          `${what}: the refusal in dolt_cluster_status`,
          async () => {
            const error = await currentError(a);
            return error?.startsWith("refused a request: ") && reason.test(error) ? error : undefined;
          },
          5_000,
        ),
      );
    };

    await refusedWith("no token", await heartbeat(), /no Authorization header/);
    const stranger = await NodeKey.generate();
    await refusedWith(
      "a token signed by a key no peer publishes",
      await heartbeat(`Bearer ${await stranger.sign(aKid)}`),
      new RegExp(`signed with key ${stranger.kid} which no configured standby peer publishes`),
    );
    // The peer's key id in the header does not help a token signed with another key.
    const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
    const now = Math.floor(Date.now() / 1000);
    const forged = await new SignJWT({})
      .setProtectedHeader({ alg: "EdDSA", kid: bKid, typ: "JWT" })
      .setIssuer("strata-cluster")
      .setAudience(aKid)
      .setIssuedAt(now)
      .setExpirationTime(now + 30)
      .setJti("forged-jti")
      .sign(privateKey);
    await refusedWith(
      "a token naming a peer's key but not signed with it",
      await heartbeat(`Bearer ${forged}`),
      /does not verify/,
    );
    // A store tunnel (the WAL stream's way in) needs a peer's token too.
    const tunnel = await new Promise<{ status?: number; body: string }>((resolveTunnel, reject) => {
      const req = http.request(`${base}/cluster/store`, {
        headers: {
          connection: "Upgrade",
          upgrade: "strata-store",
          "x-dolt-cluster-role": "primary",
          "x-dolt-cluster-role-epoch": "99",
        },
      });
      req.once("upgrade", (_res, socket) => {
        socket.destroy();
        resolveTunnel({ status: 101, body: "" });
      });
      req.once("response", (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          body += chunk;
        });
        res.on("end", () => resolveTunnel({ status: res.statusCode, body }));
      });
      req.once("error", reject);
      req.end();
    });
    assert.equal(tunnel.status, 401, `a tunnel without a token: ${tunnel.status} ${tunnel.body}`);
    assert.match(tunnel.body, /no Authorization header/);
    assert.equal(await roleOf(a), before);
  });
});

describe("cluster roles: two primaries at one epoch", () => {
  let c: ClusterNode;
  let d: ClusterNode;
  const sessions = new Sessions();

  before(async () => {
    [c, d] = await createClusterNodes([
      { name: "dolt-1", bootstrap_role: "primary" },
      { name: "dolt-2", bootstrap_role: "primary" },
    ]);
    // d's store is made while c is down, c's while d is down; then c, then d: d hears of c at its
    // first heartbeat, before its store is up.
    await d.strata.start();
    await d.strata.stop();
    await c.strata.start();
    await d.strata.start();
  });

  after(() => cleanUp([c, d], sessions));

  it("both become detected_broken_config, refuse writes and say why", async () => {
    for (const node of [c, d]) {
      await explained([c, d], waitForRole(node, "detected_broken_config@1", 10_000));
      // The status is rewritten every heartbeat: until then it may still show an earlier error.
      let error: string | null = null;
      await explained(
        [node],
        waitFor(
          `${node.name}: the broken-config error in dolt_cluster_status`,
          async () => {
            error = await currentError(node);
            return error?.startsWith(BROKEN_PREFIX);
          },
          5_000,
        ).catch((err: Error) => {
          throw new Error(`${err.message} (last seen: ${error})`);
        }),
      );
      const refused = await failure(
        await sessions.open(node.strata),
        "CREATE TABLE items (id int PRIMARY KEY, v text)",
      );
      assert.equal(refused.code, "25006", `${node.name}: ${refused.message}`);
    }
  });

  it("one promoted at a higher epoch takes writes; the other follows it by itself and serves its rows", async () => {
    const caller = await sessions.open(c.strata);
    assert.deepEqual(await rowsOf(caller, "SELECT dolt_assume_cluster_role('primary', 2)"), [
      { dolt_assume_cluster_role: "0" },
    ]);
    assert.equal(await roleOf(c), "primary@2");
    await c.strata.query("CREATE TABLE items (id int PRIMARY KEY, v text)");
    await c.strata.query("INSERT INTO items VALUES (1, 'one'), (2, 'two')");
    await explained([c, d], waitForRole(d, "standby@2", 10_000));
    // Its store is unrelated to the primary's: no rewind; a fresh base backup replaces it.
    await explained(
      [c, d],
      waitForItems(
        d,
        [
          { id: 1, v: "one" },
          { id: 2, v: "two" },
        ],
        45_000,
      ),
    );
    assert.match(d.strata.logs, /cannot rewind this former primary/);
    assert.equal(
      (await failure(await sessions.open(d.strata), "INSERT INTO items VALUES (3, 'three')")).code,
      "25006",
    );
    await c.strata.query("INSERT INTO items VALUES (3, 'three')");
    await explained(
      [c, d],
      waitForItems(d, [
        { id: 1, v: "one" },
        { id: 2, v: "two" },
        { id: 3, v: "three" },
      ]),
    );
  });
});

describe("cluster roles: an older-epoch primary rejoining", () => {
  let e: ClusterNode;
  let f: ClusterNode;
  const sessions = new Sessions();
  const rows: Item[] = [];
  const write = async (node: ClusterNode, id: number) => {
    await node.strata.query("INSERT INTO items VALUES ($1, $2)", [id, `row ${id}`]);
    rows.push({ id, v: `row ${id}` });
  };
  const promote = async (node: ClusterNode, epoch: number) => {
    const client = await sessions.open(node.strata);
    assert.deepEqual(await rowsOf(client, `SELECT dolt_assume_cluster_role('primary', ${epoch})`), [
      { dolt_assume_cluster_role: "0" },
    ]);
    assert.equal(await roleOf(node), `primary@${epoch}`);
  };

  before(async () => {
    [e, f] = await createClusterNodes([
      { name: "dolt-1", bootstrap_role: "primary" },
      { name: "dolt-2", bootstrap_role: "standby" },
    ]);
    await Promise.all([e.strata.start(), f.strata.start()]);
  });

  after(() => cleanUp([e, f], sessions));

  it("a killed primary restarted after a failover becomes the new primary's standby, its extra write gone", async () => {
    await e.strata.query("CREATE TABLE items (id int PRIMARY KEY, v text)");
    await write(e, 1);
    await write(e, 2);
    await explained([e, f], waitForItems(f, rows));
    await e.strata.kill();
    // Its store still runs: a write there that the standby never sees (the promoted side wins).
    await storeQuery(e, "INSERT INTO items VALUES (99, 'lost')");
    await promote(f, 2);
    await write(f, 3);
    // It persisted primary@1, and learns of primary@2 from its peer.
    await e.strata.start();
    await explained([e, f], waitForRole(e, "standby@2"));
    await explained([e, f], waitForItems(e, rows));
    assert.equal(
      (await failure(await sessions.open(e.strata), "INSERT INTO items VALUES (4, 'x')")).code,
      "25006",
    );
    await write(f, 4);
    await explained([e, f], waitForItems(e, rows));
  });

  it("both stopped, the new primary started first, then the stale one: it follows", async () => {
    await f.strata.kill();
    await f.strata.stop(); // its orphaned store too
    await promote(e, 3);
    await write(e, 5);
    await e.strata.stop();
    await e.strata.start();
    assert.equal(await roleOf(e), "primary@3");
    await f.strata.start();
    await explained([e, f], waitForRole(f, "standby@3"));
    await explained([e, f], waitForItems(f, rows));
  });

  it("both stopped, the stale primary started first (and written to), then the new one: it follows", async () => {
    await e.strata.kill();
    await e.strata.stop();
    await promote(f, 4);
    await write(f, 6);
    await f.strata.stop();
    // Alone, the stale primary is a writable primary at its old epoch; what it takes is lost.
    await e.strata.start();
    assert.equal(await roleOf(e), "primary@3");
    await e.strata.query("INSERT INTO items VALUES (77, 'stale')");
    await f.strata.start();
    assert.equal(await roleOf(f), "primary@4");
    await explained([e, f], waitForRole(e, "standby@4"));
    await explained([e, f], waitForItems(e, rows));
    assert.deepEqual(await f.strata.query(itemsSql), rows);
  });
});
