// Remote storage on a real filesystem: URL parsing, objects, refs, and the two properties the
// directory remote's design exists for — racing writers lose no update, and a writer killed at
// any point leaves a remote the next writer can use as it is.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import { DirectoryRemote } from "../../src/remotes/directory-remote.ts";
import {
  CorruptObjectError,
  MissingObjectError,
  openRemoteStorage,
  RefNameError,
  type RefValue,
  RemoteFormatError,
  RemoteNotSupportedError,
} from "../../src/remotes/storage.ts";
import { parseRemoteUrl, RemoteUrlError, remoteUrlTemplate } from "../../src/remotes/url.ts";

const WORKER = fileURLToPath(new URL("../support/remote-race-worker.ts", import.meta.url));
const PACK_A = "a".repeat(64);
const PACK_B = "b".repeat(64);

// Worker processes still running: a temporary directory is removed only once they are gone (a
// live worker would create it again).
const workers = new Set<ChildProcess>();

async function stopWorkers(): Promise<void> {
  await Promise.all(
    [...workers].map(async (child) => {
      const exited = once(child, "exit");
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
    }),
  );
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "strata-remote-"));
  t.after(async () => {
    await stopWorkers();
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

function objectPath(root: string, address: string): string {
  return join(root, "objects", address.slice(0, 2), address);
}

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

test("openRemoteStorage: a directory for file URLs; S3 and HTTP not yet", () => {
  const remote = openRemoteStorage("file:///srv/remotes/db");
  assert.ok(remote instanceof DirectoryRemote);
  assert.equal(remote.root, "/srv/remotes/db");
  assert.equal(remote.url, "file:///srv/remotes/db");
  for (const url of ["s3://bucket/db", "https://host/db"]) {
    assert.throws(
      () => openRemoteStorage(url),
      (err: unknown) =>
        err instanceof RemoteNotSupportedError && err.code === "0A000" && err.message.includes(`"${url}"`),
    );
  }
  assert.throws(() => openRemoteStorage("gs://x"), RemoteUrlError);
});

// --- objects -------------------------------------------------------------------------------

test("objects: a multi-MB file round-trips under its SHA-256, and storing it again rewrites nothing", async (t) => {
  const dir = tempDir(t);
  const root = join(dir, "remote", "nested"); // created on first write, parents too
  const remote = new DirectoryRemote(root);
  const bytes = randomBytes(5 * 1024 * 1024 + 17);
  const local = join(dir, "pack.gz");
  writeFileSync(local, bytes);

  assert.equal(await remote.hasObject(sha256(bytes)), false, "no remote yet: nothing in it");
  const address = await remote.putObjectFile(local);
  assert.equal(address, sha256(bytes));
  assert.equal(await remote.hasObject(address), true);
  assert.ok((await readAll(await remote.openObject(address))).equals(bytes));
  assert.deepEqual(JSON.parse(readFileSync(join(root, "strata-remote.json"), "utf8")), {
    format: "strata-remote",
    version: 1,
  });

  const before = statSync(objectPath(root, address));
  assert.equal(await new DirectoryRemote(root).putObjectFile(local), address);
  const after = statSync(objectPath(root, address));
  assert.equal(after.ino, before.ino, "the stored object is the same file");
  assert.equal(after.mtimeMs, before.mtimeMs);
  assert.deepEqual(readdirSync(join(root, "objects", "tmp")), [], "no temporary file left");
});

test("objects: a flipped byte or a truncation fails the stream with CorruptObjectError", async (t) => {
  const dir = tempDir(t);
  const root = join(dir, "remote");
  const remote = new DirectoryRemote(root);
  const bytes = randomBytes(3 * 1024 * 1024);
  const local = join(dir, "pack.gz");
  writeFileSync(local, bytes);
  const address = await remote.putObjectFile(local);
  const stored = objectPath(root, address);

  const fd = openSync(stored, "r+");
  const byte = Buffer.alloc(1);
  readSync(fd, byte, 0, 1, 2_000_000);
  writeSync(fd, Buffer.from([byte[0] ^ 0xff]), 0, 1, 2_000_000);
  closeSync(fd);
  const isCorrupt = (err: unknown) =>
    err instanceof CorruptObjectError &&
    err.code === "XX001" &&
    err.address === address &&
    err.message.includes(remote.url);
  await assert.rejects(readAll(await remote.openObject(address)), isCorrupt);

  writeFileSync(stored, bytes); // repaired
  assert.ok((await readAll(await remote.openObject(address))).equals(bytes));
  truncateSync(stored, bytes.length - 1);
  await assert.rejects(readAll(await remote.openObject(address)), isCorrupt);
});

test("objects: a missing object is MissingObjectError on open; a bad address is refused", async (t) => {
  const root = tempDir(t);
  const remote = new DirectoryRemote(root);
  const address = "c".repeat(64);
  const isMissing = (err: unknown) =>
    err instanceof MissingObjectError && err.code === "58P01" && err.message.includes(address);
  await assert.rejects(remote.openObject(address), isMissing, "no remote yet");
  await remote.compareAndSwapRef("heads/main", null, { commit: "c1", pack: PACK_A }); // creates it
  await assert.rejects(remote.openObject(address), isMissing);
  assert.equal(await remote.hasObject(address), false);
  await assert.rejects(remote.openObject("../../etc/passwd"), { code: "22023" });
  await assert.rejects(remote.hasObject("ABC"), { code: "22023" });
});

// --- refs ----------------------------------------------------------------------------------

test("refs: read, compare-and-swap, delete", async (t) => {
  const root = tempDir(t);
  const remote = new DirectoryRemote(root);
  const v1: RefValue = { commit: "c1", pack: PACK_A };
  const v2: RefValue = { commit: "c2", pack: PACK_B };

  assert.equal(await remote.readRef("heads/main"), null);
  assert.equal(await remote.compareAndSwapRef("heads/main", v1, v2), false, "expected a value, absent");
  assert.equal(await remote.readRef("heads/main"), null);
  assert.equal(await remote.compareAndSwapRef("heads/main", null, v1), true);
  assert.deepEqual(await remote.readRef("heads/main"), v1);
  assert.equal(await remote.compareAndSwapRef("heads/main", null, v2), false, "expected absent, exists");
  assert.equal(
    await remote.compareAndSwapRef("heads/main", { commit: "other", pack: PACK_A }, v2),
    false,
    "expected another value",
  );
  assert.deepEqual(await remote.readRef("heads/main"), v1, "unchanged by the failed swaps");
  assert.equal(await remote.compareAndSwapRef("heads/main", v1, v2), true);
  assert.deepEqual(await new DirectoryRemote(root).readRef("heads/main"), v2, "another instance sees it");

  assert.equal(await remote.compareAndSwapRef("heads/main", v2, null), true, "deleted");
  assert.equal(await remote.readRef("heads/main"), null);
  assert.equal(await remote.compareAndSwapRef("heads/main", v2, v1), false);
  assert.equal(await remote.compareAndSwapRef("heads/main", null, v1), true, "created again");
  assert.deepEqual(await remote.readRef("heads/main"), v1);
  assert.deepEqual(readdirSync(join(root, "refs", "tmp")), [], "no temporary file left");

  await assert.rejects(remote.compareAndSwapRef("heads/main", v1, { commit: "c3", pack: "nope" }), {
    code: "22023",
    message: /not an object address/,
  });
  await assert.rejects(remote.compareAndSwapRef("heads/main", v1, { commit: "", pack: PACK_A }), {
    code: "22023",
  });
});

test("refs: listRefs by prefix skips deleted refs; names with numeric parts do not collide", async (t) => {
  const remote = new DirectoryRemote(tempDir(t));
  assert.deepEqual(await remote.listRefs("heads/"), new Map(), "no remote yet");
  const value = (commit: string): RefValue => ({ commit, pack: PACK_A });
  for (const name of [
    "heads/main",
    "heads/release",
    "heads/release/2",
    "heads/feature/x",
    "tags/v1.0",
    "heads/gone",
  ]) {
    assert.equal(await remote.compareAndSwapRef(name, null, value(name)), true, name);
  }
  assert.equal(await remote.compareAndSwapRef("heads/gone", value("heads/gone"), null), true);

  const names = async (prefix: string) => [...(await remote.listRefs(prefix)).keys()].sort();
  assert.deepEqual(await names("heads/"), [
    "heads/feature/x",
    "heads/main",
    "heads/release",
    "heads/release/2",
  ]);
  assert.deepEqual(await names("tags/"), ["tags/v1.0"]);
  assert.deepEqual(await names("heads/release"), ["heads/release", "heads/release/2"]);
  assert.deepEqual(await names("heads/feature/"), ["heads/feature/x"]);
  assert.equal((await names("")).length, 5);
  assert.deepEqual((await remote.listRefs("tags/")).get("tags/v1.0"), value("tags/v1.0"));
  assert.deepEqual(await remote.readRef("heads/release/2"), value("heads/release/2"));
});

test("refs: bad names are refused, naming the problem", async (t) => {
  const remote = new DirectoryRemote(tempDir(t));
  for (const name of [
    "main",
    "heads",
    "heads/",
    "remotes/origin/main",
    "heads//x",
    "heads/-x",
    "heads/a..b",
    "heads/a b",
    "heads/a\tb",
    "heads/a~1",
    "heads/a^",
    "heads/a:b",
    "heads/a?",
    "heads/a*",
    "heads/a[b",
    "heads/a\\b",
    "heads/x/",
    "heads/.hidden",
    "tags/",
    `heads/${"x".repeat(201)}`,
  ]) {
    await assert.rejects(remote.readRef(name), (err: unknown) => err instanceof RefNameError, name);
    await assert.rejects(
      remote.compareAndSwapRef(name, null, { commit: "c", pack: PACK_A }),
      (err: unknown) => err instanceof RefNameError && err.code === "42602" && err.message.includes(name),
      name,
    );
  }
  assert.equal(existsSync(join(remote.root, "refs", "heads")), false, "nothing written for them");
});

test("refs: old versions are pruned, never the newest", async (t) => {
  const root = tempDir(t);
  const remote = new DirectoryRemote(root, { pruneAfterMs: 0 });
  let current: RefValue | null = null;
  for (let i = 1; i <= 35; i++) {
    const next = { commit: `c${i}`, pack: PACK_A };
    assert.equal(await remote.compareAndSwapRef("heads/main", current, next), true);
    current = next;
  }
  const versions = readdirSync(join(root, "refs", "heads", "main")).map(Number);
  assert.ok(versions.length <= 20, `kept ${versions.length} versions`);
  assert.equal(Math.max(...versions), 35);
  assert.deepEqual(await remote.readRef("heads/main"), current);

  // With the default age limit nothing recent is pruned.
  const keeping = new DirectoryRemote(join(root, "other"));
  current = null;
  for (let i = 1; i <= 25; i++) {
    const next = { commit: `c${i}`, pack: PACK_A };
    assert.equal(await keeping.compareAndSwapRef("heads/main", current, next), true);
    current = next;
  }
  assert.equal(readdirSync(join(root, "other", "refs", "heads", "main")).length, 25);
});

// --- the remote's directory ----------------------------------------------------------------

test("a directory that is not a Strata remote, or a newer format, is refused", async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, "notes.txt"), "mine");
  const stranger = new DirectoryRemote(dir);
  const notARemote = (err: unknown) =>
    err instanceof RemoteFormatError &&
    err.code === "55000" &&
    /not a Strata remote.*notes\.txt/.test(err.message);
  await assert.rejects(
    stranger.compareAndSwapRef("heads/main", null, { commit: "c", pack: PACK_A }),
    notARemote,
  );
  await assert.rejects(stranger.readRef("heads/main"), notARemote);
  assert.deepEqual(readdirSync(dir), ["notes.txt"], "left as it was");

  const newer = join(dir, "newer");
  mkdirSync(newer);
  writeFileSync(join(newer, "strata-remote.json"), '{"format":"strata-remote","version":2}');
  await assert.rejects(new DirectoryRemote(newer).readRef("heads/main"), {
    code: "0A000",
    message: /format version 2; this Strata reads version 1/,
  });

  const file = join(dir, "notes.txt");
  await assert.rejects(new DirectoryRemote(file).listRefs(""), { message: /is not a directory/ });
});

test("readers racing the first writer see no remote or the remote, never a stranger's directory", async (t) => {
  const dir = tempDir(t);
  const value = { commit: "c1", pack: PACK_A };
  for (let round = 0; round < 20; round++) {
    const root = join(dir, String(round));
    let written = false;
    // Readers keep reading (each a new instance: one that has seen the remote does not check again).
    const reader = async () => {
      while (!written) {
        const ref = await new DirectoryRemote(root).readRef("heads/main");
        assert.ok(ref === null || ref.commit === "c1");
      }
    };
    const readers = Array.from({ length: 8 }, reader);
    const writer = new DirectoryRemote(root).compareAndSwapRef("heads/main", null, value).finally(() => {
      written = true;
    });
    const [created] = await Promise.all([writer, ...readers]);
    assert.equal(created, true);
  }
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

// --- separate processes --------------------------------------------------------------------

interface Worker {
  child: ChildProcess;
  output: () => string;
  start: () => void;
  exited: Promise<number | null>;
}

/** Starts a remote-race-worker and waits until it is ready to go. */
async function startWorker(root: string, ref: string, count: string): Promise<Worker> {
  const child = spawn(process.execPath, ["--import", "tsx", WORKER, root, ref, count], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  workers.add(child);
  child.once("exit", () => workers.delete(child));
  let output = "";
  child.stdout!.setEncoding("utf8");
  child.stdout!.on("data", (data: string) => {
    output += data;
  });
  const exited = once(child, "exit").then(([code]) => code as number | null);
  await Promise.race([
    (async () => {
      while (!output.includes("ready\n")) await once(child.stdout!, "data");
    })(),
    exited.then((code) => assert.fail(`worker exited (${code}) before it was ready`)),
  ]);
  return { child, output: () => output, start: () => void child.stdin!.write("go\n"), exited };
}

test("two processes racing 200 read-then-swap increments each lose no update", async (t) => {
  const root = tempDir(t);
  const workers = [
    await startWorker(root, "heads/main", "200"),
    await startWorker(root, "heads/main", "200"),
  ];
  for (const worker of workers) worker.start();
  assert.deepEqual(await Promise.all(workers.map((w) => w.exited)), [0, 0]);
  const losses = workers.map((w) => Number(/done (\d+)/.exec(w.output())?.[1]));
  t.diagnostic(`races lost: ${losses.join(", ")}`);
  assert.deepEqual(await new DirectoryRemote(root).readRef("heads/main"), {
    commit: "400",
    pack: "0".repeat(64),
  });
});

test("a writer SIGKILLed mid-way leaves a remote the next writer uses as it is", async (t) => {
  const dir = tempDir(t);
  const root = join(dir, "remote");
  const worker = await startWorker(root, "heads/main", "forever");
  worker.start();
  const remote = new DirectoryRemote(root);
  const deadline = Date.now() + 30_000;
  while (Number((await remote.readRef("heads/main"))?.commit ?? 0) < 150) {
    assert.ok(Date.now() < deadline, "the worker did not reach 150 updates in 30 s");
    await new Promise((resolve) => setImmediate(resolve));
  }
  worker.child.kill("SIGKILL");
  await worker.exited;

  // Every version there is complete, and the newest one is current.
  const refDir = join(root, "refs", "heads", "main");
  const versions = readdirSync(refDir).map(Number);
  for (const version of versions) {
    assert.match(
      readFileSync(join(refDir, String(version)), "utf8"),
      /^\{"commit":"\d+","pack":"0{64}"\}\n$/,
    );
  }
  const current = await remote.readRef("heads/main");
  assert.ok(current !== null);
  assert.equal(current.commit, String(Math.max(...versions)));
  const next = { commit: String(Number(current.commit) + 1), pack: "0".repeat(64) };
  assert.equal(await remote.compareAndSwapRef("heads/main", current, next), true);
  assert.deepEqual(await remote.readRef("heads/main"), next);

  // A killed upload's partial object changes nothing either.
  writeFileSync(join(root, "objects", "tmp", `${worker.child.pid}-partial.tmp`), randomBytes(1000));
  const local = join(dir, "pack.gz");
  const bytes = randomBytes(100_000);
  writeFileSync(local, bytes);
  const address = await remote.putObjectFile(local);
  assert.ok((await readAll(await remote.openObject(address))).equals(bytes));
  assert.deepEqual((await remote.listRefs("heads/")).get("heads/main"), next);
});
