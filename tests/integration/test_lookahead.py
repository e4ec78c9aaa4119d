"""Lookahead around any optimizer (open's "lookahead": {k, alpha}) against
the same wrapper written in torch 1.13.1 ops -- slow.add_(p - slow,
alpha=alpha); p.copy_(slow) every k steps, slow weights starting at the
initial parameters (Zhang et al. 2019) -- bit for bit, f32 and f64, with
parameters that skip steps; the slow weights through `state`, and across a
restart from the log. Run by CTest with /usr/bin/python3."""
import shutil
import tempfile
import unittest

import numpy as np
import torch

from nngwire import Daemon, Req, array, tensor

torch.set_num_threads(1)


class TorchLookahead:
    def __init__(self, params, inner, k, alpha):
        self.params, self.inner, self.k, self.alpha = params, inner, k, alpha
        self.slow = {id(p): p.detach().clone() for p in params}
        self.count = {id(p): 0 for p in params}

    def step(self):
        stepped = [p for p in self.params if p.grad is not None]
        self.inner.step()
        with torch.no_grad():
            for p in stepped:
                self.count[id(p)] += 1
                if self.count[id(p)] % self.k == 0:
                    slow = self.slow[id(p)]
                    slow.add_(p - slow, alpha=self.alpha)
                    p.copy_(slow)


class Lookahead(unittest.TestCase):
    def run_case(self, c, name, optimizer, hp, make_inner, k, alpha, dtype, steps=23):
        rng = np.random.default_rng(5)
        init = {"a": rng.standard_normal((4, 5)).astype(dtype), "b": rng.standard_normal(7).astype(dtype)}
        r = c.call("open", session=name, optimizer=optimizer, hparams=hp, lookahead={"k": k, "alpha": alpha})
        self.assertTrue(r["ok"], r)
        s = {"session": name, "token": r["token"]}
        self.assertTrue(c.call("register", **s, params={n: tensor(v) for n, v in init.items()})["ok"])
        t = {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in init.items()}
        la = TorchLookahead(list(t.values()), make_inner(list(t.values())), k, alpha)
        for i in range(steps):
            names = ["a", "b"] if i % 5 != 3 else ["a"]      # b skips some steps
            grads = {n: rng.standard_normal(init[n].shape).astype(dtype) for n in names}
            reply = c.call("step", **s, grads={n: tensor(g) for n, g in grads.items()})
            self.assertTrue(reply["ok"], reply)
            for n in t:
                t[n].grad = torch.from_numpy(grads[n].copy()) if n in grads else None
            la.step()
            for n in names:
                np.testing.assert_array_equal(array(reply["params"][n]), t[n].detach().numpy(), (name, i, n))
        state = c.call("state", **s)["state"]
        for n, p in t.items():
            np.testing.assert_array_equal(array(state[n]["lookahead_slow"]), la.slow[id(p)].numpy())
        return s

    def test_matches_torch_wrapper(self):
        d = Daemon()
        try:
            c = Req(d.url)
            self.run_case(c, "adamw32", "adamw", {"lr": 0.01, "weight_decay": 0.1},
                          lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1), 5, 0.5, np.float32)
            self.run_case(c, "sgd64", "sgd", {"lr": 0.05, "momentum": 0.9},
                          lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), 3, 0.8, np.float64)
            self.run_case(c, "adam_k1", "adam", {"lr": 0.02},
                          lambda ps: torch.optim.Adam(ps, lr=0.02), 1, 0.3, np.float32)
            for bad in ({"k": 0}, {"alpha": 0}, {"alpha": 1.5}, {"k": "5"}, 3):
                r = c.call("open", session="bad", optimizer="sgd", hparams={"lr": 1}, lookahead=bad)
                self.assertEqual(r.get("error"), "BAD_REQUEST", (bad, r))
            c.close()
        finally:
            self.assertEqual(d.stop(), 0, d.read_log())
            d.cleanup()

    def test_survives_restart(self):
        state = tempfile.mkdtemp(prefix="optimd-lookahead-")
        try:
            ref = Daemon()
            c = Req(ref.url)
            want = self.steps(c, "la", 0, 12, create=True)
            c.close()
            self.assertEqual(ref.stop(), 0)
            ref.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            self.steps(c, "la", 0, 5, create=True)
            c.close()
            self.assertEqual(d.stop(), 0)          # a snapshot holds the slow weights
            d.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            self.steps(c, "la", 5, 9)
            c.close()
            d.kill()                               # the log replays the rest
            d.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            got = self.steps(c, "la", 9, 12)
            info = c.call("info", **self.s)
            self.assertEqual(info["lookahead"], {"k": 4, "alpha": 0.5})
            c.close()
            self.assertEqual(d.stop(), 0)
            d.cleanup()
            self.assertEqual(got, want)
        finally:
            shutil.rmtree(state, ignore_errors=True)

    def steps(self, c, name, first, last, create=False):
        if create:
            r = c.call("open", session=name, optimizer="adam", hparams={"lr": 0.05}, durability="always",
                       lookahead={"k": 4})
            self.s = {"session": name, "token": r["token"]}
            c.call("register", **self.s, params={"w": tensor(np.linspace(-1, 1, 6).astype(np.float32))})
        out = None
        for i in range(first, last):
            g = np.sin(np.arange(6) + i).astype(np.float32)
            out = c.call("step", **self.s, grads={"w": tensor(g)})["params"]["w"]["data"]
        return out


if __name__ == "__main__":
    unittest.main(verbosity=2)
