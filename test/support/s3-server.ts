// A local S3-compatible server for the S3 remote's tests: s3rver (an npm package, run in this
// process on a free loopback port, its buckets in a temporary directory), with a thin layer for
// what the tests need and s3rver lacks (see docs/decisions.md, 19):
// - conditional writes: s3rver ignores If-None-Match on PutObject. Here such a PUT creates the
//   object with link(), which fails when the key exists, and the client gets 412
//   PreconditionFailed, as from AWS S3. With `conditionalWrites: false` the header is ignored
//   again, as a store without conditional writes would.
// - atomic, checked writes: s3rver writes an object in place and answers before its last bytes
//   may be on disk, so a reader could see half an object. Here objects and upload parts are
//   written to a temporary file, flushed, and renamed into place; a Content-MD5 that does not
//   match the bytes received fails the PUT with 400 BadDigest, as AWS does.
// Everything else (listing, ranges, multipart, errors such as NoSuchBucket, InvalidAccessKeyId)
// is s3rver's own. s3rver does not verify SigV4 signatures, only that the access key exists.

import { AsyncLocalStorage } from "node:async_hooks";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { link, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { dirname, join } from "node:path";
import { type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { S3Settings } from "../../src/remotes/s3-remote.ts";
import { onProcessExit } from "./cleanup.ts";
import { tempDir } from "./postgres.ts";

const require = createRequire(import.meta.url);

interface StoredObject {
  bucket: string;
  key: string;
  content: Readable | Buffer;
  metadata: Record<string, string>;
}

interface FilesystemStore {
  getResourcePath(bucket: string, key: string | undefined, resource: string): string;
  putMetadata(bucket: string, key: string, metadata: Record<string, string>, md5: string): Promise<void>;
  putBucket(bucket: string): Promise<unknown>;
  putObject(object: StoredObject): Promise<{ size: number; md5: string }>;
  putPart(
    bucket: string,
    uploadId: string,
    partNumber: number,
    content: Readable,
  ): Promise<{ size: number; md5: string }>;
}

interface S3rverApp {
  store: FilesystemStore;
  configureBuckets(): Promise<unknown>;
  callback(): (req: IncomingMessage, res: ServerResponse) => void;
  logger?: { close(): void; exceptions?: { unhandle(): void } };
}

type S3rverClass = new (options: Record<string, unknown>) => S3rverApp;
type S3ErrorClass = new (code: string, message: string, detail?: Record<string, string>) => Error;

const S3rver = require("s3rver") as S3rverClass;
const S3Error = require("s3rver/lib/models/error.js") as S3ErrorClass;

/** s3rver's account (any other access key id is refused with InvalidAccessKeyId). */
export const S3_ACCESS_KEY_ID = "S3RVER";
export const S3_SECRET_ACCESS_KEY = "S3RVER";

/** config.yaml's `remotes` section for a Strata that uses `server` (as its S3 store). */
export function strataRemotesConfig(server: TestS3Server): Record<string, unknown> {
  return {
    s3: {
      endpoint: server.endpoint,
      region: "us-east-1",
      force_path_style: true,
      access_key_id: S3_ACCESS_KEY_ID,
      secret_access_key: S3_SECRET_ACCESS_KEY,
    },
  };
}

export interface TestS3Server {
  /** http://127.0.0.1:<port> */
  endpoint: string;
  /** Settings for S3Remote: this endpoint, path style, s3rver's credentials. */
  settings: S3Settings;
  /** Where s3rver keeps the buckets (the object with key k is <directory>/<bucket>/k._S3rver_object). */
  directory: string;
  createBucket(name: string): Promise<void>;
  /** The file holding an object's bytes, for tests that damage them. */
  objectFile(bucket: string, key: string): string;
  stop(): Promise<void>;
}

export interface TestS3ServerOptions {
  buckets?: string[];
  /** Honour If-None-Match: * on PutObject (default true); false behaves as a store that ignores it. */
  conditionalWrites?: boolean;
}

interface RequestConditions {
  ifNoneMatch: boolean;
  contentMd5: string | undefined;
}

/** Starts s3rver with the layer above; stop() (also run at process exit) removes its directory. */
export async function startS3Server(options: TestS3ServerOptions = {}): Promise<TestS3Server> {
  const directory = tempDir("strata-s3-");
  const app = new S3rver({
    directory,
    silent: true,
    configureBuckets: (options.buckets ?? []).map((name) => ({ name })),
    vhostBuckets: false,
  });
  const conditions = new AsyncLocalStorage<RequestConditions>();
  const honourConditions = options.conditionalWrites ?? true;
  const store = app.store;

  /** Writes `content` to `target` via a flushed temporary file; returns its size and MD5 (hex). */
  const writeChecked = async (
    content: Readable | Buffer,
    target: string,
    place: (temp: string) => Promise<void>,
  ): Promise<{ size: number; md5: string }> => {
    await mkdir(dirname(target), { recursive: true });
    const temp = `${target}.${randomBytes(6).toString("hex")}.tmp`;
    const md5 = createHash("md5");
    let size = 0;
    try {
      const counting = new Transform({
        transform(chunk: Buffer, _encoding, done) {
          md5.update(chunk);
          size += chunk.length;
          done(null, chunk);
        },
      });
      if (Buffer.isBuffer(content)) {
        counting.end(content);
        await pipeline(counting, createWriteStream(temp, { flush: true }));
      } else {
        await pipeline(content, counting, createWriteStream(temp, { flush: true }));
      }
      const expected = conditions.getStore()?.contentMd5;
      if (expected !== undefined && expected !== md5.copy().digest("base64")) {
        throw new S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.", {
          ExpectedDigest: expected,
        });
      }
      await place(temp);
    } finally {
      await rm(temp, { force: true });
    }
    return { size, md5: md5.digest("hex") };
  };

  store.putObject = async (object) => {
    const target = store.getResourcePath(object.bucket, object.key, "object");
    const conditional = honourConditions && conditions.getStore()?.ifNoneMatch === true;
    const { size, md5 } = await writeChecked(object.content, target, async (temp) => {
      if (!conditional) return rename(temp, target);
      try {
        await link(temp, target); // created only if absent, atomically
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        throw new S3Error(
          "PreconditionFailed",
          "At least one of the pre-conditions you specified did not hold",
          {
            Condition: "If-None-Match",
          },
        );
      }
    });
    await store.putMetadata(object.bucket, object.key, object.metadata, md5);
    return { size, md5 };
  };

  store.putPart = async (bucket, uploadId, partNumber, content) => {
    const target = join(store.getResourcePath(bucket, undefined, "uploads"), uploadId, String(partNumber));
    const result = await writeChecked(content, target, (temp) => rename(temp, target));
    await writeFile(`${target}.md5`, result.md5);
    return result;
  };

  await app.configureBuckets();
  const handle = app.callback();
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const isPutObject =
      req.method === "PUT" && !url.searchParams.has("uploadId") && !req.headers["x-amz-copy-source"];
    conditions.run(
      {
        ifNoneMatch: isPutObject && req.headers["if-none-match"] === "*",
        contentMd5: req.method === "PUT" ? (req.headers["content-md5"] as string | undefined) : undefined,
      },
      () => handle(req, res),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  let stopped: Promise<void> | undefined;
  const unregister = onProcessExit(() => {
    server.closeAllConnections();
    server.close();
  });
  return {
    endpoint,
    settings: {
      endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      accessKeyId: S3_ACCESS_KEY_ID,
      secretAccessKey: S3_SECRET_ACCESS_KEY,
    },
    directory,
    createBucket: async (name) => {
      await store.putBucket(name);
    },
    objectFile: (bucket, key) => store.getResourcePath(bucket, key, "object"),
    stop: () => {
      stopped ??= (async () => {
        unregister();
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        app.logger?.exceptions?.unhandle();
        app.logger?.close();
        await rm(directory, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}
