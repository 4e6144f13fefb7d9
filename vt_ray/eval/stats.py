"""Small-sample statistics for reported accuracies: an accuracy on 64 items is a range, not a number."""

from __future__ import annotations

import math


def wilson_interval(correct: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Why Wilson and not the normal approximation: it stays inside [0, 1] and is honest at 0/n and n/n, which
    are exactly the accuracies a tiny model produces. ``correct`` may be fractional (a mean times ``total``).
    """
    if total <= 0:
        return (0.0, 1.0)
    p = min(max(correct / total, 0.0), 1.0)
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def format_accuracy(accuracy: float, total: int) -> str:
    """``0.781 [0.664, 0.865] (n=64)``."""
    lo, hi = wilson_interval(accuracy * total, total)
    return f"{accuracy:.3f} [{lo:.3f}, {hi:.3f}] (n={total})"
