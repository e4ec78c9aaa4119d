"""Aggregate gradient throughput of sessions with workers: 1, 2 and 4 worker
processes pushing to 1 and 2 daemons on loopback (optimd.Cluster places the
parameters), async and sync, each as a ratio to one worker on one server in
the same mode. Every push carries the whole model's gradients and gets the
updated parameters back. Run by bench/workers.sh with the test
virtualenv's python.

usage: workers.py BUILD_DIR [ELEMENTS] [PUSHES]  (PUSHES: per worker per row)"""
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import optimd

build = sys.argv[1]
ELEMENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
PUSHES = int(sys.argv[3]) if len(sys.argv) > 3 else 100
N_PARAMS = 16
SHAPES = {f"layer{i}.weight": (ELEMENTS // N_PARAMS,) for i in range(N_PARAMS)}


def start_daemon(tmp, i):
    ready = os.path.join(tmp, f"ready{i}")
    proc = subprocess.Popen([os.path.join(build, "server", "optimd"), "--listen", "tcp://127.0.0.1:0",
                             "--state-dir", os.path.join(tmp, f"state{i}"), "--plugin-dir",
                             os.path.join(build, "plugins"), "--ready-file", ready],
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(ready) and open(ready).read().strip():
            return proc, open(ready).read().strip()
        if proc.poll() is not None:
            sys.exit("bench: a server exited during start-up")
        time.sleep(0.02)
    sys.exit("bench: a server did not start")


def worker(urls, session, name, start, out):
    # Every server at once: a push takes as long as the slowest, not the sum.
    cluster = optimd.Cluster(urls, timeout=60, parallel=True)
    rng = np.random.default_rng(int(name[1:]))
    grads = {n: rng.standard_normal(shape).astype(np.float32) * 1e-3 for n, shape in SHAPES.items()}
    out.put("ready")
    start.wait()
    # A fixed count: sync workers must push the same number of rounds.
    for _ in range(PUSHES):
        cluster.step(session, grads, worker=name)
    out.put(time.time())
    cluster.close()


def run(urls, mode, n_workers):
    admin = optimd.Cluster(urls, timeout=60)
    name = f"bench-{mode}-{len(urls)}-{n_workers}"
    spec = optimd.Workers("sync", count=n_workers) if mode == "sync" else optimd.Workers("async")
    s = admin.open(name, "adamw", {"lr": 1e-3}, workers=spec, durability="none")
    admin.register(s, {n: np.zeros(shape, dtype=np.float32) for n, shape in SHAPES.items()})
    names = [f"w{i}" for i in range(n_workers)]
    for w in names:
        admin.join(s, w)
    ctx = mp.get_context("spawn")   # NNG is not fork-safe
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(urls, s, w, start, out)) for w in names]
    for p in procs:
        p.start()
    for _ in procs:
        if out.get(timeout=120) != "ready":
            sys.exit("bench: a worker did not start")
    t0 = time.time()
    start.set()
    elapsed = max(out.get(timeout=600) for _ in procs) - t0
    for p in procs:
        p.join(30)
    admin.close_session(s)
    admin.close()
    pushes = PUSHES * n_workers
    return pushes / elapsed, pushes * ELEMENTS * 4 / elapsed / 1e9


def main():
    tmp = tempfile.mkdtemp(prefix="optimd-bench-workers-")
    daemons = [start_daemon(tmp, i) for i in range(2)]
    urls = [url for _, url in daemons]
    print(f"aggregate gradient throughput, {ELEMENTS:,} fp32 elements per push in {N_PARAMS} tensors, "
          f"{PUSHES} pushes per worker per row, {os.cpu_count()} cores")
    print("%-6s %-8s %-8s %10s %10s %10s" % ("mode", "servers", "workers", "pushes/s", "grad_GB/s", "x_1w1s"))
    try:
        for mode in ("async", "sync"):
            base = None
            for n_servers in (1, 2):
                for n_workers in (1, 2, 4):
                    rate, gbps = run(urls[:n_servers], mode, n_workers)
                    base = base or gbps
                    print("%-6s %-8d %-8d %10.1f %10.3f %10.2f" % (mode, n_servers, n_workers, rate, gbps,
                                                                  gbps / base), flush=True)
    finally:
        for proc, _ in daemons:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
