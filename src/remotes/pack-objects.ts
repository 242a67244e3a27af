// Reading and writing the objects a remote holds — packs (commits) and snapshots (every table as
// of one commit) — as gzip streams of frames (pack-frames.ts), and the errors remote operations
// raise. What the sections say is push.ts's and pull.ts's business.
import { createHash } from "node:crypto";
import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { pipeline } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import type pg from "pg";
import { to as copyTo } from "pg-copy-streams";
import {
  encodeData,
  encodeEnd,
  encodeSection,
  PackFormatError,
  type PackFrame,
  PackFrameReader,
  type SectionHeader,
} from "./pack-frames.ts";
import type { RemoteStorage } from "./storage.ts";

export const PACK_FORMAT = "strata-pack";
export const SNAPSHOT_FORMAT = "strata-snapshot";
export const OBJECT_VERSION = 1;
const DATA_FRAME = 1024 * 1024;

/** The latest snapshot of a branch at or before a pack's last commit. */
export interface SnapshotRef {
  address: string;
  /** The commit it is the state of: the last commit of the pack that made it. */
  commit: string;
  /** Its data bytes (uncompressed COPY text). */
  bytes: number;
}

export interface PackHeader extends SectionHeader {
  section: "pack";
  format: string;
  version: number;
  branch: string;
  base: string | null;
  base_pack: string | null;
  commits: string[];
  snapshot: SnapshotRef | null;
  /** History bytes pushed since `snapshot` (uncompressed), this pack's included. */
  bytes_since_snapshot: number;
}

export class RemoteOperationError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** Writes one object to a local file: sections of frames, gzip'd. */
export class ObjectWriter {
  private readonly gzip = createGzip({ level: 6 });
  private readonly closed: Promise<unknown>;
  /** Data bytes written (before compression), for the snapshot rule. */
  dataBytes = 0;
  private readonly hash = createHash("sha256");
  private digest: string | undefined;

  constructor(readonly file: string) {
    const out = createWriteStream(file);
    this.closed = once(out, "close");
    this.gzip.on("data", (chunk: Buffer) => this.hash.update(chunk));
    this.gzip.pipe(out);
  }

  /** The object's address in a remote, the SHA-256 of its file's bytes (after finish()). */
  get address(): string {
    this.digest ??= this.hash.digest("hex");
    return this.digest;
  }

  async write(bytes: Buffer): Promise<void> {
    if (!this.gzip.write(bytes)) await once(this.gzip, "drain");
  }

  async section(header: SectionHeader): Promise<void> {
    await this.write(encodeSection(header));
    await this.write(encodeEnd());
  }

  /** A section whose data is the COPY text of `select`, streamed from the store. */
  async copySection(client: pg.Client, header: SectionHeader, select: string): Promise<void> {
    await this.write(encodeSection(header));
    const source = client.query(copyTo(`COPY (${select}) TO STDOUT`));
    for await (const chunk of source as AsyncIterable<Buffer>) {
      this.dataBytes += chunk.length;
      for (let at = 0; at < chunk.length; at += DATA_FRAME)
        await this.write(encodeData(chunk.subarray(at, at + DATA_FRAME)));
    }
    await this.write(encodeEnd());
  }

  async finish(): Promise<void> {
    this.gzip.end();
    await this.closed;
  }

  abandon(): void {
    this.gzip.destroy();
  }
}

/**
 * The frames of an object, as they stream (checked against the address at the end: act on
 * nothing irrevocably before the iteration has finished). A damaged object's errors name it.
 */
export async function* readObjectFrames(storage: RemoteStorage, address: string): AsyncGenerator<PackFrame> {
  const stream = await storage.openObject(address);
  const gunzip = createGunzip();
  pipeline(stream, gunzip, () => {});
  const reader = new PackFrameReader();
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) yield* reader.push(chunk);
    reader.finish();
  } catch (err) {
    throw damaged(err, storage, address);
  } finally {
    stream.destroy();
    gunzip.destroy();
  }
}

/** The first section of an object, checked to be of `format` (the rest is not read). */
export async function readObjectHeader(
  storage: RemoteStorage,
  address: string,
  format: string,
): Promise<SectionHeader> {
  for await (const frame of readObjectFrames(storage, address)) return checkHeader(frame, address, format);
  throw new RemoteOperationError(`object ${address} in remote ${storage.url} is empty`, "XX001");
}

export async function readPackHeader(storage: RemoteStorage, address: string): Promise<PackHeader> {
  return (await readObjectHeader(storage, address, PACK_FORMAT)) as PackHeader;
}

export function checkHeader(frame: PackFrame, address: string, format: string): SectionHeader {
  if (frame.type !== "section" || frame.header.format !== format)
    throw new RemoteOperationError(`object ${address} is not a ${format} object`, "XX001");
  if (frame.header.version !== OBJECT_VERSION)
    throw new RemoteOperationError(
      `${format} ${address} has format version ${String(frame.header.version)}; this Strata reads version ${OBJECT_VERSION}`,
      "0A000",
      "upgrade Strata on this server",
    );
  return frame.header;
}

/** A stream's failure (gzip, framing) named as the damaged object it is; others as they are. */
function damaged(err: unknown, storage: RemoteStorage, address: string): unknown {
  const e = err as { code?: unknown };
  const fromZlib = typeof e.code === "string" && e.code.startsWith("Z_");
  if (!fromZlib && !(err instanceof PackFormatError)) return err;
  return new RemoteOperationError(
    `object ${address} in remote ${storage.url} is damaged: ${(err as Error).message}`,
    "XX001",
    "the remote's copy is damaged or truncated: push the commit again from a database that has it, or restore the remote from a backup",
  );
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function quoteLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}
