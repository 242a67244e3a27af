// A remote in a directory (file:///path): on a local disk, or a filesystem several machines mount.
//
// Layout:
//   strata-remote.json               {"format":"strata-remote","version":1}, written first
//   objects/<aa>/<address>           one file per object, <aa> its address's first two hex digits
//   objects/tmp/                     objects being written
//   refs/heads/<branch>/<n>          the versions of a ref, n = 1, 2, 3...; the highest is current
//   refs/tags/<tag>/<n>              (the name percent-encoded into one path component, so that
//                                    heads/a and heads/a/1 cannot collide with a version file)
//   refs/tmp/                        ref versions being written
//
// Nothing is ever locked, and no file is ever visible half-written: every file is written under
// a temporary name, fsynced, then hard-linked to its real name. link() creates a name only if it
// does not exist yet, atomically, so:
// - an object is linked into place (an existing copy stays as it is: same address, same bytes);
// - a ref compare-and-swap reads the highest version n, compares its value, and links the new
//   value as n + 1. Of two writers that read the same n, exactly one link succeeds; the other gets
//   EEXIST and reports that it lost. A deleted ref's newest version is {"deleted":true}.
// A process killed at any point leaves at most a temporary file, which readers never look at and
// which is removed once it is an hour old; the next writer needs no clean-up.
//
// Old ref versions are pruned (all but the newest KEEP_VERSIONS), but only once they are an hour
// old. Removing version v frees the name v again, and a writer that read the ref when v - 1 was
// the newest and stalled until after the prune could then link v "successfully" below the real
// newest version, a lost update. A compare-and-swap therefore gives up its read after
// STALE_READ_MS (it reads again), and a version is pruned only when no such reader can remain.

import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { link, mkdir, open, readdir, readFile, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { pipeline, type Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import {
  checkMarkerText,
  checkRefFileName,
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
  versionsIn,
} from "./remote-layout.ts";
import {
  checkObjectAddress,
  checkRefValue,
  MissingObjectError,
  type RefValue,
  RemoteFormatError,
  type RemoteStorage,
  sameRefValue,
} from "./storage.ts";

const TEMP_MAX_AGE_MS = 60 * 60 * 1000;
const CHUNK_BYTES = 1 << 20;

export interface DirectoryRemoteOptions {
  /** The URL to name the remote by in messages (default: the file URL of the directory). */
  url?: string;
  /** Versions of a ref kept however old (default 10). */
  keepVersions?: number;
  /** Age before an older ref version may be pruned (default an hour; tests lower it). */
  pruneAfterMs?: number;
}

interface RefState {
  /** The highest version number, 0 when the ref never existed. */
  version: number;
  value: RefValue | null;
}

export class DirectoryRemote implements RemoteStorage {
  readonly url: string;
  private readonly keepVersions: number;
  private readonly pruneAfterMs: number;
  private formatChecked = false;
  private writable: Promise<void> | undefined;

  constructor(
    readonly root: string,
    options: DirectoryRemoteOptions = {},
  ) {
    this.url = options.url ?? pathToFileURL(root).href;
    this.keepVersions = Math.max(1, options.keepVersions ?? KEEP_VERSIONS);
    this.pruneAfterMs = options.pruneAfterMs ?? PRUNE_AFTER_MS;
  }

  // --- objects -----------------------------------------------------------------------------

  async putObjectFile(localPath: string): Promise<string> {
    await this.prepareForWrite();
    const temp = join(this.root, "objects", "tmp", tempName());
    try {
      const address = await copyHashed(localPath, temp);
      const dir = join(this.root, "objects", address.slice(0, 2));
      await ensureDir(dir);
      await linkIfAbsent(temp, join(dir, address)); // already there: the same bytes, keep it
      await fsyncDir(dir);
      return address;
    } finally {
      await rm(temp, { force: true });
    }
  }

  async hasObject(address: string): Promise<boolean> {
    checkObjectAddress(address);
    if (!(await this.isRemote())) return false;
    try {
      return (await stat(this.objectPath(address))).isFile();
    } catch (err) {
      if (isCode(err, "ENOENT")) return false;
      throw err;
    }
  }

  async openObject(address: string): Promise<Readable> {
    checkObjectAddress(address);
    if (!(await this.isRemote())) throw new MissingObjectError(this.url, address);
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(this.objectPath(address), "r");
    } catch (err) {
      if (isCode(err, "ENOENT")) throw new MissingObjectError(this.url, address);
      throw err;
    }
    const verified = verifyingTransform(this.url, address);
    // pipeline passes the file's read errors on and closes the file if the reader stops early;
    // the reader sees every error on `verified`, so the callback has nothing left to do.
    pipeline(handle.createReadStream({ highWaterMark: CHUNK_BYTES }), verified, () => {});
    return verified;
  }

  private objectPath(address: string): string {
    return join(this.root, "objects", address.slice(0, 2), address);
  }

  // --- refs --------------------------------------------------------------------------------

  async readRef(name: string): Promise<RefValue | null> {
    checkRefFileName(name);
    if (!(await this.isRemote())) return null;
    return (await this.readRefState(name)).value;
  }

  async listRefs(prefix: string): Promise<Map<string, RefValue>> {
    if (!(await this.isRemote())) return new Map();
    return collectRefs(
      prefix,
      (namespace) => readdirIfExists(join(this.root, "refs", namespace)),
      async (name) => (await this.readRefState(name)).value,
    );
  }

  async compareAndSwapRef(name: string, expected: RefValue | null, next: RefValue | null): Promise<boolean> {
    checkRefFileName(name);
    if (next !== null) checkRefValue(next);
    await this.prepareForWrite();
    const dir = this.refDir(name);
    const content = refVersionText(next);
    for (;;) {
      const readAt = Date.now();
      const current = await this.readRefState(name);
      if (!sameRefValue(current.value, expected)) return false;
      if (sameRefValue(current.value, next)) return true; // already so: no new version
      await ensureDir(dir);
      const temp = join(this.root, "refs", "tmp", tempName());
      try {
        await writeDurably(temp, content);
        const elapsed = Date.now() - readAt;
        if (elapsed < 0 || elapsed > STALE_READ_MS) continue; // stalled: see the header, read again
        const version = current.version + 1;
        if (!(await linkIfAbsent(temp, join(dir, String(version))))) return false;
        await fsyncDir(dir);
        if (version % this.keepVersions === 0) await this.pruneVersions(dir, version);
        return true;
      } finally {
        await rm(temp, { force: true });
      }
    }
  }

  private refDir(name: string): string {
    return join(this.root, "refs", ...refPathParts(name));
  }

  private async readRefState(name: string): Promise<RefState> {
    const dir = this.refDir(name);
    // The newest version can be pruned between listing and reading it only when this reader
    // stalled for an hour while others wrote; list again then.
    for (let attempt = 1; ; attempt++) {
      const version = newestVersion(await readdirIfExists(dir));
      if (version === 0) return { version, value: null };
      const path = join(dir, String(version));
      let text: string;
      try {
        text = await readFile(path, "utf8");
      } catch (err) {
        if (isCode(err, "ENOENT") && attempt < 5) continue;
        throw err;
      }
      return { version, value: this.parseRefFile(text, path, name) };
    }
  }

  private parseRefFile(text: string, path: string, name: string): RefValue | null {
    const value = parseRefVersion(text);
    if (value !== undefined) return value;
    throw new RemoteFormatError(
      `ref ${name}: its ref file ${path} in remote ${this.url} is damaged: it is not {"commit","pack"} (a commit hash and an object address) or {"deleted":true}`,
      `remove ${path} so that the ref's previous version becomes current, or restore the remote from a backup`,
    );
  }

  /** Removes versions below the newest keepVersions that are older than pruneAfterMs; best effort. */
  private async pruneVersions(dir: string, newest: number): Promise<void> {
    try {
      const cutoff = Date.now() - this.pruneAfterMs;
      const old = versionsIn(await readdir(dir))
        .filter((version) => version <= newest - this.keepVersions)
        .sort((a, b) => a - b);
      for (const version of old) {
        const path = join(dir, String(version));
        if ((await stat(path)).mtimeMs > cutoff) break; // the rest are younger still
        await rm(path, { force: true });
      }
    } catch {
      // another writer pruned the same versions, or the disk is full: the next prune retries
    }
  }

  // --- the remote's directory --------------------------------------------------------------

  /**
   * True when the directory is a Strata remote, false when there is no remote yet (the directory
   * is missing or empty); throws when it holds something else or a format this Strata cannot read.
   */
  private async isRemote(): Promise<boolean> {
    if (this.formatChecked) return true;
    const markerPath = join(this.root, FORMAT_FILE);
    const text = await this.readMarker(markerPath);
    if (text === null) return false;
    this.checkMarker(text, markerPath);
    this.formatChecked = true;
    return true;
  }

  /** The marker's text, or null when there is no remote yet (no directory, or an empty one). */
  private async readMarker(markerPath: string): Promise<string | null> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await readFile(markerPath, "utf8");
      } catch (err) {
        if (isCode(err, "ENOTDIR")) {
          throw new RemoteFormatError(
            `remote ${this.url} is not a directory: ${this.root} is a file`,
            "point the remote at a directory (a new or empty one for a new remote)",
            "42809",
          );
        }
        if (!isCode(err, "ENOENT")) throw err;
      }
      const entries = (await readdirIfExists(this.root)).filter((entry) => !isMarkerTemp(entry));
      // A first writer created the remote between the two reads (the marker is never removed).
      if (entries.includes(FORMAT_FILE) && attempt < 3) continue;
      if (entries.length === 0) return null;
      throw new RemoteFormatError(
        `directory ${this.root} is not a Strata remote: it has no ${FORMAT_FILE} but holds other files (${entries.slice(0, 3).join(", ")}${entries.length > 3 ? ", ..." : ""})`,
        "point the remote at a new or empty directory, or at an existing Strata remote",
        "55000",
      );
    }
  }

  private checkMarker(text: string, markerPath: string): void {
    checkMarkerText(text, markerPath, this.url, "directory");
  }

  /** Creates the remote on first write; once per instance (again after a failure). */
  private prepareForWrite(): Promise<void> {
    this.writable ??= this.createIfAbsent().catch((err) => {
      this.writable = undefined;
      throw err;
    });
    return this.writable;
  }

  private async createIfAbsent(): Promise<void> {
    if (!(await this.isRemote())) {
      await ensureDir(this.root);
      const temp = join(this.root, `.${FORMAT_FILE}.${tempName()}`);
      try {
        await writeDurably(temp, MARKER_TEXT);
        // Lost to a concurrent first writer: its marker is checked below like any other.
        await linkIfAbsent(temp, join(this.root, FORMAT_FILE));
      } finally {
        await rm(temp, { force: true });
      }
      await fsyncDir(this.root);
      if (!(await this.isRemote())) throw new Error(`${FORMAT_FILE} vanished from ${this.root}`);
    }
    await ensureDir(join(this.root, "objects", "tmp"));
    await ensureDir(join(this.root, "refs", "tmp"));
    await removeOldTemps(this.root, (entry) => isMarkerTemp(entry));
    await removeOldTemps(join(this.root, "objects", "tmp"));
    await removeOldTemps(join(this.root, "refs", "tmp"));
  }
}

// --- helpers -------------------------------------------------------------------------------

function tempName(): string {
  return `${process.pid}-${randomBytes(8).toString("hex")}.tmp`;
}

function isMarkerTemp(entry: string): boolean {
  return entry.startsWith(`.${FORMAT_FILE}.`) && entry.endsWith(".tmp");
}

function isCode(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === code;
}

async function readdirIfExists(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (isCode(err, "ENOENT")) return [];
    throw err;
  }
}

/** Copies `source` to a new file `target`, fsynced; returns the SHA-256 of the bytes written. */
async function copyHashed(source: string, target: string): Promise<string> {
  const hash = createHash("sha256");
  const out = await open(target, "wx");
  try {
    for await (const chunk of createReadStream(source, {
      highWaterMark: CHUNK_BYTES,
    }) as AsyncIterable<Buffer>) {
      hash.update(chunk);
      for (let offset = 0; offset < chunk.length; ) {
        offset += (await out.write(chunk, offset)).bytesWritten;
      }
    }
    await out.sync();
  } finally {
    await out.close();
  }
  return hash.digest("hex");
}

async function writeDurably(path: string, content: string): Promise<void> {
  const handle = await open(path, "wx");
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Gives `temp`'s file the name `target` unless that exists. True when this call created it: a
 * link that reports EEXIST but made `target` this very file (an NFS retry of a link that had
 * succeeded) counts as created.
 */
async function linkIfAbsent(temp: string, target: string): Promise<boolean> {
  try {
    await link(temp, target);
    return true;
  } catch (err) {
    if (!isCode(err, "EEXIST")) throw err;
    const [ours, theirs] = await Promise.all([stat(temp), stat(target).catch(() => null)]);
    return theirs !== null && theirs.ino === ours.ino && theirs.dev === ours.dev;
  }
}

/** Makes `dir` (and its parents), fsyncing the parent of each directory it created. */
async function ensureDir(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true });
  if (first === undefined) return;
  for (let created = dir; ; created = dirname(created)) {
    await fsyncDir(dirname(created));
    if (created === first || dirname(created) === created) break;
  }
}

/** Makes a directory's entries durable; best effort where the platform cannot fsync directories. */
async function fsyncDir(dir: string): Promise<void> {
  let handle: Awaited<ReturnType<typeof open>> | undefined;
  try {
    handle = await open(dir, "r");
    await handle.sync();
  } catch (err) {
    if (!["EINVAL", "EPERM", "EISDIR", "ENOTSUP", "EBADF"].some((code) => isCode(err, code))) throw err;
  } finally {
    await handle?.close();
  }
}

/** Removes a killed writer's temporary files, once they are too old to belong to a live one. */
async function removeOldTemps(dir: string, isTemp: (entry: string) => boolean = () => true): Promise<void> {
  try {
    const cutoff = Date.now() - TEMP_MAX_AGE_MS;
    for (const entry of (await readdir(dir)).filter(isTemp)) {
      const path = join(dir, entry);
      const info = await stat(path).catch(() => null);
      if (info?.isFile() && info.mtimeMs < cutoff) await unlink(path).catch(() => {});
    }
  } catch {
    // best effort: a later writer tries again
  }
}
