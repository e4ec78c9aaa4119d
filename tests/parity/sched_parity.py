#!/usr/bin/python3
"""Parity of the cyclic, onecycle and plateau scheduler plugins with torch
1.13.1's CyclicLR, OneCycleLR and ReduceLROnPlateau (Debian's torch, from
/usr/bin/python3 or a virtualenv made from it).

    sched_parity.py plugins --plugin-dir DIR [--seed N] [--cases N]
    sched_parity.py daemon [--seed N] [--cases N]

Both draw many random hyperparameter sets (all three cyclic modes, momentum
cycling on and off, onecycle cos and linear with two and three phases,
plateau min and max, rel and abs, with patience and cooldown, over random,
constant and NaN-holding metric sequences) and run torch on each.

`plugins` loads the .so files with ctypes and calls their lr, momentum and
observe callbacks as the daemon would; it also checks the plugins' declared
defaults against torch's signatures, the errors (onecycle past total_steps,
phases torch would divide by zero in), and the verified vectors of the
optimizer reference (section 4).

`daemon` starts the real daemon ($OPTIMD_BIN, $OPTIMD_PLUGIN_DIR; needs the
Python client, i.e. the test virtualenv) and drives sessions through it:
SGD with momentum and Adam, one f64 parameter with seeded gradients, torch
doing the same in lockstep. After open and after every step it compares the
lr (step replies, `hparams`, `observe` replies), the optimizer's momentum or
beta1 as the `hparams` reply shows it, and the parameter itself.

Every comparison is exact (0 ulp): the plugins evaluate torch's formulas in
double in torch's order, with the same libm. The largest distance seen is
printed anyway. Exit status 77: torch is not importable (skipped).
"""

from __future__ import annotations

import argparse
import ctypes
import decimal
import inspect
import math
import os
import random
import struct
import sys
import warnings
import zlib

try:
    import torch
except ImportError as exc:  # pragma: no cover - environment problem
    print("sched_parity.py: cannot import torch: %s" % exc, file=sys.stderr)
    sys.exit(77)

LRS = torch.optim.lr_scheduler
CYCLIC_MODES = ["triangular", "triangular2", "exp_range"]
ANNEAL = ["cos", "linear"]
PLATEAU_MODES = ["min", "max"]
THRESHOLD_MODES = ["rel", "abs"]

# ------------------------------------------------------------------ cases --


class Case:
    """One schedule: the plugin's hyperparameters (only the keys drawn; the
    rest take each side's own defaults), the optimizer, how many steps, and
    for plateau the metric reported after each step."""

    def __init__(self, name, plugin, hparams, steps, optimizer="sgd", opt_hparams=None,
                 metrics=None):
        self.name = name
        self.plugin = plugin
        self.hparams = hparams
        self.steps = steps
        self.optimizer = optimizer
        self.opt_hparams = opt_hparams or {"lr": 0.05, "momentum": 0.9}
        self.metrics = metrics

    def __repr__(self):
        return "%s %s %r opt=%s %r steps=%d" % (self.name, self.plugin, self.hparams,
                                                 self.optimizer, self.opt_hparams, self.steps)


def maybe(rng, p=0.75):
    return rng.random() < p


def draw_cyclic(rng, i):
    hp = {"base_lr": rng.uniform(1e-4, 0.1)}
    hp["max_lr"] = rng.uniform(hp["base_lr"], 1.0) if maybe(rng, 0.85) else rng.uniform(0, hp["base_lr"])
    hp["step_size_up"] = rng.randint(1, 12)
    if maybe(rng, 0.6):
        hp["step_size_down"] = rng.choice([0, rng.randint(1, 12)])
    hp["mode"] = i % 3
    if hp["mode"] == 2 or maybe(rng, 0.2):
        hp["gamma"] = rng.uniform(0.85, 1.0)
    momentum = maybe(rng, 0.7)
    if momentum:
        if maybe(rng):
            hp["base_momentum"] = rng.uniform(0.5, 0.9)
            hp["max_momentum"] = rng.uniform(hp["base_momentum"], 0.99)
        if maybe(rng, 0.5):
            hp["cycle_momentum"] = True
    else:
        hp["cycle_momentum"] = False
    down = hp.get("step_size_down", 0) or hp["step_size_up"]
    steps = min(3 * (hp["step_size_up"] + down) + rng.randint(0, 5), 80)
    # torch 1.13's CyclicLR cycles only a `momentum` (SGD, RMSprop); Adam
    # runs with cycle_momentum off.
    if not momentum and maybe(rng, 0.5):
        return Case("cyclic%d" % i, "cyclic", hp, steps, "adam",
                    {"lr": 0.01, "beta1": rng.uniform(0.8, 0.95)})
    return Case("cyclic%d" % i, "cyclic", hp, steps, "sgd",
                {"lr": 0.05, "momentum": rng.uniform(0.5, 0.95)})


def draw_onecycle(rng, i):
    total = rng.randint(2, 60)
    hp = {"max_lr": rng.uniform(0.01, 1.0), "total_steps": total,
          "anneal_strategy": i % 2, "three_phase": (i // 2) % 2 == 1}
    if maybe(rng):
        hp["pct_start"] = rng.uniform(0.05, 0.95)
    if maybe(rng, 0.5):
        hp["div_factor"] = rng.uniform(2, 50)
    if maybe(rng, 0.5):
        hp["final_div_factor"] = 10 ** rng.uniform(1, 5)
    if maybe(rng, 0.25):
        hp["cycle_momentum"] = False
    elif maybe(rng):
        hp["base_momentum"] = rng.uniform(0.5, 0.9)
        hp["max_momentum"] = rng.uniform(hp["base_momentum"], 0.99)
    if maybe(rng, 0.5):
        return Case("onecycle%d" % i, "onecycle", hp, total, "adam",
                    {"lr": 0.01, "beta1": 0.9})
    return Case("onecycle%d" % i, "onecycle", hp, total, "sgd", {"lr": 0.05, "momentum": 0.9})


def draw_metrics(rng, kind, n, mode):
    if kind == "constant":
        return [rng.choice([0.5, -0.5, 0.0, 3.0])] * n
    out, value = [], rng.uniform(-1, 2)
    for _ in range(n):
        if kind == "trend":
            # Improves slowly with plateaus, in the direction `mode` likes.
            step = rng.choice([0.0, 0.0, 1e-5, 0.05, -0.01])
            value += -step if mode == 0 else step
        else:
            value = rng.choice([value, value + rng.gauss(0, 0.1), rng.uniform(-1, 2)])
        out.append(value)
    if kind == "nan" or maybe(rng, 0.2):
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(n)] = float("nan")
    return out


def draw_plateau(rng, i):
    hp = {"mode": i % 2, "threshold_mode": (i // 2) % 2}
    if maybe(rng):
        hp["factor"] = rng.uniform(0.05, 0.9)
    hp["patience"] = rng.randint(0, 5)
    if maybe(rng, 0.6):
        hp["cooldown"] = rng.randint(0, 3)
    if maybe(rng):
        hp["threshold"] = rng.uniform(0, 0.05) if hp["threshold_mode"] == 0 else rng.uniform(0, 0.3)
    if maybe(rng, 0.4):
        hp["min_lr"] = rng.uniform(0, 0.01)
    if maybe(rng, 0.3):
        hp["eps"] = rng.choice([0.0, 1e-3, 1e-8, 1e-12])
    n = rng.randint(20, 50)
    metrics = draw_metrics(rng, ["random", "constant", "trend", "nan"][(i // 4) % 4], n, hp["mode"])
    if maybe(rng, 0.5):
        return Case("plateau%d" % i, "plateau", hp, n, "adam",
                    {"lr": rng.uniform(0.001, 0.1), "beta1": 0.9}, metrics)
    return Case("plateau%d" % i, "plateau", hp, n, "sgd",
                {"lr": rng.uniform(0.01, 1.0), "momentum": 0.9}, metrics)


def draw_cases(seed, per_plugin):
    rng = random.Random(seed)
    cases = []
    for i in range(per_plugin):
        cases += [draw_cyclic(rng, i), draw_onecycle(rng, i), draw_plateau(rng, i)]
    # Fixed corners: defaults only; the default step_size_up; exp_range with
    # gamma 1; a one-step cycle; pct_start 0 (the first phase never runs).
    cases += [
        Case("cyclic_defaults", "cyclic", {"base_lr": 0.001, "max_lr": 0.1}, 30),
        Case("cyclic_exp_gamma1", "cyclic", {"base_lr": 0.01, "max_lr": 0.1, "mode": 2,
                                             "step_size_up": 3}, 20),
        Case("cyclic_up1_down1", "cyclic", {"base_lr": 0.0, "max_lr": 0.3, "step_size_up": 1,
                                            "step_size_down": 1, "mode": 1}, 12),
        Case("onecycle_defaults", "onecycle", {"max_lr": 0.3, "total_steps": 100}, 100),
        Case("onecycle_pct0", "onecycle", {"max_lr": 0.3, "total_steps": 7, "pct_start": 0.0}, 7),
        Case("onecycle_t1", "onecycle", {"max_lr": 0.3, "total_steps": 1, "pct_start": 0.0}, 1),
        Case("onecycle_pct0_3phase", "onecycle", {"max_lr": 0.3, "total_steps": 9,
                                                  "pct_start": 0.0, "three_phase": True}, 9),
        Case("plateau_defaults", "plateau", {}, 30, metrics=[1.0] * 30),
    ]
    return cases


# torch 1.13 configurations that divide by zero at some epoch 0..T: the
# plugin must refuse them (check_hparams), the daemon with BAD_HPARAM.
ZERO_PHASE = [
    {"max_lr": 0.1, "total_steps": 10, "pct_start": 1.0},
    {"max_lr": 0.1, "total_steps": 10, "pct_start": 0.1},
    {"max_lr": 0.1, "total_steps": 10, "pct_start": 0.1, "three_phase": True},
    # (2 * pct_start * T - 2 == T - 1: the third phase is empty)
    {"max_lr": 0.1, "total_steps": 8, "pct_start": 0.5625, "three_phase": True},
]


def torch_kwargs(plugin, hp):
    kw = {}
    for key, value in hp.items():
        if plugin == "cyclic" and key == "mode":
            value = CYCLIC_MODES[value]
        elif plugin == "cyclic" and key == "step_size_down":
            value = value or None
        elif key == "anneal_strategy":
            value = ANNEAL[value]
        elif plugin == "plateau" and key == "mode":
            value = PLATEAU_MODES[value]
        elif key == "threshold_mode":
            value = THRESHOLD_MODES[value]
        kw[key] = value
    return kw


def torch_optimizer(case, param):
    hp = dict(case.opt_hparams)
    if case.optimizer == "adam":
        hp["betas"] = (hp.pop("beta1"), 0.999)
        return torch.optim.Adam([param], **hp)
    return torch.optim.SGD([param], **hp)


def torch_momentum(optimizer):
    group = optimizer.param_groups[0]
    return group["betas"][0] if "betas" in group else group["momentum"]


def grad_sequence(case):
    g = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    return [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(case.steps)]


def run_torch(case):
    """torch's lr, momentum (or beta1) and parameter after construction and
    after each optimizer.step() + scheduler.step()."""
    param = torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=torch.float64))
    optimizer = torch_optimizer(case, param)
    cls = {"cyclic": LRS.CyclicLR, "onecycle": LRS.OneCycleLR,
           "plateau": LRS.ReduceLROnPlateau}[case.plugin]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = cls(optimizer, **torch_kwargs(case.plugin, case.hparams))
        lrs = [optimizer.param_groups[0]["lr"]]
        moms = [torch_momentum(optimizer)]
        params = [param.detach().clone()]
        for k, grad in enumerate(grad_sequence(case)):
            param.grad = grad.clone()
            optimizer.step()
            if case.metrics is not None:
                sched.step(case.metrics[k])
            else:
                sched.step()
            lrs.append(optimizer.param_groups[0]["lr"])
            moms.append(torch_momentum(optimizer))
            params.append(param.detach().clone())
    return lrs, moms, params


# ------------------------------------------------------------ comparison --


def ulp_distance(a, b):
    if a == b:
        return 0
    if math.isnan(a) or math.isnan(b):
        return 1 << 64

    def key(x):
        i = struct.unpack("<q", struct.pack("<d", x))[0]
        return i if i >= 0 else -(1 << 63) - i
    return abs(key(a) - key(b))


class Tally:
    def __init__(self):
        self.failures = []
        self.compared = 0
        self.max_ulp = 0
        self.max_rel = 0.0

    def same(self, what, got, want):
        self.compared += 1
        ulp = ulp_distance(got, want)
        self.max_ulp = max(self.max_ulp, ulp)
        if want != got:
            rel = abs(got - want) / max(abs(want), 1e-300)
            self.max_rel = max(self.max_rel, rel)
        if ulp != 0:
            self.fail("%s: got %.17g, torch %.17g (%d ulp)" % (what, got, want, ulp))
            return False
        return True

    def fail(self, text):
        self.failures.append(text)
        if len(self.failures) <= 30:
            print("FAIL " + text, flush=True)

    def report(self, label):
        print("%s: %d values compared, max %d ulp, max relative error %.3g, %d failures"
              % (label, self.compared, self.max_ulp, self.max_rel, len(self.failures)))
        return 1 if self.failures else 0


# --------------------------------------------------------- plugins (ctypes) --

LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p)
SET_ERROR_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


class Host(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("abi_major", ctypes.c_uint32),
                ("abi_minor", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("call", ctypes.c_void_p), ("log", LOG_FN), ("set_error", SET_ERROR_FN),
                ("scratch", ctypes.c_void_p), ("parallel_for", ctypes.c_void_p)]


class SchedArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_hparams", ctypes.c_uint32),
                ("hparams", ctypes.POINTER(ctypes.c_double)), ("epoch", ctypes.c_int64),
                ("base_lr", ctypes.c_double), ("last_lr", ctypes.c_double),
                ("state", ctypes.POINTER(ctypes.c_double))]


class HparamDef(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
                ("key", ctypes.c_char_p), ("doc", ctypes.c_char_p), ("min", ctypes.c_double),
                ("max", ctypes.c_double), ("default_value", ctypes.c_double)]


CHECK_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.POINTER(Host), ctypes.POINTER(ctypes.c_double),
                            ctypes.c_uint32)
VALUE_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.POINTER(Host), ctypes.POINTER(SchedArgs),
                            ctypes.POINTER(ctypes.c_double))
OBSERVE_FN = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.POINTER(Host), ctypes.POINTER(SchedArgs),
                              ctypes.c_double, ctypes.POINTER(ctypes.c_double))


class Scheduler(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_hparams", ctypes.c_uint32),
                ("hparams", ctypes.POINTER(HparamDef)), ("check_hparams", CHECK_FN),
                ("lr", VALUE_FN), ("momentum", VALUE_FN), ("n_state", ctypes.c_uint32),
                ("reserved", ctypes.c_uint32), ("observe", OBSERVE_FN)]


class Desc(ctypes.Structure):
    _fields_ = [("abi_major", ctypes.c_uint32), ("abi_minor", ctypes.c_uint32),
                ("struct_size", ctypes.c_uint32), ("kind", ctypes.c_uint32),
                ("id", ctypes.c_char_p), ("version", ctypes.c_char_p),
                ("description", ctypes.c_char_p), ("optimizer", ctypes.c_void_p),
                ("scheduler", ctypes.POINTER(Scheduler))]


HP_FLOAT, HP_INT, HP_BOOL = 1, 2, 3
HP_REQUIRED = 1


class PluginError(Exception):
    pass


class Plugin:
    """One scheduler .so, called the way the daemon calls it: a host table
    whose set_error records the text, and dense hyperparameter arrays in
    declaration order (defaults for the keys a case leaves out)."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        self.desc = Desc.in_dll(self.lib, "optimd_plugin")
        self.table = self.desc.scheduler.contents
        self.defs = [self.table.hparams[i] for i in range(self.table.n_hparams)]
        self.keys = [d.key.decode() for d in self.defs]
        self.error = None
        self._log = LOG_FN(lambda call, level, msg: None)
        self._set_error = SET_ERROR_FN(self._record_error)
        self.host = Host(ctypes.sizeof(Host), 1, 1, 0, None, self._log, self._set_error, None, None)

    def _record_error(self, call, msg):
        self.error = msg.decode()

    def dense(self, hp):
        unknown = set(hp) - set(self.keys)
        if unknown:
            raise KeyError("unknown keys %s" % sorted(unknown))
        values = []
        for d, key in zip(self.defs, self.keys):
            if key in hp:
                values.append(float(hp[key]))
            elif d.flags & HP_REQUIRED:
                raise KeyError("required key %s missing" % key)
            else:
                values.append(d.default_value)
        return (ctypes.c_double * len(values))(*values)

    def check(self, hp):
        values = self.dense(hp)
        self.error = None
        st = self.table.check_hparams(ctypes.byref(self.host), values, len(values))
        return st, self.error

    def _call(self, fn, values, epoch, base_lr, last_lr, state, *extra):
        args = SchedArgs(ctypes.sizeof(SchedArgs), len(values), values, epoch, base_lr, last_lr,
                         state)
        out = ctypes.c_double(float("nan"))
        self.error = None
        st = fn(ctypes.byref(self.host), ctypes.byref(args), *extra, ctypes.byref(out))
        if st != 0:
            raise PluginError("status %d: %s" % (st, self.error))
        return out.value

    def lr(self, values, epoch, base_lr, last_lr, state=None):
        return self._call(self.table.lr, values, epoch, base_lr, last_lr, state)

    def momentum(self, values, epoch, base_lr, last_lr):
        return self._call(self.table.momentum, values, epoch, base_lr, last_lr, None)

    def observe(self, values, epoch, base_lr, last_lr, state, metric):
        return self._call(self.table.observe, values, epoch, base_lr, last_lr, state,
                          ctypes.c_double(metric))


def plugin_sequence(plugin, case):
    """What the daemon would compute: lr and momentum at epochs 0..steps,
    lr after each observe for plateau."""
    values = plugin.dense(case.hparams)
    base = case.opt_hparams["lr"]
    has_momentum = bool(plugin.table.momentum)
    state = None
    if plugin.table.n_state:
        state = (ctypes.c_double * plugin.table.n_state)()
    lrs = [plugin.lr(values, 0, base, base, state)]
    moms = [plugin.momentum(values, 0, base, base) if has_momentum else float("nan")]
    for epoch in range(1, case.steps + 1):
        lr = plugin.lr(values, epoch, base, lrs[-1], state)
        if case.metrics is not None:
            lr = plugin.observe(values, epoch, base, lr, state, case.metrics[epoch - 1])
        lrs.append(lr)
        moms.append(plugin.momentum(values, epoch, base, lrs[-2]) if has_momentum
                    else float("nan"))
    return lrs, moms


def check_defaults(plugins, tally):
    """Every declared default equals torch's (through the same key
    translation as the cases), so a case that leaves a key out tests it."""
    classes = {"cyclic": LRS.CyclicLR, "onecycle": LRS.OneCycleLR,
               "plateau": LRS.ReduceLROnPlateau}
    for pid, cls in classes.items():
        plugin = plugins[pid]
        sig = inspect.signature(cls.__init__).parameters
        for d, key in zip(plugin.defs, plugin.keys):
            if d.flags & HP_REQUIRED:
                continue
            if key not in sig:
                tally.fail("%s: %s is not a torch argument" % (pid, key))
                continue
            value = d.default_value
            if d.type == HP_BOOL:
                value = bool(value)
            elif d.type == HP_INT:
                value = int(value)
            mine = torch_kwargs(pid, {key: value})[key]
            theirs = sig[key].default
            tally.compared += 1
            if mine != theirs:
                tally.fail("%s: default of %s is %r, torch's %r" % (pid, key, mine, theirs))


def check_reference_vectors(plugins, tally):
    """optimizer-reference.md section 4, printed to 4-6 digits there: each
    value must round to the printed one."""
    def close(what, got, printed):
        tol = 0.5 * 10.0 ** decimal.Decimal(printed).as_tuple().exponent
        tally.compared += 1
        if not abs(got - float(printed)) <= tol * 1.0000001:
            tally.fail("%s: %.17g does not round to the reference's %s" % (what, got, printed))

    def lr_run(pid, hp, steps, metrics=None):
        case = Case("ref", pid, hp, steps, metrics=metrics,
                    opt_hparams={"lr": 0.1, "momentum": 0.9})
        return plugin_sequence(plugins[pid], case)[0]

    vectors = [
        ("cyclic", {"base_lr": .01, "max_lr": .1, "step_size_up": 2, "mode": 1}, 9, None, 0,
         ".01 .055 .1 .055 .01 .0325 .055 .0325 .01 .02125"),
        ("cyclic", {"base_lr": .01, "max_lr": .1, "step_size_up": 2, "mode": 2, "gamma": .9}, 8,
         None, 0, ".01 .0505 .0829 .04281 .01 .03657 .05783 .03152 .01"),
        ("onecycle", {"max_lr": .1, "total_steps": 10}, 10, None, 0,
         ".004 .052 .1 .095048 .081175 .061126 .038874 .018826 .004952 4e-7 .004952"),
        ("onecycle", {"max_lr": .1, "total_steps": 10, "three_phase": True,
                      "anneal_strategy": 1}, 10, None, 0,
         ".004 .052 .1 .052 .004 .0032 .0024 .0016 .0008 4e-7 -.0008"),
        # Plateau: the reference lists the lr after each step.
        ("plateau", {"patience": 2, "cooldown": 1, "factor": .5}, 10, [1.0] * 10, 1,
         ".1 .1 .1 .05 .05 .05 .05 .025 .025 .025"),
    ]
    for pid, hp, steps, metrics, skip, text in vectors:
        got = lr_run(pid, hp, steps, metrics)[skip:]
        want = text.split()
        tally.compared += 1
        if len(got) != len(want):
            tally.fail("reference %s %r: %d values, reference %d" % (pid, hp, len(got), len(want)))
            continue
        for k, (g, w) in enumerate(zip(got, want)):
            close("reference %s %r [%d]" % (pid, hp, k), g, w)


def onecycle_divides_by_zero(hp):
    """Whether torch's OneCycleLR raises ZeroDivisionError at some epoch
    0..total_steps (construction evaluates epoch 0)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sched = LRS.OneCycleLR(opt, **torch_kwargs("onecycle", hp))
            for _ in range(hp["total_steps"]):
                sched.step()
        except ZeroDivisionError:
            return True
    return False


def check_errors(plugins, tally):
    onecycle = plugins["onecycle"]
    # Past total_steps: torch raises at the (T+1)-th step, so does the plugin.
    hp = {"max_lr": 0.1, "total_steps": 10}
    values = onecycle.dense(hp)
    for fn in (onecycle.lr, onecycle.momentum):
        tally.compared += 1
        try:
            fn(values, 11, 0.1, 0.1)
            tally.fail("onecycle: epoch 11 of 10 gave a value")
        except PluginError as exc:
            if "past total_steps" not in str(exc):
                tally.fail("onecycle: epoch 11 error text: %s" % exc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
        sched = LRS.OneCycleLR(opt, 0.1, total_steps=10)
        for _ in range(10):
            sched.step()
        tally.compared += 1
        try:
            sched.step()
            tally.fail("torch: OneCycleLR stepped past total_steps (the plugin's premise)")
        except ValueError:
            pass
    # Zero-length phases: refused by check_hparams exactly when torch
    # raises ZeroDivisionError at some epoch 0..T, over a grid that holds
    # every pct_start = k / T (and the crafted corners).
    grid = [dict(hp) for hp in ZERO_PHASE]
    for total in range(1, 25):
        pcts = {k / total for k in range(total + 1)} | {(total + 1) / (2 * total), 0.3, 0.95}
        for pct in sorted(p for p in pcts if p <= 1.0):
            for three in (False, True):
                grid.append({"max_lr": 0.1, "total_steps": total, "pct_start": pct,
                             "three_phase": three})
    for hp in ZERO_PHASE:
        tally.compared += 1
        if not onecycle_divides_by_zero(hp):
            tally.fail("onecycle %r: torch does not divide by zero (ZERO_PHASE is wrong)" % hp)
    refused = 0
    for hp in grid:
        torch_raises = onecycle_divides_by_zero(hp)
        st, err = onecycle.check(hp)
        refused += st != 0
        tally.compared += 1
        if (st != 0) != torch_raises:
            tally.fail("onecycle %r: check_hparams status %d (%s), torch raises: %s"
                       % (hp, st, err, torch_raises))
    print("onecycle: %d of %d grid configurations refused, as torch" % (refused, len(grid)))
    # The range checks a hand-made call cannot get around.
    tally.compared += 1
    st, err = plugins["plateau"].check({"factor": 1.0})
    if st == 0:
        tally.fail("plateau: factor 1 accepted (torch raises)")
    tally.compared += 1
    st, err = plugins["cyclic"].check({"base_lr": 0.1, "max_lr": 0.2, "mode": 3})
    if st == 0:
        tally.fail("cyclic: mode 3 accepted")


def run_plugins(args):
    plugins = {pid: Plugin(os.path.join(args.plugin_dir, pid + ".so"))
               for pid in ("cyclic", "onecycle", "plateau")}
    for pid, p in plugins.items():
        assert p.desc.id.decode() == pid and p.table.struct_size == ctypes.sizeof(Scheduler), pid
    tally = Tally()
    check_defaults(plugins, tally)
    check_reference_vectors(plugins, tally)
    check_errors(plugins, tally)
    cases = draw_cases(args.seed, args.cases)
    for case in cases:
        t_lrs, t_moms, _ = run_torch(case)
        try:
            lrs, moms = plugin_sequence(plugins[case.plugin], case)
        except PluginError as exc:
            tally.fail("%r: %s" % (case, exc))
            continue
        for e, (got, want) in enumerate(zip(lrs, t_lrs)):
            if not tally.same("%r: lr at epoch %d" % (case, e), got, want):
                break
        cycles = case.plugin != "plateau" and case.hparams.get("cycle_momentum", True)
        for e, (got, want) in enumerate(zip(moms, t_moms)):
            if cycles:
                if not tally.same("%r: momentum at epoch %d" % (case, e), got, want):
                    break
            elif not math.isnan(got):
                tally.fail("%r: momentum %r at epoch %d without cycling" % (case, got, e))
                break
    print("%d random and fixed cases" % len(cases))
    return tally.report("sched_parity plugins")


# ------------------------------------------------------------------ daemon --


def run_daemon(args):
    import numpy as np
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import optimd
    from support import Daemon

    daemon = Daemon()
    status = 1
    tally = Tally()
    try:
        client = optimd.Client(daemon.url, timeout=60)
        cases = draw_cases(args.seed, args.cases)
        for case in cases:
            daemon_case(client, case, tally, np)
        # Configurations torch divides by zero in are refused at open.
        for i, hp in enumerate(ZERO_PHASE):
            tally.compared += 1
            try:
                s = client.open("zero%d" % i, "sgd", {"lr": 0.1, "momentum": 0.9},
                                scheduler="onecycle", sched_hparams=hp, durability="none")
                client.close_session(s)
                tally.fail("onecycle %r: open accepted" % hp)
            except optimd.OptimdError as exc:
                if exc.code != 13:  # BAD_HPARAM
                    tally.fail("onecycle %r: open failed with %s" % (hp, exc))
        # Cycling momentum needs a momentum or beta1 to write to.
        tally.compared += 1
        try:
            s = client.open("nomomentum", "adagrad", {"lr": 0.1}, scheduler="onecycle",
                            sched_hparams={"max_lr": 0.1, "total_steps": 5}, durability="none")
            client.close_session(s)
            tally.fail("onecycle with adagrad (no momentum, no beta1): open accepted")
        except optimd.OptimdError as exc:
            if exc.code != 13:
                tally.fail("onecycle with adagrad: open failed with %s" % exc)
        client.close()
        print("%d random and fixed cases through the daemon" % len(cases))
        status = tally.report("sched_parity daemon")
    finally:
        rc = daemon.stop()
        if rc != 0:
            print("FAIL daemon exit status %d; log:\n%s" % (rc, daemon.log()))
            status = 1
    return status


def daemon_case(client, case, tally, np):
    import optimd

    t_lrs, t_moms, t_params = run_torch(case)
    momentum_key = "beta1" if case.optimizer == "adam" else "momentum"
    cycles = case.plugin != "plateau" and case.hparams.get("cycle_momentum", True)
    try:
        session = client.open(case.name, case.optimizer, case.opt_hparams,
                              scheduler=case.plugin, sched_hparams=case.hparams,
                              durability="none")
    except optimd.OptimdError as exc:
        tally.fail("%r: open: %s" % (case, exc))
        return
    try:
        client.register(session, {"w": t_params[0].numpy()})
        grads = grad_sequence(case)

        def check_hparams(epoch):
            hp = client.hparams(session)
            ok = tally.same("%r: hparams.lr at epoch %d" % (case, epoch), hp.lr, t_lrs[epoch])
            want = t_moms[epoch] if cycles else case.opt_hparams[momentum_key]
            return ok and tally.same("%r: hparams.%s at epoch %d" % (case, momentum_key, epoch),
                                     float(hp.hparams[momentum_key]), want)

        if not check_hparams(0):
            return
        for k in range(1, case.steps + 1):
            result = client.step(session, {"w": grads[k - 1].numpy()})
            ok = tally.same("%r: step %d lr" % (case, k), result.lr, t_lrs[k - 1])
            got = np.asarray(result.params["w"])
            want = t_params[k].numpy()
            tally.compared += 1
            if got.tobytes() != want.tobytes():
                tally.fail("%r: parameter after step %d: %r, torch %r" % (case, k, got, want))
                ok = False
            if case.metrics is not None:
                ok = ok and tally.same("%r: next_lr after step %d" % (case, k), result.next_lr,
                                       t_lrs[k - 1])
                reply = client.request("observe", session=session.name, token=session.token,
                                       metric=float(case.metrics[k - 1]))
                ok = ok and tally.same("%r: observe %d lr" % (case, k), float(reply["lr"]),
                                       t_lrs[k])
            else:
                ok = ok and tally.same("%r: next_lr after step %d" % (case, k), result.next_lr,
                                       t_lrs[k])
            if not (ok and check_hparams(k)):
                return
    finally:
        client.close_session(session)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["plugins", "daemon"])
    parser.add_argument("--plugin-dir", default=os.environ.get("OPTIMD_PLUGIN_DIR"))
    parser.add_argument("--seed", type=int, default=20240513)
    parser.add_argument("--cases", type=int, default=40, help="random cases per plugin")
    args = parser.parse_args()
    status = run_plugins(args) if args.mode == "plugins" else run_daemon(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
