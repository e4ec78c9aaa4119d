#!/usr/bin/python3
"""optimctl against the real daemon: listings, session commands, usage
errors, and `rosenbrock` runs compared with the same procedure in torch
1.13.1 -- the final "x y" line and every CSV row must be equal as %.9g text.

Run by CTest with OPTIMD_BIN, OPTIMD_PLUGIN_DIR and OPTIMD_OPTIMCTL set;
needs Debian's /usr/bin/python3 (the one that can import torch).
"""
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

OPTIMD = os.environ["OPTIMD_BIN"]
PLUGINS = os.environ["OPTIMD_PLUGIN_DIR"]
OPTIMCTL = os.environ["OPTIMD_OPTIMCTL"]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


class Daemon:
    def __init__(self, *extra):
        self.dir = tempfile.mkdtemp(prefix="optimd-optimctl-")
        ready = os.path.join(self.dir, "ready")
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            [OPTIMD, "--listen", "tcp://127.0.0.1:0", "--plugin-dir", PLUGINS,
             "--state-dir", os.path.join(self.dir, "state"),
             "--ready-file", ready, *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        self.url = None
        while time.monotonic() < deadline:
            if os.path.exists(ready):
                with open(ready) as f:
                    line = f.readline().strip()
                if line:
                    self.url = line
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("optimd did not start; log in " + self.dir)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def token_env(daemon):
    """optimctl keeps named sessions' tokens under $OPTIMD_TOKEN_DIR; the
    test's own directory, never the build tree."""
    env = dict(os.environ)
    env["OPTIMD_TOKEN_DIR"] = os.path.join(daemon.dir, "tokens")
    return env


def optimctl(daemon, *args, server=True, env=None):
    cmd = [OPTIMCTL]
    if server:
        cmd += ["--server", daemon.url, "--timeout", "10000"]
    cmd += list(args)
    e = token_env(daemon)
    e.pop("OPTIMD_ADMIN_TOKEN", None)
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=e)


def lines(text):
    return [l for l in text.splitlines() if l.strip()]


# ---- listings and session commands ------------------------------------

def test_plugins(d):
    r = optimctl(d, "plugins")
    check(r.returncode == 0, "plugins exit %d: %s" % (r.returncode, r.stderr))
    kinds = {}
    for line in lines(r.stdout):
        cols = line.split("\t")
        check(len(cols) == 4, "plugins line has %d columns: %r"
              % (len(cols), line))
        kinds[cols[0]] = cols[1]
    for pid, kind in [("sgd", "optimizer"), ("adam", "optimizer"),
                      ("adamw", "optimizer"), ("step", "scheduler"),
                      ("cosine", "scheduler")]:
        check(kinds.get(pid) == kind, "plugin %s: kind %r" % (pid,
                                                               kinds.get(pid)))
    ids = [l.split("\t")[0] for l in lines(r.stdout)]
    check(ids == sorted(ids), "plugins not sorted: %r" % ids)


def hparam_keys(d, plugin):
    r = optimctl(d, "hparams", plugin)
    check(r.returncode == 0, "hparams %s: %s" % (plugin, r.stderr))
    return [l.split("\t")[0] for l in lines(r.stdout)]


def test_hparams(d):
    keys = hparam_keys(d, "sgd")
    for k in ["lr", "momentum", "nesterov"]:
        check(k in keys, "sgd hparams lack %s: %r" % (k, keys))
    r = optimctl(d, "hparams", "no-such-plugin")
    check(r.returncode == 1 and "no-such-plugin" in r.stderr,
          "hparams of a missing plugin: %d %r" % (r.returncode, r.stderr))


def session_rows(d):
    r = optimctl(d, "sessions")
    check(r.returncode == 0, "sessions: %s" % r.stderr)
    return {l.split()[0]: l.split() for l in lines(r.stdout)}


def test_sessions(d):
    check(session_rows(d) == {}, "sessions listed before any was opened")
    r = optimctl(d, "open", "alpha", "--optimizer", "sgd", "--set", "lr=0.1")
    check(r.returncode == 0, "open alpha: %s" % r.stderr)
    tok_a = r.stdout.strip()
    check(len(tok_a) == 32, "token %r" % tok_a)
    r = optimctl(d, "open", "beta", "--optimizer", "adam", "--set", "lr=0.01",
                 "--scheduler", "cosine", "--sched-set", "T_max=10")
    check(r.returncode == 0, "open beta: %s" % r.stderr)
    tok_b = r.stdout.strip()

    rows = session_rows(d)
    check(sorted(rows) == ["alpha", "beta"], "sessions: %r" % rows)
    check(rows.get("alpha") == ["alpha", "sgd", "-", "0", "0"],
          "alpha row %r" % rows.get("alpha"))
    check(rows.get("beta") == ["beta", "adam", "cosine", "0", "0"],
          "beta row %r" % rows.get("beta"))

    r = optimctl(d, "info", "beta", "--token", tok_b)
    info = dict(l.split(None, 1) for l in lines(r.stdout))
    check(r.returncode == 0 and info.get("steps") == "0"
          and info.get("lr") == "0.01" and info.get("optimizer") == "adam"
          and info.get("scheduler") == "cosine"
          and info.get("durability") == "interval",
          "info beta: %r %s" % (info, r.stderr))
    # open --durability, with the token kept in a file info then reads.
    tf = os.path.join(d.dir, "gamma.token")
    r = optimctl(d, "open", "gamma", "--optimizer", "sgd", "--set", "lr=0.1",
                 "--durability", "always", "--token-file", tf)
    check(r.returncode == 0 and os.path.exists(tf)
          and (os.stat(tf).st_mode & 0o777) == 0o600,
          "open --token-file: %d %r" % (r.returncode, r.stderr))
    r = optimctl(d, "info", "gamma", "--token-file", tf)
    info = dict(l.split(None, 1) for l in lines(r.stdout))
    check(r.returncode == 0 and info.get("durability") == "always"
          and info.get("scheduler") == "-", "info gamma: %r %s"
          % (info, r.stderr))
    r = optimctl(d, "close", "gamma", "--token-file", tf)
    check(r.returncode == 0 and not os.path.exists(tf),
          "close gamma: %d %r" % (r.returncode, r.stderr))
    r = optimctl(d, "info", "beta", "--token", tok_a)
    check(r.returncode == 1 and r.stderr.startswith("optimctl: BAD_TOKEN"),
          "info with the wrong token: %d %r" % (r.returncode, r.stderr))

    for name, tok in [("alpha", tok_a), ("beta", tok_b)]:
        r = optimctl(d, "close", name, "--token", tok)
        check(r.returncode == 0, "close %s: %s" % (name, r.stderr))
    check(session_rows(d) == {}, "sessions left after close")
    r = optimctl(d, "close", "alpha", "--token", tok_a)
    check(r.returncode == 1 and "UNKNOWN_SESSION" in r.stderr,
          "close twice: %d %r" % (r.returncode, r.stderr))


def test_hello(d):
    r = optimctl(d, "hello")
    info = dict(l.split(None, 1) for l in lines(r.stdout))
    check(r.returncode == 0 and info.get("server") == "optimd"
          and info.get("protocol") == "1", "hello: %r" % info)


# ---- usage and daemon errors -------------------------------------------

def test_errors(d):
    usage_cases = [
        ("missing --steps", ["rosenbrock", "--optimizer", "sgd"], "--steps"),
        ("bad --set", ["rosenbrock", "--optimizer", "sgd", "--steps", "5",
                       "--set", "lr"], "--set"),
        ("bad --set value", ["rosenbrock", "--optimizer", "sgd", "--steps",
                             "5", "--set", "lr=fast"], "--set"),
        ("missing --optimizer", ["rosenbrock", "--steps", "5"],
         "--optimizer"),
        ("--sched-set alone", ["rosenbrock", "--optimizer", "sgd", "--steps",
                               "5", "--sched-set", "T_max=3"], "--scheduler"),
        ("bad --steps", ["rosenbrock", "--optimizer", "sgd", "--steps", "-1"],
         "--steps"),
        ("bad --start", ["rosenbrock", "--optimizer", "sgd", "--steps", "1",
                         "--start", "1"], "--start"),
        ("unknown command", ["frobnicate"], "frobnicate"),
        ("no command", [], "no command"),
        ("stray argument", ["plugins", "extra"], "no arguments"),
        ("info without token", ["info", "x"], "--token"),
        ("bad --timeout", ["--timeout", "soon", "plugins"], "--timeout"),
        ("bad --retries", ["--retries", "-1", "plugins"], "--retries"),
        ("bad --retry-backoff", ["--retry-backoff", "x", "plugins"],
         "--retry-backoff"),
        ("bad --durability", ["rosenbrock", "--optimizer", "sgd", "--steps",
                              "1", "--durability", "sometimes"],
         "--durability"),
        ("bad session name", ["rosenbrock", "--optimizer", "sgd", "--steps",
                              "1", "--session", "../x"], "--session"),
        ("--token-file alone", ["rosenbrock", "--optimizer", "sgd",
                                "--steps", "1", "--token-file", "t"],
         "--token-file"),
        ("info without a token file", ["info", "nobody"], "no token file"),
    ]
    for what, args, needle in usage_cases:
        r = optimctl(d, *args)
        check(r.returncode == 2, "%s: exit %d" % (what, r.returncode))
        check(needle in r.stderr, "%s: stderr %r lacks %r"
              % (what, r.stderr, needle))
        check(r.stdout == "", "%s: wrote to stdout" % what)

    r = optimctl(d, "--help")
    check(r.returncode == 0 and "rosenbrock" in r.stdout, "--help")
    r = optimctl(d, "rosenbrock", "--help")
    check(r.returncode == 0 and "--csv" in r.stdout, "rosenbrock --help")

    r = optimctl(d, "rosenbrock", "--optimizer", "no-such", "--steps", "3")
    check(r.returncode == 1 and
          r.stderr.startswith("optimctl: UNKNOWN_PLUGIN"),
          "unknown optimizer: %d %r" % (r.returncode, r.stderr))
    r = optimctl(d, "rosenbrock", "--optimizer", "sgd", "--set", "lr=-1",
                 "--steps", "3")
    check(r.returncode == 1 and "BAD_HPARAM" in r.stderr,
          "negative lr: %d %r" % (r.returncode, r.stderr))

    # A run that diverges fails mid-way; its unnamed session must still be
    # closed.
    unnamed = lambda: [n for n in session_rows(d) if n.startswith("rosenbrock-")]
    r = optimctl(d, "rosenbrock", "--optimizer", "sgd", "--set", "lr=0.1",
                 "--steps", "50")
    check(r.returncode == 1 and "NONFINITE" in r.stderr,
          "diverging run: %d %r" % (r.returncode, r.stderr))
    check(unnamed() == [], "failed run left its session: %r" % unnamed())
    # A named one stays, with its token file, for the next run to resume.
    r = optimctl(d, "rosenbrock", "--optimizer", "sgd", "--set", "lr=0.1",
                 "--steps", "50", "--session", "diverge")
    check(r.returncode == 1 and "NONFINITE" in r.stderr
          and "run the same command again" in r.stderr,
          "diverging named run: %d %r" % (r.returncode, r.stderr))
    check("diverge" in session_rows(d), "failed named run closed its session")
    r = optimctl(d, "close", "diverge")
    check(r.returncode == 0, "close diverge by its token file: %r" % r.stderr)
    check(not os.path.exists(os.path.join(d.dir, "tokens", "diverge")),
          "close left the token file")

    # Ctrl-C mid-run: the session is closed before optimctl exits.
    p = subprocess.Popen([OPTIMCTL, "--server", d.url, "rosenbrock",
                          "--optimizer", "sgd", "--set", "lr=0.0001",
                          "--steps", "100000000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=token_env(d))
    first = p.stdout.readline()
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    check(first.startswith("step 0/"), "first progress line %r" % first)
    check(p.returncode == 128 + signal.SIGINT and "interrupted" in err,
          "interrupted run: %d %r" % (p.returncode, err))
    check(unnamed() == [], "interrupted run left its session: %r"
          % unnamed())

    # Nobody listens: the request is tried 1 + --retries times, each retry
    # announced, then optimctl gives up naming the address.
    t0 = time.monotonic()
    r = subprocess.run([OPTIMCTL, "--server", "tcp://127.0.0.1:1",
                        "--timeout", "300", "--retries", "2",
                        "--retry-backoff", "50", "plugins"],
                       capture_output=True, text=True, timeout=30)
    took = time.monotonic() - t0
    check(r.returncode == 1 and "tcp://127.0.0.1:1" in r.stderr
          and "gave up after 2 retries" in r.stderr
          and r.stderr.count("retry ") == 2,
          "unreachable daemon: %d %r" % (r.returncode, r.stderr))
    check(0.9 < took < 5, "3 attempts of 300 ms took %.1f s" % took)
    r = subprocess.run([OPTIMCTL, "--server", "tcp://127.0.0.1:1",
                        "--timeout", "300", "--retries", "0", "plugins"],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 1 and "retry" not in r.stderr,
          "unreachable daemon, no retries: %d %r" % (r.returncode, r.stderr))


# ---- rosenbrock parity with torch ---------------------------------------

def f_of(x, y):
    a = 1.0 - x
    b = y - x * x
    return a * a + 100.0 * b * b


def torch_rosenbrock(steps, make_opt, make_sched=None, start=(-1.5, 2.0)):
    """The optimctl procedure in torch. Returns (final "x y", csv lines)."""
    p = torch.nn.Parameter(torch.tensor(list(start), dtype=torch.float32))
    opt = make_opt([p])
    sched = make_sched(opt) if make_sched else None

    def row(k):
        x, y = float(p.data[0]), float(p.data[1])
        return "%d,%.9g,%.9g,%.9g,%.9g" % (k, x, y, f_of(x, y),
                                           opt.param_groups[0]["lr"])

    rows = ["step,x,y,f,lr", row(0)]
    for k in range(1, steps + 1):
        x, y = float(p.data[0]), float(p.data[1])
        gx = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x)
        gy = 200.0 * (y - x * x)
        p.grad = torch.tensor([gx, gy], dtype=torch.float32)
        opt.step()
        if sched:
            sched.step()
        rows.append(row(k))
    final = "%.9g %.9g" % (float(p.data[0]), float(p.data[1]))
    return final, rows


def compare_run(d, what, args, steps, make_opt, make_sched=None):
    csv = os.path.join(d.dir, what + ".csv")
    r = optimctl(d, "rosenbrock", *args, "--steps", str(steps), "--csv", csv)
    check(r.returncode == 0, "%s: exit %d: %s" % (what, r.returncode,
                                                  r.stderr))
    if r.returncode != 0:
        return
    out = lines(r.stdout)
    check(len(out) >= 11, "%s: only %d progress lines" % (what, len(out)))
    want_final, want_rows = torch_rosenbrock(steps, make_opt, make_sched)
    check(out[-1] == want_final, "%s: final %r, torch %r"
          % (what, out[-1], want_final))
    with open(csv) as f:
        got_rows = f.read().splitlines()
    check(len(got_rows) == len(want_rows), "%s: %d CSV lines, torch %d"
          % (what, len(got_rows), len(want_rows)))
    diffs = [(i, g, w) for i, (g, w) in enumerate(zip(got_rows, want_rows))
             if g != w]
    for i, g, w in diffs[:5]:
        check(False, "%s: CSV line %d: %r, torch %r" % (what, i, g, w))
    if not diffs and out[-1] == want_final:
        print("%s: %d steps match torch, final %s" % (what, steps, out[-1]))


def test_rosenbrock(d):
    compare_run(d, "sgd-momentum",
                ["--optimizer", "sgd", "--set", "lr=0.001",
                 "--set", "momentum=0.9"], 200,
                lambda ps: torch.optim.SGD(ps, lr=0.001, momentum=0.9))
    compare_run(d, "adam-cosine",
                ["--optimizer", "adam", "--set", "lr=0.05",
                 "--scheduler", "cosine", "--sched-set", "T_max=100"], 200,
                lambda ps: torch.optim.Adam(ps, lr=0.05),
                lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
                    o, T_max=100))
    step_size = "step_size"
    compare_run(d, "adamw-step",
                ["--optimizer", "adamw", "--set", "lr=0.02",
                 "--set", "weight_decay=0.05", "--scheduler", "step",
                 "--sched-set", step_size + "=30", "--sched-set", "gamma=0.5"],
                150,
                lambda ps: torch.optim.AdamW(ps, lr=0.02, weight_decay=0.05),
                lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=30,
                                                          gamma=0.5))
    # A rosenbrock run leaves no session behind.
    check(session_rows(d) == {}, "rosenbrock runs left sessions open")


# ---- schedule, export, import -------------------------------------------

def torch_lrs(make, base_lr, steps):
    """The lr after construction and after each of `steps` steps, as torch
    1.13.1 computes it (optimizer.step() then scheduler.step())."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make(opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return ["%.9g" % v for v in out]


def test_schedule(d):
    S = torch.optim.lr_scheduler
    cases = [
        (["step", "--sched-set", "step_size=3", "--sched-set", "gamma=0.5"], 0.1,
         lambda o: S.StepLR(o, step_size=3, gamma=0.5)),
        (["multistep", "--sched-set", "milestone0=2", "--sched-set", "milestone1=5"], 0.1,
         lambda o: S.MultiStepLR(o, milestones=[2, 5])),
        (["exponential", "--sched-set", "gamma=0.9"], 0.05,
         lambda o: S.ExponentialLR(o, gamma=0.9)),
        (["cosine", "--sched-set", "T_max=7"], 1.0,
         lambda o: S.CosineAnnealingLR(o, T_max=7)),
        (["linear"], 0.1, lambda o: S.LinearLR(o)),
        (["constant"], 0.1, lambda o: S.ConstantLR(o)),
        (["polynomial", "--sched-set", "total_iters=4", "--sched-set", "power=2"], 0.1,
         lambda o: S.PolynomialLR(o, total_iters=4, power=2.0)),
        (["cosine_warm_restarts", "--sched-set", "T_0=3", "--sched-set", "T_mult=2"], 0.1,
         lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    ]
    steps = 12
    for args, base, make in cases:
        r = optimctl(d, "schedule", *args, "--base-lr", repr(base), "--steps", str(steps))
        want = torch_lrs(make, base, steps)
        check(r.returncode == 0, "schedule %s: rc %d %s" % (args[0], r.returncode, r.stderr))
        check(lines(r.stdout) == want, "schedule %s: %s != torch %s"
              % (args[0], lines(r.stdout), want))
    # The temporary sessions are gone; errors are reported.
    check(not any(n.startswith("optimctl-schedule") for n in session_rows(d)),
          "schedule left a session open")
    r = optimctl(d, "schedule", "nope", "--steps", "2")
    check(r.returncode == 1 and "UNKNOWN_PLUGIN" in r.stderr, "unknown scheduler: %s" % r.stderr)
    r = optimctl(d, "schedule", "step", "--steps", "2")
    check(r.returncode == 1 and "step_size" in r.stderr, "missing required: %s" % r.stderr)
    r = optimctl(d, "schedule", "step")
    check(r.returncode == 2 and "--steps" in r.stderr, "no --steps: %s" % r.stderr)


def test_export_import(d):
    r = optimctl(d, "rosenbrock", "--optimizer", "adam", "--set", "lr=0.01", "--steps", "7",
                 "--session", "exported")
    check(r.returncode == 0, "rosenbrock --session: %s" % r.stderr)
    path = os.path.join(d.dir, "exported.safetensors")
    r = optimctl(d, "export", "exported", path)
    check(r.returncode == 0, "export: %s" % r.stderr)
    with open(path, "rb") as f:
        blob = f.read()
    import json
    import struct
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    check("param/xy" in header and "state/xy/exp_avg" in header,
          "exported file is not the session's safetensors: %s" % sorted(header))
    r = optimctl(d, "import", path, "--session", "imported", "--durability", "none")
    token = r.stdout.strip()
    check(r.returncode == 0 and len(token) == 32, "import: %s %s" % (r.stdout, r.stderr))
    a = optimctl(d, "info", "exported")
    b = optimctl(d, "info", "imported", "--token", token)
    strip = lambda out: [l for l in lines(out) if not l.startswith(("session", "durability"))]
    check(b.returncode == 0 and strip(a.stdout) == strip(b.stdout),
          "imported info differs:\n%s\n%s" % (a.stdout, b.stdout))
    check("durability none" in b.stdout, "import --durability: %s" % b.stdout)
    r = optimctl(d, "import", path)
    check(r.returncode == 1 and "SESSION_EXISTS" in r.stderr, "import under a taken name: %s" % r.stderr)
    junk = os.path.join(d.dir, "junk")
    with open(junk, "wb") as f:
        f.write(b"not a snapshot" * 10)
    r = optimctl(d, "import", junk, "--session", "junk")
    check(r.returncode == 1 and "BAD_REQUEST" in r.stderr, "import of junk: %s" % r.stderr)
    r = optimctl(d, "export", "exported")
    check(r.returncode == 2, "export without FILE: %s" % r.stderr)
    for name in ("exported", "imported"):
        args = ["close", name] + (["--token", token] if name == "imported" else [])
        check(optimctl(d, *args).returncode == 0, "close " + name)


def test_observe(d):
    # plateau with patience 0 and factor 0.5: a metric no better than the
    # best so far halves the lr (torch's ReduceLROnPlateau).
    r = optimctl(d, "open", "plat", "--optimizer", "sgd", "--set", "lr=1.0",
                 "--scheduler", "plateau", "--sched-set", "patience=0",
                 "--sched-set", "factor=0.5")
    check(r.returncode == 0, "open plat: %s" % r.stderr)
    tok = r.stdout.strip()
    r = optimctl(d, "observe", "plat", "1.0", "--token", tok)
    check(r.returncode == 0 and lines(r.stdout) == ["lr 1"],
          "observe 1.0: %r %s" % (r.stdout, r.stderr))
    r = optimctl(d, "observe", "plat", "--token", tok, "2.5")
    check(r.returncode == 0 and lines(r.stdout) == ["lr 0.5"],
          "observe 2.5: %r %s" % (r.stdout, r.stderr))
    r = optimctl(d, "observe", "plat", "1.0", "--group", "nope", "--token", tok)
    check(r.returncode == 1 and "BAD_REQUEST" in r.stderr,
          "observe on an unknown group: %d %s" % (r.returncode, r.stderr))
    r = optimctl(d, "observe", "plat", "--token", tok)
    check(r.returncode == 2, "observe without a metric: %d" % r.returncode)
    r = optimctl(d, "info", "plat", "--token", tok)
    groups = [l.split() for l in lines(r.stdout) if l.startswith("group ")]
    check(r.returncode == 0 and groups == [
              ["group", "default", "lr", "0.5", "base_lr", "1", "params", "0",
               "scheduler", "plateau"]],
          "info groups: %r %s" % (groups, r.stderr))
    r = optimctl(d, "close", "plat", "--token", tok)
    check(r.returncode == 0, "close plat: %s" % r.stderr)


def test_workers(d):
    r = optimctl(d, "open", "wk", "--optimizer", "sgd", "--set", "lr=0.1",
                 "--workers", "sync", "--workers-count", "2",
                 "--workers-reduce", "sum", "--workers-timeout", "5000")
    check(r.returncode == 0, "open wk: %s" % r.stderr)
    tok = r.stdout.strip()
    r = optimctl(d, "join", "wk", "alpha", "--token", tok)
    check(r.returncode == 0 and lines(r.stdout) == ["rank 0"],
          "join alpha: %r %s" % (r.stdout, r.stderr))
    r = optimctl(d, "join", "wk", "--token", tok, "beta")
    check(r.returncode == 0 and lines(r.stdout) == ["rank 1"],
          "join beta: %r %s" % (r.stdout, r.stderr))
    r = optimctl(d, "info", "wk", "--token", tok)
    w = [l for l in lines(r.stdout) if l.startswith("worker")]
    check(r.returncode == 0 and w == [
              "workers sync count=2 reduce=sum on_timeout=fail "
              "timeout_ms=5000 round_pushes=0",
              "worker alpha rank 0 pushes 0 staleness 0",
              "worker beta rank 1 pushes 0 staleness 0"],
          "info workers: %r %s" % (w, r.stderr))
    r = optimctl(d, "leave", "wk", "alpha", "--token", tok)
    check(r.returncode == 0, "leave alpha: %s" % r.stderr)
    r = optimctl(d, "leave", "wk", "alpha", "--token", tok)
    check(r.returncode == 1 and "UNKNOWN_WORKER" in r.stderr,
          "leave alpha again: %d %s" % (r.returncode, r.stderr))
    r = optimctl(d, "join", "wk", "--token", tok)
    check(r.returncode == 2, "join without a worker: %d" % r.returncode)
    r = optimctl(d, "open", "wk2", "--optimizer", "sgd", "--workers", "async",
                 "--workers-count", "2")
    check(r.returncode == 2 and "--workers-count" in r.stderr,
          "count with async: %d %s" % (r.returncode, r.stderr))
    r = optimctl(d, "open", "wk2", "--optimizer", "sgd", "--set", "lr=0.1")
    check(r.returncode == 0, "open wk2: %s" % r.stderr)
    tok2 = r.stdout.strip()
    r = optimctl(d, "join", "wk2", "alpha", "--token", tok2)
    check(r.returncode == 1 and "BAD_REQUEST" in r.stderr,
          "join without workers: %d %s" % (r.returncode, r.stderr))
    r = optimctl(d, "info", "wk2", "--token", tok2)
    check(r.returncode == 0 and not any(l.startswith("worker")
                                        for l in lines(r.stdout)),
          "info of a plain session: %r" % r.stdout)
    for name, t in (("wk", tok), ("wk2", tok2)):
        optimctl(d, "close", name, "--token", t)


# ---- switch, reload, load ------------------------------------------------

def torch_switched(sgd_steps, steps):
    """SGD(lr=0.001, momentum=0.9) for sgd_steps, then RMSprop(momentum=0.5)
    with SGD's momentum buffer, as protocol.md's `switch` describes, up to
    `steps` in all. Returns the final "x y"."""
    p = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float32))

    def grad():
        x, y = float(p.data[0]), float(p.data[1])
        gx = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x)
        gy = 200.0 * (y - x * x)
        return torch.tensor([gx, gy], dtype=torch.float32)

    sgd = torch.optim.SGD([p], lr=0.001, momentum=0.9)
    for _ in range(sgd_steps):
        p.grad = grad()
        sgd.step()
    buf = sgd.state[p]["momentum_buffer"].clone()
    rms = torch.optim.RMSprop([p], lr=0.001, momentum=0.5)
    # A zero gradient makes torch create the state without moving p
    # (square_avg and the buffer stay 0); then the buffer is carried.
    p.grad = torch.zeros(2, dtype=torch.float32)
    rms.step()
    rms.state[p]["momentum_buffer"].copy_(buf)
    for _ in range(steps - sgd_steps):
        p.grad = grad()
        rms.step()
    return "%.9g %.9g" % (float(p.data[0]), float(p.data[1]))


def test_switch(d):
    r = optimctl(d, "rosenbrock", "--optimizer", "sgd", "--set", "lr=0.001",
                 "--set", "momentum=0.9", "--steps", "3", "--session", "swr")
    check(r.returncode == 0, "rosenbrock on sgd: %s" % r.stderr)
    r = optimctl(d, "plugins")
    rms_version = [l.split("\t")[2] for l in lines(r.stdout)
                   if l.startswith("rmsprop\t")]
    check(len(rms_version) == 1, "rmsprop not listed: %r" % r.stdout)
    r = optimctl(d, "switch", "swr", "--optimizer", "rmsprop",
                 "--set", "momentum=0.5")
    check(r.returncode == 0 and lines(r.stdout) == [
              "optimizer rmsprop %s" % (rms_version or ["?"])[0],
              "carried momentum_buffer"],
          "switch: %d %r %s" % (r.returncode, r.stdout, r.stderr))
    r = optimctl(d, "info", "swr")
    info = dict(l.split(" ", 1) for l in lines(r.stdout))
    check(info.get("optimizer") == "rmsprop" and info.get("steps") == "3",
          "info after the switch: %r" % info)
    # The session goes on from step 3 with the carried buffer; torch does
    # the same by hand.
    r = optimctl(d, "rosenbrock", "--optimizer", "rmsprop", "--steps", "20",
                 "--session", "swr")
    want = torch_switched(3, 20)
    out = lines(r.stdout)
    check(r.returncode == 0 and out and out[-1] == want,
          "rosenbrock after the switch: %r, torch %r: %s"
          % (out[-1:], want, r.stderr))
    if out and out[-1] == want:
        print("switch sgd -> rmsprop: 20 steps match torch, final %s" % want)
    r = optimctl(d, "info", "swr")
    check("steps 20" in lines(r.stdout), "steps after resuming: %r" % r.stdout)
    # Refusals: exit 1 with the daemon's code; usage errors exit 2.
    r = optimctl(d, "switch", "swr", "--optimizer", "nope")
    check(r.returncode == 1 and "UNKNOWN_PLUGIN" in r.stderr,
          "switch to an unknown plugin: %d %s" % (r.returncode, r.stderr))
    r = optimctl(d, "switch", "swr", "--optimizer", "sgd",
                 "--set", "nesterov=true", "--set", "momentum=0")
    check(r.returncode == 1 and "BAD_HPARAM" in r.stderr,
          "switch with a refused hparam: %d %s" % (r.returncode, r.stderr))
    r = optimctl(d, "switch", "swr", "--optimizer", "sgd", "--token",
                 "0" * 32)
    check(r.returncode == 1 and "BAD_TOKEN" in r.stderr,
          "switch with a wrong token: %d %s" % (r.returncode, r.stderr))
    for bad in (["swr"], ["--optimizer", "sgd"],
                ["swr", "--optimizer", "sgd", "--scheduler", "step"],
                ["swr", "--optimizer", "sgd", "--set", "lr"]):
        r = optimctl(d, "switch", *bad)
        check(r.returncode == 2, "switch %r: exit %d" % (bad, r.returncode))
    r = optimctl(d, "info", "swr")
    check("optimizer rmsprop" in lines(r.stdout),
          "a refused switch changed the session: %r" % r.stdout)
    r = optimctl(d, "close", "swr")
    check(r.returncode == 0, "close swr: %s" % r.stderr)


def test_reload_and_load():
    """A daemon of its own: admin token, validator, a plugin directory
    holding the hot-swap toy (tests/hotswap)."""
    toys = os.environ.get("OPTIMD_TOYS")
    validate = os.environ.get("OPTIMD_VALIDATE")
    check(toys and validate, "OPTIMD_TOYS and OPTIMD_VALIDATE are not set")
    if not (toys and validate):
        return
    admin = "optimctl-admin-secret"
    plugin_dir = tempfile.mkdtemp(prefix="optimd-optimctl-toys-")

    def toy(variant):
        return os.path.join(toys, variant, "toy.so")

    def put(variant):
        tmp = os.path.join(plugin_dir, ".toy.so.tmp")
        shutil.copyfile(toy(variant), tmp)
        os.replace(tmp, os.path.join(plugin_dir, "toy.so"))

    put("v1")
    a = Daemon("--plugin-dir", plugin_dir, "--validator", validate,
               "--admin-token", admin, "--watch-plugins", "off")
    in_dir = os.path.join(plugin_dir, "toy.so")
    try:
        r = optimctl(a, "--admin-token", admin, "load", toy("v2"))
        check(r.returncode == 0 and lines(r.stdout) ==
              ["loaded toy 2.0.0 %s" % toy("v2")],
              "load v2: %d %r %s" % (r.returncode, r.stdout, r.stderr))
        r = optimctl(a, "plugins")
        check(any(l.split("\t")[:3] == ["toy", "optimizer", "2.0.0"]
                  for l in lines(r.stdout)), "toy 2.0.0 not listed after load")
        # The token from the environment; a broken file is one "refused"
        # line and exit 1.
        env = {"OPTIMD_ADMIN_TOKEN": admin}
        r = optimctl(a, "load", toy("wrong_abi"), env=env)
        out = lines(r.stdout)
        check(r.returncode == 1 and len(out) == 1 and
              out[0].startswith("refused %s: " % toy("wrong_abi")) and
              "ABI" in out[0],
              "load wrong_abi: %d %r %s" % (r.returncode, r.stdout, r.stderr))
        r = optimctl(a, "reload", env=env)
        check(r.returncode == 0 and lines(r.stdout) == [],
              "reload with nothing changed: %d %r %s"
              % (r.returncode, r.stdout, r.stderr))
        put("v1")
        r = optimctl(a, "reload", env=env)
        check(r.returncode == 0 and lines(r.stdout) ==
              ["loaded toy 1.0.0 %s" % in_dir],
              "reload of v1: %d %r %s" % (r.returncode, r.stdout, r.stderr))
        put("no_symbol")
        r = optimctl(a, "reload", env=env)
        out = lines(r.stdout)
        check(r.returncode == 1 and len(out) == 1 and
              out[0].startswith("refused %s: " % in_dir) and
              "optimd_plugin" in out[0],
              "reload of no_symbol: %d %r %s"
              % (r.returncode, r.stdout, r.stderr))
        r = optimctl(a, "plugins")
        check(any(l.split("\t")[:3] == ["toy", "optimizer", "1.0.0"]
                  for l in lines(r.stdout)), "toy 1.0.0 did not stay")
        # --admin-token wins over the environment.
        r = optimctl(a, "--admin-token", "wrong", "reload", env=env)
        check(r.returncode == 1 and "BAD_TOKEN" in r.stderr and
              not r.stdout.strip(),
              "reload with a wrong token: %d %r %s"
              % (r.returncode, r.stdout, r.stderr))
        r = optimctl(a, "load", toy("v2"), env={"OPTIMD_ADMIN_TOKEN": "x"})
        check(r.returncode == 1 and "BAD_TOKEN" in r.stderr,
              "load with a wrong token: %d %s" % (r.returncode, r.stderr))
        for args in (["reload"], ["load", toy("v2")], ["load"],
                     ["--admin-token", admin, "reload", "extra"],
                     ["--admin-token", admin, "load", "a", "b"],
                     ["drop", "x"], ["shutdown"],
                     ["--admin-token", admin, "drop"],
                     ["--admin-token", admin, "shutdown", "extra"]):
            r = optimctl(a, *args)
            check(r.returncode == 2 and not r.stdout.strip(),
                  "%r: exit %d %r" % (args, r.returncode, r.stdout))
        # drop: a session closed without its token; the test keeps the
        # token only to ask info about the session afterwards.
        r = optimctl(a, "open", "lost", "--optimizer", "sgd", "--set",
                     "lr=0.1")
        check(r.returncode == 0, "open lost: %s" % r.stderr)
        tok = r.stdout.strip()
        r = optimctl(a, "drop", "lost", env={"OPTIMD_ADMIN_TOKEN": "x"})
        check(r.returncode == 1 and "BAD_TOKEN" in r.stderr,
              "drop with a wrong token: %d %s" % (r.returncode, r.stderr))
        r = optimctl(a, "info", "lost", "--token", tok)
        check(r.returncode == 0, "info after a refused drop: %s" % r.stderr)
        r = optimctl(a, "drop", "lost", env=env)
        check(r.returncode == 0, "drop: %d %s" % (r.returncode, r.stderr))
        r = optimctl(a, "info", "lost", "--token", tok)
        check(r.returncode == 1 and "UNKNOWN_SESSION" in r.stderr,
              "info after drop: %d %s" % (r.returncode, r.stderr))
        r = optimctl(a, "--admin-token", admin, "shutdown")
        check(r.returncode == 0, "shutdown: %d %s" % (r.returncode, r.stderr))
        try:
            a.proc.wait(10)
        except subprocess.TimeoutExpired:
            check(False, "the daemon still runs 10 s after shutdown")
    finally:
        status = a.stop()
        check(status == 0, "admin daemon exit status %r" % status)
        if not failures:
            shutil.rmtree(a.dir, ignore_errors=True)
        shutil.rmtree(plugin_dir, ignore_errors=True)


def main():
    torch.set_num_threads(1)
    d = Daemon()
    try:
        for test in [test_hello, test_plugins, test_hparams, test_sessions,
                     test_errors, test_rosenbrock, test_schedule, test_export_import,
                     test_observe, test_workers, test_switch]:
            try:
                test(d)
            except Exception as e:  # one broken test must not hide the rest
                check(False, "%s raised %r" % (test.__name__, e))
        try:
            test_reload_and_load()
        except Exception as e:
            check(False, "test_reload_and_load raised %r" % e)
    finally:
        status = d.stop()
    check(status == 0, "daemon exit status %r" % status)
    if failures:
        print("test_optimctl: %d check(s) failed; daemon log in %s"
              % (len(failures), d.dir), file=sys.stderr)
        return 1
    shutil.rmtree(d.dir, ignore_errors=True)
    print("test_optimctl: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
