// The slot on the primary: `strata drop-slot` (refused while streaming, idempotent, --force
// terminates the holder), and slot health (retained WAL, the slot_wal_warning_mb warning, a lost
// slot's message and remedy).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, test } from "node:test";
import { promisify } from "node:util";
import pino from "pino";
import { dropSlotCommand } from "../../src/cli/drop-slot.ts";
import { type Config, configSchema, type PostgresReplicationConfig } from "../../src/config/schema.ts";
import { ReplicationConnection } from "../../src/upstream/connection.ts";
import { upstreamConnectionConfig } from "../../src/upstream/setup.ts";
import { inspectSlot, SlotMonitor, slotLostMessage } from "../../src/upstream/slot-health.ts";
import { startPrimary, TEST_PASSWORD, TEST_USER, type TestCluster, waitFor } from "../support/postgres.ts";
import { createStrata, startStrata } from "../support/strata.ts";

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, "..", "..");

let primary: TestCluster;
before(async () => {
  primary = await startPrimary();
  await primary.query("CREATE TABLE filler (id int PRIMARY KEY, pad text)");
});
after(async () => {
  await primary?.stop();
});

function configFor(slot: string, replication: Record<string, unknown> = {}): Config {
  return configSchema.parse({
    postgres_replication: {
      postgres_server_address: primary.host,
      postgres_port: primary.port,
      postgres_user: TEST_USER,
      postgres_password: TEST_PASSWORD,
      postgres_database: "postgres",
      slot_name: slot,
      ...replication,
    },
  });
}

const replicationOf = (slot: string, extra: Record<string, unknown> = {}): PostgresReplicationConfig =>
  configFor(slot, extra).postgres_replication!;

/** A logger whose lines the test can read. */
function captureLogger() {
  const lines: { level: number; msg: string }[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { log: pino({ level: "debug" }, stream), lines };
}

let fillerId = 0;
/** About `mb` megabytes of WAL on the primary, written out (pg_current_wal_lsn counts only that). */
async function generateWal(mb: number) {
  const rows = mb * 1000;
  const client = await primary.connect();
  try {
    // The test primary runs synchronous_commit=off, which would leave the WAL in its buffers.
    await client.query("SET synchronous_commit = on");
    await client.query(
      "INSERT INTO filler SELECT $1::int + i, repeat('x', 900) FROM generate_series(1, $2) i",
      [fillerId, rows],
    );
  } finally {
    await client.end();
  }
  fillerId += rows;
}

const slotExists = async (slot: string) =>
  (await primary.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", [slot])).length > 0;
const publicationExists = async (name: string) =>
  (await primary.query("SELECT 1 FROM pg_publication WHERE pubname = $1", [name])).length > 0;

test("strata drop-slot refuses while Strata streams, then removes slot and publication, idempotently", async () => {
  const strata = await startStrata({ primary, slot: "drop_me" });
  const cli = () =>
    run(
      process.execPath,
      ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "drop-slot", "--config", strata.configFile],
      { cwd: ROOT },
    );
  try {
    const err = await cli().then(
      () => assert.fail("drop-slot should refuse an active slot"),
      (e) => e,
    );
    assert.equal(err.code, 1);
    assert.match(err.stderr, /replication slot "drop_me" is in use by the walsender with pid \d+/);
    assert.match(err.stderr, /Stop that Strata first/);
    assert.ok(await slotExists("drop_me"));
    await strata.stop();

    const { stdout } = await cli();
    assert.match(stdout, /dropped replication slot "drop_me"/);
    assert.match(stdout, /dropped publication "drop_me"/);
    assert.equal(await slotExists("drop_me"), false);
    assert.equal(await publicationExists("drop_me"), false);

    const again = await cli();
    assert.match(again.stdout, /replication slot "drop_me" does not exist .*nothing to drop/);
    assert.match(again.stdout, /publication "drop_me" does not exist .*nothing to drop/);
  } finally {
    await strata.stop();
  }
});

test("drop-slot with force terminates the walsender holding the slot; a slot not Strata's is left alone", async () => {
  const cfg = replicationOf("forced");
  const conn = await ReplicationConnection.open(upstreamConnectionConfig(cfg));
  try {
    await conn.createSlot("forced");
    const stream = conn.startReplication("forced", "0/0", {
      proto_version: "1",
      publication_names: "forced",
    });
    const consumed = (async () => {
      for await (const _ of stream);
    })().catch(() => {});
    await waitFor("the slot to be active", async () => (await inspectSlot(cfg)).active);
    const out: string[] = [];
    await dropSlotCommand(configFor("forced"), { force: true, out: (l) => out.push(l) });
    assert.match(out.join("\n"), /terminated the walsender with pid \d+/);
    assert.match(out.join("\n"), /dropped replication slot "forced"/);
    assert.equal(await slotExists("forced"), false);
    await consumed;
  } finally {
    await conn.close();
  }

  await primary.query("SELECT pg_create_physical_replication_slot('physical_one')");
  await assert.rejects(dropSlotCommand(configFor("physical_one"), { out: () => {} }), /is not Strata's/);
  assert.ok(await slotExists("physical_one"));
  await primary.query("SELECT pg_drop_replication_slot('physical_one')");
});

test("slot health: retained WAL, and a warning past slot_wal_warning_mb", async () => {
  await primary.query("SELECT pg_create_logical_replication_slot('idle_health', 'pgoutput')");
  const cfg = replicationOf("idle_health", { slot_wal_warning_mb: 2 });
  const fresh = await inspectSlot(cfg);
  assert.equal(fresh.exists, true);
  assert.equal(fresh.active, false);
  assert.equal(fresh.walStatus, "reserved");
  assert.equal(fresh.lost, false);
  assert.equal(fresh.overWarning, false);

  await generateWal(4);
  const grown = await inspectSlot(cfg);
  assert.ok(grown.retainedBytes! > 3 * 1024 * 1024, `retained ${grown.retainedBytes}`);
  assert.ok(grown.retainedBytes! > fresh.retainedBytes!);
  assert.equal(grown.overWarning, true);
  assert.match(grown.warning!, /retains \d+\.\d MB of WAL .*slot_wal_warning_mb \(2 MB\)/);
  assert.match(grown.warning!, /nothing is streaming from it/);

  const missing = await inspectSlot(replicationOf("no_such_slot"));
  assert.equal(missing.exists, false);
  assert.equal(missing.retainedBytes, null);

  const { log, lines } = captureLogger();
  const monitor = new SlotMonitor({ config: cfg, log, intervalMs: 20 });
  monitor.start();
  try {
    await waitFor("the warning", async () => lines.find((l) => l.level === 40 && /retains/.test(l.msg)));
    // Checked again and again, warned once (repeats are minutes apart).
    await waitFor(
      "more checks",
      async () => lines.filter((l) => l.msg === "replication slot health").length >= 3,
    );
    assert.equal(lines.filter((l) => /retains/.test(l.msg)).length, 1);
    assert.equal(monitor.latest?.overWarning, true);
  } finally {
    await monitor.stop();
  }
});

test("strata serve warns when the slot retains more WAL than slot_wal_warning_mb", async () => {
  await primary.query("SELECT pg_create_logical_replication_slot('behind_slot', 'pgoutput')");
  await generateWal(3);
  const strata = await createStrata({
    primary,
    slot: "behind_slot",
    replication: { slot_wal_warning_mb: 1 },
  });
  try {
    await strata.start();
    await waitFor("the slot warning in the log", async () =>
      /replication slot \\"behind_slot\\" retains .* more than postgres_replication.slot_wal_warning_mb/.test(
        strata.logs,
      ),
    );
  } finally {
    await strata.stop();
  }
});

test("a lost slot is reported with its cause and remedy", async () => {
  await primary.query("SELECT pg_create_logical_replication_slot('doomed', 'pgoutput')");
  const cfg = replicationOf("doomed");
  await primary.query("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
  await primary.query("SELECT pg_reload_conf()");
  try {
    const health = await waitFor(
      "the slot to be invalidated",
      async () => {
        await generateWal(1);
        await primary.query("SELECT pg_switch_wal()");
        await primary.query("CHECKPOINT");
        const h = await inspectSlot(cfg);
        return h.lost ? h : undefined;
      },
      60_000,
    );
    assert.equal(health.walStatus, "lost");
    assert.equal(health.retainedBytes, null);
    const message = slotLostMessage(cfg, health);
    assert.match(message, /replication slot "doomed" on the primary .* can no longer be used/);
    assert.match(message, /max_slot_wal_keep_size was exceeded/);
    assert.match(message, /postgres_replication\.resync: auto/);
    assert.match(message, /strata drop-slot --config/);
    assert.match(message, /empty data_dir/);

    const { log, lines } = captureLogger();
    const monitor = new SlotMonitor({ config: cfg, log, intervalMs: 20 });
    monitor.start();
    try {
      await waitFor(
        "checks",
        async () => lines.filter((l) => l.msg === "replication slot health").length >= 3,
      );
      assert.equal(lines.filter((l) => l.level === 50 && l.msg === message).length, 1, "reported once");
      assert.equal(monitor.latest?.lost, true);
    } finally {
      await monitor.stop();
    }
  } finally {
    await primary.query("ALTER SYSTEM RESET max_slot_wal_keep_size");
    await primary.query("SELECT pg_reload_conf()");
    await primary.query("SELECT pg_drop_replication_slot('doomed')");
  }
});
