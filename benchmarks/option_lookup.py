"""Can SFT teach the tiny model to *read the options*? The diagnostic behind the shuffled-options row of
docs/learning.md (issue 16).

With options shuffled per sample, the colour task needs a look-up through the prompt: find the colour the
caption names among the options and answer the letter in front of it. A pretrained model can read a list;
our random 2-layer model cannot, and GRPO did not teach it. This asks whether *supervision* can: SFT on the
task's usual traces (true caption, random letter) whose ``<think>`` ends in "<colour> is option <letter>", plus
``--lookup`` text look-up examples over a dark video ("Which option is red?", shuffled options, the correct
letter: the reading skill on a question that names the colour, never the video's binding). Then a
teacher-forced probe: after "... <colour> is option ", how much mass does the SFT model put on the right
letter, for held-out videos and for fresh look-up questions? 0.25 is no reading at all.

    .venv/bin/python -m benchmarks.option_lookup --lookup 384 sft.epochs=12

``--grpo-steps N`` then runs GRPO from that SFT model (the learning benchmark's recipe) and reports held-out
accuracy. Writes ``OUT/option_lookup.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def think_trace(caption: str, colour: str, letter: str, lead: str) -> str:
    from vt_ray.data.learnable import SPEC
    from vt_ray.trace import Step, render_trace

    return render_trace([Step("time", "", (0.0, SPEC.seconds)), Step("caption", caption),
                         Step("think", f"{lead} {colour} is option {letter}.")], letter)


def lookup_samples(count: int, seed: int | str, video: str) -> list[Any]:
    """The task's look-ups (:func:`vt_ray.data.learnable.lookup_samples`) with this probe's think, which ends in
    "<colour> is option <letter>"."""
    from vt_ray.data.learnable import LOOKUP_CAPTION
    from vt_ray.data.learnable import lookup_samples as task_lookups

    return task_lookups(count, seed, video, trace=lambda colour, letter: think_trace(
        LOOKUP_CAPTION, colour, letter, f"The question names {colour}."))


def write_sft_file(data: Path, count: int, seed: int) -> Path:
    """The task's train split with "<colour> is option <random letter>" thinks, plus ``count`` look-ups."""
    from vt_ray.data.learnable import write_dark_video
    from vt_ray.data.schema import read_samples, write_samples

    dark = write_dark_video(data)
    samples = []
    for s in read_samples(data / "train.jsonl"):
        colour, letter = s.extra["color"], s.trace.split("<answer>")[1][0]  # the task's random SFT letter
        samples.append(replace(s, trace=think_trace(f"The screen is mostly {colour}.", colour, letter,
                                                    f"The main colour is {colour}.")))
    samples += lookup_samples(count, seed, dark)
    random.Random(seed).shuffle(samples)
    write_samples(data / "train_sft.jsonl", samples)
    return data / "train_sft.jsonl"


def probe(model_dir: Path, data: Path, recipe: Any, count: int) -> dict[str, dict[str, float]]:
    """Teacher-forced: the letter distribution after "... <colour> is option " for held-out videos and fresh
    look-ups (mean P(correct letter), argmax accuracy, mean distribution over A-D)."""
    import torch
    from transformers import AutoProcessor

    from vt_ray.data.schema import OPTION_LETTERS, read_samples, resolve_video_paths
    from vt_ray.learner.sft_data import SftExampleBuilder
    from vt_ray.models.hf_load import load_vl_model
    from vt_ray.prompts.encode import encode_prompt

    processor = AutoProcessor.from_pretrained(model_dir)
    model = load_vl_model(str(model_dir), torch.float32).eval()  # the released video RoPE, as vLLM and the learner
    builder = SftExampleBuilder(recipe, processor)
    letters = [processor.tokenizer.convert_tokens_to_ids(letter) for letter in OPTION_LETTERS[:4]]
    sets = {
        "video": (resolve_video_paths(read_samples(data / "val.jsonl"), data)[:count],
                  "The screen is mostly {c}.</caption> <think>The main colour is {c}."),
        "lookup": (lookup_samples(count, "probe", str(data / "videos/dark.mp4")),
                   "The screen is dark.</caption> <think>The question names {c}."),
    }
    out = {}
    for name, (samples, lead) in sets.items():
        gold_mass, hits, mean = 0.0, 0, torch.zeros(4)
        for sample in samples:
            colour = sample.extra["color"]
            example = builder.build(sample)
            assert example is not None, sample.uid
            text = f"{example.prompt}<time>00:00-00:08</time> <caption>{lead.format(c=colour)} {colour} is option "
            inputs = encode_prompt(processor, text, example.frames, example.video_metadata)
            with torch.no_grad():
                p = model(**inputs).logits[0, -1, letters].softmax(-1)
            gold = OPTION_LETTERS.index(sample.answer)
            gold_mass += p[gold].item()
            hits += int(p.argmax().item() == gold)
            mean += p
        out[name] = {"p_correct": gold_mass / len(samples), "argmax_accuracy": hits / len(samples),
                     "mean_distribution": [round(x, 3) for x in (mean / len(samples)).tolist()], "n": len(samples)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.option_lookup", description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (e.g. sft.epochs=12)")
    p.add_argument("--out", default="outputs/bench/option_lookup")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lookup", type=int, default=192, help="text look-up examples added to the SFT data")
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--probe", type=int, default=48, help="samples per probe set")
    p.add_argument("--grpo-steps", type=int, default=0, help="then GRPO from the SFT model (0: probe only)")
    args = p.parse_args(argv)

    from vt_ray.cluster.session import init_ray
    from vt_ray.learning import LearningSpec, build_inputs, learning_recipe, run_grpo_stage
    from vt_ray.trainer.sft import finished_sft, run_sft

    out = Path(args.out).resolve()
    spec = LearningSpec(out=out, seed=args.seed, option_order="shuffled", model_size=args.model_size,
                        overrides=[*args.overrides, f"trainer.total_steps={max(args.grpo_steps, 1)}"], control=False)
    started = time.perf_counter()
    build_inputs(spec)
    sft_file = write_sft_file(out / "data", args.lookup, args.seed)
    recipe = learning_recipe(spec, f"sft.train_file={sft_file}")
    init_ray(recipe)
    result = run_sft(recipe)
    sft_dir = finished_sft(result)
    report: dict[str, Any] = {
        "settings": vars(args), "sft": {"steps": result.steps, "loss_first": result.first_loss,
                                        "loss_last": result.last_loss, "seconds": time.perf_counter() - started},
        "probe": probe(sft_dir, out / "data", recipe, args.probe)}
    if args.grpo_steps:
        grpo = run_grpo_stage(spec, sft_dir, "grpo", blank=False)
        report["grpo"] = {"summary": grpo["summary"], "val_accuracy": grpo["curve"]["val_accuracy"],
                          "train_accuracy": grpo["curve"]["train_accuracy"]}
    (out / "option_lookup.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    for name, figures in report["probe"].items():
        print(f"{name:>6}: P(correct letter) {figures['p_correct']:.3f}  argmax {figures['argmax_accuracy']:.3f}  "
              f"mean over A-D {figures['mean_distribution']}  (n={figures['n']}; 0.25 = no reading)")
    if "grpo" in report:
        print("GRPO:", report["grpo"]["summary"]["verdict"])
    return report


if __name__ == "__main__":
    main()
