"""Megatron-core language model for Qwen2.5-VL (issue 20, first slice): build, load, export, log-probs.

One job per module: :mod:`.cpu` (the small fixes that let megatron-core's local modules run without CUDA),
:mod:`.spec` (layer spec: transformer-engine on GPU, local + SDPA attention elsewhere), :mod:`.parallel`
(process groups), :mod:`.model` (a ``GPTModel`` with Qwen2.5-VL's shape and multimodal RoPE),
:mod:`.weights` (HF <-> Megatron through mbridge's converters, split and merged over tensor-parallel ranks by
megatron's own partition dims), :mod:`.logprobs` (per-token log-probs from vocab-parallel logits).

The vision tower stays the Hugging Face module in this slice; ``learner.backend: megatron`` is not registered
yet (docs/megatron.md says what is left). megatron-core is imported only inside these modules.
"""
