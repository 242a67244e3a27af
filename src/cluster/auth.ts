// Authentication between the nodes of a hot-standby cluster, on the control-plane port
// (cluster.remotesapi). The scheme follows Dolt's (docs/design/cluster-research.md section 4):
//
// - Each process start makes a fresh Ed25519 key pair, never persisted. Its key id is Dolt's:
//   unpadded base32 (alphabet 0-9a-v) of SHA-512/224 of the raw public key.
// - Each node publishes its public key, unauthenticated, at /.well-known/jwks.json on the
//   control-plane port, and fetches every configured peer's JWKS (the peer's remote URL with
//   {database} = ".well-known/jwks.json") now and every 30 s, or 1 s after a failure.
// - Every request to a peer carries a fresh JWT (Authorization: Bearer), signed with EdDSA. A
//   request is accepted only if it is signed by a key that a configured peer publishes: trust comes
//   from the peer list (and TLS to the peers' JWKS), not from any claim in the token.
//
// Where Strata differs from Dolt, to make a captured token worth less:
// - The audience is the receiver's current key id, not a fixed string. A token is good for one
//   node, and only for its current process: after a restart, tokens made for the old key are
//   refused ("audience"), and the sender refreshes the receiver's JWKS to learn the new one.
// - Each token has a jti (128 random bits) and the receiver remembers the jtis it has accepted
//   until they expire, so a token is good for one request ("replayed").
// - Tokens carry iat, and one claiming to last more than 60 s is refused ("lifetime"), which
//   bounds how long a jti must be remembered. The clock leeway is 5 s, not Dolt's minute.

import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import https from "node:https";
import type { PeerCertificate, TLSSocket } from "node:tls";
import {
  compactVerify,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JWK,
  errors as joseErrors,
  SignJWT,
} from "jose";
import { base32 } from "../commits/hash.ts";
import type { Logger } from "../log.ts";
import { describeTlsError, type OutboundTlsOptions, watchPeerCertificate } from "./peer-tls.ts";

const ISSUER = "strata-cluster";
const ALG = "EdDSA";
/** How long a token we make is good for. */
const TOKEN_SECONDS = 30;
/** The longest a token may claim to be good for; longer ones are refused. */
const MAX_TOKEN_SECONDS = 60;
/** Clock difference tolerated between nodes. */
const LEEWAY_SECONDS = 5;
const FETCH_TIMEOUT_MS = 5_000;
/**
 * A token with a kid no peer publishes makes this node refetch each peer's JWKS at most this often
 * (a restarted peer's new key is picked up within it), and remember the kid as unknown this long:
 * anyone can send such tokens, and must not make this node fetch from its peers at will.
 */
const UNKNOWN_KID_MS = 5_000;
/** Unknown kids remembered at most; beyond, the oldest are forgotten. */
const MAX_UNKNOWN_KIDS = 1_000;
/** A JWKS holds a key or two; anything much bigger is not one. */
const MAX_JWKS_BYTES = 64 * 1024;

export type ClusterAuthReason =
  | "missing"
  | "malformed"
  | "unknown-key"
  | "bad-signature"
  | "expired"
  | "audience"
  | "replayed"
  | "lifetime";

export class ClusterAuthError extends Error {
  constructor(
    message: string,
    readonly reason: ClusterAuthReason,
    /** For this node's log only: the answer goes to a client not known to be a peer. */
    readonly detail?: string,
  ) {
    super(message);
    this.name = "ClusterAuthError";
  }
}

/** A value from an unverified token, as shown in a refusal: at most 64 characters of it. */
function untrusted(value: unknown): string {
  const text = String(value);
  return text.length > 64 ? `${text.slice(0, 64)}… (${text.length} characters)` : text;
}

// --- this node's key ------------------------------------------------------------------------

/** Key ids use Dolt's unpadded base32 alphabet, as commit hashes do. */
export { base32 };

/** Dolt's key id of an Ed25519 public key given as a JWK. */
export function keyId(publicJwk: JWK): string {
  const raw = Buffer.from(publicJwk.x ?? "", "base64url");
  return base32(createHash("sha512-224").update(raw).digest());
}

export class NodeKey {
  private constructor(
    readonly kid: string,
    private readonly privateKey: CryptoKey,
    private readonly publicJwk: JWK,
  ) {}

  /** A fresh key pair: one per process start, never written anywhere. */
  static async generate(): Promise<NodeKey> {
    const { publicKey, privateKey } = await generateKeyPair(ALG, { crv: "Ed25519" });
    const jwk = await exportJWK(publicKey);
    return new NodeKey(keyId(jwk), privateKey, { kty: jwk.kty, crv: jwk.crv, x: jwk.x });
  }

  /** What /.well-known/jwks.json serves. */
  jwks(): { keys: object[] } {
    return { keys: [{ ...this.publicJwk, kid: this.kid, alg: ALG, use: "sig" }] };
  }

  /** A token for one request to the peer whose current key id is audienceKid. */
  async sign(audienceKid: string): Promise<string> {
    const iat = Math.floor(Date.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: ALG, kid: this.kid, typ: "JWT" })
      .setIssuer(ISSUER)
      .setAudience(audienceKid)
      .setIssuedAt(iat)
      .setExpirationTime(iat + TOKEN_SECONDS)
      .setJti(randomBytes(16).toString("base64url"))
      .sign(this.privateKey);
  }
}

// --- peers' keys ----------------------------------------------------------------------------

export interface Peer {
  name: string;
  /** remote_url_template with {database} replaced by ".well-known/jwks.json" */
  jwksUrl: string;
}

interface KeySet {
  /** In the order the peer lists them: the first is the one to address it by. */
  kids: string[];
  keys: Map<string, CryptoKey>;
}

const NO_KEYS: KeySet = { kids: [], keys: new Map() };

interface PeerState {
  readonly peer: Peer;
  readonly url: URL;
  set: KeySet;
  error?: string;
  /** The fetch under way; `fresh` when it was started on demand rather than by the timer. */
  inflight?: { promise: Promise<void>; seq: number; fresh: boolean };
  /** Numbers fetches, so that an older one finishing late cannot overwrite a newer result. */
  seq: number;
  timer?: NodeJS.Timeout;
  /** When a token with an unknown kid last made us refetch this peer's JWKS (ms). */
  demandedAt?: number;
}

export interface PeerKeysOptions {
  peers: Peer[];
  ownKid: string;
  tls: OutboundTlsOptions;
  log: Logger;
  /** Refetch every peer's JWKS this often (default 30 s)... */
  refreshMs?: number;
  /** ...or this soon after a failure (default 1 s). */
  retryMs?: number;
}

export class PeerKeys {
  private readonly peers = new Map<string, PeerState>();
  private readonly ownKid: string;
  private readonly tls: OutboundTlsOptions;
  private readonly log: Logger;
  private readonly refreshMs: number;
  private readonly retryMs: number;
  /** Bumped by start() and stop(), so that a stopped timer chain does not carry on. */
  private epoch = 0;
  private running = false;
  private refreshingAll?: Promise<void>;
  /** jti → when it may be forgotten (ms): any token bearing it has expired by then. */
  private readonly seen = new Map<string, number>();
  private nextPrune = 0;
  /** kid → until when (ms) it is known that no peer publishes it: no refetch for it meanwhile. */
  private readonly unknownKids = new Map<string, number>();

  constructor(options: PeerKeysOptions) {
    this.ownKid = options.ownKid;
    this.tls = options.tls;
    this.log = options.log;
    this.refreshMs = options.refreshMs ?? 30_000;
    this.retryMs = options.retryMs ?? 1_000;
    for (const peer of options.peers) {
      let url: URL;
      try {
        url = new URL(peer.jwksUrl);
      } catch {
        throw new Error(`cluster peer ${peer.name}: ${peer.jwksUrl} is not a URL`);
      }
      if (url.protocol !== "http:" && url.protocol !== "https:") {
        throw new Error(`cluster peer ${peer.name}: ${peer.jwksUrl} is not an http:// or https:// URL`);
      }
      if (this.peers.has(peer.name)) throw new Error(`cluster peer ${peer.name} is configured twice`);
      this.peers.set(peer.name, { peer, url, set: NO_KEYS, seq: 0 });
    }
  }

  /** Fetch every peer's JWKS now, then every refreshMs (retryMs after an error). */
  start(): void {
    if (this.running) return;
    this.running = true;
    const epoch = ++this.epoch;
    for (const state of this.peers.values()) this.poll(state, epoch);
  }

  stop(): void {
    this.running = false;
    this.epoch++;
    for (const state of this.peers.values()) {
      clearTimeout(state.timer);
      state.timer = undefined;
    }
  }

  private poll(state: PeerState, epoch: number): void {
    state.timer = undefined;
    void this.load(state, false).then(() => {
      if (epoch !== this.epoch) return;
      state.timer = setTimeout(() => this.poll(state, epoch), state.error ? this.retryMs : this.refreshMs);
      state.timer.unref();
    });
  }

  /** The current key id of a peer (the audience of requests to it), fetched first if unknown. */
  async peerKid(name: string): Promise<string> {
    const state = this.state(name);
    if (state.set.kids.length === 0) await this.load(state, false);
    const kid = state.set.kids[0];
    if (kid === undefined) {
      throw new Error(
        `cannot get the key of cluster peer ${name} from ${state.peer.jwksUrl}: ${state.error ?? "it publishes no keys"}`,
      );
    }
    return kid;
  }

  /**
   * Forget a peer's keys and fetch again now (it restarted, with a new key). Concurrent calls share
   * one fetch. Never rejects: a failure shows in fetchError, and peerKid then throws it.
   */
  async refresh(name: string): Promise<void> {
    const state = this.state(name);
    state.set = NO_KEYS;
    await this.load(state, true);
  }

  /** The last JWKS fetch error for a peer; undefined after a success. */
  fetchError(name: string): string | undefined {
    return this.peers.get(name)?.error;
  }

  /** Check an Authorization header value; resolves to the name of the peer that signed it. */
  async verify(authorization: string | undefined): Promise<{ peer: string }> {
    const token = bearerToken(authorization);
    const kid = signingKeyId(token);
    let signer = this.findKey(kid);
    if (!signer && !this.knownUnknown(kid)) {
      // A peer that restarted signs with a key we have not fetched yet.
      const checked = await this.refreshAll();
      signer = this.findKey(kid);
      if (!signer && checked) this.rememberUnknown(kid);
    }
    if (!signer) {
      throw new ClusterAuthError(
        `request signed with key ${untrusted(kid)} which no configured standby peer publishes`,
        "unknown-key",
        `configured peers: ${this.describePeers()}`,
      );
    }
    let payload: Uint8Array;
    try {
      ({ payload } = await compactVerify(token, signer.key, { algorithms: [ALG] }));
    } catch (err) {
      if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
        throw new ClusterAuthError(
          `request token's signature does not verify with key ${kid} of cluster peer ${signer.peer}: it was not signed by that peer`,
          "bad-signature",
        );
      }
      throw new ClusterAuthError(`request token is not a valid JWS: ${(err as Error).message}`, "malformed");
    }
    this.checkClaims(parseClaims(payload), signer.peer);
    return { peer: signer.peer };
  }

  private checkClaims(claims: Claims, peer: string): void {
    const from = `request token from cluster peer ${peer}`;
    if (claims.iss !== ISSUER) {
      throw new ClusterAuthError(
        `${from} has issuer ${JSON.stringify(claims.iss)}, not "${ISSUER}"`,
        "malformed",
      );
    }
    if (claims.aud !== this.ownKid) {
      throw new ClusterAuthError(
        `${from} has audience ${claims.aud}, not this node's current key ${this.ownKid}: it was made for another node or an earlier run of this one; the peer should refetch this node's JWKS and retry`,
        "audience",
      );
    }
    const { iat, exp, jti } = claims;
    if (exp - iat > MAX_TOKEN_SECONDS) {
      throw new ClusterAuthError(
        `${from} claims to be good for ${exp - iat} s; at most ${MAX_TOKEN_SECONDS} s is accepted`,
        "lifetime",
      );
    }
    const now = Date.now() / 1000;
    if (iat > now + LEEWAY_SECONDS) {
      throw new ClusterAuthError(
        `${from} was issued ${Math.round(iat - now)} s in the future: the two nodes' clocks differ; synchronise them (NTP)`,
        "lifetime",
      );
    }
    if (now > exp + LEEWAY_SECONDS) {
      throw new ClusterAuthError(
        `${from} expired at ${isoTime(exp)}, ${Math.round(now - exp)} s ago: tokens are made for one request; if the peer's clock is behind, synchronise the clocks (NTP)`,
        "expired",
      );
    }
    this.pruneSeen();
    if (this.seen.has(jti)) {
      throw new ClusterAuthError(
        `${from} was used before (jti ${jti}): tokens are good for one request`,
        "replayed",
      );
    }
    this.seen.set(jti, (exp + LEEWAY_SECONDS) * 1000);
  }

  /** Drop jtis whose tokens are expired anyway; at most once a second, so verify stays cheap. */
  private pruneSeen(): void {
    const now = Date.now();
    if (now < this.nextPrune) return;
    this.nextPrune = now + 1000;
    for (const [jti, until] of this.seen) if (until < now) this.seen.delete(jti);
  }

  private findKey(kid: string): { peer: string; key: CryptoKey } | undefined {
    for (const state of this.peers.values()) {
      const key = state.set.keys.get(kid);
      if (key) return { peer: state.peer.name, key };
    }
    return undefined;
  }

  private describePeers(): string {
    if (this.peers.size === 0) return "none";
    return [...this.peers.values()]
      .map(({ peer, error }) => `${peer.name} at ${peer.jwksUrl}${error ? ` (${error})` : ""}`)
      .join(", ");
  }

  private knownUnknown(kid: string): boolean {
    const until = this.unknownKids.get(kid);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.unknownKids.delete(kid);
    return false;
  }

  private rememberUnknown(kid: string): void {
    const now = Date.now();
    for (const [old, until] of this.unknownKids) {
      if (until <= now || this.unknownKids.size >= MAX_UNKNOWN_KIDS) this.unknownKids.delete(old);
      else break; // in insertion order, so the rest expire later
    }
    this.unknownKids.set(kid, now + UNKNOWN_KID_MS);
  }

  /**
   * Fetch anew the JWKS of every peer not refetched on demand within UNKNOWN_KID_MS; callers
   * arriving meanwhile share the round. Resolves to whether this call started a round that
   * fetched every peer (so a kid still unknown after it is unknown to all of them).
   */
  private async refreshAll(): Promise<boolean> {
    if (this.refreshingAll) {
      await this.refreshingAll;
      return false;
    }
    const now = Date.now();
    const due = [...this.peers.values()].filter(
      (state) => state.demandedAt === undefined || now - state.demandedAt >= UNKNOWN_KID_MS,
    );
    if (due.length === 0) return false;
    for (const state of due) state.demandedAt = now;
    const round = Promise.all(due.map((state) => this.load(state, true))).then(() => {
      this.refreshingAll = undefined;
    });
    this.refreshingAll = round;
    await round;
    return due.length === this.peers.size;
  }

  private state(name: string): PeerState {
    const state = this.peers.get(name);
    if (!state) {
      throw new Error(
        `no cluster peer is named ${name} (peers: ${[...this.peers.keys()].join(", ") || "none"})`,
      );
    }
    return state;
  }

  /**
   * Fetch a peer's JWKS, or join the fetch under way. A `fresh` load (on demand: the caller knows
   * something changed) does not join a timer's fetch, which may have started before the change.
   * Resolves, never rejects, once no fetch of that peer is under way.
   */
  private async load(state: PeerState, fresh: boolean): Promise<void> {
    if (!state.inflight || (fresh && !state.inflight.fresh)) {
      const seq = ++state.seq;
      const promise = this.fetchKeys(state).then(
        (set) => {
          if (state.seq === seq) this.applied(state, set);
        },
        (err) => {
          if (state.seq === seq) this.failed(state, err);
        },
      );
      state.inflight = { promise, seq, fresh };
      void promise.then(() => {
        if (state.inflight?.seq === seq) state.inflight = undefined;
      });
    }
    // A newer fetch may have been started while we waited: its result is the one that counts.
    while (state.inflight) await state.inflight.promise;
  }

  private applied(state: PeerState, set: KeySet): void {
    const { name } = state.peer;
    if (state.error)
      this.log.info({ peer: name, url: state.peer.jwksUrl }, "cluster peer's JWKS fetched again");
    if (set.kids[0] !== state.set.kids[0])
      this.log.info({ peer: name, kid: set.kids[0] }, "cluster peer's key");
    state.set = set;
    state.error = undefined;
  }

  private failed(state: PeerState, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    // Logged when it changes, not on every retry.
    if (message !== state.error) {
      this.log.warn(
        { peer: state.peer.name, url: state.peer.jwksUrl, err: message },
        "cannot fetch cluster peer's JWKS",
      );
    }
    state.error = message;
  }

  private async fetchKeys(state: PeerState): Promise<KeySet> {
    const body = await get(state.url, this.tls);
    let jwks: unknown;
    try {
      jwks = JSON.parse(body);
    } catch {
      throw new Error(
        `the response is not JSON, so not a JWKS: is ${state.peer.jwksUrl} a Strata's cluster control-plane port (cluster.remotesapi)?`,
      );
    }
    return importKeySet(jwks);
  }
}

// --- tokens ---------------------------------------------------------------------------------

/** A claim's time (seconds since 1970) as ISO 8601, or as the number when Date cannot hold it. */
function isoTime(seconds: number): string {
  const date = new Date(seconds * 1000);
  return Number.isNaN(date.getTime()) ? `${seconds} (seconds since 1970)` : date.toISOString();
}

function bearerToken(authorization: string | undefined): string {
  if (!authorization) {
    throw new ClusterAuthError(
      "request has no Authorization header: cluster requests must carry a Bearer token signed by a peer",
      "missing",
    );
  }
  const match = /^Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)$/i.exec(authorization.trim());
  if (!match) {
    // Name the scheme only: the rest may be someone's credentials, and this message is logged.
    const scheme = /^\S*/.exec(authorization.trim())![0].slice(0, 20);
    const what = /^bearer$/i.test(scheme)
      ? "a Bearer token that is not a compact JWS"
      : `scheme ${JSON.stringify(scheme)}`;
    throw new ClusterAuthError(
      `request's Authorization header is not "Bearer <JWT>" (it has ${what})`,
      "malformed",
    );
  }
  return match[1];
}

/** The kid of a token signed with EdDSA; anything else is refused before any key is looked up. */
function signingKeyId(token: string): string {
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(token);
  } catch (err) {
    throw new ClusterAuthError(
      `request token's header cannot be decoded: ${(err as Error).message}`,
      "malformed",
    );
  }
  if (header.alg !== ALG) {
    const what =
      header.alg === "none" || header.alg === undefined ? "is unsigned" : `uses alg ${untrusted(header.alg)}`;
    throw new ClusterAuthError(`request token ${what}; cluster peers sign with ${ALG}`, "bad-signature");
  }
  if (typeof header.kid !== "string" || header.kid === "") {
    throw new ClusterAuthError("request token's header names no key (kid)", "malformed");
  }
  return header.kid;
}

interface Claims {
  iss: unknown;
  aud: string;
  iat: number;
  exp: number;
  jti: string;
}

function parseClaims(payload: Uint8Array): Claims {
  let claims: Record<string, unknown>;
  try {
    claims = JSON.parse(new TextDecoder().decode(payload));
  } catch {
    throw new ClusterAuthError("request token's claims are not JSON", "malformed");
  }
  if (typeof claims !== "object" || claims === null) {
    throw new ClusterAuthError("request token's claims are not a JSON object", "malformed");
  }
  const { iss, aud, iat, exp, jti } = claims;
  // aud may be a one-element array in JWT; we make it a string.
  const audience = Array.isArray(aud) && aud.length === 1 ? aud[0] : aud;
  for (const [name, value, type] of [
    ["aud", audience, "string"],
    ["iat", iat, "number"],
    ["exp", exp, "number"],
    ["jti", jti, "string"],
  ] as const) {
    if (typeof value !== type || value === "" || (type === "number" && !Number.isFinite(value))) {
      throw new ClusterAuthError(`request token has no valid ${name} claim`, "malformed");
    }
  }
  return { iss, aud: audience as string, iat: iat as number, exp: exp as number, jti: jti as string };
}

// --- JWKS -----------------------------------------------------------------------------------

async function importKeySet(jwks: unknown): Promise<KeySet> {
  const keys = (jwks as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('the response is not a JWKS (no "keys" array)');
  if (keys.length === 0) throw new Error("the JWKS holds no keys");
  const set: KeySet = { kids: [], keys: new Map() };
  for (const [i, jwk] of keys.entries()) {
    const { kty, crv, kid, d, alg } = (jwk ?? {}) as JWK;
    if (kty !== "OKP" || crv !== "Ed25519" || (alg !== undefined && alg !== ALG)) {
      throw new Error(`key ${i} of the JWKS is not an Ed25519 public key (kty OKP, crv Ed25519, alg EdDSA)`);
    }
    if (d !== undefined)
      throw new Error(`key ${i} of the JWKS is a private key: the peer must publish only its public key`);
    if (typeof kid !== "string" || kid === "") throw new Error(`key ${i} of the JWKS has no kid`);
    try {
      set.keys.set(kid, (await importJWK({ kty, crv, x: (jwk as JWK).x }, ALG)) as CryptoKey);
    } catch (err) {
      throw new Error(`key ${i} (${kid}) of the JWKS cannot be used: ${(err as Error).message}`);
    }
    set.kids.push(kid);
  }
  return set;
}

/** GET a small body over http(s), with the peers' TLS options and a deadline for the whole exchange. */
function get(url: URL, tls: OutboundTlsOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    let certificate: (() => PeerCertificate | undefined) | undefined;
    // agent: false: a connection of its own, so no pooled socket checked under other TLS options
    // is reused; one request every 30 s does not need keep-alive.
    const options = { agent: false, headers: { accept: "application/json" } } as const;
    const request =
      url.protocol === "https:" ? https.get(url, { ...options, ...tls }) : http.get(url, options);
    let settled = false;
    const settle = (err: Error | undefined, body?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      if (err) {
        request.destroy();
        reject(err);
      } else {
        resolve(body ?? "");
      }
    };
    const deadline = setTimeout(
      () => settle(new Error(`no response within ${FETCH_TIMEOUT_MS / 1000} s`)),
      FETCH_TIMEOUT_MS,
    );
    deadline.unref();
    request.on("socket", (socket) => {
      if (url.protocol === "https:") certificate = watchPeerCertificate(socket as TLSSocket);
    });
    request.on("error", (err) => settle(new Error(describeTlsError(err, certificate?.()))));
    request.on("response", (response) => {
      const status = response.statusCode ?? 0;
      if (status < 200 || status > 299) {
        settle(new Error(`http request failed: StatusCode: ${status}`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_JWKS_BYTES)
          settle(new Error(`the response is over ${MAX_JWKS_BYTES} bytes: not a JWKS`));
        else chunks.push(chunk);
      });
      response.on("end", () => settle(undefined, Buffer.concat(chunks).toString("utf8")));
      response.on("error", (err) => settle(new Error(describeTlsError(err))));
    });
  });
}
