"""Write our samples as a verl RL parquet or an EasyR1 dataset (json/jsonl/parquet), through ``datasets``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vt_ray.config.schema import PromptConfig
from vt_ray.data.formats import easyr1, verl
from vt_ray.data.schema import VideoSample

EXPORTERS = {"verl": verl.export_row, "easyr1": easyr1.export_row}


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
