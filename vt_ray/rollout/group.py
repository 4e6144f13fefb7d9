"""Rollout workers as Ray actors, and the group that splits a batch across them.

The group owns fault tolerance: if an actor dies mid-batch it is recreated, given the current weight version,
and only its share of the batch is re-sent, so no sample is lost or doubled. Every remote wait has a timeout
that names the role, method and rank (a stuck vLLM engine must not look like a silent hang) and carries the
stuck actor's Python stacks (:mod:`vt_ray.common.timeouts`). ``StepTimeout`` is importable from here too.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from vt_ray.cluster.worker_group import WorkerGroup
from vt_ray.common.sharding import split_evenly
from vt_ray.common.timeouts import StepTimeout, wait_all
from vt_ray.common.weight_stream import StreamSession
from vt_ray.config.roles import RolloutRoleConfig
from vt_ray.config.schema import RecipeConfig
from vt_ray.rollout.types import SamplingSettings
from vt_ray.rollout.weight_sync import WeightSource, WeightSyncError
from vt_ray.rollout.worker import RolloutBatchResult, RolloutWorker

log = logging.getLogger(__name__)


class RolloutRestartBudgetExhausted(RuntimeError):
    pass


@dataclass
class GroupMetrics:
    actor_restarts: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class RolloutGroup(WorkerGroup):
    """``num_workers`` rollout actors behind one ``generate`` call that returns results in input order."""

    role = "rollout"

    def __init__(
        self,
        cfg: RecipeConfig,
        num_workers: int = 1,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_restarts: int = 3,
        timeout_s: float = 1800.0,
        runtime_env: dict[str, Any] | None = None,
        actor_options: Callable[[int], dict[str, Any]] | None = None,
        worker_cls: type = RolloutWorker,
        wait_ready: bool = True,
    ) -> None:
        """``actor_options(rank)`` gives each actor's Ray options (placement group bundle, CPUs, GPUs); without
        it actors ask for ``num_cpus``/``num_gpus`` anywhere in the cluster. ``worker_cls`` is the actor class
        (constructed as ``worker_cls(RolloutRoleConfig.of(cfg), rank)``): :class:`RolloutWorker`, or a stand-in.
        ``wait_ready=False`` returns once the actors are spawned: the caller sets up other roles while the
        engines start and then calls :meth:`wait_ready` (the trainer does, to overlap the start-ups)."""
        self.cfg = cfg
        self.max_restarts = max_restarts
        self.metrics = GroupMetrics()
        self._weights: tuple[ray.ObjectRef, int] | None = None  # latest (blob ref, version) every engine has
        self._broken: str | None = None  # set when a failed sync could not be rolled back everywhere
        self._seed: int | None = None
        self._source: WeightSource | None = None  # streamed sync (attach_weight_source); else blobs
        self._plan: dict[str, Any] = {}
        self._stream_backend = "gloo"
        self._source_address: tuple[str, int] = ("", 0)  # where the source's store listens
        self._senders: list[tuple[str, int, str]] = []  # ipc: every source rank's (address, port, device key)
        self._routes: dict[int, int] = {}  # ipc: engine rank -> the source rank beside it
        self._version = 0  # the version every engine has after the last complete stream
        role = RolloutRoleConfig.of(cfg)  # what a worker reads of the recipe
        super().__init__(worker_cls, num_workers, lambda rank: (role, rank), timeout_s=timeout_s,
                         remote_options={"num_cpus": num_cpus, "num_gpus": num_gpus}, actor_options=actor_options,
                         runtime_env=runtime_env, wait_ready=wait_ready)

    def generate(self, samples: Sequence[Any], sampling: SamplingSettings, video: Any = None,
                 learner_inputs: bool = False) -> RolloutBatchResult:
        """Responses for every sample, in input order; skipped samples are reported, never silently lost. One
        deadline for every rank; an actor that died is restarted and its share re-sent (with a deadline of its
        own: a new call to a new actor).

        ``learner_inputs``: each result also carries its prompt's learner inputs (``result.encoded``), the
        pixels as an object reference this process owns (a return of the call itself, so it outlives the rollout
        actor and is freed once the caller drops it) and no frames: the pixels never pass through here."""
        if self._broken:
            raise WeightSyncError(self._broken)
        parts = split_evenly(len(samples), len(self.actors))
        pixel_refs: dict[int, list[ray.ObjectRef]] = {}

        def send(rank: int) -> ray.ObjectRef:
            a, b = parts[rank]
            if not learner_inputs:
                return self.actors[rank].generate.remote(list(samples[a:b]), sampling, video)
            refs = self.actors[rank].generate.options(num_returns=1 + b - a).remote(
                list(samples[a:b]), sampling, video, True)
            pixel_refs[rank] = refs[1:]
            return refs[0]

        def resend(rank: int, err: Exception) -> ray.ObjectRef:
            if not isinstance(err, RayActorError):
                raise err
            a, b = parts[rank]
            log.warning("rollout[%d] died mid-batch; restarting it and re-sending %d samples", rank, b - a)
            self._restart(rank)
            return send(rank)

        refs = {rank: send(rank) for rank, (a, b) in enumerate(parts) if b > a}
        results = self.wait(refs, "generate", resend)
        for rank, report in results.items():
            for result, ref in zip(report.results, pixel_refs.get(rank, [])):
                if result.encoded is not None:
                    result.encoded.pixels = ref
        merged = RolloutBatchResult.merge([results[r] for r in sorted(results)])
        for reason, count in merged.skipped_counts().items():
            self.metrics.skipped[reason] = self.metrics.skipped.get(reason, 0) + count
        return merged

    def _restart(self, rank: int, catch_up: bool = True) -> None:
        """Replace a dead actor and bring it to the group's weights: a stream of its own from the attached
        source (``catch_up``), or the last pushed blob."""
        if self.metrics.actor_restarts >= self.max_restarts:
            raise RolloutRestartBudgetExhausted(f"rollout actors restarted {self.metrics.actor_restarts} times")
        self.metrics.actor_restarts += 1
        self.respawn(rank)
        self._routes.pop(rank, None)  # ipc: the new actor is paired again
        if self._source is not None:
            if catch_up and self._version > 0:
                _, failed = self._stream(self._version, [rank])
                if failed:
                    raise WeightSyncError(f"restarted rollout[{rank}] could not be brought to version "
                                          f"{self._version}: {_describe(failed[rank])}", rank=rank,
                                          tensor=getattr(failed[rank], "tensor", None), applied=True)
        elif self._weights is not None:
            blob_ref, version = self._weights
            self.call("update_weights", blob_ref, version, ranks=[rank])
        if self._seed is not None:
            self.call("reseed", self._seed + rank, ranks=[rank])

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
            return _cause(err)

        def timed_out(late: list[int]) -> StepTimeout:
            self._broken = f"rollout{late}.update_weights (version {version}) timed out: weights unknown"
            return self.timeout_error("update_weights", late)

        restarted: set[int] = set()
        refs = {rank: self.actors[rank].update_weights.remote(blob_ref, version) for rank in ranks}
        results = wait_all(refs, self.timeout_s, timed_out, outcome)
        return {rank: (value if isinstance(value, BaseException) else None) for rank, value in results.items()}

    # ---- streamed weight sync: learner rank 0 -> every engine, the driver carries only the plan ------------
    def attach_weight_source(self, source: WeightSource, plan: dict[str, Any], backend: str) -> None:
        """Stream weights from ``source`` (the learner group) from now on: :meth:`stream_weights`, and a restarted
        engine is brought to the current version by a stream of its own instead of a blob re-push."""
        self._source, self._plan, self._stream_backend = source, plan, backend
        self._source_address = source.stream_address()  # fixed for the source's life: asked once, not per sync
        if backend == "ipc":  # every engine must have a sender on its GPU or node: checked now, at start-up
            self._senders, self._routes = source.stream_endpoints(), {}
            self._ipc_routes(list(range(len(self.actors))))

    def _ipc_routes(self, ranks: list[int]) -> dict[int, int]:
        """engine rank -> the source rank whose shared buffers it maps: the first on the same node with the
        same device key (CPU: the node; GPU: the GPU). Asked once per engine (again after a restart)."""
        missing = [rank for rank in ranks if rank not in self._routes]
        for rank, (node, key) in zip(missing, self.call("ipc_endpoint", ranks=missing) if missing else [],
                                     strict=True):
            found = [i for i, (addr, _, k) in enumerate(self._senders) if addr == node and k == key]
            if not found:
                raise WeightSyncError(
                    f"rollout.weight_sync=ipc: rollout[{rank}] (node {node}, device {key}) has no learner rank on "
                    f"its {'node' if key == 'cpu' else 'GPU'} (learner ranks: "
                    f"{[(a, k) for a, _, k in self._senders]}); use stream", rank=rank)
            self._routes[rank] = found[0]
        return {rank: self._routes[rank] for rank in ranks}

    def check_weight_plan(self) -> None:
        """Every engine checks the plan against its model; a bad plan raises :class:`WeightSyncError` naming the
        rank and tensor, with every engine untouched (nothing was streamed)."""
        self._source_check()
        self.call("check_weight_plan", self._plan, on_error=_reraise_cause)

    def stream_weights(self, version: int) -> dict[str, float]:
        """Stream version ``version`` from the attached source to every engine; all or nothing.

        An engine that fails mid-stream (a bucket failing its checksum, a loader error) drains the rest and
        refuses to generate; one that dies is restarted (restart budget). Either way the learners still hold the
        policy, so the group rolls forward: one more stream to every engine. If that fails too, the group is
        marked broken (``generate`` refuses until a sync reaches every engine) and :class:`WeightSyncError`
        names each failed rank and tensor. Returns the learner's timings (``time/weight_*``)."""
        self._source_check()
        timings, failed = self._stream(version, list(range(len(self.actors))))
        if failed:
            log.warning("weight stream of version %d failed on rollout rank(s) %s; streaming again: %s", version,
                        sorted(failed), "; ".join(f"rank {r}: {_describe(e)}" for r, e in sorted(failed.items())))
            for rank, err in failed.items():
                if isinstance(err, RayActorError):
                    self._restart(rank, catch_up=False)
            timings, again = self._stream(version, list(range(len(self.actors))))
            timings["weight_stream_retries"] = 1.0
            if again:
                self._broken = (f"weight stream of version {version} failed twice on rollout rank(s) "
                                f"{sorted(again)}: the group refuses to generate until a sync reaches every engine")
                first = min(again)
                raise WeightSyncError(
                    f"weight stream to version {version} failed on rollout rank(s) {sorted(again)}: "
                    + "; ".join(f"rank {r}: {_describe(e)}" for r, e in sorted(again.items())),
                    tensor=getattr(again[first], "tensor", None), rank=first, applied=True,
                    failures={rank: _describe(err) for rank, err in again.items()})
        self._version = version
        self._broken = None
        return timings

    def _source_check(self) -> None:
        if self._source is None:
            raise RuntimeError("no weight source attached: call attach_weight_source (or use update_weights)")

    def _stream(self, version: int, ranks: list[int]) -> tuple[dict[str, float], dict[int, BaseException]]:
        """One stream session to ``ranks``: (sender timings, rank -> error of every engine that failed). A
        failure of the sender itself (the learner group) propagates."""
        assert self._source is not None
        workers = self.cfg.rollout.tensor_parallel_size if self.cfg.rollout.backend == "vllm" else 1
        prefix = f"vt-wsync/{version}/{uuid.uuid4().hex[:12]}"
        timeout = self.cfg.rollout.weight_sync_timeout_s
        if self._stream_backend == "ipc":  # a session per source rank, with the engines beside it
            routes = self._ipc_routes(ranks)
            sessions: dict[int, StreamSession] = {}
            joins: dict[int, tuple[StreamSession, int]] = {}
            for sender in sorted(set(routes.values())):
                mine = [rank for rank in ranks if routes[rank] == sender]
                addr, port, _ = self._senders[sender]
                sessions[sender] = StreamSession(addr, port, f"{prefix}/{sender}", 1 + workers * len(mine),
                                                 timeout, "ipc")
                joins.update({rank: (sessions[sender], 1 + i * workers) for i, rank in enumerate(mine)})
            sending = self._source.start_stream(self._plan, sessions)  # first: the senders host the stores
        else:
            addr, port = self._source_address
            session = StreamSession(addr, port, prefix, 1 + workers * len(ranks), timeout, self._stream_backend)
            joins = {rank: (session, 1 + i * workers) for i, rank in enumerate(ranks)}
            sending = self._source.start_stream(self._plan, session)  # first: it hosts the store the engines dial
        refs = {rank: self.actors[rank].receive_weights.remote(dataclasses.asdict(joins[rank][0]), joins[rank][1],
                                                               self._plan, version) for rank in ranks}

        def failed(rank: int, err: Exception) -> Any:
            return _cause(err)

        def timed_out(late: list[int]) -> StepTimeout:
            self._broken = f"rollout{late}.receive_weights (version {version}) timed out: weights unknown"
            return self.timeout_error("receive_weights", late)

        outcome = wait_all(refs, self.timeout_s, timed_out, failed)
        errors = {rank: value for rank, value in outcome.items() if isinstance(value, BaseException)}
        try:
            timings = self._source.finish_stream(sending)
        except Exception as err:
            if not errors:  # the sender failed with every engine fine: a learner problem, not the engines'
                raise
            timings = {"weight_sender_error": 1.0}
            log.warning("the weight sender failed after engine failures: %s", err)
        return timings, errors

    def reseed(self, seed: int) -> None:
        """Seed every engine's sampler (rank r gets seed + r): rollouts of a step become a function of the seed."""
        self._seed = seed
        self.wait({rank: a.reseed.remote(seed + rank) for rank, a in enumerate(self.actors)}, "reseed")

    def sleep(self) -> None:
        """Colocated layouts: free the engines' GPU memory for the learner phase."""
        self.call("sleep")

    def wake_up(self) -> None:
        self.call("wake_up")

    def probe_logprobs(self, text: str, rank: int = 0) -> list[float]:
        return self.call("prompt_logprobs", text, ranks=[rank])[0]

    def probe_logprobs_all(self, text: str) -> list[list[float]]:
        """Every engine's log-probs of ``text`` (the weight probe), by rank."""
        return self.call("prompt_logprobs", text)

    def weight_versions(self) -> list[int]:
        return self.call("weight_version")

    def shutdown(self) -> None:
        self.kill_all()


def _cause(err: Exception) -> BaseException:
    """The exception the actor raised, unwrapped from Ray's ``RayTaskError`` (the error itself otherwise)."""
    return err.cause if isinstance(err, RayTaskError) and err.cause is not None else err


def _reraise_cause(rank: int, err: Exception) -> Any:
    """A rank's remote error as the engine raised it (a WeightSyncError keeps its tensor), with the rank."""
    cause = _cause(err)
    if isinstance(cause, WeightSyncError):
        raise WeightSyncError(f"rollout[{rank}]: {cause.message}", tensor=cause.tensor, rank=rank,
                              applied=cause.applied) from err
    raise cause


def _describe(err: BaseException) -> str:
    return err.message if isinstance(err, WeightSyncError) else f"{type(err).__name__}: {err}"
