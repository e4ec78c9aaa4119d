"""Combined schedules against torch 1.13.1: scheduler "sequential" (torch's
SequentialLR) and "chained" (ChainedScheduler) over the shipped scheduler
plugins, through the real daemon: the lr after open and after every step
must equal torch's param_groups[0]['lr'] (bit for bit where torch's own
recursive forms are followed, which is every case here). Also the errors,
the listing in info, and the schedule's survival across a restart. Run by
CTest with /usr/bin/python3."""
import random
import shutil
import tempfile
import unittest
import warnings

import numpy as np
import torch

from nngwire import Daemon, Req, tensor

S = torch.optim.lr_scheduler
warnings.filterwarnings("ignore")   # SequentialLR's step(0) deprecation warning

# (plugin id, its sched_hparams, the torch scheduler it stands for)
PARTS = [
    ("linear", lambda r: {"start_factor": r.choice([0.1, 0.25, 0.5]), "total_iters": r.randint(1, 5)},
     lambda o, h: S.LinearLR(o, start_factor=h["start_factor"], total_iters=h["total_iters"])),
    ("constant", lambda r: {"factor": r.choice([0.5, 0.25]), "total_iters": r.randint(1, 4)},
     lambda o, h: S.ConstantLR(o, factor=h["factor"], total_iters=h["total_iters"])),
    ("exponential", lambda r: {"gamma": r.choice([0.9, 0.5, 0.97])},
     lambda o, h: S.ExponentialLR(o, gamma=h["gamma"])),
    ("step", lambda r: {"step_size": r.randint(1, 4), "gamma": r.choice([0.5, 0.1])},
     lambda o, h: S.StepLR(o, step_size=h["step_size"], gamma=h["gamma"])),
    ("cosine", lambda r: {"T_max": r.randint(2, 9)},
     lambda o, h: S.CosineAnnealingLR(o, T_max=h["T_max"])),
    ("polynomial", lambda r: {"total_iters": r.randint(2, 6), "power": r.choice([1.0, 2.0])},
     lambda o, h: S.PolynomialLR(o, total_iters=h["total_iters"], power=h["power"])),
    ("multistep", lambda r: {"milestone0": r.randint(1, 4), "milestone1": r.randint(5, 8), "gamma": 0.5},
     lambda o, h: S.MultiStepLR(o, milestones=[h["milestone0"], h["milestone1"]], gamma=h["gamma"])),
]


def torch_lrs(combine, parts, milestones, base_lr, steps):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    children = [make(opt, h) for _, h, make in parts]
    sched = S.SequentialLR(opt, children, milestones) if combine == "sequential" else S.ChainedScheduler(children)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


class Combined(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.c = Req(cls.daemon.url)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        rc = cls.daemon.stop()
        log = cls.daemon.read_log()
        cls.daemon.cleanup()
        if rc != 0:
            raise AssertionError(f"optimd exited with {rc}; log:\n{log}")

    def run_daemon(self, name, combine, parts, milestones, base_lr, steps):
        spec = {"scheduler": combine,
                "schedulers": [{"scheduler": pid, "sched_hparams": h} for pid, h, _ in parts]}
        if combine == "sequential":
            spec["milestones"] = milestones
        r = self.c.call("open", session=name, optimizer="sgd", hparams={"lr": base_lr}, durability="none",
                        **spec)
        self.assertTrue(r["ok"], (spec, r))
        s = {"session": name, "token": r["token"]}
        out = [r["lr"]]
        for _ in range(steps):
            out.append(self.c.call("step", **s, grads={})["next_lr"])
        info = self.c.call("info", **s)
        self.c.call("close", **s)
        return out, info

    def test_random_combinations_match_torch(self):
        rng = random.Random(1313)
        worst = 0.0
        cases = 0
        for i in range(60):
            combine = "sequential" if i % 2 == 0 else "chained"
            n = rng.randint(2, 4)
            picks = [rng.choice(PARTS) for _ in range(n)]
            parts = [(pid, draw(rng), make) for pid, draw, make in picks]
            milestones = sorted(rng.sample(range(1, 15), n - 1))
            base = rng.choice([0.1, 1.0, 0.003])
            steps = 25
            got, info = self.run_daemon(f"c{i}", combine, parts, milestones, base, steps)
            want = torch_lrs(combine, parts, milestones, base, steps)
            for k, (g, w) in enumerate(zip(got, want)):
                rel = abs(g - w) / abs(w) if w else abs(g)
                worst = max(worst, rel)
                self.assertLessEqual(rel, 1e-12, (combine, [(p, h) for p, h, _ in parts], milestones, k, got,
                                                  want))
            self.assertEqual(info["scheduler"], combine)
            self.assertEqual([p["scheduler"] for p in info["schedulers"]], [p for p, _, _ in parts])
            if combine == "sequential":
                self.assertEqual(info["milestones"], milestones)
            cases += 1
        print(f"{cases} combined schedules, max relative difference {worst:.3g}")
        self.assertEqual(worst, 0.0)

    def test_reference_vectors(self):
        # reference/optimizer-reference.md §4, verified in torch 1.13.1.
        seq = [("linear", {"start_factor": 0.1, "total_iters": 3}, None),
               ("exponential", {"gamma": 0.5}, None)]
        got, _ = self.run_daemon("refseq", "sequential", seq, [3], 0.1, 6)
        np.testing.assert_allclose(got, [.01, .04, .07, .1, .05, .025, .0125], rtol=1e-12)
        chain = [("constant", {"factor": 0.5, "total_iters": 2}, None), ("exponential", {"gamma": 0.9}, None)]
        got, _ = self.run_daemon("refchain", "chained", chain, None, 0.1, 4)
        np.testing.assert_allclose(got, [.05, .045, .081, .0729, .06561], rtol=1e-12)

    def test_errors(self):
        base = {"session": "bad", "optimizer": "sgd", "hparams": {"lr": 0.1}}
        two = [{"scheduler": "step", "sched_hparams": {"step_size": 2}}, {"scheduler": "exponential",
                                                                          "sched_hparams": {"gamma": 0.5}}]
        bad = [
            ({"scheduler": "sequential", "schedulers": two}, "BAD_REQUEST"),                    # no milestones
            ({"scheduler": "sequential", "schedulers": two, "milestones": [0]}, "BAD_REQUEST"),
            ({"scheduler": "sequential", "schedulers": two, "milestones": [3, 4]}, "BAD_REQUEST"),
            ({"scheduler": "chained", "schedulers": two, "milestones": [3]}, "BAD_REQUEST"),
            ({"scheduler": "chained", "schedulers": two[:1]}, "BAD_REQUEST"),
            ({"scheduler": "chained", "schedulers": two, "sched_hparams": {"gamma": 1}}, "BAD_REQUEST"),
            ({"scheduler": "chained", "schedulers": [two[0], {"scheduler": "plateau"}]}, "BAD_REQUEST"),
            ({"scheduler": "chained", "schedulers": [two[0], {"scheduler": "nope"}]}, "UNKNOWN_PLUGIN"),
            ({"scheduler": "chained", "schedulers": [two[0], {"scheduler": "exponential"}]}, "BAD_HPARAM"),
            ({"scheduler": "step", "sched_hparams": {"step_size": 1}, "schedulers": two}, "BAD_REQUEST"),
        ]
        for extra, code in bad:
            r = self.c.call("open", **base, **extra)
            self.assertEqual(r.get("error"), code, (extra, r))
        self.assertEqual(self.c.call("info", session="bad", token="0" * 32)["error"], "UNKNOWN_SESSION")

    def test_groups_inherit_and_restart_keeps_it(self):
        state = tempfile.mkdtemp(prefix="optimd-combined-")
        try:
            d = Daemon(state_dir=state)
            c = Req(d.url)
            spec = {"scheduler": "sequential", "milestones": [2],
                    "schedulers": [{"scheduler": "linear", "sched_hparams": {"start_factor": 0.5,
                                                                            "total_iters": 2}},
                                   {"scheduler": "cosine", "sched_hparams": {"T_max": 5}}]}
            r = c.call("open", session="g", optimizer="sgd", hparams={"lr": 0.2}, durability="always",
                       groups=[{"name": "same"}, {"name": "own", "scheduler": "chained",
                                                  "schedulers": [{"scheduler": "step",
                                                                  "sched_hparams": {"step_size": 1}},
                                                                 {"scheduler": "exponential",
                                                                  "sched_hparams": {"gamma": 0.5}}]}],
                       **spec)
            self.assertTrue(r["ok"], r)
            s = {"session": "g", "token": r["token"]}
            c.call("register", **s, params={"w": tensor(np.ones(2, np.float32))})
            first = [c.call("step", **s, grads={"w": tensor(np.ones(2, np.float32))})["next_lrs"]
                     for _ in range(3)]
            info = c.call("info", **s)
            groups = {g["name"]: g for g in info["groups"]}
            self.assertEqual(groups["same"]["scheduler"], "sequential")
            self.assertEqual(groups["same"]["milestones"], [2])
            self.assertEqual(groups["own"]["scheduler"], "chained")
            c.close()
            d.kill()
            d.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            after = c.call("info", **s)
            for key in ("groups", "schedulers", "milestones", "scheduler", "lr"):
                self.assertEqual(after[key], info[key], key)
            rest = [c.call("step", **s, grads={})["next_lrs"] for _ in range(4)]
            c.close()
            self.assertEqual(d.stop(), 0)
            d.cleanup()
            # The same seven steps in one go.
            d = Daemon()
            c = Req(d.url)
            r = c.call("open", session="g", optimizer="sgd", hparams={"lr": 0.2},
                       groups=[{"name": "same"}, {"name": "own", "scheduler": "chained",
                                                  "schedulers": [{"scheduler": "step",
                                                                  "sched_hparams": {"step_size": 1}},
                                                                 {"scheduler": "exponential",
                                                                  "sched_hparams": {"gamma": 0.5}}]}],
                       **spec)
            t = {"session": "g", "token": r["token"]}
            ref = [c.call("step", **t, grads={})["next_lrs"] for _ in range(7)]
            c.close()
            self.assertEqual(d.stop(), 0)
            d.cleanup()
            self.assertEqual(first + rest, ref)
            self.assertEqual([x["same"] for x in ref], [x["default"] for x in ref])
        finally:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
