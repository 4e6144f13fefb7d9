"""Rollout workers as Ray actors, and the group that splits a batch across them.

The group owns fault tolerance: if an actor dies mid-batch it is recreated, given the current weight version,
and only its share of the batch is re-sent, so no sample is lost or doubled. Every remote wait has a timeout
that names the role, method and rank (a stuck vLLM engine must not look like a silent hang).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from vt_ray.config.schema import RecipeConfig
from vt_ray.rollout.types import SamplingSettings
from vt_ray.rollout.worker import RolloutBatchResult, RolloutWorker

log = logging.getLogger(__name__)


class StepTimeout(RuntimeError):
    """A remote call did not answer in time."""

    def __init__(self, role: str, method: str, rank: int, timeout_s: float):
        self.role, self.method, self.rank = role, method, rank
        super().__init__(f"{role}[{rank}].{method} did not answer within {timeout_s:.0f} s")


class RolloutRestartBudgetExhausted(RuntimeError):
    pass


@dataclass
class GroupMetrics:
    actor_restarts: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def split_evenly(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges covering n_items, sizes differing by at most one, no empty parts
    unless n_items < n_parts."""
    base, extra = divmod(n_items, n_parts)
    bounds, start = [], 0
    for i in range(n_parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class RolloutGroup:
    """``num_workers`` rollout actors behind one ``generate`` call that returns results in input order."""

    def __init__(
        self,
        cfg: RecipeConfig,
        num_workers: int = 1,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_restarts: int = 3,
        call_timeout_s: float = 1800.0,
        runtime_env: dict[str, Any] | None = None,
        actor_options: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        """``actor_options(rank)`` gives each actor's Ray options (placement group bundle, CPUs, GPUs); without
        it actors ask for ``num_cpus``/``num_gpus`` anywhere in the cluster."""
        self.cfg = cfg
        self.max_restarts = max_restarts
        self.call_timeout_s = call_timeout_s
        self._actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(RolloutWorker)
        self._runtime_env = runtime_env
        self._actor_options = actor_options
        self.metrics = GroupMetrics()
        self._weights: tuple[ray.ObjectRef, int] | None = None  # latest (blob ref, version), for restarts
        self._seed: int | None = None
        self.actors = [self._spawn(rank) for rank in range(num_workers)]
        self._wait_all("ready", [a.ready.remote() for a in self.actors])

    def _spawn(self, rank: int) -> Any:
        opts: dict[str, Any] = dict(self._actor_options(rank)) if self._actor_options else {}
        if self._runtime_env:
            opts["runtime_env"] = self._runtime_env
        return self._actor_cls.options(**opts).remote(self.cfg, rank)

    def _wait_all(self, method: str, refs: Sequence[ray.ObjectRef]) -> list[Any]:
        out = []
        for rank, ref in enumerate(refs):
            try:
                out.append(ray.get(ref, timeout=self.call_timeout_s))
            except GetTimeoutError as err:
                raise StepTimeout("rollout", method, rank, self.call_timeout_s) from err
        return out

    def generate(self, samples: Sequence[Any], sampling: SamplingSettings, video: Any = None) -> RolloutBatchResult:
        """Responses for every sample, in input order; skipped samples are reported, never silently lost."""
        parts = split_evenly(len(samples), len(self.actors))
        pending = {rank: self.actors[rank].generate.remote(list(samples[a:b]), sampling, video)
                   for rank, (a, b) in enumerate(parts) if b > a}
        results: dict[int, RolloutBatchResult] = {}
        while pending:
            rank, ref = next(iter(pending.items()))
            try:
                results[rank] = ray.get(ref, timeout=self.call_timeout_s)
                del pending[rank]
            except GetTimeoutError as err:
                raise StepTimeout("rollout", "generate", rank, self.call_timeout_s) from err
            except RayActorError:
                a, b = parts[rank]
                log.warning("rollout[%d] died mid-batch; restarting it and re-sending %d samples", rank, b - a)
                self._restart(rank)
                pending[rank] = self.actors[rank].generate.remote(list(samples[a:b]), sampling, video)
        merged = RolloutBatchResult.merge([results[r] for r in sorted(results)])
        for reason, count in merged.skipped_counts().items():
            self.metrics.skipped[reason] = self.metrics.skipped.get(reason, 0) + count
        return merged

    def _restart(self, rank: int) -> None:
        if self.metrics.actor_restarts >= self.max_restarts:
            raise RolloutRestartBudgetExhausted(f"rollout actors restarted {self.metrics.actor_restarts} times")
        self.metrics.actor_restarts += 1
        try:
            ray.kill(self.actors[rank], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[rank] = self._spawn(rank)
        self._wait_all("ready", [self.actors[rank].ready.remote()])
        if self._weights is not None:
            blob_ref, version = self._weights
            self._wait_all("update_weights", [self.actors[rank].update_weights.remote(blob_ref, version)])
        if self._seed is not None:
            self._wait_all("reseed", [self.actors[rank].reseed.remote(self._seed + rank)])

    def update_weights(self, blob: bytes, version: int) -> None:
        """Push new weights to every engine (one object-store copy shared by all actors)."""
        blob_ref = ray.put(blob)
        self._weights = (blob_ref, version)
        self._wait_all("update_weights", [a.update_weights.remote(blob_ref, version) for a in self.actors])

    def reseed(self, seed: int) -> None:
        """Seed every engine's sampler (rank r gets seed + r): rollouts of a step become a function of the seed."""
        self._seed = seed
        self._wait_all("reseed", [a.reseed.remote(seed + rank) for rank, a in enumerate(self.actors)])

    def sleep(self) -> None:
        """Colocated layouts: free the engines' GPU memory for the learner phase."""
        self._wait_all("sleep", [a.sleep.remote() for a in self.actors])

    def wake_up(self) -> None:
        self._wait_all("wake_up", [a.wake_up.remote() for a in self.actors])

    def probe_logprobs(self, text: str, rank: int = 0) -> list[float]:
        return self._wait_all("prompt_logprobs", [self.actors[rank].prompt_logprobs.remote(text)])[0]

    def weight_versions(self) -> list[int]:
        return self._wait_all("weight_version", [a.weight_version.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
