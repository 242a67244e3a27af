// Talking to the cluster's other nodes over their control-plane port (cluster.remotesapi):
// every request carries this node's role and epoch (Dolt's x-dolt-cluster-role headers) and a
// token signed with this process's key for that peer's current key (auth.ts).
//
//   POST <base>/cluster/heartbeat   roles both ways, and the peer's WAL positions
//   GET  <base>/cluster/store       upgraded to a byte stream to the peer's store (tunnel.ts)
//   GET  <base>/.well-known/jwks.json   the peer's public key (no token)
//
// <base> is the peer's remote_url_template with "{database}" taken out, as Dolt derives its
// JWKS URL from it.
import http from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { z } from "zod";
import type { NodeKey, PeerKeys } from "./auth.ts";
import type { VoteRequest } from "./failover.ts";
import type { outboundTlsOptions } from "./peer-tls.ts";
import { describeTlsError } from "./peer-tls.ts";
import type { Role, RoleState } from "./roles.ts";

export const ROLE_HEADER = "x-dolt-cluster-role";
export const EPOCH_HEADER = "x-dolt-cluster-role-epoch";
/** The Upgrade protocol name of a store tunnel. */
export const TUNNEL_PROTOCOL = "strata-store";
const REQUEST_TIMEOUT_MS = 5_000;

export interface PeerEndpoint {
  name: string;
  /** The peer's control-plane base URL (ends with /). */
  base: URL;
  /** Its remote_url_template, as configured. */
  template: string;
}

export function peerEndpoint(remote: { name: string; remote_url_template: string }): PeerEndpoint {
  const base = new URL(remote.remote_url_template.replace("{database}", ""));
  if (!base.pathname.endsWith("/")) base.pathname += "/";
  return { name: remote.name, base, template: remote.remote_url_template };
}

/** What a node says about itself in a heartbeat (both the request and the reply). */
export interface Heartbeat {
  role: Role;
  epoch: number;
  node_id: string;
  /** Its store: in recovery (a standby), and its WAL positions (pg_lsn text), when it is running. */
  store?: { in_recovery: boolean; current_lsn?: string; replay_lsn?: string; timeline?: number };
  /** A standby: ms since its last heartbeat with a primary at its epoch or later (failover.ts). */
  primary_contact_ms?: number;
}

/** The largest answer read from a peer. */
const MAX_ANSWER = 64 * 1024;
/** Epochs are counters of failovers: a value past this is not a peer's. */
const MAX_EPOCH = 1_000_000_000;
const epochValue = z.number().int().min(0).max(MAX_EPOCH);
const lsnText = z.string().regex(/^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/i);
const heartbeatSchema = z.object({
  role: z.enum(["primary", "standby", "detected_broken_config"]),
  epoch: epochValue,
  node_id: z.string().min(1).max(100),
  store: z
    .object({
      in_recovery: z.boolean(),
      current_lsn: lsnText.optional(),
      replay_lsn: lsnText.optional(),
      timeline: z.number().int().optional(),
    })
    .optional(),
  primary_contact_ms: z.number().min(0).optional(),
});

/** A heartbeat as a peer sent it, checked: a malformed one is refused, never acted on. */
export const parseHeartbeat = (body: string): Heartbeat => parseChecked(body, heartbeatSchema, "heartbeat");

const voteRequestSchema = z.object({
  epoch: epochValue,
  node_id: z.string().min(1).max(100),
  replay_lsn: lsnText,
});
const voteAnswerSchema = z.object({ granted: z.boolean(), reason: z.string().optional() });

function parseChecked<T>(body: string, schema: z.ZodType<T>, what: string): T {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new Error(`the ${what} is not JSON`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success)
    throw new Error(
      `the ${what} is malformed (${parsed.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; ")})`,
    );
  return parsed.data;
}

export const parseVoteRequest = (body: string): VoteRequest =>
  parseChecked(body, voteRequestSchema, "vote request");

/** A peer refused a request: the HTTP status and its reason. */
export class PeerRefusal extends Error {
  constructor(
    readonly peer: string,
    readonly status: number,
    readonly reason: string,
    readonly peerRole?: RoleState,
    /** The peer's machine-readable cause, e.g. "audience" (auth.ts ClusterAuthReason). */
    readonly code?: string,
  ) {
    super(`${peer} refused: ${reason}`);
  }
}

export class PeerClient {
  private readonly agent: http.Agent;

  constructor(
    readonly peer: PeerEndpoint,
    private readonly key: NodeKey,
    private readonly peerKeys: PeerKeys,
    private readonly tls: ReturnType<typeof outboundTlsOptions>,
    private readonly self: () => RoleState,
  ) {
    this.agent =
      peer.base.protocol === "https:"
        ? new https.Agent({ keepAlive: true, maxSockets: 4, ...tls })
        : new http.Agent({ keepAlive: true, maxSockets: 4 });
  }

  close(): void {
    this.agent.destroy();
  }

  /** Ask for the peer's vote in an automatic failover (failover.ts). */
  async requestVote(request: VoteRequest): Promise<{ granted: boolean; reason?: string }> {
    const body = await this.request("POST", "cluster/vote", JSON.stringify(request));
    return parseChecked(body, voteAnswerSchema, "vote");
  }

  /** Exchange heartbeats: resolves to the peer's. */
  async heartbeat(mine: Heartbeat): Promise<Heartbeat> {
    const body = await this.request("POST", "cluster/heartbeat", JSON.stringify(mine));
    return parseHeartbeat(body);
  }

  /** A byte stream to the peer's store (it must be primary), for a walreceiver, pg_basebackup or pg_rewind. */
  openTunnel(): Promise<Socket> {
    return this.withFreshKey(async () => {
      const req = this.requestFor("GET", "cluster/store", await this.headers(), false);
      req.setHeader("connection", "Upgrade");
      req.setHeader("upgrade", TUNNEL_PROTOCOL);
      return new Promise<Socket>((resolveOpen, reject) => {
        req.once("upgrade", (_res, socket, head) => {
          req.setTimeout(0);
          socket.setTimeout(0);
          socket.setNoDelay(true);
          if (head.length > 0) socket.unshift(head);
          resolveOpen(socket);
        });
        req.once("response", (res) => this.refusal(res).then(reject, reject));
        req.once("error", (err) => reject(this.networkError(err)));
        req.end();
      });
    });
  }

  private async request(method: string, path: string, body?: string): Promise<string> {
    return this.withFreshKey(async () => {
      const req = this.requestFor(method, path, await this.headers(), true);
      return new Promise<string>((resolveRequest, reject) => {
        req.once("response", (res) => {
          if (res.statusCode !== 200) {
            this.refusal(res).then(reject, reject);
            return;
          }
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (chunk: string) => {
            text += chunk;
            // Heartbeats and votes are small: a peer sending more is not answering as a peer.
            if (text.length > MAX_ANSWER) {
              res.destroy();
              reject(new Error(`the peer's answer is larger than ${MAX_ANSWER} bytes`));
            }
          });
          res.on("end", () => resolveRequest(text));
          res.on("error", (err) => reject(this.networkError(err)));
        });
        req.once("error", (err) => reject(this.networkError(err)));
        req.end(body);
      });
    });
  }

  /** A peer that restarted has a new key: our token's audience was its old one. Fetch, try once more. */
  private async withFreshKey<T>(attempt: () => Promise<T>): Promise<T> {
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof PeerRefusal) || err.status !== 401 || err.code !== "audience") throw err;
      await this.peerKeys.refresh(this.peer.name);
      return attempt();
    }
  }

  private async headers(): Promise<Record<string, string>> {
    const token = await this.key.sign(await this.peerKeys.peerKid(this.peer.name));
    const { role, epoch } = this.self();
    return { authorization: `Bearer ${token}`, [ROLE_HEADER]: role, [EPOCH_HEADER]: String(epoch) };
  }

  private requestFor(method: string, path: string, headers: Record<string, string>, pooled: boolean) {
    const url = new URL(path, this.peer.base);
    const options = {
      method,
      headers: { ...headers, "content-type": "application/json" },
      timeout: REQUEST_TIMEOUT_MS,
      agent: pooled ? this.agent : false,
    };
    const req =
      url.protocol === "https:"
        ? https.request(url, { ...options, ...(pooled ? {} : this.tls) })
        : http.request(url, options);
    req.once("timeout", () =>
      req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s from ${this.peer.base.origin}`)),
    );
    return req;
  }

  private async refusal(res: http.IncomingMessage): Promise<PeerRefusal> {
    let text = "";
    res.setEncoding("utf8");
    for await (const chunk of res) text += chunk;
    let reason = text;
    let code: string | undefined;
    try {
      const body = JSON.parse(text) as { error?: string; code?: string };
      reason = body.error ?? text;
      code = body.code;
    } catch {}
    const role = res.headers[ROLE_HEADER];
    const epoch = Number(res.headers[EPOCH_HEADER]);
    const peerRole =
      typeof role === "string" && Number.isSafeInteger(epoch) ? ({ role, epoch } as RoleState) : undefined;
    return new PeerRefusal(
      this.peer.name,
      res.statusCode ?? 0,
      reason || `HTTP ${res.statusCode}`,
      peerRole,
      code,
    );
  }

  private networkError(err: Error): Error {
    const reason = describeTlsError(err);
    return new Error(`cannot reach ${this.peer.name} at ${this.peer.base.origin}: ${reason}`);
  }
}
