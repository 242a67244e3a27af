// Where a statement's text is code and where it is a literal or a comment, found with a small
// lexer: for decisions on whole statements that must stay cheap whatever their size. Postgres's
// own scanner (libpg-query) costs about 0.7 ms a kilobyte, on the event loop every session
// shares, so a 10 MB INSERT whose text says "as of" must not reach it.

/**
 * If a string literal ('...', E'...', $tag$...$tag$), a quoted identifier or a comment (-- or
 * nested /* *\/) starts at `i`, the index just after it (the end of the text if it is not
 * closed); otherwise `i`.
 */
export function skipQuoted(sql: string, i: number): number {
  const n = sql.length;
  const c = sql[i];
  if (c === "'") {
    // E'...' (backslash escapes) or '...'; '' is a quote inside either.
    const escapes = i > 0 && (sql[i - 1] === "E" || sql[i - 1] === "e") && !isIdentChar(sql[i - 2]);
    let j = i + 1;
    if (!escapes)
      for (;;) {
        j = sql.indexOf("'", j);
        if (j < 0) return n;
        if (sql[j + 1] !== "'") return j + 1;
        j += 2;
      }
    while (j < n) {
      if (sql[j] === "\\") j += 2;
      else if (sql[j] === "'") {
        if (sql[j + 1] === "'") j += 2;
        else break;
      } else j++;
    }
    return Math.min(j + 1, n);
  }
  if (c === '"') {
    const close = sql.indexOf('"', i + 1);
    return close < 0 ? n : close + 1;
  }
  if (c === "-" && sql[i + 1] === "-") {
    const close = sql.indexOf("\n", i);
    return close < 0 ? n : close + 1;
  }
  if (c === "/" && sql[i + 1] === "*") {
    let depth = 1;
    let j = i + 2;
    while (j < n && depth > 0) {
      if (sql[j] === "/" && sql[j + 1] === "*") {
        depth++;
        j += 2;
      } else if (sql[j] === "*" && sql[j + 1] === "/") {
        depth--;
        j += 2;
      } else j++;
    }
    return j;
  }
  if (c === "$" && !isIdentChar(sql[i - 1])) {
    const tag = /^\$([A-Za-z_\u0080-\uffff][\w\u0080-\uffff]*)?\$/.exec(sql.slice(i, i + 130));
    if (tag) {
      const close = sql.indexOf(tag[0], i + tag[0].length);
      return close < 0 ? n : close + tag[0].length;
    }
  }
  return i;
}

export function isIdentChar(c: string | undefined): boolean {
  return c !== undefined && /[\w$\u0080-\uffff]/.test(c);
}

const QUOTE_STARTS = /['"$/-]/g;
let memo: { sql: string; code: string } | undefined;

/**
 * Statements longer than this are not lexed (nor scanned): they go to the store as sent. Lexing
 * costs about 12 ms a megabyte, on the event loop.
 */
export const LEXED_MAX_CHARS = 16 * 1024 * 1024;

/**
 * Whether `sql`, up to LEXED_MAX_CHARS, matches `pattern` in its code: the cheap test on the
 * whole text first, then on the code, so that a literal or comment that mentions it costs
 * nothing more.
 */
export function codeMatches(sql: string, pattern: RegExp, inCode: RegExp = pattern): boolean {
  return sql.length <= LEXED_MAX_CHARS && pattern.test(sql) && inCode.test(codeOf(sql));
}

/**
 * `sql` with each string literal and comment replaced by a space: the code, quoted identifiers
 * included. The last statement's is remembered (the front door asks several questions of one).
 */
export function codeOf(sql: string): string {
  if (memo?.sql === sql) return memo.code;
  let code = "";
  let from = 0;
  QUOTE_STARTS.lastIndex = 0;
  for (let m = QUOTE_STARTS.exec(sql); m; m = QUOTE_STARTS.exec(sql)) {
    const i = m.index;
    const end = skipQuoted(sql, i);
    QUOTE_STARTS.lastIndex = end > i ? end : i + 1;
    if (end === i || sql[i] === '"') continue;
    code += `${sql.slice(from, i)} `;
    from = end;
  }
  code += sql.slice(from);
  memo = { sql, code };
  return code;
}
