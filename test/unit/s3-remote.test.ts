// The S3 remote against a real S3-compatible server (s3rver with conditional writes, see
// test/support/s3-server.ts): the RemoteStorage contract the directory remote passes
// (test/support/remote-contract.ts), racing processes included; then what is S3's own: multipart
// uploads, a store that ignores If-None-Match, errors that name their cause (a missing bucket,
// wrong credentials, an endpoint nobody answers at, access denied), and the configuration.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { after, before, test } from "node:test";
import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { ConfigError, validateConfig } from "../../src/config/load.ts";
import { destroyS3Clients, S3Remote } from "../../src/remotes/s3-remote.ts";
import { configureRemoteStorage, openRemoteStorage, type RefValue } from "../../src/remotes/storage.ts";
import { freePort } from "../support/postgres.ts";
import {
  type ContractBackend,
  defineRemoteContract,
  PACK_A,
  readAll,
  sha256,
  tempDir,
} from "../support/remote-contract.ts";
import { startS3Server, type TestS3Server } from "../support/s3-server.ts";

const BUCKET = "strata-test";
const OBJECT_SUFFIX = "._S3rver_object";

// The SDK warns once that its releases from 2027 on need Node 22; this Node is 20.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = "true";

let s3: TestS3Server;
let raw: S3Client;
let prefixes = 0;

before(async () => {
  s3 = await startS3Server({ buckets: [BUCKET, "root-bucket"] });
  raw = new S3Client({
    endpoint: s3.endpoint,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: s3.settings.accessKeyId!, secretAccessKey: s3.settings.secretAccessKey! },
  });
});
after(async () => {
  raw?.destroy();
  await destroyS3Clients();
  await s3?.stop();
});

/** Every key under `prefix` in the bucket, relative to it, from the server's files (sorted). */
function keysUnder(bucket: string, prefix: string): string[] {
  const root = join(s3.directory, bucket, prefix);
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith(OBJECT_SUFFIX))
    .map((entry) => relative(root, join(entry.parentPath, entry.name)).slice(0, -OBJECT_SUFFIX.length))
    .sort();
}

const s3Backend: ContractBackend = {
  async open(_t, options) {
    const prefix = `remote-${++prefixes}/db`; // a prefix of two parts, as s3://bucket/a/b
    const open = (again?: { pruneAfterMs?: number }) =>
      new S3Remote(BUCKET, prefix, { settings: s3.settings, ...(again ?? options) });
    return {
      storage: open(),
      reopen: open,
      file: (key) => s3.objectFile(BUCKET, `${prefix}/${key}`),
      keys: () => keysUnder(BUCKET, prefix),
      write: async (key, text) => {
        await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${prefix}/${key}`, Body: text }));
      },
      worker: {
        arg: `s3://${BUCKET}/${prefix}`,
        env: {
          STRATA_TEST_S3_SETTINGS: JSON.stringify(s3.settings),
          AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
        },
      },
      // The server's temporary files: none once every write has ended.
      leftovers: () => {
        const root = join(s3.directory, BUCKET, prefix);
        if (!existsSync(root)) return [];
        return readdirSync(root, { recursive: true, encoding: "utf8" }).filter((name) =>
          name.endsWith(".tmp"),
        );
      },
    };
  },
  // Each version also records its writer's token (see s3-remote.ts).
  workerVersionText: /^\{"commit":"\d+","pack":"0{64}","writer":"[0-9a-f]{24}"\}\n$/,
  // Fewer than on a directory: each request is HTTP to a server that lists by reading files.
  raceIncrements: 40,
  firstWriterRounds: 8,
  killAfter: 30,
};

defineRemoteContract("S3 remote", s3Backend);

// --- what is S3's own ----------------------------------------------------------------------

test("S3 remote: a file above the threshold goes up in parts, each checked, and round-trips", async (t) => {
  const dir = tempDir(t);
  const remote = new S3Remote(BUCKET, `multipart-${++prefixes}`, {
    settings: s3.settings,
    multipartThresholdBytes: 8 * 1024 * 1024,
    partBytes: 5 * 1024 * 1024,
  });
  const bytes = randomBytes(12 * 1024 * 1024 + 5); // three parts, the last a short one
  const local = join(dir, "pack.gz");
  writeFileSync(local, bytes);
  const address = await remote.putObjectFile(local);
  assert.equal(address, sha256(bytes));
  assert.ok((await readAll(await remote.openObject(address))).equals(bytes));
  const uploads = join(s3.directory, BUCKET, "._S3rver_uploads");
  assert.deepEqual(existsSync(uploads) ? readdirSync(uploads) : [], [], "no upload left open");
  // Stored again: found, not sent again.
  assert.equal(await remote.putObjectFile(local), address);
});

test("S3 remote: the whole bucket as a remote (s3://bucket, no prefix)", async () => {
  const remote = openRemoteStorage("s3://root-bucket", { s3: s3.settings });
  const value: RefValue = { commit: "c1", pack: PACK_A };
  assert.equal(await remote.compareAndSwapRef("heads/main", null, value), true);
  assert.deepEqual(await remote.listRefs(""), new Map([["heads/main", value]]));
  assert.deepEqual(keysUnder("root-bucket", ""), ["refs/heads/main/1", "strata-remote.json"]);
});

test("S3 remote: a store that ignores If-None-Match is refused for writes, saying so; reads work", async (t) => {
  const plain = await startS3Server({ buckets: [BUCKET], conditionalWrites: false });
  t.after(() => plain.stop());
  const remote = new S3Remote(BUCKET, "db", { settings: plain.settings });
  const refused = (err: unknown) => {
    assert.ok(err instanceof Error);
    const e = err as Error & { code: string; hint: string };
    assert.equal(e.code, "0A000");
    assert.match(
      e.message,
      /this S3-compatible store .* ignored If-None-Match; Strata needs conditional writes for safe ref updates/,
    );
    assert.match(e.hint, /If-None-Match: \*.*AWS S3, MinIO and Cloudflare R2/);
    return true;
  };
  await assert.rejects(remote.compareAndSwapRef("heads/main", null, { commit: "c1", pack: PACK_A }), refused);
  const dir = tempDir(t);
  writeFileSync(join(dir, "pack.gz"), "bytes");
  await assert.rejects(remote.putObjectFile(join(dir, "pack.gz")), refused);
  // Nothing but the format marker was written; reading needs no conditional writes.
  assert.equal(await remote.readRef("heads/main"), null);
  assert.deepEqual(await remote.listRefs(""), new Map());
});

test("S3 remote: a missing bucket is named, with how to create it", async () => {
  const remote = new S3Remote("no-such-bucket", "db", { settings: s3.settings });
  const missing = {
    code: "58P01",
    message: /bucket "no-such-bucket" does not exist at http:\/\/127\.0\.0\.1:\d+/,
    hint: /create the bucket \(aws s3 mb s3:\/\/no-such-bucket\)/,
  };
  await assert.rejects(remote.readRef("heads/main"), missing);
  await assert.rejects(remote.compareAndSwapRef("heads/main", null, { commit: "c", pack: PACK_A }), missing);
  await assert.rejects(remote.hasObject(PACK_A), missing);
  await assert.rejects(remote.openObject(PACK_A), missing);
});

test("S3 remote: wrong credentials are named, with where they come from", async () => {
  const remote = new S3Remote(BUCKET, "db", { settings: { ...s3.settings, accessKeyId: "WRONG" } });
  const wrong = {
    code: "28000",
    message: /refused Strata's credentials \(InvalidAccessKeyId/,
    hint: /remotes\.s3\.access_key_id .* AWS_ACCESS_KEY_ID/,
  };
  await assert.rejects(remote.readRef("heads/main"), wrong);
  await assert.rejects(remote.listRefs("heads/"), wrong);
});

test("S3 remote: an endpoint nobody answers at is named", async () => {
  const port = await freePort(); // free, so nothing listens there
  const remote = new S3Remote(BUCKET, "db", {
    settings: { ...s3.settings, endpoint: `http://127.0.0.1:${port}` },
  });
  await assert.rejects(remote.readRef("heads/main"), {
    code: "08001",
    message: new RegExp(`cannot reach the S3 endpoint http://127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\)`),
    hint: /remotes\.s3\.endpoint .* AWS_ENDPOINT_URL_S3/,
  });
});

test("S3 remote: the store's other refusals name their cause and fix", () => {
  const remote = new S3Remote("bkt", "db", { settings: { endpoint: "http://store:9000" } });
  const sdkError = (name: string, status: number, message = "refused") =>
    Object.assign(new Error(message), { name, $metadata: { httpStatusCode: status } });
  const cases: [unknown, string, RegExp, RegExp][] = [
    [
      sdkError("AccessDenied", 403),
      "42501",
      /access denied by the S3 store at http:\/\/store:9000/,
      /s3:PutObject/,
    ],
    [sdkError("SignatureDoesNotMatch", 403), "28000", /refused Strata's credentials/, /secret_access_key/],
    [sdkError("ExpiredToken", 400), "28000", /refused Strata's credentials/, /AWS_PROFILE/],
    [
      Object.assign(new Error("Could not load credentials from any providers"), {
        name: "CredentialsProviderError",
      }),
      "28000",
      /no S3 credentials were found/,
      /AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/,
    ],
    [new Error("Region is missing"), "22023", /no AWS region is configured/, /AWS_REGION/],
    [sdkError("PermanentRedirect", 301), "22023", /in another region/, /remotes\.s3\.region/],
    [
      Object.assign(new Error("getaddrinfo ENOTFOUND store"), { code: "ENOTFOUND" }),
      "08001",
      /cannot reach the S3 endpoint http:\/\/store:9000 \(ENOTFOUND\)/,
      /remotes\.s3\.endpoint/,
    ],
    [
      Object.assign(new Error("aborted"), { code: "ECONNRESET" }),
      "08006",
      /connection to the S3 endpoint .* failed \(ECONNRESET\)/,
      /reachable/,
    ],
    [
      sdkError("InternalError", 500, "boom"),
      "58030",
      /failed while testing \(InternalError, HTTP 500: boom\)/,
      /again/,
    ],
  ];
  for (const [err, code, message, hint] of cases) {
    const mapped = remote.storageError(err, "testing");
    assert.equal(mapped.code, code, mapped.message);
    assert.match(mapped.message, message);
    assert.match(mapped.message, /remote s3:\/\/bkt\/db/);
    assert.match(mapped.hint, hint);
  }
});

// --- configuration -------------------------------------------------------------------------

test("config: remotes.s3 is validated, and reaches the S3 remotes openRemoteStorage opens", async () => {
  const { config, warnings } = validateConfig(
    {
      remotes: {
        s3: {
          endpoint: s3.endpoint,
          region: "eu-west-1",
          force_path_style: true,
          access_key_id: "S3RVER",
          secret_access_key: "S3RVER",
        },
      },
    },
    "config.yaml",
  );
  assert.deepEqual(warnings, []);
  assert.deepEqual(validateConfig({}, "config.yaml").config.remotes, { s3: {} }, "all optional");

  const invalid = (s3Section: Record<string, unknown>, pattern: RegExp) =>
    assert.throws(
      () => validateConfig({ remotes: { s3: s3Section } }, "config.yaml"),
      (err: unknown) => err instanceof ConfigError && pattern.test(err.message),
    );
  invalid({ endpoint: "127.0.0.1:9000" }, /remotes\.s3\.endpoint: .*http:\/\/ or https:\/\/ URL/);
  invalid({ access_key_id: "AKIA" }, /remotes\.s3\.secret_access_key: .*is needed too/);
  invalid({ force_path_style: "yes" }, /remotes\.s3\.force_path_style must be true or false/);
  assert.deepEqual(validateConfig({ remotes: { s3: { endpoint_url: "x" } } }, "c.yaml").warnings, [
    'c.yaml: unknown key "remotes.s3.endpoint_url" is ignored (check its spelling against the configuration reference in the README)',
  ]);

  configureRemoteStorage(config.remotes);
  try {
    const remote = openRemoteStorage("s3://strata-test/configured");
    assert.ok(remote instanceof S3Remote);
    const value: RefValue = { commit: "c1", pack: PACK_A };
    assert.equal(await remote.compareAndSwapRef("heads/main", null, value), true, "reached the server");
    assert.deepEqual(await openRemoteStorage("s3://strata-test/configured").readRef("heads/main"), value);
  } finally {
    configureRemoteStorage(undefined);
  }
});
