// The cluster's role rules (src/cluster/roles.ts), with Dolt's texts: what dolt_assume_cluster_role
// accepts and refuses, and what a server learns from a peer's role and epoch.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseHeartbeat } from "../../src/cluster/peers.ts";
import { checkAssume, learnFromPeer, RoleError, type RoleState } from "../../src/cluster/roles.ts";

const primary1: RoleState = { role: "primary", epoch: 1 };
const standby1: RoleState = { role: "standby", epoch: 1 };
const broken1: RoleState = { role: "detected_broken_config", epoch: 1 };

test("dolt_assume_cluster_role: same role and epoch is nothing to do; a higher epoch is a change", () => {
  assert.equal(checkAssume(primary1, "primary", 1), "noop");
  assert.equal(checkAssume(primary1, "standby", 2), "change");
  assert.equal(checkAssume(standby1, "primary", 2), "change");
  assert.equal(checkAssume(standby1, "standby", 5), "change");
  assert.equal(checkAssume(broken1, "primary", 2), "change");
});

test("dolt_assume_cluster_role: Dolt's refusals, in Dolt's order", () => {
  const message = (state: RoleState, role: string, epoch: number) => {
    try {
      checkAssume(state, role, epoch);
    } catch (err) {
      assert.ok(err instanceof RoleError);
      return err.message;
    }
    return "accepted";
  };
  assert.equal(
    message(primary1, "standby", 0),
    "error assuming role 'standby' at epoch 0; already at epoch 1",
  );
  assert.equal(
    message(primary1, "standby", 1),
    "error assuming role 'standby' at epoch 1; already at epoch 1 with different role, 'primary'",
  );
  assert.equal(
    message(primary1, "leader", 2),
    "error assuming role 'leader'; valid roles are 'primary' and 'standby'",
  );
  // An unknown role is named before the epoch is looked at.
  assert.equal(
    message(primary1, "leader", 0),
    "error assuming role 'leader'; valid roles are 'primary' and 'standby'",
  );
  assert.equal(
    message(primary1, "detected_broken_config", 2),
    "cannot set role to detected_broken_config; valid values are 'primary' and 'standby'",
  );
  // Broken is left only at a higher epoch.
  assert.equal(
    message(broken1, "primary", 1),
    "error assuming role 'primary' at epoch 1; already at epoch 1 with different role, 'detected_broken_config'",
  );
});

test("learned from a peer: a primary at a higher epoch makes any server its standby", () => {
  for (const self of [primary1, standby1, broken1])
    assert.deepEqual(learnFromPeer(self, { role: "primary", epoch: 3 }), { role: "standby", epoch: 3 });
});

test("learned from a peer: two primaries at one epoch are both broken; broken spreads to a primary", () => {
  assert.deepEqual(learnFromPeer(primary1, primary1), broken1);
  assert.deepEqual(learnFromPeer(primary1, broken1), broken1);
  assert.deepEqual(learnFromPeer(primary1, { role: "detected_broken_config", epoch: 2 }), {
    role: "detected_broken_config",
    epoch: 2,
  });
});

test("learned from a peer: nothing changes otherwise, and nobody becomes primary by itself", () => {
  assert.equal(learnFromPeer(standby1, primary1), undefined);
  assert.equal(learnFromPeer(standby1, broken1), undefined);
  assert.equal(learnFromPeer(broken1, primary1), undefined);
  assert.equal(learnFromPeer(primary1, standby1), undefined);
  assert.equal(learnFromPeer({ role: "primary", epoch: 2 }, primary1), undefined);
  assert.equal(learnFromPeer({ role: "primary", epoch: 2 }, broken1), undefined);
  assert.equal(learnFromPeer(primary1, { role: "standby", epoch: 9 }), undefined);
});

test("a peer's heartbeat is checked before anything acts on it", () => {
  const good = {
    role: "standby",
    epoch: 2,
    node_id: "b1",
    store: { in_recovery: true, replay_lsn: "0/16B3748" },
  };
  assert.deepEqual(parseHeartbeat(JSON.stringify(good)), good);
  assert.throws(() => parseHeartbeat("{"), /not JSON/);
  for (const bad of [
    { ...good, role: "leader" },
    { ...good, epoch: "2" },
    { ...good, epoch: -1 },
    { ...good, epoch: 2 ** 53 },
    { ...good, store: { in_recovery: true, replay_lsn: "zz" } },
    { ...good, primary_contact_ms: "soon" },
    { role: "primary", epoch: 1 },
  ])
    assert.throws(() => parseHeartbeat(JSON.stringify(bad)), /the heartbeat is malformed/);
});
