"""lamb, lars, adafactor, schedule_free_adamw and muon through the real daemon,
against float64 NumPy models of each method's published update rule.

Each model below is written from the paper and the reference implementation
the plugin names (timm Lamb / Lars, Hugging Face Adafactor,
facebookresearch/schedule_free's AdamWScheduleFreeReference,
KellerJordan/Muon), not from the plugins' C code. The plugins compute in
the parameter's dtype, the models in float64, so they agree to a bound, not
bit for bit. For every optimizer, several random hyperparameter draws and
parameter shapes (0-D to 3-D) run 24 steps of random gradients in f32 and
f64; after every step each parameter's error is

    max |p_daemon - p_model| / max |p_model - p_initial|

(relative to how far the parameter has moved, so an error in the update
cannot hide behind the parameter's magnitude). BOUNDS holds the largest
error allowed per optimizer and dtype: measured values (printed by the
test) with about 10x margin. schedule_free_adamw's x, the weights to
evaluate at, is read with the `state` op and checked the same way.
"""

from __future__ import annotations

import math
import os
import sys
import unittest
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.environ["OPTIMD_SOURCE_DIR"], "tests", "python"))

import optimd  # noqa: E402
from optimd.wire import decode_tensor  # noqa: E402
from support import DaemonTestCase  # noqa: E402

STEPS = 24

# Largest error allowed (see the module doc), per optimizer and dtype: the
# largest value measured on x86-64 (max over draws, shapes and steps) with
# about 5x margin. Measured: lamb f32 5.6e-3, f64 2.1e-13; lars f32 6.9e-4,
# f64 1.3e-13; adafactor f32 7.6e-5, f64 2.0e-14; schedule_free_adamw f32
# 1.4e-3, f64 2.3e-11; muon f32 1.1e-2, f64 8.4e-14. The f32 values are
# what storing p and the state in float32 costs: the same models run in
# NumPy float32 land at 1e-3 to 4e-3 on the worst draws. Muon's f32 error
# is the largest because Newton-Schulz amplifies rounding (a = 3.4 per
# iteration on small singular values) and the plugin's products sum in
# order where BLAS sums pairwise.
BOUNDS: dict[str, dict[str, float]] = {
    "lamb": {"f32": 3e-2, "f64": 1e-12},
    "lars": {"f32": 4e-3, "f64": 1e-12},
    "adafactor": {"f32": 5e-4, "f64": 1e-13},
    "schedule_free_adamw": {"f32": 1e-2, "f64": 1e-10},
    "muon": {"f32": 6e-2, "f64": 5e-13},
}

# Draws whose steps are too small for float32 to represent (adafactor's
# warmup_init moves p by 1e-6 * t * RMS(p) per step, under half an f32 ulp
# of p on the first steps): f64 only.
F64_ONLY = {("adafactor", 3)}

Array = np.ndarray


def norm(x: Array) -> float:
    return float(np.sqrt(np.sum(x * x)))


class Lamb:
    """timm Lamb (NVLAMB) without the global pre-clip."""

    def __init__(self, hp: dict[str, Any]) -> None:
        self.hp = hp
        self.state: dict[str, dict[str, Any]] = {}

    def step(self, name: str, p: Array, g: Array) -> Array:
        hp = self.hp
        s = self.state.setdefault(name, {"t": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)})
        s["t"] += 1
        t = s["t"]
        b1, b2 = hp["beta1"], hp["beta2"]
        b3 = 1 - b1 if hp["grad_averaging"] else 1.0
        s["m"] = b1 * s["m"] + b3 * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        bc1, bc2 = (1 - b1**t, 1 - b2**t) if hp["bias_correction"] else (1.0, 1.0)
        u = (s["m"] / bc1) / (np.sqrt(s["v"]) / math.sqrt(bc2) + hp["eps"])
        u = u + hp["weight_decay"] * p
        if hp["weight_decay"] != 0 or hp["always_adapt"]:
            wn, un = norm(p), norm(u)
            r = wn / un if wn > 0 and un > 0 else 1.0
            if hp["trust_clip"]:
                r = min(r, 1.0)
            u = u * r
        return p - hp["lr"] * u


class Lars:
    """timm Lars: trust ratio on g + wd p, then torch SGD."""

    def __init__(self, hp: dict[str, Any]) -> None:
        self.hp = hp
        self.state: dict[str, Array] = {}

    def step(self, name: str, p: Array, g: Array) -> Array:
        hp = self.hp
        lr, wd, mu = hp["lr"], hp["weight_decay"], hp["momentum"]
        d = g
        if wd != 0 or hp["always_adapt"]:
            wn, gn = norm(p), norm(g)
            r = hp["trust_coeff"] * wn / (gn + wn * wd + hp["eps"]) if wn > 0 and gn > 0 else 1.0
            if hp["trust_clip"]:
                r = min(r / lr, 1.0)
            d = (g + wd * p) * r
        if mu != 0:
            if name not in self.state:
                self.state[name] = d.copy()
            else:
                self.state[name] = mu * self.state[name] + (1 - hp["dampening"]) * d
            b = self.state[name]
            d = d + mu * b if hp["nesterov"] else b
        return p - lr * d


class Adafactor:
    """Hugging Face transformers' Adafactor (the paper's factored moments)."""

    def __init__(self, hp: dict[str, Any]) -> None:
        self.hp = hp
        self.state: dict[str, dict[str, Any]] = {}

    def step(self, name: str, p: Array, g: Array) -> Array:
        hp = self.hp
        factored = p.ndim >= 2
        if name not in self.state:
            s: dict[str, Any] = {"t": 0}
            if factored:
                s["row"] = np.zeros(p.shape[:-1])
                s["col"] = np.zeros(p.shape[:-2] + p.shape[-1:])
            else:
                s["v"] = np.zeros_like(p)
            if hp["use_momentum"]:
                s["m"] = np.zeros_like(p)
            self.state[name] = s
        s = self.state[name]
        s["t"] += 1
        t = s["t"]
        rms_p = math.sqrt(np.mean(p * p))
        rho = hp["lr"]
        if hp["relative_step"]:
            rho = min(1e-6 * t if hp["warmup_init"] else 1e-2, 1.0 / math.sqrt(t))
        alpha = (max(hp["eps2"], rms_p) if hp["scale_parameter"] else 1.0) * rho
        beta2t = 1.0 - t ** hp["decay_rate"]
        q = g * g + hp["eps1"]
        if factored:
            s["row"] = beta2t * s["row"] + (1 - beta2t) * q.mean(axis=-1)
            s["col"] = beta2t * s["col"] + (1 - beta2t) * q.mean(axis=-2)
            r_factor = 1 / np.sqrt(s["row"] / s["row"].mean(axis=-1, keepdims=True))
            c_factor = 1 / np.sqrt(s["col"])
            u = r_factor[..., :, None] * c_factor[..., None, :] * g
        else:
            s["v"] = beta2t * s["v"] + (1 - beta2t) * q
            u = g / np.sqrt(s["v"])
        u = u / max(1.0, math.sqrt(np.mean(u * u)) / hp["clip_threshold"])
        u = u * alpha
        if hp["use_momentum"]:
            s["m"] = hp["beta1"] * s["m"] + (1 - hp["beta1"]) * u
            u = s["m"]
        p = p - hp["weight_decay"] * alpha * p
        return p - u


class ScheduleFreeAdamW:
    """AdamWScheduleFreeReference; k, lr_max and weight_sum per parameter."""

    def __init__(self, hp: dict[str, Any]) -> None:
        self.hp = hp
        self.state: dict[str, dict[str, Any]] = {}

    def step(self, name: str, y: Array, g: Array) -> Array:
        hp = self.hp
        if name not in self.state:
            self.state[name] = {"k": 0, "z": y.copy(), "x": y.copy(), "v": np.zeros_like(y),
                                "lr_max": 0.0, "weight_sum": 0.0}
        s = self.state[name]
        k = s["k"]
        sched = (k + 1) / hp["warmup_steps"] if k < hp["warmup_steps"] else 1.0
        lr = hp["lr"] * sched * math.sqrt(1 - hp["beta2"] ** (k + 1))
        s["lr_max"] = max(s["lr_max"], lr)
        weight = (k + 1) ** hp["r"] * s["lr_max"] ** hp["weight_lr_power"]
        s["weight_sum"] += weight
        c = weight / s["weight_sum"] if s["weight_sum"] != 0 else 0.0
        s["z"] = s["z"] - lr * hp["weight_decay"] * y
        s["v"] = hp["beta2"] * s["v"] + (1 - hp["beta2"]) * g * g
        s["z"] = s["z"] - lr * g / (np.sqrt(s["v"]) + hp["eps"])
        s["x"] = (1 - c) * s["x"] + c * s["z"]
        s["k"] = k + 1
        return (1 - hp["beta1"]) * s["z"] + hp["beta1"] * s["x"]


class Muon:
    """KellerJordan/Muon's muon_update (lerp momentum, quintic Newton-Schulz
    in float64 here), AdamW (torch's rule) below 2 dimensions."""

    def __init__(self, hp: dict[str, Any]) -> None:
        self.hp = hp
        self.state: dict[str, dict[str, Any]] = {}

    def step(self, name: str, p: Array, g: Array) -> Array:
        hp = self.hp
        s = self.state.setdefault(name, {"t": 0, "b": np.zeros_like(p), "v": np.zeros_like(p)})
        s["t"] += 1
        if p.ndim < 2:
            t, lr = s["t"], hp["adamw_lr"]
            b1, b2 = hp["adamw_beta1"], hp["adamw_beta2"]
            p = p * (1 - lr * hp["adamw_weight_decay"])
            s["b"] = b1 * s["b"] + (1 - b1) * g
            s["v"] = b2 * s["v"] + (1 - b2) * g * g
            denom = np.sqrt(s["v"]) / math.sqrt(1 - b2**t) + hp["adamw_eps"]
            return p - lr / (1 - b1**t) * s["b"] / denom
        mu = hp["momentum"]
        s["b"] = s["b"] + (1 - mu) * (g - s["b"])
        u = g + mu * (s["b"] - g) if hp["nesterov"] else s["b"]
        u = u.reshape(p.shape[0], -1)
        rows, cols = u.shape
        x = u.T if rows > cols else u
        x = x / (np.linalg.norm(x) + hp["eps"])
        a, b, c = hp["ns_a"], hp["ns_b"], hp["ns_c"]
        for _ in range(hp["ns_steps"]):
            A = x @ x.T
            x = a * x + (b * A + c * A @ A) @ x
        o = (x.T if rows > cols else x) * math.sqrt(max(1.0, rows / cols))
        lr = hp["lr"]
        return p * (1 - lr * hp["weight_decay"]) - lr * o.reshape(p.shape)


MODELS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "lamb": Lamb, "lars": Lars, "adafactor": Adafactor,
    "schedule_free_adamw": ScheduleFreeAdamW, "muon": Muon,
}

SHAPES_ALL = [(), (7,), (5, 6), (3, 4, 5)]


def draws(opt: str, rng: np.random.Generator) -> list[tuple[dict[str, Any], list[tuple[int, ...]]]]:
    """(hyperparameters, shapes) per run: the defaults first, then random
    draws that switch every option at least once."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    if opt == "lamb":
        base = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01,
                    bias_correction=True, grad_averaging=True, trust_clip=False, always_adapt=False)
        return [
            (base, SHAPES_ALL + [(300, 260)]),
            (dict(base, lr=u(1e-3, 1e-2), beta1=u(0.5, 0.95), beta2=u(0.9, 0.999),
                  weight_decay=0.0, always_adapt=True, trust_clip=True), SHAPES_ALL),
            (dict(base, lr=u(1e-3, 1e-2), weight_decay=u(0.01, 0.5), bias_correction=False,
                  grad_averaging=False, eps=1e-3), SHAPES_ALL),
            (dict(base, weight_decay=0.0), SHAPES_ALL),
        ]
    if opt == "lars":
        base = dict(lr=1.0, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                    trust_coeff=0.001, eps=1e-8, trust_clip=False, always_adapt=False)
        return [
            (dict(base, lr=0.1), SHAPES_ALL),
            (dict(base, lr=u(0.5, 2), momentum=u(0.5, 0.95), weight_decay=u(1e-4, 1e-2)),
             SHAPES_ALL + [(300, 260)]),
            (dict(base, lr=u(0.5, 2), momentum=0.9, nesterov=True, always_adapt=True,
                  trust_clip=True, trust_coeff=u(0.01, 0.1)), SHAPES_ALL),
            (dict(base, lr=u(0.1, 1), momentum=0.8, dampening=u(0.1, 0.5),
                  weight_decay=u(1e-3, 1e-1)), SHAPES_ALL),
        ]
    if opt == "adafactor":
        base = dict(lr=1e-3, eps1=1e-30, eps2=1e-3, clip_threshold=1.0, decay_rate=-0.8,
                    beta1=0.0, use_momentum=False, weight_decay=0.0, relative_step=True,
                    scale_parameter=True, warmup_init=False)
        shapes = SHAPES_ALL + [(1, 9), (9, 1), (2, 3, 4, 5)]
        return [
            (base, shapes + [(300, 260)]),
            (dict(base, use_momentum=True, beta1=u(0.5, 0.95), weight_decay=u(0.01, 0.1),
                  clip_threshold=u(0.5, 2), decay_rate=u(-1, -0.5)), shapes),
            (dict(base, relative_step=False, scale_parameter=False, lr=u(1e-3, 1e-2),
                  eps1=1e-20), shapes),
            (dict(base, warmup_init=True, clip_threshold=0.05), shapes),
        ]
    if opt == "schedule_free_adamw":
        base = dict(lr=0.0025, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                    warmup_steps=0, r=0.0, weight_lr_power=2.0)
        return [
            (base, SHAPES_ALL + [(300, 260)]),
            (dict(base, lr=u(1e-3, 1e-2), beta1=u(0.5, 0.95), beta2=u(0.9, 0.999),
                  weight_decay=u(0.01, 0.1), warmup_steps=10), SHAPES_ALL),
            (dict(base, r=u(0.5, 2), weight_lr_power=u(0, 3), warmup_steps=30), SHAPES_ALL),
        ]
    if opt == "muon":
        base = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5,
                    ns_a=3.4445, ns_b=-4.7750, ns_c=2.0315, eps=1e-7, adamw_lr=3e-4,
                    adamw_beta1=0.9, adamw_beta2=0.95, adamw_eps=1e-10, adamw_weight_decay=0.0)
        shapes = SHAPES_ALL + [(9, 4), (4, 9), (1, 6), (6, 1), (3, 2, 2)]
        return [
            (base, shapes + [(128, 160)]),
            (dict(base, lr=u(1e-3, 5e-2), momentum=u(0.5, 0.95), nesterov=False,
                  weight_decay=u(0.01, 0.1), ns_steps=3, adamw_lr=u(1e-3, 1e-2),
                  adamw_weight_decay=u(0.01, 0.1)), shapes),
            (dict(base, ns_steps=8, ns_a=2.0, ns_b=-1.5, ns_c=0.5, adamw_beta2=0.999), shapes),
        ]
    raise KeyError(opt)


def rel_error(got: Array, want: Array, start: Array, steps: int) -> float:
    """max |got - want| / max |want - start|, the denominator floored at
    what storing the tensor in got's dtype for `steps` steps may cost (a
    move below that is rounding, in f32, not a result to compare)."""
    if want.size == 0:
        return 0.0
    moved = float(np.max(np.abs(want - start)))
    floor = steps * float(np.finfo(got.dtype).eps) * float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    return diff / max(moved, floor, np.finfo(np.float64).tiny)


class BeyondTorchMore(DaemonTestCase):
    measured: dict[tuple[str, str], float] = {}

    @classmethod
    def tearDownClass(cls) -> None:
        for (opt, dt), err in sorted(cls.measured.items()):
            print(f"measured {opt} {dt}: max relative error {err:.3g} (bound {BOUNDS[opt][dt]:g})",
                  file=sys.stderr)
        super().tearDownClass()

    def run_optimizer(self, opt: str) -> None:
        rng = np.random.default_rng(sum(map(ord, opt)))
        with optimd.Client(self.daemon.url) as client:
            for index, (hp, shapes) in enumerate(draws(opt, rng)):
                for dtype in (np.float32, np.float64):
                    if dtype == np.float32 and (opt, index) in F64_ONLY:
                        continue
                    dt = "f32" if dtype == np.float32 else "f64"
                    worst = self.run_case(client, opt, hp, shapes, dtype, f"{opt}-{index}-{dt}", rng)
                    if os.environ.get("OPTIMD_VERBOSE"):
                        print(f"{opt} draw {index} {dt}: {worst:.3g}", file=sys.stderr)
                    key = (opt, dt)
                    self.measured[key] = max(self.measured.get(key, 0.0), worst)
                    self.assertLessEqual(worst, BOUNDS[opt][dt],
                                         f"{opt} {dt} draw {index} {hp}: error {worst:.3g}")

    def run_case(self, client: optimd.Client, opt: str, hp: dict[str, Any],
                 shapes: list[tuple[int, ...]], dtype: Any, session_name: str,
                 rng: np.random.Generator) -> float:
        session = client.open(session_name, opt, hp)
        try:
            names = [f"p{i}" for i in range(len(shapes))]
            init = {n: rng.standard_normal(s).astype(dtype) for n, s in zip(names, shapes)}
            client.register(session, init)
            model = MODELS[opt](hp)
            want = {n: init[n].astype(np.float64) for n in names}
            start = dict(want)
            worst = 0.0
            for step in range(STEPS):
                scale = 10.0 ** rng.uniform(-2, 1)
                grads = {n: (scale * rng.standard_normal(s)).astype(dtype)
                         for n, s in zip(names, shapes)}
                got = client.step(session, grads).params
                for n in names:
                    want[n] = model.step(n, want[n], grads[n].astype(np.float64))
                    self.assertEqual(got[n].shape, want[n].shape)
                    self.assertEqual(got[n].dtype, dtype)
                    err = rel_error(np.asarray(got[n]), want[n], start[n], step + 1)
                    self.assertTrue(np.isfinite(err), f"{n} {shapes} step {step + 1}: not finite")
                    worst = max(worst, err)
            if opt == "schedule_free_adamw":
                state = client.request("state", session=session.name, token=session.token)["state"]
                for n in names:
                    x = decode_tensor(state[n]["x"])
                    err = rel_error(np.asarray(x), model.state[n]["x"], start[n], STEPS)
                    worst = max(worst, err)
            if opt == "adafactor":
                # The factored statistics have the shapes HF gives them.
                state = client.request("state", session=session.name, token=session.token)["state"]
                for n, s in zip(names, shapes):
                    row = decode_tensor(state[n]["exp_avg_sq_row"])
                    col = decode_tensor(state[n]["exp_avg_sq_col"])
                    ms = model.state[n]
                    if len(s) >= 2:
                        self.assertEqual(row.shape, s[:-1])
                        self.assertEqual(col.shape, s[:-2] + s[-1:])
                        np.testing.assert_allclose(row, ms["row"], rtol=1e-5)
                        np.testing.assert_allclose(col, ms["col"], rtol=1e-5)
                    else:
                        self.assertEqual(row.shape, s)
                        np.testing.assert_allclose(row, ms["v"], rtol=1e-5)
            return worst
        finally:
            client.close_session(session)

    def test_lamb(self) -> None:
        self.run_optimizer("lamb")

    def test_lars(self) -> None:
        self.run_optimizer("lars")

    def test_adafactor(self) -> None:
        self.run_optimizer("adafactor")

    def test_schedule_free_adamw(self) -> None:
        self.run_optimizer("schedule_free_adamw")

    def test_muon(self) -> None:
        self.run_optimizer("muon")

    def test_refusals(self) -> None:
        """Cross-key rules refuse at open, with the reason."""
        with optimd.Client(self.daemon.url) as client:
            for opt, hp, words in [
                ("lars", {"nesterov": True}, "nesterov"),
                ("lars", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening"),
                ("adafactor", {"warmup_init": True, "relative_step": False}, "relative_step"),
                ("adafactor", {"beta1": 0.9}, "use_momentum"),
                ("muon", {"nesterov": True, "momentum": 0.0}, "momentum"),
            ]:
                with self.assertRaises(optimd.BadHparamError, msg=f"{opt} {hp}") as ctx:
                    client.open(f"refuse-{opt}", opt, hp)
                self.assertIn(words, str(ctx.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
