"""Early stop on a plateau of the subject loss (``tune --early-stop P``).

The per-step loss is noisy (a random photo pair and random bit flips each step), so it is judged
in windows of steps: the run has plateaued when none of the last ``patience`` window means is
below the best earlier window mean by more than ``min_delta`` of it.
"""

from __future__ import annotations

from collections.abc import Sequence


def window_means(losses: Sequence[float], window: int) -> list[float]:
    """Means of consecutive whole windows of ``window`` steps (a partial last window is left out)."""
    n = len(losses) // window
    return [sum(losses[i * window : (i + 1) * window]) / window for i in range(n)]


def plateaued(losses: Sequence[float], *, window: int, patience: int, min_delta: float) -> bool:
    """Whether the last ``patience`` windows all failed to improve on the best window before them
    by more than the share ``min_delta``."""
    if patience < 1 or window < 1:
        return False
    means = window_means(losses, window)
    if len(means) <= patience:
        return False
    best = min(means[:-patience])
    return all(m > best * (1 - min_delta) for m in means[-patience:])
