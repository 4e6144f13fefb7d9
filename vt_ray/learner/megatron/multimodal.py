"""Image and video tokens into the Megatron language model, from the vision tower.

The tower is the HF module (``model.visual``: same weights, same code as the FSDP2 learner) or the Megatron one
(``learner.megatron.vision_impl: megatron``, :mod:`vt_ray.learner.megatron.vision`), called the same way and
giving the same features; what Megatron needs is Qwen2.5-VL's merge step: the placeholder tokens' embeddings
are replaced by the tower's features, in sequence order, before the decoder. ``GPTModel(decoder_input=...)``
takes those embeddings instead of running its own embedding layer. Every TP rank runs the tower (its copy, or
its shard) on the same pixels.
"""

from __future__ import annotations

from typing import Any

import torch


def sequence_multiple(lm: Any) -> int:
    """What the sequence length must be a multiple of: the TP size with sequence parallelism (the decoder's input
    is split into equal slices, one per TP rank), times 2 CP with context parallelism (2 CP equal chunks,
    :mod:`vt_ray.learner.megatron.context`), else 1."""
    config = lm.config
    tp = int(config.tensor_model_parallel_size) if config.sequence_parallel else 1
    cp = int(config.context_parallel_size)
    return tp * (2 * cp if cp > 1 else 1)


def pad_sequence(lm: Any, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (token ids [B, L] or positions [3, B, L]) right-padded with zeros along its last dimension to a
    multiple of :func:`sequence_multiple`. Batches are right-padded already and attention is causal, so the extra
    tokens never reach a real token's output; callers drop their outputs."""
    extra = -tensor.shape[-1] % sequence_multiple(lm)
    return torch.nn.functional.pad(tensor, (0, extra)) if extra else tensor


def decoder_input(lm: Any, input_ids: torch.Tensor, features: dict[int, torch.Tensor]) -> torch.Tensor:
    """[L, B, hidden] embeddings of ``input_ids`` ([B, L]) with each placeholder token id in ``features``
    replaced by its rows (``[n, hidden]``, in batch-major sequence order: HF's ``masked_scatter`` order).

    With sequence parallelism: ``input_ids`` padded by :func:`pad_sequence` and this TP rank's slice of the
    sequence, ``[L / TP, B, hidden]`` (megatron's ``scatter_to_sequence_parallel_region``: its backward
    all-gathers the slices' gradients, so every TP rank's vision tower gets the full gradient, as without).

    With context parallelism: this CP rank's tokens (:func:`.context.split`; then the sequence-parallel slice of
    those), the features merged first, so every CP rank runs the tower on all the pixels. Its tower then gets the
    gradient of its own tokens only; the sum over the CP group (the data-parallel sum runs over data x context
    parallel ranks) is the full one."""
    input_ids = pad_sequence(lm, input_ids)
    embeddings = lm.embedding(input_ids=input_ids, position_ids=None).transpose(0, 1)  # [B, L, hidden]
    for token_id, rows in features.items():
        mask = input_ids == token_id
        if int(mask.sum()) != rows.shape[0]:
            raise ValueError(f"{int(mask.sum())} placeholder tokens (id {token_id}) but {rows.shape[0]} feature rows")
        embeddings = embeddings.masked_scatter(mask[..., None], rows.to(embeddings.dtype))
    embeddings = embeddings.transpose(0, 1).contiguous()
    if lm.config.context_parallel_size > 1:
        from vt_ray.learner.megatron import context

        embeddings = context.split(embeddings, 0)
    if not lm.config.sequence_parallel:
        return embeddings
    from megatron.core.tensor_parallel import scatter_to_sequence_parallel_region

    # the scatter returns a view, which would keep the full embeddings alive through the forward: megatron's
    # embedding clones its slice for the same reason (clone_scatter_output_in_embedding)
    return scatter_to_sequence_parallel_region(embeddings).clone()


def vision_features(visual: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor,
                    dedup: bool = False) -> torch.Tensor:
    """[n_tokens, hidden] merged patch features of the Qwen2.5-VL vision tower (HF or Megatron), all images (or
    videos) in order. ``dedup`` (``learner.dedup_videos``): the tower sees each distinct video once and its features are
    repeated for every copy (a GRPO group's responses share one video), as
    :mod:`vt_ray.learner.vision_dedup` does for the FSDP2 learner's HF model."""
    from vt_ray.learner.vision_dedup import distinct_videos, select_videos

    if dedup and len(grid_thw) > 1:
        first, inverse = distinct_videos(pixel_values, grid_thw)
        if len(first) < len(inverse):
            features = vision_features(visual, select_videos(pixel_values, grid_thw, first), grid_thw[first])
            merge = int(getattr(visual, "spatial_merge_size", 2))
            parts = features.split((grid_thw[first].prod(-1) // merge**2).tolist())
            return torch.cat([parts[u] for u in inverse])
    out = visual(pixel_values.to(next(visual.parameters()).dtype), grid_thw=grid_thw)
    return out.pooler_output if hasattr(out, "pooler_output") else out
