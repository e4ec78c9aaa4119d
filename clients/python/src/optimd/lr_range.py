"""The learning-rate range test (L. Smith, "Cyclical Learning Rates for
Training Neural Networks", 2017): train for a few steps while the lr grows
exponentially from very small to large, and read off the range where the loss
falls fastest. It drives any ``torch.optim``-style optimizer (a
:class:`~optimd.torch.RemoteOptimizer` or torch's own) through its
``param_groups`` and ``step(closure)``, so this module imports neither torch
nor matplotlib until asked to plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["lr_range_test", "LRRangeResult"]


@dataclass(frozen=True)
class LRRangeResult:
    """``lrs[k]`` is the lr of step *k* and ``losses[k]`` the loss its
    closure returned (before that step's update); ``smoothed`` is their
    exponential moving average, bias-corrected as Adam's moments are. ``stopped_early`` is true
    when the loss diverged before the last step. ``suggestion`` is the lr where
    the smoothed loss fell fastest against log(lr), a common starting point
    (None with fewer than 3 points)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped_early: bool
    suggestion: float | None

    def plot(self, path: str | None = None, ax: Any = None) -> Any:
        """Plots loss against lr (log scale) with matplotlib, into ``ax`` or a
        new figure, saved to ``path`` when given; returns the axes. Raises
        ImportError without matplotlib."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses, alpha=0.4, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="k", linestyle="--", label=f"suggested lr {self.suggestion:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.legend()
        if path is not None:
            (fig or ax.figure).savefig(path, dpi=100, bbox_inches="tight")
            if fig is not None:
                plt.close(fig)
        return ax


def _lr_at(k: int, steps: int, start_lr: float, end_lr: float) -> float:
    if steps == 1:
        return start_lr
    return start_lr * (end_lr / start_lr) ** (k / (steps - 1))


def lr_range_test(
    optimizer: Any,
    closure: Callable[[], Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    plot: str | None = None,
) -> LRRangeResult:
    """Runs ``steps`` optimizer steps with the lr of every parameter group set
    to ``start_lr * (end_lr / start_lr) ** (k / (steps - 1))`` at step *k*.

    ``closure`` is torch's: it clears the gradients, computes the loss,
    calls ``backward()`` and returns the loss (a tensor or a float). Stops
    early when the loss is not finite or the smoothed loss exceeds
    ``diverge`` times the best one so far; ``beta`` is the smoothing
    average's weight of the past (0: no smoothing). ``plot``: a path to save the plot
    to (needs matplotlib).

    The test trains: the model and the optimizer state end where the test
    left them. Save both first (or use a throwaway copy) and restore them
    afterwards, e.g. with ``state_dict()``/``load_state_dict()``.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError("need 0 < start_lr < end_lr")
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if not 0 <= beta < 1:
        raise ValueError("beta must be in [0, 1)")
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    stopped = False
    for k in range(steps):
        lr = _lr_at(k, steps, start_lr, end_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = optimizer.step(closure)
        value = float(loss.item() if hasattr(loss, "item") else loss)
        lrs.append(lr)
        losses.append(value)
        average = beta * average + (1 - beta) * value
        corrected = average / (1 - beta ** (k + 1))
        smoothed.append(corrected)
        if not math.isfinite(value) or corrected > diverge * best:
            stopped = k + 1 < steps
            break
        best = min(best, corrected)
    result = LRRangeResult(lrs, losses, smoothed, stopped, _suggest(lrs, smoothed))
    if plot is not None:
        result.plot(plot)
    return result


def _suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The lr where d(smoothed loss)/d(log lr) is lowest, among finite points."""
    points = [(math.log(lr), s) for lr, s in zip(lrs, smoothed) if math.isfinite(s)]
    if len(points) < 3:
        return None
    slopes = [(points[i + 1][1] - points[i - 1][1]) / (points[i + 1][0] - points[i - 1][0])
              for i in range(1, len(points) - 1)]
    best = min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[best + 1]
