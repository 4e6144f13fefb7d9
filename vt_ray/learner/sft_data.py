"""SFT data: samples with a gold trace -> (prompt with video, response ids) examples, in a seeded order.

The prompt is built exactly as in GRPO and evaluation (same chat template, same frame sampling and prompt
budget as the rollout workers), so SFT teaches the format in the context the policy will later see. The
response is the gold trace followed by ``<|im_end|>``: the model must also learn to stop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vt_ray.config.schema import RecipeConfig
from vt_ray.data.schema import ANSWER_WEIGHT, VideoSample
from vt_ray.learner.batch import Example
from vt_ray.prompts.chat import prompt_text

log = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"
T = TypeVar("T")
R = TypeVar("R")


def sft_train_file(cfg: RecipeConfig) -> str:
    return cfg.sft.train_file or cfg.data.train_file


def load_sft_samples(path: str | Path, data_format: str = "project", root: str | None = None,
                     check_media: bool = True) -> list[VideoSample]:
    """Samples that have a gold trace, with absolute video paths (shipped to any node). Video-R1's COT file
    gives ``process + "\n" + solution`` as the trace (vt_ray.data.formats.video_r1)."""
    from vt_ray.data.formats import load_samples

    samples = load_samples(path, data_format, root, check_media)
    with_trace = [s for s in samples if s.trace and s.trace.strip()]
    if not with_trace:
        raise ValueError(f"{path}: no sample has a 'trace' (SFT needs gold traces)")
    if len(with_trace) < len(samples):
        log.warning("%s: %d of %d samples have no trace and are skipped", path, len(samples) - len(with_trace),
                    len(samples))
    return with_trace


def response_text(sample: VideoSample) -> str:
    assert sample.trace is not None
    return sample.trace.strip() + END_OF_TURN


def answer_loss_mask(tokenizer: Any, response: str, weight: float = 0.0) -> list[float]:
    """1 per response token, ``weight`` on the tokens that overlap the last ``<answer>``'s content (character
    offsets: our tokenizer merges the letter with the tag's ``>``)."""
    start = response.rindex("<answer>") + len("<answer>")
    end = response.index("</answer>", start)
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    return [weight if a < end and b > start else 1.0 for a, b in enc["offset_mapping"]]


def epoch_order(num_samples: int, epoch: int, seed: int) -> list[int]:
    """A seeded permutation per epoch: the same run resumes into the same order."""
    return np.random.default_rng([seed, epoch]).permutation(num_samples).tolist()


def batch_starts(num_samples: int, batch_size: int, drop_last: bool) -> list[int]:
    last = num_samples - batch_size if drop_last else num_samples - 1
    return list(range(0, max(last, -1) + 1, batch_size))


@dataclass
class SkipCounts:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


class SftExampleBuilder:
    """Decodes a sample's video (fitted to the prompt budget) and tokenises its response."""

    def __init__(self, cfg: RecipeConfig, processor: Any) -> None:
        from vt_ray.video.budget import PromptBudget

        self.cfg, self.processor = cfg, processor
        self.budget = PromptBudget.of(cfg.data, cfg.video)
        self.skipped = SkipCounts()

    def build(self, sample: VideoSample) -> Example | None:
        """The example, or None (counted in ``skipped``) for an unreadable or over-budget video."""
        from vt_ray.video.budget import fit_to_budget
        from vt_ray.video.errors import VideoError

        prompt = prompt_text(self.processor, sample, self.cfg.prompt)
        response = response_text(sample)
        ids = self.processor.tokenizer(response, add_special_tokens=False)["input_ids"]
        weight = float(sample.extra.get(ANSWER_WEIGHT, 1.0))
        mask = None if weight == 1.0 else answer_loss_mask(self.processor.tokenizer, response, weight)
        if sample.media == "image":
            from vt_ray.video.budget import fit_image_to_budget

            try:
                image, _ = fit_image_to_budget(sample.video, prompt, self.processor.tokenizer, self.cfg.video,
                                               self.budget)
            except VideoError as err:
                log.warning("SFT skips %s: %s", sample.uid, err)
                self.skipped.add(err.reason)
                return None
            if image is None:
                self.skipped.add("overlong")
                return None
            return Example(prompt, image.frames, ids, {}, uid=sample.uid, media="image", loss_mask=mask)
        try:
            fitted = fit_to_budget(sample.video, prompt, self.processor.tokenizer, self.cfg.video, self.budget)
        except VideoError as err:
            log.warning("SFT skips %s: %s", sample.uid, err)
            self.skipped.add(err.reason)
            return None
        if fitted.video is None:
            self.skipped.add("overlong")
            return None
        return Example(prompt, fitted.video.frames, ids, fitted.video.vllm_metadata(), uid=sample.uid, loss_mask=mask)

    def build_many(self, samples: Sequence[VideoSample]) -> list[Example]:
        return [ex for ex in (self.build(s) for s in samples) if ex is not None]


def iter_batches(
    samples: Sequence[VideoSample], batch_size: int, epochs: int, seed: int, drop_last: bool,
    start: tuple[int, int] = (0, 0),
) -> Iterator[tuple[int, int, list[VideoSample]]]:
    """(epoch, batch start index, samples) for every batch from data position ``start`` = (epoch, index)."""
    for epoch in range(start[0], epochs):
        order = epoch_order(len(samples), epoch, seed)
        for begin in batch_starts(len(samples), batch_size, drop_last):
            if epoch == start[0] and begin < start[1]:
                continue
            yield epoch, begin, [samples[i] for i in order[begin : begin + batch_size]]


def prefetched(items: Iterable[T], build: Callable[[T], R], depth: int) -> Iterator[tuple[T, R]]:
    """``(item, build(item))`` in order, with up to ``depth`` builds running ahead in one background thread.

    Why a thread and not Ray tasks: the driver only waits on the learners' remote ``train_step`` meanwhile, the
    video decoder and the tokenizer release the GIL for most of their work, and a batch built here goes to the
    learners once (a Ray task's result would travel to the driver first). One thread keeps the build order,
    and so the data order and the skip counts, exactly those of ``depth=0``. An error in a build surfaces at
    that item, as it would inline; leaving the loop early cancels what has not started.
    """
    if depth <= 0:
        for item in items:
            yield item, build(item)
        return
    pending: deque[tuple[T, Future[R]]] = deque()
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sft-prefetch") as pool:
        try:
            for item in it:
                pending.append((item, pool.submit(build, item)))
                if len(pending) > depth:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    return len(batch_starts(num_samples, batch_size, drop_last))
