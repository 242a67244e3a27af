// The startup phase of one client connection, before anything reaches the store:
//
//   [GSSENCRequest → 'N'] [SSLRequest → 'S' + TLS handshake | 'N'] StartupMessage | CancelRequest
//
// It ends with the StartupMessage (to be forwarded), a CancelRequest (to be forwarded on its own
// connection), or the connection closed: bad bytes get a FATAL ErrorResponse, as Postgres sends
// for a bad startup packet, and nothing here can outlive STARTUP_TIMEOUT_MS (Postgres's
// authentication_timeout), so a client that connects and says nothing does not hold a socket.
import type { Socket } from "node:net";
import { type SecureContext, TLSSocket } from "node:tls";
import type { Logger } from "../log.ts";
import {
  ACCEPT_SSL,
  encodeErrorResponse,
  ProtocolError,
  REFUSE_ENCRYPTION,
  type StartupPacket,
  StartupReader,
} from "./wire.ts";

const STARTUP_TIMEOUT_MS = 60_000;

const ignore = () => {};

export type StartupOutcome =
  | {
      kind: "startup";
      /** The client's socket from now on: the TLS socket when TLS was negotiated. */
      socket: Socket;
      tls: boolean;
      packet: Extract<StartupPacket, { kind: "startup" }>;
      /** Bytes the client sent after its StartupMessage. */
      rest: Buffer;
    }
  | { kind: "cancel"; packet: Extract<StartupPacket, { kind: "cancel" }> }
  | { kind: "closed" };

export function negotiateStartup(
  client: Socket,
  tlsContext: SecureContext | undefined,
  log: Logger,
): Promise<StartupOutcome> {
  return new Promise((resolveOutcome) => {
    const reader = new StartupReader();
    let socket: Socket = client;
    let tls = false;
    let settled = false;
    const timer = setTimeout(() => {
      log.debug({ remote: client.remoteAddress }, "front door: no startup packet in time; closing");
      finish({ kind: "closed" });
      socket.destroy();
    }, STARTUP_TIMEOUT_MS);
    timer.unref();

    const finish = (outcome: StartupOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off("data", onData).off("close", onClose).off("error", onError);
      if (outcome.kind !== "closed") socket.pause();
      resolveOutcome(outcome);
    };
    const onClose = () => finish({ kind: "closed" });
    const onError = (err: Error) => {
      log.debug(
        { remote: client.remoteAddress, err: err.message },
        "front door: client error during startup",
      );
      finish({ kind: "closed" });
      socket.destroy();
    };
    const refuse = (err: ProtocolError) => {
      log.warn(
        { remote: client.remoteAddress, err: err.message },
        "front door: refused a connection that does not speak the Postgres protocol",
      );
      finish({ kind: "closed" });
      socket.end(encodeErrorResponse({ severity: "FATAL", code: err.code, message: err.message }));
      // A peer that never reads must not keep the socket: end() waits for it to drain.
      setTimeout(() => socket.destroy(), 1000).unref();
    };

    const upgrade = (context: SecureContext) => {
      socket.off("data", onData).off("close", onClose).off("error", onError);
      const secure = new TLSSocket(socket, { isServer: true, secureContext: context });
      secure.on("error", ignore); // as on every socket: an 'error' without a listener ends the process
      socket = secure;
      tls = true;
      secure.on("data", onData).on("close", onClose).on("error", onError);
    };

    const onData = (chunk: Buffer) => {
      reader.push(chunk);
      try {
        for (let packet = reader.next(); packet && !settled; packet = reader.next()) {
          switch (packet.kind) {
            case "ssl-request":
              if (tls) throw new ProtocolError("SSLRequest received on a connection that already uses TLS");
              if (reader.rest().length > 0) {
                // Bytes sent in clear before the handshake would be taken as if they came over
                // TLS (CVE-2021-23214): Postgres refuses them too.
                throw new ProtocolError("received unencrypted data after SSL request");
              }
              socket.write(tlsContext ? ACCEPT_SSL : REFUSE_ENCRYPTION);
              if (tlsContext) upgrade(tlsContext);
              break;
            case "gssenc-request":
              if (tls)
                throw new ProtocolError("GSSENCRequest received on a connection that already uses TLS");
              socket.write(REFUSE_ENCRYPTION);
              break;
            case "cancel":
              finish({ kind: "cancel", packet });
              break;
            case "startup":
              finish({ kind: "startup", socket, tls, packet, rest: reader.rest() });
              break;
            default: {
              const unexpected: never = packet;
              throw new ProtocolError(`unexpected startup packet ${JSON.stringify(unexpected)}`);
            }
          }
        }
      } catch (err) {
        if (err instanceof ProtocolError) refuse(err);
        else throw err;
      }
    };
    socket.on("data", onData).on("close", onClose).on("error", onError);
  });
}
