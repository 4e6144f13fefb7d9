"""Rows of a data file through the ``datasets`` library: json (array or lines), jsonl and parquet, local only."""

from __future__ import annotations

import json
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
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True)
        except Exception as err:  # noqa: BLE001 - datasets/arrow raise many types; we re-raise or fall back
            if "corresponds to no data" in str(err):
                return  # an empty file or an empty JSON array: no rows
            if builder != "json":
                raise DataFileError(f"{path}: cannot read as {builder}: {type(err).__name__}: {err}") from err
            # Arrow needs one type per column across rows: a single row with, say, a number where the others
            # have text fails the whole file. Read the JSON ourselves then, so that row alone is skipped.
            yield from _json_rows(path)
            return
        yield from ds.to_list()


class DataFileError(ValueError):
    """A data file that cannot be read at all (not JSON / parquet); names the file."""


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text()
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}: neither a JSON array nor JSON lines: {err}") from err
    for row in rows:
        yield row if isinstance(row, dict) else {}
