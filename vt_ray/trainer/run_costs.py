"""What a training run costs besides its steps: peak memory per role process and time per start-up and
shut-down phase (issue 24, items 3 and 4), written into the run directory.

* ``memory.json``: per role process (``driver``, ``learner<rank>``, ``rollout<rank>``, ``reward<rank>``,
  ``ray`` for the embedded cluster's own processes, ``wandb`` for W&B's service) the peak PSS of the process and
  its children (vLLM's EngineCore included), sampled by one driver thread every ``interval_s``, and the sum of
  the kernel's peak RSS (VmHWM) of those processes. ``total`` is the peak of the sum over every role, sampled at
  the same instants: what the whole run held at once. The step-1 and last-step metrics carry
  ``memory/<role>_peak_gib`` (peak PSS so far).
* ``phases.json``: seconds of each phase of :meth:`GRPOTrainer.fit` in order (data, role start-up with the
  model loads, resume, validation, each step, checkpoints, HF export, shutdown of each role, W&B close),
  grouped into start-up, steps and shut-down, and printed once at the end; and the CPU seconds each role had
  used when the roles were up (start-up is CPU-bound on a small machine). The train command adds the Ray start
  and stop around ``fit`` (:func:`add_outer_phases`).

Why spans opened by the driver: a phase is named where it runs (``with costs.phase("start_roles"):``), so
renaming or moving a method cannot silently drop it from the report; this module only records what it is told
(:class:`RunCosts`: :meth:`~RunCosts.phase`, :meth:`~RunCosts.roles_started`, :meth:`~RunCosts.step_done`,
:meth:`~RunCosts.finish`). Nothing here can fail a run (errors are logged). The sampler reads ``/proc`` from the
driver (no call into a busy actor, so steps are not delayed; see SAMPLE_EVERY_S for its cost); actors on another
node are asked once, after the last step, through ``__ray_call__`` (one reading, no sampled peak).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_ray.common.memory import ProcessMemory, cpu_seconds, gib, read_process, read_tree, tree_pids

log = logging.getLogger(__name__)
SAMPLE_EVERY_S = 2.0
"""PSS sampling period. Reading ``smaps_rollup`` walks a process's page tables: about 10-25 ms of CPU for each
large process (measured under load), ~80 ms for the tiny recipe's tree, so 2 s keeps it near 2% of one core;
the exact peak RSS (VmHWM) needs no sampling."""


# ---- memory ------------------------------------------------------------------------------------------------
@dataclass
class RolePeak:
    peak_pss: int = 0
    pss: int = 0
    processes: dict[int, ProcessMemory] = field(default_factory=dict)
    """pid -> its reading with the highest VmHWM (a pid seen once stays)"""
    remote: bool = False

    def add(self, readings: list[ProcessMemory]) -> None:
        self.pss = sum(m.pss for m in readings)
        self.peak_pss = max(self.peak_pss, self.pss)
        for m in readings:  # an exiting process reads as 0: keep each pid's highest reading
            old = self.processes.get(m.pid)
            if old is None or m.peak_rss >= old.peak_rss:
                self.processes[m.pid] = m

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_pss_gib": gib(self.peak_pss), "last_pss_gib": gib(self.pss),
            "peak_rss_gib": gib(sum(m.peak_rss for m in self.processes.values())),
            "processes": [{"pid": m.pid, "name": m.name, "peak_rss_gib": gib(m.peak_rss)}
                          for m in self.processes.values()],
            **({"remote": True} if self.remote else {}),
        }


class MemoryWatch:
    """Samples the PSS of every role's process tree on this node every ``interval_s`` (a daemon thread)."""

    def __init__(self, roles: Callable[[], dict[str, Any]], interval_s: float = SAMPLE_EVERY_S) -> None:
        self.groups, self.interval_s = roles, interval_s
        """role name (``learner``, ``rollout``, ``reward``) -> its group now (``None`` when not started)"""
        self.driver_pid = os.getpid()
        self.node_id = _node_id()
        self.roles: dict[str, RolePeak] = {}
        self.peak_total = 0
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as err:  # noqa: BLE001 - a report must never stop a run
                log.debug("memory sample failed: %s", err)
            if self._stop.wait(self.interval_s):  # the sampling period, not a synchronisation
                return

    def role_pids(self) -> dict[str, int]:
        """role name -> pid of every actor on this node that has reported where it runs."""
        found = {}
        for role, group in self.groups().items():
            infos = group.actor_infos() if hasattr(group, "actor_infos") else {}
            for rank, info in infos.items():
                if not self.node_id or not info.node_id or info.node_id == self.node_id:
                    found[f"{role}{rank}"] = info.pid
                else:
                    self.roles.setdefault(f"{role}{rank}", RolePeak(remote=True))
        return found

    def sample(self) -> None:
        """One reading of every role's tree, the driver itself, and the rest of the driver's tree (``ray``)."""
        readings: dict[str, list[ProcessMemory]] = {}
        owned = {self.driver_pid}
        for role, pid in self.role_pids().items():
            pids = tree_pids(pid)
            owned.update(pids)
            readings[role] = [m for m in map(read_process, pids) if m is not None]
        driver = read_process(self.driver_pid)
        readings["driver"] = [driver] if driver is not None else []
        # The rest of the driver's tree: the embedded cluster (ray start, GCS, raylet, agents; its actors are
        # counted above) and W&B's service process.
        rest = [m for m in map(read_process, tree_pids(self.driver_pid)) if m is not None and m.pid not in owned]
        readings["ray"] = [m for m in rest if not m.name.startswith("wandb")]
        wandb = [m for m in rest if m.name.startswith("wandb")]
        if wandb:
            readings["wandb"] = wandb
        with self._lock:
            for role, found in readings.items():
                if found or role not in self.roles:
                    self.roles.setdefault(role, RolePeak()).add(found)
            self.peak_total = max(self.peak_total, sum(m.pss for found in readings.values() for m in found))
            self.samples += 1

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each role's process tree on this node, the driver, and the rest (``ray``):
        on a small machine start-up is CPU-bound, so this says which role's start costs the most."""
        roles = {role: tree_pids(pid) for role, pid in self.role_pids().items()}
        owned = {p for pids in roles.values() for p in pids} | {self.driver_pid}
        out = {role: cpu_seconds(pids) for role, pids in roles.items()}
        out["driver"] = cpu_seconds([self.driver_pid])
        out["ray"] = cpu_seconds([p for p in tree_pids(self.driver_pid) if p not in owned])
        return {role: round(v, 2) for role, v in sorted(out.items())}

    def metrics(self) -> dict[str, float]:
        """``memory/<role>_peak_gib`` (peak PSS so far, with a sample taken now) of every role on this node, and
        the total."""
        self.sample()
        with self._lock:
            out = {f"memory/{role}_peak_gib": gib(p.peak_pss) for role, p in self.roles.items() if not p.remote}
            out["memory/total_peak_gib"] = gib(self.peak_total)
        return out

    def ask_remote_roles(self) -> None:
        """Actors on other nodes: their own tree's memory, asked once, after the last step (no peak PSS: one
        reading; the peak RSS is the kernel's)."""
        import ray

        for role, group in self.groups().items():
            for rank, actor in enumerate(getattr(group, "actors", None) or []):
                peak = self.roles.get(f"{role}{rank}")
                if peak is None or not peak.remote:
                    continue
                try:
                    peak.add(ray.get(actor.__ray_call__.remote(lambda _self: read_tree()), timeout=30))
                except Exception as err:  # noqa: BLE001
                    log.warning("memory of %s%d on another node: %s", role, rank, err)

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "interval_s": self.interval_s, "samples": self.samples,
                "what": "peak_pss_gib: sampled peak PSS of the process and its children; peak_rss_gib: sum of the "
                        "kernel's peak RSS (VmHWM) of those processes (shared pages counted in each)",
                "total": {"peak_pss_gib": gib(self.peak_total)},
                "roles": {role: p.as_dict() for role, p in sorted(self.roles.items())},
            }


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001
        return ""


# ---- phases ------------------------------------------------------------------------------------------------
@dataclass
class Span:
    name: str
    start: float
    seconds: float


class PhaseLog:
    """Named spans of wall-clock time, in the order they began (nested spans allowed)."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.spans: list[Span] = []

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spans.append(Span(name, start - self.origin, time.perf_counter() - start))

    def seconds(self, name: str) -> float:
        return sum(s.seconds for s in self.spans if s.name == name)


def summarize_phases(spans: list[Span]) -> dict[str, Any]:
    """Start-up (everything before step 1 ends), steps, and shut-down (after the last step), each by phase.

    Pure, so the grouping is tested without a run. A nested span (a role's shutdown inside ``shutdown``) is
    listed under its parent's group and excluded from the group's sum.
    """
    ordered = sorted(spans, key=lambda s: s.start)
    steps = [s for s in ordered if s.name.startswith("step_")]
    fit = next((s for s in ordered if s.name == "fit"), None)
    top = [s for s in ordered if s.name != "fit" and not _nested(s, ordered)]
    first_end = steps[0].start + steps[0].seconds if steps else (fit.start + fit.seconds if fit else 0.0)
    last_end = steps[-1].start + steps[-1].seconds if steps else first_end

    def group(selected: list[Span]) -> dict[str, Any]:
        phases: dict[str, float] = {}
        for s in selected:
            phases[s.name] = round(phases.get(s.name, 0.0) + s.seconds, 3)
        return {"phases": phases, "seconds": round(sum(s.seconds for s in selected if not _nested(s, ordered)), 3)}

    startup = [s for s in ordered if s.name != "fit" and s.start < first_end and s not in steps[1:]]
    shutdown = [s for s in ordered if s.name != "fit" and s.start >= last_end and not s.name.startswith("step_")]
    middle = [s for s in top if first_end <= s.start < last_end and not s.name.startswith("step_")]
    later = [s.seconds for s in steps[1:]]
    out: dict[str, Any] = {
        "startup": group(startup),
        "steps": {"count": len(steps), "first_s": round(steps[0].seconds, 3) if steps else None,
                  "median_after_first_s": round(statistics.median(later), 3) if later else None,
                  "total_s": round(sum(s.seconds for s in steps), 3), "between_steps": group(middle)},
        "shutdown": group(shutdown),
    }
    if fit is not None:
        out["fit_s"] = round(fit.seconds, 3)
        tracked = sum(s.seconds for s in top)
        out["untracked_s"] = round(fit.seconds - tracked, 3)  # metrics logger / W&B start, logging, glue
    out["timeline"] = [{"name": s.name, "start_s": round(s.start, 3), "seconds": round(s.seconds, 3)}
                       for s in ordered]
    return out


def _nested(span: Span, spans: list[Span]) -> bool:
    """Inside another non-``fit`` span (a role's shutdown within ``shutdown``)."""
    end = span.start + span.seconds
    return any(o is not span and o.name != "fit" and o.start <= span.start and end <= o.start + o.seconds
               and (o.start, -o.seconds) < (span.start, -span.seconds) for o in spans)


def format_phases(summary: dict[str, Any]) -> str:
    """The few lines printed at the end of a run."""
    def line(title: str, part: dict[str, Any]) -> str:
        body = ", ".join(f"{k} {v:.1f}" for k, v in part["phases"].items())
        return f"[train] {title} {part['seconds']:.1f} s: {body}"

    st = summary["steps"]
    steps = (f"[train] steps: {st['count']} in {st['total_s']:.1f} s (first {st['first_s'] or 0:.1f} s, then "
             f"median {st['median_after_first_s'] or 0:.2f} s)")
    return "\n".join([line("start-up", summary["startup"]), steps, line("shut-down", summary["shutdown"])])


# ---- recording ----------------------------------------------------------------------------------------------
class RunCosts:
    """The phases and memory of one :class:`~vt_ray.trainer.driver.GRPOTrainer` run: the driver opens the phases
    and says when the roles are up and a step is done; :meth:`finish` writes the reports."""

    def __init__(self, run_dir: str | Path, roles: Callable[[], dict[str, Any]],
                 interval_s: float = SAMPLE_EVERY_S) -> None:
        self.run_dir = Path(run_dir)
        self.phases = PhaseLog()
        self.memory = MemoryWatch(roles, interval_s)
        self.startup_cpu_s: dict[str, float] = {}

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Time the ``with`` block as phase ``name`` (recorded even when the block raises)."""
        return self.phases.span(name)

    def roles_started(self) -> None:
        """The roles are up: note the CPU each has used so far and start sampling their memory."""
        def started() -> None:
            self.startup_cpu_s = self.memory.cpu_seconds()
            self.memory.start()

        _quietly(started)

    def step_done(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """After step ``step`` (1-based): the first and the last step's ``metrics`` get the memory peaks so far."""
        if step == total_steps:  # actors on other nodes: asked while they are still there
            _quietly(self.memory.ask_remote_roles)
        if step in (1, total_steps):
            _quietly(lambda: metrics.update(self.memory.metrics()))

    def finish(self) -> None:
        """Stop sampling; write memory.json and phases.json and print the phases once (never raises)."""
        _quietly(self._finish)

    def _finish(self) -> None:
        self.memory.sample()  # the roles are gone by now: this catches the driver's and Ray's final state
        self.memory.stop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "memory.json").write_text(json.dumps(self.memory.report(), indent=1) + "\n")
        summary = summarize_phases(self.phases.spans)
        summary["cpu_s_at_roles_started"] = self.startup_cpu_s
        (self.run_dir / "phases.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(format_phases(summary), flush=True)
        mem = self.memory.report()
        print("[train] peak memory (PSS, GiB): " + ", ".join(
            f"{role} {r['peak_pss_gib']:.2f}" for role, r in mem["roles"].items()) +
            f"; all at once {mem['total']['peak_pss_gib']:.2f}", flush=True)


def add_outer_phases(run_dir: str | Path, **seconds: float) -> None:
    """Phases outside ``fit`` (the train command's Ray start and stop) into ``phases.json``, printed once."""
    path = Path(run_dir) / "phases.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    summary["outer"] = {k: round(v, 3) for k, v in seconds.items()}
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print("[train] outside fit: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["outer"].items()), flush=True)


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - reporting must never fail a run
        log.warning("run costs: %s: %s", type(err).__name__, err)
