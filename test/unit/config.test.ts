import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, validateConfig } from "../../src/config/load.ts";
import { defaultSettings } from "../../src/config/variables.ts";

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

test("listener: TLS, secure transport and connection limit default off, off and 100", () => {
  const { config } = validateConfig({}, "config.yaml");
  assert.equal(config.listener.tls_key, undefined);
  assert.equal(config.listener.tls_cert, undefined);
  assert.equal(config.listener.require_secure_transport, false);
  assert.equal(config.listener.max_connections, 100);
  const tls = validateConfig(
    { listener: { tls_key: "k.pem", tls_cert: "c.pem", require_secure_transport: true, max_connections: 5 } },
    "config.yaml",
  );
  assert.deepEqual(tls.warnings, []);
  assert.equal(tls.config.listener.require_secure_transport, true);
  assert.equal(tls.config.listener.max_connections, 5);
});

test("listener: the Unix socket is off by default; an empty or non-string directory is an error naming the key", () => {
  assert.equal(validateConfig({}, "config.yaml").config.listener.unix_socket_directory, undefined);
  assert.equal(
    validateConfig({ listener: { unix_socket_directory: "/run/strata" } }, "config.yaml").config.listener
      .unix_socket_directory,
    "/run/strata",
  );
  for (const bad of ["", 5])
    assert.throws(
      () => validateConfig({ listener: { unix_socket_directory: bad } }, "config.yaml"),
      /listener\.unix_socket_directory must be the path of a directory, e\.g\. \/run\/strata/,
    );
});

test("listener: a TLS key without its certificate (or the reverse) is an error naming the missing key", () => {
  assert.throws(
    () => validateConfig({ listener: { tls_key: "k.pem" } }, "config.yaml"),
    (err: Error) =>
      err instanceof ConfigError && /listener\.tls_cert: listener\.tls_cert is needed too/.test(err.message),
  );
  assert.throws(
    () => validateConfig({ listener: { tls_cert: "c.pem" } }, "config.yaml"),
    /listener\.tls_key: listener\.tls_key is needed too: TLS takes both/,
  );
});

test("listener: require_secure_transport without TLS, and bad limits, are errors naming the key", () => {
  assert.throws(
    () => validateConfig({ listener: { require_secure_transport: true } }, "config.yaml"),
    /listener\.require_secure_transport: .* needs listener\.tls_key and listener\.tls_cert/,
  );
  assert.throws(
    () => validateConfig({ listener: { require_secure_transport: "yes" } }, "config.yaml"),
    /listener\.require_secure_transport must be true or false; got "yes"/,
  );
  for (const bad of [0, 2.5, "many"]) {
    assert.throws(
      () => validateConfig({ listener: { max_connections: bad } }, "config.yaml"),
      /listener\.max_connections: listener\.max_connections must be a whole number of connections/,
    );
  }
  assert.throws(
    () => validateConfig({ listener: { tls_key: "", tls_cert: "c.pem" } }, "config.yaml"),
    /listener\.tls_key must be the path of a PEM private key file/,
  );
});

test("system_variables: known names are defaults for the store; unknown names and bad values are errors", () => {
  const { config } = validateConfig(
    {
      postgres_replication: replication,
      system_variables: { dolt_async_replication: true, dolt_replicate_heads: "main" },
    },
    "config.yaml",
  );
  const settings = defaultSettings(config);
  assert.equal(settings["strata.dolt_async_replication"], "1");
  assert.equal(settings["strata.dolt_replicate_heads"], "main");
  assert.equal(
    settings["strata.dolt_transaction_commit"],
    "1",
    "a replica records commits unless told otherwise",
  );
  assert.equal(
    defaultSettings(validateConfig({}, "config.yaml").config)["strata.dolt_transaction_commit"],
    "0",
  );
  assert.throws(
    () => validateConfig({ system_variables: { dolt_nope: 1 } }, "config.yaml"),
    (err: Error) =>
      /system_variables\.dolt_nope/.test(err.message) && /dolt_transaction_commit/.test(err.message),
  );
  assert.throws(
    () => validateConfig({ system_variables: { dolt_async_replication: "often" } }, "config.yaml"),
    (err: Error) =>
      /system_variables\.dolt_async_replication/.test(err.message) && /boolean/.test(err.message),
  );
});

test("cluster.automatic_failover: opt-in, at least three servers, after_secs of 4 or more", () => {
  const cluster = (standbys: number, failover?: unknown) => ({
    cluster: {
      standby_remotes: Array.from({ length: standbys }, (_, i) => ({
        name: `peer${i}`,
        remote_url_template: `http://peer${i}:50051/{database}`,
      })),
      remotesapi: { port: 50051 },
      ...(failover === undefined ? {} : { automatic_failover: failover }),
    },
  });
  assert.equal(validateConfig(cluster(1), "c.yaml").config.cluster?.automatic_failover, undefined);
  assert.deepEqual(validateConfig(cluster(2, {}), "c.yaml").config.cluster?.automatic_failover, {
    after_secs: 10,
  });
  assert.throws(
    () => validateConfig(cluster(1, { after_secs: 10 }), "c.yaml"),
    (err: Error) =>
      /needs at least three servers/.test(err.message) && /dolt_assume_cluster_role/.test(err.message),
  );
  assert.throws(
    () => validateConfig(cluster(2, { after_secs: 2 }), "c.yaml"),
    (err: Error) => /after_secs must be at least 4/.test(err.message),
  );
});
