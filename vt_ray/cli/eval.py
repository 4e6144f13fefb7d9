"""``python -m vt_ray eval recipe=PATH [model.path=CKPT] [eval.output_dir=DIR] [key=value ...]``."""

from __future__ import annotations

import argparse
import importlib

from vt_ray.config.loader import load_from_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    if not cfg.eval.benchmarks:
        from vt_ray.common.errors import ConfigError

        raise ConfigError("eval.benchmarks", "no benchmarks configured: add eval.benchmarks entries to the recipe")
    from vt_ray.cluster.session import init_ray

    init_ray(cfg, while_booting=lambda: importlib.import_module("vt_ray.eval.runner"))  # imports while Ray boots
    from vt_ray.eval.runner import evaluate
    summary = evaluate(cfg)
    print(f"[eval] report: {cfg.eval.output_dir}/report.md  summary: {cfg.eval.output_dir}/summary.json")
    acc = summary.get("accuracy", {})
    if acc:
        print(f"[eval] accuracy: {acc}")
    return 0
