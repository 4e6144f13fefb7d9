"""Deterministic crash points, switched on by environment variables (off, and free, in normal runs).

``VT_RAY_CRASH_AT="rollout.generate@1"`` makes the process serving rank 1 hard-exit (``os._exit``, like an OOM
kill) when it reaches the ``rollout.generate`` point. With ``VT_RAY_CRASH_MARKER=/path`` the crash happens once:
the marker file is created just before exiting and a restarted process sees it and carries on. A ``#k`` suffix
fires on the k-th arrival only (``learner.save_checkpoint@0#2``: during the second save). Tests pass these
to actors through the Ray runtime_env, so recovery paths are exercised without sleeps or timing races.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

CRASH_EXIT_CODE = 43


_arrivals: dict[str, int] = {}


def _armed(variable: str, name: str, rank: int) -> bool:
    """Spec ``point[@rank][#k]``: fire at ``point`` (on ``rank``), on its k-th arrival in this process."""
    spec = os.environ.get(variable)
    if not spec:
        return False
    spec, _, nth = spec.partition("#")
    point, _, want_rank = spec.partition("@")
    if point != name or (want_rank and int(want_rank) != rank):
        return False
    _arrivals[name] = _arrivals.get(name, 0) + 1
    return not nth or _arrivals[name] == int(nth)


def corrupt_point(name: str, rank: int = 0) -> bool:
    """``VT_RAY_CORRUPT_AT="learner.send_weights@0"``: True where the caller should corrupt what it sends (the
    weight stream flips a byte of one bucket after its checksum), so tests see what a bad wire does."""
    return _armed("VT_RAY_CORRUPT_AT", name, rank)


def hang_point(name: str, rank: int = 0) -> None:
    """``VT_RAY_HANG_AT="reward.score@0"``: block forever at this point (a stuck kernel, a deadlocked
    collective), so tests can check that callers time out with an error naming the role instead of hanging."""
    if _armed("VT_RAY_HANG_AT", name, rank):
        threading.Event().wait()


def crash_point(name: str, rank: int = 0) -> None:
    if not _armed("VT_RAY_CRASH_AT", name, rank):
        return
    marker = os.environ.get("VT_RAY_CRASH_MARKER")
    if marker:
        path = Path(marker)
        if path.exists():
            return
        path.write_text(f"{name}@{rank} pid {os.getpid()}\n")
    os._exit(CRASH_EXIT_CODE)
