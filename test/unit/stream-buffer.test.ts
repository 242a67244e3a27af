import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { StreamBuffer } from "../../src/upstream/stream-buffer.ts";
import { tempDir } from "../support/postgres.ts";

const msg = (text: string) => Buffer.from(text);
async function drain(buffer: StreamBuffer, xid: number): Promise<string[]> {
  const out: string[] = [];
  for await (const b of buffer.take(xid)) out.push(b.toString());
  return out;
}

for (const limit of [1 << 20, 8]) {
  const where = limit === 8 ? "spilled to disk" : "in memory";
  test(`subtransaction aborts discard their changes and what follows them (${where})`, async () => {
    const dir = join(tempDir(), "spill");
    const buffer = new StreamBuffer(dir, limit);
    buffer.append(100, 100, msg("top-1"));
    buffer.append(100, 101, msg("sub101-1"));
    buffer.append(100, 102, msg("sub102-1"));
    buffer.append(100, 102, msg("sub102-2"));
    buffer.abort(100, 102);
    buffer.append(100, 103, msg("sub103-1"));
    buffer.append(100, 100, msg("top-2"));
    buffer.abort(100, 999); // a subtransaction that changed nothing
    buffer.append(200, 200, msg("other"));
    assert.deepEqual(await drain(buffer, 100), ["top-1", "sub101-1", "sub103-1", "top-2"]);
    assert.deepEqual(await drain(buffer, 200), ["other"]);
    assert.equal(buffer.openTransactions, 0);
    if (limit === 8) assert.ok(buffer.spilledBytes > 0, "the small limit forced a spill");
    assert.deepEqual(existsSync(dir) ? readdirSync(dir) : [], [], "spill files are removed");
  });
}

test("a whole-transaction abort forgets it and its spill file", async () => {
  const dir = join(tempDir(), "spill");
  const buffer = new StreamBuffer(dir, 4);
  for (let i = 0; i < 100; i++) buffer.append(7, 7, msg(`change-${i}`));
  assert.ok(readdirSync(dir).length === 1);
  buffer.abort(7, 7);
  assert.equal(buffer.openTransactions, 0);
  assert.deepEqual(readdirSync(dir), []);
  assert.deepEqual(await drain(buffer, 7), []);
});

test("entries larger than the read chunk come back whole and in order", async () => {
  const buffer = new StreamBuffer(join(tempDir(), "spill"), 1);
  const big = Buffer.alloc(3 * 1024 * 1024 + 17, 0x61);
  buffer.append(1, 1, msg("a"));
  buffer.append(1, 1, big);
  buffer.append(1, 1, msg("b"));
  const out: Buffer[] = [];
  for await (const b of buffer.take(1)) out.push(b);
  assert.equal(out.length, 3);
  assert.equal(out[0].toString(), "a");
  assert.ok(out[1].equals(big));
  assert.equal(out[2].toString(), "b");
});
