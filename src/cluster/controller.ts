// The cluster controller: this node's role and epoch, its peers, and every change of role
// (DESIGN.md decision 8; the rules are Dolt's, see roles.ts and docs/cluster.md).
//
//   heartbeat (1 s, each peer, both ways)  roles exchanged → automatic transitions (learnFromPeer);
//                                          a standby learns which peer is primary; the primary
//                                          learns each standby's replay position (status, lag)
//   primary → standby (graceful)           read-only, other sessions ended, wait ≤ 10 s until every
//                                          standby has replayed our last WAL; else back to primary
//   a store that was a primary, now a      stop, pg_rewind from the primary, start as its hot
//   standby's, once a primary is known     standby (the WAL it streams comes through tunnel.ts)
//   standby → primary                      pg_promote(), writes open, primary services start
//   synchronous replication (100 ms)       the standbys commits wait for, Dolt's timeout and
//                                          circuit breaker (sync-commit.ts)
//   automatic failover (opt-in, 250 ms)    a primary without a majority fences itself; the elected
//                                          standby promotes itself (failover.ts)
//
// Role changes run one at a time. The state is persisted (node-state.ts) before a change is
// reported; a crash in the middle is finished by the next start from the persisted role.
import { existsSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import type { ClusterConfig, Config } from "../config/schema.ts";
import type { SessionInfo } from "../frontdoor/session.ts";
import type { Logger } from "../log.ts";
import { formatLsn, parseLsn } from "../protocol/lsn.ts";
import {
  type ClusterSpec,
  clusterPaths,
  initCluster,
  isInitialised,
  socketDirFor,
  startCluster,
  stopCluster,
  writeOwned,
} from "../store/cluster.ts";
import type { OpenStoreOptions, StoreHandle } from "../store/store.ts";
import type { ClusterStandby } from "../upstream/standby-bound.ts";
import { NodeKey, PeerKeys } from "./auth.ts";
import { ControlRefusal, type ControlServer, startControlServer } from "./control-server.ts";
import {
  type FailoverView,
  isMajority,
  promotionEpoch,
  shouldFence,
  type VoteRequest,
  voteFor,
} from "./failover.ts";
import { type NodeState, newNodeId, readNodeState, writeNodeState } from "./node-state.ts";
import { outboundTlsOptions } from "./peer-tls.ts";
import { type Heartbeat, PeerClient, PeerRefusal, peerEndpoint } from "./peers.ts";
import {
  BROKEN_CONFIG_ERROR,
  checkAssume,
  learnFromPeer,
  type Role,
  RoleError,
  type RoleState,
  TRANSITIONED_ERROR,
} from "./roles.ts";
import {
  isStandbyStore,
  rewindStore,
  setStandbySignal,
  slotName,
  type TunnelConninfo,
  takeBaseBackup,
  writeRoleSettings,
} from "./store-roles.ts";
import { SyncCommitBreaker } from "./sync-commit.ts";
import { type StoreTunnel, startStoreTunnel } from "./tunnel.ts";

const HEARTBEAT_MS = 1_000;
/** A peer not heard from for this long is not taken for the primary. */
const PEER_STALE_MS = 5_000;
/** Dolt's fixed wait for standbys in a graceful demotion. */
export const DEMOTE_WAIT_MS = 10_000;
const STATUS_FILE = "strata_cluster_status.json";
/** How often a primary looks at commits waiting for standbys (the timeout's resolution). */
const SYNC_POLL_MS = 100;
/** How often it checks whether synchronous replication was switched on. */
const SYNC_IDLE_POLL_MS = 1_000;
/** How often the automatic failover policy looks at the heartbeats (failover.ts). */
const FAILOVER_CHECK_MS = 250;
/** How far above every known epoch a vote may be asked for (each lost election adds one). */
const MAX_EPOCH_LEAP = 100;
const FENCED_ERROR =
  "this primary cannot reach a majority of its cluster and is read-only until it can (cluster.automatic_failover)";

/** The Postgres side of services only a primary runs (upstream replication, pushes to remotes). */
export interface PrimaryServices {
  start(): Promise<void>;
  stop(): Promise<void>;
}

interface PeerStatus {
  client: PeerClient;
  /** Its last heartbeat, and when it came. */
  seen?: Heartbeat;
  seenAt?: number;
  /** When a heartbeat we sent it was last answered (performance.now(): failover.ts). */
  answeredAt?: number;
  /** When it last sent us a heartbeat (performance.now()). */
  heardAt?: number;
  /** As a primary: when this standby had last replayed everything we had written (Dolt's lastSuccess). */
  caughtUpAt?: number;
  /** Lag in ms at the last heartbeat (null before the first since we became primary). */
  lagMs?: number | null;
  error?: string;
  /** As a standby: the last heartbeat this primary sent us. */
  fromPrimaryAt?: number;
  /** A heartbeat exchange still under way. */
  exchanging?: Promise<void>;
}

export interface TransitionRow {
  caught_up: number;
  database: string;
  remote: string;
  remote_url: string;
}

export class ClusterError extends Error {
  constructor(
    message: string,
    readonly code = "XX000",
    readonly hint?: string,
  ) {
    super(message);
  }
}

export class ClusterController {
  private state!: NodeState;
  private key!: NodeKey;
  private peerKeys!: PeerKeys;
  private control?: ControlServer;
  private tunnel?: StoreTunnel;
  private readonly peers = new Map<string, PeerStatus>();
  private timer?: NodeJS.Timeout;
  private store?: StoreHandle;
  private spec?: ClusterSpec;
  private pool?: pg.Pool;
  private services?: PrimaryServices;
  private servicesRunning = false;
  private sessions?: () => SessionInfo[];
  private readonly tainted = new WeakSet<SessionInfo>();
  /** Role changes, one at a time. */
  private queue: Promise<unknown> = Promise.resolve();
  /** True while a role change is under way: other sessions' statements are refused. */
  private transitioning = false;
  private rewinding = false;
  private promoting = false;
  /** The primary (name@epoch/node) this standby last made sure has its slot. */
  private slotOn?: string;
  private refusedIncoming?: { reason: string; at: number };
  /** (time, WAL position) samples of ours as a primary, for the standbys' lag. */
  private walSamples: { at: number; lsn: bigint }[] = [];
  /** dolt_cluster_ack_writes_timeout_secs: which standbys commits wait for (sync-commit.ts). */
  private readonly syncCommits = new SyncCommitBreaker((name) => name.startsWith(slotName("")));
  private syncTimer?: NodeJS.Timeout;
  /** A primary without a majority, under the automatic failover policy: read-only. */
  private fenced = false;
  private failoverTimer?: NodeJS.Timeout;
  /** The store is prepared (the policy would otherwise fence a primary before its own schema is in). */
  private serving = false;
  /** The last epoch this node stood for and lost, and when it may stand again (performance.now()). */
  private lostElection?: number;
  private nextCandidacyAt = 0;
  /** When this node last granted a vote (performance.now()), and whether it is standing itself. */
  private votedAt = 0;
  private campaigning = false;
  /** When the current role and epoch began (this run): a standby's clock for a missing primary starts here. */
  private roleSince = performance.now();
  private stopped = false;

  constructor(
    private readonly cluster: ClusterConfig,
    private readonly config: Config,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {
    if (config.store.url)
      throw new ClusterError(
        "cluster: needs the managed store (a standby's store is a physical copy of the primary's, which Strata runs): remove store.url",
      );
  }

  get role(): Role {
    return this.state.role;
  }
  get epoch(): number {
    return this.state.epoch;
  }
  roleState(): RoleState {
    return { role: this.state.role, epoch: this.state.epoch };
  }

  /** Persisted role and epoch (or the bootstrap ones), the key, the control plane, heartbeats. */
  async start(): Promise<void> {
    const persisted = readNodeState(this.dataDir);
    this.state = persisted ?? {
      node_id: newNodeId(),
      role: this.cluster.bootstrap_role,
      epoch: this.cluster.bootstrap_epoch,
    };
    if (!persisted) writeNodeState(this.dataDir, this.state);
    this.log.info(
      {
        role: this.state.role,
        epoch: this.state.epoch,
        node_id: this.state.node_id,
        persisted: Boolean(persisted),
      },
      persisted
        ? "cluster: role and epoch from this node's persisted state"
        : "cluster: bootstrap role and epoch",
    );
    const tls = outboundTlsOptions(this.cluster.remotesapi);
    this.key = await NodeKey.generate();
    const endpoints = this.cluster.standby_remotes.map(peerEndpoint);
    this.peerKeys = new PeerKeys({
      peers: endpoints.map((p) => ({ name: p.name, jwksUrl: new URL(".well-known/jwks.json", p.base).href })),
      ownKid: this.key.kid,
      tls,
      log: this.log,
    });
    for (const endpoint of endpoints)
      this.peers.set(endpoint.name, {
        client: new PeerClient(endpoint, this.key, this.peerKeys, tls, () => this.roleState()),
      });
    this.peerKeys.start();
    this.control = await startControlServer(this.cluster.remotesapi, this.key, this.peerKeys, this, this.log);
    this.tunnel = await startStoreTunnel(
      socketDirFor(this.dataDir, "cluster-run"),
      () => this.primaryPeer()?.client,
      this.log,
    );
    const tick = () => {
      void this.heartbeatAll().finally(() => {
        if (!this.stopped) this.timer = setTimeout(tick, HEARTBEAT_MS);
      });
    };
    tick();
    if (this.cluster.automatic_failover) {
      const after = this.cluster.automatic_failover.after_secs;
      this.log.info({ after_secs: after }, "cluster: automatic failover is on");
      const check = () => {
        void this.applyFailoverPolicy(after * 1000)
          .catch((err: Error) =>
            this.log.error({ err: err.message }, "cluster: the automatic failover policy failed"),
          )
          .finally(() => {
            if (!this.stopped) this.failoverTimer = setTimeout(check, FAILOVER_CHECK_MS);
          });
      };
      check();
    }
  }

  /** How the store is made and started for this role (openStore's options). */
  storeOptions(): OpenStoreOptions {
    return {
      initialise: async (spec) => {
        this.spec = spec;
        if (this.state.role === "standby") {
          if (isInitialised(spec)) return false;
          await this.baseBackup(spec);
          return false;
        }
        return initCluster(spec);
      },
      beforeStart: (spec) => {
        this.spec = spec;
        // WAL kept back for a rewind of this node, or of a standby that fell behind.
        spec.settings = { wal_keep_size: "512MB", ...spec.settings };
        this.writeSettings();
      },
    };
  }

  /** The store is up: finish a promotion a crash interrupted, and note the store. */
  async storeStarted(store: StoreHandle): Promise<void> {
    this.store = store;
    this.spec = store.managed;
    this.pool = new pg.Pool({
      ...store.connectionConfig("postgres"),
      application_name: "strata cluster",
      max: 2,
    });
    this.pool.on("error", () => {});
    const watch = () => {
      void this.watchSyncCommits()
        .catch((err: Error) =>
          this.log.warn({ err: err.message }, "cluster: cannot check commits waiting for standbys"),
        )
        .then((enabled) => {
          if (!this.stopped) this.syncTimer = setTimeout(watch, enabled ? SYNC_POLL_MS : SYNC_IDLE_POLL_MS);
        });
    };
    watch();
    if (this.state.role === "primary" && (await this.inRecovery())) {
      this.log.warn(
        "cluster: this node is primary but its store is a standby (a promotion was interrupted): promoting it",
      );
      await this.promoteStore();
    }
  }

  /**
   * Run Strata's own preparation of the store (schema, settings) unless the store is a standby's,
   * whose contents come from its primary. A store that is not a standby's on a node that is not
   * primary (broken, or demoted before a restart) takes it too: no client can reach it yet, so
   * its writes are opened for the preparation only.
   */
  async prepareStore(work: () => Promise<void>): Promise<void> {
    // In the role-change queue: a role learned from a peer meanwhile (learn → enterReadOnly)
    // waits until the preparation is over, instead of making its next transaction read-only.
    return this.serialised(async () => {
      if (await this.inRecovery()) return;
      if (this.state.role === "primary") return work();
      writeRoleSettings(this.spec!, this.roleState(), undefined, { readOnly: false });
      await this.reload();
      // The reload reaches new sessions once the postmaster has read the file: wait for that.
      const deadline = Date.now() + 5_000;
      while (Date.now() < deadline) {
        const client = new pg.Client(this.store!.connectionConfig("postgres"));
        await client.connect();
        const { rows } = await client.query<{ ro: string }>(
          "SELECT current_setting('default_transaction_read_only') AS ro",
        );
        await client.end();
        if (rows[0].ro === "off") break;
        await new Promise((r) => setTimeout(r, 20));
      }
      try {
        await work();
      } finally {
        this.writeSettings();
        await this.reload();
      }
    });
  }

  /** The primary's services (before startServicesIfPrimary), and the front door's sessions (once it listens). */
  attach(options: { sessions?: () => SessionInfo[]; services?: PrimaryServices }): void {
    if (options.sessions) this.sessions = options.sessions;
    if (options.services) this.services = options.services;
  }

  /**
   * The store is prepared and clients are let in next: start the primary's services if this node
   * is primary. Under the automatic failover policy, a primary that has no majority yet is fenced
   * first (a restarted primary may have been replaced meanwhile), and opens once it has one.
   */
  async startServicesIfPrimary(): Promise<void> {
    this.serving = true;
    const policy = this.cluster.automatic_failover;
    if (policy) await this.applyFailoverPolicy(policy.after_secs * 1000);
    if (this.state.role === "primary" && !this.fenced) await this.startServices();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.syncTimer) clearTimeout(this.syncTimer);
    if (this.failoverTimer) clearTimeout(this.failoverTimer);
    await this.queue.catch(() => {});
    this.peerKeys?.stop();
    for (const peer of this.peers.values()) peer.client.close();
    await this.control?.close();
    await this.tunnel?.close();
    await this.pool?.end().catch(() => {});
  }

  // --- sessions (the front door asks) ---

  /**
   * Why this server refuses writes, for the read-only errors its sessions get (and where writes go);
   * undefined on a writable primary.
   */
  readOnlyHint(): string | undefined {
    if (this.fenced) return FENCED_ERROR;
    if (this.state.role === "primary") return undefined;
    const primary = this.primaryPeer()?.client.peer.name;
    return `this server is a ${this.state.role} at epoch ${this.state.epoch} in its cluster: write to ${primary ? `the primary, ${primary}` : "the cluster's primary"} (SHOW dolt_cluster_role on each server)`;
  }

  /** The error a session gets for a statement, if any: after it changed roles, or during a change. */
  refusal(session: SessionInfo, sql: string): ClusterError | undefined {
    if (this.tainted.has(session)) return new ClusterError(TRANSITIONED_ERROR, "08006", "reconnect");
    const readOnly = this.readOnlyHint();
    // Comments out, so that READ/**/WRITE reads as what it is. The store's own fence holds the
    // commits of whatever gets past this (store-roles.ts); synchronous_commit would undo that.
    if (readOnly && /transaction_read_only|synchronous_commit|read\s+write/i.test(withoutComments(sql)))
      return new ClusterError(
        "this server is read-only: its transactions cannot be made read-write",
        "25006",
        readOnly,
      );
    return undefined;
  }

  // --- SQL: dolt_assume_cluster_role, dolt_cluster_transition_to_standby ---

  /** dolt_assume_cluster_role(role, epoch): resolves 0; the caller's session is tainted when the role changed. */
  assumeRole(role: string, epoch: number, caller: SessionInfo): Promise<number> {
    return this.serialised(async () => {
      if (checkAssume(this.roleState(), role, epoch) === "noop") return 0;
      const from = this.state.role;
      if (role === "standby") {
        if (from === "primary") await this.demoteGracefully(epoch, 0, caller);
        else await this.setRole({ role: "standby", epoch }, caller);
      } else {
        await this.promote(epoch, caller);
      }
      if (from !== role) this.tainted.add(caller);
      return 0;
    });
  }

  /** dolt_cluster_transition_to_standby(epoch, min_caught_up): Dolt's rows, one per database and standby. */
  transitionToStandby(epoch: number, minCaughtUp: number, caller: SessionInfo): Promise<TransitionRow[]> {
    return this.serialised(async () => {
      if (this.state.role === "standby") {
        // Dolt raises the epoch first, then finds the role unchanged.
        if (epoch > this.state.epoch) this.setState({ role: "standby", epoch });
        throw new ClusterError("failed to transition server to standby; it is already standby.");
      }
      checkAssume(this.roleState(), "standby", epoch);
      if (this.state.role !== "primary") {
        await this.setRole({ role: "standby", epoch }, caller);
        this.tainted.add(caller);
        return [];
      }
      const caught = await this.demoteGracefully(epoch, minCaughtUp, caller);
      this.tainted.add(caller);
      const databases = await this.databases();
      const rows: TransitionRow[] = [];
      for (const database of databases)
        for (const [name, peer] of this.peers)
          rows.push({
            caught_up: caught.has(name) ? 1 : 0,
            database,
            remote: name,
            remote_url: peer.client.peer.template.replace("{database}", database),
          });
      return rows;
    });
  }

  // --- the control plane (control-server.ts calls these) ---

  self(): RoleState {
    return this.roleState();
  }

  async heartbeat(peer: string, theirs: Heartbeat): Promise<Heartbeat> {
    const status = this.peers.get(peer);
    if (status) {
      status.seen = theirs;
      this.rememberNodeId(peer, theirs.node_id);
      status.seenAt = Date.now();
      status.heardAt = performance.now();
      if (theirs.role === "primary") status.fromPrimaryAt = Date.now();
    }
    this.learn(peer, theirs);
    return this.ownHeartbeat();
  }

  async storeTunnel(peer: string, theirs: RoleState | undefined): Promise<string> {
    if (theirs) this.learn(peer, theirs);
    if (this.state.role === "standby")
      throw new ControlRefusal(
        "this server is a standby and is not currently replicating to its standby",
        409,
      );
    if (this.state.role === "detected_broken_config")
      throw new ControlRefusal(
        "this server is currently in detected_broken_config and is not currently replicating to its standby",
        409,
      );
    if (theirs && theirs.epoch > this.state.epoch)
      throw new ControlRefusal(
        `this primary is at epoch ${this.state.epoch}, behind the requester's ${theirs.epoch}`,
        409,
      );
    if (!this.store || "host" in this.store.endpoint)
      throw new ControlRefusal("the store is not running", 503);
    return this.store.endpoint.path;
  }

  /** A candidate asks for our vote: granted at most once per epoch, persisted before the answer. */
  async vote(peer: string, request: VoteRequest): Promise<{ granted: boolean; reason?: string }> {
    const policy = this.cluster.automatic_failover;
    if (!policy) return { granted: false, reason: "automatic failover is off on this server" };
    const view = await this.failoverView(policy.after_secs * 1000);
    // From here to the write nothing awaits: two requests cannot both take the same epoch's vote.
    const known = Math.max(
      this.state.epoch,
      this.state.vote?.epoch ?? 0,
      ...view.peers.map((p) => p.seen?.epoch ?? 0),
    );
    const candidate = this.peers.get(peer)?.seen?.node_id;
    let answer = voteFor(view, request, this.state.vote);
    if (this.campaigning) answer = { granted: false, reason: "this server is standing itself" };
    else if (candidate !== request.node_id)
      answer = { granted: false, reason: "the candidate's node id is not the one its heartbeats carry" };
    else if (request.epoch > known + MAX_EPOCH_LEAP)
      answer = { granted: false, reason: `the epoch ${request.epoch} is far above any known (${known})` };
    if (answer.granted) {
      this.state = { ...this.state, vote: { epoch: request.epoch, node_id: request.node_id } };
      writeNodeState(this.dataDir, this.state);
      this.votedAt = performance.now();
    }
    this.log.info(
      { candidate: peer, epoch: request.epoch, granted: answer.granted, reason: answer.reason },
      "cluster: a standby asked for this server's vote (cluster.automatic_failover)",
    );
    return answer;
  }

  /**
   * The configured standbys, each with its replication slot on this node's store once its node id
   * is known (the one it last gave, persisted). A primary replicating from upstream acknowledges
   * there only what every one of them has flushed (upstream/standby-bound.ts), so that whichever
   * is promoted has every change the upstream slot let go.
   */
  standbys(): ClusterStandby[] {
    const known = this.state.peers ?? {};
    return [...this.peers.keys()].map((name) => ({
      name,
      slot: known[name] === undefined ? undefined : slotName(known[name]),
    }));
  }

  refused(reason: string): void {
    this.refusedIncoming = { reason, at: Date.now() };
  }

  // --- internals ---

  private rememberNodeId(peer: string, nodeId: string): void {
    if (this.state.peers?.[peer] === nodeId) return;
    this.state = { ...this.state, peers: { ...this.state.peers, [peer]: nodeId } };
    try {
      writeNodeState(this.dataDir, this.state);
    } catch (err) {
      // Kept in memory meanwhile; written again with the next change of state.
      this.log.warn({ peer, err: (err as Error).message }, "cluster: could not record a peer's node id");
    }
  }

  private serialised<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => {});
    return run;
  }

  private setState(role: RoleState): void {
    if (role.role !== this.state.role || role.epoch !== this.state.epoch) {
      this.roleSince = performance.now();
      this.fenced = false;
    }
    this.state = { ...this.state, ...role };
    if (role.role !== "primary") this.syncCommits.reset();
    writeNodeState(this.dataDir, this.state);
    // The status table shows the new role now, not at the next heartbeat.
    this.writeStatus();
  }

  /** Apply what a peer's role tells us (roles.ts): an automatic move to standby or broken. */
  private learn(peer: string, theirs: RoleState): void {
    if (this.transitioning) return;
    const next = learnFromPeer(this.roleState(), theirs);
    if (!next) return;
    this.log.warn(
      { peer, peer_role: theirs.role, peer_epoch: theirs.epoch, role: next.role, epoch: next.epoch },
      next.role === "detected_broken_config"
        ? "cluster: two primaries at one epoch: this server is now detected_broken_config (read-only)"
        : `cluster: ${peer} is primary at epoch ${theirs.epoch}: this server becomes its standby`,
    );
    // Persisted at once, so the reply already carries it; the rest follows in order.
    const from = this.state.role;
    this.setState(next);
    void this.serialised(() => this.enterReadOnly(from, undefined)).catch((err: Error) =>
      this.log.error({ err: err.message }, "cluster: the automatic role change failed"),
    );
  }

  /**
   * Into standby or broken without waiting: writes stop, services stop, every session but the
   * caller's (if a SQL call made the change) ends.
   */
  private async enterReadOnly(from: Role, caller: SessionInfo | undefined): Promise<void> {
    this.writeSettings();
    await this.reload();
    if (from === "primary") await this.stopServices();
    await this.endSessions(caller, "this server's cluster role changed; reconnect");
  }

  private async setRole(next: RoleState, caller: SessionInfo): Promise<void> {
    const from = this.state.role;
    this.setState(next);
    if (next.role !== "primary") await this.enterReadOnly(from, caller);
  }

  /**
   * Primary → standby at `epoch`, Dolt's steps: read-only, every other session ended, then wait
   * for the standbys to replay everything; on success the role is persisted, on failure the
   * server is a writable primary at its old epoch again. Resolves the standbys that caught up.
   */
  private async demoteGracefully(
    epoch: number,
    minCaughtUp: number,
    caller: SessionInfo,
  ): Promise<Set<string>> {
    this.transitioning = true;
    // The synchronous list is kept (the sync watcher is idle meanwhile): a failed demotion writes
    // it back; a successful one resets it with the role.
    try {
      writeRoleSettings(this.spec!, this.roleState(), undefined, { readOnly: true });
      await this.reload();
      await this.stopServices();
      await this.endSessions(caller, "this server is becoming a standby; reconnect to the new primary");
      const target = await this.currentLsn();
      const caught = await this.waitForStandbys(target, minCaughtUp);
      const needed = minCaughtUp === 0 ? this.peers.size : minCaughtUp;
      if (caught.size < needed) {
        this.writeSettings();
        await this.reload();
        if (!this.fenced) await this.startServices();
        await this.endSessions(caller, "this server stayed primary; reconnect");
        const databases = await this.databases();
        throw new ClusterError(
          minCaughtUp === 0
            ? "cluster/controller: failed to transition from primary to standby gracefully; could not replicate databases to standby in a timely manner."
            : `cluster/controller: failed to transition from primary to standby gracefully; could not ensure ${minCaughtUp} replicas were caught up on all ${databases.length} databases. Only caught up ${caught.size} standbys fully.`,
          "XX000",
          `this server is still primary at epoch ${this.state.epoch}; check the standbys (SELECT * FROM dolt_cluster.dolt_cluster_status) and try again`,
        );
      }
      this.setState({ role: "standby", epoch });
      this.writeSettings();
      await this.reload();
      this.log.info({ epoch, caught_up: [...caught] }, "cluster: this server is now a standby (graceful)");
      return caught;
    } finally {
      this.transitioning = false;
    }
  }

  /** Standby (or broken) → primary at `epoch`: persisted, then promoted, then writes open. */
  private async promote(epoch: number, caller: SessionInfo | undefined): Promise<void> {
    this.transitioning = true;
    try {
      this.setState({ role: "primary", epoch });
      await this.endSessions(caller, "this server is becoming primary; reconnect");
      if (await this.inRecovery()) await this.promoteStore();
      this.writeSettings();
      await this.reload();
      await this.startServices();
      for (const peer of this.peers.values()) {
        peer.caughtUpAt = undefined;
        peer.lagMs = null;
      }
      this.walSamples = [];
      this.log.info({ epoch }, "cluster: this server is now primary");
    } finally {
      this.transitioning = false;
    }
  }

  /** A primary whose store is still in recovery (its promotion failed): try the promotion again. */
  private async finishPromotion(): Promise<void> {
    if (this.transitioning || this.rewinding || this.promoting) return;
    this.promoting = true;
    try {
      await this.serialised(async () => {
        if (this.state.role !== "primary" || !(await this.inRecovery())) return;
        this.log.warn(
          "cluster: this server is primary but its store is still in recovery: promoting it again",
        );
        await this.promoteStore();
        this.writeSettings();
        await this.reload();
        if (!this.fenced) await this.startServices();
      });
    } catch (err) {
      this.log.error({ err: (err as Error).message }, "cluster: the store's promotion failed again");
    } finally {
      this.promoting = false;
    }
  }

  private async promoteStore(): Promise<void> {
    const { rows } = await this.pool!.query<{ promoted: boolean }>("SELECT pg_promote(true, 60) AS promoted");
    if (!rows[0]?.promoted)
      throw new ClusterError("the store did not finish its promotion within 60 s; see the store's log");
    // pg_promote removes standby.signal; the store's settings are rewritten next. Until a
    // checkpoint, pg_control still names the old timeline, and a pg_rewind against this store
    // would take it for the same history and rewind nothing.
    await this.pool!.query("CHECKPOINT");
  }

  /** Wait until each standby's replay position reaches `target` (Dolt: 10 s). */
  private async waitForStandbys(target: bigint, minCaughtUp: number): Promise<Set<string>> {
    const deadline = Date.now() + DEMOTE_WAIT_MS;
    const caught = new Set<string>();
    const needed = minCaughtUp === 0 ? this.peers.size : Math.min(minCaughtUp, this.peers.size);
    while (Date.now() < deadline && caught.size < this.peers.size) {
      await Promise.all(
        [...this.peers].map(async ([name, peer]) => {
          if (caught.has(name)) return;
          try {
            const theirs = await peer.client.heartbeat(await this.ownHeartbeat());
            peer.seen = theirs;
            peer.seenAt = Date.now();
            peer.answeredAt = performance.now();
            this.rememberNodeId(name, theirs.node_id);
            const replay = theirs.store?.replay_lsn;
            if (theirs.store?.in_recovery && replay && parseLsn(replay) >= target) caught.add(name);
          } catch (err) {
            peer.error = (err as Error).message;
          }
        }),
      );
      if (minCaughtUp > 0 && caught.size >= needed) break;
      if (caught.size < this.peers.size) await new Promise((r) => setTimeout(r, 25));
    }
    return caught;
  }

  private async heartbeatAll(): Promise<void> {
    // Without a store yet (a standby waiting for its base backup) roles still go both ways.
    const mine = await this.ownHeartbeat();
    const lsn =
      mine.store?.current_lsn && !mine.store.in_recovery ? parseLsn(mine.store.current_lsn) : undefined;
    if (lsn !== undefined && this.state.role === "primary") {
      const last = this.walSamples[this.walSamples.length - 1];
      if (!last || last.lsn !== lsn) this.walSamples.push({ at: Date.now(), lsn });
    }
    // A peer that does not answer (its request times out after 5 s) must not hold up the
    // heartbeats to the others: each tick waits for each exchange for one interval at most, and
    // a peer whose last exchange is still under way is skipped.
    await Promise.all(
      [...this.peers].map(async ([name, peer]) => {
        if (peer.exchanging) return;
        const exchange = (async () => {
          try {
            const theirs = await peer.client.heartbeat(mine);
            peer.seen = theirs;
            peer.seenAt = Date.now();
            peer.answeredAt = performance.now();
            this.rememberNodeId(name, theirs.node_id);
            peer.error = undefined;
            if (theirs.role === "primary") peer.fromPrimaryAt = Date.now();
            this.learn(name, theirs);
            if (this.state.role === "primary" && lsn !== undefined) this.measureLag(peer, theirs, lsn);
          } catch (err) {
            peer.error = (err as Error).message;
            if (err instanceof PeerRefusal && err.peerRole) this.learn(name, err.peerRole);
          }
        })();
        peer.exchanging = exchange.finally(() => {
          peer.exchanging = undefined;
        });
        await Promise.race([exchange, new Promise((r) => setTimeout(r, HEARTBEAT_MS).unref())]);
      }),
    );
    // Samples every standby has replayed are of no more use.
    const replayed = [...this.peers.values()].map((p) =>
      p.seen?.store?.replay_lsn ? parseLsn(p.seen.store.replay_lsn) : 0n,
    );
    const least = replayed.length ? replayed.reduce((a, b) => (a < b ? a : b)) : 0n;
    while (this.walSamples.length > 1 && this.walSamples[0].lsn <= least) this.walSamples.shift();
    this.writeStatus();
    void this.followPrimaryIfNeeded();
    if (this.state.role === "primary" && mine.store?.in_recovery) void this.finishPromotion();
    void this.ensureSlotOnNewPrimary();
  }

  private measureLag(peer: PeerStatus, theirs: Heartbeat, current: bigint): void {
    const replay =
      theirs.store?.in_recovery && theirs.store.replay_lsn ? parseLsn(theirs.store.replay_lsn) : undefined;
    if (replay === undefined) return;
    if (replay >= current) {
      peer.caughtUpAt = Date.now();
      peer.lagMs = 0;
      return;
    }
    const oldest = this.walSamples.find((s) => s.lsn > replay);
    peer.lagMs = peer.caughtUpAt === undefined ? null : Date.now() - (oldest?.at ?? Date.now());
  }

  /**
   * A standby whose store is not (yet) streaming from the primary — it was a primary, or it was
   * demoted — follows the primary once one is known: stop, rewind, start as its hot standby.
   */
  private async followPrimaryIfNeeded(): Promise<void> {
    if (this.state.role !== "standby" || this.rewinding || this.transitioning || !this.spec || !this.store)
      return;
    if (isStandbyStore(this.spec)) return;
    const primary = this.primaryPeer();
    if (!primary) return;
    this.rewinding = true;
    try {
      await this.serialised(async () => {
        if (this.state.role !== "standby" || isStandbyStore(this.spec!)) return;
        this.log.info(
          { primary: primary.client.peer.name },
          "cluster: following the primary: stopping the store to check it against the primary's history",
        );
        await this.ensureSlot(true);
        await this.endSessions(undefined, "this server's store is restarting as a standby; reconnect");
        await stopCluster(this.spec!);
        try {
          await rewindStore(this.spec!, this.tunnelConninfo(), this.log);
        } catch (err) {
          // Most often the WAL back to the last common checkpoint is gone (wal_keep_size): a
          // fresh copy of the primary replaces the store; the old one is kept aside.
          const aside = keepDivergedStore(this.spec!);
          this.log.warn(
            { err: (err as Error).message, kept_at: aside },
            "cluster: cannot rewind this former primary; taking a fresh base backup from the primary instead (the old store is kept aside: it may hold writes the primary never had)",
          );
          await takeBaseBackup(this.spec!, this.tunnelConninfo(), slotName(this.state.node_id), this.log);
        }
        setStandbySignal(this.spec!, true);
        this.writeSettings();
        await startCluster(this.spec!);
        this.log.info("cluster: the store is a hot standby of the primary");
      });
    } finally {
      this.rewinding = false;
    }
  }

  /** A streaming standby whose primary changed (a failover elsewhere) needs its slot there. */
  private async ensureSlotOnNewPrimary(): Promise<void> {
    if (this.state.role !== "standby" || !this.spec || !isStandbyStore(this.spec)) return;
    const primary = this.primaryPeer();
    if (!primary?.seen) return;
    const key = `${primary.client.peer.name}@${primary.seen.epoch}/${primary.seen.node_id}`;
    if (this.slotOn === key) return;
    this.slotOn = key;
    try {
      await this.ensureSlot();
    } catch (err) {
      this.slotOn = undefined;
      this.log.warn(
        { primary: primary.client.peer.name, err: (err as Error).message },
        "cluster: cannot make this standby's replication slot on the primary",
      );
    }
  }

  /** The peer that is primary at our epoch or a later one, heard from recently. */
  private primaryPeer(): PeerStatus | undefined {
    let best: PeerStatus | undefined;
    for (const peer of this.peers.values()) {
      const seen = peer.seen;
      if (seen?.role !== "primary" || Date.now() - (peer.seenAt ?? 0) > PEER_STALE_MS) continue;
      // A primary whose store is not up (yet) has nothing to stream.
      if (!seen.store || seen.store.in_recovery) continue;
      if (seen.epoch < this.state.epoch) continue;
      if (!best || seen.epoch > best.seen!.epoch) best = peer;
    }
    return best;
  }

  private async baseBackup(spec: ClusterSpec): Promise<void> {
    const deadline = Date.now() + 10 * 60_000;
    let said = false;
    for (;;) {
      const primary = this.primaryPeer();
      if (primary) {
        try {
          await this.ensureSlot();
          await takeBaseBackup(spec, this.tunnelConninfo(), slotName(this.state.node_id), this.log);
          setStandbySignal(spec, true);
          return;
        } catch (err) {
          if (Date.now() > deadline || this.stopped) throw err;
          this.log.warn({ err: (err as Error).message }, "cluster: the base backup failed; trying again");
          await new Promise((r) => setTimeout(r, 1_000));
          continue;
        }
      }
      if (!said) {
        this.log.info(
          { peers: [...this.peers.keys()] },
          "cluster: this standby has no store yet; waiting for a primary among its peers to take a base backup from",
        );
        said = true;
      }
      if (Date.now() > deadline || this.stopped)
        throw new ClusterError(
          `cluster: no primary among the peers (${[...this.peers.keys()].join(", ")}) within 10 minutes: a new standby takes its first copy from the primary; start the primary, or check cluster.standby_remotes`,
        );
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /**
   * This node's slot on the primary, so that the primary keeps the WAL it has not streamed yet;
   * before a rewind, also a checkpoint there (pg_rewind reads the primary's timeline from
   * pg_control, which a promotion updates only at its next checkpoint).
   */
  private async ensureSlot(checkpoint = false): Promise<void> {
    const client = new pg.Client({
      ...this.tunnelConninfo(),
      database: "postgres",
      application_name: "strata slot",
    });
    client.on("error", () => {});
    await client.connect();
    try {
      if (checkpoint) await client.query("CHECKPOINT");
      await client.query(
        "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
        [slotName(this.state.node_id)],
      );
    } finally {
      await client.end();
    }
  }

  private tunnelConninfo(): TunnelConninfo {
    return {
      host: this.tunnel!.dir,
      port: this.tunnel!.port,
      user: this.config.store.user,
      password: this.config.store.password,
    };
  }

  /** As a standby: the last heartbeat with a primary at our epoch or later, or when the role began. */
  private primaryContactAt(): number {
    // Either direction counts here (a standby errs towards not standing), while a primary counts
    // only its own answered heartbeats (it errs towards fencing itself). A vote given counts too:
    // the candidate may be primary by now. A primary whose store is down or still in recovery
    // (a promotion that failed) does not.
    let at = Math.max(this.roleSince, this.votedAt);
    for (const peer of this.peers.values()) {
      const seen = peer.seen;
      if (seen?.role !== "primary" || seen.epoch < this.state.epoch || !seen.store || seen.store.in_recovery)
        continue;
      at = Math.max(at, peer.answeredAt ?? 0, peer.heardAt ?? 0);
    }
    return at;
  }

  private async failoverView(afterMs: number): Promise<FailoverView> {
    let replayLsn: bigint | undefined;
    if (this.state.role === "standby" && this.spec && isStandbyStore(this.spec)) {
      const store = (await this.ownHeartbeat()).store;
      if (store?.in_recovery && store.replay_lsn) replayLsn = parseLsn(store.replay_lsn);
    }
    return {
      now: performance.now(),
      afterMs,
      role: this.state.role,
      epoch: this.state.epoch,
      nodeId: this.state.node_id,
      replayLsn,
      peers: [...this.peers.values()].map((p) => ({ contactAt: p.answeredAt, seen: p.seen })),
      primaryContactAt: this.primaryContactAt(),
    };
  }

  /**
   * cluster.automatic_failover (failover.ts): a primary without a majority fences itself (and
   * opens again with one); a standby that the policy elects promotes itself.
   */
  private async applyFailoverPolicy(afterMs: number): Promise<void> {
    if (!this.serving || this.transitioning || this.rewinding || this.stopped || !this.store) return;
    if (this.state.role === "primary") {
      // A newer primary was made (a peer is at a higher epoch, even if it is not that primary):
      // this one becomes a standby at that epoch, and follows the new primary once it hears of it.
      const higher = Math.max(...[...this.peers.values()].map((p) => p.seen?.epoch ?? 0));
      if (higher > this.state.epoch) {
        await this.serialised(async () => {
          if (this.state.role !== "primary" || higher <= this.state.epoch) return;
          this.log.warn(
            { epoch: higher },
            "cluster: a server is at a higher epoch: a newer primary was made; this server becomes a standby (cluster.automatic_failover)",
          );
          const from = this.state.role;
          this.setState({ role: "standby", epoch: higher });
          await this.enterReadOnly(from, undefined);
        });
        return;
      }
      const fence = shouldFence(await this.failoverView(afterMs));
      if (fence === this.fenced) return;
      await this.serialised(async () => {
        if (this.state.role !== "primary" || shouldFence(await this.failoverView(afterMs)) !== fence) return;
        await this.setFenced(fence);
      });
      return;
    }
    if (performance.now() < this.nextCandidacyAt) return;
    if (promotionEpoch(await this.failoverView(afterMs)) === undefined) return;
    await this.serialised(async () => {
      // Decided again in the queue: a role change may have come first.
      const view = await this.failoverView(afterMs);
      let epoch = promotionEpoch(view);
      if (epoch === undefined || view.replayLsn === undefined) return;
      // An epoch whose vote this server gave away, or lost, is not tried again; nor a lower one.
      const vote = this.state.vote;
      if (vote && vote.epoch >= epoch)
        epoch =
          vote.node_id !== this.state.node_id || this.lostElection === vote.epoch
            ? vote.epoch + 1
            : vote.epoch;
      const request: VoteRequest = {
        epoch,
        node_id: this.state.node_id,
        replay_lsn: formatLsn(view.replayLsn),
      };
      this.state = { ...this.state, vote: { epoch, node_id: this.state.node_id } };
      writeNodeState(this.dataDir, this.state);
      const fresh = [...this.peers].filter(
        ([, p]) => p.answeredAt !== undefined && view.now - p.answeredAt <= afterMs / 2,
      );
      this.campaigning = true;
      let answers: { name: string; granted: boolean; reason?: string }[];
      try {
        answers = await Promise.all(
          fresh.map(async ([name, p]) => ({
            name,
            ...(await p.client
              .requestVote(request)
              .catch((err: Error) => ({ granted: false, reason: err.message }))),
          })),
        );
      } finally {
        this.campaigning = false;
      }
      // Meanwhile a newer primary may have been heard of (learn), or our vote given elsewhere.
      if (
        this.state.role !== "standby" ||
        this.state.epoch >= epoch ||
        this.state.vote?.epoch !== epoch ||
        this.state.vote.node_id !== this.state.node_id
      )
        return;
      const granted = answers.filter((a) => a.granted).map((a) => a.name);
      if (!isMajority(1 + granted.length, 1 + this.peers.size)) {
        this.lostElection = epoch;
        // A random pause, so that two candidates do not keep splitting the votes.
        this.nextCandidacyAt = performance.now() + 250 + Math.random() * 1_000;
        this.log.info(
          { epoch, granted, refused: answers.filter((a) => !a.granted) },
          "cluster: this standby did not win the election for primary (cluster.automatic_failover)",
        );
        return;
      }
      this.log.warn(
        { epoch, votes: granted, after_secs: afterMs / 1000 },
        "cluster: no primary for after_secs, and this standby, the most advanced of a majority, won its vote: promoting itself (cluster.automatic_failover)",
      );
      await this.promote(epoch, undefined);
    });
  }

  private async setFenced(fenced: boolean): Promise<void> {
    this.fenced = fenced;
    this.writeSettings();
    await this.reload();
    if (fenced) {
      this.log.warn(
        "cluster: this primary cannot reach a majority of its cluster: read-only (fenced) until it can, so that a standby may replace it safely (cluster.automatic_failover)",
      );
      await this.stopServices();
      await this.endSessions(undefined, FENCED_ERROR);
    } else {
      this.log.info("cluster: this primary reaches a majority again: writes open");
      await this.startServices();
    }
    this.writeStatus();
  }

  /** strata-cluster.conf for the current role (a standby's also says where its WAL comes from). */
  private writeSettings(): void {
    if (!this.spec) return;
    const standby = this.state.role === "standby" && isStandbyStore(this.spec);
    writeRoleSettings(
      this.spec,
      this.roleState(),
      standby ? { tunnel: this.tunnelConninfo(), slot: slotName(this.state.node_id) } : undefined,
      {
        synchronous: this.state.role === "primary" ? this.syncCommits.members : [],
        readOnly: this.fenced ? true : undefined,
      },
    );
  }

  /**
   * As a primary with dolt_cluster_ack_writes_timeout_secs set: the standbys that keep up are the
   * ones commits wait for; a commit that waited for the timeout is let go, with Postgres's warning,
   * and the standbys it waited for stop being waited for until they catch up (sync-commit.ts).
   * Resolves whether synchronous replication is on (it is then looked at more often).
   */
  private async watchSyncCommits(): Promise<boolean> {
    const ready = () =>
      this.state.role === "primary" && !this.transitioning && !this.rewinding && !this.fenced;
    if (!ready() || !this.pool) return false;
    // A role change during the query resets the breaker: this observation is then stale.
    const generation = this.syncCommits.generation;
    const { rows } = await this.pool.query<{
      timeout: string | null;
      lsn: string | null;
      standbys: { name: string; state: string; replay: string | null }[] | null;
      waiters: { pid: number; xid: string | null }[] | null;
    }>(
      `SELECT current_setting('strata.dolt_cluster_ack_writes_timeout_secs', true) AS timeout,
              CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS lsn,
              (SELECT json_agg(json_build_object('name', application_name, 'state', state, 'replay', replay_lsn::text))
                 FROM pg_stat_replication) AS standbys,
              (SELECT json_agg(json_build_object('pid', pid, 'xid', backend_xid::text))
                 FROM pg_stat_activity WHERE wait_event = 'SyncRep') AS waiters`,
    );
    const row = rows[0];
    if (!row.lsn || !ready() || generation !== this.syncCommits.generation) return false;
    const timeoutSecs = Number(row.timeout ?? 0);
    const timeoutMs = Number.isFinite(timeoutSecs) && timeoutSecs > 0 ? timeoutSecs * 1000 : 0;
    const decision = this.syncCommits.observe({
      now: Date.now(),
      timeoutMs,
      currentLsn: parseLsn(row.lsn),
      standbys: (row.standbys ?? []).map((s) => ({
        name: s.name,
        state: s.state,
        replayLsn: s.replay ? parseLsn(s.replay) : undefined,
      })),
      waiters: (row.waiters ?? []).map((w) => ({ pid: w.pid, xid: w.xid ?? "" })),
    });
    if (!decision) return timeoutMs > 0;
    // First the timed-out commits are let go, so that each gets the warning; then the list changes.
    // Only a backend still waiting on the same transaction's commit (a signal can still land just
    // after its wait ends, and cancel its next statement: a window of microseconds).
    if (decision.cancel.length > 0)
      await this.pool.query(
        `SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a
           JOIN unnest($1::int[], $2::text[]) AS w(pid, xid) ON w.pid = a.pid AND w.xid = a.backend_xid::text
          WHERE a.wait_event = 'SyncRep'`,
        [decision.cancel.map((w) => w.pid), decision.cancel.map((w) => w.xid)],
      );
    const nameOf = (slot: string) =>
      [...this.peers].find(([, p]) => p.seen && slotName(p.seen.node_id) === slot)?.[0] ?? slot;
    if (decision.left.length > 0)
      this.log.warn(
        {
          standbys: decision.left.map(nameOf),
          timed_out_commits: decision.cancel.length,
          timeout_secs: timeoutSecs,
        },
        timeoutMs > 0
          ? "cluster: a commit waited dolt_cluster_ack_writes_timeout_secs for standbys that did not apply it; it returned with a warning, and commits stop waiting for those standbys until they catch up"
          : "cluster: synchronous replication is off (dolt_cluster_ack_writes_timeout_secs = 0)",
      );
    if (decision.joined.length > 0)
      this.log.info(
        { standbys: decision.joined.map(nameOf), timeout_secs: timeoutSecs },
        "cluster: commits wait for these standbys to apply them (dolt_cluster_ack_writes_timeout_secs)",
      );
    if (decision.joined.length > 0 || decision.left.length > 0) {
      // A role change that began meanwhile writes its own settings.
      if (!ready() || generation !== this.syncCommits.generation) return false;
      this.writeSettings();
      await this.reload();
    }
    return timeoutMs > 0;
  }

  private async reload(): Promise<void> {
    await this.pool?.query("SELECT pg_reload_conf()").catch(() => {});
  }

  private async inRecovery(): Promise<boolean> {
    const { rows } = await this.pool!.query<{ r: boolean }>("SELECT pg_is_in_recovery() AS r");
    return rows[0].r;
  }

  private async currentLsn(): Promise<bigint> {
    const { rows } = await this.pool!.query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn");
    return parseLsn(rows[0].lsn);
  }

  private async ownHeartbeat(): Promise<Heartbeat> {
    const mine: Heartbeat = { role: this.state.role, epoch: this.state.epoch, node_id: this.state.node_id };
    if (this.state.role === "standby")
      mine.primary_contact_ms = Math.round(performance.now() - this.primaryContactAt());
    if (!this.pool || this.rewinding) return mine;
    try {
      const { rows } = await this.pool.query<{
        r: boolean;
        current: string | null;
        replay: string | null;
        tli: number;
      }>(
        `SELECT pg_is_in_recovery() AS r,
                CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current,
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE NULL END AS replay,
                (SELECT timeline_id FROM pg_control_checkpoint()) AS tli`,
      );
      const row = rows[0];
      mine.store = {
        in_recovery: row.r,
        current_lsn: row.current ?? undefined,
        replay_lsn: row.replay ?? undefined,
        timeline: row.tli,
      };
    } catch {}
    return mine;
  }

  private async startServices(): Promise<void> {
    if (this.servicesRunning || !this.services) return;
    this.servicesRunning = true;
    await this.services.start();
  }

  /**
   * Stop the primary's services: only ever when the node turns read-only, whose store then holds
   * every commit (store-roles.ts). A commit a service had begun would wait for ever, and the
   * service's stop with it: the backends waiting so are ended meanwhile (their commits are not
   * acknowledged; the upstream replicator, for one, applies them again from its own position).
   */
  private async stopServices(): Promise<void> {
    if (!this.servicesRunning || !this.services) return;
    this.servicesRunning = false;
    let stopped = false;
    const stopping = this.services.stop().finally(() => {
      stopped = true;
    });
    while (!stopped) {
      await this.pool
        ?.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        .catch(() => {});
      await Promise.race([stopping, new Promise((r) => setTimeout(r, 100))]);
    }
    await stopping;
  }

  /** End every front-door session but the caller's, and their store backends. */
  private async endSessions(caller: SessionInfo | undefined, message: string): Promise<void> {
    const others = (this.sessions?.() ?? []).filter((s) => s !== caller);
    const pids = others.map((s) => s.backendPid).filter((p): p is number => p !== undefined);
    if (pids.length > 0)
      await this.pool
        ?.query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", [pids])
        .catch(() => {});
    for (const session of others) session.terminate({ code: "57P01", message });
  }

  private async databases(): Promise<string[]> {
    try {
      const { rows } = await this.pool!.query<{ datname: string }>(
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn AND strpos(datname, '/') = 0 ORDER BY datname",
      );
      return rows.map((r) => r.datname);
    } catch {
      return [];
    }
  }

  /** The status rows' source (dolt_cluster.dolt_cluster_status reads it in the store). */
  private writeStatus(): void {
    if (!this.spec) return;
    const remotes = [...this.peers].map(([name, peer]) => {
      const primary = this.state.role === "primary";
      let error = peer.error ?? this.peerKeys.fetchError(name) ?? null;
      if (this.state.role === "detected_broken_config") error = BROKEN_CONFIG_ERROR;
      if (this.fenced) error = FENCED_ERROR;
      if (!error && this.refusedIncoming && Date.now() - this.refusedIncoming.at < 30_000)
        error = `refused a request: ${this.refusedIncoming.reason}`;
      const lastUpdate = primary ? peer.caughtUpAt : peer.fromPrimaryAt;
      return {
        standby_remote: name,
        replication_lag_millis: primary ? (peer.lagMs ?? null) : null,
        last_update: lastUpdate ? new Date(lastUpdate).toISOString() : null,
        current_error: error,
      };
    });
    const { pgdata } = clusterPaths(this.spec);
    if (!existsSync(join(pgdata, "PG_VERSION"))) return;
    const file = join(pgdata, STATUS_FILE);
    try {
      writeOwned(
        this.spec,
        file,
        JSON.stringify({ role: this.state.role, epoch: this.state.epoch, remotes }),
      );
    } catch (err) {
      this.log.debug({ err: (err as Error).message }, "cluster: cannot write the status file");
    }
  }
}

/** Move a store that could not be rewound aside (replacing an older one): PGDATA becomes free. */
function keepDivergedStore(spec: ClusterSpec): string {
  const { pgdata } = clusterPaths(spec);
  const aside = `${pgdata}.diverged`;
  rmSync(aside, { recursive: true, force: true });
  renameSync(pgdata, aside);
  return aside;
}

export { RoleError };

/** SQL without its comments (for a text check; string contents are left as they are). */
function withoutComments(sql: string): string {
  return sql.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/--[^\n]*/g, " ");
}
