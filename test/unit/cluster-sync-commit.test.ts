// The synchronous replication circuit breaker (src/cluster/sync-commit.ts): which standbys a
// primary's commits wait for, when a wait has lasted long enough, and when a standby is back.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  type ObservedStandby,
  SyncCommitBreaker,
  type SyncObservation,
  synchronousStandbyNames,
} from "../../src/cluster/sync-commit.ts";

const A = "strata_standby_a";
const B = "strata_standby_b";
const streaming = (name: string, replay: bigint): ObservedStandby => ({
  name,
  state: "streaming",
  replayLsn: replay,
});
const observation = (o: Partial<SyncObservation>): SyncObservation => ({
  now: 0,
  timeoutMs: 2_000,
  currentLsn: 100n,
  standbys: [],
  waiters: [],
  ...o,
});
const breaker = () => new SyncCommitBreaker((name) => name.startsWith("strata_standby_"));

test("synchronous_standby_names waits for every listed standby, names quoted", () => {
  assert.equal(synchronousStandbyNames([]), "");
  assert.equal(synchronousStandbyNames([A, B]), `ANY 2 ("${A}", "${B}")`);
  assert.equal(synchronousStandbyNames(['we"ird']), 'ANY 1 ("we""ird")');
});

test("a standby joins once it has replayed what the primary had written one look earlier", () => {
  const b = breaker();
  // First look: nothing to compare with but the current position, which A has not reached.
  assert.equal(b.observe(observation({ currentLsn: 100n, standbys: [streaming(A, 90n)] })), undefined);
  // The primary moved on to 150; A has replayed the 100 of the previous look: it keeps up.
  const joined = b.observe(observation({ currentLsn: 150n, standbys: [streaming(A, 120n)] }));
  assert.deepEqual(joined, { members: [A], joined: [A], left: [], cancel: [] });
  // Catching up, a base backup's walsender, or another program is never waited for.
  const other = b.observe(
    observation({
      currentLsn: 150n,
      standbys: [
        streaming(A, 150n),
        { name: B, state: "catchup", replayLsn: 150n },
        streaming("strata base backup", 150n),
      ],
    }),
  );
  assert.equal(other, undefined);
  assert.deepEqual(b.members, [A]);
});

test("off (0): nobody is waited for, and the list empties at once", () => {
  const b = breaker();
  assert.equal(b.observe(observation({ timeoutMs: 0, standbys: [streaming(A, 100n)] })), undefined);
  b.observe(observation({ standbys: [streaming(A, 100n)] }));
  assert.deepEqual(b.members, [A]);
  assert.deepEqual(b.observe(observation({ timeoutMs: 0, standbys: [streaming(A, 100n)] })), {
    members: [],
    joined: [],
    left: [A],
    cancel: [],
  });
});

test("a wait that reaches the timeout is cancelled once; only the standbys behind its commit leave", () => {
  const b = breaker();
  b.observe(observation({ now: 0, currentLsn: 100n, standbys: [streaming(A, 100n), streaming(B, 100n)] }));
  assert.deepEqual(b.members, [A, B]);
  // A backend waits from t=1000 for its commit (at most 200, the position when first seen).
  const waiting = { pid: 42, xid: "7" };
  const standbys = [streaming(A, 300n), { name: B, state: "streaming", replayLsn: 150n }];
  assert.equal(
    b.observe(observation({ now: 1_000, currentLsn: 200n, standbys, waiters: [waiting] })),
    undefined,
  );
  assert.equal(
    b.observe(observation({ now: 2_999, currentLsn: 300n, standbys, waiters: [waiting] })),
    undefined,
  );
  // Timed out: A is past the commit (it is waited for still), B is not.
  assert.deepEqual(b.observe(observation({ now: 3_000, currentLsn: 300n, standbys, waiters: [waiting] })), {
    members: [A],
    joined: [],
    left: [B],
    cancel: [waiting],
  });
  // Still seen waiting a moment later (the cancel takes a moment): not cancelled twice.
  assert.equal(
    b.observe(observation({ now: 3_100, currentLsn: 300n, standbys, waiters: [waiting] })),
    undefined,
  );
  // The same backend's next commit is a new wait, with its own clock.
  const next = { pid: 42, xid: "8" };
  assert.equal(
    b.observe(observation({ now: 3_200, currentLsn: 300n, standbys, waiters: [next] })),
    undefined,
  );
  assert.deepEqual(
    b.observe(observation({ now: 5_200, currentLsn: 300n, standbys, waiters: [next] }))?.cancel,
    [next],
  );
});

test("a standby that is gone is behind; when none looks behind, the breaker opens for all", () => {
  const b = breaker();
  b.observe(observation({ standbys: [streaming(A, 100n), streaming(B, 100n)] }));
  const waiter = { pid: 1, xid: "5" };
  b.observe(observation({ now: 0, standbys: [streaming(B, 100n)], waiters: [waiter] }));
  assert.deepEqual(
    b.observe(observation({ now: 2_000, standbys: [streaming(B, 100n)], waiters: [waiter] }))?.left,
    [A],
  );
  const c = breaker();
  c.observe(observation({ standbys: [streaming(A, 100n)] }));
  c.observe(observation({ now: 0, standbys: [streaming(A, 100n)], waiters: [waiter] }));
  assert.deepEqual(
    c.observe(observation({ now: 2_000, standbys: [streaming(A, 100n)], waiters: [waiter] })),
    {
      members: [],
      joined: [],
      left: [A],
      cancel: [waiter],
    },
  );
});

test("a standby that left joins again once it keeps up; reset forgets everything", () => {
  const b = breaker();
  b.observe(observation({ standbys: [streaming(A, 100n)] }));
  const waiter = { pid: 1, xid: "5" };
  b.observe(observation({ now: 0, currentLsn: 110n, standbys: [], waiters: [waiter] }));
  b.observe(observation({ now: 2_000, currentLsn: 120n, standbys: [], waiters: [waiter] }));
  assert.deepEqual(b.members, []);
  // Back, but still behind the previous look's 120.
  assert.equal(
    b.observe(observation({ now: 2_100, currentLsn: 130n, standbys: [streaming(A, 115n)] })),
    undefined,
  );
  assert.deepEqual(
    b.observe(observation({ now: 2_200, currentLsn: 140n, standbys: [streaming(A, 135n)] }))?.joined,
    [A],
  );
  b.reset();
  assert.deepEqual(b.members, []);
});

test("when standbys leave, every commit still waiting is let go with the warning, not only the timed-out one", () => {
  const b = breaker();
  b.observe(observation({ standbys: [streaming(A, 100n)] }));
  const old = { pid: 1, xid: "5" };
  const young = { pid: 2, xid: "6" };
  b.observe(observation({ now: 0, standbys: [], waiters: [old] }));
  b.observe(observation({ now: 1_500, standbys: [], waiters: [old, young] }));
  assert.deepEqual(b.observe(observation({ now: 2_000, standbys: [], waiters: [old, young] }))?.cancel, [
    old,
    young,
  ]);
  // Each is let go once.
  assert.equal(b.observe(observation({ now: 2_100, standbys: [], waiters: [old, young] })), undefined);
});

test("reset moves the generation on, so that an observation begun before it can be told stale", () => {
  const b = breaker();
  const before = b.generation;
  b.reset();
  assert.equal(b.generation, before + 1);
});
