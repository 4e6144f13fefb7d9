"""Hugging Face <-> Megatron weights: mbridge's Qwen2.5-VL converters for names and layouts, megatron's own
partition dims for the tensor-parallel split and merge.

mbridge (0.15.1, installed without its dependencies) knows Qwen2.5-VL's mapping: q/k/v interleaved per query
group into ``linear_qkv``, gate/up stacked into ``linear_fc1``, for the language model (``language_model.*``) and
the vision tower (``vision_model.*`` <-> ``visual.*``, :mod:`vt_ray.learner.megatron.vision`; the ``prefix``
argument below). Two things around it are ours:

* mbridge reads a transformers-4 config (language keys at the top level, ``rope_scaling``); transformers 5
  nests them under ``text_config`` with ``rope_parameters``. :func:`make_bridge` gives it a copy in the old
  layout.
* mbridge names the transformer-engine model (norms fused into the linears: ``linear_qkv.layer_norm_weight``,
  ``linear_fc1.layer_norm_weight``) under a ``language_model.`` prefix; the local spec keeps separate
  ``input_layernorm`` / ``pre_mlp_layernorm`` modules. :func:`bridge_name` maps our names to its names.

The TP split is by each parameter's ``partition_dim`` (megatron sets it with ``tensor_model_parallel``), with
the one layout megatron chooses per rank: a SwiGLU ``linear_fc1`` shard holds this rank's gate rows *then* its
up rows. q/k/v need nothing special: mbridge's layout is grouped by KV head, so contiguous chunks are whole
query groups, which is how ``linear_qkv`` is partitioned.

The bridge methods used (``_weight_name_mapping_mcore_to_hf``, ``_weight_to_mcore_format``,
``_weight_to_hf_format``) are underscore-private in mbridge 0.15.1: its public ``load_weights`` /
``export_weights`` walk a model mbridge built itself, which needs transformer-engine. The version is pinned and
tests/integration/learner/test_megatron_lm.py round-trips every tensor through them.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

_FUSED_NORMS = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
_OUTPUT_LAYER = "language_model.output_layer.weight"
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _transformers4_layout(hf_config: Any) -> Any:
    """A copy of a transformers-5 Qwen2.5-VL config with the language keys also at the top level."""
    cfg = copy.deepcopy(hf_config)
    text = getattr(cfg, "text_config", None)
    if text is None:
        return cfg
    for key, value in text.to_dict().items():
        if key not in ("model_type", "architectures", "dtype", "torch_dtype"):
            object.__setattr__(cfg, key, value)
    rope = dict(getattr(text, "rope_parameters", None) or {})
    object.__setattr__(cfg, "rope_theta", rope.get("rope_theta", 10000.0))
    object.__setattr__(cfg, "rope_scaling", rope)
    return cfg


def make_bridge(hf_config: Any) -> Any:
    """mbridge's Qwen2.5-VL bridge (used for its name mapping and layout converters only: its model builder
    needs transformer-engine). Needs megatron's parallel state initialised."""
    from mbridge import AutoBridge

    bridge = AutoBridge.from_config(_transformers4_layout(hf_config), dtype=torch.float32)
    # mbridge 0.15.1 maps a tied output layer to the embedding by writing into its *class's* name table: a bridge
    # made afterwards for an untied model would map its lm_head to the embedding too. This bridge keeps its own
    # table; the class's goes back to mbridge's default.
    table = type(bridge)._DIRECT_MAPPING
    bridge._DIRECT_MAPPING = dict(table)
    if _OUTPUT_LAYER in table:
        table[_OUTPUT_LAYER] = "lm_head.weight"
    return bridge


LANGUAGE = "language_model"
"""mbridge's name for the language model (the vision tower's is ``vision.PREFIX``)."""


def bridge_name(local_name: str, layer_offset: int = 0, prefix: str = LANGUAGE) -> str:
    """Our parameter name -> mbridge's Megatron name (global layer number, TE-fused norm names), for the
    ``GPTModel`` (``prefix`` ``language_model``) or the Megatron vision tower (``vision_model``)."""
    m = _LAYER.match(local_name)
    if m is None:
        return f"{prefix}.{local_name}"
    layer, rest = int(m.group(1)) + layer_offset, m.group(2)
    return f"{prefix}.decoder.layers.{layer}.{_FUSED_NORMS.get(rest, rest)}"


def _is_glu_fc1(name: str) -> bool:
    return name.endswith(("mlp.linear_fc1.weight", "mlp.linear_fc1.bias"))


def _partition_dim(param: torch.Tensor) -> int:
    """The dimension megatron shards ``param`` along (set next to ``tensor_model_parallel``)."""
    return int(param.partition_dim)  # type: ignore[attr-defined]


def split_for_rank(full: torch.Tensor, param: torch.Tensor, name: str, rank: int, size: int) -> torch.Tensor:
    """This TP rank's piece of a full Megatron-layout tensor, cut along the parameter's ``partition_dim``."""
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = _partition_dim(param)
    if _is_glu_fc1(name):
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(size, dim=dim)[rank], up.chunk(size, dim=dim)[rank]], dim=dim)
    return full.chunk(size, dim=dim)[rank]


def merge_shards(shards: list[torch.Tensor], param: torch.Tensor, name: str) -> torch.Tensor:
    """The inverse of :func:`split_for_rank`: the full tensor from every TP rank's piece, in rank order."""
    if len(shards) == 1 or not getattr(param, "tensor_model_parallel", False):
        return shards[0]
    dim = _partition_dim(param)
    if _is_glu_fc1(name):
        gates, ups = zip(*(s.chunk(2, dim=dim) for s in shards))
        return torch.cat([*gates, *ups], dim=dim)
    return torch.cat(shards, dim=dim)


class HfCheckpoint:
    """Tensors of a safetensors checkpoint directory (one file or an index), read one at a time."""

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        path = Path(path)
        index = path / "model.safetensors.index.json"
        files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
                 else ["model.safetensors"])
        self._handles = [safe_open(str(path / f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)


def _layer_offset(model: Any) -> int:
    """Global number of this pipeline stage's first layer (0 without pipeline parallelism)."""
    layers = getattr(getattr(model, "decoder", None), "layers", None)
    return int(layers[0].layer_number) - 1 if layers else 0


def _tp() -> tuple[int, int, Any]:
    from megatron.core import parallel_state

    return (parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_group())


@torch.no_grad()
def load_hf_weights(model: Any, bridge: Any, checkpoint: HfCheckpoint, prefix: str = LANGUAGE,
                    float32_copies: dict[int, torch.Tensor] | None = None) -> list[str]:
    """Fill this rank's shard of every parameter from the HF checkpoint; returns the HF names it read.
    ``prefix``: which of mbridge's models ``model`` is (the language model, or ``vision.PREFIX``).
    ``float32_copies``: filled with the checkpoint's values in float32 for each parameter that is not float32
    (keyed by ``id(param)``), the master weights of a bf16 model before any rounding to bf16.

    Every rank reads the full tensors it needs and keeps its piece (fine up to a few billion parameters per
    node; a rank-0 read plus scatter is what 72B wants, left for issue 20). A tied output layer on the last
    pipeline stage (megatron's copy of the embedding) reads the embedding's tensor: mbridge maps it there.
    """
    rank, size, _ = _tp()
    offset, used = _layer_offset(model), []
    for name, param in model.named_parameters():
        mcore = bridge_name(name, offset, prefix)
        hf_names = bridge._weight_name_mapping_mcore_to_hf(mcore)
        full = bridge._weight_to_mcore_format(mcore, [checkpoint.get(h) for h in hf_names])
        piece = split_for_rank(full, param, name, rank, size)
        if piece.shape != param.shape:
            raise ValueError(f"{name}: checkpoint gives {tuple(piece.shape)} on TP rank {rank}, the model has "
                             f"{tuple(param.shape)}")
        param.copy_(piece)
        if float32_copies is not None and param.dtype != torch.float32:
            float32_copies[id(param)] = torch.empty_like(param, dtype=torch.float32).copy_(piece)
        used.extend(hf_names)
    return used


@torch.no_grad()
def gather_param(name: str, param: torch.Tensor, bridge: Any, layer_offset: int = 0,
                 prefix: str = LANGUAGE) -> list[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) of one Megatron parameter (q/k/v and gate/up give several), its TP shards merged:
    an all-gather over the TP group, so every TP rank must call it for the same parameter. Each tensor is its
    own copy (mbridge's pieces are views of one tensor; safetensors refuses shared storage)."""
    _, size, group = _tp()
    local = param.detach().contiguous()
    if size > 1 and getattr(param, "tensor_model_parallel", False):
        shards = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(shards, local, group=group)
    else:
        shards = [local]
    full = merge_shards(shards, param, name)
    hf_names, tensors = bridge._weight_to_hf_format(bridge_name(name, layer_offset, prefix), full)
    return [(hf_name, tensor.clone()) for hf_name, tensor in zip(hf_names, tensors)]


def hf_names_of(model: Any, bridge: Any, prefix: str = LANGUAGE) -> dict[str, list[str]]:
    """Megatron parameter name -> the HF checkpoint names it holds (mbridge's mapping), in parameter order."""
    offset = _layer_offset(model)
    return {name: list(bridge._weight_name_mapping_mcore_to_hf(bridge_name(name, offset, prefix)))
            for name, _ in model.named_parameters()}


def layer_offset(model: Any) -> int:
    return _layer_offset(model)


def export_hf_weights(model: Any, bridge: Any, prefix: str = LANGUAGE) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) for every language-model parameter, TP shards merged; every TP rank must iterate
    it (the merge is an all-gather), every rank gets the full tensors. Each is its own copy: training on after
    an export does not change it, and safetensors can save it (no shared storage)."""
    offset = _layer_offset(model)
    for name, param in model.named_parameters():
        yield from gather_param(name, param, bridge, offset, prefix)


def full_hf_state_dict(model: Any, bridge: Any, visual: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """The whole Qwen2.5-VL in checkpoint names: the language model merged from its TP shards (collective, as
    :func:`export_hf_weights`) plus the vision tower's tensors under ``visual.`` (the names ``save_pretrained``
    writes): the Megatron tower's merged and converted by mbridge as the language model's, the HF tower's as
    they are. What a rollout engine or ``save_hf`` needs."""
    from vt_ray.learner.megatron.vision import PREFIX, is_megatron_tower

    state = dict(export_hf_weights(model, bridge))
    if visual is not None and is_megatron_tower(visual):
        state.update(export_hf_weights(visual, bridge, PREFIX))
    elif visual is not None:
        state.update({f"visual.{k}": v.detach().clone() for k, v in visual.state_dict().items()})
    return state
