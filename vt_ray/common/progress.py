"""Live progress lines for long work (SFT, GRPO, evaluation, curation, data check): one tqdm line per phase with
step / total, ETA, rate and the figures that matter now (reward, accuracy, loss).

Quiet when stderr is not a terminal (logs, CI, ``ray job`` output keep only the plain per-step lines) and
when ``VT_RAY_QUIET=1`` (what ``python -m vt_ray --quiet ...`` sets). Our own console lines go through
:func:`echo`, which prints above a live bar instead of through it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

QUIET_ENV = "VT_RAY_QUIET"


def progress_enabled() -> bool:
    if os.environ.get(QUIET_ENV, "").lower() in ("1", "true", "yes"):
        return False
    return sys.stderr.isatty()


def echo(message: str) -> None:
    """``print`` that keeps live progress bars intact (a plain print when none is shown)."""
    tqdm.write(message)
    sys.stdout.flush()


class Progress:
    """``with Progress("GRPO", total=100, initial=step) as bar: ... bar.advance(reward=0.5)``."""

    def __init__(self, desc: str, total: int | None, initial: int = 0, unit: str = "step") -> None:
        """``total=None`` when the count is not known ahead (rows of a streamed file): count and rate, no ETA."""
        enabled = progress_enabled()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                        disable=not enabled, dynamic_ncols=True, smoothing=0.3)
        # Log records (e.g. SFT's per-step INFO line) go above the bar too, while it is shown.
        self._logging = logging_redirect_tqdm() if enabled else contextlib.nullcontext()
        self._logging.__enter__()

    def advance(self, n: int = 1, **figures: Any) -> None:
        if figures and not self.bar.disable:  # a hidden bar skips the formatting (data check calls this per row)
            self.bar.set_postfix({k: _short(v) for k, v in figures.items() if v is not None}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self._logging is not None:
            self._logging.__exit__(None, None, None)
            self._logging = None
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
