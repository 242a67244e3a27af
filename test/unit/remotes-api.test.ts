// The remotes API and its client without a store: config.yaml's remotesapi section, the request
// paths the server takes, and HttpRemote against the server in this process, serving directory
// remotes (what StoreDatabases serves a store's databases from). The store side — pushing a
// database's branches into the served remote — is tested by test/integration/remotes-http.test.ts.
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { after, before, test } from "node:test";
import pino from "pino";
import { ConfigError, validateConfig } from "../../src/config/load.ts";
import { ApiError, parseApiPath, type RemotesApi, serveRemotesApi } from "../../src/http/remotes-api.ts";
import { DirectoryRemote } from "../../src/remotes/directory-remote.ts";
import { HttpRemote } from "../../src/remotes/http-remote.ts";
import {
  CorruptObjectError,
  MissingObjectError,
  type RefValue,
  RemoteStorageError,
} from "../../src/remotes/storage.ts";
import { freePort, tempDir } from "../support/postgres.ts";
import { selfSignedCertificate } from "../support/tls.ts";

const log = pino({ level: "silent" });

// --- config --------------------------------------------------------------------------------

test("remotesapi config: left out serves nothing; a port enables it, on every interface unless an address is given", () => {
  assert.equal(validateConfig({}, "t").config.remotesapi, undefined);
  assert.deepEqual(validateConfig({ remotesapi: { port: 50051 } }, "t").config.remotesapi, { port: 50051 });
  const full = {
    port: 8443,
    address: "127.0.0.1",
    tls_key: "/etc/strata/key.pem",
    tls_cert: "/etc/strata/cert.pem",
  };
  assert.deepEqual(validateConfig({ remotesapi: full }, "t").config.remotesapi, full);
});

test("remotesapi config: errors name the key and what it takes", () => {
  const invalid = (remotesapi: unknown, pattern: RegExp) =>
    assert.throws(
      () => validateConfig({ remotesapi }, "config.yaml"),
      (err: unknown) => err instanceof ConfigError && pattern.test(err.message),
      JSON.stringify(remotesapi),
    );
  invalid({}, /remotesapi\.port: remotesapi\.port must be a TCP port number.*nothing \(the key is missing\)/);
  invalid({ port: "fifty" }, /remotesapi\.port.*integer 1-65535.*"fifty"/);
  invalid({ port: 70000 }, /remotesapi\.port.*integer 1-65535/);
  invalid(null, /remotesapi: remotesapi must be a mapping with at least a port/);
  invalid({ port: 1, address: "" }, /remotesapi\.address must be a host name or IP address/);
  invalid({ port: 1, tls_key: "/k.pem" }, /remotesapi\.tls_cert: remotesapi\.tls_cert is needed too/);
  invalid({ port: 1, tls_cert: "/c.pem" }, /remotesapi\.tls_key: remotesapi\.tls_key is needed too/);
  const { warnings } = validateConfig({ remotesapi: { port: 1, tls_ca: "/ca.pem" } }, "config.yaml");
  assert.match(warnings.join("\n"), /unknown key "remotesapi\.tls_ca"/);
});

// --- request paths -------------------------------------------------------------------------

test("request paths: the four endpoints, percent-decoded per segment", () => {
  const a = "ab".repeat(32);
  assert.deepEqual(parseApiPath("/shop"), { kind: "database", database: "shop" });
  assert.deepEqual(parseApiPath("/shop/"), { kind: "database", database: "shop" });
  assert.deepEqual(parseApiPath("/my%20db"), { kind: "database", database: "my db" });
  assert.deepEqual(parseApiPath("/shop/refs/heads/main"), {
    kind: "ref",
    database: "shop",
    name: "heads/main",
  });
  assert.deepEqual(parseApiPath("/shop/refs/heads/feature/x"), {
    kind: "ref",
    database: "shop",
    name: "heads/feature/x",
  });
  assert.deepEqual(parseApiPath("/shop/refs/tags/v1.0?ignored=1"), {
    kind: "ref",
    database: "shop",
    name: "tags/v1.0",
  });
  assert.deepEqual(parseApiPath("/shop/refs?prefix=heads%2F"), {
    kind: "refs",
    database: "shop",
    prefix: "heads/",
  });
  assert.deepEqual(parseApiPath("/shop/refs"), { kind: "refs", database: "shop", prefix: "" });
  assert.deepEqual(parseApiPath(`/shop/objects/${a}`), { kind: "object", database: "shop", address: a });
  assert.deepEqual(parseApiPath(`http://host:1/shop/objects/${a}`), {
    kind: "object",
    database: "shop",
    address: a,
  });
});

test("request paths: anything else is a 400 naming the problem", () => {
  for (const [target, pattern] of [
    ["/", /names no database/],
    ["", /does not start with/],
    ["//shop", /names no database/],
    ["/shop//refs", /empty segment/],
    ["/sh%ZZop", /malformed percent-escape/],
    ["/shop%2Ffeature/refs/heads/main", /branch's database.*heads of their database/],
    [`/${"x".repeat(64)}`, /longer than 63 bytes/],
    ["/shop/refs/main", /ref name "main" is not valid/],
    ["/shop/refs/heads/a..b", /contains "\.\."/],
    ["/shop/refs/other/x", /heads\/ or tags\//],
    ["/shop/objects/abc", /not an object address/],
    [`/shop/objects/${"A".repeat(64)}`, /not an object address/],
    ["/shop/objects", /not an endpoint/],
    ["/shop/push", /not an endpoint/],
    [`/shop/refs?prefix=${"x".repeat(2000)}`, /prefix is longer/],
  ] as const) {
    assert.throws(
      () => parseApiPath(target),
      (err: unknown) => err instanceof ApiError && err.status === 400 && pattern.test(err.message),
      target,
    );
  }
});

// --- the server and its client -------------------------------------------------------------

let api: RemotesApi;
let base: string;
let shop: DirectoryRemote;
let packAddress: string;
let packBytes: Buffer;
let failing = false;
/** What the served databases throw, when set. */
let failure: Error | null = null;
const MAIN: RefValue = { commit: "c".repeat(32), pack: "0".repeat(64) };

before(async () => {
  const dir = tempDir("strata-remotes-api-");
  shop = new DirectoryRemote(join(dir, "shop"));
  packBytes = Buffer.from("a pack's bytes ".repeat(5000));
  writeFileSync(join(dir, "pack"), packBytes);
  packAddress = await shop.putObjectFile(join(dir, "pack"));
  MAIN.pack = packAddress;
  await shop.compareAndSwapRef("heads/main", null, MAIN);
  await shop.compareAndSwapRef("heads/feature/x", null, { commit: "d".repeat(32), pack: packAddress });
  await shop.compareAndSwapRef("tags/v1", null, { commit: MAIN.commit, pack: packAddress });
  const empty = new DirectoryRemote(join(dir, "empty")); // a database with no commits: no remote yet
  api = await serveRemotesApi({
    port: 0,
    address: "127.0.0.1",
    log,
    databases: {
      remote: async (database) => {
        if (failing) throw Object.assign(new Error("the store went away"), { code: "57P01" });
        if (failure) throw failure;
        return database === "shop" ? shop : database === "empty" ? empty : null;
      },
      close: async () => {},
    },
  });
  base = `http://127.0.0.1:${api.address.port}`;
});
after(async () => {
  await api?.close();
});

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function rejects(
  promise: Promise<unknown>,
  code: string,
  pattern: RegExp,
): Promise<RemoteStorageError> {
  const err = await promise.then(
    () => assert.fail("should have failed"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof RemoteStorageError, String(err));
  assert.equal(err.code, code, err.message);
  assert.match(`${err.message} | ${err.hint}`, pattern);
  return err;
}

test("HttpRemote reads refs, lists them, and streams objects as the served remote holds them", async () => {
  const remote = new HttpRemote(`${base}/shop`);
  assert.deepEqual(await remote.readRef("heads/main"), MAIN);
  assert.deepEqual(await remote.readRef("heads/feature/x"), { commit: "d".repeat(32), pack: packAddress });
  assert.equal(await remote.readRef("heads/nope"), null);
  assert.equal(await remote.readRef("tags/nope"), null);
  assert.deepEqual([...(await remote.listRefs("heads/")).keys()], ["heads/feature/x", "heads/main"]);
  assert.deepEqual([...(await remote.listRefs("")).keys()], ["heads/feature/x", "heads/main", "tags/v1"]);
  assert.deepEqual(
    [...(await remote.listRefs("tags/")).entries()],
    [["tags/v1", { commit: MAIN.commit, pack: packAddress }]],
  );
  assert.equal(await remote.hasObject(packAddress), true);
  assert.equal(await remote.hasObject("f".repeat(64)), false);
  assert.deepEqual(await readAll(await remote.openObject(packAddress)), packBytes);
  await assert.rejects(remote.openObject("f".repeat(64)), MissingObjectError);
  // A trailing slash is the same remote; a database without commits has no refs yet.
  assert.deepEqual(await new HttpRemote(`${base}/shop/`).readRef("heads/main"), MAIN);
  const empty = new HttpRemote(`${base}/empty`);
  assert.equal(await empty.readRef("heads/main"), null);
  assert.equal((await empty.listRefs("")).size, 0);
  assert.equal(await empty.hasObject(packAddress), false);
});

test("a damaged object fails its stream with CorruptObjectError", async () => {
  const file = readdirSync(join(shop.root, "objects", packAddress.slice(0, 2))).map((f) =>
    join(shop.root, "objects", packAddress.slice(0, 2), f),
  )[0];
  const original = readFileSync(file);
  try {
    const damaged = Buffer.from(original);
    damaged[damaged.length >> 1] ^= 0xff;
    writeFileSync(file, damaged);
    const remote = new HttpRemote(`${base}/shop`);
    await assert.rejects(readAll(await remote.openObject(packAddress)), CorruptObjectError);
    writeFileSync(file, original.subarray(0, 100)); // truncated
    await assert.rejects(readAll(await remote.openObject(packAddress)), CorruptObjectError);
  } finally {
    writeFileSync(file, original);
  }
});

test("writes are refused: by the client (0A000) and by the server (405, naming the fix)", async () => {
  const remote = new HttpRemote(`${base}/shop`);
  await rejects(remote.compareAndSwapRef("heads/main", MAIN, null), "0A000", /read-only.*directory.*S3/);
  await rejects(remote.putObjectFile("/etc/hostname"), "0A000", /read-only/);
  for (const method of ["PUT", "POST", "DELETE", "PATCH"]) {
    const res = await fetch(`${base}/shop/refs/heads/main`, {
      method,
      body: method === "DELETE" ? undefined : "{}",
    });
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.get("allow"), "GET, HEAD");
    assert.equal(res.headers.get("strata-error"), "read-only");
    const body = (await res.json()) as { error: string; hint: string; sqlstate: string };
    assert.match(
      body.error,
      new RegExp(
        `this remote is read-only: it serves the databases of the Strata at http://127\\.0\\.0\\.1:${api.address.port}`,
      ),
    );
    assert.match(body.hint, /push to a directory .* or S3 .* remote instead/);
    assert.equal(body.sqlstate, "0A000");
  }
  assert.deepEqual(await remote.readRef("heads/main"), MAIN); // nothing moved
});

test("an unknown database is 404, which the client reports as 42704 naming the database and the server", async () => {
  const res = await fetch(`${base}/nope/refs/heads/main`);
  assert.equal(res.status, 404);
  assert.equal(res.headers.get("strata-error"), "database-not-found");
  assert.match(((await res.json()) as { error: string }).error, /no database "nope"/);
  const remote = new HttpRemote(`${base}/nope`);
  await rejects(
    remote.readRef("heads/main"),
    "42704",
    new RegExp(`Strata at ${base} has no database "nope"`),
  );
  await rejects(remote.listRefs("heads/"), "42704", /no database "nope"/);
  await rejects(remote.hasObject(packAddress), "42704", /no database "nope"/);
  await rejects(remote.openObject(packAddress), "42704", /no database "nope"/);
});

test("bad requests get 400 with a JSON error, and a failing store 500; the server keeps serving", async () => {
  for (const path of ["/", "/shop/refs/main", "/shop/objects/xyz", "/shop%2Ffeature/refs", "/%E0%A4%A"]) {
    const res = await fetch(`${base}${path}`);
    assert.equal(res.status, 400, path);
    assert.equal(res.headers.get("strata-remotes-api"), "1");
    const body = (await res.json()) as { code: string; error: string };
    assert.equal(body.code, "bad-request");
  }
  failing = true;
  try {
    const res = await fetch(`${base}/shop/refs/heads/main`);
    assert.equal(res.status, 500);
    await rejects(new HttpRemote(`${base}/shop`).readRef("heads/main"), "57P01", /the store went away/);
  } finally {
    failing = false;
  }
  // A request the HTTP parser refuses.
  const raw = await import("node:net").then(
    (net) =>
      new Promise<string>((resolve, reject) => {
        const socket = net.connect(api.address.port, "127.0.0.1", () =>
          socket.write("NOT HTTP AT ALL\r\n\r\n"),
        );
        let text = "";
        socket.on("data", (d) => {
          text += d;
        });
        socket.on("close", () => resolve(text));
        socket.on("error", reject);
      }),
  );
  assert.match(raw, /^HTTP\/1\.1 400/);
  assert.deepEqual(await new HttpRemote(`${base}/shop`).readRef("heads/main"), MAIN);
});

test("a 500 reveals no file of the server: a file system error is answered in general terms", async () => {
  failure = Object.assign(new Error("EACCES: permission denied, open '/srv/secret/remotesapi/shop/x'"), {
    code: "EACCES",
    syscall: "open",
    path: "/srv/secret/remotesapi/shop/x",
  });
  try {
    const res = await fetch(`${base}/shop/refs/heads/main`);
    assert.equal(res.status, 500);
    const text = await res.text();
    assert.doesNotMatch(text, /\/srv\/secret/);
    assert.match(JSON.parse(text).error, /a file system error on the server \(EACCES\)/);
  } finally {
    failure = null;
  }
  // A damaged ref file is named within the served remote, not by its path on the server.
  const refDir = join(shop.root, "refs", "heads", "broken");
  mkdirSync(refDir, { recursive: true });
  writeFileSync(join(refDir, "1"), "{");
  try {
    const res = await fetch(`${base}/shop/refs/heads/broken`);
    assert.equal(res.status, 500);
    const body = (await res.json()) as { error: string; hint: string };
    assert.match(body.error, /ref heads\/broken: its ref file .*refs\/heads\/broken\/1 .* is damaged/);
    assert.ok(!`${body.error} ${body.hint}`.includes(shop.root), body.error);
  } finally {
    rmSync(refDir, { recursive: true });
  }
  assert.deepEqual(await new HttpRemote(`${base}/shop`).readRef("heads/main"), MAIN);
});

test("the client names the cause when the server cannot be reached, is not a remotes API, or its TLS is not trusted", async () => {
  const closed = await freePort();
  await rejects(
    new HttpRemote(`http://127.0.0.1:${closed}/shop`).readRef("heads/main"),
    "08001",
    /cannot reach http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED.*remotesapi\.port/,
  );

  await rejects(
    new HttpRemote("http://127.0.0.1:6000/shop").readRef("heads/main"),
    "08001",
    /fetch refuses to connect to the port.*another port/,
  );

  const stranger = createServer((_req, res) => res.end("hello"));
  await new Promise<void>((resolve) => stranger.listen(0, "127.0.0.1", resolve));
  try {
    const port = (stranger.address() as AddressInfo).port;
    await rejects(
      new HttpRemote(`http://127.0.0.1:${port}/shop`).readRef("heads/main"),
      "08P01",
      /not served by a Strata remotes API.*remotesapi/,
    );
  } finally {
    stranger.close();
  }

  const { key, cert } = selfSignedCertificate("strata-remotes-api-tls-");
  const secure = await serveRemotesApi({
    port: 0,
    log,
    tls: { key: readFileSync(key), cert: readFileSync(cert) },
    databases: { remote: async (database) => (database === "shop" ? shop : null), close: async () => {} },
  });
  try {
    const port = secure.address.port;
    // This process does not trust the certificate: the hint says how to.
    await rejects(
      new HttpRemote(`https://localhost:${port}/shop`).readRef("heads/main"),
      "08006",
      /TLS handshake with https:\/\/localhost:\d+ failed.*NODE_EXTRA_CA_CERTS/,
    );
    // http:// to an HTTPS server: the connection breaks, and the hint names the scheme.
    await rejects(
      new HttpRemote(`http://localhost:${port}/shop`).readRef("heads/main"),
      "08006",
      /https:\/\//,
    );
  } finally {
    await secure.close();
  }
});
