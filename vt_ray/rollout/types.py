"""Data passed between the driver, rollout engines and rewards: plain dataclasses, cheap to pickle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vt_ray.prompts.encode import EncodedPrompt


@dataclass
class SamplingSettings:
    """One call's sampling. Training uses the recipe's rollout section; evaluation defaults to greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=lambda: ["</answer>"])
    seed: int | None = None
    min_tokens: int = 0
    """Responses are at least this long: EOS and stop strings count only from then on (vLLM's ``min_tokens``)."""
    ignore_eos: bool = False
    """Generate past EOS (only stop strings and ``max_tokens`` end a response): with ``min_tokens = max_tokens``
    every response has exactly ``max_tokens`` tokens, for like-for-like throughput benchmarks."""
    shuffled_n: int = 0
    """T-GRPO: also sample this many responses per prompt from the same decoded frames in a shuffled order."""
    shuffle_seed: int = 0
    """Seeds each prompt's frame permutation (with its uid), so a resumed step shuffles the same way."""


@dataclass
class GenerationRequest:
    """One prompt: its rendered text and the video's decoded frames, shared by all its n responses."""

    uid: str
    prompt: str
    frames: np.ndarray  # [T, H, W, 3] uint8; [1, H, W, 3] for an image
    video_metadata: dict[str, Any]
    media: str = "video"
    """video | image (the prompt then has one image placeholder and ``frames`` holds the single image)."""


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the sampling policy
    finish_reason: str  # "stop" (EOS or stop string) | "length"


@dataclass
class RolloutResult:
    uid: str
    prompt_token_ids: list[int]
    completions: list[Completion]
    prompt: str = ""
    """The rendered prompt text (filled by the rollout worker): the learner re-encodes exactly this."""
    frames: np.ndarray | None = None
    """The frames the engine saw (after any budget downsampling): the learner scores on the same pixels."""
    video_metadata: dict[str, Any] = field(default_factory=dict)
    """How ``frames`` were sampled (``DecodedVideo.vllm_metadata()``): sets the temporal positions."""
    shuffled_completions: list[Completion] = field(default_factory=list)
    """T-GRPO: responses sampled from the same frames in ``shuffle_order`` (scored, never trained on)."""
    shuffle_order: list[int] = field(default_factory=list)
    """The frame permutation the shuffled responses saw (frame k of their video = frame shuffle_order[k])."""
    media: str = "video"
    """video | image: what ``frames`` holds."""
    encoded: EncodedPrompt | None = None
    """The learner's inputs for this prompt, encoded by the rollout worker when asked (``learner_inputs``): ids
    and grids, and a reference to the pixels in the object store. ``frames`` is then None: the driver never
    holds the pixels."""
