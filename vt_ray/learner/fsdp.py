"""FSDP2 for the learner: dtypes, one all-gather unit per transformer block, resharding, tied parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tied_parameter_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that are one shared tensor (e.g. lm_head and the embedding with
    tie_word_embeddings), as groups of two or more."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def reshard_all(model: torch.nn.Module) -> None:
    """Free every FSDP2 unit's unsharded parameters (``FSDPModule.reshard`` is not recursive). After a no-grad
    forward with ``reshard_after_forward=False`` the gathered copies stay registered; resharding restores the
    invariant that outside a forward/backward the modules hold their shards, so an optimizer step can never be
    followed by a forward on stale gathered weights."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _block_classes(model: torch.nn.Module) -> tuple[str, ...]:
    """Transformer blocks to shard one by one: HF lists them as the modules never split across devices."""
    return tuple(getattr(model, "_no_split_modules", None) or ())


def shard_model(
    model: torch.nn.Module, mesh: Any, mp: MixedPrecisionPolicy | None, offload: bool,
    reshard_after_forward: bool = True,
) -> torch.nn.Module:
    """FSDP2: each decoder and vision block is its own all-gather unit, then the root takes the rest."""
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp is not None:
        kwargs["mp_policy"] = mp
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    names = _block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"no transformer blocks ({names}) found in {type(model).__name__}")
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model
