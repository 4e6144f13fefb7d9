"""``learner.megatron.optimizer_impl: megatron`` (vt_ray/learner/megatron/megatron_optim.py): the parts that run
without CUDA. Our config as megatron's ``DistributedDataParallelConfig`` / ``OptimizerConfig`` (both construct on
CPU), our lr schedule on its param groups against the ``LambdaLR`` the vt_ray path uses, the refusal without CUDA
and the refusal to resume across the two optimizers. The DDP wrapper and the optimizer need CUDA: not run here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vt_ray.config.learner import LearnerConfig, MegatronConfig
from vt_ray.learner.megatron import megatron_optim
from vt_ray.learner.schedule import lr_factor, warmup_steps


def _learner(**overrides: object) -> LearnerConfig:
    megatron = MegatronConfig(distributed_optimizer=True, vision_impl="megatron", optimizer_impl="megatron",
                              overlap_grad_reduce=True)
    fields: dict[str, object] = {"lr": 3e-6, "betas": (0.8, 0.95), "eps": 1e-7, "weight_decay": 0.05,
                                 "grad_clip": 2.5, **overrides}
    return LearnerConfig(backend="megatron", megatron=megatron, **fields)  # type: ignore[arg-type]


def test_our_config_becomes_megatrons_ddp_and_optimizer_configs() -> None:
    ddp = megatron_optim.ddp_config(_learner())
    assert (ddp.use_distributed_optimizer, ddp.grad_reduce_in_fp32, ddp.overlap_grad_reduce) == (True, True, True)
    assert (ddp.overlap_param_gather, ddp.average_in_collective) == (False, False)
    opt = megatron_optim.optimizer_config(_learner(param_dtype="bfloat16"))
    assert (opt.optimizer, opt.lr, opt.weight_decay, opt.adam_beta1, opt.adam_beta2, opt.adam_eps) == (
        "adam", 3e-6, 0.05, 0.8, 0.95, 1e-7)
    assert (opt.clip_grad, opt.bf16, opt.params_dtype, opt.fp16) == (2.5, True, torch.bfloat16, False)
    assert opt.use_distributed_optimizer and opt.decoupled_weight_decay  # AdamW, as ours
    plain = megatron_optim.optimizer_config(_learner(grad_clip=0.0), lr=1e-4)
    assert (plain.lr, plain.bf16, plain.params_dtype) == (1e-4, False, torch.float32)
    assert plain.clip_grad == math.inf  # ours: <= 0 measures without clipping; megatron measures only when clipping


def test_the_schedule_sets_each_param_groups_lr_as_lambdalr_does() -> None:
    """The same lr every step as the vt_ray path's ``LambdaLR`` (warmup then cosine to the floor), on every group,
    and across a state_dict round trip (a resume)."""
    lcfg = _learner(warmup_steps=2, min_lr_ratio=0.1)
    total = 6
    param = torch.nn.Parameter(torch.zeros(1))
    adamw = torch.optim.AdamW([param], lr=lcfg.lr)
    warmup = warmup_steps(total, lcfg.warmup_steps, lcfg.warmup_ratio)
    reference = torch.optim.lr_scheduler.LambdaLR(adamw, lambda s: lr_factor(s, warmup, total, lcfg.min_lr_ratio))
    groups = [{"lr": 0.0}, {"lr": 0.0}]  # megatron's optimizer exposes its inner param groups
    schedule = megatron_optim.ScheduledLr.of(lambda: groups, lcfg, total)
    seen = []
    for _ in range(total + 2):
        assert schedule.get_last_lr() == pytest.approx(reference.get_last_lr(), rel=1e-12)
        assert [g["lr"] for g in groups] == pytest.approx(reference.get_last_lr() * 2, rel=1e-12)
        seen.append(schedule.get_last_lr()[0])
        schedule.step()
        reference.step()
    assert seen[0] == pytest.approx(lcfg.lr / 2) and seen[-1] == pytest.approx(lcfg.lr * 0.1)
    resumed = megatron_optim.ScheduledLr.of(lambda: groups, lcfg, total)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.get_last_lr() == schedule.get_last_lr() and groups[0]["lr"] == schedule.get_last_lr()[0]


def test_without_cuda_it_fails_naming_the_key() -> None:
    with pytest.raises(ValueError, match="learner.megatron.optimizer_impl: .*needs CUDA"):
        megatron_optim.require_cuda(cuda_available=False)
    megatron_optim.require_cuda(cuda_available=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="learner.megatron.optimizer_impl"):
            megatron_optim.MegatronOptimizer(None, _learner(), total_steps=1)


def test_a_resume_across_the_two_optimizers_is_refused_naming_the_key(tmp_path: Path) -> None:
    megatron_optim.refuse_megatron_checkpoint(tmp_path)  # the vt_ray optimizer's checkpoint: no marker
    (tmp_path / megatron_optim.MARKER).write_text("{}")
    with pytest.raises(ValueError, match="optimizer_impl=megatron"):
        megatron_optim.refuse_megatron_checkpoint(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    reader = megatron_optim.MegatronOptimizer.__new__(megatron_optim.MegatronOptimizer)  # no CUDA: no DDP
    with pytest.raises(ValueError, match="optimizer_impl=vt_ray"):
        reader.read_shards(plain)


def test_a_bf16_run_casts_the_float32_parameters_and_keeps_the_buffers() -> None:
    """megatron's optimizer mis-maps a param group mixing float32 and bf16 in its checkpoint: in a bf16 run every
    trained parameter becomes bf16 (as megatron's Float16Module casts them), buffers (RoPE frequencies) stay."""
    module = torch.nn.Linear(3, 2).to(torch.bfloat16)
    module.weight.data = module.weight.data.float()  # as megatron's local RMSNorm keeps its weight
    module.register_buffer("inv_freq", torch.ones(2))
    weight = module.weight
    megatron_optim._parameters_to_bf16(module)
    assert module.weight is weight  # the same Parameter: hooks and optimizer references stay valid
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert module.inv_freq.dtype == torch.float32
