"""``python -m vt_ray score --input IN.jsonl --out OUT.jsonl [recipe=PATH] [reward.key=value ...]``

Scores a file of ``{"response", "answer", "options"?, "answer_type"?, "windows"?, "captions"?, "duration"?,
"rules"?}`` lines (answer_type: multiple_choice | numeric | free_text | ocr | regression; rules: project |
video_r1, Video-R1's exact definitions) with the recipe's reward section, the same code the trainer uses,
and writes each input line back with a ``rewards`` object holding every component, ``total``, ``errors``
and ``timeouts``. A summary (means per component) goes to stdout. A malformed line stops the run with its
line number (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vt_ray.config.loader import load_from_cli
from vt_ray.rewards.composite import RewardScorer, reward_metrics
from vt_ray.rewards.target import RewardTarget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, help="JSONL of responses and ground truth")
    parser.add_argument("--out", required=True, type=Path, help="JSONL to write, one scored line per input")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and reward.* overrides")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides).reward
    if not args.input.is_file():
        print(f"error: input file not found: {args.input}", file=sys.stderr)
        return 2
    results = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with RewardScorer(cfg) as scorer, args.input.open() as src, args.out.open("w") as dst:
        for lineno, raw in enumerate(src, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or not isinstance(line.get("response"), str):
                    raise ValueError("need an object with a string 'response'")
                target = RewardTarget.from_json(line)
            except (ValueError, TypeError, KeyError, IndexError) as err:
                print(f"error: {args.input}:{lineno}: {err}", file=sys.stderr)
                return 2
            scores = scorer.score(line["response"], target)
            results.append(scores)
            dst.write(json.dumps({**line, "rewards": scores}, ensure_ascii=False) + "\n")
    summary = {"lines": len(results), **reward_metrics(results)}
    print(json.dumps(summary, indent=1))
    return 0
