/**
 * The SP REQ0/REP0 code against NNG itself (pynng): our REQ to NNG's REP and
 * NNG's REQ to our REP, over TCP and IPC, with messages from empty to a few
 * MiB; a wrong SP peer is refused; stray replies are ignored.
 */
import assert from "node:assert/strict";
import * as net from "node:net";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { RepServer, ReqSocket, TimeoutError, TransportError, parseUrl } from "../src/index.js";
import { PyPeer, tempDir } from "./support.js";

// The same payloads as pynng_peer.py's payloads(), built independently.
function payloads(): Buffer[] {
  const big = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) % 251;
  const all = Buffer.alloc(256 * 3);
  for (let i = 0; i < all.length; i++) all[i] = i % 256;
  return [Buffer.alloc(0), Buffer.from("hello"), all, big, Buffer.alloc(70000, "x")];
}

const dirs: string[] = [];
function ipcUrl(): string {
  const d = tempDir("optimd-js-sp-");
  dirs.push(d);
  return `ipc://${path.join(d, "sock")}`;
}

describe("parseUrl", () => {
  test("tcp, tcp6 and ipc", () => {
    assert.deepEqual(parseUrl("tcp://127.0.0.1:7878"), { kind: "tcp", host: "127.0.0.1", port: 7878 });
    assert.deepEqual(parseUrl("tcp://[::1]:9"), { kind: "tcp", host: "::1", port: 9 });
    assert.deepEqual(parseUrl("ipc:///tmp/x.sock"), { kind: "ipc", path: "/tmp/x.sock" });
    assert.throws(() => parseUrl("ws://127.0.0.1:1/x"), TypeError);
    assert.throws(() => parseUrl("tcp://127.0.0.1"), TypeError);
  });
});

for (const transport of ["tcp", "ipc"] as const) {
  const listenUrl = () => (transport === "tcp" ? "tcp://127.0.0.1:0" : ipcUrl());

  test(`our REQ0 against NNG's REP0 over ${transport}`, async () => {
    const peer = new PyPeer("rep", listenUrl());
    try {
      const url = await peer.ready();
      const sock = await ReqSocket.dial(url, 30000);
      // Not the empty message: pynng 0.9.0's recv() fails on an empty
      // body (it unpacks a NULL pointer); the REP0 test below covers it.
      for (const p of payloads().filter((x) => x.length > 0)) {
        const reply = await sock.request(p, 30000);
        assert.equal(reply.length, p.length + 3);
        assert.ok(reply.subarray(0, 3).equals(Buffer.from("re:")));
        assert.ok(reply.subarray(3).equals(p), `payload of ${p.length} bytes came back changed`);
      }
      // Several parts make one message.
      const parts = await sock.request([Buffer.from("ab"), Buffer.from("cd")], 30000);
      assert.equal(parts.toString(), "re:abcd");
      assert.equal((await sock.request(Buffer.from("quit"), 30000)).toString(), "re:quit");
      sock.close();
      assert.equal(await peer.exit(), 0);
    } finally {
      peer.kill();
    }
  });

  test(`NNG's REQ0 against our REP0 over ${transport}`, async () => {
    const seen: number[] = [];
    const server = await RepServer.listen(listenUrl(), (req) => {
      seen.push(req.length);
      return Buffer.concat([Buffer.from("re:"), req]);
    });
    const peer = new PyPeer("req", server.url);
    try {
      assert.equal(await peer.exit(), 0, peer.output.join("\n"));
      assert.deepEqual(peer.output, [`OK ${payloads().length}`]);
      assert.deepEqual(seen, payloads().map((p) => p.length));
    } finally {
      peer.kill();
      await server.close();
    }
  });
}

test("our REQ0 against our REP0, several connections at once", async () => {
  const server = await RepServer.listen("tcp://127.0.0.1:0", async (req) => {
    // Answer out of arrival order.
    await new Promise((r) => setTimeout(r, 50 - (req[0] ?? 0) * 10));
    return Buffer.concat([req, req]);
  });
  try {
    const socks = await Promise.all([0, 1, 2, 3].map(() => ReqSocket.dial(server.url, 10000)));
    const replies = await Promise.all(socks.map((s, i) => s.request(Buffer.from([i, 9]), 10000)));
    replies.forEach((r, i) => assert.deepEqual([...r], [i, 9, i, 9]));
    // An empty request body is a message of just the 4-byte request id.
    const empty = await socks[0]!.request(Buffer.alloc(0), 10000);
    assert.equal(empty.length, 0);
    socks.forEach((s) => s.close());
  } finally {
    await server.close();
  }
});

test("a peer that is not REP0 is refused", async () => {
  const peer = new PyPeer("pair", "tcp://127.0.0.1:0");
  try {
    const url = await peer.ready();
    await assert.rejects(ReqSocket.dial(url, 10000), (err: Error) => {
      assert.ok(err instanceof TransportError);
      assert.match(err.message, /protocol 0x11/); // PAIR1 is 0x11
      return true;
    });
  } finally {
    peer.kill();
  }
});

test("a server that is not SP at all is refused", async () => {
  const server = net.createServer((s) => s.end("HTTP/1.1 400 Bad Request\r\n\r\n"));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    await assert.rejects(ReqSocket.dial(`tcp://127.0.0.1:${port}`, 10000), TransportError);
  } finally {
    server.close();
  }
});

/**
 * A hand-written REP0 over raw TCP: checks the bytes our REQ0 sends, and
 * answers first with replies the REQ side must drop (wrong id, top bit
 * clear, too short) and then the right one.
 */
test("REQ0 wire bytes; stray and malformed replies are ignored", async () => {
  const frames: Buffer[] = [];
  const server = net.createServer((s) => {
    let buf = Buffer.alloc(0);
    s.write(Buffer.from([0, 0x53, 0x50, 0, 0x00, 0x31, 0, 0]));
    s.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 8) return;
      const hdr = buf.subarray(0, 8);
      assert.deepEqual([...hdr], [0, 0x53, 0x50, 0, 0x00, 0x30, 0, 0]);
      const rest = buf.subarray(8);
      if (rest.length < 8) return;
      const len = Number(rest.readBigUInt64BE(0));
      if (rest.length < 8 + len) return;
      const msg = rest.subarray(8, 8 + len);
      frames.push(Buffer.from(msg));
      const id = msg.readUInt32BE(0);
      const frame = (body: Buffer) => {
        const h = Buffer.alloc(8);
        h.writeBigUInt64BE(BigInt(body.length));
        return Buffer.concat([h, body]);
      };
      const withId = (n: number, body: string) => {
        const b = Buffer.alloc(4);
        b.writeUInt32BE(n >>> 0);
        return Buffer.concat([b, Buffer.from(body)]);
      };
      s.write(frame(withId(((id + 1) | 0x80000000) >>> 0, "stray")));
      s.write(frame(withId(id & 0x7fffffff, "no top bit")));
      s.write(frame(Buffer.from([0x80])));
      s.write(frame(withId(id, "right")));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const sock = await ReqSocket.dial(`tcp://127.0.0.1:${port}`, 10000);
    const reply = await sock.request(Buffer.from("ping"), 10000);
    assert.equal(reply.toString(), "right");
    assert.equal(frames.length, 1);
    const f = frames[0]!;
    assert.equal(f.length, 8);
    assert.ok((f.readUInt32BE(0) & 0x80000000) !== 0, "the request id has its top bit set");
    assert.equal(f.subarray(4).toString(), "ping");
    sock.close();
  } finally {
    server.close();
  }
});

test("no reply in time rejects with TimeoutError", async () => {
  const server = await RepServer.listen("tcp://127.0.0.1:0", () => null);
  try {
    const sock = await ReqSocket.dial(server.url, 10000);
    await assert.rejects(sock.request(Buffer.from("x"), 100), TimeoutError);
    sock.close();
  } finally {
    await server.close();
  }
});

after(async () => {
  const fs = await import("node:fs");
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});
