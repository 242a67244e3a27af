// Fuzzing the cluster's control-plane server (src/cluster/control-server.ts) and the request
// authentication in front of it (src/cluster/auth.ts), in this process: a real PeerKeys trusting
// one peer (whose JWKS a local server publishes and which signs whatever a case needs), stub
// handlers that count what reaches them, and a unix socket standing in for the store.
//
// Tokens malformed, unsigned, signed with the wrong key or alg, expired, for another audience or
// issuer, huge, with odd claims; forged role headers; JSON bodies invalid, huge, deeply nested,
// mistyped or with prototype keys; odd targets and methods; store tunnels refused, vanishing and
// broken; slow and many clients. For every input the server must answer a 4xx naming the cause
// (or close the connection for protocol garbage) within a deadline, act on nothing that did not
// authenticate and parse, never throw out of a handler, and keep answering well-formed requests.
//
// The seed is printed; STRATA_FUZZ_SEED=<n> repeats a run. Cases marked `todo` fail because of a
// defect in src/ (named in the todo).
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { request as httpsRequest } from "node:https";
import { type AddressInfo, connect, createServer as createNetServer, type Socket } from "node:net";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { exportJWK, generateKeyPair, type JWTPayload, SignJWT } from "jose";
import pino from "pino";
import { NodeKey, PeerKeys } from "../../src/cluster/auth.ts";
import { ControlRefusal, type ControlServer, startControlServer } from "../../src/cluster/control-server.ts";
import type { VoteRequest } from "../../src/cluster/failover.ts";
import { outboundTlsOptions } from "../../src/cluster/peer-tls.ts";
import type { Heartbeat } from "../../src/cluster/peers.ts";
import { fuzzSeed, prng, type RawReply, type Rng, rawExchange } from "../support/fuzz.ts";
import { tempDir, waitFor } from "../support/postgres.ts";
import { selfSignedCertificate } from "../support/tls.ts";

const SEED = fuzzSeed("control server fuzz");

const DEADLINE_MS = 3000;
const PEER_KID = "peer-a-key";

/** Log lines at debug (20) and above. */
const logged: { level: number; msg: string; err?: string }[] = [];
const log = pino(
  { level: "debug" },
  {
    write: (line: string) => {
      logged.push(JSON.parse(line));
    },
  },
);
const escaped: unknown[] = [];
const onEscape = (err: unknown) => escaped.push(err);

let me: NodeKey;
let peerPrivate: CryptoKey;
let peerPublicX: string;
let jwksServer: Server;
let jwksRequests = 0;
let jwksDelayMs = 0;
let peerKeys: PeerKeys;
let control: ControlServer;
let port: number;
let base: string;
let dir: string;
let storePath: string;
let store: import("node:net").Server;
let storeConnections = 0;
const storeSockets = new Set<Socket>();
/** What the stub handlers were given. */
const reached = {
  heartbeats: [] as Heartbeat[],
  votes: [] as VoteRequest[],
  tunnels: 0,
  refused: [] as string[],
};
let tunnelTarget: () => Promise<string>;

before(async () => {
  process.on("uncaughtException", onEscape);
  process.on("unhandledRejection", onEscape);
  dir = tempDir("strata-control-fuzz-");
  me = await NodeKey.generate();
  const pair = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  peerPrivate = pair.privateKey;
  const jwk = await exportJWK(pair.publicKey);
  peerPublicX = jwk.x!;
  const jwks = JSON.stringify({ keys: [{ ...jwk, kid: PEER_KID, alg: "EdDSA" }] });
  jwksServer = createServer((_req, res) => {
    jwksRequests++;
    setTimeout(() => res.writeHead(200, { "content-type": "application/json" }).end(jwks), jwksDelayMs);
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve));
  const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`;
  peerKeys = new PeerKeys({
    peers: [{ name: "a", jwksUrl }],
    ownKid: me.kid,
    tls: outboundTlsOptions({ server_name_urls: [], server_name_dns: [] }),
    log,
  });
  await peerKeys.peerKid("a");

  storePath = join(dir, "store.sock");
  store = createNetServer((socket) => {
    storeConnections++;
    storeSockets.add(socket);
    socket.on("close", () => storeSockets.delete(socket));
    socket.on("error", () => {});
    socket.pipe(socket); // an echoing store
  });
  await new Promise<void>((resolve) => store.listen(storePath, resolve));
  tunnelTarget = async () => storePath;

  control = await startControlServer(
    { port: 0, address: "127.0.0.1" },
    me,
    peerKeys,
    {
      self: () => ({ role: "primary", epoch: 7 }),
      heartbeat: async (_peer, theirs) => {
        reached.heartbeats.push(theirs);
        return { role: "primary", epoch: 7, node_id: "me" };
      },
      vote: async (_peer, request) => {
        reached.votes.push(request);
        return { granted: false, reason: "fuzz" };
      },
      storeTunnel: async () => {
        reached.tunnels++;
        return tunnelTarget();
      },
      refused: (reason) => {
        reached.refused.push(reason);
      },
    },
    log,
  );
  port = control.address.port;
  base = `http://127.0.0.1:${port}`;
});

after(async () => {
  await control?.close();
  peerKeys?.stop();
  jwksServer?.closeAllConnections();
  await new Promise((resolve) => jwksServer?.close(resolve));
  for (const socket of storeSockets) socket.destroy();
  await new Promise((resolve) => store?.close(resolve));
  process.off("uncaughtException", onEscape);
  process.off("unhandledRejection", onEscape);
});

// --- tokens and requests -------------------------------------------------------------------

const b64 = (value: unknown) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
const now = () => Math.floor(Date.now() / 1000);
let jtis = 0;

function claims(overrides: Record<string, unknown> = {}): JWTPayload {
  const iat = now();
  return {
    iss: "strata-cluster",
    aud: me.kid,
    iat,
    exp: iat + 30,
    jti: `fuzz-${SEED}-${++jtis}`,
    ...overrides,
  };
}

/**
 * A token the peer signs: its key, EdDSA, its kid, unless `header` says otherwise. Signed by hand,
 * so that any header and payload (text or bytes, not only what jose would make) can be sent.
 */
async function signed(
  payload: JWTPayload | string | Buffer = claims(),
  header: Record<string, unknown> = {},
  key = peerPrivate,
): Promise<string> {
  const text = typeof payload === "string" || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
  const input = `${b64({ alg: "EdDSA", kid: PEER_KID, ...header })}.${Buffer.from(text).toString("base64url")}`;
  const signature = await crypto.subtle.sign("Ed25519", key, new TextEncoder().encode(input));
  return `${input}.${Buffer.from(signature).toString("base64url")}`;
}

const HEARTBEAT = JSON.stringify({ role: "standby", epoch: 7, node_id: "fuzzer" });
const VOTE = JSON.stringify({ epoch: 8, node_id: "fuzzer", replay_lsn: "0/16B3748" });

interface Answer {
  status: number;
  body: { error?: string; code?: string } & Record<string, unknown>;
  headers: Headers;
  ms: number;
}

async function post(path: string, body: string, authorization?: string, extra: Record<string, string> = {}) {
  const started = Date.now();
  const headers: Record<string, string> = { "content-type": "application/json", ...extra };
  if (authorization !== undefined) headers.authorization = authorization;
  let res: Response;
  let text: string;
  try {
    res = await fetch(`${base}${path}`, {
      method: "POST",
      headers,
      body,
      signal: AbortSignal.timeout(DEADLINE_MS * 3),
    });
    text = await res.text();
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    return {
      status: 0,
      body: { error: `fetch failed: ${cause?.code ?? ""} ${cause?.message ?? String(err)}` },
      headers: new Headers(),
      ms: Date.now() - started,
    } satisfies Answer;
  }
  let parsed: Answer["body"];
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = { error: `(not JSON) ${text}` };
  }
  return {
    status: res.status,
    body: parsed,
    headers: res.headers,
    ms: Date.now() - started,
  } satisfies Answer;
}

/** A valid heartbeat is still answered, promptly. */
async function stillServes(what: string): Promise<void> {
  const before = reached.heartbeats.length;
  const answer = await post("/cluster/heartbeat", HEARTBEAT, `Bearer ${await signed()}`);
  assert.equal(answer.status, 200, `after ${what}: ${JSON.stringify(answer.body)}`);
  assert.equal(answer.body.node_id, "me");
  assert.equal(reached.heartbeats.length, before + 1);
  // Promptly: within the deadline (a bound for a stall, not speed; the suite's machine is loaded).
  assert.ok(answer.ms < DEADLINE_MS, `after ${what}: took ${answer.ms} ms`);
}

type Reply = RawReply;

const exchange = (chunks: (string | Buffer)[], deadlineMs = DEADLINE_MS) =>
  rawExchange(port, chunks, { deadlineMs });

const statusOf = (reply: Reply) =>
  Number(/^HTTP\/1\.[01] (\d{3})/.exec(reply.data.toString("latin1"))?.[1] ?? 0);
const errorLogs = () => logged.filter((line) => line.level >= 50);

// --- authentication ------------------------------------------------------------------------

test("tokens of every wrong kind are refused with 401 naming the cause; nothing reaches the handlers", async () => {
  const stranger = (await generateKeyPair("EdDSA", { crv: "Ed25519" })).privateKey;
  const good = await signed();
  const [goodHead, goodBody, goodSig] = good.split(".");
  const flipped = `${goodHead}.${goodBody}.${goodSig.slice(0, 10)}${goodSig[10] === "A" ? "B" : "A"}${goodSig.slice(11)}`;
  const hmac = async (alg: string) =>
    new SignJWT(claims())
      .setProtectedHeader({ alg, kid: PEER_KID })
      .sign(Buffer.from(peerPublicX, "base64url"));
  const cases: [string, string | undefined, string, RegExp][] = [
    ["no header", undefined, "missing", /no Authorization header/],
    ["empty", "", "missing", /no Authorization header/],
    ["Basic", "Basic dXNlcjpwYXNz", "malformed", /scheme "Basic"/],
    ["bare token", good, "malformed", /not "Bearer <JWT>"/],
    ["Bearer alone", "Bearer", "malformed", /not a compact JWS/],
    ["two parts", "Bearer a.b", "malformed", /not a compact JWS/],
    ["four parts", `Bearer ${good}.x`, "malformed", /not a compact JWS/],
    ["two spaces", `Bearer  ${good}`, "malformed", /not a compact JWS/],
    ["bad characters", "Bearer a+b.c/d.e=", "malformed", /not a compact JWS/],
    ["header null", `Bearer ${b64("null")}.${goodBody}.${goodSig}`, "malformed", /header cannot be decoded/],
    ["header array", `Bearer ${b64([])}.${goodBody}.${goodSig}`, "malformed", /header cannot be decoded/],
    ["header not JSON", `Bearer ${b64("{")}.${goodBody}.${goodSig}`, "malformed", /header cannot be decoded/],
    ["header not base64", `Bearer ${"_".repeat(7)}.${goodBody}.${goodSig}`, "malformed", /cannot be decoded/],
    ["alg none", `Bearer ${b64({ alg: "none", kid: PEER_KID })}.${goodBody}.`, "bad-signature", /unsigned/],
    ["no alg", `Bearer ${b64({ kid: PEER_KID })}.${goodBody}.${goodSig}`, "bad-signature", /unsigned/],
    ["alg HS256 (key confusion)", `Bearer ${await hmac("HS256")}`, "bad-signature", /uses alg HS256/],
    ["alg HS512", `Bearer ${await hmac("HS512")}`, "bad-signature", /uses alg HS512/],
    [
      "alg object",
      `Bearer ${b64({ alg: { x: 1 }, kid: PEER_KID })}.${goodBody}.${goodSig}`,
      "bad-signature",
      /alg/,
    ],
    ["no kid", `Bearer ${b64({ alg: "EdDSA" })}.${goodBody}.${goodSig}`, "malformed", /names no key/],
    [
      "kid number",
      `Bearer ${b64({ alg: "EdDSA", kid: 1 })}.${goodBody}.${goodSig}`,
      "malformed",
      /names no key/,
    ],
    [
      "kid empty",
      `Bearer ${b64({ alg: "EdDSA", kid: "" })}.${goodBody}.${goodSig}`,
      "malformed",
      /names no key/,
    ],
    [
      "kid __proto__",
      `Bearer ${await signed(claims(), { kid: "__proto__" })}`,
      "unknown-key",
      /no configured/,
    ],
    [
      "kid constructor",
      `Bearer ${await signed(claims(), { kid: "constructor" })}`,
      "unknown-key",
      /no configured/,
    ],
    ["kid toString", `Bearer ${await signed(claims(), { kid: "toString" })}`, "unknown-key", /no configured/],
    [
      "kid 6000 chars",
      `Bearer ${await signed(claims(), { kid: "k".repeat(6000) })}`,
      "unknown-key",
      /no configured/,
    ],
    [
      "stranger's key",
      `Bearer ${await signed(claims(), {}, stranger)}`,
      "bad-signature",
      /not signed by that peer/,
    ],
    ["flipped signature", `Bearer ${flipped}`, "bad-signature", /does not verify/],
    ["empty signature", `Bearer ${goodHead}.${goodBody}.`, "bad-signature", /does not verify/],
    ["crit", `Bearer ${await signed(claims(), { crit: ["exp"] })}`, "malformed", /not a valid JWS/],
    [
      "b64 false",
      `Bearer ${await signed(claims(), { b64: false, crit: ["b64"] })}`,
      "malformed",
      /claims|JWS/,
    ],
    ["payload not JSON", `Bearer ${await signPayload("not json")}`, "malformed", /claims are not JSON/],
    ["payload null", `Bearer ${await signPayload("null")}`, "malformed", /not a JSON object/],
    ["payload array", `Bearer ${await signPayload("[1,2]")}`, "malformed", /no valid aud/],
    ["payload string", `Bearer ${await signPayload('"x"')}`, "malformed", /no valid aud|object/],
    [
      "payload invalid UTF-8",
      `Bearer ${await signPayload(Buffer.from([0xff, 0xfe]))}`,
      "malformed",
      /not JSON/,
    ],
    ["no iss", `Bearer ${await signed(claims({ iss: undefined }))}`, "malformed", /issuer undefined/],
    ["wrong iss", `Bearer ${await signed(claims({ iss: "dolt" }))}`, "malformed", /issuer "dolt"/],
    ["iss object", `Bearer ${await signed(claims({ iss: { a: 1 } }))}`, "malformed", /issuer/],
    ["wrong aud", `Bearer ${await signed(claims({ aud: "someone-else" }))}`, "audience", /another node/],
    ["aud two", `Bearer ${await signed(claims({ aud: [me.kid, "x"] }))}`, "malformed", /no valid aud/],
    ["aud empty list", `Bearer ${await signed(claims({ aud: [] }))}`, "malformed", /no valid aud/],
    ["aud number", `Bearer ${await signed(claims({ aud: 5 }))}`, "malformed", /no valid aud/],
    ["iat string", `Bearer ${await signed(claims({ iat: "now" }))}`, "malformed", /no valid iat/],
    ["exp missing", `Bearer ${await signed(claims({ exp: undefined }))}`, "malformed", /no valid exp/],
    ["exp null", `Bearer ${await signed(claims({ exp: null }))}`, "malformed", /no valid exp/],
    ["jti empty", `Bearer ${await signed(claims({ jti: "" }))}`, "malformed", /no valid jti/],
    ["jti number", `Bearer ${await signed(claims({ jti: 42 }))}`, "malformed", /no valid jti/],
    [
      "expired",
      `Bearer ${await signed(claims({ iat: now() - 100, exp: now() - 60 }))}`,
      "expired",
      /expired at/,
    ],
    [
      "future",
      `Bearer ${await signed(claims({ iat: now() + 600, exp: now() + 630 }))}`,
      "lifetime",
      /future/,
    ],
    ["too long", `Bearer ${await signed(claims({ exp: now() + 61 }))}`, "lifetime", /at most 60 s/],
    ["huge numbers", `Bearer ${await signed(claims({ iat: 1e308, exp: 1e308 }))}`, "lifetime", /future/],
    ["long expired", `Bearer ${await signed(claims({ iat: -1e9, exp: -1e9 + 30 }))}`, "expired", /expired/],
  ];
  const before = reached.heartbeats.length;
  const problems: string[] = [];
  for (const [name, authorization, code, pattern] of cases) {
    const answer = await post("/cluster/heartbeat", HEARTBEAT, authorization);
    if (answer.status !== 401) problems.push(`${name}: ${answer.status} ${JSON.stringify(answer.body)}`);
    else if (answer.body.code !== code) problems.push(`${name}: code ${answer.body.code}, not ${code}`);
    else if (!pattern.test(String(answer.body.error))) problems.push(`${name}: ${answer.body.error}`);
    // The peers' names and addresses are not for a client that has not shown it is one.
    if (JSON.stringify(answer.body).includes("jwks.json")) problems.push(`${name}: names a peer's JWKS URL`);
    if (JSON.stringify(answer.body).length > 1_000)
      problems.push(`${name}: a ${JSON.stringify(answer.body).length}-byte answer`);
    if (answer.ms > DEADLINE_MS) problems.push(`${name}: took ${answer.ms} ms`);
  }
  assert.deepEqual(problems, []);
  // This node's log has them, for its operator.
  assert.ok(
    logged.some(
      (line) =>
        line.msg === "cluster: refused an unauthenticated request" &&
        /^configured peers: a at http:\/\/127\.0\.0\.1:\d+\/\.well-known\/jwks\.json$/.test(
          String((line as { detail?: string }).detail),
        ),
    ),
    "the log names the configured peers for an unknown key",
  );
  assert.equal(reached.heartbeats.length, before, "a refused request reached the heartbeat handler");
  // A token is good once; an aud of one element is the same audience.
  const once = await signed();
  assert.equal((await post("/cluster/heartbeat", HEARTBEAT, `Bearer ${once}`)).status, 200);
  const again = await post("/cluster/heartbeat", HEARTBEAT, `Bearer ${once}`);
  assert.equal(again.status, 401);
  assert.equal(again.body.code, "replayed");
  assert.equal(
    (await post("/cluster/heartbeat", HEARTBEAT, `bearer ${await signed(claims({ aud: [me.kid] }))}`)).status,
    200,
  );
  assert.deepEqual(errorLogs(), []);
});

const signPayload = (payload: string | Buffer) => signed(payload);

test("random tokens: 200 exactly when the peer signed valid claims, else 401; never a 5xx", async () => {
  const rng = prng(SEED ^ 0x70c);
  const stranger = (await generateKeyPair("EdDSA", { crv: "Ed25519" })).privateKey;
  const problems: string[] = [];
  const usedJtis = new Set<string>();
  const randomText = (r: Rng) =>
    r.pick([
      "",
      "x",
      "strata-cluster",
      me.kid,
      PEER_KID,
      "__proto__",
      "\u0000",
      "é".repeat(r.int(50)),
      "z".repeat(r.int(3000)),
    ]);
  for (let i = 0; i < 120; i++) {
    let valid = true;
    const payload: Record<string, unknown> = claims();
    for (const field of ["iss", "aud", "iat", "exp", "jti"]) {
      if (rng.int(6) > 0) continue;
      payload[field] = rng.pick([
        undefined,
        null,
        0,
        -1,
        1e21,
        "",
        [],
        {},
        true,
        randomText(rng),
        [randomText(rng)],
      ]);
    }
    if (rng.int(8) === 0) {
      // extra claims are ignored
      Object.defineProperty(payload, rng.pick(["__proto__", "constructor", "sub", "x".repeat(100)]), {
        value: rng.pick([1, "x", { a: [] }]),
        enumerable: true,
      });
    }
    let token: string;
    const kind = rng.int(10);
    if (kind === 0) {
      valid = false;
      token = await signed(payload as JWTPayload, {}, stranger);
    } else if (kind === 1) {
      const kid = randomText(rng) || "k";
      if (kid !== PEER_KID) valid = false;
      token = await signed(payload as JWTPayload, { kid });
    } else if (kind === 2) {
      valid = false;
      const parts = (await signed(payload as JWTPayload)).split(".");
      const at = rng.int(3);
      parts[at] = b64(randomText(rng));
      token = parts.join(".");
    } else if (kind === 3) {
      valid = false;
      token = Array.from({ length: 1 + rng.int(4) }, () => b64(randomText(rng))).join(".");
    } else {
      try {
        token = await signed(payload as JWTPayload);
      } catch {
        continue; // jose refuses to sign it: not an input the server can get from a peer
      }
    }
    // The claims' rules (auth.ts), restated: a mutation may well have produced a valid value.
    const { iss, aud, iat, exp, jti } = payload;
    const t = Date.now() / 1000;
    valid &&=
      iss === "strata-cluster" &&
      (aud === me.kid || (Array.isArray(aud) && aud.length === 1 && aud[0] === me.kid)) &&
      typeof iat === "number" &&
      typeof exp === "number" &&
      exp - iat <= 60 &&
      iat <= t + 5 &&
      t <= exp + 5 &&
      typeof jti === "string" &&
      jti !== "" &&
      !usedJtis.has(jti);
    if (valid) usedJtis.add(jti as string);
    const answer = await post("/cluster/heartbeat", HEARTBEAT, `Bearer ${token}`);
    const expected = valid ? 200 : 401;
    if (answer.status !== expected)
      problems.push(
        `${JSON.stringify(payload).slice(0, 200)} (kind ${kind}): ${answer.status} ${answer.body.error}`,
      );
    if (answer.status === 401 && (typeof answer.body.error !== "string" || !answer.body.code))
      problems.push(`401 without a cause: ${JSON.stringify(answer.body)}`);
  }
  assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
  assert.deepEqual(errorLogs(), []);
  await stillServes("random tokens");
});

test("forged role headers without a valid token change nothing and reach no handler", async () => {
  const before = { ...reached, heartbeats: reached.heartbeats.length, votes: reached.votes.length };
  for (const authorization of [undefined, "Bearer a.b.c", `Bearer ${await signed(claims({ aud: "x" }))}`]) {
    for (const path of ["/cluster/heartbeat", "/cluster/vote"]) {
      const answer = await post(path, path.endsWith("vote") ? VOTE : HEARTBEAT, authorization, {
        "x-dolt-cluster-role": "standby",
        "x-dolt-cluster-role-epoch": "999",
      });
      assert.equal(answer.status, 401, path);
      // Our own role comes back, whatever the request claimed.
      assert.equal(answer.headers.get("x-dolt-cluster-role"), "primary");
      assert.equal(answer.headers.get("x-dolt-cluster-role-epoch"), "7");
    }
    const upgrade = await exchange([
      `GET /cluster/store HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: strata-store\r\nx-dolt-cluster-role: primary\r\nx-dolt-cluster-role-epoch: 999\r\n${authorization ? `Authorization: ${authorization}\r\n` : ""}\r\n`,
    ]);
    assert.equal(statusOf(upgrade), 401);
    assert.ok(upgrade.closed);
  }
  assert.equal(reached.heartbeats.length, before.heartbeats);
  assert.equal(reached.votes.length, before.votes);
  assert.equal(reached.tunnels, before.tunnels);
});

// --- bodies --------------------------------------------------------------------------------

test("bodies invalid, mistyped, huge, deeply nested or with prototype keys: 400/413 naming the problem", async () => {
  const deep = `${"[".repeat(30_000)}${"]".repeat(30_000)}`;
  const deepObject = `{"role":"standby","epoch":7,"node_id":"n","store":${'{"a":'.repeat(5000)}1${"}".repeat(5000)}}`;
  const bodies: [string, number, RegExp][] = [
    ["", 400, /not JSON/],
    ["{", 400, /not JSON/],
    ["null", 400, /malformed/],
    ["[]", 400, /malformed/],
    ["1", 400, /malformed/],
    ['"standby"', 400, /malformed/],
    ["{}", 400, /malformed.*role/],
    ['{"role":"leader","epoch":7,"node_id":"n"}', 400, /role/],
    ['{"role":"standby","epoch":-1,"node_id":"n"}', 400, /epoch/],
    ['{"role":"standby","epoch":1.5,"node_id":"n"}', 400, /epoch/],
    ['{"role":"standby","epoch":"7","node_id":"n"}', 400, /epoch/],
    ['{"role":"standby","epoch":1e300,"node_id":"n"}', 400, /epoch/],
    ['{"role":"standby","epoch":7,"node_id":""}', 400, /node_id/],
    [`{"role":"standby","epoch":7,"node_id":"${"n".repeat(101)}"}`, 400, /node_id/],
    ['{"role":"standby","epoch":7,"node_id":"n","store":[]}', 400, /store/],
    ['{"role":"standby","epoch":7,"node_id":"n","store":{"in_recovery":"yes"}}', 400, /in_recovery/],
    [
      '{"role":"standby","epoch":7,"node_id":"n","store":{"in_recovery":true,"replay_lsn":"1/2/3"}}',
      400,
      /replay_lsn/,
    ],
    ['{"role":"standby","epoch":7,"node_id":"n","primary_contact_ms":-5}', 400, /primary_contact_ms/],
    ['{"__proto__":{"role":"standby","epoch":7,"node_id":"n"}}', 400, /malformed/],
    ['{"constructor":{"prototype":{"role":"standby"}},"epoch":7,"node_id":"n"}', 400, /role/],
    [deep, 400, /not JSON|malformed/],
    [deepObject, 400, /store/],
    [Buffer.from([0xff, 0xfe, 0x7b]).toString("latin1"), 400, /not JSON/],
    [`${HEARTBEAT}${" ".repeat(66_000)}`, 413, /too large/],
  ];
  const problems: string[] = [];
  const before = reached.heartbeats.length;
  for (const [body, status, pattern] of bodies) {
    const answer = await post("/cluster/heartbeat", body, `Bearer ${await signed()}`);
    if (answer.status !== status || !pattern.test(String(answer.body.error)))
      problems.push(`${JSON.stringify(body.slice(0, 80))}: ${answer.status} ${answer.body.error}`);
  }
  // Vote requests likewise.
  for (const [body, status] of [
    ["{", 400],
    ['{"epoch":8,"node_id":"n","replay_lsn":"nope"}', 400],
    ['{"epoch":8,"node_id":"n"}', 400],
    ['{"__proto__":{"epoch":8,"node_id":"n","replay_lsn":"0/1"}}', 400],
  ] as const) {
    const answer = await post("/cluster/vote", body, `Bearer ${await signed()}`);
    if (answer.status !== status)
      problems.push(`vote ${body.slice(0, 60)}: ${answer.status} ${answer.body.error}`);
  }
  assert.deepEqual(problems, []);
  assert.equal(reached.heartbeats.length, before, "a malformed heartbeat reached the handler");
  assert.equal(({} as Record<string, unknown>).role, undefined, "Object.prototype polluted");
  // A body just under the limit, padded with whitespace, is fine.
  const padded = `${HEARTBEAT}${" ".repeat(64 * 1024 - HEARTBEAT.length)}`;
  assert.equal((await post("/cluster/heartbeat", padded, `Bearer ${await signed()}`)).status, 200);
  assert.deepEqual(errorLogs(), []);
  await stillServes("bodies");
});

test("random bodies from a valid peer: 200 or 400/413, and the handler gets only well-formed heartbeats", async () => {
  const rng = prng(SEED ^ 0xb0d1);
  const values = [
    null,
    true,
    0,
    -1,
    7,
    1.5,
    1e9,
    1e10,
    "",
    "standby",
    "primary",
    "0/0",
    "FFFFFFFF/FFFFFFFF",
    [],
    {},
  ];
  const problems: string[] = [];
  for (let i = 0; i < 80; i++) {
    const body: Record<string, unknown> = { role: "standby", epoch: 7, node_id: "n" };
    for (let n = rng.int(4); n > 0; n--) {
      const key = rng.pick(["role", "epoch", "node_id", "store", "primary_contact_ms", "__proto__", "extra"]);
      body[key] =
        key === "store" && rng.int(2)
          ? { in_recovery: rng.int(2) === 0, replay_lsn: rng.pick(values), current_lsn: "0/1" }
          : rng.pick(values);
    }
    let text = JSON.stringify(body);
    if (rng.int(10) === 0) text = text.slice(0, rng.int(text.length));
    const answer = await post("/cluster/heartbeat", text, `Bearer ${await signed()}`);
    if (![200, 400].includes(answer.status)) problems.push(`${text}: ${answer.status} ${answer.body.error}`);
  }
  for (const heartbeat of reached.heartbeats) {
    if (!["primary", "standby", "detected_broken_config"].includes(heartbeat.role))
      problems.push(`handler got role ${heartbeat.role}`);
    if (!Number.isSafeInteger(heartbeat.epoch) || heartbeat.epoch < 0)
      problems.push(`handler got epoch ${heartbeat.epoch}`);
  }
  assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
});

test("a token whose exp is out of Date's range is refused as expired, not as an internal failure", async () => {
  const answer = await post(
    "/cluster/heartbeat",
    HEARTBEAT,
    `Bearer ${await signed(claims({ iat: -1e308, exp: -1e308 }))}`,
  );
  assert.equal(answer.status, 401);
  assert.equal(answer.body.code, "expired", String(answer.body.error));
});

/** Sends a request with a body of `size` bytes, then a valid heartbeat on the same connection. */
async function oversizedThenValid(path: string, size: number): Promise<string> {
  const first = await signed();
  const second = await signed();
  return new Promise<string>((resolve) => {
    const socket = connect(port, "127.0.0.1", () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${first}\r\nContent-Length: ${size}\r\n\r\n`,
      );
      socket.write("v".repeat(size));
      setTimeout(
        () =>
          socket.write(
            `POST /cluster/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${second}\r\nContent-Length: ${HEARTBEAT.length}\r\n\r\n${HEARTBEAT}`,
          ),
        200,
      );
    });
    let text = "";
    socket.on("data", (d) => {
      text += d;
    });
    socket.on("error", (err) => {
      text += `[${err.message}]`;
    });
    const timer = setTimeout(() => socket.destroy(), 2000);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(text);
    });
  });
}

test("an oversized vote request is a 413, as an oversized heartbeat is", async () => {
  const answer = await oversizedThenValid("/cluster/vote", 70_000);
  assert.match(answer, /^HTTP\/1\.1 413 /);
});

test("after a 413 the connection either closes or serves the next request", async () => {
  const answer = await oversizedThenValid("/cluster/heartbeat", 300_000);
  assert.match(answer, /^HTTP\/1\.1 413 /);
  assert.ok(
    /Connection: close/i.test(answer) || /HTTP\/1\.1 200 OK[\s\S]*"node_id":"me"/.test(answer),
    JSON.stringify(answer.replace(/\r\n/g, " ")),
  );
});

// --- targets and methods -------------------------------------------------------------------

test("unknown endpoints and methods are 404 JSON naming the request; the JWKS is served to GET", async () => {
  for (const [method, path] of [
    ["GET", "/cluster/heartbeat"],
    ["PUT", "/cluster/heartbeat"],
    ["DELETE", "/cluster/vote"],
    ["POST", "/cluster/heartbeat/"],
    ["POST", "/CLUSTER/heartbeat"],
    ["POST", "/cluster/%68eartbeat"],
    ["GET", "/"],
    ["GET", "/cluster/store"],
    ["OPTIONS", "/.well-known/jwks.json"],
    ["POST", "/.well-known/jwks.json"],
  ]) {
    const res = await fetch(`${base}${path}`, {
      method,
      body: method === "GET" || method === "OPTIONS" ? undefined : "{}",
    });
    assert.equal(res.status, 404, `${method} ${path}`);
    assert.match(((await res.json()) as { error: string }).error, /no such endpoint/);
  }
  for (const path of ["/.well-known/jwks.json", "/.well-known/jwks.json?x=1", "/db/.well-known/jwks.json"]) {
    const res = await fetch(`${base}${path}`);
    assert.equal(res.status, 200, path);
    const { keys } = (await res.json()) as { keys: { kid: string; d?: string }[] };
    assert.equal(keys[0].kid, me.kid);
    assert.equal(keys[0].d, undefined, "the private key is published");
  }
  // Dot segments are resolved before matching, so the endpoint still needs a token.
  const dotted = await exchange([
    `POST /x/../cluster/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
  ]);
  assert.equal(statusOf(dotted), 401);
});

test("a request target that is not a URL is a 400, not a 500 logged as a server failure", async () => {
  const logsBefore = errorLogs().length;
  for (const target of ["//[", "//a:b:c", "http://[::1", "//%zz"]) {
    const plain = await exchange([`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`]);
    assert.ok(statusOf(plain) === 400 || statusOf(plain) === 404, `${target}: ${statusOf(plain)}`);
    const upgrade = await exchange([
      `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: strata-store\r\n\r\n`,
    ]);
    assert.ok(
      statusOf(upgrade) === 400 || statusOf(upgrade) === 404,
      `upgrade ${target}: ${statusOf(upgrade)}`,
    );
  }
  assert.equal(errorLogs().length, logsBefore);
});

test("protocol garbage, random bytes and oversized heads: refused or closed, and the server keeps serving", async () => {
  const rng = prng(SEED ^ 0x6a6);
  const inputs: Buffer[] = [
    Buffer.from("NOT HTTP\r\n\r\n"),
    Buffer.from(
      `POST /cluster/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${"a".repeat(20_000)}\r\n\r\n`,
    ),
    Buffer.from(
      `POST /cluster/heartbeat HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n`,
    ),
    Buffer.from(`POST /cluster/heartbeat HTTP/1.1\r\nContent-Length: -1\r\n\r\n`),
    Buffer.from("\u0016\u0003\u0001\u0000\u00a5\u0001\u0000\u0000\u00a1\u0003\u0003"),
    Buffer.from(`GET /${"x".repeat(70_000)} HTTP/1.1\r\n\r\n`),
  ];
  for (let i = 0; i < 40; i++)
    inputs.push(Buffer.from(Array.from({ length: 1 + rng.int(300) }, () => rng.int(256))));
  const replies = await Promise.all(inputs.map((input) => exchange([input], 1000)));
  const problems: string[] = [];
  replies.forEach((reply, i) => {
    const status = statusOf(reply);
    if (status >= 500)
      problems.push(`${JSON.stringify(inputs[i].toString("latin1").slice(0, 60))}: ${status}`);
    if (status === 0 && reply.data.length > 0)
      problems.push(`not HTTP: ${reply.data.toString("latin1").slice(0, 60)}`);
  });
  assert.deepEqual(problems, [], `seed ${SEED}`);
  await stillServes("garbage");
});

test("a peer hanging up mid-body is not logged as a server failure", async () => {
  const logsBefore = errorLogs().length;
  const hangUps = () => logged.filter((line) => line.msg === "cluster: peer hung up mid-request").length;
  const hangUpsBefore = hangUps();
  for (const path of ["/cluster/heartbeat", "/cluster/vote"]) {
    const token = await signed();
    await new Promise<void>((resolve) => {
      const socket = connect(port, "127.0.0.1", () =>
        socket.write(
          `POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 1000\r\n\r\n{"role":`,
        ),
      );
      socket.on("error", () => {});
      setTimeout(() => {
        socket.destroy();
        resolve();
      }, 100);
    });
  }
  // Both seen by the server (as the peer's doing), then nothing logged as an error.
  await waitFor("the server to see both hang-ups", async () => hangUps() === hangUpsBefore + 2, DEADLINE_MS);
  await stillServes("hang-ups");
  assert.deepEqual(errorLogs().slice(logsBefore), []);
});

// --- store tunnels -------------------------------------------------------------------------

function upgradeRequest(
  token: string | undefined,
  extra = "",
  path = "/cluster/store",
  protocol = "strata-store",
) {
  return `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${protocol}\r\n${token ? `Authorization: Bearer ${token}\r\n` : ""}${extra}\r\n`;
}

test("store tunnels: wrong path or protocol 404, no token 401, refusal 409; a good one pipes both ways", async () => {
  const before = reached.tunnels;
  for (const [path, protocol] of [
    ["/cluster/stor", "strata-store"],
    ["/cluster/store/", "strata-store"],
    ["/cluster/store", "websocket"],
    ["/cluster/store", "STRATA-STORE"],
    ["/.well-known/jwks.json", "h2c"],
  ]) {
    const reply = await exchange([upgradeRequest(await signed(), "", path, protocol)]);
    assert.equal(statusOf(reply), 404, `${path} ${protocol}`);
    assert.ok(reply.closed);
  }
  for (const token of [undefined, "x.y.z", await signed(claims({ exp: now() - 100, iat: now() - 110 }))]) {
    const reply = await exchange([upgradeRequest(token)]);
    assert.equal(statusOf(reply), 401);
    assert.match(reply.data.toString(), /"error":"unauthenticated: /);
  }
  assert.equal(reached.tunnels, before, "an unauthenticated tunnel reached the handler");

  tunnelTarget = async () => {
    throw new ControlRefusal("this node is a standby: tunnel to the primary", 409);
  };
  try {
    const refused = await exchange([upgradeRequest(await signed())]);
    assert.equal(statusOf(refused), 409);
    assert.match(refused.data.toString(), /tunnel to the primary/);
  } finally {
    tunnelTarget = async () => storePath;
  }

  // A good tunnel: bytes sent with the request (the head) and after it come back from the echo.
  const reply = await new Promise<string>((resolve) => {
    const socket = connect(port, "127.0.0.1", async () => {
      socket.write(`${upgradeRequest(await signed())}early`);
      setTimeout(() => socket.write("-late"), 100);
      setTimeout(() => {
        socket.destroy();
        resolve(text);
      }, 400);
    });
    let text = "";
    socket.on("data", (d) => {
      text += d;
    });
    socket.on("error", () => {});
  });
  assert.match(reply, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
  assert.ok(reply.endsWith("\r\n\r\nearly-late"), JSON.stringify(reply));
});

test("a tunnel to a store that is down is answered with an error naming it, not a bare close", async () => {
  tunnelTarget = async () => join(dir, "no-such-store.sock");
  try {
    const reply = await exchange([upgradeRequest(await signed())]);
    assert.ok(
      statusOf(reply) >= 500 && statusOf(reply) < 600,
      `answered ${JSON.stringify(reply.data.toString())}`,
    );
    assert.match(reply.data.toString(), /store/);
  } finally {
    tunnelTarget = async () => storePath;
  }
});

test("a peer that resets its connection while the tunnel is being set up leaves no store connection behind", async () => {
  tunnelTarget = async () => {
    await new Promise((r) => setTimeout(r, 300));
    return storePath;
  };
  try {
    const connectionsBefore = storeConnections;
    const tunnelsBefore = reached.tunnels;
    const token = await signed();
    await new Promise<void>((resolve) => {
      const socket = connect(port, "127.0.0.1", () => {
        socket.write(upgradeRequest(token));
        setTimeout(() => {
          socket.resetAndDestroy();
          resolve();
        }, 50);
      });
      socket.on("error", () => {});
    });
    // The reset came while the tunnel was being set up (storeTunnel was called); the server may
    // then not connect to the store at all, or connect and close it: either way none is left open.
    await waitFor(
      "the tunnel request to reach storeTunnel",
      async () => reached.tunnels === tunnelsBefore + 1,
      5_000,
    );
    // Past storeTunnel's 300 ms, a leaked connection would stay open: wait for none, with a deadline.
    await waitFor(
      "no store connection left open",
      async () => storeSockets.size === 0 && storeConnections - connectionsBefore <= 1,
      5_000,
    ).catch(() => assert.fail(`${storeSockets.size} store connection(s) left open`));
  } finally {
    tunnelTarget = async () => storePath;
    for (const socket of storeSockets) socket.destroy();
  }
});

// --- load: unknown keys, slow and many clients ---------------------------------------------

async function unknownKeyToken(i: number): Promise<string> {
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  return new SignJWT(claims())
    .setProtectedHeader({ alg: "EdDSA", kid: `stranger-${SEED}-${i}` })
    .sign(privateKey);
}

test("unauthenticated requests cannot make this node refetch its peers' JWKS at will", async () => {
  const tokens = await Promise.all(Array.from({ length: 20 }, (_, i) => unknownKeyToken(i)));
  const before = jwksRequests;
  for (const token of tokens) {
    const answer = await post("/cluster/heartbeat", HEARTBEAT, `Bearer ${token}`);
    assert.equal(answer.status, 401);
    assert.equal(answer.body.code, "unknown-key");
  }
  assert.ok(
    jwksRequests - before <= 2,
    `${jwksRequests - before} JWKS fetches for 20 unauthenticated requests`,
  );
});

test("a slow peer JWKS, slowloris clients and 200 connections do not delay a valid peer's heartbeat", async () => {
  const sockets: Socket[] = [];
  const timers: NodeJS.Timeout[] = [];
  jwksDelayMs = 1500;
  try {
    // Unknown keys make this node refetch the JWKS, which now takes 1.5 s.
    const pending = Promise.all(
      (await Promise.all([0, 1, 2].map((i) => unknownKeyToken(100 + i)))).map((token) =>
        post("/cluster/heartbeat", HEARTBEAT, `Bearer ${token}`),
      ),
    );
    for (let i = 0; i < 30; i++) {
      const socket = connect(port, "127.0.0.1", () =>
        socket.write("POST /cluster/heartbeat HTTP/1.1\r\nHost: x\r\n"),
      );
      socket.on("error", () => {});
      sockets.push(socket);
      timers.push(setInterval(() => socket.writable && socket.write(`X-${i}: y\r\n`), 100));
    }
    const flood = Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        exchange(
          [
            i % 2
              ? "GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
              : `POST /cluster/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a.b.c\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
          ],
          10_000,
        ),
      ),
    );
    await new Promise((r) => setTimeout(r, 100));
    await stillServes("slow JWKS, slowloris and a flood");
    const answers = await pending;
    assert.deepEqual(
      answers.map((a) => a.body.code),
      ["unknown-key", "unknown-key", "unknown-key"],
    );
    const replies = await flood;
    assert.deepEqual([...new Set(replies.map(statusOf))].sort(), [200, 401]);
  } finally {
    jwksDelayMs = 0;
    for (const timer of timers) clearInterval(timer);
    for (const socket of sockets) socket.destroy();
  }
});

test("over TLS: plain HTTP and garbage on the TLS port are refused, and HTTPS keeps working", async () => {
  const { key, cert } = selfSignedCertificate("strata-control-fuzz-tls-");
  const secure = await startControlServer(
    { port: 0, address: "127.0.0.1", tls_key: key, tls_cert: cert },
    me,
    peerKeys,
    {
      self: () => ({ role: "standby", epoch: 3 }),
      heartbeat: async () => ({ role: "standby", epoch: 3, node_id: "tls" }),
      vote: async () => ({ granted: false }),
      storeTunnel: async () => storePath,
      refused: () => {},
    },
    log,
  );
  try {
    const securePort = secure.address.port;
    const raw = (bytes: string | Buffer) =>
      new Promise<Buffer>((resolve) => {
        const parts: Buffer[] = [];
        const socket = connect(securePort, "127.0.0.1", () => socket.write(bytes));
        socket.on("data", (d) => parts.push(d));
        socket.on("error", () => {});
        socket.on("close", () => resolve(Buffer.concat(parts)));
        setTimeout(() => socket.destroy(), 2000);
      });
    await raw("GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n");
    await raw(Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0, 0, 0]));
    await raw(Buffer.alloc(3000, 0x16));
    const body = await new Promise<string>((resolve, reject) => {
      const req = httpsRequest(
        { host: "127.0.0.1", port: securePort, path: "/.well-known/jwks.json", rejectUnauthorized: false },
        (res) => {
          let text = "";
          res.on("data", (d) => {
            text += d;
          });
          res.on("end", () => resolve(text));
        },
      );
      req.on("error", reject);
      req.end();
    });
    assert.equal((JSON.parse(body) as { keys: { kid: string }[] }).keys[0].kid, me.kid);
  } finally {
    await secure.close();
  }
});

test("no error escaped to the process, and refused requests were reported to the status table", () => {
  assert.deepEqual(escaped.map(String), []);
  assert.ok(reached.refused.length > 0);
  assert.ok(reached.refused.every((reason) => typeof reason === "string" && reason !== ""));
});
