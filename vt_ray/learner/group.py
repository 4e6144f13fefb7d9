"""N learner ranks as Ray actors forming one torch.distributed group, behind whole-batch calls.

The group shards a mini-batch over ranks (contiguous, sizes differing by at most one) and tells every rank
how many micro-batches to run, so all ranks run the same number of FSDP forward/backward passes. A GRPO step's
calls go through :meth:`LearnerGroup.open_step` instead: each rank's shard is put once per step and the calls
name rows of it (:mod:`vt_ray.learner.step_batch`). Every remote wait has a deadline; a rank that fails or
times out raises an error naming the role, method and rank (a rank that dies mid-collective otherwise looks
like a silent hang of its peers). A timeout raises
:class:`LearnerTimeout`, a :class:`~vt_ray.common.timeouts.StepTimeout` carrying the Python stacks of the
ranks still pending (faulthandler), like the rollout and reward groups.

The deadline is ``timeout_s``: the trainer starts the group with its long first-step timeout and sets
``group.timeout_s`` to the tighter steady-state one after the first step (torchtitan-style).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import ray
import torch

from vt_ray.cluster.worker_group import OnError, WorkerGroup
from vt_ray.common.timeouts import StepTimeout
from vt_ray.config.backends import LEARNER_BACKENDS
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.config.schema import RecipeConfig
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.step_batch import StepCall, minibatch_rows

ROLE = "learner"


class LearnerCallError(RuntimeError):
    """A learner rank failed (a remote error), or, as :class:`LearnerTimeout`, did not answer in time."""

    def __init__(self, method: str, rank: int, detail: str) -> None:
        self.role, self.method, self.rank = ROLE, method, rank
        super().__init__(f"{ROLE}[{rank}].{method}: {detail}")


class LearnerTimeout(StepTimeout, LearnerCallError):
    """``StepTimeout("learner", method, rank)``; also a LearnerCallError, for callers that catch that."""


class LearnerGroup(WorkerGroup):
    role = ROLE
    timeout_cls = LearnerTimeout

    def __init__(
        self,
        cfg: RecipeConfig,
        runtime_env: dict[str, Any] | None = None,
        actor_options: Callable[[int], dict[str, Any]] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """``resources.learner`` sets the ranks and what each asks for; ``actor_options(rank)`` (the trainer's
        placement-group bundles) overrides where each rank goes. ``timeout_s`` (default ``learner.timeout_s``)
        bounds every call until changed through the ``timeout_s`` attribute. The ranks' ``ready()`` is not
        waited for (:meth:`setup` is the rendezvous); it tells a timed-out call where each rank runs."""
        self.cfg = cfg
        res = cfg.resources.learner
        world = res.num_workers
        role = LearnerRoleConfig.of(cfg)  # what a rank reads of the recipe
        super().__init__(
            LEARNER_BACKENDS.get(cfg.learner.backend), world, lambda rank: (role, rank, world),
            timeout_s=cfg.learner.timeout_s if timeout_s is None else timeout_s,
            remote_options={"num_cpus": res.cpus_per_worker, "num_gpus": res.gpus_per_worker},
            actor_options=actor_options, runtime_env=runtime_env, wait_ready=False,
        )
        self._step_ids = itertools.count()

    def setup(self, *, total_steps: int, model_path: str | None = None, lr: float | None = None,
              reference: str | None = None) -> int:
        """Rendezvous at rank 0's node, load and shard the model(s) on every rank (see LearnerWorker.setup)."""
        addr, port = self.call("address", ranks=[0])[0]
        return int(self.call("setup", addr, port, total_steps=total_steps, model_path=model_path, lr=lr,
                             reference=reference)[0])

    def wait(self, refs: Mapping[int, ray.ObjectRef], method: str, on_error: OnError | None = None,
             timeout_s: float | None = None) -> dict[int, Any]:
        """One deadline for all ranks, waited on at once, so the first failure surfaces immediately instead of
        after the peers blocked in a collective with it time out; a rank's remote error is a LearnerCallError."""

        def failed(rank: int, err: Exception) -> Any:
            raise LearnerCallError(method, rank, f"failed: {err}") from err

        return super().wait(refs, method, on_error or failed, timeout_s)

    def _per_rank(self, method: str, refs: Sequence[ray.ObjectRef]) -> list[Any]:
        results = self.wait(dict(enumerate(refs)), method)
        return [results[rank] for rank in range(len(refs))]

    def _num_micro(self, rows: Iterable[int]) -> int:
        """Micro-batches every rank runs when the ranks hold ``rows`` rows each (a rank with none runs a filler)."""
        return math.ceil(max(max(rows), 1) / self.cfg.learner.micro_batch_size)

    def _filled(self, batch: TrainBatch) -> tuple[list[TrainBatch], list[bool]]:
        """One shard per rank (a zero-loss filler for a rank left without samples) and which shards are real."""
        if len(batch) == 0:
            raise ValueError("empty batch")
        shards = batch.split(self.world_size)
        return [s if s is not None else batch.without_loss() for s in shards], [s is not None for s in shards]

    def _shards(self, batch: TrainBatch) -> tuple[list[ray.ObjectRef], list[bool], int]:
        """Each rank's shard in the object store, which shards are real, and the micro-batch count every rank
        runs."""
        filled, real = self._filled(batch)
        return [ray.put(s) for s in filled], real, self._num_micro(len(s) for s in filled)

    def _metrics(self, per_rank: list[dict[str, float]]) -> dict[str, float]:
        """The mini-batch's metrics (every rank reduced the same ones)."""
        keys = [sorted(m) for m in per_rank]
        if any(k != keys[0] for k in keys):  # the ranks reduced different tensors: their figures are not comparable
            raise RuntimeError(f"learner ranks returned different metric keys: {dict(enumerate(keys))}")
        return per_rank[0]

    def train_step(self, batch: TrainBatch, loss_name: str = "sft") -> dict[str, float]:
        """One optimizer step on the whole mini-batch, its shards put for this call (SFT's batches are each
        trained once); metrics of the mini-batch (same on every rank)."""
        refs, _, num_micro = self._shards(batch)
        return self._metrics(self._per_rank("train_step", [a.train_step.remote(r, num_micro, loss_name)
                                                           for a, r in zip(self.actors, refs)]))

    def open_step(self, batch: TrainBatch) -> LearnerStep:
        """``batch`` on the ranks for a training step's calls, each rank's shard put once (:class:`LearnerStep`:
        use it as a context manager, so the ranks drop it at the end)."""
        return LearnerStep(self, batch, f"step-{next(self._step_ids)}")

    def compute_logprobs(self, batch: TrainBatch, which: str = "policy") -> torch.Tensor:
        """[B, L] per-token log-probs of the batch's response tokens under the policy or the reference."""
        return self.compute_logprobs_passes(batch, [which])[which]

    def compute_logprobs_passes(self, batch: TrainBatch, whiches: Sequence[str]) -> dict[str, torch.Tensor]:
        """:meth:`compute_logprobs` for several models (the old policy and the reference) on one batch: its shards
        go to the object store once, and every rank gets all its passes at once (Ray runs an actor's calls in
        the order they were sent, so the ranks' collectives stay in step)."""
        return self.submit_logprobs_passes(batch, whiches)()

    def submit_logprobs_passes(self, batch: TrainBatch, whiches: Sequence[str]
                               ) -> Callable[[], dict[str, torch.Tensor]]:
        """:meth:`compute_logprobs_passes`, sent now and waited for by the returned call (the driver scores the
        rewards meanwhile)."""
        refs, real, num_micro = self._shards(batch)
        calls = {w: [a.compute_logprobs.remote(ref, num_micro, w) for a, ref in zip(self.actors, refs)]
                 for w in whiches}  # all sent now; each pass is then waited for with its own deadline
        width = batch.input_ids.shape[1]

        def wait() -> dict[str, torch.Tensor]:
            out = {}
            for w, pass_refs in calls.items():
                parts = self._per_rank("compute_logprobs", pass_refs)
                out[w] = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]))
                                    for p, r in zip(parts, real) if r])
            return out

        return wait

    def export_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        return self.call("export_state_dict", dtype)[0]

    def export_safetensors(self, dtype: str | None = None) -> bytes:
        """The weights blob the rollout group's ``update_weights`` takes."""
        return self.call("export_safetensors", dtype)[0]

    # ---- the source of streamed weight syncs (vt_ray.rollout.weight_sync.WeightSource) ----------------------
    def weight_plan(self, dtype: str | None = None, bucket_mb: float = 128) -> dict[str, Any]:
        """The policy's bucket plan (the same on every rank: shapes only)."""
        return self.call("weight_plan", dtype, bucket_mb, ranks=[0])[0]

    def stream_address(self) -> tuple[str, int]:
        addr, port = self.call("stream_address", ranks=[0])[0]
        return str(addr), int(port)

    def stream_endpoints(self) -> list[tuple[str, int, str]]:
        """Every rank's (store address, port, device key): where ``ipc`` syncs find a sender beside each engine."""
        return [(str(a), int(p), str(k)) for a, p, k in self.call("stream_endpoint")]

    def start_stream(self, plan: dict[str, Any], session: Any) -> list[ray.ObjectRef]:
        """Every rank gathers, the ranks with a session send: ``session`` is rank 0's, or a dict rank -> session
        (``ipc``: one per rank that has engines beside it). The calls are started, not waited for (the engines
        receive meanwhile)."""
        sessions = session if isinstance(session, dict) else {0: session}
        many = any(rank != 0 for rank in sessions)
        return [a.send_weights.remote(plan, sessions.get(rank), many) for rank, a in enumerate(self.actors)]

    def finish_stream(self, refs: list[ray.ObjectRef]) -> dict[str, float]:
        """Rank 0's timings of the send started by :meth:`start_stream`; a rank's failure raises."""
        return self._per_rank("send_weights", refs)[0]

    def probe_logprobs(self, text: str) -> list[float]:
        """The policy's log-probs of ``text``: the weight probe's reference when weights are streamed."""
        return self.call("probe_logprobs", text)[0]

    def save_hf(self, out_dir: str, dtype: str | None = None) -> str:
        return self.call("save_hf", out_dir, dtype)[0]

    def save_checkpoint(self, root: str, extra_state: dict[str, Any] | None = None) -> str:
        return self.call("save_checkpoint", root, extra_state)[0]

    def load_checkpoint(self, path: str) -> dict[str, Any] | None:
        """Restore every rank from ``path``: a step directory, or a root whose newest intact checkpoint is
        chosen here, once, by checking every file's SHA-256 against its manifest (newer corrupt ones are moved
        aside and reported: :func:`vt_ray.learner.checkpoint.select`). None when there is no checkpoint."""
        from vt_ray.learner import checkpoint as ckpt

        self.call("drop_steps")  # a step interrupted before the resume leaves nothing behind
        target = Path(path)
        if not ckpt.is_step_dir(target):
            selection = ckpt.select(target)
            for err in selection.refused:
                print(f"[checkpoint] refused {err}; moved aside as {ckpt.CORRUPT_PREFIX}{Path(err.path).name}",
                      flush=True)
            if selection.found is None:
                return None
            target = selection.found
        return self.call("load_checkpoint", str(target))[0]

    def shutdown(self) -> None:
        try:
            self.call("shutdown", timeout_s=min(self.timeout_s, 60.0))
        finally:
            self.kill_all()


class LearnerStep:
    """One training step's batch on the learner ranks (:meth:`LearnerGroup.open_step`).

    Opening puts each rank's shard (token ids, masks, per-token extras, pixel references) into the object store,
    once, and each rank caches it under the step's key. The step's calls then send rows and small per-row
    values only (:class:`~vt_ray.learner.step_batch.StepCall`); the log-prob passes leave their results on the
    ranks for the train calls. Mini-batch ``k`` of ``n`` is the ``k``-th slice of every rank's shard
    (:func:`~vt_ray.learner.step_batch.minibatch_rows`). Closing (the ``with`` block's end, an error too) drops the
    step on every rank."""

    def __init__(self, group: LearnerGroup, batch: TrainBatch, key: str) -> None:
        self.group, self.key = group, key
        filled, real = group._filled(batch)
        self.sizes = [len(s) if r else 0 for s, r in zip(filled, real)]  # the step's rows on each rank
        self.offsets = [sum(self.sizes[:rank]) for rank in range(len(filled))]  # where they start in ``batch``
        self.width = int(batch.input_ids.shape[1])
        self._logprob_micro = group._num_micro(len(s) for s in filled)
        self._caching = {rank: actor.cache_step.remote(key, ray.put(shard))
                         for rank, (actor, shard) in enumerate(zip(group.actors, filled))}

    def _cached(self) -> None:
        """Wait (once) until every rank holds the step: a failure to cache surfaces as itself."""
        if self._caching:
            caching, self._caching = self._caching, {}
            self.group.wait(caching, "cache_step")

    def submit_logprobs(self, whiches: Sequence[str], keep: bool = True) -> Callable[[], dict[str, torch.Tensor]]:
        """[B, L] log-probs of the step's batch under each of ``whiches`` (policy, reference), sent now and waited
        for by the returned call (the driver scores the rewards meanwhile). ``keep``: the ranks keep them for the
        train calls (the old-policy and reference log-probs of the loss)."""
        calls = {w: [a.step_logprobs.remote(self.key, self._logprob_micro, w, keep) for a in self.group.actors]
                 for w in whiches}  # all sent now; each pass is then waited for with its own deadline

        def wait() -> dict[str, torch.Tensor]:
            self._cached()
            out = {}
            for w, refs in calls.items():
                parts = self.group._per_rank("step_logprobs", refs)
                out[w] = torch.cat([torch.nn.functional.pad(p, (0, self.width - p.shape[1]))
                                    for p, size in zip(parts, self.sizes) if size])
            return out

        return wait

    def logprobs(self, whiches: Sequence[str], keep: bool = True) -> dict[str, torch.Tensor]:
        return self.submit_logprobs(whiches, keep)()

    def train(self, part: int, parts: int, loss_name: str = "grpo", advantages: torch.Tensor | None = None,
              keep: torch.Tensor | None = None) -> dict[str, float]:
        """One optimizer step on mini-batch ``part`` of ``parts``; ``advantages`` ([B] float) and ``keep`` ([B]
        bool, rows whose loss counts) are the whole batch's, each rank is sent its rows' values. Metrics of the
        mini-batch."""

        def rows(values: torch.Tensor | None, rank: int, start: int, end: int) -> torch.Tensor | None:
            at = self.offsets[rank]  # cloned: a pickled view would carry the whole batch's storage
            return None if values is None else values[at + start : at + end].clone()

        bounds = minibatch_rows(self.sizes, parts)[part]
        calls = [StepCall(self.key, start, end, rows(advantages, rank, start, end), rows(keep, rank, start, end))
                 for rank, (start, end) in enumerate(bounds)]
        num_micro = self.group._num_micro(end - start for start, end in bounds)
        self._cached()
        return self.group._metrics(self.group._per_rank(
            "step_train", [a.step_train.remote(c, num_micro, loss_name) for a, c in zip(self.group.actors, calls)]))

    def close(self, failed: bool = False) -> None:
        """Every rank drops the step. After a failure the drops are sent and not waited for: a rank stuck in the
        failed collective runs them when (if) it returns, and a replaced rank held nothing."""
        refs = {rank: a.drop_steps.remote(self.key) for rank, a in enumerate(self.group.actors)}
        if not failed:
            self.group.wait(refs, "drop_steps")

    def __enter__(self) -> LearnerStep:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(failed=exc_type is not None)
