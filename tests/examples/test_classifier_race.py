"""examples/classifier_race.py against a real daemon: the PNG, every
optimizer lowers the loss, and the numbers are the training's (AdamW's loss
curve is the one torch.optim.AdamW gives on the same model and data)."""

from __future__ import annotations

import math
import os
import sys
import unittest

import torch

from example_support import EXAMPLES, ExampleTestCase

sys.path.insert(0, EXAMPLES)
import common  # noqa: E402  (examples/common.py: the same data and model)

LABELS = ["SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW"]
STEPS = 60
POINTS = 50


class ClassifierRace(ExampleTestCase):
    def test_race(self) -> None:
        stdout, r = self.run_example("classifier_race.py", "--steps", str(STEPS),
                                     "--points", str(POINTS))
        self.assert_png("classifier_loss.png")
        self.assertEqual(r["points"], 3 * POINTS)
        self.assertEqual(list(r["losses"]), LABELS)
        for label in LABELS:
            with self.subTest(label):
                losses = r["losses"][label]
                self.assertEqual(len(losses), STEPS + 1)
                self.assertTrue(all(math.isfinite(v) for v in losses))
                # Same initial weights for everyone: an untrained 3-class
                # net is near chance, cross-entropy about ln 3.
                self.assertEqual(losses[0], r["losses"]["SGD"][0])
                self.assertLess(abs(losses[0] - math.log(3)), 0.3)
                self.assertLess(losses[-1], losses[0])
                self.assertTrue(0.0 <= r["accuracy"][label] <= 1.0)
                self.assertIn(label, stdout)
        # Adam has learnt something beyond chance (1/3) in 60 steps.
        self.assertGreater(r["accuracy"]["Adam"], 0.5)

        # The daemon's AdamW is torch's, and the script really trained with it.
        x, y = common.spirals(POINTS, seed=0)
        model = common.mlp(seed=0)
        hp = r["contenders"]["AdamW"]["hparams"]
        self.assertEqual(set(hp), {"lr", "weight_decay"})
        opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"],
                                foreach=False)
        want = []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            want.append(loss.item())
        self.assertEqual(r["losses"]["AdamW"][:STEPS], want)

    def test_png_written_where_asked(self) -> None:
        _, r = self.run_example("classifier_race.py", "--steps", "2", "--points", "10",
                                "--optimizers", "sgd")
        self.assertEqual(list(r["losses"]), ["SGD"])
        self.assertTrue(os.path.isfile(os.path.join(self.out, "classifier_loss.png")))


if __name__ == "__main__":
    unittest.main()
