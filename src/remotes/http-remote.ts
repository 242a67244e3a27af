// A remote served over HTTP(S) by another Strata's remotes API (src/http/remotes-api.ts has the
// endpoints): http(s)://host:port/<database> serves that server's database, all its branches and
// tags, read-only. Clone, fetch and pull work from it; push does not (0A000, naming where to push
// instead).
//
// Requests go through Node's fetch. Objects stream, and are checked against their address as they
// stream, as from any remote (remote-layout.ts): a damaged or truncated object fails at its end
// with CorruptObjectError. Errors name the cause and the fix: a server that cannot be reached
// (08001), a broken connection or TLS handshake (08006), a database the server does not have
// (42704), a server that is not a Strata remotes API (08P01).

import { pipeline, Readable } from "node:stream";
import { isRecord, verifyingTransform } from "./remote-layout.ts";
import {
  checkObjectAddress,
  checkRefName,
  checkRefValue,
  MissingObjectError,
  type RefValue,
  RemoteFormatError,
  type RemoteStorage,
  RemoteStorageError,
} from "./storage.ts";
import { RemoteUrlError } from "./url.ts";

/** The header every response of a Strata remotes API carries, with the API's version. */
export const API_HEADER = "strata-remotes-api";
export const API_VERSION = "1";
/** The header naming what went wrong, on every error response (HEAD responses have no body). */
export const ERROR_HEADER = "strata-error";

/** What an error response's body holds (and ERROR_HEADER its `code`). */
export interface ApiErrorBody {
  error: string;
  hint: string;
  code: string;
  sqlstate: string;
  database?: string;
}

const REF_VALUE_PROBLEM = "a ref value ({commit, pack})";

export class HttpRemote implements RemoteStorage {
  readonly url: string;
  /** The URL requests are made under (no trailing slash). */
  private readonly base: string;
  /** scheme://host:port, for messages. */
  private readonly origin: string;

  constructor(url: string) {
    this.url = url;
    const parsed = parseHttpRemoteUrl(url);
    this.base = parsed.base;
    this.origin = parsed.origin;
  }

  // --- refs --------------------------------------------------------------------------------

  async readRef(name: string): Promise<RefValue | null> {
    checkRefName(name);
    const path = `/refs/${name.split("/").map(encodeURIComponent).join("/")}`;
    const res = await this.request("GET", path);
    if (res.status === 404 && res.headers.get(ERROR_HEADER) === "ref-not-found") {
      await res.body?.cancel();
      return null;
    }
    await this.checkOk(res);
    return this.refValue(await this.json(res), `ref ${name}`);
  }

  async listRefs(prefix: string): Promise<Map<string, RefValue>> {
    const res = await this.request("GET", `/refs?prefix=${encodeURIComponent(prefix)}`);
    await this.checkOk(res);
    const refs = (await this.json(res)).refs;
    if (typeof refs !== "object" || refs === null || Array.isArray(refs))
      throw this.notTheApi(`its answer to a ref listing has no "refs" mapping`);
    const result = new Map<string, RefValue>();
    for (const [name, value] of Object.entries(refs)) {
      if (!name.startsWith(prefix)) continue;
      checkRefName(name);
      result.set(name, this.refValue(value, `ref ${name}`));
    }
    return result;
  }

  compareAndSwapRef(_name: string, _expected: RefValue | null, _next: RefValue | null): Promise<boolean> {
    return Promise.reject(this.readOnly());
  }

  putObjectFile(_localPath: string): Promise<string> {
    return Promise.reject(this.readOnly());
  }

  // --- objects -----------------------------------------------------------------------------

  async hasObject(address: string): Promise<boolean> {
    checkObjectAddress(address);
    const res = await this.request("HEAD", `/objects/${address}`);
    if (res.status === 404 && res.headers.get(ERROR_HEADER) === "object-not-found") return false;
    await this.checkOk(res);
    return true;
  }

  async openObject(address: string): Promise<Readable> {
    checkObjectAddress(address);
    const res = await this.request("GET", `/objects/${address}`);
    if (res.status === 404 && res.headers.get(ERROR_HEADER) === "object-not-found") {
      await res.body?.cancel();
      throw new MissingObjectError(this.url, address);
    }
    await this.checkOk(res);
    if (!res.body) throw this.notTheApi("it sent an object without a body");
    const source = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>);
    const verified = verifyingTransform(this.url, address);
    const url = this.url;
    const origin = this.origin;
    // A connection that breaks mid-object fails the stream with an error naming the remote; the
    // reader sees every error on `verified`, and stopping early closes the response.
    pipeline(
      async function* relay() {
        try {
          for await (const chunk of source) yield chunk as Buffer;
        } catch (err) {
          throw networkError(err, url, origin);
        }
      },
      verified,
      () => {},
    );
    return verified;
  }

  // --- requests ----------------------------------------------------------------------------

  private async request(method: "GET" | "HEAD", path: string): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(`${this.base}${path}`, { method, redirect: "error" });
    } catch (err) {
      throw networkError(err, this.url, this.origin);
    }
    if (res.headers.get(API_HEADER) === null) {
      await res.body?.cancel().catch(() => {});
      throw this.notTheApi(`it answered HTTP ${res.status} without the ${API_HEADER} header`);
    }
    return res;
  }

  /** Throws the error an error response stands for; returns for 2xx. */
  private async checkOk(res: Response): Promise<void> {
    if (res.ok) return;
    const code = res.headers.get(ERROR_HEADER) ?? "";
    let body: Partial<ApiErrorBody> = {};
    if (res.body) {
      let parsed: unknown;
      try {
        parsed = await res.json();
      } catch {
        parsed = {};
      }
      if (!isRecord(parsed))
        throw this.notTheApi(`it answered HTTP ${res.status} with a body that is not a JSON object`);
      body = parsed as Partial<ApiErrorBody>;
    }
    if (code === "database-not-found") {
      const database = body.database ?? this.databaseInUrl();
      throw new RemoteStorageError(
        `remote ${this.url}: the Strata at ${this.origin} has no database "${database}"`,
        `check the URL: http(s)://host:port/<database> serves a database of that server (SELECT datname FROM pg_database lists them there)${body.hint ? `; ${body.hint}` : ""}`,
        "42704",
      );
    }
    throw new RemoteStorageError(
      `remote ${this.url}: the Strata at ${this.origin} answered HTTP ${res.status}: ${body.error ?? res.statusText}`,
      body.hint ?? "see that server's log",
      typeof body.sqlstate === "string" && /^[0-9A-Z]{5}$/.test(body.sqlstate) ? body.sqlstate : "58000",
    );
  }

  private async json(res: Response): Promise<Record<string, unknown>> {
    let body: unknown;
    try {
      body = await res.json();
    } catch {
      throw this.notTheApi("its answer is not JSON");
    }
    if (!isRecord(body)) throw this.notTheApi("its answer is not a JSON object");
    return body;
  }

  private refValue(value: unknown, what: string): RefValue {
    if (!isRecord(value) || typeof value.commit !== "string" || typeof value.pack !== "string")
      throw this.notTheApi(`its ${what} is not ${REF_VALUE_PROBLEM}`);
    const ref = { commit: value.commit, pack: value.pack };
    try {
      checkRefValue(ref);
    } catch (err) {
      // The API's answer, with a value no Strata writes: the served remote's ref file is damaged.
      throw new RemoteFormatError(
        `remote ${this.url}: its ${what} is damaged (${(err as Error).message}): the ref file of the remote that the Strata at ${this.origin} serves is damaged`,
        "on that server, remove the ref's newest version file so that its previous version becomes current, or restore its remote from a backup",
      );
    }
    return ref;
  }

  private databaseInUrl(): string {
    const last = this.base.slice(this.base.lastIndexOf("/") + 1);
    try {
      return decodeURIComponent(last);
    } catch {
      return last;
    }
  }

  private notTheApi(problem: string): RemoteFormatError {
    return new RemoteFormatError(
      `remote ${this.url} is not served by a Strata remotes API: ${problem}`,
      "point the remote at http(s)://host:port/<database>, where host:port is another Strata's remotesapi (config.yaml: remotesapi.port), not its SQL listener",
      "08P01",
    );
  }

  private readOnly(): RemoteStorageError {
    return new RemoteStorageError(
      `remote ${this.url} is read-only: it is the remotes API of the Strata at ${this.origin}, which serves its databases for clone, fetch and pull`,
      "push to a directory (file:///path) or S3 (s3://bucket/prefix) remote instead, and clone or pull from there; or run the push on that Strata",
      "0A000",
    );
  }
}

/** A remote URL's base (no trailing slash) and origin; throws RemoteUrlError for unusable ones. */
export function parseHttpRemoteUrl(url: string): { base: string; origin: string } {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    throw new RemoteUrlError(`remote URL "${url}" is not a valid URL`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new RemoteUrlError(`remote URL "${url}" is not an http(s) URL`);
  if (parsed.search !== "" || parsed.hash !== "")
    throw new RemoteUrlError(
      `remote URL "${url}" has a query or fragment`,
      "an HTTP remote is http(s)://host:port/<database>, nothing after the database",
    );
  if (parsed.username !== "" || parsed.password !== "")
    throw new RemoteUrlError(
      `remote URL "${url}" carries credentials`,
      "the remotes API takes none: http(s)://host:port/<database>",
    );
  const path = parsed.pathname.replace(/\/+$/, "");
  if (path === "")
    throw new RemoteUrlError(
      `remote URL "${url}" names no database`,
      "an HTTP remote is http(s)://host:port/<database>: the database of that Strata to clone or pull",
    );
  return { base: `${parsed.origin}${path}`, origin: parsed.origin };
}

const TLS_CODE = /CERT|SSL|TLS|EPROTO|ALTNAME/;
const UNREACHABLE = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ETIMEDOUT",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** The system error behind a fetch failure (fetch wraps it, sometimes in an AggregateError). */
function rootCause(err: unknown): { code: string; message: string } {
  let e = err as { cause?: unknown; code?: unknown; message?: unknown; errors?: unknown[] } | undefined;
  for (let i = 0; i < 5 && e; i++) {
    if (typeof e.code === "string" && e.code !== "")
      return { code: e.code, message: String(e.message ?? "") };
    const next = e.cause ?? (Array.isArray(e.errors) ? e.errors[0] : undefined);
    if (!next) break;
    e = next as typeof e;
  }
  return { code: "", message: String((e as { message?: unknown } | undefined)?.message ?? err) };
}

/** A network failure as a RemoteStorageError naming the cause and the fix. */
export function networkError(err: unknown, url: string, origin: string): Error {
  if (err instanceof RemoteStorageError) return err;
  const { code, message } = rootCause(err);
  const what = code ? `${code}${message && !message.includes(code) ? `: ${message}` : ""}` : message;
  if (message === "bad port")
    return new RemoteStorageError(
      `remote ${url}: Node's fetch refuses to connect to the port of ${origin} (the Fetch standard blocks it, as browsers do)`,
      "serve the remotes API on another port (remotesapi.port), e.g. 50051",
      "08001",
    );
  if (UNREACHABLE.has(code))
    return new RemoteStorageError(
      `remote ${url}: cannot reach ${origin} (${what})`,
      "check the URL's host and port, that the Strata there runs with remotesapi.port set in its config.yaml, and the network between the two",
      "08001",
    );
  if (TLS_CODE.test(code))
    return new RemoteStorageError(
      `remote ${url}: the TLS handshake with ${origin} failed (${what})`,
      "for a self-signed certificate or a private CA, start this Strata with NODE_EXTRA_CA_CERTS=/path/to/ca.pem (the certificate, in PEM); the URL's host must be a name the certificate is for; use http:// if that server has no remotesapi.tls_key",
      "08006",
    );
  return new RemoteStorageError(
    `remote ${url}: the connection to ${origin} broke (${what})`,
    "try again; if it keeps failing, check that the URL's scheme matches that server (https:// when its remotesapi has tls_key and tls_cert, else http://)",
    "08006",
  );
}
