// LSNs and Postgres timestamps at the edges of the protocol.
//
// An LSN is a 64-bit WAL position, carried as bigint everywhere inside Strata and shown the way
// Postgres shows it: two uppercase hex halves without padding ("16/B374D848", "0/0").
// Timestamps on the wire are microseconds since 2000-01-01 UTC (the Postgres epoch) as bigint;
// they become a Date only for display, where the microseconds are dropped.

const MAX_U64 = 0xffff_ffff_ffff_ffffn;
const LSN_TEXT = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/;

/** Parse "X/Y" (hex, as pg_lsn prints it) into a bigint. */
export function parseLsn(text: string): bigint {
  const match = typeof text === "string" ? LSN_TEXT.exec(text) : null;
  if (!match) {
    throw new Error(
      `invalid LSN ${JSON.stringify(text)}: expected the form X/Y with X and Y hexadecimal of at most 8 digits, e.g. "16/B374D848"`,
    );
  }
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

/** Format an LSN the way Postgres does: "0/16B3748". */
export function formatLsn(lsn: bigint): string {
  if (lsn < 0n || lsn > MAX_U64) throw new RangeError(`LSN out of range (0 to 2^64-1): ${lsn}`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}

/** 2000-01-01T00:00:00Z in Unix milliseconds. */
export const PG_EPOCH_MS = 946684800000;
const PG_EPOCH_MS_BIG = BigInt(PG_EPOCH_MS);

/** Microseconds since the Postgres epoch → Date (millisecond precision, rounded down). */
export function pgTimeToDate(us: bigint): Date {
  // Floor, not truncate, so that times before 2000 round the same way as times after.
  let ms = us / 1000n;
  if (us < 0n && ms * 1000n !== us) ms -= 1n;
  return new Date(Number(ms + PG_EPOCH_MS_BIG));
}

/** Date → microseconds since the Postgres epoch. */
export function dateToPgTime(d: Date): bigint {
  const ms = d.getTime();
  if (!Number.isFinite(ms)) throw new RangeError("dateToPgTime: invalid Date");
  return (BigInt(ms) - PG_EPOCH_MS_BIG) * 1000n;
}

/** The current time as a Postgres timestamp (for sendTime fields). */
export function nowPgTime(): bigint {
  return (BigInt(Date.now()) - PG_EPOCH_MS_BIG) * 1000n;
}
