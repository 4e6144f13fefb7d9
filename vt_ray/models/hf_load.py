"""The one place we load a transformers Qwen2.5-VL for training or the transformers rollout backend.

Going through here guarantees the model uses the released multimodal RoPE positions (see ``mrope``), so the
learner, the transformers backend and vLLM agree on every token's position.
"""

from __future__ import annotations

from typing import Any

import torch

from vt_ray.models.mrope import use_released_rope_index


def load_vl_model(path: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForImageTextToText

    return use_released_rope_index(AutoModelForImageTextToText.from_pretrained(path, dtype=dtype))
