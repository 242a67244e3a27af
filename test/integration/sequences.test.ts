// Sequences follow the primary: created with the primary's definition, values copied at start,
// periodically and on demand (`strata sync-sequences`), and never moved backwards on the replica.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import pino from "pino";
import { syncSequences } from "../../src/upstream/sequences.ts";
import { startPrimary, type TestCluster, waitFor } from "../support/postgres.ts";
import { createStrata, startStrata } from "../support/strata.ts";

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..", "..");
const quiet = pino({ level: "silent" });

let primary: TestCluster;
let replicaStore: TestCluster;
before(async () => {
  [primary, replicaStore] = await Promise.all([startPrimary(), startPrimary()]);
});
after(async () => {
  await Promise.all([primary?.stop(), replicaStore?.stop()]);
});

/** (last_value, is_called) and definition of a sequence, as one comparable row. */
async function describe(cluster: TestCluster | { query: TestCluster["query"] }, seq: string) {
  const [schema, name] = seq.split(".");
  const [def] = await cluster.query(
    `SELECT data_type::text, start_value::text, min_value::text, max_value::text, increment_by::text,
            cache_size::text, cycle FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2`,
    [schema, name],
  );
  if (!def) return undefined;
  const [value] = await cluster.query(`SELECT last_value::text, is_called FROM ${seq}`);
  return { ...def, ...value };
}

async function syncOnce() {
  const p = await primary.connect();
  const r = await replicaStore.connect();
  try {
    return await syncSequences(p, r, quiet);
  } finally {
    await Promise.all([p.end(), r.end()]);
  }
}

test("syncSequences creates missing sequences with the primary's definition and copies their values", async () => {
  await primary.query(`
    CREATE SCHEMA app;
    CREATE SEQUENCE app.orders_id AS integer INCREMENT BY 5 MINVALUE 10 MAXVALUE 100000 START WITH 10 CACHE 3;
    CREATE SEQUENCE public.countdown INCREMENT BY -1 MINVALUE -1000 MAXVALUE 50 START WITH 50;
    CREATE SEQUENCE public.ring AS smallint MAXVALUE 3 CYCLE;
    CREATE SEQUENCE public.fresh;
    CREATE SEQUENCE public.preset;
    CREATE TABLE public.serial_t (id bigserial PRIMARY KEY);
    CREATE SCHEMA strata;
    CREATE SEQUENCE strata.internal;
    SELECT nextval('app.orders_id') FROM generate_series(1, 7);
    SELECT nextval('public.countdown') FROM generate_series(1, 4);
    SELECT nextval('public.ring') FROM generate_series(1, 2);
    SELECT setval('public.preset', 77, false);
    INSERT INTO public.serial_t SELECT FROM generate_series(1, 3);
  `);
  const summary = await syncOnce();
  assert.equal(summary.total, 6);
  assert.equal(summary.created, 6);
  assert.deepEqual(summary.failed, []);
  for (const seq of [
    "app.orders_id",
    "public.countdown",
    "public.ring",
    "public.fresh",
    "public.preset",
    "public.serial_t_id_seq",
  ]) {
    assert.deepEqual(await describe(replicaStore, seq), await describe(primary, seq), seq);
  }
  const skipped = await replicaStore.query("SELECT 1 FROM pg_namespace WHERE nspname = 'strata'");
  assert.equal(skipped.length, 0, "Strata's own schemas are not copied");
  // The next value handed out on the replica is the primary's next one.
  const [{ next }] = await replicaStore.query("SELECT nextval('app.orders_id')::int AS next");
  const [{ next: expected }] = await primary.query("SELECT nextval('app.orders_id')::int AS next");
  assert.equal(next, expected);

  const again = await syncOnce();
  assert.equal(again.created, 0);
  assert.equal(again.advanced, 0, "nothing moved: the replica's nextval matched the primary's");
  assert.equal(again.unchanged, 6);
});

test("a replica sequence is never moved backwards; it follows the primary once the primary is ahead", async () => {
  await primary.query("CREATE SEQUENCE ids; SELECT nextval('ids') FROM generate_series(1, 10)");
  await syncOnce();
  assert.equal((await describe(replicaStore, "public.ids"))?.last_value, "10");
  // A promoted replica handed out ids of its own: they must not be handed out again.
  await replicaStore.query("SELECT nextval('ids') FROM generate_series(1, 20)");
  const ahead = await syncOnce();
  assert.ok(ahead.ahead >= 1);
  assert.equal((await describe(replicaStore, "public.ids"))?.last_value, "30");
  await primary.query("SELECT setval('ids', 100)");
  await syncOnce();
  assert.equal((await describe(replicaStore, "public.ids"))?.last_value, "100");
  // Descending too: "backwards" is towards larger values.
  await replicaStore.query("SELECT nextval('countdown') FROM generate_series(1, 10)");
  const before = await describe(replicaStore, "public.countdown");
  await syncOnce();
  assert.deepEqual(await describe(replicaStore, "public.countdown"), before);
});

test("a changed definition on the primary is applied to the replica sequence", async () => {
  await primary.query("ALTER SEQUENCE ids INCREMENT BY 10 MAXVALUE 1000000");
  const summary = await syncOnce();
  assert.equal(summary.altered, 1);
  const def = await describe(replicaStore, "public.ids");
  assert.equal(def?.increment_by, "10");
  assert.equal(def?.max_value, "1000000");
});

test("strata serve copies sequences at start and every sequence_sync_interval_ms", async () => {
  await primary.query("CREATE SEQUENCE served; SELECT nextval('served') FROM generate_series(1, 5)");
  const strata = await startStrata({
    primary,
    slot: "seq_slot",
    replication: { sequence_sync_interval_ms: 200 },
  });
  try {
    await waitFor("the sequence on the replica", async () => {
      const rows = await strata.query("SELECT last_value::int AS v FROM served").catch(() => []);
      return rows[0]?.v === 5;
    });
    await primary.query("SELECT nextval('served') FROM generate_series(1, 37)");
    await waitFor("the periodic sync to copy the new value", async () => {
      const [row] = await strata.query("SELECT last_value::int AS v FROM served");
      return row.v === 42;
    });
    // The log line is written after the value is set: wait for it rather than race it.
    await waitFor("the sync's log line", async () => /synced sequences from the primary/.test(strata.logs));
  } finally {
    await strata.stop();
  }
});

test("strata sync-sequences copies on demand into a running Strata, and refuses without one", async () => {
  const strata = await createStrata({
    primary,
    slot: "seq_cli_slot",
    replication: { sequence_sync_interval_ms: 0 },
  });
  const cli = () =>
    run(
      process.execPath,
      ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "sync-sequences", "--config", strata.configFile],
      { cwd: ROOT },
    );
  try {
    await strata.start();
    await strata.waitForStreaming();
    // Made after the snapshot (which copies sequences): only the command can bring it.
    await primary.query("CREATE SEQUENCE on_demand; SELECT nextval('on_demand') FROM generate_series(1, 3)");
    const missing = await strata.query("SELECT 1 FROM pg_class WHERE relname = 'on_demand'");
    assert.equal(missing.length, 0, "no periodic sync with sequence_sync_interval_ms: 0");
    const { stdout } = await cli();
    assert.match(stdout, /^synced sequences: \d+ sequences on the primary, \d+ created, \d+ advanced/);
    const [row] = await strata.query("SELECT last_value::int AS v, is_called FROM on_demand");
    assert.deepEqual(row, { v: 3, is_called: true });
    await strata.stop();
    const err = await cli().then(
      () => assert.fail("sync-sequences should fail without a running Strata"),
      (e) => e,
    );
    assert.equal(err.code, 1);
    assert.match(err.stderr, /managed store in .* is not running .*start `strata serve`/);
  } finally {
    await strata.stop();
  }
});
