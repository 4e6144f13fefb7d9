"""Qwen2.5-VL architecture numbers for the planner: from ``config.json``, or a built-in table of known sizes.

Parameter counts are computed from the architecture (not looked up) so the same code covers the tiny test
model, whose count tests/unit/cluster/test_planner.py checks against the real module. The table holds the published
Qwen2.5-VL-{3B,7B,32B,72B}-Instruct configs; it is used when ``<model.path>/config.json`` is not on this machine
(planning a cluster run from a laptop), selected by ``resources.model_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_ray.common.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tie_embeddings: bool
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_out: int
    merge: int = 2
    patch: int = 14
    temporal_patch: int = 2
    in_channels: int = 3

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def text_layer_params(self) -> int:
        """q/k/v with bias, o without; SwiGLU gate/up/down without bias; two RMSNorms."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h

    @property
    def embedding_params(self) -> int:
        """Input embedding plus lm_head (shared when tied) plus the final norm."""
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2) + self.hidden

    @property
    def vision_block_params(self) -> int:
        """qkv and proj with bias; SwiGLU MLP with bias; two RMSNorms."""
        h, i = self.vision_hidden, self.vision_intermediate
        return 3 * h * h + 3 * h + h * h + h + 3 * h * i + 2 * i + h + 2 * h

    @property
    def vision_params(self) -> int:
        """Patch embedding (Conv3d, no bias), blocks, and the patch merger (norm + 2-layer MLP)."""
        h, m = self.vision_hidden, self.vision_hidden * self.merge**2
        patch = self.in_channels * self.temporal_patch * self.patch**2 * h
        merger = h + m * m + m + m * self.vision_out + self.vision_out
        return patch + self.vision_depth * self.vision_block_params + merger

    @property
    def text_params(self) -> int:
        return self.embedding_params + self.layers * self.text_layer_params

    @property
    def total_params(self) -> int:
        return self.text_params + self.vision_params

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_dim * dtype_bytes


def _qwen(name: str, vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tie: bool) -> ModelShape:
    # All three sizes share the 32-block, 1280-wide vision tower; its merger projects to the LLM width.
    return ModelShape(name, vocab, hidden, inter, layers, heads, kv, tie, 32, 1280, 3420, hidden)


KNOWN_SHAPES: dict[str, ModelShape] = {
    "3B": _qwen("Qwen2.5-VL-3B-Instruct", 151936, 2048, 11008, 36, 16, 2, True),
    "7B": _qwen("Qwen2.5-VL-7B-Instruct", 152064, 3584, 18944, 28, 28, 4, False),
    "32B": _qwen("Qwen2.5-VL-32B-Instruct", 152064, 5120, 27648, 64, 40, 8, False),
    "72B": _qwen("Qwen2.5-VL-72B-Instruct", 152064, 8192, 29568, 80, 64, 8, False),
}


def shape_from_hf_config(config: dict[str, Any], name: str = "config.json") -> ModelShape:
    """Read a Qwen2.5-VL ``config.json`` (transformers 5 nests text keys under ``text_config``; older files
    keep them at the top level)."""
    text = config.get("text_config") or config
    vision = config["vision_config"]
    tie = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    return ModelShape(
        name=name,
        vocab=text["vocab_size"],
        hidden=text["hidden_size"],
        intermediate=text["intermediate_size"],
        layers=text["num_hidden_layers"],
        heads=text["num_attention_heads"],
        kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
        tie_embeddings=tie,
        vision_depth=vision["depth"],
        vision_hidden=vision["hidden_size"],
        vision_intermediate=vision["intermediate_size"],
        vision_out=vision.get("out_hidden_size", text["hidden_size"]),
        merge=vision.get("spatial_merge_size", 2),
        patch=vision.get("patch_size", 14),
        temporal_patch=vision.get("temporal_patch_size", 2),
        in_channels=vision.get("in_channels", vision.get("in_chans", 3)),
    )


def resolve_shape(model_path: str, size_hint: str) -> tuple[ModelShape, str]:
    """The model's shape and where it came from. ``config.json`` wins over the hint when both exist."""
    path = Path(model_path) / "config.json"
    if path.is_file():
        try:
            return shape_from_hf_config(json.loads(path.read_text()), Path(model_path).name), str(path)
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ConfigError("model.path", f"{path} is not a Qwen2.5-VL config: {err!r}") from err
    if size_hint:
        return KNOWN_SHAPES[size_hint], f"resources.model_size={size_hint} ({path} not found)"
    raise ConfigError(
        "resources.model_size", f"{path} not found: set resources.model_size to one of {sorted(KNOWN_SHAPES)}"
    )
