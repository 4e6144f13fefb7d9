"""N learner ranks as Ray actors forming one torch.distributed group, behind whole-batch calls.

The group shards a mini-batch over ranks (contiguous, sizes differing by at most one) and tells every rank
how many micro-batches to run, so all ranks run the same number of FSDP forward/backward passes. Every remote
wait has a deadline; a rank that fails or times out raises an error naming the role, method and rank (a rank
that dies mid-collective otherwise looks like a silent hang of its peers). A timeout raises
:class:`LearnerTimeout`, a :class:`~vt_ray.common.timeouts.StepTimeout` carrying the Python stacks of the
ranks still pending (faulthandler), like the rollout and reward groups.

The deadline is ``timeout_s``: the trainer starts the group with its long first-step timeout and sets
``group.timeout_s`` to the tighter steady-state one after the first step (torchtitan-style).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from vt_ray.common.timeouts import ActorInfo, StepTimeout, dump_stacks, resolved, wait_all
from vt_ray.config.schema import RecipeConfig
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.worker import LearnerWorker

ROLE = "learner"


class LearnerCallError(RuntimeError):
    """A learner rank failed (a remote error), or, as :class:`LearnerTimeout`, did not answer in time."""

    def __init__(self, method: str, rank: int, detail: str) -> None:
        self.role, self.method, self.rank = ROLE, method, rank
        super().__init__(f"{ROLE}[{rank}].{method}: {detail}")


class LearnerTimeout(StepTimeout, LearnerCallError):
    """``StepTimeout("learner", method, rank)``; also a LearnerCallError, for callers that catch that."""


class LearnerGroup:
    def __init__(
        self,
        cfg: RecipeConfig,
        runtime_env: dict[str, Any] | None = None,
        actor_options: Callable[[int], dict[str, Any]] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """``resources.learner`` sets the ranks and what each asks for; ``actor_options(rank)`` (the trainer's
        placement-group bundles) overrides where each rank goes. ``timeout_s`` (default ``learner.timeout_s``)
        bounds every call until changed through the ``timeout_s`` attribute."""
        self.cfg = cfg
        res = cfg.resources.learner
        self.world_size = res.num_workers
        self.timeout_s = cfg.learner.timeout_s if timeout_s is None else timeout_s
        actor_cls = ray.remote(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker, max_restarts=0)(
            LearnerWorker
        )
        self.actors = []
        for rank in range(self.world_size):
            opts: dict[str, Any] = dict(actor_options(rank)) if actor_options else {}
            if runtime_env:
                opts["runtime_env"] = runtime_env
            self.actors.append(actor_cls.options(**opts).remote(cfg, rank, self.world_size))
        # Not waited for here: each rank's pid, node and stack dump file, read when a call times out.
        self._info_refs = [a.ready.remote() for a in self.actors]
        self._infos: dict[int, ActorInfo] = {}

    def setup(self, *, total_steps: int, model_path: str | None = None, lr: float | None = None,
              reference: str | None = None) -> int:
        """Rendezvous at rank 0's node, load and shard the model(s) on every rank (see LearnerWorker.setup)."""
        addr, port = self._call("address", [self.actors[0].address.remote()])[0]
        refs = [
            a.setup.remote(addr, port, total_steps=total_steps, model_path=model_path, lr=lr, reference=reference)
            for a in self.actors
        ]
        return int(self._call("setup", refs)[0])

    # ---- remote calls ------------------------------------------------------------------------------------
    def _call(self, method: str, refs: Sequence[ray.ObjectRef], timeout_s: float | None = None) -> list[Any]:
        """Results in rank order. One deadline for all ranks, waited on at once, so the first failure surfaces
        immediately instead of after the peers blocked in a collective with it time out."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s

        def failed(rank: int, err: Exception) -> Any:
            raise LearnerCallError(method, rank, f"failed: {err}") from err

        results = wait_all(dict(enumerate(refs)), timeout_s, lambda late: self._timeout(method, late, timeout_s),
                           failed)
        return [results[r] for r in range(len(refs))]

    def _timeout(self, method: str, ranks: list[int], timeout_s: float) -> LearnerTimeout:
        """LearnerTimeout naming every rank that missed the deadline (the stuck one, and its peers blocked in a
        collective with it), with their stacks."""
        for rank in ranks:
            if rank not in self._infos and (info := resolved(self._info_refs[rank])) is not None:
                self._infos[rank] = info
        stacks = dump_stacks(ROLE, [(r, self.actors[r], self._infos.get(r)) for r in ranks])
        return LearnerTimeout(ROLE, method, ranks[0], timeout_s, f"waiting on ranks {ranks}", stacks, ranks)

    def _shards(self, batch: TrainBatch) -> tuple[list[ray.ObjectRef], list[bool], int]:
        """One shard per rank (a zero-loss filler for a rank left without samples), which shards are real,
        and the micro-batch count every rank runs."""
        if len(batch) == 0:
            raise ValueError("empty batch")
        shards = batch.split(self.world_size)
        real = [s is not None for s in shards]
        filled = [s if s is not None else batch.without_loss() for s in shards]
        num_micro = math.ceil(max(len(s) for s in filled) / self.cfg.learner.micro_batch_size)
        return [ray.put(s) for s in filled], real, num_micro

    def train_step(self, batch: TrainBatch, loss_name: str = "sft") -> dict[str, float]:
        """One optimizer step on the whole mini-batch; metrics of the mini-batch (same on every rank)."""
        refs, _, num_micro = self._shards(batch)
        per_rank = self._call("train_step", [a.train_step.remote(r, num_micro, loss_name) for a, r in zip(self.actors, refs)])
        keys = [sorted(m) for m in per_rank]
        if any(k != keys[0] for k in keys):  # the ranks reduced different tensors: their figures are not comparable
            raise RuntimeError(f"learner ranks returned different metric keys: {dict(enumerate(keys))}")
        return per_rank[0]

    def compute_logprobs(self, batch: TrainBatch, which: str = "policy") -> torch.Tensor:
        """[B, L] per-token log-probs of the batch's response tokens under the policy or the reference."""
        refs, real, num_micro = self._shards(batch)
        parts = self._call("compute_logprobs", [a.compute_logprobs.remote(r, num_micro, which) for a, r in zip(self.actors, refs)])
        width = batch.input_ids.shape[1]
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p, r in zip(parts, real) if r])

    def export_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        return self._call("export_state_dict", [a.export_state_dict.remote(dtype) for a in self.actors])[0]

    def export_safetensors(self, dtype: str | None = None) -> bytes:
        """The weights blob the rollout group's ``update_weights`` takes."""
        return self._call("export_safetensors", [a.export_safetensors.remote(dtype) for a in self.actors])[0]

    def save_hf(self, out_dir: str, dtype: str | None = None) -> str:
        return self._call("save_hf", [a.save_hf.remote(out_dir, dtype) for a in self.actors])[0]

    def save_checkpoint(self, root: str, extra_state: dict[str, Any] | None = None) -> str:
        return self._call("save_checkpoint", [a.save_checkpoint.remote(root, extra_state) for a in self.actors])[0]

    def load_checkpoint(self, path: str) -> dict[str, Any] | None:
        """Restore every rank from ``path``: a step directory, or a root whose newest intact checkpoint is
        chosen here, once, by checking every file's SHA-256 against its manifest (newer corrupt ones are moved
        aside and reported: :func:`vt_ray.learner.checkpoint.select`). None when there is no checkpoint."""
        from vt_ray.learner import checkpoint as ckpt

        target = Path(path)
        if not ckpt.is_step_dir(target):
            selection = ckpt.select(target)
            for err in selection.refused:
                print(f"[checkpoint] refused {err}; moved aside as {ckpt.CORRUPT_PREFIX}{Path(err.path).name}", flush=True)
            if selection.found is None:
                return None
            target = selection.found
        return self._call("load_checkpoint", [a.load_checkpoint.remote(str(target)) for a in self.actors])[0]

    def shutdown(self) -> None:
        try:
            self._call("shutdown", [a.shutdown.remote() for a in self.actors], timeout_s=min(self.timeout_s, 60.0))
        finally:
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            self.actors = []
