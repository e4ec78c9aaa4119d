#!/usr/bin/env python3
"""The learning-rate range test (optimd.lr_range_test) on the spiral
classifier of classifier_race.py.

The lr of a RemoteOptimizer grows exponentially from --start-lr to --end-lr,
one full-batch step each, until the loss diverges; the suggested lr is where
the smoothed loss fell fastest. The test trains the model, so a real run
would start training afresh (new model, new optimizer) at the suggestion.

Writes lr_range.png (loss against lr, log x, the suggestion marked) into
--out and prints the suggestion.

    python examples/lr_range.py --server tcp://127.0.0.1:7878 --optimizer sgd --set momentum=0.9
    python examples/lr_range.py --server tcp://127.0.0.1:7878    # adam
"""

from __future__ import annotations

import sys
import torch

import common
import optimd
from optimd.torch import RemoteOptimizer


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", default="adam", help="plugin id (default adam)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an optimizer hyperparameter but lr (repeatable)")
    p.add_argument("--start-lr", type=float, default=1e-4)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=200, help="at most this many steps (default 200)")
    # Full-batch losses carry no sampling noise: lighter smoothing than the
    # helper's default (0.98, meant for mini-batches) keeps the curve from
    # lagging the lr by tens of steps.
    p.add_argument("--beta", type=float, default=0.9, help="weight of the past in the smoothing (default 0.9)")
    p.add_argument("--points", type=int, default=100, help="points per class (default 100)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with optimd.Client(args.server, timeout=30) as client:
        hparams = common.parse_sets(client, args.optimizer, args.set)
    if "lr" in hparams:
        p.error("the test sets the lr; give --start-lr and --end-lr instead")

    x, y = common.spirals(args.points, seed=args.seed)
    model = common.mlp(seed=args.seed)
    # The lr given here is a placeholder: the test sets every group's lr
    # before each step, and RemoteOptimizer sends the change to the daemon.
    opt = RemoteOptimizer(model.parameters(), args.optimizer, server=args.server,
                          lr=args.start_lr, **hparams)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    try:
        result = optimd.lr_range_test(opt, closure, start_lr=args.start_lr, end_lr=args.end_lr,
                                      steps=args.steps, beta=args.beta)
    finally:
        opt.delete_sessions()
        opt.close()

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    result.plot(ax=ax)
    settings = ", ".join(f"{k}={v}" for k, v in hparams.items())
    ax.set_title(f"LR range test: {args.optimizer}" + (f" ({settings})" if settings else "")
                 + f", {len(result.lrs)} steps")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(common.out_path(args, "lr_range.png"), dpi=80, bbox_inches="tight")
    plt.close(fig)

    print(f"{len(result.lrs)} steps from lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}"
          + (" (stopped: the loss diverged)" if result.stopped_early else ""))
    print(f"loss {result.losses[0]:.4f} at the start, lowest {min(result.losses):.4f}")
    if result.suggestion is None:
        print("no suggestion: too few steps")
    else:
        print(f"suggested lr: {result.suggestion:.4g}")
    print(f"plot in {args.out}")
    common.write_json(args, {
        "optimizer": args.optimizer,
        "hparams": hparams,
        "start_lr": args.start_lr,
        "end_lr": args.end_lr,
        "steps": args.steps,
        "beta": args.beta,
        "lrs": result.lrs,
        "losses": result.losses,
        "smoothed": result.smoothed,
        "stopped_early": result.stopped_early,
        "suggestion": result.suggestion,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
