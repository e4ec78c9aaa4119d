"""examples/lr_range.py against a real daemon: the PNG, the lr sweep the
test drove (exponential from start to end), and a suggestion inside it."""

from __future__ import annotations

import math
import unittest

from example_support import ExampleTestCase

START, END, STEPS = 1e-4, 10.0, 40


class LRRange(ExampleTestCase):
    def check_sweep(self, r: dict) -> None:
        lrs, losses = r["lrs"], r["losses"]
        self.assertGreaterEqual(len(lrs), 3)
        self.assertLessEqual(len(lrs), STEPS)
        self.assertEqual(len(losses), len(lrs))
        self.assertEqual(len(lrs) < STEPS, r["stopped_early"])
        for k, lr in enumerate(lrs):
            self.assertAlmostEqual(math.log(lr), math.log(START) + k / (STEPS - 1) * math.log(END / START),
                                   places=9)
        # Training happened: some step had a lower loss than the first one.
        self.assertLess(min(v for v in losses if v is not None), losses[0])
        s = r["suggestion"]
        self.assertIsNotNone(s)
        self.assertTrue(START <= s <= END, s)
        self.assertIn(s, lrs)

    def test_adam(self) -> None:
        stdout, r = self.run_example("lr_range.py", "--steps", str(STEPS), "--start-lr", str(START),
                                     "--end-lr", str(END), "--points", "50")
        self.assert_png("lr_range.png")
        self.assertEqual(r["optimizer"], "adam")
        self.check_sweep(r)
        self.assertIn(f"suggested lr: {r['suggestion']:.4g}", stdout)

    def test_sgd_with_settings(self) -> None:
        _, r = self.run_example("lr_range.py", "--steps", str(STEPS), "--start-lr", str(START),
                                "--end-lr", str(END), "--points", "50", "--optimizer", "sgd",
                                "--set", "momentum=0.9", "--set", "nesterov=true")
        self.assert_png("lr_range.png")
        self.assertEqual(r["hparams"], {"momentum": 0.9, "nesterov": True})
        self.check_sweep(r)

    def test_refuses_lr_and_unknown_keys(self) -> None:
        out, _ = self.run_example("lr_range.py", "--set", "lr=0.1", expect_rc=2)
        self.assertIn("--start-lr", out)
        out, _ = self.run_example("lr_range.py", "--set", "momentum=0.9", expect_rc=1)
        self.assertIn("adam has no hyperparameter 'momentum'", out)


if __name__ == "__main__":
    unittest.main()
