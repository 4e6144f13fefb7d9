"""No silent hangs (C8 item 7): the error a timed-out remote call raises, and the Python stacks of the actor
that did not answer.

Every role actor calls :func:`install_stack_dumps` first thing in ``__init__``: ``faulthandler`` then writes
the stacks of all its threads to a per-process file whenever the process gets SIGUSR1, from the C signal
handler, so it works while the actor's main thread is blocked in C code (a collective, a lock, a CUDA sync).
The actor's ``ready()`` returns the :class:`ActorInfo` (pid, node, dump path); when a group's call times out
it hands the stuck actors to :func:`dump_stacks` and raises :class:`StepTimeout` with the dumps attached.

:func:`dump_stacks` signals and reads the file directly when the actor runs on the caller's node, and
otherwise through a zero-CPU Ray task pinned to the actor's node (``NodeAffinitySchedulingStrategy``, not
soft): on KubeRay every node is its own pod, with its own pid namespace and filesystem. An actor that never
answered ``ready()`` (stuck in ``__init__``) is found in the GCS actor table (pid and node), and its dump path
follows from the pid. A process is signalled only if its ``/proc/<pid>/status`` shows a SIGUSR1 handler, so
a process that never installed one is not killed by the signal's default action.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

DUMP_SIGNAL = signal.SIGUSR1
MAX_DUMP_CHARS = 20_000  # per actor: the tail of the dump goes into the error message
MAX_DUMPED_ACTORS = 8  # a timed-out collective over many ranks: the first few pending ranks suffice


class StepTimeout(RuntimeError):
    """A role's remote call did not answer in time: ``role``, ``method`` and ``rank`` name it, and
    ``stacks`` maps rank -> that actor's Python stacks (faulthandler) when they could be collected."""

    def __init__(self, role: str, method: str, rank: int, timeout_s: float, detail: str = "",
                 stacks: dict[int, str] | None = None, ranks: Sequence[int] | None = None) -> None:
        self.role, self.method, self.rank, self.timeout_s = role, method, rank, timeout_s
        self.detail, self.stacks = detail, dict(stacks or {})
        self.ranks = list(ranks) if ranks else [rank]  # every rank that missed the deadline (rank: the first)
        message = f"{role}[{rank}].{method}: no answer within {timeout_s:g} s"
        if len(self.ranks) > 1:
            message += f" from ranks {self.ranks}"
        if detail:
            message += f" ({detail})"
        for r, text in self.stacks.items():
            message += f"\n--- Python stacks of {role}[{r}] ---\n{text.rstrip()}"
        # Not super(): subclasses may also derive from a role's error type with another signature.
        RuntimeError.__init__(self, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.role, self.method, self.rank, self.timeout_s, self.detail, self.stacks, self.ranks))


@dataclass(frozen=True)
class ActorInfo:
    """Where an actor runs and where it writes its stack dumps (``stacks_path`` is empty outside Ray)."""

    role: str
    rank: int
    pid: int
    node_id: str = ""
    node_ip: str = ""
    stacks_path: str = ""


# ---- actor side -----------------------------------------------------------------------------------------
_dump_file: IO[str] | None = None


def _stacks_dir() -> Path:
    """The Ray session's log directory of this node (collected with the other Ray logs), else the temp dir."""
    try:
        import ray._private.worker as ray_worker

        node = ray_worker._global_node
        if node is not None:
            return Path(node.get_logs_dir_path())
    except Exception as err:  # noqa: BLE001 - best effort: any failure falls back to the temp dir
        log.debug("no Ray log directory (%s): stack dumps go to the temp dir", err)
    return Path(tempfile.gettempdir())


def default_stacks_path(pid: int) -> Path:
    return _stacks_dir() / f"vt_ray-stacks-{pid}.txt"


def _in_ray_actor() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001
        return False


def install_stack_dumps(role: str, rank: int) -> ActorInfo:
    """Make SIGUSR1 dump all threads' Python stacks to this process's dump file (once per process; only
    inside a Ray actor: an in-process worker leaves the caller's signal handling alone)."""
    global _dump_file
    pid = os.getpid()
    if not _in_ray_actor():
        return ActorInfo(role, rank, pid)
    import ray

    path = default_stacks_path(pid)
    if _dump_file is None or _dump_file.closed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _dump_file = open(path, "a", buffering=1)  # noqa: SIM115 - stays open: faulthandler writes to its fd
            faulthandler.register(DUMP_SIGNAL, file=_dump_file, all_threads=True, chain=False)
        except (OSError, RuntimeError, ValueError) as err:  # never fail the actor over its debugging aid
            log.warning("%s[%d]: no stack dumps on SIGUSR1 (%s)", role, rank, err)
            _dump_file = None
    path_text = str(Path(_dump_file.name)) if _dump_file is not None else ""
    node_ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]  # Ray ships it unannotated
    return ActorInfo(role, rank, pid, ray.get_runtime_context().get_node_id(), node_ip, path_text)


# ---- caller side ----------------------------------------------------------------------------------------
def _catches(pid: int, signum: int) -> bool | None:
    """Whether process ``pid`` has a handler for ``signum`` (Linux ``/proc``); None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        return None
    return None


def signal_and_read(pid: int, path: str | None, wait_s: float = 5.0) -> str:
    """Send SIGUSR1 to ``pid`` (on this node) and return what it appended to its dump file, polling the file
    until it has grown and stopped growing, or ``wait_s`` passed."""
    dump = Path(path) if path else default_stacks_path(pid)
    if _catches(pid, DUMP_SIGNAL) is False:
        return f"(no stack dump: pid {pid} has no SIGUSR1 handler)"
    before = dump.stat().st_size if dump.exists() else 0
    try:
        os.kill(pid, DUMP_SIGNAL)
    except OSError as err:
        return f"(no stack dump: cannot signal pid {pid}: {err})"
    deadline, last = time.monotonic() + wait_s, -1
    while time.monotonic() < deadline:
        size = dump.stat().st_size if dump.exists() else 0
        if size > before and size == last:
            break
        last = size
        time.sleep(0.05)
    if not dump.exists() or dump.stat().st_size <= before:
        return f"(no stack dump: pid {pid} wrote nothing to {dump} within {wait_s:g} s)"
    with open(dump, "rb") as f:
        f.seek(before)
        text = f.read().decode(errors="replace")
    if len(text) > MAX_DUMP_CHARS:
        text = f"... ({len(text) - MAX_DUMP_CHARS} chars cut, full dump in {dump})\n" + text[-MAX_DUMP_CHARS:]
    return f"(pid {pid}, dump file {dump})\n{text}"


def _locate(actor: Any, role: str, rank: int) -> ActorInfo | None:
    """An actor's pid and node from the GCS actor table, for an actor that never answered ``ready()``."""
    try:
        from ray._private import state

        entry = state.actors(actor_id=actor._actor_id.hex())
        if entry and entry.get("Pid"):
            address = entry.get("Address", {})
            return ActorInfo(role, rank, int(entry["Pid"]), address.get("NodeID", ""), address.get("IPAddress", ""))
    except Exception as err:  # noqa: BLE001 - best effort
        log.debug("actor %s not found in the GCS actor table: %s", actor, err)
    return None


_task: Any = None


def _dump_task() -> Any:
    """``signal_and_read`` as a zero-CPU Ray task (defined once, on first use)."""
    global _task
    if _task is None:
        import ray

        _task = ray.remote(num_cpus=0, max_retries=0)(signal_and_read)
    return _task


def dump_stacks(
    role: str,
    targets: Iterable[tuple[int, Any, ActorInfo | None]],
    wait_s: float = 5.0,
    via_task: bool | None = None,
) -> dict[int, str]:
    """rank -> Python stacks of each ``(rank, actor handle, info from ready() or None)``, or a line saying
    why there are none. Never raises. ``via_task`` forces (True) or forbids (False) the pinned Ray task;
    by default it is used for actors on other nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out: dict[int, str] = {}
    remote: dict[int, Any] = {}
    local: list[tuple[int, ActorInfo]] = []
    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001
        here = ""
    for rank, actor, info in list(targets)[:MAX_DUMPED_ACTORS]:
        info = info or _locate(actor, role, rank)
        if info is None or not info.pid:
            out[rank] = "(no stack dump: the actor's pid and node are unknown)"
            continue
        path = info.stacks_path or None
        pinned = via_task if via_task is not None else info.node_id != here
        if not pinned:
            local.append((rank, info))
            continue
        try:
            strategy = NodeAffinitySchedulingStrategy(info.node_id, soft=False)
            remote[rank] = _dump_task().options(scheduling_strategy=strategy).remote(info.pid, path, wait_s)
        except Exception as err:  # noqa: BLE001
            out[rank] = f"(no stack dump: cannot start a task on node {info.node_id} ({info.node_ip}): {err})"
    for rank, info in local:
        out[rank] = signal_and_read(info.pid, info.stacks_path or None, wait_s)
    for rank, ref in remote.items():
        try:
            out[rank] = ray.get(ref, timeout=wait_s + 60.0)
        except Exception as err:  # noqa: BLE001
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            out[rank] = f"(no stack dump: the task on the actor's node failed: {type(err).__name__}: {err})"
    return {rank: out[rank] for rank in sorted(out)}


def wait_all(
    refs: Mapping[int, Any],
    timeout_s: float,
    on_timeout: Callable[[list[int]], BaseException],
    on_error: Callable[[int, Exception], Any] | None = None,
) -> dict[int, Any]:
    """rank -> result of ``refs[rank]``, waiting on every rank at once with ONE deadline for the whole call
    (``ray.wait`` with the time that is left), so waits on N ranks never add up to N timeouts.

    Results are taken as they arrive, so a failure surfaces at once rather than after the peers time out.
    When the deadline passes, ``on_timeout(ranks)`` builds the error to raise, given every rank still pending.
    A rank whose call raised a Ray error goes to ``on_error(rank, err)``, which raises, returns a new
    ``ObjectRef`` (the rank's work re-sent, e.g. to a restarted actor; it gets a deadline of its own, as a new
    call), or returns the value to record for that rank. Without ``on_error`` the error propagates.
    """
    import ray
    from ray.exceptions import RayError

    start = time.monotonic()
    deadline = {rank: start + timeout_s for rank in refs}
    pending = {ref: rank for rank, ref in refs.items()}
    results: dict[int, Any] = {}
    while pending:
        remaining = max(0.0, min(deadline[r] for r in pending.values()) - time.monotonic())
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
        if not ready:
            now = time.monotonic()
            late = sorted(r for r in pending.values() if deadline[r] <= now)
            if late:
                raise on_timeout(late)
            continue
        rank = pending.pop(ready[0])
        try:
            results[rank] = ray.get(ready[0])
        except RayError as err:
            if on_error is None:
                raise
            outcome = on_error(rank, err)
            if isinstance(outcome, ray.ObjectRef):
                pending[outcome] = rank
                deadline[rank] = time.monotonic() + timeout_s
            else:
                results[rank] = outcome
    return results


def resolved(ref: Any) -> ActorInfo | None:
    """The value of an already finished ``ready()`` call, without waiting; None if it has not finished."""
    import ray

    try:
        done, _ = ray.wait([ref], timeout=0)
        value = ray.get(done[0]) if done else None
    except Exception:  # noqa: BLE001
        return None
    return value if isinstance(value, ActorInfo) else None
