"""The one place we load a transformers Qwen2.5-VL for training or the transformers rollout backend.

Going through here guarantees the model uses the released multimodal RoPE positions (see ``mrope``), so the
learner, the transformers backend and vLLM agree on every token's position.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from vt_ray.models.mrope import use_released_rope_index


def load_vl_model(path: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForImageTextToText

    return use_released_rope_index(AutoModelForImageTextToText.from_pretrained(path, dtype=dtype))


def stored_dtype(path: str | os.PathLike[str]) -> torch.dtype | None:
    """The floating dtype the checkpoint's weights were saved in (its config's ``dtype``), None if unknown."""
    from transformers import AutoConfig

    value = getattr(AutoConfig.from_pretrained(path), "dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else None


def build_vl_model_on_meta(path_or_config: str | os.PathLike[str] | Any, dtype: torch.dtype) -> Any:
    """The model :func:`load_vl_model` returns for the same directory (or its config), with no storage: every
    parameter and buffer on the meta device, in eval mode like ``from_pretrained``'s. For sharding before the
    weights exist (the learner's ``load_on_rank0``); the caller allocates (``to_empty``) and fills it.

    Non-persistent buffers (the rotary ``inv_freq``) are not in a state dict, so loading one does not restore
    them: the caller must. A config object is copied first (``from_config`` may write to it).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    if isinstance(path_or_config, (str, os.PathLike)):
        config = AutoConfig.from_pretrained(path_or_config)
    else:
        config = copy.deepcopy(path_or_config)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return use_released_rope_index(model.eval())
