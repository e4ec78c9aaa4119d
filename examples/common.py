"""What the examples share: their command line (--server, --out, --json), the
optimizer line-up of the races, matplotlib without a display, and the small
classification problem that classifier_race.py and lr_range.py train.

The examples import this as ``common``: Python puts a script's own directory
first on sys.path, so ``python examples/NAME.py`` finds it from anywhere."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import optimd

DEFAULT_SERVER = os.environ.get("OPTIMD_URL", optimd.DEFAULT_URL)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--server", default=DEFAULT_SERVER,
                   help=f"the daemon's URL (default {DEFAULT_SERVER}; $OPTIMD_URL sets it)")
    p.add_argument("--out", default="optimd-examples",
                   help="directory for the PNG files (created; default ./optimd-examples)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the numbers the plots show to FILE, as JSON")
    return p


def out_path(args: argparse.Namespace, name: str) -> str:
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, name)


def write_json(args: argparse.Namespace, data: dict[str, Any]) -> None:
    if args.json:
        with open(args.json, "w") as f:
            # NaN/inf are not JSON: a diverged run's losses become null.
            json.dump(_finite(data), f)


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def parse_sets(client: optimd.Client, plugin: str, sets: list[str]) -> dict[str, Any]:
    """``--set``/``--sched-set`` KEY=VALUE pairs, typed as ``plugin`` declares
    them (the wire tells an int from a float, and the daemon is strict)."""
    info = next((p for p in client.plugins() if p.id == plugin), None)
    if info is None:
        raise SystemExit(f"the daemon has no plugin {plugin!r}")
    return {k: typed(info, k, v) for k, v in (split_set(s) for s in sets)}


def split_set(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"expected KEY=VALUE, not {text!r}")
    return key, value


def typed(info: optimd.PluginInfo, key: str, value: str) -> Any:
    decl = next((h for h in info.hparams if h.key == key), None)
    if decl is None:
        raise SystemExit(f"{info.id} has no hyperparameter {key!r} "
                         f"(it has {', '.join(h.key for h in info.hparams)})")
    try:
        if decl.type == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return int(value) if decl.type == "int" else float(value)
    except ValueError:
        raise SystemExit(f"{info.id}: {key} takes {decl.type} values, not {value!r}") from None


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: the examples only write files,
    and must run on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class Contender:
    """One optimizer of a race: a label, the daemon's plugin id and its
    hyperparameters (by the plugin's names: `optimctl hparams ID`)."""

    label: str
    plugin: str
    hparams: dict[str, Any] = field(default_factory=dict)


def contenders(lrs: dict[str, float], selected: list[str] | None = None) -> list[Contender]:
    """The seven optimizers of the optimizer tutorials, with the lr each
    gets from ``lrs`` (keyed by label); ``selected`` keeps those labels."""
    every = [
        Contender("SGD", "sgd", {"lr": lrs["SGD"]}),
        Contender("Momentum", "sgd", {"lr": lrs["Momentum"], "momentum": 0.9}),
        Contender("Nesterov", "sgd", {"lr": lrs["Nesterov"], "momentum": 0.9, "nesterov": True}),
        Contender("Adagrad", "adagrad", {"lr": lrs["Adagrad"]}),
        Contender("RMSprop", "rmsprop", {"lr": lrs["RMSprop"]}),
        Contender("Adam", "adam", {"lr": lrs["Adam"]}),
        Contender("AdamW", "adamw", {"lr": lrs["AdamW"], "weight_decay": 0.01}),
    ]
    if not selected:
        return every
    by_label = {c.label.lower(): c for c in every}
    unknown = [s for s in selected if s.lower() not in by_label]
    if unknown:
        raise SystemExit(f"unknown optimizer(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(c.label for c in every)}")
    return [by_label[s.lower()] for s in selected]


LABELS = ["SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW"]


# -- the classification problem ---------------------------------------------

def spirals(points_per_class: int = 100, classes: int = 3, noise: float = 0.2,
            seed: int = 0) -> tuple[Any, Any]:
    """Interleaved 2-D spirals, one arm per class (the classic toy problem
    that a linear model cannot solve): ``(x, y)`` with x float32 [N, 2] in
    about [-1, 1]^2 and y int64 [N]. Made here, so nothing is downloaded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(classes):
        r = torch.linspace(0.0, 1.0, points_per_class)
        t = (torch.linspace(c * 4.0, (c + 1) * 4.0, points_per_class)
             + noise * torch.randn(points_per_class, generator=g))
        xs.append(torch.stack([r * torch.sin(t), r * torch.cos(t)], dim=1))
        ys.append(torch.full((points_per_class,), c, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)


def mlp(hidden: int = 64, classes: int = 3, seed: int = 0) -> Any:
    """A 2-layer MLP, seeded: every contender starts from the same weights."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes))
