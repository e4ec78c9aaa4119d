"""Sliced steps (docs/protocol.md, ``step``, "Sliced steps"): one step sent as
several ``step`` messages with ``part: {index, count}``, gradients whole or as
ranges ``{offset, values}``. ``Client.step(..., part_elements=N)`` cuts and
pipelines them; ``Client.step_part`` sends one part.

Against the real daemon: a sliced session must end bit for bit where the same
session stepped whole does (parameters and every state slot, scalar slots
included), and where torch 1.13's AdamW does; parts out of order; the step
counting only at its last part; refused parts (overlap, a range missing at the
last part, a non-element-wise optimizer, the other refusals the protocol lists)
changing nothing; a pending step refusing other steps with STEP_PENDING until a
retry with the same seq completes it; and a pending step surviving kill -9
with durability "always". Without a daemon (a fake server): what the client
puts on the wire (every element once, large ranges aligned, the part keys) and
how it pipelines, assembles and fails."""

from __future__ import annotations

import os
import re
import socket
import tempfile
import unittest
import urllib.request
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np
import torch

import optimd
from optimd import messages, wire

from support import Daemon, DaemonTestCase, FakeServer

SHAPES: dict[str, tuple[int, ...]] = {
    "w1": (37,),          # 1-D
    "w2": (13, 11),       # 2-D
    "b": (5,),            # small: whole in most parts
    "w3": (3, 5, 7),      # 3-D
}

#: Cut sizes, one per step: 1 (every element its own part), odd sizes that
#: cut the tensors in odd places, one larger than everything (one part).
PART_SIZES = (17, 5, 1, 64, 3, 1000, 29)

#: (optimizer, hparams, scheduler, sched_hparams): element-wise optimizers,
#: one with a per-parameter scalar slot (nadam's mu_product) and one with two
#: (asgd's eta and mu).
OPTIMIZERS: list[tuple[str, dict[str, Any], str | None, dict[str, Any]]] = [
    ("adamw", {"lr": 1e-2, "weight_decay": 0.1}, "exponential", {"gamma": 0.9}),
    ("adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01}, None, {}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, None, {}),
    ("nadam", {"lr": 1e-2}, None, {}),
    ("asgd", {"lr": 1e-2, "t0": 2}, None, {}),
]


def initial(dtype: type, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in SHAPES.items()}


def gradients(dtype: type, step: int, shapes: Mapping[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}


def bits(a: Any) -> tuple[str, tuple[int, ...], bytes]:
    a = np.asarray(a)
    return (a.dtype.str, a.shape, a.tobytes())


def all_bits(arrays: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {name: bits(a) for name, a in arrays.items()}


def state_bits(state: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: all_bits(slots) for name, slots in state.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlicedTestCase(DaemonTestCase):
    """One daemon with its metrics on a free port; helpers to open a
    session with the same parameters twice."""

    METRICS_PORT = free_port()
    DAEMON_ARGS = ("--metrics-listen", f"127.0.0.1:{METRICS_PORT}")
    _names = iter(range(1_000_000))

    def setUp(self) -> None:
        self.c = optimd.Client(self.daemon.url, timeout=60)
        self.addCleanup(self.c.close)

    def open(self, optimizer: str = "adamw", hparams: Mapping[str, Any] | None = None,
             params: Mapping[str, np.ndarray] | None = None, **kwargs: Any) -> optimd.Session:
        name = f"{optimizer}-{next(self._names)}"
        session = self.c.open(name, optimizer, hparams if hparams is not None else {"lr": 1e-2}, **kwargs)
        self.addCleanup(self._close, session)
        self.c.register(session, params if params is not None else initial(np.float32))
        return session

    def _close(self, session: optimd.Session) -> None:
        try:
            self.c.close_session(session)
        except optimd.OptimdError:
            pass

    def unaligned(self) -> int:
        """optimd_unaligned_gradient_bytes_total, from the metrics endpoint:
        bytes of gradients the daemon copied because they lay unaligned."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.METRICS_PORT}/metrics", timeout=10) as r:
            text = r.read().decode()
        m = re.search(r"^optimd_unaligned_gradient_bytes_total (\S+)$", text, re.M)
        assert m is not None, "no optimd_unaligned_gradient_bytes_total"
        return int(float(m.group(1)))

    def assertSameSession(self, a: optimd.Session, b: optimd.Session, when: str = "") -> None:
        self.assertEqual(all_bits(self.c.pull(a)), all_bits(self.c.pull(b)), "parameters" + when)
        self.assertEqual(state_bits(self.c.state(a)), state_bits(self.c.state(b)), "state" + when)
        ia, ib = self.c.info(a), self.c.info(b)
        self.assertEqual((ia.steps, ia.lr), (ib.steps, ib.lr), "steps, lr" + when)
        self.assertEqual([(p.name, p.steps) for p in ia.params], [(p.name, p.steps) for p in ib.params],
                         "per-parameter steps" + when)


class Parity(SlicedTestCase):
    def test_sliced_steps_are_bit_identical_to_whole_steps(self) -> None:
        for optimizer, hparams, scheduler, sched_hparams in OPTIMIZERS:
            for dtype in (np.float32, np.float64):
                with self.subTest(optimizer=optimizer, dtype=dtype.__name__):
                    start = initial(dtype)
                    kw: dict[str, Any] = {"params": start}
                    if scheduler is not None:
                        kw.update(scheduler=scheduler, sched_hparams=sched_hparams)
                    whole = self.open(optimizer, hparams, **kw)
                    sliced = self.open(optimizer, hparams, **kw)
                    for step, size in enumerate(PART_SIZES):
                        g = gradients(dtype, step)
                        want = self.c.step(whole, g)
                        got = self.c.step(sliced, g, seq=step + 1, client="trainer", part_elements=size,
                                          parts_in_flight=1 + step % 3)
                        when = f" after step {step + 1} (parts of {size})"
                        self.assertEqual(all_bits(got.params), all_bits(want.params), when)
                        self.assertEqual((got.steps, got.lr, got.next_lr, got.duplicate),
                                         (want.steps, want.lr, want.next_lr, False), when)
                        for a in got.params.values():
                            self.assertFalse(a.flags.writeable)
                        self.assertIsNone(self.c.info(sliced).pending_step)
                    self.assertSameSession(sliced, whole)
                    self.assertEqual(self.c.info(sliced, client="trainer").client_seq, len(PART_SIZES))

    def test_adamw_matches_torch(self) -> None:
        for dtype, tdtype in ((np.float32, torch.float32), (np.float64, torch.float64)):
            with self.subTest(dtype=dtype.__name__):
                start = initial(dtype, seed=3)
                session = self.open("adamw", {"lr": 1e-2, "weight_decay": 0.1, "beta2": 0.99},
                                    params=start, scheduler="exponential", sched_hparams={"gamma": 0.9})
                tparams = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in start.items()}
                opt = torch.optim.AdamW(list(tparams.values()), lr=1e-2, weight_decay=0.1,
                                        betas=(0.9, 0.99), foreach=False)
                sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
                for step, size in enumerate(PART_SIZES):
                    g = gradients(dtype, step)
                    for name, p in tparams.items():
                        p.grad = torch.from_numpy(g[name].copy())
                    opt.step()
                    sched.step()
                    got = self.c.step(session, g, seq=step + 1, part_elements=size)
                    for name, p in tparams.items():
                        self.assertEqual(bits(got.params[name]), bits(p.detach().numpy()),
                                         f"{name} after step {step + 1}")
                    self.assertEqual(got.next_lr, sched.get_last_lr()[0])
                state = self.c.state(session)
                for name, p in tparams.items():
                    for key in ("exp_avg", "exp_avg_sq"):
                        self.assertEqual(bits(state[name][key]), bits(opt.state[p][key].numpy()), (name, key))

    def test_large_ranges_are_read_in_place_and_pipelined(self) -> None:
        # Tensors of 64 KiB and more: each range's values carries a pad key,
        # so the daemon reads it where it lies. Small ones are not padded and
        # may be copied; the metric may count only those.
        shapes = {"big": (300_007,), "mat": (517, 259), "tail": (9,)}
        rng = np.random.default_rng(5)
        for dtype in (np.float32, np.float64):
            with self.subTest(dtype=dtype.__name__):
                start = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}
                whole = self.open("adamw", params=start)
                sliced = self.open("adamw", params=start)
                for step, (size, window) in enumerate(((100_003, 2), (65_536, 3), (40_000, 1), (250_001, 4))):
                    g = gradients(dtype, step, shapes)
                    want = self.c.step(whole, g, return_params=step % 2 == 0)
                    small = sum(np.asarray(v[1] if isinstance(v, tuple) else v).nbytes
                                for part in messages.slice_grads(g, size) for v in part.values()
                                if np.asarray(v[1] if isinstance(v, tuple) else v).nbytes < wire.LARGE_BIN)
                    self.assertLess(small, wire.LARGE_BIN)
                    before = self.unaligned()
                    got = self.c.step(sliced, g, seq=step + 1, part_elements=size, parts_in_flight=window,
                                      return_params=step % 2 == 0)
                    self.assertLessEqual(self.unaligned() - before, small, (size, window))
                    self.assertEqual(all_bits(got.params), all_bits(want.params))
                    self.assertEqual(got.steps, step + 1)
                self.assertSameSession(sliced, whole)

    def test_edge_cases_scalar_empty_and_subsets(self) -> None:
        start = {"s": np.array(0.5, np.float32), "e": np.zeros((0, 3), np.float32),
                 "v": np.arange(10, dtype=np.float32), "u": np.ones((2, 2), np.float32)}
        whole = self.open("adam", params=start)
        sliced = self.open("adam", params=start)
        steps: list[dict[str, np.ndarray]] = [
            {"s": np.array(1.5, np.float32), "e": np.zeros((0, 3), np.float32), "v": np.ones(10, np.float32)},
            {"v": np.arange(10, dtype=np.float32) - 4},          # a subset: the others untouched
            {"u": np.full((2, 2), -1, np.float32), "s": np.array(-2, np.float32)},
            {},                                                  # no gradients: still a step
        ]
        for i, g in enumerate(steps):
            want = self.c.step(whole, g)
            got = self.c.step(sliced, g, seq=i + 1, part_elements=3)
            self.assertEqual(all_bits(got.params), all_bits(want.params), i)
            self.assertEqual(got.steps, want.steps)
        self.assertSameSession(sliced, whole)
        # clip_value is element-wise: allowed in parts.
        g = {"v": np.linspace(-3, 3, 10).astype(np.float32), "u": np.full((2, 2), 7, np.float32)}
        want = self.c.step(whole, g, clip_value=0.5)
        got = self.c.step(sliced, g, seq=10, part_elements=4, clip_value=0.5)
        self.assertEqual(all_bits(got.params), all_bits(want.params))
        self.assertSameSession(sliced, whole)


class Parts(SlicedTestCase):
    def test_parts_out_of_order(self) -> None:
        whole, sliced = self.open(), self.open()
        g = gradients(np.float32, 0)
        want = self.c.step(whole, g)
        parts = messages.slice_grads(g, 80)          # 290 elements
        self.assertEqual(len(parts), 4)
        order = [2, 0, 3, 1]
        for k, index in enumerate(order):
            r = self.c.step_part(sliced, parts[index], index=index, count=4, seq=1, client="x")
            last = k == len(order) - 1
            self.assertEqual((r.complete, r.parts, r.duplicate), (last, k + 1, False), index)
            self.assertEqual(r.steps, 1 if last else 0, index)
            if not last:
                self.assertEqual(r.next_lr, r.lr)
                info = self.c.info(sliced)
                self.assertEqual(info.steps, 0)
                self.assertEqual(info.pending_step, optimd.PendingStep("x", 1, 4, k + 1))
            # Each part's reply: the new values of exactly its elements,
            # already final (the update is element-wise).
            self.assertEqual(set(r.params), set(parts[index]))
            for name, (offset, values) in r.params.items():
                sent = parts[index][name]
                n = sent[1].size if isinstance(sent, tuple) else np.asarray(sent).size
                self.assertEqual(offset, sent[0] if isinstance(sent, tuple) else 0)
                self.assertEqual(values.tobytes(), want.params[name].reshape(-1)[offset:offset + n].tobytes())
        self.assertIsNone(self.c.info(sliced).pending_step)
        self.assertSameSession(sliced, whole)
        # A second step, sent 1, 0: the same.
        g = gradients(np.float32, 1)
        want = self.c.step(whole, g)
        parts = messages.slice_grads(g, 200)
        self.assertEqual(len(parts), 2)
        self.assertFalse(self.c.step_part(sliced, parts[1], index=1, count=2, seq=2, client="x").complete)
        r = self.c.step_part(sliced, parts[0], index=0, count=2, seq=2, client="x")
        self.assertEqual((r.complete, r.steps, r.next_lr), (True, 2, want.next_lr))
        self.assertSameSession(sliced, whole)

    def test_return_false_and_duplicates_of_a_complete_step(self) -> None:
        whole, sliced = self.open(), self.open()
        g = gradients(np.float32, 0)
        want = self.c.step(whole, g)
        got = self.c.step(sliced, g, seq=4, client="y", part_elements=100, return_params=False)
        self.assertEqual(got.params, {})
        self.assertEqual(got.steps, 1)
        # The whole step again (a retry after a lost reply): every part a duplicate.
        again = self.c.step(sliced, g, seq=4, client="y", part_elements=100)
        self.assertTrue(again.duplicate)
        self.assertEqual((again.steps, again.lr, again.next_lr), (got.steps, got.lr, got.next_lr))
        self.assertEqual(all_bits(again.params), all_bits(want.params))
        part = self.c.step_part(sliced, {"b": g["b"]}, index=0, count=1, seq=3, client="y")
        self.assertTrue(part.duplicate)
        self.assertTrue(part.complete)
        self.assertSameSession(sliced, whole)

    def test_overlap_is_refused_and_changes_nothing(self) -> None:
        whole, sliced = self.open(), self.open()
        g = gradients(np.float32, 0)
        want = self.c.step(whole, g)
        flat = g["w2"].reshape(-1)
        rest = {k: v for k, v in g.items() if k != "w2"}
        self.c.step_part(sliced, {"w2": (0, flat[:100]), **rest}, index=0, count=3, seq=1)
        params, state = all_bits(self.c.pull(sliced)), state_bits(self.c.state(sliced))
        for bad in ({"w2": (99, flat[99:120])},            # element 99 again
                    {"w2": (0, flat[:1])},                 # element 0 again
                    {"b": g["b"]},                         # b was whole in part 0
                    {"b": (4, g["b"][4:])}):
            with self.subTest(bad=sorted(bad)), self.assertRaises(optimd.BadRequestError):
                self.c.step_part(sliced, bad, index=1, count=3, seq=1)
            self.assertEqual(all_bits(self.c.pull(sliced)), params)
            self.assertEqual(state_bits(self.c.state(sliced)), state)
            self.assertEqual(self.c.info(sliced).pending_step, optimd.PendingStep("", 1, 3, 1))
        # Part 0 again: a duplicate, not applied twice.
        dup = self.c.step_part(sliced, {"w2": (0, flat[:100]), **rest}, index=0, count=3, seq=1)
        self.assertTrue(dup.duplicate)
        self.assertEqual(all_bits(self.c.pull(sliced)), params)
        self.c.step_part(sliced, {"w2": (100, flat[100:120])}, index=1, count=3, seq=1)
        done = self.c.step_part(sliced, {"w2": (120, flat[120:])}, index=2, count=3, seq=1)
        self.assertTrue(done.complete)
        self.assertSameSession(sliced, whole)
        self.assertEqual(all_bits(self.c.pull(sliced)), all_bits(want.params))

    def test_missing_range_at_the_last_part_then_corrected(self) -> None:
        whole, sliced = self.open(), self.open()
        g = gradients(np.float32, 0)
        self.c.step(whole, g)
        flat = g["w1"].reshape(-1)
        rest = {k: v for k, v in g.items() if k != "w1"}
        self.c.step_part(sliced, {"w1": (0, flat[:10]), **rest}, index=0, count=2, seq=7, client="m")
        params, state = all_bits(self.c.pull(sliced)), state_bits(self.c.state(sliced))
        with self.assertRaises(optimd.BadRequestError) as cm:
            self.c.step_part(sliced, {"w1": (12, flat[12:])}, index=1, count=2, seq=7, client="m")
        self.assertIn("w1", cm.exception.message)
        self.assertEqual(all_bits(self.c.pull(sliced)), params)
        self.assertEqual(state_bits(self.c.state(sliced)), state)
        info = self.c.info(sliced)
        self.assertEqual((info.steps, info.pending_step), (0, optimd.PendingStep("m", 7, 2, 1)))
        # The last elements missing too.
        with self.assertRaises(optimd.BadRequestError):
            self.c.step_part(sliced, {"w1": (10, flat[10:-1])}, index=1, count=2, seq=7, client="m")
        done = self.c.step_part(sliced, {"w1": (10, flat[10:])}, index=1, count=2, seq=7, client="m")
        self.assertEqual((done.complete, done.steps, done.parts), (True, 1, 2))
        self.assertSameSession(sliced, whole)

    def test_malformed_parts_are_refused(self) -> None:
        session = self.open()
        g = gradients(np.float32, 0)
        w1 = g["w1"].reshape(-1)
        bad_parts: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("range past the end", {"w1": (30, w1[:10])}, {}),
            ("range of the wrong dtype", {"w1": (0, w1[:10].astype(np.float64))}, {}),
            ("index not below count", {"b": g["b"]}, {"index": 3, "count": 3}),
            ("count 0", {"b": g["b"]}, {"index": 0, "count": 0}),
            ("count above 65536", {"b": g["b"]}, {"index": 0, "count": 65537}),
            ("non-finite values", {"w1": (0, np.full(3, np.nan, np.float32))}, {}),
        ]
        expect = {"range of the wrong dtype": (optimd.BadRequestError, optimd.BadTensorError),
                  "range past the end": (optimd.BadRequestError, optimd.BadTensorError),
                  "non-finite values": (optimd.NonfiniteError,)}
        for what, grads, part in bad_parts:
            with self.subTest(what), self.assertRaises(expect.get(what, (optimd.BadRequestError,))):
                self.c.step_part(session, grads, seq=1, **{"index": 0, "count": 2, **part})
        fields = {"session": session.name, "token": session.token}
        one = {"w1": {"offset": 0, "values": wire.encode_tensor(w1[:5])}}
        raw: list[tuple[str, dict[str, Any]]] = [
            ("a range outside a part", {"grads": one, "seq": 1}),
            ("a part without seq", {"grads": one, "part": {"index": 0, "count": 2}}),
            ("a part with clip_norm", {"grads": one, "seq": 1, "part": {"index": 0, "count": 2},
                                       "clip_norm": {"max_norm": 1.0}}),
            ("a part with sparse rows", {"grads": {"w2": {"rows": [0], "values": wire.encode_tensor(
                g["w2"][:1])}}, "seq": 1, "part": {"index": 0, "count": 2}}),
        ]
        for what, req in raw:
            with self.subTest(what), self.assertRaises(optimd.BadRequestError):
                self.c.request("step", **fields, **req)
        info = self.c.info(session)
        self.assertEqual((info.steps, info.pending_step), (0, None))
        self.assertEqual(all_bits(self.c.pull(session)), all_bits(initial(np.float32)))
        # The client's own checks.
        with self.assertRaisesRegex(ValueError, "needs seq"):
            self.c.step(session, g, part_elements=10)
        with self.assertRaisesRegex(ValueError, "clip_norm"):
            self.c.step(session, g, seq=1, part_elements=10, clip_norm=1.0)
        with self.assertRaises(ValueError):
            self.c.step(session, g, seq=1, part_elements=0)
        with self.assertRaises(ValueError):
            self.c.step(session, g, seq=1, part_elements=10, parts_in_flight=0)

    def test_optimizers_that_are_not_element_wise_refuse_parts(self) -> None:
        for optimizer in ("lamb", "lars", "adafactor"):
            with self.subTest(optimizer=optimizer):
                session = self.open(optimizer, {"lr": 1e-3})
                g = gradients(np.float32, 0)
                with self.assertRaises(optimd.BadRequestError):
                    self.c.step(session, g, seq=1, part_elements=50)
                with self.assertRaises(optimd.BadRequestError):
                    self.c.step_part(session, g, index=0, count=1, seq=1)
                info = self.c.info(session)
                self.assertEqual((info.steps, info.pending_step), (0, None))
                self.assertEqual(all_bits(self.c.pull(session)), all_bits(initial(np.float32)))
                self.assertEqual(self.c.step(session, g).steps, 1)      # whole steps still work

    def test_plugins_say_which_optimizers_take_parts(self) -> None:
        plugins = {p.id: p for p in self.c.plugins()}
        for optimizer, _, _, _ in OPTIMIZERS:
            self.assertIs(plugins[optimizer].sliced, True, optimizer)
        for optimizer in ("lamb", "lars", "adafactor", "muon", "sparse_adam"):
            self.assertIs(plugins[optimizer].sliced, False, optimizer)
        self.assertIsNone(plugins["exponential"].sliced)

    def test_lookahead_and_worker_sessions_refuse_parts(self) -> None:
        g = gradients(np.float32, 0)
        session = self.open("adamw", lookahead=optimd.Lookahead(k=2))
        with self.assertRaises(optimd.BadRequestError):
            self.c.step(session, g, seq=1, part_elements=50)
        self.assertEqual(self.c.info(session).steps, 0)
        workers = self.open("sgd", {"lr": 0.1}, workers=optimd.Workers("async"))
        self.c.join(workers, "w0")
        with self.assertRaises(optimd.BadRequestError):
            self.c.request("step", session=workers.name, token=workers.token, worker="w0", seq=1,
                           part={"index": 0, "count": 1},
                           grads={n: wire.encode_tensor(v) for n, v in g.items()})
        self.assertEqual(self.c.info(workers).steps, 0)


class Pending(SlicedTestCase):
    def test_a_pending_step_refuses_others_until_a_retry_completes_it(self) -> None:
        whole, sliced = self.open(), self.open()
        g = gradients(np.float32, 0)
        want = self.c.step(whole, g)
        parts = messages.slice_grads(g, 70)
        count = len(parts)
        self.assertGreaterEqual(count, 4)
        first = self.c.step_part(sliced, parts[0], index=0, count=count, seq=5, client="a")
        self.c.step_part(sliced, parts[2], index=2, count=count, seq=5, client="a")
        self.assertEqual(self.c.info(sliced).pending_step, optimd.PendingStep("a", 5, count, 2))
        # Reads see the parameters part-updated.
        pulled = self.c.pull(sliced)
        offset, values = first.params["w1"]
        self.assertEqual(pulled["w1"].reshape(-1)[offset:offset + values.size].tobytes(), values.tobytes())
        start = initial(np.float32)
        for index in range(count):
            for name, value in parts[index].items():
                at, n = (value[0], value[1].size) if isinstance(value, tuple) else (0, value.size)
                now = pulled[name].reshape(-1)[at:at + n]
                before = start[name].reshape(-1)[at:at + n]
                self.assertEqual(now.tobytes() == before.tobytes(), index not in (0, 2), (index, name))
        params, state = all_bits(pulled), state_bits(self.c.state(sliced))
        with optimd.Client(self.daemon.url, timeout=30) as other:
            refused = [
                ("plain step", lambda: other.step(sliced, g)),
                ("sequenced step of another client", lambda: other.step(sliced, g, seq=1, client="b")),
                ("the same client's next seq", lambda: other.step(sliced, g, seq=6, client="a")),
                ("a part of another step", lambda: other.step_part(sliced, parts[1], index=1, count=count,
                                                                   seq=1, client="b")),
                ("a sliced step of another client", lambda: other.step(sliced, g, seq=1, client="b",
                                                                       part_elements=70)),
                ("set_hparams", lambda: other.set_hparams(sliced, {"lr": 0.5})),
                ("switch", lambda: other.switch(sliced, "adam")),
                ("unregister", lambda: other.unregister(sliced, ["b"])),
                ("export", lambda: other.export(sliced)),
            ]
            for what, call in refused:
                with self.subTest(what), self.assertRaises(optimd.StepPendingError) as cm:
                    call()
                self.assertEqual((cm.exception.code, cm.exception.name), (26, "STEP_PENDING"))
            self.assertEqual(all_bits(other.pull(sliced)), params)
            self.assertEqual(state_bits(other.state(sliced)), state)
            info = other.info(sliced)
            self.assertEqual((info.steps, info.pending_step), (0, optimd.PendingStep("a", 5, count, 2)))
            self.assertEqual(info.hparams["lr"], 1e-2)
            # A part already applied, sent again: a duplicate with its current values.
            dup = other.step_part(sliced, parts[0], index=0, count=count, seq=5, client="a")
            self.assertEqual((dup.duplicate, dup.complete, dup.parts), (True, False, 2))
            self.assertEqual(dup.params["w1"][1].tobytes(), values.tobytes())
        # The whole step again, same seq and cuts: parts 0 and 2 are
        # duplicates, the others apply and complete it.
        got = self.c.step(sliced, g, seq=5, client="a", part_elements=70)
        self.assertFalse(got.duplicate)
        self.assertEqual((got.steps, got.lr, got.next_lr), (want.steps, want.lr, want.next_lr))
        self.assertEqual(all_bits(got.params), all_bits(want.params))
        self.assertIsNone(self.c.info(sliced).pending_step)
        self.assertEqual(self.c.info(sliced, client="a").client_seq, 5)
        self.assertSameSession(sliced, whole)
        # Now the others go through.
        g2 = gradients(np.float32, 1)
        self.assertEqual(self.c.step(sliced, g2, seq=1, client="b").steps, 2)
        self.assertEqual(self.c.step(whole, g2).steps, 2)
        self.assertSameSession(sliced, whole)

    def test_a_failed_part_leaves_a_pending_step_that_a_retry_completes(self) -> None:
        whole, sliced = self.open(), self.open()
        g = gradients(np.float32, 0)
        want = self.c.step(whole, g)
        bad = {k: v.copy() for k, v in g.items()}
        bad["w3"].reshape(-1)[50] = np.inf       # in a late part
        with self.assertRaises(optimd.NonfiniteError):
            self.c.step(sliced, bad, seq=1, client="r", part_elements=100, parts_in_flight=2)
        pending = self.c.info(sliced).pending_step
        self.assertIsNotNone(pending)
        assert pending is not None
        self.assertEqual((pending.client, pending.seq), ("r", 1))
        self.assertLess(pending.applied, pending.count)
        got = self.c.step(sliced, g, seq=1, client="r", part_elements=100, parts_in_flight=3)
        self.assertEqual(all_bits(got.params), all_bits(want.params))
        self.assertEqual(got.steps, 1)
        self.assertSameSession(sliced, whole)


class Durability(unittest.TestCase):
    def test_a_pending_step_survives_kill_9(self) -> None:
        state = tempfile.mkdtemp(prefix="optimd-sliced-")
        args = ("--state-dir", os.path.join(state, "s"))
        g = gradients(np.float64, 0)
        parts = messages.slice_grads(g, 100)
        self.assertEqual(len(parts), 3)
        d = Daemon(*args)
        try:
            with optimd.Client(d.url, timeout=60) as c:
                start = initial(np.float64)
                whole = c.open("whole", "nadam", {"lr": 1e-2}, durability="always")
                sliced = c.open("sliced", "nadam", {"lr": 1e-2}, durability="always")
                for s in (whole, sliced):
                    c.register(s, start)
                g0 = gradients(np.float64, 7)
                c.step(whole, g0)
                c.step(sliced, g0, seq=1, client="k", part_elements=100)
                c.step(whole, g)
                for index in (0, 2):
                    c.step_part(sliced, parts[index], index=index, count=3, seq=2, client="k")
                self.assertEqual(c.info(sliced).pending_step, optimd.PendingStep("k", 2, 3, 2))
            d.proc.kill()
            d.proc.wait()
        finally:
            d.stop()
        d = Daemon(*args)
        try:
            with optimd.Client(d.url, timeout=60) as c:
                info = c.info(sliced)
                self.assertEqual((info.steps, info.pending_step), (1, optimd.PendingStep("k", 2, 3, 2)))
                with self.assertRaises(optimd.StepPendingError):
                    c.step(sliced, g)
                done = c.step_part(sliced, parts[1], index=1, count=3, seq=2, client="k")
                self.assertEqual((done.complete, done.steps), (True, 2))
                self.assertEqual(all_bits(c.pull(sliced)), all_bits(c.pull(whole)))
                self.assertEqual(state_bits(c.state(sliced)), state_bits(c.state(whole)))
                self.assertEqual(c.info(sliced, client="k").client_seq, 2)
                # And the completed step is in the log too: once more after a restart.
            d.proc.kill()
            d.proc.wait()
        finally:
            d.stop()
        d = Daemon(*args)
        try:
            with optimd.Client(d.url, timeout=60) as c:
                info = c.info(sliced)
                self.assertEqual((info.steps, info.pending_step), (2, None))
                self.assertEqual(all_bits(c.pull(sliced)), all_bits(c.pull(whole)))
                self.assertEqual(state_bits(c.state(sliced)), state_bits(c.state(whole)))
            log = d.log()
        finally:
            status = d.stop()
        self.assertEqual(status, 0, log)


# -- without a daemon ---------------------------------------------------------


def fake_reply(request: bytes, *, fail: dict[int, tuple[int, str]] | None = None,
               complete_at: int | None = None) -> bytes:
    """A part reply that echoes each gradient times 2 as the new values;
    complete at the part whose index is ``complete_at`` (default: the last
    index). ``fail`` maps a part index to an error (code, name)."""
    msg = msgpack.unpackb(request)
    part = msg["part"]
    if fail and part["index"] in fail:
        code, name = fail[part["index"]]
        return msgpack.packb({"v": 1, "id": msg["id"], "ok": False, "code": code, "error": name,
                              "message": "refused"})
    last = part["count"] - 1 if complete_at is None else complete_at
    complete = part["index"] == last
    params = {}
    for name, g in msg["grads"].items():
        t = g["values"] if "offset" in g else g
        dtype = np.dtype("<f4" if t["dtype"] == "f32" else "<f8")
        values = (np.frombuffer(t["data"], dtype) * 2).astype(dtype)
        params[name] = {"offset": g.get("offset", 0),
                        "values": {"dtype": t["dtype"], "shape": [values.size], "data": values.tobytes()}}
    reply = {"v": 1, "id": msg["id"], "ok": True, "steps": 8 if complete else 7, "lr": 0.5,
             "next_lr": 0.25 if complete else 0.5, "duplicate": False, "complete": complete,
             "parts": part["index"] + 1}
    if msg.get("return", True):
        reply["params"] = params
    return msgpack.packb(reply)


class ClientSide(unittest.TestCase):
    def test_slice_grads(self) -> None:
        g = {"a": np.arange(5, dtype=np.float32), "b": np.arange(12, dtype=np.float64).reshape(3, 4),
             "e": np.zeros((0, 2), np.float32), "s": np.array(7, np.float32)}
        for size in (1, 2, 3, 4, 5, 6, 7, 17, 18, 100):
            with self.subTest(size=size):
                parts = messages.slice_grads(g, size)
                seen: dict[str, list[float]] = {n: [] for n in g}
                for k, part in enumerate(parts):
                    n = 0
                    for name, value in part.items():
                        if isinstance(value, tuple):
                            offset, values = value
                            self.assertEqual(values.ndim, 1)
                            self.assertEqual(offset, len(seen[name]))
                            self.assertTrue(np.shares_memory(values, g[name]))
                            self.assertGreater(values.size, 0)
                            self.assertLess(values.size, g[name].size)
                        else:
                            self.assertEqual(bits(value), bits(g[name]))
                            if value.size:
                                self.assertTrue(np.shares_memory(value, g[name]))
                            self.assertEqual(seen[name], [])
                            values = value.reshape(-1)
                        seen[name] += values.tolist()
                        n += values.size
                    self.assertLessEqual(n, size)
                    if k < len(parts) - 1:
                        self.assertEqual(n, size)
                self.assertEqual(seen, {n: v.reshape(-1).tolist() for n, v in g.items()})
                self.assertEqual(len(parts), max(1, -(-18 // size)))
        self.assertEqual(len(messages.slice_grads({}, 4)), 1)
        # Never more than MAX_PARTS parts.
        many = messages.slice_grads({"w": np.zeros(messages.MAX_PARTS * 2, np.float32)}, 1)
        self.assertEqual(len(many), messages.MAX_PARTS)
        self.assertEqual(len(messages.slice_grads({"w": np.zeros(messages.MAX_PARTS * 2 + 1, np.float32)}, 1)),
                         43_691)      # parts of 3
        for bad in (0, -1, 1.5, True):
            with self.assertRaises(ValueError):
                messages.slice_grads(g, bad)  # type: ignore[arg-type]
        with self.assertRaises(TypeError):
            messages.slice_grads({"i": np.zeros(3, np.int32)}, 2)

    def test_part_requests_on_the_wire(self) -> None:
        session = optimd.Session("s", "0" * 32)
        big = np.arange(70_001, dtype=np.float32)
        g = {"small": np.ones(3, np.float32), "big": big, "f64": np.arange(20_000, dtype=np.float64)}
        for extra in range(8):            # every padding length
            requests = messages.step_parts(session, g, part_elements=33_333, seq=9, client="c" * extra,
                                           return_params=False, clip_value=2.0)
            self.assertEqual(len(requests), 3)
            covered: dict[str, np.ndarray] = {n: np.zeros(np.asarray(v).size, int) for n, v in g.items()}
            for index, request in enumerate(requests):
                self.assertEqual((request.op, request.reply_kind), ("step", "step_part"))
                payload = request.encode_parts(100 + index)
                offset = 0
                for p in payload:
                    if isinstance(p, memoryview):
                        self.assertEqual((4 + offset) % 16, 0, (extra, index, offset))
                    offset += memoryview(p).nbytes
                msg = msgpack.unpackb(b"".join(bytes(p) for p in payload))
                self.assertEqual(msg["part"], {"index": index, "count": 3})
                self.assertEqual((msg["seq"], msg["client"], msg["return"], msg["clip_value"]),
                                 (9, "c" * extra, False, 2.0))
                for name, value in msg["grads"].items():
                    t = value["values"] if "offset" in value else value
                    at = value.get("offset", 0)
                    values = np.frombuffer(t["data"], g[name].dtype)
                    if "offset" in value:
                        self.assertEqual(t["shape"], [values.size])
                        if values.nbytes >= wire.LARGE_BIN:
                            self.assertIn("pad", t)
                    self.assertEqual(values.tobytes(), g[name].reshape(-1)[at:at + values.size].tobytes())
                    covered[name][at:at + values.size] += 1
            for name, c in covered.items():
                self.assertTrue((c == 1).all(), name)

    def test_assembly_pipelining_and_failures(self) -> None:
        session = optimd.Session("s", "0" * 32)
        g = {"a": np.arange(10, dtype=np.float32).reshape(2, 5), "b": np.arange(7, dtype=np.float64)}
        with FakeServer(fake_reply) as server, optimd.Client(server.url, timeout=10) as c:
            r = c.step(session, g, seq=3, part_elements=4, parts_in_flight=3)
            self.assertEqual(len(server.requests), 5)
            self.assertEqual((r.steps, r.lr, r.next_lr, r.duplicate), (8, 0.5, 0.25, False))
            self.assertEqual(set(r.params), {"a", "b"})
            for name in g:
                self.assertEqual(bits(r.params[name]), bits(g[name] * 2))
            # The part that completes need not be the last one sent.
            server.answer = lambda req: fake_reply(req, complete_at=1)
            r = c.step(session, g, seq=3, part_elements=4)
            self.assertEqual(r.steps, 8)
            # No part complete: the replies do not add up.
            server.answer = lambda req: fake_reply(req, complete_at=99)
            with self.assertRaises(optimd.ProtocolError):
                c.step(session, g, seq=3, part_elements=4)
            # An error in part 1 of 5 with 2 in flight: parts 0-2 were sent
            # (2 before part 1's reply came), nothing after; the error is raised.
            server.requests.clear()
            server.answer = lambda req: fake_reply(req, fail={1: (26, "STEP_PENDING")})
            with self.assertRaises(optimd.StepPendingError):
                c.step(session, g, seq=3, part_elements=4, parts_in_flight=2)
            self.assertEqual([msgpack.unpackb(q)["part"]["index"] for q in server.requests], [0, 1, 2])
            server.requests.clear()
            with self.assertRaises(optimd.StepPendingError):
                c.step(session, g, seq=3, part_elements=4, parts_in_flight=1)
            self.assertEqual(len(server.requests), 2)
            # return_params=False: no params.
            server.answer = fake_reply
            self.assertEqual(c.step(session, g, seq=3, part_elements=4, return_params=False).params, {})
            # step_part: ranges and whole tensors, the reply as ranges.
            part = c.step_part(session, {"a": (3, g["a"].reshape(-1)[3:6]), "b": g["b"]}, index=0,
                               count=2, seq=1, client="z")
            self.assertEqual((part.complete, part.parts, part.steps), (False, 1, 7))
            self.assertEqual(part.params["a"][0], 3)
            self.assertEqual(part.params["a"][1].tolist(), [6.0, 8.0, 10.0])
            self.assertEqual(part.params["b"][0], 0)
            self.assertEqual(part.params["b"][1].tolist(), (g["b"] * 2).tolist())

    def test_unpack_views_reads_what_msgpack_reads(self) -> None:
        # The sliced step's replies are unpacked by wire.unpack_views, large
        # bins as views of the message: every msgpack form, against msgpack.
        values: list[Any] = [
            0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33, -128, -129,
            -2**15, -2**15 - 1, -2**31, -2**31 - 1, -2**63, 0.5, -1e300, float("inf"), "", "a" * 31, "a" * 32,
            "é" * 200, "x" * 70_000, b"", b"ab", b"q" * 300, b"z" * 70_000, None, True, False, [], [1] * 15,
            [1] * 16, list(range(70_000)), {}, {"a": 1}, {str(i): i for i in range(16)},
            {str(i): i for i in range(70_000)}, {"nested": [{"x": [None, 2.5]}], b"k": 1},
            {"params": {"w": {"offset": 3, "values": {"dtype": "f32", "shape": [20_000],
                                                      "data": np.ones(20_000, np.float32).tobytes()}}}},
        ]

        def plain(x: Any) -> Any:
            if isinstance(x, memoryview):
                self.assertGreaterEqual(x.nbytes, wire.LARGE_BIN)
                return bytes(x)
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            if isinstance(x, list):
                return [plain(v) for v in x]
            if isinstance(x, bytes):
                self.assertLess(len(x), wire.LARGE_BIN)
            return x

        for value in values:
            for single in (False, True):
                packed = msgpack.packb(value, use_bin_type=True, use_single_float=single)
                with self.subTest(value=repr(value)[:40], single=single):
                    self.assertEqual(plain(wire.unpack_views(packed)), msgpack.unpackb(packed, raw=False))
        packed = msgpack.packb(values[-1], use_bin_type=True)
        data = wire.unpack_views(packed)["params"]["w"]["values"]["data"]
        self.assertIsInstance(data, memoryview)
        self.assertEqual(bytes(data), np.ones(20_000, np.float32).tobytes())
        for cut in range(len(packed) - 10, len(packed)):
            with self.assertRaises(optimd.ProtocolError):
                wire.unpack_views(packed[:cut])
        for bad in (b"", b"\xc1", b"\x81\xa1a", msgpack.packb(1) + b"\x00", b"\xd4\x00\x00",
                    b"\x81\x90\x01", b"\xa2\xff\xfe", b"\xcb\x00", msgpack.packb({1: 2})):
            with self.subTest(bad=bad), self.assertRaises(optimd.ProtocolError):
                wire.unpack_views(bad)
        # check_reply: what decode_reply checks, on an unpacked reply.
        with self.assertRaises(optimd.StepPendingError):
            wire.check_reply(wire.unpack_views(msgpack.packb(
                {"v": 1, "id": 4, "ok": False, "code": 26, "error": "STEP_PENDING", "message": "m"})), 4)
        with self.assertRaises(optimd.ProtocolError):
            wire.check_reply(wire.unpack_views(msgpack.packb({"v": 1, "id": 5, "ok": True})), 4)

    def test_step_pending_error_class(self) -> None:
        self.assertIs(optimd.ERROR_CLASSES[26], optimd.StepPendingError)
        err = optimd.errors.error_from_reply(26, "STEP_PENDING", "pending", 3)
        self.assertIsInstance(err, optimd.StepPendingError)
        self.assertIsInstance(err, optimd.OptimdError)
        self.assertIn("STEP_PENDING", optimd.StepPendingError.__doc__ or "")


if __name__ == "__main__":
    unittest.main(verbosity=2)
