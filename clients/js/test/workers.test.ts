/**
 * Sessions with workers (protocol.md, Workers) against the real daemon:
 * sync rounds bit-identical to a plain SGD session stepped with the
 * rank-order mean, a sync timeout, async staleness, a bounded worker that
 * waits, and the refusals.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Client, ErrorCode, ServerError, type SessionRef, type StepResult, tensor } from "../src/index.js";
import { Daemon } from "./support.js";

let daemon: Daemon;
let client: Client;
const extra: Client[] = [];

before(async () => {
  daemon = await Daemon.start();
  client = new Client(daemon.url, { timeoutMs: 30000 });
});

after(async () => {
  client?.close();
  for (const c of extra) c.close();
  if (!daemon) return;
  const log = daemon.log();
  const status = await daemon.stop();
  assert.equal(status, 0, `optimd exited ${status}; its log:\n${log}`);
});

/** Another client (one worker's connection). */
function newClient(): Client {
  const c = new Client(daemon.url, { timeoutMs: 60000 });
  extra.push(c);
  return c;
}

/** Rejects with a ServerError of `code`. */
async function rejectsWith(p: Promise<unknown>, code: number, what: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ServerError, `${what}: ${String(e)}`);
    assert.equal(e.code, code, `${what}: ${e.message}`);
    return true;
  });
}

/** A reproducible generator: uniform in [-1, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  };
}

/** One gradient per worker, each worker's at its own scale, so that
 * float32 sums depend on their order. */
function gradsFor(next: () => number, workers: number, n: number): Float32Array[] {
  const scales = [1e-3, 3.7, 1e3, 0.31];
  return Array.from({ length: workers }, (_, w) => Float32Array.from({ length: n }, () => next() * scales[w % scales.length]!));
}

/** A sync round's mean as protocol.md defines it: summed in rank order,
 * each addition rounded to float32, then divided by the number of pushes. */
function rankOrderMean(grads: readonly Float32Array[]): Float32Array {
  const out = Float32Array.from(grads[0]!);
  for (const g of grads.slice(1)) for (let i = 0; i < out.length; i++) out[i] = Math.fround(out[i]! + g[i]!);
  for (let i = 0; i < out.length; i++) out[i] = Math.fround(out[i]! / grads.length);
  return out;
}

function bits(a: Float32Array): number[] {
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}

function f32(t: { data: Float32Array | Float64Array } | undefined, what: string): Float32Array {
  assert.ok(t && t.data instanceof Float32Array, `${what}: no f32 tensor`);
  return t.data as Float32Array;
}

async function waitUntil(what: string, done: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 20000;
  while (!(await done())) {
    assert.ok(Date.now() < deadline, `${what}: not within 20 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test("four sync workers match a plain SGD session stepped with the rank-order mean", async () => {
  const W = 4;
  const N = 129;
  const s = await client.open("sync", "sgd", { hparams: { lr: 0.1 }, workers: { mode: "sync", count: W, timeout_ms: 30000 } });
  const ref = await client.open("ref", "sgd", { hparams: { lr: 0.1 } });
  const names = Array.from({ length: W }, (_, i) => `w${i}`);
  const workers = names.map(() => newClient());
  for (const [i, name] of names.entries()) {
    const j = await client.join(s, name);
    assert.equal(j.rank, i, `join ${name}`);
    assert.equal(j.steps, 0);
    assert.deepEqual(j.workers.members.map((m) => m.name), names.slice(0, i + 1));
  }
  const info = await client.info(s);
  assert.ok(info.workers, "info of a session with workers");
  assert.deepEqual(
    { ...info.workers, members: undefined },
    { mode: "sync", count: 4, reduce: "mean", timeout_ms: 30000, on_timeout: "fail", round_pushes: 0, members: undefined });
  assert.deepEqual(info.workers.members.map((m) => [m.name, m.rank, m.pushes, m.waiting]),
                   names.map((n, i) => [n, i, 0, false]));
  assert.equal((await client.info(ref)).workers, undefined, "a plain session has no workers");

  const next = rng(12345);
  const p0 = Float32Array.from({ length: N }, next);
  for (const sess of [s, ref]) await client.register(sess, { p: tensor(p0) });

  const orders = [[3, 1, 0, 2], [2, 3, 1, 0], [1, 0, 3, 2]];
  for (const [r, order] of orders.entries()) {
    const round = r + 1;
    const grads = gradsFor(next, W, N);
    const reversed = rankOrderMean([...grads].reverse());
    assert.notDeepEqual(bits(rankOrderMean(grads)), bits(reversed), "test data: the mean ignores the order");
    const pushes: Array<Promise<StepResult>> = new Array(W);
    for (const [k, w] of order.entries()) {
      pushes[w] = workers[w]!.step(s, { p: tensor(grads[w]!) }, { worker: names[w]! });
      // Keep the rejection handled until it is awaited below.
      pushes[w]!.catch(() => undefined);
      if (k + 1 < W) await waitUntil("the round's pushes", async () => ((await client.info(s)).workers?.round_pushes ?? 0) > k);
    }
    const results = await Promise.all(pushes);
    const want = f32((await client.step(ref, { p: tensor(rankOrderMean(grads)) })).params?.["p"], "reference");
    for (const [w, res] of results.entries()) {
      assert.equal(res.steps, round);
      assert.deepEqual([res.worker, res.pushes, res.staleness, res.combined], [names[w], round, 0, 4], `round ${round}, w${w}`);
      assert.equal(res.lead, undefined);
      assert.equal(res.waited, undefined);
      assert.deepEqual(bits(f32(res.params?.["p"], "push")), bits(want), `round ${round}, w${w}: p differs from the mean's step`);
    }
  }
  const pulled = f32((await client.pull(s))["p"], "pull");
  assert.deepEqual(bits(pulled), bits(f32((await client.pull(ref))["p"], "pull ref")));
  assert.equal((await client.info(s)).steps, orders.length);
});

test("a sync round missing a worker times out and applies nothing", async () => {
  const s = await client.open("sync-timeout", "sgd", { hparams: { lr: 0.5 }, workers: { mode: "sync", count: 2, timeout_ms: 200 } });
  await client.join(s, "a");
  await client.join(s, "b");
  const p = new Float32Array([1, 2, 3]);
  await client.register(s, { p: tensor(p) });
  await rejectsWith(client.step(s, { p: tensor(new Float32Array([1, 1, 1])) }, { worker: "a" }), ErrorCode.TIMEOUT, "lone push");
  const info = await client.info(s);
  assert.deepEqual([info.steps, info.workers?.round_pushes], [0, 0]);
  assert.deepEqual(Array.from(f32((await client.pull(s))["p"], "pull")), Array.from(p));
});

test("async staleness: a, b, b, b, a makes a's second push 3 steps stale", async () => {
  const s: SessionRef = await client.open("async", "sgd", { hparams: { lr: 0.25 }, workers: { mode: "async" } });
  await client.join(s, "a");
  const j = await client.join(s, "b");
  assert.deepEqual([j.rank, j.workers.mode, j.workers.round_pushes], [1, "async", undefined]);
  await client.register(s, { p: tensor(new Float32Array([0, 0])) });
  const g = { p: tensor(new Float32Array([1, -1])) };
  const seen: Array<[string, number | undefined]> = [];
  for (const [i, w] of ["a", "b", "b", "b", "a", "a"].entries()) {
    const r = await client.step(s, g, { worker: w });
    assert.deepEqual([r.steps, r.worker, r.combined], [i + 1, w, undefined]);
    seen.push([w, r.staleness]);
  }
  assert.deepEqual(seen, [["a", 0], ["b", 1], ["b", 0], ["b", 0], ["a", 3], ["a", 0]]);
  await client.step(s, g, { worker: "b" });
  await client.pullAsWorker(s, "a", ["p"]);
  assert.equal((await client.step(s, g, { worker: "a" })).staleness, 0, "after a pull as a");
  await client.step(s, g, { worker: "a", return: false });
  const r = await client.step(s, g, { worker: "a" });
  assert.deepEqual([r.staleness, r.pushes], [1, 6], "after a push without the parameters");
  const members = (await client.info(s)).workers?.members ?? [];
  assert.deepEqual(members.map((m) => [m.name, m.rank, m.pushes]), [["a", 0, 6], ["b", 1, 4]]);
  const left = await client.leave(s, "a");
  assert.equal(left.steps, 10);
  assert.deepEqual(left.workers.members.map((m) => m.name), ["b"]);
});

test("a bounded worker too far ahead waits for the slowest", async () => {
  const s = await client.open("bounded", "sgd", {
    hparams: { lr: 0.25 }, workers: { mode: "bounded", max_staleness: 1, timeout_ms: 20000 },
  });
  await client.join(s, "fast");
  await client.join(s, "slow");
  await client.register(s, { p: tensor(new Float32Array([0])) });
  const g = { p: tensor(new Float32Array([1])) };
  for (let i = 0; i < 2; i++) {
    const r = await client.step(s, g, { worker: "fast" });
    assert.deepEqual([r.lead, r.waited], [i, false], `fast's push ${i + 1}`);
  }
  const third = newClient().step(s, g, { worker: "fast" });
  third.catch(() => undefined);
  await waitUntil("fast's third push waiting",
                  async () => (await client.info(s)).workers?.members.find((m) => m.name === "fast")?.waiting === true);
  await client.step(s, g, { worker: "slow" });
  const r = await third;
  assert.deepEqual([r.waited, r.lead, r.pushes], [true, 1, 3]);
});

test("refusals: join on a plain session, unknown workers, settings outside the mode", async () => {
  const plain = await client.open("plain", "sgd", { hparams: { lr: 0.1 } });
  await rejectsWith(client.join(plain, "a"), ErrorCode.BAD_REQUEST, "join on a plain session");
  const s = await client.open("refusals", "sgd", { hparams: { lr: 0.1 }, workers: { mode: "async" } });
  await client.join(s, "a");
  await client.register(s, { p: tensor(new Float32Array([0])) });
  const g = { p: tensor(new Float32Array([1])) };
  await rejectsWith(client.step(s, g, { worker: "nobody" }), ErrorCode.UNKNOWN_WORKER, "push by an unknown worker");
  await rejectsWith(client.step(s, g), ErrorCode.BAD_REQUEST, "push naming no worker");
  await rejectsWith(client.pullAsWorker(s, "nobody"), ErrorCode.UNKNOWN_WORKER, "pull by an unknown worker");
  await rejectsWith(client.leave(s, "nobody"), ErrorCode.UNKNOWN_WORKER, "leave by an unknown worker");
  assert.equal((await client.info(s)).steps, 0, "refused pushes were applied");
  const bad = [{ mode: "sync" as const }, { mode: "async" as const, count: 2 }, { mode: "bounded" as const, reduce: "sum" as const },
               { mode: "sync" as const, count: 2, max_staleness: 1 }];
  for (const [i, workers] of bad.entries()) {
    await rejectsWith(client.open(`bad${i}`, "sgd", { workers }), ErrorCode.BAD_REQUEST, JSON.stringify(workers));
  }
});
