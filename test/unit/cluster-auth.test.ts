// Cluster request authentication (src/cluster/auth.ts): node keys and their ids, tokens, and
// PeerKeys verifying them against JWKS fetched from real local HTTP servers. TLS to the JWKS is
// tested by cluster-peer-tls.test.ts.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, test } from "node:test";
import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, type JWTPayload, SignJWT } from "jose";
import pino from "pino";
import {
  base32,
  ClusterAuthError,
  type ClusterAuthReason,
  NodeKey,
  type Peer,
  PeerKeys,
  type PeerKeysOptions,
} from "../../src/cluster/auth.ts";
import { outboundTlsOptions } from "../../src/cluster/peer-tls.ts";
import { freePort, waitFor } from "../support/postgres.ts";

const log = pino({ level: "silent" });
const tls = outboundTlsOptions({ server_name_urls: [], server_name_dns: [] });

/** A peer's control-plane port, as far as JWKS go: serves whatever `respond` says, counting requests. */
class JwksServer {
  requests = 0;
  respond: () => { status: number; body: string };
  private constructor(
    private readonly server: Server,
    readonly url: string,
    jwks: object,
  ) {
    this.respond = () => ({ status: 200, body: JSON.stringify(jwks) });
  }

  static async start(jwks: object): Promise<JwksServer> {
    let self: JwksServer | undefined;
    const server = createServer((req, res) => {
      self!.requests++;
      const { status, body } =
        req.url === "/.well-known/jwks.json" ? self!.respond() : { status: 404, body: "" };
      res.writeHead(status, { "content-type": "application/json" }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    self = new JwksServer(server, `http://127.0.0.1:${port}/.well-known/jwks.json`, jwks);
    servers.push(self);
    return self;
  }

  serve(jwks: object): void {
    this.respond = () => ({ status: 200, body: JSON.stringify(jwks) });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

const servers: JwksServer[] = [];
const verifiers: PeerKeys[] = [];
after(async () => {
  for (const keys of verifiers) keys.stop();
  await Promise.all(servers.map((s) => s.close()));
});

function peerKeys(peers: Peer[], ownKid: string, extra: Partial<PeerKeysOptions> = {}): PeerKeys {
  const keys = new PeerKeys({ peers, ownKid, tls, log, ...extra });
  verifiers.push(keys);
  return keys;
}

/** A node: its key, and a server publishing it. */
async function node(): Promise<{ key: NodeKey; server: JwksServer }> {
  const key = await NodeKey.generate();
  return { key, server: await JwksServer.start(key.jwks()) };
}

/** A peer that signs whatever tokens a test needs (expired, too long, ...), with its own Ed25519 key. */
async function craftingPeer(): Promise<{
  server: JwksServer;
  sign: (claims: JWTPayload, header?: Record<string, unknown>) => Promise<string>;
}> {
  const { publicKey, privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  const kid = "crafting-peer-key";
  const server = await JwksServer.start({ keys: [{ ...(await exportJWK(publicKey)), kid }] });
  const sign = (claims: JWTPayload, header: Record<string, unknown> = {}) =>
    new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid, typ: "JWT", ...header }).sign(privateKey);
  return { server, sign };
}

function now(): number {
  return Math.floor(Date.now() / 1000);
}

let jtis = 0;
function claims(aud: string, overrides: JWTPayload = {}): JWTPayload {
  const iat = now();
  return { iss: "strata-cluster", aud, iat, exp: iat + 30, jti: `test-${++jtis}`, ...overrides };
}

async function refused(
  keys: PeerKeys,
  authorization: string | undefined,
  reason: ClusterAuthReason,
  message?: RegExp,
): Promise<void> {
  await assert.rejects(keys.verify(authorization), (err: unknown) => {
    assert.ok(err instanceof ClusterAuthError, `not a ClusterAuthError: ${err}`);
    assert.equal(err.reason, reason, err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

// --- keys and tokens ------------------------------------------------------------------------

test("base32 is RFC 4648 base32hex in lower case, unpadded (Dolt's key id encoding)", () => {
  assert.equal(base32(Buffer.from("")), "");
  assert.equal(base32(Buffer.from("f")), "co");
  assert.equal(base32(Buffer.from("foob")), "cpnmuog");
  assert.equal(base32(Buffer.from("foobar")), "cpnmuoj1e8");
});

test("a node key's id is base32 of SHA-512/224 of the raw public key; its JWKS publishes it for EdDSA", async () => {
  const key = await NodeKey.generate();
  const { keys } = key.jwks() as { keys: Record<string, string>[] };
  assert.equal(keys.length, 1);
  const [jwk] = keys;
  assert.deepEqual(Object.keys(jwk).sort(), ["alg", "crv", "kid", "kty", "use", "x"]);
  assert.equal(jwk.kty, "OKP");
  assert.equal(jwk.crv, "Ed25519");
  assert.equal(jwk.alg, "EdDSA");
  assert.equal(jwk.use, "sig");
  assert.equal(jwk.kid, key.kid);
  const raw = Buffer.from(jwk.x, "base64url");
  assert.equal(raw.length, 32);
  assert.equal(key.kid, base32(createHash("sha512-224").update(raw).digest()));
  assert.match(key.kid, /^[0-9a-v]{45}$/);
  assert.notEqual((await NodeKey.generate()).kid, key.kid, "each generate makes a new key");
});

test("a token: EdDSA JWS with the signer's kid, for the audience's key id, good for 30 s, with a 128-bit jti", async () => {
  const key = await NodeKey.generate();
  const before = now();
  const token = await key.sign("their-kid");
  assert.ok(!token.startsWith("Bearer"));
  assert.deepEqual(decodeProtectedHeader(token), { alg: "EdDSA", kid: key.kid, typ: "JWT" });
  const payload = decodeJwt(token);
  assert.deepEqual(Object.keys(payload).sort(), ["aud", "exp", "iat", "iss", "jti"]);
  assert.equal(payload.iss, "strata-cluster");
  assert.equal(payload.aud, "their-kid");
  assert.ok(payload.iat! >= before && payload.iat! <= now());
  assert.equal(payload.exp! - payload.iat!, 30);
  assert.equal(Buffer.from(payload.jti!, "base64url").length, 16);
  assert.notEqual(decodeJwt(await key.sign("their-kid")).jti, payload.jti);
});

// --- verification ---------------------------------------------------------------------------

test("a token signed by a peer verifies, naming the peer whose JWKS holds the key", async () => {
  const me = await NodeKey.generate();
  const a = await node();
  const b = await node();
  const keys = peerKeys(
    [
      { name: "a", jwksUrl: a.server.url },
      { name: "b", jwksUrl: b.server.url },
    ],
    me.kid,
  );
  assert.deepEqual(await keys.verify(`Bearer ${await b.key.sign(me.kid)}`), { peer: "b" });
  assert.deepEqual(await keys.verify(`Bearer ${await a.key.sign(me.kid)}`), { peer: "a" });
  assert.equal(await keys.peerKid("a"), a.key.kid);
  assert.equal(await keys.peerKid("b"), b.key.kid);
  assert.equal(keys.fetchError("a"), undefined);
});

/** A node with one standby peer whose keys it has fetched, and a key that no peer publishes. */
async function withStrangerKey() {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  await keys.peerKid("standby");
  return { me, standby, keys, fetched: standby.server.requests, stranger: await NodeKey.generate() };
}

test("a token signed by a key no peer publishes is refused, after one refetch of every peer", async () => {
  const { me, standby, keys, fetched, stranger } = await withStrangerKey();
  await assert.rejects(keys.verify(`Bearer ${await stranger.sign(me.kid)}`), (err: ClusterAuthError) => {
    assert.equal(err.reason, "unknown-key");
    // The answer goes to whoever asked: the peers' names and addresses are for this node's log.
    assert.equal(
      err.message,
      `request signed with key ${stranger.kid} which no configured standby peer publishes`,
    );
    assert.equal(err.detail, `configured peers: standby at ${standby.server.url}`);
    return true;
  });
  assert.equal(standby.server.requests, fetched + 1);
});

test("what an unverified token says is shown cut to 64 characters", async () => {
  const { me, keys } = await withStrangerKey();
  const [, payload] = (await (await NodeKey.generate()).sign(me.kid)).split(".");
  const header = (fields: object) => Buffer.from(JSON.stringify(fields)).toString("base64url");
  const long = "k".repeat(5_000);
  await refused(
    keys,
    `Bearer ${header({ alg: "EdDSA", kid: long })}.${payload}.c2ln`,
    "unknown-key",
    /^request signed with key k{64}… \(5000 characters\) which no configured/,
  );
  await refused(
    keys,
    `Bearer ${header({ alg: "A".repeat(300), kid: "x" })}.${payload}.c2ln`,
    "bad-signature",
    /uses alg A{64}… \(300 characters\); cluster peers sign/,
  );
});

test("concurrent tokens with unknown keys share one refetch", async () => {
  const { me, standby, keys, fetched, stranger } = await withStrangerKey();
  const tokens = await Promise.all([1, 2, 3].map(() => stranger.sign(me.kid)));
  const results = await Promise.allSettled(tokens.map((t) => keys.verify(`Bearer ${t}`)));
  assert.ok(
    results.every((r) => r.status === "rejected" && (r.reason as ClusterAuthError).reason === "unknown-key"),
  );
  assert.equal(standby.server.requests, fetched + 1);
});

test("unknown kids refetch each peer's JWKS at most once per 5 s, and are remembered meanwhile", async () => {
  const { me, standby, keys, fetched, stranger } = await withStrangerKey();
  const other = await NodeKey.generate();
  for (let i = 0; i < 5; i++) {
    await refused(keys, `Bearer ${await stranger.sign(me.kid)}`, "unknown-key");
    await refused(keys, `Bearer ${await other.sign(me.kid)}`, "unknown-key");
  }
  assert.equal(standby.server.requests, fetched + 1, "one refetch for ten unknown-key tokens");
  // Known keys still verify without any fetch, and refresh() (our own request refused) still fetches.
  assert.deepEqual(await keys.verify(`Bearer ${await standby.key.sign(me.kid)}`), { peer: "standby" });
  await keys.refresh("standby");
  assert.equal(standby.server.requests, fetched + 2);
});

test("a token naming a peer's kid but signed by another key is refused", async () => {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  const forged = await new SignJWT(claims(me.kid))
    .setProtectedHeader({ alg: "EdDSA", kid: standby.key.kid, typ: "JWT" })
    .sign(privateKey);
  await refused(
    keys,
    `Bearer ${forged}`,
    "bad-signature",
    /signature does not verify with key .* of cluster peer standby/,
  );
  // The genuine article still passes.
  assert.deepEqual(await keys.verify(`Bearer ${await standby.key.sign(me.kid)}`), { peer: "standby" });
});

test("a missing, non-Bearer, malformed or unsigned Authorization is refused", async () => {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  const good = await standby.key.sign(me.kid);
  await refused(keys, undefined, "missing", /no Authorization header/);
  await refused(keys, "", "missing");
  const basic = `Basic ${Buffer.from("user:secret").toString("base64")}`;
  await assert.rejects(keys.verify(basic), (err: ClusterAuthError) => {
    assert.equal(err.reason, "malformed");
    assert.equal(
      err.message,
      'request\'s Authorization header is not "Bearer <JWT>" (it has scheme "Basic")',
    );
    return true;
  });
  await refused(keys, good, "malformed", /not "Bearer <JWT>" \(it has scheme "eyJ/);
  await refused(keys, "Bearer", "malformed", /a Bearer token that is not a compact JWS/);
  await refused(keys, "Bearer not-a-jwt", "malformed", /a Bearer token that is not a compact JWS/);
  await refused(keys, `Bearer ${good} ${good}`, "malformed");
  await refused(keys, "Bearer e30.e30.e30", "bad-signature", /unsigned/); // header {}: no alg
  const [, payload] = good.split(".");
  const none = Buffer.from(JSON.stringify({ alg: "none", kid: standby.key.kid })).toString("base64url");
  await refused(
    keys,
    `Bearer ${none}.${payload}.`,
    "bad-signature",
    /unsigned; cluster peers sign with EdDSA/,
  );
  const hs = Buffer.from(JSON.stringify({ alg: "HS256", kid: standby.key.kid })).toString("base64url");
  await refused(keys, `Bearer ${hs}.${payload}.c2ln`, "bad-signature", /uses alg HS256/);
  const noKid = Buffer.from(JSON.stringify({ alg: "EdDSA" })).toString("base64url");
  await refused(keys, `Bearer ${noKid}.${payload}.c2ln`, "malformed", /names no key/);
  await refused(keys, "Bearer !!!.e30.e30", "malformed");
  // None of that used the token up.
  assert.deepEqual(await keys.verify(`Bearer ${good}`), { peer: "standby" });
});

test("claims: wrong issuer, missing jti/iat/exp are refused as malformed", async () => {
  const me = await NodeKey.generate();
  const peer = await craftingPeer();
  const keys = peerKeys([{ name: "p", jwksUrl: peer.server.url }], me.kid);
  await refused(
    keys,
    `Bearer ${await peer.sign(claims(me.kid, { iss: "dolt-client.dolthub.com" }))}`,
    "malformed",
    /issuer/,
  );
  for (const claim of ["jti", "iat", "exp", "aud"] as const) {
    const c = claims(me.kid);
    delete c[claim];
    await refused(keys, `Bearer ${await peer.sign(c)}`, "malformed", new RegExp(`no valid ${claim} claim`));
  }
  await refused(keys, `Bearer ${await peer.sign(claims(me.kid, { jti: "" }))}`, "malformed");
  assert.deepEqual(await keys.verify(`Bearer ${await peer.sign(claims(me.kid))}`), { peer: "p" });
  // A one-element aud array is the same audience.
  assert.deepEqual(await keys.verify(`Bearer ${await peer.sign(claims(me.kid, { aud: [me.kid] }))}`), {
    peer: "p",
  });
});

test("an expired token is refused; within the 5 s leeway it passes", async () => {
  const me = await NodeKey.generate();
  const peer = await craftingPeer();
  const keys = peerKeys([{ name: "p", jwksUrl: peer.server.url }], me.kid);
  const old = await peer.sign(claims(me.kid, { iat: now() - 100, exp: now() - 70 }));
  await refused(
    keys,
    `Bearer ${old}`,
    "expired",
    /^request token from cluster peer p expired at \S+, 7\d s ago/,
  );
  const late = await peer.sign(claims(me.kid, { iat: now() - 32, exp: now() - 2 }));
  assert.deepEqual(await keys.verify(`Bearer ${late}`), { peer: "p" });
});

test("an expired token whose exp Date cannot hold is refused as expired, naming the number", async () => {
  const me = await NodeKey.generate();
  const peer = await craftingPeer();
  const keys = peerKeys([{ name: "p", jwksUrl: peer.server.url }], me.kid);
  const ancient = await peer.sign(claims(me.kid, { iat: -1e308, exp: -1e308 }));
  await refused(keys, `Bearer ${ancient}`, "expired", /expired at -1e\+308 \(seconds since 1970\)/);
});

test("a token for another node's key, or for this node's previous process, is refused", async () => {
  const me = await NodeKey.generate();
  const other = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  await refused(
    keys,
    `Bearer ${await standby.key.sign(other.kid)}`,
    "audience",
    new RegExp(`has audience ${other.kid}, not this node's current key ${me.kid}`),
  );
  // This node restarted: a new key, and the peer still addresses the old one.
  const restarted = await NodeKey.generate();
  const afterRestart = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], restarted.kid);
  await refused(
    afterRestart,
    `Bearer ${await standby.key.sign(me.kid)}`,
    "audience",
    /refetch this node's JWKS/,
  );
  assert.deepEqual(await afterRestart.verify(`Bearer ${await standby.key.sign(restarted.kid)}`), {
    peer: "standby",
  });
});

test("a token is good for one request: a replay is refused", async () => {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  const token = await standby.key.sign(me.kid);
  assert.deepEqual(await keys.verify(`Bearer ${token}`), { peer: "standby" });
  await refused(keys, `Bearer ${token}`, "replayed", /was used before/);
  // Concurrent presentations: exactly one wins.
  const another = await standby.key.sign(me.kid);
  const results = await Promise.allSettled([1, 2, 3].map(() => keys.verify(`Bearer ${another}`)));
  assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
  // A different token from the same peer is fine.
  assert.deepEqual(await keys.verify(`Bearer ${await standby.key.sign(me.kid)}`), { peer: "standby" });
});

test("a token claiming to last over 60 s, or issued in the future, is refused", async () => {
  const me = await NodeKey.generate();
  const peer = await craftingPeer();
  const keys = peerKeys([{ name: "p", jwksUrl: peer.server.url }], me.kid);
  const iat = now();
  await refused(
    keys,
    `Bearer ${await peer.sign(claims(me.kid, { iat, exp: iat + 61 }))}`,
    "lifetime",
    /good for 61 s; at most 60 s/,
  );
  await refused(
    keys,
    `Bearer ${await peer.sign(claims(me.kid, { iat: iat + 3600, exp: iat + 3630 }))}`,
    "lifetime",
    /in the future/,
  );
  assert.deepEqual(await keys.verify(`Bearer ${await peer.sign(claims(me.kid, { iat, exp: iat + 60 }))}`), {
    peer: "p",
  });
});

// --- peers restarting, fetching ---------------------------------------------------------------

test("a peer restart (new key): its tokens verify after the automatic refetch; refresh() gives its new kid", async () => {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  assert.equal(await keys.peerKid("standby"), standby.key.kid);
  const restarted = await NodeKey.generate();
  standby.server.serve(restarted.jwks());
  // We still address the old key until told otherwise...
  assert.equal(await keys.peerKid("standby"), standby.key.kid);
  // ...but its first request, signed with the new key, makes us refetch.
  assert.deepEqual(await keys.verify(`Bearer ${await restarted.sign(me.kid)}`), { peer: "standby" });
  assert.equal(await keys.peerKid("standby"), restarted.kid);
  // The old process's key is gone with the set it was in.
  await refused(keys, `Bearer ${await standby.key.sign(me.kid)}`, "unknown-key");

  // Restarted again; this time we notice first (it refused our token) and refresh.
  const again = await NodeKey.generate();
  standby.server.serve(again.jwks());
  const fetched = standby.server.requests;
  await Promise.all([keys.refresh("standby"), keys.refresh("standby"), keys.refresh("standby")]);
  assert.equal(standby.server.requests, fetched + 1, "concurrent refreshes share one fetch");
  assert.equal(await keys.peerKid("standby"), again.kid);
});

test("refresh forgets the old key even when the refetch fails; peerKid then names peer, URL and reason", async () => {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  await keys.peerKid("standby");
  standby.server.respond = () => ({ status: 503, body: "" });
  await keys.refresh("standby");
  assert.equal(keys.fetchError("standby"), "http request failed: StatusCode: 503");
  await assert.rejects(keys.peerKid("standby"), {
    message: `cannot get the key of cluster peer standby from ${standby.server.url}: http request failed: StatusCode: 503`,
  });
  await assert.rejects(keys.verify(`Bearer ${await standby.key.sign(me.kid)}`), (err: ClusterAuthError) => {
    assert.equal(err.reason, "unknown-key");
    assert.match(err.detail ?? "", /standby at .* \(http request failed: StatusCode: 503\)/);
    return true;
  });
});

test("an unreachable peer: peerKid throws naming it; fetchError says why", async () => {
  const me = await NodeKey.generate();
  const url = `http://127.0.0.1:${await freePort()}/.well-known/jwks.json`;
  const keys = peerKeys([{ name: "gone", jwksUrl: url }], me.kid);
  await assert.rejects(keys.peerKid("gone"), (err: Error) => {
    assert.match(
      err.message,
      new RegExp(
        `^cannot get the key of cluster peer gone from ${url.replaceAll(".", "\\.")}: connection refused`,
      ),
    );
    return true;
  });
  assert.match(keys.fetchError("gone")!, /^connection refused .*: check that the peer runs/);
  await assert.rejects(keys.peerKid("nobody"), { message: "no cluster peer is named nobody (peers: gone)" });
  assert.throws(
    () => peerKeys([{ name: "x", jwksUrl: "ftp://h/x" }], me.kid),
    /not an http:\/\/ or https:\/\/ URL/,
  );
});

test("start() fetches every peer now and again, retrying soon after an error; stop() ends it", async () => {
  const me = await NodeKey.generate();
  const a = await node();
  const b = await node();
  b.server.respond = () => ({ status: 500, body: "" });
  const keys = peerKeys(
    [
      { name: "a", jwksUrl: a.server.url },
      { name: "b", jwksUrl: b.server.url },
    ],
    me.kid,
    { refreshMs: 60_000, retryMs: 10 },
  );
  keys.start();
  await waitFor("a's JWKS fetched", async () => a.server.requests >= 1, 5_000);
  await waitFor(
    "b's fetch to fail",
    async () => keys.fetchError("b") === "http request failed: StatusCode: 500",
    5_000,
  );
  await waitFor("b retried", async () => b.server.requests >= 3, 5_000);
  assert.equal(a.server.requests, 1, "a succeeded: next fetch in refreshMs");
  b.server.serve(b.key.jwks());
  await waitFor("b's JWKS fetched after retries", async () => keys.fetchError("b") === undefined, 5_000);
  const served = b.server.requests;
  // Known now without a fetch.
  assert.equal(await keys.peerKid("b"), b.key.kid);
  assert.equal(b.server.requests, served);
  keys.stop();

  // Refreshing every few ms, a new key is picked up without any request to verify.
  const c = await node();
  const polling = peerKeys([{ name: "c", jwksUrl: c.server.url }], me.kid, { refreshMs: 10 });
  polling.start();
  await waitFor("c's key", async () => (await polling.peerKid("c")) === c.key.kid, 5_000);
  const next = await NodeKey.generate();
  c.server.serve(next.jwks());
  await waitFor("c's new key", async () => (await polling.peerKid("c")) === next.kid, 5_000);
  polling.stop();
  await polling.refresh("c"); // waits for any fetch under way
  const stoppedAt = c.server.requests;
  // Stopped: no timer is left to fetch again. Prove it by a bounded wait for a fetch that must not come.
  await assert.rejects(waitFor("no fetch after stop", async () => c.server.requests > stoppedAt, 200));
});

test("a response that is not a JWKS of Ed25519 public keys is refused with a reason", async () => {
  const me = await NodeKey.generate();
  const standby = await node();
  const keys = peerKeys([{ name: "standby", jwksUrl: standby.server.url }], me.kid);
  const [jwk] = standby.key.jwks().keys as Record<string, string>[];
  const cases: [string, RegExp][] = [
    ["<html>", /not JSON, so not a JWKS/],
    ["{}", /no "keys" array/],
    ['{"keys":[]}', /holds no keys/],
    [
      JSON.stringify({ keys: [{ kty: "RSA", kid: "r", n: "AQAB", e: "AQAB" }] }),
      /key 0 .* not an Ed25519 public key/,
    ],
    [JSON.stringify({ keys: [{ ...jwk, alg: "ES256" }] }), /not an Ed25519 public key/],
    [JSON.stringify({ keys: [{ ...jwk, d: jwk.x }] }), /key 0 of the JWKS is a private key/],
    [JSON.stringify({ keys: [{ ...jwk, kid: undefined }] }), /has no kid/],
    [JSON.stringify({ keys: [{ ...jwk, x: "AAAA" }] }), /cannot be used/],
  ];
  for (const [body, expected] of cases) {
    standby.server.respond = () => ({ status: 200, body });
    await keys.refresh("standby");
    assert.match(keys.fetchError("standby") ?? "(none)", expected, body);
  }
  standby.server.respond = () => ({ status: 404, body: "" });
  await keys.refresh("standby");
  assert.equal(keys.fetchError("standby"), "http request failed: StatusCode: 404");
  standby.server.serve(standby.key.jwks());
  await keys.refresh("standby");
  assert.equal(keys.fetchError("standby"), undefined);
});
