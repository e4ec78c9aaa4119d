"""Shared memory (shm_attach / shm_step / shm_detach) against the real
daemon over a real ipc:// socket: the same results as steps over the wire
(and as torch 1.13's AdamW), lying clients refused with the daemon serving
on and the session untouched, tcp refused, and the daemon's mapping gone
when the session closes, the segment is detached or replaced, or the client
goes away."""

from __future__ import annotations

import mmap
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any

import numpy as np

import optimd

from support import Daemon, DaemonTestCase

try:
    import torch
except ImportError:  # pragma: no cover - Debian's torch is there in CI
    torch = None

IPC_DIR = tempfile.mkdtemp(prefix="optimd-shm-")
IPC_URL = "ipc://" + os.path.join(IPC_DIR, "optimd.ipc")
HPARAMS = {"lr": 1e-2, "weight_decay": 1e-2}


def bits(a: np.ndarray) -> bytes:
    """The bytes of an array: equal bits, NaN or not."""
    return np.ascontiguousarray(a).tobytes()


def initial(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((3, 5)).astype(np.float32),
            "b": rng.standard_normal(7).astype(np.float64),
            "e": np.zeros((0, 4), np.float32)}


def grads(step: int, shapes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in shapes.items()}


def daemon_maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


class RawSegment:
    """A segment made by hand, as a client that lies would make it."""

    def __init__(self, size: int, mode: int = 0o600) -> None:
        self.name = "/optimd-test-" + secrets.token_hex(8)
        self.path = "/dev/shm" + self.name
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(self.fd, mode)
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)

    def array(self, offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self.map, offset=offset)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:
            pass
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SharedMemoryTest(DaemonTestCase):
    DAEMON_ARGS = ("--listen", IPC_URL)

    def setUp(self) -> None:
        self.ipc = optimd.Client(IPC_URL, timeout=60)
        self.addCleanup(self.ipc.close)

    def open(self, name: str, params: dict[str, np.ndarray] | None = None, **kwargs: Any) -> optimd.Session:
        session = self.ipc.open(name, "adamw", HPARAMS, **kwargs)
        self.addCleanup(self._close_quietly, session)
        self.ipc.register(session, initial() if params is None else params)
        return session

    def _close_quietly(self, session: optimd.Session) -> None:
        try:
            self.ipc.close_session(session)
        except optimd.UnknownSessionError:
            pass

    def segment(self, size: int, mode: int = 0o600) -> RawSegment:
        seg = RawSegment(size, mode)
        self.addCleanup(seg.close)
        return seg

    def snapshot(self, session: optimd.Session) -> tuple[int, dict[str, bytes], dict[str, dict[str, bytes]]]:
        """Steps, parameters and optimizer state, as bytes."""
        info = self.ipc.info(session)
        params = {k: bits(v) for k, v in self.ipc.pull(session).items()}
        state = {k: {s: bits(t) for s, t in slots.items()} for k, slots in self.ipc.state(session).items()}
        return info.steps, params, state

    def assertServing(self) -> None:
        self.assertEqual(self.ipc.hello().server, "optimd")
        with optimd.Client(self.daemon.url, timeout=30) as tcp:
            self.assertEqual(tcp.hello().server, "optimd")

    # -- results ------------------------------------------------------------

    def test_bit_identical_to_wire_steps(self) -> None:
        wire = self.open("wire")
        shared = self.open("shared")
        shapes = initial()
        with self.ipc.shared_memory(shared) as shm:
            for name, value in shapes.items():
                self.assertEqual(bits(shm.params[name]), bits(value), f"{name} before any step")
                self.assertFalse(shm.params[name].flags.writeable)
            for step in range(6):
                g = grads(step, shapes)
                # Every other step names one parameter only, as a torch
                # parameter whose .grad is None.
                names = None if step % 2 == 0 else ["w"]
                sent = g if names is None else {"w": g["w"]}
                expected = self.ipc.step(wire, sent)
                for name in sent:
                    shm.grads[name][...] = g[name]
                got = shm.step(names)
                self.assertIsInstance(got, optimd.SharedStepResult)
                self.assertEqual((got.steps, got.lr, got.next_lr, got.duplicate, got.detached),
                                 (expected.steps, expected.lr, expected.next_lr, False, False))
                self.assertEqual(got.params, {})
                for name in sent:
                    self.assertEqual(bits(shm.params[name]), bits(expected.params[name]),
                                     f"{name} after step {step + 1}")
        self.assertEqual(self.snapshot(shared)[1:], self.snapshot(wire)[1:], "parameters and state")

    def test_groups_schedule_and_clipping_match_wire_steps(self) -> None:
        kwargs: dict[str, Any] = {"scheduler": "cosine", "sched_hparams": {"T_max": 4},
                                  "groups": [optimd.Group("nodecay", {"weight_decay": 0.0})]}
        sessions = []
        for name in ("wire-g", "shared-g"):
            session = self.ipc.open(name, "adamw", HPARAMS, **kwargs)
            self.addCleanup(self._close_quietly, session)
            start = initial()
            self.ipc.register(session, {"w": start["w"]})
            self.ipc.register(session, {"b": start["b"]}, group="nodecay")
            sessions.append(session)
        wire, shared = sessions
        shapes = {k: v for k, v in initial().items() if k in ("w", "b")}
        with self.ipc.shared_memory(shared) as shm:
            for step in range(5):
                g = {k: v * 10 for k, v in grads(step, shapes).items()}
                clip = optimd.ClipNorm(1.0, per_group=step % 2 == 1)
                expected = self.ipc.step(wire, g, clip_value=2.0, clip_norm=clip)
                for name, value in g.items():
                    shm.grads[name][...] = value
                got = shm.step(clip_value=2.0, clip_norm=clip)
                self.assertEqual((got.lrs, got.next_lrs, got.grad_norm, got.grad_norms),
                                 (expected.lrs, expected.next_lrs, expected.grad_norm, expected.grad_norms))
                for name in g:
                    self.assertEqual(bits(shm.params[name]), bits(expected.params[name]), f"{name}, step {step}")
                # The gradients as the client wrote them: clipping works on a copy.
                self.assertEqual(bits(shm.grads["w"]), bits(g["w"]))

    def test_lookahead_matches_wire_steps(self) -> None:
        """Lookahead rewrites the parameter after the plugin's update: what
        reaches the segment must be the synchronised value."""
        wire = self.open("wire-la", lookahead=optimd.Lookahead(k=2, alpha=0.5))
        shared = self.open("shared-la", lookahead=optimd.Lookahead(k=2, alpha=0.5))
        shapes = initial()
        with self.ipc.shared_memory(shared) as shm:
            for step in range(4):
                g = grads(step, shapes)
                expected = self.ipc.step(wire, g)
                for name, value in g.items():
                    shm.grads[name][...] = value
                shm.step()
                for name in g:
                    self.assertEqual(bits(shm.params[name]), bits(expected.params[name]), f"{name}, step {step}")

    @unittest.skipIf(torch is None, "torch is not importable")
    def test_bit_identical_to_torch_adamw(self) -> None:
        start = initial()["w"]
        session = self.open("torch", {"w": start})
        p = torch.nn.Parameter(torch.from_numpy(start.copy()))
        opt = torch.optim.AdamW([p], lr=HPARAMS["lr"], weight_decay=HPARAMS["weight_decay"], foreach=False)
        with self.ipc.shared_memory(session) as shm:
            for step in range(10):
                g = grads(step, {"w": start})["w"]
                p.grad = torch.from_numpy(g.copy())
                opt.step()
                shm.grads["w"][...] = g
                shm.step()
                self.assertEqual(bits(shm.params["w"]), bits(p.detach().numpy()), f"after step {step + 1}")

    def test_sequenced_retry_is_a_duplicate(self) -> None:
        session = self.open("seq")
        shapes = initial()
        with self.ipc.shared_memory(session) as shm:
            for name, g in grads(0, shapes).items():
                shm.grads[name][...] = g
            first = shm.step(seq=1, client="w0")
            after = {k: bits(v) for k, v in shm.params.items()}
            again = shm.step(seq=1, client="w0")
            self.assertTrue(again.duplicate)
            self.assertEqual((again.steps, again.lr), (first.steps, first.lr))
            self.assertEqual({k: bits(v) for k, v in shm.params.items()}, after)
            self.assertEqual(self.ipc.info(session).steps, 1)

    def test_nonfinite_gradient_is_refused_and_nothing_applied(self) -> None:
        session = self.open("nan")
        before = self.snapshot(session)
        with self.ipc.shared_memory(session) as shm:
            for name, g in grads(0, initial()).items():
                shm.grads[name][...] = g
            shm.grads["b"][3] = np.nan
            with self.assertRaisesRegex(optimd.NonfiniteError, "'b'"):
                shm.step()
            self.assertEqual(self.snapshot(session), before)
            self.assertEqual({k: bits(v) for k, v in shm.params.items()}, before[1])
            # The segment stays attached and usable.
            shm.grads["b"][3] = 0.5
            self.assertEqual(shm.step().steps, 1)

    def test_steps_are_logged_and_replayed_after_a_restart(self) -> None:
        state = tempfile.mkdtemp(prefix="optimd-shm-state-")
        url = "ipc://" + os.path.join(state, "d.ipc")
        args = ("--listen", url, "--state-dir", os.path.join(state, "s"), "--snapshot-interval", "0")
        first = Daemon(*args)
        try:
            with optimd.Client(url, timeout=60) as c:
                session = c.open("durable", "adamw", HPARAMS, durability="always")
                c.register(session, initial())
                with c.shared_memory(session) as shm:
                    for step in range(3):
                        for name, g in grads(step, initial()).items():
                            shm.grads[name][...] = g
                        shm.step(seq=step + 1, client="w")
                    expected = {k: bits(v) for k, v in shm.params.items()}
            # SIGKILL: nothing but the log can carry the steps over.
            first.proc.kill()
            first.proc.wait()
        finally:
            first.stop()
        second = Daemon(*args)
        try:
            with optimd.Client(url, timeout=60) as c:
                c.attach(session)
                self.assertEqual(c.info(session).steps, 3)
                self.assertEqual({k: bits(v) for k, v in c.pull(session).items()}, expected)
                self.assertEqual(c.info(session, client="w").client_seq, 3)
            log = second.log()
        finally:
            status = second.stop()
        self.assertEqual(status, 0, log)

    # -- refusals -------------------------------------------------------------

    def test_tcp_attach_is_refused(self) -> None:
        session = self.open("tcp")
        with optimd.Client(self.daemon.url, timeout=30) as tcp:
            self.assertTrue(self.daemon.url.startswith("tcp://"))
            before = set(os.listdir("/dev/shm"))
            with self.assertRaisesRegex(optimd.BadRequestError, r"ipc:// connection \(this one is tcp\)"):
                tcp.shared_memory(session)
            self.assertEqual(set(os.listdir("/dev/shm")) - before, set(), "the refused segment is unlinked")
            with self.assertRaisesRegex(optimd.BadRequestError, "no shared memory segment attached"):
                tcp.shm_step(session)
        self.assertServing()

    def test_lying_attach_requests_are_refused(self) -> None:
        session = self.open("liar")
        good = self.ipc.shared_memory(session, ["w"])
        self.addCleanup(good.close)
        before = self.snapshot(session)
        # Not a multiple of 64: an aligned tensor can cross the end.
        seg = self.segment(4090)
        other = self.segment(4096, mode=0o644)
        cases: list[tuple[str, dict[str, Any], type[Exception], str]] = [
            ("offset beyond the file", {"w": (0, 4096)}, optimd.BadTensorError, "end beyond the segment"),
            ("tensor across the end", {"w": (0, 4032)}, optimd.BadTensorError, "end beyond the segment"),
            ("huge offset", {"w": (0, 2**64 - 64)}, optimd.BadTensorError, "end beyond the segment"),
            ("param over grad", {"w": (0, 0)}, optimd.BadTensorError, "overlap"),
            ("tensors of two parameters overlap", {"w": (0, 128), "b": (64, 128)}, optimd.BadTensorError,
             "overlap"),
            ("misaligned", {"w": (0, 100)}, optimd.BadTensorError, "multiple of 64"),
            ("unregistered name", {"nope": (0, 128)}, optimd.UnknownParamError, "nope"),
        ]
        for what, layout, error, message in cases:
            with self.subTest(what):
                with self.assertRaisesRegex(error, message):
                    self.ipc.shm_attach(session, seg.name, seg.size, layout)
        with self.assertRaisesRegex(optimd.BadRequestError, "4090 bytes, the request says 8192"):
            self.ipc.shm_attach(session, seg.name, 8192, {"w": (0, 128)})
        with self.assertRaisesRegex(optimd.BadRequestError, "0644"):
            self.ipc.shm_attach(session, other.name, other.size, {"w": (0, 128)})
        for name in ("/../etc/passwd", "optimd-x", "/", "/.hidden"):
            with self.assertRaisesRegex(optimd.BadRequestError, "POSIX shared memory name"):
                self.ipc.shm_attach(session, name, 4096, {"w": (0, 128)})
        with self.assertRaisesRegex(optimd.BadRequestError, "No such file"):
            self.ipc.shm_attach(session, "/optimd-test-missing-" + secrets.token_hex(8), 4096, {"w": (0, 128)})
        # Nothing changed: the session, and the attachment it had.
        self.assertEqual(self.snapshot(session), before)
        self.assertServing()
        good.grads["w"][...] = 1.0
        self.assertEqual(good.step().steps, 1)

    def test_gradient_copies_count_against_memory_limits(self) -> None:
        state = tempfile.mkdtemp(prefix="optimd-shm-limit-")
        url = "ipc://" + os.path.join(state, "d.ipc")
        # w: 60 bytes, 3 copies with AdamW's two slots; the copy of its
        # gradient (64 bytes with alignment) does not fit in 200.
        d = Daemon("--listen", url, "--max-session-bytes", "200")
        try:
            with optimd.Client(url, timeout=60) as c:
                session = c.open("limited", "adamw", HPARAMS)
                c.register(session, {"w": initial()["w"]})
                with self.assertRaisesRegex(optimd.LimitError, "max-session-bytes"):
                    c.shared_memory(session)
                self.assertEqual(c.info(session).steps, 0)
            log = d.log()
        finally:
            status = d.stop()
        self.assertEqual(status, 0, log)

    def test_truncated_segment_is_detached_and_nothing_applied(self) -> None:
        session = self.open("trunc")
        w = initial()["w"]
        seg = self.segment(4096)
        self.assertEqual(self.ipc.shm_attach(session, seg.name, seg.size, {"w": (0, 128)}), 1)
        self.assertEqual(bits(seg.array(0, np.float32, w.shape)), bits(w), "attach writes the parameter in")
        seg.array(128, np.float32, w.shape)[...] = 0.25
        self.assertEqual(self.ipc.shm_step(session).steps, 1)
        before = self.snapshot(session)
        os.ftruncate(seg.fd, 64)
        with self.assertRaisesRegex(optimd.BadRequestError, "shrank .*nothing applied, segment detached"):
            self.ipc.shm_step(session)
        self.assertEqual(self.snapshot(session), before)
        self.assertServing()
        with self.assertRaisesRegex(optimd.BadRequestError, "no shared memory segment attached"):
            self.ipc.shm_step(session)
        self.assertNotIn(seg.name, daemon_maps(self.daemon.proc.pid))

    def test_truncation_racing_the_copies_is_survived(self) -> None:
        """A client that shrinks and regrows its file while steps copy from
        and into it: some copies fault (SIGBUS). Each step either applies or
        fails with nothing applied, and the daemon serves on."""
        n = 1 << 22   # 16 MiB a tensor: each copy takes a while
        start = np.zeros(n, np.float32)
        session = self.open("race", {"w": start})
        grad_at = (n * 4 + 63) // 64 * 64
        size = grad_at + n * 4
        outcomes = {"applied": 0, "detached": 0, "refused": 0, "refused in a copy": 0}
        stop = threading.Event()
        rounds = 0
        # Until the guard has caught faults twice (or enough rounds).
        while rounds < 60 and outcomes["refused in a copy"] + outcomes["detached"] < 2:
            rounds += 1
            # Closed at the end of its round: 60 of them would hold 2 GB.
            seg = RawSegment(size)
            seg.array(grad_at, np.float32, (n,))[...] = 1e-3
            self.ipc.shm_attach(session, seg.name, size, {"w": (0, grad_at)})

            def flip(fd: int = seg.fd) -> None:
                # Mostly whole, so that the size check before the copies
                # passes and the truncation lands inside them.
                while not stop.is_set():
                    time.sleep(0.001)
                    os.ftruncate(fd, 4096)
                    os.ftruncate(fd, size)

            stop.clear()
            flipper = threading.Thread(target=flip)
            flipper.start()
            try:
                steps_before = self.ipc.info(session).steps
                try:
                    result = self.ipc.shm_step(session)
                    outcomes["detached" if result.detached else "applied"] += 1
                    self.assertEqual(result.steps, steps_before + 1)
                except optimd.BadRequestError as exc:
                    self.assertRegex(str(exc), "shrank")
                    outcomes["refused in a copy" if "while" in str(exc) else "refused"] += 1
                    self.assertEqual(self.ipc.info(session).steps, steps_before, "a refused step applied")
            finally:
                stop.set()
                flipper.join()
                seg.close()
            self.assertServing()
        self.assertEqual(sum(outcomes.values()), rounds)
        print(f"\n  racing truncations: {outcomes}", file=sys.stderr)
        # Else the SIGBUS guard went untested (the size check caught all).
        self.assertGreater(outcomes["refused in a copy"] + outcomes["detached"], 0, outcomes)

    # -- lifetime of the daemon's mapping ---------------------------------------

    def test_close_detach_and_replace_unmap(self) -> None:
        pid = self.daemon.proc.pid
        session = self.ipc.open("life", "adamw", HPARAMS)
        self.ipc.register(session, initial())
        first = self.ipc.shared_memory(session)
        self.assertIn(first.name, daemon_maps(pid))
        second = self.ipc.shared_memory(session)
        maps = daemon_maps(pid)
        self.assertNotIn(first.name, maps, "a new attach replaces the old")
        self.assertIn(second.name, maps)
        self.assertTrue(self.ipc.shm_detach(session))
        self.assertNotIn(second.name, daemon_maps(pid))
        self.assertFalse(self.ipc.shm_detach(session))
        third = self.ipc.shared_memory(session)
        self.assertIn(third.name, daemon_maps(pid))
        self.ipc.close_session(session)
        self.assertNotIn(third.name, daemon_maps(pid), "closing the session unmaps")
        for shm in (first, second, third):
            shm.attached = False
            shm._release()

    def wait_unmapped(self, name: str) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if name not in daemon_maps(self.daemon.proc.pid):
                return True
            time.sleep(0.05)
        return False

    def test_closed_connection_unmaps(self) -> None:
        session = self.open("conn")
        other = optimd.Client(IPC_URL, timeout=30)
        shm = other.shared_memory(session)
        self.assertIn(shm.name, daemon_maps(self.daemon.proc.pid))
        other.close()
        self.assertTrue(self.wait_unmapped(shm.name), "the daemon keeps the segment of a closed connection")
        with self.assertRaisesRegex(optimd.BadRequestError, "no shared memory segment attached"):
            self.ipc.shm_step(session)

    def test_killed_client_leaves_nothing(self) -> None:
        session = self.open("killed")
        script = (
            "import sys, time, optimd\n"
            f"c = optimd.Client({IPC_URL!r})\n"
            f"s = optimd.Session({session.name!r}, {session.token!r}, 0.0)\n"
            "shm = c.shared_memory(s)\n"
            "print(shm.name, flush=True)\n"
            "time.sleep(600)\n")
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            name = child.stdout.readline().strip() if child.stdout else ""
            self.assertTrue(name.startswith("/optimd-"), name)
            self.assertIn(name, daemon_maps(self.daemon.proc.pid))
            self.assertFalse(os.path.exists("/dev/shm" + name), "the client unlinks once the daemon mapped it")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout:
                child.stdout.close()
        self.assertTrue(self.wait_unmapped(name), "the daemon keeps a killed client's segment")


if __name__ == "__main__":
    unittest.main()
