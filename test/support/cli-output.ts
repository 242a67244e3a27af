// What the CLI's commands print, collected as a terminal would get it, for tests to read.
import type { Output } from "../../src/cli/output.ts";

/** Text output as a terminal would get it, collected (no colours, a wide screen). */
export function textOutput(): Output & { lines: string[] } {
  const lines: string[] = [];
  return {
    human: true,
    width: 200,
    color: false,
    lines,
    async line(text) {
      lines.push(text);
    },
  };
}
