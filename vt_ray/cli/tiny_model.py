"""``python -m vt_ray make-tiny-model --out DIR [--seed N] [--size tiny|small]``."""

from __future__ import annotations

import argparse
import time

from vt_ray.models.tiny import SIZES, directory_digest, make_tiny_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (Hugging Face format)")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed (same seed, same bytes)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = make_tiny_model(args.out, seed=args.seed, size=args.size)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(
        f"wrote {args.size} Qwen2.5-VL to {out} ({size_mb:.1f} MB, seed {args.seed}, "
        f"digest {directory_digest(out)[:12]}) in {time.perf_counter() - start:.1f} s"
    )
    return 0
