"""Write our samples as a verl RL parquet or an EasyR1 dataset (json/jsonl/parquet), through ``datasets``.

The row shapes and their sources are in :mod:`vt_ray.data.formats.verl` and :mod:`vt_ray.data.formats.easyr1`
(which read them back). The prompt is rendered with the recipe's prompt section, as our rollouts do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vt_ray.config.schema import PromptConfig
from vt_ray.data.formats._common import SAMPLE_KEY
from vt_ray.data.formats.easyr1 import TARGET_KEY
from vt_ray.data.schema import VideoSample
from vt_ray.prompts.chat import chat_messages, user_text


def target_json(sample: VideoSample) -> str:
    return json.dumps({TARGET_KEY: sample.reward_target().to_json()}, ensure_ascii=False)


def verl_row(sample: VideoSample, index: int, split: str, prompt: PromptConfig) -> dict[str, Any]:
    messages = []
    for m in chat_messages(sample, prompt):
        parts = m["content"]
        text = "".join(f"<{p['type']}>" if p["type"] in ("image", "video") else p["text"] for p in parts)
        messages.append({"role": m["role"], "content": text})
    # Both media columns on every row (the other one null): a parquet file has one schema for all rows.
    videos = [{"video": sample.video}] if sample.media == "video" else None
    images = [{"image": sample.video}] if sample.media == "image" else None
    return {
        "data_source": f"vt_ray/{sample.source}" if sample.source else "vt_ray",
        "prompt": messages,
        "images": images,
        "videos": videos,
        "ability": f"{sample.media}_reasoning",
        "reward_model": {"style": "rule", "ground_truth": sample.answer},
        "extra_info": {"split": split, "index": index, "question": sample.question, "answer": sample.answer,
                       "answer_type": sample.answer_type, "options": list(sample.options),
                       SAMPLE_KEY: json.dumps(sample.to_json(), ensure_ascii=False)},
    }


def easyr1_row(sample: VideoSample, index: int, split: str, prompt: PromptConfig) -> dict[str, Any]:
    # Both media columns on every row (the other one null): a parquet file has one schema for all rows.
    videos = [sample.video] if sample.media == "video" else None
    images = [sample.video] if sample.media == "image" else None
    return {
        "problem": f"<{sample.media}>" + user_text(sample, prompt),
        "answer": target_json(sample),
        "answer_text": sample.answer,
        "images": images,
        "videos": videos,
        SAMPLE_KEY: json.dumps(sample.to_json(), ensure_ascii=False),
    }


EXPORTERS = {"verl": verl_row, "easyr1": easyr1_row}


def export_samples(samples: Sequence[VideoSample], to: str, out: str | Path, prompt: PromptConfig | None = None,
                   split: str = "train") -> Path:
    """Rows of format ``to`` (verl | easyr1) for ``samples``, written to ``out`` (.parquet, .json or .jsonl;
    verl reads parquet). Media paths are written as they are in the samples (absolute after loading)."""
    import datasets

    if to not in EXPORTERS:
        raise ValueError(f"unknown export format {to!r} (verl | easyr1)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [EXPORTERS[to](s, i, split, prompt or PromptConfig()) for i, s in enumerate(samples)]
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows)
    if out.suffix == ".parquet":
        ds.to_parquet(str(out))
    elif out.suffix in (".json", ".jsonl"):
        ds.to_json(str(out), lines=True, force_ascii=False)
    else:
        raise ValueError(f"{out}: write .parquet, .json or .jsonl")
    return out
