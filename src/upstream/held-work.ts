// What the stream does for its held tables between batches (see apply/held-tables.ts): start the
// background copy of each joining table, and replay held changes — a chunk per turn, so the
// stream keeps moving — once the copy has committed or the error that held the table is fixed.
import type pg from "pg";
import type { Applier } from "../apply/applier.ts";
import { type HeldCopy, notePublicationMembers, pendingCopies } from "../apply/held-tables.ts";
import type { Logger } from "../log.ts";
import { formatLsn } from "../protocol/lsn.ts";
import type { PgoutputMessage, RelationMessage } from "../protocol/messages.ts";
import { decodePgoutput } from "../protocol/pgoutput.ts";

/** A held table whose changes still fail, or whose copy failed, is retried this often. */
const RETRY_MS = 2000;
/** How often the publication is looked at for tables added to it (see watch). */
const WATCH_MS = 5000;

export interface HeldWorkOptions {
  slot: string;
  /** The applier's store connection: used only between batches, as the applier is. */
  store: pg.Client;
  log: Logger;
  /** Wake the stream's loop (a copy finished). */
  wake: () => void;
  /** Apply one replayed message, as the stream would. */
  apply: (msg: PgoutputMessage, raw: Buffer, inStream: boolean) => Promise<void>;
  /** Copy a joining table in a store transaction of its own (table-sync.ts). */
  copy: (relid: number, relation: RelationMessage, signal: AbortSignal) => Promise<HeldCopy>;
  /** The held tables' state changed (for the status row). */
  changed: () => void;
  /** The publication's tables now, from the primary's catalog (absent: not looked for). */
  published?: () => Promise<RelationMessage[]>;
}

export class HeldTableWork {
  private readonly copies = new Map<number, { controller: AbortController; done: Promise<void> }>();
  private readonly copyErrors = new Map<number, string>();
  private readonly retryAt = new Map<number, number>();
  private nextWatchAt = 0;
  /** The publication's tables being read from the primary (off the stream's loop), and the result. */
  private reading: Promise<void> | undefined;
  private read: RelationMessage[] | undefined;
  /** Published tables the replica already has (with rows): left to the stream, not looked at again. */
  private readonly adopted = new Set<number>();

  constructor(
    private readonly ap: Applier,
    private readonly options: HeldWorkOptions,
  ) {}

  /** Whether there is work for a turn: a held table, or the publication to look at. */
  get active(): boolean {
    return this.ap.heldTables.length > 0 || this.watching();
  }

  private watching(): boolean {
    if (this.options.published === undefined || !this.ap.copiesJoiningTables) return false;
    return this.read !== undefined || (this.reading === undefined && Date.now() >= this.nextWatchAt);
  }

  /** One turn: call between batches only (no upstream transaction open, nothing unflushed). */
  async tend(): Promise<void> {
    if (this.watching()) await this.watch();
    const now = Date.now();
    const due = (relid: number) => !this.copies.has(relid) && now >= (this.retryAt.get(relid) ?? 0);
    const tables = this.ap.heldTables;
    if (tables.some((t) => t.reason === "joining" && due(t.relid))) await this.startCopies();
    for (const table of tables) {
      if (!due(table.relid)) continue;
      const outcome = await this.ap.replayHeld(table.relid, (msg, raw) =>
        this.options.apply(msg, raw, false),
      );
      if (outcome === "held") {
        this.retryAt.set(table.relid, Date.now() + RETRY_MS);
      } else {
        this.retryAt.delete(table.relid);
        this.copyErrors.delete(table.relid);
        if (outcome === "released")
          this.options.log.info(
            { table: table.rel },
            "the held table caught up: its changes are applied as they arrive again",
          );
      }
      this.options.changed();
    }
  }

  /**
   * A table added to the publication joins as soon as it is seen there, not only when a change to
   * it is streamed (a table nobody writes to would otherwise never be copied).
   */
  private async watch(): Promise<void> {
    const relations = this.read;
    this.read = undefined;
    if (!relations) {
      // Read in the background (a connection to the primary and a catalog query): the stream's
      // loop goes on meanwhile, and takes the result at a later turn.
      this.nextWatchAt = Date.now() + WATCH_MS;
      this.reading = this.options.published!()
        .then((read) => {
          this.read = read;
        })
        .catch((err: Error) => {
          this.options.log.debug({ err: err.message }, "could not read the publication's tables");
        })
        .finally(() => {
          this.reading = undefined;
          this.options.wake();
        });
      return;
    }
    const returned = new Set(
      await notePublicationMembers(
        this.options.store,
        this.options.slot,
        relations.map((r) => r.relationOid),
      ),
    );
    for (const relation of relations) {
      const table = `${relation.namespace}.${relation.name}`;
      try {
        if (returned.has(relation.relationOid)) {
          this.adopted.delete(relation.relationOid);
          if (await this.ap.rejoinTable(relation)) {
            this.options.log.warn(
              { table },
              "a table is in the publication again after it left it: its rows are copied anew",
            );
            this.options.changed();
          }
        } else if (!this.adopted.has(relation.relationOid)) {
          if (await this.ap.joinFromCatalog(relation)) {
            this.options.log.info({ table }, "a table was added to the publication");
            this.options.changed();
          } else this.adopted.add(relation.relationOid);
        }
      } catch (err) {
        // Left to the stream: its first change to the table joins it, or holds it with this error.
        this.adopted.add(relation.relationOid);
        this.options.log.warn(
          { table, err: (err as Error).message },
          "could not take a table added to the publication; its first streamed change will",
        );
      }
    }
  }

  /** Start the copy of every joining table that has none committed or running. */
  private async startCopies(): Promise<void> {
    for (const job of await pendingCopies(this.options.store, this.options.slot)) {
      if (this.copies.has(job.relid)) continue;
      const relation = decodePgoutput(job.relation, { inStream: false }) as RelationMessage;
      const controller = new AbortController();
      this.options.log.info(
        { table: job.rel },
        "a table joined the replica mid-stream: copying its rows in the background, the stream goes on",
      );
      const started = Date.now();
      const done = this.options.copy(job.relid, relation, controller.signal).then(
        (copy) => {
          this.copyErrors.delete(job.relid);
          this.retryAt.delete(job.relid);
          this.options.log.info(
            {
              table: job.rel,
              rows: copy.rows,
              bytes: copy.bytes,
              snapshot_lsn: formatLsn(copy.lsn),
              seconds: (Date.now() - started) / 1000,
            },
            "copied the joining table; applying its held changes",
          );
        },
        (err: Error) => {
          if (controller.signal.aborted) return;
          this.copyErrors.set(job.relid, `copying ${job.rel} failed: ${err.message}`);
          this.retryAt.set(job.relid, Date.now() + RETRY_MS);
          this.options.log.warn(
            { table: job.rel, err: err.message },
            "copying the joining table failed; retrying",
          );
        },
      );
      this.copies.set(job.relid, {
        controller,
        done: done.finally(() => {
          this.copies.delete(job.relid);
          this.options.changed();
          this.options.wake();
        }),
      });
    }
  }

  /** For the status row: each held table, why, and its error if any. */
  summary(): { text: string | null; error: string | null } {
    const tables = this.ap.heldTables;
    if (tables.length === 0) return { text: null, error: null };
    const parts = tables.map((t) => {
      const state = t.reason === "joining" ? (this.copies.has(t.relid) ? "copying" : "joining") : t.reason;
      return `${t.rel} (${state})`;
    });
    const errors = tables.flatMap((t) => {
      const error = t.reason === "schema" ? t.error : this.copyErrors.get(t.relid);
      return error ? [`${t.rel} is held, the other tables replicate: ${error}`] : [];
    });
    return { text: parts.join(", "), error: errors.length ? errors.join("\n") : null };
  }

  /** Stop the copies (their store transactions roll back) and wait for them. */
  async stop(): Promise<void> {
    for (const { controller } of this.copies.values()) controller.abort();
    await Promise.all([...this.copies.values()].map((c) => c.done));
    await this.reading;
  }
}
