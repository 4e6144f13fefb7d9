"""Per-token log-probs from the Megatron language model, without gathering the vocabulary.

``GPTModel`` given ``labels`` returns megatron's vocab-parallel cross-entropy per token (each TP rank holds a
slice of the vocabulary; the log-sum-exp is all-reduced), so ``-loss`` is log p(label) on every rank, with
gradients, and no rank materialises ``[batch, seq, vocab]`` logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.megatron.multimodal import decoder_input, vision_features
from vt_ray.models.mrope import rope_index


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


def batch_token_logprobs(lm: Any, visual: torch.nn.Module, batch: TrainBatch, hf_config: Any) -> torch.Tensor:
    """[B, L] log-probs of a learner batch's response tokens (0 elsewhere): what
    :func:`vt_ray.learner.logprobs.token_logprobs` gives for the HF model, here with the Megatron language model
    and the HF vision tower ``visual``. Same inputs as the HF learner: ``batch.model_inputs()`` (images as
    one-frame videos) and the released multimodal positions (:func:`vt_ray.models.mrope.rope_index`). Batches
    are right-padded, so causal attention keeps padding out of every real token's context."""
    inputs = batch.model_inputs()
    ids, vision = inputs["input_ids"], hf_config.vision_config
    videos = inputs.get("video_grid_thw")
    positions, _ = rope_index(ids, inputs["mm_token_type_ids"], None, videos, inputs.get("second_per_grid_ts"),
                              inputs["attention_mask"], spatial_merge=int(vision.spatial_merge_size),
                              tokens_per_second=float(vision.tokens_per_second))
    features = {}
    if videos is not None:
        features[hf_config.video_token_id] = vision_features(visual, inputs["pixel_values_videos"], videos)
    logprobs = next_token_logprobs(lm, ids, positions, decoder_input(lm, ids, features))
    full = F.pad(logprobs, (1, 0))  # position t holds log p(token t | tokens < t)
    return torch.where(batch.response_mask.bool(), full, torch.zeros_like(full))
