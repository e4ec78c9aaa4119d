#!/usr/bin/env python3
"""Plots a scheduler plugin's lr over N steps, as the daemon computes it.

Like `optimctl schedule`, it opens a throwaway session (no parameters,
durability none) with the scheduler, steps it N times with no gradients and
records the lr each step leaves for the next one, then closes the session.
So the curve is exactly what a training session with that scheduler gets.

Writes schedule_ID.png into --out and prints the lrs (N + 1 values: after
construction, then after each step).

    python examples/schedule_plot.py --scheduler cosine --sched-set T_max=100 --steps 100
    python examples/schedule_plot.py --scheduler onecycle --sched-set max_lr=1 \\
        --sched-set total_steps=200 --steps 200
"""

from __future__ import annotations

import sys
import uuid

import common
import optimd


def schedule(client: optimd.Client, scheduler: str, sched_hparams: dict, optimizer: str,
             hparams: dict, steps: int) -> list[float]:
    session = client.open(f"schedule-plot-{uuid.uuid4().hex[:12]}", optimizer, hparams,
                          scheduler=scheduler, sched_hparams=sched_hparams, durability="none")
    try:
        lrs = [session.lr]
        for _ in range(steps):
            lrs.append(client.step(session, {}).next_lr)
        return lrs
    finally:
        client.close_session(session)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--scheduler", required=True, metavar="ID",
                   help="the scheduler plugin (`optimctl plugins` lists them)")
    p.add_argument("--sched-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a scheduler hyperparameter (repeatable; `optimctl hparams ID`)")
    p.add_argument("--steps", type=int, required=True, metavar="N")
    p.add_argument("--base-lr", type=float, default=0.1,
                   help="the optimizer's lr, the schedule's base (default 0.1)")
    p.add_argument("--optimizer", default="sgd", help="the session's optimizer (default sgd)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an optimizer hyperparameter but lr (repeatable)")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be at least 0")

    with optimd.Client(args.server, timeout=30) as client:
        sched_hparams = common.parse_sets(client, args.scheduler, args.sched_set)
        hparams = common.parse_sets(client, args.optimizer, args.set)
        if "lr" in hparams:
            p.error("give the lr as --base-lr")
        hparams["lr"] = args.base_lr
        lrs = schedule(client, args.scheduler, sched_hparams, args.optimizer, hparams, args.steps)

    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(lrs)), lrs, drawstyle="steps-post")
    settings = ", ".join(f"{k}={v}" for k, v in sched_hparams.items())
    ax.set_title(f"{args.scheduler}({settings}), base lr {args.base_lr:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("lr of the next step")
    ax.grid(True, alpha=0.3)
    fig.savefig(common.out_path(args, f"schedule_{args.scheduler}.png"), dpi=80, bbox_inches="tight")
    plt.close(fig)

    for k, lr in enumerate(lrs):
        print(f"{k}\t{lr:.9g}")
    common.write_json(args, {"scheduler": args.scheduler, "sched_hparams": sched_hparams,
                             "optimizer": args.optimizer, "hparams": hparams, "lrs": lrs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
