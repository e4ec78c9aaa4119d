/**
 * tls+tcp:// against the real daemon requiring client certificates: a
 * whole session with a client certificate; no certificate, one from
 * another CA, or trusting another CA fails the call with a TransportError
 * saying why, well within the call's limit; the daemon serves on.
 */
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { after, before, test } from "node:test";
import { Client, TimeoutError, TransportError, tensor, tlsFromFiles } from "../src/index.js";
import { Daemon, makePki, tempDir } from "./support.js";

let daemon: Daemon;
let pkiDir: string;
let p: (name: string) => string;

before(async () => {
  pkiDir = tempDir("optimd-js-pki-");
  p = makePki(pkiDir);
  daemon = await Daemon.startListen("tls+tcp://127.0.0.1:0", "--tls-cert", p("server.pem"), "--tls-key",
                                    p("server.key"), "--tls-ca", p("ca.pem"), "--tls-client-auth", "required");
});

after(async () => {
  fs.rmSync(pkiDir, { recursive: true, force: true });
  if (!daemon) return;
  const log = daemon.log();
  const status = await daemon.stop();
  assert.equal(status, 0, `optimd exited ${status}; its log:\n${log}`);
});

function client(ca: string, cert?: string): Client {
  const files = cert ? { ca: p(`${ca}.pem`), cert: p(`${cert}.pem`), key: p(`${cert}.key`) } : { ca: p(`${ca}.pem`) };
  return new Client(daemon.url, { timeoutMs: 30000, tls: tlsFromFiles(files) });
}

function bytes(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

test("a whole session over tls+tcp:// with a client certificate", async () => {
  assert.match(daemon.url, /^tls\+tcp:\/\/127\.0\.0\.1:\d+$/);
  const c = client("ca", "client");
  try {
    const lr = 0.1;
    const s = await c.open("tls", "adam", { hparams: { lr } });
    const init = Float32Array.from([0, 1, 2, 3, 4, 5]);
    assert.equal(await c.register(s, { w: tensor(init) }), 1);
    const step = await c.step(s, { w: tensor(new Float32Array(6).fill(1)) });
    const w = step.params?.["w"];
    assert.ok(w, "the step reply carries the parameters");
    assert.equal(w.dtype, "f32");
    const got = w.data;
    // Adam's first step moves every element by lr*g/(|g|+eps).
    for (let i = 0; i < init.length; i++) {
      assert.ok(Math.abs(got[i]! - (init[i]! - lr)) <= 1e-6 * Math.max(1, Math.abs(init[i]! - lr)), `w[${i}] = ${got[i]}`);
    }
    const pulled = await c.pull(s);
    assert.deepEqual(bytes(pulled["w"]!.data), bytes(w.data));
    await c.closeSession(s);
    await assert.rejects(c.pull(s));
  } finally {
    c.close();
  }
});

test("refused clients fail with a TransportError that says why", async () => {
  const cases: Array<[string, Client, RegExp]> = [
    ["no client certificate", client("ca"), /refused this client's certificate/],
    ["a client certificate from another CA", client("ca", "rogue"), /refused this client's certificate/],
    ["trusting another CA", client("rogue_ca", "client"), /certificate/],
  ];
  for (const [name, c, why] of cases) {
    try {
      const err = await c.hello({}, { timeoutMs: 20000 }).then(
        () => assert.fail(`${name}: the call succeeded`),
        (e: unknown) => e,
      );
      assert.ok(err instanceof TransportError && !(err instanceof TimeoutError), `${name}: ${String(err)}`);
      assert.match(err.message, why, name);
      assert.match(err.message, /tls\+tcp:\/\//, name);
    } finally {
      c.close();
    }
  }
  // No TLS options for a tls+tcp:// URL.
  const bare = new Client(daemon.url, { timeoutMs: 20000 });
  await assert.rejects(bare.hello(), /needs TLS options/);
  bare.close();
  assert.throws(() => tlsFromFiles({ cert: p("client.pem") }), /certificate and its key/);

  const c = client("ca", "client");
  try {
    assert.equal((await c.hello()).protocol, 1);
  } finally {
    c.close();
  }
});
