// Remotes in S3 (s3://bucket/prefix) through Strata's front door, as test/integration/remotes.test.ts
// runs them through a directory: dolt_remote, dolt_push, dolt_clone, dolt_pull, and replication
// through the remote. The store is s3rver with conditional writes (test/support/s3-server.ts),
// run by this test on a loopback port. One Strata is told where S3 is by config.yaml
// (remotes.s3), the other only by the AWS environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID...).

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { after, before, test } from "node:test";
import {
  S3_ACCESS_KEY_ID,
  S3_SECRET_ACCESS_KEY,
  startS3Server,
  strataRemotesConfig,
  type TestS3Server,
} from "../support/s3-server.ts";
import { failure, rowsOf, Sessions, waitForSetting } from "../support/sessions.ts";
import { createStandaloneStrata, type StrataProcess } from "../support/strata.ts";

const BUCKET = "strata-it";
const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

let s3: TestS3Server;
let primary: StrataProcess;
let replica: StrataProcess;
const sessions = new Sessions();

before(async () => {
  s3 = await startS3Server({ buckets: [BUCKET] });
  primary = await createStandaloneStrata({
    config: { remotes: strataRemotesConfig(s3) },
  });
  replica = await createStandaloneStrata();
  const started = [primary.start()];
  // The replica's Strata gets S3 from its environment alone (spawn copies it at once).
  const saved = { ...process.env };
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_S3: s3.endpoint,
    AWS_ACCESS_KEY_ID: S3_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY: S3_SECRET_ACCESS_KEY,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  });
  try {
    started.push(replica.start());
  } finally {
    for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
    Object.assign(process.env, saved);
  }
  await Promise.all(started);
});
after(async () => {
  await sessions.closeAll();
  if (process.env.STRATA_TEST_LOGS) console.error(primary?.logs.slice(-3000), replica?.logs.slice(-5000));
  await Promise.all([primary?.stop(), replica?.stop()]);
  await s3?.stop();
});

const connectTo = (strata: StrataProcess, database?: string) => sessions.open(strata, database);

/** The files of the packs a remote prefix holds (s3rver keeps each object in a file). */
function packFiles(prefix: string): string[] {
  const root = join(s3.directory, BUCKET, prefix, "objects");
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && /^[0-9a-f]{64}\._S3rver_object$/.test(e.name))
    .map((e) => join(e.parentPath, e.name));
}

test("push to S3, clone from it, pull: the clone's rows and history equal the primary's", async () => {
  const db = await connectTo(primary);
  await rowsOf(db, "CREATE DATABASE shop");
  const p = await connectTo(primary, "shop");
  const url = `s3://${BUCKET}/remotes/shop`;
  await rowsOf(p, `select dolt_remote('add', 'origin', '${url}')`);
  assert.deepEqual(await rowsOf(p, "SELECT name, url FROM dolt_remotes"), [{ name: "origin", url }]);
  await rowsOf(p, "create table items (id int primary key, name text not null, price numeric(8,2))");
  await rowsOf(p, "create index items_name on items (name)");
  await rowsOf(p, "insert into items select g, 'item ' || g, g * 1.5 from generate_series(1, 40) g");
  await rowsOf(p, "select dolt_commit('-Am', 'first')");
  assert.match((await rowsOf(p, "select dolt_push('origin', 'main')"))[0].dolt_push[1], /pushed 1 commit/);

  await rowsOf(p, "update items set name = 'renamed' where id = 7");
  await rowsOf(p, "select dolt_commit('-am', 'rename one')");
  await rowsOf(p, "alter table items add column stock int not null default 0"); // a schema change
  await rowsOf(p, "update items set stock = id where id < 10");
  await rowsOf(p, "delete from items where id > 35");
  await rowsOf(p, "select dolt_commit('-am', 'stock')");
  await rowsOf(p, "create table notes (body text)");
  await rowsOf(p, "insert into notes values ('a'), ('b')");
  await rowsOf(p, "select dolt_commit('-Am', 'notes')");
  await rowsOf(p, "select dolt_tag('v1', 'HEAD~1')");
  assert.match(
    (await rowsOf(p, "select dolt_push('origin', 'main')"))[0].dolt_push[1],
    /pushed 3 commits and 1 tag/,
  );
  assert.equal(
    (await rowsOf(p, "select dolt_push('origin', 'main')"))[0].dolt_push[1],
    "Everything up-to-date",
  );
  // The directory remote's layout, under the prefix.
  const marker = join(s3.directory, BUCKET, "remotes", "shop", "strata-remote.json._S3rver_object");
  assert.deepEqual(JSON.parse(readFileSync(marker, "utf8")), { format: "strata-remote", version: 1 });
  const packs = packFiles("remotes/shop");
  assert.ok(packs.length >= 2, "a pack per push");
  for (const pack of packs) {
    assert.equal(`${sha256(readFileSync(pack))}._S3rver_object`, basename(pack), "named by its SHA-256");
  }

  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'shop_clone')`);
  const c = await connectTo(replica, "shop_clone");
  const same = async (sql: string) => assert.deepEqual(await rowsOf(c, sql), await rowsOf(p, sql), sql);
  await same("SELECT * FROM items ORDER BY id");
  await same("SELECT body FROM notes ORDER BY body");
  await same("SELECT commit_hash, parent_hash, message, committer, date FROM dolt_log");
  await same("SELECT id, name, commit_hash FROM dolt_history_items ORDER BY commit_hash, id");
  await same("SELECT * FROM items AS OF 'HEAD~2' ORDER BY id");
  await same("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'items' ORDER BY indexname");
  await same("SELECT * FROM dolt_tags");
  assert.deepEqual(await rowsOf(c, "SELECT name, url FROM dolt_remotes"), [{ name: "origin", url }]);

  // More commits reach the clone by dolt_pull.
  await rowsOf(p, "insert into items (id, name) values (100, 'late')");
  await rowsOf(p, "alter table notes add column at int");
  await rowsOf(p, "select dolt_commit('-am', 'late')");
  await rowsOf(p, "select dolt_push()");
  assert.match((await rowsOf(c, "select dolt_pull('origin')"))[0].dolt_pull[1], /fast-forward: 1 commit/);
  await same("SELECT * FROM items ORDER BY id");
  await same("SELECT * FROM notes ORDER BY body");
  await same("SELECT commit_hash, message FROM dolt_log");

  // A damaged pack is found as it streams, and nothing of it is applied.
  const before = new Set(packFiles("remotes/shop"));
  await rowsOf(p, "insert into items (id, name) values (101, 'damaged')");
  await rowsOf(p, "select dolt_commit('-am', 'damaged')");
  await rowsOf(p, "select dolt_push()");
  const [fresh] = packFiles("remotes/shop").filter((f) => !before.has(f));
  const bytes = readFileSync(fresh);
  bytes[bytes.length >> 1] ^= 0xff;
  writeFileSync(fresh, bytes);
  const damaged = await failure(c, "select dolt_pull('origin')");
  assert.equal(damaged.code, "XX001");
  assert.match(damaged.message, /corrupt/);
  assert.equal((await rowsOf(c, "SELECT count(*)::int AS n FROM items WHERE id = 101"))[0].n, 0);
});

test("S3 errors through the front door name the cause and the fix", async () => {
  const db = await connectTo(primary);
  await rowsOf(db, "CREATE DATABASE nowhere");
  const p = await connectTo(primary, "nowhere");
  await rowsOf(p, "select dolt_remote('add', 'origin', 's3://no-such-bucket/db')");
  await rowsOf(p, "create table t (k int primary key)");
  await rowsOf(p, "select dolt_commit('-Am', 'one')");
  const missing = await failure(p, "select dolt_push('origin', 'main')");
  assert.equal(missing.code, "58P01");
  assert.match(missing.message, /bucket "no-such-bucket" does not exist/);
  assert.match(missing.hint ?? "", /create the bucket/);

  const r = await connectTo(replica);
  const absent = await failure(r, `select dolt_clone('s3://${BUCKET}/nothing/here', 'absent')`);
  assert.equal(absent.code, "42704", "no branch there");
  assert.equal(
    (await rowsOf(r, "SELECT count(*)::int AS n FROM pg_database WHERE datname = 'absent'"))[0].n,
    0,
  );

  // Not replicated by the next test's dolt_replicate_to_remote = 'origin'.
  await rowsOf(p, "select dolt_remote('remove', 'origin')");
});

test("replication through an S3 remote: every commit reaches the read replica", async () => {
  const url = `s3://${BUCKET}/remotes/replicated`;
  const db = await connectTo(primary);
  await rowsOf(db, "CREATE DATABASE replicated");
  const p = await connectTo(primary, "replicated");
  await rowsOf(p, `select dolt_remote('add', 'origin', '${url}');`);
  await rowsOf(db, "ALTER SYSTEM SET dolt_replicate_to_remote 'origin';");
  await waitForSetting(p, "dolt_replicate_to_remote", "origin");
  await rowsOf(p, "create table test (pk int, c1 int, primary key(pk));");
  await rowsOf(p, "insert into test values (0,0);");
  await rowsOf(p, "select dolt_commit('-Am', 'trigger replication');");

  const r = await connectTo(replica);
  await rowsOf(r, `select dolt_clone('${url}', 'read_replica');`);
  await rowsOf(r, "ALTER SYSTEM SET dolt_replicate_heads TO 'main';");
  await rowsOf(r, "ALTER SYSTEM SET dolt_read_replica_remote TO 'origin';");
  await waitForSetting(r, "dolt_read_replica_remote", "origin");
  const rr = await connectTo(replica, "read_replica");
  assert.deepEqual(await rowsOf(rr, "select * from test;"), [{ pk: 0, c1: 0 }]);

  // The push completes before the commit returns; the replica pulls when its transaction starts.
  await rowsOf(p, "insert into test values (2,2);");
  const [committed] = await rowsOf(p, "select dolt_commit('-am', 'Inserted (2,2)');");
  assert.deepEqual(await rowsOf(rr, "select * from test order by pk;"), [
    { pk: 0, c1: 0 },
    { pk: 2, c1: 2 },
  ]);
  assert.equal((await rowsOf(rr, "SELECT dolt.commit_hash('HEAD') AS h"))[0].h, committed.dolt_commit[0]);
});
