/**
 * The Client against the real daemon: every op, the end-to-end scenario,
 * AdamW checked against an independent float64 computation, exactly-once
 * retries, export/import, errors, concurrency, the IPC transport, and the
 * protocol's later additions: parameter groups, clipping, observe,
 * open_key retries, Lookahead and combined schedules.
 */
import assert from "node:assert/strict";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Client,
  ErrorCode,
  type PluginInfo,
  ProtocolError,
  RepServer,
  ServerError,
  type SessionRef,
  TimeoutError,
  TransportError,
  newOpenKey,
  tensor,
} from "../src/index.js";
import { Daemon, tempDir } from "./support.js";

let daemon: Daemon;
let client: Client;
let ipcUrl: string;

before(async () => {
  const sockDir = tempDir("optimd-js-ipc-");
  ipcUrl = `ipc://${path.join(sockDir, "optimd.sock")}`;
  daemon = await Daemon.start("--listen", ipcUrl);
  client = new Client(daemon.url, { timeoutMs: 30000 });
});

after(async () => {
  client?.close();
  if (!daemon) return;
  const log = daemon.log();
  const status = await daemon.stop();
  assert.equal(status, 0, `optimd exited ${status}; its log:\n${log}`);
});

/** Deterministic values in [lo, hi) with random signs when `signed`. */
function values(n: number, seed: number, lo: number, hi: number, signed = true): number[] {
  let s = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = s / 2 ** 32;
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const sign = signed && s & 0x100 ? -1 : 1;
    out.push(sign * (lo + (hi - lo) * u));
  }
  return out;
}

/** The distance between a float32 at |x| and the next float32 up. */
function ulp32(x: number): number {
  const f = new Float32Array([Math.abs(x)]);
  const bits = new Uint32Array(f.buffer);
  const here = f[0]!;
  bits[0] = bits[0]! + 1;
  return f[0]! - here;
}

function assertServerError(code: number, name: string) {
  return (err: unknown) => {
    assert.ok(err instanceof ServerError, `expected a ServerError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.name, name);
    assert.equal(typeof err.message, "string");
    return true;
  };
}

test("hello", async () => {
  const h = await client.hello({ client: "js-test" });
  assert.equal(h.server, "optimd");
  assert.equal(h.protocol, 1);
  assert.equal(h.abi.length, 2);
  assert.ok(h.abi.every((x) => Number.isInteger(x) && x >= 0));
  assert.ok(h.max_message > 0);
  assert.equal(typeof h.version, "string");
});

test("plugins", async () => {
  const plugins = await client.plugins();
  const ids = plugins.map((p) => p.id);
  assert.deepEqual(ids, [...ids].sort(), "sorted by id");
  const adamw = plugins.find((p) => p.id === "adamw") as PluginInfo;
  assert.equal(adamw.kind, "optimizer");
  assert.deepEqual([...(adamw.dtypes ?? [])].sort(), ["f32", "f64"]);
  assert.deepEqual(adamw.slots?.map((s) => s.key), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
  assert.equal(adamw.slots?.[2]?.enabled_by, "amsgrad");
  const lr = adamw.hparams.find((h) => h.key === "lr")!;
  assert.equal(lr.type, "float");
  assert.equal(lr.mutable, true);
  assert.equal(lr.required, false);
  assert.equal(typeof lr.default, "number");
  const amsgrad = adamw.hparams.find((h) => h.key === "amsgrad")!;
  assert.equal(amsgrad.type, "bool");
  assert.equal(amsgrad.default, false);
  // Factored slot shapes (adafactor's row and column statistics) come through.
  const shapes = new Set(plugins.flatMap((p) => p.slots ?? []).map((x) => x.shape));
  assert.ok(shapes.has("rows") && shapes.has("cols"), `slot shapes: ${[...shapes]}`);
  const step = plugins.find((p) => p.id === "step")!;
  assert.equal(step.kind, "scheduler");
  assert.equal(step.hparams.find((h) => h.key === "step_size")?.required, true);
});

describe("end to end: AdamW session", () => {
  const lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const w0 = values(6, 1, 0.5, 2);
  const b0 = values(3, 2, 0.5, 2);
  let s: SessionRef;

  test("open, register", async () => {
    const opened = await client.open("js-adamw", "adamw", {
      hparams: { lr, weight_decay: wd, beta1: b1, beta2: b2, eps },
      durability: "always",
    });
    assert.equal(opened.session, "js-adamw");
    assert.match(opened.token, /^[0-9a-f]{32}$/);
    assert.equal(opened.lr, lr);
    assert.equal(opened.existing, false);
    s = opened;
    const n = await client.register(s, {
      w: tensor(new Float32Array(w0), [2, 3]),
      b: tensor(new Float64Array(b0)),
    });
    assert.equal(n, 2);
  });

  test("steps follow AdamW (float64 reference; f32 within 3 ulps per step)", async () => {
    // Reference state in float64. The f32 parameter is re-anchored on the
    // daemon's values after each step (one step's rounding at a time); the
    // f64 one follows its own trajectory from the start.
    let wPrev = Float64Array.from(Float32Array.from(w0));
    const wm = new Float64Array(6), wv = new Float64Array(6);
    const bRef = Float64Array.from(b0);
    const bm = new Float64Array(3), bv = new Float64Array(3);
    const adamw = (p: Float64Array, m: Float64Array, v: Float64Array, g: readonly number[], t: number) => {
      const out = new Float64Array(p.length);
      for (let i = 0; i < p.length; i++) {
        const gi = g[i]!;
        m[i] = b1 * m[i]! + (1 - b1) * gi;
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
        const mhat = m[i]! / (1 - b1 ** t);
        const vhat = v[i]! / (1 - b2 ** t);
        out[i] = p[i]! * (1 - lr * wd) - (lr * mhat) / (Math.sqrt(vhat) + eps);
      }
      return out;
    };
    for (let t = 1; t <= 5; t++) {
      const gw = Array.from(Float32Array.from(values(6, 100 + t, 0.05, 1)));
      const gb = values(3, 200 + t, 0.05, 1);
      const r = await client.step(s, { w: tensor(new Float32Array(gw), [2, 3]), b: tensor(new Float64Array(gb)) });
      assert.equal(r.steps, t);
      assert.equal(r.lr, lr);
      assert.equal(r.next_lr, lr);
      assert.equal(r.duplicate, false);
      const w = r.params!["w"]!;
      const b = r.params!["b"]!;
      assert.equal(w.dtype, "f32");
      assert.deepEqual(w.shape, [2, 3]);
      assert.ok(w.data instanceof Float32Array);
      assert.equal(b.dtype, "f64");
      assert.ok(b.data instanceof Float64Array);

      const wRef = adamw(wPrev, wm, wv, gw, t);
      let moved = 0;
      for (let i = 0; i < 6; i++) {
        const diff = Math.abs(w.data[i]! - wRef[i]!);
        assert.ok(diff <= 3 * ulp32(wRef[i]!), `step ${t} w[${i}]: ${w.data[i]} vs ${wRef[i]} (${diff / ulp32(wRef[i]!)} ulps)`);
        moved = Math.max(moved, Math.abs(wRef[i]! - wPrev[i]!) / ulp32(wRef[i]!));
      }
      // The step moves parameters far beyond the tolerance, so a wrong rule
      // (no decay, no bias correction) would show.
      assert.ok(moved > 1000, `step ${t} moved the parameters by at most ${moved} ulps`);
      wPrev = Float64Array.from(w.data);
      const bNew = adamw(bRef, bm, bv, gb, t);
      for (let i = 0; i < 3; i++) {
        assert.ok(Math.abs(b.data[i]! - bNew[i]!) <= 1e-12 * Math.abs(bNew[i]!), `step ${t} b[${i}]: ${b.data[i]} vs ${bNew[i]}`);
      }
      bRef.set(bNew);
    }
    // The optimizer state holds the same moments.
    const state = await client.state(s);
    assert.deepEqual(Object.keys(state).sort(), ["b", "w"]);
    assert.deepEqual(Object.keys(state["b"]!).sort(), ["exp_avg", "exp_avg_sq"]);
    for (let i = 0; i < 3; i++) {
      assert.ok(Math.abs(state["b"]!["exp_avg"]!.data[i]! - bm[i]!) <= 1e-13);
      assert.ok(Math.abs(state["b"]!["exp_avg_sq"]!.data[i]! - bv[i]!) <= 1e-13);
    }
    const pulled = await client.pull(s, ["b"]);
    assert.deepEqual(Object.keys(pulled), ["b"]);
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(pulled["b"]!.data[i]! - bRef[i]!) <= 1e-12);
  });

  test("a wrong token is BAD_TOKEN and changes nothing", async () => {
    const bad = { session: s.session, token: "0".repeat(32) === s.token ? "1".repeat(32) : "0".repeat(32) };
    await assert.rejects(client.pull(bad), assertServerError(ErrorCode.BAD_TOKEN, "BAD_TOKEN"));
    await assert.rejects(client.step(bad, { b: tensor(new Float64Array(3)) }), assertServerError(21, "BAD_TOKEN"));
    assert.equal((await client.info(s)).steps, 5);
  });

  test("info, attach, hparams, set_hparams, sessions", async () => {
    const info = await client.info(s);
    assert.equal(info.session, "js-adamw");
    assert.equal(info.durability, "always");
    assert.equal(info.optimizer, "adamw");
    assert.equal(info.scheduler, null);
    assert.equal(info.steps, 5);
    assert.equal(info.hparams["weight_decay"], wd);
    assert.equal(info.hparams["amsgrad"], false);
    assert.equal(info.base_lr, lr);
    assert.deepEqual(info.params.map((p) => [p.name, p.dtype, p.shape, p.steps]), [
      ["w", "f32", [2, 3], 5],
      ["b", "f64", [3], 5],
    ]);
    assert.equal(info.client_seq, undefined);
    assert.deepEqual(await client.attach(s), info);

    const hp = await client.setHparams(s, { lr: 0.005, beta1: 0.8 });
    assert.equal(hp.hparams["lr"], 0.005);
    assert.equal(hp.hparams["beta1"], 0.8);
    assert.equal(hp.lr, 0.005);
    assert.equal(hp.base_lr, lr);
    assert.deepEqual(await client.hparams(s), hp);
    const r = await client.step(s, { w: tensor(new Float32Array(6), [2, 3]) }, { return: false });
    assert.equal(r.lr, 0.005);
    assert.equal(r.params, undefined);
    await assert.rejects(client.setHparams(s, { amsgrad: true }), assertServerError(ErrorCode.NOT_MUTABLE, "NOT_MUTABLE"));
    await assert.rejects(client.setHparams(s, { nosuch: 1 }), assertServerError(ErrorCode.UNKNOWN_HPARAM, "UNKNOWN_HPARAM"));

    const sessions = await client.sessions();
    const mine = sessions.find((x) => x.session === "js-adamw");
    assert.deepEqual(mine, { session: "js-adamw", optimizer: "adamw", scheduler: null, params: 2, steps: 6 });
    assert.ok(!("token" in mine!));
  });

  test("close, then the session is gone", async () => {
    await client.closeSession(s);
    await assert.rejects(client.info(s), assertServerError(ErrorCode.UNKNOWN_SESSION, "UNKNOWN_SESSION"));
    assert.ok(!(await client.sessions()).some((x) => x.session === "js-adamw"));
  });
});

test("a scheduler sets each step's lr (StepLR, step_size 2, gamma 0.5)", async () => {
  const s = await client.open("js-sched", "sgd", {
    hparams: { lr: 0.1 },
    scheduler: "step",
    sched_hparams: { step_size: 2, gamma: 0.5 },
  });
  await client.register(s, { x: tensor(new Float64Array([1])) });
  let x = 1;
  for (let k = 1; k <= 5; k++) {
    // torch: the lr of step k is base * gamma^floor((k-1)/step_size).
    const want = 0.1 * 0.5 ** Math.floor((k - 1) / 2);
    const wantNext = 0.1 * 0.5 ** Math.floor(k / 2);
    const r = await client.step(s, { x: tensor(new Float64Array([2])) });
    x -= want * 2;
    assert.ok(Math.abs(r.lr - want) < 1e-15, `step ${k} lr ${r.lr}`);
    assert.ok(Math.abs(r.next_lr - wantNext) < 1e-15);
    assert.ok(Math.abs(r.params!["x"]!.data[0]! - x) < 1e-14);
  }
  const info = await client.info(s);
  assert.equal(info.scheduler, "step");
  assert.equal(info.sched_hparams["step_size"], 2);
  await client.closeSession(s);
});

test("a sequenced step sent twice is applied once (duplicate: true)", async () => {
  const s = await client.open("js-seq", "sgd", { hparams: { lr: 0.5 } });
  await client.register(s, { p: tensor(new Float32Array([1, 2])) });
  const g = { p: tensor(new Float32Array([1, 1])) };
  const first = await client.step(s, g, { seq: 7, client: "worker-0" });
  assert.equal(first.duplicate, false);
  assert.deepEqual([...first.params!["p"]!.data], [0.5, 1.5]);
  const again = await client.step(s, g, { seq: 7, client: "worker-0" });
  assert.equal(again.duplicate, true);
  assert.equal(again.steps, first.steps);
  assert.equal(again.lr, first.lr);
  assert.deepEqual([...again.params!["p"]!.data], [0.5, 1.5]);
  // A lower number is a duplicate too; another client has its own numbering.
  assert.equal((await client.step(s, g, { seq: 3, client: "worker-0" })).duplicate, true);
  const other = await client.step(s, g, { seq: 1, client: "worker-1" });
  assert.equal(other.duplicate, false);
  assert.deepEqual([...other.params!["p"]!.data], [0, 1]);
  const info = await client.info(s, { client: "worker-0" });
  assert.equal(info.client_seq, 7);
  assert.equal(info.steps, 2);
  assert.equal((await client.info(s, { client: "nobody" })).client_seq, 0);
  await client.closeSession(s);
});

test("export then import: same parameters, state and counters, new token", async () => {
  const s = await client.open("js-export", "adamw", { hparams: { lr: 0.02 } });
  await client.register(s, { w: tensor(new Float32Array(values(5, 9, 0.5, 2))) });
  for (let t = 0; t < 3; t++) await client.step(s, { w: tensor(new Float32Array(values(5, 50 + t, 0.1, 1))) });
  const snap = await client.export(s);
  assert.ok(snap instanceof Uint8Array);
  // safetensors: an 8-byte little-endian header length, then a JSON header.
  const headerLen = Number(Buffer.from(snap.buffer, snap.byteOffset, 8).readBigUInt64LE(0));
  assert.ok(headerLen > 0 && 8 + headerLen <= snap.length);
  assert.equal(String.fromCharCode(snap[8]!), "{");

  const imported = await client.import(snap, { session: "js-imported", durability: "none" });
  assert.equal(imported.session, "js-imported");
  assert.equal(imported.steps, 3);
  assert.notEqual(imported.token, s.token);
  assert.deepEqual(await client.pull(imported), await client.pull(s));
  assert.deepEqual(await client.state(imported), await client.state(s));
  assert.equal((await client.info(imported)).durability, "none");
  const g = { w: tensor(new Float32Array(values(5, 77, 0.1, 1))) };
  const a = await client.step(s, g);
  const b = await client.step(imported, g);
  assert.deepEqual(b, a);
  await assert.rejects(client.import(snap, { session: "js-imported" }), assertServerError(ErrorCode.SESSION_EXISTS, "SESSION_EXISTS"));
  await assert.rejects(client.import(new Uint8Array([1, 2, 3])), assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST"));
  await client.closeSession(s);
  await client.closeSession(imported);
});

test("server errors carry code and name", async () => {
  await assert.rejects(client.open("js-e", "nosuch"), assertServerError(ErrorCode.UNKNOWN_PLUGIN, "UNKNOWN_PLUGIN"));
  await assert.rejects(client.open("js-e", "step"), assertServerError(ErrorCode.WRONG_KIND, "WRONG_KIND"));
  await assert.rejects(client.open("js-e", "sgd", { hparams: { lr: -1 } }), assertServerError(ErrorCode.BAD_HPARAM, "BAD_HPARAM"));
  const s = await client.open("js-e", "sgd", { hparams: { lr: 0.1 } });
  await assert.rejects(client.open("js-e", "sgd", { hparams: { lr: 0.1 } }), assertServerError(ErrorCode.SESSION_EXISTS, "SESSION_EXISTS"));
  await client.register(s, { p: tensor(new Float32Array([1, 2])) });
  await assert.rejects(client.register(s, { p: tensor(new Float32Array([1])) }), assertServerError(ErrorCode.PARAM_EXISTS, "PARAM_EXISTS"));
  await assert.rejects(client.step(s, { p: tensor(new Float32Array([1, 2, 3])) }), assertServerError(ErrorCode.BAD_TENSOR, "BAD_TENSOR"));
  await assert.rejects(client.step(s, { p: tensor(new Float64Array([1, 2])) }), assertServerError(ErrorCode.BAD_TENSOR, "BAD_TENSOR"));
  await assert.rejects(client.step(s, { p: tensor(new Float32Array([1, NaN])) }), assertServerError(ErrorCode.NONFINITE, "NONFINITE"));
  await assert.rejects(client.pull(s, ["q"]), assertServerError(ErrorCode.UNKNOWN_PARAM, "UNKNOWN_PARAM"));
  await assert.rejects(client.state(s, ["q"]), assertServerError(ErrorCode.UNKNOWN_PARAM, "UNKNOWN_PARAM"));
  assert.deepEqual([...(await client.pull(s))["p"]!.data], [1, 2], "failed requests changed nothing");
  assert.deepEqual(await client.pull(s, []), {});
  // Refused by the client before sending: the tensor does not match its shape.
  assert.throws(() => tensor(new Float32Array(3), [2, 2]), RangeError);
  await client.closeSession(s);
});

test("requests in flight at once, over several connections", async () => {
  const many = new Client(daemon.url, { maxConnections: 3, timeoutMs: 30000 });
  try {
    const sessions = await Promise.all([0, 1, 2, 3, 4].map((i) => many.open(`js-par-${i}`, "sgd", { hparams: { lr: 1 } })));
    await Promise.all(sessions.map((s, i) => many.register(s, { p: tensor(new Float64Array([i])) })));
    const results = await Promise.all(sessions.map((s, i) => many.step(s, { p: tensor(new Float64Array([-i])) })));
    results.forEach((r, i) => assert.deepEqual([...r.params!["p"]!.data], [2 * i]));
    await Promise.all(sessions.map((s) => many.closeSession(s)));
  } finally {
    many.close();
  }
});

test("the IPC transport", async () => {
  const viaIpc = new Client(ipcUrl, { timeoutMs: 30000 });
  try {
    assert.equal((await viaIpc.hello()).server, "optimd");
    const s = await viaIpc.open("js-ipc", "sgd", { hparams: { lr: 0.25 } });
    await viaIpc.register(s, { p: tensor(new Float32Array(1000).fill(1)) });
    const r = await viaIpc.step(s, { p: tensor(new Float32Array(1000).fill(2)) });
    assert.ok(r.params!["p"]!.data.every((x) => x === 0.5));
    await viaIpc.closeSession(s);
  } finally {
    viaIpc.close();
  }
});

test("large tensors (4 Mi elements) round-trip", async () => {
  const n = 4 * 1024 * 1024;
  const init = new Float32Array(n);
  for (let i = 0; i < n; i++) init[i] = (i % 1000) / 1000;
  const s = await client.open("js-big", "sgd", { hparams: { lr: 1 } });
  await client.register(s, { p: tensor(init) });
  const g = new Float32Array(n).fill(0.5);
  const r = await client.step(s, { p: tensor(g) });
  const p = r.params!["p"]!.data;
  assert.equal(p.length, n);
  for (let i = 0; i < n; i += 4099) assert.equal(p[i], Math.fround(Math.fround((i % 1000) / 1000) - 0.5));
  await client.closeSession(s);
});

test("large tensors at every pad length: exact SGD results, none copied by the daemon", async () => {
  // A daemon of its own, for a metrics counter no other test moves.
  const d = await Daemon.start("--metrics-listen", "127.0.0.1:0");
  const c = new Client(d.url, { timeoutMs: 30000 });
  try {
    const sizes: Record<string, [number, "f32" | "f64"]> = {
      a: [16385, "f32"], c: [100003, "f64"], e: [65536, "f32"], // 64 KiB and more: padded
      b: [3, "f32"], d: [16383, "f32"], // small: as they come
    };
    const make = (names: string[], f: (i: number) => number) => {
      const out: Record<string, ReturnType<typeof tensor>> = {};
      for (const name of names) {
        const [n, kind] = sizes[name]!;
        const a = kind === "f32" ? new Float32Array(n) : new Float64Array(n);
        for (let i = 0; i < n; i++) a[i] = f(i);
        out[name] = tensor(a);
      }
      return out;
    };
    const init = (i: number) => (i % 1000) - 500;
    const grad = (k: number) => (i: number) => ((i + k) % 7) - 3;
    const run = async (session: string, names: string[], steps: number) => {
      const s = await c.open(session, "sgd", { hparams: { lr: 0.5 } });
      await c.register(s, make(names, init));
      for (let k = 1; k <= steps; k++) {
        const r = await c.step(s, make(names, grad(k)));
        for (const name of names) {
          const p = r.params![name]!.data;
          for (let i = 0; i < p.length; i++) {
            let want = init(i);
            for (let j = 1; j <= k; j++) want -= 0.5 * grad(j)(i);
            if (p[i] !== want) assert.fail(`${session} step ${k}: ${name}[${i}] = ${p[i]}, want ${want}`);
          }
        }
      }
    };
    // Session names of 1 to 16 characters shift grads through every
    // offset mod 16, so every pad length comes up.
    for (let n = 1; n <= 16; n++) await run("p".repeat(n), ["a", "c", "e"], 2);
    const m = /metrics on (http:\/\/\S+\/metrics)/.exec(d.log());
    assert.ok(m, `no metrics address in the log:\n${d.log()}`);
    const text = await (await fetch(m[1]!)).text();
    const line = text.split("\n").find((l) => l.startsWith("optimd_unaligned_gradients_total "));
    assert.equal(line, "optimd_unaligned_gradients_total 0", "the daemon copied large gradients to align them");
    await run("mixed", ["a", "b", "c", "d", "e"], 3);
  } finally {
    c.close();
    const log = d.log();
    assert.equal(await d.stop(), 0, log);
  }
});

test("two parameter groups: per-group lr and schedule in info and step", async () => {
  // default: lr 0.1 halved after every step (StepLR step_size 1); head: lr
  // 0.5 and no scheduler. SGD, so each parameter moves by exactly lr * g.
  const s = await client.open("js-groups", "sgd", {
    hparams: { lr: 0.1 },
    scheduler: "step",
    sched_hparams: { step_size: 1, gamma: 0.5 },
    groups: [{ name: "head", hparams: { lr: 0.5 }, scheduler: null }],
  });
  assert.equal(s.existing, false);
  assert.equal(await client.register(s, { w: tensor(new Float64Array([1, 1])) }), 1);
  assert.equal(await client.register(s, { h: tensor(new Float64Array([1])) }, { group: "head" }), 1);
  await assert.rejects(client.register(s, { x: tensor(new Float64Array([1])) }, { group: "nosuch" }),
                       assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST"));

  const info = await client.info(s);
  assert.deepEqual(info.params.map((p) => [p.name, p.group]), [["w", "default"], ["h", "head"]]);
  assert.deepEqual(info.groups.map((g) => [g.name, g.scheduler, g.base_lr, g.lr, g.params]), [
    ["default", "step", 0.1, 0.1, 1],
    ["head", null, 0.5, 0.5, 1],
  ]);
  assert.equal(info.groups[1]!.hparams["lr"], 0.5);
  assert.equal(info.lr, 0.1, "the top-level lr is the default group's");

  const r = await client.step(s, { w: tensor(new Float64Array([2, 4])), h: tensor(new Float64Array([2])) });
  assert.deepEqual(r.lrs, { default: 0.1, head: 0.5 });
  assert.deepEqual(r.next_lrs, { default: 0.05, head: 0.5 });
  assert.equal(r.lr, 0.1);
  assert.equal(r.next_lr, 0.05);
  assert.deepEqual([...r.params!["w"]!.data], [1 - 0.1 * 2, 1 - 0.1 * 4]);
  assert.deepEqual([...r.params!["h"]!.data], [1 - 0.5 * 2]);

  // set_hparams on one group leaves the other alone.
  const hp = await client.setHparams(s, { lr: 0.25 }, { group: "head" });
  assert.deepEqual(hp.groups.map((g) => [g.name, g.lr]), [["default", 0.05], ["head", 0.25]]);
  assert.deepEqual(await client.hparams(s), hp);
  const r2 = await client.step(s, { h: tensor(new Float64Array([1])) });
  assert.deepEqual(r2.lrs, { default: 0.05, head: 0.25 });
  assert.deepEqual([...r2.params!["h"]!.data], [1 - 0.5 * 2 - 0.25]);
  await assert.rejects(client.setHparams(s, { lr: 1 }, { group: "nosuch" }), assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST"));
  await client.closeSession(s);

  // One group only: no lrs in the step reply.
  const single = await client.open("js-groups-1", "sgd", { hparams: { lr: 0.1 } });
  await client.register(single, { w: tensor(new Float64Array([1])) });
  const plain = await client.step(single, { w: tensor(new Float64Array([1])) });
  assert.equal(plain.lrs, undefined);
  assert.equal(plain.next_lrs, undefined);
  assert.deepEqual((await client.info(single)).groups.map((g) => g.name), ["default"]);
  await client.closeSession(single);
});

test("clipped steps: grad_norm, grad_norms, clip_value", async () => {
  const s = await client.open("js-clip", "sgd", { hparams: { lr: 1 }, groups: [{ name: "head" }] });
  await client.register(s, { w: tensor(new Float64Array([0, 0])) });
  await client.register(s, { h: tensor(new Float64Array([0])) }, { group: "head" });

  // |[3, 4]| = 5; torch scales by max_norm / (5 + 1e-6).
  const r = await client.step(s, { w: tensor(new Float64Array([3, 4])) }, { clip_norm: { max_norm: 1 } });
  assert.equal(r.grad_norm, 5);
  assert.equal(r.grad_norms, undefined);
  const coef = 1 / (5 + 1e-6);
  const w = r.params!["w"]!.data;
  assert.ok(Math.abs(w[0]! + 3 * coef) < 1e-15 && Math.abs(w[1]! + 4 * coef) < 1e-15, `w = ${[...w]}`);

  // Per group: each group's norm on its own; a norm under max_norm is left as is.
  const pg = await client.step(s, { w: tensor(new Float64Array([0, 0.5])), h: tensor(new Float64Array([-12])) },
                               { clip_norm: { max_norm: 2, per_group: true } });
  assert.equal(pg.grad_norm, undefined);
  assert.deepEqual(pg.grad_norms, { default: 0.5, head: 12 });
  assert.ok(Math.abs(pg.params!["w"]!.data[1]! - (w[1]! - 0.5)) < 1e-15);
  assert.ok(Math.abs(pg.params!["h"]!.data[0]! - 12 * (2 / (12 + 1e-6))) < 1e-14);

  // clip_value clamps each element; no norm is reported without clip_norm.
  const before = await client.pull(s, ["w"]);
  const cv = await client.step(s, { w: tensor(new Float64Array([7, -0.25])) }, { clip_value: 1 });
  assert.equal(cv.grad_norm, undefined);
  assert.deepEqual([...cv.params!["w"]!.data], [before["w"]!.data[0]! - 1, before["w"]!.data[1]! + 0.25]);
  await client.closeSession(s);
});

test("observe drives the plateau scheduler (patience 0, factor 0.5)", async () => {
  const s = await client.open("js-plateau", "sgd", {
    hparams: { lr: 1 },
    scheduler: "plateau",
    sched_hparams: { patience: 0, factor: 0.5 },
    groups: [{ name: "fixed", scheduler: null }],
  });
  await client.register(s, { w: tensor(new Float64Array([0])) });
  // The first metric is the best so far; a worse one halves the lr at once.
  assert.deepEqual(await client.observe(s, 1.0), { lr: 1, lrs: { default: 1, fixed: 1 } });
  assert.deepEqual(await client.observe(s, 2.0), { lr: 0.5, lrs: { default: 0.5, fixed: 1 } });
  assert.equal((await client.observe(s, 0.25)).lr, 0.5, "an improvement keeps the lr");
  assert.equal((await client.observe(s, NaN)).lr, 0.25, "NaN counts as a bad epoch");
  assert.equal((await client.info(s)).lr, 0.25);
  const r = await client.step(s, { w: tensor(new Float64Array([1])) });
  assert.equal(r.lr, 0.25);
  assert.deepEqual([...r.params!["w"]!.data], [-0.25]);
  await assert.rejects(client.observe(s, 1, { group: "fixed" }), assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST"));
  await assert.rejects(client.observe(s, 1, { group: "nosuch" }), assertServerError(ErrorCode.BAD_REQUEST, "BAD_REQUEST"));
  await client.closeSession(s);
});

test("a retried open with the same open_key returns the same session", async () => {
  const key = newOpenKey();
  assert.match(key, /^[0-9a-f]{32}$/);
  assert.notEqual(newOpenKey(), key);
  const opts = { hparams: { lr: 0.5 }, open_key: key };
  const first = await client.open("js-key", "sgd", opts);
  assert.equal(first.existing, false);
  await client.register(first, { w: tensor(new Float32Array([1])) });
  await client.step(first, { w: tensor(new Float32Array([1])) });
  const again = await client.open("js-key", "sgd", opts);
  assert.equal(again.existing, true);
  assert.equal(again.token, first.token);
  assert.equal(again.session, "js-key");
  assert.equal((await client.info(again)).steps, 1, "the retry created nothing new");
  // Another key (or none) does not get the session.
  await assert.rejects(client.open("js-key", "sgd", { ...opts, open_key: newOpenKey() }),
                       assertServerError(ErrorCode.SESSION_EXISTS, "SESSION_EXISTS"));
  await assert.rejects(client.open("js-key", "sgd", { hparams: { lr: 0.5 } }),
                       assertServerError(ErrorCode.SESSION_EXISTS, "SESSION_EXISTS"));
  await client.closeSession(again);
});

test("lookahead and a sequential schedule (linear, then exponential from epoch 3)", async () => {
  const base = 0.1, startFactor = 0.1, endFactor = 1, totalIters = 3, gamma = 0.5, milestone = 3;
  const k = 2, alpha = 0.5;
  const s = await client.open("js-lookahead-seq", "sgd", {
    hparams: { lr: base },
    lookahead: { k, alpha },
    scheduler: "sequential",
    schedulers: [
      { scheduler: "linear", sched_hparams: { start_factor: startFactor, total_iters: totalIters } },
      { scheduler: "exponential", sched_hparams: { gamma } },
    ],
    milestones: [milestone],
  });
  const info = await client.info(s);
  assert.deepEqual(info.lookahead, { k, alpha });
  assert.equal(info.scheduler, "sequential");
  assert.deepEqual(info.milestones, [milestone]);
  assert.deepEqual(info.schedulers?.map((p) => p.scheduler), ["linear", "exponential"]);
  assert.equal(info.schedulers?.[0]?.sched_hparams["start_factor"], startFactor);
  assert.equal(info.schedulers?.[1]?.sched_hparams["gamma"], gamma);
  assert.deepEqual(info.groups[0]?.schedulers, info.schedulers);
  assert.deepEqual(info.groups[0]?.milestones, [milestone]);

  // torch 1.13: LinearLR starts at base * start_factor and multiplies by
  // 1 + (end - start) / (total * start + (e - 1) * (end - start)) at epoch e;
  // at the milestone SequentialLR restarts ExponentialLR at its epoch 0 (the
  // base lr), which then multiplies by gamma each epoch.
  const want: number[] = [];
  for (let e = 0; e < 5; e++) {
    if (e === 0) want.push(base * startFactor);
    else if (e < milestone) {
      want.push(want[e - 1]! * (1 + (endFactor - startFactor) / (totalIters * startFactor + (e - 1) * (endFactor - startFactor))));
    } else if (e === milestone) want.push(base);
    else want.push(want[e - 1]! * gamma);
  }
  await client.register(s, { w: tensor(new Float64Array([1])) });
  const got: number[] = [];
  for (let i = 0; i < want.length; i++) {
    got.push((await client.step(s, { w: tensor(new Float64Array([1])) }, { return: false })).lr);
  }
  for (let i = 0; i < want.length; i++) {
    assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-12 * want[i]!, `lrs ${got}, want ${want}`);
  }
  await client.closeSession(s);

  // Plain SGD with a fixed lr: after k steps the parameter is
  // slow + alpha * (fast - slow), slow being its value before the first step.
  const lr = 0.25;
  const s2 = await client.open("js-lookahead-sgd", "sgd", { hparams: { lr }, lookahead: { k, alpha } });
  assert.equal((await client.info(s2)).scheduler, null);
  const p0 = [1.5, -2];
  const grads = [[1, 3], [-0.5, 2]];
  await client.register(s2, { p: tensor(new Float64Array(p0)) });
  const fast = [...p0];
  let p: number[] = [];
  for (const [i, g] of grads.entries()) {
    for (let j = 0; j < fast.length; j++) fast[j]! -= lr * g[j]!;
    p = [...(await client.step(s2, { p: tensor(new Float64Array(g)) })).params!["p"]!.data];
    if (i === 0) assert.deepEqual(p, fast, "before the k-th step the parameter is the fast weights");
  }
  const synced = p0.map((x, j) => x + alpha * (fast[j]! - x));
  for (let j = 0; j < synced.length; j++) {
    assert.ok(Math.abs(p[j]! - synced[j]!) <= 1e-12, `p = ${p}, want ${synced}`);
  }
  const slow = (await client.state(s2, ["p"]))["p"]!["lookahead_slow"];
  assert.ok(slow !== undefined, "state lists lookahead_slow");
  for (let j = 0; j < synced.length; j++) assert.ok(Math.abs(slow.data[j]! - synced[j]!) <= 1e-12);
  await client.closeSession(s2);
});

describe("transport failures", () => {
  test("no reply within the call's timeout: TimeoutError", async () => {
    const silent = await RepServer.listen("tcp://127.0.0.1:0", () => null);
    const c = new Client(silent.url);
    try {
      await assert.rejects(c.hello({}, { timeoutMs: 200 }), TimeoutError);
    } finally {
      c.close();
      await silent.close();
    }
  });

  test("nothing listening: TransportError", async () => {
    const gone = await RepServer.listen("tcp://127.0.0.1:0", () => null);
    const url = gone.url;
    await gone.close();
    const c = new Client(url, { timeoutMs: 10000 });
    try {
      await assert.rejects(c.hello(), TransportError);
    } finally {
      c.close();
    }
  });

  test("a reply that is not a protocol reply: ProtocolError", async () => {
    const liar = await RepServer.listen("tcp://127.0.0.1:0", () => Buffer.from([0x93, 1, 2, 3])); // [1, 2, 3]
    const c = new Client(liar.url, { timeoutMs: 10000 });
    try {
      await assert.rejects(c.hello(), ProtocolError);
    } finally {
      c.close();
      await liar.close();
    }
  });
});

describe("switch and the admin ops", () => {
  const ADMIN = "js-admin-token-for-the-test";
  let admind: Daemon;
  let c: Client;

  before(async () => {
    admind = await Daemon.start("--admin-token", ADMIN);
    c = new Client(admind.url, { timeoutMs: 30000 });
  });

  after(async () => {
    c?.close();
    if (!admind) return;
    const log = admind.log();
    const status = await admind.stop();
    assert.equal(status, 0, `optimd exited ${status}; its log:\n${log}`);
  });

  test("switch from sgd to rmsprop carries the momentum buffer", async () => {
    const s = await c.open("switch", "sgd", { hparams: { lr: 0.1, momentum: 0.9 } });
    await c.register(s, { w: tensor(new Float32Array([-1, -0.5, 0.5, 1])) });
    for (const g of [0.5, 1.5]) await c.step(s, { w: tensor(new Float32Array(4).fill(g)) }, { return: false });
    const before = (await c.state(s))["w"]!["momentum_buffer"]!;
    // A zero buffer would make "unchanged" prove nothing.
    assert.ok(Array.from(before.data).some((x) => x !== 0), "momentum_buffer is zero before the switch");

    const r = await c.switch(s, "rmsprop");
    assert.equal(r.optimizer, "rmsprop");
    assert.deepEqual(r.carried, ["momentum_buffer"]);
    assert.match(r.optimizer_version, /^\d+\.\d+/);
    const after = (await c.state(s))["w"]!["momentum_buffer"]!;
    assert.equal(after.dtype, before.dtype);
    assert.deepEqual(after.shape, before.shape);
    assert.deepEqual(Array.from(after.data), Array.from(before.data));
    const info = await c.info(s);
    assert.equal(info.optimizer, "rmsprop");
    assert.equal(info.optimizer_version, r.optimizer_version);
    assert.equal(info.steps, 2);
    assert.equal(info.hparams["momentum"], 0.9); // carried by key
    await assert.rejects(c.switch(s, "no_such_optimizer"), assertServerError(ErrorCode.UNKNOWN_PLUGIN, "UNKNOWN_PLUGIN"));
  });

  test("reload and load need the admin token", async () => {
    const loads = await c.reload(ADMIN);
    assert.ok(Array.isArray(loads));
    for (const l of loads) {
      assert.equal(typeof l.path, "string");
      if (l.loaded) assert.equal(typeof l.id, "string");
      else assert.equal(typeof l.error, "string");
    }
    assert.equal(ErrorCode.BAD_TOKEN, 21);
    await assert.rejects(c.reload(`${ADMIN}x`), assertServerError(21, "BAD_TOKEN"));
    await assert.rejects(c.load("/nonexistent/plugin.so", "wrong"), assertServerError(21, "BAD_TOKEN"));
    await assert.rejects(c.load("/nonexistent/plugin.so", ADMIN), assertServerError(ErrorCode.PLUGIN, "PLUGIN"));
  });
});

test("drop closes a session without its token; shutdown stops the daemon", async () => {
  const ADMIN = "js-admin-token-for-drop";
  const d = await Daemon.start("--admin-token", ADMIN);
  const c = new Client(d.url, { timeoutMs: 30000 });
  try {
    const s = await c.open("dropme", "sgd", { hparams: { lr: 0.1 } });
    await assert.rejects(c.drop("dropme", `${ADMIN}x`), assertServerError(21, "BAD_TOKEN"));
    assert.equal((await c.info(s)).steps, 0); // a refused drop leaves it
    await c.drop("dropme", ADMIN);
    await assert.rejects(c.info(s), assertServerError(ErrorCode.UNKNOWN_SESSION, "UNKNOWN_SESSION"));
    await assert.rejects(c.drop("dropme", ADMIN), assertServerError(ErrorCode.UNKNOWN_SESSION, "UNKNOWN_SESSION"));
    await assert.rejects(c.shutdown("wrong"), assertServerError(21, "BAD_TOKEN"));
    assert.equal(await d.waitExit(0), undefined, "a refused shutdown stopped the daemon");
    await c.shutdown(ADMIN);
    // Bounded: a daemon that ignores shutdown fails here.
    assert.equal(await d.waitExit(10000), 0, `optimd after shutdown; its log:\n${d.log()}`);
  } finally {
    c.close();
    await d.stop();
  }
});
