"""``python -m vt_ray <command>``: one entrypoint, locally and under ``ray job submit``.

Commands are registered in ``COMMANDS`` as (module, help); each module has ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``--help`` is instant and a
command never pays for another's imports (vLLM, Ray).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "make-tiny-model": ("vt_ray.cli.tiny_model", "write a tiny random Qwen2.5-VL with an offline tokenizer"),
    "make-synthetic-data": ("vt_ray.cli.synthetic_data", "write small synthetic videos and a dataset"),
    "config": ("vt_ray.cli.config", "print the resolved recipe (validates it)"),
    "data": ("vt_ray.cli.data", "check the recipe's data files (counts, bad rows, missing media) or export "
             "them to verl / EasyR1"),
    "plan": ("vt_ray.cli.plan", "per-GPU memory plan and placement groups for a recipe (refuses overflow)"),
    "generate": ("vt_ray.cli.generate", "sample responses for dataset videos with vLLM (or HF)"),
    "sft": ("vt_ray.cli.sft", "supervised fine-tuning on gold traces with the FSDP2 learner group"),
    "train": ("vt_ray.cli.train", "GRPO training on Ray (locally or under ray job submit); resumes"),
    "eval": ("vt_ray.cli.eval", "evaluate a checkpoint on benchmarks and frame counts; writes a report"),
    "demo": ("vt_ray.demo", "the tiny end-to-end run on a local Ray cluster"),
    "report": ("vt_ray.cli.report", "an HTML + Markdown report of a run: curves, rollout viewer, checkpoints"),
    "score": ("vt_ray.cli.score", "score a JSONL of responses with the recipe's rewards"),
    "curate": ("data_pipeline.curate_cli",
               "Hindsight-Curation on Ray Data: build SFT traces and RL samples from source datasets"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vt_ray",
        description="Video-Thinker on Ray. Recipe commands take recipe=PATH and key=value overrides; "
                    "--quiet (any command) turns off the live progress lines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quiet" in argv:  # any command: no live progress lines (they are also off when stderr is not a TTY)
        argv = [a for a in argv if a != "--quiet"]
        os.environ["VT_RAY_QUIET"] = "1"  # read by vt_ray.common.progress (not imported here: --help stays instant)
    parser = _parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_help(sys.stderr)
            print(f"\nunknown command: {argv[0]}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"python -m vt_ray {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    from vt_ray.common.errors import ConfigError

    try:
        return int(module.run(args) or 0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
