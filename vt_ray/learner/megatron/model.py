"""Qwen2.5-VL's language model as a megatron-core ``GPTModel``.

The shape comes from the Hugging Face ``config.json`` (``text_config`` in transformers 5). What makes it
Qwen2.5-VL's and not a generic GPT: RMSNorm, SwiGLU, bias on q/k/v only, grouped-query attention, untied
``lm_head`` (7B/72B; tied for 3B), and multimodal RoPE (megatron-core's ``position_embedding_type="mrope"``
with the config's ``mrope_section``: the rotary channels are split into temporal/height/width sections, each
rotated by its own row of the ``[3, batch, seq]`` position ids, as ``vt_ray.models.mrope`` computes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vt_ray.learner.megatron.cpu import building_on_cpu
from vt_ray.learner.megatron.spec import block_spec, transformer_engine_usable


@dataclass(frozen=True)
class TextShape:
    """The language-model numbers of a Qwen2.5-VL config that the Megatron model needs."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    tie_embeddings: bool
    max_positions: int

    @classmethod
    def from_hf(cls, config: Any) -> TextShape:
        """From a ``Qwen2_5_VLConfig`` (transformers 5: language keys under ``text_config``)."""
        text = getattr(config, "text_config", config)
        rope = dict(getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {})
        theta = rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))
        tie = bool(getattr(config, "tie_word_embeddings", getattr(text, "tie_word_embeddings", False)))
        heads = text.num_attention_heads
        return cls(vocab=text.vocab_size, hidden=text.hidden_size, intermediate=text.intermediate_size,
                   layers=text.num_hidden_layers, heads=heads, kv_heads=text.num_key_value_heads or heads,
                   head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads, rms_eps=text.rms_norm_eps,
                   rope_theta=float(theta), mrope_section=tuple(rope["mrope_section"]), tie_embeddings=tie,
                   max_positions=text.max_position_embeddings)


def load_hf_config(model_path: str | Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_path))


def _filled_from_checkpoint(weight: torch.Tensor) -> None:
    """Megatron's init hook, doing nothing: the weights are loaded next (vt_ray.learner.megatron.weights)."""


@dataclass(frozen=True)
class Recompute:
    """megatron-core's activation recompute (``learner.activation_checkpointing`` with the
    ``learner.megatron.recompute_*`` keys): ``granularity`` full (whole layers, per ``method`` and
    ``num_layers``) or selective (the core attention)."""

    granularity: str = "full"
    method: str = "uniform"
    num_layers: int = 1

    def config_kwargs(self) -> dict[str, Any]:
        """The ``TransformerConfig`` fields (megatron asks method and layers to be None for selective)."""
        if self.granularity == "selective":
            return {"recompute_granularity": "selective"}
        return {"recompute_granularity": "full", "recompute_method": self.method,
                "recompute_num_layers": self.num_layers}


def transformer_config(shape: TextShape, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                       dtype: torch.dtype = torch.float32, use_te: bool = False,
                       recompute: Recompute | None = None, sequence_parallel: bool = False,
                       context_parallel: int = 1) -> Any:
    """The ``TransformerConfig``. Dropout is 0 (RL fine-tuning, and what the HF model runs with).

    Fused kernels: only the bias-SwiGLU and bias-dropout-add fusions, and only with TE on CUDA (they are CUDA
    kernels). Left off everywhere: gradient-accumulation fusion (writes ``param.main_grad``, which only
    megatron's DDP allocates; we step a torch optimizer), the RoPE fusion (not checked with mrope), the masked
    softmax fusion (for megatron's own attention, which neither spec here uses) and persistent layer norm
    (apex). Without CUDA, parameters are created on the CPU. ``recompute``: activation recompute in training
    (the backward recomputes what the forward did not keep; on CPU under :func:`.cpu.recompute_on_cpu`).
    ``sequence_parallel``: megatron's sequence parallelism (``learner.megatron.sequence_parallel``, TP > 1).
    ``context_parallel``: the CP size (``learner.megatron.context_parallel_size``): with TE on GPU, TE's attention
    exchanges keys and values over megatron's CP group itself (written, not run here: no GPU); on CPU the local
    spec's :class:`~vt_ray.learner.megatron.cpu.SDPACoreAttention` all-gathers them
    (:mod:`vt_ray.learner.megatron.context`)."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    fused = use_te and torch.cuda.is_available()
    config = TransformerConfig(
        num_layers=shape.layers, hidden_size=shape.hidden, ffn_hidden_size=shape.intermediate,
        num_attention_heads=shape.heads, num_query_groups=shape.kv_heads, kv_channels=shape.head_dim,
        normalization="RMSNorm", layernorm_epsilon=shape.rms_eps, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=True, mrope_section=list(shape.mrope_section),
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel,
        sequence_parallel=sequence_parallel, context_parallel_size=context_parallel,
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        # perform_initialization stays on: megatron marks weights ``tensor_model_parallel``/``partition_dim`` only
        # inside its init functions, and the weight split and merge read those marks. The init itself is a
        # no-op: every parameter is overwritten from the checkpoint.
        perform_initialization=True, init_method=_filled_from_checkpoint,
        output_layer_init_method=_filled_from_checkpoint,
        bias_activation_fusion=fused, bias_dropout_fusion=fused,
        gradient_accumulation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        apply_rope_fusion=False,
        # Pipeline stages (megatron's schedules): activations cross stages in the model's dtype; the loss
        # function returns its share of the mini-batch itself, which the schedule must not divide by the
        # micro-batch count (calculate_per_token_loss; the token count it returns is 1).
        pipeline_dtype=dtype, calculate_per_token_loss=True,
        **(recompute.config_kwargs() if recompute else {}),
    )
    # Each micro-batch has its own length: the schedule sends the shape before the activations. Set after
    # construction: __post_init__ refuses it with the default MoE token dispatcher even for a dense model.
    config.variable_seq_lengths = True
    return config


def build_language_model(shape: TextShape, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                         dtype: torch.dtype = torch.float32, use_te: bool | None = None,
                         recompute: Recompute | None = None, sequence_parallel: bool = False) -> Any:
    """This rank's ``GPTModel`` (its TP shard; parameters uninitialised until weights are loaded).

    Needs :func:`vt_ray.learner.megatron.parallel.init_model_parallel` first. With pipeline stages, this
    stage's layers only (the embedding on the first, the output layer on the last); megatron's schedule runs
    them (:mod:`vt_ray.learner.megatron.pipeline`).

    With ``sequence_parallel`` the decoder takes its input split along the sequence, which the embedding does not
    do here (``scatter_embedding_sequence_parallel=False``): the image/video features are merged into the full
    embeddings first and :func:`vt_ray.learner.megatron.multimodal.decoder_input` splits the result. The same
    for context parallelism (megatron's CP group, from :func:`.parallel.init_model_parallel`: its size is read
    from there).
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    if use_te is None:
        use_te = transformer_engine_usable()
    config = transformer_config(shape, tensor_parallel, pipeline_parallel, dtype, use_te, recompute,
                                sequence_parallel, parallel_state.get_context_parallel_world_size())
    with building_on_cpu():
        model = GPTModel(
            config=config, transformer_layer_spec=block_spec(config, use_te), vocab_size=shape.vocab,
            max_sequence_length=shape.max_positions, position_embedding_type="mrope",
            rotary_base=shape.rope_theta, share_embeddings_and_output_weights=shape.tie_embeddings,
            parallel_output=True, scatter_embedding_sequence_parallel=False,
            pre_process=parallel_state.is_pipeline_first_stage(), post_process=parallel_state.is_pipeline_last_stage(),
        )
    return model
