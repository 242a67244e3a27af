// Cluster roles and epochs: the rules of Dolt's cluster controller, as pure functions (the texts
// are Dolt's, so that its documentation and tests' error matches carry over). A server is primary,
// standby or detected_broken_config at an epoch that only ever rises.
//
//   manual (dolt_assume_cluster_role):  same role and epoch → nothing to do; otherwise the epoch
//                                       must rise
//   automatic (learned from a peer):    a primary at a higher epoch makes us its standby;
//                                       two primaries at one epoch are both broken; broken is
//                                       viral to a primary at the same or a lower epoch
// A server never becomes primary by itself.

export type Role = "primary" | "standby" | "detected_broken_config";

export interface RoleState {
  role: Role;
  epoch: number;
}

export class RoleError extends Error {
  constructor(
    message: string,
    readonly code = "22023",
  ) {
    super(message);
  }
}

export const BROKEN_CONFIG_ERROR =
  "error: more than one server was configured as primary in the same epoch. this server has stopped accepting writes. choose a primary in the cluster and call dolt_assume_cluster_role() on servers in the cluster to start replication at a higher epoch";

export const TRANSITIONED_ERROR =
  "this server transitioned cluster roles. this connection can no longer be used. please reconnect.";

export const isRole = (value: string): value is Role =>
  value === "primary" || value === "standby" || value === "detected_broken_config";

/**
 * Whether dolt_assume_cluster_role(role, epoch) may run from `current`: "noop" when nothing
 * changes (same role, same epoch), "change" otherwise; a RoleError with Dolt's text when refused.
 */
export function checkAssume(current: RoleState, role: string, epoch: number): "noop" | "change" {
  if (role === "detected_broken_config")
    throw new RoleError(
      "cannot set role to detected_broken_config; valid values are 'primary' and 'standby'",
    );
  if (role === current.role && epoch === current.epoch) return "noop";
  if (role !== "primary" && role !== "standby")
    throw new RoleError(`error assuming role '${role}'; valid roles are 'primary' and 'standby'`);
  if (!Number.isSafeInteger(epoch) || epoch < 0)
    throw new RoleError(
      `error assuming role '${role}' at epoch ${epoch}; the epoch must be a whole number (0 or more)`,
    );
  if (epoch < current.epoch)
    throw new RoleError(`error assuming role '${role}' at epoch ${epoch}; already at epoch ${current.epoch}`);
  if (epoch === current.epoch)
    throw new RoleError(
      `error assuming role '${role}' at epoch ${epoch}; already at epoch ${current.epoch} with different role, '${current.role}'`,
    );
  return "change";
}

/**
 * What a server learns from a peer's role and epoch (in a request it received or a reply it got):
 * the role it must take now, or undefined. Dolt applies these on each side of a replication
 * request; Strata's peers exchange roles in both directions every heartbeat, so one rule set
 * serves both.
 */
export function learnFromPeer(self: RoleState, peer: RoleState): RoleState | undefined {
  if (peer.role === "primary" && peer.epoch > self.epoch) return { role: "standby", epoch: peer.epoch };
  if (self.role !== "primary") return undefined;
  if (peer.role === "primary" && peer.epoch === self.epoch)
    return { role: "detected_broken_config", epoch: self.epoch };
  if (peer.role === "detected_broken_config" && peer.epoch >= self.epoch)
    return { role: "detected_broken_config", epoch: peer.epoch };
  return undefined;
}
