"""examples/schedule_plot.py against a real daemon: the PNG, and the lrs it
reports are torch's own schedulers' (StepLR, CosineAnnealingLR), bit for bit."""

from __future__ import annotations

import unittest
from typing import Callable

import torch

from example_support import ExampleTestCase

BASE_LR = 0.1


def torch_lrs(make: Callable[[torch.optim.Optimizer], object], steps: int) -> list[float]:
    """The lr after construction and after each of ``steps`` steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    sched = make(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()  # type: ignore[attr-defined]
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


class SchedulePlot(ExampleTestCase):
    def check(self, scheduler: str, sets: list[str], steps: int, want: list[float]) -> None:
        args = ["--scheduler", scheduler, "--steps", str(steps), "--base-lr", str(BASE_LR)]
        for s in sets:
            args += ["--sched-set", s]
        stdout, r = self.run_example("schedule_plot.py", *args)
        self.assert_png(f"schedule_{scheduler}.png")
        self.assertEqual(len(r["lrs"]), steps + 1)
        for k, (got, exp) in enumerate(zip(r["lrs"], want)):
            self.assertEqual(got, exp, msg=f"lr after step {k}")
        self.assertEqual(len(stdout.splitlines()), steps + 1)

    def test_step(self) -> None:
        want = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 10)
        self.assertLess(want[-1], want[0])  # the case does decay
        self.check("step", ["step_size=3", "gamma=0.5"], 10, want)

    def test_cosine(self) -> None:
        # Past T_max, torch's recursive form climbs back up: covered too.
        want = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=0.01), 12)
        self.check("cosine", ["T_max=8", "eta_min=0.01"], 12, want)

    def test_bad_settings(self) -> None:
        out, _ = self.run_example("schedule_plot.py", "--scheduler", "step", "--sched-set", "step_size=x",
                                  "--steps", "3", expect_rc=1)
        self.assertIn("step_size takes int values", out)
        out, _ = self.run_example("schedule_plot.py", "--scheduler", "no-such-scheduler", "--steps", "3",
                                  expect_rc=1)
        self.assertIn("no plugin 'no-such-scheduler'", out)


if __name__ == "__main__":
    unittest.main()
