/**
 * The optimd client: one method per protocol op, each a promise of the op's
 * typed result.
 *
 * Concurrency: a REQ connection carries one request at a time, so the
 * client keeps a small pool of connections (`maxConnections`, default 4)
 * and calls made without awaiting the previous one travel in parallel. Two
 * such calls on one session may then reach the daemon in either order;
 * await each `step` before the next when order matters. A sliced step
 * (`step` with `partElements`) keeps several parts in flight the same way,
 * on several connections.
 */
import { randomBytes } from "node:crypto";
import { ProtocolError, TimeoutError, TransportError } from "./errors.js";
import { ReqSocket, type TlsOptions } from "./sp.js";
import type { Tensor } from "./tensor.js";
import {
  type AbandonStepResult,
  type Hello,
  type HparamMap,
  type HparamsResult,
  type ImportOptions,
  type ImportResult,
  type ObserveOptions,
  type ObserveResult,
  type JoinResult,
  type LeaveResult,
  type OpenOptions,
  type OpenResult,
  type Op,
  type PartGrad,
  type PluginInfo,
  type PluginLoad,
  type PullOptions,
  type Request,
  type RegisterOptions,
  type Results,
  type SetHparamsOptions,
  type SessionInfo,
  type SessionRef,
  type SessionSummary,
  type StepOptions,
  type StepPartOptions,
  type StepPartResult,
  type StepResult,
  type SwitchOptions,
  type SwitchResult,
  encodeRequest,
  parseReply,
  requests,
} from "./wire.js";

/** A fresh random `open_key` (32 hex characters) for one open and its retries. */
export function newOpenKey(): string {
  return randomBytes(16).toString("hex");
}

export interface ClientOptions {
  /** Default limit for one call, connecting included, in ms (default
   * 60000; 0: none). */
  timeoutMs?: number;
  /** Most connections, hence most requests in flight (default 4). */
  maxConnections?: number;
  /** Largest reply accepted in bytes (default 0: no limit, as protocol.md
   * §1 advises for tensor replies). */
  maxReplyBytes?: number;
  /** TLS settings, required for a `tls+tcp://` URL (see `tlsFromFiles`). */
  tls?: TlsOptions;
}

export interface CallOptions {
  /** This call's limit in ms, overriding the client's `timeoutMs`. */
  timeoutMs?: number;
}

export class Client {
  readonly url: string;
  private readonly timeoutMs: number;
  private readonly maxConnections: number;
  private readonly maxReplyBytes: number;
  private readonly tls: TlsOptions | undefined;
  private readonly idle: ReqSocket[] = [];
  private readonly waiters: Array<(s: ReqSocket | undefined) => void> = [];
  private open_ = 0; // connections made or being made
  private nextId = 1;
  private closed = false;

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url;
    this.timeoutMs = options.timeoutMs ?? 60000;
    this.maxConnections = Math.max(1, options.maxConnections ?? 4);
    this.maxReplyBytes = options.maxReplyBytes ?? 0;
    this.tls = options.tls;
  }

  /** Sends a built request and returns the parsed result. Every op method
   * goes through here. */
  async call<O extends Op>(req: Request<O>, options: CallOptions = {}): Promise<Results[O]> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : 0;
    const id = this.nextId;
    this.nextId = this.nextId >= Number.MAX_SAFE_INTEGER ? 1 : this.nextId + 1;
    const body = encodeRequest(req, id);
    const socket = await this.acquire(deadline);
    let reply: Buffer;
    try {
      const left = deadline > 0 ? Math.max(1, deadline - Date.now()) : 0;
      reply = await socket.request(body, left);
    } catch (err) {
      // A timed-out or failed connection is dropped: a late reply would only
      // be discarded, and a fresh connection costs one round trip.
      socket.close();
      this.release(socket);
      throw err;
    }
    this.release(socket);
    return parseReply(req.op, reply, id);
  }

  /** Closes every connection; calls after this fail. */
  close(): void {
    this.closed = true;
    for (const s of this.idle.splice(0)) s.close();
    for (const w of this.waiters.splice(0)) w(undefined);
  }

  private async acquire(deadline: number): Promise<ReqSocket> {
    for (;;) {
      if (this.closed) throw new TransportError("the client is closed");
      const s = this.idle.pop();
      if (s) {
        if (s.usable) return s;
        this.open_--;
        continue;
      }
      if (this.open_ < this.maxConnections) {
        this.open_++;
        try {
          const left = deadline > 0 ? Math.max(1, deadline - Date.now()) : 0;
          return await ReqSocket.dial(this.url, left, {
            maxRecvSize: this.maxReplyBytes,
            ...(this.tls ? { tls: this.tls } : {}),
          });
        } catch (err) {
          this.open_--;
          this.wakeOne();
          throw err;
        }
      }
      const handed = await new Promise<ReqSocket | undefined>((resolve) => this.waiters.push(resolve));
      if (handed) return handed;
    }
  }

  private release(s: ReqSocket): void {
    if (!s.usable) {
      this.open_--;
      this.wakeOne();
      return;
    }
    if (this.closed) {
      s.close();
      return;
    }
    const w = this.waiters.shift();
    if (w) w(s);
    else this.idle.push(s);
  }

  /** A waiter may now dial a connection of its own. */
  private wakeOne(): void {
    const w = this.waiters.shift();
    if (w) w(undefined);
  }

  // ------------------------------------------------------------- the ops

  hello(opts: { client?: string } = {}, call?: CallOptions): Promise<Hello> {
    return this.call(requests.hello(opts), call);
  }

  async plugins(call?: CallOptions): Promise<PluginInfo[]> {
    return (await this.call(requests.plugins(), call)).plugins;
  }

  /** Creates a session; the result (`session`, `token`, `lr`, `existing`)
   * is the SessionRef every later session call takes. To retry an open whose
   * reply was lost, send the same `open_key` again. */
  open(session: string, optimizer: string, opts: OpenOptions = {}, call?: CallOptions): Promise<OpenResult> {
    return this.call(requests.open(session, optimizer, opts), call);
  }

  attach(s: SessionRef, call?: CallOptions): Promise<SessionInfo> {
    return this.call(requests.attach(s), call);
  }

  info(s: SessionRef, opts: { client?: string } = {}, call?: CallOptions): Promise<SessionInfo> {
    return this.call(requests.info(s, opts), call);
  }

  hparams(s: SessionRef, call?: CallOptions): Promise<HparamsResult> {
    return this.call(requests.hparams(s), call);
  }

  /** Changes mutable hyperparameters of one group (`group`) or of all. */
  setHparams(s: SessionRef, hparams: HparamMap, opts: SetHparamsOptions = {}, call?: CallOptions): Promise<HparamsResult> {
    return this.call(requests.setHparams(s, hparams, opts), call);
  }

  /** The `close` op: deletes the session and its files. (`close()` closes
   * the client's connections.) */
  async closeSession(s: SessionRef, call?: CallOptions): Promise<void> {
    await this.call(requests.close(s), call);
  }

  async sessions(call?: CallOptions): Promise<SessionSummary[]> {
    return (await this.call(requests.sessions(), call)).sessions;
  }

  /** Registers parameters into a group (default "default"); resolves with
   * how many were registered. */
  async register(s: SessionRef, params: Record<string, Tensor>, opts: RegisterOptions = {}, call?: CallOptions): Promise<number> {
    return (await this.call(requests.register(s, params, opts), call)).registered;
  }

  /**
   * One optimizer step with `grads` (a subset of the registered parameters,
   * each with its parameter's dtype and shape).
   *
   * **Sliced** (`partElements`): the step goes as several `step` messages
   * (docs/protocol.md, `step`, "Sliced steps"), so that the daemon updates
   * one part while the next is on the wire. The gradients, in the order of
   * their keys, are cut into parts of `partElements` elements
   * ({@link sliceGrads}: small tensors whole, the ones a cut crosses as
   * ranges viewing their data). A REQ connection carries one request at a
   * time, so the parts in flight go on separate connections of the
   * client's pool: up to `partsInFlight` (default 2) at once, and never
   * more than `maxConnections`; each part is encoded when it is sent. The
   * result is that of the same step sent whole, bit for bit: counters and
   * lrs from the part that completed the step, `params` assembled from
   * every part's reply into fresh arrays of the gradients' shapes
   * (`duplicate` when every part was one). The call's `timeoutMs` bounds
   * the whole step. A sliced step needs `seq` and cannot go with
   * `clip_norm` or `worker` (TypeError, nothing sent); a session with
   * workers or Lookahead, or an optimizer that is not element-wise
   * (`PluginInfo.sliced`), refuses it with ServerError BAD_REQUEST.
   *
   * A part that fails stops the sending: the call rejects with its error
   * once the parts in flight are answered. Parts applied before it stay
   * applied and the session has a *pending* step that refuses other steps
   * and changes (ServerError STEP_PENDING, `info(s).pending_step`) until
   * it is complete. To complete it, send the same step again: same `seq`,
   * `client`, gradients (keys in the same order) and `partElements`, so
   * that it is cut into the same parts; the parts already applied answer
   * as duplicates and the others are applied, so the step completes exactly
   * once (when it had completed before, every part is a duplicate and so is
   * the result). A client that lost the gradients ends it with
   * {@link abandonStep}.
   */
  step(s: SessionRef, grads: Record<string, Tensor>, opts: StepOptions = {}, call?: CallOptions): Promise<StepResult> {
    if (opts.partElements !== undefined) {
      const window = opts.partsInFlight ?? 2;
      if (!Number.isSafeInteger(window) || window < 1) throw new RangeError("partsInFlight must be an integer >= 1");
      const parts = requests.stepParts(s, grads, opts);
      return this.slicedStep(parts, grads, opts.return !== false, window, call);
    }
    return this.call(requests.step(s, grads, opts), call);
  }

  /** Sends one part of a sliced step (docs/protocol.md, `step`, "Sliced
   * steps"), for a caller that cuts its own parts ({@link sliceGrads} cuts
   * them as `step` does): part `index` of `count` of step `seq` of
   * `client`. Each gradient is a whole tensor or a range `{offset, values}`
   * (`values` 1-D, the parameter's dtype: the gradient of elements `offset`
   * on, in C order). The daemon checks that the parts fit together (no
   * element twice; none missing when the last one arrives: BAD_REQUEST,
   * that part not applied, so it can be sent again corrected). A part
   * applied before answers `duplicate: true` with the current values. */
  stepPart(s: SessionRef, grads: Record<string, PartGrad>, opts: StepPartOptions, call?: CallOptions): Promise<StepPartResult> {
    return this.call(requests.stepPart(s, grads, opts), call);
  }

  /** Ends the session's pending sliced step (`info(s).pending_step`, sent
   * as `seq` by `client`, default "") as it stands, for a client that
   * cannot send its remaining parts: the elements its parts updated stay
   * updated, the others do not, and it counts as a step (its other parts
   * are duplicates from now on). A way to unblock a session, not to step.
   * No pending step, or another seq/client: ServerError BAD_REQUEST. */
  abandonStep(s: SessionRef, seq: number, client?: string, call?: CallOptions): Promise<AbandonStepResult> {
    return this.call(requests.abandonStep(s, seq, client), call);
  }

  private async slicedStep(parts: Array<Request<"step_part">>, grads: Record<string, Tensor>, wantParams: boolean,
                           window: number, call?: CallOptions): Promise<StepResult> {
    const timeoutMs = call?.timeoutMs ?? this.timeoutMs;
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : 0;
    // The parameters' new values, filled in as the parts' replies come.
    const out: Record<string, Tensor> = {};
    const filled: Record<string, number> = {};
    if (wantParams) {
      for (const [name, g] of Object.entries(grads)) {
        out[name] = g.dtype === "f32"
          ? { dtype: "f32", shape: [...g.shape], data: new Float32Array(g.data.length) }
          : { dtype: "f64", shape: [...g.shape], data: new Float64Array(g.data.length) };
        filled[name] = 0;
      }
    }
    const assemble = (r: StepPartResult) => {
      if (!wantParams) return;
      for (const [name, { offset, values }] of Object.entries(r.params ?? {})) {
        const t = Object.prototype.hasOwnProperty.call(out, name) ? out[name] : undefined;
        if (!t || t.dtype !== values.dtype || offset + values.data.length > t.data.length) {
          throw new ProtocolError(`sliced step: '${name}' came back as ${values.data.length} ${values.dtype} ` +
                                  `elements at offset ${offset}`);
        }
        t.data.set(values.data, offset);
        filled[name]! += values.data.length;
      }
    };

    const replies: StepPartResult[] = [];
    let next = 0;
    let failure: { err: unknown } | undefined;
    const sender = async () => {
      while (failure === undefined && next < parts.length) {
        const i = next++;
        try {
          const left = deadline > 0 ? deadline - Date.now() : 0;
          if (deadline > 0 && left <= 0) throw new TimeoutError(`sliced step: no time left for part ${i} of ${parts.length}`);
          const r = await this.call(parts[i]!, { timeoutMs: left });
          assemble(r);
          replies[i] = r;
        } catch (err) {
          failure ??= { err };
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, parts.length) }, sender));
    if (failure) throw failure.err;

    // The part that completed the step (a retry of a complete step has
    // only duplicates, whose counters are the step's: then the last).
    const done = replies.filter((r) => r.complete);
    const final = [...done].reverse().find((r) => !r.duplicate) ?? done[done.length - 1];
    if (!final) throw new ProtocolError(`sliced step: no part of ${parts.length} reported the step complete`);
    for (const [name, t] of Object.entries(out)) {
      if (filled[name] !== t.data.length) {
        throw new ProtocolError(`sliced step: the replies held ${filled[name]} of the ${t.data.length} elements of '${name}'`);
      }
    }
    const result: StepResult = { steps: final.steps, lr: final.lr, next_lr: final.next_lr,
                                 duplicate: replies.every((r) => r.duplicate) };
    if (final.lrs) result.lrs = final.lrs;
    if (final.next_lrs) result.next_lrs = final.next_lrs;
    if (wantParams) result.params = out;
    return result;
  }

  /** Reports a metric to the schedulers that take one (`plateau`). */
  observe(s: SessionRef, metric: number, opts: ObserveOptions = {}, call?: CallOptions): Promise<ObserveResult> {
    return this.call(requests.observe(s, metric, opts), call);
  }

  async pull(s: SessionRef, names?: readonly string[], call?: CallOptions): Promise<Record<string, Tensor>> {
    return (await this.call(requests.pull(s, names), call)).params;
  }

  /** `pull` as member `worker` of a session with workers: its staleness
   * starts again from 0 (UNKNOWN_WORKER if it is not a member). */
  async pullAsWorker(s: SessionRef, worker: string, names?: readonly string[], call?: CallOptions): Promise<Record<string, Tensor>> {
    const opts: PullOptions = { worker };
    return (await this.call(requests.pull(s, names, opts), call)).params;
  }

  /** Makes `worker` (1 to 64 bytes) a member of a session opened with
   * `workers`, at the lowest free rank; joining again changes nothing. A
   * session without workers rejects with ServerError BAD_REQUEST.
   *
   * Every push (`step` with `worker`) of a sync session waits for its
   * round, and a bounded worker too far ahead waits for the slowest member,
   * each up to the session's `timeout_ms` (60 s by default, as is this
   * client's `timeoutMs`): give pushes a longer `timeoutMs` (the client's,
   * or the call's). A call that gives up closes its connection and leaves
   * the push counted on the daemon; the client never resends. Retry a push
   * with the same `seq` and `client`: a retry of one still waiting takes
   * its place, one whose round was applied is answered as a duplicate. A
   * waiting push holds one of the client's `maxConnections`. */
  join(s: SessionRef, worker: string, call?: CallOptions): Promise<JoinResult> {
    return this.call(requests.join(s, worker), call);
  }

  /** Removes `worker` (UNKNOWN_WORKER if it is not a member); a push of it
   * that waits is answered UNKNOWN_WORKER. */
  leave(s: SessionRef, worker: string, call?: CallOptions): Promise<LeaveResult> {
    return this.call(requests.leave(s, worker), call);
  }

  async state(s: SessionRef, names?: readonly string[], call?: CallOptions): Promise<Record<string, Record<string, Tensor>>> {
    return (await this.call(requests.state(s, names), call)).state;
  }

  /** The session as one safetensors file (protocol.md `export`). */
  async export(s: SessionRef, call?: CallOptions): Promise<Uint8Array> {
    return (await this.call(requests.export(s), call)).snapshot;
  }

  /** Creates a session from an exported snapshot; it gets a new token. */
  import(snapshot: Uint8Array, opts: ImportOptions = {}, call?: CallOptions): Promise<ImportResult> {
    return this.call(requests.import(snapshot, opts), call);
  }

  /** Moves the session to another optimizer plugin between two steps,
   * keeping the hyperparameters and state slots the two share (`carried`);
   * steps, parameters, groups and schedules go on. All or nothing. */
  switch(s: SessionRef, optimizer: string, opts: SwitchOptions = {}, call?: CallOptions): Promise<SwitchResult> {
    return this.call(requests.switch(s, optimizer, opts), call);
  }

  /** Admin (the daemon's `--admin-token`): rescans the plugin directories
   * and hot-swaps every new or changed plugin file; one entry per file
   * tried. A wrong token rejects with ServerError BAD_TOKEN. */
  async reload(adminToken: string, call?: CallOptions): Promise<PluginLoad[]> {
    return (await this.call(requests.reload(adminToken), call)).plugins;
  }

  /** Admin: loads the plugin file at `path` (on the daemon's machine) as
   * `reload` loads a changed one; a refused file is ServerError PLUGIN. */
  async load(path: string, adminToken: string, call?: CallOptions): Promise<PluginLoad[]> {
    return (await this.call(requests.load(path, adminToken), call)).plugins;
  }

  /** Admin: closes the session named `session` as `closeSession` does,
   * without its token (one whose token was lost); an unknown name rejects
   * with ServerError UNKNOWN_SESSION. */
  async drop(session: string, adminToken: string, call?: CallOptions): Promise<void> {
    await this.call(requests.drop(session, adminToken), call);
  }

  /** Admin: stops the daemon as SIGTERM does; it answers, finishes the
   * requests being applied, snapshots changed sessions and exits 0. */
  async shutdown(adminToken: string, call?: CallOptions): Promise<void> {
    await this.call(requests.shutdown(adminToken), call);
  }
}
