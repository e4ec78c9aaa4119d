"""The optimizers beyond torch 1.13 minimize two problems through the real
daemon: Rosenbrock's function from (-1.2, 1) (minimum 0 at (1, 1)), and a
least-squares fit of a 12x6 matrix and a bias to exact linear data (minimum
0). Gradients are computed here from the parameters the daemon returns,
so the whole loop (wire, session, plugin) has to work for the loss to fall.

Each optimizer gets hyperparameters and a step budget that suit it (some
with the daemon's cosine scheduler to anneal lr); CASES lists them with the
final loss each must reach: 1e-3, at least 10x above every loss measured
(printed by the test; most land below 1e-5), and far below the starting losses
(Rosenbrock 24.2, least squares about 30). schedule_free_adamw is judged at
x, its averaged iterate, read with the `state` op. muon's Rosenbrock
parameter is a vector, so it runs muon's AdamW fallback; the least-squares
matrix runs Newton-Schulz and the bias the fallback.
"""

from __future__ import annotations

import os
import sys
import unittest
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.environ["OPTIMD_SOURCE_DIR"], "tests", "python"))

import optimd  # noqa: E402
from optimd.wire import decode_tensor  # noqa: E402
from support import DaemonTestCase  # noqa: E402


def rosenbrock(params: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    x, y = params["xy"]
    loss = (1 - x) ** 2 + 100 * (y - x * x) ** 2
    grad = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
    return float(loss), {"xy": grad}


_rng = np.random.default_rng(7)
LS_A = _rng.standard_normal((48, 12))
LS_W = _rng.standard_normal((12, 6))
LS_B = _rng.standard_normal(6)
LS_Y = LS_A @ LS_W + LS_B


def least_squares(params: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    r = LS_A @ params["w"] + params["b"] - LS_Y
    n = r.size
    return float(np.sum(r * r) / n), {"w": 2 / n * LS_A.T @ r, "b": 2 / n * r.sum(axis=0)}


PROBLEMS = {
    "rosenbrock": (rosenbrock, {"xy": np.array([-1.2, 1.0])}),
    "least_squares": (least_squares, {"w": np.zeros((12, 6)), "b": np.zeros(6)}),
}

COSINE = "cosine"

# (optimizer, problem): (hyperparameters, steps, scheduler hparams or None,
# final loss to beat).
CASES: dict[tuple[str, str], tuple[dict[str, Any], int, dict[str, Any] | None, float]] = {
    ("lamb", "rosenbrock"): ({"lr": 0.03, "beta2": 0.99, "weight_decay": 0.0}, 3000,
                             {"T_max": 3000}, 1e-3),
    ("lamb", "least_squares"): ({"lr": 0.05, "weight_decay": 0.0}, 1500, {"T_max": 1500}, 1e-3),
    ("lars", "rosenbrock"): ({"lr": 1e-3, "momentum": 0.9}, 3000, None, 1e-3),
    ("lars", "least_squares"): ({"lr": 0.05, "momentum": 0.9}, 1500, None, 1e-3),
    ("adafactor", "rosenbrock"): ({"relative_step": False, "scale_parameter": False,
                                   "lr": 0.02, "use_momentum": True, "beta1": 0.9}, 3000,
                                  {"T_max": 3000}, 1e-3),
    ("adafactor", "least_squares"): ({}, 1500, None, 1e-3),
    ("schedule_free_adamw", "rosenbrock"): ({"lr": 0.1}, 3000, None, 1e-3),
    ("schedule_free_adamw", "least_squares"): ({"lr": 0.05}, 1500, None, 1e-3),
    ("muon", "rosenbrock"): ({"adamw_lr": 0.02, "adamw_beta2": 0.999}, 3000,
                             {"T_max": 3000}, 1e-3),
    ("muon", "least_squares"): ({"lr": 0.05, "adamw_lr": 0.05}, 1500, {"T_max": 1500}, 1e-3),
    ("lion", "rosenbrock"): ({"lr": 3e-3}, 3000, {"T_max": 3000}, 1e-3),
    ("lion", "least_squares"): ({"lr": 0.01}, 1500, {"T_max": 1500}, 1e-3),
    ("adan", "rosenbrock"): ({"lr": 0.02}, 3000, {"T_max": 3000}, 1e-3),
    ("adan", "least_squares"): ({"lr": 0.05}, 1500, {"T_max": 1500}, 1e-3),
    ("ademamix", "rosenbrock"): ({"lr": 0.05, "beta3": 0.99}, 3000, {"T_max": 3000}, 1e-3),
    ("ademamix", "least_squares"): ({"lr": 0.05, "beta3": 0.999}, 1500, {"T_max": 1500}, 1e-3),
}


class Converge(DaemonTestCase):
    measured: dict[tuple[str, str], float] = {}

    @classmethod
    def tearDownClass(cls) -> None:
        for (opt, problem), loss in sorted(cls.measured.items()):
            print(f"measured {opt} {problem}: final loss {loss:.3g} "
                  f"(threshold {CASES[(opt, problem)][3]:g})", file=sys.stderr)
        super().tearDownClass()

    def run_case(self, opt: str, problem: str) -> None:
        hparams, steps, sched, threshold = CASES[(opt, problem)]
        fn, init = PROBLEMS[problem]
        with optimd.Client(self.daemon.url) as client:
            session = client.open(f"{opt}-{problem}", opt, hparams,
                                  scheduler=COSINE if sched else None, sched_hparams=sched)
            try:
                client.register(session, init)
                params = {k: v.copy() for k, v in init.items()}
                start, _ = fn(params)
                for _ in range(steps):
                    _, grads = fn(params)
                    params = {k: np.asarray(v) for k, v in client.step(session, grads).params.items()}
                if opt == "schedule_free_adamw":
                    state = client.request("state", session=session.name,
                                           token=session.token)["state"]
                    params = {k: decode_tensor(state[k]["x"]) for k in params}
                loss, _ = fn(params)
            finally:
                client.close_session(session)
        self.measured[(opt, problem)] = loss
        self.assertTrue(np.isfinite(loss), f"{opt} on {problem}: loss {loss}")
        self.assertLess(loss, threshold, f"{opt} on {problem}: loss {start:.3g} -> {loss:.3g}")


def _add_tests() -> None:
    for opt, problem in CASES:
        def test(self: Converge, opt: str = opt, problem: str = problem) -> None:
            self.run_case(opt, problem)
        setattr(Converge, f"test_{opt}_{problem}", test)


_add_tests()

if __name__ == "__main__":
    unittest.main(verbosity=2)
