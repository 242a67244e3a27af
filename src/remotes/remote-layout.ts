// What every kind of remote stores the same way, whatever it stores it on (directory-remote.ts,
// s3-remote.ts): the format marker, a ref's name as one path component, its numbered versions and
// what each holds, and the check a reader applies to an object's bytes as they stream.
//
//   strata-remote.json          {"format":"strata-remote","version":1}
//   objects/<aa>/<address>      one object per SHA-256 address, <aa> its first two hex digits
//   refs/<namespace>/<name>/<n> the versions of a ref, n = 1, 2, 3...; the highest is current.
//                               <name> is percent-encoded into one component, so that heads/a and
//                               heads/a/1 cannot collide with a version.

import { createHash } from "node:crypto";
import { Transform } from "node:stream";
import {
  CorruptObjectError,
  checkRefName,
  checkRefValue,
  isValidRefName,
  REF_NAMESPACES,
  RefNameError,
  type RefValue,
  RemoteFormatError,
} from "./storage.ts";

export const FORMAT_FILE = "strata-remote.json";
export const FORMAT_NAME = "strata-remote";
export const FORMAT_VERSION = 1;
/** The marker's text, as written. */
export const MARKER_TEXT = `${JSON.stringify({ format: FORMAT_NAME, version: FORMAT_VERSION })}\n`;

/** Versions of a ref kept however old. */
export const KEEP_VERSIONS = 10;
/** Age before an older ref version may be pruned. */
export const PRUNE_AFTER_MS = 60 * 60 * 1000;
/**
 * A compare-and-swap gives up a read older than this and reads again: pruning version v frees the
 * name v, so a writer that stalled past a prune could otherwise create v below the real newest.
 */
export const STALE_READ_MS = 60 * 1000;

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Throws RemoteFormatError unless `text` is this Strata's format marker. `where` names the marker
 * (its path or key), `elsewhere` what else the remote could point at ("directory", "prefix").
 */
export function checkMarkerText(text: string, where: string, url: string, elsewhere: string): void {
  let marker: unknown;
  try {
    marker = JSON.parse(text);
  } catch {
    marker = undefined;
  }
  if (!isRecord(marker) || marker.format !== FORMAT_NAME) {
    throw new RemoteFormatError(
      `${where} in remote ${url} is not a Strata remote's format marker`,
      `it should hold {"format":"${FORMAT_NAME}","version":${FORMAT_VERSION}}: restore it, or point the remote at another ${elsewhere}`,
    );
  }
  if (marker.version !== FORMAT_VERSION) {
    throw new RemoteFormatError(
      `remote ${url} has format version ${JSON.stringify(marker.version)}; this Strata reads version ${FORMAT_VERSION}`,
      "use the Strata release that wrote this remote (or a newer one), or push to a new remote",
      "0A000",
    );
  }
}

/** Longest file name (NAME_MAX on Linux and macOS), in bytes. */
const MAX_FILE_NAME_BYTES = 255;

/**
 * checkRefName, and that the name fits in one file name once percent-encoded (a branch or tag name
 * of 200 bytes can encode to 600): for a remote that stores a ref as a directory of its own.
 */
export function checkRefFileName(name: string): void {
  checkRefName(name);
  const encoded = refPathParts(name)[1];
  if (encoded.length > MAX_FILE_NAME_BYTES) {
    const err = new RefNameError(
      name,
      `it is stored as a file name of ${encoded.length} bytes once percent-encoded, longer than the ${MAX_FILE_NAME_BYTES} a file name can hold`,
    );
    throw Object.assign(err, {
      hint: `use a shorter branch or tag name: at most ${MAX_FILE_NAME_BYTES} bytes once percent-encoded (each character other than A-Z a-z 0-9 - _ . ! ~ * ' ( ) counts 3 bytes per UTF-8 byte)`,
    });
  }
}

/** A valid ref name's namespace and its name, encoded as one path component. */
export function refPathParts(name: string): [namespace: string, component: string] {
  const slash = name.indexOf("/");
  return [name.slice(0, slash), encodeURIComponent(name.slice(slash + 1))];
}

/** The ref a component under refs/<namespace>/ names, or null for anything that is not one. */
export function refNameOfEntry(namespace: string, entry: string): string | null {
  let short: string;
  try {
    short = decodeURIComponent(entry);
  } catch {
    return null;
  }
  const name = `${namespace}/${short}`;
  return encodeURIComponent(short) === entry && isValidRefName(name) ? name : null;
}

/** Version numbers among a ref's entries (anything else there is ignored). */
export function versionsIn(entries: string[]): number[] {
  return entries.filter((entry) => /^[1-9][0-9]{0,14}$/.test(entry)).map(Number);
}

export function newestVersion(entries: string[]): number {
  return versionsIn(entries).reduce((max, version) => Math.max(max, version), 0);
}

/**
 * What a ref version holds: {"commit","pack"}, or {"deleted":true} for a deletion. `extra` fields
 * (a writer's token) are written after them and ignored by readers.
 */
export function refVersionText(next: RefValue | null, extra: Record<string, string> = {}): string {
  const value = next === null ? { deleted: true } : { commit: next.commit, pack: next.pack };
  return `${JSON.stringify({ ...value, ...extra })}\n`;
}

/** A ref version's value (null: deleted), or undefined when the text is not a ref version. */
export function parseRefVersion(text: string): RefValue | null | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isRecord(parsed)) return undefined;
  if (parsed.deleted === true) return null;
  const value = { commit: parsed.commit, pack: parsed.pack } as RefValue;
  try {
    checkRefValue(value); // a commit hash and an object address, not any string (a path...)
  } catch {
    return undefined;
  }
  return value;
}

/**
 * A pass-through that hashes an object's bytes and, at their end, fails with CorruptObjectError
 * when they do not hash to `address`. The consumer sees every error on it, so it must not act on
 * the data before the stream has ended cleanly.
 */
export function verifyingTransform(url: string, address: string): Transform {
  const hash = createHash("sha256");
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      const actual = hash.digest("hex");
      done(actual === address ? null : new CorruptObjectError(url, address, actual));
    },
  });
}

// Refs read at once by listRefs (each read is a file or a request or two).
const LIST_BATCH = 32;

/**
 * listRefs for a remote of this layout: the refs under `prefix`, from each namespace's entries
 * (`entries`: the names under refs/<namespace>/) and each ref's current value (`value`; null for
 * a deleted ref, which is left out), a batch of reads at a time.
 */
export async function collectRefs(
  prefix: string,
  entries: (namespace: string) => Promise<string[]>,
  value: (name: string) => Promise<RefValue | null>,
): Promise<Map<string, RefValue>> {
  const refs = new Map<string, RefValue>();
  for (const namespace of REF_NAMESPACES) {
    const scope = `${namespace}/`;
    if (!scope.startsWith(prefix) && !prefix.startsWith(scope)) continue;
    const names = (await entries(namespace))
      .map((entry) => refNameOfEntry(namespace, entry))
      .filter((name): name is string => name?.startsWith(prefix) === true)
      .sort();
    for (let i = 0; i < names.length; i += LIST_BATCH) {
      const batch = names.slice(i, i + LIST_BATCH);
      const values = await Promise.all(batch.map(value));
      batch.forEach((name, j) => {
        const found = values[j];
        if (found !== null) refs.set(name, found);
      });
    }
  }
  return refs;
}
