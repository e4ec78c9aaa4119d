/** Test support: a real optimd on a free loopback port, pynng peers, paths. */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** clients/js in the source tree (tests run from dist/test in a copy). */
export function sourceDir(): string {
  const env = process.env["OPTIMD_SOURCE_DIR"];
  if (env) return env;
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
}

export function requireEnv(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the tests through ctest (clients/js/CMakeLists.txt sets it)`);
  return v;
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** `$OPTIMD_BIN --listen tcp://127.0.0.1:0 ...`, stopped with SIGTERM. */
export class Daemon {
  readonly dir: string;
  readonly url: string;
  private readonly proc: ChildProcess;
  private readonly logPath: string;

  private constructor(dir: string, url: string, proc: ChildProcess, logPath: string) {
    this.dir = dir;
    this.url = url;
    this.proc = proc;
    this.logPath = logPath;
  }

  static start(...extra: string[]): Promise<Daemon> {
    return Daemon.startListen("tcp://127.0.0.1:0", ...extra);
  }

  /** Listening first on `listen` (the ready file names the first address). */
  static async startListen(listen: string, ...extra: string[]): Promise<Daemon> {
    const dir = tempDir("optimd-js-");
    const ready = path.join(dir, "ready");
    const logPath = path.join(dir, "optimd.log");
    const log = fs.openSync(logPath, "w");
    const proc = spawn(requireEnv("OPTIMD_BIN"), [
      "--listen", listen,
      "--plugin-dir", requireEnv("OPTIMD_PLUGIN_DIR"),
      "--state-dir", path.join(dir, "state"),
      "--ready-file", ready,
      ...extra,
    ], { stdio: ["ignore", log, log] });
    fs.closeSync(log);
    let exited = false;
    proc.once("exit", () => { exited = true; });
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline) {
      if (fs.existsSync(ready)) {
        const url = fs.readFileSync(ready, "utf8").trim();
        if (url) return new Daemon(dir, url, proc, logPath);
      }
      if (exited) throw new Error(`optimd exited during start-up:\n${fs.readFileSync(logPath, "utf8")}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    proc.kill("SIGKILL");
    throw new Error("optimd not ready after 60 s");
  }

  log(): string {
    return fs.readFileSync(this.logPath, "utf8");
  }

  /** Waits up to `timeoutMs` for the daemon to exit by itself (after a
   * `shutdown`): its exit status, or undefined while it still runs. A
   * later stop() finds it gone and sends nothing. */
  async waitExit(timeoutMs: number): Promise<number | null | undefined> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      let timer: NodeJS.Timeout | undefined;
      const gone = await Promise.race([
        once(this.proc, "exit").then(() => true),
        new Promise<boolean>((r) => { timer = setTimeout(() => r(false), timeoutMs); }),
      ]);
      clearTimeout(timer);
      if (!gone) return undefined;
    }
    return this.proc.exitCode;
  }

  /** SIGTERM and wait; resolves with the exit status (must be 0). */
  async stop(): Promise<number | null> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exit = once(this.proc, "exit");
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 60000);
      await exit;
      clearTimeout(timer);
    }
    const status = this.proc.exitCode;
    if (status === 0) fs.rmSync(this.dir, { recursive: true, force: true });
    return status;
  }
}

/** Throw-away certificates (PEM files made with openssl in `dir`): a CA,
 * a server certificate for 127.0.0.1 and localhost, a client certificate
 * from the CA, and a client certificate from another CA (`rogue`). */
export function makePki(dir: string): (name: string) => string {
  const p = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => {
    const r = spawnSync("openssl", args, { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.error?.message ?? r.stderr}`);
  };
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  for (const ca of ["ca", "rogue_ca"]) {
    openssl("req", "-x509", ...ec, "-keyout", p(`${ca}.key`), "-out", p(`${ca}.pem`), "-days", "2",
            "-subj", `/CN=optimd js test ${ca}`);
  }
  fs.writeFileSync(p("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  for (const [name, ca] of [["server", "ca"], ["client", "ca"], ["rogue", "rogue_ca"]] as const) {
    openssl("req", "-new", ...ec, "-keyout", p(`${name}.key`), "-out", p(`${name}.csr`),
            "-subj", `/CN=${name === "server" ? "localhost" : name}`);
    openssl("x509", "-req", "-in", p(`${name}.csr`), "-CA", p(`${ca}.pem`), "-CAkey", p(`${ca}.key`),
            "-CAcreateserial", "-out", p(`${name}.pem`), "-days", "2",
            ...(name === "server" ? ["-extfile", p("san.cnf")] : []));
  }
  return p;
}

/** The python with pynng (the venv scripts/python-env.sh makes). */
export function python(): string {
  return requireEnv("OPTIMD_JS_PYTHON");
}

export const PEER_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), "../../test/pynng_peer.py");

/** A pynng peer process (test/pynng_peer.py); `ready` is the URL it
 * printed, for the listening modes. */
export class PyPeer {
  readonly proc: ChildProcess;
  readonly output: string[] = [];
  private readonly exited: Promise<number | null>;

  constructor(mode: string, url: string) {
    this.proc = spawn(python(), [PEER_SCRIPT, mode, url], { stdio: ["ignore", "pipe", "inherit"] });
    this.exited = new Promise((resolve) => this.proc.once("exit", (code) => resolve(code)));
    createInterface({ input: this.proc.stdout! }).on("line", (l) => this.output.push(l));
  }

  /** The URL a listening peer printed (60 s at most). */
  async ready(): Promise<string> {
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline) {
      const line = this.output.find((l) => l.startsWith("READY "));
      if (line) return line.slice("READY ".length);
      if (this.proc.exitCode !== null) throw new Error(`pynng peer exited ${this.proc.exitCode}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error("pynng peer not ready after 60 s");
  }

  /** Waits for the exit (killing it after `timeoutMs`); the exit code. */
  async exit(timeoutMs = 60000): Promise<number | null> {
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), timeoutMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }

  kill(): void {
    this.proc.kill("SIGKILL");
  }
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex");
}

export function fromHex(h: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2})*$/.test(h)) throw new Error(`not hex: ${h.slice(0, 40)}`);
  return new Uint8Array(Buffer.from(h, "hex"));
}
