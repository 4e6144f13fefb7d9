"""Which readers turn files into samples: the registries ``data.format`` and ``eval.benchmarks[].format`` name.

Declared here, below the data and eval packages, so a recipe checks a format name at load time without
importing the readers (or ``datasets``); the built-ins register themselves in the modules named below, imported
on first lookup. A recipe may also give ``package.module:function`` (see :mod:`vt_ray.common.registry`), so a
team's own format needs no edit of ours; the contracts are in the docstrings below.
"""

from __future__ import annotations

from vt_ray.common.registry import Registry

DATA_FORMATS = Registry("data format", "data.format", "vt_ray.data.formats", ("project", "video_r1", "verl", "easyr1"))
"""name -> ``convert(row: dict, index: int, file: Path, root: Path) -> VideoSample``: one row of a json, jsonl or
parquet file (read through ``datasets``; ``project`` reads its own JSONL) to a sample, its media path resolved
against ``root``; a bad row raises ``vt_ray.data.formats.errors.RowError`` (skipped and counted, never fatal)."""

BENCHMARK_FORMATS = Registry(
    "benchmark format", "eval.benchmarks[].format", "vt_ray.eval.loaders",
    ("video_holmes", "cg_bench", "cg_bench_reasoning", "vrbench", "scivideobench", "videott", "videomme", "project",
     "video_r1"),
)
"""name -> ``load(path, video_root: str | Path | None) -> list[VideoSample]``: a benchmark's published annotation
file; a missing file raises FileNotFoundError naming it, a malformed record
``vt_ray.eval.loaders._common.BenchmarkFormatError`` naming the file and the record."""
