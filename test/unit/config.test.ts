import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, validateConfig } from "../../src/config/load.ts";

const replication = {
  postgres_server_address: "127.0.0.1",
  postgres_user: "postgres",
  postgres_database: "postgres",
  slot_name: "strata_slot",
};

test("defaults: a replica records commits; publication defaults to the slot", () => {
  const { config, warnings } = validateConfig({ postgres_replication: replication }, "config.yaml");
  assert.deepEqual(warnings, []);
  assert.equal(config.listener.host, "127.0.0.1");
  assert.equal(config.listener.port, 5432);
  assert.equal(config.postgres_replication?.postgres_port, 5432);
  assert.equal(config.postgres_replication?.publication_name, undefined);
  assert.equal(config.data_dir, "./strata-data");
});

test("a malformed key is an error naming the key, the value and the expected form", () => {
  assert.throws(
    () => validateConfig({ listener: { port: "fifty" }, postgres_replication: replication }, "config.yaml"),
    (err: Error) =>
      err instanceof ConfigError &&
      /listener\.port/.test(err.message) &&
      /"fifty"/.test(err.message) &&
      /integer 1-65535/.test(err.message),
  );
});

test("a missing required key is an error naming it", () => {
  const { slot_name: _, ...noSlot } = replication;
  assert.throws(
    () => validateConfig({ postgres_replication: noSlot }, "config.yaml"),
    (err: Error) => /postgres_replication\.slot_name/.test(err.message) && /missing/.test(err.message),
  );
});

test("a slot name Postgres would refuse is rejected up front", () => {
  assert.throws(
    () => validateConfig({ postgres_replication: { ...replication, slot_name: "Bad-Slot" } }, "config.yaml"),
    /slot_name may contain only lower-case letters, digits and underscores/,
  );
});

test("unknown keys are warnings naming them, at any depth", () => {
  const { warnings } = validateConfig(
    {
      listner: {},
      postgres_replication: { ...replication, slot_nam: "x" },
      behavior: { dolt_transaction_commit: true, autocommit: true },
    },
    "config.yaml",
  );
  assert.deepEqual(
    warnings.map((w) => /"([^"]+)"/.exec(w)?.[1]),
    ["listner", "postgres_replication.slot_nam", "behavior.autocommit"],
  );
});

test("a file that is not a mapping is an error", () => {
  assert.throws(() => validateConfig(["a"], "config.yaml"), /must hold a YAML mapping/);
});
