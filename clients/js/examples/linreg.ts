/**
 * Linear regression trained remotely: the gradients of the mean squared
 * error are computed here, the Adam updates are applied by optimd.
 *
 *   node dist/examples/linreg.js [URL] [STEPS]     (URL default tcp://127.0.0.1:7878)
 *
 * Prints the loss now and then, and last one JSON line
 * {"initial_loss": ..., "final_loss": ..., "steps": ...}.
 */
import { Client, ServerError, tensor } from "../src/index.js";

const FEATURES = 4;
const SAMPLES = 256;

/** Deterministic pseudo-random numbers in [-1, 1). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

export async function train(url: string, steps = 300): Promise<{ initial_loss: number; final_loss: number; steps: number }> {
  // Data: y = X w_true + b_true + small noise.
  const rand = lcg(42);
  const wTrue = [2, -3, 0.5, 1.25];
  const bTrue = 0.75;
  const X = new Float32Array(SAMPLES * FEATURES).map(() => rand());
  const y = new Float32Array(SAMPLES);
  for (let i = 0; i < SAMPLES; i++) {
    let v = bTrue + 0.01 * rand();
    for (let j = 0; j < FEATURES; j++) v += X[i * FEATURES + j]! * wTrue[j]!;
    y[i] = v;
  }

  // Loss and gradients of mean((X w + b - y)^2) at (w, b).
  const lossAndGrads = (w: Float32Array, b: number) => {
    const gw = new Float32Array(FEATURES);
    let gb = 0, loss = 0;
    for (let i = 0; i < SAMPLES; i++) {
      let pred = b;
      for (let j = 0; j < FEATURES; j++) pred += X[i * FEATURES + j]! * w[j]!;
      const r = pred - y[i]!;
      loss += r * r;
      for (let j = 0; j < FEATURES; j++) gw[j]! += (2 * r * X[i * FEATURES + j]!) / SAMPLES;
      gb += (2 * r) / SAMPLES;
    }
    return { loss: loss / SAMPLES, gw, gb: new Float32Array([gb]) };
  };

  const client = new Client(url, { timeoutMs: 30000 });
  const name = `linreg-${process.pid}-${Date.now()}`;
  try {
    const session = await client.open(name, "adam", { hparams: { lr: 0.05 }, durability: "none" });
    let w: Float32Array = new Float32Array(FEATURES);
    let b: Float32Array = new Float32Array(1);
    await client.register(session, { w: tensor(w), b: tensor(b, []) });
    const initial = lossAndGrads(w, b[0]!).loss;
    let loss = initial;
    for (let t = 1; t <= steps; t++) {
      const g = lossAndGrads(w, b[0]!);
      loss = g.loss;
      if (t % 50 === 1) console.log(`step ${t - 1}: loss ${loss.toExponential(3)}`);
      // seq + client: a retried step (after a timeout) is applied once.
      const r = await client.step(session, { w: tensor(g.gw), b: tensor(g.gb, []) }, { seq: t, client: "linreg" });
      w = r.params!["w"]!.data as Float32Array;
      b = r.params!["b"]!.data as Float32Array;
    }
    loss = lossAndGrads(w, b[0]!).loss;
    console.log(`learned w = [${[...w].map((x) => x.toFixed(3)).join(", ")}], b = ${b[0]!.toFixed(3)}`);
    await client.closeSession(session);
    return { initial_loss: initial, final_loss: loss, steps };
  } catch (err) {
    if (err instanceof ServerError) console.error(`optimd refused: ${err.name} (${err.code}): ${err.message}`);
    throw err;
  } finally {
    client.close();
  }
}

// Run as a program (not when imported).
if (import.meta.url === `file://${process.argv[1]}`) {
  const url = process.argv[2] ?? "tcp://127.0.0.1:7878";
  const steps = Number(process.argv[3] ?? 300);
  train(url, steps).then(
    (r) => console.log(JSON.stringify(r)),
    (err: Error) => {
      console.error(err.message);
      process.exit(1);
    },
  );
}
