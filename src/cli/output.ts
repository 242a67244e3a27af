// Output of the commands that read history (log, diff, status). On a terminal they print text
// for people; otherwise, or with --json, JSON lines (one object per line), so that a script can
// consume output that streams: `strata log --limit 0` over a million commits never holds them
// all, in Strata or in the reader.
import { once } from "node:events";

export interface Output {
  /** Text for people rather than JSON lines. */
  readonly human: boolean;
  /** Columns a line of text may use (longer cells are clipped to fit). */
  readonly width: number;
  /** Whether text may be coloured (a terminal, and NO_COLOR unset). */
  readonly color: boolean;
  /** Write one line; resolves once the next may be written without queueing output in memory. */
  line(text: string): Promise<void>;
}

/** Standard output: text on a terminal unless `json`, JSON lines otherwise. */
export function stdoutOutput(json: boolean): Output {
  const stdout = process.stdout;
  stdout.on("error", (err: NodeJS.ErrnoException) => {
    // `strata log | head`: the reader has what it wanted, which is not a failure.
    if (err.code === "EPIPE") process.exit(0);
    process.stderr.write(`strata: cannot write the output: ${err.message}\n`);
    process.exit(1);
  });
  const human = Boolean(stdout.isTTY) && !json;
  return {
    human,
    width: stdout.columns || 120,
    color: human && !process.env.NO_COLOR && stdout.hasColors(),
    async line(text) {
      if (!stdout.write(`${text}\n`)) await once(stdout, "drain");
    },
  };
}

const COLORS = { red: 31, green: 32, yellow: 33, dim: 2 } as const;

/** `text` in a colour when the output takes colours. */
export function paint(out: Output, color: keyof typeof COLORS, text: string): string {
  return out.color ? `\x1b[${COLORS[color]}m${text}\x1b[0m` : text;
}

/** One line of text: control characters (newlines in commit messages, tabs in values) become spaces. */
export function oneLine(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f]+/g, " ");
}

// Colour codes take no room on the screen.
const length = (text: string) => [...text.replace(/\x1b\[[0-9;]*m/g, "")].length;

/** `text` cut to `width` characters, the cut marked with an ellipsis. */
export function clip(text: string, width: number): string {
  const chars = [...text];
  if (chars.length <= width) return text;
  return width < 2 ? chars.slice(0, width).join("") : `${chars.slice(0, width - 1).join("")}…`;
}

export interface Column {
  header: string;
  align?: "left" | "right";
}

/**
 * A table written as its rows arrive: columns are as wide as the widest cell seen so far (the
 * header is written with the first rows, so that a page of rows sets the widths), and the last
 * column is clipped to the output's width. Cells are single lines (see oneLine), possibly painted.
 */
export class TableWriter {
  private widths: number[] | undefined;

  constructor(
    private readonly columns: Column[],
    private readonly out: Output,
    private readonly withHeader = true,
  ) {}

  async write(rows: string[][]): Promise<void> {
    const first = this.widths === undefined;
    const widths = this.widths ?? this.columns.map((c) => length(c.header));
    // The last column is not padded, so it does not widen the others' layout.
    for (const row of rows)
      for (let i = 0; i < row.length - 1; i++) widths[i] = Math.max(widths[i], length(row[i]));
    this.widths = widths;
    if (first && this.withHeader) await this.out.line(this.format(this.columns.map((c) => c.header)));
    for (const row of rows) await this.out.line(this.format(row));
  }

  private format(row: string[]): string {
    const widths = this.widths!;
    const last = row.length - 1;
    const fixed = row.slice(0, last).map((cell, i) => {
      const pad = " ".repeat(Math.max(0, widths[i] - length(cell)));
      return this.columns[i].align === "right" ? pad + cell : cell + pad;
    });
    const prefix = fixed.length ? `${fixed.join("  ")}  ` : "";
    const room = Math.max(this.out.width - length(prefix), 10);
    return `${prefix}${clip(row[last], room)}`.trimEnd();
  }
}

/** Write every row of a table at once (rows already in memory, e.g. one per changed table). */
export async function writeTable(
  out: Output,
  columns: Column[],
  rows: string[][],
  withHeader = true,
): Promise<void> {
  await new TableWriter(columns, out, withHeader).write(rows);
}

/**
 * A column value as text for people: NULL for SQL NULL, quoted (JSON-style) when it would
 * otherwise be ambiguous (empty, spaces, quotes, `=`, the word NULL, control characters).
 */
export function displayValue(value: string | null): string {
  if (value === null) return "NULL";
  if (value === "" || value === "NULL" || /[\s"'=\u0000-\u001f\u007f]/.test(value)) {
    return JSON.stringify(value);
  }
  return value;
}
