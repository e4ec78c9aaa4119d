#!/usr/bin/env python3
"""The optimizer race on a small classifier: a 2-layer MLP learns three
interleaved 2-D spirals (made by the script; nothing is downloaded).

Each of the seven optimizers trains its own copy of the model, from the same
initial weights, through optimd.torch.RemoteOptimizer: the model and its
gradients stay in this process, the update runs in the daemon. Full-batch
training, so every contender sees exactly the same sequence of problems.

Writes classifier_loss.png (training loss per step, log scale) into --out and
prints each optimizer's final loss and accuracy.

    python examples/classifier_race.py --server tcp://127.0.0.1:7878 --steps 300
"""

from __future__ import annotations

import sys

import torch

import common
from optimd.torch import RemoteOptimizer

LRS = {"SGD": 0.5, "Momentum": 0.05, "Nesterov": 0.05, "Adagrad": 0.05,
       "RMSprop": 0.005, "Adam": 0.01, "AdamW": 0.01}


def train(server: str, contender: common.Contender, x: torch.Tensor, y: torch.Tensor,
          steps: int, hidden: int, seed: int) -> tuple[list[float], float]:
    """The loss before each step (and after the last), and the final accuracy."""
    model = common.mlp(hidden=hidden, seed=seed)
    opt = RemoteOptimizer(model.parameters(), contender.plugin, server=server, **contender.hparams)
    losses: list[float] = []
    try:
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        opt.delete_sessions()
        opt.close()
    with torch.no_grad():
        logits = model(x)
        losses.append(torch.nn.functional.cross_entropy(logits, y).item())
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return losses, accuracy


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per optimizer (default 300)")
    p.add_argument("--points", type=int, default=100, help="points per class (default 100)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initial weights")
    p.add_argument("--optimizers", nargs="+", metavar="NAME",
                   help=f"a subset of {' '.join(common.LABELS)}")
    args = p.parse_args(argv)

    x, y = common.spirals(args.points, seed=args.seed)
    results: dict[str, tuple[list[float], float]] = {}
    for c in common.contenders(LRS, args.optimizers):
        results[c.label] = train(args.server, c, x, y, args.steps, args.hidden, args.seed)

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (losses, accuracy) in results.items():
        ax.plot(range(len(losses)), losses, label=f"{label} ({accuracy:.0%})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (training)")
    ax.set_title(f"MLP on {len(y)} spiral points: loss per step (final accuracy)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(common.out_path(args, "classifier_loss.png"), dpi=80, bbox_inches="tight")
    plt.close(fig)

    print(f"{'optimizer':<10} {'initial loss':>12} {'final loss':>12} {'accuracy':>9}")
    for label, (losses, accuracy) in results.items():
        print(f"{label:<10} {losses[0]:>12.4f} {losses[-1]:>12.4f} {accuracy:>9.1%}")
    print(f"plot in {args.out}")
    common.write_json(args, {
        "steps": args.steps,
        "points": len(y),
        "contenders": {c.label: {"plugin": c.plugin, "hparams": c.hparams}
                       for c in common.contenders(LRS, args.optimizers)},
        "losses": {label: r[0] for label, r in results.items()},
        "accuracy": {label: r[1] for label, r in results.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
