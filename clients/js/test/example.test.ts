/** examples/linreg.ts, run as a program against the real daemon: the loss
 * it reports must fall far below where it started. */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Daemon } from "./support.js";

let daemon: Daemon;
before(async () => {
  daemon = await Daemon.start();
});
after(async () => {
  const log = daemon.log();
  assert.equal(await daemon.stop(), 0, log);
});

test("linreg example: the loss falls below 1e-3", async () => {
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "../examples/linreg.js");
  const { stdout } = await promisify(execFile)(process.execPath, [script, daemon.url, "300"], { timeout: 120000 });
  const last = stdout.trim().split("\n").at(-1)!;
  const r = JSON.parse(last) as { initial_loss: number; final_loss: number; steps: number };
  assert.equal(r.steps, 300);
  // From w = 0 the loss starts near 5.5; the noise floor is about 3e-5.
  assert.ok(r.initial_loss > 1, `initial loss ${r.initial_loss}`);
  assert.ok(r.final_loss < 1e-3, `final loss ${r.final_loss}`);
});
