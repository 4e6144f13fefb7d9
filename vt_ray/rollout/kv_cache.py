"""The vLLM-CPU KV cache sized to what a recipe needs (``rollout.kv_cache_gib: auto``), not a fixed reservation.

On CPU, vLLM allocates the whole KV cache at start and keeps it (``VLLM_CPU_KVCACHE_SPACE``, whole GiB only,
or ``kv_cache_memory_bytes``, which we pass). The tiny recipe needs about 25 MiB of the 1 GiB it reserved.

The need: ``sequences`` running at once, each at most ``seq_len`` tokens (the prompt budget plus
``rollout.max_tokens``), in blocks of ``BLOCK_TOKENS``, at ``2 x layers x kv_heads x head_dim x dtype`` bytes a
token, times ``MARGIN``. vLLM refuses to start unless one sequence of ``max_model_len`` fits (plus the null
block it holds back), so that is the floor. ``sequences`` is what one rollout call sends an engine: the
training call's prompts x (n + T-GRPO's shuffled n), capped by ``max_num_seqs``. A larger call (a validation or
evaluation set) still runs: vLLM schedules the sequences that fit and queues the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from vt_ray.config.roles import RolloutRoleConfig
from vt_ray.config.schema import RolloutConfig

GIB = 1024**3
BLOCK_TOKENS = 128
"""Rounding unit: vLLM-CPU's attention blocks are 16-128 tokens; rounding to the larger never undersizes."""
MARGIN = 1.25
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def kv_bytes_per_token(hf_config: dict[str, Any], dtype: str) -> int:
    """K and V of every layer for one token, from a Qwen2.5-VL (or any decoder) ``config.json``."""
    text = hf_config.get("text_config") or hf_config
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    kv_heads = text.get("num_key_value_heads") or heads
    return 2 * text["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]


def kv_cache_bytes(bytes_per_token: int, sequences: int, seq_len: int, max_model_len: int,
                   margin: float = MARGIN) -> int:
    """Bytes of KV cache for ``sequences`` sequences of up to ``seq_len`` tokens (at least one of
    ``max_model_len``, vLLM's start-up check), in whole blocks, plus the null block, times ``margin``."""
    if min(bytes_per_token, sequences, seq_len, max_model_len) < 1 or margin < 1:
        raise ValueError(f"bad KV sizing input: {bytes_per_token=} {sequences=} {seq_len=} {max_model_len=} "
                         f"{margin=}")
    per_seq = math.ceil(min(seq_len, max_model_len) / BLOCK_TOKENS)
    blocks = max(sequences * per_seq, math.ceil(max_model_len / BLOCK_TOKENS)) + 1
    return math.ceil(blocks * BLOCK_TOKENS * bytes_per_token * margin)


def read_hf_config(model_path: str) -> dict[str, Any]:
    return dict(json.loads((Path(model_path) / "config.json").read_text()))


def engine_kv_cache_bytes(rollout: RolloutConfig, model_path: str, dtype: str, sequences: int | None = None,
                          seq_len: int | None = None) -> int:
    """What the engine reserves: ``rollout.kv_cache_gib`` when it is a number, else the computed need (without a
    recipe: ``max_num_seqs`` sequences of ``max_model_len``, the engine's own limits)."""
    fixed = rollout.kv_cache_fixed_gib
    if fixed is not None:
        return int(fixed * GIB)
    return kv_cache_bytes(kv_bytes_per_token(read_hf_config(model_path), dtype),
                          sequences or rollout.max_num_seqs, seq_len or rollout.max_model_len, rollout.max_model_len)


def sized_for_role(role: RolloutRoleConfig, model_path: str | None = None) -> RolloutConfig:
    """``role.rollout`` with ``kv_cache_gib: auto`` resolved: the training call's sequences, each of the prompt
    budget + max_tokens, at this model's KV bytes per token; a number, or a model without a readable
    config.json, is left as it is."""
    ro = role.rollout
    path = model_path or role.model.path
    if ro.kv_cache_fixed_gib is not None or not (Path(path) / "config.json").is_file():
        return ro
    need = engine_kv_cache_bytes(ro, path, role.model.dtype, role.sequences_per_call,
                                 role.data.max_prompt_tokens + ro.max_tokens)
    return replace(ro, kv_cache_gib=f"{need / GIB:.6f}")
