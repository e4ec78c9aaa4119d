/**
 * The conformance vectors (tests/protocol/vectors.json, schema in
 * docs/protocol.md's companion notes): each request vector is built with the
 * public request builders and must encode to the same msgpack value; each
 * reply vector is fed to parseReply and must give the expected result,
 * ServerError or ProtocolError. test/sample-vectors.json (made with Python's
 * msgpack, not with this client) runs too, so the runner itself is tested
 * even where the shared file is absent.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import {
  type Op,
  OPS,
  type PartGrad,
  ProtocolError,
  type Request,
  ServerError,
  type SessionRef,
  type Tensor,
  encodeRequest,
  parseReply,
  requests,
  wireOp,
} from "../src/index.js";
import { diff, readMsgpack } from "./msgpack_typed.js";
import { fromHex, hex } from "./support.js";

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JObj = { [k: string]: Json };

interface Vectors {
  protocol: number;
  requests: Array<{ name: string; call: JObj; msgpack: string }>;
  replies: Array<{ name: string; op: string; request_id: number; msgpack: string; expect: JObj }>;
}

function jsonTensor(j: Json): Tensor {
  const t = j as JObj;
  const bytes = fromHex(t["data"] as string);
  // Copied into fresh (aligned) memory: the typed array needs whole elements.
  const buf = new ArrayBuffer(bytes.length);
  new Uint8Array(buf).set(bytes);
  const shape = t["shape"] as number[];
  if (t["dtype"] === "f32") return { dtype: "f32", shape, data: new Float32Array(buf) };
  if (t["dtype"] === "f64") return { dtype: "f64", shape, data: new Float64Array(buf) };
  throw new Error(`vector tensor dtype ${String(t["dtype"])}`);
}

function jsonTensors(j: Json | undefined): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries((j ?? {}) as JObj)) out[k] = jsonTensor(v);
  return out;
}

/** A step part's gradients: whole tensors, or {offset, values} ranges. */
function jsonPartGrads(j: Json | undefined): Record<string, PartGrad> {
  const out: Record<string, PartGrad> = {};
  for (const [k, v] of Object.entries((j ?? {}) as JObj)) {
    const m = v as JObj;
    out[k] = "offset" in m ? { offset: m["offset"] as number, values: jsonTensor(m["values"]!) } : jsonTensor(v);
  }
  return out;
}

/**
 * Reads a vector's `call` and remembers which keys were used, so that a key
 * this runner does not map onto the API fails the vector by name instead of
 * being dropped (and the request then compared without it).
 */
class Call {
  private readonly used = new Set<string>(["op"]);
  constructor(readonly call: JObj) {}
  get<T>(k: string): T {
    this.used.add(k);
    return this.call[k] as T;
  }
  /** An options object with those of `keys` that are present. */
  pick<T>(keys: string[]): T {
    const out: Record<string, unknown> = {};
    for (const k of keys) if (Object.prototype.hasOwnProperty.call(this.call, k)) out[k] = this.get(k);
    return out as T;
  }
  session(): SessionRef {
    return { session: this.get("session"), token: this.get("token") };
  }
  unused(): string[] {
    return Object.keys(this.call).filter((k) => !this.used.has(k));
  }
}

function build(c: Call): Request {
  const op = c.get<string>("op");
  switch (op as Op) {
    case "hello": return requests.hello(c.pick(["client"]));
    case "plugins": return requests.plugins();
    case "open":
      return requests.open(c.get("session"), c.get("optimizer"),
                           c.pick(["hparams", "scheduler", "sched_hparams", "schedulers", "milestones", "lookahead",
                                   "durability", "groups", "open_key", "workers"]));
    case "attach": return requests.attach(c.session());
    case "info": return requests.info(c.session(), c.pick(["client"]));
    case "hparams": return requests.hparams(c.session());
    case "set_hparams": return requests.setHparams(c.session(), c.get("hparams"), c.pick(["group"]));
    case "close": return requests.close(c.session());
    case "sessions": return requests.sessions();
    case "register": return requests.register(c.session(), jsonTensors(c.get("params")), c.pick(["group"]));
    case "step":
      if (Object.prototype.hasOwnProperty.call(c.call, "part")) {
        const part = c.get<{ index: number; count: number }>("part");
        return requests.stepPart(c.session(), jsonPartGrads(c.get("grads")),
                                 { index: part.index, count: part.count, seq: c.get("seq"),
                                   ...c.pick<object>(["return", "client", "clip_value"]) });
      }
      return requests.step(c.session(), jsonTensors(c.get("grads")),
                           c.pick(["return", "seq", "client", "clip_value", "clip_norm", "worker"]));
    case "observe": return requests.observe(c.session(), c.get("metric"), c.pick(["group"]));
    case "pull": return requests.pull(c.session(), c.get("names"), c.pick(["worker"]));
    case "join": return requests.join(c.session(), c.get("worker"));
    case "leave": return requests.leave(c.session(), c.get("worker"));
    case "state": return requests.state(c.session(), c.get("names"));
    case "export": return requests.export(c.session());
    case "import":
      return requests.import(fromHex(c.get("snapshot")), c.pick(["session", "durability"]));
    case "switch": return requests.switch(c.session(), c.get("optimizer"), c.pick(["hparams"]));
    case "reload": return requests.reload(c.get("admin_token"));
    case "load": return requests.load(c.get("path"), c.get("admin_token"));
    case "drop": return requests.drop(c.get("session"), c.get("admin_token"));
    case "shutdown": return requests.shutdown(c.get("admin_token"));
    case "abandon_step": return requests.abandonStep(c.session(), c.get("seq"), c.get("client"));
    case "step_part": break; // not an op on the wire: a step with `part`
  }
  throw new Error(`vector names op ${String(op)}, which this client does not know`);
}

/** Maps a vector's `call` (protocol request keys) onto the public API;
 * throws when the call has a key the mapping does not use. */
export function buildRequest(call: JObj): Request {
  const c = new Call(call);
  const req = build(c);
  const left = c.unused();
  if (left.length > 0) throw new Error(`call keys not mapped onto the client's API: ${left.join(", ")}`);
  return req;
}

/** A parsed result as JSON, tensors and bins as the vectors write them. */
function toJson(v: unknown): Json {
  if (v instanceof Float32Array || v instanceof Float64Array) return hex(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  if (v instanceof Uint8Array) return hex(v);
  if (Array.isArray(v)) return v.map(toJson);
  if (typeof v === "bigint") return Number(v);
  if (v !== null && typeof v === "object") {
    const out: JObj = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = toJson(x);
    return out;
  }
  return v as Json;
}

function runVectors(label: string, file: string) {
  const vectors = JSON.parse(fs.readFileSync(file, "utf8")) as Vectors;
  describe(label, () => {
    test("is protocol 1 and has vectors", () => {
      assert.equal(vectors.protocol, 1);
      assert.ok(vectors.requests.length > 0 && vectors.replies.length > 0);
    });

    for (const v of vectors.requests) {
      test(`request ${v.name}`, () => {
        const req = buildRequest(v.call);
        assert.equal(wireOp(req.op), v.call["op"]);
        const mine = readMsgpack(encodeRequest(req, 12345));
        const theirs = readMsgpack(fromHex(v.msgpack));
        const d = diff(mine, theirs, "$", ["id"]);
        assert.equal(d, undefined, `request ${v.name}: ${d}`);
      });
    }

    for (const v of vectors.replies) {
      test(`reply ${v.name}`, () => {
        // step_part: a step with `part`, whose reply has more keys.
        assert.ok((OPS as readonly string[]).includes(v.op) || v.op === "step_part", `unknown op ${v.op}`);
        const bytes = fromHex(v.msgpack);
        const e = v.expect;
        if (e["invalid"] === true) {
          assert.throws(() => parseReply(v.op as Op, bytes, v.request_id), (err: unknown) => {
            assert.ok(err instanceof ProtocolError, `expected a ProtocolError, got ${String(err)}`);
            return true;
          });
        } else if (e["ok"] === false) {
          assert.throws(() => parseReply(v.op as Op, bytes, v.request_id), (err: unknown) => {
            assert.ok(err instanceof ServerError, `expected a ServerError, got ${String(err)}`);
            assert.equal(err.code, e["code"]);
            if (e["error"] !== undefined) assert.equal(err.name, e["error"]);
            return true;
          });
        } else {
          assert.equal(e["ok"], true);
          const result = parseReply(v.op as Op, bytes, v.request_id);
          assert.deepEqual(toJson(result), e["result"]);
        }
      });
    }
  });
}

const here = path.dirname(fileURLToPath(import.meta.url));
runVectors("sample vectors", path.join(here, "../../test/sample-vectors.json"));

const sourceRoot = process.env["OPTIMD_SOURCE_DIR"];
const shared = sourceRoot ? path.join(sourceRoot, "tests/protocol/vectors.json") : undefined;
if (shared && fs.existsSync(shared)) {
  runVectors("tests/protocol/vectors.json", shared);
} else {
  test("tests/protocol/vectors.json", { skip: `not found (${shared ?? "OPTIMD_SOURCE_DIR unset"})` }, () => {});
}

test("the runner refuses a vector it cannot map", () => {
  const token = "0123456789abcdef0123456789abcdef";
  assert.throws(() => buildRequest({ op: "hello", client: "x", shiny_new_key: 1 }), /shiny_new_key/);
  assert.throws(() => buildRequest({ op: "step", session: "s", token, grads: {}, clip_nrom: 1 }), /clip_nrom/);
  assert.throws(() => buildRequest({ op: "frobnicate" }), /frobnicate/);
  assert.equal(buildRequest({ op: "observe", session: "s", token, metric: 1.5, group: "g" }).op, "observe");
});
