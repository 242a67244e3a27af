// A partition's bound as the primary gives it (`pg_get_partition_constraintdef`), made evaluable on
// the replica. Range and list bounds are plain expressions over the root's columns. A hash
// partition's bound calls `satisfies_hash_partition('<parent oid>'::oid, modulus, remainder,
// columns...)`, which needs a hash-partitioned table with that key: the parent's oid means nothing
// on the replica, so the call is pointed at a stand-in table the replica makes with the same key.

/** One `satisfies_hash_partition(...)` call in a bound. */
export interface HashCall {
  /** Where the call starts and ends (exclusive) in the bound. */
  start: number;
  end: number;
  modulus: number;
  remainder: number;
  /** The partition key's columns, unquoted, in key order. */
  columns: string[];
}

const CALL = "satisfies_hash_partition(";
const HEAD = /^satisfies_hash_partition\('\d+'::oid, (\d+), (\d+), /;
const IDENTIFIER = /^(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")$/;

/**
 * The hash calls of a bound, in order; undefined when one has a key that is not plain columns
 * (an expression key), which a stand-in table could not be sure to hash alike.
 */
export function findHashCalls(bound: string): HashCall[] | undefined {
  const calls: HashCall[] = [];
  for (let i = 0; i < bound.length; i++) {
    if (bound[i] === "'") {
      i = skipQuoted(bound, i, "'");
      continue;
    }
    if (bound[i] === '"') {
      i = skipQuoted(bound, i, '"');
      continue;
    }
    if (!bound.startsWith(CALL, i) || /[a-z0-9_$]/.test(bound[i - 1] ?? "")) continue;
    const head = HEAD.exec(bound.slice(i));
    if (!head) return undefined;
    const argsStart = i + head[0].length;
    const close = closingParen(bound, argsStart);
    if (close < 0) return undefined;
    const columns = splitTopLevel(bound.slice(argsStart, close)).map((a) => a.trim());
    if (columns.length === 0 || !columns.every((c) => IDENTIFIER.test(c))) return undefined;
    calls.push({
      start: i,
      end: close + 1,
      modulus: Number(head[1]),
      remainder: Number(head[2]),
      columns: columns.map(unquote),
    });
    i = close;
  }
  return calls;
}

/** The bound with each hash call pointed at its stand-in table (`oids`, one per call, in order). */
export function pointHashCalls(bound: string, calls: HashCall[], oids: number[]): string {
  let out = "";
  let at = 0;
  calls.forEach((call, n) => {
    const args = bound.slice(call.start + CALL.length, call.end - 1);
    out += `${bound.slice(at, call.start)}${CALL}'${oids[n]}'::oid${args.slice(args.indexOf(","))})`;
    at = call.end;
  });
  return out + bound.slice(at);
}

function skipQuoted(text: string, open: number, quote: string): number {
  let i = open + 1;
  while (i < text.length) {
    if (text[i] === quote) {
      if (text[i + 1] === quote) i += 2;
      else return i;
    } else i++;
  }
  return text.length;
}

function closingParen(text: string, from: number): number {
  let depth = 0;
  for (let i = from; i < text.length; i++) {
    const ch = text[i];
    if (ch === "'" || ch === '"') i = skipQuoted(text, i, ch);
    else if (ch === "(") depth++;
    else if (ch === ")") {
      if (depth === 0) return i;
      depth--;
    }
  }
  return -1;
}

function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === "'" || ch === '"') i = skipQuoted(text, i, ch);
    else if (ch === "(") depth++;
    else if (ch === ")") depth--;
    else if (ch === "," && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

function unquote(identifier: string): string {
  return identifier.startsWith('"') ? identifier.slice(1, -1).replace(/""/g, '"') : identifier;
}
