// The managed store's lifecycle: what a SIGKILLed Strata leaves behind is recovered at next start.
import assert from "node:assert/strict";
import { readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import pg from "pg";
import { validateConfig } from "../../src/config/load.ts";
import { createLogger } from "../../src/log.ts";
import { findPgBinaries, supportsLz4 } from "../../src/store/binaries.ts";
import { steadyMaxWalMb } from "../../src/store/bulk-load.ts";
import {
  type ClusterSpec,
  clusterPaths,
  initCluster,
  startCluster,
  stopCluster,
} from "../../src/store/cluster.ts";
import { storeOsUser } from "../../src/store/os-user.ts";
import { openStore } from "../../src/store/store.ts";
import { tempDir } from "../support/postgres.ts";

const spec: ClusterSpec = {
  root: join(tempDir(), "store"),
  bin: findPgBinaries(),
  osUser: storeOsUser(),
  superuser: "postgres",
  password: "s3cret'\"pw",
  port: 5432,
  listenAddresses: "",
  settings: { fsync: false },
};
after(async () => {
  await stopCluster(spec, "immediate").catch(() => {});
  rmSync(join(spec.root, ".."), { recursive: true, force: true });
});

async function connects(): Promise<boolean> {
  const client = new pg.Client({
    host: clusterPaths(spec).socketDir,
    port: 5432,
    user: "postgres",
    password: spec.password,
    database: "postgres",
  });
  await client.connect();
  const { rows } = await client.query(
    "SELECT current_setting('data_checksums') AS c, current_setting('listen_addresses') AS l",
  );
  await client.end();
  return rows[0].c === "on" && rows[0].l === "";
}

test("initdb once, with checksums, listening only on the unix socket, password required", async () => {
  assert.equal(await initCluster(spec), true);
  assert.equal(await initCluster(spec), false, "a second init is a no-op");
  const { recovery } = await startCluster(spec);
  assert.equal(recovery, "none");
  assert.equal(await connects(), true);
  const bad = new pg.Client({
    host: clusterPaths(spec).socketDir,
    port: 5432,
    user: "postgres",
    password: "wrong",
    database: "postgres",
  });
  await assert.rejects(bad.connect(), /password authentication failed/);
});

test("a postmaster left running by a killed Strata is stopped and started again", async () => {
  const pidBefore = readFileSync(join(clusterPaths(spec).pgdata, "postmaster.pid"), "utf8").split("\n")[0];
  const { recovery } = await startCluster(spec);
  assert.equal(recovery, "stopped-orphan");
  const pidAfter = readFileSync(join(clusterPaths(spec).pgdata, "postmaster.pid"), "utf8").split("\n")[0];
  assert.notEqual(pidAfter, pidBefore);
  assert.equal(await connects(), true);
});

test("a stale postmaster.pid (its process gone) is removed", async () => {
  await stopCluster(spec, "immediate");
  const pidFile = join(clusterPaths(spec).pgdata, "postmaster.pid");
  // A pid that is certainly not running: beyond pid_max.
  writeFileSync(pidFile, "4194305\n/stale\n");
  const { recovery } = await startCluster(spec);
  assert.equal(recovery, "removed-stale-pid");
  assert.equal(await connects(), true);
});

/**
 * Open the managed store in `dataDir` with these store.settings, run `query` in one session on it,
 * and stop it again.
 */
async function onStoreWith<T>(
  dataDir: string,
  settings: Record<string, string | boolean>,
  query: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const { config } = validateConfig({ store: { settings } }, "test");
  const store = await openStore(config, dataDir, createLogger("error"));
  try {
    const client = new pg.Client(store.connectionConfig("postgres"));
    await client.connect();
    try {
      return await query(client);
    } finally {
      await client.end();
    }
  } finally {
    await store.stop();
  }
}

test("the managed store gets room for history's WAL (max_wal_size), unless store.settings chooses", async (t) => {
  const dataDir = tempDir();
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const maxWalSize = (settings: Record<string, string | boolean>) =>
    onStoreWith(dataDir, settings, async (client) =>
      Number(
        (await client.query("SELECT setting FROM pg_settings WHERE name = 'max_wal_size'")).rows[0].setting,
      ),
    );
  const chosen = await maxWalSize({ fsync: false });
  // Chosen from the free space at start, which the store's own files have changed a little since.
  const { bavail, bsize } = statfsSync(dataDir);
  assert.ok(Math.abs(chosen - steadyMaxWalMb(bavail * bsize)) <= 16, `max_wal_size ${chosen} MB`);
  assert.equal(await maxWalSize({ fsync: false, max_wal_size: "256MB" }), 256);
});

test("the managed store compresses wide values with lz4, unless store.settings chooses", async (t) => {
  const dataDir = tempDir();
  t.after(() => rmSync(dataDir, { recursive: true, force: true }));
  const compression = (settings: Record<string, string | boolean>) =>
    onStoreWith(dataDir, settings, async (client) => {
      // A value that compresses, stored: which method TOAST used for it.
      await client.query("CREATE TEMP TABLE wide (v text)");
      await client.query("INSERT INTO wide SELECT repeat('strata ', 10000)");
      return (await client.query("SELECT pg_column_compression(v) AS c FROM wide")).rows[0].c;
    });
  // PostgreSQL's packages (Debian's, PGDG's) are built with lz4; a server built without it gets
  // PostgreSQL's default.
  const chosen = await compression({ fsync: false });
  const pgdata = await onStoreWith(dataDir, { fsync: false }, async (client) => {
    return (await client.query("SHOW data_directory")).rows[0].data_directory as string;
  });
  assert.equal(chosen, supportsLz4(findPgBinaries(), pgdata) ? "lz4" : "pglz");
  assert.equal(await compression({ fsync: false, default_toast_compression: "pglz" }), "pglz");
});
