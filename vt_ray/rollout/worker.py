"""One rollout worker: decodes each video once, builds its prompt, checks the prompt budget, and samples G
responses with its engine. A plain class (constructible without Ray); :mod:`vt_ray.rollout.group` wraps it.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vt_ray.common.timeouts import ActorInfo, install_stack_dumps
from vt_ray.config.roles import RolloutRoleConfig
from vt_ray.config.schema import VideoConfig
from vt_ray.data.schema import VideoSample
from vt_ray.prompts.chat import prompt_text
from vt_ray.prompts.encode import PromptPixels, encode_for_learner
from vt_ray.rollout.engine_api import StreamingRolloutEngine
from vt_ray.rollout.engines import make_engine
from vt_ray.rollout.kv_cache import sized_for_role
from vt_ray.rollout.types import GenerationRequest, RolloutResult, SamplingSettings
from vt_ray.testing.faults import crash_point, hang_point
from vt_ray.video.budget import PromptBudget, fit_image_to_budget, fit_to_budget
from vt_ray.video.errors import VideoError

log = logging.getLogger(__name__)


@dataclass
class SkippedSample:
    uid: str
    video: str
    reason: str  # short label, e.g. "corrupt", "missing", "overlong"
    detail: str = ""


@dataclass
class RolloutBatchResult:
    results: list[RolloutResult] = field(default_factory=list)  # samples that were generated, in input order
    skipped: list[SkippedSample] = field(default_factory=list)
    downsampled: int = 0  # samples whose frames were reduced to fit the prompt budget

    @staticmethod
    def merge(parts: Sequence[RolloutBatchResult]) -> RolloutBatchResult:
        out = RolloutBatchResult()
        for p in parts:
            out.results += p.results
            out.skipped += p.skipped
            out.downsampled += p.downsampled
        return out

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))


class RolloutWorker:
    def __init__(self, role: RolloutRoleConfig, rank: int = 0, model_path: str | None = None) -> None:
        """``role``: what a rollout worker reads of the recipe (``RolloutRoleConfig.of(recipe)``)."""
        self.cfg, self.rank = role, rank
        self.info = install_stack_dumps("rollout", rank)  # first: a hang in the engine start can be dumped too
        hang_point("rollout.init", rank)
        rollout = sized_for_role(role, model_path)  # kv_cache_gib: auto -> this recipe's need
        self.engine = make_engine(role.model, rollout, seed=role.seed + rank, model_path=model_path)
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path or role.model.path)
        self.budget = PromptBudget.of(role.data, role.video)

    def ready(self) -> ActorInfo:
        """Where this actor runs (pid, node, stack dump file): the group needs it to dump a stuck actor."""
        return self.info

    def weight_version(self) -> int:
        return int(self.engine.weight_version)

    def update_weights(self, blob: bytes, version: int) -> int:
        return self.engine.update_weights(blob, version)

    def check_weight_plan(self, plan: dict[str, Any]) -> int:
        return self._streaming().check_weight_plan(plan)

    def receive_weights(self, session: dict[str, Any], base_rank: int, plan: dict[str, Any], version: int) -> int:
        return self._streaming().receive_weights(session, base_rank, plan, version, self.rank)

    def ipc_endpoint(self) -> tuple[str, str]:
        """(node address, device key) of this engine: an ``ipc`` sync pairs it with the learner rank that has
        the same (:func:`vt_ray.common.weight_share.device_key`: the GPU's UUID, or ``cpu``)."""
        import torch

        from vt_ray.common.weight_share import device_key

        return self.info.node_ip, device_key("cuda" if torch.cuda.is_available() else "cpu")

    def _streaming(self) -> StreamingRolloutEngine:
        if not isinstance(self.engine, StreamingRolloutEngine):  # the driver picks blob pushes for such engines
            raise TypeError(f"{type(self.engine).__name__} does not take streamed weight syncs")
        return self.engine

    def reseed(self, seed: int) -> None:
        self.engine.reseed(seed)

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def prompt_logprobs(self, text: str) -> list[float]:
        return self.engine.prompt_logprobs(text)

    def prepare(
        self, samples: Sequence[VideoSample], video: VideoConfig | None = None
    ) -> tuple[list[GenerationRequest], RolloutBatchResult]:
        """Decode and budget-check each sample; failures become skip records, never exceptions. ``video``
        overrides the recipe's frame sampling (evaluation's frame-count sweep)."""
        video_cfg = video or self.cfg.video
        requests, report = [], RolloutBatchResult()
        for sample in samples:
            prompt = prompt_text(self.processor, sample, self.cfg.prompt)
            if sample.media == "image":
                if self.cfg.rollout.max_images_per_prompt == 0:
                    report.skipped.append(SkippedSample(sample.uid, sample.video, "images_disabled",
                                                        "rollout.max_images_per_prompt is 0"))
                    continue
                try:
                    image, tokens = fit_image_to_budget(sample.video, prompt, self.processor.tokenizer, video_cfg,
                                                        self.budget)
                except VideoError as err:
                    log.warning("skipping %s: %s", sample.uid, err)
                    report.skipped.append(SkippedSample(sample.uid, sample.video, err.reason, str(err)))
                    continue
                if image is None:
                    detail = f"{tokens} prompt tokens > budget {self.budget.max_prompt_tokens} (image)"
                    report.skipped.append(SkippedSample(sample.uid, sample.video, "overlong", detail))
                    continue
                requests.append(GenerationRequest(sample.uid, prompt, image.frames, {}, media="image"))
                continue
            try:
                fitted = fit_to_budget(sample.video, prompt, self.processor.tokenizer, video_cfg, self.budget)
            except VideoError as err:
                log.warning("skipping %s: %s", sample.uid, err)
                report.skipped.append(SkippedSample(sample.uid, sample.video, err.reason, str(err)))
                continue
            if fitted.video is None:
                report.skipped.append(SkippedSample(sample.uid, sample.video, "overlong", fitted.detail))
                continue
            report.downsampled += int(fitted.downsampled)
            decoded = fitted.video
            requests.append(GenerationRequest(sample.uid, prompt, decoded.frames, decoded.vllm_metadata()))
        return requests, report

    def generate(
        self, samples: Sequence[VideoSample], sampling: SamplingSettings, video: VideoConfig | None = None,
        learner_inputs: bool = False,
    ) -> Any:
        """The batch's responses (:class:`RolloutBatchResult`). With ``learner_inputs`` the worker also encodes
        each generated prompt for the learner, once per prompt (it has the frames and the processor), and
        returns ``(report, pixels_0, ..., pixels_{n-1})``, one :class:`PromptPixels` per result (None past the
        last) for ``n = len(samples)``: the rollout group calls this with ``num_returns = 1 + n``, so the pixels
        become objects of their own that the caller (the driver) owns and never fetches; each result keeps its
        ids and grids in ``encoded`` and no frames."""
        crash_point("rollout.generate", self.rank)
        hang_point("rollout.generate", self.rank)
        requests, report = self.prepare(samples, video)
        if requests:
            report.results = self.engine.generate(requests, replace(sampling, shuffled_n=0))
            for req, result in zip(requests, report.results, strict=True):
                result.prompt, result.frames, result.media = req.prompt, req.frames, req.media
                result.video_metadata = dict(req.video_metadata)
            if sampling.shuffled_n > 0:
                self._generate_shuffled(requests, report.results, sampling)
        if not learner_inputs:
            return report
        pixels: list[PromptPixels | None] = [None] * len(samples)
        for i, result in enumerate(report.results):
            assert result.frames is not None
            result.encoded, pixels[i] = encode_for_learner(self.processor, result.prompt, result.frames,
                                                           result.video_metadata, result.media)
            result.frames = None
        return (report, *pixels)

    def _generate_shuffled(
        self, requests: Sequence[GenerationRequest], results: Sequence[RolloutResult], sampling: SamplingSettings
    ) -> None:
        """T-GRPO's second group: the same prompt over the already decoded frames in a shuffled order (no second
        decode), ``sampling.shuffled_n`` responses each, attached to the ordered result."""
        orders = [shuffle_order(len(req.frames), sampling.shuffle_seed, req.uid) for req in requests]
        shuffled = [replace(req, frames=req.frames[order]) for req, order in zip(requests, orders)]
        outs = self.engine.generate(shuffled, replace(sampling, n=sampling.shuffled_n, shuffled_n=0))
        for result, out, order in zip(results, outs, orders, strict=True):
            result.shuffled_completions, result.shuffle_order = out.completions, order.tolist()


def shuffle_order(num_frames: int, seed: int, uid: str) -> np.ndarray:
    """A permutation of the frames that is never the identity (for 2+ frames), fixed by (seed, uid)."""
    rng = np.random.default_rng([seed, zlib.crc32(uid.encode())])
    order = rng.permutation(num_frames)
    if num_frames > 1 and (order == np.arange(num_frames)).all():
        order = np.roll(order, 1)
    return order
