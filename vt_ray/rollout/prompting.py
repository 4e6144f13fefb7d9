"""Chat prompts for Qwen2.5-VL from a sample and the recipe's editable templates (same in SFT, GRPO, eval)."""

from __future__ import annotations

from typing import Any

from vt_ray.config.schema import PromptConfig
from vt_ray.data.schema import VideoSample


def user_text(sample: VideoSample, prompt: PromptConfig) -> str:
    return prompt.question_template.format(question=sample.question, options=sample.options_text()).strip()


def chat_messages(sample: VideoSample, prompt: PromptConfig) -> list[dict[str, Any]]:
    """System turn, then the user turn: the video first, then the question (Qwen's own convention)."""
    return [
        {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text(sample, prompt)}]},
    ]


def prompt_text(processor: Any, sample: VideoSample, prompt: PromptConfig) -> str:
    """The rendered prompt with one video placeholder, ending in the assistant generation prompt."""
    return processor.apply_chat_template(chat_messages(sample, prompt), add_generation_prompt=True, tokenize=False)


VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def banned_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the vision placeholder tokens, which only the processor may insert: a sampled one would break the
    learner's forward pass (more video tokens than video features), so engines never sample them."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]
