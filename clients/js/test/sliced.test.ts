/**
 * Sliced steps (docs/protocol.md, `step`, "Sliced steps"): `step` with
 * `partElements` cuts a step into parts and sends them on several
 * connections, `stepPart` sends one part, `abandonStep` ends a pending step,
 * and `info` shows it as `pending_step`.
 *
 * Against the real daemon: adamw and nadam (a per-parameter scalar slot)
 * sessions stepped in parts of odd sizes end bit for bit where twin sessions
 * stepped whole do (parameters, every state slot, counters), in f32 and f64;
 * large ranges are read in place (none copied to align them); parts sent out
 * of order; a pending step refusing other steps with STEP_PENDING until a
 * retry completes it or abandon_step ends it; lamb (not element-wise)
 * refusing parts. With a stand-in daemon (RepServer): how many parts are in
 * flight at once, what each part carries, and how a refused part stops the
 * sending.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import {
  Client,
  ErrorCode,
  RepServer,
  ServerError,
  type SessionRef,
  type Tensor,
  encodeRequest,
  requests,
  sliceGrads,
} from "../src/index.js";
import { Daemon, hex } from "./support.js";

let daemon: Daemon;
let client: Client;

before(async () => {
  daemon = await Daemon.start("--metrics-listen", "127.0.0.1:0");
  client = new Client(daemon.url, { timeoutMs: 30000 });
});

after(async () => {
  client?.close();
  if (!daemon) return;
  const log = daemon.log();
  const status = await daemon.stop();
  assert.equal(status, 0, `optimd exited ${status}; its log:\n${log}`);
});

type Kind = "f32" | "f64";

const SHAPES: Record<string, number[]> = {
  w1: [37],        // 1-D
  w2: [13, 11],    // 2-D
  b: [5],          // small: whole in most parts
  w3: [3, 5, 7],   // 3-D
  s: [],           // a scalar
};
const TOTAL = 37 + 143 + 5 + 105 + 1;

/** Cut sizes, one per step: odd sizes that cut tensors in odd places, 1
 * (every element its own part) and one larger than everything (one part). */
const PART_SIZES = [17, 5, 1, 64, 3, 1000, 29];

/** Deterministic values in [-1, 1). */
function values(n: number, seed: number): number[] {
  let s = (seed * 2654435761) >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(2 * (s / 2 ** 32) - 1);
  }
  return out;
}

function make(kind: Kind, seed: number, shapes: Record<string, number[]> = SHAPES): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  let k = 0;
  for (const [name, shape] of Object.entries(shapes)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = values(n, seed * 100 + k++);
    out[name] = kind === "f32"
      ? { dtype: "f32", shape, data: new Float32Array(v) }
      : { dtype: "f64", shape, data: new Float64Array(v) };
  }
  return out;
}

/** A tensor's dtype, shape and bytes, for bit-for-bit comparison. */
function bits(t: Tensor): string {
  const d = t.data;
  return `${t.dtype} [${t.shape.join(",")}] ${hex(new Uint8Array(d.buffer, d.byteOffset, d.byteLength))}`;
}

function allBits(m: Record<string, Tensor> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, t] of Object.entries(m ?? {})) out[name] = bits(t);
  return out;
}

function stateBits(m: Record<string, Record<string, Tensor>>): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  for (const [name, slots] of Object.entries(m)) out[name] = allBits(slots);
  return out;
}

function assertServerError(code: number, name: string) {
  return (err: unknown) => {
    assert.ok(err instanceof ServerError, `expected a ServerError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.name, name);
    return true;
  };
}

let sessions = 0;

async function open(optimizer: string, params: Record<string, Tensor>, opts: Parameters<Client["open"]>[2] = {}): Promise<SessionRef> {
  const s = await client.open(`${optimizer}-${sessions++}`, optimizer, opts);
  await client.register(s, params);
  return s;
}

async function assertSameSession(a: SessionRef, b: SessionRef, when: string): Promise<void> {
  assert.deepEqual(allBits(await client.pull(a)), allBits(await client.pull(b)), `parameters ${when}`);
  assert.deepEqual(stateBits(await client.state(a)), stateBits(await client.state(b)), `state ${when}`);
  const [ia, ib] = [await client.info(a), await client.info(b)];
  assert.deepEqual([ia.steps, ia.lr], [ib.steps, ib.lr], `steps, lr ${when}`);
  assert.deepEqual(ia.params.map((p) => [p.name, p.steps]), ib.params.map((p) => [p.name, p.steps]), `per-parameter steps ${when}`);
}

const OPTIMIZERS: Array<[string, Parameters<Client["open"]>[2]]> = [
  ["adamw", { hparams: { lr: 1e-2, weight_decay: 0.1 }, scheduler: "exponential", sched_hparams: { gamma: 0.9 } }],
  ["nadam", { hparams: { lr: 1e-2 } }],
];

describe("sliced steps are bit-identical to whole steps", () => {
  for (const [optimizer, opts] of OPTIMIZERS) {
    for (const kind of ["f32", "f64"] as const) {
      test(`${optimizer} ${kind}`, async () => {
        const start = make(kind, 1);
        const whole = await open(optimizer, start, opts);
        const sliced = await open(optimizer, start, opts);
        for (const [k, size] of PART_SIZES.entries()) {
          const g = make(kind, 10 + k);
          const want = await client.step(whole, g);
          const got = await client.step(sliced, g, { seq: k + 1, client: "trainer", partElements: size, partsInFlight: 1 + (k % 3) });
          const when = `after step ${k + 1} (parts of ${size})`;
          assert.deepEqual(allBits(got.params), allBits(want.params), when);
          assert.deepEqual([got.steps, got.lr, got.next_lr, got.duplicate], [want.steps, want.lr, want.next_lr, false], when);
          assert.equal((await client.info(sliced)).pending_step, undefined, when);
        }
        await assertSameSession(sliced, whole, "at the end");
        assert.equal((await client.info(sliced, { client: "trainer" })).client_seq, PART_SIZES.length);
        if (optimizer === "nadam") {
          // The per-parameter scalar slot came through the parts intact.
          const slots = (await client.state(sliced))["w2"]!;
          assert.ok(Object.values(slots).some((t) => t.shape.length === 0 && t.data.length === 1),
                    `no scalar slot in ${Object.keys(slots)}`);
        }
        // The same step again: every part a duplicate, the current values.
        const again = await client.step(sliced, make(kind, 10 + PART_SIZES.length - 1),
                                        { seq: PART_SIZES.length, client: "trainer", partElements: 29 });
        assert.equal(again.duplicate, true);
        assert.equal(again.steps, PART_SIZES.length);
        assert.deepEqual(allBits(again.params), allBits(await client.pull(sliced)));
        // return: false: counters only.
        const g = make(kind, 99);
        const want = await client.step(whole, g, { return: false });
        const got = await client.step(sliced, g, { seq: 100, client: "trainer", partElements: 7, return: false });
        assert.equal(got.params, undefined);
        assert.deepEqual([got.steps, got.lr, got.next_lr], [want.steps, want.lr, want.next_lr]);
        await assertSameSession(sliced, whole, "after a step without return");
        await client.closeSession(whole);
        await client.closeSession(sliced);
      });
    }
  }
});

test("the parts a step is cut into", () => {
  const g = make("f32", 2);
  const parts = sliceGrads(g, 80);
  assert.equal(parts.length, Math.ceil(TOTAL / 80));
  // Every element exactly once, in order, each range viewing the gradient.
  const seen: Record<string, number> = {};
  for (const [i, part] of parts.entries()) {
    let n = 0;
    for (const [name, pg] of Object.entries(part)) {
      const whole = g[name]!;
      if ("offset" in pg) {
        assert.equal(pg.offset, seen[name] ?? 0, `${name} in part ${i}`);
        assert.equal(pg.values.shape.length, 1);
        assert.equal(pg.values.data.buffer, whole.data.buffer, "a range views the gradient");
        assert.equal(pg.values.data.byteOffset, whole.data.byteOffset + pg.offset * 4);
        seen[name] = pg.offset + pg.values.data.length;
        n += pg.values.data.length;
      } else {
        assert.equal(pg, whole);
        assert.equal(seen[name], undefined);
        seen[name] = whole.data.length;
        n += whole.data.length;
      }
    }
    assert.equal(n, i < parts.length - 1 ? 80 : TOTAL - 80 * (parts.length - 1), `part ${i}`);
  }
  for (const [name, t] of Object.entries(g)) assert.equal(seen[name], t.data.length, name);
  assert.equal(sliceGrads(g, 1000).length, 1);
  assert.equal(sliceGrads(g, 1).length, TOTAL);
  assert.deepEqual(sliceGrads({}, 5), [{}]);
  // At most 65536 parts: larger ones when needed.
  const big = { x: { dtype: "f32", shape: [200000], data: new Float32Array(200000) } as Tensor };
  assert.equal(sliceGrads(big, 1).length, Math.ceil(200000 / Math.ceil(200000 / 65536)));
  assert.throws(() => sliceGrads(g, 0), RangeError);
  assert.throws(() => sliceGrads(g, 2.5), RangeError);
});

test("a large range carries a pad key; a part's request names op step and part", () => {
  const g = { a: { dtype: "f32", shape: [40000], data: new Float32Array(40000) } as Tensor };
  const [first] = sliceGrads(g, 30000);
  const req = requests.stepPart({ session: "s", token: "t" }, first!, { index: 0, count: 2, seq: 3, client: "c" });
  const m = decode(encodeRequest(req, 5)) as Record<string, any>;
  assert.equal(m["op"], "step");
  assert.deepEqual(m["part"], { index: 0, count: 2 });
  assert.equal(m["seq"], 3);
  assert.equal(m["client"], "c");
  assert.equal(m["grads"]["a"]["offset"], 0);
  assert.deepEqual(Object.keys(m["grads"]["a"]["values"]), ["dtype", "shape", "pad", "data"]);
  assert.equal(m["grads"]["a"]["values"]["data"].byteLength, 120000);
});

test("large ranges are read in place by the daemon", async () => {
  const shapes = { a: [200000], b: [50000] };
  const start: Record<string, Tensor> = {
    a: make("f32", 3, { a: shapes.a })["a"]!,
    b: make("f64", 4, { b: shapes.b })["b"]!,
  };
  const grads = (k: number): Record<string, Tensor> => ({
    a: make("f32", 30 + k, { a: shapes.a })["a"]!,
    b: make("f64", 40 + k, { b: shapes.b })["b"]!,
  });
  const unaligned = async () => {
    const m = /metrics on (http:\/\/\S+\/metrics)/.exec(daemon.log());
    assert.ok(m, `no metrics address in the log:\n${daemon.log()}`);
    const text = await (await fetch(m[1]!)).text();
    const line = text.split("\n").find((l) => l.startsWith("optimd_unaligned_gradients_total "));
    assert.ok(line, "no optimd_unaligned_gradients_total");
    return Number(line.split(" ")[1]);
  };
  const whole = await open("adamw", start);
  const sliced = await open("adamw", start);
  const before = await unaligned();
  for (const [k, [size, window]] of [[60001, 2], [70001, 3], [45007, 1], [250000, 4]].entries()) {
    const g = grads(k);
    // Every piece is 64 KiB or more, so every one is padded.
    for (const part of sliceGrads(g, size!)) {
      for (const pg of Object.values(part)) {
        const t = "offset" in pg ? pg.values : pg;
        assert.ok(t.data.byteLength >= 65536, `a piece of ${t.data.byteLength} bytes with parts of ${size}`);
      }
    }
    const want = await client.step(whole, g, { return: k % 2 === 0 });
    const got = await client.step(sliced, g, { seq: k + 1, partElements: size!, partsInFlight: window!, return: k % 2 === 0 });
    assert.deepEqual(allBits(got.params), allBits(want.params), `step ${k + 1}`);
    assert.equal(got.steps, k + 1);
  }
  assert.equal(await unaligned(), before, "the daemon copied large ranges to align them");
  await assertSameSession(sliced, whole, "after large sliced steps");
});

test("parts out of order with stepPart", async () => {
  const start = make("f32", 5);
  const whole = await open("adamw", start);
  const sliced = await open("adamw", start);
  const g = make("f32", 6);
  const want = await client.step(whole, g);
  const parts = sliceGrads(g, 80);
  assert.equal(parts.length, 4);
  const got: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(start)) got[name] = { dtype: "f32", shape: t.shape, data: new Float32Array(t.data.length) } as Tensor;
  const order = [2, 0, 3, 1];
  for (const [k, index] of order.entries()) {
    const r = await client.stepPart(sliced, parts[index]!, { index, count: 4, seq: 1, client: "x" });
    const last = k === order.length - 1;
    assert.deepEqual([r.complete, r.parts, r.duplicate, r.steps], [last, k + 1, false, last ? 1 : 0], `part ${index}`);
    if (!last) assert.equal(r.next_lr, r.lr);
    // Each parameter the part named, at the offset and length sent.
    const sent = parts[index]!;
    assert.deepEqual(Object.keys(r.params!).sort(), Object.keys(sent).sort());
    for (const [name, range] of Object.entries(r.params!)) {
      const pg = sent[name]!;
      const [offset, n] = "offset" in pg ? [pg.offset, pg.values.data.length] : [0, pg.data.length];
      assert.deepEqual([range.offset, range.values.data.length, range.values.dtype], [offset, n, "f32"], name);
      got[name]!.data.set(range.values.data, range.offset);
    }
    const pending = (await client.info(sliced)).pending_step;
    assert.deepEqual(pending, last ? undefined : { client: "x", seq: 1, count: 4, applied: k + 1 });
  }
  assert.deepEqual(allBits(got), allBits(want.params));
  await assertSameSession(sliced, whole, "after parts out of order");
  // A part sent again: a duplicate with the current values.
  const again = await client.stepPart(sliced, parts[2]!, { index: 2, count: 4, seq: 1, client: "x" });
  assert.deepEqual([again.complete, again.duplicate, again.steps], [true, true, 1]);
  const current = await client.pull(sliced);
  for (const [name, range] of Object.entries(again.params!)) {
    const n = range.values.data.length;
    assert.equal(hex(new Uint8Array(range.values.data.buffer, range.values.data.byteOffset, 4 * n)),
                 hex(new Uint8Array(current[name]!.data.buffer, current[name]!.data.byteOffset + 4 * range.offset, 4 * n)), name);
  }
});

test("a pending step: STEP_PENDING for other steps, a retry completes it", async () => {
  const start = make("f64", 7);
  const whole = await open("adamw", start);
  const sliced = await open("adamw", start);
  const g = make("f64", 8);
  const want = await client.step(whole, g);
  const parts = sliceGrads(g, 50);
  assert.equal(parts.length, 6);
  for (const index of [0, 3]) await client.stepPart(sliced, parts[index]!, { index, count: 6, seq: 1, client: "r" });
  assert.deepEqual((await client.info(sliced)).pending_step, { client: "r", seq: 1, count: 6, applied: 2 });
  const pending = assertServerError(ErrorCode.STEP_PENDING, "STEP_PENDING");
  await assert.rejects(client.step(sliced, g), pending, "a plain step");
  await assert.rejects(client.step(sliced, g, { seq: 2, client: "r" }), pending, "the next seq");
  await assert.rejects(client.step(sliced, g, { seq: 1, client: "other", partElements: 50 }), pending, "another client's sliced step");
  await assert.rejects(client.stepPart(sliced, parts[1]!, { index: 1, count: 6, seq: 2, client: "r" }), pending, "a part of another step");
  await assert.rejects(client.setHparams(sliced, { lr: 0.5 }), pending, "set_hparams");
  // Reads see the parameters part-updated.
  assert.equal((await client.pull(sliced))["w1"]!.data.length, 37);
  // The same step again: parts 0 and 3 duplicates, the rest applied.
  const got = await client.step(sliced, g, { seq: 1, client: "r", partElements: 50, partsInFlight: 3 });
  assert.deepEqual(allBits(got.params), allBits(want.params));
  assert.deepEqual([got.steps, got.duplicate], [1, false]);
  assert.equal((await client.info(sliced)).pending_step, undefined);
  await assertSameSession(sliced, whole, "after the retry");
  // And again: complete before, so a duplicate.
  const dup = await client.step(sliced, g, { seq: 1, client: "r", partElements: 50 });
  assert.deepEqual([dup.steps, dup.duplicate], [1, true]);
  assert.deepEqual(allBits(dup.params), allBits(want.params));
});

test("abandonStep ends a pending step as it stands", async () => {
  const start = make("f64", 11);
  const s = await open("adamw", start);
  const g = make("f64", 12);
  const parts = sliceGrads(g, 100);
  assert.equal(parts.length, 3);
  const r0 = await client.stepPart(s, parts[0]!, { index: 0, count: 3, seq: 7, client: "a" });
  assert.deepEqual([r0.complete, r0.parts, r0.steps], [false, 1, 0]);
  assert.deepEqual((await client.info(s)).pending_step, { client: "a", seq: 7, count: 3, applied: 1 });
  await assert.rejects(client.step(s, g), assertServerError(ErrorCode.STEP_PENDING, "STEP_PENDING"));
  const bad = assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST");
  await assert.rejects(client.abandonStep(s, 8, "a"), bad, "another seq");
  await assert.rejects(client.abandonStep(s, 7), bad, "another client");
  const ended = await client.abandonStep(s, 7, "a");
  assert.deepEqual([ended.parts, ended.steps, ended.duplicate], [1, 1, false]);
  assert.equal(typeof ended.lr, "number");
  const info = await client.info(s, { client: "a" });
  assert.equal(info.pending_step, undefined);
  assert.deepEqual([info.steps, info.client_seq], [1, 7]);
  // Part 0's elements were updated, the others are as they were.
  const now = await client.pull(s);
  for (const [name, t] of Object.entries(start)) {
    const p0 = parts[0]![name];
    const [from, to] = p0 === undefined ? [0, 0] : "offset" in p0 ? [p0.offset, p0.offset + p0.values.data.length] : [0, t.data.length];
    for (let i = 0; i < t.data.length; i++) {
      const changed = now[name]!.data[i] !== t.data[i];
      assert.equal(changed, i >= from && i < to, `${name}[${i}]`);
    }
  }
  // Its other parts are duplicates now; nothing is pending any more.
  const late = await client.stepPart(s, parts[1]!, { index: 1, count: 3, seq: 7, client: "a" });
  assert.equal(late.duplicate, true);
  await assert.rejects(client.abandonStep(s, 7, "a"), bad, "nothing pending");
  assert.equal((await client.step(s, g)).steps, 2);
});

test("lamb (not element-wise) refuses parts with BAD_REQUEST", async () => {
  const plugins = await client.plugins();
  const sliced = (id: string) => plugins.find((p) => p.id === id)?.sliced;
  assert.deepEqual([sliced("adamw"), sliced("nadam"), sliced("lamb")], [true, true, false]);
  const start = make("f32", 13);
  const s = await open("lamb", start);
  const g = make("f32", 14);
  const bad = assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST");
  await assert.rejects(client.step(s, g, { seq: 1, partElements: 50 }), bad);
  await assert.rejects(client.stepPart(s, g, { index: 0, count: 1, seq: 1 }), bad);
  const info = await client.info(s);
  assert.deepEqual([info.steps, info.pending_step], [0, undefined]);
  assert.deepEqual(allBits(await client.pull(s)), allBits(start), "nothing applied");
  assert.equal((await client.step(s, g)).steps, 1, "whole steps still go");
});

test("arguments a sliced step refuses before sending anything", async () => {
  const s = { session: "nothing-sent", token: "0".repeat(32) };
  const g = make("f32", 1);
  const refuse = (opts: Parameters<Client["step"]>[2], kind: typeof TypeError | typeof RangeError) =>
    assert.rejects(async () => client.step(s, g, opts), kind, JSON.stringify(opts));
  await refuse({ partElements: 10 }, TypeError);                                  // no seq
  await refuse({ partElements: 10, seq: 1, clip_norm: { max_norm: 1 } }, TypeError);
  await refuse({ partElements: 10, seq: 1, worker: "w" }, TypeError);
  await refuse({ partElements: 0, seq: 1 }, RangeError);
  await refuse({ partElements: 1.5, seq: 1 }, RangeError);
  await refuse({ partElements: 10, seq: 1, partsInFlight: 0 }, RangeError);
  await assert.rejects(async () => client.stepPart(s, g, { index: -1, count: 1, seq: 1 }), RangeError);
  await assert.rejects(async () => client.stepPart(s, { w1: { offset: -2, values: g["w1"]! } }, { index: 0, count: 1, seq: 1 }),
                       RangeError);
  await assert.rejects(async () => client.stepPart(s, g, { index: 0, count: 1 } as never), TypeError);
});

// ------------------------------------------------------ a stand-in daemon

interface Seen {
  index: number;
  count: number;
  seq: unknown;
  client: unknown;
  names: string[];
}

/** A RepServer answering step parts as the daemon would, each after `delayMs`:
 * the new values are the gradients sent; the part that makes `count` answers
 * is complete. `fail` maps a part index to an error reply, sent at once. */
async function standIn(delayMs: number, fail: Record<number, [number, string]> = {}) {
  const state = { inFlight: 0, maxInFlight: 0, seen: [] as Seen[], answered: new Set<number>() };
  const server = await RepServer.listen("tcp://127.0.0.1:0", async (body) => {
    const req = decode(body) as Record<string, any>;
    const part = req["part"] as { index: number; count: number };
    state.seen.push({ index: part.index, count: part.count, seq: req["seq"], client: req["client"], names: Object.keys(req["grads"]) });
    state.inFlight++;
    state.maxInFlight = Math.max(state.maxInFlight, state.inFlight);
    const f = fail[part.index];
    await new Promise((r) => setTimeout(r, f ? 0 : delayMs));
    state.inFlight--;
    if (f) return encode({ v: 1, id: req["id"], ok: false, code: f[0], error: f[1], message: "refused by the stand-in" });
    state.answered.add(part.index);
    const params: Record<string, unknown> = {};
    for (const [name, g] of Object.entries(req["grads"] as Record<string, any>)) {
      const t = "offset" in g ? g["values"] : g;
      const n = (t["data"] as Uint8Array).byteLength / (t["dtype"] === "f32" ? 4 : 8);
      params[name] = { offset: "offset" in g ? g["offset"] : 0, values: { dtype: t["dtype"], shape: [n], data: t["data"] } };
    }
    const complete = state.answered.size === part.count;
    return encode({ v: 1, id: req["id"], ok: true, steps: complete ? 1 : 0, lr: 0.5, next_lr: complete ? 0.25 : 0.5,
                    duplicate: false, complete, parts: state.answered.size, params });
  });
  return { server, state };
}

describe("with a stand-in daemon", () => {
  const s = { session: "fake", token: "f".repeat(32) };

  test("up to partsInFlight parts at once; the result assembled from the replies", async () => {
    for (const [window, maxConnections, want] of [[3, 4, 3], [1, 4, 1], [5, 2, 2]] as const) {
      const { server, state } = await standIn(40);
      const c = new Client(server.url, { timeoutMs: 30000, maxConnections });
      try {
        const g = make("f64", 21);
        const r = await c.step(s, g, { seq: 9, client: "me", partElements: 30, partsInFlight: window });
        const count = Math.ceil(TOTAL / 30);
        assert.equal(state.maxInFlight, want, `partsInFlight ${window}, maxConnections ${maxConnections}`);
        assert.deepEqual(state.seen.map((x) => x.index).sort((a, b) => a - b), Array.from({ length: count }, (_, i) => i));
        for (const x of state.seen) assert.deepEqual([x.count, x.seq, x.client], [count, 9, "me"]);
        assert.deepEqual(allBits(r.params), allBits(g), "the replies' values in the gradients' shapes");
        assert.deepEqual([r.steps, r.lr, r.next_lr, r.duplicate], [1, 0.5, 0.25, false]);
      } finally {
        c.close();
        await server.close();
      }
    }
  });

  test("a refused part stops the sending; the call rejects once the parts in flight are answered", async () => {
    // Part 1 is refused at once while part 0 takes 150 ms.
    const { server, state } = await standIn(150, { 1: [ErrorCode.STEP_PENDING, "STEP_PENDING"] });
    const c = new Client(server.url, { timeoutMs: 30000 });
    try {
      const g = make("f32", 22);
      const count = Math.ceil(TOTAL / 29);
      await assert.rejects(c.step(s, g, { seq: 1, partElements: 29, partsInFlight: 2 }), (err: unknown) => {
        assertServerError(ErrorCode.STEP_PENDING, "STEP_PENDING")(err);
        assert.equal(state.inFlight, 0, "rejected while parts were in flight");
        return true;
      });
      assert.deepEqual(state.seen.map((x) => x.index).sort(), [0, 1], `parts sent of ${count}`);
    } finally {
      c.close();
      await server.close();
    }
  });
});
