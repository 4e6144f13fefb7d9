"""Resumable checkpoints of the Megatron learner through megatron-core's distributed checkpointing.

``dist_checkpointing`` saves a *sharded state dict*: every tensor with its global key and this rank's place in
the global tensor (``ShardedTensor``), so a checkpoint written at one TP size can be read at another. The
language model gives its own (``GPTModel.sharded_state_dict``), and so does the Megatron vision tower
(``vision_impl: megatron``, TP-sharded like the language model); the HF tower's tensors are added as
replicated ``ShardedTensor``s (one writer: the replica with id 0); the torch AdamW state is mapped onto the
parameters' sharding with megatron's ``optim_state_to_sharding_state`` (what its own FP32 optimizer does). The
per-parameter step counter and the param-group hyperparameters are kept out of it (``exclude_keys``, a
``LocalNonpersistentObject``) and written as JSON, so the only pickle megatron writes is its empty common dict.

**Resharding.** Every tensor, the AdamW moments included, is saved under its global key with its place in the
global tensor, so a checkpoint written at one TP/PP layout loads at another (dist_checkpointing reads the
overlapping pieces; tested TP=1 <-> TP=2 in ``tests/integration/learner/test_megatron_lm.py``). The step
counters are keyed by the same global keys (not by the rank's parameter index, which depends on the layout) and
merged over every rank's JSON, so a rank of the new layout finds the counter of each parameter it holds; a
parameter with no counter in the checkpoint fails the load, naming its key.

**Mixed precision.** With a bf16 model the optimizer's parameters are float32 masters
(:class:`~vt_ray.learner.megatron.optim.Float32Masters`): the AdamW moments are mapped onto the *model*
parameter each master copies (megatron's ``MixedPrecisionOptimizer.sharded_state_dict`` does the same), and
the masters themselves are saved under ``optimizer.state.fp32_param.<key>`` with that parameter's sharding, so
a resume restores the float32 state exactly (not the bf16 rounding of it), at any TP/PP layout.

The checkpoint protocol around it (temp dir, manifest, RNG, trainer state, commit) is the FSDP2 learner's
(:func:`vt_ray.learner.checkpoint_io.save_step` / ``load_step``).
"""

from __future__ import annotations

import contextlib
import json
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist

from vt_ray.learner.megatron.cpu import checkpointing_on_cpu
from vt_ray.learner.megatron.vlm import MegatronVL

OPTIM_COMMON = "optim_common_rank{rank}.json"


def _sharded_model(vl: MegatronVL) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    state: dict[str, Any] = dict(vl.lm.sharded_state_dict(prefix="lm."))
    if "visual" in vl.megatron_parts():  # the Megatron tower: TP-sharded, megatron keys it
        tower: Any = vl.visual
        state.update(tower.sharded_state_dict(prefix="visual."))
        return state
    replica = (0, parallel_state.get_tensor_model_parallel_rank(),  # CP ranks hold copies too (megatron's own ids)
               parallel_state.get_data_parallel_rank(with_context_parallel=True))
    for name, tensor in vl.visual.state_dict(keep_vars=True).items():
        key = f"visual.{name}"
        state[key] = ShardedTensor.from_rank_offsets(key, tensor, replica_id=replica)
    return state


def _init_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW's state as its first step creates it (zeros, step 0): the template a load fills in."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not optimizer.state[param]:
                optimizer.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                          "exp_avg_sq": torch.zeros_like(param)}


def _model_params(vl: MegatronVL, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The model parameters in the optimizer's parameter order: those whose sharded keys the optimizer state
    takes (the bf16 parameter of each float32 master, when the model has masters)."""
    if vl.masters is not None:
        return vl.masters.params
    return [p for g in optimizer.param_groups for p in g["params"]]


def _param_map(vl: MegatronVL, model_sd: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[int, Any]:
    """The optimizer's parameter index -> the model parameter's ``ShardedTensor`` (or factory)."""
    from megatron.core.dist_checkpointing.optimizer import get_param_id_to_sharded_param_map

    return get_param_id_to_sharded_param_map(model_sd, _model_params(vl, optimizer))


def _sharded_optim(ids: dict[int, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from megatron.core.dist_checkpointing.optimizer import optim_state_to_sharding_state

    state = optimizer.state_dict()
    optim_state_to_sharding_state(state, ids, exclude_keys=("step",))
    return state


def _sharded_masters(vl: MegatronVL, ids: dict[int, Any]) -> dict[int, Any]:
    """The float32 masters that are copies (a bf16 model), by optimizer parameter index, each under its model
    parameter's key and sharding (several parameters share a key: the layers of a stage are one global
    tensor)."""
    from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

    if vl.masters is None:
        return {}
    return {i: make_sharded_optimizer_tensor(ids[i], master, "optimizer.state.fp32_param")
            for i, master in vl.masters.copies()}


def _sharded_state(vl: MegatronVL, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[int, str]]:
    """The sharded state dict ``dist_checkpointing`` saves and loads (the model's, the optimizer's and the float32
    masters), and the optimizer's parameter index -> the parameter's global checkpoint key (the same at every
    layout; read before a save or load applies, and replaces, the factories)."""
    _init_adamw_state(optimizer)  # a checkpoint before the first step still has every key
    model_sd = _sharded_model(vl)
    ids = _param_map(vl, model_sd, optimizer)
    keys = {pid: sharded.key for pid, sharded in ids.items()}
    return {"model": model_sd, "optim": _sharded_optim(ids, optimizer), "masters": _sharded_masters(vl, ids)}, keys


def _optim_common(keys: dict[int, str], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What is not a tensor: each parameter's AdamW step counter (by global key, ``keys`` from
    :func:`_sharded_state`) and the group hyperparameters."""
    state = optimizer.state_dict()
    return {"steps": {keys[i]: float(s["step"]) for i, s in state["state"].items()},
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]}


def _saved_steps(found: Path) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Every rank's step counters merged (a rank of another layout may hold parameters another rank saved), and
    the param-group hyperparameters (the same on every rank)."""
    steps: dict[str, float] = {}
    groups: list[dict[str, Any]] = []
    for path in sorted(found.glob(OPTIM_COMMON.format(rank="*"))):
        common = json.loads(path.read_text())
        steps.update(common["steps"])
        groups = groups or common["param_groups"]
    return steps, groups


@contextlib.contextmanager
def _writer_results_in_process() -> Iterator[None]:
    """megatron's ``torch_dist`` writer hands its write results back through a ``multiprocessing`` manager queue
    (it starts a spawned server process on a process's first save: 3.5 s measured here) so that an *async* save,
    run in another process, can report. ``dist_checkpointing.save`` is synchronous: the writer runs in this
    process (its per-file workers report through their own fork queue), so an in-process queue carries the
    results the same way."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    with mock.patch.object(filesystem_async, "_results_queue", queue.Queue()):
        yield


def write_shards(vl: MegatronVL, optimizer: torch.optim.Optimizer, tmp: Path, rank: int) -> list[str]:
    """Model and optimizer shards into ``tmp`` (collective); returns the files this rank wrote."""
    from megatron.core import dist_checkpointing

    sharded_state, keys = _sharded_state(vl, optimizer)
    with checkpointing_on_cpu(), _writer_results_in_process():
        dist_checkpointing.save(sharded_state, str(tmp))
    common = tmp / OPTIM_COMMON.format(rank=rank)
    common.write_text(json.dumps(_optim_common(keys, optimizer)))
    return [common.name, *(p.name for p in tmp.glob(f"__{rank}_*.distcp"))]


@torch.no_grad()
def read_shards(vl: MegatronVL, optimizer: torch.optim.Optimizer, found: Path, rank: int) -> None:
    """Restore model and optimizer from ``found`` (collective). Parameters are copied in place, so the
    optimizer keeps pointing at them."""
    from megatron.core import dist_checkpointing

    sharded_state, keys = _sharded_state(vl, optimizer)
    targets = {key: getattr(sharded, "data", None) for key, sharded in sharded_state["model"].items()}
    masters = {index: sharded.data for index, sharded in sharded_state["masters"].items()}
    with checkpointing_on_cpu():
        loaded = dist_checkpointing.load(sharded_state, str(found))
    for key, tensor in loaded["model"].items():
        target = targets.get(key)
        if isinstance(target, torch.Tensor) and target is not tensor:  # extra state (not tensors) stays as built
            target.copy_(tensor)
    for index, tensor in loaded["masters"].items():
        if tensor is not masters[index]:
            masters[index].copy_(tensor)
    if vl.masters is not None:
        vl.masters.masters_to_params()  # the model is the masters rounded (the saved bf16 weights, exactly)
    steps, groups = _saved_steps(found)
    optim = loaded["optim"]
    optim["param_groups"] = [{**g, **c} for g, c in zip(optimizer.state_dict()["param_groups"], groups)]
    for pid, values in optim["state"].items():
        if keys[pid] not in steps:
            raise KeyError(f"checkpoint {found}: no AdamW step counter for {keys[pid]!r}")
        values["step"] = torch.tensor(steps[keys[pid]])
    optimizer.load_state_dict(optim)
    dist.barrier()
