"""Reward scoring on Ray actors: responses are split across CPU workers and scored with the same
:class:`~vt_ray.rewards.composite.RewardScorer` the ``score`` command uses. Custom rewards run in that scorer's
killable guard; the driver never scores inline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from vt_ray.rewards.config import RewardConfig
from vt_ray.rewards.target import RewardTarget
from vt_ray.rollout.group import StepTimeout, split_evenly
from vt_ray.testing.faults import hang_point


class RewardWorker:
    def __init__(self, cfg: RewardConfig, rank: int = 0) -> None:
        from vt_ray.rewards.composite import RewardScorer

        self.scorer = RewardScorer(cfg)
        self.rank = rank

    def ready(self) -> bool:
        return True

    def score(self, responses: Sequence[str], targets: Sequence[RewardTarget]) -> list[dict[str, float]]:
        hang_point("reward.score", self.rank)
        return self.scorer.score_batch(responses, targets)


class RewardGroup:
    def __init__(self, cfg: RewardConfig, num_workers: int, actor_options: Callable[[int], dict[str, Any]],
                 call_timeout_s: float = 600.0) -> None:
        self.cfg = cfg
        self.call_timeout_s = call_timeout_s
        self._actor_options = actor_options
        self._cls = ray.remote(max_restarts=0)(RewardWorker)
        self.actors = [self._spawn(rank) for rank in range(num_workers)]
        self.restarts = 0
        for rank, a in enumerate(self.actors):
            self._get("ready", rank, a.ready.remote())

    def _spawn(self, rank: int) -> Any:
        return self._cls.options(**self._actor_options(rank)).remote(self.cfg, rank)

    def _get(self, method: str, rank: int, ref: ray.ObjectRef) -> Any:
        try:
            return ray.get(ref, timeout=self.call_timeout_s)
        except GetTimeoutError as err:
            raise StepTimeout("reward", method, rank, self.call_timeout_s) from err

    def score(self, responses: Sequence[str], targets: Sequence[RewardTarget]) -> list[dict[str, float]]:
        """One result dict per response, in order. A dead scorer is replaced once and its share re-scored."""
        parts = split_evenly(len(responses), len(self.actors))
        refs = {r: self.actors[r].score.remote(list(responses[a:b]), list(targets[a:b]))
                for r, (a, b) in enumerate(parts) if b > a}
        out: list[dict[str, float]] = []
        for rank in sorted(refs):
            try:
                out += self._get("score", rank, refs[rank])
            except RayActorError:
                a, b = parts[rank]
                self.restarts += 1
                self.actors[rank] = self._spawn(rank)
                out += self._get("score", rank, self.actors[rank].score.remote(list(responses[a:b]), list(targets[a:b])))
        return out

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
