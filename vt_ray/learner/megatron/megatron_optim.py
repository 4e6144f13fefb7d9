"""``learner.megatron.optimizer_impl: megatron``: megatron-core's own ``DistributedDataParallel`` and
``DistributedOptimizer`` (GPU only) in place of ours (:mod:`~vt_ray.learner.megatron.dist_optim`).

Written against megatron-core 0.16.1's source and **never run on a GPU**: this project has none, and megatron's DDP
allocates its gradient buffers on ``torch.cuda.current_device()`` and its optimizer refuses parameters whose
``type()`` is not ``torch.cuda.*Tensor``. What is tested here (tests/unit/learner/test_megatron_optim.py): the
translation of our config into megatron's ``DistributedDataParallelConfig`` / ``OptimizerConfig``, the lr
schedule applied to its param groups, and the refusal without CUDA. ``tools/megatron_check.py
--megatron-optimizer`` compares it with ``optimizer_impl: vt_ray`` on a GPU node. By hand, megatron's own code
ran on CPU with CUDA faked (tests/integration/learner/manual_megatron_optim_fake_cuda.py: device 'cuda' mapped
to the CPU, megatron's tensor-type checks answered): it matches the vt_ray path and resumes exactly; that run
found the three megatron-core 0.16.1 problems worked around or refused below. The real CUDA path (TE's fused
Adam, NCCL, CUDA streams with ``overlap_grad_reduce``) has not run.

What it replaces, and how it differs from the vt_ray path:

* every trained module (the ``GPTModel`` of this pipeline stage and, on the first stage, the Megatron vision
  tower: ``vision_impl: megatron`` is required, the HF tower is not a megatron module) is wrapped in megatron's
  DDP: contiguous gradient buffers the backward accumulates into (``param.main_grad``, float32:
  ``grad_reduce_in_fp32``), reduce-scattered in buckets (during the last micro-batch's backward with
  ``learner.megatron.overlap_grad_reduce``). The modules themselves stay where the rest of the backend reads
  them (``policy.lm``, ``policy.visual``): DDP's hooks sit on the parameters, so calling the module unwrapped
  still feeds the buffers;
* ``finalize_model_grads`` replaces our data-parallel sum and ``optim.finalize_grads`` (sequence-parallel norms
  over TP, a tied embedding's copies over the first and last stage). Our losses are shares of the whole
  mini-batch, so the replicas' gradients are summed, not averaged: the language model's config already has
  ``calculate_per_token_loss`` (the pipeline schedule needs it), which is also what makes DDP skip its 1/DP
  pre-scaling; the tower's DDP gets a copy of its config with it set;
* ``DistributedOptimizer`` (via ``get_megatron_optimizer``) keeps the float32 main parameters and Adam moments
  sharded over DP, computes the global gradient norm, clips and steps (TE's or apex's fused Adam on GPU, in
  AdamW mode). ``config_overrides={}``: every parameter is decayed, as our AdamW does (megatron's default skips
  biases and 1-D parameters). Its clipping rule is megatron's ``clip_grad_by_total_norm_fp32``
  (``clip / (norm + 1e-6)``, applied when < 1: ours);
* the lr: megatron's optimizer is not a ``torch.optim.Optimizer``, so no ``LambdaLR``: :class:`ScheduledLr`
  sets each param group's ``lr`` to the peak lr times our schedule's factor (``vt_ray.learner.schedule``), as
  megatron's own ``OptimizerParamScheduler`` does with its schedule;
* masters and export: megatron's optimizer copies its float32 main parameters back into the model's (bf16)
  parameters and all-gathers them after each step, so the weight sync, ``export_state_dict`` and ``save_hf``
  read the model's parameters (``policy.masters`` is None): in a bf16 run they export the bf16 rounding, not the
  float32 masters the vt_ray path exports; and megatron's masters start from the bf16 parameters, not the
  checkpoint's float32 values. In a bf16 run every trained parameter is bf16, the norms' too (the vt_ray path
  keeps megatron's local RMSNorm weights float32): megatron's optimizer mis-maps a param group mixing dtypes in
  its checkpoint (:func:`_parameters_to_bf16`);
* checkpoints: ``optimizer.sharded_state_dict(model_sharded_state_dict)`` (``fully_reshardable``:
  :data:`SHARDING`; 0.16.1's default format fails its own check) through ``dist_checkpointing``, a format of its
  own: a marker file (:data:`MARKER`) says which optimizer wrote a checkpoint, and resuming across the two
  implementations is refused, naming the key. Without TE or apex (torch's Adam) megatron cannot resume its
  optimizer: refused (:meth:`MegatronOptimizer._refuse_torch_adam_resume`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vt_ray.config.learner import LearnerConfig
from vt_ray.learner.megatron.checkpoint import (
    MEGATRON_OPTIMIZER_MARKER,
    OPTIMIZER_IMPL,
    _read_model,
    _sharded_model,
    refuse_megatron_checkpoint,
)
from vt_ray.learner.schedule import lr_schedule

KEY = OPTIMIZER_IMPL
MARKER = MEGATRON_OPTIMIZER_MARKER  # next to the shards: refuses a resume across the two optimizers
# Reshardable at any TP/PP/DP layout (the state gathered on DP rank 0 at save). 0.16.1's default,
# fully_sharded_model_space, fails its own check ("ShardedTensor.flattened_range is not supported").
SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


def require_cuda(cuda_available: bool | None = None) -> None:
    """megatron's DDP and DistributedOptimizer are CUDA only: fail at setup, naming the key."""
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if not available:
        raise ValueError(f"{KEY}: megatron (megatron-core's DistributedDataParallel + DistributedOptimizer) needs "
                         "CUDA; this learner has none (use optimizer_impl=vt_ray: our ZeRO-1, dist_optim.py)")


def ddp_config(lcfg: LearnerConfig) -> Any:
    """Our config as megatron's ``DistributedDataParallelConfig``: the distributed optimizer's reduce-scatter, in
    float32 (our ``reduce_dtype`` is float32: the backend refuses another), overlapped with the backward when
    asked."""
    from megatron.core.distributed import DistributedDataParallelConfig

    return DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True,
                                         overlap_grad_reduce=lcfg.megatron.overlap_grad_reduce,
                                         overlap_param_gather=False, average_in_collective=False)


def optimizer_config(lcfg: LearnerConfig, lr: float | None = None) -> Any:
    """Our AdamW hyperparameters as megatron's ``OptimizerConfig`` (``lr``: the peak lr, default
    ``learner.lr``). ``clip_grad``: megatron measures the norm only when it clips (``clip_grad`` > 0); our
    ``grad_clip`` <= 0 means "measure, do not clip", so it becomes +inf (its coefficient inf / norm is never < 1).
    No loss scaler (bf16 or float32): a non-finite norm does not skip megatron's step, where ours does."""
    from megatron.core.optimizer import OptimizerConfig

    bf16 = lcfg.param_dtype == "bfloat16"
    return OptimizerConfig(optimizer="adam", lr=lcfg.lr if lr is None else lr, min_lr=0.0,
                           weight_decay=lcfg.weight_decay, adam_beta1=lcfg.betas[0], adam_beta2=lcfg.betas[1],
                           adam_eps=lcfg.eps, decoupled_weight_decay=True,
                           clip_grad=lcfg.grad_clip if lcfg.grad_clip > 0 else math.inf,
                           bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                           use_distributed_optimizer=True)


class ScheduledLr:
    """Our warmup + cosine schedule on megatron's optimizer (not a ``torch.optim.Optimizer``, so no
    ``LambdaLR``): each param group's ``lr`` is the peak lr times :func:`~vt_ray.learner.schedule.lr_factor` of
    the step. The same interface as the ``LambdaLR`` the backend otherwise has (``get_last_lr``, ``step``,
    ``state_dict`` / ``load_state_dict`` for ``checkpoint_io``)."""

    def __init__(self, param_groups: Callable[[], list[dict[str, Any]]], peak_lr: float,
                 factor: Callable[[int], float]) -> None:
        self.param_groups, self.peak_lr, self.factor = param_groups, peak_lr, factor
        self.last_epoch = 0
        self._apply()

    @classmethod
    def of(cls, param_groups: Callable[[], list[dict[str, Any]]], lcfg: LearnerConfig, total_steps: int,
           lr: float | None = None) -> ScheduledLr:
        return cls(param_groups, lcfg.lr if lr is None else lr,
                   lr_schedule(total_steps, lcfg.warmup_steps, lcfg.warmup_ratio, lcfg.min_lr_ratio))

    def _apply(self) -> None:
        for group in self.param_groups():
            group["lr"] = self.peak_lr * self.factor(self.last_epoch)

    def get_last_lr(self) -> list[float]:
        return [self.peak_lr * self.factor(self.last_epoch)]

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "peak_lr": self.peak_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def trained_modules(policy: Any) -> list[torch.nn.Module]:
    """The megatron modules this rank trains: the language model's stage, and the Megatron vision tower on the
    first stage (other stages hold an empty module there)."""
    parts = policy.megatron_parts()
    return [parts["lm"][0]] + ([parts["visual"][0]] if "visual" in parts else [])


@torch.no_grad()
def _parameters_to_bf16(module: torch.nn.Module) -> None:
    """Every float32 parameter of a bf16 model in bf16 (megatron's local RMSNorm keeps float32 weights under a
    bf16 ``params_dtype``), as megatron's ``Float16Module`` casts a model (buffers, e.g. RoPE's frequencies, stay).
    megatron-core 0.16.1's ``DistributedOptimizer`` orders a param group's main parameters float32 first, bf16
    next, but indexes them (``model_param_group_index_map``) in buffer order: with both dtypes in a group its
    checkpoint maps a parameter to another's state (a size mismatch at save, seen in a CPU run with CUDA faked)."""
    for param in module.parameters():
        if param.dtype == torch.float32:
            param.data = param.data.to(torch.bfloat16)


class MegatronOptimizer:
    """The DDP wrappers of :func:`trained_modules`, megatron's optimizer over them and our lr schedule."""

    def __init__(self, policy: Any, lcfg: LearnerConfig, total_steps: int, lr: float | None = None) -> None:
        from megatron.core.distributed import DistributedDataParallel
        from megatron.core.optimizer import get_megatron_optimizer

        require_cuda()
        self.policy = policy
        self.chunks = []
        for module in trained_modules(policy):
            if lcfg.param_dtype == "bfloat16":
                _parameters_to_bf16(module)
            config: Any = module.config
            if not config.calculate_per_token_loss:  # sum the replicas' gradients (see the module docstring)
                config = copy.copy(config)
                config.calculate_per_token_loss = True
            self.chunks.append(DistributedDataParallel(config, ddp_config(lcfg), module))
        policy.masters = None  # megatron's optimizer owns the float32 main parameters
        self.optimizer = get_megatron_optimizer(optimizer_config(lcfg, lr), self.chunks, config_overrides={})
        self.schedule = ScheduledLr.of(lambda: self.optimizer.param_groups, lcfg, total_steps, lr)
        # the pipeline schedule accumulates micro-batches without syncing until the last one
        policy.lm.config.no_sync_func = self._no_sync
        self.zero_grad()

    def zero_grad(self) -> None:
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()

    @contextlib.contextmanager
    def _no_sync(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for chunk in self.chunks:
                stack.enter_context(chunk.no_sync())
            yield

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager[None]:
        """Around a micro-batch's backward outside the pipeline schedule: no gradient sync before the last."""
        return contextlib.nullcontext() if last else self._no_sync()

    def step(self) -> tuple[float, float, bool]:
        """After the backward: megatron's ``finalize_model_grads`` (the DP reduce-scatter, sequence-parallel norms
        over TP, a tied embedding over PP), then its optimizer's clip and step at the schedule's lr. Returns the
        gradient norm (NaN when megatron skips the step), the lr and whether it stepped."""
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads(self.chunks)
        lr = float(self.schedule.get_last_lr()[0])
        stepped, grad_norm, _ = self.optimizer.step()
        self.schedule.step()
        self.zero_grad()
        return (float(grad_norm) if grad_norm is not None else math.nan), lr, bool(stepped)

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def _sharded(self, is_loading: bool) -> dict[str, Any]:
        model = _sharded_model(self.policy)
        return {"model": model, "optimizer": self.optimizer.sharded_state_dict(model, is_loading=is_loading,
                                                                               metadata=SHARDING)}

    @staticmethod
    def _refuse_torch_adam_resume() -> None:
        """Without transformer-engine or apex megatron-core 0.16.1 steps torch's Adam(W), whose per-parameter
        ``step`` its load mishandles: ``fully_reshardable`` fails with ``KeyError: 'step'``
        (``DistributedOptimizer._set_main_param_and_optimizer_states``; ``dp_reshardable`` copies the same way and
        takes one dtype per buffer), a fresh optimizer's ``state_dict`` asserts one ``step``, and ``load_state_dict``
        gives every parameter the same ``step`` tensor, which torch's Adam then increments once per parameter (the
        second step after a resume differs). All seen in a CPU run with CUDA faked
        (tests/integration/learner/manual_megatron_optim_fake_cuda.py). Refused, naming the key."""
        from megatron.core.optimizer import distrib_optimizer

        if not distrib_optimizer.HAVE_APEX_OR_TE:
            raise RuntimeError(f"{KEY}=megatron: megatron-core without transformer-engine or apex cannot resume its "
                               "optimizer (torch's Adam 'step' is not restored by its checkpoint load): install "
                               "transformer-engine, or use optimizer_impl=vt_ray")

    def write_shards(self, tmp: Path, rank: int) -> list[str]:
        """Model and megatron's optimizer state into ``tmp`` (collective); returns the files this rank wrote."""
        from megatron.core import dist_checkpointing

        dist_checkpointing.save(self._sharded(is_loading=False), str(tmp))
        written = [p.name for p in tmp.glob(f"__{rank}_*.distcp")]
        if rank == 0:
            (tmp / MARKER).write_text(json.dumps({KEY: "megatron"}))
            written.append(MARKER)
        return written

    @torch.no_grad()
    def read_shards(self, found: Path) -> None:
        """Restore model and optimizer from ``found`` (collective); refuses a checkpoint of the vt_ray optimizer."""
        from megatron.core import dist_checkpointing

        if not (found / MARKER).exists():
            raise ValueError(f"checkpoint {found} was written with {KEY}=vt_ray (its optimizer state is another "
                             f"format): resume it with {KEY}=vt_ray")
        self._refuse_torch_adam_resume()
        sharded = self._sharded(is_loading=True)
        targets = {key: getattr(s, "data", None) for key, s in sharded["model"].items()}
        loaded = dist_checkpointing.load(sharded, str(found))
        _read_model(loaded["model"], targets)
        self.optimizer.load_state_dict(loaded["optimizer"])
        dist.barrier()


__all__ = ["KEY", "MARKER", "MegatronOptimizer", "ScheduledLr", "ddp_config", "optimizer_config",
           "refuse_megatron_checkpoint", "require_cuda", "trained_modules"]
