// A commit's hash is its identity (docs/decisions.md, section 6): replicas of one primary, a
// remote's copies and a standby must all compute the same one, across Strata versions. These
// tests pin hashes computed by the first implementation and compare the encoding with the plain
// one it is defined by (JSON.stringify of each line), for names and values of every awkward kind.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { base32, CommitHasher, type CommitHeader } from "../../src/commits/hash.ts";
import { formatLsn } from "../../src/protocol/lsn.ts";
import { type ColumnValue, type TupleData, UNCHANGED_TOAST } from "../../src/protocol/messages.ts";
import { seededRandom } from "../support/workload.ts";

const header: CommitHeader = {
  parentHash: "0123456789abcdefghijklmnopqrstuv",
  committer: "strata",
  email: "strata@localhost",
  date: "2026-11-24T00:11:12.600123Z",
  message: "replicated transaction 1234",
  upstreamXid: 1234,
  upstreamCommitLsn: 0x16b3748n,
  upstreamEndLsn: 0x16b3780n,
};

const columns = ["aid", "bid", "abalance", "filler"];
const awkward = ["10", "id", "2", "__proto__", 'quo"te', "ünï", "0", "01", "4294967295", "-1"];

/** The changes every pinned hash below is over. */
function addFixtureChanges(h: CommitHasher): void {
  h.addRowChange("public.pgbench_accounts", "U", columns, undefined, ["7", "1", "-4242", "  "]);
  h.addRowChange("public.pgbench_history", "I", columns, undefined, ["7", null, "12", "x"]);
  h.addRowChange(
    "public.t",
    "U",
    awkward,
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"],
    ["a\nb", UNCHANGED_TOAST, Buffer.from([0, 1, 2, 255]), null, "\u2028", "\\", "", "😀", '"', "\u0001"],
  );
  h.addRowChange("public.t", "D", awkward, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"], undefined);
  h.addSchemaChange("public.t", "ALTER TABLE public.t ADD COLUMN x int");
  h.addTruncate(["public.a", "public.b"], true, false);
}

test("hashes of a replicated commit (version 2) and a commit with its header first (version 1) are pinned", () => {
  const v2 = new CommitHasher();
  addFixtureChanges(v2);
  assert.equal(v2.digestWith(header), "mqu9jk43iafn80gclqapqlpoiibf6ap6");
  const v1 = new CommitHasher(header);
  addFixtureChanges(v1);
  assert.equal(v1.digest(), "09oflnbiku0sfle7070o4hp2p5rvc4tr");
  assert.equal(
    new CommitHasher().digestWith({ ...header, parentHash: null }),
    "a44n82rlo1fsgq6hjfkipjk42l0hm1r8",
  );
});

// The encoding as first written: one JSON.stringify per line, one hash update per line.
function encodeValue(value: ColumnValue): unknown {
  if (value === null || typeof value === "string") return value;
  if (value === UNCHANGED_TOAST) return { unchanged: true };
  return { binary: value.toString("base64") };
}
function encodeTuple(names: readonly string[], tuple: TupleData | undefined) {
  if (!tuple) return null;
  const out: Record<string, unknown> = Object.create(null);
  for (let i = 0; i < names.length; i++) out[names[i]] = encodeValue(tuple[i]);
  return out;
}
function referenceDigestWith(
  lines: [string, "I" | "U" | "D", string[], TupleData | undefined, TupleData | undefined][],
  h: CommitHeader,
): string {
  const body = createHash("sha256");
  for (const [rel, op, names, oldTuple, newTuple] of lines)
    body.update(`${JSON.stringify([rel, op, encodeTuple(names, oldTuple), encodeTuple(names, newTuple)])}\n`);
  const encodedHeader = JSON.stringify([
    h.parentHash,
    h.committer,
    h.email,
    h.date,
    h.message,
    h.upstreamXid ?? null,
    h.upstreamCommitLsn === undefined ? null : formatLsn(h.upstreamCommitLsn),
    h.upstreamEndLsn === undefined ? null : formatLsn(h.upstreamEndLsn),
  ]);
  return base32(
    createHash("sha256")
      .update(`strata-commit 2\n${encodedHeader}\n${body.digest("hex")}\n`)
      .digest()
      .subarray(0, 20),
  );
}

test("the encoding equals one JSON.stringify per change, for random names, values and sizes", () => {
  const random = seededRandom(20261124);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
  const pieces = ["a", "é", '"', "\\", "\n", "\u0000", "\u2028", "😀", "\ud800", "12", " ", "{}"];
  const text = (max: number) =>
    Array.from({ length: Math.floor(random() * max) }, () => pick(pieces)).join("");
  const value = (): ColumnValue => {
    const r = random();
    if (r < 0.1) return null;
    if (r < 0.15) return UNCHANGED_TOAST;
    if (r < 0.2) return Buffer.from(text(8));
    return r < 0.25 ? text(20_000) : text(12);
  };
  for (let round = 0; round < 200; round++) {
    const names = [
      ...new Set(Array.from({ length: 1 + Math.floor(random() * 8) }, () => pick([...awkward, text(4)]))),
    ];
    const lines: Parameters<typeof referenceDigestWith>[0] = [];
    const hasher = new CommitHasher();
    for (let i = Math.floor(random() * 40); i >= 0; i--) {
      const op = pick(["I", "U", "D"] as const);
      const tuple = () => names.map(value);
      const oldTuple = op === "I" || random() < 0.5 ? undefined : tuple();
      const newTuple = op === "D" ? undefined : tuple();
      const rel = `public.${text(3)}`;
      lines.push([rel, op, names, oldTuple, newTuple]);
      hasher.addRowChange(rel, op, names, oldTuple, newTuple);
    }
    const h = { ...header, message: text(30), upstreamXid: round };
    assert.equal(hasher.digestWith(h), referenceDigestWith(lines, h), `round ${round}`);
  }
});
