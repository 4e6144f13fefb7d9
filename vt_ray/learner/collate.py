"""Examples -> one :class:`~vt_ray.learner.batch.TrainBatch`: the processor runs once per prompt (or not at all when
the rollout worker encoded it and the pixels are by reference), prompt + response ids are right-padded, and the
loss mask covers exactly the response tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vt_ray.learner.batch import Example, PixelRefs, TrainBatch, pad_right
from vt_ray.prompts.encode import EncodedPrompt, encode_prompt


def collate(processor: Any, examples: Sequence[Example]) -> TrainBatch:
    """Right-padded batch of prompt + response sequences; loss mask on the response tokens only."""
    if not examples:
        raise ValueError("collate needs at least one example")
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token")
    token_keys = set(examples[0].token_extras)
    seq_keys = set(examples[0].seq_extras)
    with_behaviour = examples[0].behaviour_logprobs is not None
    rows: list[dict[str, torch.Tensor]] = []
    pixels, grids, seconds, image_pixels, image_grids = [], [], [], [], []
    by_reference = examples[0].encoded is not None
    ref_index: dict[Any, int] = {}  # pixel reference -> its index in PixelRefs.refs (one per prompt)
    ref_rows: list[int] = []
    # The G responses of one prompt share its frames object: run the processor once per prompt, not per response
    # (it was most of a GRPO step's driver time). Keyed by identity: the examples keep every key object alive.
    encoded: dict[tuple[int, int, str, str], dict[str, torch.Tensor]] = {}
    for ex in examples:
        if set(ex.token_extras) != token_keys or set(ex.seq_extras) != seq_keys:
            raise ValueError(f"example {ex.uid!r}: extras differ from the first example's")
        if (ex.behaviour_logprobs is not None) != with_behaviour:
            raise ValueError(f"example {ex.uid!r}: behaviour_logprobs given for some examples only")
        if len(ex.response_ids) == 0:
            raise ValueError(f"example {ex.uid!r}: empty response")
        if (ex.encoded is not None) != by_reference:
            raise ValueError(f"example {ex.uid!r}: pixels by reference for some examples only")
        if ex.encoded is not None:
            enc = _by_reference(ex.encoded)
            ref_rows.append(ref_index.setdefault(ex.encoded.pixels, len(ref_index)))
        else:
            if ex.frames is None:
                raise ValueError(f"example {ex.uid!r}: neither frames nor encoded inputs")
            cache_key = (id(ex.frames), id(ex.video_metadata), ex.prompt, ex.media)
            if cache_key not in encoded:
                encoded[cache_key] = encode_prompt(processor, ex.prompt, ex.frames, ex.video_metadata, ex.media)
            enc = encoded[cache_key]
        prompt_ids = enc["input_ids"][0]
        response = torch.as_tensor(list(ex.response_ids), dtype=torch.long)
        n_prompt, n_resp = len(prompt_ids), len(response)
        trained = torch.ones(n_resp)
        if ex.loss_mask is not None:
            if len(ex.loss_mask) != n_resp:
                raise ValueError(f"example {ex.uid!r}: loss_mask has {len(ex.loss_mask)} values for {n_resp} "
                                 "response tokens")
            trained = torch.as_tensor(list(ex.loss_mask), dtype=torch.float32)
        row = {
            "input_ids": torch.cat([prompt_ids, response]),
            "attention_mask": torch.ones(n_prompt + n_resp, dtype=torch.long),
            "response_mask": torch.cat([torch.zeros(n_prompt), trained]),
        }
        if "mm_token_type_ids" in enc:
            row["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"][0], torch.zeros(n_resp, dtype=torch.long)])
        for key in token_keys:
            values = torch.as_tensor(list(ex.token_extras[key]), dtype=torch.float32)
            if len(values) != n_resp:
                raise ValueError(f"example {ex.uid!r}: {key} has {len(values)} values for {n_resp} response tokens")
            row["x:" + key] = torch.cat([torch.zeros(n_prompt), values])
        if ex.behaviour_logprobs is not None:  # the same as with_behaviour (checked above)
            values = torch.as_tensor(list(ex.behaviour_logprobs), dtype=torch.float32)
            if len(values) != n_resp:
                raise ValueError(f"example {ex.uid!r}: behaviour_logprobs has {len(values)} values for {n_resp} "
                                 "response tokens")
            row["behaviour_logprobs"] = torch.cat([torch.zeros(n_prompt), values])
        rows.append(row)
        if ex.media == "image":
            image_pixels.append(enc["pixel_values"])
            image_grids.append(enc["image_grid_thw"])
            continue
        pixels.append(enc["pixel_values_videos"])
        grids.append(enc["video_grid_thw"])
        seconds.append(enc.get("second_per_grid_ts", torch.ones(1)).float())
    width = max(len(r["input_ids"]) for r in rows)
    patch_dim = (pixels or image_pixels)[0].shape[-1]
    if by_reference:  # placeholders: the learner fills them (TrainBatch.materialised)
        pixels = [torch.zeros(0, patch_dim)] if pixels else []
        image_pixels = [torch.zeros(0, patch_dim)] if image_pixels else []
    has_images = bool(image_pixels)

    def stack(key: str, value: float) -> torch.Tensor:
        return torch.stack([pad_right(r[key][None], width, value)[0] for r in rows])

    return TrainBatch(
        input_ids=stack("input_ids", pad_id),
        attention_mask=stack("attention_mask", 0),
        response_mask=stack("response_mask", 0).float(),
        pixel_values_videos=torch.cat(pixels) if pixels else torch.zeros(0, patch_dim),
        video_grid_thw=torch.cat(grids).long() if grids else torch.zeros(0, 3, dtype=torch.long),
        second_per_grid_ts=torch.cat(seconds) if seconds else torch.zeros(0),
        mm_token_type_ids=stack("mm_token_type_ids", 0) if "mm_token_type_ids" in rows[0] else None,
        pixel_values=torch.cat(image_pixels) if has_images else None,
        image_grid_thw=torch.cat(image_grids).long() if has_images else None,
        is_image=torch.tensor([ex.media == "image" for ex in examples]) if has_images else None,
        image_token_id=int(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")),
        video_token_id=int(processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")),
        token_extras={k: stack("x:" + k, 0).float() for k in sorted(token_keys)},
        seq_extras={k: torch.tensor([float(ex.seq_extras[k]) for ex in examples]) for k in sorted(seq_keys)},
        uids=[ex.uid for ex in examples],
        pad_token_id=int(pad_id),
        behaviour_logprobs=stack("behaviour_logprobs", 0).float() if with_behaviour else None,
        pixel_refs=PixelRefs(list(ref_index), ref_rows) if by_reference else None,
    )


def _by_reference(enc: EncodedPrompt) -> dict[str, torch.Tensor]:
    """An :class:`EncodedPrompt` in the processor's output keys, its pixels as an empty ``[0, D]`` placeholder."""
    dim = enc.patch_dim
    out = {"input_ids": enc.input_ids, "second_per_grid_ts": enc.second_per_grid_ts}
    if enc.mm_token_type_ids is not None:
        out["mm_token_type_ids"] = enc.mm_token_type_ids
    key, grid_key = ("pixel_values", "image_grid_thw") if enc.media == "image" else ("pixel_values_videos",
                                                                                  "video_grid_thw")
    out[key] = torch.zeros(0, dim)
    out[grid_key] = enc.grid_thw
    return out
