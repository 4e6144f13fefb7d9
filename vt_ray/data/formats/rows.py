"""Rows of a data file through the ``datasets`` library: json (array or lines), jsonl and parquet, local only."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUFFIX_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def iter_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Each row of a local json/jsonl/parquet file as a plain dict (missing keys of a row come back as None,
    as Arrow unifies the columns). The Arrow cache goes to a temporary directory, not ~/.cache."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    builder = SUFFIX_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"{path}: unsupported data file type {path.suffix!r} (.json, .jsonl, .parquet)")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="vt_ray_ds_") as cache:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                   keep_in_memory=True)
        yield from ds.to_list()
