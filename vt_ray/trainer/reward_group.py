"""Reward scoring on Ray actors: responses are split across CPU workers and scored with the same
:class:`~vt_ray.rewards.composite.RewardScorer` the ``score`` command uses. Custom rewards run in that scorer's
killable guard; the driver never scores inline. A scorer that does not answer in time raises
:class:`~vt_ray.common.timeouts.StepTimeout` with its Python stacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError

from vt_ray.common.sharding import split_evenly
from vt_ray.common.timeouts import (
    ActorInfo,
    StepTimeout,
    install_stack_dumps,
    timeout_error,
    wait_all,
)
from vt_ray.rewards.config import RewardConfig
from vt_ray.rewards.target import RewardTarget
from vt_ray.testing.faults import crash_point, hang_point


class RewardWorker:
    def __init__(self, cfg: RewardConfig, rank: int = 0) -> None:
        self.info = install_stack_dumps("reward", rank)
        from vt_ray.rewards.composite import RewardScorer

        self.scorer = RewardScorer(cfg)
        self.rank = rank

    def ready(self) -> ActorInfo:
        """Where this actor runs (pid, node, stack dump file): the group needs it to dump a stuck actor."""
        return self.info

    def score(self, responses: Sequence[str], targets: Sequence[RewardTarget]) -> list[dict[str, float]]:
        hang_point("reward.score", self.rank)
        crash_point("reward.score", self.rank)
        return self.scorer.score_batch(responses, targets)


class RewardGroup:
    def __init__(self, cfg: RewardConfig, num_workers: int, actor_options: Callable[[int], dict[str, Any]],
                 call_timeout_s: float = 600.0, wait_ready: bool = True) -> None:
        """``wait_ready=False``: return once the scorers are spawned and call :meth:`wait_ready` later (the
        trainer overlaps their start with the other roles')."""
        self.cfg = cfg
        self.call_timeout_s = call_timeout_s
        self._actor_options = actor_options
        self._cls = ray.remote(max_restarts=0)(RewardWorker)
        self._infos: dict[int, ActorInfo] = {}  # rank -> pid, node, stack dump file (from ready())
        self.actors = [self._spawn(rank) for rank in range(num_workers)]
        self.restarts = 0
        self._ready_refs: dict[int, ray.ObjectRef] | None = {rank: a.ready.remote() for rank, a in enumerate(self.actors)}
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every scorer has started (one deadline for all). Idempotent."""
        if self._ready_refs is not None:
            refs, self._ready_refs = self._ready_refs, None
            self._infos = wait_all(refs, self.call_timeout_s, lambda late: self._timeout("ready", late))

    def _spawn(self, rank: int) -> Any:
        return self._cls.options(**self._actor_options(rank)).remote(self.cfg, rank)

    def _timeout(self, method: str, ranks: list[int]) -> StepTimeout:
        """StepTimeout naming every scorer that missed the deadline, with their Python stacks attached."""
        return timeout_error("reward", method, ranks, self.call_timeout_s, self.actors, self._infos)

    def score(self, responses: Sequence[str], targets: Sequence[RewardTarget]) -> list[dict[str, float]]:
        """One result dict per response, in order, with one deadline for all scorers. A dead scorer is replaced
        and its share re-scored (once per call)."""
        parts = split_evenly(len(responses), len(self.actors))
        replaced: set[int] = set()

        def rescore(rank: int, err: Exception) -> ray.ObjectRef:
            if not isinstance(err, RayActorError) or rank in replaced:
                raise err
            a, b = parts[rank]
            replaced.add(rank)
            self.restarts += 1
            self._infos.pop(rank, None)  # the new actor's pid comes from the GCS if it gets stuck
            self.actors[rank] = self._spawn(rank)
            return self.actors[rank].score.remote(list(responses[a:b]), list(targets[a:b]))

        refs = {r: self.actors[r].score.remote(list(responses[a:b]), list(targets[a:b]))
                for r, (a, b) in enumerate(parts) if b > a}
        results = wait_all(refs, self.call_timeout_s, lambda late: self._timeout("score", late), rescore)
        return [item for rank in sorted(results) for item in results[rank]]

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
