// What a remote stores, whatever it is stored on: immutable content-addressed objects (packs) and
// a few named refs that point at them. Push and pull are written against RemoteStorage alone, so
// a directory remote, an S3 remote and an HTTP remote differ only in their implementation of it.
//
// The contract every implementation keeps:
// - An object's address is the lowercase hex SHA-256 of its bytes, so objects never change and
//   can be written by anyone at any time; an object is visible whole or not at all.
// - A ref changes only by compare-and-swap: of two racing writers exactly one wins, the loser is
//   told (false) and reads again. Nothing is ever locked, so a writer killed at any point leaves
//   nothing that blocks the next one.
// - Readers check what they read: openObject's stream fails at its end when the bytes do not hash
//   to the address, so a consumer must not act on the data before the stream has ended cleanly.

import type { Readable } from "node:stream";
import type { Config } from "../config/schema.ts";
import { DirectoryRemote } from "./directory-remote.ts";
import { HttpRemote } from "./http-remote.ts";
import { S3Remote, type S3Settings } from "./s3-remote.ts";
import { parseRemoteUrl } from "./url.ts";

/** What a ref points at: a Strata commit, and the pack (object address) that holds it. */
export interface RefValue {
  commit: string;
  pack: string;
}

export interface RemoteStorage {
  /** The URL the remote was opened with, for messages. */
  readonly url: string;
  /** The ref's value, or null when it does not exist (or was deleted). */
  readRef(name: string): Promise<RefValue | null>;
  /** Every existing ref whose name starts with `prefix` ("heads/" → "heads/main", ...). */
  listRefs(prefix: string): Promise<Map<string, RefValue>>;
  /**
   * Set the ref to `next` (null deletes it) if its value is `expected` (null: it does not exist).
   * False when it was not: another writer moved it first; read it again and decide again.
   */
  compareAndSwapRef(name: string, expected: RefValue | null, next: RefValue | null): Promise<boolean>;
  /** Store a local file as an object; returns its address. Storing it again changes nothing. */
  putObjectFile(localPath: string): Promise<string>;
  hasObject(address: string): Promise<boolean>;
  /**
   * The object's bytes. Throws MissingObjectError when it is not there; the stream errors with
   * CorruptObjectError at its end when the bytes do not hash to the address.
   */
  openObject(address: string): Promise<Readable>;
}

/** Errors of remote storage: the message names the cause, the hint the fix, code is SQLSTATE. */
export class RemoteStorageError extends Error {
  override name = "RemoteStorageError";
  constructor(
    message: string,
    readonly hint: string,
    readonly code: string,
  ) {
    super(message);
  }
}

export class CorruptObjectError extends RemoteStorageError {
  override name = "CorruptObjectError";
  constructor(
    readonly remoteUrl: string,
    readonly address: string,
    readonly actualHash: string,
  ) {
    super(
      `object ${address} in remote ${remoteUrl} is corrupt: its bytes hash to ${actualHash}`,
      "the remote's copy is damaged or truncated: push the commit again from a database that has it, or restore the remote from a backup",
      "XX001",
    );
  }
}

export class MissingObjectError extends RemoteStorageError {
  override name = "MissingObjectError";
  constructor(
    readonly remoteUrl: string,
    readonly address: string,
  ) {
    super(
      `object ${address} is missing from remote ${remoteUrl}`,
      "the remote is incomplete (a ref points at an object it does not hold): push again from a database that has the commit",
      "58P01",
    );
  }
}

/** A remote whose files are not what Strata writes: damaged, another program's, or a newer format. */
export class RemoteFormatError extends RemoteStorageError {
  override name = "RemoteFormatError";
  constructor(message: string, hint: string, code = "XX001") {
    super(message, hint, code);
  }
}

export class RefNameError extends RemoteStorageError {
  override name = "RefNameError";
  constructor(name: string, problem: string) {
    super(
      `ref name "${name}" is not valid: ${problem}`,
      `name refs heads/<branch> or tags/<tag>; branch and tag names must not be empty, start with "/", "-" or ".", or contain "..", "//", spaces, control characters or any of ~^:?*[\\`,
      "42602",
    );
  }
}

export const REF_NAMESPACES = ["heads", "tags"] as const;

// Longest branch or tag name, in UTF-8 bytes: a ref is stored under a file name of its own.
const MAX_REF_NAME_BYTES = 200;

/** Throws RefNameError unless `name` is heads/<branch> or tags/<tag> with a well-formed name. */
export function checkRefName(name: string): void {
  const problem = refNameProblem(name);
  if (problem !== null) throw new RefNameError(name, problem);
}

function refNameProblem(name: string): string | null {
  const slash = name.indexOf("/");
  const namespace = slash < 0 ? name : name.slice(0, slash);
  if (!(REF_NAMESPACES as readonly string[]).includes(namespace)) {
    return `it starts with "${namespace}" where heads/ or tags/ should be`;
  }
  const short = name.slice(slash + 1);
  if (slash < 0 || short === "") return `it has no ${namespace === "heads" ? "branch" : "tag"} name`;
  if (short.startsWith("/") || short.startsWith("-")) return `it starts with "${short[0]}"`;
  if (short.includes("..")) return `it contains ".."`;
  if (/[\u0000-\u0020\u007f]/.test(short)) return "it contains a space or a control character";
  const special = /[~^:?*[\\]/.exec(short);
  if (special) return `it contains "${special[0]}"`;
  if (short.split("/").some((part) => part === "")) return `it has an empty part (a "//" or a trailing "/")`;
  if (short.split("/").some((part) => part.startsWith("."))) return `a part of it starts with "."`;
  if (Buffer.byteLength(short) > MAX_REF_NAME_BYTES) return `it is longer than ${MAX_REF_NAME_BYTES} bytes`;
  return null;
}

export function isValidRefName(name: string): boolean {
  return refNameProblem(name) === null;
}

const ADDRESS = /^[0-9a-f]{64}$/;

export function isObjectAddress(text: string): boolean {
  return ADDRESS.test(text);
}

/** Throws unless `address` is an object address (a caller's mistake, not the remote's). */
export function checkObjectAddress(address: string): void {
  if (!isObjectAddress(address)) {
    throw new RemoteStorageError(
      `"${address}" is not an object address`,
      "object addresses are 64 lowercase hex digits (a SHA-256)",
      "22023",
    );
  }
}

/** Throws unless `value` can be stored as a ref's value. */
export function checkRefValue(value: RefValue): void {
  if (typeof value.commit !== "string" || !/^[\u0021-\u007e]{1,256}$/.test(value.commit)) {
    throw new RemoteStorageError(
      `ref value has commit ${JSON.stringify(value.commit)}, which is not a commit hash`,
      "a ref points at a commit hash: 1 to 256 printable ASCII characters",
      "22023",
    );
  }
  if (typeof value.pack !== "string" || !isObjectAddress(value.pack)) {
    throw new RemoteStorageError(
      `ref value has pack ${JSON.stringify(value.pack)}, which is not an object address`,
      "a ref's pack is the address putObjectFile returned: 64 lowercase hex digits",
      "22023",
    );
  }
}

export function sameRefValue(a: RefValue | null, b: RefValue | null): boolean {
  if (a === null || b === null) return a === b;
  return a.commit === b.commit && a.pack === b.pack;
}

/** An S3-compatible store that does not honour conditional writes (If-None-Match: * on PutObject). */
export class ConditionalWritesError extends RemoteStorageError {
  override name = "ConditionalWritesError";
}

/** How remotes are reached: for S3, anything not set here comes from the AWS environment. */
export interface RemoteStorageSettings {
  s3?: S3Settings;
}

let configured: RemoteStorageSettings = {};

/**
 * The settings openRemoteStorage uses from now on, from config.yaml's `remotes` section; set once
 * when the server starts (remote URLs are per database, but where S3 is and who Strata is there
 * are the server's).
 */
export function configureRemoteStorage(remotes: Config["remotes"] | undefined): void {
  const s3 = remotes?.s3;
  configured = {
    s3: {
      endpoint: s3?.endpoint,
      region: s3?.region,
      forcePathStyle: s3?.force_path_style,
      accessKeyId: s3?.access_key_id,
      secretAccessKey: s3?.secret_access_key,
      sessionToken: s3?.session_token,
    },
  };
}

/** The storage behind a remote URL (see url.ts for the accepted forms). */
export function openRemoteStorage(url: string, settings: RemoteStorageSettings = configured): RemoteStorage {
  const parsed = parseRemoteUrl(url);
  if (parsed.kind === "file") return new DirectoryRemote(parsed.path, { url });
  if (parsed.kind === "s3") return new S3Remote(parsed.bucket, parsed.prefix, { url, settings: settings.s3 });
  // Another Strata's remotes API (read-only): http(s)://host:port/<database>.
  return new HttpRemote(url);
}
