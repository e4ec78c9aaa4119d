/**
 * Requests and replies without a socket: tensor bytes, copies avoided,
 * strict reply checks. Expected bytes are written out by hand or made with
 * the test's own msgpack reader, not with the client's encoder.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { encode } from "@msgpack/msgpack";
import {
  ProtocolError,
  ServerError,
  decodeTensor,
  encodeRequest,
  encodeTensor,
  parseReply,
  requests,
  tensor,
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
