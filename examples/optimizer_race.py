#!/usr/bin/env python3
"""The optimizer race on the Rosenbrock function f(x, y) = (1-x)^2 + 100(y-x^2)^2.

Seven optimizers (SGD, SGD with momentum, Nesterov, Adagrad, RMSprop, Adam,
AdamW) start from the same point; each runs in the daemon as a session of its
own, holding the point [x, y] as a float64 tensor. This script only computes
gradients: it sends f's gradient at the point the daemon returned last, and
plots where each optimizer went.

Writes rosenbrock_trajectories.png (the paths over f's contours) and
rosenbrock_loss.png (f against step, log scale) into --out.

    python examples/optimizer_race.py --server tcp://127.0.0.1:7878 --steps 1000
"""

from __future__ import annotations

import math
import sys
import uuid

import numpy as np

import common
import optimd

# Chosen so that every contender gets somewhere in a few hundred steps
# without diverging: plain SGD is stable on f only below lr ~ 2/1000 (the
# largest curvature near the minimum is about 1000).
LRS = {"SGD": 1.5e-3, "Momentum": 1e-3, "Nesterov": 1e-3, "Adagrad": 1.0,
       "RMSprop": 1e-2, "Adam": 5e-2, "AdamW": 5e-2}
MINIMUM = (1.0, 1.0)


def rosenbrock(p: np.ndarray) -> float:
    x, y = float(p[0]), float(p[1])
    return (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2


def gradient(p: np.ndarray) -> np.ndarray:
    x, y = float(p[0]), float(p[1])
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


def race(client: optimd.Client, contender: common.Contender, start: np.ndarray,
         steps: int) -> list[np.ndarray]:
    """The contender's points: the start, then the point after each step."""
    # durability none: a throwaway session need not be written to disk.
    session = client.open(f"race-{contender.plugin}-{uuid.uuid4().hex[:12]}",
                          contender.plugin, contender.hparams, durability="none")
    try:
        client.register(session, {"xy": start})
        points = [start.copy()]
        for _ in range(steps):
            p = points[-1]
            if not np.all(np.isfinite(p)):
                break  # diverged: the daemon would refuse a non-finite gradient
            points.append(client.step(session, {"xy": gradient(p)}).params["xy"].copy())
        return points
    finally:
        client.close_session(session)


def plot_trajectories(plt, runs: dict[str, list[np.ndarray]], path: str) -> None:
    xs = np.linspace(-2.0, 2.0, 400)
    ys = np.linspace(-1.0, 3.0, 400)
    gx, gy = np.meshgrid(xs, ys)
    f = (1.0 - gx) ** 2 + 100.0 * (gy - gx ** 2) ** 2
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.contour(gx, gy, np.log10(f + 1e-3), levels=25, cmap="Greys", linewidths=0.6)
    for label, points in runs.items():
        p = np.array([q for q in points if np.all(np.isfinite(q))])
        inside = (np.abs(p[:, 0]) <= 2.5) & (p[:, 1] >= -1.5) & (p[:, 1] <= 3.5)
        ax.plot(p[inside, 0], p[inside, 1], marker=".", markersize=2, linewidth=1, label=label)
    start = next(iter(runs.values()))[0]
    ax.plot(*start, "ko", label="start")
    ax.plot(*MINIMUM, "r*", markersize=14, label="minimum (1, 1)")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    steps = max(len(p) for p in runs.values()) - 1
    ax.set_title(f"Rosenbrock: {steps} steps per optimizer, run by optimd")
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def plot_losses(plt, losses: dict[str, list[float]], path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in losses.items():
        # f reaches 0 only at the minimum; keep such points on a log axis.
        ax.plot(range(len(values)), [max(v, 1e-12) for v in values], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("f(x, y)")
    ax.set_title("Rosenbrock: loss per step")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="steps per optimizer (default 1000)")
    p.add_argument("--start", nargs=2, type=float, default=[-1.5, 2.0], metavar=("X", "Y"),
                   help="starting point (default -1.5 2.0)")
    p.add_argument("--optimizers", nargs="+", metavar="NAME",
                   help=f"a subset of {' '.join(common.LABELS)}")
    args = p.parse_args(argv)
    start = np.array(args.start, dtype=np.float64)

    runs: dict[str, list[np.ndarray]] = {}
    with optimd.Client(args.server, timeout=30) as client:
        for c in common.contenders(LRS, args.optimizers):
            runs[c.label] = race(client, c, start, args.steps)

    losses = {label: [rosenbrock(q) for q in points] for label, points in runs.items()}
    plt = common.pyplot()
    plot_trajectories(plt, runs, common.out_path(args, "rosenbrock_trajectories.png"))
    plot_losses(plt, losses, common.out_path(args, "rosenbrock_loss.png"))

    print(f"{'optimizer':<10} {'final x':>10} {'final y':>10} {'f':>12} {'distance to (1,1)':>18}")
    for label, points in runs.items():
        x, y = points[-1]
        print(f"{label:<10} {x:>10.4f} {y:>10.4f} {losses[label][-1]:>12.4g} "
              f"{math.hypot(x - MINIMUM[0], y - MINIMUM[1]):>18.4g}")
    print(f"plots in {args.out}")
    common.write_json(args, {
        "start": start.tolist(),
        "steps": args.steps,
        "contenders": {c.label: {"plugin": c.plugin, "hparams": c.hparams}
                       for c in common.contenders(LRS, args.optimizers)},
        "trajectories": {label: [q.tolist() for q in points] for label, points in runs.items()},
        "losses": losses,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
