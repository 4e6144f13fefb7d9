"""Deterministic crash points, switched on by environment variables (off, and free, in normal runs).

``VT_RAY_CRASH_AT="rollout.generate@1"`` makes the process serving rank 1 hard-exit (``os._exit``, like an OOM
kill) when it reaches the ``rollout.generate`` point. With ``VT_RAY_CRASH_MARKER=/path`` the crash happens once:
the marker file is created just before exiting and a restarted process sees it and carries on. Tests pass these
to actors through the Ray runtime_env, so recovery paths are exercised without sleeps or timing races.
"""

from __future__ import annotations

import os
from pathlib import Path

CRASH_EXIT_CODE = 43


def crash_point(name: str, rank: int = 0) -> None:
    spec = os.environ.get("VT_RAY_CRASH_AT")
    if not spec:
        return
    point, _, want_rank = spec.partition("@")
    if point != name or (want_rank and int(want_rank) != rank):
        return
    marker = os.environ.get("VT_RAY_CRASH_MARKER")
    if marker:
        path = Path(marker)
        if path.exists():
            return
        path.write_text(f"{name}@{rank} pid {os.getpid()}\n")
    os._exit(CRASH_EXIT_CODE)
