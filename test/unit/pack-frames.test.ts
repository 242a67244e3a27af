// The pack framing: frames survive any split of the byte stream, and damage is named.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  encodeData,
  encodeEnd,
  encodeSection,
  PackFormatError,
  type PackFrame,
  PackFrameReader,
} from "../../src/remotes/pack-frames.ts";

const stream = Buffer.concat([
  encodeSection({ section: "pack", commits: ["a", "b"] }),
  encodeEnd(),
  encodeSection({ section: "changes" }),
  encodeData(Buffer.from("1\t0\tpublic.t\tI\n")),
  encodeData(Buffer.alloc(70_000, 0x41)),
  encodeEnd(),
  encodeSection({ section: "end", commits: 2 }),
  encodeEnd(),
]);

function readAll(chunks: Buffer[]): PackFrame[] {
  const reader = new PackFrameReader();
  const frames = chunks.flatMap((c) => reader.push(c));
  reader.finish();
  return frames;
}

test("frames read the same whatever the chunking, down to one byte at a time", () => {
  const whole = readAll([stream]);
  assert.deepEqual(
    whole.map((f) => f.type),
    ["section", "end", "section", "data", "data", "end", "section", "end"],
  );
  assert.deepEqual(whole[0], { type: "section", header: { section: "pack", commits: ["a", "b"] } });
  for (const size of [1, 2, 5, 6, 7, 4096, 65_537]) {
    const chunks: Buffer[] = [];
    for (let at = 0; at < stream.length; at += size) chunks.push(stream.subarray(at, at + size));
    const frames = readAll(chunks);
    assert.deepEqual(
      frames.map((f) => (f.type === "data" ? f.bytes.toString("hex") : JSON.stringify(f))),
      whole.map((f) => (f.type === "data" ? f.bytes.toString("hex") : JSON.stringify(f))),
      `chunks of ${size}`,
    );
  }
});

test("a truncated stream, an unknown frame type and a bad header are named as damage", () => {
  const reader = new PackFrameReader();
  reader.push(stream.subarray(0, stream.length - 3));
  assert.throws(() => reader.finish(), PackFormatError);
  const unknown = Buffer.from(stream);
  unknown[0] = 0x58;
  assert.throws(() => new PackFrameReader().push(unknown), /unknown pack frame type/);
  const notJson = Buffer.concat([Buffer.from([0x53, 0, 0, 0, 3]), Buffer.from("{x}")]);
  assert.throws(() => new PackFrameReader().push(notJson), /not JSON/);
  const huge = Buffer.from([0x44, 0xff, 0xff, 0xff, 0xff]);
  assert.throws(() => new PackFrameReader().push(huge), /damaged/);
});
