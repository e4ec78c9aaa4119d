"""Parameter groups and server-side gradient clipping against torch 1.13.1:
a session with several groups (per-group hyperparameters and schedulers,
weight decay switched off in one) must end bit-identical to torch's
param_groups, and clip_norm / clip_value must match clip_grad_norm_ /
clip_grad_value_. Also the groups' errors, persistence across a restart and
the log replay. Run by CTest with /usr/bin/python3 (Debian's torch)."""
import math
import shutil
import tempfile
import unittest

import numpy as np
import torch

from nngwire import Daemon, Req, array, tensor

torch.set_num_threads(1)


def rng_arrays(seed, shapes, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


SHAPES = {"w1": (4, 6), "b1": (6,), "w2": (6, 3), "b2": (3,), "emb": (5, 2)}
GROUPS = {"w1": "decay", "w2": "decay", "b1": "no_decay", "b2": "no_decay", "emb": "default"}


def ulps(a, b):
    a = np.ascontiguousarray(a, np.float32).view(np.int32).astype(np.int64)
    b = np.ascontiguousarray(b, np.float32).view(np.int32).astype(np.int64)
    return int(np.max(np.abs(a - b))) if a.size else 0


class Groups(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()

    @classmethod
    def tearDownClass(cls):
        rc = cls.daemon.stop()
        log = cls.daemon.read_log()
        cls.daemon.cleanup()
        if rc != 0:
            raise AssertionError(f"optimd exited with {rc}; log:\n{log}")

    def setUp(self):
        self.c = Req(self.daemon.url)

    def tearDown(self):
        self.c.close()

    def ok(self, r):
        self.assertTrue(r.get("ok"), r)
        return r

    def open_groups(self, name, **extra):
        r = self.ok(self.c.call(
            "open", session=name, optimizer="adamw",
            hparams={"lr": 0.01, "weight_decay": 0.05}, scheduler="step",
            sched_hparams={"step_size": 3, "gamma": 0.5},
            groups=[{"name": "decay", "hparams": {"lr": 0.02, "beta1": 0.8}},
                    {"name": "no_decay", "hparams": {"weight_decay": 0.0},
                     "scheduler": "exponential", "sched_hparams": {"gamma": 0.9}}],
            **extra))
        s = {"session": name, "token": r["token"]}
        init = rng_arrays(1, SHAPES)
        for group in ("decay", "no_decay", "default"):
            params = {k: tensor(v) for k, v in init.items() if GROUPS[k] == group}
            kw = {} if group == "default" else {"group": group}
            self.ok(self.c.call("register", **s, params=params, **kw))
        return s, init

    def torch_groups(self, init):
        t = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
        opt = torch.optim.AdamW([
            {"params": [t["emb"]]},
            {"params": [t["w1"], t["w2"]], "lr": 0.02, "betas": (0.8, 0.999)},
            {"params": [t["b1"], t["b2"]], "weight_decay": 0.0},
        ], lr=0.01, weight_decay=0.05)
        # torch chains schedulers over all groups; per-group schedulers are
        # modelled as one scheduler object per group (each sees only its group).
        return t, opt

    def test_groups_match_torch_param_groups(self):
        s, init = self.open_groups("groups")
        info = self.ok(self.c.call("info", **s))
        names = [g["name"] for g in info["groups"]]
        self.assertEqual(names, ["default", "decay", "no_decay"])
        by_name = {g["name"]: g for g in info["groups"]}
        self.assertEqual(by_name["decay"]["hparams"]["weight_decay"], 0.05)   # inherited
        self.assertEqual(by_name["decay"]["hparams"]["beta1"], 0.8)
        self.assertEqual(by_name["decay"]["scheduler"], "step")              # inherited
        self.assertEqual(by_name["decay"]["sched_hparams"]["step_size"], 3)
        self.assertEqual(by_name["no_decay"]["hparams"]["weight_decay"], 0.0)
        self.assertEqual(by_name["no_decay"]["scheduler"], "exponential")
        self.assertEqual((by_name["default"]["params"], by_name["decay"]["params"],
                          by_name["no_decay"]["params"]), (1, 2, 2))
        self.assertEqual({p["name"]: p["group"] for p in info["params"]}, GROUPS)

        t, opt = self.torch_groups(init)
        # One torch scheduler per group, as optimd runs them.
        sched_default = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        groups_lr = [opt.param_groups[i]["lr"] for i in range(3)]
        for k in range(12):
            grads = rng_arrays(100 + k, SHAPES)
            r = self.ok(self.c.call("step", **s, grads={n: tensor(g) for n, g in grads.items()}))
            for n, g in grads.items():
                t[n].grad = torch.from_numpy(g)
            opt.step()
            # StepLR over group 0 and 1, ExponentialLR over group 2, from
            # their own previous lr (torch's recursive forms).
            e = k + 1
            for gi, (kind, p) in enumerate([("step", None), ("step", None), ("exp", None)]):
                lr = opt.param_groups[gi]["lr"]
                if kind == "step":
                    lr = lr * 0.5 if e % 3 == 0 else lr
                else:
                    lr = lr * 0.9
                opt.param_groups[gi]["lr"] = lr
            self.assertEqual(r["lrs"], {"default": groups_lr[0], "decay": groups_lr[1],
                                        "no_decay": groups_lr[2]})
            groups_lr = [opt.param_groups[i]["lr"] for i in range(3)]
            self.assertEqual(r["next_lrs"], {"default": groups_lr[0], "decay": groups_lr[1],
                                             "no_decay": groups_lr[2]})
            self.assertEqual(r["lr"], r["lrs"]["default"])
            for n in SHAPES:
                got = array(r["params"][n])
                self.assertEqual(ulps(got, t[n].detach().numpy()), 0, (k, n))
        del sched_default

    def test_set_hparams_and_errors(self):
        s, _ = self.open_groups("edits")
        r = self.ok(self.c.call("set_hparams", **s, hparams={"lr": 0.3}, group="no_decay"))
        by_name = {g["name"]: g for g in r["groups"]}
        self.assertEqual(by_name["no_decay"]["lr"], 0.3)
        self.assertEqual(by_name["decay"]["lr"], 0.02)
        r = self.ok(self.c.call("set_hparams", **s, hparams={"weight_decay": 0.1}))
        self.assertTrue(all(g["hparams"]["weight_decay"] == 0.1 for g in r["groups"]))
        err = lambda r, name: (self.assertFalse(r["ok"], r), self.assertEqual(r["error"], name, r))
        err(self.c.call("set_hparams", **s, hparams={"lr": 0.1}, group="nope"), "BAD_REQUEST")
        err(self.c.call("register", **s, params={"x": tensor(np.ones(2, np.float32))}, group="nope"),
            "BAD_REQUEST")
        self.assertNotIn("x", [p["name"] for p in self.c.call("info", **s)["params"]])
        bad_groups = [
            [{"name": "a"}, {"name": "a"}],
            [{"name": "default"}],
            [{"name": "has space"}],
            [{"hparams": {}}],
            ["notamap"],
            [{"name": "a", "hparams": {"nope": 1}}],
            [{"name": "a", "scheduler": "nope"}],
            [{"name": "a", "scheduler": None, "sched_hparams": {"gamma": 0.5}}],
        ]
        codes = ["BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST", "BAD_REQUEST",
                 "UNKNOWN_HPARAM", "UNKNOWN_PLUGIN", "BAD_REQUEST"]
        for groups, code in zip(bad_groups, codes):
            r = self.c.call("open", session="badgroups", optimizer="sgd", hparams={"lr": 0.1},
                            groups=groups)
            err(r, code)
        self.assertEqual(self.c.call("info", session="badgroups", token="0" * 32)["error"],
                         "UNKNOWN_SESSION")
        r = self.c.call("open", session="toomany", optimizer="sgd", hparams={"lr": 0.1},
                        groups=[{"name": f"g{i}"} for i in range(64)])
        err(r, "LIMIT")
        # A group without a scheduler keeps its lr; observe needs a metric scheduler.
        r = self.ok(self.c.call("open", session="plain", optimizer="sgd", hparams={"lr": 0.1},
                                groups=[{"name": "const", "scheduler": None}]))
        err(self.c.call("observe", session="plain", token=r["token"], metric=1.0), "BAD_REQUEST")

    def clip_case(self, name, clip, torch_clip, per_group=False, dtype=np.float32):
        r = self.ok(self.c.call("open", session=name, optimizer="sgd", hparams={"lr": 0.5},
                                groups=[{"name": "second"}]))
        s = {"session": name, "token": r["token"]}
        shapes = {"a": (7, 3), "b": (11,), "c": (2, 2)}
        init = rng_arrays(3, shapes, dtype)
        self.ok(self.c.call("register", **s, params={k: tensor(init[k]) for k in ("a", "b")}))
        self.ok(self.c.call("register", **s, params={"c": tensor(init["c"])}, group="second"))
        t = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
        opt = torch.optim.SGD([{"params": [t["a"], t["b"]]}, {"params": [t["c"]]}], lr=0.5)
        worst = 0
        for k in range(6):
            grads = rng_arrays(50 + k, shapes, dtype)
            grads = {n: g * (10.0 ** (k - 2)) for n, g in grads.items()}  # below and above the bound
            grads = {n: g.astype(dtype) for n, g in grads.items()}
            r = self.ok(self.c.call("step", **s, grads={n: tensor(g) for n, g in grads.items()}, **clip))
            for n, g in grads.items():
                t[n].grad = torch.from_numpy(g.copy())
            norms = torch_clip(t)
            opt.step()
            if norms is not None:
                if per_group:
                    self.assertEqual(set(r["grad_norms"]), {"default", "second"})
                    for gname, want in norms.items():
                        self.assertLessEqual(ulps(np.float32(r["grad_norms"][gname]), np.float32(want)),
                                             1, (k, gname))
                else:
                    got = r["grad_norm"]
                    want = float(norms)
                    worst = max(worst, abs(got - want) / want)
            for n in shapes:
                got = array(r["params"][n])
                want = t[n].detach().numpy()
                if dtype == np.float32:
                    worst = max(worst, ulps(got, want))
                else:
                    worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300))))
        return worst

    def test_clip_value_matches_clip_grad_value(self):
        worst = self.clip_case(
            "clipvalue", {"clip_value": 0.75},
            lambda t: torch.nn.utils.clip_grad_value_(list(t.values()), 0.75))
        self.assertEqual(worst, 0)

    def test_clip_norm_matches_clip_grad_norm(self):
        # The daemon reproduces torch 1.13's one-thread norm kernels (8
        # fused lanes for p=2); some small multi-dimensional shapes take
        # another path in torch, 1 ulp away. Bound: 1 ulp on the norm, 2 on
        # the parameters.
        for norm_type in (2.0, 1.0, 3.0, math.inf):
            clip = {"clip_norm": {"max_norm": 1.0, "norm_type": norm_type}}
            worst = self.clip_case(
                f"clipnorm{norm_type}", clip,
                lambda t, p=norm_type: torch.nn.utils.clip_grad_norm_(list(t.values()), 1.0, p))
            self.assertLessEqual(worst, 2, norm_type)

    def test_clip_norm_per_group(self):
        def per_group(t):
            return {"default": torch.nn.utils.clip_grad_norm_([t["a"], t["b"]], 2.0).numpy(),
                    "second": torch.nn.utils.clip_grad_norm_([t["c"]], 2.0).numpy()}
        worst = self.clip_case("clipgroups", {"clip_norm": {"max_norm": 2.0, "per_group": True}},
                               per_group, per_group=True)
        self.assertLessEqual(worst, 2)

    def test_clip_norm_f64(self):
        worst = self.clip_case(
            "clipf64", {"clip_norm": {"max_norm": 1.0}},
            lambda t: torch.nn.utils.clip_grad_norm_(list(t.values()), 1.0), dtype=np.float64)
        self.assertLess(worst, 1e-15)

    def test_clip_errors(self):
        r = self.ok(self.c.call("open", session="cliperr", optimizer="sgd", hparams={"lr": 0.5}))
        s = {"session": "cliperr", "token": r["token"]}
        self.ok(self.c.call("register", **s, params={"a": tensor(np.ones(3, np.float32))}))
        g = {"a": tensor(np.ones(3, np.float32))}
        for bad in ({"clip_value": 0}, {"clip_value": -1.0}, {"clip_value": "x"},
                    {"clip_norm": {}}, {"clip_norm": {"max_norm": 0}}, {"clip_norm": 3},
                    {"clip_norm": {"max_norm": 1.0, "norm_type": -2.0}},
                    {"clip_norm": {"max_norm": 1.0, "per_group": 1}}):
            r = self.c.call("step", **s, grads=g, **bad)
            self.assertEqual(r.get("error"), "BAD_REQUEST", (bad, r))
        self.assertEqual(self.c.call("info", **s)["steps"], 0)
        # The received gradient is not what gets clipped in place: a
        # duplicate's reply and the log keep the original.
        r = self.ok(self.c.call("step", **s, grads=g, clip_value=0.25, seq=1, client="x"))
        np.testing.assert_array_equal(array(r["params"]["a"]), np.full(3, 1 - 0.5 * 0.25, np.float32))


class GroupsPersist(unittest.TestCase):
    """Groups, their schedulers and their parameters survive a restart, from
    the snapshot (graceful stop) and from the log (kill -9)."""

    def run_steps(self, c, s, first, last, clip=True):
        out = None
        for k in range(first, last):
            grads = rng_arrays(200 + k, SHAPES)
            kw = {"clip_norm": {"max_norm": 3.0, "per_group": True}} if clip else {}
            out = c.call("step", **s, grads={n: tensor(g) for n, g in grads.items()}, **kw)
            self.assertTrue(out["ok"], out)
        return out

    def setup(self, c, name):
        r = c.call("open", session=name, optimizer="adam", hparams={"lr": 0.01, "amsgrad": True},
                   durability="always", scheduler="step", sched_hparams={"step_size": 2},
                   groups=[{"name": "decay", "hparams": {"weight_decay": 0.1}},
                           {"name": "no_decay", "scheduler": None, "hparams": {"amsgrad": False}}])
        self.assertTrue(r["ok"], r)
        s = {"session": name, "token": r["token"]}
        init = rng_arrays(1, SHAPES)
        for group in ("decay", "no_decay", "default"):
            kw = {} if group == "default" else {"group": group}
            r = c.call("register", **s, params={k: tensor(v) for k, v in init.items()
                                                if GROUPS[k] == group}, **kw)
            self.assertTrue(r["ok"], r)
        r = c.call("set_hparams", **s, hparams={"lr": 0.03}, group="no_decay")
        self.assertTrue(r["ok"], r)
        return s

    def test_restart_and_replay(self):
        ref = Daemon()
        try:
            c = Req(ref.url)
            s = self.setup(c, "g")
            want = self.run_steps(c, s, 0, 9)
            want_info = c.call("info", **s)
            c.close()
        finally:
            ref.stop()
            ref.cleanup()
        state = tempfile.mkdtemp(prefix="optimd-groups-")
        try:
            d = Daemon(state_dir=state)
            c = Req(d.url)
            s = self.setup(c, "g")
            self.run_steps(c, s, 0, 3)
            c.close()
            self.assertEqual(d.stop(), 0, d.read_log())        # snapshot on a graceful stop
            d.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            self.run_steps(c, s, 3, 6)
            c.close()
            d.kill()                                          # the log replays the rest
            d.cleanup()
            d = Daemon(state_dir=state)
            c = Req(d.url)
            got = self.run_steps(c, s, 6, 9)
            info = c.call("info", **s)
            c.close()
            self.assertEqual(d.stop(), 0, d.read_log())
            d.cleanup()
        finally:
            shutil.rmtree(state, ignore_errors=True)
        for key in ("groups", "params", "steps", "lr", "hparams"):
            self.assertEqual(info[key], want_info[key], key)
        self.assertEqual(got["lrs"], want["lrs"])
        self.assertEqual(got["grad_norms"], want["grad_norms"])
        for n in SHAPES:
            self.assertEqual(got["params"][n]["data"], want["params"][n]["data"], n)


if __name__ == "__main__":
    unittest.main(verbosity=2)
