// Remote storage on a real filesystem: URL parsing, and the RemoteStorage contract
// (test/support/remote-contract.ts) for the directory remote, with what is the directory's own:
// temporary files, and a remote path that is a file. The contract includes the two properties the
// directory remote's design exists for — racing writers lose no update, and a writer killed at
// any point leaves a remote the next writer can use as it is.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { test } from "node:test";
import { DirectoryRemote } from "../../src/remotes/directory-remote.ts";
import { HttpRemote } from "../../src/remotes/http-remote.ts";
import { S3Remote } from "../../src/remotes/s3-remote.ts";
import { openRemoteStorage } from "../../src/remotes/storage.ts";
import { parseRemoteUrl, RemoteUrlError, remoteUrlTemplate } from "../../src/remotes/url.ts";
import { type ContractBackend, defineRemoteContract, PACK_A, tempDir } from "../support/remote-contract.ts";

// --- URLs ----------------------------------------------------------------------------------

test("remote URLs: the accepted forms", () => {
  assert.deepEqual(parseRemoteUrl("file:///srv/remotes/db"), { kind: "file", path: "/srv/remotes/db" });
  assert.deepEqual(parseRemoteUrl("file:///srv/remotes/db/"), { kind: "file", path: "/srv/remotes/db" });
  assert.deepEqual(parseRemoteUrl("file:///srv/my%20remote"), { kind: "file", path: "/srv/my remote" });
  assert.deepEqual(parseRemoteUrl("file://localhost/srv/x"), { kind: "file", path: "/srv/x" });
  assert.deepEqual(parseRemoteUrl("s3://my-bucket/strata/db"), {
    kind: "s3",
    bucket: "my-bucket",
    prefix: "strata/db",
  });
  assert.deepEqual(parseRemoteUrl("s3://my-bucket"), { kind: "s3", bucket: "my-bucket", prefix: "" });
  assert.deepEqual(parseRemoteUrl("s3://my-bucket/"), { kind: "s3", bucket: "my-bucket", prefix: "" });
  assert.deepEqual(parseRemoteUrl("http://host:8080/db"), { kind: "http", url: "http://host:8080/db" });
  assert.deepEqual(parseRemoteUrl("https://remotes.example/db"), {
    kind: "http",
    url: "https://remotes.example/db",
  });
});

test("remote URLs: anything else is refused with 22023 and the accepted forms", () => {
  for (const url of [
    "gs://x",
    "aws://bucket/x",
    "",
    "   ",
    "/abs/path",
    "rel/path",
    "file://rel",
    "file://rel/path",
    "file:/abs",
    "file://",
    "file:///a%2Fb",
    "s3://",
    "s3://UPPER/x",
    "ftp://host/x",
  ]) {
    assert.throws(
      () => parseRemoteUrl(url),
      (err: unknown) => {
        assert.ok(err instanceof RemoteUrlError, `${url}: ${err}`);
        assert.equal(err.code, "22023");
        assert.match(err.hint, /file:\/\/\/absolute\/path.*s3:\/\/bucket\/prefix.*http\(s\):\/\//);
        return true;
      },
      url,
    );
  }
  assert.throws(() => parseRemoteUrl("gs://x"), { message: 'remote URL "gs://x" is not supported' });
  assert.throws(() => parseRemoteUrl("file://rel"), { message: /host "rel".*relative path/ });
});

test("remote URL templates substitute the database, percent-encoded", () => {
  assert.equal(remoteUrlTemplate("file:///r/{database}", "shop"), "file:///r/shop");
  const url = remoteUrlTemplate("file:///r/{database}/{database}", "my db%");
  assert.equal(url, "file:///r/my%20db%25/my%20db%25");
  assert.deepEqual(parseRemoteUrl(url), { kind: "file", path: "/r/my db%/my db%" });
  assert.deepEqual(parseRemoteUrl(remoteUrlTemplate("s3://b-1/{database}", "a b")), {
    kind: "s3",
    bucket: "b-1",
    prefix: "a b",
  });
  assert.throws(() => remoteUrlTemplate("file:///r/db", "shop"), {
    code: "22023",
    message: /no \{database\}/,
  });
  assert.throws(() => remoteUrlTemplate("file:///r/{database}", "../etc"), RemoteUrlError);
});

test("openRemoteStorage: a directory for file URLs, S3 for s3 URLs, another Strata's remotes API for http(s)", () => {
  const remote = openRemoteStorage("file:///srv/remotes/db");
  assert.ok(remote instanceof DirectoryRemote);
  assert.equal(remote.root, "/srv/remotes/db");
  assert.equal(remote.url, "file:///srv/remotes/db");
  const s3 = openRemoteStorage("s3://my-bucket/strata/db");
  assert.ok(s3 instanceof S3Remote);
  assert.equal(s3.bucket, "my-bucket");
  assert.equal(s3.prefix, "strata/db");
  assert.equal(s3.url, "s3://my-bucket/strata/db");
  for (const url of ["https://host/db", "http://host:8080/db", "http://host:8080/db/"]) {
    const http = openRemoteStorage(url);
    assert.ok(http instanceof HttpRemote);
    assert.equal(http.url, url);
  }
  for (const url of ["http://host:8080", "http://host:8080/", "http://host/db?x=1", "http://u:p@host/db"]) {
    assert.throws(() => openRemoteStorage(url), RemoteUrlError, url);
  }
  assert.throws(() => openRemoteStorage("gs://x"), RemoteUrlError);
});

// --- the contract, on a directory ----------------------------------------------------------

/** Every file under `root`, relative to it, sorted ([] when root does not exist). */
function filesUnder(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(root, join(entry.parentPath, entry.name)))
    .sort();
}

const directoryBackend: ContractBackend = {
  async open(t, options) {
    const root = join(tempDir(t), "remote", "nested"); // created on first write, parents too
    return {
      storage: new DirectoryRemote(root, options),
      reopen: (again) => new DirectoryRemote(root, again ?? options),
      file: (key) => join(root, ...key.split("/")),
      keys: () => filesUnder(root),
      write: async (key, text) => {
        mkdirSync(dirname(join(root, key)), { recursive: true });
        writeFileSync(join(root, key), text);
      },
      worker: { arg: root },
      leftovers: () => [
        ...filesUnder(join(root, "objects", "tmp")),
        ...filesUnder(join(root, "refs", "tmp")),
      ],
    };
  },
  workerVersionText: /^\{"commit":"\d+","pack":"0{64}"\}\n$/,
  raceIncrements: 200,
  firstWriterRounds: 20,
  killAfter: 150,
  leaveKilledUpload: (remote, pid) =>
    writeFileSync(remote.file(`objects/tmp/${pid}-partial.tmp`), randomBytes(1000)),
};

defineRemoteContract("directory remote", directoryBackend);

// --- what is the directory's own -----------------------------------------------------------

test("a remote path that is a file is refused", async (t) => {
  const dir = tempDir(t);
  const file = join(dir, "notes.txt");
  writeFileSync(file, "mine");
  await assert.rejects(new DirectoryRemote(file).listRefs(""), { message: /is not a directory/ });
});

test("a ref name too long for a file name once percent-encoded is refused with 42602 naming the limit", async (t) => {
  const remote = new DirectoryRemote(join(tempDir(t), "remote"));
  for (const name of [`tags/${"@".repeat(86)}`, `heads/${"é".repeat(100)}`]) {
    for (const call of [
      () => remote.readRef(name),
      () => remote.compareAndSwapRef(name, null, { commit: "c1", pack: PACK_A }),
    ])
      await assert.rejects(call(), (err: { code?: string; message?: string; hint?: string }) => {
        assert.equal(err.code, "42602", String(err.message));
        assert.match(String(err.message), /file name of \d+ bytes .* 255/);
        assert.match(String(err.hint), /shorter .* 255 bytes/);
        return true;
      });
  }
  // Just short enough: 85 × "@" encodes to 255 bytes.
  await remote.compareAndSwapRef(`tags/${"@".repeat(85)}`, null, { commit: "c1", pack: PACK_A });
  assert.deepEqual([...(await remote.listRefs("tags/")).keys()], [`tags/${"@".repeat(85)}`]);
});

test("temporary files of killed writers are ignored, and removed once an hour old", async (t) => {
  const dir = tempDir(t);
  const root = join(dir, "remote");
  const remote = new DirectoryRemote(root);
  await remote.compareAndSwapRef("heads/main", null, { commit: "c1", pack: PACK_A });
  const hoursAgo = new Date(Date.now() - 2 * 60 * 60 * 1000);
  const leftovers = {
    oldObject: join(root, "objects", "tmp", "123-old.tmp"),
    newObject: join(root, "objects", "tmp", "123-new.tmp"),
    oldRef: join(root, "refs", "tmp", "123-old.tmp"),
    oldMarker: join(root, ".strata-remote.json.123-old.tmp"),
  };
  for (const path of Object.values(leftovers)) writeFileSync(path, "partial");
  for (const path of [leftovers.oldObject, leftovers.oldRef, leftovers.oldMarker])
    utimesSync(path, hoursAgo, hoursAgo);

  const next = new DirectoryRemote(root);
  assert.deepEqual(await next.readRef("heads/main"), { commit: "c1", pack: PACK_A });
  assert.equal(await next.compareAndSwapRef("heads/main", { commit: "c1", pack: PACK_A }, null), true);
  assert.equal(existsSync(leftovers.oldObject), false);
  assert.equal(existsSync(leftovers.oldRef), false);
  assert.equal(existsSync(leftovers.oldMarker), false);
  assert.equal(existsSync(leftovers.newObject), true, "may belong to a live writer");

  // A first writer killed after writing its marker's temporary file: still an empty directory.
  const fresh = join(dir, "fresh");
  mkdirSync(fresh);
  writeFileSync(join(fresh, ".strata-remote.json.99-abc.tmp"), '{"format":');
  const first = new DirectoryRemote(fresh);
  assert.equal(await first.compareAndSwapRef("heads/main", null, { commit: "c1", pack: PACK_A }), true);
});
