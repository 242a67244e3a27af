// The automatic failover policy (src/cluster/failover.ts): when a primary fences itself, and which
// standby, if any, promotes itself.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type FailoverPeer,
  type FailoverView,
  promotionEpoch,
  shouldFence,
  voteFor,
} from "../../src/cluster/failover.ts";
import type { Heartbeat } from "../../src/cluster/peers.ts";

const AFTER = 10_000;
const NOW = 100_000;

const standbyBeat = (nodeId: string, replay: string, primaryContactMs = 20_000, epoch = 1): Heartbeat => ({
  role: "standby",
  epoch,
  node_id: nodeId,
  store: { in_recovery: true, replay_lsn: replay },
  primary_contact_ms: primaryContactMs,
});
const heardAgo = (ms: number, seen?: Heartbeat): FailoverPeer => ({ contactAt: NOW - ms, seen });

const view = (o: Partial<FailoverView>): FailoverView => ({
  now: NOW,
  afterMs: AFTER,
  role: "standby",
  epoch: 1,
  nodeId: "b",
  replayLsn: 0x500n,
  peers: [],
  primaryContactAt: NOW - 20_000,
  ...o,
});

test("a primary fences itself without a majority, counting itself, within after_secs / 2", () => {
  const primary = { role: "primary" as const };
  // Three servers: one standby reached recently is a majority.
  assert.equal(shouldFence(view({ ...primary, peers: [heardAgo(1_000), heardAgo(60_000)] })), false);
  // Neither standby within 5 s (after_secs / 2).
  assert.equal(shouldFence(view({ ...primary, peers: [heardAgo(5_001), heardAgo(60_000)] })), true);
  assert.equal(shouldFence(view({ ...primary, peers: [{}, {}] })), true);
  // Five servers: two of four peers make three of five.
  assert.equal(shouldFence(view({ ...primary, peers: [heardAgo(0), heardAgo(0), {}, {}] })), false);
  assert.equal(shouldFence(view({ ...primary, peers: [heardAgo(0), {}, {}, {}] })), true);
  // A standby is never fenced.
  assert.equal(shouldFence(view({ peers: [{}, {}] })), false);
});

test("the most advanced standby of a majority promotes itself, one epoch above any seen, after after_secs", () => {
  const peers = [
    heardAgo(60_000, { role: "primary", epoch: 1, node_id: "a" }),
    heardAgo(500, standbyBeat("c", "0/400")),
  ];
  assert.equal(promotionEpoch(view({ peers })), 2);
  // c has replayed more: c promotes, not b.
  const behind = [peers[0], heardAgo(500, standbyBeat("c", "0/600"))];
  assert.equal(promotionEpoch(view({ peers: behind })), undefined);
  // A tie goes to the lowest node id.
  const tie = [peers[0], heardAgo(500, standbyBeat("a0", "0/500"))];
  assert.equal(promotionEpoch(view({ peers: tie })), undefined);
  assert.equal(promotionEpoch(view({ nodeId: "a", peers: tie })), 2);
  // The new epoch is above every epoch seen.
  const later = [
    heardAgo(60_000, { role: "primary", epoch: 4, node_id: "a" }),
    heardAgo(500, standbyBeat("c", "0/400")),
  ];
  assert.equal(promotionEpoch(view({ peers: later })), 5);
});

test("a standby does not promote itself while the primary may still be writable", () => {
  const c = heardAgo(500, standbyBeat("c", "0/400"));
  const oldPrimary = heardAgo(60_000, { role: "primary", epoch: 1, node_id: "a" });
  // It heard from the primary less than after_secs ago.
  assert.equal(promotionEpoch(view({ peers: [oldPrimary, c], primaryContactAt: NOW - 9_000 })), undefined);
  // Another server of its majority heard from the primary within after_secs.
  const cSeesPrimary = heardAgo(500, standbyBeat("c", "0/400", 3_000));
  assert.equal(promotionEpoch(view({ peers: [oldPrimary, cSeesPrimary] })), undefined);
  // No majority: c was last heard from too long ago (it may be the primary's side of a cut).
  assert.equal(
    promotionEpoch(view({ peers: [oldPrimary, heardAgo(5_001, standbyBeat("c", "0/400"))] })),
    undefined,
  );
  // A reachable primary, or a broken configuration, stops it too.
  const primaryNow = heardAgo(500, { role: "primary", epoch: 1, node_id: "a" });
  assert.equal(promotionEpoch(view({ peers: [primaryNow, c], primaryContactAt: NOW - 20_000 })), undefined);
  const broken = heardAgo(500, { role: "detected_broken_config", epoch: 1, node_id: "c" });
  assert.equal(promotionEpoch(view({ peers: [oldPrimary, broken] })), undefined);
  // Its own store is not a streaming standby (replayLsn unknown), or it is not a standby.
  assert.equal(promotionEpoch(view({ replayLsn: undefined, peers: [oldPrimary, c] })), undefined);
  assert.equal(promotionEpoch(view({ role: "primary", peers: [oldPrimary, c] })), undefined);
});

test("a standby whose store is not streaming (a former primary) is part of the majority, not of the comparison", () => {
  const oldPrimary = heardAgo(60_000, { role: "primary", epoch: 1, node_id: "a" });
  const rejoining: Heartbeat = {
    role: "standby",
    epoch: 1,
    node_id: "a0",
    store: { in_recovery: false, current_lsn: "0/900" },
    primary_contact_ms: 20_000,
  };
  assert.equal(promotionEpoch(view({ peers: [oldPrimary, heardAgo(500, rejoining)] })), 2);
});

test("a primary that hears of a server at a higher epoch stays fenced, even with a majority", () => {
  // a was cut off and replaced: b is primary at 2, c follows it; a reaches c again, not b.
  const c = heardAgo(500, standbyBeat("c", "0/900", 0, 2));
  assert.equal(shouldFence(view({ role: "primary", epoch: 1, peers: [c, {}] })), true);
  assert.equal(shouldFence(view({ role: "primary", epoch: 2, peers: [c, {}] })), false);
});

test("a peer that does not report when it last saw the primary (an older version) blocks a promotion", () => {
  const oldPrimary = heardAgo(60_000, { role: "primary", epoch: 1, node_id: "a" });
  const { primary_contact_ms: _, ...silent } = standbyBeat("c", "0/400");
  assert.equal(promotionEpoch(view({ peers: [oldPrimary, heardAgo(500, silent)] })), undefined);
});

test("a vote goes to one candidate per epoch, one that has replayed at least as much, while no primary is heard", () => {
  const request = { epoch: 2, node_id: "c", replay_lsn: "0/500" };
  assert.deepEqual(voteFor(view({}), request, undefined), { granted: true });
  // The same candidate may ask again; another at that epoch may not.
  assert.equal(voteFor(view({}), request, { epoch: 2, node_id: "c" }).granted, true);
  assert.match(
    voteFor(view({}), request, { epoch: 2, node_id: "d" }).reason ?? "",
    /voted for another candidate at epoch 2/,
  );
  assert.equal(voteFor(view({}), { ...request, epoch: 3 }, { epoch: 2, node_id: "d" }).granted, true);
  // Not for an epoch at or below ours, not when we have replayed more, not while a primary is heard.
  assert.match(voteFor(view({ epoch: 2 }), request, undefined).reason ?? "", /not above/);
  assert.match(voteFor(view({ replayLsn: 0x501n }), request, undefined).reason ?? "", /replayed more/);
  assert.match(
    voteFor(view({ primaryContactAt: NOW - 1_000 }), request, undefined).reason ?? "",
    /heard from the primary/,
  );
  // A primary or a broken server never votes.
  assert.match(voteFor(view({ role: "primary" }), request, undefined).reason ?? "", /this server is primary/);
  assert.equal(voteFor(view({ role: "detected_broken_config" }), request, undefined).granted, false);
});

test("a primary of an older epoch (replaced) does not stop a standby of a newer one from standing", () => {
  // a (primary@1) was replaced by b (primary@2), which died; c is standby@2 and hears a again.
  const oldPrimary = heardAgo(500, { role: "primary", epoch: 1, node_id: "a" });
  assert.equal(promotionEpoch(view({ epoch: 2, peers: [oldPrimary, {}] })), 3);
  const current = heardAgo(500, { role: "primary", epoch: 2, node_id: "b" });
  assert.equal(promotionEpoch(view({ epoch: 2, peers: [current, {}] })), undefined);
});

test("a vote recorded at a later epoch is never lowered", () => {
  const request = { epoch: 2, node_id: "c", replay_lsn: "0/500" };
  assert.match(voteFor(view({}), request, { epoch: 3, node_id: "c" }).reason ?? "", /later epoch/);
});
