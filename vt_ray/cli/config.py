"""``python -m vt_ray config recipe=... [key=value ...]``: validate and print the resolved recipe."""

from __future__ import annotations

import argparse

from vt_ray.config.loader import load_from_cli, to_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")


def run(args: argparse.Namespace) -> int:
    print(to_yaml(load_from_cli(args.overrides)), end="")
    return 0
