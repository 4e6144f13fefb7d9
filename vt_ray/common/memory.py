"""Memory of a process and its children, read from ``/proc`` (Linux): what the run's memory report is made of.

Two figures per process, because neither alone answers "how much does this role cost":
- PSS (``/proc/<pid>/smaps_rollup``): resident memory with every shared page split between the processes that
  map it, so the PSS of all processes adds up to what the machine really holds (RSS would count torch's and
  vLLM's shared libraries once per process). The kernel keeps no PSS peak: callers sample it.
- Peak RSS (``VmHWM`` in ``/proc/<pid>/status``): the kernel's exact high-water mark, shared pages included, for
  a spike between two PSS samples.
psutil lists the children (vLLM's multi-process engine runs an EngineCore child); the figures are read directly
because psutil's ``memory_full_info`` parses the whole ``smaps``, 10-100x slower than ``smaps_rollup``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

GIB = 1024**3


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    name: str
    pss: int
    """bytes, now (0 when the process is gone or unreadable)"""
    rss: int
    """bytes, now"""
    peak_rss: int
    """bytes, the kernel's high-water mark since the process started (VmHWM)"""

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _kib_field(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def read_process(pid: int) -> ProcessMemory | None:
    """PSS, RSS and peak RSS of ``pid``; None when it is gone or not ours to read."""
    base = Path(f"/proc/{pid}")
    try:
        status = (base / "status").read_text()
        try:
            pss = _kib_field((base / "smaps_rollup").read_text(), "Pss")
        except OSError:  # kernels before 4.14 have no smaps_rollup: RSS stands in
            pss = _kib_field(status, "VmRSS")
    except OSError:
        return None
    name = _kib_name(status)
    return ProcessMemory(pid, name, pss, _kib_field(status, "VmRSS"), _kib_field(status, "VmHWM"))


def _kib_name(status: str) -> str:
    first = status.splitlines()[0] if status else ""
    return first.split(":", 1)[1].strip() if first.startswith("Name:") else ""


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every descendant (empty when ``pid`` is gone)."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def read_tree(pid: int | None = None) -> list[ProcessMemory]:
    """Memory of ``pid`` (default: this process) and its descendants that could be read."""
    found = (read_process(p) for p in tree_pids(os.getpid() if pid is None else pid))
    return [m for m in found if m is not None]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far (children that exited included)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def gib(n_bytes: float) -> float:
    return round(n_bytes / GIB, 3)
