"""Per-token log-probs from the Megatron language model, without gathering the vocabulary.

``GPTModel`` given ``labels`` returns megatron's vocab-parallel cross-entropy per token (each TP rank holds a
slice of the vocabulary; the log-sum-exp is all-reduced), so ``-loss`` is log p(label) on every rank, with
gradients, and no rank materialises ``[batch, seq, vocab]`` logits.
"""

from __future__ import annotations

from typing import Any

import torch


def causal_mask(seq_len: int) -> torch.Tensor:
    """Megatron's boolean mask (True = masked). The SDPA and TE attention use their causal kernels and ignore it;
    megatron's own ``DotProductAttention`` reads it."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool), diagonal=1)


def next_token_logprobs(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor,
                        decoder_input: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L-1]: log p(input_ids[:, t+1] | input_ids[:, :t+1]). ``position_ids`` are Qwen2.5-VL's multimodal
    positions, [3, B, L] (text-only: three equal rows); ``decoder_input`` the embeddings with image/video
    features merged in (:func:`vt_ray.learner.megatron.multimodal.decoder_input`), None for text only."""
    labels = torch.roll(input_ids, -1, dims=1)
    loss = model(input_ids, position_ids, causal_mask(input_ids.shape[1]).to(input_ids.device), labels=labels,
                 decoder_input=decoder_input)
    return -loss[:, :-1].float()
