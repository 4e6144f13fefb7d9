"""``python -m vt_ray plan recipe=... [key=value ...]``: per-GPU memory plan; exit 1 naming the overflowing term."""

from __future__ import annotations

import argparse
import sys

from vt_ray.cluster.planner import format_plan, overflow_message, plan_memory
from vt_ray.config.loader import load_from_cli
from vt_ray.config.resources import placement_groups, total_resources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="sequences per learner forward (default: learner.micro_batch_size if set, else 1)")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    micro = args.micro_batch_size or getattr(cfg.learner, "micro_batch_size", None) or 1
    plan = plan_memory(cfg, micro_batch=micro)
    groups = placement_groups(cfg.resources)
    print(format_plan(plan))
    print("\nplacement groups:")
    for g in groups:
        print(f"  {g.name:<8} {len(g.bundles)} x {g.bundles[0]}  {g.strategy:<13} per actor: {g.requests}")
    print(f"  total    {total_resources(groups)}")
    refusal = overflow_message(plan)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 1
    return 0
