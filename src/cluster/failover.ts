// The opt-in automatic failover policy (cluster.automatic_failover: {after_secs}): what a server
// decides from the heartbeats it exchanged. Without the policy no server promotes itself.
//
//   a primary that has not exchanged a heartbeat with a majority of the cluster (itself included)
//   for after_secs / 2 fences itself: read-only until it has a majority again. It may be the side
//   of a cut network that the others will replace.
//
//   a standby promotes itself, at one epoch above any it has seen, when all of these hold:
//   - no heartbeat with a primary (at its epoch or later) for after_secs;
//   - it exchanged heartbeats with a majority within after_secs / 2, and none of those servers
//     had a heartbeat with a primary within after_secs (so the primary, alive or not, has been
//     fenced for at least after_secs / 2: two majorities always share a server);
//   - of the standbys in that majority it has replayed the most WAL (ties: the lowest node id);
//   - it wins an election: a majority (itself included) grants it their vote for that epoch. A
//     server votes once per epoch (the vote is persisted), and only for a candidate that has
//     replayed at least as much as itself while it has not heard from a primary for after_secs,
//     so two standbys that each think they are the most advanced cannot both be promoted.
//
// The other standbys then follow the new primary (a higher-epoch primary, roles.ts), and so does
// the old primary when it is back (rewound onto the new primary's history). The guarantees, and
// what synchronous replication adds to them, are in docs/cluster.md.
import { parseLsn } from "../protocol/lsn.ts";
import type { Heartbeat } from "./peers.ts";
import type { Role } from "./roles.ts";

export interface FailoverPeer {
  /**
   * When a heartbeat this server sent the peer was last answered (monotonic ms): both directions
   * work. A heartbeat received is not enough: our answers may not get through.
   */
  contactAt?: number;
  /** The peer's last heartbeat. */
  seen?: Heartbeat;
}

export interface FailoverView {
  now: number;
  afterMs: number;
  role: Role;
  epoch: number;
  nodeId: string;
  /** As a standby: what its store has replayed; undefined when it is not a streaming standby. */
  replayLsn?: bigint;
  peers: FailoverPeer[];
  /** As a standby: its last heartbeat with a primary at its epoch or later (or when it started). */
  primaryContactAt: number;
  // Times are performance.now() milliseconds: a wall clock stepped back would stall the fence.
}

/** Whether `votes` (the candidate's own included) are a majority of a cluster of `servers`. */
export const isMajority = (votes: number, servers: number) => 2 * votes > servers;

/** The peers heard from within after_secs / 2. */
function reachable(view: FailoverView): FailoverPeer[] {
  return view.peers.filter((p) => p.contactAt !== undefined && view.now - p.contactAt <= view.afterMs / 2);
}

/** Whether this server and the peers it reaches are more than half of the cluster. */
export function hasMajority(view: FailoverView): boolean {
  return isMajority(1 + reachable(view).length, 1 + view.peers.length);
}

/**
 * A primary without a majority is read-only (fenced) until it has one again; so is a primary that
 * hears of any server at a higher epoch (a newer primary was made, which it may not reach yet).
 */
export function shouldFence(view: FailoverView): boolean {
  if (view.role !== "primary") return false;
  return !hasMajority(view) || view.peers.some((p) => (p.seen?.epoch ?? 0) > view.epoch);
}

/** The epoch a standby should promote itself at now, or undefined (see the header). */
export function promotionEpoch(view: FailoverView): number | undefined {
  if (view.role !== "standby" || view.replayLsn === undefined) return undefined;
  if (view.now - view.primaryContactAt < view.afterMs) return undefined;
  if (!hasMajority(view)) return undefined;
  for (const peer of reachable(view)) {
    const seen = peer.seen;
    if (!seen || seen.role === "detected_broken_config") return undefined;
    // A primary of an older epoch (replaced, and fenced by that) is only a server of the majority.
    if (seen.role === "primary" && seen.epoch >= view.epoch) return undefined;
    // A peer that does not say (an older version) may have seen the primary.
    if (seen.role === "standby" && (seen.primary_contact_ms ?? 0) < view.afterMs) return undefined;
    // A standby whose store is not streaming (a former primary not yet rewound) is not compared.
    if (!seen.store?.in_recovery || !seen.store.replay_lsn) continue;
    const theirs = parseLsn(seen.store.replay_lsn);
    if (theirs > view.replayLsn || (theirs === view.replayLsn && seen.node_id < view.nodeId))
      return undefined;
  }
  return Math.max(view.epoch, ...view.peers.map((p) => p.seen?.epoch ?? 0)) + 1;
}

/** A standby's request for votes before it promotes itself. */
export interface VoteRequest {
  epoch: number;
  node_id: string;
  /** What the candidate's store has replayed (pg_lsn text). */
  replay_lsn: string;
}

/**
 * Whether this server grants `request` its vote, given its view and its last vote: never two
 * candidates at one epoch, never while it would not promote anyone itself.
 */
export function voteFor(
  view: FailoverView,
  request: VoteRequest,
  voted: { epoch: number; node_id: string } | undefined,
): { granted: boolean; reason?: string } {
  if (request.epoch <= view.epoch)
    return { granted: false, reason: `the epoch ${request.epoch} is not above this server's ${view.epoch}` };
  if (voted && voted.epoch >= request.epoch && voted.node_id !== request.node_id)
    return { granted: false, reason: `this server voted for another candidate at epoch ${voted.epoch}` };
  if (voted && voted.epoch > request.epoch)
    return { granted: false, reason: `this server has voted at a later epoch (${voted.epoch})` };
  if (view.role !== "standby") return { granted: false, reason: `this server is ${view.role}` };
  if (view.now - view.primaryContactAt < view.afterMs)
    return { granted: false, reason: "this server heard from the primary within after_secs" };
  if (view.replayLsn !== undefined && view.replayLsn > parseLsn(request.replay_lsn))
    return { granted: false, reason: "this server has replayed more WAL than the candidate" };
  return { granted: true };
}
