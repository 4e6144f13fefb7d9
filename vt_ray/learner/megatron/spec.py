"""The transformer layer spec: transformer-engine modules when CUDA and TE are there, local modules elsewhere."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from vt_ray.learner.megatron.cpu import SDPACoreAttention


def transformer_engine_usable() -> bool:
    """TE layers need CUDA and the ``transformer_engine`` package (not installed in the CPU profile)."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def use_transformer_engine(impl: str) -> bool:
    """``learner.megatron.transformer_impl`` -> whether to build TE layers (``auto``: when usable)."""
    if impl == "auto":
        return transformer_engine_usable()
    if impl not in ("transformer_engine", "local"):
        raise ValueError(f"unknown transformer_impl {impl!r} (auto | transformer_engine | local)")
    return impl == "transformer_engine"


def layer_spec(use_te: bool | None = None) -> Any:
    """A GPT layer ``ModuleSpec`` for Qwen2.5-VL's language model (RMSNorm, SwiGLU, q/k/v bias).

    ``use_te=None`` chooses TE when :func:`transformer_engine_usable`. The local spec keeps megatron's own
    linears and norms and swaps only the core attention for :class:`SDPACoreAttention` (vt_ray/learner/megatron/
    cpu.py says why). The TE spec fuses the pre-attention and pre-MLP norms into ``linear_qkv``/``linear_fc1``
    (parameter names ``*.layer_norm_weight``), which :mod:`vt_ray.learner.megatron.weights` maps either way.
    """
    from megatron.core.models.gpt import gpt_layer_specs

    if use_te is None:
        use_te = transformer_engine_usable()
    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
