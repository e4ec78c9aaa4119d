"""A full remote AdamW step through the Python client, over tcp, ipc and
shared memory (ipc, tensors in a segment the daemon maps: no tensor bytes
through the socket), against torch 1.13's local step on the same data and
against an NNG echo of the same bytes (the transport bound), in one run.
The "sliced" rows send the same step as a sliced step (docs/protocol.md,
``step``): parts of BENCH_PART_ELEMENTS elements (default: N/4, between
64Ki and 1M), BENCH_PARTS_IN_FLIGHT (default 2) of them in flight, so that
the daemon updates one part while the next is on the wire.
Prints median ms and ratios. Run by bench/remote.sh with the test
virtualenv's python.

usage: remote_step.py BUILD_DIR [N...]"""
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np
import pynng
import torch

import optimd

build = sys.argv[1]
sizes = [int(a) for a in sys.argv[2:]] or [1_000_000, 10_000_000]
RUNS = 11
IN_FLIGHT = int(os.environ.get("BENCH_PARTS_IN_FLIGHT", "2"))


def part_elements(n):
    """Elements per part of a sliced step of n elements."""
    if "BENCH_PART_ELEMENTS" in os.environ:
        return int(os.environ["BENCH_PART_ELEMENTS"])
    return max(1 << 16, min(1_000_000, n // 4))


def median_ms(fn, runs=RUNS):
    fn()   # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def wait_for(path, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        if os.path.exists(path) and open(path).read().strip():
            return open(path).read().strip()
        if proc.poll() is not None:
            sys.exit("bench: a server exited during start-up")
        time.sleep(0.02)
    sys.exit("bench: a server did not start")


tmp = tempfile.mkdtemp(prefix="optimd-bench-")
ipc = "ipc://" + os.path.join(tmp, "optimd.ipc")
ready = os.path.join(tmp, "ready")
daemon = subprocess.Popen([os.path.join(build, "server", "optimd"), "--listen", "tcp://127.0.0.1:0",
                           "--listen", ipc, "--state-dir", os.path.join(tmp, "state"),
                           "--max-message", str(1 << 31), "--ready-file", ready],
                          stderr=subprocess.DEVNULL)
tcp = wait_for(ready, daemon)
echo_ready = os.path.join(tmp, "echo")
echo = subprocess.Popen([os.path.join(build, "bench", "bench_nng_echo"), "tcp://127.0.0.1:0", echo_ready])
echo_url = "tcp://127.0.0.1:" + wait_for(echo_ready, echo)

print("%-10s %-22s %10s %8s %10s" % ("N", "what", "median_ms", "x_torch", "x_echo"))
try:
    for n in sizes:
        rng = np.random.default_rng(0)
        p0 = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 1e-3).astype(np.float32)

        torch.set_num_threads(1)
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        tp.grad = torch.from_numpy(g.copy())
        topt = torch.optim.AdamW([tp], lr=1e-3, weight_decay=1e-2, foreach=False)
        t_torch = median_ms(topt.step)

        # The bytes of a step request and of its reply, echoed.
        request = msgpack.packb({"v": 1, "op": "step", "session": "x" * 8, "token": "0" * 32,
                                 "grads": {"w": {"dtype": "f32", "shape": [n], "data": g.tobytes()}}})
        with pynng.Req0(dial=echo_url, recv_max_size=0) as s:
            t_echo = median_ms(lambda: (s.send(request), s.recv()))

        rows = [("torch AdamW.step", t_torch)]
        for label, url in (("tcp", tcp), ("ipc", ipc)):
            with optimd.Client(url, timeout=120) as c:
                name = "bench-%s-%d" % (label, n)
                sess = c.open(name, "adamw", {"lr": 1e-3, "weight_decay": 1e-2}, durability="none")
                c.register(sess, {"w": p0})
                rows.append(("optimd %s step" % label, median_ms(lambda: c.step(sess, {"w": g}))))
                rows.append(("optimd %s no return" % label,
                             median_ms(lambda: c.step(sess, {"w": g}, return_params=False))))
                # The same step in parts: a fresh seq each time (a repeated
                # one would be answered as a duplicate).
                seqs = itertools.count(1)
                rows.append(("optimd %s sliced" % label, median_ms(lambda: c.step(
                    sess, {"w": g}, seq=next(seqs), client="bench", part_elements=part_elements(n),
                    parts_in_flight=IN_FLIGHT))))
                c.close_session(sess)
        with optimd.Client(ipc, timeout=120) as c:
            sess = c.open("bench-shm-%d" % n, "adamw", {"lr": 1e-3, "weight_decay": 1e-2}, durability="none")
            c.register(sess, {"w": p0})
            with c.shared_memory(sess) as shm:
                # Filled once: a training loop's backward() would write them
                # there; the step itself is what is timed, as for torch.
                shm.grads["w"][:] = g
                rows.append(("optimd shm step", median_ms(shm.step)))
            c.close_session(sess)
        rows.append(("nng echo tcp (bound)", t_echo))
        parts = -(-n // part_elements(n))
        print("# N=%d: sliced = %d parts of %d elements, %d in flight"
              % (n, parts, part_elements(n), IN_FLIGHT))
        for what, ms in rows:
            print("%-10d %-22s %10.2f %7.2fx %9.2fx" % (n, what, ms, ms / t_torch, ms / t_echo))
finally:
    daemon.terminate()
    echo.terminate()
    daemon.wait()
    echo.wait()
