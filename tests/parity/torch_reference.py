#!/usr/bin/python3
"""Writes torch 1.13.1's answers for optimd's parity tests.

Run with Debian's /usr/bin/python3 (python3-torch is importable only there):

    torch_reference.py --suite unit|daemon --out DIR

For every case it writes, into DIR:
  <case>.init.bin    initial parameter values, params in manifest order
  <case>.grad.bin    the gradient of every (step, param), step-major; zeros
                     where that param has no gradient at that step
  <case>.expect.bin  torch's parameter after every (step, param), step-major
  <case>.lr.bin      float64: the lr in effect before step 1, 2, ..., steps,
                     then the lr after the last step (steps + 1 values)
  <case>.state.bin   torch's optimizer state after the last step: every
                     tensor in optimizer.state[param] but the step counter,
                     in the order of the case's `state` lines
and one text manifest, DIR/manifest.txt, which case_data.c parses:

  torch_default <plugin> <key> <float|int|bool|required> [value]
  case <name>
  optimizer <id>                     (absent for scheduler-only cases)
  dtype f32|f64
  steps <n>
  base_lr <value>                    (scheduler-only cases)
  param <name> <numel>               (one per parameter, in order)
  hparam <key> <float|int|bool> <value>
  scheduler <id>
  sched_hparam <key> <float|int|bool> <value>
  has_grad <step> <bits>             (bits[i] == '1': param i has a gradient)
  state <param index> <key> <f32|f64> <numel>   (one per state tensor)
  end

Only hyperparameters a case sets explicitly are listed; the others take
torch's defaults here and the plugin's declared defaults in the C tests, so
a wrong default in a plugin fails the comparison.

Nothing in this file computes an update itself: every expected number comes
from torch.optim, except for the optimizers torch 1.13 lacks (lion, adan,
ademamix), whose answers come from beyond_torch.py: independent
implementations in torch 1.13 tensor ops of each method's reference code. Exit status 77 means torch is not importable (CTest then
reports the test as skipped, not passed).
"""

import argparse
import inspect
import math
import os
import random
import sys
import warnings

try:
    import torch
except ImportError as exc:  # pragma: no cover - environment problem
    print("torch_reference.py: cannot import torch: %s" % exc, file=sys.stderr)
    sys.exit(77)

BOOL_KEYS = {"nesterov", "maximize", "amsgrad", "centered", "no_prox"}
# MultiStepLR's list of milestones travels as up to MAX_MILESTONES int keys
# milestone0, milestone1, ...; -1 marks an unused key (no epoch is -1).
MAX_MILESTONES = 8
MILESTONE_KEYS = ["milestone%d" % i for i in range(MAX_MILESTONES)]
INT_KEYS = ({"step_size", "T_max", "total_iters", "T_0", "T_mult", "warmup_iters",
             "beta3_warmup", "alpha_warmup"} |
            set(MILESTONE_KEYS))

# torch arguments that are pairs; optimd splits each into two float keys.
# (Adan's and AdEMAMix's betas are triples: beta1, beta2, beta3.)
PAIR_KEYS = {
    "betas": ("beta1", "beta2", "beta3"),
    "etas": ("eta_minus", "eta_plus"),
    "step_sizes": ("step_size_min", "step_size_max"),
}

class WarmupCosine:
    """optimd's warmup_cosine as torch users compose it: LinearLR warmup,
    then CosineAnnealingLR, in a SequentialLR (CosineAnnealingLR alone when
    warmup_iters is 0). One rule is optimd's own and not torch's: past
    warmup_iters + T_max, where torch's cosine would rise again, the lr
    stays at eta_min."""

    def __init__(self, optimizer, warmup_iters, T_max, start_factor=1.0 / 3, eta_min=0.0):
        sched = torch.optim.lr_scheduler
        self.optimizer = optimizer
        self.end = warmup_iters + T_max
        self.eta_min = eta_min
        self.epoch = 0
        cosine = sched.CosineAnnealingLR
        if warmup_iters == 0:
            self.inner = cosine(optimizer, T_max=T_max, eta_min=eta_min)
        else:
            warmup = sched.LinearLR(optimizer, start_factor=start_factor, end_factor=1.0,
                                    total_iters=warmup_iters)
            self.inner = sched.SequentialLR(
                optimizer, [warmup, cosine(optimizer, T_max=T_max, eta_min=eta_min)],
                milestones=[warmup_iters])

    def step(self):
        self.epoch += 1
        if self.epoch > self.end:
            for group in self.optimizer.param_groups:
                group["lr"] = self.eta_min
            return
        with warnings.catch_warnings():
            # SequentialLR restarts the cosine with the deprecated step(0).
            warnings.simplefilter("ignore")
            self.inner.step()

    def get_last_lr(self):
        return [self.eta_min] if self.epoch > self.end else self.inner.get_last_lr()


OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "adadelta": torch.optim.Adadelta,
    "asgd": torch.optim.ASGD,
    "rprop": torch.optim.Rprop,
}
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import beyond_torch  # noqa: E402  (after the torch import check above)
OPTIMIZERS.update(beyond_torch.OPTIMIZERS)
SCHEDULERS = {
    "step": torch.optim.lr_scheduler.StepLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
    "multistep": torch.optim.lr_scheduler.MultiStepLR,
    "constant": torch.optim.lr_scheduler.ConstantLR,
    "linear": torch.optim.lr_scheduler.LinearLR,
    "exponential": torch.optim.lr_scheduler.ExponentialLR,
    "polynomial": torch.optim.lr_scheduler.PolynomialLR,
    "cosine_warm_restarts": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts,
    "warmup_cosine": WarmupCosine,
}
DTYPES = {"f32": torch.float32, "f64": torch.float64}


def key_type(key):
    if key in BOOL_KEYS:
        return "bool"
    if key in INT_KEYS:
        return "int"
    return "float"


def format_value(key, value):
    kind = key_type(key)
    if kind == "bool":
        return "1" if value else "0"
    if kind == "int":
        return "%d" % value
    return repr(float(value))  # shortest repr that round-trips exactly


def torch_optimizer_kwargs(cls, hparams):
    """optimd's keys to torch's: beta1/beta2 become the betas tuple, and
    likewise for the other PAIR_KEYS; a half left out takes torch's
    default."""
    kwargs = dict(hparams)
    signature = inspect.signature(cls.__init__).parameters
    for pair, keys in PAIR_KEYS.items():
        if pair not in signature:
            continue
        default = signature[pair].default
        keys = keys[:len(default)]
        if any(key in kwargs for key in keys):
            kwargs[pair] = tuple(kwargs.pop(key, value) for key, value in zip(keys, default))
    kwargs["foreach"] = False  # the single-tensor path optimd reproduces
    return kwargs


def torch_scheduler_kwargs(hparams):
    # Plugin keys are torch's own argument names, except the milestones.
    kwargs = {k: v for k, v in hparams.items() if k not in MILESTONE_KEYS}
    milestones = [hparams[k] for k in MILESTONE_KEYS if hparams.get(k, -1) != -1]
    if any(k in hparams for k in MILESTONE_KEYS):
        kwargs["milestones"] = milestones
    return kwargs


def torch_defaults():
    """(plugin, key, type, value-or-None) for every hyperparameter torch
    declares with a default, read from the constructors' signatures."""
    rows = []
    ignored = {"self", "params", "optimizer", "foreach", "capturable",
               "differentiable", "fused", "last_epoch", "verbose"}
    for plugin, cls in list(OPTIMIZERS.items()) + list(SCHEDULERS.items()):
        for name, par in inspect.signature(cls.__init__).parameters.items():
            if name in ignored:
                continue
            default = par.default
            required = (default is inspect.Parameter.empty or
                        repr(default) == "<required parameter>")
            if name in PAIR_KEYS:
                for key, value in zip(PAIR_KEYS[name], default):
                    rows.append((plugin, key, "float", value))
                continue
            if name == "milestones":
                # A required list: at least milestone0; the rest unused.
                rows.append((plugin, MILESTONE_KEYS[0], "required", None))
                rows.extend((plugin, key, "int", -1) for key in MILESTONE_KEYS[1:])
                continue
            key = name   # plugin keys are torch's own argument names
            rows.append((plugin, key, "required" if required else key_type(key),
                         None if required else default))
    return rows


class Case:
    def __init__(self, name, optimizer=None, hparams=None, dtype="f32",
                 params=(("w", 1037),), steps=8, scheduler=None,
                 sched_hparams=None, has_grad=None, base_lr=None, seed=0):
        self.name = name
        self.optimizer = optimizer
        self.hparams = hparams or {}
        self.dtype = dtype
        self.params = list(params)
        self.steps = steps
        self.scheduler = scheduler
        self.sched_hparams = sched_hparams or {}
        # has_grad(step, param_index) -> bool; step is 1-based.
        self.has_grad = has_grad or (lambda step, index: True)
        self.base_lr = base_lr
        self.seed = seed
        # (param index, key, dtype name, numel) of torch's final state,
        # filled in when the case runs.
        self.states = []


def make_gradient(gen, numel, dtype, step):
    """Gradients of varying scale with some exact zeros (signed-zero and
    zero-denominator paths) and a few large values."""
    scale = (0.05, 1.0, 3.0, 0.001)[step % 4]
    g = torch.randn(numel, generator=gen, dtype=dtype) * scale
    g[step % 97::97] = 0.0
    g[(step * 7) % 1009::1009] *= 1000.0
    return g


def run_optimizer_case(case, out_dir):
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(case.seed)
    params = [torch.nn.Parameter(torch.randn(numel, generator=gen, dtype=dtype))
              for _, numel in case.params]
    init = [p.detach().clone() for p in params]
    cls = OPTIMIZERS[case.optimizer]
    optimizer = cls(params, **torch_optimizer_kwargs(cls, case.hparams))
    scheduler = None
    if case.scheduler:
        scheduler = SCHEDULERS[case.scheduler](
            optimizer, **torch_scheduler_kwargs(case.sched_hparams))
    grads, expected, lrs = [], [], []
    for step in range(1, case.steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        for index, (p, (_, numel)) in enumerate(zip(params, case.params)):
            g = make_gradient(gen, numel, dtype, step)
            if case.has_grad(step, index):
                p.grad = g.clone()
                grads.append(g)
            else:
                p.grad = None  # torch skips the parameter entirely
                grads.append(torch.zeros(numel, dtype=dtype))
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
            assert scheduler.get_last_lr()[0] == optimizer.param_groups[0]["lr"]
        expected.extend(p.detach().clone() for p in params)
    lrs.append(optimizer.param_groups[0]["lr"])
    # The state the plugin keeps in slots of the same keys; the step count
    # is the host's, and None entries (SGD without momentum) hold nothing.
    state_tensors = []
    for index, p in enumerate(params):
        for key, value in optimizer.state[p].items():
            if key == "step" or not torch.is_tensor(value):
                continue
            dtype_name = {torch.float32: "f32", torch.float64: "f64"}[value.dtype]
            case.states.append((index, key, dtype_name, value.numel()))
            state_tensors.append(value.detach().reshape(-1))
    write_tensors(os.path.join(out_dir, case.name + ".state.bin"), state_tensors)
    write_tensors(os.path.join(out_dir, case.name + ".init.bin"), init)
    write_tensors(os.path.join(out_dir, case.name + ".grad.bin"), grads)
    write_tensors(os.path.join(out_dir, case.name + ".expect.bin"), expected)
    write_tensors(os.path.join(out_dir, case.name + ".lr.bin"),
                  [torch.tensor(lrs, dtype=torch.float64)])


def run_scheduler_case(case, out_dir):
    """Only the lr sequence: epochs 0..steps of the scheduler alone."""
    dummy = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([dummy], lr=case.base_lr)
    scheduler = SCHEDULERS[case.scheduler](
        optimizer, **torch_scheduler_kwargs(case.sched_hparams))
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(case.steps):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    write_tensors(os.path.join(out_dir, case.name + ".lr.bin"),
                  [torch.tensor(lrs, dtype=torch.float64)])


def write_tensors(path, tensors):
    with open(path, "wb") as f:
        for t in tensors:
            # numpy's tobytes() is native order; the tests run on x86-64 and
            # the protocol is little-endian, so assert rather than convert.
            assert sys.byteorder == "little"
            f.write(t.contiguous().numpy().tobytes())


def write_manifest(out_dir, cases):
    lines = []
    for plugin, key, kind, value in torch_defaults():
        if value is None:
            lines.append("torch_default %s %s %s" % (plugin, key, kind))
        else:
            lines.append("torch_default %s %s %s %s" %
                         (plugin, key, kind, format_value(key, value)))
    for case in cases:
        lines.append("case " + case.name)
        if case.optimizer:
            lines.append("optimizer " + case.optimizer)
        lines.append("dtype " + case.dtype)
        lines.append("steps %d" % case.steps)
        if case.base_lr is not None:
            lines.append("base_lr " + repr(float(case.base_lr)))
        for name, numel in case.params:
            lines.append("param %s %d" % (name, numel))
        for key, value in case.hparams.items():
            lines.append("hparam %s %s %s" % (key, key_type(key), format_value(key, value)))
        if case.scheduler:
            lines.append("scheduler " + case.scheduler)
        for key, value in case.sched_hparams.items():
            lines.append("sched_hparam %s %s %s" %
                         (key, key_type(key), format_value(key, value)))
        if case.optimizer:
            for step in range(1, case.steps + 1):
                bits = "".join("1" if case.has_grad(step, i) else "0"
                               for i in range(len(case.params)))
                lines.append("has_grad %d %s" % (step, bits))
        for index, key, dtype_name, numel in case.states:
            lines.append("state %d %s %s %d" % (index, key, dtype_name, numel))
        lines.append("end")
    with open(os.path.join(out_dir, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def subset_mask(step, index):
    """Param 0 ("w") misses steps 3, 4 and 9; param 1 ("b") gets a gradient
    only on every third step, so the two step counters drift apart."""
    if index == 0:
        return step not in (3, 4, 9)
    return step % 3 == 1


def milestones(*epochs):
    """MultiStepLR's milestones as optimd's milestone<i> keys."""
    assert len(epochs) <= MAX_MILESTONES
    return {MILESTONE_KEYS[i]: e for i, e in enumerate(epochs)}


def catalog_unit_cases():
    """The optimizers and schedulers beyond sgd/adam/adamw/step/cosine: the
    main flag combinations of each, an f64 case of each, and torch's
    quirks (NAdam's double-counted mu, RAdam's switch to the rectified
    update at step 6, ASGD's averaging from step t0 + 2 on, Rprop's sign
    changes and step-size clamping)."""
    s = []
    # Adagrad
    s.append(Case("adagrad_defaults", "adagrad", {}))
    s.append(Case("adagrad_decay_wd_init", "adagrad",
                  {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1,
                   "initial_accumulator_value": 0.1, "eps": 1e-8}, steps=10))
    s.append(Case("adagrad_maximize", "adagrad", {"lr": 0.02, "maximize": True,
                                                  "initial_accumulator_value": 0.5}))
    s.append(Case("adagrad_f64", "adagrad",
                  {"lr": 0.05, "lr_decay": 0.1, "weight_decay": 0.05,
                   "initial_accumulator_value": 0.2, "maximize": True}, dtype="f64"))
    # RMSprop
    s.append(Case("rmsprop_defaults", "rmsprop", {}))
    s.append(Case("rmsprop_centered", "rmsprop", {"lr": 0.001, "centered": True}))
    s.append(Case("rmsprop_momentum", "rmsprop", {"lr": 0.001, "momentum": 0.9,
                                                  "alpha": 0.9, "eps": 1e-6}))
    s.append(Case("rmsprop_centered_momentum_wd", "rmsprop",
                  {"lr": 0.002, "momentum": 0.8, "centered": True, "weight_decay": 0.1},
                  steps=10))
    s.append(Case("rmsprop_maximize", "rmsprop",
                  {"lr": 0.001, "maximize": True, "weight_decay": 0.01, "momentum": 0.5}))
    s.append(Case("rmsprop_f64", "rmsprop",
                  {"lr": 0.002, "momentum": 0.9, "centered": True, "weight_decay": 0.05,
                   "maximize": True}, dtype="f64"))
    # Adamax
    s.append(Case("adamax_defaults", "adamax", {}))
    s.append(Case("adamax_everything", "adamax",
                  {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                   "weight_decay": 0.1, "maximize": True}))
    s.append(Case("adamax_zero_eps", "adamax", {"lr": 0.01, "eps": 0.0, "beta1": 0.0}))
    s.append(Case("adamax_f64", "adamax", {"lr": 0.01, "weight_decay": 0.05}, dtype="f64"))
    # NAdam (no maximize in torch 1.13)
    s.append(Case("nadam_defaults", "nadam", {}, steps=12))
    s.append(Case("nadam_everything", "nadam",
                  {"lr": 0.01, "beta1": 0.85, "beta2": 0.99, "eps": 1e-6,
                   "weight_decay": 0.1, "momentum_decay": 0.05}, steps=12))
    s.append(Case("nadam_f64", "nadam", {"lr": 0.01, "weight_decay": 0.02}, dtype="f64",
                  steps=12))
    # RAdam: with beta2 0.999 the rectified update starts at step 6.
    s.append(Case("radam_defaults", "radam", {}, steps=12))
    s.append(Case("radam_everything", "radam",
                  {"lr": 0.01, "beta1": 0.8, "beta2": 0.995, "eps": 1e-6,
                   "weight_decay": 0.1}, steps=12))
    s.append(Case("radam_f64", "radam", {"lr": 0.01, "weight_decay": 0.05}, dtype="f64",
                  steps=12))
    # Adadelta
    s.append(Case("adadelta_defaults", "adadelta", {}))
    s.append(Case("adadelta_everything", "adadelta",
                  {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1,
                   "maximize": True}))
    s.append(Case("adadelta_f64", "adadelta", {"lr": 0.9, "weight_decay": 0.05},
                  dtype="f64"))
    # ASGD: mu = 1 / max(1, t - t0) leaves 1 (averaging starts) after t0 + 1.
    s.append(Case("asgd_defaults", "asgd", {}))
    s.append(Case("asgd_averaging", "asgd",
                  {"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 3.0,
                   "weight_decay": 0.1}, steps=12))
    s.append(Case("asgd_maximize", "asgd",
                  {"lr": 0.02, "lambd": 0.1, "t0": 2.5, "maximize": True}, steps=10))
    s.append(Case("asgd_f64", "asgd",
                  {"lr": 0.05, "lambd": 0.01, "alpha": 0.9, "t0": 4.0, "weight_decay": 0.05},
                  dtype="f64", steps=12))
    # Rprop: random gradient signs flip about half the elements every step.
    s.append(Case("rprop_defaults", "rprop", {}, steps=12))
    s.append(Case("rprop_clamped", "rprop",
                  {"lr": 0.01, "eta_minus": 0.3, "eta_plus": 1.5,
                   "step_size_min": 0.004, "step_size_max": 0.02}, steps=12))
    s.append(Case("rprop_maximize", "rprop", {"lr": 0.001, "maximize": True}, steps=10))
    s.append(Case("rprop_f64", "rprop",
                  {"lr": 0.01, "eta_minus": 0.4, "step_size_max": 0.05}, dtype="f64",
                  steps=12))
    # Scheduled, several parameters with their own step counters, tensors
    # large enough for parallel_for.
    s.append(Case("rmsprop_multistep", "rmsprop", {"lr": 0.01, "momentum": 0.9}, steps=12,
                  scheduler="multistep", sched_hparams=dict(milestones(3, 7, 7), gamma=0.5)))
    s.append(Case("adagrad_exponential", "adagrad", {"lr": 0.1, "lr_decay": 0.05},
                  steps=10, scheduler="exponential", sched_hparams={"gamma": 0.8}))
    # ASGD's eta for step t is computed at step t - 1 from that step's lr.
    s.append(Case("asgd_linear", "asgd", {"lr": 0.05, "lambd": 0.1, "t0": 2.0}, steps=10,
                  scheduler="linear", sched_hparams={"start_factor": 0.25,
                                                     "total_iters": 4}))
    # Rprop fills its step sizes with the lr of the first step.
    s.append(Case("rprop_constant", "rprop", {"lr": 0.01}, steps=10,
                  scheduler="constant", sched_hparams={"factor": 0.5, "total_iters": 3}))
    s.append(Case("nadam_polynomial", "nadam", {"lr": 0.01}, steps=10,
                  scheduler="polynomial", sched_hparams={"total_iters": 8, "power": 2.0}))
    s.append(Case("radam_warm_restarts", "radam", {"lr": 0.01}, steps=12,
                  scheduler="cosine_warm_restarts",
                  sched_hparams={"T_0": 2, "T_mult": 2, "eta_min": 0.001}))
    s.append(Case("nadam_subset", "nadam", {"lr": 0.01, "weight_decay": 0.1},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("asgd_subset", "asgd", {"lr": 0.05, "lambd": 0.01, "t0": 2.0},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("rprop_subset", "rprop", {"lr": 0.02},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("adagrad_subset", "adagrad", {"lr": 0.05, "initial_accumulator_value": 0.3,
                                                "lr_decay": 0.1},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    for name, hparams in (("adagrad", {"lr": 0.05, "weight_decay": 0.1}),
                          ("rmsprop", {"lr": 0.001, "centered": True, "momentum": 0.9}),
                          ("adamax", {"lr": 0.01}),
                          ("nadam", {"lr": 0.01}),
                          ("radam", {"lr": 0.01}),
                          ("adadelta", {"weight_decay": 0.1}),
                          ("asgd", {"lr": 0.05, "t0": 1.0}),
                          ("rprop", {"lr": 0.01})):
        s.append(Case(name + "_parallel", name, hparams, params=(("w", 70001),), steps=7))
        s.append(Case(name + "_scalar", name, hparams, params=(("s", 1),), steps=7))
    # Schedulers alone, long enough to pass every milestone and restart.
    s.append(Case("multistep_dup", scheduler="multistep", base_lr=0.1, steps=15,
                  sched_hparams=dict(milestones(9, 2, 5, 5), gamma=0.5)))
    s.append(Case("multistep_epoch0", scheduler="multistep", base_lr=0.3, steps=10,
                  sched_hparams=milestones(0, 3, 3, 3, 6, 7, 8, 9)))
    s.append(Case("multistep_one", scheduler="multistep", base_lr=0.7, steps=6,
                  sched_hparams=dict(milestones(4), gamma=0.9)))
    s.append(Case("constant_defaults", scheduler="constant", base_lr=0.1, steps=10))
    s.append(Case("constant_half", scheduler="constant", base_lr=0.07, steps=8,
                  sched_hparams={"factor": 0.5, "total_iters": 3}))
    # 0.1 * 0.45 * (1 / 0.45) and 0.1 * 0.45 / 0.45 differ in the last bit.
    s.append(Case("constant_045", scheduler="constant", base_lr=0.1, steps=6,
                  sched_hparams={"factor": 0.45, "total_iters": 2}))
    s.append(Case("constant_zero_iters", scheduler="constant", base_lr=0.07, steps=5,
                  sched_hparams={"factor": 0.25, "total_iters": 0}))
    s.append(Case("constant_zero_factor", scheduler="constant", base_lr=0.07, steps=5,
                  sched_hparams={"factor": 0.0, "total_iters": 0}))
    s.append(Case("linear_defaults", scheduler="linear", base_lr=0.1, steps=10))
    s.append(Case("linear_quarter", scheduler="linear", base_lr=0.05, steps=12,
                  sched_hparams={"start_factor": 0.25, "end_factor": 0.75, "total_iters": 7}))
    s.append(Case("linear_decay", scheduler="linear", base_lr=0.3, steps=12,
                  sched_hparams={"start_factor": 1.0, "end_factor": 0.1, "total_iters": 9}))
    s.append(Case("linear_zero_end", scheduler="linear", base_lr=0.3, steps=8,
                  sched_hparams={"start_factor": 0.6, "end_factor": 0.0, "total_iters": 5}))
    s.append(Case("exponential_09", scheduler="exponential", base_lr=0.1, steps=40,
                  sched_hparams={"gamma": 0.9}))
    s.append(Case("exponential_grow", scheduler="exponential", base_lr=0.001, steps=20,
                  sched_hparams={"gamma": 1.1}))
    s.append(Case("polynomial_defaults", scheduler="polynomial", base_lr=0.1, steps=10))
    s.append(Case("polynomial_square", scheduler="polynomial", base_lr=0.1, steps=8,
                  sched_hparams={"total_iters": 4, "power": 2.0}))
    s.append(Case("polynomial_sqrt", scheduler="polynomial", base_lr=0.2, steps=14,
                  sched_hparams={"total_iters": 11, "power": 0.5}))
    s.append(Case("polynomial_zero_power", scheduler="polynomial", base_lr=0.2, steps=6,
                  sched_hparams={"total_iters": 3, "power": 0.0}))
    s.append(Case("warm_restarts_3_2", scheduler="cosine_warm_restarts", base_lr=0.1,
                  steps=50, sched_hparams={"T_0": 3, "T_mult": 2, "eta_min": 0.001}))
    s.append(Case("warm_restarts_5_1", scheduler="cosine_warm_restarts", base_lr=0.05,
                  steps=31, sched_hparams={"T_0": 5}))
    s.append(Case("warm_restarts_1_3", scheduler="cosine_warm_restarts", base_lr=0.2,
                  steps=45, sched_hparams={"T_0": 1, "T_mult": 3, "eta_min": 0.01}))
    s.append(Case("warmup_cosine_5_10", scheduler="warmup_cosine", base_lr=0.1, steps=20,
                  sched_hparams={"warmup_iters": 5, "T_max": 10, "eta_min": 0.001}))
    s.append(Case("warmup_cosine_defaults", scheduler="warmup_cosine", base_lr=0.3, steps=12,
                  sched_hparams={"warmup_iters": 3, "T_max": 6}))
    s.append(Case("warmup_cosine_no_warmup", scheduler="warmup_cosine", base_lr=0.05,
                  steps=12, sched_hparams={"warmup_iters": 0, "T_max": 7, "eta_min": 0.002}))
    s.append(Case("warmup_cosine_short", scheduler="warmup_cosine", base_lr=0.2, steps=6,
                  sched_hparams={"warmup_iters": 1, "T_max": 1, "start_factor": 0.01}))
    s.append(Case("warmup_cosine_long", scheduler="warmup_cosine", base_lr=0.01, steps=60,
                  sched_hparams={"warmup_iters": 12, "T_max": 40, "start_factor": 0.001,
                                 "eta_min": 1e-5}))
    # At epoch W torch's restarted cosine gives 0.001 + (0.01 - 0.001) * 2 / 2,
    # one ulp above base_lr 0.01.
    s.append(Case("warmup_cosine_restart_ulp", scheduler="warmup_cosine", base_lr=0.01,
                  steps=8, sched_hparams={"warmup_iters": 2, "T_max": 5, "eta_min": 0.001}))
    return s


def random_catalog_cases(draws_per_optimizer=4):
    """Hyperparameters drawn at random within each plugin's ranges (a fixed
    seed, so every run draws the same), f32 or f64, 20 steps each."""
    rng = random.Random(20231113)

    def log_uniform(lo, hi):
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def maybe(value):
        return rng.choice((0.0, value))

    def flag():
        return rng.random() < 0.5

    draw = {
        "adagrad": lambda: {
            "lr": log_uniform(1e-3, 1e-1), "lr_decay": maybe(log_uniform(1e-4, 1e-1)),
            "weight_decay": maybe(log_uniform(1e-4, 1e-1)),
            "initial_accumulator_value": maybe(rng.uniform(0.0, 1.0)),
            "eps": log_uniform(1e-12, 1e-6), "maximize": flag()},
        "rmsprop": lambda: {
            "lr": log_uniform(1e-4, 1e-2), "alpha": rng.uniform(0.5, 0.999),
            "eps": log_uniform(1e-10, 1e-4), "weight_decay": maybe(log_uniform(1e-4, 1e-1)),
            "momentum": maybe(rng.uniform(0.1, 0.95)), "centered": flag(), "maximize": flag()},
        "adamax": lambda: {
            "lr": log_uniform(1e-4, 1e-2), "beta1": rng.uniform(0.0, 0.99),
            "beta2": rng.uniform(0.9, 0.9999), "eps": log_uniform(1e-10, 1e-4),
            "weight_decay": maybe(log_uniform(1e-4, 1e-1)), "maximize": flag()},
        "nadam": lambda: {
            "lr": log_uniform(1e-4, 1e-2), "beta1": rng.uniform(0.0, 0.99),
            "beta2": rng.uniform(0.9, 0.9999), "eps": log_uniform(1e-10, 1e-4),
            "weight_decay": maybe(log_uniform(1e-4, 1e-1)),
            "momentum_decay": log_uniform(1e-4, 1e-1)},
        "radam": lambda: {
            "lr": log_uniform(1e-4, 1e-2), "beta1": rng.uniform(0.0, 0.99),
            "beta2": rng.uniform(0.99, 0.9999), "eps": log_uniform(1e-10, 1e-4),
            "weight_decay": maybe(log_uniform(1e-4, 1e-1))},
        "adadelta": lambda: {
            "lr": rng.uniform(0.1, 2.0), "rho": rng.uniform(0.5, 0.99),
            "eps": log_uniform(1e-8, 1e-3), "weight_decay": maybe(log_uniform(1e-4, 1e-1)),
            "maximize": flag()},
        "asgd": lambda: {
            "lr": log_uniform(1e-3, 1e-1), "lambd": log_uniform(1e-5, 1e-1),
            "alpha": rng.uniform(0.3, 1.0), "t0": rng.choice((rng.uniform(0.0, 15.0), 1e6)),
            "weight_decay": maybe(log_uniform(1e-4, 1e-1)), "maximize": flag()},
        "rprop": lambda: {
            "lr": log_uniform(1e-4, 1e-1), "eta_minus": rng.uniform(0.1, 0.9),
            "eta_plus": rng.uniform(1.05, 2.0), "step_size_min": log_uniform(1e-7, 1e-3),
            "step_size_max": log_uniform(1e-2, 10.0), "maximize": flag()},
    }
    s = []
    for name, make in draw.items():
        for i in range(draws_per_optimizer):
            s.append(Case("%s_random%d" % (name, i), name, make(),
                          dtype=rng.choice(("f32", "f64")), steps=20, seed=100 + i))
    return s


def beyond_unit_cases():
    """The optimizers beyond torch 1.13 against beyond_torch.py: defaults,
    every flag, f64, a scheduler, several parameters with their own step
    counters, a tensor large enough for parallel_for, and random draws."""
    s = []
    # Lion
    s.append(Case("lion_defaults", "lion", {}))
    s.append(Case("lion_wd", "lion", {"lr": 3e-4, "beta1": 0.95, "beta2": 0.98,
                                      "weight_decay": 1.0}, steps=12))
    s.append(Case("lion_beta1_zero", "lion", {"lr": 1e-3, "beta1": 0.0, "beta2": 0.5}))
    s.append(Case("lion_f64", "lion", {"lr": 1e-3, "weight_decay": 0.1}, dtype="f64", steps=12))
    s.append(Case("lion_cosine", "lion", {"lr": 1e-3, "weight_decay": 0.3}, steps=12,
                  scheduler="cosine", sched_hparams={"T_max": 5, "eta_min": 1e-5}))
    s.append(Case("lion_subset", "lion", {"lr": 1e-3, "weight_decay": 0.1},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("lion_parallel", "lion", {"lr": 1e-3, "weight_decay": 0.1},
                  params=(("w", 70001),), steps=3))
    # Adan: proximal (default) and no_prox decay; D = 0 at step 1.
    s.append(Case("adan_defaults", "adan", {}, steps=12))
    s.append(Case("adan_prox_wd", "adan", {"lr": 0.01, "weight_decay": 0.05}, steps=12))
    s.append(Case("adan_no_prox_wd", "adan",
                  {"lr": 0.01, "weight_decay": 0.05, "no_prox": True}, steps=12))
    s.append(Case("adan_no_prox_no_wd", "adan", {"lr": 0.01, "no_prox": True}))
    s.append(Case("adan_betas_eps", "adan",
                  {"lr": 0.003, "beta1": 0.9, "beta2": 0.5, "beta3": 0.95, "eps": 1e-3}))
    s.append(Case("adan_f64", "adan", {"lr": 0.01, "weight_decay": 0.02, "no_prox": True},
                  dtype="f64", steps=12))
    s.append(Case("adan_f64_prox", "adan", {"lr": 0.01, "weight_decay": 0.1}, dtype="f64"))
    s.append(Case("adan_subset", "adan", {"lr": 0.01, "weight_decay": 0.02},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("adan_parallel", "adan", {"lr": 0.01, "no_prox": True, "weight_decay": 0.1},
                  params=(("w", 70001),), steps=3))
    s.append(Case("adan_step_lr", "adan", {"lr": 0.01}, steps=10,
                  scheduler="step", sched_hparams={"step_size": 3, "gamma": 0.5}))
    # AdEMAMix: warmups on and off, beta1 = 0 (no fast EMA), decay.
    s.append(Case("ademamix_defaults", "ademamix", {}, steps=12))
    s.append(Case("ademamix_wd", "ademamix",
                  {"lr": 0.01, "alpha": 5.0, "weight_decay": 0.1, "beta3": 0.999}, steps=12))
    s.append(Case("ademamix_warmups", "ademamix",
                  {"lr": 0.01, "alpha_warmup": 7, "beta3_warmup": 9, "weight_decay": 0.01},
                  steps=12))
    s.append(Case("ademamix_beta1_zero", "ademamix",
                  {"lr": 0.01, "beta1": 0.0, "beta3_warmup": 5, "eps": 1e-4}))
    s.append(Case("ademamix_f64", "ademamix",
                  {"lr": 0.01, "alpha_warmup": 4, "beta3_warmup": 6, "weight_decay": 0.05},
                  dtype="f64", steps=10))
    s.append(Case("ademamix_subset", "ademamix", {"lr": 0.01, "beta3_warmup": 4},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("ademamix_parallel", "ademamix", {"lr": 0.01, "weight_decay": 0.1},
                  params=(("w", 70001),), steps=3))
    s.append(Case("ademamix_linear", "ademamix", {"lr": 0.01}, steps=10,
                  scheduler="linear", sched_hparams={"start_factor": 0.2, "total_iters": 4}))
    # Random draws, 20 steps each.
    rng = random.Random(20240607)

    def log_uniform(lo, hi):
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def maybe(value):
        return rng.choice((0.0, value))

    draw = {
        "lion": lambda: {
            "lr": log_uniform(1e-5, 1e-2), "beta1": rng.uniform(0.0, 0.99),
            "beta2": rng.uniform(0.5, 0.999), "weight_decay": maybe(log_uniform(1e-3, 1.0))},
        "adan": lambda: {
            "lr": log_uniform(1e-4, 1e-2), "beta1": rng.uniform(0.5, 0.99),
            "beta2": rng.uniform(0.5, 0.99), "beta3": rng.uniform(0.9, 0.999),
            "eps": log_uniform(1e-10, 1e-4), "weight_decay": maybe(log_uniform(1e-3, 0.1)),
            "no_prox": rng.random() < 0.5},
        "ademamix": lambda: {
            "lr": log_uniform(1e-4, 1e-2), "beta1": rng.choice((0.0, rng.uniform(0.5, 0.99))),
            "beta2": rng.uniform(0.9, 0.9999), "beta3": rng.uniform(0.99, 0.99999),
            "alpha": rng.uniform(0.0, 10.0), "eps": log_uniform(1e-10, 1e-4),
            "weight_decay": maybe(log_uniform(1e-3, 0.1)),
            "alpha_warmup": rng.choice((0, rng.randint(1, 30))),
            "beta3_warmup": rng.choice((0, rng.randint(1, 30)))},
    }
    for name, make in draw.items():
        for i in range(4):
            s.append(Case("%s_random%d" % (name, i), name, make(),
                          dtype=rng.choice(("f32", "f64")), steps=20, seed=200 + i))
    return s


def unit_cases():
    """Small tensors, many configurations: runs in well under a second."""
    s = []
    # SGD
    s.append(Case("sgd_plain", "sgd", {"lr": 0.1}))
    s.append(Case("sgd_momentum", "sgd", {"lr": 0.05, "momentum": 0.9}))
    s.append(Case("sgd_momentum_dampening", "sgd",
                  {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}))
    s.append(Case("sgd_nesterov", "sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True}))
    s.append(Case("sgd_weight_decay", "sgd", {"lr": 0.1, "weight_decay": 0.01}))
    s.append(Case("sgd_weight_decay_momentum", "sgd",
                  {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.05}))
    s.append(Case("sgd_maximize", "sgd", {"lr": 0.1, "maximize": True}))
    s.append(Case("sgd_everything", "sgd",
                  {"lr": 0.02, "momentum": 0.7, "weight_decay": 0.1, "nesterov": True,
                   "maximize": True}))
    s.append(Case("sgd_f64", "sgd",
                  {"lr": 0.03, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.2},
                  dtype="f64"))
    # Adam
    s.append(Case("adam_defaults", "adam", {}))
    s.append(Case("adam_amsgrad", "adam", {"lr": 0.01, "amsgrad": True}))
    s.append(Case("adam_weight_decay", "adam", {"lr": 0.01, "weight_decay": 0.1}))
    s.append(Case("adam_maximize", "adam", {"lr": 0.01, "maximize": True}))
    s.append(Case("adam_betas_eps", "adam",
                  {"lr": 0.003, "beta1": 0.0, "beta2": 0.5, "eps": 1e-3}))
    s.append(Case("adam_everything", "adam",
                  {"lr": 0.02, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
                   "weight_decay": 0.05, "amsgrad": True, "maximize": True}))
    s.append(Case("adam_f64", "adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
                  dtype="f64"))
    # AdamW
    s.append(Case("adamw_defaults", "adamw", {}))
    s.append(Case("adamw_amsgrad", "adamw", {"lr": 0.01, "amsgrad": True}))
    s.append(Case("adamw_no_decay", "adamw", {"lr": 0.01, "weight_decay": 0.0}))
    s.append(Case("adamw_maximize_amsgrad", "adamw",
                  {"lr": 0.01, "weight_decay": 0.3, "maximize": True, "amsgrad": True}))
    s.append(Case("adamw_f64", "adamw", {"lr": 0.01, "weight_decay": 0.2}, dtype="f64"))
    # Scheduled optimizers, several parameters, a tensor large enough for
    # the plugins to use parallel_for.
    s.append(Case("sgd_step_lr", "sgd", {"lr": 0.1, "momentum": 0.9}, steps=10,
                  scheduler="step", sched_hparams={"step_size": 3, "gamma": 0.5}))
    s.append(Case("adam_cosine", "adam", {"lr": 0.01}, steps=12,
                  scheduler="cosine", sched_hparams={"T_max": 5, "eta_min": 0.001}))
    s.append(Case("adam_subset", "adam", {"lr": 0.01, "amsgrad": True},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("sgd_subset", "sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.5},
                  params=(("w", 1037), ("b", 33)), steps=10, has_grad=subset_mask))
    s.append(Case("adamw_parallel", "adamw", {"lr": 0.01, "amsgrad": True},
                  params=(("w", 70001),), steps=3))
    s.append(Case("sgd_parallel", "sgd", {"lr": 0.01, "momentum": 0.9, "nesterov": True},
                  params=(("w", 70001),), steps=3))
    s.append(Case("adam_scalar", "adam", {"lr": 0.1}, params=(("s", 1),), steps=5))
    # Schedulers alone, long enough to pass T_max (cosine rises again) and
    # to hit the special case (e - 1 - T) % 2T == 0 several times.
    s.append(Case("step_3_half", scheduler="step", base_lr=0.1, steps=25,
                  sched_hparams={"step_size": 3, "gamma": 0.5}))
    s.append(Case("step_default_gamma", scheduler="step", base_lr=0.7, steps=12,
                  sched_hparams={"step_size": 1}))
    s.append(Case("cosine_7", scheduler="cosine", base_lr=0.1, steps=40,
                  sched_hparams={"T_max": 7, "eta_min": 0.001}))
    s.append(Case("cosine_1", scheduler="cosine", base_lr=0.3, steps=12,
                  sched_hparams={"T_max": 1}))
    s.append(Case("cosine_10_default", scheduler="cosine", base_lr=0.05, steps=35,
                  sched_hparams={"T_max": 10}))
    return s + catalog_unit_cases() + random_catalog_cases() + beyond_unit_cases()


def daemon_cases():
    """The acceptance cases: 100,003 elements (not a multiple of any vector
    width), 20 steps, through the real daemon."""
    n = 100003
    big = (("w", n),)
    s = []
    s.append(Case("sgd_plain", "sgd", {"lr": 0.1}, params=big, steps=20, seed=1))
    s.append(Case("sgd_momentum_dampening", "sgd",
                  {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
                  params=big, steps=20, seed=2))
    s.append(Case("sgd_nesterov", "sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True},
                  params=big, steps=20, seed=3))
    s.append(Case("sgd_weight_decay_momentum", "sgd",
                  {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.05},
                  params=big, steps=20, seed=4))
    s.append(Case("sgd_maximize", "sgd", {"lr": 0.1, "momentum": 0.9, "maximize": True},
                  params=big, steps=20, seed=5))
    s.append(Case("adam_default", "adam", {}, params=big, steps=20, seed=6))
    s.append(Case("adam_amsgrad", "adam", {"lr": 0.01, "amsgrad": True},
                  params=big, steps=20, seed=7))
    s.append(Case("adam_weight_decay", "adam", {"lr": 0.01, "weight_decay": 0.1},
                  params=big, steps=20, seed=8))
    s.append(Case("adam_maximize", "adam", {"lr": 0.01, "maximize": True},
                  params=big, steps=20, seed=9))
    s.append(Case("adamw_default", "adamw", {}, params=big, steps=20, seed=10))
    s.append(Case("adamw_amsgrad", "adamw", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
                  params=big, steps=20, seed=11))
    s.append(Case("sgd_step_lr", "sgd", {"lr": 0.1, "momentum": 0.9},
                  params=big, steps=20, scheduler="step",
                  sched_hparams={"step_size": 4, "gamma": 0.5}, seed=12))
    s.append(Case("adamw_cosine", "adamw", {"lr": 0.01},
                  params=big, steps=20, scheduler="cosine",
                  sched_hparams={"T_max": 8, "eta_min": 0.0005}, seed=13))
    s.append(Case("adam_f64", "adam", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True},
                  dtype="f64", params=big, steps=20, seed=14))
    s.append(Case("sgd_f64_nesterov", "sgd",
                  {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
                  dtype="f64", params=big, steps=20, seed=15))
    s.append(Case("adam_subset", "adam", {"lr": 0.01},
                  params=(("w", n), ("b", 1003)), steps=20, has_grad=subset_mask, seed=16))
    s.append(Case("sgd_subset", "sgd", {"lr": 0.1, "momentum": 0.9},
                  params=(("w", n), ("b", 1003)), steps=20, has_grad=subset_mask, seed=17))
    # The catalog: a representative configuration of each optimizer.
    s.append(Case("adagrad_decay_wd_init", "adagrad",
                  {"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1,
                   "initial_accumulator_value": 0.1}, params=big, steps=20, seed=18))
    s.append(Case("rmsprop_centered_momentum_wd", "rmsprop",
                  {"lr": 0.002, "momentum": 0.8, "centered": True, "weight_decay": 0.1},
                  params=big, steps=20, seed=19))
    s.append(Case("rmsprop_maximize", "rmsprop", {"lr": 0.001, "maximize": True},
                  params=big, steps=20, seed=20))
    s.append(Case("adamax_everything", "adamax",
                  {"lr": 0.01, "beta1": 0.8, "weight_decay": 0.1, "maximize": True},
                  params=big, steps=20, seed=21))
    s.append(Case("nadam_defaults", "nadam", {}, params=big, steps=20, seed=22))
    s.append(Case("radam_wd", "radam", {"lr": 0.01, "weight_decay": 0.1},
                  params=big, steps=20, seed=23))
    s.append(Case("adadelta_everything", "adadelta",
                  {"lr": 0.5, "rho": 0.8, "weight_decay": 0.1, "maximize": True},
                  params=big, steps=20, seed=24))
    s.append(Case("asgd_averaging", "asgd",
                  {"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 5.0, "weight_decay": 0.1},
                  params=big, steps=20, seed=25))
    s.append(Case("rprop_clamped", "rprop",
                  {"lr": 0.01, "eta_minus": 0.3, "step_size_max": 0.03},
                  params=big, steps=20, seed=26))
    s.append(Case("rmsprop_f64", "rmsprop",
                  {"lr": 0.002, "momentum": 0.9, "centered": True, "weight_decay": 0.05},
                  dtype="f64", params=big, steps=20, seed=27))
    s.append(Case("nadam_f64_subset", "nadam", {"lr": 0.01, "weight_decay": 0.02},
                  dtype="f64", params=(("w", n), ("b", 1003)), steps=20,
                  has_grad=subset_mask, seed=28))
    s.append(Case("asgd_subset_multistep", "asgd", {"lr": 0.05, "lambd": 0.01, "t0": 3.0},
                  params=(("w", n), ("b", 1003)), steps=20, has_grad=subset_mask,
                  scheduler="multistep", sched_hparams=dict(milestones(4, 9, 9), gamma=0.5),
                  seed=29))
    s.append(Case("adagrad_warm_restarts", "adagrad", {"lr": 0.05},
                  params=big, steps=20, scheduler="cosine_warm_restarts",
                  sched_hparams={"T_0": 3, "T_mult": 2, "eta_min": 0.001}, seed=30))
    s.append(Case("radam_polynomial", "radam", {"lr": 0.01},
                  params=big, steps=20, scheduler="polynomial",
                  sched_hparams={"total_iters": 15, "power": 1.5}, seed=31))
    s.append(Case("rprop_linear", "rprop", {"lr": 0.01},
                  params=big, steps=20, scheduler="linear",
                  sched_hparams={"start_factor": 0.5, "total_iters": 6}, seed=32))
    s.append(Case("adamax_constant", "adamax", {"lr": 0.01},
                  params=big, steps=20, scheduler="constant", seed=33))
    s.append(Case("adam_warmup_cosine", "adam", {"lr": 0.01},
                  params=big, steps=20, scheduler="warmup_cosine",
                  sched_hparams={"warmup_iters": 4, "T_max": 12, "eta_min": 0.0001}, seed=35))
    s.append(Case("adadelta_exponential", "adadelta", {"lr": 1.0},
                  params=big, steps=20, scheduler="exponential",
                  sched_hparams={"gamma": 0.9}, seed=34))
    # Beyond torch 1.13, against beyond_torch.py.
    s.append(Case("lion_wd", "lion", {"lr": 3e-4, "weight_decay": 0.5},
                  params=big, steps=20, seed=36))
    s.append(Case("adan_no_prox_wd", "adan", {"lr": 0.01, "weight_decay": 0.05, "no_prox": True},
                  params=big, steps=20, seed=37))
    s.append(Case("ademamix_warmups", "ademamix",
                  {"lr": 0.01, "weight_decay": 0.05, "alpha_warmup": 10, "beta3_warmup": 15},
                  params=big, steps=20, seed=38))
    return s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("unit", "daemon"), required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if torch.__version__.split("+")[0] not in ("1.13.0a0", "1.13.1", "1.13.0"):
        print("torch_reference.py: expected torch 1.13, found %s" % torch.__version__,
              file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    cases = unit_cases() if args.suite == "unit" else daemon_cases()
    for case in cases:
        if case.optimizer:
            run_optimizer_case(case, args.out)
        else:
            run_scheduler_case(case, args.out)
    write_manifest(args.out, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
