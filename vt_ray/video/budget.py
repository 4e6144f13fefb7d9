"""The prompt budget: count a sample's prompt tokens (text + video) before generation, and fit it.

Video-token blowups are the most common failure of video RL runs (a 16-frame video giving 53k tokens against an
8k context). The count is exact and cheap: the chat text is tokenised with its single ``<|video_pad|>``
placeholder, which the engine expands to (frames / 2) * (H / 28) * (W / 28) tokens for Qwen2.5-VL. A sample
over budget is frame-downsampled (halving) or dropped, by recipe policy, so the engine never sees a prompt
longer than its context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vt_ray.config.schema import DataConfig, VideoConfig
from vt_ray.video.image import DecodedImage, image_token_count, read_image
from vt_ray.video.reader import DecodedVideo, read_video
from vt_ray.video.sampling import video_token_count


@dataclass(frozen=True)
class PromptBudget:
    max_prompt_tokens: int
    policy: str  # "downsample" | "drop"
    min_frames: int

    @staticmethod
    def of(data: DataConfig, video: VideoConfig) -> PromptBudget:
        """The budget the ``data`` and ``video`` sections set."""
        return PromptBudget(data.max_prompt_tokens, data.overlong_policy, max(2, video.min_frames))


@dataclass
class Fitted:
    video: DecodedVideo | None  # None: dropped as over budget
    prompt_tokens: int
    downsampled: bool = False
    detail: str = ""


def prompt_token_count(prompt: str, tokenizer: Any, video: DecodedVideo) -> int:
    text_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    height, width = video.frames.shape[1:3]
    return text_tokens - 1 + video_token_count(len(video.frames), height, width)


def halve_frames(video: DecodedVideo) -> DecodedVideo:
    """Every other sampled frame (keeps the count even, as Qwen2.5-VL's temporal patch of 2 needs)."""
    keep = list(range(0, len(video.frames), 2))
    if len(keep) % 2:
        keep = keep[:-1]
    return dataclasses.replace(
        video,
        frames=video.frames[keep],
        timestamps=[video.timestamps[i] for i in keep],
        frame_indices=[video.frame_indices[i] for i in keep],
    )


def fit_image_to_budget(path: str, prompt: str, tokenizer: Any, video_cfg: VideoConfig, budget: PromptBudget
                        ) -> tuple[DecodedImage | None, int]:
    """Read an image and count its prompt (one ``<|image_pad|>`` placeholder); None when over budget (an image
    has no frames to halve: it is dropped). Raises the video module's typed errors for unreadable files."""
    image = read_image(path, video_cfg)
    text_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    tokens = text_tokens - 1 + image_token_count(*image.pixels.shape[:2])
    return (image if tokens <= budget.max_prompt_tokens else None), tokens


def fit_to_budget(path: str, prompt: str, tokenizer: Any, video_cfg: VideoConfig, budget: PromptBudget) -> Fitted:
    """Decode ``path`` and make its prompt fit; raises the video module's typed errors for unreadable files."""
    video = read_video(path, video_cfg)
    tokens = prompt_token_count(prompt, tokenizer, video)
    downsampled = False
    while tokens > budget.max_prompt_tokens:
        if budget.policy == "drop" or len(video.frames) // 2 < budget.min_frames:
            detail = f"{tokens} prompt tokens > budget {budget.max_prompt_tokens} at {len(video.frames)} frames"
            return Fitted(None, tokens, downsampled, detail)
        video, downsampled = halve_frames(video), True
        tokens = prompt_token_count(prompt, tokenizer, video)
    return Fitted(video, tokens, downsampled)
