"""What does a model on the way to the shuffled-options colour task know? Three teacher-forced probes.

    .venv/bin/python -m benchmarks.reader_probe MODEL_DIR DATA_DIR [--count 32]

``MODEL_DIR``: an HF model directory (a reader base, an SFT ``hf`` export, a GRPO export); ``DATA_DIR``: a
learning-benchmark data directory with ``--base reader`` (``val.jsonl`` and ``videos/dark.mp4``). On ``--count``
held-out videos and as many fresh look-ups, argmax accuracy of:

* ``caption``: the colour after ``<caption>The screen is mostly`` (does it see the colour?);
* ``lookup``: the answer after a look-up's trace, over the dark video (can it read the options?);
* ``video``: the answer after the video's true caption and think (does it bind what it sees to a letter?).

0.25 is chance for each. Figures in docs/learning.md (the reader base). Writes ``--out`` as JSON if given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def probe(model_dir: Path, data: Path, count: int) -> dict[str, float]:
    import torch
    from transformers import AutoProcessor

    from vt_ray.data.learnable import TASK_COLORS, lookup_samples, lookup_trace, sft_trace
    from vt_ray.data.schema import OPTION_LETTERS, read_samples, resolve_video_paths
    from vt_ray.learner.sft_data import SftExampleBuilder
    from vt_ray.learning import LearningSpec, learning_recipe
    from vt_ray.models.hf_load import load_vl_model
    from vt_ray.prompts.encode import encode_prompt

    processor = AutoProcessor.from_pretrained(model_dir)
    model = load_vl_model(str(model_dir), torch.float32).eval()  # the released video RoPE, as vLLM and the learner
    builder = SftExampleBuilder(learning_recipe(LearningSpec(out=data.parent)), processor)
    tok = processor.tokenizer
    answers = [tok.convert_tokens_to_ids(">" + letter) for letter in OPTION_LETTERS[:4]]  # "<answer>B": ">B"
    colours = [tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in TASK_COLORS]
    videos = resolve_video_paths(read_samples(data / "val.jsonl"), data)[:count]
    lookups = lookup_samples(count, seed=10_000, video=str(data / "videos" / "dark.mp4"))

    def argmax_after(sample: Any, trace: str, cut: str, ids: list[int]) -> int:
        example = builder.build(sample)
        assert example is not None, sample.uid
        text = example.prompt + trace[: trace.rindex(cut) + len(cut)]
        with torch.no_grad():
            logits = model(**encode_prompt(processor, text, example.frames, example.video_metadata)).logits
        return int(logits[0, -1, ids].argmax().item())

    def share(hits: list[bool]) -> float:
        return round(sum(hits) / len(hits), 3)

    return {
        "caption": share([TASK_COLORS[argmax_after(s, sft_trace(s.extra["color"], "A"), "mostly", colours)]
                          == s.extra["color"] for s in videos]),
        "lookup": share([OPTION_LETTERS[argmax_after(s, lookup_trace(s.extra["color"], "A"), "<answer", answers)]
                         == s.answer for s in lookups]),
        "video": share([OPTION_LETTERS[argmax_after(s, sft_trace(s.extra["color"], "A"), "<answer", answers)]
                        == s.answer for s in videos]),
        "n": len(videos),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reader_probe", description=__doc__.split("\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    figures = probe(args.model_dir, args.data_dir, args.count)
    print(json.dumps(figures))
    if args.out:
        args.out.write_text(json.dumps({"model": str(args.model_dir), **figures}, indent=1) + "\n")
    return figures


if __name__ == "__main__":
    main()
