"""Qwen2.5-VL's vision tower in Megatron, tensor-parallel (``learner.megatron.vision_impl: megatron``).

The model is mbridge's ``Qwen2_5VisionModel`` (megatron-core's ``TransformerBlock`` + ``MultimodalProjector``:
patch embedding, 2D rotary embedding, window attention with full-attention blocks at
``fullatt_block_indexes``, the 2x2 patch merger), the same package whose name mapping and layout converters
already load the language model (:mod:`vt_ray.learner.megatron.weights`). What is ours:

* the configs from the checkpoint's ``vision_config`` (mbridge's ``get_vision_model_config`` writes in the
  7B/72B tower's numbers: 32 layers, 16 heads, hidden 1280);
* a layer spec without transformer-engine (mbridge's builder asks for TE's ViT spec): megatron's local GPT
  layer (RMSNorm, SwiGLU with biases here, q/k/v and output biases), no attention mask, and
  :class:`vt_ray.learner.megatron.cpu.SDPACoreAttention`, which runs the packed windows and frames the tower
  sends (``qkv_format="thd"``) one SDPA call per window, as the HF tower's SDPA path does;
* :func:`_self_attention`: mbridge's ``Qwen2_5VLSelfAttention`` (absolute 2D RoPE on packed tokens; megatron's
  own applies RoPE per packed sequence) taking the ``rotary_pos_cos_sin`` argument megatron-core 0.16 passes,
  which mbridge 0.15.1 predates (always None here).

Tensor parallelism is megatron's: q/k/v, the MLP and the merger's first linear split by columns, the output
projections by rows (all-reduced), so every TP rank ends with the same, full features. Norms, the patch
embedding and the row-parallel biases are replicated and get the same gradient on every TP rank.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn.functional as F

from vt_ray.learner.megatron.cpu import SDPACoreAttention, cuda_device_is_cpu

PREFIX = "vision_model"
"""mbridge's name for the tower: its mapping knows ``vision_model.*`` <-> ``visual.*``."""

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


@functools.cache
def _self_attention() -> type:
    """mbridge's Qwen2.5-VL vision attention, accepting megatron-core 0.16's extra forward argument."""
    from mbridge.models.qwen2_5_vl.attention import Qwen2_5VLSelfAttention

    class VisionSelfAttention(Qwen2_5VLSelfAttention):
        def forward(self, *args: Any, rotary_pos_cos_sin: Any = None, **kwargs: Any) -> Any:
            if rotary_pos_cos_sin is not None:
                raise NotImplementedError("the vision tower applies its RoPE from rotary_pos_emb")
            return super().forward(*args, **kwargs)

    return VisionSelfAttention


def check_tensor_parallel(vision: Any, tensor_parallel: int) -> None:
    """TP must divide the tower's heads and MLP width (megatron splits both); named by the recipe key."""
    for what, n in {"attention heads": vision.num_heads, "MLP width": vision.intermediate_size}.items():
        if n % tensor_parallel:
            raise ValueError(f"learner.megatron.tensor_parallel_size: {tensor_parallel} does not divide the vision "
                             f"tower's {n} {what} (learner.megatron.vision_impl=megatron)")


def vision_configs(hf_config: Any, tensor_parallel: int = 1, dtype: torch.dtype = torch.float32,
                   use_te: bool = False) -> tuple[Any, Any]:
    """(tower, merger) ``TransformerConfig``s from ``hf_config.vision_config``. The tower's keeps one pipeline
    stage (it lives whole on the first); the merger's is a copy with a GELU MLP ``4 hidden -> 4 hidden ->
    out_hidden`` (``ffn_hidden_size`` is its width, ``hidden_size`` its output)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from vt_ray.learner.megatron.model import _filled_from_checkpoint

    vision = hf_config.vision_config
    check_tensor_parallel(vision, tensor_parallel)
    if vision.hidden_act not in _ACTIVATIONS:
        raise ValueError(f"vision tower activation {vision.hidden_act!r}: only {sorted(_ACTIVATIONS)}")
    fused = use_te and torch.cuda.is_available()
    config = TransformerConfig(
        num_layers=vision.depth, hidden_size=vision.hidden_size, ffn_hidden_size=vision.intermediate_size,
        num_attention_heads=vision.num_heads, num_query_groups=vision.num_heads,
        kv_channels=vision.hidden_size // vision.num_heads,
        normalization="RMSNorm", layernorm_epsilon=1e-6,  # the HF tower's norms (block and merger) use 1e-6
        gated_linear_unit=True, activation_func=_ACTIVATIONS[vision.hidden_act],
        add_bias_linear=True, add_qkv_bias=True, hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=1, sequence_parallel=False,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        perform_initialization=True, init_method=_filled_from_checkpoint,  # marks TP params; loaded next
        output_layer_init_method=_filled_from_checkpoint,
        bias_activation_fusion=fused, bias_dropout_fusion=fused, gradient_accumulation_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, apply_rope_fusion=False,
    )
    # What mbridge's Qwen2_5VisionModel reads from its config beyond megatron's fields.
    for key, value in {"spatial_merge_size": vision.spatial_merge_size, "patch_size": vision.patch_size,
                       "temporal_patch_size": vision.temporal_patch_size, "in_channels": vision.in_channels,
                       "fullatt_block_indexes": list(vision.fullatt_block_indexes),
                       "_qwen2_5_vl_window_size": vision.window_size, "seq_length": 1}.items():
        setattr(config, key, value)
    merger = copy.deepcopy(config)
    merger.gated_linear_unit, merger.activation_func = False, F.gelu
    merger.ffn_hidden_size = vision.hidden_size * vision.spatial_merge_size**2
    merger.hidden_size = vision.out_hidden_size
    merger.bias_activation_fusion = False
    return config, merger


def layer_spec(use_te: bool) -> Any:
    """The tower's layer ``ModuleSpec``: megatron's local GPT layer with SDPA (packed windows), or TE's ViT layer
    (norms fused into the linears: names ``*.layer_norm_weight``, mbridge's; not run here), both unmasked and
    with the vision attention."""
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer.enums import AttnMaskType

    if use_te:
        from megatron.core.models.vision.vit_layer_specs import get_vit_layer_with_transformer_engine_spec

        spec = get_vit_layer_with_transformer_engine_spec()
    else:
        spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    spec.submodules.self_attention.module = _self_attention()
    spec.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.no_mask}
    return spec


def build_vision_model(hf_config: Any, tensor_parallel: int = 1, dtype: torch.dtype = torch.float32,
                       use_te: bool = False) -> torch.nn.Module:
    """This TP rank's shard of the tower (parameters uninitialised until
    ``weights.load_hf_weights(model, bridge, checkpoint, prefix=PREFIX)``). Called as the HF tower is:
    ``model(pixel_values, grid_thw=grid_thw)`` -> ``[n_tokens, out_hidden]`` features, full on every TP rank.
    Needs megatron's parallel state."""
    from mbridge.models.qwen2_5_vl.vision_model import Qwen2_5VisionModel
    from megatron.core.transformer.mlp import MLPSubmodules

    if use_te:
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear

        column, row = TEColumnParallelLinear, TERowParallelLinear
    else:
        from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

        column, row = ColumnParallelLinear, RowParallelLinear
    config, merger = vision_configs(hf_config, tensor_parallel, dtype, use_te)
    with cuda_device_is_cpu():
        model = Qwen2_5VisionModel(config, layer_spec(use_te), merger, MLPSubmodules(linear_fc1=column, linear_fc2=row),
                                   projection_type="mlp", pre_process=True, post_process=True)
    return model


def is_megatron_tower(module: torch.nn.Module) -> bool:
    """Whether ``module`` is this Megatron tower (a megatron module) and not the HF one (or the empty module of
    a later pipeline stage)."""
    from megatron.core.transformer.module import MegatronModule

    return isinstance(module, MegatronModule)
