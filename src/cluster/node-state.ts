// A cluster node's own state, kept outside the store: its role and epoch (which override the
// config's bootstrap values once written) and its id (names its replication slot on the
// primary). The store cannot hold these: a standby's store is read-only, and a rewind would undo
// them.
//
// Written whole to a temporary file, fsynced, renamed: a crash leaves the old state or the new.
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { isRole, type Role } from "./roles.ts";

export interface NodeState {
  node_id: string;
  role: Role;
  epoch: number;
  /** The candidate this node last voted for in an automatic failover (failover.ts), and at which epoch. */
  vote?: { epoch: number; node_id: string };
  /**
   * The node id each peer (by standby_remotes name) last said it has: names its replication slot
   * on this node's store, whose position bounds what a replicating primary acknowledges upstream
   * (controller.ts standbys()). Kept here so a peer that is down at a restart still counts.
   */
  peers?: Record<string, string>;
}

export const nodeStatePath = (dataDir: string) => join(dataDir, "cluster", "node.json");

export function readNodeState(dataDir: string): NodeState | undefined {
  const file = nodeStatePath(dataDir);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
  let state: Partial<NodeState>;
  try {
    state = JSON.parse(text);
  } catch {
    throw new Error(
      `${file} is not valid JSON: restore it from a backup, or delete it to start this node in its bootstrap role`,
    );
  }
  if (
    typeof state.node_id !== "string" ||
    typeof state.role !== "string" ||
    !isRole(state.role) ||
    !Number.isSafeInteger(state.epoch) ||
    (state.vote !== undefined &&
      (typeof state.vote?.node_id !== "string" || !Number.isSafeInteger(state.vote?.epoch)))
  )
    throw new Error(
      `${file}: persisted role ${JSON.stringify(state.role)} at epoch ${JSON.stringify(state.epoch)} is not valid (role must be "primary", "standby" or "detected_broken_config"): fix it, or delete the file to start this node in its bootstrap role`,
    );
  if (
    state.peers !== undefined &&
    (typeof state.peers !== "object" ||
      state.peers === null ||
      Array.isArray(state.peers) ||
      Object.values(state.peers).some((id) => typeof id !== "string"))
  )
    throw new Error(
      `${file}: "peers" must map standby_remotes names to node ids: fix it, or remove the key (it is written again at the next heartbeats)`,
    );
  return state as NodeState;
}

export function writeNodeState(dataDir: string, state: NodeState): void {
  const file = nodeStatePath(dataDir);
  mkdirSync(dirname(file), { recursive: true });
  const temp = `${file}.tmp`;
  const fd = openSync(temp, "w", 0o600);
  try {
    writeSync(fd, `${JSON.stringify(state, null, 2)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temp, file);
  const dir = openSync(dirname(file), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

export const newNodeId = () => randomBytes(6).toString("hex");
