"""optimd.lr_range_test on a RemoteOptimizer: the lr schedule it drives, the
losses (bit-identical to the same test on torch.optim.SGD), early stop on
divergence, and the plot when matplotlib is there."""

from __future__ import annotations

import math
import os
import tempfile
import unittest
from typing import Any, Callable

import torch

import optimd
from optimd.torch import RemoteOptimizer

from support import DaemonTestCase


def problem(seed: int = 0) -> tuple[torch.nn.Module, Callable[[torch.optim.Optimizer], Callable[[], Any]]]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)

    def closure_for(opt: torch.optim.Optimizer) -> Callable[[], Any]:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        return closure

    return model, closure_for


class LRRange(DaemonTestCase):
    def remote(self, model: torch.nn.Module, **kwargs: Any) -> RemoteOptimizer:
        opt = RemoteOptimizer(model.parameters(), "sgd", server=self.daemon.url, **kwargs)
        self.addCleanup(opt.close)
        self.addCleanup(opt.delete_sessions)
        return opt

    def test_same_as_on_torch(self) -> None:
        ours, closure_o = problem()
        theirs, closure_t = problem()
        opt_o = self.remote(ours, lr=0.1, momentum=0.5)
        opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.5, foreach=False)
        a = optimd.lr_range_test(opt_o, closure_o(opt_o), start_lr=1e-4, end_lr=1.0, steps=25, diverge=1e9)
        b = optimd.lr_range_test(opt_t, closure_t(opt_t), start_lr=1e-4, end_lr=1.0, steps=25, diverge=1e9)
        self.assertEqual(len(a.lrs), 25)
        for k, lr in enumerate(a.lrs):
            self.assertAlmostEqual(math.log10(lr), -4 + 4 * k / 24, places=12)
        self.assertEqual((a.lrs[0], a.lrs[-1]), (1e-4, 1.0))
        self.assertEqual(a.lrs, b.lrs)
        self.assertEqual(a.losses, b.losses)  # the daemon took exactly those lrs
        self.assertFalse(a.stopped_early)
        self.assertIn(a.suggestion, a.lrs)
        # The smoothed curve is the bias-corrected moving average of the losses.
        avg = 0.0
        for k, (loss, s) in enumerate(zip(a.losses, a.smoothed)):
            avg = 0.98 * avg + 0.02 * loss
            self.assertAlmostEqual(s, avg / (1 - 0.98 ** (k + 1)), places=12)
        self.assertEqual(opt_o.client.info(opt_o.sessions[0]).steps, 25)

    def test_stops_when_the_loss_diverges(self) -> None:
        model, closure_for = problem()
        opt = self.remote(model, lr=0.1)
        r = optimd.lr_range_test(opt, closure_for(opt), start_lr=1e-3, end_lr=1e4, steps=60, beta=0.0)
        self.assertTrue(r.stopped_early)
        self.assertLess(len(r.lrs), 60)
        last = r.losses[-1]
        self.assertTrue(not math.isfinite(last) or last > 4.0 * min(r.losses[:-1]))
        with self.assertRaises(ValueError):
            optimd.lr_range_test(opt, closure_for(opt), start_lr=1.0, end_lr=0.1)

    def test_plot(self) -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("matplotlib is not installed")
        model, closure_for = problem()
        opt = self.remote(model, lr=0.1)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "lr.png")
            optimd.lr_range_test(opt, closure_for(opt), start_lr=1e-4, end_lr=1.0, steps=10, plot=path)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
