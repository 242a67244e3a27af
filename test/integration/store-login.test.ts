// The front door's repeat of a client's authentication (src/frontdoor/store-login.ts), against a
// real server for each method the store may ask for: SCRAM-SHA-256, md5 and cleartext password.
// A first login with the password is watched as the front door watches a client's; the
// credential derived from what was seen (and the role's stored secret) must log in again, and a
// wrong one must not.
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, test } from "node:test";
import {
  AuthCapture,
  type CapturedAuth,
  credentialFor,
  type StoreCredential,
  StoreLogin,
  StoreLoginError,
} from "../../src/frontdoor/store-login.ts";
import { FrameSplitter, TAG } from "../../src/frontdoor/wire.ts";
import { startPrimary, type TestCluster } from "../support/postgres.ts";

let cluster: TestCluster;

before(async () => {
  cluster = await startPrimary({
    hba: ["host all md5_user 127.0.0.1/32 md5", "host all clear_user 127.0.0.1/32 password"],
  });
  await cluster.query("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5 secret'");
  await cluster.query("CREATE ROLE clear_user LOGIN PASSWORD 'clear secret'");
  await cluster.query("CREATE ROLE scram_user LOGIN PASSWORD 'scram secret'");
});
after(async () => {
  await cluster?.stop();
});

/** Log in as `user` with `credential`, watching the exchange; the outcome and what was captured. */
function login(user: string, credential: StoreCredential): Promise<{ pid: number; captured: CapturedAuth }> {
  return new Promise((resolveLogin, reject) => {
    const capture = new AuthCapture();
    const login = new StoreLogin(user, credential);
    const fromServer = new FrameSplitter([TAG.authentication], false);
    const socket = connect({ host: cluster.host, port: cluster.port });
    const fail = (err: Error) => {
      socket.destroy();
      reject(err);
    };
    socket.on("error", fail);
    socket.on("data", (chunk: Buffer) => {
      fromServer.push(chunk);
      for (let frame = fromServer.next(); frame; frame = fromServer.next())
        if (frame.kind === "message") capture.fromStore(frame.bytes);
      try {
        for (const reply of login.receive(chunk)) {
          capture.fromClient(reply);
          socket.write(reply);
        }
      } catch (err) {
        fail(err as Error);
        return;
      }
      if (login.ready) {
        socket.end();
        resolveLogin({ pid: login.key!.pid, captured: capture.captured });
      }
    });
    socket.write(StoreLogin.startupMessage(new Map([["user", user]]), "postgres"));
  });
}

const storedSecret = async (user: string) =>
  (
    await cluster.query<{ rolpassword: string }>("SELECT rolpassword FROM pg_authid WHERE rolname = $1", [
      user,
    ])
  )[0].rolpassword;

for (const [user, password, kind] of [
  ["scram_user", "scram secret", "scram"],
  ["md5_user", "md5 secret", "md5"],
  ["clear_user", "clear secret", "password"],
] as const) {
  test(`a ${kind} login seen once is repeated without the password`, async () => {
    const first = await login(user, { kind: "password", password });
    assert.ok(first.pid > 0);
    assert.equal(first.captured.kind, kind);
    const credential = credentialFor(first.captured, await storedSecret(user));
    assert.equal(credential.kind, kind); // SCRAM: the client key, md5: the stored hash, never a guess
    const again = await login(user, credential);
    assert.ok(again.pid > 0 && again.pid !== first.pid);

    const wrong = await login(user, { kind: "password", password: "not it" }).then(
      () => assert.fail("a wrong password must not log in"),
      (err) => err as StoreLoginError,
    );
    assert.ok(wrong instanceof StoreLoginError);
    assert.equal(wrong.code, "28P01");
  });
}

test("a SCRAM proof that does not match the stored key gives no credential", async () => {
  const first = await login("scram_user", { kind: "password", password: "scram secret" });
  assert.equal(first.captured.kind, "scram");
  const tampered = { ...first.captured, proof: Buffer.alloc(32, 7) } as CapturedAuth;
  assert.throws(() => credentialFor(tampered, "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB"), StoreLoginError);
  assert.throws(() => credentialFor(tampered, null), StoreLoginError);
});
