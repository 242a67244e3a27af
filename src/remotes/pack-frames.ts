// The framing inside a pack (a remote object holding commits; see push.ts for what it says).
// A pack is a gzip stream of frames, each a type byte, a 4-byte big-endian length and a payload:
//
//   'S' section start   payload: JSON header, {"section": "...", ...}
//   'D' section data    payload: bytes (COPY text rows, as the store wrote them)
//   'E' section end     payload: empty
//
// Data is cut into frames as it streams, so neither side ever holds a whole section (a commit
// can be larger than memory). Pure: no I/O.

export type PackFrame =
  | { type: "section"; header: SectionHeader }
  | { type: "data"; bytes: Buffer }
  | { type: "end" };

export interface SectionHeader {
  section: string;
  [field: string]: unknown;
}

const SECTION = 0x53; // 'S'
const DATA = 0x44; // 'D'
const END = 0x45; // 'E'
const HEAD = 5;
/** A frame larger than this is not a frame: the pack is damaged (the writer cuts data at 1 MB). */
const MAX_FRAME = 64 * 1024 * 1024;

function frame(type: number, payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(HEAD + payload.length);
  out[0] = type;
  out.writeUInt32BE(payload.length, 1);
  payload.copy(out, HEAD);
  return out;
}

export function encodeSection(header: SectionHeader): Buffer {
  return frame(SECTION, Buffer.from(JSON.stringify(header)));
}

export function encodeData(bytes: Buffer): Buffer {
  return frame(DATA, bytes);
}

export function encodeEnd(): Buffer {
  return frame(END, Buffer.alloc(0));
}

export class PackFormatError extends Error {
  readonly code = "XX001";
}

/** Frames from a pack's (gunzipped) bytes, fed in chunks split anywhere. */
export class PackFrameReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes the pending chunks must hold to complete the frame they start; 0 until its head is in. */
  private need = 0;

  push(chunk: Buffer): PackFrame[] {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    // The chunks are joined only once the frame they start is complete: joining them (or even
    // walking their list) on every chunk would cost a large frame's size once per chunk.
    if (this.need === 0 && this.pendingBytes >= HEAD) {
      const head = this.pending[0].length >= HEAD ? this.pending[0] : Buffer.concat(this.pending, HEAD);
      const length = head.readUInt32BE(1);
      if (length > MAX_FRAME) throw new PackFormatError(`pack frame of ${length} bytes: the pack is damaged`);
      this.need = HEAD + length;
    }
    if (this.need === 0 || this.pendingBytes < this.need) return [];
    const frames: PackFrame[] = [];
    let buf = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes);
    let at = 0;
    while (buf.length - at >= HEAD) {
      const type = buf[at];
      const length = buf.readUInt32BE(at + 1);
      if (length > MAX_FRAME) throw new PackFormatError(`pack frame of ${length} bytes: the pack is damaged`);
      if (buf.length - at - HEAD < length) break;
      const payload = buf.subarray(at + HEAD, at + HEAD + length);
      at += HEAD + length;
      if (type === SECTION) {
        let header: unknown;
        try {
          header = JSON.parse(payload.toString());
        } catch {
          throw new PackFormatError("pack section header is not JSON: the pack is damaged");
        }
        if (!header || typeof (header as SectionHeader).section !== "string")
          throw new PackFormatError("pack section header has no section name: the pack is damaged");
        frames.push({ type: "section", header: header as SectionHeader });
      } else if (type === DATA) frames.push({ type: "data", bytes: payload });
      else if (type === END) frames.push({ type: "end" });
      else throw new PackFormatError(`unknown pack frame type 0x${type.toString(16)}: the pack is damaged`);
    }
    buf = buf.subarray(at);
    this.pending = buf.length ? [buf] : [];
    this.pendingBytes = buf.length;
    this.need = 0;
    return frames;
  }

  /** The pack ended: anything left over is a truncated frame. */
  finish(): void {
    if (this.pendingBytes > 0)
      throw new PackFormatError(
        `pack ends inside a frame (${this.pendingBytes} bytes left): the pack is truncated`,
      );
  }
}
