/**
 * The message layer of protocol 1 (docs/protocol.md §2-§4): building
 * requests and checking replies, with no I/O, so that both can be used and
 * tested without a socket.
 *
 * Results keep the protocol's key names (`next_lr`, `max_message`, ...):
 * a result is the reply map without its envelope (`v`, `id`, `ok`), each
 * key checked for its type. Keys a reply has beyond the op's are ignored,
 * so a newer daemon's additions do not break this client.
 */
import { DecodeError, Decoder, Encoder } from "@msgpack/msgpack";
import { ProtocolError, ServerError } from "./errors.js";
import { type Dtype, type Tensor, checkTensor, decodeTensor, encodeTensor } from "./tensor.js";

export const PROTOCOL_VERSION = 1;

export type HparamValue = number | boolean;
export type HparamMap = Record<string, HparamValue>;
export type Durability = "always" | "interval" | "none";

/** A session's name and the token `open` (or `import`) returned; the
 * results of both can be passed wherever a SessionRef is asked for. */
export interface SessionRef {
  session: string;
  token: string;
}

// ---------------------------------------------------------------- results

export interface Hello {
  server: string;
  version: string;
  protocol: number;
  abi: [number, number];
  max_message: number;
}

export interface HparamDecl {
  key: string;
  type: "float" | "int" | "bool";
  required: boolean;
  mutable: boolean;
  min: number;
  max: number;
  min_exclusive: boolean;
  max_exclusive: boolean;
  default: HparamValue | null;
  doc: string;
}

/** A slot's shape rule (protocol.md `plugins`): the parameter's shape, one
 * element, or a factored statistic over the last two dimensions. Any other
 * string a newer daemon sends is passed through: clients must accept shapes
 * they do not know. */
export type SlotShape = "param" | "scalar" | "rows" | "cols" | (string & {});

export interface SlotDecl {
  key: string;
  dtype: "param" | "f32" | "f64";
  shape: SlotShape;
  enabled_by: string | null;
  doc: string;
}

export interface PluginInfo {
  id: string;
  kind: "optimizer" | "scheduler";
  version: string;
  description: string;
  hparams: HparamDecl[];
  /** Optimizers only (absent when the reply has none). */
  slots?: SlotDecl[];
  /** Optimizers only (absent when the reply has none). */
  dtypes?: Dtype[];
  /** Optimizers only: its steps may be sent in parts (sliced steps, docs/protocol.md). */
  sliced?: boolean;
}

export interface PluginsResult {
  plugins: PluginInfo[];
}

export interface OpenResult extends SessionRef {
  lr: number;
  /** True when a session made by an earlier open with the same `open_key`
   * answered (a retried open), false for a new session. */
  existing: boolean;
}

/** One scheduler of a combined schedule (`scheduler: "sequential"` or
 * `"chained"`). */
export interface SchedulerSpec {
  /** A scheduler plugin id. */
  scheduler: string;
  sched_hparams?: HparamMap;
}

/** A combined schedule as the daemon reports it: each part with every
 * hyperparameter. */
export interface SchedulerPart {
  scheduler: string;
  sched_hparams: HparamMap;
}

/** Lookahead around the optimizer (Zhang et al. 2019): after every k-th
 * step of a parameter, `slow += alpha * (param - slow)` and the parameter
 * becomes `slow`. */
export interface Lookahead {
  k: number;
  alpha: number;
}

/** The keys a combined schedule adds to a group (or the top level of
 * `info`): present only when its scheduler is "sequential" or "chained". */
export interface CombinedSchedule {
  schedulers?: SchedulerPart[];
  /** Sequential only: the epoch at which each scheduler after the first starts. */
  milestones?: number[];
}

/** One parameter group (torch's param_groups entry) as the daemon reports it. */
export interface GroupInfo extends CombinedSchedule {
  name: string;
  /** A plugin id, "sequential" or "chained" (see `schedulers`), or null. */
  scheduler: string | null;
  hparams: HparamMap;
  sched_hparams: HparamMap;
  base_lr: number;
  /** The lr this group's next step will use. */
  lr: number;
  /** How many parameters are in the group. */
  params: number;
}

export interface HparamsResult {
  /** The top-level `hparams`, `sched_hparams`, `base_lr` and `lr` are the
   * default group's; `groups` has every group, "default" first. */
  hparams: HparamMap;
  sched_hparams: HparamMap;
  base_lr: number;
  lr: number;
  groups: GroupInfo[];
}

export interface ParamInfo {
  name: string;
  group: string;
  dtype: Dtype;
  shape: number[];
  steps: number;
}

/** How a session's workers push (protocol.md, open's `workers`). */
export type WorkersMode = "sync" | "async" | "bounded";

/** `open`'s `workers`: a key left out takes the daemon's default; a key
 * that does not belong to the mode is refused (BAD_REQUEST). In `info`,
 * `join` and `leave` replies every key of the mode is present. */
export interface Workers {
  /** `sync`: `count` pushes make a round, applied as one step with their
   * gradients summed in rank order (then averaged for `mean`); `async`:
   * every push applies at once; `bounded`: as async, but a worker more than
   * `max_staleness` pushes ahead of the slowest member waits for it. */
  mode: WorkersMode;
  /** Sync (required): the pushes a round combines, and the most workers. */
  count?: number;
  /** Sync: "mean" (the default) or "sum". */
  reduce?: "mean" | "sum";
  /** Sync and bounded: 1 to 86,400,000 (default 60,000). A push may wait
   * this long: its call needs a longer `timeoutMs` (see `Client.join`). */
  timeout_ms?: number;
  /** Sync: "fail" (the default: waiting pushes get TIMEOUT) or "proceed"
   * (the round is applied with the pushes present). */
  on_timeout?: "fail" | "proceed";
  /** Bounded (default 0). */
  max_staleness?: number;
}

/** One member of a session's workers. */
export interface WorkerInfo {
  name: string;
  /** The order a sync round sums in, the lowest first. */
  rank: number;
  /** Its pushes applied so far (from 0 again after a restart). */
  pushes: number;
  /** The steps the session took since the parameters it last received. */
  staleness: number;
  /** A push of it waits (for its round, or for the slowest member). */
  waiting: boolean;
}

/** A session's workers as `info`, `join` and `leave` report them: the
 * settings, the members in rank order and, for sync, the pushes the round
 * in progress has. */
export interface WorkersInfo extends Workers {
  members: WorkerInfo[];
  round_pushes?: number;
}

export interface JoinResult {
  /** The worker's rank: the lowest free one. */
  rank: number;
  /** The session's step count. */
  steps: number;
  workers: WorkersInfo;
}

export interface LeaveResult {
  steps: number;
  workers: WorkersInfo;
}

export interface SessionInfo extends HparamsResult, CombinedSchedule {
  /** The session's Lookahead, or null when off. */
  lookahead: Lookahead | null;
  session: string;
  durability: Durability;
  optimizer: string;
  optimizer_version: string;
  scheduler: string | null;
  steps: number;
  params: ParamInfo[];
  /** Present when the request named a `client`. */
  client_seq?: number;
  /** Present for a session opened with `workers`. */
  workers?: WorkersInfo;
  /** Present while the session is in the middle of a sliced step. */
  pending_step?: PendingStep;
}

/** A sliced step that has not received all its parts (`info`'s
 * `pending_step`): the `client` and `seq` it was sent under, its number of
 * parts and how many of them were applied. Until the last part is in, the
 * session refuses other steps and changes with ServerError STEP_PENDING
 * (26); sending the step again with the same `seq` completes it, and
 * `Client.abandonStep` ends it as it stands. */
export interface PendingStep {
  client: string;
  seq: number;
  count: number;
  applied: number;
}

export type CloseResult = Record<string, never>;
/** The replies to the admin ops `drop` and `shutdown`: the envelope only. */
export type DropResult = Record<string, never>;
export type ShutdownResult = Record<string, never>;

export interface SessionSummary {
  session: string;
  optimizer: string;
  scheduler: string | null;
  params: number;
  steps: number;
}

export interface SessionsResult {
  sessions: SessionSummary[];
}

export interface RegisterResult {
  registered: number;
}

export interface StepResult {
  steps: number;
  /** The default group's lr for this step and the next. */
  lr: number;
  next_lr: number;
  duplicate: boolean;
  /** Every group's lr for this step and the next: present when the session
   * has more than one group and the step was applied (not a duplicate). */
  lrs?: Record<string, number>;
  next_lrs?: Record<string, number>;
  /** The total gradient norm before clipping: with `clip_norm` (not
   * per-group), not on a duplicate. */
  grad_norm?: number;
  /** Per group that had gradients: with `clip_norm.per_group`, not on a
   * duplicate. */
  grad_norms?: Record<string, number>;
  /** Absent when the step was sent with `return: false`. */
  params?: Record<string, Tensor>;
  /** A worker's push (sessions with workers): who pushed, its pushes
   * applied so far (this one included), and the steps the session took
   * since the parameters it last received (not counting this one). */
  worker?: string;
  pushes?: number;
  staleness?: number;
  /** Sync: the pushes the round combined. */
  combined?: number;
  /** Bounded: how many pushes it was ahead of the slowest member when
   * admitted, and whether it had to wait. */
  lead?: number;
  waited?: boolean;
}

/** A run of a parameter's elements in C (row-major) order, as sliced steps
 * carry them: `values`, a 1-D tensor of the parameter's dtype with n
 * elements, is the gradient (in a part) or the new value (in a part's
 * reply) of elements `offset` to `offset + n - 1`. */
export interface PartRange {
  offset: number;
  values: Tensor;
}

/** A gradient in one part of a sliced step: a whole tensor, as in a plain
 * step, or a {@link PartRange}. */
export type PartGrad = Tensor | PartRange;

/** The reply to one part of a sliced step (`Client.stepPart`). */
export interface StepPartResult {
  /** As in {@link StepResult}; until the step is complete `steps` does not
   * count it and `next_lr` equals `lr`. */
  steps: number;
  lr: number;
  next_lr: number;
  /** A part applied before (known by its index): `params` has the current
   * values. */
  duplicate: boolean;
  lrs?: Record<string, number>;
  next_lrs?: Record<string, number>;
  /** This part completed the step, or the step was complete before it. */
  complete: boolean;
  /** The step's parts applied so far. */
  parts: number;
  /** Each parameter the part named: the new values of the elements it
   * carried (a whole tensor in the reply comes as offset 0 and its
   * elements). Absent when the part was sent with `return: false`. */
  params?: Record<string, PartRange>;
}

/** The reply to `abandon_step`: the counters of a step reply (the
 * abandoned step counted) and the parts that had been applied. */
export interface AbandonStepResult {
  steps: number;
  lr: number;
  next_lr: number;
  duplicate: boolean;
  lrs?: Record<string, number>;
  next_lrs?: Record<string, number>;
  parts: number;
}

export interface ObserveResult {
  /** The next lr of the group named in the request, or of the default group. */
  lr: number;
  /** Every group's next lr. */
  lrs: Record<string, number>;
}

export interface PullResult {
  params: Record<string, Tensor>;
}

export interface StateResult {
  state: Record<string, Record<string, Tensor>>;
}

export interface ExportResult {
  snapshot: Uint8Array;
}

export interface ImportResult extends SessionRef {
  steps: number;
}

export interface SwitchResult {
  /** The optimizer the session now runs, and its version. */
  optimizer: string;
  optimizer_version: string;
  /** The state slot keys carried over (same key and layout); the new
   * optimizer's other slots start zero-filled. */
  carried: string[];
}

/** One plugin file a `reload` or `load` tried: loaded as the current
 * version of plugin `id`, or refused (the running version stays). */
export type PluginLoad =
  | { path: string; loaded: true; id: string; version: string }
  | { path: string; loaded: false; error: string };

export interface ReloadResult {
  plugins: PluginLoad[];
}

/** The result type of each op, and of `step_part`: a `step` request with a
 * `part` (a sliced step's part), whose reply has more keys ({@link wireOp}). */
export interface Results {
  hello: Hello;
  plugins: PluginsResult;
  open: OpenResult;
  attach: SessionInfo;
  info: SessionInfo;
  hparams: HparamsResult;
  set_hparams: HparamsResult;
  close: CloseResult;
  sessions: SessionsResult;
  register: RegisterResult;
  step: StepResult;
  observe: ObserveResult;
  pull: PullResult;
  state: StateResult;
  export: ExportResult;
  import: ImportResult;
  switch: SwitchResult;
  reload: ReloadResult;
  load: ReloadResult;
  drop: DropResult;
  shutdown: ShutdownResult;
  join: JoinResult;
  leave: LeaveResult;
  abandon_step: AbandonStepResult;
  step_part: StepPartResult;
}

export type Op = keyof Results;

/** The protocol's ops (`step_part`, a kind of `step`, is not one). */
export const OPS: readonly Op[] = [
  "hello", "plugins", "open", "attach", "info", "hparams", "set_hparams", "close",
  "sessions", "register", "step", "observe", "pull", "state", "export", "import",
  "switch", "reload", "load", "drop", "shutdown", "join", "leave", "abandon_step",
];

/** The op a request names on the wire: a sliced step's part is a `step`. */
export function wireOp(op: Op): string {
  return op === "step_part" ? "step" : op;
}

// --------------------------------------------------------------- requests

/** A request before encoding: the op and its keys (without the envelope). */
export interface Request<O extends Op = Op> {
  op: O;
  fields: Record<string, unknown>;
}

/** A parameter group besides "default" (protocol.md `open`). */
export interface GroupSpec {
  /** 1 to 64 bytes of `A-Z a-z 0-9 _ . -`, not "default". */
  name: string;
  /** Applied over the default group's hyperparameters: name only what differs. */
  hparams?: HparamMap;
  /** Absent: the default group's scheduler (its sched_hparams as the
   * starting point); null: none; an id: that scheduler with its defaults. */
  scheduler?: string | null;
  sched_hparams?: HparamMap;
  /** With `scheduler` "sequential" or "chained", as in {@link OpenOptions}. */
  schedulers?: readonly SchedulerSpec[];
  milestones?: readonly number[];
}

export interface OpenOptions {
  hparams?: HparamMap;
  /** A scheduler plugin id; or "sequential" (torch's SequentialLR) or
   * "chained" (ChainedScheduler), combining `schedulers`. */
  scheduler?: string | null;
  sched_hparams?: HparamMap;
  /** 2 to 8 schedulers that "sequential" or "chained" combine. */
  schedulers?: readonly SchedulerSpec[];
  /** Sequential only: rising positive epochs, one fewer than `schedulers`;
   * scheduler i runs from `milestones[i-1]`, restarted at its epoch 0. */
  milestones?: readonly number[];
  /** Wrap the optimizer in Lookahead; an absent key takes the daemon's
   * default (k 5, alpha 0.5). */
  lookahead?: Partial<Lookahead>;
  durability?: Durability;
  /** Groups besides "default", which the keys above configure. */
  groups?: readonly GroupSpec[];
  /** 16 to 64 printable ASCII characters, chosen at random per open
   * ({@link newOpenKey}) and sent with every attempt of it: a retry whose
   * first attempt created the session answers with it (`existing: true`)
   * instead of SESSION_EXISTS. A secret, like the token. */
  open_key?: string;
  /** A session that several workers push to (see `Client.join`). */
  workers?: Workers;
}

export interface ClipNorm {
  /** > 0. */
  max_norm: number;
  /** > 0, default 2; `Infinity` for the max norm. */
  norm_type?: number;
  /** Clip each group's gradients by their own norm (default false). */
  per_group?: boolean;
}

export interface StepOptions {
  /** Whether the reply carries the updated parameters (default true). */
  return?: boolean;
  /** Sequence number, 1 to 2^53, in `client`'s numbering (exactly-once). */
  seq?: number;
  /** Client id for `seq` (at most 64 bytes; default ""). */
  client?: string;
  /** Clamp every gradient element to [-clip_value, clip_value] (> 0). */
  clip_value?: number;
  /** Scale the gradients down to a total norm of at most `max_norm`
   * (torch's clip_grad_norm_); the reply then has `grad_norm` or `grad_norms`. */
  clip_norm?: ClipNorm;
  /** The member pushing, in a session with workers (where every step is a
   * push). A sync push resolves when its round is applied. */
  worker?: string;
  /** Send the step sliced (docs/protocol.md, `step`, "Sliced steps"): the
   * gradients cut into parts of about this many elements ({@link
   * sliceGrads}), each a `step` message of its own. Needs `seq`; not with
   * `clip_norm` or `worker`. Read by `Client.step` and
   * `requests.stepParts` (not a protocol key: `requests.step` ignores it). */
  partElements?: number;
  /** With `partElements`: the most parts in flight at once (default 2),
   * each on a connection of its own (see `Client.step`). */
  partsInFlight?: number;
}

/** The options of one part of a sliced step (`Client.stepPart`). */
export interface StepPartOptions {
  /** This part's index, below `count`; each index is sent once. */
  index: number;
  /** The step's number of parts, 1 to {@link MAX_PARTS}. */
  count: number;
  /** The step's sequence number (required: every part carries it). */
  seq: number;
  /** Client id for `seq` (default ""). */
  client?: string;
  /** Whether the reply carries the new values of the part's elements
   * (default true). */
  return?: boolean;
  /** Clamp every gradient element to [-clip_value, clip_value] (> 0);
   * give every part of the step the same. */
  clip_value?: number;
}

/** Most parts one sliced step may have (docs/protocol.md, `step`). */
export const MAX_PARTS = 65536;

export interface PullOptions {
  /** A member's pull: its staleness starts again from 0. */
  worker?: string;
}

export interface RegisterOptions {
  /** The group the parameters join (default "default"). */
  group?: string;
}

export interface SetHparamsOptions {
  /** Only this group (default: every group, each keeping the keys not given). */
  group?: string;
}

export interface ObserveOptions {
  /** Only this group (default: every group whose scheduler takes a metric). */
  group?: string;
}

export interface SwitchOptions {
  /** Applied over the hyperparameters the session keeps (those the new
   * optimizer shares) and its defaults for the rest. */
  hparams?: HparamMap;
}

export interface ImportOptions {
  session?: string;
  durability?: Durability;
}

function str(v: unknown, what: string): string {
  if (typeof v !== "string") throw new TypeError(`${what} must be a string`);
  return v;
}

function ref(s: SessionRef): Record<string, unknown> {
  if (typeof s !== "object" || s === null) throw new TypeError("a session must be a {session, token} object");
  return { session: str(s.session, "session"), token: str(s.token, "token") };
}

function hparamMap(m: HparamMap, what: string): HparamMap {
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new TypeError(`${what} must be an object`);
  for (const [k, v] of Object.entries(m)) {
    if (typeof v === "number" ? !Number.isFinite(v) : typeof v !== "boolean") {
      throw new TypeError(`${what}.${k} must be a finite number or a boolean`);
    }
  }
  return m;
}

function positive(v: unknown, what: string): number {
  if (typeof v !== "number" || !(v > 0)) throw new RangeError(`${what} must be a number > 0`);
  return v;
}

function group(g: GroupSpec, i: number): Record<string, unknown> {
  const what = `groups[${i}]`;
  if (typeof g !== "object" || g === null) throw new TypeError(`${what} must be an object`);
  const out: Record<string, unknown> = { name: str(g.name, `${what}.name`) };
  if (g.hparams !== undefined) out["hparams"] = hparamMap(g.hparams, `${what}.hparams`);
  if (g.scheduler !== undefined) out["scheduler"] = g.scheduler === null ? null : str(g.scheduler, `${what}.scheduler`);
  if (g.sched_hparams !== undefined) out["sched_hparams"] = hparamMap(g.sched_hparams, `${what}.sched_hparams`);
  combined(out, g, `${what}.`);
  return out;
}

function combined(out: Record<string, unknown>, o: { schedulers?: readonly SchedulerSpec[]; milestones?: readonly number[] },
                  what: string): void {
  if (o.schedulers !== undefined) {
    if (!Array.isArray(o.schedulers)) throw new TypeError(`${what}schedulers must be an array`);
    out["schedulers"] = o.schedulers.map((s: SchedulerSpec, i) => {
      const w = `${what}schedulers[${i}]`;
      if (typeof s !== "object" || s === null) throw new TypeError(`${w} must be an object`);
      const m: Record<string, unknown> = { scheduler: str(s.scheduler, `${w}.scheduler`) };
      if (s.sched_hparams !== undefined) m["sched_hparams"] = hparamMap(s.sched_hparams, `${w}.sched_hparams`);
      return m;
    });
  }
  if (o.milestones !== undefined) {
    if (!Array.isArray(o.milestones)) throw new TypeError(`${what}milestones must be an array`);
    out["milestones"] = o.milestones.map((m: unknown) => {
      if (typeof m !== "number" || !Number.isSafeInteger(m) || m < 1) throw new RangeError(`${what}milestones must be positive integers`);
      return m;
    });
  }
}

function lookahead(l: Partial<Lookahead>): Record<string, unknown> {
  if (typeof l !== "object" || l === null) throw new TypeError("lookahead must be an object");
  const out: Record<string, unknown> = {};
  if (l.k !== undefined) {
    if (!Number.isSafeInteger(l.k) || l.k < 1) throw new RangeError("lookahead.k must be an integer >= 1");
    out["k"] = l.k;
  }
  if (l.alpha !== undefined) out["alpha"] = positive(l.alpha, "lookahead.alpha");
  return out;
}

function openKey(k: unknown): string {
  if (typeof k !== "string" || !/^[\x21-\x7e]{16,64}$/.test(k)) {
    throw new RangeError("open_key must be 16 to 64 printable ASCII characters (0x21 to 0x7e)");
  }
  return k;
}

function uint(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new RangeError(`${what} must be an integer >= 0`);
  return v;
}

function workers(w: Workers): Record<string, unknown> {
  if (typeof w !== "object" || w === null) throw new TypeError("workers must be an object");
  const out: Record<string, unknown> = { mode: str(w.mode, "workers.mode") };
  if (w.count !== undefined) out["count"] = uint(w.count, "workers.count");
  if (w.reduce !== undefined) out["reduce"] = str(w.reduce, "workers.reduce");
  if (w.timeout_ms !== undefined) out["timeout_ms"] = uint(w.timeout_ms, "workers.timeout_ms");
  if (w.on_timeout !== undefined) out["on_timeout"] = str(w.on_timeout, "workers.on_timeout");
  if (w.max_staleness !== undefined) out["max_staleness"] = uint(w.max_staleness, "workers.max_staleness");
  return out;
}

function clipNorm(c: ClipNorm): Record<string, unknown> {
  if (typeof c !== "object" || c === null) throw new TypeError("clip_norm must be an object");
  const out: Record<string, unknown> = { max_norm: positive(c.max_norm, "clip_norm.max_norm") };
  if (c.norm_type !== undefined) out["norm_type"] = positive(c.norm_type, "clip_norm.norm_type");
  if (c.per_group !== undefined) {
    if (typeof c.per_group !== "boolean") throw new TypeError("clip_norm.per_group must be a boolean");
    out["per_group"] = c.per_group;
  }
  return out;
}

function tensorMap(m: Record<string, Tensor>, what: string): Record<string, unknown> {
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new TypeError(`${what} must be an object`);
  const out: Record<string, unknown> = {};
  for (const [k, t] of Object.entries(m)) out[k] = encodeTensor(t, `${what}.${k}`);
  return out;
}

function isRange(g: PartGrad): g is PartRange {
  return typeof g === "object" && g !== null && Object.prototype.hasOwnProperty.call(g, "offset");
}

function partGrads(m: Record<string, PartGrad>, what: string): Record<string, unknown> {
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw new TypeError(`${what} must be an object`);
  const out: Record<string, unknown> = {};
  for (const [k, g] of Object.entries(m)) {
    if (isRange(g)) {
      // A plain object: writeValue pads values of 64 KiB or more as it
      // pads a whole tensor.
      out[k] = { offset: uint(g.offset, `${what}.${k}.offset`), values: encodeTensor(g.values, `${what}.${k}.values`) };
    } else {
      out[k] = encodeTensor(g, `${what}.${k}`);
    }
  }
  return out;
}

/** The keys `step` and a step part share, in `step`'s order. */
function stepKeys(fields: Record<string, unknown>, opts: { return?: boolean; seq?: number; client?: string; clip_value?: number }): void {
  if (opts.return !== undefined) {
    if (typeof opts.return !== "boolean") throw new TypeError("return must be a boolean");
    fields["return"] = opts.return;
  }
  if (opts.seq !== undefined) {
    if (!Number.isSafeInteger(opts.seq) || opts.seq < 0) throw new RangeError("seq must be an integer from 0 to 2^53");
    fields["seq"] = opts.seq;
  }
  if (opts.client !== undefined) fields["client"] = str(opts.client, "client");
  if (opts.clip_value !== undefined) fields["clip_value"] = positive(opts.clip_value, "clip_value");
}

/** One 1-D tensor over elements `from` to `to - 1` of `t` (not copied). */
function flatSlice(t: Tensor, from: number, to: number): Tensor {
  return t.dtype === "f32"
    ? { dtype: "f32", shape: [to - from], data: t.data.subarray(from, to) }
    : { dtype: "f64", shape: [to - from], data: t.data.subarray(from, to) };
}

/**
 * The parts of a sliced step: the gradients, taken in the order of their
 * keys and flattened in C order as if concatenated, cut into consecutive
 * parts of `partElements` elements (the last one shorter). A tensor that
 * lies within one part is there whole; one that a cut crosses is in each
 * part it spans as a {@link PartRange} whose values view its data (nothing
 * is copied). Tensors with no elements go whole into the part being
 * filled. When the gradients have more than `partElements` × {@link
 * MAX_PARTS} elements the parts are made larger, so that there are at most
 * MAX_PARTS; gradients with no elements at all give one part. The same
 * gradients (keys in the same order) always give the same parts, so a
 * retry cuts a step as its first attempt did.
 */
export function sliceGrads(grads: Record<string, Tensor>, partElements: number): Array<Record<string, PartGrad>> {
  if (!Number.isSafeInteger(partElements) || partElements < 1) throw new RangeError("partElements must be an integer >= 1");
  if (typeof grads !== "object" || grads === null || Array.isArray(grads)) throw new TypeError("grads must be an object");
  const entries = Object.entries(grads);
  let total = 0;
  for (const [name, t] of entries) {
    checkTensor(t, `grads.${name}`);
    total += t.data.length;
  }
  const size = Math.max(partElements, Math.ceil(total / MAX_PARTS));
  const parts: Array<Record<string, PartGrad>> = [{}];
  let room = size;
  for (const [name, t] of entries) {
    const n = t.data.length;
    if (n === 0) {
      parts[parts.length - 1]![name] = t;
      continue;
    }
    for (let at = 0; at < n;) {
      if (room === 0) {
        parts.push({});
        room = size;
      }
      const take = Math.min(n - at, room);
      parts[parts.length - 1]![name] = take === n ? t : { offset: at, values: flatSlice(t, at, at + take) };
      at += take;
      room -= take;
    }
  }
  return parts;
}

function names(n: readonly string[] | undefined): string[] | undefined {
  if (n === undefined) return undefined;
  if (!Array.isArray(n)) throw new TypeError("names must be an array of strings");
  return n.map((x) => str(x, "a name"));
}

/** Request builders, one per op; {@link Client} sends what they build. */
export const requests = {
  hello(opts: { client?: string } = {}): Request<"hello"> {
    return { op: "hello", fields: { client: opts.client } };
  },
  plugins(): Request<"plugins"> {
    return { op: "plugins", fields: {} };
  },
  open(session: string, optimizer: string, opts: OpenOptions = {}): Request<"open"> {
    const fields: Record<string, unknown> = { session: str(session, "session"), optimizer: str(optimizer, "optimizer") };
    if (opts.hparams !== undefined) fields["hparams"] = hparamMap(opts.hparams, "hparams");
    if (opts.scheduler !== undefined) fields["scheduler"] = opts.scheduler === null ? null : str(opts.scheduler, "scheduler");
    if (opts.sched_hparams !== undefined) fields["sched_hparams"] = hparamMap(opts.sched_hparams, "sched_hparams");
    combined(fields, opts, "");
    if (opts.lookahead !== undefined) fields["lookahead"] = lookahead(opts.lookahead);
    if (opts.durability !== undefined) fields["durability"] = str(opts.durability, "durability");
    if (opts.groups !== undefined) {
      if (!Array.isArray(opts.groups)) throw new TypeError("groups must be an array");
      fields["groups"] = opts.groups.map(group);
    }
    if (opts.open_key !== undefined) fields["open_key"] = openKey(opts.open_key);
    if (opts.workers !== undefined) fields["workers"] = workers(opts.workers);
    return { op: "open", fields };
  },
  attach(s: SessionRef): Request<"attach"> {
    return { op: "attach", fields: ref(s) };
  },
  info(s: SessionRef, opts: { client?: string } = {}): Request<"info"> {
    const fields = ref(s);
    if (opts.client !== undefined) fields["client"] = str(opts.client, "client");
    return { op: "info", fields };
  },
  hparams(s: SessionRef): Request<"hparams"> {
    return { op: "hparams", fields: ref(s) };
  },
  setHparams(s: SessionRef, hparams: HparamMap, opts: SetHparamsOptions = {}): Request<"set_hparams"> {
    const fields: Record<string, unknown> = { ...ref(s), hparams: hparamMap(hparams, "hparams") };
    if (opts.group !== undefined) fields["group"] = str(opts.group, "group");
    return { op: "set_hparams", fields };
  },
  close(s: SessionRef): Request<"close"> {
    return { op: "close", fields: ref(s) };
  },
  sessions(): Request<"sessions"> {
    return { op: "sessions", fields: {} };
  },
  register(s: SessionRef, params: Record<string, Tensor>, opts: RegisterOptions = {}): Request<"register"> {
    const fields: Record<string, unknown> = { ...ref(s), params: tensorMap(params, "params") };
    if (opts.group !== undefined) fields["group"] = str(opts.group, "group");
    return { op: "register", fields };
  },
  /** A whole step (`partElements` and `partsInFlight` are ignored: see
   * {@link requests.stepParts}). */
  step(s: SessionRef, grads: Record<string, Tensor>, opts: StepOptions = {}): Request<"step"> {
    const fields: Record<string, unknown> = { ...ref(s), grads: tensorMap(grads, "grads") };
    stepKeys(fields, opts);
    if (opts.clip_norm !== undefined) fields["clip_norm"] = clipNorm(opts.clip_norm);
    if (opts.worker !== undefined) fields["worker"] = str(opts.worker, "worker");
    return { op: "step", fields };
  },
  /** One part of a sliced step: a `step` request with `part: {index,
   * count}` (sent as op `step`; its reply parses as a `step_part`). Each
   * gradient is a whole tensor or a range. Nothing here checks that the
   * parts fit together: the daemon does. */
  stepPart(s: SessionRef, grads: Record<string, PartGrad>, opts: StepPartOptions): Request<"step_part"> {
    if (typeof opts !== "object" || opts === null) throw new TypeError("a step part needs {index, count, seq}");
    if (opts.seq === undefined) throw new TypeError("a step part needs seq, its step's sequence number");
    const fields: Record<string, unknown> = {
      ...ref(s),
      grads: partGrads(grads, "grads"),
      part: { index: uint(opts.index, "part index"), count: uint(opts.count, "part count") },
    };
    stepKeys(fields, opts);
    return { op: "step_part", fields };
  },
  /** A whole step as the parts of a sliced step ({@link sliceGrads} with
   * `opts.partElements`), in order. Needs `seq`; refuses `clip_norm` and
   * `worker` (TypeError). */
  stepParts(s: SessionRef, grads: Record<string, Tensor>, opts: StepOptions): Array<Request<"step_part">> {
    if (opts.partElements === undefined) throw new TypeError("a sliced step needs partElements");
    if (opts.seq === undefined) {
      throw new TypeError("a sliced step (partElements) needs seq, the step's sequence number in this client's " +
                          "numbering: every part carries it, and a retry with the same seq completes a step cut short");
    }
    if (opts.clip_norm !== undefined) {
      throw new TypeError("clip_norm cannot go with a sliced step (partElements): it needs every gradient at once " +
                          "(clip_value can)");
    }
    if (opts.worker !== undefined) throw new TypeError("a session with workers takes no sliced steps (partElements)");
    const parts = sliceGrads(grads, opts.partElements);
    const common: Omit<StepPartOptions, "index" | "count"> = { seq: opts.seq };
    if (opts.client !== undefined) common.client = opts.client;
    if (opts.return !== undefined) common.return = opts.return;
    if (opts.clip_value !== undefined) common.clip_value = opts.clip_value;
    return parts.map((part, index) => requests.stepPart(s, part, { ...common, index, count: parts.length }));
  },
  /** Ends the pending sliced step sent as `seq` by `client`. */
  abandonStep(s: SessionRef, seq: number, client?: string): Request<"abandon_step"> {
    if (!Number.isSafeInteger(seq) || seq < 0) throw new RangeError("seq must be an integer from 0 to 2^53");
    const fields: Record<string, unknown> = { ...ref(s), seq };
    if (client !== undefined) fields["client"] = str(client, "client");
    return { op: "abandon_step", fields };
  },
  /** `metric` may be NaN (a bad epoch, as torch counts it). */
  observe(s: SessionRef, metric: number, opts: ObserveOptions = {}): Request<"observe"> {
    if (typeof metric !== "number") throw new TypeError("metric must be a number");
    const fields: Record<string, unknown> = { ...ref(s), metric };
    if (opts.group !== undefined) fields["group"] = str(opts.group, "group");
    return { op: "observe", fields };
  },
  pull(s: SessionRef, paramNames?: readonly string[], opts: PullOptions = {}): Request<"pull"> {
    const fields: Record<string, unknown> = { ...ref(s), names: names(paramNames) };
    if (opts.worker !== undefined) fields["worker"] = str(opts.worker, "worker");
    return { op: "pull", fields };
  },
  join(s: SessionRef, worker: string): Request<"join"> {
    return { op: "join", fields: { ...ref(s), worker: str(worker, "worker") } };
  },
  leave(s: SessionRef, worker: string): Request<"leave"> {
    return { op: "leave", fields: { ...ref(s), worker: str(worker, "worker") } };
  },
  state(s: SessionRef, paramNames?: readonly string[]): Request<"state"> {
    return { op: "state", fields: { ...ref(s), names: names(paramNames) } };
  },
  export(s: SessionRef): Request<"export"> {
    return { op: "export", fields: ref(s) };
  },
  import(snapshot: Uint8Array, opts: ImportOptions = {}): Request<"import"> {
    if (!(snapshot instanceof Uint8Array)) throw new TypeError("snapshot must be a Uint8Array");
    const fields: Record<string, unknown> = { snapshot };
    if (opts.session !== undefined) fields["session"] = str(opts.session, "session");
    if (opts.durability !== undefined) fields["durability"] = str(opts.durability, "durability");
    return { op: "import", fields };
  },
  switch(s: SessionRef, optimizer: string, opts: SwitchOptions = {}): Request<"switch"> {
    const fields: Record<string, unknown> = { ...ref(s), optimizer: str(optimizer, "optimizer") };
    if (opts.hparams !== undefined) fields["hparams"] = hparamMap(opts.hparams, "hparams");
    return { op: "switch", fields };
  },
  reload(adminToken: string): Request<"reload"> {
    return { op: "reload", fields: { admin_token: str(adminToken, "admin_token") } };
  },
  load(path: string, adminToken: string): Request<"load"> {
    return { op: "load", fields: { path: str(path, "path"), admin_token: str(adminToken, "admin_token") } };
  },
  drop(session: string, adminToken: string): Request<"drop"> {
    return { op: "drop", fields: { session: str(session, "session"), admin_token: str(adminToken, "admin_token") } };
  },
  shutdown(adminToken: string): Request<"shutdown"> {
    return { op: "shutdown", fields: { admin_token: str(adminToken, "admin_token") } };
  },
};

// No useBigInt64 when encoding: with it, @msgpack/msgpack writes integers
// of 2^32 and above as floats; without it they stay uint64 (all ids and seq
// numbers this client sends are safe integers).
const encoder = new Encoder({ ignoreUndefined: true });

/** Tensor data of this many bytes or more is aligned on the wire. */
export const PAD_FROM = 64 * 1024;
// The daemon receives a request into a 16-byte aligned buffer that holds
// REQ's 4-byte request ID and then the body, and reads a tensor's data in
// place where 4 + its body offset is a multiple of 16, copying it first
// elsewhere (docs/protocol.md §3, `pad`).
const ALIGN = 16;
const REQ_HEADER = 4;
const ZEROS = new Uint8Array(ALIGN);

/**
 * Writes a request from its first byte on, so that the offset of the next
 * byte is known when a tensor's `data` comes: small values are msgpack'd by
 * @msgpack/msgpack into one growing buffer, large tensor data is kept as
 * itself and copied once, into the finished message.
 */
class RequestWriter {
  private head = new Uint8Array(256);
  private pos = 0;
  private readonly parts: Uint8Array[] = [];
  private flushed = 0;

  /** Offset in the message of the next byte written. */
  get offset(): number {
    return this.flushed + this.pos;
  }

  bytes(b: Uint8Array): void {
    if (this.pos + b.length > this.head.length) {
      const grown = new Uint8Array(Math.max(2 * this.head.length, this.pos + b.length));
      grown.set(this.head.subarray(0, this.pos));
      this.head = grown;
    }
    this.head.set(b, this.pos);
    this.pos += b.length;
  }

  byte(b: number): void {
    this.bytes(Uint8Array.of(b));
  }

  /** One value as @msgpack/msgpack writes it. */
  value(v: unknown): void {
    this.bytes(encoder.encodeSharedRef(v));
  }

  /** Bytes that follow as themselves, not copied until finish(). */
  large(b: Uint8Array): void {
    if (this.pos > 0) {
      this.parts.push(this.head.subarray(0, this.pos));
      this.flushed += this.pos;
      this.head = new Uint8Array(256);
      this.pos = 0;
    }
    this.parts.push(b);
    this.flushed += b.length;
  }

  finish(): Uint8Array {
    if (this.parts.length === 0) return this.head.slice(0, this.pos);
    const out = new Uint8Array(this.offset);
    let at = 0;
    for (const p of [...this.parts, this.head.subarray(0, this.pos)]) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

function mapHeader(w: RequestWriter, n: number): void {
  if (n < 16) w.byte(0x80 | n);
  else if (n < 0x10000) w.bytes(Uint8Array.of(0xde, n >>> 8, n & 0xff));
  else w.bytes(Uint8Array.of(0xdf, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff));
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v) || ArrayBuffer.isView(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** A tensor map as encodeTensor makes it, with data large enough to pad. */
function isLargeTensor(v: Record<string, unknown>): v is { dtype: string; shape: unknown; data: Uint8Array } {
  const keys = Object.keys(v);
  const data = v["data"];
  return keys.length === 3 && keys[0] === "dtype" && keys[1] === "shape" && keys[2] === "data" &&
    typeof v["dtype"] === "string" && data instanceof Uint8Array &&
    data.byteLength >= PAD_FROM && data.byteLength <= 0xffffffff;
}

/** v as @msgpack/msgpack (ignoreUndefined) would write it, but with each
 * large tensor as {dtype, shape, pad, data}, pad being the zeros that put
 * data's first byte where the daemon can read it in place. */
function writeValue(w: RequestWriter, v: unknown): void {
  if (!isPlainObject(v)) {
    w.value(v);
    return;
  }
  if (isLargeTensor(v)) {
    mapHeader(w, 4);
    w.value("dtype");
    w.value(v.dtype);
    w.value("shape");
    w.value(v.shape);
    // "pad" (4 bytes), its bin8 header (2), k bytes, "data" (5) and the
    // bin32 header (5), then the data.
    const at = w.offset + 4 + 2 + 5 + 5;
    const k = (ALIGN - ((REQ_HEADER + at) % ALIGN)) % ALIGN;
    w.value("pad");
    w.value(ZEROS.subarray(0, k));
    w.value("data");
    const n = v.data.byteLength;
    w.bytes(Uint8Array.of(0xc6, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff));
    w.large(v.data);
    return;
  }
  const keys = Object.keys(v).filter((k) => v[k] !== undefined);
  mapHeader(w, keys.length);
  for (const k of keys) {
    w.value(k);
    writeValue(w, v[k]);
  }
}

/** The msgpack bytes of a request with envelope `{v: 1, id, op}`. A tensor
 * with {@link PAD_FROM} bytes of data or more carries a `pad` key before its
 * data so that the daemon reads it in place (docs/protocol.md §3); all else
 * is as @msgpack/msgpack writes it. */
export function encodeRequest(req: Request, id: number): Uint8Array {
  if (!Number.isSafeInteger(id) || id < 0) throw new RangeError("a request id must be a safe non-negative integer");
  const w = new RequestWriter();
  writeValue(w, { v: PROTOCOL_VERSION, id, op: wireOp(req.op), ...req.fields });
  return w.finish();
}

// ----------------------------------------------------------------- replies

// useBigInt64: 64-bit integers arrive as bigint, so an id near 2^64 is
// compared exactly; map keys must be strings (protocol.md §1).
const decoder = new Decoder({
  useBigInt64: true,
  mapKeyConverter: (key) => {
    if (typeof key !== "string") throw new DecodeError(`a map key is a ${typeof key}, not a string`);
    return key;
  },
});

type Obj = Record<string, unknown>;

function isMap(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof Date);
}

function has(o: Obj, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}

class Reader {
  constructor(private readonly o: Obj, private readonly what: string) {}

  /** Whether the key is present with the value nil. */
  isNil(k: string): boolean {
    return has(this.o, k) && this.o[k] === null;
  }
  /** The map under key k, read with the same checks. */
  sub(k: string): Reader {
    return new Reader(this.map(k), `${this.what}: '${k}'`);
  }

  private get(k: string): unknown {
    if (!has(this.o, k)) throw new ProtocolError(`${this.what}: no '${k}'`);
    return this.o[k];
  }
  present(k: string): boolean {
    return has(this.o, k);
  }
  fail(k: string, kind: string): never {
    throw new ProtocolError(`${this.what}: '${k}' is not ${kind}`);
  }
  str(k: string): string {
    const v = this.get(k);
    return typeof v === "string" ? v : this.fail(k, "a string");
  }
  optStr(k: string): string | null {
    const v = this.get(k);
    return v === null || typeof v === "string" ? v : this.fail(k, "a string or nil");
  }
  oneOf<T extends string>(k: string, allowed: readonly T[]): T {
    const v = this.str(k);
    return (allowed as readonly string[]).includes(v) ? (v as T) : this.fail(k, allowed.join(" or "));
  }
  bool(k: string): boolean {
    const v = this.get(k);
    return typeof v === "boolean" ? v : this.fail(k, "a bool");
  }
  uint(k: string): number {
    const v = uintValue(this.get(k));
    return v ?? this.fail(k, "an unsigned integer");
  }
  float(k: string): number {
    const v = this.get(k);
    if (typeof v === "number") return v;
    if (typeof v === "bigint") return Number(v);
    return this.fail(k, "a number");
  }
  array(k: string): unknown[] {
    const v = this.get(k);
    return Array.isArray(v) ? v : this.fail(k, "an array");
  }
  map(k: string): Obj {
    const v = this.get(k);
    return isMap(v) ? v : this.fail(k, "a map");
  }
  bin(k: string): Uint8Array {
    const v = this.get(k);
    return v instanceof Uint8Array ? v : this.fail(k, "bin");
  }
  /** A map from name to number (a group's lr or grad norm). */
  floats(k: string): Record<string, number> {
    const m = this.map(k);
    const out: Record<string, number> = {};
    for (const [name, v] of Object.entries(m)) {
      if (typeof v === "number") out[name] = v;
      else if (typeof v === "bigint") out[name] = Number(v);
      else throw new ProtocolError(`${this.what}: '${k}.${name}' is not a number`);
    }
    return out;
  }
  hparams(k: string): HparamMap {
    const m = this.map(k);
    const out: HparamMap = {};
    for (const [name, v] of Object.entries(m)) {
      if (typeof v === "number" || typeof v === "boolean") out[name] = v;
      else if (typeof v === "bigint") out[name] = Number(v);
      else throw new ProtocolError(`${this.what}: '${k}.${name}' is not a number or bool`);
    }
    return out;
  }
  tensors(k: string): Record<string, Tensor> {
    const m = this.map(k);
    const out: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(m)) out[name] = decodeTensor(t, `${this.what}: '${k}.${name}'`);
    return out;
  }
  /** A map from parameter name to {offset, values} (a step part's reply);
   * a whole tensor is taken as offset 0 and its elements. */
  ranges(k: string): Record<string, PartRange> {
    const m = this.map(k);
    const out: Record<string, PartRange> = {};
    for (const [name, v] of Object.entries(m)) {
      const what = `${this.what}: '${k}.${name}'`;
      if (isMap(v) && has(v, "offset")) {
        const offset = uintValue(v["offset"]);
        if (offset === undefined) throw new ProtocolError(`${what}: 'offset' is not an unsigned integer`);
        const values = decodeTensor(has(v, "values") ? v["values"] : undefined, `${what}: 'values'`);
        if (values.shape.length !== 1) throw new ProtocolError(`${what}: 'values' has ${values.shape.length} dimensions, not 1`);
        out[name] = { offset, values };
      } else {
        const t = decodeTensor(v, what);
        out[name] = { offset: 0, values: { ...t, shape: [t.data.length] } as Tensor };
      }
    }
    return out;
  }
  /** Every value of the whole map as a tensor (a `state` entry). */
  tensorsOf(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [k, t] of Object.entries(this.o)) out[k] = decodeTensor(t, `${this.what}.${k}`);
    return out;
  }
  hparamOrNull(k: string): HparamValue | null {
    const v = this.get(k);
    if (v === null || typeof v === "number" || typeof v === "boolean") return v;
    if (typeof v === "bigint") return Number(v);
    return this.fail(k, "a number, bool or nil");
  }
  list<T>(k: string, each: (r: Reader) => T): T[] {
    return this.array(k).map((item, i) => {
      if (!isMap(item)) throw new ProtocolError(`${this.what}: '${k}[${i}]' is not a map`);
      return each(new Reader(item, `${this.what}: '${k}[${i}]'`));
    });
  }
}

function uintValue(v: unknown): number | undefined {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  if (typeof v === "bigint") return v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
  return undefined;
}

function intValue(v: unknown): bigint | undefined {
  if (typeof v === "number") return Number.isSafeInteger(v) ? BigInt(v) : undefined;
  if (typeof v === "bigint") return v;
  return undefined;
}

function hparamsResult(r: Reader): HparamsResult {
  return {
    hparams: r.hparams("hparams"),
    sched_hparams: r.hparams("sched_hparams"),
    base_lr: r.float("base_lr"),
    lr: r.float("lr"),
    groups: r.list("groups", (g) => ({
      name: g.str("name"),
      scheduler: g.optStr("scheduler"),
      ...combinedSchedule(g),
      hparams: g.hparams("hparams"),
      sched_hparams: g.hparams("sched_hparams"),
      base_lr: g.float("base_lr"),
      lr: g.float("lr"),
      params: g.uint("params"),
    })),
  };
}

/** `schedulers` and `milestones`, each only when the reply has it. */
function combinedSchedule(r: Reader): CombinedSchedule {
  const out: CombinedSchedule = {};
  if (r.present("schedulers")) {
    out.schedulers = r.list("schedulers", (s) => ({ scheduler: s.str("scheduler"), sched_hparams: s.hparams("sched_hparams") }));
  }
  if (r.present("milestones")) {
    out.milestones = r.array("milestones").map((m) => uintValue(m) ?? r.fail("milestones", "an array of unsigned integers"));
  }
  return out;
}

/** `lookahead`: null when off (or from a daemon without Lookahead). */
function lookaheadOf(r: Reader): Lookahead | null {
  if (!r.present("lookahead") || r.isNil("lookahead")) return null;
  const m = r.sub("lookahead");
  return { k: m.uint("k"), alpha: m.float("alpha") };
}

function workersInfo(r: Reader): WorkersInfo {
  const out: WorkersInfo = {
    mode: r.oneOf("mode", ["sync", "async", "bounded"] as const),
    members: r.list("members", (m) => ({
      name: m.str("name"),
      rank: m.uint("rank"),
      pushes: m.uint("pushes"),
      staleness: m.uint("staleness"),
      waiting: m.bool("waiting"),
    })),
  };
  if (r.present("count")) out.count = r.uint("count");
  if (r.present("reduce")) out.reduce = r.oneOf("reduce", ["mean", "sum"] as const);
  if (r.present("timeout_ms")) out.timeout_ms = r.uint("timeout_ms");
  if (r.present("on_timeout")) out.on_timeout = r.oneOf("on_timeout", ["fail", "proceed"] as const);
  if (r.present("max_staleness")) out.max_staleness = r.uint("max_staleness");
  if (r.present("round_pushes")) out.round_pushes = r.uint("round_pushes");
  return out;
}

function hparamDecl(r: Reader): HparamDecl {
  return {
    key: r.str("key"),
    type: r.oneOf("type", ["float", "int", "bool"] as const),
    required: r.bool("required"),
    mutable: r.bool("mutable"),
    min: r.float("min"),
    max: r.float("max"),
    min_exclusive: r.bool("min_exclusive"),
    max_exclusive: r.bool("max_exclusive"),
    default: r.hparamOrNull("default"),
    doc: r.str("doc"),
  };
}

const parsers: { [O in Op]: (r: Reader) => Results[O] } = {
  hello: (r) => {
    const abi = r.array("abi");
    const major = uintValue(abi[0]);
    const minor = uintValue(abi[1]);
    if (abi.length !== 2 || major === undefined || minor === undefined) r.fail("abi", "[major, minor]");
    return {
      server: r.str("server"),
      version: r.str("version"),
      protocol: r.uint("protocol"),
      abi: [major!, minor!],
      max_message: r.uint("max_message"),
    };
  },
  plugins: (r) => ({
    plugins: r.list("plugins", (p) => {
      const info: PluginInfo = {
        id: p.str("id"),
        kind: p.oneOf("kind", ["optimizer", "scheduler"] as const),
        version: p.str("version"),
        description: p.str("description"),
        hparams: p.list("hparams", hparamDecl),
      };
      if (p.present("slots")) {
        info.slots = p.list("slots", (s) => ({
          key: s.str("key"),
          dtype: s.oneOf("dtype", ["param", "f32", "f64"] as const),
          shape: s.str("shape"),
          enabled_by: s.optStr("enabled_by"),
          doc: s.str("doc"),
        }));
      }
      if (p.present("dtypes")) {
        info.dtypes = p.array("dtypes").map((d): Dtype => (d === "f32" || d === "f64" ? d : p.fail("dtypes", "a list of f32/f64")));
      }
      if (p.present("sliced")) info.sliced = p.bool("sliced");
      return info;
    }),
  }),
  open: (r) => ({ session: r.str("session"), token: r.str("token"), lr: r.float("lr"), existing: r.bool("existing") }),
  attach: (r) => sessionInfo(r),
  info: (r) => sessionInfo(r),
  hparams: hparamsResult,
  set_hparams: hparamsResult,
  close: () => ({}),
  sessions: (r) => ({
    sessions: r.list("sessions", (s) => ({
      session: s.str("session"),
      optimizer: s.str("optimizer"),
      scheduler: s.optStr("scheduler"),
      params: s.uint("params"),
      steps: s.uint("steps"),
    })),
  }),
  register: (r) => ({ registered: r.uint("registered") }),
  step: (r) => {
    const out: StepResult = stepCounters(r);
    if (r.present("grad_norm")) out.grad_norm = r.float("grad_norm");
    if (r.present("grad_norms")) out.grad_norms = r.floats("grad_norms");
    if (r.present("params")) out.params = r.tensors("params");
    if (r.present("worker")) out.worker = r.str("worker");
    if (r.present("pushes")) out.pushes = r.uint("pushes");
    if (r.present("staleness")) out.staleness = r.uint("staleness");
    if (r.present("combined")) out.combined = r.uint("combined");
    if (r.present("lead")) out.lead = r.uint("lead");
    if (r.present("waited")) out.waited = r.bool("waited");
    return out;
  },
  observe: (r) => ({ lr: r.float("lr"), lrs: r.floats("lrs") }),
  pull: (r) => ({ params: r.tensors("params") }),
  state: (r) => {
    const m = r.map("state");
    const state: Record<string, Record<string, Tensor>> = {};
    for (const [name, slots] of Object.entries(m)) {
      if (!isMap(slots)) throw new ProtocolError(`state: 'state.${name}' is not a map`);
      state[name] = new Reader(slots, `state: '${name}'`).tensorsOf();
    }
    return { state };
  },
  export: (r) => ({ snapshot: r.bin("snapshot") }),
  import: (r) => ({ session: r.str("session"), token: r.str("token"), steps: r.uint("steps") }),
  switch: (r) => ({
    optimizer: r.str("optimizer"),
    optimizer_version: r.str("optimizer_version"),
    carried: r.array("carried").map((k) => (typeof k === "string" ? k : r.fail("carried", "an array of strings"))),
  }),
  reload: reloadResult,
  load: reloadResult,
  drop: () => ({}),
  shutdown: () => ({}),
  join: (r) => ({ rank: r.uint("rank"), steps: r.uint("steps"), workers: workersInfo(r.sub("workers")) }),
  leave: (r) => ({ steps: r.uint("steps"), workers: workersInfo(r.sub("workers")) }),
  abandon_step: (r) => ({ ...stepCounters(r), parts: r.uint("parts") }),
  step_part: (r) => {
    const out: StepPartResult = { ...stepCounters(r), complete: r.bool("complete"), parts: r.uint("parts") };
    if (r.present("params")) out.params = r.ranges("params");
    return out;
  },
};

type StepCounters = Pick<StepResult, "steps" | "lr" | "next_lr" | "duplicate" | "lrs" | "next_lrs">;

/** The keys every step reply has (and `lrs`/`next_lrs` when present). */
function stepCounters(r: Reader): StepCounters {
  const out: StepCounters = { steps: r.uint("steps"), lr: r.float("lr"), next_lr: r.float("next_lr"), duplicate: r.bool("duplicate") };
  if (r.present("lrs")) out.lrs = r.floats("lrs");
  if (r.present("next_lrs")) out.next_lrs = r.floats("next_lrs");
  return out;
}

function reloadResult(r: Reader): ReloadResult {
  return {
    plugins: r.list("plugins", (p): PluginLoad =>
      p.bool("loaded")
        ? { path: p.str("path"), loaded: true, id: p.str("id"), version: p.str("version") }
        : { path: p.str("path"), loaded: false, error: p.str("error") }),
  };
}

function sessionInfo(r: Reader): SessionInfo {
  const info: SessionInfo = {
    lookahead: lookaheadOf(r),
    session: r.str("session"),
    durability: r.oneOf("durability", ["always", "interval", "none"] as const),
    optimizer: r.str("optimizer"),
    optimizer_version: r.str("optimizer_version"),
    scheduler: r.optStr("scheduler"),
    ...combinedSchedule(r),
    ...hparamsResult(r),
    steps: r.uint("steps"),
    params: r.list("params", (p) => ({
      name: p.str("name"),
      group: p.str("group"),
      dtype: p.oneOf("dtype", ["f32", "f64"] as const),
      shape: p.array("shape").map((d) => {
        const x = uintValue(d);
        return x ?? p.fail("shape", "an array of unsigned integers");
      }),
      steps: p.uint("steps"),
    })),
  };
  if (r.present("client_seq")) info.client_seq = r.uint("client_seq");
  if (r.present("workers") && !r.isNil("workers")) info.workers = workersInfo(r.sub("workers"));
  if (r.present("pending_step") && !r.isNil("pending_step")) {
    const p = r.sub("pending_step");
    info.pending_step = { client: p.str("client"), seq: p.uint("seq"), count: p.uint("count"), applied: p.uint("applied") };
  }
  return info;
}

/**
 * Decodes a reply to request `requestId` of op `op` and returns its result.
 * Throws {@link ServerError} for an error reply and {@link ProtocolError}
 * for anything that is not a valid reply (never anything else).
 */
export function parseReply<O extends Op>(op: O, message: Uint8Array, requestId: number | bigint): Results[O] {
  let value: unknown;
  try {
    value = decoder.decode(message);
  } catch (err) {
    throw new ProtocolError(`the reply is not one msgpack value: ${(err as Error).message}`, { cause: err });
  }
  if (!isMap(value)) throw new ProtocolError("the reply is not a map");
  const r = new Reader(value, op);
  const v = intValue(has(value, "v") ? value["v"] : undefined);
  if (v !== BigInt(PROTOCOL_VERSION)) throw new ProtocolError(`the reply's protocol version is ${String(value["v"])}, not 1`);
  const ok = r.bool("ok");
  const id = intValue(has(value, "id") ? value["id"] : undefined);
  if (id === undefined || id < 0n) throw new ProtocolError("the reply has no unsigned 'id'");
  // An error about an undecodable request carries id 0 (protocol.md §2).
  if (id !== BigInt(requestId) && !(!ok && id === 0n)) {
    throw new ProtocolError(`the reply's id is ${id}, the request's ${requestId}`);
  }
  if (!ok) {
    const code = intValue(has(value, "code") ? value["code"] : undefined);
    if (code === undefined || code < 0n || code > 0x7fffffffn) throw new ProtocolError("an error reply without an integer 'code'");
    throw new ServerError(Number(code), r.str("error"), r.str("message"), id);
  }
  if (!(op in parsers)) throw new TypeError(`unknown op ${op}`);
  return parsers[op](r);
}
