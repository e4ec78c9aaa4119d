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
  end

Only hyperparameters a case sets explicitly are listed; the others take
torch's defaults here and the plugin's declared defaults in the C tests, so
a wrong default in a plugin fails the comparison.

Nothing in this file computes an update itself: every expected number comes
from torch.optim. Exit status 77 means torch is not importable (CTest then
reports the test as skipped, not passed).
"""

import argparse
import inspect
import math
import os
import sys

try:
    import torch
except ImportError as exc:  # pragma: no cover - environment problem
    print("torch_reference.py: cannot import torch: %s" % exc, file=sys.stderr)
    sys.exit(77)

BOOL_KEYS = {"nesterov", "maximize", "amsgrad"}
INT_KEYS = {"step_size", "T_max"}

OPTIMIZERS = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}
SCHEDULERS = {
    "step": torch.optim.lr_scheduler.StepLR,
    "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
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


def torch_optimizer_kwargs(hparams):
    """optimd's keys to torch's: beta1/beta2 become the betas tuple."""
    kwargs = dict(hparams)
    if "beta1" in kwargs or "beta2" in kwargs:
        default_betas = (0.9, 0.999)
        kwargs["betas"] = (kwargs.pop("beta1", default_betas[0]),
                           kwargs.pop("beta2", default_betas[1]))
    kwargs["foreach"] = False  # the single-tensor path optimd reproduces
    return kwargs


def torch_scheduler_kwargs(hparams):
    # Plugin keys are torch's own argument names.
    return dict(hparams)


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
            if name == "betas":
                rows.append((plugin, "beta1", "float", default[0]))
                rows.append((plugin, "beta2", "float", default[1]))
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
    optimizer = OPTIMIZERS[case.optimizer](params, **torch_optimizer_kwargs(case.hparams))
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
        lines.append("end")
    with open(os.path.join(out_dir, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def subset_mask(step, index):
    """Param 0 ("w") misses steps 3, 4 and 9; param 1 ("b") gets a gradient
    only on every third step, so the two step counters drift apart."""
    if index == 0:
        return step not in (3, 4, 9)
    return step % 3 == 1


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
    return s


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
