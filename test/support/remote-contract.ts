// The RemoteStorage contract (src/remotes/storage.ts) as tests, run against every kind of remote:
// the directory remote (test/unit/remote-storage.test.ts) and the S3 remote
// (test/unit/s3-remote.test.ts). Objects, refs, names, pruning, a location holding something
// else, readers racing the first writer, and separate processes racing read-then-swap increments
// (no lost update) or killed mid-way (nothing left that blocks the next writer).
//
// A backend opens fresh, empty remotes and lets a test look at and damage what the remote stores
// by key (strata-remote.json, objects/aa/<address>, refs/heads/main/3) in local files: the
// directory itself, or the files of the test's S3 server.

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  CorruptObjectError,
  MissingObjectError,
  RefNameError,
  type RefValue,
  RemoteFormatError,
  type RemoteStorage,
} from "../../src/remotes/storage.ts";

const WORKER = fileURLToPath(new URL("./remote-race-worker.ts", import.meta.url));
export const PACK_A = "a".repeat(64);
export const PACK_B = "b".repeat(64);

/** One fresh remote of a backend, and ways to look under it. */
export interface ContractRemote {
  storage: RemoteStorage;
  /** Another instance on the same remote, as another server would open it. */
  reopen(options?: { pruneAfterMs?: number }): RemoteStorage;
  /** The local file that holds the remote's key (it need not exist). */
  file(key: string): string;
  /** Every key the remote holds, sorted ("strata-remote.json", "refs/heads/main/1", ...). */
  keys(): string[];
  /** Stores `text` under `key` as something other than Strata would (a stranger's file). */
  write(key: string, text: string): Promise<void>;
  /** How the race worker opens this remote. */
  worker: { arg: string; env?: Record<string, string> };
  /** Temporary files the backend's writers left behind (must be none after a clean write). */
  leftovers(): string[];
}

export interface ContractBackend {
  /** A fresh, empty remote (nothing there yet); cleaned up after the test. */
  open(t: TestContext, options?: { pruneAfterMs?: number }): Promise<ContractRemote>;
  /** What one ref version's file holds, exactly, as the race worker writes them. */
  workerVersionText: RegExp;
  /** Increments each of two racing processes makes. */
  raceIncrements: number;
  /** Rounds of readers racing a first writer. */
  firstWriterRounds: number;
  /** Updates the killed writer makes before it is killed. */
  killAfter: number;
  /** Leaves what an upload killed mid-way leaves (if anything), as process `pid`. */
  leaveKilledUpload?(remote: ContractRemote, pid: number): void;
}

// Worker processes still running: they are stopped before a test's remote is removed (a live
// worker would write to it again).
const workers = new Set<ChildProcess>();

export async function stopWorkers(): Promise<void> {
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

/** A temporary directory removed after the test (after its workers are stopped). */
export function tempDir(t: TestContext, prefix = "strata-remote-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(async () => {
    await stopWorkers();
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

export const objectKey = (address: string) => `objects/${address.slice(0, 2)}/${address}`;

/** The version numbers of a ref, from the remote's keys. */
function versionsOf(remote: ContractRemote, name: string): number[] {
  const base = `refs/${name}/`;
  return remote
    .keys()
    .filter((key) => key.startsWith(base) && /^\d+$/.test(key.slice(base.length)))
    .map((key) => Number(key.slice(base.length)));
}

interface Worker {
  child: ChildProcess;
  output: () => string;
  start: () => void;
  exited: Promise<number | null>;
}

/** Starts a remote-race-worker and waits until it is ready to go. */
async function startWorker(remote: ContractRemote, ref: string, count: string): Promise<Worker> {
  const child = spawn(process.execPath, ["--import", "tsx", WORKER, remote.worker.arg, ref, count], {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, ...remote.worker.env },
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

/** Defines the contract's tests for one backend, each test's name prefixed with `label`. */
export function defineRemoteContract(label: string, backend: ContractBackend): void {
  const it = (name: string, fn: (t: TestContext) => Promise<void>) => test(`${label}: ${name}`, fn);

  it("objects: a multi-MB file round-trips under its SHA-256, and storing it again rewrites nothing", async (t) => {
    const remote = await backend.open(t);
    const dir = tempDir(t);
    const bytes = randomBytes(5 * 1024 * 1024 + 17);
    const local = join(dir, "pack.gz");
    writeFileSync(local, bytes);

    assert.equal(await remote.storage.hasObject(sha256(bytes)), false, "no remote yet: nothing in it");
    const address = await remote.storage.putObjectFile(local);
    assert.equal(address, sha256(bytes));
    assert.equal(await remote.storage.hasObject(address), true);
    assert.ok((await readAll(await remote.storage.openObject(address))).equals(bytes));
    assert.deepEqual(JSON.parse(readFileSync(remote.file("strata-remote.json"), "utf8")), {
      format: "strata-remote",
      version: 1,
    });

    const before = statSync(remote.file(objectKey(address)));
    assert.equal(await remote.reopen().putObjectFile(local), address);
    const after = statSync(remote.file(objectKey(address)));
    assert.equal(after.ino, before.ino, "the stored object is the same file");
    assert.equal(after.mtimeMs, before.mtimeMs);
    assert.deepEqual(remote.leftovers(), [], "no temporary file left");
  });

  it("objects: a flipped byte or a truncation fails the stream with CorruptObjectError", async (t) => {
    const remote = await backend.open(t);
    const dir = tempDir(t);
    const bytes = randomBytes(3 * 1024 * 1024);
    const local = join(dir, "pack.gz");
    writeFileSync(local, bytes);
    const address = await remote.storage.putObjectFile(local);
    const stored = remote.file(objectKey(address));

    const fd = openSync(stored, "r+");
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, 2_000_000);
    writeSync(fd, Buffer.from([byte[0] ^ 0xff]), 0, 1, 2_000_000);
    closeSync(fd);
    const isCorrupt = (err: unknown) =>
      err instanceof CorruptObjectError &&
      err.code === "XX001" &&
      err.address === address &&
      err.message.includes(remote.storage.url);
    await assert.rejects(readAll(await remote.storage.openObject(address)), isCorrupt);

    writeFileSync(stored, bytes); // repaired
    assert.ok((await readAll(await remote.storage.openObject(address))).equals(bytes));
    truncateSync(stored, bytes.length - 1);
    await assert.rejects(readAll(await remote.storage.openObject(address)), isCorrupt);
  });

  it("objects: a missing object is MissingObjectError on open; a bad address is refused", async (t) => {
    const remote = (await backend.open(t)).storage;
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

  it("refs: read, compare-and-swap, delete", async (t) => {
    const opened = await backend.open(t);
    const remote = opened.storage;
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
    assert.deepEqual(await opened.reopen().readRef("heads/main"), v2, "another instance sees it");

    assert.equal(await remote.compareAndSwapRef("heads/main", v2, null), true, "deleted");
    assert.equal(await remote.readRef("heads/main"), null);
    assert.equal(await remote.compareAndSwapRef("heads/main", v2, v1), false);
    assert.equal(await remote.compareAndSwapRef("heads/main", null, v1), true, "created again");
    assert.deepEqual(await remote.readRef("heads/main"), v1);
    assert.deepEqual(opened.leftovers(), [], "no temporary file left");

    await assert.rejects(remote.compareAndSwapRef("heads/main", v1, { commit: "c3", pack: "nope" }), {
      code: "22023",
      message: /not an object address/,
    });
    await assert.rejects(remote.compareAndSwapRef("heads/main", v1, { commit: "", pack: PACK_A }), {
      code: "22023",
    });
  });

  it("refs: listRefs by prefix skips deleted refs; names with numeric parts do not collide", async (t) => {
    const remote = (await backend.open(t)).storage;
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

  it("refs: bad names are refused, naming the problem", async (t) => {
    const opened = await backend.open(t);
    const remote = opened.storage;
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
    assert.deepEqual(opened.keys(), [], "nothing written for them");
  });

  it("refs: old versions are pruned, never the newest", async (t) => {
    const opened = await backend.open(t, { pruneAfterMs: 0 });
    const remote = opened.storage;
    let current: RefValue | null = null;
    for (let i = 1; i <= 35; i++) {
      const next = { commit: `c${i}`, pack: PACK_A };
      assert.equal(await remote.compareAndSwapRef("heads/main", current, next), true);
      current = next;
    }
    const versions = versionsOf(opened, "heads/main");
    assert.ok(versions.length <= 20, `kept ${versions.length} versions`);
    assert.equal(Math.max(...versions), 35);
    assert.deepEqual(await remote.readRef("heads/main"), current);

    // With the default age limit nothing recent is pruned.
    const other = await backend.open(t);
    current = null;
    for (let i = 1; i <= 25; i++) {
      const next = { commit: `c${i}`, pack: PACK_A };
      assert.equal(await other.storage.compareAndSwapRef("heads/main", current, next), true);
      current = next;
    }
    assert.equal(versionsOf(other, "heads/main").length, 25);
  });

  it("a location that holds something else, or a newer format, is refused", async (t) => {
    const stranger = await backend.open(t);
    await stranger.write("notes.txt", "mine");
    const notARemote = (err: unknown) =>
      err instanceof RemoteFormatError &&
      err.code === "55000" &&
      /not a Strata remote.*notes\.txt/.test(err.message);
    await assert.rejects(
      stranger.storage.compareAndSwapRef("heads/main", null, { commit: "c", pack: PACK_A }),
      notARemote,
    );
    await assert.rejects(stranger.storage.readRef("heads/main"), notARemote);
    assert.deepEqual(stranger.keys(), ["notes.txt"], "left as it was");

    const newer = await backend.open(t);
    await newer.write("strata-remote.json", '{"format":"strata-remote","version":2}');
    await assert.rejects(newer.storage.readRef("heads/main"), {
      code: "0A000",
      message: /format version 2; this Strata reads version 1/,
    });
  });

  it("readers racing the first writer see no remote or the remote, never a stranger's location", async (t) => {
    const value = { commit: "c1", pack: PACK_A };
    for (let round = 0; round < backend.firstWriterRounds; round++) {
      const opened = await backend.open(t);
      let written = false;
      // Readers keep reading (each a new instance: one that has seen the remote does not check again).
      const reader = async () => {
        while (!written) {
          const ref = await opened.reopen().readRef("heads/main");
          assert.ok(ref === null || ref.commit === "c1");
        }
      };
      const readers = Array.from({ length: 8 }, reader);
      const writer = opened
        .reopen()
        .compareAndSwapRef("heads/main", null, value)
        .finally(() => {
          written = true;
        });
      const [created] = await Promise.all([writer, ...readers]);
      assert.equal(created, true);
    }
  });

  it(`two processes racing ${backend.raceIncrements} read-then-swap increments each lose no update`, async (t) => {
    const opened = await backend.open(t);
    const racers = [
      await startWorker(opened, "heads/main", String(backend.raceIncrements)),
      await startWorker(opened, "heads/main", String(backend.raceIncrements)),
    ];
    for (const racer of racers) racer.start();
    assert.deepEqual(await Promise.all(racers.map((w) => w.exited)), [0, 0]);
    const losses = racers.map((w) => Number(/done (\d+)/.exec(w.output())?.[1]));
    t.diagnostic(`races lost: ${losses.join(", ")}`);
    assert.deepEqual(await opened.reopen().readRef("heads/main"), {
      commit: String(2 * backend.raceIncrements),
      pack: "0".repeat(64),
    });
  });

  it("a writer SIGKILLed mid-way leaves a remote the next writer uses as it is", async (t) => {
    const opened = await backend.open(t);
    const worker = await startWorker(opened, "heads/main", "forever");
    worker.start();
    const remote = opened.reopen();
    const deadline = Date.now() + 30_000;
    while (Number((await remote.readRef("heads/main"))?.commit ?? 0) < backend.killAfter) {
      assert.ok(Date.now() < deadline, `the worker did not reach ${backend.killAfter} updates in 30 s`);
      await new Promise((resolve) => setImmediate(resolve));
    }
    worker.child.kill("SIGKILL");
    await worker.exited;

    // Every version there is complete, and the newest one is current.
    const versions = versionsOf(opened, "heads/main");
    for (const version of versions) {
      assert.match(
        readFileSync(opened.file(`refs/heads/main/${version}`), "utf8"),
        backend.workerVersionText,
      );
    }
    const current = await remote.readRef("heads/main");
    assert.ok(current !== null);
    assert.equal(current.commit, String(Math.max(...versions)));
    const next = { commit: String(Number(current.commit) + 1), pack: "0".repeat(64) };
    assert.equal(await remote.compareAndSwapRef("heads/main", current, next), true);
    assert.deepEqual(await remote.readRef("heads/main"), next);

    // A killed upload's leftovers change nothing either.
    backend.leaveKilledUpload?.(opened, worker.child.pid!);
    const dir = tempDir(t);
    const local = join(dir, "pack.gz");
    const bytes = randomBytes(100_000);
    writeFileSync(local, bytes);
    const address = await remote.putObjectFile(local);
    assert.ok((await readAll(await remote.openObject(address))).equals(bytes));
    assert.deepEqual((await remote.listRefs("heads/")).get("heads/main"), next);
  });
}
