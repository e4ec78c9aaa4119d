"""What each durability policy costs: median ms of a step (AdamW, return
false) for a small and a large parameter, with durability none, interval
and always, in one run against one daemon whose state directory is on the
disk the bench runs on (override with OPTIMD_BENCH_STATE_DIR).

usage: durability.py BUILD_DIR [N...]"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import optimd

build = sys.argv[1]
sizes = [int(a) for a in sys.argv[2:]] or [1_000, 1_000_000]
tmp = tempfile.mkdtemp(prefix="optimd-bench-", dir=os.environ.get("OPTIMD_BENCH_STATE_DIR"))
ready = os.path.join(tmp, "ready")
daemon = subprocess.Popen([os.path.join(build, "server", "optimd"), "--listen", "tcp://127.0.0.1:0",
                           "--state-dir", os.path.join(tmp, "state"), "--snapshot-interval", "0",
                           "--max-message", str(1 << 30), "--ready-file", ready],
                          stderr=subprocess.DEVNULL)
deadline = time.time() + 30
while not (os.path.exists(ready) and open(ready).read().strip()):
    if time.time() > deadline or daemon.poll() is not None:
        sys.exit("bench: optimd did not start")
    time.sleep(0.02)
url = open(ready).read().strip()

print("state directory: %s" % tmp)
print("%-10s %-10s %10s %10s %9s" % ("N", "policy", "median_ms", "steps/s", "x_none"))
try:
    with optimd.Client(url, timeout=120) as c:
        for n in sizes:
            g = {"w": np.full(n, 1e-3, np.float32)}
            runs = 200 if n <= 100_000 else 30
            base = None
            for policy in ("none", "interval", "always"):
                s = c.open("dur-%s-%d" % (policy, n), "adamw", {"lr": 1e-3}, durability=policy)
                c.register(s, {"w": np.zeros(n, np.float32)})
                c.step(s, g, return_params=False)
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    c.step(s, g, return_params=False)
                    times.append((time.perf_counter() - t0) * 1e3)
                ms = statistics.median(times)
                base = base or ms
                print("%-10d %-10s %10.3f %10.0f %8.2fx" % (n, policy, ms, 1e3 / ms, ms / base))
                c.close_session(s)
finally:
    daemon.terminate()
    daemon.wait()
