// Work items of a parallel initial snapshot (pure: no I/O).
//
//   published table ──▶ sources (the table itself, or the leaf partitions of a partitioned table
//                        published through its root, in name order)
//   source ──▶ one item (small, or not a heap: foreign partitions, servers before PostgreSQL 14)
//          └─▶ ctid ranges of about chunk_mb: [0,b1) [b1,b2) ... [bn,∞)
//
// The last range of a split heap is open-ended: rows visible to the snapshot all lie in blocks
// that existed when the size was read, but the heap may have grown since (concurrent writers) and
// an open end costs nothing, whereas a closed one would silently drop rows if that reasoning ever
// failed (a relation extended by another path). Ranges are scanned by TID range scans (PostgreSQL
// 14+), so each chunk reads only its own blocks; older servers would scan the whole heap per
// chunk, so their tables are never split.
//
// Items are handed out largest first, so the longest copy starts first and the small ones fill
// the gaps at the end. Each item keeps its (table, chunk) place: the commit hash combines chunk
// digests in that order, so whatever order the workers finish in, the hash is the same.

export interface SourceRelation {
  /** Qualified, quoted name of the relation rows are read from. */
  relation: string;
  /** pg_class.relkind: 'r' for a heap; anything else is copied whole. */
  relkind: string;
  /** Heap size in blocks (pg_relation_size / block_size). */
  blocks: number;
  /** On-disk size including TOAST (pg_table_size): the bytes estimate. */
  bytes: number;
  /** pg_class.reltuples: the rows estimate; negative when never analyzed. */
  rows: number;
}

export interface PlanOptions {
  /** Target chunk size in bytes (snapshot_chunk_mb). */
  chunkBytes: number;
  /** The primary's block_size. */
  blockSize: number;
  /** The primary runs PostgreSQL 14 or later (TID range scans). */
  tidRangeScans: boolean;
}

/** Blocks [start, end) of a heap; end null: to the end of the heap, whatever its size then. */
export interface BlockRange {
  start: number;
  end: number | null;
}

export interface WorkItem {
  /** Index of the published table (commit hash and history order). */
  table: number;
  /** Index of this item within its table (commit hash order). */
  chunk: number;
  relation: string;
  /** null: the whole relation. */
  range: BlockRange | null;
  estimatedBytes: number;
  /** null when the relation was never analyzed. */
  estimatedRows: number | null;
}

export interface PlannedTable {
  sources: SourceRelation[];
}

export function chunkBlocks(opts: PlanOptions): number {
  return Math.max(1, Math.floor(opts.chunkBytes / opts.blockSize));
}

/** Split one source into block ranges of about `per` blocks each (none when it fits in one). */
export function splitBlocks(blocks: number, per: number): BlockRange[] | null {
  // Rounded, not ceiled: a heap of 1.2 chunks is one item rather than a chunk and a sliver.
  return splitBlocksInto(blocks, Math.round(blocks / per));
}

/**
 * How many pieces a heap is copied in: by its heap blocks, or by its whole size when most of it
 * is TOAST (a table of large values has a small heap whose rows point into a large TOAST table;
 * its ctid ranges divide the TOAST reads too). Never more pieces than blocks.
 */
export function piecesFor(source: SourceRelation, opts: PlanOptions): number {
  const byBlocks = Math.round(source.blocks / chunkBlocks(opts));
  const byBytes = Math.round(source.bytes / opts.chunkBytes);
  return Math.min(source.blocks, Math.max(byBlocks, byBytes));
}

/** Split `blocks` into `n` even block ranges, the last open-ended (none when n <= 1). */
export function splitBlocksInto(blocks: number, n: number): BlockRange[] | null {
  if (n <= 1) return null;
  const ranges: BlockRange[] = [];
  for (let i = 0; i < n; i++) {
    const start = Math.floor((i * blocks) / n);
    const end = i === n - 1 ? null : Math.floor(((i + 1) * blocks) / n);
    ranges.push({ start, end });
  }
  return ranges;
}

export function planSnapshot(tables: readonly PlannedTable[], opts: PlanOptions): WorkItem[] {
  const items: WorkItem[] = [];
  tables.forEach((table, t) => {
    let chunk = 0;
    for (const source of table.sources) {
      const ranges =
        opts.tidRangeScans && source.relkind === "r"
          ? splitBlocksInto(source.blocks, piecesFor(source, opts))
          : null;
      const rows = source.rows >= 0 ? source.rows : null;
      if (!ranges) {
        items.push({
          table: t,
          chunk: chunk++,
          relation: source.relation,
          range: null,
          estimatedBytes: source.bytes,
          estimatedRows: rows,
        });
        continue;
      }
      for (const range of ranges) {
        const share = ((range.end ?? source.blocks) - range.start) / source.blocks;
        items.push({
          table: t,
          chunk: chunk++,
          relation: source.relation,
          range,
          estimatedBytes: Math.round(source.bytes * share),
          estimatedRows: rows === null ? null : Math.round(rows * share),
        });
      }
    }
    // A partitioned table without partitions still has a place in the hash and the progress.
  });
  return items.sort((a, b) => b.estimatedBytes - a.estimatedBytes || a.table - b.table || a.chunk - b.chunk);
}

/** The WHERE condition selecting a block range (true for the whole relation). */
export function rangeCondition(range: BlockRange | null): string | null {
  if (!range) return null;
  const parts: string[] = [];
  if (range.start > 0) parts.push(`ctid >= '(${range.start},0)'::tid`);
  if (range.end !== null) parts.push(`ctid < '(${range.end},0)'::tid`);
  return parts.length ? parts.join(" AND ") : null;
}

/** Human-readable block range for logs: "blocks 0-1023", "blocks 1024-end". */
export function describeRange(range: BlockRange | null): string {
  if (!range) return "whole";
  return `blocks ${range.start}-${range.end === null ? "end" : range.end - 1}`;
}
