"""One learner rank: the policy (and frozen reference) sharded with FSDP2, AdamW, the lr schedule, and the
operations the driver calls. A plain class, usable in-process (world size 1, tests) or as a Ray actor
(:mod:`vt_ray.learner.group`).

Every public method that touches the model is a collective: all ranks must call it, with their own shard of
the batch and the same ``num_micro`` (FSDP all-gathers parameters in every forward, so ranks must run the
same number of forward/backward passes; a short rank runs zero-loss fillers).

Loading and sharding the model (:mod:`vt_ray.learner.sharded_load`) and checkpoint I/O
(:mod:`vt_ray.learner.checkpoint_io`) are functions of their own over the state this class owns.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

from vt_ray.common.weight_stream import StreamPlan, StreamSession
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner import weight_stream
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.checkpoint_io import load_checkpoint, save_checkpoint
from vt_ray.learner.fsdp import DTYPES, reshard_all
from vt_ray.learner.logprobs import token_logprobs, token_logprobs_and_entropy
from vt_ray.learner.losses import LossNorm
from vt_ray.learner.rank_common import (
    RankCommon,
    accumulate,
    micro_batches,
    reduce_metrics,
)
from vt_ray.learner.sharded_load import init_process_group, load_sharded
from vt_ray.learner.vision_dedup import install_video_dedup
from vt_ray.testing.faults import corrupt_point, crash_point, hang_point

log = logging.getLogger(__name__)


class LearnerWorker(RankCommon):
    def __init__(self, cfg: LearnerRoleConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cfg, rank, world_size)
        self.model: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.stream_gather = "flat"  # weight_stream.GATHERS; the benchmark switches it to time the earlier sender

    # ---- setup -------------------------------------------------------------------------------------------

    def setup(
        self,
        master_addr: str = "127.0.0.1",
        master_port: int | None = None,
        *,
        total_steps: int = 1,
        model_path: str | None = None,
        lr: float | None = None,
        reference: str | None = None,
    ) -> int:
        """Join the process group, load and shard the model(s), build the optimizer and schedule.

        ``model_path``/``lr``/``reference`` override the recipe (SFT trains model.path at sft.lr with no
        reference; GRPO starts from the SFT checkpoint). Returns the number of policy parameters.
        """
        from torch.distributed.device_mesh import init_device_mesh
        from transformers import AutoConfig, AutoProcessor

        init_process_group(self.lcfg.dist_backend, self.device, self.rank, self.world_size, master_addr,
                           master_port, self.lcfg.timeout_s)
        torch.manual_seed(self.cfg.seed + self.rank)
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        self.model_path = model_path or self.cfg.model.path
        self.hf_config = AutoConfig.from_pretrained(self.model_path)
        self.processor = AutoProcessor.from_pretrained(self.model_path)

        def prepare_policy(model: torch.nn.Module) -> torch.nn.Module:
            model.config.use_cache = False  # type: ignore[union-attr]  # nn.Module.__getattr__: Tensor | Module
            if self.lcfg.dedup_videos:
                install_video_dedup(model)
            if self.lcfg.activation_checkpointing:
                model.gradient_checkpointing_enable(  # type: ignore[operator]  # a transformers method
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            return model.train()

        def prepare_reference(model: torch.nn.Module) -> torch.nn.Module:
            if self.lcfg.dedup_videos:
                install_video_dedup(model)
            return model.eval().requires_grad_(False)

        # Master weights stay float32; FSDP casts the all-gathered copy to param_dtype for compute.
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[self.lcfg.param_dtype],
                                  reduce_dtype=DTYPES[self.lcfg.reduce_dtype])
        self.model = self._load_sharded(self.model_path, torch.float32, prepare_policy, mp, offload=False,
                                        reshard_after_forward=self.lcfg.reshard_after_forward)

        placement = self.lcfg.reference if reference is None else reference
        if placement != "none":
            ref_path = self.lcfg.reference_path or self.model_path
            offload = placement == "cpu_offload" and self.device.type == "cuda"
            self.reference = self._load_sharded(
                ref_path, DTYPES[self.lcfg.param_dtype], prepare_reference, None, offload=offload
            )

        self._build_optimizer(self.model.parameters(), total_steps, lr)
        return sum(p.numel() for p in self.model.parameters())  # DTensor numel is the global size

    def _load_sharded(
        self,
        path: str,
        dtype: torch.dtype,
        prepare: Callable[[torch.nn.Module], torch.nn.Module],
        mp: MixedPrecisionPolicy | None,
        offload: bool,
        reshard_after_forward: bool = True,
    ) -> torch.nn.Module:
        """The model at ``path`` sharded over this rank's mesh (:func:`~vt_ray.learner.sharded_load.load_sharded`).
        Collective."""
        return load_sharded(path, dtype, prepare, mp, offload, mesh=self.mesh, device=self.device, rank=self.rank,
                            world_size=self.world_size, load_on_rank0=self.lcfg.load_on_rank0,
                            reshard_after_forward=reshard_after_forward)

    # ---- forward / update ----------------------------------------------------------------------------------
    def _micro_batches(self, shard: TrainBatch, num_micro: int) -> tuple[list[TrainBatch], list[bool]]:
        """``num_micro`` micro-batches of ``micro_batch_size`` at most; fillers (flag False) pad a short rank."""
        return micro_batches(shard, num_micro, self.lcfg.micro_batch_size)

    @torch.no_grad()
    def compute_logprobs(self, shard: TrainBatch, num_micro: int, which: str = "policy") -> torch.Tensor:
        """[B, L] per-token log-probs of this rank's shard under the policy or the reference (CPU tensor)."""
        hang_point("learner.compute_logprobs", self.rank)
        model = self._model(which)
        model.eval()
        micro, real = self._micro_batches(shard, num_micro)
        fetched: dict[Any, torch.Tensor] = {}  # pixels by reference: each prompt's fetched once per call
        outs = [token_logprobs(model, mb.materialised(fetched), self.device).cpu() for mb in micro]
        reshard_all(model)  # no backward follows to reshard (learner.reshard_after_forward=false)
        width = shard.input_ids.shape[1]
        return torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1])) for o, r in zip(outs, real) if r])

    def _model(self, which: str) -> torch.nn.Module:
        model = {"policy": self.model, "reference": self.reference}.get(which)
        if model is None:
            raise ValueError(f"no {which!r} model on this learner (learner.reference={self.lcfg.reference!r})")
        return model

    def train_step(self, shard: TrainBatch, num_micro: int, loss_name: str = "sft") -> dict[str, float]:
        """One optimizer step over the mini-batch whose shard this rank holds (gradient accumulation over
        its micro-batches). Returns mini-batch metrics, identical on every rank."""
        assert self.model is not None, "call setup() first"
        hang_point("learner.train_step", self.rank)
        crash_point("learner.train_step", self.rank)  # tests: a learner rank lost mid-update
        started = time.perf_counter()
        loss_fn = self._loss_fn(loss_name)
        micro, real = self._micro_batches(shard, num_micro)
        fetched: dict[Any, torch.Tensor] = {}  # pixels by reference: each prompt's fetched once per call
        counts = torch.tensor([float(shard.num_tokens), float(shard.num_sequences)])
        dist.all_reduce(counts)
        norm = LossNorm(num_tokens=float(counts[0]), num_sequences=int(counts[1]))

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {"loss": 0.0}
        maxes: dict[str, float] = {}
        for i, (mb, is_real) in enumerate(zip(micro, real)):
            mb = mb.materialised(fetched)  # per-sample pixel copies for this micro-batch only
            if not self.lcfg.reduce_every_micro_batch:  # reduce-scatter once, after the last micro-batch
                cast(FSDPModule, self.model).set_requires_gradient_sync(i == len(micro) - 1)
            logprobs, entropy = token_logprobs_and_entropy(self.model, mb, self.device,
                                                           getattr(loss_fn, "entropy", None))
            if entropy is not None:
                mb.entropy = entropy
            loss, metrics = loss_fn(logprobs, mb, norm)
            # FSDP averages gradients over ranks; shares are meant to be summed, hence the world size.
            (loss * self.world_size).backward()
            accumulate(sums, maxes, metrics, is_real)
            if is_real:
                sums["loss"] += float(loss.detach())

        grad_norm = self._clip_grad_norm()
        lr = float(self.scheduler.get_last_lr()[0])
        finite = math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        else:  # a non-finite gradient would poison Adam's moments: skip the update, keep the schedule moving
            log.warning("learner[%d] step %d: non-finite grad norm, update skipped", self.rank, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

        out = reduce_metrics(sums, maxes)
        out.update(
            grad_norm=grad_norm,
            lr=lr,
            step=float(self.step),
            skipped=float(not finite),
            num_tokens=float(norm.num_tokens),
            num_sequences=float(norm.num_sequences),
            step_time_s=time.perf_counter() - started,
        )
        return out

    def _clip_grad_norm(self) -> float:
        """Global gradient norm (over all shards), clipping when learner.grad_clip > 0."""
        assert self.model is not None
        max_norm = self.lcfg.grad_clip if self.lcfg.grad_clip > 0 else float("inf")
        params = [p for p in self.model.parameters() if p.grad is not None]
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(total, "full_tensor"):  # a DTensor when the grads are sharded
            total = total.full_tensor()
        return float(total)

    # ---- export ----------------------------------------------------------------------------------------------
    def export_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        """The full policy state dict in Hugging Face naming, on rank 0 (empty elsewhere), in ``dtype``
        (default model.dtype, the serving dtype). Collective."""
        assert self.model is not None
        full = cast(dict[str, torch.Tensor],  # a full model state dict holds tensors only
                    get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
        if self.rank != 0:
            return {}
        target = DTYPES[dtype or self.cfg.model.dtype]
        return {k: v.to(target) if v.is_floating_point() else v for k, v in full.items()}

    # ---- streamed weight sync (vt_ray.learner.weight_stream) -----------------------------------------------
    def weight_plan(self, dtype: str | None = None, bucket_mb: float = 128) -> dict[str, Any]:
        """The bucket plan of the policy in the serving ``dtype`` (default model.dtype), as plain data."""
        assert self.model is not None
        plan = weight_stream.plan_policy(self.model, DTYPES[dtype or self.cfg.model.dtype], int(bucket_mb * 2**20))
        return plan.to_dict()

    def send_weights(self, plan: dict[str, Any], session: StreamSession | None,
                     many_senders: bool = False) -> dict[str, float]:
        """Stream the policy per ``plan`` to the engines of ``session`` (every rank gathers; the group gives a
        session to rank 0, or with ``ipc`` to each rank that has engines on its GPU or node, and those send).
        Collective. Returns rank 0's timings (zeros elsewhere)."""
        assert self.model is not None
        hang_point("learner.send_weights", self.rank)
        corrupt = None
        if corrupt_point("learner.send_weights", self.rank):  # tests: one bucket's bytes changed on the wire
            def corrupt(index: int, buf: torch.Tensor) -> None:
                if index == len(plan["buckets"]) // 2:
                    buf[0] ^= 0xFF
        # The flat gather brings full tensors to rank 0 only: where other ranks send too, every rank all-gathers.
        gather = "per_tensor" if many_senders else self.stream_gather
        timings = weight_stream.send_policy(self.model, StreamPlan.from_dict(plan), session, self.rank,
                                            self.device, corrupt, self._store(), gather)
        return timings if self.rank == 0 else {k: 0.0 for k in timings}

    def probe_logprobs(self, text: str) -> list[float]:
        """The policy's log-probs of ``text``: the weight probe's reference. Collective."""
        assert self.model is not None
        model = self.model.eval()
        out = weight_stream.probe_logprobs(model, self.processor, text, self.device)
        reshard_all(model)
        return out

    # ---- resumable checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, root: str, extra_state: dict[str, Any] | None = None) -> str:
        """Model + optimizer (DCP, sharded), scheduler, step, extra state (e.g. data position) and each rank's
        RNG, into ``root/step_N`` with a manifest of every file's size and SHA-256 (each rank hashes what it
        wrote); then ``latest`` and pruning to learner.keep_last. Collective. A write that fails (a full disk)
        removes the partial directory and raises :class:`~vt_ray.learner.checkpoint.CheckpointWriteError`;
        the previous checkpoint is untouched."""
        assert self.model is not None
        return save_checkpoint(self.model, self.optimizer, self.scheduler, step=self.step, rank=self.rank,
                               world_size=self.world_size, root=root, keep_last=self.lcfg.keep_last,
                               extra_state=extra_state)

    def load_checkpoint(self, path: str) -> dict[str, Any] | None:
        """Restore from a checkpoint root (its newest intact step) or a step dir; returns the extra state, or
        None when there is no checkpoint. Collective. A step dir is checked against its manifest by size only
        (every rank, a stat per file): the caller chose it with :func:`~vt_ray.learner.checkpoint.select`,
        which checks the hashes once (``LearnerGroup.load_checkpoint`` does). Nothing is unpickled."""
        assert self.model is not None
        loaded = load_checkpoint(self.model, self.optimizer, self.scheduler, rank=self.rank, path=path)
        if loaded is None:
            return None
        self.step, extra = loaded
        return extra

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
