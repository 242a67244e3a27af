// A remote in an S3 bucket (s3://bucket/prefix): AWS S3, or any S3-compatible store that honours
// conditional writes (MinIO, Cloudflare R2, ...). The layout under the prefix is the directory
// remote's (remote-layout.ts): the marker, objects/<aa>/<address>, refs/<ns>/<name>/<n>.
//
// S3 has no rename and no lock, but it has "create if absent": a PutObject with
// `If-None-Match: *` fails with 412 when the key exists, atomically. That is all a ref needs,
// exactly as link() is for the directory remote:
// - a ref compare-and-swap lists the ref's versions, reads the highest n, compares its value, and
//   creates n + 1 conditionally. Of two writers that read the same n, exactly one PUT succeeds;
//   the other gets 412 and reports that it lost (409, two conditional PUTs of the key in flight:
//   it reads again). A deletion is a version recording {"deleted":true}.
//   Each version also records a random token of its writer, so that a PUT the SDK retried after
//   its first attempt had landed (412 on the retry) is still recognised as this writer's win.
// - objects are immutable and named by their SHA-256, so they are written without a condition
//   (the same bytes whoever writes them) and skipped when they exist. A PutObject is visible whole
//   or not at all, so nothing is ever half-written; no temporary keys are needed.
// A store that ignores If-None-Match would let two writers both "win" and lose an update, so a
// writer checks once (per store and bucket, per process) that a conditional PUT of the marker,
// which exists by then, is refused; a store that accepts it is refused with that said.
//
// Old ref versions are pruned as in the directory remote: all but the newest KEEP_VERSIONS, once
// an hour old, and a compare-and-swap gives up a read older than STALE_READ_MS.
//
// Objects upload from the file as a stream, never held in memory: up to MULTIPART_THRESHOLD in
// one PutObject (Content-Length and Content-MD5 set, so the store checks what it received), above
// it as a multipart upload of PART_BYTES parts, each read from its range of the file with its own
// Content-MD5, a few at a time; a failed part is sent again alone. The SDK does not retry a
// request whose body is a stream, so both retry here, reopening the file.
//
// The AWS SDK is loaded on first use: a Strata without S3 remotes never loads it.

import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import type { Readable } from "node:stream";
import type { S3Client } from "@aws-sdk/client-s3";
import {
  checkMarkerText,
  collectRefs,
  FORMAT_FILE,
  KEEP_VERSIONS,
  MARKER_TEXT,
  newestVersion,
  PRUNE_AFTER_MS,
  parseRefVersion,
  refPathParts,
  refVersionText,
  STALE_READ_MS,
  verifyingTransform,
} from "./remote-layout.ts";
import {
  ConditionalWritesError,
  checkObjectAddress,
  checkRefName,
  checkRefValue,
  MissingObjectError,
  type RefValue,
  RemoteFormatError,
  type RemoteStorage,
  RemoteStorageError,
  sameRefValue,
} from "./storage.ts";

/** Where the store is and who Strata is there; anything unset comes from the AWS environment. */
export interface S3Settings {
  /** The store's URL (http(s)://host:port); default AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or AWS. */
  endpoint?: string;
  /** Default AWS_REGION (or AWS_DEFAULT_REGION, the profile's); us-east-1 with a custom endpoint. */
  region?: string;
  /** Bucket in the path, not the host name; default true with a custom endpoint, false for AWS. */
  forcePathStyle?: boolean;
  /** Both or neither; default the SDK's chain (AWS_ACCESS_KEY_ID..., AWS_PROFILE, roles). */
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
}

export interface S3RemoteOptions {
  /** The URL to name the remote by in messages (default s3://bucket/prefix). */
  url?: string;
  settings?: S3Settings;
  /** Versions of a ref kept however old (default 10). */
  keepVersions?: number;
  /** Age before an older ref version may be pruned (default an hour; tests lower it). */
  pruneAfterMs?: number;
  /** Files larger than this are uploaded in parts (default 256 MiB; tests lower it). */
  multipartThresholdBytes?: number;
  /** Size of an upload's parts (default 64 MiB; at least 5 MiB on AWS, except the last part). */
  partBytes?: number;
}

const MULTIPART_THRESHOLD = 256 * 1024 * 1024;
const PART_BYTES = 64 * 1024 * 1024;
const MAX_PARTS = 10_000;
const PARTS_AT_ONCE = 4;
const UPLOAD_ATTEMPTS = 4;
const CHUNK_BYTES = 1 << 20;
const CONNECT_TIMEOUT_MS = 10_000;
// A connection that carries nothing either way for this long is given up (a hung store), also
// while an object streams to a reader; long enough for any pause of a reader applying a pack.
const IDLE_TIMEOUT_MS = 5 * 60 * 1000;

type Sdk = typeof import("@aws-sdk/client-s3");
let sdkModule: Promise<Sdk> | undefined;
const loadSdk = (): Promise<Sdk> => {
  sdkModule ??= import("@aws-sdk/client-s3");
  return sdkModule;
};

// One client per configuration, for the process: clients hold the connection pool and credentials.
const clients = new Map<string, Promise<S3Client>>();
// Stores (endpoint and bucket) seen to refuse a conditional PUT of an existing key.
const conditionalWritesChecked = new Set<string>();

/** Closes every cached client's connections (for tests that stop their S3 server). */
export async function destroyS3Clients(): Promise<void> {
  const all = [...clients.values()];
  clients.clear();
  conditionalWritesChecked.clear();
  for (const client of await Promise.allSettled(all)) {
    if (client.status === "fulfilled") client.value.destroy();
  }
}

const silentLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };

function envEndpoint(): string | undefined {
  return process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || undefined;
}

function clientFor(settings: S3Settings): Promise<S3Client> {
  const key = JSON.stringify([settings, envEndpoint() ?? ""]);
  let client = clients.get(key);
  if (!client) {
    client = loadSdk().then(({ S3Client }) => {
      const customEndpoint = settings.endpoint ?? envEndpoint();
      const region =
        settings.region ??
        (process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || undefined) ??
        (customEndpoint ? "us-east-1" : undefined);
      return new S3Client({
        endpoint: settings.endpoint,
        region,
        forcePathStyle: settings.forcePathStyle ?? customEndpoint !== undefined,
        credentials:
          settings.accessKeyId !== undefined && settings.secretAccessKey !== undefined
            ? {
                accessKeyId: settings.accessKeyId,
                secretAccessKey: settings.secretAccessKey,
                sessionToken: settings.sessionToken,
              }
            : undefined,
        // Objects are checked end to end by their SHA-256 (and sent with Content-MD5); the SDK's
        // own CRC checksums would send streams aws-chunked, which many S3-compatible stores refuse.
        requestChecksumCalculation: "WHEN_REQUIRED",
        responseChecksumValidation: "WHEN_REQUIRED",
        requestHandler: { connectionTimeout: CONNECT_TIMEOUT_MS, socketTimeout: IDLE_TIMEOUT_MS },
        logger: silentLogger,
      });
    });
    client.catch(() => clients.delete(key));
    clients.set(key, client);
  }
  return client;
}

interface SdkError {
  name?: string;
  message?: string;
  code?: string;
  Code?: string;
  errors?: unknown[];
  $metadata?: { httpStatusCode?: number };
}

const NETWORK_UNREACHABLE = ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"];
const NETWORK_LOST = ["ECONNRESET", "EPIPE", "ETIMEDOUT", "ECONNABORTED", "ERR_STREAM_PREMATURE_CLOSE"];
const BAD_CREDENTIALS = [
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "InvalidToken",
  "ExpiredToken",
  "TokenRefreshRequired",
  "InvalidClientTokenId",
];

function statusOf(err: unknown): number | undefined {
  return (err as SdkError | null)?.$metadata?.httpStatusCode;
}

function nameOf(err: unknown): string {
  const e = (err ?? {}) as SdkError;
  return e.Code ?? e.name ?? "";
}

/** A Node network error's code, also inside the AggregateError of a multi-address connect. */
function networkCode(err: unknown): string | undefined {
  const e = (err ?? {}) as SdkError;
  if (typeof e.code === "string" && [...NETWORK_UNREACHABLE, ...NETWORK_LOST].includes(e.code)) return e.code;
  if (e.name === "TimeoutError") return "ETIMEDOUT";
  if (Array.isArray(e.errors) && e.errors.length > 0) return networkCode(e.errors[0]);
  return undefined;
}

function isNotFound(err: unknown): boolean {
  const name = nameOf(err);
  return name === "NoSuchKey" || name === "NotFound" || (statusOf(err) === 404 && name !== "NoSuchBucket");
}

/** Worth sending again: the network, a 5xx, or the store asking to slow down. */
function isTransient(err: unknown): boolean {
  const status = statusOf(err);
  return (
    networkCode(err) !== undefined ||
    (status !== undefined && status >= 500 && status !== 501) ||
    ["SlowDown", "RequestTimeout", "ThrottlingException", "InternalError"].includes(nameOf(err))
  );
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

type PutOutcome = "created" | "exists" | "conflict";

interface HashedFile {
  address: string;
  size: number;
  /** The file's MD5 (base64), when it is uploaded whole. */
  md5: string;
  /** Each part's MD5 (base64), when the file is uploaded in parts. */
  partMd5s: string[];
  partBytes: number;
}

export class S3Remote implements RemoteStorage {
  readonly url: string;
  private readonly settings: S3Settings;
  private readonly base: string;
  private readonly keepVersions: number;
  private readonly pruneAfterMs: number;
  private readonly multipartThreshold: number;
  private readonly partBytes: number;
  private formatChecked = false;
  private writable: Promise<void> | undefined;

  constructor(
    readonly bucket: string,
    readonly prefix: string,
    options: S3RemoteOptions = {},
  ) {
    this.url = options.url ?? `s3://${bucket}/${prefix}`;
    this.settings = options.settings ?? {};
    this.base = prefix === "" ? "" : `${prefix.replace(/\/+$/, "")}/`;
    this.keepVersions = Math.max(1, options.keepVersions ?? KEEP_VERSIONS);
    this.pruneAfterMs = options.pruneAfterMs ?? PRUNE_AFTER_MS;
    this.multipartThreshold = options.multipartThresholdBytes ?? MULTIPART_THRESHOLD;
    this.partBytes = Math.max(1, options.partBytes ?? PART_BYTES);
  }

  // --- objects -----------------------------------------------------------------------------

  async putObjectFile(localPath: string): Promise<string> {
    await this.prepareForWrite();
    const file = await this.hashFile(localPath);
    const key = this.objectKey(file.address);
    if (await this.exists(key, `object ${file.address}`)) return file.address; // the same bytes
    if (file.partMd5s.length === 0) await this.uploadWhole(localPath, key, file);
    else await this.uploadParts(localPath, key, file);
    return file.address;
  }

  async hasObject(address: string): Promise<boolean> {
    checkObjectAddress(address);
    if (!(await this.isRemote())) return false;
    return this.exists(this.objectKey(address), `object ${address}`);
  }

  async openObject(address: string): Promise<Readable> {
    checkObjectAddress(address);
    if (!(await this.isRemote())) throw new MissingObjectError(this.url, address);
    const { GetObjectCommand } = await loadSdk();
    const what = `object ${address}`;
    let body: Readable;
    try {
      const output = await (await this.client()).send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.objectKey(address) }),
      );
      body = output.Body as Readable;
    } catch (err) {
      if (isNotFound(err)) throw new MissingObjectError(this.url, address);
      throw this.storageError(err, `reading ${what}`);
    }
    const verified = verifyingTransform(this.url, address);
    // As a pipeline would, with the network's errors told as the remote's: the reader sees every
    // error on `verified`, and a reader that stops early closes the connection.
    body.on("error", (err) => verified.destroy(this.storageError(err, `reading ${what}`)));
    verified.on("close", () => body.destroy());
    body.pipe(verified);
    return verified;
  }

  private objectKey(address: string): string {
    return `${this.base}objects/${address.slice(0, 2)}/${address}`;
  }

  /** SHA-256 (the address), and the MD5 of the file or, for a multipart upload, of each part: one read. */
  private async hashFile(localPath: string): Promise<HashedFile> {
    const sha = createHash("sha256");
    const md5 = createHash("md5");
    const partMd5s: string[] = [];
    let size = 0;
    let part = createHash("md5");
    let partFill = 0;
    const unreadable = (err: unknown) =>
      new RemoteStorageError(
        `cannot read ${localPath} to upload it to remote ${this.url}: ${(err as Error).message}`,
        "the local pack file went away or is unreadable: run the push again",
        "58030",
      );
    const known = await stat(localPath).then(
      (info) => info.size,
      (err) => {
        throw unreadable(err);
      },
    );
    // Parts of partBytes, grown so that a file has at most 10 000 of them (S3's limit).
    const multipart = known > this.multipartThreshold;
    const partBytes = Math.max(this.partBytes, Math.ceil(known / MAX_PARTS));
    try {
      for await (const chunk of createReadStream(localPath, {
        highWaterMark: CHUNK_BYTES,
      }) as AsyncIterable<Buffer>) {
        sha.update(chunk);
        size += chunk.length;
        if (!multipart) {
          md5.update(chunk);
          continue;
        }
        for (let offset = 0; offset < chunk.length; ) {
          const take = Math.min(chunk.length - offset, partBytes - partFill);
          part.update(chunk.subarray(offset, offset + take));
          partFill += take;
          offset += take;
          if (partFill === partBytes) {
            partMd5s.push(part.digest("base64"));
            part = createHash("md5");
            partFill = 0;
          }
        }
      }
    } catch (err) {
      throw unreadable(err);
    }
    if (multipart && partFill > 0) partMd5s.push(part.digest("base64"));
    if (size !== known) {
      throw new RemoteStorageError(
        `${localPath} changed while it was read for remote ${this.url} (${known} bytes, then ${size})`,
        "a pack file must not change once written: run the push again",
        "55000",
      );
    }
    return { address: sha.digest("hex"), size, md5: md5.digest("base64"), partMd5s, partBytes };
  }

  private async uploadWhole(localPath: string, key: string, file: HashedFile): Promise<void> {
    const { PutObjectCommand } = await loadSdk();
    const client = await this.client();
    await this.withRetries(`uploading object ${file.address}`, () =>
      client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: createReadStream(localPath, { highWaterMark: CHUNK_BYTES }),
          ContentLength: file.size,
          ContentMD5: file.md5,
          ContentType: "application/octet-stream",
        }),
      ),
    );
  }

  private async uploadParts(localPath: string, key: string, file: HashedFile): Promise<void> {
    const sdk = await loadSdk();
    const client = await this.client();
    const what = `uploading object ${file.address}`;
    let uploadId: string;
    try {
      const created = await client.send(
        new sdk.CreateMultipartUploadCommand({
          Bucket: this.bucket,
          Key: key,
          ContentType: "application/octet-stream",
        }),
      );
      uploadId = created.UploadId!;
    } catch (err) {
      throw this.storageError(err, what);
    }
    try {
      const etags: string[] = new Array(file.partMd5s.length);
      let next = 0;
      const worker = async () => {
        while (next < file.partMd5s.length) {
          const index = next++;
          const start = index * file.partBytes;
          const length = Math.min(file.partBytes, file.size - start);
          const output = await this.withRetries(`${what} (part ${index + 1})`, () =>
            client.send(
              new sdk.UploadPartCommand({
                Bucket: this.bucket,
                Key: key,
                UploadId: uploadId,
                PartNumber: index + 1,
                Body: createReadStream(localPath, {
                  start,
                  end: start + length - 1,
                  highWaterMark: CHUNK_BYTES,
                }),
                ContentLength: length,
                ContentMD5: file.partMd5s[index],
              }),
            ),
          );
          etags[index] = output.ETag!;
        }
      };
      await Promise.all(Array.from({ length: Math.min(PARTS_AT_ONCE, file.partMd5s.length) }, worker));
      await this.withRetries(what, () =>
        client.send(
          new sdk.CompleteMultipartUploadCommand({
            Bucket: this.bucket,
            Key: key,
            UploadId: uploadId,
            MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
          }),
        ),
      );
    } catch (err) {
      // Best effort: what is left is found by the bucket's AbortIncompleteMultipartUpload rule.
      await client
        .send(new sdk.AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }))
        .catch(() => {});
      // A completion that landed but whose answer was lost (its retry finds no upload), or another
      // writer's copy: the object is there, whole, and it is these bytes.
      if (await this.exists(key, `object ${file.address}`).catch(() => false)) return;
      throw err;
    }
  }

  /** Runs `send` (which opens its body afresh each time) until it succeeds or fails for good. */
  private async withRetries<T>(what: string, send: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await send();
      } catch (err) {
        if (attempt >= UPLOAD_ATTEMPTS || !isTransient(err)) throw this.storageError(err, what);
        await sleep(Math.min(200 * 2 ** attempt, 5_000) * (0.5 + Math.random()));
      }
    }
  }

  // --- refs --------------------------------------------------------------------------------

  async readRef(name: string): Promise<RefValue | null> {
    checkRefName(name);
    if (!(await this.isRemote())) return null;
    return (await this.readRefState(name)).value;
  }

  async listRefs(prefix: string): Promise<Map<string, RefValue>> {
    if (!(await this.isRemote())) return new Map();
    return collectRefs(
      prefix,
      async (namespace) => {
        const { prefixes } = await this.list(`${this.base}refs/${namespace}/`, "/", `refs of ${this.url}`);
        return prefixes.map((entry) => entry.replace(/\/$/, ""));
      },
      async (name) => (await this.readRefState(name)).value,
    );
  }

  async compareAndSwapRef(name: string, expected: RefValue | null, next: RefValue | null): Promise<boolean> {
    checkRefName(name);
    if (next !== null) checkRefValue(next);
    await this.prepareForWrite();
    // The writer's token: a version holding it is this call's, whatever a retried PUT was told.
    const content = refVersionText(next, { writer: randomBytes(12).toString("hex") });
    for (;;) {
      const readAt = Date.now();
      const current = await this.readRefState(name);
      if (!sameRefValue(current.value, expected)) return false;
      if (sameRefValue(current.value, next)) return true; // already so: no new version
      const elapsed = Date.now() - readAt;
      if (elapsed < 0 || elapsed > STALE_READ_MS) continue; // stalled: see the header, read again
      const version = current.version + 1;
      const key = `${this.refBase(name)}${version}`;
      const outcome = await this.putIfAbsent(key, content, `ref ${name}`);
      if (outcome === "conflict") {
        await sleep(20 + Math.random() * 80); // another conditional PUT of it is in flight
        continue;
      }
      if (outcome === "exists") return (await this.getText(key, `ref ${name}`)) === content;
      if (version % this.keepVersions === 0) await this.pruneVersions(name, version);
      return true;
    }
  }

  /** The key prefix of a ref's versions: <prefix>/refs/<namespace>/<encoded name>/. */
  private refBase(name: string): string {
    return `${this.base}refs/${refPathParts(name).join("/")}/`;
  }

  private async readRefState(name: string): Promise<{ version: number; value: RefValue | null }> {
    const base = this.refBase(name);
    // The newest version can be pruned between listing and reading it only when this reader
    // stalled for an hour while others wrote; list again then.
    for (let attempt = 1; ; attempt++) {
      const { keys } = await this.list(base, undefined, `ref ${name}`);
      const version = newestVersion(keys.map((entry) => entry.key));
      if (version === 0) return { version, value: null };
      const key = `${base}${version}`;
      const text = await this.getText(key, `ref ${name}`);
      if (text === null) {
        if (attempt < 5) continue;
        throw new RemoteFormatError(
          `ref ${name} in remote ${this.url}: version ${version} was listed but cannot be read`,
          "the store lists objects it does not serve: check its consistency, then try again",
        );
      }
      const value = parseRefVersion(text);
      if (value === undefined) {
        throw new RemoteFormatError(
          `ref version s3://${this.bucket}/${key} in remote ${this.url} is damaged: it is not {"commit","pack"} or {"deleted":true}`,
          `delete s3://${this.bucket}/${key} so that the ref's previous version becomes current, or restore the remote from a backup`,
        );
      }
      return { version, value };
    }
  }

  /** Deletes versions below the newest keepVersions that are older than pruneAfterMs; best effort. */
  private async pruneVersions(name: string, newest: number): Promise<void> {
    try {
      const { DeleteObjectCommand } = await loadSdk();
      const client = await this.client();
      const base = this.refBase(name);
      const cutoff = Date.now() - this.pruneAfterMs;
      const old = (await this.list(base, undefined, `ref ${name}`)).keys.filter((entry) => {
        const version = newestVersion([entry.key]);
        return version > 0 && version <= newest - this.keepVersions && entry.modified < cutoff;
      });
      // One DeleteObject each: DeleteObjects is missing from some S3-compatible stores.
      for (let i = 0; i < old.length; i += 8) {
        await Promise.all(
          old
            .slice(i, i + 8)
            .map((entry) =>
              client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: base + entry.key })),
            ),
        );
      }
    } catch {
      // another writer pruned the same versions, or the store refused: the next prune retries
    }
  }

  // --- the remote's prefix -----------------------------------------------------------------

  /**
   * True when the prefix is a Strata remote, false when there is no remote yet (nothing under the
   * prefix); throws when it holds something else or a format this Strata cannot read.
   */
  private async isRemote(): Promise<boolean> {
    if (this.formatChecked) return true;
    const markerKey = `${this.base}${FORMAT_FILE}`;
    for (let attempt = 1; ; attempt++) {
      const text = await this.getText(markerKey, "its format marker");
      if (text !== null) {
        checkMarkerText(text, `s3://${this.bucket}/${markerKey}`, this.url, "prefix");
        this.formatChecked = true;
        return true;
      }
      const { keys, truncated } = await this.list(this.base, undefined, this.url, 4);
      // A first writer created the remote between the two reads (the marker is never removed).
      if (keys.some((entry) => entry.key === FORMAT_FILE) && attempt < 3) continue;
      if (keys.length === 0) return false;
      const shown = keys.slice(0, 3).map((entry) => entry.key);
      throw new RemoteFormatError(
        `s3://${this.bucket}/${this.base} is not a Strata remote: it has no ${FORMAT_FILE} but holds other objects (${shown.join(", ")}${keys.length > 3 || truncated ? ", ..." : ""})`,
        "point the remote at a new or empty prefix (s3://bucket/prefix), or at an existing Strata remote",
        "55000",
      );
    }
  }

  /** Creates the remote on first write, and checks the store's conditional writes; once per instance. */
  private prepareForWrite(): Promise<void> {
    this.writable ??= this.createIfAbsent().catch((err) => {
      this.writable = undefined;
      throw err;
    });
    return this.writable;
  }

  private async createIfAbsent(): Promise<void> {
    const markerKey = `${this.base}${FORMAT_FILE}`;
    if (!(await this.isRemote())) {
      // Lost to a concurrent first writer: its marker is checked below like any other.
      await this.putIfAbsent(markerKey, MARKER_TEXT, "its format marker");
      if (!(await this.isRemote())) throw new Error(`${FORMAT_FILE} vanished from ${this.url}`);
    }
    const store = `${this.endpointName()}\u0000${this.bucket}`;
    if (conditionalWritesChecked.has(store)) return;
    // The marker exists and is this Strata's: a conditional PUT of the same bytes must be refused.
    // A store that accepts it has only rewritten the marker as it was, and is refused itself.
    if ((await this.putIfAbsent(markerKey, MARKER_TEXT, "its format marker")) === "created") {
      throw this.noConditionalWrites("it accepted a PUT with If-None-Match: * of a key that exists");
    }
    conditionalWritesChecked.add(store);
  }

  private noConditionalWrites(detail: string): ConditionalWritesError {
    return new ConditionalWritesError(
      `remote ${this.url}: this S3-compatible store (${this.endpointName()}) ignored If-None-Match; Strata needs conditional writes for safe ref updates (${detail})`,
      "use a store that supports conditional writes (PutObject with If-None-Match: *), as AWS S3, MinIO and Cloudflare R2 do, or a directory remote (file:///path)",
      "0A000",
    );
  }

  // --- requests ----------------------------------------------------------------------------

  private client(): Promise<S3Client> {
    return clientFor(this.settings).catch((err) => {
      throw this.storageError(err, "connecting");
    });
  }

  /** The object's text, or null when it does not exist. */
  private async getText(key: string, what: string): Promise<string | null> {
    const { GetObjectCommand } = await loadSdk();
    const client = await this.client();
    try {
      const output = await client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return await output.Body!.transformToString("utf8");
    } catch (err) {
      if (isNotFound(err)) return null;
      throw this.storageError(err, `reading ${what}`);
    }
  }

  private async exists(key: string, what: string): Promise<boolean> {
    const { HeadObjectCommand } = await loadSdk();
    const client = await this.client();
    try {
      await client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw this.storageError(err, `looking for ${what}`);
    }
  }

  /** PUT with If-None-Match: *: created, or the key exists, or another conditional PUT of it is in flight. */
  private async putIfAbsent(key: string, text: string, what: string): Promise<PutOutcome> {
    const { PutObjectCommand } = await loadSdk();
    const client = await this.client();
    try {
      await client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: text,
          IfNoneMatch: "*",
          ContentType: "application/json",
        }),
      );
      return "created";
    } catch (err) {
      const status = statusOf(err);
      const name = nameOf(err);
      if (status === 412 || name === "PreconditionFailed") return "exists";
      if (status === 409 || name === "ConditionalRequestConflict") return "conflict";
      if (status === 501 || name === "NotImplemented") {
        throw this.noConditionalWrites(`it answered a PUT with If-None-Match: * with ${name || status}`);
      }
      throw this.storageError(err, `writing ${what}`);
    }
  }

  /** Every key under `prefix` (relative to it), or with `delimiter` the common prefixes too. */
  private async list(
    prefix: string,
    delimiter: string | undefined,
    what: string,
    maxKeys?: number,
  ): Promise<{ keys: { key: string; modified: number }[]; prefixes: string[]; truncated: boolean }> {
    const { ListObjectsV2Command } = await loadSdk();
    const client = await this.client();
    const keys: { key: string; modified: number }[] = [];
    const prefixes: string[] = [];
    let token: string | undefined;
    try {
      for (;;) {
        const page = await client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: prefix,
            Delimiter: delimiter,
            ContinuationToken: token,
            MaxKeys: maxKeys,
          }),
        );
        for (const entry of page.Contents ?? []) {
          if (entry.Key?.startsWith(prefix)) {
            keys.push({ key: entry.Key.slice(prefix.length), modified: entry.LastModified?.getTime() ?? 0 });
          }
        }
        for (const common of page.CommonPrefixes ?? []) {
          if (common.Prefix?.startsWith(prefix)) prefixes.push(common.Prefix.slice(prefix.length));
        }
        if (maxKeys !== undefined) return { keys, prefixes, truncated: page.IsTruncated === true };
        if (!page.IsTruncated || !page.NextContinuationToken) return { keys, prefixes, truncated: false };
        token = page.NextContinuationToken;
      }
    } catch (err) {
      throw this.storageError(err, `listing ${what}`);
    }
  }

  private endpointName(): string {
    const endpoint = this.settings.endpoint ?? envEndpoint();
    if (endpoint) return endpoint;
    const region = this.settings.region ?? (process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION);
    return region ? `AWS S3 in ${region}` : "AWS S3";
  }

  /** An S3 or network failure as a RemoteStorageError naming the cause and the fix. */
  storageError(err: unknown, doing: string): RemoteStorageError {
    if (err instanceof RemoteStorageError) return err;
    const e = (err ?? {}) as SdkError;
    const name = nameOf(err);
    const status = statusOf(err);
    const detail = e.message ? `: ${e.message}` : "";
    const endpoint = this.endpointName();
    const configure =
      "remotes.s3 in config.yaml, or the AWS environment (AWS_ENDPOINT_URL_S3, AWS_REGION, ...)";
    const network = networkCode(err);
    if (network !== undefined) {
      const unreachable = NETWORK_UNREACHABLE.includes(network) || network === "ETIMEDOUT";
      return new RemoteStorageError(
        unreachable
          ? `remote ${this.url}: cannot reach the S3 endpoint ${endpoint} (${network}) while ${doing}`
          : `remote ${this.url}: the connection to the S3 endpoint ${endpoint} failed (${network}) while ${doing}`,
        `check that the store is up and reachable from this server, and its address: remotes.s3.endpoint in config.yaml, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL`,
        unreachable ? "08001" : "08006",
      );
    }
    if (name === "NoSuchBucket") {
      return new RemoteStorageError(
        `remote ${this.url}: bucket "${this.bucket}" does not exist at ${endpoint}`,
        `create the bucket (aws s3 mb s3://${this.bucket}), or correct the remote's URL; if it exists, check that the endpoint and region (${configure}) are those of the store that holds it`,
        "58P01",
      );
    }
    if (name === "CredentialsProviderError" || /could not load credentials/i.test(e.message ?? "")) {
      return new RemoteStorageError(
        `remote ${this.url}: no S3 credentials were found${detail}`,
        "set remotes.s3.access_key_id and remotes.s3.secret_access_key in config.yaml, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in Strata's environment",
        "28000",
      );
    }
    if (BAD_CREDENTIALS.includes(name)) {
      return new RemoteStorageError(
        `remote ${this.url}: the S3 store at ${endpoint} refused Strata's credentials (${name}${detail}) while ${doing}`,
        "check the access key and secret: remotes.s3.access_key_id / secret_access_key in config.yaml, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE in Strata's environment",
        "28000",
      );
    }
    if (name === "AccessDenied" || status === 403) {
      return new RemoteStorageError(
        `remote ${this.url}: access denied by the S3 store at ${endpoint} while ${doing}`,
        `allow the credentials Strata uses s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on bucket "${this.bucket}" under "${this.base}" (and check that they are the ones meant: ${configure})`,
        "42501",
      );
    }
    if (/region is missing/i.test(e.message ?? "")) {
      return new RemoteStorageError(
        `remote ${this.url}: no AWS region is configured`,
        "set remotes.s3.region in config.yaml or AWS_REGION in Strata's environment (any value, such as us-east-1, for most S3-compatible stores)",
        "22023",
      );
    }
    if (name === "PermanentRedirect" || name === "AuthorizationHeaderMalformed" || status === 301) {
      return new RemoteStorageError(
        `remote ${this.url}: bucket "${this.bucket}" is in another region than ${endpoint}`,
        "set the bucket's region: remotes.s3.region in config.yaml or AWS_REGION",
        "22023",
      );
    }
    return new RemoteStorageError(
      `remote ${this.url}: the S3 store at ${endpoint} failed while ${doing} (${name || "error"}${status ? `, HTTP ${status}` : ""}${detail})`,
      "if this is transient, run the operation again; otherwise see the store's documentation for this error",
      "58030",
    );
  }
}
