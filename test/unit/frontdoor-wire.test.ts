// The front door's wire code on exact bytes: framing of both directions with packets cut at every
// byte, many messages per chunk, absurd lengths; encoders checked against their decoders and
// against the bytes node-postgres's own serializer writes.
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { test } from "node:test";
import { parse as parseBackend, serialize } from "pg-protocol";
import { errorStatement, highestParameter } from "../../src/frontdoor/error-statement.ts";
import {
  CANCEL_REQUEST_CODE,
  decodeBackendKeyData,
  decodeErrorFields,
  decodeParameterStatus,
  decodeParse,
  decodeQuery,
  decodeReadyForQuery,
  encodeErrorResponse,
  encodeParse,
  encodeQuery,
  type Frame,
  FrameSplitter,
  GSSENC_REQUEST_CODE,
  MAX_STARTUP_PACKET_LENGTH,
  ProtocolError,
  SSL_REQUEST_CODE,
  type StartupPacket,
  StartupReader,
  TAG,
} from "../../src/frontdoor/wire.ts";

/** A typed message: tag, int32 length, body. */
function msg(tag: string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const b = typeof body === "string" ? Buffer.from(body) : body;
  const header = Buffer.alloc(5);
  header[0] = tag.charCodeAt(0);
  header.writeInt32BE(4 + b.length, 1);
  return Buffer.concat([header, b]);
}

/** Run `chunks` through a splitter, collecting its frames. */
function split(chunks: Buffer[], wholeTags: number[], passRuns = true): Frame[] {
  const splitter = new FrameSplitter(wholeTags, passRuns);
  const frames: Frame[] = [];
  for (const chunk of chunks) {
    splitter.push(chunk);
    for (let f = splitter.next(); f; f = splitter.next()) frames.push({ ...f, bytes: Buffer.from(f.bytes) });
  }
  return frames;
}

function cutAt(stream: Buffer, ...points: number[]): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (const p of [...points, stream.length]) {
    out.push(stream.subarray(start, p));
    start = p;
  }
  return out;
}

function bytewise(stream: Buffer): Buffer[] {
  return Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1));
}

// A client's traffic: startup done, then a mix of simple and extended protocol and COPY data.
const query = encodeQuery("SELECT 1");
const parse = encodeParse({ name: "s1", sql: "SELECT $1::int", paramTypes: [23] });
const clientStream = Buffer.concat([
  msg("p", "SCRAM-SHA-256\0\0\0\0\x04abcd"),
  query,
  parse,
  msg("B", Buffer.from("\0s1\0\0\0\0\x01\0\0\0\x011\0\0")),
  msg("E", Buffer.from("\0\0\0\0\0")),
  msg("S"),
  msg("d", Buffer.alloc(300, 7)),
  msg("c"),
  encodeQuery("SELECT 'é'"),
  msg("X"),
]);
const wanted = [query, parse, encodeQuery("SELECT 'é'")];

/** The frames must give back the stream in order, with exactly the Query and Parse messages whole. */
function assertFaithful(frames: Frame[], stream: Buffer, whole: Buffer[]) {
  assert.deepEqual(Buffer.concat(frames.map((f) => f.bytes)), stream, "bytes in order, none lost or added");
  const messages = frames.filter((f) => f.kind === "message");
  assert.deepEqual(
    messages.map((f) => f.bytes),
    whole,
  );
  for (const f of messages) assert.equal(f.kind === "message" && f.tag, f.bytes[0]);
}

test("typed framing: whole Query and Parse, everything else as runs, for a cut at every byte", () => {
  const tags = [TAG.query, TAG.parse];
  assertFaithful(split([clientStream], tags), clientStream, wanted);
  assertFaithful(split(bytewise(clientStream), tags), clientStream, wanted);
  for (let i = 1; i < clientStream.length; i++) {
    assertFaithful(split(cutAt(clientStream, i), tags), clientStream, wanted);
    for (let j = i + 1; j < clientStream.length; j += 7) {
      assertFaithful(split(cutAt(clientStream, i, j), tags), clientStream, wanted);
    }
  }
});

test("typed framing: many messages per chunk come back as few runs, not one frame per message", () => {
  const rows = Buffer.concat(Array.from({ length: 1000 }, (_, i) => msg("D", `\0\x01\0\0\0\x03${i % 10}ab`)));
  const stream = Buffer.concat([msg("T", "x"), rows, msg("C", "SELECT 1000\0"), msg("Z", "I"), rows]);
  const frames = split([stream], [TAG.readyForQuery]);
  assert.deepEqual(
    frames.map((f) => f.kind),
    ["bytes", "message", "bytes"],
  );
  assertFaithful(frames, stream, [msg("Z", "I")]);
  assert.deepEqual(split([stream], []), [{ kind: "bytes", bytes: stream }]);
});

test("typed framing: an observer gets only the messages it asked for, wherever chunks are cut", () => {
  const stream = Buffer.concat([
    msg("R", "\0\0\0\0"),
    msg("S", "client_encoding\0UTF8\0"),
    msg("K", Buffer.from([0, 0, 0x30, 0x39, 1, 2, 3, 4])),
    msg("Z", "I"),
    msg("D", Buffer.alloc(70_000)),
    msg("Z", "T"),
  ]);
  const tags = [TAG.readyForQuery, TAG.backendKeyData, TAG.parameterStatus];
  for (const chunks of [[stream], bytewise(stream), cutAt(stream, 3, 40, 50, 70_010)]) {
    const frames = split(chunks, tags, false);
    assert.ok(frames.every((f) => f.kind === "message"));
    assert.deepEqual(
      frames.map((f) => String.fromCharCode(f.bytes[0])),
      ["S", "K", "Z", "Z"],
    );
    assert.deepEqual(decodeParameterStatus(frames[0].bytes), { name: "client_encoding", value: "UTF8" });
    assert.equal(decodeBackendKeyData(frames[1].bytes).pid, 12345);
    assert.deepEqual(decodeBackendKeyData(frames[1].bytes).secret, Buffer.from([1, 2, 3, 4]));
    assert.deepEqual(
      [decodeReadyForQuery(frames[2].bytes), decodeReadyForQuery(frames[3].bytes)],
      ["I", "T"],
    );
  }
});

test("typed framing: an observer whose chunks are read into one reused buffer keeps what it holds", () => {
  // As the front door reads the store: every chunk lands in the same memory, overwritten (here
  // with 0xff) once the splitter has had it. Messages cut by a chunk must come back intact.
  const whole = [
    msg("S", "client_encoding\0UTF8\0"),
    msg("K", Buffer.from([0, 0, 0x30, 0x39, 1, 2, 3, 4])),
    msg("Z", "T"),
  ];
  const stream = Buffer.concat([whole[0], msg("D", Buffer.alloc(50, 7)), whole[1], whole[2]]);
  const tags = [TAG.readyForQuery, TAG.backendKeyData, TAG.parameterStatus];
  const scratch = Buffer.alloc(stream.length);
  for (const chunks of [bytewise(stream), cutAt(stream, 3, 20, 60, 90), [stream]]) {
    const splitter = new FrameSplitter(tags, false, true);
    const frames: Buffer[] = [];
    for (const chunk of chunks) {
      chunk.copy(scratch);
      splitter.push(scratch.subarray(0, chunk.length));
      for (let f = splitter.next(); f; f = splitter.next()) frames.push(Buffer.from(f.bytes));
      scratch.fill(0xff);
    }
    assert.deepEqual(frames, whole);
  }
});

test("typed framing: message boundaries are known", () => {
  const splitter = new FrameSplitter([TAG.query]);
  const stream = Buffer.concat([msg("D", "abc"), query]);
  splitter.push(stream.subarray(0, 6));
  while (splitter.next());
  assert.equal(splitter.atMessageBoundary(), false);
  splitter.push(stream.subarray(6, 8));
  while (splitter.next());
  assert.equal(splitter.atMessageBoundary(), true);
  splitter.push(stream.subarray(8, 10));
  while (splitter.next());
  assert.equal(splitter.atMessageBoundary(), false);
});

test("typed framing: a length below 4 or beyond 1 GiB is a protocol error, found from the header alone", () => {
  for (const length of [0, 3, -1, 0x4000_0000, 0x7fff_ffff]) {
    for (const tags of [[TAG.query], []]) {
      const header = Buffer.alloc(5);
      header[0] = TAG.query;
      header.writeInt32BE(length, 1);
      const splitter = new FrameSplitter(tags);
      splitter.push(Buffer.concat([msg("S"), header]));
      assert.throws(
        () => {
          while (splitter.next());
        },
        (err: Error) =>
          err instanceof ProtocolError && err.code === "08P01" && /invalid message length/.test(err.message),
      );
    }
  }
  // A Query of the largest allowed length is collected as it arrives, not allocated up front.
  const header = Buffer.alloc(5);
  header[0] = TAG.query;
  header.writeInt32BE(0x3fff_ffff, 1);
  const splitter = new FrameSplitter([TAG.query]);
  splitter.push(Buffer.concat([header, Buffer.from("SELECT")]));
  assert.equal(splitter.next(), undefined);
});

function startupPacket(code: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + body.length, 0);
  head.writeInt32BE(code, 4);
  return Buffer.concat([head, body]);
}

function readStartup(chunks: Buffer[]): { packets: StartupPacket[]; rest: Buffer } {
  const reader = new StartupReader();
  const packets: StartupPacket[] = [];
  // As the front door reads: typed messages follow the StartupMessage, the reader stops there.
  let done = false;
  for (const chunk of chunks) {
    reader.push(chunk);
    for (
      let p: StartupPacket | undefined = done ? undefined : reader.next();
      p;
      p = done ? undefined : reader.next()
    ) {
      packets.push(p);
      done = p.kind === "startup" || p.kind === "cancel";
    }
  }
  return { packets, rest: reader.rest() };
}

test("startup framing: GSSENCRequest, SSLRequest, StartupMessage with its parameters, then typed bytes", () => {
  const startup = Buffer.from(serialize.startup({ user: "ann", database: "shop", application_name: "psql" }));
  const password = Buffer.from(serialize.password("pw"));
  const stream = Buffer.concat([
    startupPacket(GSSENC_REQUEST_CODE),
    startupPacket(SSL_REQUEST_CODE),
    startup,
    password,
  ]);
  for (const chunks of [[stream], bytewise(stream), cutAt(stream, 5, 9, 17, 30)]) {
    const { packets, rest } = readStartup(chunks);
    assert.deepEqual(
      packets.map((p) => p.kind),
      ["gssenc-request", "ssl-request", "startup"],
    );
    const last = packets[2];
    assert.ok(last.kind === "startup");
    assert.equal(last.major, 3);
    assert.equal(last.minor, 0);
    assert.deepEqual(Object.fromEntries(last.parameters), {
      user: "ann",
      database: "shop",
      application_name: "psql",
      client_encoding: "UTF8",
    });
    assert.deepEqual(last.bytes, startup);
    assert.deepEqual(rest, password);
  }
});

test("startup framing: CancelRequest keeps its key bytes", () => {
  const body = Buffer.alloc(8);
  body.writeInt32BE(4242, 0);
  body.writeInt32BE(-123456, 4);
  const packet = startupPacket(CANCEL_REQUEST_CODE, body);
  const { packets } = readStartup(bytewise(packet));
  assert.equal(packets.length, 1);
  const cancel = packets[0];
  assert.ok(cancel.kind === "cancel");
  assert.equal(cancel.pid, 4242);
  assert.deepEqual(cancel.secret, body.subarray(4));
  assert.deepEqual(cancel.bytes, packet);
});

test("startup framing: garbage, HTTP, TLS without SSLRequest, bad layouts and old protocols are refused", () => {
  const refused = (bytes: Buffer, code: string, pattern: RegExp) =>
    assert.throws(
      () => readStartup([bytes]),
      (err: Error) => err instanceof ProtocolError && err.code === code && pattern.test(err.message),
      bytes.subarray(0, 16).toString("hex"),
    );
  refused(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "08P01", /invalid length of startup packet/);
  refused(Buffer.from([0x16, 0x03, 0x01, 0x02, 0, 1, 0, 0]), "08P01", /sslnegotiation=postgres/);
  refused(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0]), "08P01", /invalid length/);
  refused(Buffer.from([0x7f, 0xff, 0xff, 0xff]), "08P01", /invalid length/);
  const tooLong = Buffer.alloc(8);
  tooLong.writeInt32BE(MAX_STARTUP_PACKET_LENGTH + 1, 0);
  refused(tooLong, "08P01", /invalid length/);
  refused(
    startupPacket(0x0002_0000, Buffer.from("user\0x\0\0")),
    "0A000",
    /unsupported frontend protocol 2\.0/,
  );
  refused(startupPacket(0x0003_0000, Buffer.from("user\0x\0")), "08P01", /invalid startup packet layout/);
  refused(startupPacket(0x0003_0000, Buffer.from("user\0x")), "08P01", /invalid startup packet layout/);
  refused(startupPacket(0x0003_0000, Buffer.from("\0junk")), "08P01", /invalid startup packet layout/);
  refused(startupPacket(SSL_REQUEST_CODE, Buffer.from("xy")), "08P01", /SSLRequest/);
  refused(startupPacket(CANCEL_REQUEST_CODE, Buffer.from("ab")), "08P01", /CancelRequest/);
});

test("Query: encode and decode round-trip, as node-postgres writes it", () => {
  for (const sql of ["SELECT 1", "", "SELECT 'é', '日本', '🐘' -- ok", "x".repeat(100_000)]) {
    const bytes = encodeQuery(sql);
    assert.deepEqual(bytes, Buffer.from(serialize.query(sql)));
    assert.equal(decodeQuery(bytes), sql);
  }
  // A non-UTF-8 client encoding goes through latin1, byte for byte.
  const latin1 = Buffer.concat([
    Buffer.from([TAG.query, 0, 0, 0, 9]),
    Buffer.from([0x27, 0xe9, 0xff, 0x27, 0]),
  ]);
  assert.deepEqual(encodeQuery(decodeQuery(latin1, "latin1"), "latin1"), latin1);
  assert.throws(() => decodeQuery(msg("Q", "no terminator")), ProtocolError);
  // Not UTF-8 in a UTF-8 session: refused (the message then goes to the store untouched, which
  // refuses it with 22021), never read with U+FFFD in place of the bytes.
  assert.throws(() => decodeQuery(latin1), /not valid UTF-8/);
});

test("Parse: round-trip keeps the statement name and parameter types exactly, as node-postgres writes it", () => {
  const cases = [
    { name: "", sql: "SELECT 1", paramTypes: [] },
    { name: "stmt_1", sql: "SELECT $1::int + $2", paramTypes: [23, 0] },
    { name: "ünï", sql: "INSERT INTO t VALUES ($1, $2, $3)", paramTypes: [25, 0xffff_fff0, 2_147_483_649] },
  ];
  for (const parse of cases) {
    const bytes = encodeParse(parse);
    assert.deepEqual(
      bytes,
      Buffer.from(serialize.parse({ name: parse.name, text: parse.sql, types: parse.paramTypes })),
    );
    assert.deepEqual(decodeParse(bytes), parse);
    const replaced = encodeParse({ ...decodeParse(bytes), sql: "SELECT 2" });
    assert.deepEqual(decodeParse(replaced), { ...parse, sql: "SELECT 2" });
  }
  assert.throws(() => decodeParse(msg("P", "s\0SELECT 1\0\0\x02\0\0\0\x17")), /do not match their count/);
  assert.throws(() => decodeParse(msg("P", "s\0SELECT 1\0")), /no parameter count/);
  // The count is unsigned, as the server reads it: 40,000 parameter types are a valid Parse.
  const many = { name: "", sql: "SELECT 1", paramTypes: new Array<number>(40_000).fill(25) };
  assert.deepEqual(decodeParse(encodeParse(many)), many);
  const invalid = encodeParse({ name: "s", sql: "SELECT 'x'", paramTypes: [] });
  invalid[invalid.indexOf("x")] = 0xff;
  assert.throws(() => decodeParse(invalid), /not valid UTF-8/);
});

/** Decode a backend message with node-postgres's own parser. */
async function parsedByPg(bytes: Buffer): Promise<Record<string, unknown>> {
  const stream = new PassThrough();
  const messages: Record<string, unknown>[] = [];
  const done = parseBackend(stream, (m) => messages.push(m as unknown as Record<string, unknown>));
  stream.end(bytes);
  await done;
  assert.equal(messages.length, 1);
  return messages[0];
}

test("ErrorResponse: node-postgres reads what the front door writes", async () => {
  const bytes = encodeErrorResponse({
    severity: "FATAL",
    code: "28000",
    message: "this server requires TLS — «sslmode»",
    hint: "connect with sslmode=require",
    detail: "no\0nul",
  });
  const fields = decodeErrorFields(bytes);
  assert.deepEqual(Object.fromEntries(fields), {
    S: "FATAL",
    V: "FATAL",
    C: "28000",
    M: "this server requires TLS — «sslmode»",
    D: "nonul",
    H: "connect with sslmode=require",
  });
  const parsed = await parsedByPg(bytes);
  assert.equal(parsed.name, "error");
  assert.equal(parsed.code, "28000");
  assert.equal(parsed.severity, "FATAL");
  assert.equal(parsed.message, "this server requires TLS — «sslmode»");
  assert.equal(parsed.hint, "connect with sslmode=require");
});

test("error statements quote anything safely and name a valid SQLSTATE", () => {
  const sql = errorStatement({ message: "it's a \\ $strata$ \0 trap", hint: "h'", code: "22023" });
  assert.equal(
    sql,
    "DO $strata1$BEGIN RAISE EXCEPTION USING MESSAGE = E'it''s a \\\\ $strata$  trap', HINT = E'h''', ERRCODE = '22023'; END$strata1$",
  );
  assert.match(errorStatement({ message: "m", code: "bad" }), /ERRCODE = 'XX000'/);
  assert.match(errorStatement({ message: "m", code: "00000" }), /ERRCODE = 'XX000'/);
  assert.match(errorStatement({ message: "m" }), /ERRCODE = 'XX000'/);
});

test("highestParameter ignores literals, quoted names, comments and dollar quotes", () => {
  assert.equal(highestParameter("SELECT 1"), 0);
  assert.equal(highestParameter("SELECT $1, $12 + $3"), 12);
  assert.equal(
    highestParameter("SELECT '$9', E'\\'$8', \"$7\", $$ $6 $$, $q$ $5 $q$ -- $4\n, $2 /* $3 /* $3 */ */"),
    2,
  );
  assert.equal(highestParameter("SELECT a$1 FROM t"), 0);
  assert.equal(highestParameter("SELECT 'it''s $4', $1"), 1);
});
