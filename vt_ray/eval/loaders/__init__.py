"""Benchmark loaders: each reads one benchmark's *published* annotation format into VideoSamples.

Every loader has the signature ``load(path, video_root=None) -> list[VideoSample]``; its module docstring
cites where the format comes from and says what could not be confirmed. A missing annotation file raises
FileNotFoundError naming it; a malformed record raises BenchmarkFormatError naming the file and the record.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vt_ray.config.formats import BENCHMARK_FORMATS
from vt_ray.data.schema import VideoSample
from vt_ray.eval.loaders import (
    cg_bench,
    project,
    scivideobench,
    video_holmes,
    video_r1,
    videomme,
    videott,
    vrbench,
)
from vt_ray.eval.loaders._common import BenchmarkFormatError, Loader

for _name, _load in (("video_holmes", video_holmes.load), ("cg_bench", cg_bench.load),
                     ("cg_bench_reasoning", cg_bench.load_reasoning), ("vrbench", vrbench.load),
                     ("scivideobench", scivideobench.load), ("videott", videott.load), ("videomme", videomme.load),
                     ("project", project.load), ("video_r1", video_r1.load)):
    BENCHMARK_FORMATS.register(_name)(_load)  # the built-in names, known statically in vt_ray.config.formats


def load_benchmark(
    name: str, path: str | Path, video_root: str | Path | None = None, *, limit: int = 0
) -> list[VideoSample]:
    """Samples of benchmark format ``name`` (a registered name or ``package.module:function``) from the local
    file ``path`` (first ``limit`` when > 0)."""
    loader: Loader = BENCHMARK_FORMATS.get(name)  # an unknown name raises ConfigError naming the key
    samples = loader(path, video_root or None)
    counts = Counter(s.uid for s in samples)
    if len(counts) != len(samples):
        dupes = sorted(u for u, c in counts.items() if c > 1)[:5]
        raise BenchmarkFormatError(path, "-", f"duplicate uids (resume keys must be unique): {dupes}")
    return samples[:limit] if limit > 0 else samples


__all__ = ["BenchmarkFormatError", "load_benchmark"]
