"""``python -m vt_ray make-synthetic-data --out DIR --num-videos N [--seed S]``."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (videos/, train.jsonl, val.jsonl)")
    parser.add_argument("--num-videos", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)


def run(args: argparse.Namespace) -> int:
    from vt_ray.data.synthetic import make_synthetic_dataset

    start = time.perf_counter()
    stats = make_synthetic_dataset(args.out, args.num_videos, args.seed, args.val_fraction)
    print(json.dumps(stats["splits"], indent=2))
    print(f"wrote {args.num_videos} videos to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0
