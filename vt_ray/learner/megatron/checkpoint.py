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

**The distributed optimizer** (``learner.megatron.distributed_optimizer``, :mod:`~vt_ray.learner.megatron.dist_optim`)
writes the same tensors under the same keys: each parameter's moments (and float32 master) are put together from
the data-parallel slices one parameter at a time and written by one replica (the owner of the parameter's first
element, its replica id's data-parallel index set to 0), and a load reads the whole state of the parameters
that cross this rank's slice and keeps its pieces. So a checkpoint written with it loads without it, and the
other way, and at another DP size.

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
from vt_ray.learner.megatron.dist_optim import DistributedOptimizer
from vt_ray.learner.megatron.vlm import MegatronVL

OPTIM_COMMON = "optim_common_rank{rank}.json"
OPTIMIZER_IMPL = "learner.megatron.optimizer_impl"
# Written next to the shards by optimizer_impl: megatron (megatron_optim.py), whose optimizer state is
# megatron-core's own format: its presence (or absence) refuses a resume across the two optimizers.
MEGATRON_OPTIMIZER_MARKER = "megatron_optimizer.json"


def refuse_megatron_checkpoint(found: Path) -> None:
    """The vt_ray optimizer's load: a checkpoint of megatron's optimizer is another format."""
    if (found / MEGATRON_OPTIMIZER_MARKER).exists():
        raise ValueError(f"checkpoint {found} was written with {OPTIMIZER_IMPL}=megatron (megatron-core's optimizer "
                         f"state format): resume it with {OPTIMIZER_IMPL}=megatron")


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


def _written_here(sharded: Any) -> Any:
    """A sharded tensor (or factory) this data-parallel replica writes: its replica id's data-parallel index (the
    last) set to 0, so it is the main replica of its piece."""
    from dataclasses import replace

    replica = sharded.replica_id
    return replace(sharded, replica_id=(*replica[:-1], 0) if isinstance(replica, tuple) else 0)


def _sharded_sliced(vl: MegatronVL, sliced: DistributedOptimizer, saving: bool
                    ) -> tuple[dict[str, Any], dict[int, str]]:
    """:func:`_sharded_state` for the distributed optimizer: the same keys as a plain AdamW's, from whole
    per-parameter tensors. Saving: every parameter's state is put together on every replica one at a time
    (collective), and kept by the replica that writes it; loading: zeros to read into, for the parameters that
    cross this rank's slice."""
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        make_sharded_optimizer_tensor,
    )

    model_sd = _sharded_model(vl)
    ids = get_param_id_to_sharded_param_map(model_sd, sliced.params)
    keys = {pid: sharded.key for pid, sharded in ids.items()}
    optim: dict[int, dict[str, Any]] = {}
    masters: dict[int, Any] = {}
    for pid, param in enumerate(sliced.params):
        if saving:
            values = sliced.full_state(pid)
            if sliced.layout.writer(pid) != sliced.dp_rank:
                continue
            where = _written_here(ids[pid])
        else:
            if not sliced.layout.touches(pid, sliced.dp_rank):
                continue
            names = ("exp_avg", "exp_avg_sq") + (("master",) if param.dtype != torch.float32 else ())
            values = {name: torch.zeros(param.shape, dtype=torch.float32, device=param.device) for name in names}
            where = ids[pid]
        optim[pid] = {name: make_sharded_optimizer_tensor(where, values[name], f"optimizer.state.{name}")
                      for name in ("exp_avg", "exp_avg_sq")}
        if "master" in values:
            masters[pid] = make_sharded_optimizer_tensor(where, values["master"], "optimizer.state.fp32_param")
    return {"model": model_sd, "optim": optim, "masters": masters}, keys


def _sliced_common(keys: dict[int, str], sliced: DistributedOptimizer) -> dict[str, Any]:
    """:func:`_optim_common` for the distributed optimizer: one step counter for every parameter."""
    assert sliced.adamw is not None
    groups = sliced.adamw.state_dict()["param_groups"]
    return {"steps": {key: sliced.step_count for key in keys.values()},
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in groups]}


def write_shards(vl: MegatronVL, optimizer: torch.optim.Optimizer | DistributedOptimizer, tmp: Path,
                 rank: int) -> list[str]:
    """Model and optimizer shards into ``tmp`` (collective); returns the files this rank wrote."""
    from megatron.core import dist_checkpointing

    if isinstance(optimizer, DistributedOptimizer):
        sharded_state, keys = _sharded_sliced(vl, optimizer, saving=True)
        common_state = _sliced_common(keys, optimizer)
    else:
        sharded_state, keys = _sharded_state(vl, optimizer)
        common_state = _optim_common(keys, optimizer)
    with checkpointing_on_cpu(), _writer_results_in_process():
        dist_checkpointing.save(sharded_state, str(tmp))
    common = tmp / OPTIM_COMMON.format(rank=rank)
    common.write_text(json.dumps(common_state))
    return [common.name, *(p.name for p in tmp.glob(f"__{rank}_*.distcp"))]


def _read_model(loaded: dict[str, Any], targets: dict[str, Any]) -> None:
    for key, tensor in loaded.items():
        target = targets.get(key)
        if isinstance(target, torch.Tensor) and target is not tensor:  # extra state (not tensors) stays as built
            target.copy_(tensor)


@torch.no_grad()
def _read_sliced(vl: MegatronVL, sliced: DistributedOptimizer, found: Path) -> None:
    """:func:`read_shards` for the distributed optimizer: the model whole, the optimizer state of the parameters
    crossing this rank's slice whole, of which it keeps its pieces."""
    from megatron.core import dist_checkpointing

    sharded_state, keys = _sharded_sliced(vl, sliced, saving=False)
    targets = {key: getattr(sharded, "data", None) for key, sharded in sharded_state["model"].items()}
    wanted = list(sharded_state["optim"])  # the result also holds what the checkpoint's common dict has there
    with checkpointing_on_cpu():  # each replica reads only the parameters crossing its slice: no full cover
        loaded = dist_checkpointing.load(sharded_state, str(found), validate_access_integrity=False)
    _read_model(loaded["model"], targets)
    sliced.masters_from_params()  # a float32 parameter is its own master; a bf16 one's is read next
    for pid in wanted:
        master = {"master": loaded["masters"][pid]} if pid in loaded["masters"] else {}
        sliced.load_full(pid, {**loaded["optim"][pid], **master})
    steps, groups = _saved_steps(found)
    missing = [key for key in keys.values() if key not in steps]
    if missing:
        raise KeyError(f"checkpoint {found}: no AdamW step counter for {missing[0]!r}")
    # one counter for the slice: the parameters' (equal, unless a plain run at DP 1 never stepped one)
    sliced.set_step(max(steps[key] for key in keys.values()))
    assert sliced.adamw is not None
    for group, saved in zip(sliced.adamw.param_groups, groups):
        group.update(saved)
    dist.barrier()


@torch.no_grad()
def read_shards(vl: MegatronVL, optimizer: torch.optim.Optimizer | DistributedOptimizer, found: Path,
                rank: int) -> None:
    """Restore model and optimizer from ``found`` (collective). Parameters are copied in place, so the
    optimizer keeps pointing at them."""
    from megatron.core import dist_checkpointing

    refuse_megatron_checkpoint(found)  # learner.megatron.optimizer_impl: megatron's format, not this one
    if isinstance(optimizer, DistributedOptimizer):
        _read_sliced(vl, optimizer, found)
        return
    sharded_state, keys = _sharded_state(vl, optimizer)
    targets = {key: getattr(sharded, "data", None) for key, sharded in sharded_state["model"].items()}
    masters = {index: sharded.data for index, sharded in sharded_state["masters"].items()}
    with checkpointing_on_cpu():
        loaded = dist_checkpointing.load(sharded_state, str(found))
    _read_model(loaded["model"], targets)
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
