// The front door against real clients: psql and node-postgres through `strata serve`'s listener
// (simple and extended protocol, binary results, COPY, cancel, TLS, many sessions, a client that
// stops reading, a client killed mid-transaction, bad bytes), and listeners started here, over
// the same store, for the options (no TLS, require_secure_transport, max_connections), the
// session registry and the rewriter hook.
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { connect as connectTcp, type Socket } from "node:net";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { after, before, test } from "node:test";
import { TLSSocket, connect as tlsConnect } from "node:tls";
import pg from "pg";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import { loadConfig } from "../../src/config/load.ts";
import { type Listener, type QueryRewriter, startListener } from "../../src/frontdoor/listener.ts";
import { decodeErrorFields } from "../../src/frontdoor/wire.ts";
import { createLogger } from "../../src/log.ts";
import { startServer } from "../../src/server.ts";
import { onProcessExit } from "../support/cleanup.ts";
import { freePort, TEST_PASSWORD, TEST_USER, tempDir, waitFor } from "../support/postgres.ts";
import { createStandaloneStrata, type StrataProcess, startStandaloneStrata } from "../support/strata.ts";
import { selfSignedCertificate } from "../support/tls.ts";

const log = createLogger("fatal");
let strata: StrataProcess;
let tlsKey: string;
let tlsCert: string;
let socketDir: string;
const listeners: Listener[] = [];

before(async () => {
  ({ key: tlsKey, cert: tlsCert } = selfSignedCertificate());
  socketDir = tempDir("strata-sock-");
  strata = await startStandaloneStrata({
    listener: { tls_key: tlsKey, tls_cert: tlsCert, unix_socket_directory: socketDir },
  });
});

after(async () => {
  await Promise.all(listeners.map((l) => l.close()));
  await strata?.stop();
});

/** A listener of this test's own over the Strata's store. */
async function ownListener(
  options: Record<string, unknown> = {},
  rewriter?: QueryRewriter,
): Promise<Listener> {
  const listener = await startListener(
    { host: "127.0.0.1", port: 0, ...options },
    strata.storeEndpoint(),
    rewriter,
    log,
  );
  listeners.push(listener);
  return listener;
}

function clientConfig(port: number, extra: pg.ClientConfig = {}): pg.ClientConfig {
  return {
    host: "127.0.0.1",
    port,
    user: TEST_USER,
    password: TEST_PASSWORD,
    database: "postgres",
    ...extra,
  };
}

/** A connected client; its 'error' events are kept rather than thrown. */
async function connect(
  port = strata.port,
  extra: pg.ClientConfig = {},
): Promise<pg.Client & { errors: Error[] }> {
  const client = Object.assign(new pg.Client(clientConfig(port, extra)), { errors: [] as Error[] });
  client.on("error", (err) => client.errors.push(err));
  await client.connect();
  return client;
}

/** The parts of a pg.Client the protocol tests reach into. */
function internals(client: pg.Client): { processID: number; secretKey: number; stream: Socket } {
  const c = client as unknown as { processID: number; secretKey: number; connection: { stream: Socket } };
  return { processID: c.processID, secretKey: c.secretKey, stream: c.connection.stream };
}

async function withClient<T>(work: (client: pg.Client) => Promise<T>, port = strata.port): Promise<T> {
  const client = await connect(port);
  try {
    return await work(client);
  } finally {
    await client.end().catch(() => {});
  }
}

async function backendExists(pid: number): Promise<boolean> {
  const rows = await strata.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid]);
  return rows.length > 0;
}

function psql(conninfo: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolveRun) => {
    execFile(
      "psql",
      ["-X", conninfo, ...args],
      { env: { ...process.env, PGPASSWORD: TEST_PASSWORD, PGCONNECT_TIMEOUT: "10" }, timeout: 60_000 },
      (err, stdout, stderr) =>
        resolveRun({ code: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

function conninfo(port: number, sslmode: string): string {
  return `host=127.0.0.1 port=${port} user=${TEST_USER} dbname=postgres sslmode=${sslmode}`;
}

/** Send `bytes` on a fresh connection and collect everything until the server closes it. */
function exchange(port: number, bytes: Buffer, timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolveReply, reject) => {
    const chunks: Buffer[] = [];
    const socket = connectTcp(port, "127.0.0.1", () => socket.write(bytes));
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server did not close the connection within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("data", (d) => chunks.push(d));
    socket.on("error", () => {}); // a reset counts as closed
    socket.on("close", () => {
      clearTimeout(timer);
      resolveReply(Buffer.concat(chunks));
    });
  });
}

function assertAlive(): void {
  assert.equal(strata.child?.exitCode, null, `strata exited\n${strata.logs}`);
}

test("psql works through the front door, in clear and over TLS", async () => {
  const clear = await psql(conninfo(strata.port, "disable"), ["-At", "-c", "SELECT 40 + 2"]);
  assert.equal(clear.code, 0, clear.stderr);
  assert.equal(clear.stdout.trim(), "42");
  const tls = await psql(conninfo(strata.port, "require"), ["-c", "\\conninfo"]);
  assert.equal(tls.code, 0, tls.stderr);
  assert.match(tls.stdout, /SSL connection \(protocol: TLSv1\.[23]/);
  const script = await psql(conninfo(strata.port, "prefer"), [
    "-At",
    "-v",
    "ON_ERROR_STOP=1",
    "-c",
    "CREATE TABLE psql_t (id int PRIMARY KEY, v text)",
    "-c",
    "INSERT INTO psql_t SELECT g, 'v' || g FROM generate_series(1, 100) g",
    "-c",
    "SELECT count(*), max(v) FROM psql_t",
  ]);
  assert.equal(script.code, 0, script.stderr);
  assert.match(script.stdout, /^100\|v99$/m);
  // listener.unix_socket_directory: the same front door (its history surface too) by directory.
  assert.match(
    strata.logs,
    new RegExp(`"socket":"${socketDir}/\\.s\\.PGSQL\\.${strata.port}".*strata is ready`),
  );
  const local = await psql(`host=${socketDir} port=${strata.port} user=${TEST_USER} dbname=postgres`, [
    "-At",
    "-c",
    "SELECT table_name, status FROM dolt_status WHERE table_name = 'psql_t'",
  ]);
  assert.equal(local.code, 0, local.stderr);
  assert.equal(local.stdout.trim(), "psql_t|new table");
});

test("node-postgres: simple and extended protocol, prepared statements, binary results, errors", async () => {
  await withClient(async (client) => {
    const multi = (await client.query("SELECT 1 AS a; SELECT 'x' AS b")) as unknown as pg.QueryResult[];
    assert.deepEqual(
      multi.map((r) => r.rows),
      [[{ a: 1 }], [{ b: "x" }]],
    );
    assert.deepEqual((await client.query("SELECT $1::int + 1 AS n", [41])).rows, [{ n: 42 }]);
    for (const [a, b] of [
      [1, 2],
      [3, 4],
    ]) {
      const { rows } = await client.query({
        name: "add",
        text: "SELECT $1::int + $2::int AS s",
        values: [a, b],
      });
      assert.deepEqual(rows, [{ s: a + b }]);
    }
    // `binary` asks for every result column in binary format (pg's types do not declare it).
    const binary: pg.QueryResult = await client.query({
      text: "SELECT $1::int4 AS i, true AS ok, 'é'::text AS t, '\\x616263'::bytea AS b",
      values: [7],
      binary: true,
    } as pg.QueryConfig);
    assert.ok(binary.fields.every((f) => f.format === "binary"));
    // (bytea has no binary parser in pg: its raw bytes come back as a string)
    assert.deepEqual(binary.rows, [{ i: 7, ok: true, t: "é", b: "abc" }]);
    await assert.rejects(client.query("SELECT 1/0"), (err: pg.DatabaseError) => err.code === "22012");
    await assert.rejects(
      client.query("SELECT $1::int", ["x"]),
      (err: pg.DatabaseError) => err.code === "22P02",
    );
    assert.deepEqual((await client.query("SELECT 'still here' AS s")).rows, [{ s: "still here" }]);
  });
});

test("COPY FROM STDIN and COPY TO STDOUT through the proxy", async () => {
  await withClient(async (client) => {
    await client.query("CREATE TABLE copy_t (id int PRIMARY KEY, v text)");
    const rows = 100_000;
    const lines = Array.from({ length: rows }, (_, i) => `${i + 1}\tvalue ${i + 1} ${"x".repeat(i % 50)}\n`);
    await pipeline(
      (async function* () {
        for (let i = 0; i < rows; i += 1000) yield Buffer.from(lines.slice(i, i + 1000).join(""));
      })(),
      client.query(copyFrom("COPY copy_t FROM STDIN")),
    );
    assert.deepEqual((await client.query("SELECT count(*)::int AS n FROM copy_t")).rows, [{ n: rows }]);
    const out: Buffer[] = [];
    await pipeline(
      client.query(copyTo("COPY (SELECT * FROM copy_t ORDER BY id) TO STDOUT")),
      async (source) => {
        for await (const chunk of source) out.push(chunk as Buffer);
      },
    );
    assert.equal(Buffer.concat(out).toString(), lines.join(""));
  });
});

test("a client that reads in fits and starts gets every byte, in order, in clear and over TLS", {
  timeout: 120_000,
}, async () => {
  // The front door reads each store connection into one buffer it reuses: a write to a client
  // that is not reading stays pending, and the bytes it holds must not be overwritten meanwhile.
  const rows = 200_000;
  const md5 = (text: string) => createHash("md5").update(text).digest("hex");
  const expected = Array.from({ length: rows }, (_, i) => `${i + 1}\t${md5(String(i + 1))}\n`).join("");
  // A short sleep every 500 rows: the store sends its 8 kB buffers one at a time, each below the
  // client socket's high-water mark, so the store is still read while a write to the client waits.
  const sql = `COPY (SELECT i, md5(i::text) FROM generate_series(1, ${rows}) i
                      WHERE i % 500 <> 0 OR length(pg_sleep(0.002)::text) = 0) TO STDOUT`;
  const listener = await ownListener({ tls_key: tlsKey, tls_cert: tlsCert });
  for (const ssl of [false, { rejectUnauthorized: false }]) {
    const client = await connect(listener.address.port, { ssl });
    const { stream } = internals(client);
    const out: Buffer[] = [];
    let reads = 0;
    try {
      await pipeline(client.query(copyTo(sql)), async (source) => {
        for await (const chunk of source) {
          out.push(chunk as Buffer);
          // Stop reading now and then, long enough for the socket buffers on the way to fill.
          if (++reads % 500 === 1) {
            stream.pause();
            await new Promise((resolveWait) => setTimeout(resolveWait, reads === 1 ? 1500 : 200));
            stream.resume();
          }
        }
      });
      assert.equal(Buffer.concat(out).toString(), expected, `ssl: ${JSON.stringify(ssl)}`);
    } finally {
      await client.end();
    }
  }
});

/** Send a CancelRequest in clear, or inside TLS (SSLRequest first, as libpq 17 does), and wait for the close. */
async function sendCancel(processID: number, secretKey: number, overTls: boolean): Promise<void> {
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(processID, 8);
  packet.writeInt32BE(secretKey, 12);
  if (!overTls) {
    await exchange(strata.port, packet);
    return;
  }
  const raw = connectTcp(strata.port, "127.0.0.1");
  raw.on("error", () => {});
  const sslRequest = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
  raw.write(sslRequest);
  const [answer] = (await once(raw, "data")) as [Buffer];
  assert.equal(answer.toString(), "S");
  const secure = tlsConnect({ socket: raw, rejectUnauthorized: false });
  secure.on("error", () => {});
  await once(secure, "secureConnect");
  secure.write(packet);
  secure.resume();
  await once(secure, "close");
}

test("a CancelRequest through the front door, in clear or over TLS, cancels the query (57014) at once", async () => {
  const client = await connect();
  try {
    const { processID, secretKey } = internals(client);
    for (const overTls of [false, true]) {
      const started = Date.now();
      const failed = assert.rejects(
        client.query("SELECT pg_sleep(30)"),
        (err: pg.DatabaseError) => err.code === "57014",
      );
      await waitFor("the query to run", async () => {
        const rows = await strata.query(
          "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
          [processID],
        );
        return rows.length > 0;
      });
      await sendCancel(processID, secretKey, overTls);
      await failed;
      assert.ok(Date.now() - started < 15_000, "cancelled, not finished");
      assert.deepEqual((await client.query("SELECT 1 AS one")).rows, [{ one: 1 }]);
    }
  } finally {
    await client.end();
  }
});

test("50 concurrent sessions each get their own correct results", async () => {
  const results = await Promise.all(
    Array.from({ length: 50 }, (_, k) =>
      withClient(async (client) => {
        const n = 1000 + k;
        await client.query("CREATE TEMP TABLE mine (i int)");
        await client.query("INSERT INTO mine SELECT generate_series(1, $1::int)", [n]);
        const sum = (await client.query("SELECT sum(i)::int8 AS s, count(*)::int AS c FROM mine")).rows[0];
        const named = (await client.query({ name: "k", text: "SELECT $1::int * 2 AS d", values: [k] }))
          .rows[0];
        return { k, n, sum, named };
      }),
    ),
  );
  for (const { k, n, sum, named } of results) {
    assert.deepEqual(sum, { s: String((n * (n + 1)) / 2), c: n });
    assert.deepEqual(named, { d: k * 2 });
  }
});

function rssBytes(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return Number(kb) * 1024;
}

test("a client that stops reading a large result holds back only its own backend", async () => {
  const before = rssBytes(strata.child!.pid!);
  const slow = await connect();
  const { processID, stream } = internals(slow);
  // About 1 GB of rows, which the client never reads.
  const result = slow.query("SELECT repeat('x', 1000) FROM generate_series(1, 1000000)").catch((err) => err);
  stream.pause();
  try {
    await waitFor("the store backend to wait on its client (backpressure)", async () => {
      const rows = await strata.query("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", [processID]);
      return rows[0]?.wait_event === "ClientWrite";
    });
    // Other sessions carry on meanwhile.
    const others = await Promise.all(
      Array.from({ length: 10 }, () =>
        withClient(async (client) => {
          let total = 0;
          for (let i = 0; i < 20; i++) {
            total += (await client.query("SELECT count(*)::int AS n FROM generate_series(1, 1000)")).rows[0]
              .n;
          }
          return total;
        }),
      ),
    );
    assert.deepEqual(others, Array(10).fill(20_000));
    const rows = await strata.query("SELECT wait_event FROM pg_stat_activity WHERE pid = $1", [processID]);
    assert.equal(rows[0]?.wait_event, "ClientWrite", "still held back");
    const grown = rssBytes(strata.child!.pid!) - before;
    assert.ok(grown < 128 * 1024 * 1024, `strata grew by ${Math.round(grown / 1048576)} MB`);
  } finally {
    stream.destroy();
    await result;
  }
  await waitFor("the slow client's backend to end", async () => !(await backendExists(processID)));
});

test("TLS: node-postgres over TLS; the store connection stays on its socket", async () => {
  const client = await connect(strata.port, { ssl: { rejectUnauthorized: false } });
  try {
    const { stream } = internals(client);
    assert.ok(stream instanceof TLSSocket, "the client's stream is TLS");
    assert.match(String(stream.getProtocol()), /^TLSv1\.[23]$/);
    assert.deepEqual((await client.query("SELECT 'secure' AS s")).rows, [{ s: "secure" }]);
    const { rows } = await client.query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert.deepEqual(rows, [{ ssl: false }], "the store sees a unix-socket session");
  } finally {
    await client.end();
  }
  await assert.rejects(
    connect(strata.port, { ssl: { rejectUnauthorized: true } }),
    /self[- ]signed certificate/,
    "a client that verifies the certificate refuses an unknown one",
  );
  assertAlive();
});

test("TLS not configured: sslmode=require is refused cleanly, clear text still works", async () => {
  const listener = await ownListener();
  const port = listener.address.port;
  const required = await psql(conninfo(port, "require"), ["-c", "SELECT 1"]);
  assert.equal(required.code, 2);
  assert.match(required.stderr, /server does not support SSL, but SSL was required/);
  await assert.rejects(connect(port, { ssl: { rejectUnauthorized: false } }), /does not support SSL/);
  const prefer = await psql(conninfo(port, "prefer"), ["-At", "-c", "SELECT 'clear'"]);
  assert.equal(prefer.code, 0, prefer.stderr);
  assert.equal(prefer.stdout.trim(), "clear");
});

test("TLS files that are missing, not PEM or not a pair stop the listener with the key to fix", async () => {
  const dir = tempDir("strata-badtls-");
  const other = join(dir, "other-key.pem");
  execFileSync("openssl", ["genpkey", "-algorithm", "RSA", "-out", other], { stdio: "ignore" });
  const notPem = join(dir, "not.pem");
  writeFileSync(notPem, "hello");
  const start = (tls_key: string, tls_cert: string) =>
    startListener({ host: "127.0.0.1", port: 0, tls_key, tls_cert }, strata.storeEndpoint(), undefined, log);
  await assert.rejects(
    start(join(dir, "missing.pem"), tlsCert),
    /listener\.tls_key: cannot read .*missing\.pem \(ENOENT\)/,
  );
  await assert.rejects(start(tlsKey, notPem), /listener\.tls_cert: .*not\.pem is not a PEM certificate/);
  await assert.rejects(
    start(other, tlsCert),
    /listener\.tls_key \(.*\) and listener\.tls_cert \(.*\) cannot be used together/,
  );
  await assert.rejects(
    startListener({ host: "127.0.0.1", port: 0, tls_key: tlsKey }, strata.storeEndpoint(), undefined, log),
    /listener\.tls_cert is missing/,
  );
});

test("require_secure_transport refuses a clear-text client with 28000 and the way to connect", async () => {
  const listener = await ownListener({ tls_key: tlsKey, tls_cert: tlsCert, require_secure_transport: true });
  const port = listener.address.port;
  await assert.rejects(connect(port), (err: pg.DatabaseError) => {
    assert.equal(err.code, "28000");
    assert.match(err.message, /requires TLS/);
    assert.match(err.hint ?? "", /sslmode=require/);
    return true;
  });
  const clear = await psql(conninfo(port, "disable"), ["-c", "SELECT 1"]);
  assert.equal(clear.code, 2);
  assert.match(clear.stderr, /requires TLS/);
  const secure = await psql(conninfo(port, "require"), ["-At", "-c", "SELECT 'ok'"]);
  assert.equal(secure.code, 0, secure.stderr);
  assert.equal(secure.stdout.trim(), "ok");
  assert.deepEqual(listener.sessions(), []);
});

test("a Unix socket listener: clients connect by directory and port, without TLS; its file is managed", async () => {
  const dir = tempDir("strata-sock-");
  // TLS required: over TCP only, as with Postgres's `local` lines.
  const listener = await ownListener({
    tls_key: tlsKey,
    tls_cert: tlsCert,
    require_secure_transport: true,
    unix_socket_directory: dir,
  });
  const { port, socket } = listener.address;
  assert.equal(socket, join(dir, `.s.PGSQL.${port}`));
  assert.equal(statSync(socket).mode & 0o777, 0o777);
  const local = await connect(port, { host: dir });
  try {
    const { rows } = await local.query("SELECT current_database() AS db, $1::int + 1 AS n", [41]);
    assert.deepEqual(rows, [{ db: "postgres", n: 42 }]);
  } finally {
    await local.end();
  }
  const viaPsql = await psql(`host=${dir} port=${port} user=${TEST_USER} dbname=postgres`, [
    "-At",
    "-c",
    "SELECT 'local'",
  ]);
  assert.equal(viaPsql.code, 0, viaPsql.stderr);
  assert.equal(viaPsql.stdout.trim(), "local");
  await assert.rejects(connect(port), (err: pg.DatabaseError) => err.code === "28000");

  // Another server on the same socket (a second address, same port) is refused, naming it.
  await assert.rejects(
    ownListener({ host: "127.0.0.2", port, unix_socket_directory: dir }),
    /listener\.unix_socket_directory: cannot listen on .*\.s\.PGSQL\.\d+: another server already listens there/,
  );
  await listener.close();
  assert.equal(existsSync(socket), false, "closing removes the socket file");

  // A socket file a killed server left is replaced.
  const stalePort = await freePort();
  const stale = join(dir, `.s.PGSQL.${stalePort}`);
  const killed = spawnSync(process.execPath, [
    "-e",
    `require("node:net").createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, "SIGKILL"))`,
  ]);
  assert.equal(killed.signal, "SIGKILL");
  assert.ok(statSync(stale).isSocket());
  await ownListener({ port: stalePort, unix_socket_directory: dir });
  await (await connect(stalePort, { host: dir })).end();

  // What is in the way, or missing, is named.
  const blockedPort = await freePort();
  writeFileSync(join(dir, `.s.PGSQL.${blockedPort}`), "not a socket");
  await assert.rejects(
    ownListener({ port: blockedPort, unix_socket_directory: dir }),
    /cannot listen on .*: a file that is not a socket is in the way; move it, or choose another directory/,
  );
  await assert.rejects(
    startListener(
      { host: "127.0.0.1", port: 0, unix_socket_directory: join(dir, "missing") },
      strata.storeEndpoint(),
      undefined,
      log,
    ),
    /listener\.unix_socket_directory: cannot listen on .*missing\/\.s\.PGSQL\.\d+: the directory does not exist: create it/,
  );
  await assert.rejects(
    startListener(
      { host: "127.0.0.1", port: 0, unix_socket_directory: `/tmp/${"d".repeat(120)}` },
      strata.storeEndpoint(),
      undefined,
      log,
    ),
    /bytes long and a Unix socket's may be at most 107; choose a shorter directory/,
  );
});

test("a store that cannot be reached is a FATAL 08006 for the client, not a hang", async () => {
  const listener = await startListener(
    { host: "127.0.0.1", port: 0 },
    { path: join(tempDir("strata-nostore-"), ".s.PGSQL.5432") },
    undefined,
    log,
  );
  listeners.push(listener);
  await assert.rejects(
    connect(listener.address.port),
    (err: pg.DatabaseError) => err.code === "08006" && /cannot reach the store/.test(err.message),
  );
  assert.deepEqual(listener.sessions(), []);
});

test("a wrong password gets the store's 28P01; the server keeps serving", async () => {
  await assert.rejects(
    connect(strata.port, { password: "wrong" }),
    (err: pg.DatabaseError) => err.code === "28P01" && /password authentication failed/.test(err.message),
  );
  await withClient(async (client) =>
    assert.deepEqual((await client.query("SELECT 1 AS ok")).rows, [{ ok: 1 }]),
  );
  assertAlive();
});

test("a psql killed in an open transaction leaves no backend in the store", async () => {
  const app = `frontdoor-kill-${process.pid}`;
  const child = spawn("psql", ["-X", "-At", conninfo(strata.port, "prefer")], {
    env: { ...process.env, PGPASSWORD: TEST_PASSWORD, PGAPPNAME: app },
    stdio: ["pipe", "ignore", "ignore"],
  });
  const unregister = onProcessExit(() => child.kill("SIGKILL"));
  const exited = new Promise((resolveExit) => child.once("exit", resolveExit));
  try {
    await withClient(async (client) => client.query("CREATE TABLE IF NOT EXISTS kill_t (i int)"));
    child.stdin.write("BEGIN;\nINSERT INTO kill_t VALUES (1);\nSELECT pg_backend_pid();\n");
    const pid = await waitFor("psql's transaction to be open", async () => {
      const rows = await strata.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle in transaction' AND backend_xid IS NOT NULL",
        [app],
      );
      return rows[0]?.pid as number | undefined;
    });
    child.kill("SIGKILL");
    await exited;
    await waitFor("the killed client's backend to end", async () => !(await backendExists(pid)), 15_000);
    assert.deepEqual(await strata.query("SELECT count(*)::int AS n FROM kill_t"), [{ n: 0 }], "rolled back");
  } finally {
    child.kill("SIGKILL");
    unregister();
  }
});

test("garbage, HTTP and absurd lengths get a protocol error and never crash the server", async () => {
  const http = await exchange(strata.port, Buffer.from("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  assert.equal(String.fromCharCode(http[0]), "E");
  assert.equal(decodeErrorFields(http).get("C"), "08P01");
  assert.match(decodeErrorFields(http).get("M") ?? "", /invalid length of startup packet/);

  const garbage = await exchange(strata.port, Buffer.from("\x00\x00\x00\x10garbagegarbage!!"));
  assert.equal(decodeErrorFields(garbage).get("C"), "0A000");

  const huge = Buffer.alloc(8);
  huge.writeInt32BE(0x7fff_ffff, 0);
  assert.equal(decodeErrorFields(await exchange(strata.port, huge)).get("C"), "08P01");

  // After authentication: a Query claiming 2 GB, and a CopyData claiming 1 GiB.
  for (const header of [
    [0x51, 0x7f, 0xff, 0xff, 0xf0],
    [0x64, 0x40, 0x00, 0x00, 0x00],
  ]) {
    const client = await connect();
    const closed = new Promise((resolveEnd) => client.once("end", resolveEnd));
    internals(client).stream.write(Buffer.from(header));
    await closed;
    assert.equal((client.errors[0] as pg.DatabaseError | undefined)?.code, "08P01", String(client.errors));
    assert.match(client.errors[0].message, /invalid message length/);
  }

  // An unauthenticated peer that says nothing, and one that hangs up mid-packet.
  const silent = connectTcp(strata.port, "127.0.0.1");
  silent.on("error", () => {});
  const partial = connectTcp(strata.port, "127.0.0.1", () => partial.end(Buffer.from([0, 0, 0])));
  partial.on("error", () => {});
  await withClient(async (client) =>
    assert.deepEqual((await client.query("SELECT 2 AS ok")).rows, [{ ok: 2 }]),
  );
  silent.destroy();
  assertAlive();
});

test("the session registry: database, user, backend pid, transaction status; terminate; max_connections", async () => {
  const listener = await ownListener({ max_connections: 2 });
  const port = listener.address.port;
  const a = await connect(port, { application_name: "registry-a" });
  const b = await connect(port);
  try {
    const session = listener.sessions().find((s) => s.backendPid === internals(a).processID);
    assert.ok(session, "a's session is listed with its backend pid");
    assert.equal(session.database, "postgres");
    assert.equal(session.user, TEST_USER);
    assert.equal(session.applicationName, "registry-a");
    assert.equal(session.tls, false);
    assert.equal(session.txStatus, "I");
    await a.query("BEGIN");
    assert.equal(session.txStatus, "T");
    await assert.rejects(a.query("SELECT 1/0"));
    // node-postgres rejects at the ErrorResponse; the status comes with the ReadyForQuery after it.
    await waitFor("the failed transaction's status", async () =>
      session.txStatus === "E" ? true : undefined,
    );
    await a.query("ROLLBACK");
    assert.equal(session.txStatus, "I");

    await assert.rejects(
      connect(port),
      (err: pg.DatabaseError) => err.code === "53300" && /too many connections/.test(err.message),
    );
    await b.end();
    await waitFor("b's session to leave the registry", async () => listener.sessions().length === 1);
    const c = await connect(port);
    const cPid = internals(c).processID;
    const cSession = listener.sessions().find((s) => s.backendPid === cPid)!;
    const ended = new Promise((resolveEnd) => c.once("end", resolveEnd));
    cSession.terminate({ code: "57P01", message: "terminating connection: the test ends it" });
    await ended;
    assert.equal((c.errors[0] as pg.DatabaseError | undefined)?.code, "57P01", String(c.errors));
    await waitFor("the terminated session's backend to end", async () => !(await backendExists(cPid)));
    assert.equal(listener.sessions().length, 1);
  } finally {
    await a.end().catch(() => {});
    await b.end().catch(() => {});
  }
});

test("startServer passes its rewriter to the listener: replaced, held in order, or failed in order", async () => {
  const seen: { sql: string; database: string; user: string; message: string }[] = [];
  const rewriter: QueryRewriter = {
    rewrite(sql, context) {
      seen.push({ sql, database: context.database, user: context.user, message: context.message });
      if (sql.includes("'hello'")) return sql.replace("'hello'", "'rewritten'");
      if (sql.includes("'later'")) {
        return new Promise((resolveLater) =>
          setImmediate(() => resolveLater(sql.replace("'later'", "'held'"))),
        );
      }
      if (sql.includes("'fail'")) {
        throw Object.assign(new Error("bad 'quote' \\ $strata$ here"), {
          code: "22023",
          hint: "say 'hello'",
        });
      }
      if (sql.includes("'reject'"))
        return Promise.reject(Object.assign(new Error("not allowed"), { code: "42501" }));
      return undefined;
    },
  };
  const holder = await createStandaloneStrata();
  const server = await startServer(loadConfig(holder.configFile), log, rewriter);
  try {
    await withClient(async (client) => {
      assert.deepEqual((await client.query("SELECT 'hello' AS v")).rows, [{ v: "rewritten" }]);
      assert.deepEqual((await client.query("SELECT 'later' AS v, $1::int AS n", [5])).rows, [
        { v: "held", n: 5 },
      ]);
      for (const x of ["a", "b"]) {
        const { rows } = await client.query({
          name: "p1",
          text: "SELECT 'hello' AS v, $1::text AS t",
          values: [x],
        });
        assert.deepEqual(rows, [{ v: "rewritten", t: x }]);
      }
      const failed = (err: pg.DatabaseError) => {
        assert.equal(err.code, "22023");
        assert.equal(err.message, "bad 'quote' \\ $strata$ here");
        assert.equal(err.hint, "say 'hello'");
        return true;
      };
      await assert.rejects(client.query("SELECT 'fail'"), failed);
      await assert.rejects(client.query("SELECT 'fail', $1::int, $2", [1, "two"]), failed);
      await assert.rejects(client.query("SELECT 'reject'"), (err: pg.DatabaseError) => err.code === "42501");
      assert.deepEqual((await client.query("SELECT 'plain' AS v")).rows, [{ v: "plain" }]);
    }, server.listener.address.port);
    assert.deepEqual(seen[0], {
      sql: "SELECT 'hello' AS v",
      database: "postgres",
      user: TEST_USER,
      message: "query",
    });
    assert.equal(seen.find((s) => s.sql.includes("'later'"))?.message, "parse");
  } finally {
    await server.stop();
    holder.destroySync();
  }
});
