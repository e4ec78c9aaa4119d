/**
 * Scalability Protocols REQ/REP version 0 over Node's `net`, written from
 * the SP specifications (nanomsg's sp-tcp-mapping, sp-ipc-mapping and
 * sp-request-reply drafts) and NNG's behaviour where it departs from them.
 *
 * Connection: right after connecting, each side sends an 8-byte header
 * `00 'S' 'P' 00 <protocol id: u16 BE> 00 00` and checks the peer's: the
 * magic, version 0, zero reserved bytes and the protocol id it expects
 * (REQ0 = 0x30 talks to REP0 = 0x31).
 * TLS (`tls+tcp://`, as NNG's tls+tcp transport): the TCP mapping inside a
 * TLS stream; the header exchange starts once the TLS handshake is done.
 * Framing: over TCP a message is `<length: u64 BE> <payload>`; over IPC
 * (Unix domain sockets) NNG puts a message type byte of 1 before the length
 * (the draft says 0; NNG's peers send and require 1).
 * REQ0 prepends a 32-bit big-endian request id with the top bit set to the
 * request; REP0 returns the same bytes (its "backtrace") before the reply.
 * A REP0 peer that is a device may carry several 32-bit hops; the last one
 * has the top bit set.
 */
import { randomInt } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as tls from "node:tls";
import { TimeoutError, TransportError } from "./errors.js";

export const PROTO_REQ0 = 0x30;
export const PROTO_REP0 = 0x31;

const HEADER_BYTES = 8;
/** NNG's REP0 refuses backtraces of more than 8 hops; so do we. */
const MAX_HOPS = 8;
const MAX_BUFFER = 2 ** 32; // Node's Buffer limit on 64-bit hosts is at least this.

export type Endpoint =
  | { kind: "tcp" | "tls"; host: string; port: number }
  | { kind: "ipc"; path: string };

/** Parses `tcp://host:port`, `tcp://[v6addr]:port`, the same with
 * `tls+tcp://`, or `ipc:///path`. */
export function parseUrl(url: string): Endpoint {
  if (url.startsWith("ipc://")) {
    const path = url.slice("ipc://".length);
    if (path.length === 0) throw new TypeError(`no socket path in ${url}`);
    return { kind: "ipc", path };
  }
  const scheme = url.startsWith("tcp://") ? "tcp://" : url.startsWith("tls+tcp://") ? "tls+tcp://" : undefined;
  if (scheme) {
    const rest = url.slice(scheme.length);
    const m = /^(?:\[([^\]]+)\]|([^:/[\]]*)):(\d+)$/.exec(rest);
    if (!m) throw new TypeError(`cannot parse ${url}: expected ${scheme}host:port`);
    const host = m[1] ?? m[2] ?? "";
    const port = Number(m[3]);
    if (port > 65535) throw new TypeError(`port out of range in ${url}`);
    return { kind: scheme === "tcp://" ? "tcp" : "tls", host: host === "" || host === "*" ? "0.0.0.0" : host, port };
  }
  throw new TypeError(`unsupported address ${url}: this client speaks tcp://, tls+tcp:// and ipc://`);
}

function formatUrl(ep: Endpoint): string {
  if (ep.kind === "ipc") return `ipc://${ep.path}`;
  const scheme = ep.kind === "tls" ? "tls+tcp" : "tcp";
  return ep.host.includes(":") ? `${scheme}://[${ep.host}]:${ep.port}` : `${scheme}://${ep.host}:${ep.port}`;
}

/**
 * TLS settings for `tls+tcp://` URLs, handed to Node's `tls.connect`: PEM
 * contents, as Node takes them ({@link tlsFromFiles} reads files).
 */
export interface TlsOptions {
  /** The CA certificate(s) the daemon's certificate must chain to; when
   * absent, Node's bundled roots. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** This client's certificate chain, for a daemon that requires client
   * certificates; goes with `key`. */
  cert?: string | Buffer;
  /** The private key of `cert`. */
  key?: string | Buffer;
  /** The name the daemon's certificate must carry (and the SNI name);
   * default: the URL's host (an IP address is matched against the
   * certificate's IP SANs). */
  servername?: string;
}

/** {@link TlsOptions} from PEM file paths. */
export function tlsFromFiles(files: { ca?: string; cert?: string; key?: string; servername?: string }): TlsOptions {
  if ((files.cert === undefined) !== (files.key === undefined)) {
    throw new TypeError("a TLS client certificate and its key go together: give both or neither");
  }
  const out: TlsOptions = {};
  if (files.ca !== undefined) out.ca = fs.readFileSync(files.ca);
  if (files.cert !== undefined) out.cert = fs.readFileSync(files.cert);
  if (files.key !== undefined) out.key = fs.readFileSync(files.key);
  if (files.servername !== undefined) out.servername = files.servername;
  return out;
}

function protocolHeader(proto: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h[1] = 0x53; // 'S'
  h[2] = 0x50; // 'P'
  h.writeUInt16BE(proto, 4);
  return h;
}

/**
 * One SP connection: the header exchange, then length-prefixed messages both
 * ways. Messages are handed to `onMessage`; the first error or the end of the
 * stream goes to `onClose`, once.
 */
class Pipe {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private stage: "handshake" | "head" | "body" = "handshake";
  private bodyLength = 0;
  private closed = false;
  private readonly headBytes: number;
  onMessage: (msg: Buffer) => void = () => {};
  onReady: () => void = () => {};
  onClose: (err: Error) => void = () => {};

  constructor(
    readonly socket: net.Socket,
    private readonly ipc: boolean,
    private readonly localProto: number,
    private readonly peerProto: number,
    private readonly maxRecvSize: number,
  ) {
    this.headBytes = ipc ? 9 : 8;
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("error", (err) => this.fail(new TransportError(`connection error: ${err.message}`, { cause: err })));
    socket.on("close", () => this.fail(new TransportError("the peer closed the connection")));
  }

  /** Sends our header; call once the socket is connected. */
  start(): void {
    if (this.socket instanceof net.Socket && !this.ipc) this.socket.setNoDelay(true);
    this.socket.write(protocolHeader(this.localProto));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  send(parts: readonly Uint8Array[]): void {
    if (this.closed) throw new TransportError("the connection is closed");
    let length = 0;
    for (const p of parts) length += p.byteLength;
    const head = Buffer.alloc(this.headBytes);
    if (this.ipc) head[0] = 1;
    head.writeBigUInt64BE(BigInt(length), this.ipc ? 1 : 0);
    // One writev for the frame: the payload parts are not copied here.
    this.socket.cork();
    this.socket.write(head);
    for (const p of parts) if (p.byteLength > 0) this.socket.write(p);
    this.socket.uncork();
  }

  close(err?: Error): void {
    this.fail(err ?? new TransportError("the connection was closed"));
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.chunks.length = 0;
    this.onClose(err);
  }

  /** The next n buffered bytes: a view when one chunk holds them all. */
  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    while (!this.closed) {
      if (this.stage === "handshake") {
        if (this.buffered < HEADER_BYTES) return;
        const h = this.take(HEADER_BYTES);
        if (h[0] !== 0 || h[1] !== 0x53 || h[2] !== 0x50 || h[3] !== 0 || h[6] !== 0 || h[7] !== 0) {
          this.fail(new TransportError("the peer is not a Scalability Protocols (SP v0) endpoint"));
          return;
        }
        const proto = h.readUInt16BE(4);
        if (proto !== this.peerProto) {
          this.fail(new TransportError(
            `the peer speaks SP protocol 0x${proto.toString(16)}, not 0x${this.peerProto.toString(16)}`));
          return;
        }
        this.stage = "head";
        this.onReady();
      } else if (this.stage === "head") {
        if (this.buffered < this.headBytes) return;
        const h = this.take(this.headBytes);
        if (this.ipc && h[0] !== 1) {
          this.fail(new TransportError(`IPC message of type ${h[0]}, not 1`));
          return;
        }
        const length = h.readBigUInt64BE(this.ipc ? 1 : 0);
        const limit = this.maxRecvSize > 0 ? Math.min(this.maxRecvSize, MAX_BUFFER) : MAX_BUFFER;
        if (length > BigInt(limit)) {
          this.fail(new TransportError(`a ${length}-byte message exceeds the receive limit of ${limit} bytes`));
          return;
        }
        this.bodyLength = Number(length);
        this.stage = "body";
      } else {
        if (this.buffered < this.bodyLength) return;
        const msg = this.bodyLength === 0 ? Buffer.alloc(0) : this.take(this.bodyLength);
        this.stage = "head";
        this.onMessage(msg);
      }
    }
  }
}

function connectSocket(ep: Endpoint, tlsOptions: TlsOptions | undefined): net.Socket {
  if (ep.kind === "ipc") return net.connect({ path: ep.path });
  if (ep.kind === "tcp") return net.connect({ host: ep.host, port: ep.port });
  if (!tlsOptions) throw new TypeError("a tls+tcp:// URL needs TLS options (the `tls` option)");
  const { ca, cert, key, servername } = tlsOptions;
  if ((cert === undefined) !== (key === undefined)) {
    throw new TypeError("a TLS client certificate and its key go together: give both or neither");
  }
  return tls.connect({
    host: ep.host,
    port: ep.port,
    minVersion: "TLSv1.2",
    ...(ca !== undefined ? { ca } : {}),
    ...(cert !== undefined ? { cert } : {}),
    ...(key !== undefined ? { key } : {}),
    ...(servername !== undefined ? { servername } : {}),
  });
}

export interface ReqSocketOptions {
  /** Largest reply accepted, in bytes; 0 (the default) means no limit. */
  maxRecvSize?: number;
  /** Required for `tls+tcp://` URLs, ignored otherwise. */
  tls?: TlsOptions;
}

interface Pending {
  id: number;
  resolve: (body: Buffer) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
}

/**
 * A REQ0 socket over one connection, one request in flight at a time. It
 * never resends a request (protocol.md §1: a resent `step` would apply
 * twice); replies whose id is not the pending request's are dropped.
 */
export class ReqSocket {
  private pending: Pending | undefined;
  // The draft asks for a random first id, so that a restarted client's ids
  // do not match replies meant for its previous life.
  private nextId = randomInt(0, 0x80000000);

  private constructor(private readonly pipe: Pipe) {
    pipe.onMessage = (msg) => this.deliver(msg);
    pipe.onClose = (err) => {
      const p = this.pending;
      this.pending = undefined;
      if (p) {
        clearTimeout(p.timer);
        p.reject(err);
      }
    };
  }

  /** Connects (and for `tls+tcp://` completes the TLS handshake) and
   * exchanges SP headers within `timeoutMs` (0: no limit). */
  static dial(url: string, timeoutMs = 0, options: ReqSocketOptions = {}): Promise<ReqSocket> {
    const ep = parseUrl(url);
    return new Promise((resolve, reject) => {
      let socket: net.Socket;
      try {
        socket = connectSocket(ep, options.tls);
      } catch (err) {
        reject(err);
        return;
      }
      let secured = false;
      const pipe = new Pipe(socket, ep.kind === "ipc", PROTO_REQ0, PROTO_REP0, options.maxRecvSize ?? 0);
      let timer: NodeJS.Timeout | undefined;
      if (timeoutMs > 0) {
        timer = setTimeout(() => pipe.close(new TimeoutError(`no SP connection to ${url} within ${timeoutMs} ms`)),
                           timeoutMs);
      }
      pipe.onReady = () => {
        clearTimeout(timer);
        resolve(new ReqSocket(pipe));
      };
      pipe.onClose = (err) => {
        clearTimeout(timer);
        if (err instanceof TimeoutError) {
          reject(err);
          return;
        }
        // A daemon that refuses the client's certificate just drops the
        // connection, during the handshake or (TLS 1.3, where the client is
        // done first) right after it, before the SP header; a certificate
        // this client refuses fails with the verification error instead.
        const code = (err.cause as NodeJS.ErrnoException | undefined)?.code;
        const dropped = code === "ECONNRESET" || code === "EPIPE" || (secured && !(err.cause instanceof Error));
        const alert = /ALERT_(UNKNOWN_CA|CERTIFICATE_REQUIRED|BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|ACCESS_DENIED)/
          .test(code ?? "");
        const hint = ep.kind !== "tls" || !tcpConnected
          ? ""
          : alert
            ? " (the daemon refused this client's certificate: none given, or not signed by the CA the daemon trusts)"
            : dropped
              ? " (the daemon dropped the TLS connection: most likely it refused this client's certificate," +
                " none given or not signed by the CA the daemon trusts)"
              : "";
        reject(new TransportError(`cannot connect to ${url}: ${err.message.trimEnd()}${hint}`, { cause: err }));
      };
      let tcpConnected = false;
      if (ep.kind === "tls") {
        socket.once("connect", () => {
          tcpConnected = true;
        });
        socket.once("secureConnect", () => {
          secured = true;
          pipe.start();
        });
      } else {
        socket.once("connect", () => pipe.start());
      }
    });
  }

  /** False once the connection has failed or was closed. */
  get usable(): boolean {
    return !this.pipe.isClosed;
  }

  get busy(): boolean {
    return this.pending !== undefined;
  }

  /**
   * Sends one request and resolves with the reply body. With `timeoutMs` > 0
   * the promise rejects with {@link TimeoutError} when no reply came in time;
   * the request is then abandoned (a late reply is dropped).
   */
  request(body: Uint8Array | readonly Uint8Array[], timeoutMs = 0): Promise<Buffer> {
    if (this.pending) return Promise.reject(new TransportError("a request is already in flight on this socket"));
    if (this.pipe.isClosed) return Promise.reject(new TransportError("the connection is closed"));
    const id = (this.nextId | 0x80000000) >>> 0;
    this.nextId = (this.nextId + 1) & 0x7fffffff;
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32BE(id, 0);
    return new Promise((resolve, reject) => {
      const p: Pending = { id, resolve, reject, timer: undefined };
      if (timeoutMs > 0) {
        p.timer = setTimeout(() => {
          if (this.pending === p) this.pending = undefined;
          reject(new TimeoutError(`no reply within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.pending = p;
      try {
        this.pipe.send([head, ...(body instanceof Uint8Array ? [body] : body)]);
      } catch (err) {
        clearTimeout(p.timer);
        this.pending = undefined;
        reject(err);
      }
    });
  }

  close(): void {
    this.pipe.close(new TransportError("the socket was closed"));
  }

  private deliver(msg: Buffer): void {
    // Too short, no top bit, or another request's id: a stray or malformed
    // reply, which the REQ side must ignore (sp-request-reply §6.1).
    if (msg.length < 4) return;
    const id = msg.readUInt32BE(0);
    const p = this.pending;
    if (!p || (id & 0x80000000) === 0 || id !== p.id) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    p.resolve(msg.subarray(4));
  }
}

/** What a {@link RepServer} handler returns: the reply body, or null to
 * drop the request without answering. */
export type RepHandler = (request: Buffer) => Uint8Array | null | Promise<Uint8Array | null>;

/**
 * A REP0 listener: answers each request with `handler`'s reply, over any
 * number of connections. Used by the tests to check this SP stack against
 * NNG's REQ0; it also makes a stand-in daemon.
 */
export class RepServer {
  private readonly pipes = new Set<Pipe>();

  private constructor(private readonly server: net.Server, readonly url: string) {}

  static listen(url: string, handler: RepHandler): Promise<RepServer> {
    const ep = parseUrl(url);
    if (ep.kind === "tls") return Promise.reject(new TypeError("RepServer listens on tcp:// and ipc:// only"));
    return new Promise((resolve, reject) => {
      const server = net.createServer();
      let rep: RepServer | undefined;
      server.on("connection", (socket) => {
        if (!rep) {
          socket.destroy();
          return;
        }
        const pipe = new Pipe(socket, ep.kind === "ipc", PROTO_REP0, PROTO_REQ0, 0);
        rep.pipes.add(pipe);
        pipe.onClose = () => rep?.pipes.delete(pipe);
        pipe.onMessage = (msg) => void RepServer.serve(pipe, msg, handler);
        pipe.start();
      });
      server.once("error", reject);
      const onListening = () => {
        server.off("error", reject);
        let bound: Endpoint = ep;
        const addr = server.address();
        if (ep.kind === "tcp" && addr && typeof addr === "object") bound = { kind: "tcp", host: ep.host, port: addr.port };
        rep = new RepServer(server, formatUrl(bound));
        resolve(rep);
      };
      if (ep.kind === "tcp") server.listen({ host: ep.host, port: ep.port }, onListening);
      else if (ep.kind === "ipc") server.listen({ path: ep.path }, onListening);
    });
  }

  private static async serve(pipe: Pipe, msg: Buffer, handler: RepHandler): Promise<void> {
    // The backtrace: 32-bit hops up to and including the one with the top
    // bit set (the REQ side's request id). A request without one is dropped.
    let end = -1;
    for (let off = 0; off + 4 <= msg.length && off < 4 * MAX_HOPS; off += 4) {
      if ((msg.readUInt32BE(off) & 0x80000000) !== 0) {
        end = off + 4;
        break;
      }
    }
    if (end < 0) return;
    const backtrace = msg.subarray(0, end);
    let reply: Uint8Array | null;
    try {
      reply = await handler(msg.subarray(end));
    } catch {
      return;
    }
    if (reply !== null && !pipe.isClosed) pipe.send([backtrace, reply]);
  }

  close(): Promise<void> {
    for (const p of this.pipes) p.close();
    this.pipes.clear();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
