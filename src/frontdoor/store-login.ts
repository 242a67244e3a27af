// Opening another store session for a client that has already authenticated, as itself: how a
// session moves to another database (dolt_checkout, USE db/branch) without asking the client for
// its password again, and without ever running as anyone else.
//
// The store authenticates clients (their messages pass through the front door), so the front
// door watches that exchange (AuthCapture) and keeps what it needs to do it again:
//
//   SCRAM-SHA-256  ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage). With StoredKey and
//                  ServerKey from pg_authid (Strata is the store's superuser) and the AuthMessage
//                  and proof it saw, the front door recovers ClientKey — the proof of knowing the
//                  password, not the password — and checks it (SHA-256(ClientKey) = StoredKey).
//                  That is enough to answer a new SCRAM challenge, as pgbouncer does.
//   md5            the stored md5 hash answers any salt.
//   password       (cleartext) the password itself.
//   trust          nothing to answer.
//
// Nothing is kept beyond the session; the client proves itself to the store exactly once.
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { decodeBackendKeyData, decodeErrorFields } from "./wire.ts";

const AUTH = { ok: 0, cleartext: 3, md5: 5, sasl: 10, saslContinue: 11, saslFinal: 12 } as const;
const TAG_AUTH = 0x52; // 'R'
const TAG_PASSWORD = 0x70; // 'p'

/** What the client's authentication left the front door able to repeat. */
export type CapturedAuth =
  | { kind: "none" }
  | { kind: "trust" }
  | { kind: "password"; password: string }
  | { kind: "md5" }
  | { kind: "scram"; authMessage: string; proof: Buffer };

/**
 * Watches one client's authentication: every 'R' message from the store and 'p' message from
 * the client, in order, until AuthenticationOk.
 */
export class AuthCapture {
  private requested = -1;
  private clientFirstBare = "";
  private serverFirst = "";
  private result: CapturedAuth = { kind: "none" };
  private done = false;

  get captured(): CapturedAuth {
    return this.done ? this.result : { kind: "none" };
  }

  get finished(): boolean {
    return this.done;
  }

  /** An 'R' message from the store (whole, tag and length included). */
  fromStore(message: Buffer): void {
    if (this.done || message[0] !== TAG_AUTH || message.length < 9) return;
    const code = message.readInt32BE(5);
    if (code === AUTH.ok) {
      if (this.requested === -1) this.result = { kind: "trust" };
      this.done = true;
    } else if (code === AUTH.saslContinue) {
      this.serverFirst = message.subarray(9).toString("utf8");
      this.requested = code;
    } else if (code !== AUTH.saslFinal) this.requested = code;
  }

  /** A 'p' message from the client (whole). */
  fromClient(message: Buffer): void {
    if (this.done || message[0] !== TAG_PASSWORD) return;
    const body = message.subarray(5);
    if (this.requested === AUTH.cleartext) {
      this.result = { kind: "password", password: cString(body, 0).text };
    } else if (this.requested === AUTH.md5) {
      this.result = { kind: "md5" };
    } else if (this.requested === AUTH.sasl) {
      const mechanism = cString(body, 0);
      const length = body.readInt32BE(mechanism.end);
      const first = body
        .subarray(mechanism.end + 4, mechanism.end + 4 + Math.max(length, 0))
        .toString("utf8");
      // client-first-message = gs2-header "," bare; the gs2 header is "n,," / "y,," / "p=...,,".
      const gs2End = first.indexOf(",", first.indexOf(",") + 1);
      this.clientFirstBare = gs2End >= 0 ? first.slice(gs2End + 1) : "";
    } else if (this.requested === AUTH.saslContinue) {
      const final = body.toString("utf8");
      const at = final.lastIndexOf(",p=");
      if (at >= 0 && this.clientFirstBare) {
        this.result = {
          kind: "scram",
          authMessage: `${this.clientFirstBare},${this.serverFirst},${final.slice(0, at)}`,
          proof: Buffer.from(final.slice(at + 3), "base64"),
        };
      }
    }
  }
}

/** What answers the store's challenge on a new session. */
export type StoreCredential =
  | { kind: "trust" }
  | { kind: "password"; password: string }
  | { kind: "md5"; hash: string }
  | { kind: "scram"; clientKey: Buffer; storedKey: Buffer; serverKey: Buffer };

export class StoreLoginError extends Error {
  override name = "StoreLoginError";
  constructor(
    message: string,
    readonly code = "28000",
    readonly hint?: string,
  ) {
    super(message);
  }
}

/**
 * The credential that repeats the client's authentication, from what was captured and the role's
 * stored password (pg_authid.rolpassword; null when the role has none).
 */
export function credentialFor(captured: CapturedAuth, rolpassword: string | null): StoreCredential {
  switch (captured.kind) {
    case "trust":
      return { kind: "trust" };
    case "password":
      return { kind: "password", password: captured.password };
    case "md5":
      if (rolpassword?.startsWith("md5")) return { kind: "md5", hash: rolpassword.slice(3) };
      break;
    case "scram": {
      const keys = parseScramSecret(rolpassword);
      if (!keys) break;
      const signature = hmac(keys.storedKey, captured.authMessage);
      const clientKey = xor(captured.proof, signature);
      if (clientKey.length === keys.storedKey.length && timingSafeEqual(sha256(clientKey), keys.storedKey))
        return { kind: "scram", clientKey, storedKey: keys.storedKey, serverKey: keys.serverKey };
      break;
    }
    case "none":
      break;
  }
  throw new StoreLoginError(
    "the front door cannot open another store session for this client: it did not see an authentication it can repeat",
    "28000",
    "reconnect to the database you want (psql: \\c db/branch; a connection string's dbname=db/branch)",
  );
}

function parseScramSecret(secret: string | null): { storedKey: Buffer; serverKey: Buffer } | undefined {
  const m = /^SCRAM-SHA-256\$\d+:[^$]+\$([^:]+):(.+)$/.exec(secret ?? "");
  if (!m) return undefined;
  return { storedKey: Buffer.from(m[1], "base64"), serverKey: Buffer.from(m[2], "base64") };
}

/**
 * The client side of a store session's startup, as a state machine over the store's bytes: feed
 * it what the store sends (`receive`), write what it returns; `ready` once the store sent its
 * first ReadyForQuery. Throws StoreLoginError for an ErrorResponse or a challenge it cannot meet.
 */
export class StoreLogin {
  /** ParameterStatus messages (whole), in the order received, for the client to hear. */
  readonly parameterStatus: Buffer[] = [];
  key: { pid: number; secret: Buffer } | undefined;
  ready = false;
  private pending: Buffer = Buffer.alloc(0);
  private nonce = "";
  private clientFirstBare = "";
  private authMessage = "";

  constructor(
    private readonly user: string,
    private readonly credential: StoreCredential,
  ) {}

  /** The StartupMessage: the client's parameters, with `database` in place of its own. */
  static startupMessage(parameters: Map<string, string>, database: string): Buffer {
    const parts: Buffer[] = [];
    const params = new Map(parameters);
    params.set("database", database);
    for (const [name, value] of params) parts.push(Buffer.from(`${name}\0${value}\0`, "utf8"));
    parts.push(Buffer.from([0]));
    const body = Buffer.concat(parts);
    const head = Buffer.alloc(8);
    head.writeInt32BE(body.length + 8, 0);
    head.writeInt32BE(196608, 4); // protocol 3.0
    return Buffer.concat([head, body]);
  }

  /** What the store sent; returns the messages to send it in answer. */
  receive(chunk: Buffer): Buffer[] {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const replies: Buffer[] = [];
    while (this.pending.length >= 5 && !this.ready) {
      const length = this.pending.readInt32BE(1);
      if (this.pending.length < length + 1) break;
      const message = this.pending.subarray(0, length + 1);
      this.pending = this.pending.subarray(length + 1);
      const reply = this.handle(message);
      if (reply) replies.push(reply);
    }
    return replies;
  }

  /** Bytes the store sent after its first ReadyForQuery (none, unless it was early). */
  rest(): Buffer {
    return this.pending;
  }

  private handle(message: Buffer): Buffer | undefined {
    const tag = String.fromCharCode(message[0]);
    const body = message.subarray(5);
    switch (tag) {
      case "R":
        return this.challenge(body);
      case "S":
        this.parameterStatus.push(Buffer.from(message));
        return undefined;
      case "K":
        this.key = decodeBackendKeyData(message);
        return undefined;
      case "Z":
        this.ready = true;
        return undefined;
      case "E": {
        const fields = decodeErrorFields(message);
        throw new StoreLoginError(
          fields.get("M") ?? "the store refused the session",
          fields.get("C") ?? "08006",
          fields.get("H"),
        );
      }
      default:
        return undefined; // NoticeResponse and the like
    }
  }

  private challenge(body: Buffer): Buffer | undefined {
    const code = body.readInt32BE(0);
    const credential = this.credential;
    switch (code) {
      case AUTH.ok:
        return undefined;
      case AUTH.cleartext:
        if (credential.kind === "password") return passwordMessage(Buffer.from(`${credential.password}\0`));
        break;
      case AUTH.md5: {
        const salt = body.subarray(4, 8);
        const inner =
          credential.kind === "md5"
            ? credential.hash
            : credential.kind === "password"
              ? md5hex(Buffer.from(credential.password + this.user))
              : undefined;
        if (inner)
          return passwordMessage(Buffer.from(`md5${md5hex(Buffer.concat([Buffer.from(inner), salt]))}\0`));
        break;
      }
      case AUTH.sasl: {
        const mechanisms = body.subarray(4).toString("utf8").split("\0");
        if (!mechanisms.includes("SCRAM-SHA-256") || credential.kind === "trust" || credential.kind === "md5")
          break;
        this.nonce = randomBytes(18).toString("base64");
        this.clientFirstBare = `n=,r=${this.nonce}`;
        const first = Buffer.from(`n,,${this.clientFirstBare}`);
        const mechanism = Buffer.from("SCRAM-SHA-256\0");
        const length = Buffer.alloc(4);
        length.writeInt32BE(first.length, 0);
        return passwordMessage(Buffer.concat([mechanism, length, first]));
      }
      case AUTH.saslContinue: {
        const serverFirst = body.subarray(4).toString("utf8");
        const attrs = scramAttributes(serverFirst);
        const serverNonce = attrs.get("r") ?? "";
        if (!serverNonce.startsWith(this.nonce))
          throw new StoreLoginError("the store's SCRAM nonce is not ours");
        const keys = scramKeys(credential, attrs);
        const withoutProof = `c=biws,r=${serverNonce}`;
        this.authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
        const proof = xor(keys.clientKey, hmac(keys.storedKey, this.authMessage));
        this.serverKey = keys.serverKey;
        return passwordMessage(Buffer.from(`${withoutProof},p=${proof.toString("base64")}`));
      }
      case AUTH.saslFinal: {
        const expected = hmac(this.serverKey!, this.authMessage);
        const got = Buffer.from(scramAttributes(body.subarray(4).toString("utf8")).get("v") ?? "", "base64");
        if (got.length !== expected.length || !timingSafeEqual(got, expected))
          throw new StoreLoginError(
            "the store's SCRAM signature does not match: not the store we expected",
            "28000",
          );
        return undefined;
      }
    }
    throw new StoreLoginError(
      `the store asks for an authentication (method ${code}) the front door cannot repeat for this session`,
      "28000",
      "reconnect to the database you want (psql: \\c db/branch; a connection string's dbname=db/branch)",
    );
  }

  private serverKey: Buffer | undefined;
}

function scramKeys(
  credential: StoreCredential,
  attrs: Map<string, string>,
): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
  if (credential.kind === "scram") return credential;
  if (credential.kind !== "password") throw new StoreLoginError("no SCRAM credential for this session");
  const salted = pbkdf2Sync(
    credential.password.normalize("NFKC"),
    Buffer.from(attrs.get("s") ?? "", "base64"),
    Number(attrs.get("i") ?? 4096),
    32,
    "sha256",
  );
  const clientKey = hmac(salted, "Client Key");
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(salted, "Server Key") };
}

function scramAttributes(message: string): Map<string, string> {
  const attrs = new Map<string, string>();
  for (const part of message.split(",")) {
    const eq = part.indexOf("=");
    if (eq > 0) attrs.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return attrs;
}

function passwordMessage(body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = TAG_PASSWORD;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function cString(buf: Buffer, start: number): { text: string; end: number } {
  const zero = buf.indexOf(0, start);
  const end = zero < 0 ? buf.length : zero;
  return { text: buf.subarray(start, end).toString("utf8"), end: end + 1 };
}

const hmac = (key: Buffer, data: string) => createHmac("sha256", key).update(data).digest();
const sha256 = (data: Buffer) => createHash("sha256").update(data).digest();
const md5hex = (data: Buffer) => createHash("md5").update(data).digest("hex");

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(Math.min(a.length, b.length));
  for (let i = 0; i < out.length; i++) out[i] = a[i] ^ b[i];
  return out;
}
