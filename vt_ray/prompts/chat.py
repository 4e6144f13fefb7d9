"""Chat prompts for Qwen2.5-VL from a sample and the recipe's editable templates (same in SFT, GRPO, eval)."""

from __future__ import annotations

from typing import Any

from vt_ray.config.schema import PromptConfig
from vt_ray.data.schema import VideoSample
from vt_ray.prompts import video_r1 as video_r1_prompt
from vt_ray.rewards.video_r1 import FROM_ANSWER_TYPE


def user_text(sample: VideoSample, prompt: PromptConfig) -> str:
    if prompt.style in ("video_r1", "video_r1_eval"):
        return video_r1_prompt.user_text(sample.question, FROM_ANSWER_TYPE[sample.answer_type],
                                         video_r1_options(sample), evaluation=prompt.style == "video_r1_eval")
    return prompt.question_template.format(question=sample.question, options=sample.options_text()).strip()


def video_r1_options(sample: VideoSample) -> list[str]:
    """The lettered options as the Video-R1 file wrote them (kept by its loader), else "A. text" lines."""
    raw = sample.extra.get("video_r1_options")
    if isinstance(raw, list) and len(raw) == len(sample.options):
        return [str(o) for o in raw]
    return sample.options_text().splitlines()


def chat_messages(sample: VideoSample, prompt: PromptConfig) -> list[dict[str, Any]]:
    """System turn, then the user turn: the video (or image) first, then the question (Qwen's own convention).
    Video-R1's styles send no system turn, as its grpo.py and eval_bench.py do."""
    user = {"role": "user", "content": [{"type": sample.media}, {"type": "text", "text": user_text(sample, prompt)}]}
    if prompt.style in ("video_r1", "video_r1_eval"):
        return [user]
    return [{"role": "system", "content": [{"type": "text", "text": prompt.system}]}, user]


def prompt_text(processor: Any, sample: VideoSample, prompt: PromptConfig) -> str:
    """The rendered prompt with one video (or image) placeholder, ending in the assistant generation prompt."""
    return processor.apply_chat_template(chat_messages(sample, prompt), add_generation_prompt=True, tokenize=False)


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def banned_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the vision placeholder tokens, which only the processor may insert: a sampled one would break the
    learner's forward pass (more video tokens than video features), so engines never sample them."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]
