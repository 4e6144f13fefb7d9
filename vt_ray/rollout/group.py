"""Rollout workers as Ray actors, and the group that splits a batch across them.

The group owns fault tolerance: if an actor dies mid-batch it is recreated, given the current weight version,
and only its share of the batch is re-sent, so no sample is lost or doubled. Every remote wait has a timeout
that names the role, method and rank (a stuck vLLM engine must not look like a silent hang) and carries the
stuck actor's Python stacks (:mod:`vt_ray.common.timeouts`). ``StepTimeout`` is importable from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from vt_ray.common.sharding import split_evenly
from vt_ray.common.timeouts import ActorInfo, StepTimeout, timeout_error, wait_all
from vt_ray.config.schema import RecipeConfig
from vt_ray.rollout.types import SamplingSettings
from vt_ray.rollout.weight_sync import WeightSyncError
from vt_ray.rollout.worker import RolloutBatchResult, RolloutWorker

log = logging.getLogger(__name__)


class RolloutRestartBudgetExhausted(RuntimeError):
    pass


@dataclass
class GroupMetrics:
    actor_restarts: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


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
        worker_cls: type = RolloutWorker,
        wait_ready: bool = True,
    ) -> None:
        """``actor_options(rank)`` gives each actor's Ray options (placement group bundle, CPUs, GPUs); without
        it actors ask for ``num_cpus``/``num_gpus`` anywhere in the cluster. ``worker_cls`` is the actor class
        (constructed as ``worker_cls(cfg, rank)``): :class:`RolloutWorker`, or a stand-in in tests.
        ``wait_ready=False`` returns once the actors are spawned: the caller sets up other roles while the
        engines start and then calls :meth:`wait_ready` (the trainer does, to overlap the start-ups)."""
        self.cfg = cfg
        self.max_restarts = max_restarts
        self.call_timeout_s = call_timeout_s
        self._actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(worker_cls)
        self._runtime_env = runtime_env
        self._actor_options = actor_options
        self.metrics = GroupMetrics()
        self._weights: tuple[ray.ObjectRef, int] | None = None  # latest (blob ref, version) every engine has
        self._broken: str | None = None  # set when a failed sync could not be rolled back everywhere
        self._seed: int | None = None
        self._infos: dict[int, ActorInfo] = {}  # rank -> pid, node, stack dump file (from ready())
        self.actors = [self._spawn(rank) for rank in range(num_workers)]
        self._ready_refs: list[ray.ObjectRef] | None = [a.ready.remote() for a in self.actors]
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every engine has started (one deadline for all; a stuck start raises ``StepTimeout``
        naming the rank and carrying its stacks). Idempotent."""
        if self._ready_refs is not None:
            refs, self._ready_refs = self._ready_refs, None
            self._infos = dict(enumerate(self._wait_all("ready", refs)))

    def _spawn(self, rank: int) -> Any:
        opts: dict[str, Any] = dict(self._actor_options(rank)) if self._actor_options else {}
        if self._runtime_env:
            opts["runtime_env"] = self._runtime_env
        return self._actor_cls.options(**opts).remote(self.cfg, rank)

    def _wait_all(self, method: str, refs: Sequence[ray.ObjectRef], ranks: Sequence[int] | None = None) -> list[Any]:
        """Results of one call per rank (``ranks``: which actors the refs belong to, default 0..n-1), waited on
        with one deadline for all of them."""
        ranks = list(ranks if ranks is not None else range(len(refs)))
        results = wait_all(dict(zip(ranks, refs, strict=True)), self.call_timeout_s,
                           lambda late: self._timeout(method, late))
        return [results[r] for r in ranks]

    def _timeout(self, method: str, ranks: int | Sequence[int]) -> StepTimeout:
        """StepTimeout naming every stuck actor, with their Python stacks attached."""
        return timeout_error("rollout", method, ranks, self.call_timeout_s, self.actors, self._infos)

    def generate(self, samples: Sequence[Any], sampling: SamplingSettings, video: Any = None) -> RolloutBatchResult:
        """Responses for every sample, in input order; skipped samples are reported, never silently lost. One
        deadline for every rank; an actor that died is restarted and its share re-sent (with a deadline of its
        own: a new call to a new actor)."""
        if self._broken:
            raise WeightSyncError(self._broken)
        parts = split_evenly(len(samples), len(self.actors))

        def resend(rank: int, err: Exception) -> ray.ObjectRef:
            if not isinstance(err, RayActorError):
                raise err
            a, b = parts[rank]
            log.warning("rollout[%d] died mid-batch; restarting it and re-sending %d samples", rank, b - a)
            self._restart(rank)
            return self.actors[rank].generate.remote(list(samples[a:b]), sampling, video)

        refs = {rank: self.actors[rank].generate.remote(list(samples[a:b]), sampling, video)
                for rank, (a, b) in enumerate(parts) if b > a}
        results = wait_all(refs, self.call_timeout_s, lambda late: self._timeout("generate", late), resend)
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
        self._infos.pop(rank, None)  # the old actor's pid is gone
        self._infos[rank] = self._wait_all("ready", [self.actors[rank].ready.remote()], [rank])[0]
        if self._weights is not None:
            blob_ref, version = self._weights
            self._wait_all("update_weights", [self.actors[rank].update_weights.remote(blob_ref, version)], [rank])
        if self._seed is not None:
            self._wait_all("reseed", [self.actors[rank].reseed.remote(self._seed + rank)], [rank])

    def update_weights(self, blob: bytes, version: int) -> None:
        """Push new weights to every engine, all or nothing (one object-store copy shared by all actors).

        Each engine validates the blob against its model before writing any tensor, so a bad blob (a missing or
        unknown tensor, a wrong shape or dtype kind) is rejected by every engine with its weights untouched.
        When engines end up on different sides (some took the new weights; another failed inside its loader,
        which can leave it half-written), the group does not keep the mix: it pushes the previous version back
        to every engine that changed (before any push: the checkpoint the engines started from, version 0), so
        all serve the previous version again, and then raises :class:`WeightSyncError` naming each failed rank
        and tensor. Rolling back rather than only marking the group failed keeps the engines consistent for a
        caller that handles the error (the driver does not: it re-raises and the run stops, resumable from the
        last complete checkpoint). Should a rollback fail too, the group is marked broken and ``generate``
        refuses until a push succeeds on every engine. The previous blob stays in the object store until the
        next successful push (one extra blob of memory): that is what makes the rollback a local re-push.

        An actor that dies during the push is restarted (counted against the restart budget; it comes back on
        the previous weights) and sent the new blob again. The new version is recorded (for later restarts and
        rollbacks) only once every engine has it.
        """
        blob_ref = ray.put(blob)
        outcome = self._push(blob_ref, version, range(len(self.actors)))
        failed = {rank: err for rank, err in outcome.items() if err is not None}
        if not failed:
            self._weights = (blob_ref, version)
            self._broken = None
            return
        # A rank whose engine rejected the blob up front (applied=False) still has its previous weights.
        changed = sorted(rank for rank, err in outcome.items() if err is None or getattr(err, "applied", True))
        target, target_version = self._weights if self._weights is not None else (None, 0)
        back = self._push(target, target_version, changed) if changed else {}
        stuck = {rank: err for rank, err in back.items() if err is not None}
        detail = "; ".join(f"rank {rank}: {_describe(err)}" for rank, err in sorted(failed.items()))
        if stuck:
            state = (f"rolling back rank(s) {sorted(stuck)} to version {target_version} failed too ("
                     + "; ".join(f"rank {r}: {_describe(e)}" for r, e in sorted(stuck.items()))
                     + "): the group refuses to generate until a push reaches every engine")
            self._broken = f"weight sync to version {version} failed and could not be rolled back: {state}"
        else:
            state = f"every engine serves version {target_version}" + (
                f" (rank(s) {changed} rolled back)" if changed else " (none had changed)")
        first = min(failed)
        raise WeightSyncError(
            f"weight sync to version {version} failed on rollout rank(s) {sorted(failed)}: {detail}. {state}",
            tensor=getattr(failed[first], "tensor", None), rank=first, applied=bool(stuck),
            failures={rank: _describe(err) for rank, err in failed.items()},
        )

    def _push(
        self, blob_ref: ray.ObjectRef | None, version: int, ranks: Sequence[int]
    ) -> dict[int, BaseException | None]:
        """``update_weights`` on ``ranks`` in parallel, one deadline for all: rank -> None on success, else the
        engine's exception. ``blob_ref=None`` makes the engines reload the checkpoint they started from."""

        def outcome(rank: int, err: Exception) -> Any:
            if isinstance(err, RayActorError) and rank not in restarted:
                log.warning("rollout[%d] died during the weight push; restarting it and pushing again", rank)
                restarted.add(rank)
                try:
                    self._restart(rank)  # back on the previous weights
                except BaseException as failure:  # e.g. restart budget exhausted: others may have the new weights
                    self._broken = f"weight push of version {version} aborted at rollout[{rank}]: {failure!r}"
                    raise
                return self.actors[rank].update_weights.remote(blob_ref, version)
            return err.cause if isinstance(err, RayTaskError) and err.cause is not None else err

        def timed_out(late: list[int]) -> StepTimeout:
            self._broken = f"rollout{late}.update_weights (version {version}) timed out: weights unknown"
            return self._timeout("update_weights", late)

        restarted: set[int] = set()
        refs = {rank: self.actors[rank].update_weights.remote(blob_ref, version) for rank in ranks}
        results = wait_all(refs, self.call_timeout_s, timed_out, outcome)
        return {rank: (value if isinstance(value, BaseException) else None) for rank, value in results.items()}

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
        return self._wait_all("prompt_logprobs", [self.actors[rank].prompt_logprobs.remote(text)], [rank])[0]

    def probe_logprobs_all(self, text: str) -> list[list[float]]:
        """Every engine's log-probs of ``text`` (the weight probe), by rank."""
        return self._wait_all("prompt_logprobs", [a.prompt_logprobs.remote(text) for a in self.actors])

    def weight_versions(self) -> list[int]:
        return self._wait_all("weight_version", [a.weight_version.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def _describe(err: BaseException) -> str:
    return err.message if isinstance(err, WeightSyncError) else f"{type(err).__name__}: {err}"
