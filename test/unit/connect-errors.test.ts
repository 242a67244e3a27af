import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import pg from "pg";
import { explainPrimaryConnectionError } from "../../src/upstream/connect-errors.ts";

/** The error node-postgres gives for a connection to `config` (a real socket error). */
async function connectError(config: pg.ClientConfig): Promise<unknown> {
  const client = new pg.Client({ ...config, connectionTimeoutMillis: 5_000 });
  return client.connect().then(
    () => assert.fail("the connection should fail"),
    (err) => err,
  );
}

/** A port nothing listens on: bound, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test("a refused connection to the primary names the server and the settings to check", async () => {
  const port = await closedPort();
  const err = await connectError({ host: "127.0.0.1", port });
  const message = explainPrimaryConnectionError(err, { host: "127.0.0.1", port });
  assert.equal(
    message,
    `cannot reach the primary at 127.0.0.1:${port}: connection refused; is PostgreSQL running and listening there (listen_addresses, port)? Check postgres_replication.postgres_server_address and postgres_port. Strata keeps retrying`,
  );
  // Another port's refusal (not the primary's) is left as it is.
  assert.equal(explainPrimaryConnectionError(err, { host: "127.0.0.1", port: port + 1 }), undefined);
});

test("the store's unix socket and errors that are not socket errors are not the primary's", async () => {
  const dir = mkdtempSync(join(tmpdir(), "strata-connect-errors-"));
  try {
    const err = await connectError({ host: dir, port: 5432 });
    assert.equal(explainPrimaryConnectionError(err, { host: "127.0.0.1", port: 5432 }), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  for (const other of [undefined, null, "text", new Error("password authentication failed")])
    assert.equal(explainPrimaryConnectionError(other, { host: "h", port: 1 }), undefined);
});
