// Fuzzing the remotes API (src/http/remotes-api.ts) and its client (src/remotes/http-remote.ts,
// pack-frames.ts through pack-objects.ts): random and hand-picked request lines, headers and
// bodies on raw sockets, path traversal in every spelling, slow and vanishing clients, damaged
// refs and packs on disk, and a misbehaving server for the client. For every input the server
// must answer a 4xx (or close the connection for protocol garbage) within a deadline, never a 5xx
// for what a client sent, never a byte from outside its directory, and keep serving well-formed
// requests; the client must fail with a RemoteStorageError or RemoteOperationError naming the
// cause, never a TypeError, and promptly.
//
// The seed is printed; STRATA_FUZZ_SEED=<n> repeats a run. Cases marked `todo` fail because of a
// defect in src/ (named in the todo).
import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { gzipSync } from "node:zlib";
import pino from "pino";
import { ApiError, parseApiPath, type RemotesApi, serveRemotesApi } from "../../src/http/remotes-api.ts";
import { DirectoryRemote } from "../../src/remotes/directory-remote.ts";
import { HttpRemote } from "../../src/remotes/http-remote.ts";
import { encodeData, encodeEnd, encodeSection, PackFrameReader } from "../../src/remotes/pack-frames.ts";
import { ObjectWriter, RemoteOperationError, readObjectFrames } from "../../src/remotes/pack-objects.ts";
import { isValidRefName, type RefValue, RemoteStorageError } from "../../src/remotes/storage.ts";
import { fuzzSeed, prng, type RawReply, type Rng, rawExchange } from "../support/fuzz.ts";
import { tempDir } from "../support/postgres.ts";

const SEED = fuzzSeed("remotes API fuzz");

const log = pino({ level: "silent" });
/** What no response may ever contain: it is in files outside the served objects. */
const SECRET = "TOP-SECRET-7f3a9c";
const DEADLINE_MS = 3000;

let dir: string;
let api: RemotesApi;
let port: number;
let base: string;
let shop: DirectoryRemote;
let small: { address: string; bytes: Buffer };
let big: { address: string; bytes: Buffer };
let main: RefValue;
/** Every database name the server asked its ServedDatabases for. */
const asked: string[] = [];
/** Errors that escaped to the process while this file ran. */
const escaped: unknown[] = [];
const onEscape = (err: unknown) => escaped.push(err);

async function putObject(remote: DirectoryRemote, bytes: Buffer): Promise<string> {
  const file = join(dir, `obj-${Math.random().toString(36).slice(2)}`);
  writeFileSync(file, bytes);
  return remote.putObjectFile(file);
}

before(async () => {
  process.on("uncaughtException", onEscape);
  process.on("unhandledRejection", onEscape);
  dir = tempDir("strata-remotes-api-fuzz-");
  writeFileSync(join(dir, "secret.txt"), `${SECRET}\n`);
  shop = new DirectoryRemote(join(dir, "shop"));
  small = { bytes: Buffer.from(`a pack's bytes; ${"x".repeat(2000)}`), address: "" };
  small.address = await putObject(shop, small.bytes);
  big = { bytes: Buffer.alloc(8 * 1024 * 1024, 0x5a), address: "" };
  big.address = await putObject(shop, big.bytes);
  main = { commit: "c".repeat(32), pack: small.address };
  await shop.compareAndSwapRef("heads/main", null, main);
  await shop.compareAndSwapRef("tags/v1", null, main);
  // Secrets inside the remote's directory, where no endpoint reads.
  writeFileSync(join(shop.root, "secret.txt"), SECRET);
  writeFileSync(join(shop.root, "objects", "tmp", "f".repeat(64)), SECRET);
  api = await serveRemotesApi({
    port: 0,
    address: "127.0.0.1",
    log,
    databases: {
      remote: async (database) => {
        asked.push(database);
        return database === "shop" ? shop : null;
      },
      close: async () => {},
    },
  });
  port = api.address.port;
  base = `http://127.0.0.1:${port}`;
});

after(async () => {
  await api?.close();
  process.off("uncaughtException", onEscape);
  process.off("unhandledRejection", onEscape);
});

// --- raw HTTP ------------------------------------------------------------------------------

type Reply = RawReply;

/** Sends `chunks` (with `gapMs` between them) on a new connection; resolves at close or deadline. */
const exchange = (
  chunks: (string | Buffer)[],
  options: { gapMs?: number; deadlineMs?: number; until?: number } = {},
) =>
  rawExchange(port, chunks, {
    deadlineMs: options.deadlineMs ?? DEADLINE_MS,
    gapMs: options.gapMs,
    // A keep-alive connection stays open: stop once the responses awaited are complete.
    enough:
      options.until === undefined
        ? undefined
        : (data) => parseResponses(data).filter((r) => r.complete).length >= options.until!,
  });

interface Parsed {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
  /** All of its body arrived. */
  complete: boolean;
}

/** The responses in `data` (as many as are complete). */
function parseResponses(data: Buffer, head = false): Parsed[] {
  const out: Parsed[] = [];
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf("\r\n\r\n", at);
    if (end < 0) break;
    const lines = data.subarray(at, end).toString("latin1").split("\r\n");
    const match = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (!match) break;
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(":");
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
    }
    let bodyAt = end + 4;
    const status = Number(match[1]);
    if (status >= 100 && status < 200) {
      at = bodyAt; // an interim response (100 Continue): the real one follows
      continue;
    }
    let body: Buffer;
    if (head) body = Buffer.alloc(0);
    else if (headers["transfer-encoding"] === "chunked") {
      const bodyParts: Buffer[] = [];
      for (;;) {
        const lineEnd = data.indexOf("\r\n", bodyAt);
        if (lineEnd < 0) return out;
        const size = Number.parseInt(data.subarray(bodyAt, lineEnd).toString(), 16);
        bodyAt = lineEnd + 2;
        if (size === 0) {
          bodyAt += 2;
          break;
        }
        bodyParts.push(data.subarray(bodyAt, bodyAt + size));
        bodyAt += size + 2;
      }
      body = Buffer.concat(bodyParts);
    } else {
      const length = Number(headers["content-length"] ?? 0);
      if (data.length - bodyAt < length) {
        out.push({ status, headers, body: data.subarray(bodyAt), complete: false });
        return out;
      }
      body = data.subarray(bodyAt, bodyAt + length);
      bodyAt += length;
    }
    out.push({ status, headers, body, complete: true });
    at = bodyAt;
  }
  return out;
}

/** A well-formed request still gets its answer, promptly. */
async function stillServes(what: string): Promise<void> {
  const started = Date.now();
  const res = await fetch(`${base}/shop/refs/heads/main`, { signal: AbortSignal.timeout(DEADLINE_MS) });
  assert.equal(res.status, 200, `after ${what}`);
  assert.deepEqual(await res.json(), main, `after ${what}`);
  assert.ok(Date.now() - started < 1500, `after ${what}: took ${Date.now() - started} ms`);
}

/** Invariants of one answer to one request; returns a problem, or null. */
function problemWith(request: string, reply: Reply, method: string): string | null {
  if (reply.data.includes(SECRET)) return "the answer holds bytes from outside the served objects";
  const [res] = parseResponses(reply.data, method === "HEAD");
  if (reply.timedOut && !res?.complete) return "no answer (and no close) within the deadline";
  if (reply.data.length === 0) return reply.closed ? null : "nothing sent";
  if (!res) return `not an HTTP response: ${JSON.stringify(reply.data.subarray(0, 80).toString("latin1"))}`;
  if (res.status >= 500) return `answered ${res.status}: ${res.body.toString().slice(0, 300)}`;
  if (![200, 400, 404, 405, 413, 414, 417, 431].includes(res.status)) return `answered ${res.status}`;
  if (res.headers["strata-remotes-api"] !== undefined && res.status >= 400) {
    if (!res.headers["strata-error"]) return `${res.status} without a Strata-Error header`;
    if (method !== "HEAD") {
      let body: { error?: unknown; hint?: unknown; code?: unknown };
      try {
        body = JSON.parse(res.body.toString());
      } catch {
        return `${res.status} whose body is not JSON`;
      }
      if (typeof body.error !== "string" || typeof body.hint !== "string" || body.hint === "")
        return `${res.status} whose body names no error and fix`;
    }
  }
  if (res.status === 200 && /\/objects\//.test(request) && method === "GET") {
    const expected = res.body.length === small.bytes.length ? small.bytes : big.bytes;
    if (!res.body.equals(expected)) return "served an object's bytes wrongly";
  }
  return null;
}

// --- request paths, without the server -----------------------------------------------------

const SEGMENTS = [
  "shop",
  "nope",
  "empty",
  "refs",
  "objects",
  "heads",
  "tags",
  "main",
  "v1",
  "..",
  ".",
  "%2e%2e",
  "%2E%2E",
  "%2e",
  "..%2f..%2f",
  "%2F",
  "%2f..",
  "%00",
  "a%00b",
  "%",
  "%zz",
  "%E0%A4%A",
  "%C0%AE%C0%AE",
  "%5C",
  "..%5C..%5C",
  "%255C",
  "%252e%252e",
  "etc",
  "passwd",
  "secret.txt",
  "strata-remote.json",
  "tmp",
  "~",
  "*",
  ";",
  ":",
  "@",
  "$",
  "%20",
  "%0d%0a",
  "%7f",
  "ünï",
  "%F0%9F%92%A5",
  "%EF%BF%BF",
  "%ED%A0%80",
  "__proto__",
  "constructor",
  "prototype",
  "-x",
  ".hidden",
];

function segment(rng: Rng): string {
  const roll = rng.int(10);
  if (roll === 0) return "x".repeat(rng.pick([1, 63, 64, 200, 201, 300, 3000]));
  if (roll === 1) return rng.pick([small.address, big.address, "f".repeat(64), "A".repeat(64), "ab"]);
  if (roll === 2)
    // a short name made of random printable ASCII, percent-encoded where it must be
    return encodeURIComponent(
      Array.from({ length: 1 + rng.int(12) }, () => String.fromCharCode(0x21 + rng.int(94))).join(""),
    );
  return rng.pick(SEGMENTS);
}

function target(rng: Rng): string {
  const roll = rng.int(20);
  if (roll === 0) return rng.pick(["*", "shop", "", "?", "//", "/?prefix=heads/", "http://h", "http://[::1"]);
  const parts: string[] = [];
  if (rng.int(3) > 0) parts.push(rng.int(4) ? "shop" : segment(rng));
  if (rng.int(4) > 0) parts.push(rng.pick(["refs", "objects", "refs", segment(rng)]));
  for (let n = rng.int(5); n > 0; n--)
    parts.push(rng.int(3) ? rng.pick(["heads", "tags", "main"]) : segment(rng));
  let path = `/${parts.join(rng.int(15) ? "/" : rng.pick(["//", "\\", "/./", "/../"]))}`;
  if (rng.int(6) === 0) path += "/";
  if (rng.int(5) === 0) path += `?prefix=${segment(rng)}${rng.int(3) ? "" : "&prefix=tags/"}`;
  if (rng.int(12) === 0) path = `http://127.0.0.1:${port}${path}`;
  return path;
}

test("request paths: any target parses to a well-formed request or throws a 400 ApiError", () => {
  const rng = prng(SEED);
  const problems: string[] = [];
  for (let i = 0; i < 20_000; i++) {
    const text = target(rng);
    try {
      const request = parseApiPath(text);
      const { database } = request;
      if (database === "" || database.includes("/") || database.includes("\u0000"))
        problems.push(`${text}: database ${JSON.stringify(database)}`);
      if (Buffer.byteLength(database) > 63) problems.push(`${text}: database of ${database.length} chars`);
      if (request.kind === "ref" && !isValidRefName(request.name))
        problems.push(`${text}: ref ${JSON.stringify(request.name)}`);
      if (request.kind === "object" && !/^[0-9a-f]{64}$/.test(request.address))
        problems.push(`${text}: object ${JSON.stringify(request.address)}`);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 400 || err.hint === "")
        problems.push(`${text}: threw ${String(err)}`);
    }
  }
  assert.deepEqual(problems.slice(0, 20), [], `seed ${SEED}`);
});

// --- the server: random requests -----------------------------------------------------------

const METHODS = ["GET", "GET", "GET", "GET", "HEAD", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const ODD_METHODS = ["TRACE", "PROPFIND", "get", "G", "MKCOL", "PURGE", "SEARCH", "QUERY", "LINK", "X-Y"];

function headerLines(rng: Rng): string[] {
  const lines: string[] = [];
  for (let n = rng.int(4); n > 0; n--) {
    lines.push(
      rng.pick([
        `Range: bytes=${rng.int(5000)}-${rng.int(5000)}`,
        "Range: bytes=0-0,-1,5-2",
        "Range: bytes=999999999999-",
        "Range: bytes=-0",
        "Range: lines=1-2",
        "Range: bytes=--",
        'If-None-Match: "x"',
        "If-Modified-Since: yesterday",
        "Accept-Encoding: gzip, br, *",
        "Accept: text/html",
        "Host: other.example",
        "Host: a\r\nHost: b",
        `X-Long: ${"v".repeat(rng.int(8000))}`,
        "X-Utf8: h\u00e9llo",
        "X-Empty:",
        "Authorization: Bearer x.y.z",
        "Cookie: __proto__=1; constructor=2",
        "Content-Type: application/json",
        "Upgrade: websocket\r\nConnection: upgrade",
        "Expect: 100-continue",
        "Expect: something-else",
        "Forwarded: for=1.2.3.4",
        "X-Forwarded-Host: evil",
      ]),
    );
  }
  return lines;
}

function request(rng: Rng): { text: string; method: string; path: string } {
  const method = rng.int(15) ? rng.pick(METHODS) : rng.pick(ODD_METHODS);
  const path = target(rng);
  const version = rng.int(20)
    ? "HTTP/1.1"
    : rng.pick(["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "FOO"]);
  const lines = [`${method} ${path} ${version}`, "Host: 127.0.0.1", ...headerLines(rng)];
  let body = "";
  const bodyKind = rng.int(6);
  if (bodyKind === 1) {
    body = rng.pick([
      "{}",
      '{"__proto__":{"x":1}}',
      "x".repeat(rng.int(70_000)),
      "GET /nope HTTP/1.1\r\n\r\n",
    ]);
    lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
  } else if (bodyKind === 2) {
    const payload = "y".repeat(rng.int(5000));
    body = `${payload.length.toString(16)}\r\n${payload}\r\n0\r\n\r\n`;
    lines.push("Transfer-Encoding: chunked");
  } else if (bodyKind === 3) {
    lines.push(rng.pick(["Content-Length: -1", "Content-Length: 1, 2", "Content-Length: abc"]));
  }
  lines.push("Connection: close");
  return { text: `${lines.join("\r\n")}\r\n\r\n${body}`, method, path };
}

test("random requests: a 4xx or a close within the deadline, never a 5xx or a byte from outside", async () => {
  const rng = prng(SEED ^ 0xa11);
  const problems: string[] = [];
  for (let round = 0; round < 25; round++) {
    const batch = Array.from({ length: 16 }, () => request(rng));
    const replies = await Promise.all(batch.map((r) => exchange([r.text])));
    batch.forEach((r, i) => {
      const problem = problemWith(r.path, replies[i], r.method);
      if (problem) problems.push(`${JSON.stringify(r.text.slice(0, 300))}: ${problem}`);
    });
    if (round % 5 === 4) await stillServes(`round ${round}`);
  }
  assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
  for (const database of asked) {
    assert.ok(!database.includes("/") && !database.includes("\u0000"), JSON.stringify(database));
    assert.ok(Buffer.byteLength(database) <= 63 && database !== "", JSON.stringify(database));
  }
});

test("random bytes on the wire: the connection is refused or closed, and the server keeps serving", async () => {
  const rng = prng(SEED ^ 0xb17e5);
  const problems: string[] = [];
  const good = `GET /shop/refs/heads/main HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;
  for (let round = 0; round < 10; round++) {
    const inputs = Array.from({ length: 12 }, () => {
      const kind = rng.int(4);
      if (kind === 0) return Buffer.from(Array.from({ length: 1 + rng.int(400) }, () => rng.int(256)));
      // a good request with a few bytes flipped
      const bytes = Buffer.from(good);
      for (let n = 1 + rng.int(4); n > 0; n--) bytes[rng.int(bytes.length)] = rng.int(256);
      if (kind === 1) return bytes;
      if (kind === 2) return Buffer.from(`${good.slice(0, rng.int(good.length))}\r\n\r\n`);
      return Buffer.concat([Buffer.from("\u0016\u0003\u0001\u0002\u0000\u0001"), bytes]); // a TLS hello's start
    });
    const replies = await Promise.all(
      inputs.map((bytes) => exchange([bytes], { until: 1, deadlineMs: 1000 })),
    );
    inputs.forEach((bytes, i) => {
      // Silence is an answer too: the bytes may be the start of a request (Node ignores leading
      // empty lines), whose end the server waits for until its headersTimeout.
      if (replies[i].timedOut && replies[i].data.length === 0) return;
      const problem = problemWith("", replies[i], "GET");
      if (problem) problems.push(`${JSON.stringify(bytes.toString("latin1").slice(0, 120))}: ${problem}`);
    });
  }
  assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
  await stillServes("random bytes");
});

// --- the server: hand-picked inputs --------------------------------------------------------

test("path traversal in every spelling never reaches a file outside the served objects", async () => {
  const traversals = [
    "/shop/objects/../secret.txt",
    "/shop/objects/..%2fsecret.txt",
    "/shop/objects/%2e%2e%2fsecret.txt",
    "/shop/objects/%2e%2e/%2e%2e/secret.txt",
    "/shop/objects/..%5c..%5csecret.txt",
    "/shop/objects/tmp/" + "f".repeat(64),
    `/shop/objects/${"f".repeat(64)}%00`,
    `/shop/objects/${"f".repeat(64)}/..`,
    "/shop/objects/%2Fetc%2Fpasswd",
    "/shop/objects//etc/passwd",
    "/shop/refs/heads/..%2F..%2F..%2Fsecret.txt",
    "/shop/refs/heads/%2e%2e/%2e%2e/secret.txt",
    "/shop/refs/heads/a%2F..%2F..%2F..%2Fsecret.txt",
    "/shop/refs/heads/%00",
    "/shop/refs/heads/..\\..\\secret.txt",
    "/shop/refs?prefix=../../",
    "/shop/refs?prefix=%2e%2e%2f",
    "/..",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "/%2e%2e%2fsecret.txt",
    "/%2E%2E",
    "/.",
    "/%2e",
    "/..%00",
    "/shop%2f..%2f..%2fsecret.txt",
    "/shop%00/refs/heads/main",
    "/C:%5Cwindows",
    "http://127.0.0.1/../../secret.txt",
    "//127.0.0.1/secret.txt",
    `/${"%2e%2e/".repeat(200)}secret.txt`,
    `/shop/refs/heads/${"a/".repeat(3000)}b`,
  ];
  for (const path of traversals) {
    for (const method of ["GET", "HEAD"]) {
      const reply = await exchange([`${method} ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`]);
      const problem = problemWith(path, reply, method);
      assert.equal(problem, null, `${method} ${path}: ${problem}`);
      const [res] = parseResponses(reply.data, method === "HEAD");
      if (res?.status === 200)
        assert.equal(res.body.toString(), method === "HEAD" ? "" : '{"refs":{}}\n', path);
      else if (res) assert.ok([400, 404, 414].includes(res.status), `${path}: ${res.status}`);
    }
  }
  await stillServes("traversals");
});

test("methods other than GET and HEAD are 405 naming the fix; HEAD has no body; CONNECT is refused", async () => {
  for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "LOCK", "PURGE"]) {
    const reply = await exchange([
      `${method} /shop/refs/heads/main HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}`,
    ]);
    const [res] = parseResponses(reply.data);
    assert.ok(res, method);
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.allow, "GET, HEAD");
    assert.equal(res.headers["strata-error"], "read-only");
    assert.match(JSON.parse(res.body.toString()).hint, /push to a directory/);
  }
  const options = parseResponses((await exchange(["OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"])).data);
  assert.equal(options[0]?.status, 405);
  const connectReply = await exchange(["CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"]);
  assert.ok(!connectReply.timedOut, "CONNECT left hanging");
  assert.ok(!/^HTTP\/1\.1 200/.test(connectReply.data.toString()), "CONNECT tunnelled");
  const head = await exchange([
    `HEAD /shop/objects/${small.address} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
  ]);
  const text = head.data.toString("latin1");
  assert.match(text, /^HTTP\/1\.1 200/);
  assert.match(text, new RegExp(`content-length: ${small.bytes.length}`, "i"));
  assert.ok(text.endsWith("\r\n\r\n"), "HEAD sent a body");
  await stillServes("methods");
});

test("a body on a GET is not taken for a second request (no smuggling); conflicting framing is refused", async () => {
  const inner = "GET /smuggled/refs/heads/main HTTP/1.1\r\nHost: x\r\n\r\n";
  const second = "GET /shop/refs/heads/main HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  const before = asked.length;
  const withLength = await exchange([
    `GET /shop HTTP/1.1\r\nHost: x\r\nContent-Length: ${inner.length}\r\n\r\n${inner}${second}`,
  ]);
  const chunk = `${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n`;
  const chunked = await exchange([
    `GET /shop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${chunk}${second}`,
  ]);
  for (const reply of [withLength, chunked]) {
    const responses = parseResponses(reply.data);
    assert.deepEqual(
      responses.map((r) => r.status),
      [200, 200],
    );
    assert.deepEqual(JSON.parse(responses[1].body.toString()), main);
  }
  assert.ok(!asked.slice(before).includes("smuggled"), "a body was served as a request");
  for (const framing of [
    "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "Content-Length: 5\r\nContent-Length: 6",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: xchunked",
    "Content-Length: 0x10",
    " Content-Length: 5",
  ]) {
    const reply = await exchange([`GET /shop HTTP/1.1\r\nHost: x\r\n${framing}\r\n\r\nhello${second}`]);
    const statuses = parseResponses(reply.data).map((r) => r.status);
    assert.ok(!reply.timedOut, framing);
    assert.ok(statuses[0] === 400 || statuses.length === 0, `${framing}: ${statuses}`);
  }
  await stillServes("smuggling attempts");
});

test("Range headers of every kind: the whole object (200) or the exact range, never a 5xx", async () => {
  const size = small.bytes.length;
  for (const range of [
    "bytes=0-9",
    "bytes=10-0",
    `bytes=${size}-`,
    `bytes=${size * 10}-${size * 20}`,
    "bytes=-10",
    "bytes=-0",
    "bytes=0-1,3-4,0-1",
    "bytes=abc",
    "bytes=",
    "pages=1-2",
    `bytes=0-${"9".repeat(400)}`,
  ]) {
    const res = await fetch(`${base}/shop/objects/${small.address}`, { headers: { range: range } });
    const body = Buffer.from(await res.arrayBuffer());
    assert.ok(res.status === 200 || res.status === 206 || res.status === 416, `${range}: ${res.status}`);
    if (res.status === 200) assert.deepEqual(body, small.bytes, range);
  }
});

test("headers: oversized, duplicated and odd ones are answered or refused, within the deadline", async () => {
  const cases = [
    `X-Big: ${"a".repeat(20_000)}`,
    Array.from({ length: 3000 }, (_, i) => `X-${i}: v`).join("\r\n"),
    "Host: a\r\nHost: b",
    "Host:",
    "X-Nul: a\u0000b",
    "X-Cr: a\rb",
    "Bad Header: x",
    ": no-name",
    "X-Obs-Fold: a\r\n b",
    `Cookie: ${"c=1; ".repeat(2000)}`,
    "Connection: keep-alive, Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__",
  ];
  for (const header of cases) {
    const reply = await exchange([`GET /shop HTTP/1.1\r\nHost: x\r\n${header}\r\nConnection: close\r\n\r\n`]);
    const problem = problemWith("/shop", reply, "GET");
    assert.equal(problem, null, `${header.slice(0, 60)}: ${problem}`);
  }
  // A long request line (the target alone: Node limits the head to 16 KiB).
  const long = await exchange([`GET /shop/refs?prefix=${"p".repeat(17_000)} HTTP/1.1\r\nHost: x\r\n\r\n`]);
  assert.equal(problemWith("", long, "GET"), null);
  await stillServes("odd headers");
});

test("oversized headers get 431 naming the limit, not a bare 400", async () => {
  const reply = await exchange([`GET /shop HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`]);
  const text = reply.data.toString("latin1");
  assert.match(text, /^HTTP\/1\.1 431/);
  assert.match(text, /header/i);
});

// --- the server: slow, vanishing and many clients ------------------------------------------

test("slowloris: clients trickling their headers do not delay others", async () => {
  const sockets: Socket[] = [];
  const timers: NodeJS.Timeout[] = [];
  try {
    for (let i = 0; i < 40; i++) {
      const socket = connect(port, "127.0.0.1", () => socket.write("GET /shop HTTP/1.1\r\nHost: x\r\n"));
      socket.on("error", () => {});
      sockets.push(socket);
      timers.push(setInterval(() => socket.writable && socket.write(`X-${i}: y\r\n`), 100));
    }
    // A body trickled byte by byte, after complete headers.
    for (let i = 0; i < 10; i++) {
      const socket = connect(port, "127.0.0.1", () =>
        socket.write("GET /shop HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"),
      );
      socket.on("error", () => {});
      sockets.push(socket);
      timers.push(setInterval(() => socket.writable && socket.write("z"), 100));
    }
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 5; i++) await stillServes("slowloris");
  } finally {
    for (const timer of timers) clearInterval(timer);
    for (const socket of sockets) socket.destroy();
  }
});

test("clients that stop reading a large object do not delay others", async () => {
  const sockets: Socket[] = [];
  try {
    for (let i = 0; i < 10; i++) {
      const socket = connect(port, "127.0.0.1", () =>
        socket.write(`GET /shop/objects/${big.address} HTTP/1.1\r\nHost: x\r\n\r\n`),
      );
      socket.pause();
      socket.on("error", () => {});
      sockets.push(socket);
    }
    await new Promise((r) => setTimeout(r, 300));
    await stillServes("stalled readers");
    const started = Date.now();
    const res = await fetch(`${base}/shop/objects/${big.address}`);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), big.bytes);
    assert.ok(Date.now() - started < DEADLINE_MS, `a full download took ${Date.now() - started} ms`);
  } finally {
    for (const socket of sockets) socket.destroy();
  }
});

const IDLE_MS = 500;

/** A server like `api`, whose object responses time out after IDLE_MS without progress. */
async function withIdleServer(run: (port: number) => Promise<void>): Promise<void> {
  const idle = await serveRemotesApi({
    port: 0,
    address: "127.0.0.1",
    log,
    idleTimeoutMs: IDLE_MS,
    databases: { remote: async (database) => (database === "shop" ? shop : null), close: async () => {} },
  });
  try {
    await run(idle.address.port);
  } finally {
    await idle.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How many of this process's open files are `file`. */
function opened(file: string): number {
  let n = 0;
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      if (readlinkSync(join("/proc/self/fd", fd)) === file) n++;
    } catch {
      // closed since it was listed
    }
  }
  return n;
}

test("a client that stops reading is disconnected after the idle timeout, and the object's file closed", async () => {
  // An object of its own: no other connection has its file open.
  const bytes = Buffer.alloc(8 * 1024 * 1024, 0x71);
  const address = await putObject(shop, bytes);
  const file = join(shop.root, "objects", address.slice(0, 2), address);
  await withIdleServer(async (idlePort) => {
    const socket = connect(idlePort, "127.0.0.1", () =>
      socket.write(`GET /shop/objects/${address} HTTP/1.1\r\nHost: x\r\n\r\n`),
    );
    socket.pause();
    socket.on("error", () => {});
    try {
      let until = Date.now() + DEADLINE_MS;
      while (opened(file) === 0 && Date.now() < until) await sleep(20);
      assert.equal(opened(file), 1, "the server did not open the object");
      const started = Date.now();
      until = started + IDLE_MS + DEADLINE_MS;
      while (opened(file) > 0 && Date.now() < until) await sleep(50);
      assert.equal(opened(file), 0, "the server still holds the object's file");
      assert.ok(Date.now() - started >= IDLE_MS - 100, `dropped after ${Date.now() - started} ms`);
      // The client, reading again, gets the bytes that were under way, then the end.
      let received = 0;
      socket.on("data", (d: Buffer) => {
        received += d.length;
      });
      socket.resume();
      await Promise.race([once(socket, "close"), sleep(DEADLINE_MS)]);
      assert.ok(socket.destroyed || socket.readableEnded, "the client's connection did not end");
      assert.ok(received < bytes.length, "the whole object arrived");
    } finally {
      socket.destroy();
    }
  });
});

test("a client that reads slowly, pausing for less than the idle timeout, gets the whole object", async () => {
  await withIdleServer(async (idlePort) => {
    const started = Date.now();
    const parts: Buffer[] = [];
    const socket = connect(idlePort, "127.0.0.1", () =>
      socket.write(`GET /shop/objects/${big.address} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`),
    );
    // Reads at most 1 MB in a burst, each after a pause of 40% of the idle timeout.
    let burst = 0;
    socket.on("data", (d: Buffer) => {
      parts.push(d);
      burst += d.length;
      if (burst >= 1 << 20) socket.pause();
    });
    socket.on("error", () => {});
    let open = true;
    void once(socket, "close").then(() => {
      open = false;
    });
    while (open && Date.now() - started < 30_000) {
      socket.pause();
      await sleep(IDLE_MS * 0.4);
      burst = 0;
      socket.resume();
      await sleep(20);
    }
    socket.destroy();
    const [res] = parseResponses(Buffer.concat(parts));
    assert.equal(res?.status, 200);
    assert.ok(res.complete, `${res.body.length} of ${big.bytes.length} bytes arrived`);
    assert.ok(res.body.equals(big.bytes));
    assert.ok(Date.now() - started > 2 * IDLE_MS, `too fast to tell: ${Date.now() - started} ms`);
  });
});

const openFiles = () => readdirSync("/proc/self/fd").length;

test("clients that vanish mid-response leak no file descriptor", async () => {
  await stillServes("warm-up");
  const baseline = openFiles();
  for (let i = 0; i < 30; i++) {
    await new Promise<void>((resolve) => {
      const socket = connect(port, "127.0.0.1", () =>
        socket.write(`GET /shop/objects/${big.address} HTTP/1.1\r\nHost: x\r\n\r\n`),
      );
      socket.on("error", () => {});
      socket.once("data", () => {
        if (i % 2) socket.resetAndDestroy();
        else socket.destroy();
        resolve();
      });
    });
  }
  const until = Date.now() + DEADLINE_MS;
  while (openFiles() > baseline + 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.ok(openFiles() <= baseline + 2, `open files: ${baseline} before, ${openFiles()} after`);
  await stillServes("vanishing clients");
});

test("300 concurrent connections, good and bad, are all answered", async () => {
  const rng = prng(SEED ^ 0xc0c0);
  const batch = Array.from({ length: 300 }, (_, i) =>
    i % 3 === 0
      ? {
          text: "GET /shop/refs/heads/main HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
          method: "GET",
          path: "/shop/refs/heads/main",
        }
      : request(rng),
  );
  const replies = await Promise.all(batch.map((r) => exchange([r.text], { deadlineMs: 10_000 })));
  const problems = batch
    .map((r, i) => [r, problemWith(r.path, replies[i], r.method)] as const)
    .filter(([, problem]) => problem !== null)
    .map(([r, problem]) => `${JSON.stringify(r.text.slice(0, 120))}: ${problem}`);
  assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
  await stillServes("300 connections");
});

// --- damaged refs on disk ------------------------------------------------------------------

function writeRefVersion(name: string, version: number, text: string): void {
  const [namespace, short] = [name.slice(0, name.indexOf("/")), name.slice(name.indexOf("/") + 1)];
  const refDir = join(shop.root, "refs", namespace, encodeURIComponent(short));
  mkdirSync(refDir, { recursive: true });
  writeFileSync(join(refDir, String(version)), text);
}

test("a truncated or garbage ref file: the server says which file and how to fix it; the client passes it on", async () => {
  for (const [i, text] of [
    "",
    "{",
    '{"commit":',
    "null",
    "[]",
    '"x"',
    "\u0000\u0001",
    '{"deleted":"yes"}',
  ].entries()) {
    const name = `heads/damaged-${i}`;
    writeRefVersion(name, 1, text);
    const res = await fetch(`${base}/shop/refs/${name}`);
    assert.equal(res.status, 500, JSON.stringify(text));
    const body = (await res.json()) as { error: string; hint: string };
    assert.match(body.error, /ref file .* is damaged/);
    assert.match(body.hint, /remove .* so that the ref's previous version becomes current/);
    const err = await new HttpRemote(`${base}/shop`).readRef(name).then(
      () => assert.fail("should have failed"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof RemoteStorageError, String(err));
    assert.equal(err.code, "XX001");
    assert.match(err.message, /is damaged/);
  }
  // One damaged ref fails the listing with the same message, and the server keeps serving.
  const listing = await fetch(`${base}/shop/refs?prefix=heads/`);
  assert.equal(listing.status, 500);
  await stillServes("damaged refs");
});

test("a ref file whose pack is not an object address is reported as damage, not served", async () => {
  writeRefVersion("heads/badpack", 1, JSON.stringify({ commit: "c", pack: "../../../etc/passwd" }));
  writeRefVersion("heads/badcommit", 1, JSON.stringify({ commit: "a b\n", pack: small.address }));
  for (const name of ["heads/badpack", "heads/badcommit"]) {
    const res = await fetch(`${base}/shop/refs/${name}`);
    assert.notEqual(res.status, 200, `${name} served as a ref value`);
    const err = await new HttpRemote(`${base}/shop`).readRef(name).then(
      () => assert.fail("should have failed"),
      (e: unknown) => e as RemoteStorageError,
    );
    assert.match(err.message, /damaged/);
    assert.doesNotMatch(err.message, /not served by a Strata remotes API/);
  }
});

test("a valid ref name whose encoded form is longer than a file name is a 4xx, not a 500", async () => {
  for (const short of ["@".repeat(86), "é".repeat(100), "#".repeat(90)]) {
    const name = `heads/${short}`;
    assert.ok(isValidRefName(name));
    const res = await fetch(`${base}/shop/refs/heads/${encodeURIComponent(short)}`);
    const text = await res.text();
    assert.ok(res.status === 400 || res.status === 404, `${res.status}: ${text.slice(0, 200)}`);
    assert.doesNotMatch(text, new RegExp(dir.replaceAll("/", "\\/")));
  }
});

// --- damaged packs, read by the client -----------------------------------------------------

async function packFile(frames: Buffer[]): Promise<Buffer> {
  return gzipSync(Buffer.concat(frames));
}

async function readFrames(address: string): Promise<number> {
  let frames = 0;
  for await (const _frame of readObjectFrames(new HttpRemote(`${base}/shop`), address)) frames++;
  return frames;
}

async function damage(address: string, pattern: RegExp): Promise<void> {
  const started = Date.now();
  const err = await readFrames(address).then(
    () => assert.fail("a damaged pack read without an error"),
    (e: unknown) => e,
  );
  assert.ok(
    err instanceof RemoteOperationError || err instanceof RemoteStorageError,
    `not a named error: ${String(err)}`,
  );
  assert.equal((err as { code: string }).code, "XX001", String(err));
  assert.match((err as Error).message, pattern);
  assert.match(String((err as { hint?: string }).hint), /push the commit again|restore the remote/);
  assert.ok(Date.now() - started < DEADLINE_MS, `took ${Date.now() - started} ms`);
}

test("a damaged pack (truncated, flipped, garbage frames) read over HTTP fails with XX001 naming it", async () => {
  const file = join(dir, "pack-writer");
  const writer = new ObjectWriter(file);
  await writer.section({ section: "pack", format: "strata-pack", version: 1 });
  await writer.write(encodeSection({ section: "changes" }));
  for (let i = 0; i < 50; i++)
    await writer.write(encodeData(Buffer.from(`${i}\trow ${"r".repeat(i * 37)}\n`)));
  await writer.write(encodeEnd());
  await writer.finish();
  const good = readFileSync(file);
  const goodAddress = await putObject(shop, good);
  assert.equal(await readFrames(goodAddress), 54);

  const rng = prng(SEED ^ 0xdead);
  // Each damaged copy is an object of its own (its address matches its bytes): only the reader
  // can tell.
  await damage(
    await putObject(shop, good.subarray(0, good.length >> 1)),
    /damaged.*(unexpected end|truncated)/,
  );
  await damage(await putObject(shop, good.subarray(0, 5)), /damaged/);
  for (let i = 0; i < 8; i++) {
    const flipped = Buffer.from(good);
    flipped[12 + rng.int(flipped.length - 20)] ^= 1 << rng.int(8);
    await damage(await putObject(shop, flipped), /damaged/);
  }
  const frames = Buffer.concat([encodeSection({ section: "pack" }), encodeEnd()]);
  await damage(
    await putObject(shop, await packFile([frames, Buffer.from([0x58, 0, 0, 0, 0])])),
    /unknown pack frame/,
  );
  await damage(await putObject(shop, await packFile([frames, Buffer.from([0x44, 0, 0, 1])])), /truncated/);
  await damage(
    await putObject(shop, await packFile([Buffer.from([0x53, 0, 0, 0, 4]), Buffer.from("null")])),
    /section/,
  );
  await damage(
    await putObject(shop, await packFile([Buffer.from([0x44, 0xff, 0, 0, 0])])),
    /frame of \d+ bytes/,
  );
  await damage(await putObject(shop, Buffer.from("not gzip at all")), /damaged/);
  // A frame claiming 40 MB, of which 4 MB follow (gzip makes them small on the wire).
  const bigHead = Buffer.from([0x44, 0, 0, 0, 0]);
  bigHead.writeUInt32BE(40 * 1024 * 1024, 1);
  await damage(await putObject(shop, gzipSync(Buffer.concat([bigHead, Buffer.alloc(4 << 20)]))), /truncated/);
  // Trailing garbage after a complete gzip member.
  await damage(await putObject(shop, Buffer.concat([good, Buffer.from("junk")])), /damaged/);
  await stillServes("damaged packs");
});

test("a large pack frame is assembled in linear time, whatever the chunking", () => {
  const frame = encodeData(Buffer.alloc(4 * 1024 * 1024));
  const concat = Buffer.concat;
  let copied = 0;
  Buffer.concat = (list: readonly Uint8Array[], totalLength?: number) => {
    const out = concat(list, totalLength);
    copied += out.length;
    return out;
  };
  try {
    const reader = new PackFrameReader();
    let frames = 0;
    for (let at = 0; at < frame.length; at += 16 * 1024)
      frames += reader.push(frame.subarray(at, at + 16 * 1024)).length;
    reader.finish();
    assert.equal(frames, 1);
  } finally {
    Buffer.concat = concat;
  }
  assert.ok(copied <= 3 * frame.length, `${copied} bytes copied to read a frame of ${frame.length}`);
});

// --- the client against a misbehaving server -----------------------------------------------

async function fakeServer(
  respond: (req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) => void,
): Promise<{ server: Server; url: string }> {
  const server = createServer(respond);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/shop` };
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}

/** Runs every HttpRemote read; each must succeed or fail with a RemoteStorageError, promptly. */
async function clientProblems(url: string): Promise<string[]> {
  const remote = new HttpRemote(url);
  const problems: string[] = [];
  const calls: [string, () => Promise<unknown>][] = [
    ["readRef", () => remote.readRef("heads/main")],
    ["listRefs", () => remote.listRefs("")],
    ["listRefs heads/", () => remote.listRefs("heads/")],
    ["hasObject", () => remote.hasObject(small.address)],
    [
      "openObject",
      async () => {
        const stream = await remote.openObject(small.address);
        for await (const _chunk of stream);
      },
    ],
  ];
  for (const [name, call] of calls) {
    const outcome = await Promise.race([
      call().then(
        () => null,
        (err: unknown) => err,
      ),
      new Promise((resolve) => setTimeout(() => resolve("timeout"), DEADLINE_MS)),
    ]);
    if (outcome === "timeout") problems.push(`${name}: no answer within the deadline`);
    else if (outcome !== null && !(outcome instanceof RemoteStorageError))
      problems.push(`${name}: ${String(outcome)}`);
    else if (outcome instanceof RemoteStorageError && (!outcome.hint || !/^[0-9A-Z]{5}$/.test(outcome.code)))
      problems.push(`${name}: an error without a hint or SQLSTATE: ${outcome.message}`);
  }
  return problems;
}

const JUNK_BODIES = [
  "",
  "{",
  "[]",
  "1",
  '"refs"',
  "{}",
  '{"refs":null}',
  '{"refs":[]}',
  '{"refs":"x"}',
  '{"refs":{"heads/main":null}}',
  '{"refs":{"heads/main":{"commit":1,"pack":2}}}',
  '{"refs":{"heads/..":{"commit":"c","pack":"x"}}}',
  '{"refs":{"heads/main":{"commit":"c","pack":"../../etc/passwd"}}}',
  '{"commit":"c","pack":"x"}',
  '{"commit":"c"}',
  '{"error":{"x":1},"hint":[],"sqlstate":"22023"}',
  '{"error":"e","hint":"h","sqlstate":"\\u0000\\u0000\\u0000\\u0000\\u0000"}',
  '{"__proto__":{"polluted":true},"refs":{"__proto__":{"commit":"c","pack":"x"}}}',
  '{"constructor":{"prototype":{"polluted":true}}}',
  "\u0000\u00ff binary",
  "x".repeat(100_000),
];

test("the client against random junk from a server: a named RemoteStorageError, never a TypeError or a hang", async () => {
  const rng = prng(SEED ^ 0xc11e);
  let status = 200;
  let body = "";
  let apiHeader = true;
  let errorHeader: string | null = null;
  let length: "right" | "short" | "none" = "right";
  const { server, url } = await fakeServer((_req, res) => {
    if (apiHeader) res.setHeader("strata-remotes-api", "1");
    if (errorHeader !== null) res.setHeader("strata-error", errorHeader);
    res.statusCode = status;
    if (length === "short") {
      res.setHeader("content-length", Buffer.byteLength(body) + 100);
      res.write(body);
      setTimeout(() => res.destroy(), 50);
      return;
    }
    if (length === "right") res.setHeader("content-length", Buffer.byteLength(body));
    res.end(body);
  });
  try {
    const problems: string[] = [];
    for (let i = 0; i < 40; i++) {
      status = rng.pick([200, 200, 200, 204, 301, 304, 400, 401, 404, 404, 409, 500, 503, 599]);
      body = rng.pick(JUNK_BODIES);
      apiHeader = rng.int(8) > 0;
      errorHeader = rng.pick([
        null,
        null,
        "ref-not-found",
        "object-not-found",
        "database-not-found",
        "internal",
        "",
      ]);
      length = rng.pick(["right", "right", "none", "short"] as const);
      for (const problem of await clientProblems(url))
        problems.push(`${status} ${errorHeader} ${length} ${JSON.stringify(body.slice(0, 60))}: ${problem}`);
    }
    assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
    assert.equal(({} as Record<string, unknown>).polluted, undefined, "Object.prototype polluted");
  } finally {
    await closeServer(server);
  }
});

test("the client against a server answering JSON null: a named error, not a TypeError", async () => {
  const problems: string[] = [];
  for (const [status, errorHeader] of [
    [200, null],
    [500, "internal"],
    [404, "database-not-found"],
  ] as const) {
    const { server, url } = await fakeServer((_req, res) => {
      res.setHeader("strata-remotes-api", "1");
      if (errorHeader) res.setHeader("strata-error", errorHeader);
      res.statusCode = status;
      res.end("null");
    });
    try {
      for (const problem of await clientProblems(url)) problems.push(`${status} null: ${problem}`);
    } finally {
      await closeServer(server);
    }
  }
  assert.deepEqual(problems, []);
});

test("the client against a server that stalls mid-object or never answers fails, it does not hang", async () => {
  const { server, url } = await fakeServer((req, res) => {
    res.setHeader("strata-remotes-api", "1");
    res.setHeader("content-length", small.bytes.length);
    if (req.url?.includes("/objects/")) {
      res.write(small.bytes.subarray(0, 100));
      setTimeout(() => res.socket?.resetAndDestroy(), 100);
    } else res.socket?.resetAndDestroy();
  });
  try {
    const remote = new HttpRemote(url);
    const stream = await remote.openObject(small.address);
    const err = await (async () => {
      for await (const _chunk of stream);
    })().then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(err instanceof RemoteStorageError, String(err));
    assert.equal(err.code, "08006");
    assert.match(err.message, /connection to .* broke/);
    await assert.rejects(remote.readRef("heads/main"), (e: unknown) => e instanceof RemoteStorageError);
  } finally {
    await closeServer(server);
  }
});

test("no error escaped to the process while the server was fuzzed", () => {
  assert.deepEqual(escaped.map(String), []);
});
