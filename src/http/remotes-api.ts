// The remotes API: this server's databases served as read-only remotes over HTTP(S), in the
// spirit of Dolt's sql-server `remotesapi` (config.yaml: remotesapi.port, address, tls_key,
// tls_cert). Another Strata clones, fetches and pulls from http(s)://host:port/<database>, which
// holds every branch of <database> (heads/main is the database itself, heads/<b> its store
// database <database>/<b>) and its tags. The client is src/remotes/http-remote.ts.
//
// Endpoints, under /<database> (the name percent-encoded as one path segment):
//
//   GET       /<database>                     {"format":"strata-remotes-api","version":1,"database"}
//   GET       /<database>/refs/<ref>          {"commit","pack"}; 404 (ref-not-found) when absent.
//                                             <ref> is heads/<branch> or tags/<tag>, each segment
//                                             percent-encoded
//   GET       /<database>/refs?prefix=heads/  {"refs":{"heads/main":{"commit","pack"},...}}
//   HEAD, GET /<database>/objects/<sha256>    the object's bytes (Content-Length; the client checks
//                                             them against the address); 404 (object-not-found)
//
// Every response carries `Strata-Remotes-Api: 1`; every error response a JSON body
// {"error","hint","code","sqlstate"} and its code in `Strata-Error` too (HEAD has no body):
// database-not-found (404), ref-not-found (404), object-not-found (404), bad-request (400),
// read-only (405: any method but GET and HEAD), unavailable (503, stopping), internal (500); and
// for a request Node's HTTP parser refuses, headers-too-large (431), request-timeout (408) or
// bad-request (400). A 500 names no file of the server (the log has the detail).
//
// How a database is served: lazily, from a directory remote of its own, <data-dir>/remotesapi/<db>,
// which the database's branches and tags are pushed into with the ordinary push (pushBranch,
// pushTags) before a ref is read. Objects are immutable, so reading one needs no push. The push
// is forced (the served remote mirrors the database, whatever it held before), records nothing
// in the database (it is not one of the database's remotes), and is skipped when the store has
// written no WAL since the last one (one query; an idle server costs no more per ref read).
// Pushes of one database run one at a time; requests that arrive while one runs share the next,
// which starts after they arrived, so a ref read never misses a commit made before it.
// Connections to the databases are opened per push and closed after it: an idle connection
// would keep DROP DATABASE and dolt_branch('-d') from going through.

import { createReadStream } from "node:fs";
import { rm, stat } from "node:fs/promises";
import {
  createServer as createHttpServer,
  type IncomingMessage,
  maxHeaderSize,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { pipeline } from "node:stream";
import pg from "pg";
import { MAIN_BRANCH } from "../branches/names.ts";
import type { RemotesApiConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import { KeyedQueue } from "../keyed-queue.ts";
import type { Logger } from "../log.ts";
import { DirectoryRemote } from "../remotes/directory-remote.ts";
import { API_HEADER, API_VERSION, type ApiErrorBody, ERROR_HEADER } from "../remotes/http-remote.ts";
import { pushBranch } from "../remotes/push.ts";
import { checkRefFileName } from "../remotes/remote-layout.ts";
import { isObjectAddress, isValidRefName, RefNameError, RemoteStorageError } from "../remotes/storage.ts";
import { pushTags } from "../remotes/tags.ts";
import type { StoreHandle } from "../store/store.ts";
import { loadTlsFiles } from "../tls-files.ts";

/**
 * Where the API listens unless remotesapi.address says otherwise: this machine only. Dolt listens on
 * every interface; an API without authentication that serves every database should be exposed
 * on purpose (decisions §21).
 */
const DEFAULT_ADDRESS = "127.0.0.1";

export const API_FORMAT = "strata-remotes-api";
/** The name the served remote's pushes go under (never recorded: see pushBranch's `record`). */
const INTERNAL_REMOTE = "(remotesapi)";
/** Postgres's longest identifier, in bytes: no database name is longer. */
const MAX_DATABASE_NAME_BYTES = 63;
const MAX_PREFIX_LENGTH = 1024;
/**
 * How long an object's response may make no progress before it is dropped. Node times out
 * receiving a request, never sending a response: a client that stops reading would otherwise hold
 * its socket and the object's open file for ever. A slow client that reads resets it.
 */
const IDLE_TIMEOUT_MS = 2 * 60 * 1000;

// --- requests ------------------------------------------------------------------------------

export type ApiRequest =
  | { kind: "database"; database: string }
  | { kind: "ref"; database: string; name: string }
  | { kind: "refs"; database: string; prefix: string }
  | { kind: "object"; database: string; address: string };

const ENDPOINTS =
  "the endpoints are GET /<database>, GET /<database>/refs/heads/<branch> (or tags/<tag>), GET /<database>/refs?prefix=heads/, and HEAD or GET /<database>/objects/<sha256>";

/** An error answered to the client: HTTP status, Strata-Error code, SQLSTATE, message and fix. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    readonly sqlstate: string,
    message: string,
    readonly hint: string,
    readonly database?: string,
  ) {
    super(message);
  }
}

function badRequest(message: string, hint = ENDPOINTS): ApiError {
  return new ApiError(400, "bad-request", "22023", message, hint);
}

/** What a request target (the request line's path and query) asks for; ApiError 400 when nothing. */
export function parseApiPath(target: string): ApiRequest {
  let text = target;
  if (/^https?:\/\//i.test(text)) {
    // absolute-form, as a client talking to a proxy sends it
    try {
      const url = new URL(text);
      text = url.pathname + url.search;
    } catch {
      throw badRequest(`request target "${target}" is not a valid URL`);
    }
  }
  const q = text.indexOf("?");
  const path = q < 0 ? text : text.slice(0, q);
  const query = new URLSearchParams(q < 0 ? "" : text.slice(q + 1));
  if (!path.startsWith("/")) throw badRequest(`request path "${path}" does not start with "/"`);
  const raw = path.slice(1).split("/");
  if (raw.length > 1 && raw[raw.length - 1] === "") raw.pop(); // one trailing slash
  if (raw[0] === "") throw badRequest("the request names no database: the path starts with /<database>");
  if (raw.some((segment) => segment === ""))
    throw badRequest(`request path "${path}" has an empty segment ("//")`);
  let parts: string[];
  try {
    parts = raw.map((segment) => decodeURIComponent(segment));
  } catch {
    throw badRequest(`request path "${path}" has a malformed percent-escape`);
  }
  const [database, kind, ...rest] = parts;
  if (database.includes("/"))
    throw badRequest(
      `"${database}" is a branch's database: branches are served as heads of their database`,
      `use /${encodeURIComponent(database.slice(0, database.indexOf("/")))} and its ref heads/${database.slice(database.indexOf("/") + 1)}`,
    );
  if (database.includes("\u0000")) throw badRequest("the database name contains NUL");
  if (Buffer.byteLength(database) > MAX_DATABASE_NAME_BYTES)
    throw badRequest(
      `"${database.slice(0, 80)}..." is not a database name: it is longer than ${MAX_DATABASE_NAME_BYTES} bytes`,
    );
  if (kind === undefined) return { kind: "database", database };
  if (kind === "refs" && rest.length === 0) {
    const prefix = query.get("prefix") ?? "";
    if (prefix.length > MAX_PREFIX_LENGTH)
      throw badRequest(`the ref prefix is longer than ${MAX_PREFIX_LENGTH} characters`);
    return { kind: "refs", database, prefix };
  }
  if (kind === "refs") {
    const name = rest.join("/");
    try {
      checkRefFileName(name); // served from a directory remote: the name must fit a file name
    } catch (err) {
      if (err instanceof RefNameError) throw badRequest(err.message, err.hint);
      throw err;
    }
    return { kind: "ref", database, name };
  }
  if (kind === "objects" && rest.length === 1) {
    if (!isObjectAddress(rest[0]))
      throw badRequest(
        `"${rest[0]}" is not an object address`,
        "object addresses are 64 lowercase hex digits (a SHA-256)",
      );
    return { kind: "object", database, address: rest[0] };
  }
  throw badRequest(`request path "${path}" is not an endpoint of this remotes API`);
}

// --- the server ----------------------------------------------------------------------------

/** Where the served databases come from (the store, or a test's directories). */
export interface ServedDatabases {
  /**
   * The directory remote serving `database`, null when this server has no such database (or
   * throws ApiError). For "refs", its refs are brought up to date with the database first.
   */
  remote(database: string, purpose: "refs" | "objects"): Promise<DirectoryRemote | null>;
  close(): Promise<void>;
}

export interface RemotesApiOptions {
  port: number;
  /** Listen address; undefined: 127.0.0.1 (DEFAULT_ADDRESS). */
  address?: string;
  tls?: { key: Buffer; cert: Buffer };
  databases: ServedDatabases;
  log: Logger;
  /**
   * An object's response that makes no progress for this long (its client stopped reading) is
   * dropped, and its file closed; default IDLE_TIMEOUT_MS.
   */
  idleTimeoutMs?: number;
}

export interface RemotesApi {
  /** Where it listens (the port chosen, when 0 was asked for). */
  address: { host: string; port: number };
  close(): Promise<void>;
}

/** Serve `databases` over HTTP(S) until close(). */
export async function serveRemotesApi(options: RemotesApiOptions): Promise<RemotesApi> {
  const { databases, log } = options;
  const scheme = options.tls ? "https" : "http";
  const idleTimeoutMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res, databases, scheme, log, idleTimeoutMs).catch((err) => {
      // handle() answers every error it can; this is a response that broke midway
      log.debug({ err: (err as Error).message, url: req.url }, "remotes API: response failed");
      res.destroy();
    });
  };
  const server: Server = options.tls
    ? createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, handler)
    : createHttpServer(handler);
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    const responding = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent;
    if (socket.writable && !socket.destroyed && !responding && err.code !== "ECONNRESET")
      socket.end(parseErrorResponse(err.code));
    else socket.destroy();
  });
  server.on("tlsClientError", (err) => log.debug({ err: err.message }, "remotes API: TLS handshake failed"));
  await new Promise<void>((resolve, reject) => {
    const failed = (err: NodeJS.ErrnoException) => {
      const where = `${options.address ?? DEFAULT_ADDRESS} port ${options.port}`;
      reject(
        new Error(
          err.code === "EADDRINUSE"
            ? `remotesapi.port ${options.port} is in use (${where}): choose another port, or stop what listens there`
            : `the remotes API cannot listen on ${where}: ${err.message}; check remotesapi.address and remotesapi.port`,
        ),
      );
    };
    server.once("error", failed);
    server.listen({ port: options.port, host: options.address ?? DEFAULT_ADDRESS }, () => {
      server.off("error", failed);
      resolve();
    });
  });
  server.on("error", (err) => log.warn({ err: err.message }, "remotes API: server error"));
  const info = server.address() as AddressInfo;
  log.info(
    { address: info.address, port: info.port, tls: Boolean(options.tls) },
    "remotes API is serving this server's databases (read-only)",
  );
  return {
    address: { host: info.address, port: info.port },
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await databases.close();
    },
  };
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  databases: ServedDatabases,
  scheme: string,
  log: Logger,
  idleTimeoutMs: number,
): Promise<void> {
  res.setHeader(API_HEADER, API_VERSION);
  let remote: DirectoryRemote | null = null;
  try {
    const method = req.method ?? "";
    if (method !== "GET" && method !== "HEAD") {
      const where = `${scheme}://${req.headers.host ?? "this server"}`;
      res.setHeader("Allow", "GET, HEAD");
      res.setHeader("Connection", "close");
      throw new ApiError(
        405,
        "read-only",
        "0A000",
        `this remote is read-only: it serves the databases of the Strata at ${where} for clone, fetch and pull (${method} is not served)`,
        "push to a directory (file:///path) or S3 (s3://bucket/prefix) remote instead",
      );
    }
    const request = parseApiPath(req.url ?? "/");
    const purpose = request.kind === "ref" || request.kind === "refs" ? "refs" : "objects";
    remote = await databases.remote(request.database, purpose);
    if (!remote)
      throw new ApiError(
        404,
        "database-not-found",
        "42704",
        `this Strata has no database "${request.database}"`,
        "the URL is http(s)://host:port/<database>, with a database of this server (SELECT datname FROM pg_database lists them)",
        request.database,
      );
    switch (request.kind) {
      case "database":
        return sendJson(res, 200, {
          format: API_FORMAT,
          version: Number(API_VERSION),
          database: request.database,
        });
      case "ref": {
        const value = await remote.readRef(request.name);
        if (!value)
          throw new ApiError(
            404,
            "ref-not-found",
            "42704",
            `database "${request.database}" has no ref ${request.name}`,
            "GET /<database>/refs?prefix=heads/ lists its branches",
            request.database,
          );
        res.setHeader("Cache-Control", "no-store");
        return sendJson(res, 200, { commit: value.commit, pack: value.pack });
      }
      case "refs": {
        const refs = await remote.listRefs(request.prefix);
        res.setHeader("Cache-Control", "no-store");
        return sendJson(res, 200, { refs: Object.fromEntries(refs) });
      }
      case "object":
        return await sendObject(req, res, remote, request.address, idleTimeoutMs);
    }
  } catch (err) {
    const apiError = err instanceof ApiError ? err : internalError(err, remote);
    if (apiError.status >= 500)
      log.warn({ url: req.url, err: (err as Error).message }, "remotes API: cannot serve a request");
    if (res.headersSent) throw err;
    res.setHeader(ERROR_HEADER, apiError.code);
    const body: ApiErrorBody = {
      error: apiError.message,
      hint: apiError.hint,
      code: apiError.code,
      sqlstate: apiError.sqlstate,
      ...(apiError.database === undefined ? {} : { database: apiError.database }),
    };
    sendJson(res, apiError.status, body, req.method === "HEAD");
  }
}

/**
 * A 500 for an error handle() did not expect; it is logged in full. Its answer reveals no file of
 * the server: a system error (ENAMETOOLONG, EACCES... whose message holds a path) is answered in
 * general terms, and the served remote's directory is left out of a remote's own errors.
 */
function internalError(err: unknown, remote: DirectoryRemote | null): ApiError {
  const e = err as { code?: unknown; hint?: unknown; message?: unknown; syscall?: unknown; path?: unknown };
  const sqlstate = typeof e?.code === "string" && /^[0-9A-Z]{5}$/.test(e.code) ? e.code : "XX000";
  const seeLog = "see the log of the Strata that serves it";
  if (typeof e?.syscall === "string" || typeof e?.path === "string")
    return new ApiError(
      500,
      "internal",
      sqlstate,
      `the remotes API could not serve the request: a file system error on the server${typeof e.code === "string" ? ` (${e.code})` : ""}`,
      seeLog,
    );
  let message = String(e?.message ?? err);
  let hint = typeof e?.hint === "string" ? e.hint : seeLog;
  if (remote && err instanceof RemoteStorageError) {
    const hide = (text: string) =>
      text.replaceAll(remote.url, "<served remote>").replaceAll(remote.root, "<served remote>");
    [message, hint] = [hide(message), hide(hint)];
  }
  return new ApiError(
    500,
    "internal",
    sqlstate,
    `the remotes API could not serve the request: ${message}`,
    hint,
  );
}

/** The whole response to a request Node's HTTP parser refused (clientError), as the API answers errors. */
function parseErrorResponse(code: string | undefined): string {
  const [status, reason, error]: [number, string, ApiErrorBody] =
    code === "HPE_HEADER_OVERFLOW"
      ? [
          431,
          "Request Header Fields Too Large",
          {
            error: `the request's line and headers are larger than this server takes (${maxHeaderSize} bytes)`,
            hint: "send fewer or shorter headers, and a shorter request target",
            code: "headers-too-large",
            sqlstate: "54000",
          },
        ]
      : code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? [
            408,
            "Request Timeout",
            {
              error: "the request did not arrive in time",
              hint: "send the whole request at once, then read the answer",
              code: "request-timeout",
              sqlstate: "08006",
            },
          ]
        : [
            400,
            "Bad Request",
            {
              error: `the request is not well-formed HTTP/1.1${code ? ` (${code})` : ""}`,
              hint: ENDPOINTS,
              code: "bad-request",
              sqlstate: "22023",
            },
          ];
  const body = `${JSON.stringify(error)}\n`;
  return [
    `HTTP/1.1 ${status} ${reason}`,
    "Connection: close",
    `${API_HEADER}: ${API_VERSION}`,
    `${ERROR_HEADER}: ${error.code}`,
    "Content-Type: application/json; charset=utf-8",
    `Content-Length: ${Buffer.byteLength(body)}`,
    "",
    body,
  ].join("\r\n");
}

function sendJson(res: ServerResponse, status: number, value: unknown, headOnly = false): void {
  const text = `${JSON.stringify(value)}\n`;
  res.statusCode = status;
  res.setHeader("Content-Type", "application/json; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(text));
  res.end(headOnly ? undefined : text);
}

async function sendObject(
  req: IncomingMessage,
  res: ServerResponse,
  remote: DirectoryRemote,
  address: string,
  idleTimeoutMs: number,
): Promise<void> {
  // The directory remote's layout (remote-layout.ts): objects/<aa>/<address>.
  const file = join(remote.root, "objects", address.slice(0, 2), address);
  const info = await stat(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ENOTDIR") return null;
    throw err;
  });
  if (!info?.isFile())
    throw new ApiError(
      404,
      "object-not-found",
      "58P01",
      `object ${address} is not in this remote`,
      "read the refs again: objects are named by the refs that point at them",
    );
  res.statusCode = 200;
  res.setHeader("Content-Type", "application/octet-stream");
  res.setHeader("Content-Length", info.size);
  // Named by its hash: never changes.
  res.setHeader("Cache-Control", "public, max-age=31536000, immutable");
  res.setHeader("ETag", `"${address}"`);
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  // The socket's inactivity timer restarts whenever a write completes: a client that stops
  // reading is dropped, which ends the pipeline and closes the file.
  res.setTimeout(idleTimeoutMs, () => res.destroy());
  await new Promise<void>((resolve, reject) =>
    pipeline(createReadStream(file), res, (err) => (err ? reject(err) : resolve())),
  );
}

// --- the store's databases, served -----------------------------------------------------------

interface BranchState {
  /** The head last pushed into the served remote. */
  head: string;
}

interface DatabaseState {
  remote: DirectoryRemote;
  /** The store's WAL insert position when the last complete push started. */
  lsn: string | null | undefined;
  databases: string[];
  heads: Map<string, BranchState>;
  /** Per store database: its tags' fingerprint, and the tags (name → commit). */
  tags: Map<string, { fingerprint: string; tags: Map<string, string> }>;
}

/** The store's databases, each served from a directory remote kept up to date by pushes. */
export class StoreDatabases implements ServedDatabases {
  private readonly admin: pg.Pool;
  private readonly states = new Map<string, DatabaseState>();
  private readonly queues = new KeyedQueue();
  /** Per database, the push that has not started yet: requests arriving now share it. */
  private readonly waiting = new Map<string, Promise<boolean>>();
  private readonly active = new Set<pg.Client>();
  private closed = false;

  constructor(
    private readonly store: StoreHandle,
    /** <data-dir>/remotesapi */
    private readonly root: string,
    private readonly log: Logger,
  ) {
    this.admin = new pg.Pool({ ...this.config("postgres"), max: 2, idleTimeoutMillis: 10_000 });
    this.admin.on("error", () => {}); // an idle connection the store closed: the next query opens another
  }

  async remote(database: string, purpose: "refs" | "objects"): Promise<DirectoryRemote | null> {
    if (this.closed) throw unavailable();
    if (purpose === "refs")
      return (await this.sync(database)) ? (this.states.get(database)?.remote ?? null) : null;
    const { rowCount } = await this.admin.query(
      "SELECT 1 FROM pg_database WHERE datname = $1 AND datallowconn AND NOT datistemplate",
      [database],
    );
    if (!rowCount) return null;
    return this.states.get(database)?.remote ?? new DirectoryRemote(this.directory(database));
  }

  async close(): Promise<void> {
    this.closed = true;
    // Pushes under way stop at their next query.
    await Promise.all([...this.active].map((client) => client.end().catch(() => {})));
    await this.queues.idle();
    await this.admin.end().catch(() => {});
  }

  /** Bring the served remote of `database` up to date; false when there is no such database. */
  private sync(database: string): Promise<boolean> {
    const queued = this.waiting.get(database);
    if (queued) return queued;
    const run = () => {
      if (this.waiting.get(database) === next) this.waiting.delete(database);
      if (this.closed) throw unavailable();
      return this.syncNow(database);
    };
    const next: Promise<boolean> = this.queues.run(database, run);
    this.waiting.set(database, next);
    return next;
  }

  private async syncNow(database: string): Promise<boolean> {
    const { rows } = await this.admin.query<{ lsn: string | null; databases: string[] }>(
      `SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text AS lsn,
              coalesce((SELECT array_agg(datname::text ORDER BY datname) FROM pg_database
                         WHERE datallowconn AND NOT datistemplate
                           AND (datname = $1 OR left(datname, length($1) + 1) = $1 || '/')), '{}') AS databases`,
      [database],
    );
    const { lsn, databases } = rows[0];
    if (!databases.includes(database)) {
      // Dropped (or never there): what was served for it goes.
      this.states.delete(database);
      await rm(this.directory(database), { recursive: true, force: true });
      return false;
    }
    let state = this.states.get(database);
    // Nothing written since (a standby store that has replayed nothing yet reports no position).
    if (state && lsn !== null && state.lsn === lsn && sameList(state.databases, databases)) return true;
    if (!state) {
      state = {
        remote: new DirectoryRemote(this.directory(database)),
        lsn: undefined,
        databases: [],
        heads: new Map(),
        tags: new Map(),
      };
      this.states.set(database, state);
    }
    const started = Date.now();
    const pushed = await this.pushAll(database, databases, state);
    state.lsn = lsn;
    state.databases = databases;
    if (pushed > 0)
      this.log.debug(
        { database, branches: pushed, ms: Date.now() - started },
        "remotes API: pushed the database's new commits into the remote it serves",
      );
    return true;
  }

  /** Push every branch (and the tags) of `database` into its served remote; returns the branches pushed. */
  private async pushAll(database: string, databases: string[], state: DatabaseState): Promise<number> {
    const remote = state.remote;
    // main first: its tags win over a branch's tag of the same name.
    const branches: Array<[branch: string, storeDatabase: string]> = [[MAIN_BRANCH, database]];
    for (const name of databases) {
      const branch = name.slice(database.length + 1);
      if (name !== database && branch !== MAIN_BRANCH && isValidRefName(`heads/${branch}`))
        branches.push([branch, name]);
    }
    const present = new Set<string>();
    let pushed = 0;
    let tagsChanged = false;
    for (const [branch, name] of branches) {
      const main = name === database;
      const client = await this.open(name, main);
      if (!client) continue; // dropped since it was listed
      try {
        let row: { head: string | null; tags: string };
        try {
          row = (
            await client.query<{ head: string | null; tags: string }>(
              `SELECT (SELECT hash FROM strata.commits ORDER BY seq DESC LIMIT 1) AS head,
                      (SELECT encode(sha256(convert_to(coalesce(string_agg(name || ' ' || commit_hash, ',' ORDER BY name), ''), 'UTF8')), 'hex')
                         FROM strata.tags) AS tags`,
            )
          ).rows[0];
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code !== "42P01" && code !== "3F000") throw err;
          if (!main) continue;
          throw new ApiError(
            404,
            "database-not-found",
            "42704",
            `database "${database}" of this Strata has no version history (no strata schema): there is nothing to serve`,
            "serve a database made through Strata (CREATE DATABASE through its listener)",
            database,
          );
        }
        if (row.head === null) {
          state.heads.delete(name); // no commits: no branch in the remote yet
        } else {
          present.add(branch);
          if (state.heads.get(name)?.head !== row.head) {
            const result = await pushBranch({
              client,
              storage: remote,
              remote: INTERNAL_REMOTE,
              branch,
              force: true,
              record: false,
            });
            state.heads.set(name, { head: result.head });
            if (result.status === "pushed") pushed++;
          }
        }
        if (state.tags.get(name)?.fingerprint !== row.tags) {
          const tags = await client.query<{ name: string; commit_hash: string }>(
            "SELECT name, commit_hash FROM strata.tags ORDER BY name",
          );
          state.tags.set(name, {
            fingerprint: row.tags,
            tags: new Map(tags.rows.map((t) => [t.name, t.commit_hash])),
          });
          tagsChanged = true;
        }
      } finally {
        await this.done(client);
      }
    }
    // Branches the database no longer has (deleted, renamed) go from the remote too.
    for (const [ref, value] of await remote.listRefs("heads/")) {
      if (!present.has(ref.slice("heads/".length))) await remote.compareAndSwapRef(ref, value, null);
    }
    const listed = new Set(branches.map(([, name]) => name));
    for (const name of [...state.heads.keys()]) if (!listed.has(name)) state.heads.delete(name);
    for (const name of [...state.tags.keys()]) {
      if (listed.has(name)) continue;
      state.tags.delete(name);
      tagsChanged = true;
    }
    if (tagsChanged) await this.pushTagsOf(branches, state);
    return pushed;
  }

  /**
   * Make the remote's tags the database's: the union of its branches' tags (main's first, where two
   * name different commits). Tags deleted or moved are deleted from the remote; missing ones are
   * pushed with pushTags from a branch that has them.
   */
  private async pushTagsOf(branches: Array<[string, string]>, state: DatabaseState): Promise<void> {
    const remote = state.remote;
    const wanted = new Map<string, { commit: string; database: string }>();
    for (const [, name] of branches) {
      for (const [tag, commit] of state.tags.get(name)?.tags ?? []) {
        if (!wanted.has(tag) && isValidRefName(`tags/${tag}`)) wanted.set(tag, { commit, database: name });
      }
    }
    const there = await remote.listRefs("tags/");
    for (const [ref, value] of there) {
      const tag = wanted.get(ref.slice("tags/".length));
      if (tag?.commit === value.commit) continue;
      await remote.compareAndSwapRef(ref, value, null);
      there.delete(ref);
    }
    const from = new Set<string>();
    for (const [tag, { database }] of wanted) if (!there.has(`tags/${tag}`)) from.add(database);
    for (const [, name] of branches) {
      if (!from.has(name)) continue;
      const client = await this.open(name, false);
      if (!client) continue;
      try {
        await pushTags(client, remote, INTERNAL_REMOTE, this.log, { record: false });
      } finally {
        await this.done(client);
      }
    }
  }

  /** A connection to store database `name`; null when it no longer exists (unless `required`). */
  private async open(name: string, required: boolean): Promise<pg.Client | null> {
    if (this.closed) throw unavailable();
    let client: pg.Client;
    try {
      client = await connect(this.config(name));
    } catch (err) {
      if (!required && (err as { code?: string }).code === "3D000") return null;
      throw err;
    }
    this.active.add(client);
    return client;
  }

  private async done(client: pg.Client): Promise<void> {
    this.active.delete(client);
    await client.end().catch(() => {});
  }

  private directory(database: string): string {
    // One path component, whatever the name ("." and ".." too).
    const encoded = encodeURIComponent(database).replace(/^\.{1,2}$/, (dots) => "%2E".repeat(dots.length));
    return join(this.root, encoded);
  }

  private config(database: string): pg.ClientConfig {
    return { ...this.store.connectionConfig(database), application_name: "strata remotesapi" };
  }
}

function unavailable(): ApiError {
  return new ApiError(
    503,
    "unavailable",
    "57P01",
    "this Strata is stopping",
    "try again once it has restarted",
  );
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}

// --- start ---------------------------------------------------------------------------------

/** The remotes API as config.yaml's `remotesapi:` section sets it up, serving the store's databases. */
export async function startRemotesApi(
  config: RemotesApiConfig,
  context: { store: StoreHandle; dataDir: string; log: Logger },
): Promise<RemotesApi> {
  const tls =
    config.tls_key && config.tls_cert
      ? loadTlsFiles("remotesapi", config.tls_key, config.tls_cert)
      : undefined;
  const databases = new StoreDatabases(context.store, join(context.dataDir, "remotesapi"), context.log);
  try {
    return await serveRemotesApi({
      port: config.port,
      address: config.address,
      tls,
      databases,
      log: context.log,
    });
  } catch (err) {
    await databases.close();
    throw err;
  }
}
