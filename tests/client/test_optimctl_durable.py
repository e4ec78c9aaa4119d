#!/usr/bin/python3
"""optimctl rosenbrock on named, durable sessions (issue 5's proof).

- kill -9 the daemon mid-run, restart it on the same state directory, run
  the same command again: the final "x y" equals an undisturbed run's,
  character for character (%.9g names an fp32 value exactly). For every
  durability: with "none" the daemon forgets steps, but the rerun resumes
  from whatever state it kept and so still ends at the same point.
- restart the daemon while optimctl is running: optimctl's retries ride
  through and it finishes on its own, at the same point.
- token files, resuming a finished run, and the refusals (another
  optimizer, a session without a token file, a token of another session).

Run by CTest with OPTIMD_BIN, OPTIMD_PLUGIN_DIR and OPTIMD_OPTIMCTL set.
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

OPTIMD = os.environ["OPTIMD_BIN"]
PLUGINS = os.environ["OPTIMD_PLUGIN_DIR"]
OPTIMCTL = os.environ["OPTIMD_OPTIMCTL"]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)
    return cond


class Daemon:
    """An optimd that can be killed and started again on the same state
    directory and address."""

    def __init__(self, root, name):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.state = os.path.join(self.dir, "state")
        self.url = None
        self.proc = None
        self.starts = 0
        self.start()

    def start(self):
        ready = os.path.join(self.dir, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        self.starts += 1
        log = open(os.path.join(self.dir, "optimd-%d.log" % self.starts), "w")
        # A restart listens where the first start did: the same command
        # line must reach it.
        listen = self.url or "tcp://127.0.0.1:0"
        self.proc = subprocess.Popen(
            [OPTIMD, "--listen", listen, "--plugin-dir", PLUGINS,
             "--state-dir", self.state, "--ready-file", ready],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if os.path.exists(ready):
                with open(ready) as f:
                    line = f.readline().strip()
                if line:
                    self.url = line
                    return
            if self.proc.poll() is not None:
                raise RuntimeError("optimd exited during start-up; logs in "
                                   + self.dir)
            time.sleep(0.01)
        self.proc.kill()
        raise RuntimeError("optimd not ready after 60 s; logs in " + self.dir)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


ROOT = tempfile.mkdtemp(prefix="optimd-optimctl-durable-")
TOKENS = os.path.join(ROOT, "tokens")
ENV = dict(os.environ, OPTIMD_TOKEN_DIR=TOKENS)
RUN = ["--optimizer", "adam", "--set", "lr=0.05", "--steps", "400"]


def optimctl(d, *args, env=ENV, cwd=None, globals_=("--timeout", "10000")):
    cmd = [OPTIMCTL, "--server", d.url, *globals_, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


def last_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def info(d, name, *extra):
    r = optimctl(d, "info", name, *extra)
    return r, dict(l.split(None, 1) for l in r.stdout.splitlines() if l)


def start_paused_run(d, cmd):
    """Starts optimctl, waits for its second progress line (step 40 of
    400), and stops it with SIGSTOP. 400 steps take a tenth of a second
    here, so the kill must not race the run's end: the run is paused while
    the daemon dies."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV)
    got = [p.stdout.readline(), p.stdout.readline()]
    p.send_signal(signal.SIGSTOP)
    check(got[0].startswith("step 0/400") and got[1].startswith("step 40/400"),
          "first progress lines %r" % got)
    return p


def reference(d):
    r = optimctl(d, "rosenbrock", "--session", "reference", "--durability",
                 "always", *RUN)
    check(r.returncode == 0, "reference run: %d %r" % (r.returncode, r.stderr))
    final = last_line(r.stdout)
    # An unnamed run (closed at the end) takes the same path.
    r = optimctl(d, "rosenbrock", *RUN)
    check(last_line(r.stdout) == final, "unnamed run ends at %r, named at %r"
          % (last_line(r.stdout), final))
    print("reference: %s" % final)
    return final


def test_crash_then_rerun(d, durability, want):
    name = "crash-" + durability
    cmd = [OPTIMCTL, "--server", d.url, "--timeout", "300", "--retries", "1",
           "rosenbrock", "--session", name, "--durability", durability, *RUN]
    p = start_paused_run(d, cmd)
    d.kill9()
    p.send_signal(signal.SIGCONT)
    out, err = p.communicate(timeout=60)
    check(p.returncode == 1 and "run the same command again" in err,
          "%s: the interrupted run: %d %r" % (name, p.returncode, err))
    check(not out.splitlines() or not out.splitlines()[-1].startswith("step 400"),
          "%s: the run finished before the kill" % name)

    d.start()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=ENV)
    check(r.returncode == 0, "%s: rerun: %d %r" % (name, r.returncode,
                                                   r.stderr))
    check(last_line(r.stdout) == want, "%s: rerun ends at %r, undisturbed "
          "run at %r" % (name, last_line(r.stdout), want))
    resumed_at = None
    for line in r.stderr.splitlines():
        if "resuming session %s at step " % name in line:
            resumed_at = int(line.split(" at step ")[1].split()[0])
    if durability in ("always", "interval"):
        # optimctl printed "step 40" after step 40's reply: the daemon had
        # it, and a process crash loses nothing acknowledged here.
        check(resumed_at is not None and 40 <= resumed_at < 400,
              "%s: resumed at %r: %r" % (name, resumed_at, r.stderr))
    r2, fields = info(d, name)
    check(r2.returncode == 0 and fields.get("steps") == "400"
          and fields.get("durability") == durability,
          "%s: info %r %r" % (name, fields, r2.stderr))
    print("%s: resumed at step %s, ends at %s" % (name, resumed_at,
                                                  last_line(r.stdout)))

    # Run again: nothing left to do, same point.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=ENV)
    check(r.returncode == 0 and last_line(r.stdout) == want
          and r.stdout.splitlines()[0].startswith("step 400/400"),
          "%s: run of a finished session: %d %r %r" % (name, r.returncode,
                                                      r.stdout, r.stderr))


def test_ride_through_restart(d, want):
    """The daemon dies and comes back while optimctl runs: its retries
    carry the run to the end with no help."""
    name = "ride"
    cmd = [OPTIMCTL, "--server", d.url, "--timeout", "1000", "--retries",
           "20", "--retry-backoff", "50", "rosenbrock", "--session", name,
           "--durability", "always", *RUN]
    p = start_paused_run(d, cmd)
    err_lines = []
    retried = threading.Event()

    def read_stderr():
        for line in p.stderr:
            err_lines.append(line)
            if "retry 1 of 20" in line:
                retried.set()

    reader = threading.Thread(target=read_stderr)
    reader.start()
    d.kill9()
    p.send_signal(signal.SIGCONT)
    # Restart only once optimctl has noticed and begun retrying, so that
    # what is tested is the retry, not NNG quietly redialling.
    check(retried.wait(30), "optimctl never reported a retry: %r" % err_lines)
    d.start()
    out = p.stdout.read()
    p.wait(60)
    reader.join(10)
    check(p.returncode == 0, "ride: exit %d %r" % (p.returncode, err_lines))
    check(last_line(out) == want, "ride: ends at %r, undisturbed run at %r"
          % (last_line(out), want))
    r, fields = info(d, name)
    check(fields.get("steps") == "400", "ride: info %r" % fields)
    print("ride: %d retry reports, ends at %s"
          % (sum("retry " in l for l in err_lines), last_line(out)))


def test_token_files(d, want):
    path = os.path.join(TOKENS, "reference")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    check(mode == 0o600, "token file mode %o" % mode)
    check(stat.S_IMODE(os.stat(TOKENS).st_mode) == 0o700,
          "token directory mode %o" % stat.S_IMODE(os.stat(TOKENS).st_mode))
    with open(path) as f:
        token = f.read().strip()
    check(len(token) == 32, "token file holds %r" % token)
    r, fields = info(d, "reference")
    check(r.returncode == 0 and fields.get("steps") == "400"
          and fields.get("optimizer") == "adam", "info by token file: %r %r"
          % (fields, r.stderr))
    r, fields = info(d, "reference", "--token", token)
    check(r.returncode == 0 and fields.get("steps") == "400",
          "info --token: %r" % r.stderr)

    # Without $OPTIMD_TOKEN_DIR: ./var/optimctl-tokens/NAME.
    cwd = os.path.join(ROOT, "cwd")
    os.makedirs(cwd)
    env = dict(os.environ)
    env.pop("OPTIMD_TOKEN_DIR", None)
    r = optimctl(d, "rosenbrock", "--session", "here", "--optimizer", "sgd",
                 "--set", "lr=0.001", "--steps", "3", env=env, cwd=cwd)
    here = os.path.join(cwd, "var", "optimctl-tokens", "here")
    check(r.returncode == 0 and os.path.exists(here),
          "default token file: %d %r" % (r.returncode, r.stderr))
    r = optimctl(d, "close", "here", env=env, cwd=cwd)
    check(r.returncode == 0 and not os.path.exists(here),
          "close by the default token file: %d %r" % (r.returncode, r.stderr))

    # --token-file names the file.
    own = os.path.join(ROOT, "own.token")
    r = optimctl(d, "rosenbrock", "--session", "own", "--token-file", own,
                 "--optimizer", "sgd", "--set", "lr=0.001", "--steps", "3")
    check(r.returncode == 0 and os.path.exists(own)
          and not os.path.exists(os.path.join(TOKENS, "own")),
          "--token-file: %d %r" % (r.returncode, r.stderr))
    r = optimctl(d, "rosenbrock", "--session", "own", "--token-file", own,
                 "--optimizer", "sgd", "--set", "lr=0.001", "--steps", "5")
    check(r.returncode == 0 and "resuming session own at step 3 of 5"
          in r.stderr, "resume by --token-file: %d %r" % (r.returncode,
                                                          r.stderr))


def test_refusals(d):
    # Another optimizer, or another durability, than the session's.
    r = optimctl(d, "rosenbrock", "--session", "reference", "--optimizer",
                 "sgd", "--set", "lr=0.1", "--steps", "500")
    check(r.returncode == 1 and "runs optimizer adam, not sgd" in r.stderr,
          "other optimizer: %d %r" % (r.returncode, r.stderr))
    r = optimctl(d, "rosenbrock", "--session", "reference", "--durability",
                 "none", *RUN)
    check(r.returncode == 1 and "durability always, not none" in r.stderr,
          "other durability: %d %r" % (r.returncode, r.stderr))
    # The session exists, but this token file does not: no way to resume.
    r = optimctl(d, "rosenbrock", "--session", "reference", "--token-file",
                 os.path.join(ROOT, "absent.token"), *RUN)
    check(r.returncode == 1 and "SESSION_EXISTS" in r.stderr
          and "no token for it" in r.stderr,
          "no token file: %d %r" % (r.returncode, r.stderr))
    # A token file for a session the daemon does not have: made anew.
    stale = os.path.join(TOKENS, "stale")
    with open(stale, "w") as f:
        f.write("0" * 32 + "\n")
    r = optimctl(d, "rosenbrock", "--session", "stale", "--optimizer", "sgd",
                 "--set", "lr=0.001", "--steps", "2")
    with open(stale) as f:
        new_token = f.read().strip()
    check(r.returncode == 0 and "opening it anew" in r.stderr
          and new_token != "0" * 32,
          "stale token file: %d %r" % (r.returncode, r.stderr))
    # A token file holding another session's token.
    with open(stale, "w") as f:
        f.write("f" * 32 + "\n")
    r = optimctl(d, "rosenbrock", "--session", "stale", "--optimizer", "sgd",
                 "--set", "lr=0.001", "--steps", "4")
    check(r.returncode == 1 and "another session's token" in r.stderr,
          "wrong token: %d %r" % (r.returncode, r.stderr))
    with open(stale, "w") as f:
        f.write("not a token\n")
    r = optimctl(d, "info", "stale")
    check(r.returncode == 1 and "does not hold a token" in r.stderr,
          "garbage token file: %d %r" % (r.returncode, r.stderr))


def main():
    t0 = time.monotonic()
    daemons = []
    try:
        a = Daemon(ROOT, "a")
        daemons.append(a)
        want = reference(a)
        for durability in ("always", "interval", "none"):
            b = Daemon(ROOT, "b-" + durability)
            daemons.append(b)
            test_crash_then_rerun(b, durability, want)
        c = Daemon(ROOT, "c")
        daemons.append(c)
        test_ride_through_restart(c, want)
        test_token_files(a, want)
        test_refusals(a)
    except Exception as e:  # report, and still stop every daemon
        check(False, "raised %r" % e)
    finally:
        for d in daemons:
            status = d.stop()
            check(status == 0, "daemon in %s exited %r" % (d.dir, status))
    print("test_optimctl_durable: %.1f s" % (time.monotonic() - t0))
    if failures:
        print("test_optimctl_durable: %d check(s) failed; state and logs in %s"
              % (len(failures), ROOT), file=sys.stderr)
        return 1
    shutil.rmtree(ROOT, ignore_errors=True)
    print("test_optimctl_durable: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
