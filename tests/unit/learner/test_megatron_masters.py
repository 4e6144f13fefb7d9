"""Float32 master weights of a bf16 Megatron model (vt_ray/learner/megatron/optim.py ``Float32Masters``): the
optimizer steps float32 copies, the model holds their bf16 rounding. No process group: pure tensors."""

from __future__ import annotations

import torch

from vt_ray.learner.megatron.optim import Float32Masters


def _bf16_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    model[1].float()  # megatron's local RMSNorm keeps a float32 weight in a bf16 model: its own master
    model[0].weight.tensor_model_parallel = True  # type: ignore[attr-defined]
    model[0].weight.partition_dim = 0  # type: ignore[attr-defined]
    return model


def test_masters_are_float32_copies_and_float32_params_are_their_own() -> None:
    model = _bf16_model()
    masters = Float32Masters(model)
    linear, norm = model[0], model[1]
    assert [m.dtype for m in masters.masters] == [torch.float32] * 4
    assert masters.master_of(norm.weight) is norm.weight and masters.master_of(linear.weight) is not linear.weight
    assert torch.equal(masters.master_of(linear.weight), linear.weight.float())
    # the TP marks the split, merge, grad norm and checkpoint read travel with the copy
    master = masters.master_of(linear.weight)
    assert master.tensor_model_parallel and master.partition_dim == 0  # type: ignore[attr-defined]
    assert [i for i, _ in masters.copies()] == [0, 1]  # the linear's weight and bias, not the float32 norm


def test_gradients_reach_the_masters_in_float32_and_leave_the_model() -> None:
    model = _bf16_model()
    masters = Float32Masters(model)
    model(torch.randn(2, 4, dtype=torch.bfloat16)).float().pow(2).sum().backward()
    bf16_grad = model[0].weight.grad.clone()
    masters.grads_to_masters()
    master = masters.master_of(model[0].weight)
    assert master.grad.dtype == torch.float32 and torch.equal(master.grad, bf16_grad.float())
    assert model[0].weight.grad is None  # freed: the bf16 gradient is not kept beside the float32 one
    assert model[1].weight.grad is not None  # a float32 parameter keeps its own gradient (it is the master)


def test_updates_below_bf16_resolution_accumulate_in_the_master() -> None:
    """AdamW at lr 1e-4 moves a weight of 1.0 by about 1e-4 a step; bf16's spacing at 1.0 is 2^-7 = 7.8e-3
    (2^-8 below it). Stepping the bf16 weight directly loses every update; the master keeps them, and the model
    moves once their sum crosses half a bf16 step."""
    param = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    masters = Float32Masters([param])
    direct = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    opt = torch.optim.AdamW(masters.masters, lr=1e-4, weight_decay=0.0)
    direct_opt = torch.optim.AdamW([direct], lr=1e-4, weight_decay=0.0)
    for step in range(30):
        for p in (param, direct):
            p.grad = torch.ones_like(p)
        masters.grads_to_masters()
        opt.step()
        direct_opt.step()
        masters.masters_to_params()
        if step == 9:
            assert torch.equal(param, torch.ones_like(param))  # 1e-3 moved: below bf16 resolution
            assert masters.masters[0].sub(1 - 10e-4).abs().max() < 1e-6  # the master holds all ten updates
    assert torch.equal(direct, torch.ones_like(direct))  # bf16 AdamW alone never moves it
    assert masters.masters[0].sub(1 - 30e-4).abs().max() < 1e-6
    assert torch.equal(param, masters.masters[0].to(torch.bfloat16)) and (param < 1).all()  # 0.997 -> 0.99609375
