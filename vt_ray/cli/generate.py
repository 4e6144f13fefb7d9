"""``python -m vt_ray generate recipe=... [--split val] [--limit N] [--out FILE]``: sample traces for dataset
videos with the recipe's rollout engine and write them as JSONL: one line per response with the sample's ground
truth, the input ``python -m vt_ray score`` takes.

Runs one worker in this process (no Ray): the quickest way to look at what a checkpoint writes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vt_ray.config.loader import load_from_cli
from vt_ray.config.roles import RolloutRoleConfig
from vt_ray.rollout.types import SamplingSettings
from vt_ray.trace import parse_trace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe=PATH and overrides")
    parser.add_argument("--split", choices=("train", "val"), default="val")
    parser.add_argument("--limit", type=int, default=4, help="number of samples (0: all)")
    parser.add_argument("--n", type=int, default=None, help="responses per sample (default: rollout.n)")
    parser.add_argument("--greedy", action="store_true", help="temperature 0")
    parser.add_argument("--model", default=None, help="model directory (default: model.path)")
    parser.add_argument("--out", default=None, help="output JSONL (default: print a summary only)")


def run(args: argparse.Namespace) -> int:
    cfg = load_from_cli(args.overrides)
    data_file = cfg.data.val_file if args.split == "val" else cfg.data.train_file
    from vt_ray.data.formats import load_samples

    samples = load_samples(data_file, cfg.data.format, cfg.data.root or None)
    if args.limit:
        samples = samples[: args.limit]
    from vt_ray.rollout.worker import RolloutWorker

    start = time.perf_counter()
    worker = RolloutWorker(RolloutRoleConfig.of(cfg), model_path=args.model)
    ready = time.perf_counter()
    sampling = SamplingSettings(
        n=1 if args.greedy else (args.n or cfg.rollout.n),
        temperature=0.0 if args.greedy else cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_tokens=cfg.rollout.max_tokens,
        stop=list(cfg.rollout.stop),
        seed=cfg.run.seed,
    )
    batch = worker.generate(samples, sampling)
    done = time.perf_counter()
    responses = [c for r in batch.results for c in r.completions]
    valid = sum(parse_trace(c.text).violations == () for c in responses)
    tokens = sum(len(c.token_ids) for c in responses)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        by_uid = {s.uid: s for s in samples}
        with open(args.out, "w") as f:
            for r in batch.results:
                truth = by_uid[r.uid].reward_target().to_json()
                for index, c in enumerate(r.completions):
                    f.write(json.dumps({"uid": r.uid, "index": index, "response": c.text, **truth,
                                        "finish_reason": c.finish_reason, "response_tokens": len(c.token_ids),
                                        "prompt_tokens": len(r.prompt_token_ids)}, ensure_ascii=False) + "\n")
    print(
        f"{cfg.rollout.backend}: {len(batch.results)} samples x {sampling.n} responses, {tokens} tokens in "
        f"{done - ready:.1f} s ({tokens / max(done - ready, 1e-9):.0f} tok/s; engine start {ready - start:.1f} s); "
        f"valid traces {valid}/{len(responses)}; skipped {batch.skipped_counts() or 0}"
        + (f"; wrote {args.out}" if args.out else "")
    )
    if responses:
        print(f"first response: {responses[0].text[:300]!r}")
    return 0
