"""A full remote AdamW step through the Python client, over tcp, ipc and
shared memory (ipc, tensors in a segment the daemon maps: no tensor bytes
through the socket), against torch 1.13's local step on the same data and
against an NNG echo of the same bytes (the transport bound), in one run.
Prints median ms and ratios. Run by bench/remote.sh with the test
virtualenv's python.

usage: remote_step.py BUILD_DIR [N...]"""
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
        for what, ms in rows:
            print("%-10d %-22s %10.2f %7.2fx %9.2fx" % (n, what, ms, ms / t_torch, ms / t_echo))
finally:
    daemon.terminate()
    echo.terminate()
    daemon.wait()
    echo.wait()
