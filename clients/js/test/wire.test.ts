/**
 * Requests and replies without a socket: tensor bytes, copies avoided,
 * strict reply checks. Expected bytes are written out by hand or made with
 * the test's own msgpack reader, not with the client's encoder.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { decode, encode } from "@msgpack/msgpack";
import {
  ProtocolError,
  ServerError,
  decodeTensor,
  encodeRequest,
  encodeTensor,
  parseReply,
  requests,
  tensor,
  type Tensor,
} from "../src/index.js";
import { readMsgpack } from "./msgpack_typed.js";
import { hex } from "./support.js";

const TOKEN = "0123456789abcdef0123456789abcdef";
const s = { session: "run1", token: TOKEN };

test("f32 and f64 tensors are little-endian IEEE bytes, viewed not copied", () => {
  const a = new Float32Array([1.5, -2]);
  const wire = encodeTensor(tensor(a)) as { dtype: string; shape: number[]; data: Uint8Array };
  assert.equal(wire.dtype, "f32");
  assert.deepEqual(wire.shape, [2]);
  // 1.5f = 0x3fc00000, -2.0f = 0xc0000000, written least significant byte first.
  assert.equal(hex(wire.data), "0000c03f000000c0");
  assert.equal(wire.data.buffer, a.buffer, "no copy on a little-endian host");
  const d = encodeTensor(tensor(new Float64Array([1]), [])) as { data: Uint8Array; shape: number[] };
  assert.equal(hex(d.data), "000000000000f03f");
  assert.deepEqual(d.shape, []);
});

test("a received tensor views the message when aligned, else is copied", () => {
  const bytes = new Uint8Array(9 * 4);
  const dv = new DataView(bytes.buffer);
  dv.setFloat32(4, 0.5, true);
  dv.setFloat32(8, -3, true);
  const aligned = decodeTensor({ dtype: "f32", shape: [2], data: bytes.subarray(4, 12) });
  assert.deepEqual([...aligned.data], [0.5, -3]);
  assert.equal(aligned.data.buffer, bytes.buffer);
  dv.setFloat32(5, 0.25, true);
  const unaligned = decodeTensor({ dtype: "f32", shape: [1], data: bytes.subarray(5, 9) });
  assert.deepEqual([...unaligned.data], [0.25]);
  assert.notEqual(unaligned.data.buffer, bytes.buffer);
  const f64 = new Uint8Array(16);
  new DataView(f64.buffer).setFloat64(8, Math.PI, true);
  assert.deepEqual([...decodeTensor({ dtype: "f64", shape: [1, 1], data: f64.subarray(8) }).data], [Math.PI]);
});

test("tensors that do not match their shape are refused both ways", () => {
  assert.throws(() => tensor(new Float32Array(3), [2, 2]), RangeError);
  assert.throws(() => encodeTensor({ dtype: "f32", shape: [1], data: new Float64Array(1) } as never), TypeError);
  assert.throws(() => tensor(new Float32Array(1), [1, 1, 1, 1, 1, 1, 1, 1, 1]), RangeError);
  assert.throws(() => decodeTensor({ dtype: "f32", shape: [3], data: new Uint8Array(8) }), ProtocolError);
  assert.throws(() => decodeTensor({ dtype: "f16", shape: [1], data: new Uint8Array(2) }), ProtocolError);
  assert.throws(() => decodeTensor({ dtype: "f32", shape: [-1], data: new Uint8Array(0) }), ProtocolError);
  assert.throws(() => decodeTensor({ dtype: "f32", shape: [1], data: "abcd" }), ProtocolError);
  assert.throws(() => decodeTensor([1, 2]), ProtocolError);
});

test("a step request carries the envelope and exactly the given keys", () => {
  const bytes = encodeRequest(requests.step(s, { w: tensor(new Float32Array([1.5, -2])) }, { seq: 3, client: "w0", return: false }), 7);
  const node = readMsgpack(bytes);
  assert.equal(node.t, "map");
  const keys = node.t === "map" ? node.v.map(([k]) => (k.t === "str" ? k.v : "?")).sort() : [];
  assert.deepEqual(keys, ["client", "grads", "id", "op", "return", "seq", "session", "token", "v"]);
  const m = new Map(node.t === "map" ? node.v.map(([k, v]) => [k.t === "str" ? k.v : "", v]) : []);
  assert.deepEqual(m.get("v"), { t: "int", v: 1n });
  assert.deepEqual(m.get("id"), { t: "int", v: 7n });
  assert.deepEqual(m.get("op"), { t: "str", v: "step" });
  assert.deepEqual(m.get("seq"), { t: "int", v: 3n });
  assert.deepEqual(m.get("return"), { t: "bool", v: false });
  const grads = m.get("grads");
  assert.ok(grads && grads.t === "map");
  const w = grads.v[0]![1];
  assert.ok(w.t === "map");
  const wm = new Map(w.v.map(([k, v]) => [k.t === "str" ? k.v : "", v]));
  assert.deepEqual(wm.get("data"), { t: "bin", v: "0000c03f000000c0" });
  assert.deepEqual(wm.get("shape"), { t: "arr", v: [{ t: "int", v: 2n }] });
  // Optional keys left out are absent, not nil.
  const plain = readMsgpack(encodeRequest(requests.pull(s), 1));
  assert.ok(plain.t === "map" && !plain.v.some(([k]) => k.t === "str" && k.v === "names"));
  assert.throws(() => requests.step(s, {}, { seq: 1.5 }), RangeError);
  assert.throws(() => requests.pull({ session: "x" } as never), TypeError);
});

const ok = (id: number, extra: Record<string, unknown>) => encode({ v: 1, id, ok: true, ...extra });

test("replies: results, errors and every kind of invalid reply", () => {
  assert.deepEqual(parseReply("register", ok(4, { registered: 2, future_key: "x" }), 4), { registered: 2 });
  assert.deepEqual(parseReply("close", ok(4, {}), 4n), {});
  // A uint64-encoded id near 2^64 is compared exactly.
  const big = Uint8Array.from([0x83, 0xa1, 0x76, 0x01, 0xa2, 0x69, 0x64, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xa2, 0x6f, 0x6b, 0xc3]);
  assert.deepEqual(parseReply("close", big, 2n ** 64n - 2n), {});
  assert.throws(() => parseReply("close", big, 2n ** 64n - 1n), ProtocolError);

  const err = encode({ v: 1, id: 4, ok: false, code: 21, error: "BAD_TOKEN", message: "no" });
  assert.throws(() => parseReply("pull", err, 4), (e: unknown) =>
    e instanceof ServerError && e.code === 21 && e.name === "BAD_TOKEN" && e.message === "no" && e.requestId === 4n);
  // An error about an undecodable request has id 0.
  assert.throws(() => parseReply("pull", encode({ v: 1, id: 0, ok: false, code: 1, error: "MALFORMED", message: "" }), 4), ServerError);

  const invalid: Array<[string, Uint8Array]> = [
    ["wrong id", ok(5, { registered: 1 })],
    ["id 0 on success", ok(0, { registered: 1 })],
    ["version 2", encode({ v: 2, id: 4, ok: true, registered: 1 })],
    ["no version", encode({ id: 4, ok: true, registered: 1 })],
    ["ok not bool", encode({ v: 1, id: 4, ok: 1, registered: 1 })],
    ["missing key", ok(4, {})],
    ["negative count", ok(4, { registered: -1 })],
    ["float count", ok(4, { registered: 1.5 })],
    ["bool count", ok(4, { registered: true })],
    ["error without code", encode({ v: 1, id: 4, ok: false, error: "X", message: "" })],
    ["error code a string", encode({ v: 1, id: 4, ok: false, code: "21", error: "BAD_TOKEN", message: "" })],
    ["not a map", encode([1, 2])],
    ["integer keys", encode(new Map<unknown, unknown>([[1, 2]]))],
    ["trailing bytes", Uint8Array.from([...ok(4, { registered: 1 }), 0xc0])],
    ["truncated", ok(4, { registered: 1 }).subarray(0, 5)],
    ["empty", new Uint8Array(0)],
    ["reserved byte", Uint8Array.from([0xc1])],
  ];
  for (const [what, bytes] of invalid) {
    assert.throws(() => parseReply("register", bytes, 4), ProtocolError, what);
  }
  // Inherited names are not keys: "toString" exists on every object.
  assert.throws(() => parseReply("open", ok(4, { session: "s", lr: 1 }), 4), ProtocolError);
  assert.throws(() => parseReply("open", encode({ v: 1, id: 4, ok: true, session: "s", lr: 1, constructor: 1 }), 4), ProtocolError);
  // A tensor whose bytes do not match its shape, deep in a state reply.
  const st = ok(4, { state: { w: { exp_avg: { dtype: "f64", shape: [2], data: new Uint8Array(8) } } } });
  assert.throws(() => parseReply("state", st, 4), ProtocolError);
  const fine = ok(4, { state: { w: { exp_avg: { dtype: "f64", shape: [1], data: new Uint8Array(8) } }, v: {} } });
  const parsed = parseReply("state", fine, 4);
  assert.deepEqual(Object.keys(parsed.state), ["w", "v"]);
  assert.deepEqual([...parsed.state["w"]!["exp_avg"]!.data], [0]);
});

/** The request's keys (envelope aside) as typed msgpack nodes. */
function fieldsOf(bytes: Uint8Array) {
  const node = readMsgpack(bytes);
  assert.ok(node.t === "map");
  const m = new Map(node.v.map(([k, v]) => [k.t === "str" ? k.v : "?", v]));
  for (const k of ["v", "id", "op"]) m.delete(k);
  return m;
}

test("groups, open_key, clipping and observe in requests", () => {
  const open = fieldsOf(encodeRequest(requests.open("run1", "sgd", {
    hparams: { lr: 0.5 },
    groups: [{ name: "head", scheduler: null }, { name: "body", hparams: { lr: 0.25 }, scheduler: "plateau", sched_hparams: { patience: 0 } }],
    open_key: "k".repeat(16),
  }), 1));
  assert.deepEqual([...open.keys()].sort(), ["groups", "hparams", "open_key", "optimizer", "session"]);
  const groups = open.get("groups");
  assert.ok(groups?.t === "arr" && groups.v.length === 2);
  // scheduler: null is sent as nil ("no scheduler"), not left out ("the default group's").
  assert.deepEqual(groups.v[0], { t: "map", v: [[{ t: "str", v: "name" }, { t: "str", v: "head" }], [{ t: "str", v: "scheduler" }, { t: "nil" }]] });
  assert.deepEqual(open.get("open_key"), { t: "str", v: "kkkkkkkkkkkkkkkk" });
  for (const bad of ["k".repeat(15), "k".repeat(65), "has a space here!", "é".repeat(16)]) {
    assert.throws(() => requests.open("r", "sgd", { open_key: bad }), RangeError, bad);
  }
  assert.throws(() => requests.open("r", "sgd", { groups: [{ hparams: {} } as never] }), TypeError);

  const step = fieldsOf(encodeRequest(requests.step(s, {}, { clip_value: 0.5, clip_norm: { max_norm: 2, norm_type: Infinity, per_group: true } }), 2));
  assert.deepEqual(step.get("clip_value"), { t: "float", v: 0.5, f32: false });
  const cn = step.get("clip_norm");
  assert.ok(cn?.t === "map");
  const cnm = new Map(cn.v.map(([k, v]) => [k.t === "str" ? k.v : "?", v]));
  assert.deepEqual(cnm.get("norm_type"), { t: "float", v: Infinity, f32: false });
  assert.deepEqual(cnm.get("per_group"), { t: "bool", v: true });
  assert.deepEqual(cnm.get("max_norm"), { t: "int", v: 2n });
  for (const bad of [{ clip_value: 0 }, { clip_value: NaN }, { clip_norm: { max_norm: -1 } }, { clip_norm: { max_norm: 1, norm_type: 0 } }]) {
    assert.throws(() => requests.step(s, {}, bad), RangeError, JSON.stringify(bad));
  }

  const obs = fieldsOf(encodeRequest(requests.observe(s, NaN, { group: "head" }), 3));
  assert.deepEqual([...obs.keys()].sort(), ["group", "metric", "session", "token"]);
  const metric = obs.get("metric");
  assert.ok(metric?.t === "float" && Number.isNaN(metric.v), "NaN is a metric (a bad epoch)");
  assert.throws(() => requests.observe(s, "1" as never), TypeError);

  assert.deepEqual(fieldsOf(encodeRequest(requests.register(s, {}, { group: "head" }), 4)).get("group"), { t: "str", v: "head" });
  assert.deepEqual(fieldsOf(encodeRequest(requests.setHparams(s, { lr: 1 }, { group: "head" }), 5)).get("group"), { t: "str", v: "head" });
  assert.ok(!fieldsOf(encodeRequest(requests.setHparams(s, { lr: 1 }), 6)).has("group"));
});

test("group lrs, grad norms, observe and unknown slot shapes in replies", () => {
  const step = parseReply("step", ok(4, {
    steps: 2, lr: 0.1, next_lr: 0.1, duplicate: false,
    lrs: { default: 0.1, head: 1 }, next_lrs: { default: 0.1, head: 0.5 }, grad_norms: { head: 3 },
  }), 4);
  assert.deepEqual(step.lrs, { default: 0.1, head: 1 });
  assert.deepEqual(step.next_lrs, { default: 0.1, head: 0.5 });
  assert.deepEqual(step.grad_norms, { head: 3 });
  assert.equal(step.grad_norm, undefined);
  assert.equal(parseReply("step", ok(4, { steps: 2, lr: 0.1, next_lr: 0.1, duplicate: false, grad_norm: 2.5 }), 4).grad_norm, 2.5);
  assert.deepEqual(parseReply("observe", ok(4, { lr: 0.5, lrs: { default: 0.5 } }), 4), { lr: 0.5, lrs: { default: 0.5 } });
  assert.equal(parseReply("open", ok(4, { session: "s", token: TOKEN, lr: 1, existing: true }), 4).existing, true);

  const slot = (shape: string) => ({ key: "k", dtype: "f32", shape, enabled_by: null, doc: "" });
  const plugins = parseReply("plugins", ok(4, {
    plugins: [{ id: "x", kind: "optimizer", version: "1", description: "", hparams: [], slots: [slot("rows"), slot("cols"), slot("diagonal")], dtypes: ["f32"] }],
  }), 4);
  assert.deepEqual(plugins.plugins[0]!.slots!.map((x) => x.shape), ["rows", "cols", "diagonal"]);

  const invalid: Array<[string, Uint8Array, "step" | "observe" | "open" | "hparams"]> = [
    ["lrs value a string", ok(4, { steps: 1, lr: 1, next_lr: 1, duplicate: false, lrs: { default: "1" } }), "step"],
    ["lrs an array", ok(4, { steps: 1, lr: 1, next_lr: 1, duplicate: false, lrs: [1] }), "step"],
    ["grad_norm a map", ok(4, { steps: 1, lr: 1, next_lr: 1, duplicate: false, grad_norm: { a: 1 } }), "step"],
    ["observe without lrs", ok(4, { lr: 1 }), "observe"],
    ["open without existing", ok(4, { session: "s", token: TOKEN, lr: 1 }), "open"],
    ["hparams without groups", ok(4, { hparams: {}, sched_hparams: {}, base_lr: 1, lr: 1 }), "hparams"],
    ["a group without params", ok(4, { hparams: {}, sched_hparams: {}, base_lr: 1, lr: 1,
      groups: [{ name: "default", scheduler: null, hparams: {}, sched_hparams: {}, base_lr: 1, lr: 1 }] }), "hparams"],
  ];
  for (const [what, bytes, op] of invalid) assert.throws(() => parseReply(op, bytes, 4), ProtocolError, what);
});

// --------------------------------------------------- large tensors padded

/** The protocol page's threshold, written out so that the test pins it. */
const PAD_SIZE = 65536;

interface WireTensor {
  keys: string[];
  dataAt: number;
  dataLen: number;
  pad?: Uint8Array;
  padCode?: number;
}

/** Where each tensor of a request's `field` map lies in its bytes: keys in
 * order, the offset of data's first byte, the pad. A msgpack walk of its
 * own, written for the kinds a request holds. */
function tensorLayout(b: Uint8Array, field: string): Map<string, WireTensor> {
  let pos = 0;
  const u = (n: number) => {
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + b[pos++]!;
    return v;
  };
  // [kind, length] of the header at pos, pos moved past it.
  const header = (): ["map" | "arr" | "str" | "bin" | "scalar", number] => {
    const c = b[pos++]!;
    if (c <= 0x7f || c >= 0xe0 || c === 0xc0 || c === 0xc2 || c === 0xc3) return ["scalar", 0];
    if (c >= 0x80 && c <= 0x8f) return ["map", c & 0x0f];
    if (c >= 0x90 && c <= 0x9f) return ["arr", c & 0x0f];
    if (c >= 0xa0 && c <= 0xbf) return ["str", c & 0x1f];
    switch (c) {
      case 0xc4: return ["bin", u(1)];
      case 0xc5: return ["bin", u(2)];
      case 0xc6: return ["bin", u(4)];
      case 0xd9: return ["str", u(1)];
      case 0xda: return ["str", u(2)];
      case 0xdb: return ["str", u(4)];
      case 0xdc: return ["arr", u(2)];
      case 0xdd: return ["arr", u(4)];
      case 0xde: return ["map", u(2)];
      case 0xdf: return ["map", u(4)];
      case 0xca: case 0xce: case 0xd2: pos += 4; return ["scalar", 0];
      case 0xcb: case 0xcf: case 0xd3: pos += 8; return ["scalar", 0];
      case 0xcc: case 0xd0: pos += 1; return ["scalar", 0];
      case 0xcd: case 0xd1: pos += 2; return ["scalar", 0];
    }
    throw new Error(`msgpack code 0x${c.toString(16)} at ${pos - 1}`);
  };
  const skip = (): void => {
    const [kind, n] = header();
    if (kind === "str" || kind === "bin") pos += n;
    else if (kind === "arr") for (let i = 0; i < n; i++) skip();
    else if (kind === "map") for (let i = 0; i < 2 * n; i++) skip();
  };
  const str = (): string => {
    const [kind, n] = header();
    assert.equal(kind, "str");
    pos += n;
    return new TextDecoder().decode(b.subarray(pos - n, pos));
  };
  const out = new Map<string, WireTensor>();
  const [top, n] = header();
  assert.equal(top, "map");
  for (let i = 0; i < n; i++) {
    if (str() !== field) {
      skip();
      continue;
    }
    const [, nt] = header();
    for (let j = 0; j < nt; j++) {
      const name = str();
      const [kind, nk] = header();
      assert.equal(kind, "map");
      const t: WireTensor = { keys: [], dataAt: -1, dataLen: -1 };
      for (let k = 0; k < nk; k++) {
        const key = str();
        t.keys.push(key);
        if (key !== "data" && key !== "pad") {
          skip();
          continue;
        }
        const code = b[pos]!;
        const [bk, len] = header();
        assert.equal(bk, "bin", `${name}.${key}`);
        if (key === "data") {
          t.dataAt = pos;
          t.dataLen = len;
        } else {
          t.pad = b.subarray(pos, pos + len);
          t.padCode = code;
        }
        pos += len;
      }
      out.set(name, t);
    }
  }
  assert.equal(pos, b.length, "the request is one msgpack map");
  return out;
}

/** n elements whose bytes are not all alike. */
function filled(kind: "f32" | "f64", n: number, seed: number, shape?: number[]) {
  const a = kind === "f32" ? new Float32Array(n) : new Float64Array(n);
  for (let i = 0; i < n; i++) a[i] = ((i * 7 + seed) % 1000) - 500.25;
  return tensor(a, shape);
}

/** Steps with `grads` for session names of 1 to 16 characters (every
 * offset mod 16 for the tensors that follow): each tensor of 64 KiB or more
 * is {dtype, shape, pad, data} with data where 4 + its offset is a multiple
 * of 16 and a bin8 pad of at most 15 zeros, each smaller one is as before,
 * and the message decodes as the unpadded one but for the pad keys. The
 * pad lengths seen. */
function checkPadded(grads: Record<string, Tensor>): Set<number> {
  const seen = new Set<number>();
  for (let n = 1; n <= 16; n++) {
    const req = requests.step({ session: "s".repeat(n), token: TOKEN }, grads, { seq: 2, client: "c".repeat(n - 1) });
    const got = encodeRequest(req, 99);
    const layout = tensorLayout(got, "grads");
    assert.equal(layout.size, Object.keys(grads).length);
    for (const [name, g] of Object.entries(grads)) {
      const t = layout.get(name)!;
      const bytes = new Uint8Array(g.data.buffer, g.data.byteOffset, g.data.byteLength);
      assert.equal(t.dataLen, bytes.length, name);
      assert.ok(Buffer.from(got.subarray(t.dataAt, t.dataAt + t.dataLen)).equals(bytes), `${name}: data is the tensor's bytes`);
      if (bytes.length < PAD_SIZE) {
        assert.deepEqual(t.keys, ["dtype", "shape", "data"], `small ${name}`);
        continue;
      }
      assert.deepEqual(t.keys, ["dtype", "shape", "pad", "data"], `large ${name}`);
      assert.equal((4 + t.dataAt) % 16, 0, `session of ${n}: ${name} data at body offset ${t.dataAt}`);
      assert.equal(t.padCode, 0xc4, `${name}: pad is bin8`);
      assert.ok(t.pad!.length <= 15 && t.pad!.every((x) => x === 0), `${name}: pad ${hex(t.pad!)}`);
      assert.equal(got[t.dataAt - 5], 0xc6, `${name}: data is bin32`);
      seen.add(t.pad!.length);
    }
    // Decoded, it is the unpadded message (@msgpack/msgpack on the same
    // object, as this client sent it before) with pad keys added.
    const unpadded = encode({ v: 1, id: 99, op: "step", ...req.fields }, { ignoreUndefined: true });
    const mine = decode(got) as { grads: Record<string, Record<string, unknown>> };
    for (const [name, t] of Object.entries(mine.grads)) {
      const large = grads[name]!.data.byteLength >= PAD_SIZE;
      assert.equal("pad" in t, large, `${name}: pad key`);
      if (large) {
        assert.ok(t["pad"] instanceof Uint8Array && t["pad"].every((x) => x === 0));
        delete t["pad"];
      }
    }
    assert.deepEqual(mine, decode(unpadded), `session of ${n}`);
  }
  return seen;
}

const allPadLengths = (seen: Set<number>) =>
  assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 16 }, (_, i) => i));

test("one large tensor: its data aligned for the daemon at every offset", () => {
  allPadLengths(checkPadded({ w: filled("f32", PAD_SIZE / 4, 1) }));
});

test("large tensors of several sizes beside small ones: each large one aligned", () => {
  allPadLengths(checkPadded({
    "a.big": filled("f32", PAD_SIZE / 4 + 1, 2),
    "b.small": filled("f32", 3, 3),
    "c.big64": filled("f64", 12345, 4),
    "d.under": filled("f32", PAD_SIZE / 4 - 1, 5),
    "e.scalar": filled("f64", 1, 6, []),
    "f.big": filled("f32", 7 * 3001, 7, [7, 3001]),
    "g.empty": filled("f32", 0, 8),
  }));
  // register pads too.
  const reg = encodeRequest(requests.register(s, { w: filled("f64", PAD_SIZE, 1) }, { group: "g" }), 1);
  const w = tensorLayout(reg, "params").get("w")!;
  assert.deepEqual(w.keys, ["dtype", "shape", "pad", "data"]);
  assert.equal((4 + w.dataAt) % 16, 0);
});

test("requests without a large tensor have @msgpack/msgpack's bytes", () => {
  const small = { w: filled("f32", 10, 1), v: filled("f64", PAD_SIZE / 8 - 1, 2), s: filled("f32", 1, 3, []) };
  const reqs = [
    requests.step(s, small, { seq: 1, client: "me", clip_norm: { max_norm: 1, norm_type: Infinity } }),
    requests.register(s, small, { group: "g" }),
    requests.hello({ client: undefined }),
    requests.open("run1", "sgd", {
      hparams: { lr: 0.5, nesterov: true },
      groups: [{ name: "head", scheduler: null }, { name: "body", hparams: { lr: 0.25 }, scheduler: "plateau" }],
      workers: { mode: "sync", count: 2 },
    }),
    requests.pull(s),
    requests.import(new Uint8Array(PAD_SIZE * 2), { session: "x" }),
  ];
  for (const req of reqs) {
    const want = encode({ v: 1, id: 2 ** 40, op: req.op, ...req.fields }, { ignoreUndefined: true });
    assert.equal(hex(encodeRequest(req, 2 ** 40)), hex(want), req.op);
  }
});
