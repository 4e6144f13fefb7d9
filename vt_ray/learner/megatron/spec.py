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


class RMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm with the constructor megatron's specs call (``WrappedTorchNorm``'s), marking its weight
    ``sequence_parallel`` as megatron's own norms do. ``WrappedTorchNorm`` refuses sequence parallelism outright;
    the norm itself needs nothing for it (it is per token), only its weight's gradient, which each TP rank
    computes from its own slice of the sequence, must be summed over the TP group before the step
    (:func:`vt_ray.learner.megatron.optim.finalize_grads` reads the mark)."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                 zero_centered_gamma: bool = False, normalization: str = "RMSNorm") -> None:
        if config.normalization != "RMSNorm" or config.layernorm_zero_centered_gamma:
            raise ValueError("vt_ray's local spec has Qwen2.5-VL's RMSNorm only")
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]


def block_spec(config: Any, use_te: bool | None = None) -> Any:
    """The decoder block of this pipeline stage: :func:`layer_spec` for each of its layers, and the final norm
    (the local spec's is :class:`RMSNorm`; megatron's default for a layer spec is ``WrappedTorchNorm``)."""
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if use_te is None:
        use_te = transformer_engine_usable()
    if use_te:
        return layer_spec(True)  # megatron picks TE's final norm for it
    return TransformerBlockSubmodules(layer_specs=[layer_spec(False)] * get_num_layers_to_build(config),
                                      layer_norm=RMSNorm)


def layer_spec(use_te: bool | None = None) -> Any:
    """A GPT layer ``ModuleSpec`` for Qwen2.5-VL's language model (RMSNorm, SwiGLU, q/k/v bias).

    ``use_te=None`` chooses TE when :func:`transformer_engine_usable`. The local spec keeps megatron's own
    linears and swaps the core attention for :class:`SDPACoreAttention` (vt_ray/learner/megatron/cpu.py says why)
    and the norms for :class:`RMSNorm` (the same torch module, usable with sequence parallelism). The TE spec
    fuses the pre-attention and pre-MLP norms into ``linear_qkv``/``linear_fc1`` (parameter names
    ``*.layer_norm_weight``), which :mod:`vt_ray.learner.megatron.weights` maps either way.
    """
    from megatron.core.models.gpt import gpt_layer_specs

    if use_te is None:
        use_te = transformer_engine_usable()
    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    spec.submodules.input_layernorm = RMSNorm
    spec.submodules.pre_mlp_layernorm = RMSNorm
    return spec
