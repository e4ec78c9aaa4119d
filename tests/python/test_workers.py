"""Sessions with workers against the real daemon (docs/protocol.md, Workers):
sync rounds bit-identical to one worker stepping with the mean, timeouts
that fail or proceed, async staleness, the bounded-staleness bound, and
membership that survives export/import and a restart."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from support import Daemon, DaemonTestCase  # noqa: E402

import optimd  # noqa: E402
from optimd.wire import encode_tensor  # noqa: E402


def run_concurrently(calls):
    """Runs each call on its own thread and client; returns results (or the
    exception raised) in the order given."""
    out: list = [None] * len(calls)

    def run(i):
        try:
            out[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def rank_order_mean(grads: list[np.ndarray]) -> torch.Tensor:
    """The sync round's combination as documented: summed in rank order, in
    the dtype, then divided by the number of pushes."""
    total = torch.from_numpy(grads[0].copy())
    for g in grads[1:]:
        total = total + torch.from_numpy(g)
    return total / len(grads)


class SyncTest(DaemonTestCase):
    def setUp(self) -> None:
        self.c = optimd.Client(self.daemon.url, timeout=30)
        self.clients = [optimd.Client(self.daemon.url, timeout=30) for _ in range(4)]

    def tearDown(self) -> None:
        for cl in [self.c, *self.clients]:
            cl.close()

    def open_sync(self, name, count=4, optimizer="adamw", hparams=None, **workers):
        s = self.c.open(name, optimizer, hparams or {"lr": 0.01, "weight_decay": 0.1},
                        workers=optimd.Workers("sync", count=count, **workers))
        for i in range(count):
            self.assertEqual(self.c.join(s, f"w{i}").rank, i)
        return s

    def test_four_workers_match_one_worker_with_the_mean(self):
        rng = np.random.default_rng(7)
        a = rng.standard_normal((37, 11)).astype(np.float32)
        b = rng.standard_normal(1001).astype(np.float64)
        s = self.open_sync("sync-mean")
        self.c.register(s, {"a": a, "b": b})
        ta, tb = torch.nn.Parameter(torch.from_numpy(a.copy())), torch.nn.Parameter(torch.from_numpy(b.copy()))
        opt = torch.optim.AdamW([ta, tb], lr=0.01, weight_decay=0.1)
        orders = [(3, 1, 0, 2), (0, 1, 2, 3), (2, 3, 1, 0), (1, 0, 3, 2), (3, 2, 1, 0)]
        for step, order in enumerate(orders, 1):
            ga = [rng.standard_normal(a.shape).astype(np.float32) for _ in range(4)]
            gb = [rng.standard_normal(b.shape) for _ in range(4)]
            # Pushes arrive in a different order each round; the sum is in rank order.
            calls = [lambda i=i: self.clients[i].step(s, {"a": ga[i], "b": gb[i]}, worker=f"w{i}")
                     for i in order]
            results = dict(zip(order, run_concurrently(calls)))
            ta.grad, tb.grad = rank_order_mean(ga), rank_order_mean(gb)
            opt.step()
            for i in range(4):
                r = results[i]
                self.assertIsInstance(r, optimd.StepResult, r)
                self.assertEqual((r.steps, r.combined, r.worker, r.pushes), (step, 4, f"w{i}", step))
                np.testing.assert_array_equal(r.params["a"], ta.detach().numpy())
                np.testing.assert_array_equal(r.params["b"], tb.detach().numpy())
        self.assertEqual(self.c.info(s).steps, len(orders))

    def test_sum_reduction(self):
        p = np.linspace(-1, 1, 64, dtype=np.float32)
        s = self.open_sync("sync-sum", count=3, optimizer="sgd", hparams={"lr": 0.5}, reduce="sum")
        self.c.register(s, {"p": p})
        grads = [np.full(64, v, dtype=np.float32) for v in (0.25, 0.5, 1.0)]
        results = run_concurrently([lambda i=i: self.clients[i].step(s, {"p": grads[i]}, worker=f"w{i}")
                                    for i in range(3)])
        expected = p - np.float32(0.5) * ((grads[0] + grads[1]) + grads[2])
        for r in results:
            np.testing.assert_array_equal(r.params["p"], expected)

    def test_timeout_fails_the_round_and_changes_nothing(self):
        p = np.arange(8, dtype=np.float32)
        s = self.open_sync("sync-timeout", count=3, timeout_ms=300)
        self.c.register(s, {"p": p})
        g = np.ones(8, dtype=np.float32)
        results = run_concurrently([lambda i=i: self.clients[i].step(s, {"p": g}, worker=f"w{i}") for i in range(2)])
        for r in results:
            self.assertIsInstance(r, optimd.WorkerTimeoutError)
            self.assertIn("missing: w2", str(r))
        info = self.c.info(s)
        self.assertEqual((info.steps, info.workers.round_pushes), (0, 0))
        np.testing.assert_array_equal(self.c.pull(s)["p"], p)
        self.assertEqual(self.c.state(s)["p"], {})
        # The next round starts clean and completes.
        results = run_concurrently([lambda i=i: self.clients[i].step(s, {"p": g}, worker=f"w{i}") for i in range(3)])
        self.assertEqual([r.steps for r in results], [1, 1, 1])

    def test_timeout_proceeds_with_the_workers_present(self):
        rng = np.random.default_rng(3)
        p = rng.standard_normal(100).astype(np.float32)
        s = self.open_sync("sync-proceed", count=4, timeout_ms=300, on_timeout="proceed")
        self.c.register(s, {"p": p})
        grads = [rng.standard_normal(100).astype(np.float32) for _ in range(4)]
        present = (0, 2, 3)
        results = run_concurrently([lambda i=i: self.clients[i].step(s, {"p": grads[i]}, worker=f"w{i}")
                                    for i in present])
        t = torch.nn.Parameter(torch.from_numpy(p.copy()))
        opt = torch.optim.AdamW([t], lr=0.01, weight_decay=0.1)
        t.grad = rank_order_mean([grads[i] for i in present])
        opt.step()
        for r in results:
            self.assertIsInstance(r, optimd.StepResult, r)
            self.assertEqual((r.steps, r.combined), (1, 3))
            np.testing.assert_array_equal(r.params["p"], t.detach().numpy())

    def test_bad_pushes_are_refused_and_not_counted(self):
        p = np.zeros(4, dtype=np.float32)
        q = np.zeros(3, dtype=np.float32)
        s = self.open_sync("sync-bad", count=2, timeout_ms=20000)
        self.c.register(s, {"p": p, "q": q})
        g = np.ones(4, dtype=np.float32)
        with self.assertRaises(optimd.BadRequestError):
            self.c.step(s, {"p": g})                      # no worker named
        with self.assertRaises(optimd.UnknownWorkerError):
            self.c.step(s, {"p": g}, worker="nobody")
        with self.assertRaises(optimd.NonfiniteError):
            self.c.step(s, {"p": np.array([1, np.nan, 0, 0], dtype=np.float32)}, worker="w0")
        with self.assertRaises(optimd.BadTensorError):
            self.c.step(s, {"p": np.ones(5, dtype=np.float32)}, worker="w0")
        with self.assertRaises(optimd.BadRequestError):
            self.c.request("step", session=s.name, token=s.token, worker="w0",
                           grads={"p": {"rows": [1], "values": encode_tensor(np.ones(1, dtype=np.float32))}})
        self.assertEqual(self.c.info(s).workers.round_pushes, 0)
        # w0's push waits; a second push of w0, and one naming other
        # parameters, are refused while it does.
        waiting = run_concurrently([lambda: self.clients[0].step(s, {"p": g}, worker="w0"),
                                    lambda: self._after_round_has(s, 1, lambda: self._refusals(s, g))])
        self.assertIsInstance(waiting[1], list, waiting[1])
        self.assertEqual(waiting[1], ["BadRequestError", "BadRequestError"])
        self.assertIsInstance(waiting[0], optimd.StepResult, waiting[0])
        self.assertEqual(waiting[0].combined, 2)
        np.testing.assert_array_equal(waiting[0].params["p"], -0.01 * np.ones(4, dtype=np.float32))

    def _after_round_has(self, s, pushes, then):
        deadline = time.monotonic() + 10
        while self.c.info(s).workers.round_pushes < pushes:
            if time.monotonic() > deadline:
                raise AssertionError("the round never got its push")
            time.sleep(0.01)
        return then()

    def _refusals(self, s, g):
        names = []
        for push in (lambda: self.clients[1].step(s, {"p": g}, worker="w0"),
                     lambda: self.clients[1].step(s, {"q": np.ones(3, dtype=np.float32)}, worker="w1")):
            try:
                push()
                names.append("accepted")
            except optimd.OptimdError as e:
                names.append(type(e).__name__)
        # Now complete the round as w1.
        self.clients[1].step(s, {"p": g}, worker="w1")
        return names

    def test_sequenced_pushes_are_applied_once(self):
        p = np.zeros(4, dtype=np.float32)
        g = np.ones(4, dtype=np.float32)
        s = self.open_sync("sync-seq", count=2, optimizer="sgd", hparams={"lr": 0.5}, timeout_ms=20000)
        self.c.register(s, {"p": p})
        # w0's push waits; the same push sent again (its first connection gave
        # up) takes its place, and the round applies it once.
        out = run_concurrently([
            lambda: self.clients[0].step(s, {"p": g}, worker="w0", seq=1, client="c0"),
            lambda: self._after_round_has(s, 1, lambda: run_concurrently([
                lambda: self.clients[1].step(s, {"p": g}, worker="w0", seq=1, client="c0"),
                lambda: self._after_round_has(s, 1, lambda: time.sleep(0.2) or
                                              self.clients[2].step(s, {"p": 3 * g}, worker="w1", seq=1, client="c1")),
            ]))])
        self.assertIsInstance(out[0], optimd.BadRequestError, out[0])
        self.assertIn("sent again", str(out[0]))
        retried, other = out[1]
        self.assertIsInstance(retried, optimd.StepResult, retried)
        expected = p - 0.5 * ((g + 3 * g) / 2)
        np.testing.assert_array_equal(retried.params["p"], expected)
        np.testing.assert_array_equal(other.params["p"], expected)
        # A retry after the round was applied is answered, not applied again.
        again = self.c.step(s, {"p": g}, worker="w0", seq=1, client="c0")
        self.assertTrue(again.duplicate)
        self.assertEqual(again.steps, 1)
        np.testing.assert_array_equal(again.params["p"], expected)
        self.assertEqual(self.c.info(s, client="c1").client_seq, 1)

    def test_leave_and_close_answer_waiting_pushes(self):
        p = np.zeros(4, dtype=np.float32)
        g = np.ones(4, dtype=np.float32)
        s = self.open_sync("sync-leave", count=2, timeout_ms=20000)
        self.c.register(s, {"p": p})
        out = run_concurrently([lambda: self.clients[0].step(s, {"p": g}, worker="w0"),
                                lambda: self._after_round_has(s, 1, lambda: self.c.leave(s, "w0"))])
        self.assertIsInstance(out[0], optimd.UnknownWorkerError, out[0])
        self.assertIsNone(out[1].rank)
        self.assertEqual([m.name for m in out[1].workers.members], ["w1"])
        self.assertEqual(self.c.join(s, "late").rank, 0)   # the lowest free rank
        out = run_concurrently([lambda: self.clients[0].step(s, {"p": g}, worker="late"),
                                lambda: self._after_round_has(s, 1, lambda: self.c.close_session(s))])
        self.assertIsInstance(out[0], optimd.UnknownSessionError, out[0])


class AsyncBoundedTest(DaemonTestCase):
    def setUp(self) -> None:
        self.c = optimd.Client(self.daemon.url, timeout=30)

    def tearDown(self) -> None:
        self.c.close()

    def test_async_reports_staleness(self):
        s = self.c.open("async", "sgd", {"lr": 0.1}, workers=optimd.Workers("async"))
        self.c.register(s, {"p": np.zeros(3, dtype=np.float32)})
        self.c.join(s, "a")
        self.c.join(s, "b")
        g = np.ones(3, dtype=np.float32)
        seen = [(w, self.c.step(s, {"p": g}, worker=w).staleness) for w in ("a", "b", "b", "b", "a", "a")]
        # a saw step 0, then three of b's; b saw step 1 (a's first) at its first push.
        self.assertEqual(seen, [("a", 0), ("b", 1), ("b", 0), ("b", 0), ("a", 3), ("a", 0)])
        self.c.step(s, {"p": g}, worker="b")
        self.c.pull(s, worker="a")             # a is fresh again
        self.assertEqual(self.c.step(s, {"p": g}, worker="a").staleness, 0)
        # Without the parameters in the reply, the worker has not seen the step.
        self.c.step(s, {"p": g}, worker="a", return_params=False)
        self.assertEqual(self.c.step(s, {"p": g}, worker="a").staleness, 1)
        members = {m.name: m for m in self.c.info(s).workers.members}
        self.assertEqual((members["a"].pushes, members["b"].pushes), (6, 4))
        np.testing.assert_allclose(self.c.pull(s)["p"], np.full(3, -1.0, dtype=np.float32), rtol=1e-6)

    def test_bounded_keeps_the_bound(self):
        bound = 2
        s = self.c.open("bounded", "sgd", {"lr": 0.01},
                        workers=optimd.Workers("bounded", max_staleness=bound, timeout_ms=20000))
        self.c.register(s, {"p": np.zeros(16, dtype=np.float32)})
        self.c.join(s, "fast")
        self.c.join(s, "slow")
        g = np.ones(16, dtype=np.float32)
        log: list[tuple[str, int, int, bool]] = []
        lock = threading.Lock()

        def worker(name, pause, n):
            cl = optimd.Client(self.daemon.url, timeout=30)
            try:
                for _ in range(n):
                    r = cl.step(s, {"p": g}, worker=name)
                    with lock:
                        log.append((name, r.pushes, r.lead, r.waited))
                    time.sleep(pause)
            finally:
                cl.close()

        out = run_concurrently([lambda: worker("fast", 0, 12), lambda: worker("slow", 0.03, 12)])
        self.assertEqual(out, [None, None])
        self.assertEqual(len(log), 24)
        # Every push was admitted at most `bound` pushes ahead of the slowest,
        # and the fast worker had to wait for it.
        self.assertTrue(all(lead <= bound for _, _, lead, _ in log), log)
        self.assertTrue(any(waited for name, _, _, waited in log if name == "fast"), log)
        # Each worker's pushes count up one by one: no push was lost or doubled.
        for name in ("fast", "slow"):
            self.assertEqual([p for n, p, _, _ in log if n == name], list(range(1, 13)))
        self.assertEqual(self.c.info(s).steps, 24)

    def test_bounded_wait_times_out_without_applying(self):
        s = self.c.open("bounded-timeout", "sgd", {"lr": 0.1},
                        workers=optimd.Workers("bounded", max_staleness=0, timeout_ms=300))
        self.c.register(s, {"p": np.zeros(2, dtype=np.float32)})
        self.c.join(s, "a")
        self.c.join(s, "b")
        g = np.ones(2, dtype=np.float32)
        self.c.step(s, {"p": g}, worker="a")
        with self.assertRaises(optimd.WorkerTimeoutError) as caught:
            self.c.step(s, {"p": g}, worker="a")
        self.assertIn("worker 'b'", str(caught.exception))
        self.assertEqual(self.c.info(s).steps, 1)
        # Once b leaves, a is the slowest and goes on.
        self.c.leave(s, "b")
        self.assertEqual(self.c.step(s, {"p": g}, worker="a").steps, 2)

    def test_bad_settings_are_refused(self):
        for workers in ({"mode": "lockstep"}, {"mode": "sync"}, {"mode": "sync", "count": 0},
                        {"mode": "async", "count": 2}, {"mode": "async", "timeout_ms": 5},
                        {"mode": "sync", "count": 2, "reduce": "max"}, {"mode": "bounded", "count": 2},
                        {"mode": "sync", "count": 2, "max_staleness": 1}, {"mode": "sync", "count": 1000},
                        {"mode": "sync", "count": 2, "color": "red"}):
            with self.subTest(workers=workers), self.assertRaises(optimd.BadRequestError):
                self.c.open("bad-workers", "sgd", {"lr": 0.1}, workers=workers)
        s = self.c.open("plain", "sgd", {"lr": 0.1})
        with self.assertRaises(optimd.BadRequestError):
            self.c.join(s, "a")


class ClusterWorkersTest(unittest.TestCase):
    def test_sync_workers_on_two_servers_match_one_server(self):
        daemons = [Daemon() for _ in range(3)]
        try:
            rng = np.random.default_rng(11)
            model = {f"w{i}": rng.standard_normal(50 + i).astype(np.float32) for i in range(24)}
            runs = {}
            for label, urls in (("two", [daemons[0].url, daemons[1].url]), ("one", [daemons[2].url])):
                clusters = [optimd.Cluster(urls, timeout=30) for _ in range(2)]
                s = clusters[0].open("c", "adamw", {"lr": 0.01}, workers=optimd.Workers("sync", count=2))
                clusters[0].register(s, model)
                clusters[0].join(s, "a")
                clusters[0].join(s, "b")
                grads = np.random.default_rng(5)
                for _ in range(4):
                    g = [{n: grads.standard_normal(v.shape).astype(np.float32) for n, v in model.items()}
                         for _ in range(2)]
                    out = run_concurrently([lambda i=i: clusters[i].step(s, g[i], worker="ab"[i]) for i in range(2)])
                    for r in out:
                        self.assertIsInstance(r, optimd.ClusterStepResult, r)
                    for n in model:
                        np.testing.assert_array_equal(out[0].params[n], out[1].params[n])
                runs[label] = clusters[0].pull(s)
                if label == "two":
                    placed = {clusters[0].placement(n) for n in model}
                    self.assertEqual(len(placed), 2, "the model should span both servers")
                for cl in clusters:
                    cl.close()
            for n in model:
                np.testing.assert_array_equal(runs["two"][n], runs["one"][n])
        finally:
            for d in daemons:
                self.assertEqual(d.stop(), 0)


class MembershipDurabilityTest(unittest.TestCase):
    def test_members_survive_restart_and_export(self):
        state = tempfile.mkdtemp(prefix="optimd-workers-")
        d = Daemon("--state-dir", state)
        try:
            c = optimd.Client(d.url, timeout=30)
            s = c.open("durable", "sgd", {"lr": 0.1}, durability="always",
                       workers=optimd.Workers("sync", count=3, timeout_ms=1234))
            for name in ("x", "y", "z"):
                c.join(s, name)
            c.leave(s, "y")
            # A sequenced round: its pushes' seqs are logged with it.
            c.register(s, {"p": np.zeros(2, dtype=np.float32)})
            g = np.ones(2, dtype=np.float32)
            self.assertEqual(c.join(s, "w").rank, 1)   # y's rank, free again
            out = run_concurrently([lambda w=w: optimd.Client(d.url, timeout=30).step(
                s, {"p": g}, worker=w, seq=7, client=f"client-{w}") for w in ("x", "z", "w", "y")])
            self.assertIsInstance(out[3], optimd.UnknownWorkerError)
            self.assertEqual([r.steps for r in out[:3]], [1, 1, 1])
            c.close()
        finally:
            # kill -9: the restart must replay the log (joins, leave, the round).
            d.proc.kill()
            d.proc.wait()
            d.stop()
        d = Daemon("--state-dir", state)
        try:
            c = optimd.Client(d.url, timeout=30)
            info = c.info(s).workers
            self.assertEqual(info.settings, optimd.Workers("sync", count=3, reduce="mean", timeout_ms=1234,
                                                           on_timeout="fail"))
            self.assertEqual([(m.name, m.rank) for m in info.members], [("x", 0), ("w", 1), ("z", 2)])
            retry = c.step(s, {"p": np.ones(2, dtype=np.float32)}, worker="x", seq=7, client="client-x")
            self.assertTrue(retry.duplicate)
            self.assertEqual(c.info(s).steps, 1)
            moved = c.import_session(c.export(s), session="moved")
            self.assertEqual([(m.name, m.rank) for m in c.info(moved.session).workers.members], [("x", 0), ("w", 1), ("z", 2)])
            c.close()
        finally:
            self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
