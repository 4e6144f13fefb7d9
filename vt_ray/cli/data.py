"""``python -m vt_ray data check|export recipe=PATH [key=value ...] [--options]`` (overrides before the options)

check: a preflight of the recipe's data files (train, val, and sft.train_file when set) in ``data.format``
against ``data.root``, before any cluster starts: samples per media and answer type, bad rows (file, index,
reason), missing media files. Exit 1 when a file has no usable sample, else 0. A progress line per file (rows
read, samples, bad rows, missing media) on a terminal; quiet otherwise and with ``--quiet``.

export: write the recipe's training data (``--split train|val``) as a verl parquet or an EasyR1 dataset, with
the recipe's prompt (``prompt.style``). ``--file``/``--format``/``--root`` read another file instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vt_ray.config.loader import load_from_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("check", "export"))
    parser.add_argument("--file", action="append", default=None,
                        help="data file(s) to read instead of the recipe's (repeatable)")
    parser.add_argument("--format", default=None, help="data format of --file (default: data.format)")
    parser.add_argument("--root", default=None, help="data root of --file (default: data.root)")
    parser.add_argument("--split", default="train", choices=("train", "val"), help="export: which recipe file")
    parser.add_argument("--to", choices=("verl", "easyr1"), help="export: target format")
    parser.add_argument("--out", type=Path, help="export: output file (.parquet, .json, .jsonl)")
    parser.add_argument("--show", type=int, default=20, help="check: bad rows / missing files to list per file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def _files(args: argparse.Namespace, cfg) -> list[str]:
    if args.file:
        return list(args.file)
    files = [cfg.data.train_file, cfg.data.val_file]
    if cfg.sft.train_file and cfg.sft.train_file not in files:
        files.append(cfg.sft.train_file)
    return [f for f in files if f]


def run(args: argparse.Namespace) -> int:
    from vt_ray.common.progress import Progress
    from vt_ray.data.formats import load_data

    cfg = load_from_cli(args.overrides)
    data_format = args.format or cfg.data.format
    root = args.root if args.root is not None else (cfg.data.root or None)
    if args.action == "export":
        from vt_ray.data.formats import load_samples
        from vt_ray.interop.export import export_samples

        if not args.to or not args.out:
            print("error: export needs --to verl|easyr1 and --out FILE")
            return 2
        source = (args.file or [cfg.data.train_file if args.split == "train" else cfg.data.val_file])[0]
        samples = load_samples(source, data_format, root)
        out = export_samples(samples, args.to, args.out, cfg.prompt, split=args.split)
        print(f"[data] wrote {len(samples)} {args.to} rows from {source} to {out}")
        return 0
    failed = False
    for path in _files(args, cfg):
        if not Path(path).is_file():
            print(f"[data] {path}: not found")
            failed = failed or path != cfg.data.val_file  # the validation file is optional
            continue
        with Progress(f"data check {Path(path).name}", total=None, unit="row") as bar:
            report = load_data(path, data_format, root, on_row=lambda r: bar.advance(
                samples=len(r.samples), bad=len(r.bad_rows), missing=len(r.missing_media)))
        print(json.dumps(report.counts(), ensure_ascii=False))
        for b in report.bad_rows[: args.show]:
            print(f"  bad row {b.file}[{b.index}] {b.reason}: {b.detail}")
        for b in report.missing_media[: args.show]:
            print(f"  missing media {b.file}[{b.index}]: {b.detail}")
        failed = failed or not report.samples
    return 1 if failed else 0
