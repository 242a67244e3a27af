// The replication stream of one replica database: a typed state machine driven by one loop.
//
//   connecting ──▶ [snapshot] ──▶ streaming ──(error)──▶ error / reconnecting ──(backoff)──▶ connecting
//        └──────────────────────────────── stop() ─────────────────────────────────────▶ stopped
//
// Each session: prepare the primary (publication, slot), load the durable position from the
// store — a new replica (no position, no slot) first copies an initial snapshot (snapshot.ts) —
// START_REPLICATION from it, and turn messages into store transactions:
//
//   XLogData ─▶ pgoutput decode ─▶ Begin..Commit: applied as they arrive (memory stays flat)
//                                  Stream Start..Stop: buffered (spills to disk) until Stream Commit
//            ─▶ Applier batch (one store transaction, many upstream commits) ─▶ flush (durable)
//            ─▶ Standby Status Update with flush = end of the last durable transaction
//
// Progress only moves forward and is acknowledged only once durable (DESIGN invariant). When
// nothing is in flight, a keepalive's position is acknowledged too, so an idle or filtered
// primary's WAL is not pinned. Transactions whose commit precedes the durable position are
// skipped: after a crash nothing is applied twice.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type pg from "pg";
import { Applier, insertCommitRow } from "../apply/applier.ts";
import { ApplyError } from "../apply/errors.ts";
import type { HeldTable } from "../apply/held-tables.ts";
import { quoteIdent } from "../apply/schema-follow.ts";
import { CommitHasher, type CommitHeader } from "../commits/hash.ts";
import type { PostgresReplicationConfig } from "../config/schema.ts";
import { connect } from "../db.ts";
import { SNAPSHOTS_PENDING } from "../history/install.ts";
import { historyKeyColumns } from "../history/table-surface.ts";
import type { Logger } from "../log.ts";
import { formatLsn, nowPgTime, parseLsn, pgTimeToDate } from "../protocol/lsn.ts";
import { type PgoutputMessage, ProtocolError } from "../protocol/messages.ts";
import { decodePgoutput } from "../protocol/pgoutput.ts";
import { spaceOutCheckpoints } from "../store/bulk-load.ts";
import type { StoreHandle } from "../store/store.ts";
import { BatchLinger } from "./batch-linger.ts";
import { explainPrimaryConnectionError } from "./connect-errors.ts";
import { ReplicationConnection, WAKE_UP } from "./connection.ts";
import { DDL_MESSAGE_PREFIX, parseDdlMessage } from "./ddl-trigger.ts";
import { DurableAcks } from "./durable-acks.ts";
import { HeldTableWork } from "./held-work.ts";
import { SnapshotProgress } from "./progress.ts";
import { syncSequencesOnce } from "./sequences.ts";
import {
  describeUpstreamType,
  dropSlot,
  prepareUpstream,
  publishedRelations,
  publishedTableNames,
  SESSION_OPTIONS,
  upstreamAttnums,
  upstreamConnectionConfig,
  upstreamMissingValues,
} from "./setup.ts";
import { inspectSlot, slotLostError } from "./slot-health.ts";
import { cleanUpUnfinishedSnapshot, copyInitialSnapshot } from "./snapshot.ts";
import { type ClusterStandby, leastFlushed, StandbyBound, type StandbyPosition } from "./standby-bound.ts";
import { StreamBuffer } from "./stream-buffer.ts";
import { copyJoiningTable } from "./table-sync.ts";

/** A table was held after an error: the session starts again at once, without it. */
class TableHeld extends Error {
  constructor(readonly table: HeldTable) {
    super(`holding ${table.rel}: ${table.error}`);
  }
}

/**
 * The session ends to start a new one at once: a PostgreSQL 14 walsender keeps a partition that
 * was attached or detached (publish_via_partition_root) mapped to its old place for as long as it
 * runs, so its changes would reach the wrong table; a new walsender maps it afresh.
 */
class SessionRenewal extends Error {}

export type ReplicationState = "connecting" | "snapshot" | "streaming" | "error" | "reconnecting" | "stopped";

export interface ReplicatorOptions {
  config: PostgresReplicationConfig;
  store: StoreHandle;
  dataDir: string;
  /** dolt_transaction_commit */
  history: boolean;
  log: Logger;
  /**
   * On a cluster primary: its hot standbys. What is acknowledged upstream is then also bounded by
   * how far every one of them has flushed the store's WAL (standby-bound.ts), so that a standby
   * promoted after a failover has every change the upstream slot let go (PostgreSQL 17's
   * synchronized_standby_slots does the same for logical slots).
   */
  standbys?: () => readonly ClusterStandby[];
  /** Told when a session starts streaming (its slot exists from then on). */
  onStreaming?: () => void;
}

const BATCH_MAX_CHANGES = 5000;
/** How often the store's WAL flush position is read while committed batches wait for it. */
const DURABLE_CHECK_MS = 50;
const BATCH_MAX_AGE_MS = 100;
/**
 * A batch caught up with the stream waits at most this long for more transactions, and only while
 * they arrive often (batch-linger.ts). Measured at pgbench -R 1000 (bench/lag.ts): CPU per row,
 * Strata's and the store's together, 222 µs with no wait, 171 µs with 5 ms, 166 µs with 10 ms
 * (docs/decisions.md §12).
 */
const LIVE_BATCH_MS = 5;
/** How long standbys may hold acknowledgements back before it is logged and shown as a warning. */
const STANDBY_WAIT_WARN_MS = 30_000;
const STATUS_TABLE_INTERVAL_MS = 1000;
/** The longest the apply loop goes without letting the event loop turn (see turnEventLoop). */
const EVENT_LOOP_TURN_MS = 1;
/** How far behind the primary's WAL end the stream may be and still count as caught up. */
const CAUGHT_UP_SLACK_BYTES = 1024n * 1024n;
const COMMITTER = "strata";
const EMAIL = "strata@replication";

export class Replicator {
  state: ReplicationState = "connecting";
  lastError: string | undefined;
  private stopping = false;
  private loop: Promise<void> | undefined;
  private repl: ReplicationConnection | undefined;
  private wakeBackoff: (() => void) | undefined;
  private readonly publication: string;
  private readonly log: Logger;
  // Progress (all only move forward).
  private received = 0n;
  private acked = 0n;
  private serverWalEnd = 0n;
  private lastMessageAt: Date | undefined;
  private lastApplyLagMs: number | undefined;
  private statusClient: Promise<pg.Client> | undefined;
  private statusDirty = true;
  /** The initial snapshot's figures (kept after it finished, for the status row). */
  private snapshotProgress: SnapshotProgress | undefined;
  /** WAL the slot holds back on the primary, and a warning to show in the status row (set by the slot monitor). */
  slotRetainedWalBytes: bigint | undefined;
  warning: string | undefined;
  /** Set while the cluster's standbys have held acknowledgements back for long (status row). */
  private standbyWait: string | undefined;
  private standbyWaitSince: number | undefined;
  private readonly standbyBound = new StandbyBound();
  /** The current session's held tables (for the status row). */
  private heldWork: HeldTableWork | undefined;

  constructor(private readonly options: ReplicatorOptions) {
    this.publication = options.config.publication_name ?? options.config.slot_name;
    this.log = options.log.child({ slot: options.config.slot_name });
  }

  start(): void {
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.wakeBackoff?.();
    await this.repl?.close();
    await this.loop;
  }

  private setState(state: ReplicationState, error?: string) {
    if (this.state !== state || this.lastError !== error) this.statusDirty = true;
    this.state = state;
    this.lastError = error;
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stopping) {
      this.setState(this.state === "error" ? "error" : "connecting", this.lastError);
      const startedAt = Date.now();
      try {
        await this.session();
      } catch (err) {
        if (this.stopping) break;
        if (err instanceof TableHeld || err instanceof SessionRenewal) {
          // Nothing is wrong with the stream: it starts again at once (holding that table).
          if (err instanceof SessionRenewal) this.log.info(err.message);
          attempt = 0;
          this.setState("connecting");
          continue;
        }
        const definite = err instanceof ApplyError || err instanceof ProtocolError;
        const message =
          explainPrimaryConnectionError(err, {
            host: this.options.config.postgres_server_address,
            port: this.options.config.postgres_port,
          }) ?? (err as Error).message;
        if (definite) {
          this.setState("error", message);
          this.log.error({ err: message }, "replication stopped by an error; retrying until it is fixed");
        } else {
          this.setState("reconnecting", message);
          this.log.warn({ err: message }, "replication interrupted; reconnecting");
        }
      }
      if (this.stopping) break;
      if (Date.now() - startedAt > 30_000) attempt = 0;
      const delay =
        Math.min(this.options.config.reconnect_max_delay_ms, 250 * 2 ** attempt) *
        (0.8 + Math.random() * 0.4);
      attempt++;
      await this.writeStatus().catch(() => {});
      await new Promise<void>((resolveWait) => {
        const timer = setTimeout(resolveWait, delay);
        this.wakeBackoff = () => {
          clearTimeout(timer);
          resolveWait();
        };
      });
    }
    this.setState("stopped");
    await this.writeStatus().catch(() => {});
    await this.statusClient?.then((c) => c.end()).catch(() => {});
    this.statusClient = undefined;
    this.log.info("replication stopped");
  }

  private seedLsn(): { lsn: bigint; file: string } | undefined {
    for (const file of [
      join(this.options.dataDir, ".doltcfg", "pg_wal_location"),
      join(process.cwd(), ".doltcfg", "pg_wal_location"),
    ]) {
      if (!existsSync(file)) continue;
      const text = readFileSync(file, "utf8").trim();
      try {
        return { lsn: parseLsn(text), file };
      } catch {
        throw new ApplyError(
          `${file} holds "${text}", which is not a WAL location`,
          "write an LSN such as 0/16B3748 (from SELECT pg_current_wal_lsn() on the primary) into it",
        );
      }
    }
    return undefined;
  }

  private async session(): Promise<void> {
    const cfg = this.options.config;
    const upstream = await prepareUpstream(cfg, this.publication, this.log);
    let repl: ReplicationConnection | undefined;
    const store = await connect(
      {
        ...this.options.store.connectionConfig(cfg.postgres_database),
        options: SESSION_OPTIONS,
        application_name: "strata apply",
        // The applier sends statements without waiting for the ones before (decisions.md §12):
        // pipeline mode writes each at once, where pg's queue sent one per round trip and is
        // deprecated (pg 9 removes it).
        pipeline: true,
      },
      (err) => {
        this.log.warn({ err: err.message }, "lost the connection to the store");
        // Between messages the stream would learn of it only with its next statement.
        void repl?.close(`lost the connection to the store: ${err.message}`);
      },
    );
    const buffer = new StreamBuffer(
      join(this.options.dataDir, "spill", cfg.slot_name),
      cfg.memory_limit_mb * 1024 * 1024,
      (xid, bytes) =>
        this.log.info(
          { xid, buffered_bytes: bytes, memory_limit_mb: cfg.memory_limit_mb },
          "streamed transaction spilling to disk",
        ),
    );
    let statusTimer: NodeJS.Timeout | undefined;
    let statusTableTimer: NodeJS.Timeout | undefined;
    let heldTimer: NodeJS.Timeout | undefined;
    let flushTimer: NodeJS.Timeout | undefined;
    let stopLingering: (() => void) | undefined;
    let stopHeldWork: (() => Promise<void>) | undefined;
    let applier: Applier | undefined;
    try {
      // A batch is visible as soon as it commits; it is acknowledged once durable (durable-acks.ts).
      await store.query("SET synchronous_commit = off");
      const replicaRole = await store.query("SET session_replication_role = replica").then(
        () => true,
        () => {
          this.log.warn(
            "cannot set session_replication_role = replica on the store (not a superuser): replica triggers will fire",
          );
          return false;
        },
      );
      applier = new Applier(store, {
        slot: cfg.slot_name,
        history: this.options.history,
        committer: COMMITTER,
        email: EMAIL,
        defineUpstreamType: (oid, name) => describeUpstreamType(cfg, oid, name),
        upstreamAttnums: (relid) => upstreamAttnums(cfg, relid),
        upstreamMissingValues: (relid, columns) => upstreamMissingValues(cfg, relid, columns),
        copyJoiningTables: !upstream.publicationAllTables,
        replicaRole,
      });
      await applier.init();
      // A replica with no position and no slot takes an initial snapshot. The marker file says a
      // snapshot was begun: if it is still there, that snapshot never committed and its slot is
      // useless (the exported snapshot died with the connection), so both start again.
      const marker = join(this.options.dataDir, "bootstrap", `${cfg.slot_name}.pending`);
      let slotExists = upstream.slotExists;
      let bootstrap = false;
      await store.query(SNAPSHOTS_PENDING);
      if (applier.position === 0n) {
        // Tables a snapshot began to fill but never committed are emptied first, so that nothing
        // (seeding, streaming) builds on a partial copy; their slot goes the way of the marker's.
        const unfinished = await cleanUpUnfinishedSnapshot(store, cfg.slot_name, this.log);
        const seed = this.seedLsn();
        if (seed) {
          // The slot must already hold everything after the seed; a slot made now, or one that
          // has moved past the seed, would silently skip what happened in between.
          if (
            !slotExists ||
            (upstream.slotConfirmedFlush !== undefined && upstream.slotConfirmedFlush > seed.lsn)
          ) {
            throw new ApplyError(
              slotExists
                ? `replication slot "${cfg.slot_name}" has already moved past the seeded WAL location ${formatLsn(seed.lsn)} (it is at ${formatLsn(upstream.slotConfirmedFlush!)}): changes in between are gone from it`
                : `${seed.file} seeds the replica at ${formatLsn(seed.lsn)}, but replication slot "${cfg.slot_name}" does not exist, and a slot created now would skip everything since the seed`,
              "create the slot before taking the dump, as Doltgres's guide does (CREATE_REPLICATION_SLOT before pg_dump), then seed again; or remove the seed file to let Strata take its own initial snapshot",
            );
          }
          await applier.seedPosition(seed.lsn);
          this.log.info(
            { lsn: formatLsn(seed.lsn), file: seed.file },
            "starting replication just after the seeded WAL location",
          );
        } else if (
          slotExists &&
          (unfinished ||
            existsSync(marker) ||
            (await this.resyncPending(store)) ||
            (await this.snapshotPending(store)))
        ) {
          await dropSlot(cfg);
          this.log.warn(
            "the previous initial snapshot did not finish; dropped its replication slot to take a new one",
          );
          slotExists = false;
          bootstrap = true;
        } else {
          bootstrap = !slotExists;
        }
      } else {
        // A snapshot that committed but was killed before removing its marker.
        rmSync(marker, { force: true });
        await this.snapshotDone(store);
      }
      if (applier.position !== 0n && slotExists) {
        const health = await inspectSlot(cfg);
        if (health.lost) {
          if (cfg.resync !== "auto") throw slotLostError(cfg, health);
          await this.startResync(store, applier.position, "was invalidated");
          await dropSlot(cfg);
          slotExists = false;
          bootstrap = true;
          await applier.init();
        }
      } else if (applier.position !== 0n && cfg.resync === "auto") {
        await this.startResync(store, applier.position, "is missing");
        slotExists = false;
        bootstrap = true;
        await applier.init();
      }
      if (applier.position !== 0n && !slotExists) {
        throw new ApplyError(
          `replication slot "${cfg.slot_name}" is missing on the primary, but this replica has applied changes from it up to ${formatLsn(applier.position)}; a new slot would silently skip what happened since`,
          `set postgres_replication.resync: auto to take a fresh snapshot into a new commit, start a fresh replica (an empty data_dir takes a new initial snapshot), or create the slot yourself (SELECT pg_create_logical_replication_slot('${cfg.slot_name}', 'pgoutput')) to accept the gap`,
        );
      }
      if (!slotExists && bootstrap) {
        mkdirSync(dirname(marker), { recursive: true });
        writeFileSync(marker, `${new Date().toISOString()}\n`);
        // In the store too, before the slot exists: a cluster standby promoted before it has any
        // of the snapshot finds it there and takes the snapshot again, rather than stream from the
        // slot into tables that never got their rows. So its standbys must have it first.
        await store.query(
          "INSERT INTO strata.snapshots_pending (slot_name) VALUES ($1) ON CONFLICT DO NOTHING",
          [cfg.slot_name],
        );
        await this.waitForStandbys(await this.storeWalInserted(), "before creating the replication slot");
        if (this.stopping) return;
      }
      repl = await ReplicationConnection.open(upstreamConnectionConfig(cfg));
      this.repl = repl;
      if (this.stopping) return;
      const system = await repl.identifySystem();
      if (!slotExists) {
        const created = await repl.createSlot(cfg.slot_name, bootstrap);
        this.log.info(
          { consistent_point: formatLsn(created.consistentPoint) },
          "created the replication slot on the primary",
        );
        if (bootstrap && created.snapshotName) {
          this.snapshotProgress = new SnapshotProgress();
          this.setState("snapshot");
          await this.writeStatus();
          // The status row shows the copy's figures as it goes (the stream's timer starts later).
          const snapshotStatusTimer = setInterval(() => {
            this.statusDirty = true;
            this.writeStatus().catch((err) => this.log.debug({ err: err.message }, "status write failed"));
          }, STATUS_TABLE_INTERVAL_MS);
          try {
            await copyInitialSnapshot({
              cfg,
              publication: this.publication,
              snapshotName: created.snapshotName,
              consistentPoint: created.consistentPoint,
              store,
              storeConfig: {
                ...this.options.store.connectionConfig(cfg.postgres_database),
                options: SESSION_OPTIONS,
              },
              history: this.options.history,
              parent: applier.durableHead,
              committer: COMMITTER,
              email: EMAIL,
              log: this.log,
              shouldStop: () => this.stopping,
              progress: this.snapshotProgress,
              message: await this.resyncMessage(store, created.consistentPoint),
              spaceOutCheckpoints: this.checkpointSpacer(store),
            });
          } finally {
            clearInterval(snapshotStatusTimer);
          }
          rmSync(marker, { force: true });
          await this.snapshotDone(store);
          await applier.init();
          await this.finishResync(store, created.consistentPoint);
          // Sequences are not replicated: their values are copied now, then periodically.
          await syncSequencesOnce(cfg, this.options.store.connectionConfig(cfg.postgres_database), this.log)
            .then((summary) => this.log.info(summary, "copied the primary's sequence values"))
            .catch((err) =>
              this.log.warn({ err: (err as Error).message }, "could not copy the primary's sequence values"),
            );
        }
      }
      const proto = upstream.protocolVersion;
      const startOptions: Record<string, string> = {
        proto_version: String(proto),
        publication_names: `"${this.publication.replace(/"/g, '""')}"`,
      };
      if (proto >= 2) startOptions.streaming = "on";
      // Logical decoding messages carry the DDL sent by `strata setup-primary`'s event trigger.
      if (upstream.serverVersion >= 140000) startOptions.messages = "true";
      // Batches commit without waiting for the store's WAL flush; the primary is told a position
      // only once the store's WAL is flushed past its batch (durable-acks.ts), and on a cluster
      // primary once every standby has flushed it too.
      const acks = new DurableAcks();
      const gated = this.options.standbys !== undefined;
      // The flush position is read on another connection, and the store's WAL positions mean
      // nothing across a restart of the store (a crash loses the WAL it had not flushed, and the
      // restarted store writes new WAL over those positions): a reading counts only while this
      // apply session, which a restart ends, is still there.
      const applyBackend = (
        await store.query<StoreBackend>(
          "SELECT pid, (extract(epoch FROM backend_start) * 1e6)::bigint::text AS started FROM pg_stat_get_activity(pg_backend_pid())",
        )
      ).rows[0];
      if (applier.position > this.acked) {
        // What the store holds may not be durable yet (the last session's batches commit without
        // waiting for the flush), nor on the standbys (a restart, a promotion).
        acks.committed(await this.storeWalInserted(), applier.position);
      }
      this.log.info(
        {
          upstream: `${cfg.postgres_server_address}:${cfg.postgres_port}/${cfg.postgres_database}`,
          system_id: system.systemId,
          start_lsn: formatLsn(applier.position),
          protocol_version: proto,
        },
        "starting replication",
      );
      const messages = repl.startReplication(cfg.slot_name, formatLsn(applier.position), startOptions);
      const conn = repl;
      const sendStatus = (replyRequested = false) =>
        conn.sendStatus({
          written: this.received > this.acked ? this.received : this.acked,
          flushed: this.acked,
          applied: this.acked,
          sendTime: nowPgTime(),
          replyRequested,
        });
      statusTimer = setInterval(() => {
        // On an idle primary the walsender pings only when our replies stop, and they never do:
        // ask for a reply once it has been quiet for an interval, so silence means trouble.
        sendStatus(conn.silentMs > cfg.status_interval_ms);
        // A primary that says nothing for twice its wal_sender_timeout (it sends keepalives at
        // half of it) is unreachable: reconnect rather than wait for TCP to give up.
        const limit = 2 * upstream.walSenderTimeoutMs;
        if (limit > 0 && conn.silentMs > limit) {
          void conn.close(
            `no message from the primary for ${Math.round(conn.silentMs / 1000)} s (twice its wal_sender_timeout); reconnecting`,
          );
        }
      }, cfg.status_interval_ms);
      // The status row refreshes on its own clock, so an idle stream still shows current figures.
      statusTableTimer = setInterval(() => {
        this.statusDirty = true;
        this.writeStatus().catch((err) => this.log.debug({ err: err.message }, "status write failed"));
      }, STATUS_TABLE_INTERVAL_MS);
      this.setState("streaming");
      await this.writeStatus();
      this.options.onStreaming?.();

      const ap = applier;
      // PostgreSQL 15 fixed this (SessionRenewal); the walsender is renewed after a transaction
      // that attached or detached a partition.
      const renewAfterPartitionMoves = upstream.serverVersion < 150000;
      const partitionMovesAtStart = ap.partitionMoves;
      const renewIfPartitionsMoved = async () => {
        if (!renewAfterPartitionMoves || ap.partitionMoves === partitionMovesAtStart) return;
        await flush();
        throw new SessionRenewal(
          `a partition was attached or detached at ${formatLsn(ap.position)}: starting a new replication session, since a PostgreSQL 14 walsender keeps publishing its changes under its old place`,
        );
      };
      let inStream: number | undefined;
      let current: { skip: boolean } | undefined;
      let committed = ap.position;
      /** How far every standby has flushed the store's WAL (null: nothing bounds it). */
      let standbysFlushed: bigint | null = gated ? 0n : null;
      const acknowledge = (flushed: bigint) => {
        const durable = acks.flushedTo(
          standbysFlushed !== null && standbysFlushed < flushed ? standbysFlushed : flushed,
        );
        if (durable !== undefined && durable > this.acked) {
          this.acked = durable;
          sendStatus();
        }
      };
      const flush = async () => {
        const position = await ap.flush();
        if (position > committed) {
          committed = position;
          acks.committed(ap.lastCommitWal, position);
        }
        acknowledge(ap.lastFlushedWal);
      };
      // The store's walwriter flushes within wal_writer_delay: ask it how far, while batches wait.
      flushTimer = setInterval(() => {
        if (!acks.waiting) return;
        this.storeWalFlushed(applyBackend)
          .then(({ flushed, standbys, sameStore }) => {
            // A reading that comes back after its session ended acts on nothing.
            if (flushTimer === undefined) return;
            if (!sameStore) {
              // The store restarted under this session: its waiting batches may be lost, and the
              // next session starts again from what the store holds.
              void conn.close("the store restarted; replication starts again from what it holds");
              return;
            }
            standbysFlushed = standbys === null ? null : leastFlushed(standbys);
            this.noteStandbyWait(acks.oldestWal, standbys, flushed);
            acknowledge(flushed);
          })
          .catch((err) =>
            this.log.debug({ err: err.message }, "could not read the store's WAL flush position"),
          );
      }, DURABLE_CHECK_MS);
      const idle = () =>
        current === undefined && inStream === undefined && buffer.openTransactions === 0 && !ap.hasUnflushed;
      // A batch's age bounds it from when it was started (a catch-up's messages may have waited
      // long in the queue); its wait for more transactions counts from when its first arrived.
      let batchStartedAt = 0;
      let batchArrivedAt = 0;
      const linger = new BatchLinger(LIVE_BATCH_MS);
      let lingering: NodeJS.Timeout | undefined;
      stopLingering = () => clearTimeout(lingering);
      const held = new HeldTableWork(ap, {
        slot: cfg.slot_name,
        store,
        log: this.log,
        wake: () => conn.poke(),
        apply: (msg, raw, inStream) => this.applyData(ap, msg, raw, inStream),
        copy: (relid, relation, signal) =>
          copyJoiningTable({
            cfg,
            publication: this.publication,
            slot: cfg.slot_name,
            relid,
            relation,
            storeConfig: {
              ...this.options.store.connectionConfig(cfg.postgres_database),
              options: SESSION_OPTIONS,
              application_name: "strata table copy",
            },
            signal,
          }),
        changed: () => {
          this.statusDirty = true;
        },
        published: () => publishedRelations(cfg, this.publication),
      });
      stopHeldWork = () => held.stop();
      this.heldWork = held;
      heldTimer = setInterval(() => {
        if (held.active) conn.poke();
      }, 1000);

      // While messages are queued, this loop runs on promise jobs alone and never lets the event
      // loop turn; but pg sends the store a queued statement only from its socket's events, when
      // the one before has finished. So the loop yields every few ms, or the store would sit idle
      // with statements waiting while Strata decodes.
      let turnedAt = performance.now();
      const turnEventLoop = async () => {
        if (performance.now() - turnedAt < EVENT_LOOP_TURN_MS) return;
        await new Promise<void>((resolveTurn) => setImmediate(resolveTurn));
        turnedAt = performance.now();
      };
      for await (const message of messages) {
        await turnEventLoop();
        if (message.tag === WAKE_UP.tag) {
          // Nothing from the primary: a timer's or a finished copy's turn (below).
        } else if (message.tag === "PrimaryKeepalive") {
          this.lastMessageAt = new Date();
          if (message.walEnd > this.serverWalEnd) this.serverWalEnd = message.walEnd;
          if (idle() && !acks.waiting && message.walEnd > this.acked) this.acked = message.walEnd;
          if (message.replyRequested) sendStatus();
        } else {
          this.lastMessageAt = new Date();
          if (message.walEnd > this.serverWalEnd) this.serverWalEnd = message.walEnd;
          if (message.walStart > this.received) this.received = message.walStart;
          const msg = decodePgoutput(message.data, { inStream: inStream !== undefined });
          switch (msg.tag) {
            case "Begin":
              if (ap.hasUnflushed && performance.now() - batchStartedAt > BATCH_MAX_AGE_MS) await flush();
              current = { skip: msg.finalLsn < ap.position };
              if (!current.skip) {
                linger.arrived(conn.arrivedAt);
                if (!ap.hasUnflushed) {
                  batchStartedAt = performance.now();
                  batchArrivedAt = conn.arrivedAt;
                }
                ap.beginTransaction({
                  xid: msg.xid,
                  commitLsn: msg.finalLsn,
                  commitTime: msg.commitTime,
                });
              }
              break;
            case "Commit":
              if (current && !current.skip) {
                await ap.commitTransaction(msg.endLsn);
                this.lastApplyLagMs = Date.now() - pgTimeToDate(msg.commitTime).getTime();
                await renewIfPartitionsMoved();
                if (
                  ap.batchChanges >= BATCH_MAX_CHANGES ||
                  performance.now() - batchStartedAt > BATCH_MAX_AGE_MS
                )
                  await flush();
                else await ap.feedIdleStore();
              }
              current = undefined;
              break;
            case "StreamStart":
              inStream = msg.xid;
              break;
            case "StreamStop":
              inStream = undefined;
              break;
            case "StreamAbort":
              buffer.abort(msg.xid, msg.subxid);
              break;
            case "StreamCommit":
              if (msg.commitLsn < ap.position) {
                buffer.abort(msg.xid, msg.xid);
                break;
              }
              if (ap.hasUnflushed && performance.now() - batchStartedAt > BATCH_MAX_AGE_MS) await flush();
              linger.arrived(conn.arrivedAt);
              if (!ap.hasUnflushed) {
                batchStartedAt = performance.now();
                batchArrivedAt = conn.arrivedAt;
              }
              ap.beginTransaction({
                xid: msg.xid,
                commitLsn: msg.commitLsn,
                commitTime: msg.commitTime,
              });
              for await (const raw of buffer.take(msg.xid)) {
                if (this.stopping) return;
                await turnEventLoop();
                await this.applyData(ap, decodePgoutput(raw, { inStream: true }), raw, true);
              }
              await ap.commitTransaction(msg.endLsn);
              this.lastApplyLagMs = Date.now() - pgTimeToDate(msg.commitTime).getTime();
              await renewIfPartitionsMoved();
              if (
                ap.batchChanges >= BATCH_MAX_CHANGES ||
                performance.now() - batchStartedAt > BATCH_MAX_AGE_MS
              )
                await flush();
              break;
            default:
              if (inStream !== undefined) {
                // Data of a streamed transaction: kept until its Stream Commit.
                if (isDataMessage(msg)) buffer.append(inStream, msg.xid ?? inStream, message.data);
              } else if (!current?.skip || msg.tag === "Relation" || msg.tag === "Type") {
                // Descriptions count even inside a skipped (already applied) transaction: pgoutput
                // sends each relation once per session, and later transactions rely on it.
                await this.applyData(ap, msg, message.data, false);
              }
          }
        }
        if (ap.hasUnflushed && !ap.inTransaction && current === undefined && conn.backlog === 0) {
          // Caught up with the stream: commit the batch, once it has gathered transactions for a
          // few ms if they arrive often (batch-linger.ts).
          const wait = linger.waitMs(performance.now(), batchArrivedAt);
          if (wait <= 0) await flush();
          else if (!lingering)
            lingering = setTimeout(() => {
              lingering = undefined;
              conn.poke();
            }, wait);
        }
        // Held tables move on between batches: copies start, held changes replay.
        if (held.active && idle() && !this.stopping) await held.tend();
        if (this.stopping) {
          // Between transactions, keep what was applied; inside one, roll it back (the slot
          // resends it) rather than make a stop wait for the rest of a large transaction.
          if (current === undefined && !ap.inTransaction && ap.hasUnflushed) await flush();
          return;
        }
      }
    } catch (err) {
      const hold = this.stopping ? undefined : applier?.holdFor(err);
      if (hold && applier) {
        // A table the stream cannot apply to is held; the rest of the stream goes on.
        await applier.abort();
        await applier.holdAfterError(hold);
        this.log.warn(
          { table: hold.rel, err: hold.error },
          "holding this table's changes until the error is fixed; the other tables keep replicating",
        );
        throw new TableHeld(hold);
      }
      if (this.stopping && applier && !applier.inTransaction && applier.hasUnflushed) {
        // Stopping between transactions: keep what was applied.
        try {
          // Kept (the slot resends it if the store loses it before its WAL is flushed).
          await applier.flush();
          return;
        } catch {
          // fall through to abort
        }
      }
      throw err;
    } finally {
      clearInterval(statusTimer);
      clearInterval(statusTableTimer);
      clearInterval(heldTimer);
      clearInterval(flushTimer);
      flushTimer = undefined;
      stopLingering?.();
      await stopHeldWork?.();
      await applier?.abort();
      buffer.clear();
      await repl?.close();
      this.repl = undefined;
      await store.end().catch(() => {});
    }
  }

  /**
   * The slot is gone and `resync: auto` is set. One store transaction records, as a commit, that
   * the replicated tables' rows are removed (so diffs across the resync stay exact), empties them
   * and forgets the position; the replica is then an empty one, and takes an initial snapshot with
   * a new slot. A crash at any point after this leaves a replica that does exactly that.
   */
  private async startResync(store: pg.Client, position: bigint, what: string): Promise<void> {
    const cfg = this.options.config;
    this.log.warn(
      { position: formatLsn(position) },
      `replication slot ${what}; resync: auto takes a fresh snapshot (changes since the position cannot be replicated)`,
    );
    // The tables to empty: those the replica knows it replicates, and those the publication holds
    // now (which the new snapshot fills, and refuses if they still have rows).
    const published = await publishedTableNames(cfg, this.publication);
    const { rows: tables } = await store.query<{ rel: string; schema: string; name: string }>(
      `SELECT DISTINCT schema || '.' || name AS rel, schema, name FROM (
         SELECT shape->>'schema' AS schema, shape->>'name' AS name FROM strata.upstream_tables WHERE slot_name = $1
         UNION SELECT p->>0, p->>1 FROM jsonb_array_elements($2::jsonb) AS p) known
        WHERE to_regclass(quote_ident(schema) || '.' || quote_ident(name)) IS NOT NULL
        ORDER BY 1`,
      [cfg.slot_name, JSON.stringify(published)],
    );
    const head = await store.query<{ seq: string; hash: string }>(
      "SELECT seq, hash FROM strata.commits ORDER BY seq DESC LIMIT 1",
    );
    const seq = BigInt(head.rows[0]?.seq ?? 0) + 1n;
    const header: CommitHeader = {
      parentHash: head.rows[0]?.hash ?? null,
      committer: COMMITTER,
      email: EMAIL,
      date: new Date().toISOString().replace("Z", "000Z"),
      message: `resync: the replication slot ${what}; the replica's rows are removed here and copied again by the next commit, and changes after ${formatLsn(position)} until it could not be replicated`,
      upstreamEndLsn: position,
    };
    const hasher = new CommitHasher(header);
    const qualified = tables.map((t) => `${quoteIdent(t.schema)}.${quoteIdent(t.name)}`);
    hasher.addTruncate(
      tables.map((t) => t.rel),
      false,
      false,
    );
    await store.query("BEGIN");
    try {
      if (this.options.history) {
        for (const [i, t] of tables.entries()) {
          // Keyed like the stream's truncates, so the versions of a snapshot base stay exact.
          await store.query(
            `INSERT INTO strata.changes (commit_seq, ord, rel, op, row_key, old_row)
             SELECT $1::bigint, $2::int, $3::text, 'T', strata.key_of(to_jsonb(strata_t.*), $4::text[]), to_jsonb(strata_t.*)
               FROM ${qualified[i]} strata_t`,
            [String(seq), i, t.rel, await historyKeyColumns(store, t.rel, qualified[i])],
          );
        }
        await insertCommitRow(store, { ...header, seq, hash: hasher.digest() });
      }
      if (qualified.length > 0) await store.query(`TRUNCATE ${qualified.join(", ")}`);
      await store.query("DELETE FROM strata.source_position WHERE slot_name = $1", [cfg.slot_name]);
      await store.query(
        `INSERT INTO strata.resyncs (slot_name, lost_after_lsn) VALUES ($1, $2)
         ON CONFLICT (slot_name) DO UPDATE SET lost_after_lsn = excluded.lost_after_lsn, started_at = clock_timestamp()`,
        [cfg.slot_name, formatLsn(position)],
      );
      await store.query("COMMIT");
    } catch (err) {
      await store.query("ROLLBACK").catch(() => {});
      throw err;
    }
  }

  private async snapshotPending(store: pg.Client): Promise<boolean> {
    const { rowCount } = await store.query("SELECT 1 FROM strata.snapshots_pending WHERE slot_name = $1", [
      this.options.config.slot_name,
    ]);
    return Boolean(rowCount);
  }

  private async snapshotDone(store: pg.Client): Promise<void> {
    await store.query("DELETE FROM strata.snapshots_pending WHERE slot_name = $1", [
      this.options.config.slot_name,
    ]);
  }

  /** On a cluster primary: until every standby has flushed the store's WAL to `lsn`. */
  private async waitForStandbys(lsn: bigint, why: string): Promise<void> {
    if (!this.options.standbys) return;
    let said = false;
    while (!this.stopping) {
      const { flushed, standbys } = await this.storeWalFlushed();
      const least = standbys === null ? null : leastFlushed(standbys);
      if (least === null || least >= lsn) break;
      this.noteStandbyWait(lsn, standbys, flushed > lsn ? flushed : lsn, true);
      if (!said) {
        this.log.info(`waiting for this cluster's standbys to have the store's WAL ${why}`);
        said = true;
      }
      // No stream yet, so no status timer: the row shows the wait's warning from here.
      await this.writeStatus().catch((err) => this.log.debug({ err: err.message }, "status write failed"));
      await new Promise((r) => setTimeout(r, DURABLE_CHECK_MS * 2));
    }
    if (!this.stopping) this.clearStandbyWait();
  }

  private async resyncPending(store: pg.Client): Promise<boolean> {
    const { rowCount } = await store.query("SELECT 1 FROM strata.resyncs WHERE slot_name = $1", [
      this.options.config.slot_name,
    ]);
    return Boolean(rowCount);
  }

  /** The managed store's checkpoints spaced out while a snapshot copies (an external store's are its own). */
  private checkpointSpacer(store: pg.Client): ((bytes: number) => Promise<() => Promise<void>>) | undefined {
    const managed = this.options.store.managed;
    if (!managed) return undefined;
    return async (bytes) => {
      const { maxWalMb, raised, restore } = await spaceOutCheckpoints(managed, store, bytes);
      if (raised)
        this.log.info(
          { max_wal_size_mb: maxWalMb, snapshot_mb: Math.round(bytes / 1024 / 1024) },
          "initial snapshot: the store's checkpoints are spaced out until it ends",
        );
      return restore;
    };
  }

  /** The snapshot commit's message when it completes a resync. */
  private async resyncMessage(store: pg.Client, at: bigint): Promise<string | undefined> {
    const { rows } = await store.query<{ lsn: string }>(
      "SELECT lost_after_lsn::text AS lsn FROM strata.resyncs WHERE slot_name = $1",
      [this.options.config.slot_name],
    );
    if (!rows[0]) return undefined;
    return `initial snapshot at ${formatLsn(at)} (resync: changes between ${rows[0].lsn} and ${formatLsn(at)} could not be replicated; this commit holds their net effect)`;
  }

  private async finishResync(store: pg.Client, at: bigint): Promise<void> {
    const { rowCount } = await store.query("DELETE FROM strata.resyncs WHERE slot_name = $1", [
      this.options.config.slot_name,
    ]);
    if (rowCount) this.log.info({ consistent_point: formatLsn(at) }, "resync complete");
  }

  /** One data message; `raw` is its bytes as received (kept as they are when its table is held). */
  private async applyData(ap: Applier, msg: PgoutputMessage, raw: Buffer, inStream: boolean): Promise<void> {
    switch (msg.tag) {
      case "Relation":
        ap.relation(msg, raw);
        return;
      case "Type":
        ap.type(msg);
        return;
      case "Insert":
      case "Update":
      case "Delete":
      case "Truncate":
        await ap.applyChange(msg, raw, inStream);
        return;
      case "Message":
        if (msg.prefix === DDL_MESSAGE_PREFIX && msg.transactional)
          await ap.applyDdl(parseDdlMessage(msg.content), this.publication, raw, inStream);
        return;
      case "Origin":
        return;
      case "BeginPrepare":
      case "Prepare":
      case "CommitPrepared":
      case "RollbackPrepared":
      case "StreamPrepare":
        throw new ProtocolError(`unexpected two-phase message ${msg.tag}: Strata does not request two_phase`);
      default:
        throw new ProtocolError(`unexpected message ${msg.tag} here`);
    }
  }

  /** The status connection to the store: one, shared by concurrent callers while it opens. */
  private statusConnection(): Promise<pg.Client> {
    if (!this.statusClient) {
      const opening = connect(
        {
          ...this.options.store.connectionConfig(this.options.config.postgres_database),
          application_name: "strata status",
        },
        () => {
          if (this.statusClient === opening) this.statusClient = undefined;
        },
      );
      this.statusClient = opening;
      opening.catch(() => {
        if (this.statusClient === opening) this.statusClient = undefined;
      });
    }
    return this.statusClient;
  }

  /**
   * How far the store's WAL is flushed, and on a cluster primary how far each standby has flushed
   * it (null: not a cluster primary). On the status connection: the apply one is busy.
   */
  private async storeWalFlushed(
    apply?: StoreBackend,
  ): Promise<{ flushed: bigint; standbys: StandbyPosition[] | null; sameStore: boolean }> {
    const client = await this.statusConnection();
    const standbys = this.options.standbys?.();
    // Prepared (named): asked every 50 ms, and planning its views took ~0.5 ms of the store's CPU.
    const { rows } = await client.query<{ lsn: string; slots: SlotJson[]; same_store: boolean }>({
      name: "strata_store_wal_flushed",
      text: `SELECT pg_current_wal_flush_lsn()::text AS lsn,
              (SELECT coalesce(json_agg(json_build_object('slot', s.slot_name, 'lost', coalesce(s.wal_status = 'lost', false),
                                                          'restart', s.restart_lsn::text, 'flush', r.flush_lsn::text)), '[]'::json)
                 FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                WHERE s.slot_name = ANY($1::text[]) AND s.slot_type = 'physical') AS slots,
              $2::int IS NULL OR EXISTS (SELECT 1 FROM pg_stat_get_activity($2::int) a
                                          WHERE (extract(epoch FROM a.backend_start) * 1e6)::bigint = $3::bigint) AS same_store`,
      values: [
        (standbys ?? []).flatMap((s) => (s.slot ? [s.slot] : [])),
        apply?.pid ?? null,
        apply?.started ?? null,
      ],
    });
    const lsn = (text: string | null) => (text === null ? null : parseLsn(text));
    return {
      flushed: parseLsn(rows[0].lsn),
      sameStore: rows[0].same_store,
      standbys:
        standbys === undefined
          ? null
          : this.standbyBound.positions(
              standbys,
              rows[0].slots.map((r) => ({
                slot: r.slot,
                lost: r.lost,
                restartLsn: lsn(r.restart),
                streamingFlush: lsn(r.flush),
              })),
            ),
    };
  }

  /** Where the store's WAL ends now: everything committed so far lies before it. */
  private async storeWalInserted(): Promise<bigint> {
    const client = await this.statusConnection();
    const { rows } = await client.query<{ lsn: string }>("SELECT pg_current_wal_insert_lsn()::text AS lsn");
    return parseLsn(rows[0].lsn);
  }

  /**
   * Acknowledgements held back by the cluster's standbys for long are logged and shown in the
   * status row: the upstream slot retains WAL meanwhile.
   */
  private noteStandbyWait(
    oldest: bigint | undefined,
    standbys: StandbyPosition[] | null,
    flushed: bigint,
    beforeSlot = false,
  ): void {
    const behind =
      oldest === undefined || oldest > flushed ? [] : (standbys ?? []).filter((p) => p.flushed < oldest);
    if (behind.length === 0 || oldest === undefined) {
      this.clearStandbyWait();
      return;
    }
    this.standbyWaitSince ??= Date.now();
    if (this.standbyWait || Date.now() - this.standbyWaitSince < STANDBY_WAIT_WARN_MS) return;
    const which = behind
      .map((p) => `${p.name} (${p.unknown ?? `at ${formatLsn(p.flushed)} in this store's WAL`})`)
      .join(", ");
    const waited = Math.round((Date.now() - this.standbyWaitSince) / 1000);
    this.standbyWait = beforeSlot
      ? `the initial snapshot waits: its upstream replication slot is made only once every standby of this cluster knows of it, and for ${waited} s these have not: ${which}; bring them back, or remove one that is gone for good (or was never started) from cluster.standby_remotes and restart`
      : `changes applied here are acknowledged upstream only once every standby of this cluster has them, and for ${waited} s these have not: ${which}, where the oldest waiting change ends at ${formatLsn(oldest)}; the upstream slot retains WAL meanwhile: bring them back, or remove one that is gone for good from cluster.standby_remotes and restart`;
    this.log.warn({ standbys: behind.map((p) => p.name) }, this.standbyWait);
    this.statusDirty = true;
  }

  /** The standbys caught up (the wait is kept across sessions until they do). */
  private clearStandbyWait(): void {
    if (this.standbyWait) {
      this.log.info("the cluster's standbys caught up");
      this.statusDirty = true;
    }
    this.standbyWaitSince = this.standbyWait = undefined;
  }

  /** Write the status row read by dolt_replication_status. */
  async writeStatus(): Promise<void> {
    if (!this.statusDirty) return;
    this.statusDirty = false;
    const cfg = this.options.config;
    const client = await this.statusConnection();
    const caughtUp = this.acked >= this.serverWalEnd;
    // Streaming but further behind the primary's WAL end than a keepalive's worth: catching up.
    const phase =
      this.state === "snapshot"
        ? "snapshot"
        : this.state === "streaming"
          ? this.serverWalEnd - this.acked > CAUGHT_UP_SLACK_BYTES
            ? "catching up"
            : "streaming"
          : null;
    const snapshot = this.snapshotProgress?.planned ? this.snapshotProgress.summary() : undefined;
    const held = this.heldWork?.summary() ?? { text: null, error: null };
    await client.query(
      `INSERT INTO strata.replication_status (slot_name, upstream, publication, state, received_lsn, upstream_lsn, last_message_time, lag_ms, error, updated_at,
         phase, snapshot_tables_done, snapshot_tables_total, snapshot_rows, snapshot_bytes, snapshot_rows_estimate, snapshot_bytes_estimate,
         slot_retained_wal_bytes, warning, held_tables)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp(), $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
       ON CONFLICT (slot_name) DO UPDATE SET upstream = excluded.upstream, publication = excluded.publication, state = excluded.state,
         received_lsn = excluded.received_lsn, upstream_lsn = excluded.upstream_lsn, last_message_time = excluded.last_message_time,
         lag_ms = excluded.lag_ms, error = excluded.error, updated_at = excluded.updated_at,
         phase = excluded.phase, snapshot_tables_done = excluded.snapshot_tables_done, snapshot_tables_total = excluded.snapshot_tables_total,
         snapshot_rows = excluded.snapshot_rows, snapshot_bytes = excluded.snapshot_bytes,
         snapshot_rows_estimate = excluded.snapshot_rows_estimate, snapshot_bytes_estimate = excluded.snapshot_bytes_estimate,
         slot_retained_wal_bytes = excluded.slot_retained_wal_bytes, warning = excluded.warning, held_tables = excluded.held_tables`,
      [
        cfg.slot_name,
        `${cfg.postgres_server_address}:${cfg.postgres_port}/${cfg.postgres_database}`,
        this.publication,
        this.state,
        this.received ? formatLsn(this.received) : null,
        this.serverWalEnd ? formatLsn(this.serverWalEnd) : null,
        this.lastMessageAt ?? null,
        caughtUp ? 0 : (this.lastApplyLagMs ?? null),
        this.lastError ?? held.error,
        phase,
        snapshot?.tablesDone ?? null,
        snapshot?.tablesTotal ?? null,
        snapshot?.total.rows ?? null,
        snapshot?.total.bytes ?? null,
        snapshot?.total.rowsEstimate === null || snapshot === undefined
          ? null
          : Math.round(snapshot.total.rowsEstimate),
        snapshot?.total.bytesEstimate ?? null,
        this.slotRetainedWalBytes === undefined ? null : String(this.slotRetainedWalBytes),
        [this.warning, this.standbyWait].filter(Boolean).join("; ") || null,
        held.text,
      ],
    );
  }
}

/** A store session, told apart from a later one with the same pid (after a restart of the store). */
interface StoreBackend {
  pid: number;
  started: string;
}

/** A standby slot as storeWalFlushed's query returns it. */
interface SlotJson {
  slot: string;
  lost: boolean;
  restart: string | null;
  flush: string | null;
}

function isDataMessage(msg: PgoutputMessage): msg is Extract<PgoutputMessage, { xid?: number }> & {
  tag: "Relation" | "Type" | "Insert" | "Update" | "Delete" | "Truncate" | "Message";
} {
  return (
    msg.tag === "Relation" ||
    msg.tag === "Type" ||
    msg.tag === "Insert" ||
    msg.tag === "Update" ||
    msg.tag === "Delete" ||
    msg.tag === "Truncate" ||
    msg.tag === "Message"
  );
}
