// HTTP remotes: one Strata serves its databases with the remotes API (config.yaml: remotesapi), and
// another clones, fetches and pulls from http(s)://host:port/<database> — by hand, and as a read
// replica at transaction start. The outcome checked is that the copies' rows and history equal the
// server's; and that pushing to such a remote, or naming a database the server lacks, fails
// saying why and leaving nothing behind.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { freePort, waitFor } from "../support/postgres.ts";
import { failure, rowsOf, Sessions } from "../support/sessions.ts";
import { type StrataProcess, startStandaloneStrata } from "../support/strata.ts";
import { selfSignedCertificate } from "../support/tls.ts";

/** Serves its databases over HTTP. */
let server: StrataProcess;
/** Serves its databases over HTTPS, with a self-signed certificate. */
let secureServer: StrataProcess;
/** Clones and pulls from both; trusts the certificate (NODE_EXTRA_CA_CERTS). */
let client: StrataProcess;
let apiPort: number;
let secureApiPort: number;
const sessions = new Sessions();

before(async () => {
  const tls = selfSignedCertificate("strata-remotes-http-tls-");
  [apiPort, secureApiPort] = [await freePort(), await freePort()];
  [server, secureServer, client] = await Promise.all([
    startStandaloneStrata({ config: { remotesapi: { port: apiPort, address: "127.0.0.1" } } }),
    startStandaloneStrata({
      config: { remotesapi: { port: secureApiPort, tls_key: tls.key, tls_cert: tls.cert } },
    }),
    startStandaloneStrata({ env: { NODE_EXTRA_CA_CERTS: tls.cert } }),
  ]);
});
after(async () => {
  await sessions.closeAll();
  if (process.env.STRATA_TEST_LOGS) console.error(server?.logs.slice(-8000), client?.logs.slice(-8000));
  await Promise.all([server?.stop(), secureServer?.stop(), client?.stop()]);
});

const connectTo = (strata: StrataProcess, database?: string) => sessions.open(strata, database);

const LOG = "SELECT commit_hash, parent_hash, message, committer, email, date FROM dolt_log";

test("dolt_clone from http://: the clone's rows, history, tags and branches equal the server's", async () => {
  const admin = await connectTo(server);
  await rowsOf(admin, "CREATE DATABASE shop");
  const s = await connectTo(server, "shop");
  await rowsOf(s, "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2))");
  await rowsOf(s, "INSERT INTO items SELECT g, 'item ' || g, g * 1.5 FROM generate_series(1, 40) g");
  await rowsOf(s, "SELECT dolt_commit('-Am', 'forty items')");
  await rowsOf(s, "UPDATE items SET price = price * 2 WHERE id <= 10");
  await rowsOf(s, "DELETE FROM items WHERE id > 35");
  await rowsOf(s, "SELECT dolt_commit('-am', 'repriced')");
  await rowsOf(s, "SELECT dolt_tag('-m', 'the first release', 'v1')");
  await rowsOf(s, "SELECT dolt_branch('feature')");
  const f = await connectTo(server, "shop/feature");
  await rowsOf(f, "INSERT INTO items VALUES (100, 'only on feature', 1)");
  await rowsOf(f, "SELECT dolt_commit('-am', 'a feature item')");

  const url = `http://127.0.0.1:${apiPort}/shop`;
  const b = await connectTo(client);
  assert.deepEqual(await rowsOf(b, `SELECT dolt_clone('${url}', 'copy')`), [
    { dolt_clone: ["0", `cloned ${url} into database copy`] },
  ]);
  const c = await connectTo(client, "copy");
  const same = async (sql: string, there = s, here = c) =>
    assert.deepEqual(await rowsOf(here, sql), await rowsOf(there, sql), sql);
  await same("SELECT * FROM items ORDER BY id");
  await same(LOG);
  await same("SELECT * FROM dolt_tags");
  await same("SELECT * FROM items AS OF 'HEAD~1' ORDER BY id");
  assert.deepEqual(await rowsOf(c, "SELECT name, url FROM dolt_remotes"), [{ name: "origin", url }]);

  // Every branch is served: feature is heads/feature of the same URL.
  await rowsOf(b, `SELECT dolt_clone('--branch', 'feature', '${url}', 'copy_feature')`);
  const cf = await connectTo(client, "copy_feature");
  await same("SELECT * FROM items ORDER BY id", f, cf);
  await same(LOG, f, cf);

  // The served remote is the server's own business: no remote of the database records it.
  assert.deepEqual(await rowsOf(s, "SELECT * FROM dolt_remotes"), []);
  assert.deepEqual(await rowsOf(s, "SELECT * FROM dolt_remote_branches"), []);
  assert.deepEqual(await rowsOf(s, "SELECT count(*)::int AS n FROM strata.remote_tags"), [{ n: 0 }]);
  assert.ok(existsSync(join(server.dataDir, "remotesapi", "shop", "strata-remote.json")));
});

test("dolt_fetch and dolt_pull over http:// bring the server's new commits and tags", async () => {
  const s = await connectTo(server, "shop");
  const c = await connectTo(client, "copy");
  await rowsOf(s, "UPDATE items SET name = 'renamed' WHERE id = 3");
  await rowsOf(s, "ALTER TABLE items ADD COLUMN stock int NOT NULL DEFAULT 0");
  await rowsOf(s, "UPDATE items SET stock = id WHERE id < 5");
  const [second] = await rowsOf(s, "SELECT dolt_commit('-am', 'stock')");
  await rowsOf(s, "INSERT INTO items VALUES (50, 'fifty', 5, 5)");
  const [head] = await rowsOf(s, "SELECT dolt_commit('-am', 'fifty')");
  await rowsOf(s, "SELECT dolt_tag('v2')");
  assert.notEqual(second.dolt_commit[0], head.dolt_commit[0]);

  // Right after the commits: the served remote is brought up to date when its refs are read.
  assert.deepEqual(await rowsOf(c, "SELECT dolt_fetch('origin')"), [
    { dolt_fetch: ["0", `origin/main is at ${head.dolt_commit[0]}`] },
  ]);
  assert.deepEqual(await rowsOf(c, "SELECT dolt_pull('origin')"), [
    { dolt_pull: ["0", `fast-forward: 2 commits from origin/main (${head.dolt_commit[0]})`] },
  ]);
  for (const sql of ["SELECT * FROM items ORDER BY id", LOG, "SELECT * FROM dolt_tags"])
    assert.deepEqual(await rowsOf(c, sql), await rowsOf(s, sql), sql);
  assert.deepEqual(await rowsOf(c, "SELECT dolt_pull('origin')"), [
    { dolt_pull: ["0", "Everything up-to-date"] },
  ]);

  // A branch deleted on the server goes from what it serves.
  const refs = async () => {
    const res = await fetch(`http://127.0.0.1:${apiPort}/shop/refs?prefix=heads/`);
    return Object.keys(((await res.json()) as { refs: Record<string, unknown> }).refs);
  };
  assert.deepEqual(await refs(), ["heads/feature", "heads/main"]);
  // Between requests the remotes API holds no session on the databases it serves (one would keep
  // DROP DATABASE and branch deletion from going through).
  await waitFor("the remotes API's sessions on shop to end", async () =>
    (
      await rowsOf(
        s,
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'strata remotesapi' AND datname <> 'postgres'",
      )
    )[0].n === 0
      ? true
      : undefined,
  );
  await rowsOf(s, "SELECT dolt_branch('-D', 'feature')");
  assert.deepEqual(await refs(), ["heads/main"]);
});

test("dolt_push to an http:// remote fails: it is read-only, and the error says where to push instead", async () => {
  const c = await connectTo(client, "copy");
  await rowsOf(c, "INSERT INTO items VALUES (60, 'local', 1, 1)");
  await rowsOf(c, "SELECT dolt_commit('-am', 'a local commit')");
  const err = await failure(c, "SELECT dolt_push('origin', 'main')");
  assert.equal(err.code, "0A000");
  assert.match(err.message, /read-only/);
  assert.match(err.hint ?? "", /push to a directory .* or S3 .* remote instead/);
  // Nothing reached the server.
  const s = await connectTo(server, "shop");
  assert.deepEqual(await rowsOf(s, "SELECT count(*)::int AS n FROM items WHERE id = 60"), [{ n: 0 }]);
  // The server refuses writes too (405, with the same advice), whoever sends them.
  const res = await fetch(`http://127.0.0.1:${apiPort}/shop/refs/heads/main`, { method: "PUT", body: "{}" });
  assert.equal(res.status, 405);
  const body = (await res.json()) as { error: string; hint: string };
  assert.match(
    body.error,
    new RegExp(`read-only: it serves the databases of the Strata at http://127\\.0\\.0\\.1:${apiPort}`),
  );
  assert.match(body.hint, /push to a directory .* or S3 .* remote instead/);
});

test("a clone of a database the server lacks, or of a server not there, fails naming it and leaves no database", async () => {
  const b = await connectTo(client);
  const missing = await failure(b, `SELECT dolt_clone('http://127.0.0.1:${apiPort}/nope', 'nope_copy')`);
  assert.equal(missing.code, "42704");
  assert.match(
    missing.message,
    new RegExp(`Strata at http://127\\.0\\.0\\.1:${apiPort} has no database "nope"`),
  );
  const down = await failure(
    b,
    `SELECT dolt_clone('http://127.0.0.1:${await freePort()}/shop', 'down_copy')`,
  );
  assert.equal(down.code, "08001");
  assert.match(down.message, /cannot reach/);
  assert.deepEqual(
    await rowsOf(b, "SELECT datname FROM pg_database WHERE datname IN ('nope_copy', 'down_copy')"),
    [],
  );
});

test("https:// with a self-signed certificate works when the cloning Strata trusts it", async () => {
  const admin = await connectTo(secureServer);
  await rowsOf(admin, "CREATE DATABASE vault");
  const v = await connectTo(secureServer, "vault");
  await rowsOf(v, "CREATE TABLE secrets (k text PRIMARY KEY, v text)");
  await rowsOf(v, "INSERT INTO secrets VALUES ('a', '1'), ('b', '2')");
  await rowsOf(v, "SELECT dolt_commit('-Am', 'secrets')");
  const b = await connectTo(client);
  // The certificate is for localhost (NODE_EXTRA_CA_CERTS makes it trusted in the client Strata).
  await rowsOf(b, `SELECT dolt_clone('https://localhost:${secureApiPort}/vault', 'vault_copy')`);
  const c = await connectTo(client, "vault_copy");
  for (const sql of ["SELECT * FROM secrets ORDER BY k", LOG])
    assert.deepEqual(await rowsOf(c, sql), await rowsOf(v, sql), sql);
});

test("a read replica pulls through http:// when a transaction starts", async () => {
  const url = `http://127.0.0.1:${apiPort}/shop`;
  const b = await connectTo(client);
  await rowsOf(b, `SELECT dolt_clone('${url}', 'read_replica')`);
  await rowsOf(b, "ALTER SYSTEM SET dolt_replicate_heads TO 'main'");
  await rowsOf(b, "ALTER SYSTEM SET dolt_read_replica_remote TO 'origin'");
  await waitFor("dolt_read_replica_remote = 'origin'", async () =>
    (await rowsOf(b, "SELECT dolt.setting('dolt_read_replica_remote') AS v"))[0].v === "origin"
      ? true
      : undefined,
  );
  const rr = await connectTo(client, "read_replica");
  const s = await connectTo(server, "shop");
  assert.deepEqual(
    await rowsOf(rr, "SELECT count(*)::int AS n FROM items"),
    await rowsOf(s, "SELECT count(*)::int AS n FROM items"),
  );

  await rowsOf(s, "INSERT INTO items VALUES (70, 'seventy', 7, 7)");
  const [committed] = await rowsOf(s, "SELECT dolt_commit('-am', 'seventy')");
  // The next transaction on the replica starts with a pull: the commit is there at once.
  assert.deepEqual(await rowsOf(rr, "SELECT name FROM items WHERE id = 70"), [{ name: "seventy" }]);
  assert.equal((await rowsOf(rr, "SELECT dolt.commit_hash('HEAD') AS h"))[0].h, committed.dolt_commit[0]);
  assert.deepEqual(await rowsOf(rr, LOG), await rowsOf(s, LOG));
});
