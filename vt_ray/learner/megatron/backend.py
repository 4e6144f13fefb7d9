"""``learner.backend: megatron``: one learner rank with the policy (and frozen reference) as a megatron-core
tensor- and pipeline-parallel language model plus the Hugging Face vision tower (:class:`~vt_ray.learner.megatron.vlm.
MegatronVL`), behind the same contract as the FSDP2 worker (:class:`vt_ray.learner.backend_api.LearnerBackend`).

Layout: ``learner.megatron.tensor_parallel_size`` (TP) x ``context_parallel_size`` (CP) x
``pipeline_parallel_size`` (PP) ranks share each model; the ``world / (TP CP PP)`` groups are data-parallel
replicas (CP: :mod:`vt_ray.learner.megatron.context`). The learner group shards a
mini-batch over *all* ranks, so the ranks of one model-parallel group first pool their shards
(``all_gather_object``; they must run the same forward) and each answers for its own rows; gradients are summed
over the data-parallel group before the step. With PP > 1 the micro-batches go through megatron's 1F1B schedule
(:mod:`vt_ray.learner.megatron.pipeline`); log-probs and metrics come from the last stage to every rank.

Same semantics as the FSDP2 worker: the same loss functions and metric keys (``resolve_loss``; shares summed
over micro-batches and ranks), AdamW on the local shards with the same hyperparameters and lr schedule, the
global gradient norm over TP shards (``optim.clip_grad_norm``), a skipped update on a non-finite norm.

Mixed precision (``learner.param_dtype: bfloat16``): the policy's and the reference's parameters are bf16
(megatron's ``params_dtype``; the vision tower too), the optimizer steps float32 masters
(:class:`~vt_ray.learner.megatron.optim.Float32Masters`: gradients copied in, the data-parallel sum, norm,
clipping and AdamW on them, copied back), log-probs and losses are float32 (megatron's vocab-parallel
cross-entropy upcasts the logits, as the FSDP2 learner's ``.float()``). The weight export and checkpoints read
the masters.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import torch
import torch.distributed as dist

from vt_ray.common.weight_stream import StreamPlan, StreamSession, plan_buckets
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner import weight_stream
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.checkpoint_io import load_step, save_step
from vt_ray.learner.fsdp import DTYPES
from vt_ray.learner.losses import LossNorm
from vt_ray.learner.rank_common import (
    RankCommon,
    accumulate,
    reduce_metrics,
)
from vt_ray.learner.sharded_load import init_process_group
from vt_ray.testing.faults import corrupt_point, crash_point, hang_point

log = logging.getLogger(__name__)


def refuse_unsupported(cfg: LearnerRoleConfig) -> None:
    """What this backend does not run yet fails at setup, naming the key."""
    lcfg = cfg.learner
    if lcfg.param_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"learner.param_dtype: the Megatron backend computes in float32 or bfloat16, not "
                         f"{lcfg.param_dtype} (float16 needs a loss scaler, not wired; docs/megatron.md)")
    if lcfg.reduce_dtype != "float32":
        raise ValueError("learner.reduce_dtype: the Megatron backend sums gradients over data-parallel replicas in "
                         "float32, on the master gradients (docs/megatron.md)")


def recompute_of(cfg: LearnerRoleConfig) -> Any:
    """``learner.activation_checkpointing`` as megatron's activation recompute (``learner.megatron.recompute_*``),
    or None without it."""
    from vt_ray.learner.megatron.model import Recompute

    lcfg = cfg.learner
    if not lcfg.activation_checkpointing:
        return None
    mcfg = lcfg.megatron
    return Recompute(str(mcfg.recompute_granularity), str(mcfg.recompute_method), mcfg.recompute_num_layers)


class MegatronWorker(RankCommon):
    def __init__(self, cfg: LearnerRoleConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cfg, rank, world_size)
        self.policy: Any = None
        self.reference: Any = None
        self.dist_optim: Any = None  # learner.megatron.distributed_optimizer
        self.megatron_optim: Any = None  # learner.megatron.optimizer_impl: megatron (megatron_optim.py, GPU only)

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, master_addr: str = "127.0.0.1", master_port: int | None = None, *, total_steps: int = 1,
              model_path: str | None = None, lr: float | None = None, reference: str | None = None) -> int:
        """Join the process group, create megatron's TP/DP groups, load the policy (and reference) split over the
        TP group, build AdamW and the lr schedule. Returns the policy's (global) parameter count."""
        from transformers import AutoProcessor

        from vt_ray.learner.megatron.hf_view import HfView
        from vt_ray.learner.megatron.parallel import init_model_parallel
        from vt_ray.learner.megatron.spec import use_transformer_engine
        from vt_ray.learner.megatron.vlm import MegatronVL

        refuse_unsupported(self.cfg)
        if self.lcfg.megatron.optimizer_impl == "megatron":
            from vt_ray.learner.megatron.megatron_optim import require_cuda

            require_cuda()  # before any model is built
        init_process_group(self.lcfg.dist_backend, self.device, self.rank, self.world_size, master_addr,
                           master_port, self.lcfg.timeout_s)
        self.tp = self.lcfg.megatron.tensor_parallel_size
        self.pp = self.lcfg.megatron.pipeline_parallel_size
        self.cp = self.lcfg.megatron.context_parallel_size
        init_model_parallel(tensor_parallel=self.tp, pipeline_parallel=self.pp, seed=self.cfg.seed,
                            context_parallel=self.cp)
        from megatron.core import parallel_state

        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.pp_group = parallel_state.get_pipeline_model_parallel_group()
        self._context_parallel_groups(parallel_state)
        torch.manual_seed(self.cfg.seed + parallel_state.get_data_parallel_rank())
        use_te = use_transformer_engine(self.lcfg.megatron.transformer_impl)
        self.model_path = model_path or self.cfg.model.path
        self.processor = AutoProcessor.from_pretrained(self.model_path)
        dedup, vision = self.lcfg.dedup_videos, self.lcfg.megatron.vision_impl
        dtype = DTYPES[self.lcfg.param_dtype]
        sequence_parallel = self.lcfg.megatron.sequence_parallel
        self.policy = MegatronVL.load(self.model_path, self.tp, use_te, self.device, dedup, self.pp,
                                      recompute_of(self.cfg), vision_impl=vision, dtype=dtype, trained=True,
                                      sequence_parallel=sequence_parallel).train()
        self.hf_config = self.policy.hf_config
        placement = self.lcfg.reference if reference is None else reference
        if placement != "none":
            ref_path = self.lcfg.reference_path or self.model_path
            self.reference = MegatronVL.load(ref_path, self.tp, use_te, self.device, dedup, self.pp,
                                             vision_impl=vision, dtype=dtype, sequence_parallel=sequence_parallel
                                             ).eval().requires_grad_(False)
        self.view = HfView(self.policy)
        # The optimizer's parameters: float32 masters of the bf16 ones (a float32 parameter is its own).
        assert self.policy.masters is not None
        if self.lcfg.megatron.optimizer_impl == "megatron":  # megatron-core's DDP + DistributedOptimizer
            from vt_ray.learner.megatron.megatron_optim import MegatronOptimizer

            self.megatron_optim = MegatronOptimizer(self.policy, self.lcfg, total_steps, lr)
            self.optimizer, self.scheduler, self.step = self.megatron_optim.optimizer, self.megatron_optim.schedule, 0
            return sum(math.prod(shape) for shape in self.view.shapes.values())
        self.dist_optim = self._distributed_optimizer() if self.lcfg.megatron.distributed_optimizer else None
        params = self.policy.masters.masters if self.dist_optim is None else [self.dist_optim.slice]
        self._build_optimizer(params, total_steps, lr)
        if self.dist_optim is not None:
            self.dist_optim.bind(self.optimizer)
        return sum(math.prod(shape) for shape in self.view.shapes.values())

    def _context_parallel_groups(self, parallel_state: Any) -> None:
        """The groups that context parallelism changes. ``mp_group``: the ranks that share one model (TP x CP x
        PP), which run the same forward on the same pooled batch. ``dp_group``: the replicas, over which metrics
        are reduced (CP ranks hold the same figures: the loss runs on the CP-gathered log-probs). ``grad_group``:
        the data-parallel *and* context-parallel ranks, over which gradients are summed (each CP rank's are those
        of its own tokens; megatron's ``get_data_parallel_group(with_context_parallel=True)``)."""
        from vt_ray.learner.megatron.parallel import replica_group

        self.mp_group, self.mp_size = replica_group()
        self.dp_group = parallel_state.get_data_parallel_group()
        self.dp_size = dist.get_world_size(self.dp_group)
        self.grad_group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        self.grad_group_size = dist.get_world_size(self.grad_group)

    # ---- the model-parallel group's data -----------------------------------------------------------------
    def _pooled(self, shard: TrainBatch) -> tuple[TrainBatch, slice, dict[Any, torch.Tensor]]:
        """The shards of this rank's model-parallel group (TP x CP x PP) as one batch (its ranks run the same
        forward), this rank's rows in it, and the float32 pixels of its distinct prompts (``fetched`` for
        ``TrainBatch.materialised``: each micro-batch expands only its own rows' copies).

        Pixels by reference are fetched once per prompt here and the group exchanges them compact (one stored
        copy per prompt), not expanded to one float32 copy per sample (G per video) as a materialised shard
        would be."""
        shard, stored = shard.fetch_pixels()
        size = self.mp_size
        if size == 1:
            return shard, slice(0, len(shard)), {key: p.tensor() for key, p in stored.items()}
        gathered: list[Any] = [None] * size
        dist.all_gather_object(gathered, (shard, stored), group=self.mp_group)
        shards = [s for s, _ in gathered]
        pixels = {key: p for _, group_stored in gathered for key, p in group_stored.items()}
        me = dist.get_rank(self.mp_group)
        start = sum(len(s) for s in shards[:me])
        fetched = {key: p.tensor() for key, p in pixels.items()}
        return TrainBatch.concat(shards), slice(start, start + len(shard)), fetched

    def _model(self, which: str) -> Any:
        model = {"policy": self.policy, "reference": self.reference}.get(which)
        if model is None:
            raise ValueError(f"no {which!r} model on this learner (learner.reference={self.lcfg.reference!r})")
        return model

    @torch.no_grad()
    def compute_logprobs(self, shard: TrainBatch, num_micro: int, which: str = "policy") -> torch.Tensor:
        """[B, L] per-token log-probs of this rank's shard under the policy or the reference (CPU tensor).
        ``num_micro`` is the FSDP2 ranks' lock-step count; here the TP group runs its pooled batch in
        micro-batches of ``learner.micro_batch_size`` (no collective spans TP groups)."""
        hang_point("learner.compute_logprobs", self.rank)
        from vt_ray.learner.megatron.cpu import sequence_parallel_on_cpu

        model = self._model(which).eval()
        pooled, mine, fetched = self._pooled(shard)
        width = pooled.input_ids.shape[1]
        micro = pooled.chunks(self.lcfg.micro_batch_size)
        with sequence_parallel_on_cpu():
            if self.pp > 1:
                from vt_ray.learner.megatron import logprobs, pipeline

                inputs = [model.stage_inputs(mb.materialised(fetched)) for mb in micro]
                outs = pipeline.run(model.lm, inputs, lambda i, out: (
                    out.sum() * 0, logprobs.logprobs_from_output(out, inputs[i], None)[0].cpu()), forward_only=True)
            else:
                outs = [model.logprobs(mb.materialised(fetched))[0].cpu() for mb in micro]
        full = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1])) for o in outs])
        return full[mine, : shard.input_ids.shape[1]]

    def train_step(self, shard: TrainBatch, num_micro: int, loss_name: str = "sft") -> dict[str, float]:
        """One optimizer step over the mini-batch (gradient accumulation over the TP group's micro-batches, a
        sum over data-parallel replicas). Returns mini-batch metrics, identical on every rank."""
        assert self.policy is not None, "call setup() first"
        hang_point("learner.train_step", self.rank)
        crash_point("learner.train_step", self.rank)
        started = time.perf_counter()
        loss_fn = self._loss_fn(loss_name)
        counts = torch.tensor([float(shard.num_tokens), float(shard.num_sequences)])
        dist.all_reduce(counts)
        norm = LossNorm(num_tokens=float(counts[0]), num_sequences=int(counts[1]))
        pooled, _, fetched = self._pooled(shard)

        self.policy.train()
        self.policy.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {"loss": 0.0}
        maxes: dict[str, float] = {}
        wants_entropy = getattr(loss_fn, "entropy", None)

        def mb_loss(mb: TrainBatch, logprobs: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
            is_real = mb.num_sequences > 0  # all fillers: counted as the FSDP2 worker counts its fillers
            if entropy is not None:
                mb.entropy = entropy
            loss, metrics = loss_fn(logprobs, mb, norm)
            accumulate(sums, maxes, metrics, is_real)
            if is_real:
                sums["loss"] += float(loss.detach())
            return loss  # a share of the whole mini-batch: summed over micro-batches, never averaged

        micro = pooled.chunks(self.lcfg.micro_batch_size)
        from vt_ray.learner.megatron.cpu import recompute_on_cpu, sequence_parallel_on_cpu

        # the backward recomputes layers (learner.activation_checkpointing) and gathers sequence slices
        with recompute_on_cpu(), sequence_parallel_on_cpu():
            if self.pp > 1:
                from vt_ray.learner.megatron import logprobs, pipeline

                inputs = [self.policy.stage_inputs(mb.materialised(fetched), wants_entropy) for mb in micro]
                pipeline.run(self.policy.lm, inputs, lambda i, out: (
                    mb_loss(micro[i], *logprobs.logprobs_from_output(out, inputs[i], wants_entropy)), None),
                    forward_only=False)
                sums, maxes = pipeline.from_last_stage((sums, maxes))  # the loss exists on the last stage only
            else:
                for i, mb in enumerate(micro):
                    with self._grad_sync(last=i == len(micro) - 1):
                        mb_loss(mb, *self.policy.logprobs(mb.materialised(fetched), wants_entropy)).backward()
        if self.megatron_optim is not None:
            grad_norm, lr, finite = self.megatron_optim.step()
        else:
            grad_norm, lr, finite = self._step_optimizer()
        self.step += 1
        # Every TP rank of a replica holds the same figures: sum over the replicas only.
        out = reduce_metrics(sums, maxes, self.dp_group)
        out.update(grad_norm=grad_norm, lr=lr, step=float(self.step), skipped=float(not finite),
                   num_tokens=float(norm.num_tokens), num_sequences=float(norm.num_sequences),
                   step_time_s=time.perf_counter() - started)
        return out

    def _grad_sync(self, last: bool) -> Any:
        """Around one micro-batch's backward: megatron's DDP syncs gradients after the last one only."""
        return contextlib.nullcontext() if self.megatron_optim is None else self.megatron_optim.micro_batch(last)

    def _step_optimizer(self) -> tuple[float, float, bool]:
        """The vt_ray optimizer's step after the backward: the gradient norm, the lr and whether it stepped."""
        from vt_ray.learner.megatron.optim import finalize_grads

        finalize_grads(self.policy.lm)  # sequence-parallel norms over TP, a tied embedding's copies over PP
        masters, dist_optim = self.policy.masters, self.dist_optim
        if dist_optim is not None:  # reduce-scattered into this rank's slice of the float32 masters
            dist_optim.reduce_gradients()
            grad_norm = dist_optim.clip_grad_norm(self.lcfg.grad_clip)
        else:
            masters.grads_to_masters()  # float32 from here on (bf16 model)
            self._sum_data_parallel_grads(masters.masters)
            grad_norm = self._clip_grad_norm(masters.masters)
        lr = float(self.scheduler.get_last_lr()[0])
        finite = math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            if dist_optim is not None:
                dist_optim.slices_to_params()  # every replica's stepped slice, all-gathered
            else:
                masters.masters_to_params()
        else:
            log.warning("learner[%d] step %d: non-finite grad norm, update skipped", self.rank, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm, lr, finite

    def _sum_data_parallel_grads(self, params: list[torch.Tensor]) -> None:
        """Data-parallel replicas hold gradients of their own data, context-parallel ranks those of their own
        tokens: the step needs their sum (one all-reduce per parameter over ``grad_group``, in float32 on the
        masters; megatron's bucketed DDP is the GPU-scale version, left for later)."""
        if self.grad_group_size == 1:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, group=self.grad_group)

    def _distributed_optimizer(self) -> Any:
        """``learner.megatron.distributed_optimizer``: this rank's slice of the float32 masters
        (vt_ray/learner/megatron/dist_optim.py), sliced over ``grad_group`` (the data- and context-parallel ranks:
        all hold the same parameters, as megatron's own distributed optimizer shards over DP x CP); the policy's
        whole masters are dropped."""
        from vt_ray.learner.megatron.dist_optim import DistributedOptimizer

        policy = self.policy
        assert policy.masters is not None
        sharded = DistributedOptimizer(policy.masters.params, policy.masters.masters, self.grad_group, self.tp_group,
                                       self.pp_group)
        policy.masters, policy.sharded_masters = None, sharded
        return sharded

    def _clip_grad_norm(self, params: list[torch.Tensor]) -> float:
        from vt_ray.learner.megatron.optim import clip_grad_norm

        return clip_grad_norm(params, self.lcfg.grad_clip, self.tp_group, self.pp_group)

    # ---- export and the streamed weight sync -------------------------------------------------------------------
    def export_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        """The full policy in the HF model's names, on rank 0 (empty elsewhere). Collective."""
        assert self.policy is not None
        state = self.view.state_dict(self.policy)
        if self.rank != 0:
            return {}
        target = DTYPES[dtype or self.cfg.model.dtype]
        return {k: v.cpu().to(target) if v.is_floating_point() else v.cpu() for k, v in state.items()}

    def weight_plan(self, dtype: str | None = None, bucket_mb: float = 128) -> dict[str, Any]:
        """The bucket plan, from the HF model's shapes (no collective: the group asks rank 0 only)."""
        target = str(DTYPES[dtype or self.cfg.model.dtype]).removeprefix("torch.")
        specs = [(name, self.view.shapes[name], target) for name in self.view.stream_names]
        return plan_buckets(specs, int(bucket_mb * 2**20)).to_dict()

    def send_weights(self, plan: dict[str, Any], session: StreamSession | None,
                     many_senders: bool = False) -> dict[str, float]:
        """Stream the policy per ``plan``: every rank gathers each bucket's full tensors from the TP/PP shards
        (so ``many_senders`` changes nothing here), the ranks with a session send. Collective. Rank 0's timings
        (zeros elsewhere)."""
        assert self.policy is not None
        hang_point("learner.send_weights", self.rank)
        corrupt = None
        if corrupt_point("learner.send_weights", self.rank):
            def corrupt(index: int, buf: torch.Tensor) -> None:
                if index == len(plan["buckets"]) // 2:
                    buf[0] ^= 0xFF
        timings = weight_stream.send_buckets(lambda names: self.view.gathered(self.policy, names),
                                             StreamPlan.from_dict(plan), session,
                                             self.rank, self.device, corrupt, self._store())
        return timings if self.rank == 0 else {k: 0.0 for k in timings}

    @torch.no_grad()
    def probe_logprobs(self, text: str) -> list[float]:
        """The policy's log-probs of ``text`` (float64 softmax over the gathered vocabulary). Collective."""
        assert self.policy is not None
        from vt_ray.learner.megatron.cpu import sequence_parallel_on_cpu

        ids = self.processor.tokenizer(text, return_tensors="pt")["input_ids"].to(self.device)
        with sequence_parallel_on_cpu():
            out = self.policy.eval().text_logprobs(ids).tolist()
        self.policy.train()
        return out

    # ---- resumable checkpoints (megatron dist_checkpointing: vt_ray.learner.megatron.checkpoint) -------------
    def save_checkpoint(self, root: str, extra_state: dict[str, Any] | None = None) -> str:
        from vt_ray.learner.megatron.checkpoint import write_shards

        optimizer = self.dist_optim or self.optimizer
        write = (lambda tmp: write_shards(self.policy, optimizer, tmp, self.rank)) if self.megatron_optim is None \
            else (lambda tmp: self.megatron_optim.write_shards(tmp, self.rank))
        return save_step(write, self.scheduler,
                         step=self.step, rank=self.rank, world_size=self.world_size, root=root,
                         keep_last=self.lcfg.keep_last, extra_state=extra_state)

    def load_checkpoint(self, path: str) -> dict[str, Any] | None:
        from vt_ray.learner.megatron.checkpoint import read_shards

        optimizer = self.dist_optim or self.optimizer
        read = (lambda found: read_shards(self.policy, optimizer, found, self.rank)) if self.megatron_optim is None \
            else self.megatron_optim.read_shards
        loaded = load_step(read, self.scheduler, rank=self.rank, path=path)
        if loaded is None:
            return None
        self.step, extra = loaded
        return extra

    def shutdown(self) -> None:
        if dist.is_initialized():
            from vt_ray.learner.megatron.parallel import destroy_model_parallel

            destroy_model_parallel()
            dist.destroy_process_group()
