"""Reward scoring on Ray actors: responses are split across CPU workers and scored with the same
:class:`~vt_ray.rewards.composite.RewardScorer` the ``score`` command uses. Custom rewards run in that scorer's
killable guard; the driver never scores inline. A scorer that does not answer in time raises
:class:`~vt_ray.common.timeouts.StepTimeout` with its Python stacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError

from vt_ray.cluster.worker_group import WorkerGroup
from vt_ray.common.sharding import split_evenly
from vt_ray.common.timeouts import ActorInfo, install_stack_dumps
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


class RewardGroup(WorkerGroup):
    role = "reward"

    def __init__(self, cfg: RewardConfig, num_workers: int, actor_options: Callable[[int], dict[str, Any]],
                 timeout_s: float = 600.0, wait_ready: bool = True) -> None:
        """``wait_ready=False``: return once the scorers are spawned and call :meth:`wait_ready` later (the
        trainer overlaps their start with the other roles')."""
        self.cfg = cfg
        self.restarts = 0
        super().__init__(RewardWorker, num_workers, lambda rank: (cfg, rank), timeout_s=timeout_s,
                         actor_options=actor_options, wait_ready=wait_ready)

    def score(self, responses: Sequence[str], targets: Sequence[RewardTarget]) -> list[dict[str, float]]:
        """One result dict per response, in order, with one deadline for all scorers. A dead scorer is replaced
        and its share re-scored (once per call)."""
        return self.submit(responses, targets)()

    def submit(self, responses: Sequence[str], targets: Sequence[RewardTarget]
               ) -> Callable[[], list[dict[str, float]]]:
        """:meth:`score`, sent now and waited for by the returned call (the driver scores while the learners
        compute log-probs). The deadline starts when the call waits."""
        parts = split_evenly(len(responses), len(self.actors))
        replaced: set[int] = set()

        def rescore(rank: int, err: Exception) -> ray.ObjectRef:
            if not isinstance(err, RayActorError) or rank in replaced:
                raise err
            a, b = parts[rank]
            replaced.add(rank)
            self.restarts += 1
            self.respawn(rank, wait_ready=False)  # not waited for: the re-sent call has the deadline
            return self.actors[rank].score.remote(list(responses[a:b]), list(targets[a:b]))

        refs = {r: self.actors[r].score.remote(list(responses[a:b]), list(targets[a:b]))
                for r, (a, b) in enumerate(parts) if b > a}

        def wait() -> list[dict[str, float]]:
            results = self.wait(refs, "score", rescore)
            return [item for rank in sorted(results) for item in results[rank]]

        return wait

    def shutdown(self) -> None:
        self.kill_all()
