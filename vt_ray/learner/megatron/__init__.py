"""Megatron-core learner for Qwen2.5-VL (issue 20): the language model as a tensor-parallel GPTModel, and the backend.

One job per module: :mod:`.cpu` (the small fixes that let megatron-core's local modules run without CUDA),
:mod:`.spec` (layer spec: transformer-engine on GPU, local + SDPA attention elsewhere), :mod:`.parallel`
(process groups), :mod:`.context` (context parallelism: the sequence split, the K/V and per-token gathers),
:mod:`.model` (a ``GPTModel`` with Qwen2.5-VL's shape and multimodal RoPE),
:mod:`.weights` (HF <-> Megatron through mbridge's converters, split and merged over tensor-parallel ranks by
megatron's own partition dims), :mod:`.logprobs` (per-token log-probs from vocab-parallel logits).

The backend (``learner.backend: megatron``) is :mod:`.backend` over :mod:`.vlm` (the language model's TP
shard plus the HF vision tower, one module), :mod:`.hf_view` (its tensors under the HF model's names, gathered
for the weight stream, export and ``save_hf``) and :mod:`.checkpoint` (megatron's distributed checkpointing).
megatron-core is imported only inside these modules' functions (registering the backend imports none of it).
"""
