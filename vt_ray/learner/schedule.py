"""Learning-rate schedule: linear warmup, then cosine decay to a floor (a pure function of the step)."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_steps(total_steps: int, steps: int, ratio: float) -> int:
    """Explicit warmup steps win; otherwise a share of the total."""
    return steps if steps > 0 else int(ratio * total_steps)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based).

    Warmup starts at 1/warmup rather than 0 so no step is wasted at lr 0; after ``total`` steps the lr stays
    at the floor (a run may be extended without the schedule wrapping around).
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_schedule(total_steps: int, warmup: int, warmup_ratio: float, min_ratio: float) -> Callable[[int], float]:
    """The peak-lr multiplier of each step (:func:`lr_factor`, the warmup resolved once by :func:`warmup_steps`):
    what the learner's ``LambdaLR`` and the Megatron optimizer's schedule both follow."""
    steps = warmup_steps(total_steps, warmup, warmup_ratio)
    return lambda step: lr_factor(step, steps, total_steps, min_ratio)
