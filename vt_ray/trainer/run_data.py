"""The run's training and validation samples, read from ``data.train_file`` / ``data.val_file`` in any supported
format, with rows that cannot be used skipped and counted (``data_report.json`` for our own JSONL).

Separate from the driver so what a run trains on is decided in one place, before any role starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from vt_ray.config.schema import RecipeConfig
from vt_ray.data.schema import VideoSample


def load_run_data(cfg: RecipeConfig, run_dir: Path) -> tuple[list[VideoSample], list[VideoSample]]:
    """(train, val) samples; val is cut to ``trainer.val_samples`` when that is set."""
    from vt_ray.data.formats import load_samples as load_format
    from vt_ray.data.guarded import load_samples

    data = cfg.data
    train_file, val_file = Path(data.train_file), Path(data.val_file)
    root = data.root or None
    if data.format != "project":  # verl / EasyR1 / Video-R1 files: rows mapped, bad rows and missing media counted
        train = load_format(train_file, data.format, root, data.check_media)
        val = load_format(val_file, data.format, root, data.check_media) if val_file.is_file() else []
    else:  # our JSONL: bad rows and videos outside the root skipped and counted (vt_ray/data/guarded.py)
        train, train_report = load_samples(train_file, root)
        val, val_report = load_samples(val_file, root) if val_file.is_file() else ([], None)
        for report in (train_report, val_report):
            if report is not None and report.skipped:
                print(f"[train] data: {report.summary()}", flush=True)
        (run_dir / "data_report.json").write_text(json.dumps(
            {r.path: {"kept": r.kept, "skipped": dict(r.skipped), "examples": r.examples}
             for r in (train_report, val_report) if r is not None}, indent=1))
    if cfg.trainer.val_samples:
        val = val[: cfg.trainer.val_samples]
    return train, val
