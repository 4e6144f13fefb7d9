"""Evaluation section of the recipe: which benchmarks, which frame counts, which metrics, where results go.

Benchmark formats and their loaders are in :mod:`vt_ray.eval.loaders`; a recipe points each entry at a local
copy of the published annotation file (we never download at run time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vt_ray.common.errors import check
from vt_ray.config.formats import BENCHMARK_FORMATS


@dataclass(frozen=True)
class BenchmarkConfig:
    name: str = ""
    """Display name in reports and the key of per-item results (e.g. "Video-Holmes", "ActivityNet-heldout")."""
    format: str = "project"
    """Loader: video_holmes | cg_bench | cg_bench_reasoning | vrbench | scivideobench | videott | videomme |
    project (JSONL already in vt_ray.data.schema, used for the in-domain held-out splits) | video_r1 (Video-R1's
    eval_*.json; results are also written in Video-R1's output shape under <output_dir>/video_r1/)."""
    path: str = ""
    """Local annotation file in the benchmark's published format."""
    video_root: str = ""
    """Directory the benchmark's video ids/paths resolve against; empty = the annotation file's directory."""
    limit: int = 0
    """Evaluate only the first N items (0 = all): smoke runs."""


@dataclass(frozen=True)
class EvalConfig:
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    """Benchmarks to evaluate, in report order."""
    frame_counts: list[int] = field(default_factory=lambda: [16, 32, 64])
    """Frame-count sweep: every benchmark is evaluated once per entry (paper Table 2: 16, 32, 64)."""
    greedy: bool = True
    """Greedy decoding (temperature 0, one sample). False = sample with ``temperature``/``top_p`` below."""
    temperature: float = 1.0
    """Sampling temperature when ``greedy`` is false."""
    top_p: float = 1.0
    """Nucleus sampling when ``greedy`` is false."""
    max_tokens: int = 1024
    """Max response tokens at evaluation (longer than training: reasoning traces on long videos)."""
    output_dir: str = "outputs/eval"
    """Where per-item results (results.jsonl), summary.json, report.md and plots/ are written."""
    accuracy: bool = True
    """Compute answer accuracy (overall, per benchmark, per category, per frame count)."""
    grounding: bool = True
    """Compute grounding (mIoU, Recall@IoU) on items with annotated windows."""
    grounding_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    """IoU thresholds for Recall@IoU."""
    captioning: bool = True
    """Compute captioning (BLEU-1/4, ROUGE-L, METEOR) on items with reference descriptions. METEOR needs the
    offline WordNet (tools/setup_wordnet.sh)."""
    format_validity: bool = True
    """Report the share of responses that follow the trace format."""
    self_correction: bool = True
    """Report self-correction statistics (revisited windows, revised captions)."""

    def __post_init__(self) -> None:
        for i, b in enumerate(self.benchmarks):
            key = f"eval.benchmarks[{i}]"
            check(bool(b.name), f"{key}.name", "must be set")
            BENCHMARK_FORMATS.check(b.format, f"{key}.format")
            check(bool(b.path), f"{key}.path", "must point at the local annotation file")
            check(b.limit >= 0, f"{key}.limit", "must be >= 0")
        names = [b.name for b in self.benchmarks]
        check(len(names) == len(set(names)), "eval.benchmarks", f"benchmark names must be unique: {names}")
        check(bool(self.frame_counts), "eval.frame_counts", "must list at least one frame count")
        check(all(n >= 1 for n in self.frame_counts), "eval.frame_counts", "frame counts must be >= 1")
        check(len(set(self.frame_counts)) == len(self.frame_counts), "eval.frame_counts", "must not repeat")
        check(self.temperature >= 0, "eval.temperature", "must be >= 0")
        check(0 < self.top_p <= 1, "eval.top_p", "must be in (0, 1]")
        check(self.max_tokens >= 1, "eval.max_tokens", "must be >= 1")
        check(bool(self.output_dir), "eval.output_dir", "must be set")
        check(all(0 < t <= 1 for t in self.grounding_thresholds), "eval.grounding_thresholds", "each in (0, 1]")
