"""``python -m vt_ray report RUN_DIR [--out DIR] [--sft DIR] [--eval DIR ...] [--steps 1,50] [--screenshot PNG]``.

Writes ``report.html`` (self-contained: open it from disk) and ``report.md`` for a GRPO run directory, and
optionally a screenshot of the page taken with headless Chromium. Missing or damaged inputs are listed at the
top of the report; the command still exits 0 (1 only if the run directory does not exist).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (<run.output_dir>/<run.name>)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    parser.add_argument("--sft", default=None, help="SFT output directory for its loss curve (default: RUN_DIR/sft)")
    parser.add_argument("--eval", action="append", default=[], metavar="DIR",
                        help="evaluation output directory to include (repeatable; default: RUN_DIR/eval*)")
    parser.add_argument("--max-groups", type=int, default=60,
                        help="rollout groups shown, spread over the run (default 60)")
    parser.add_argument("--steps", default="", metavar="S1,S2",
                        help="show only the rollouts saved at these steps (default: all)")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="also save a screenshot of the page (needs Chromium: tools/setup_browser.sh)")


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        print(f"error: run directory {args.run_dir} does not exist")
        return 1
    from vt_ray.report.page import write_report

    try:
        steps = tuple(int(s) for s in args.steps.split(",") if s.strip())
    except ValueError:
        print(f"error: --steps takes comma-separated step numbers, got {args.steps!r}")
        return 2
    paths = write_report(args.run_dir, args.out, args.sft, tuple(args.eval), args.max_groups, steps)
    for p in paths.problems:
        print(f"[report] missing: {p}")
    print(f"[report] {paths.groups} rollout groups, {paths.rollouts} responses")
    print(f"[report] {paths.html}")
    print(f"[report] {paths.markdown}")
    if args.screenshot:
        from vt_ray.report.browser import screenshot

        print(f"[report] screenshot {screenshot(paths.html, args.screenshot)}")
    return 0
