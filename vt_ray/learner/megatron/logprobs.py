"""Per-token log-probs from the Megatron language model, without gathering the vocabulary.

``GPTModel`` given ``labels`` returns megatron's vocab-parallel cross-entropy per token (each TP rank holds a
slice of the vocabulary; the log-sum-exp is all-reduced), so ``-loss`` is log p(label) on every rank, with
gradients, and no rank materialises ``[batch, seq, vocab]`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.megatron import context, multimodal
from vt_ray.learner.megatron.multimodal import decoder_input, pad_sequence, vision_features
from vt_ray.models.mrope import rope_index


def causal_mask(seq_len: int) -> torch.Tensor:
    """Megatron's boolean mask (True = masked). The SDPA and TE attention use their causal kernels and ignore it;
    megatron's own ``DotProductAttention`` reads it."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool), diagonal=1)


def next_token_logprobs(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor,
                        decoder_input: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L-1]: log p(input_ids[:, t+1] | input_ids[:, :t+1]). ``position_ids`` are Qwen2.5-VL's multimodal
    positions, [3, B, L] (text-only: three equal rows); ``decoder_input`` the embeddings with image/video
    features merged in (:func:`vt_ray.learner.megatron.multimodal.decoder_input`), None for text only. With
    sequence (or context) parallelism the sequence is padded for the forward (:func:`.multimodal.pad_sequence`);
    with context parallelism ``decoder_input`` is this CP rank's part and the result is gathered back."""
    length = input_ids.shape[1]
    input_ids, position_ids = pad_sequence(model, input_ids), pad_sequence(model, position_ids)
    if decoder_input is None and (model.config.sequence_parallel or model.config.context_parallel_size > 1):
        decoder_input = multimodal.decoder_input(model, input_ids, {})  # the embedding does not split it here
    labels = context.split(torch.roll(input_ids, -1, dims=1), 1)
    loss = model(input_ids, position_ids, causal_mask(input_ids.shape[1]).to(input_ids.device), labels=labels,
                 decoder_input=decoder_input)
    return -context.gather_sequence(loss)[:, : length - 1].float()


def batch_token_logprobs(lm: Any, visual: torch.nn.Module, batch: TrainBatch, hf_config: Any,
                         device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, L] log-probs of a learner batch's response tokens (0 elsewhere): what
    :func:`vt_ray.learner.logprobs.token_logprobs` gives for the HF model, here with the Megatron language model
    and the HF vision tower ``visual``. Same inputs as the HF learner: ``batch.model_inputs()`` (images as
    one-frame videos) and the released multimodal positions (:func:`vt_ray.models.mrope.rope_index`). Batches
    are right-padded, so causal attention keeps padding out of every real token's context."""
    return batch_logprobs_and_entropy(lm, visual, batch, hf_config, None, device)[0]


def batch_logprobs_and_entropy(lm: Any, visual: torch.nn.Module, batch: TrainBatch, hf_config: Any,
                               entropy: str | None, device: torch.device | str = "cpu", dedup_videos: bool = False
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`batch_token_logprobs`, plus the per-token entropy [B, L] when ``entropy`` is "metric" (no
    gradient) or "grad" (an entropy bonus), as :func:`vt_ray.learner.logprobs.token_logprobs_and_entropy`.
    Without entropy the vocab-parallel cross-entropy gives the log-probs; with it the forward returns this
    rank's vocabulary slice of the logits and both come from it (:func:`vocab_parallel_entropy`).
    ``dedup_videos``: one vision-tower pass per distinct video (:func:`.multimodal.vision_features`)."""
    inputs = stage_inputs(lm, visual, batch, hf_config, entropy, device, dedup_videos)
    output = lm(inputs.ids, inputs.positions, causal_mask(inputs.ids.shape[1]).to(inputs.ids.device),
                labels=inputs.labels, decoder_input=inputs.embeddings())
    return logprobs_from_output(output, inputs, entropy)


@dataclass
class StageInputs:
    """What one forward of the language model needs on every pipeline stage: token ids and multimodal
    positions (RoPE is applied in every layer; both padded for sequence and context parallelism, ``response_mask``
    not; both whole with context parallelism: megatron's rotary embedding keeps its CP rank's positions), the
    labels (the last stage's vocab-parallel cross-entropy, this CP rank's; None when the logits are wanted), and
    ``embeddings()``: the decoder input with the vision tower's features merged in, computed only where it is
    called (the first stage, which holds the embedding and the tower)."""

    ids: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor | None
    response_mask: torch.Tensor
    embeddings: Callable[[], torch.Tensor | None]


def stage_inputs(lm: Any, visual: torch.nn.Module | None, batch: TrainBatch, hf_config: Any,
                 entropy: str | None, device: torch.device | str = "cpu", dedup_videos: bool = False) -> StageInputs:
    """A learner batch as :class:`StageInputs`: ``batch.model_inputs()`` (images as one-frame videos) and the
    released multimodal positions (:func:`vt_ray.models.mrope.rope_index`), as the HF learner computes them."""
    inputs = batch.model_inputs(device)
    ids, vision = inputs["input_ids"], hf_config.vision_config
    videos = inputs.get("video_grid_thw")
    positions, _ = rope_index(ids.cpu(), inputs["mm_token_type_ids"].cpu(), None,
                              None if videos is None else videos.cpu(),
                              None if videos is None else inputs["second_per_grid_ts"].cpu(),
                              inputs["attention_mask"].cpu(), spatial_merge=int(vision.spatial_merge_size),
                              tokens_per_second=float(vision.tokens_per_second))

    def embeddings() -> torch.Tensor:
        features = {}
        if videos is not None:
            assert visual is not None, "the vision tower lives on the first pipeline stage"
            features[hf_config.video_token_id] = vision_features(visual, inputs["pixel_values_videos"], videos,
                                                                 dedup_videos)
        return decoder_input(lm, ids, features)

    mask = batch.response_mask.to(ids.device).bool()
    ids, positions = pad_sequence(lm, ids), pad_sequence(lm, positions.to(ids.device))  # sequence parallelism
    labels = context.split(torch.roll(ids, -1, dims=1), 1) if entropy is None else None
    return StageInputs(ids, positions, labels, mask, embeddings)


def logprobs_from_output(output: torch.Tensor, inputs: StageInputs, entropy: str | None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, L] response-token log-probs (and entropy) from the last stage's output: the per-token cross-entropy
    [B, L] when ``inputs.labels`` were given, else this TP rank's vocabulary slice of the logits [B, L, V/TP]
    (L: the batch's length; a forward padded for sequence parallelism gives more, dropped here). With context
    parallelism, :func:`_context_parallel_logprobs`."""
    if context.size() > 1:
        return _context_parallel_logprobs(output, inputs, entropy)
    mask = inputs.response_mask
    output = output[:, : mask.shape[1]]
    if inputs.labels is not None:
        full = F.pad(-output[:, :-1].float(), (1, 0))  # t: log p(token t | tokens < t)
        return torch.where(mask, full, torch.zeros_like(full)), None
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    logits = output.float()[:, :-1]
    labels = inputs.ids[:, 1 : mask.shape[1]]
    # megatron's cross-entropy writes into its input: give it a copy, the entropy below still needs the logits.
    logprobs = F.pad(-vocab_parallel_cross_entropy(logits.clone(), labels), (1, 0))
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        ent = F.pad(vocab_parallel_entropy(logits), (1, 0))
    zero = torch.zeros_like(logprobs)
    return torch.where(mask, logprobs, zero), torch.where(mask, ent, zero)


def _context_parallel_logprobs(output: torch.Tensor, inputs: StageInputs, entropy: str | None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`logprobs_from_output` when this rank holds its CP chunks of the sequence: the log-probs (and
    entropy) of the next token at this rank's positions, from its per-token cross-entropy or its vocabulary
    slice of the logits, gathered over the CP group into sequence order (:func:`.context.gather_sequence`: every CP
    rank then computes the same loss on the whole ``[B, L]``, and the backward keeps each rank's own tokens)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    mask = inputs.response_mask
    ent = None
    if inputs.labels is not None:
        next_lp = -output.float()  # [B, L/CP]: log p(the next token) at this rank's positions
    else:
        logits = output.float()
        labels = context.split(torch.roll(inputs.ids, -1, dims=1), 1)
        next_lp = -vocab_parallel_cross_entropy(logits.clone(), labels)  # it writes into its input
        with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
            ent = F.pad(context.gather_sequence(vocab_parallel_entropy(logits))[:, : mask.shape[1] - 1], (1, 0))
    logprobs = F.pad(context.gather_sequence(next_lp)[:, : mask.shape[1] - 1], (1, 0))  # t: log p(token t | < t)
    zero = torch.zeros_like(logprobs)
    return torch.where(mask, logprobs, zero), None if ent is None else torch.where(mask, ent, zero)


def vocab_parallel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the full vocabulary from this TP rank's slice ``[..., vocab / TP]``.

    H = log sum exp(s) - sum exp(s) s / sum exp(s), with s the logits minus their global maximum. The two sums
    are all-reduced over the TP group by megatron's ``reduce_from_tensor_model_parallel_region`` (all-reduce
    forward, identity backward): every rank computes the same H, and each rank's backward reaches its own
    slice's logits, which is the gradient of H with respect to them."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    group = parallel_state.get_tensor_model_parallel_group()
    peak = logits.detach().max(-1, keepdim=True).values
    if dist.get_world_size(group) > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - peak
    exp = shifted.exp()
    sum_exp = reduce_from_tensor_model_parallel_region(exp.sum(-1))
    weighted = reduce_from_tensor_model_parallel_region((exp * shifted).sum(-1))
    return sum_exp.log() - weighted / sum_exp
