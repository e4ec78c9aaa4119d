"""examples/optimizer_race.py against a real daemon: both PNGs, and the
trajectories it reports are the optimizers' (the SGD family recomputed here
from the update rules, every loss recomputed from its point)."""

from __future__ import annotations

import math
import unittest

import numpy as np

from example_support import ExampleTestCase

LABELS = ["SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW"]
STEPS = 150
START = (-1.5, 2.0)


def grad(x: float, y: float) -> np.ndarray:
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


def sgd_trajectory(start: tuple[float, float], steps: int, lr: float, momentum: float = 0.0,
                   nesterov: bool = False) -> np.ndarray:
    """torch.optim.SGD's rule (dampening 0): the first step's buffer is the
    gradient itself."""
    p = np.array(start, dtype=np.float64)
    out = [p.copy()]
    buf = None
    for _ in range(steps):
        g = grad(*p)
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p.copy())
    return np.array(out)


def f(p: list[float]) -> float:
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


class OptimizerRace(ExampleTestCase):
    def test_race(self) -> None:
        stdout, r = self.run_example("optimizer_race.py", "--steps", str(STEPS),
                                     "--start", str(START[0]), str(START[1]))
        self.assert_png("rosenbrock_trajectories.png")
        self.assert_png("rosenbrock_loss.png")
        self.assertEqual(list(r["trajectories"]), LABELS)
        for label in LABELS:
            with self.subTest(label):
                t = r["trajectories"][label]
                self.assertEqual(len(t), STEPS + 1)
                self.assertEqual(t[0], list(START))
                self.assertTrue(all(math.isfinite(v) for p in t for v in p))
                self.assertEqual(r["losses"][label], [f(p) for p in t])
                self.assertIn(label, stdout)

        # The daemon ran the hyperparameters the script names: its SGD,
        # momentum and Nesterov paths are the update rules' to rounding.
        for label, kwargs in [("SGD", {}), ("Momentum", {"momentum": 0.9}),
                              ("Nesterov", {"momentum": 0.9, "nesterov": True})]:
            with self.subTest(label):
                hp = r["contenders"][label]["hparams"]
                self.assertEqual({k: v for k, v in hp.items() if k != "lr"}, kwargs)
                want = sgd_trajectory(START, STEPS, hp["lr"], **kwargs)
                got = np.array(r["trajectories"][label])
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        # Momentum and Nesterov differ from each other and from plain SGD.
        self.assertNotEqual(r["trajectories"]["Momentum"][5], r["trajectories"]["Nesterov"][5])

        # Adam (the headline of the race) gets closer to the minimum (1, 1).
        def distance(p: list[float]) -> float:
            return math.hypot(p[0] - 1.0, p[1] - 1.0)

        adam = r["trajectories"]["Adam"]
        self.assertLess(distance(adam[-1]), distance(adam[0]))
        self.assertLess(r["losses"]["Adam"][-1], r["losses"]["Adam"][0])

    def test_subset_and_bad_name(self) -> None:
        _, r = self.run_example("optimizer_race.py", "--steps", "3", "--optimizers", "adam", "SGD")
        self.assertEqual(list(r["trajectories"]), ["Adam", "SGD"])
        self.assert_png("rosenbrock_loss.png")
        out, _ = self.run_example("optimizer_race.py", "--optimizers", "lbfgs", expect_rc=1)
        self.assertIn("unknown optimizer(s) lbfgs", out)


if __name__ == "__main__":
    unittest.main()
