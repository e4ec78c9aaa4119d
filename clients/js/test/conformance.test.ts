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
  ProtocolError,
  type Request,
  ServerError,
  type SessionRef,
  type Tensor,
  encodeRequest,
  parseReply,
  requests,
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

/** Options object with the keys of `call` that are present. */
function pick<T>(call: JObj, keys: string[]): T {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (Object.prototype.hasOwnProperty.call(call, k)) out[k] = call[k];
  return out as T;
}

/** Maps a vector's `call` (protocol request keys) onto the public API. */
export function buildRequest(call: JObj): Request {
  const op = call["op"] as Op;
  const s: SessionRef = { session: call["session"] as string, token: call["token"] as string };
  const names = call["names"] as string[] | undefined;
  switch (op) {
    case "hello": return requests.hello(pick(call, ["client"]));
    case "plugins": return requests.plugins();
    case "open":
      return requests.open(call["session"] as string, call["optimizer"] as string,
                           pick(call, ["hparams", "scheduler", "sched_hparams", "durability"]));
    case "attach": return requests.attach(s);
    case "info": return requests.info(s, pick(call, ["client"]));
    case "hparams": return requests.hparams(s);
    case "set_hparams": return requests.setHparams(s, call["hparams"] as Record<string, number | boolean>);
    case "close": return requests.close(s);
    case "sessions": return requests.sessions();
    case "register": return requests.register(s, jsonTensors(call["params"]));
    case "step": return requests.step(s, jsonTensors(call["grads"]), pick(call, ["return", "seq", "client"]));
    case "pull": return requests.pull(s, names);
    case "state": return requests.state(s, names);
    case "export": return requests.export(s);
    case "import":
      return requests.import(fromHex(call["snapshot"] as string), pick(call, ["session", "durability"]));
  }
  throw new Error(`vector names op ${String(op)}, which this client does not know`);
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
        assert.equal(req.op, v.call["op"]);
        const mine = readMsgpack(encodeRequest(req, 12345));
        const theirs = readMsgpack(fromHex(v.msgpack));
        const d = diff(mine, theirs, "$", ["id"]);
        assert.equal(d, undefined, `request ${v.name}: ${d}`);
      });
    }

    for (const v of vectors.replies) {
      test(`reply ${v.name}`, () => {
        assert.ok((OPS as readonly string[]).includes(v.op), `unknown op ${v.op}`);
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
