"""The learner's input: prompt (with a video or an image) + response token ids, collated into right-padded tensors.

Every per-token tensor is aligned with ``input_ids``: position ``t`` holds the quantity for token ``t`` (its
log-prob given tokens ``< t``). ``response_mask`` is 1 on response tokens and 0 elsewhere, so SFT and GRPO losses
are masked sums over the same positions the rollout engine sampled; an SFT example's ``loss_mask`` may weight its
response tokens instead (0 = in the context, no loss; W = counted W times). Right padding keeps the prompt
positions of a sample independent of the batch it lands in (Qwen2.5-VL's 3D rope index reads the attention mask).

:func:`vt_ray.learner.collate.collate` builds one from examples. A batch is a plain dataclass of CPU tensors:
cheap to pickle through Ray, and sliceable by sample so the group can shard a mini-batch over ranks and a rank can
cut it into micro-batches. A batch may mix video and
image samples (Video-R1 data): videos go to ``pixel_values_videos``/``video_grid_thw``, images to
``pixel_values``/``image_grid_thw`` (Qwen2.5-VL's two inputs), each in sample order; ``is_image`` says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from vt_ray.prompts.encode import EncodedPrompt, PromptPixels


@dataclass
class Example:
    """One training sequence before collation."""

    prompt: str
    """Rendered chat prompt with one video placeholder, ending in the assistant generation prompt."""
    frames: np.ndarray | None
    """[T, H, W, 3] uint8 decoded frames (T even for Qwen2.5-VL's temporal patches); None with ``encoded``."""
    response_ids: Sequence[int]
    """Response token ids, as sampled (GRPO) or tokenised from the gold trace + <|im_end|> (SFT)."""
    video_metadata: Mapping[str, Any] = field(default_factory=dict)
    """How ``frames`` were sampled, as the rollout engines get it (``DecodedVideo.vllm_metadata()``): source
    fps, total frames and frame indices set the seconds per temporal patch (temporal rope positions).
    Empty = frames taken at 2 fps."""
    token_extras: Mapping[str, Sequence[float]] = field(default_factory=dict)
    """Per response token values (e.g. old_logprobs), each of length ``len(response_ids)``."""
    seq_extras: Mapping[str, float] = field(default_factory=dict)
    """Per sequence values (e.g. advantages)."""
    uid: str = ""
    behaviour_logprobs: Sequence[float] | None = None
    """The sampling engine's log-prob of each response token (the behaviour policy), when known (GRPO)."""
    media: str = "video"
    """video | image: an image sample's ``frames`` is [1, H, W, 3] and its prompt has an image placeholder."""
    encoded: EncodedPrompt | None = None
    """The prompt already encoded by the rollout worker, pixels by reference: collate then never sees pixels."""
    loss_mask: Sequence[float] | None = None
    """Per response token, SFT's loss weight: 0 where it must not train (a withheld answer: the token is in the
    context, its loss is not), above 1 where it stresses a token (it then counts that many times in the token
    mean); None trains on every response token once."""


@dataclass
class PixelRefs:
    """The pixels of a batch whose vision inputs are still in the object store: one reference per distinct
    prompt (``refs``, :class:`~vt_ray.prompts.encode.PromptPixels`) and, per sample, which one it uses
    (``rows``). A shard carries only the references its rows use; the learner fetches and expands them in
    :meth:`TrainBatch.materialised`."""

    refs: list[Any]
    rows: list[int]

    def select(self, start: int, end: int) -> PixelRefs:
        """Samples ``[start, end)``, keeping only the references they use (renumbered in first-use order)."""
        used: dict[int, int] = {}
        rows = [used.setdefault(r, len(used)) for r in self.rows[start:end]]
        return PixelRefs([self.refs[r] for r in used], rows)

    @staticmethod
    def concat(parts: Sequence[PixelRefs]) -> PixelRefs:
        """The references of stacked batches, each distinct one once (a prompt split over two shards)."""
        index: dict[Any, int] = {}
        rows = [index.setdefault(part.refs[r], len(index)) for part in parts for r in part.rows]
        return PixelRefs(list(index), rows)


@dataclass(slots=True)  # slots: assigning a misspelt field (batch.old_logprob = ...) raises
class TrainBatch:
    input_ids: torch.Tensor  # [B, L] long, right padded with pad_token_id
    attention_mask: torch.Tensor  # [B, L] long
    response_mask: torch.Tensor  # [B, L] float32, 1 on response tokens (SFT: the example's loss weights)
    pixel_values_videos: torch.Tensor  # [N_patches, D] float32, video samples' patches concatenated in order
    video_grid_thw: torch.Tensor  # [B_video, 3] long, one per video sample
    second_per_grid_ts: torch.Tensor  # [B_video] float32
    mm_token_type_ids: torch.Tensor | None = None  # [B, L] long (processor's modality ids), when provided
    pixel_values: torch.Tensor | None = None  # [N_image_patches, D] float32, image samples' patches in order
    image_grid_thw: torch.Tensor | None = None  # [B_image, 3] long, one per image sample
    is_image: torch.Tensor | None = None  # [B] bool; None = every sample is a video
    image_token_id: int = -1  # <|image_pad|>, for the forward's single-vision-call view (model_inputs)
    video_token_id: int = -1  # <|video_pad|>
    token_extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, L] float32
    seq_extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] float32
    uids: list[str] = field(default_factory=list)
    pad_token_id: int = 0
    # The three policies of a GRPO update, typed (not string keys) so a misspelling fails loudly. Each is
    # [B, L] float32 aligned with input_ids (0 off the response), or None when not computed.
    behaviour_logprobs: torch.Tensor | None = None  # the rollout engine's sampling log-probs
    old_logprobs: torch.Tensor | None = None  # the learner's log-probs of the policy that sampled (recomputed)
    ref_logprobs: torch.Tensor | None = None  # the frozen reference's log-probs (KL)
    # The rest of what the loss reads, typed too. ``token_extras``/``seq_extras`` stay for a user's own loss.
    advantages: torch.Tensor | None = None  # [B] float32, one per sequence (set by the driver before the update)
    entropy: torch.Tensor | None = None  # [B, L] the policy's per-token entropy (set by the learner when asked)
    # Set while the pixels are still in the object store (pixel_values_videos/pixel_values are then empty, the
    # grids are real): the driver's batch and the shards it sends. materialised() fills the pixel fields.
    pixel_refs: PixelRefs | None = None

    LOGPROB_FIELDS = ("behaviour_logprobs", "old_logprobs", "ref_logprobs")
    TOKEN_FIELDS = (*LOGPROB_FIELDS, "entropy")  # the optional [B, L] fields
    SEQUENCE_FIELDS = ("advantages",)  # the optional [B] fields

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> float:
        """Response tokens (the loss positions), each counted by its weight (a float: an SFT answer weighted
        0.5 counts half a token, so the loss denominator matches the weighted sum it divides)."""
        return float(self.response_mask.sum().item())

    @property
    def num_sequences(self) -> int:
        """Sequences with at least one response token (fillers from :meth:`without_loss` have none)."""
        return int((self.response_mask.sum(-1) > 0).sum().item())

    def patch_offsets(self) -> list[int]:
        """Start of each video's patches in ``pixel_values_videos`` (length B_video + 1)."""
        counts = self.video_grid_thw.prod(-1).tolist()
        return [0, *np.cumsum(counts).tolist()]

    def image_patch_offsets(self) -> list[int]:
        """Start of each image's patches in ``pixel_values`` (length B_image + 1)."""
        counts = self.image_grid_thw.prod(-1).tolist() if self.image_grid_thw is not None else []
        return [0, *np.cumsum(counts).tolist()]

    def _images_mask(self) -> torch.Tensor:
        return self.is_image if self.is_image is not None else torch.zeros(len(self), dtype=torch.bool)

    def select(self, start: int, end: int) -> TrainBatch:
        """Samples ``[start, end)``, with padding columns that no selected sample uses trimmed off."""
        if not 0 <= start < end <= len(self):
            raise IndexError(f"bad slice [{start}, {end}) of a batch of {len(self)}")
        offsets, image_offsets = self.patch_offsets(), self.image_patch_offsets()
        images = self._images_mask()
        v0, v1 = int((~images[:start]).sum()), int((~images[:end]).sum())  # video ordinals of the slice
        i0, i1 = int(images[:start].sum()), int(images[:end].sum())
        width = int(self.attention_mask[start:end].sum(-1).max().item())

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t[start:end, :width].clone()

        optional: dict[str, Any] = {
            k: None if getattr(self, k) is None else rows(getattr(self, k)) for k in self.TOKEN_FIELDS
        }
        optional.update({
            k: None if getattr(self, k) is None else getattr(self, k)[start:end].clone() for k in self.SEQUENCE_FIELDS
        })
        refs = None if self.pixel_refs is None else self.pixel_refs.select(start, end)
        video_pixels, image_pixels = self.pixel_values_videos, self.pixel_values
        if refs is None:  # by reference, the pixel fields are empty placeholders
            video_pixels = video_pixels[offsets[v0] : offsets[v1]].clone()
            image_pixels = None if image_pixels is None else image_pixels[image_offsets[i0] : image_offsets[i1]].clone()
        return replace(
            self,
            input_ids=rows(self.input_ids),
            attention_mask=rows(self.attention_mask),
            response_mask=rows(self.response_mask),
            pixel_refs=refs,
            pixel_values_videos=video_pixels,
            video_grid_thw=self.video_grid_thw[v0:v1].clone(),
            second_per_grid_ts=self.second_per_grid_ts[v0:v1].clone(),
            mm_token_type_ids=None if self.mm_token_type_ids is None else rows(self.mm_token_type_ids),
            pixel_values=image_pixels,
            image_grid_thw=None if self.image_grid_thw is None else self.image_grid_thw[i0:i1].clone(),
            is_image=None if self.is_image is None else self.is_image[start:end].clone(),
            token_extras={k: rows(v) for k, v in self.token_extras.items()},
            seq_extras={k: v[start:end].clone() for k, v in self.seq_extras.items()},
            uids=self.uids[start:end],
            **optional,
        )

    def split(self, parts: int) -> list[TrainBatch | None]:
        """``parts`` contiguous pieces, sizes differing by at most one; ``None`` for a piece with no sample."""
        base, extra = divmod(len(self), parts)
        out: list[TrainBatch | None] = []
        start = 0
        for i in range(parts):
            end = start + base + (1 if i < extra else 0)
            out.append(self.select(start, end) if end > start else None)
            start = end
        return out

    def chunks(self, size: int) -> list[TrainBatch]:
        """Consecutive pieces of at most ``size`` samples."""
        return [self.select(i, min(i + size, len(self))) for i in range(0, len(self), size)]

    def without_loss(self) -> TrainBatch:
        """One sample with an all-zero response mask: a filler forward/backward that contributes nothing.

        FSDP ranks must run the same number of forward/backward passes (each one all-gathers), so a rank
        with fewer samples than its peers runs fillers instead of deadlocking them.
        """
        one = self.select(0, 1)
        one.response_mask = torch.zeros_like(one.response_mask)
        one.seq_extras = {k: torch.zeros_like(v) for k, v in one.seq_extras.items()}
        if one.advantages is not None:
            one.advantages = torch.zeros_like(one.advantages)
        one.uids = [""]
        return one

    def model_inputs(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Keyword arguments for Qwen2.5-VL's forward.

        Images are passed as one-step videos: Qwen2.5-VL's forward runs the vision tower once for the images and
        once more for the videos, so a micro-batch mixing both would all-gather the FSDP-sharded tower twice on
        one rank and once on another (a collective mismatch). An image is exactly a 2-frame video of itself
        to this model: the same patches (the image processor repeats it over the temporal patch of 2), the same
        grid (t=1: temporal position 0, as for an image) and placeholder embeddings that are replaced by the
        vision features either way; tests check the logits are equal. So every forward makes one vision call.
        A batch whose pixels are still by reference is materialised first (a backend that calls
        :meth:`materialised` with one ``fetched`` dict per call fetches them once per call, not per micro-batch).
        """
        if self.pixel_refs is not None:
            return self.materialised().model_inputs(device)
        input_ids, types = self.input_ids, self.mm_token_type_ids
        pixels, grids, seconds = self.pixel_values_videos, self.video_grid_thw, self.second_per_grid_ts
        if self.image_grid_thw is not None and len(self.image_grid_thw):
            pixels, grids, seconds = self._vision_as_videos()
            input_ids = torch.where(input_ids == self.image_token_id, self.video_token_id, input_ids)
            if types is not None:
                types = torch.where(types == 1, 2, types)  # processor modality ids: 1 image, 2 video
        inputs = {"input_ids": input_ids, "attention_mask": self.attention_mask}
        if len(grids):
            inputs.update(pixel_values_videos=pixels, video_grid_thw=grids, second_per_grid_ts=seconds)
        if types is not None:
            inputs["mm_token_type_ids"] = types
        return {k: v.to(device) for k, v in inputs.items()}

    def _vision_as_videos(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Video and image patches, grids and seconds per grid interleaved in sample order."""
        assert self.pixel_values is not None and self.image_grid_thw is not None
        if self.image_token_id < 0 or self.video_token_id < 0:
            raise ValueError("a batch with images needs image_token_id/video_token_id (set by collate)")
        v_off, i_off = self.patch_offsets(), self.image_patch_offsets()
        pixels, grids, seconds = [], [], []
        v = i = 0
        for is_image in self._images_mask().tolist():
            if is_image:
                pixels.append(self.pixel_values[i_off[i] : i_off[i + 1]])
                grids.append(self.image_grid_thw[i])
                seconds.append(1.0)  # irrelevant: t = 1 gives temporal position 0 whatever the interval
                i += 1
            else:
                pixels.append(self.pixel_values_videos[v_off[v] : v_off[v + 1]])
                grids.append(self.video_grid_thw[v])
                seconds.append(float(self.second_per_grid_ts[v]))
                v += 1
        return torch.cat(pixels), torch.stack(grids), torch.tensor(seconds, dtype=torch.float32)

    def materialised(self, fetched: dict[Any, torch.Tensor] | None = None) -> TrainBatch:
        """This batch with its pixel fields filled from ``pixel_refs`` (fetched with ``ray.get`` in the calling
        process, each distinct prompt's pixels once, expanded to one copy per sample as collate lays them out);
        the batch itself when its pixels are already here.

        ``fetched`` (reference -> float32 pixels, filled here) lets a learner materialise one micro-batch at a
        time: each distinct prompt is fetched and converted once per call, and only the micro-batch in hand holds
        per-sample copies, not the whole shard (G copies of every video, docs/scaling.md)."""
        if self.pixel_refs is None:
            return self
        import ray

        cache: dict[Any, torch.Tensor] = {} if fetched is None else fetched
        missing = [ref for ref in self.pixel_refs.refs if ref not in cache]
        if missing:
            pixels: list[PromptPixels] = ray.get(missing)
            cache.update((ref, p.tensor()) for ref, p in zip(missing, pixels))  # float32, once per prompt
        expanded = [cache[ref] for ref in self.pixel_refs.refs]
        images = self._images_mask().tolist()
        videos = [expanded[r] for r, img in zip(self.pixel_refs.rows, images) if not img]
        pictures = [expanded[r] for r, img in zip(self.pixel_refs.rows, images) if img]
        dim = expanded[0].shape[-1] if expanded else self.pixel_values_videos.shape[-1]
        return replace(
            self, pixel_refs=None,
            pixel_values_videos=torch.cat(videos) if videos else torch.zeros(0, dim),
            pixel_values=torch.cat(pictures) if pictures else self.pixel_values,
        )

    def fetch_pixels(self) -> tuple[TrainBatch, dict[str, PromptPixels]]:
        """The stored pixels of a by-reference batch, each distinct prompt fetched once and kept compact (uint8
        as stored, not expanded per sample), and this batch with its references renamed to the keys of that dict
        (the objects' hex ids). Unlike object references, both pickle: ranks can exchange them over
        ``torch.distributed`` (a Ray reference pickled outside Ray's own serializer loses its owner, and
        fetching it hangs). ``materialised`` with ``{key: pixels.tensor()}`` as ``fetched`` expands them."""
        if self.pixel_refs is None:
            return self, {}
        import ray

        refs = self.pixel_refs.refs
        keys = [ref.hex() for ref in refs]
        stored: list[PromptPixels] = ray.get(list(refs))
        return replace(self, pixel_refs=PixelRefs(keys, self.pixel_refs.rows)), dict(zip(keys, stored))

    def first_response_position(self) -> int:
        """Smallest index of a response token over the batch (the loss never needs logits before it)."""
        cols = self.response_mask.sum(0).nonzero()
        return int(cols[0].item()) if len(cols) else int(self.input_ids.shape[1]) - 1

    @staticmethod
    def concat(batches: Sequence[TrainBatch]) -> TrainBatch:
        """Stack batches (re-padding to the widest); the inverse of :meth:`split`."""
        if not batches:
            raise ValueError("nothing to concatenate")
        by_reference = all(b.pixel_refs is not None for b in batches)  # stacked as references, pixels stay away
        if not by_reference and any(b.pixel_refs is not None for b in batches):  # mixed: stack the pixels
            batches = [b.materialised() for b in batches]
        width = max(b.input_ids.shape[1] for b in batches)
        pad_id = batches[0].pad_token_id

        def cat(get: Any, value: float) -> torch.Tensor:
            return torch.cat([pad_right(get(b), width, value) for b in batches])

        first = batches[0]
        any_images = any(b.is_image is not None for b in batches)

        def optional_cat(get: Any) -> torch.Tensor | None:
            parts = [get(b) for b in batches if get(b) is not None]
            return torch.cat(parts) if parts else None

        out = TrainBatch(
            input_ids=cat(lambda b: b.input_ids, pad_id),
            attention_mask=cat(lambda b: b.attention_mask, 0),
            response_mask=cat(lambda b: b.response_mask, 0),
            pixel_values_videos=torch.cat([b.pixel_values_videos for b in batches]),
            video_grid_thw=torch.cat([b.video_grid_thw for b in batches]),
            second_per_grid_ts=torch.cat([b.second_per_grid_ts for b in batches]),
            mm_token_type_ids=None if first.mm_token_type_ids is None else cat(lambda b: b.mm_token_type_ids, 0),
            pixel_values=optional_cat(lambda b: b.pixel_values),
            image_grid_thw=optional_cat(lambda b: b.image_grid_thw),
            is_image=torch.cat([b._images_mask() for b in batches]) if any_images else None,
            image_token_id=first.image_token_id,
            video_token_id=first.video_token_id,
            token_extras={k: cat(lambda b, k=k: b.token_extras[k], 0) for k in first.token_extras},
            seq_extras={k: torch.cat([b.seq_extras[k] for b in batches]) for k in first.seq_extras},
            uids=[u for b in batches for u in b.uids],
            pad_token_id=pad_id,
            pixel_refs=PixelRefs.concat([b.pixel_refs for b in batches if b.pixel_refs]) if by_reference else None,
        )
        for k in TrainBatch.TOKEN_FIELDS:
            setattr(out, k, None if getattr(first, k) is None else cat(lambda b, k=k: getattr(b, k), 0))
        for k in TrainBatch.SEQUENCE_FIELDS:
            setattr(out, k, None if getattr(first, k) is None else torch.cat([getattr(b, k) for b in batches]))
        return out


def pad_right(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """``t`` ([B, L]) right-padded with ``value`` to ``width`` columns."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)
