"""One role's Ray actors behind group calls: the mechanics every role group shares.

The learner, rollout and reward groups differ in what they do with their actors (a torch.distributed group, a
weight-versioned engine pool, stateless scorers) but not in how they hold them: spawn N actors with per-rank
options, learn where each runs (``ready()``: pid, node, stack-dump file), call every rank with ONE deadline for
the whole call (never a timeout per rank that can add up), name the role, method and every late rank in a
:class:`~vt_ray.common.timeouts.StepTimeout` with their Python stacks, replace one rank, and end them all.
Those mechanics live here once; a role group subclasses :class:`WorkerGroup` and keeps only its own policy
(what a failure means, restart budgets, rollback).

An actor class used here must answer ``ready() -> ActorInfo`` (``vt_ray.common.timeouts.install_stack_dumps``
gives it) and is constructed as ``actor_cls(*actor_args(rank))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ray

from vt_ray.common.timeouts import ActorInfo, StepTimeout, dump_stacks, resolved, wait_all

OnError = Callable[[int, Exception], Any]


class WorkerGroup:
    """``num_workers`` actors of ``role``. ``remote_options`` are the actor class's Ray options (CPUs, GPUs);
    ``actor_options(rank)`` adds per-rank ones (a placement-group bundle); ``runtime_env`` goes to every actor.
    ``timeout_s`` bounds every call until changed (the trainer tightens it after its first step).
    ``wait_ready=False`` returns as soon as the actors are spawned; :meth:`wait_ready` then blocks (the trainer
    overlaps the roles' start-ups this way), and a group that never waits still learns where each actor runs
    from its ``ready()`` answer when a call times out."""

    role = "worker"
    timeout_cls: type[StepTimeout] = StepTimeout

    def __init__(
        self,
        actor_cls: Callable[..., Any],
        num_workers: int,
        actor_args: Callable[[int], tuple[Any, ...]],
        *,
        timeout_s: float,
        remote_options: Mapping[str, Any] | None = None,
        actor_options: Callable[[int], Mapping[str, Any]] | None = None,
        runtime_env: dict[str, Any] | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.timeout_s = timeout_s
        self._remote_cls: Any = ray.remote(**{"max_restarts": 0, **(remote_options or {})})(actor_cls)
        self._actor_args = actor_args
        self._actor_options = actor_options
        self._runtime_env = runtime_env
        self._infos: dict[int, ActorInfo] = {}  # rank -> pid, node, stack dump file (from ready())
        self.actors: list[Any] = [self._spawn(rank) for rank in range(num_workers)]
        self._ready_refs: dict[int, ray.ObjectRef] = {rank: a.ready.remote() for rank, a in enumerate(self.actors)}
        self._waited = False
        if wait_ready:
            self.wait_ready()

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def actor_infos(self) -> dict[int, ActorInfo]:
        """rank -> where each actor that has answered ``ready()`` runs (pid, node), without waiting for the others:
        the run's memory report (vt_ray/trainer/run_costs.py)."""
        for rank, ref in list(self._ready_refs.items()):
            if rank not in self._infos and (info := resolved(ref)) is not None:
                self._infos[rank] = info
        return dict(self._infos)

    # ---- actors ----------------------------------------------------------------------------------------------
    def _spawn(self, rank: int) -> Any:
        opts: dict[str, Any] = dict(self._actor_options(rank)) if self._actor_options else {}
        if self._runtime_env:
            opts["runtime_env"] = self._runtime_env
        return self._remote_cls.options(**opts).remote(*self._actor_args(rank))

    def wait_ready(self) -> None:
        """Block until every actor has started (one deadline for all; a stuck start raises the group's
        timeout naming the rank, with its stacks). Idempotent."""
        if not self._waited:
            self._waited = True
            self._infos.update(self.wait(dict(self._ready_refs), "ready"))

    def respawn(self, rank: int, wait_ready: bool = True) -> None:
        """Replace rank ``rank``'s actor with a new one (the old one is killed if it is still there)."""
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[rank], no_restart=True)
        self.actors[rank] = self._spawn(rank)
        self._infos.pop(rank, None)  # the old actor's pid is gone
        self._ready_refs[rank] = self.actors[rank].ready.remote()
        if wait_ready:
            self._infos[rank] = self.wait({rank: self._ready_refs[rank]}, "ready")[rank]

    def kill_all(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []

    # ---- calls -----------------------------------------------------------------------------------------------
    def call(self, method: str, *args: Any, ranks: Sequence[int] | None = None, on_error: OnError | None = None,
             timeout_s: float | None = None, **kwargs: Any) -> list[Any]:
        """``actor.method(*args, **kwargs)`` on ``ranks`` (default: every rank), results in rank order."""
        ranks = list(range(len(self.actors)) if ranks is None else ranks)
        refs = {rank: getattr(self.actors[rank], method).remote(*args, **kwargs) for rank in ranks}
        results = self.wait(refs, method, on_error, timeout_s)
        return [results[rank] for rank in ranks]

    def wait(self, refs: Mapping[int, ray.ObjectRef], method: str, on_error: OnError | None = None,
             timeout_s: float | None = None) -> dict[int, Any]:
        """rank -> result of ``refs[rank]`` with one deadline for all (see :func:`~vt_ray.common.timeouts.wait_all`
        for ``on_error``: raise, return a re-sent ref, or return the value to record)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return wait_all(refs, timeout_s, lambda late: self.timeout_error(method, late, timeout_s), on_error)

    def timeout_error(self, method: str, ranks: int | Sequence[int], timeout_s: float | None = None) -> StepTimeout:
        """The group's :class:`StepTimeout` naming every rank that missed the deadline (a stuck rank, and the
        peers blocked in a collective with it), with their Python stacks attached."""
        ranks = [ranks] if isinstance(ranks, int) else sorted(ranks)
        for rank in ranks:
            if rank not in self._infos and rank in self._ready_refs:
                info = resolved(self._ready_refs[rank])
                if info is not None:
                    self._infos[rank] = info
        stacks = dump_stacks(self.role, [(r, self.actors[r], self._infos.get(r)) for r in ranks])
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return self.timeout_cls(self.role, method, ranks[0], timeout_s, stacks=stacks, ranks=ranks)
