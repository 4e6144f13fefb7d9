"""A video task a tiny random Qwen2.5-VL can learn with GRPO on 2 CPU cores: which colour fills the screen?

Why it exists: the paper-format synthetic data (:mod:`vt_ray.data.synthetic`) teaches the trace format, but its
questions (counting crossings, event order) are far beyond what a 2-layer random model can learn in minutes, so
its accuracy says nothing about whether GRPO works. Here the answer needs the pixels and nothing else:

* every frame is filled with the *dominant* colour, and two smaller shapes in two of the *other* option colours
  move across it, so "which option colours appear in the video" does not give the answer away;
* four colour options, correct letters balanced exactly (train and val), val videos disjoint from train;
* ``option_order="fixed"``: options are always red, green, blue, yellow (the letter is a function of the
  colour); ``"shuffled"``: a fresh permutation per sample, so the policy must bind the colour it sees to the
  letter the prompt gives it (a binding SFT never shows, see below);
* ``task="order"`` is the temporal-order variant (which colour fills the screen *first*?): the first half of
  the video is one option colour, the second half another, so both colours are always in the frames and only
  their order gives the answer; shuffling the frames destroys it (the task T-GRPO is made for);
* ``blank=True`` writes the same samples (uids, questions, options, answers) over uniformly dark frames: the
  control run whose accuracy must stay at chance.

The SFT target (``trace``) describes what the video shows (a ``<caption>`` with the true colour, as
Video-Thinker's traces do) but its ``<answer>`` is a seeded random letter: after SFT the model knows the
format and looks at the video, but held-out accuracy is at chance, so any rise is GRPO's doing. (Measured: SFT
targets that ignore the video entirely teach the model to ignore the pixels, and GRPO did not recover them.)

*Look-ups* (:func:`lookup_samples`) are the reading skill a pretrained model brings to shuffled options: "Which
option is red?" over a dark video, the answer the letter the options give red. The colour is named in the
question, never shown in the pixels, so they teach reading a list, not the video's binding.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vt_ray.data.schema import ANSWER_WEIGHT, OPTION_LETTERS, VideoSample, read_samples, write_samples
from vt_ray.data.synthetic import BACKGROUND, COLORS, SHAPES, Sprite, VideoSpec, render_frames, write_mp4
from vt_ray.trace import Step, render_trace

TASK_COLORS = ("red", "green", "blue", "yellow")
OPTION_ORDERS = ("fixed", "shuffled")
TASKS = ("color", "order")
QUESTIONS = {"color": "Which colour fills most of the screen?", "order": "Which colour fills the screen first?"}
QUESTION = QUESTIONS["color"]
SPEC = VideoSpec(width=112, height=112, fps=2, seconds=8.0)  # 16 frames; the recipes sample 8


@dataclass(frozen=True)
class LearnableTaskConfig:
    num_train: int = 192
    num_val: int = 64
    option_order: str = "fixed"
    seed: int = 0
    task: str = "color"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.option_order not in OPTION_ORDERS:
            raise ValueError(f"option_order must be one of {OPTION_ORDERS}, got {self.option_order!r}")
        for name in ("num_train", "num_val"):
            value = getattr(self, name)
            if value < len(TASK_COLORS) or value % len(TASK_COLORS):
                raise ValueError(
                    f"{name} must be a positive multiple of {len(TASK_COLORS)} (balanced letters), got {value}"
                )


def _distractor_sprites(rng: random.Random, colors: list[str]) -> list[Sprite]:
    """Two shapes in other option colours crossing the frame: present in the video, never dominant."""
    sprites = []
    for color in colors:
        y0, y1 = rng.uniform(20, 92), rng.uniform(20, 92)
        x0, x1 = (10.0, 102.0) if rng.random() < 0.5 else (102.0, 10.0)
        sprites.append(Sprite(rng.choice(SHAPES), color, 0.0, SPEC.seconds + 1, (x0, y0), (x1, y1)))
    return sprites


def sft_trace(color: str, letter: str, then: str | None = None) -> str:
    """The format target: true caption, withheld (random) answer letter. ``then``: the order task's second
    colour (the caption and the reasoning then tell the order)."""
    if then is None:
        steps = [Step("time", "", (0.0, SPEC.seconds)), Step("caption", f"The screen is mostly {color}."),
                 Step("think", f"The main colour is {color}.")]
    else:
        half = SPEC.seconds / 2
        steps = [Step("time", "", (0.0, half)), Step("caption", f"The screen is {color}, then {then}."),
                 Step("think", f"First {color}, then {then}.")]
    return render_trace(steps, letter)


LOOKUP_CAPTION = "The screen is dark."


def lookup_question(color: str) -> str:
    return f"Which option is {color}?"


def lookup_trace(color: str, letter: str) -> str:
    """A look-up's target: nothing in the video, the colour taken from the question, the letter it is listed
    under. Same tags and shape as :func:`sft_trace`, so the reading carries over to the task's traces."""
    return render_trace([Step("time", "", (0.0, SPEC.seconds)), Step("caption", LOOKUP_CAPTION),
                         Step("think", f"The colour is {color}.")], letter)


def lookup_sample(color: str, options: list[str], video: str, uid: str = "lookup",
                  trace: Callable[[str, str], str] = lookup_trace) -> VideoSample:
    """One look-up: "Which option is ``color``?" over ``video``, answered by the letter ``options`` give it."""
    letter = OPTION_LETTERS[options.index(color)]
    return VideoSample(uid=uid, video=video, question=lookup_question(color), answer=letter, options=options,
                       duration=SPEC.seconds, windows=[[0.0, SPEC.seconds]], captions=[LOOKUP_CAPTION],
                       trace=trace(color, letter), source="lookup", category="lookup", extra={"color": color})


def lookup_samples(count: int, seed: int | str, video: str,
                   trace: Callable[[str, str], str] = lookup_trace) -> list[VideoSample]:
    """``count`` look-ups (colours balanced, options shuffled) over ``video`` (a dark clip); ``trace(colour,
    letter)`` writes each target."""
    rng = random.Random(f"lookup-{seed}")
    samples = []
    for i in range(count):
        color, options = TASK_COLORS[i % len(TASK_COLORS)], list(TASK_COLORS)
        rng.shuffle(options)
        samples.append(lookup_sample(color, options, video, f"lookup-{seed}-{i:05d}", trace))
    return samples


def write_dark_video(data: Path) -> str:
    """``data/videos/dark.mp4``, uniformly dark frames (the look-ups' video); returns its relative path."""
    dark = "videos/dark.mp4"
    write_mp4(data / dark, np.full((SPEC.num_frames, SPEC.height, SPEC.width, 3), BACKGROUND, dtype=np.uint8),
              SPEC.fps)
    return dark


SFT_ANSWERS = ("random", "withheld", "uniform")
"""What SFT teaches in the task traces' ``<answer>``: the seeded random letter the trace carries; nothing
(``withheld``: no loss on it); or every option letter equally (``uniform``: see :func:`every_letter`)."""


def every_letter(sample: VideoSample) -> list[VideoSample]:
    """The sample once per option letter as its trace's answer, each with 1/k of the answer's loss weight.

    Why: in expectation SFT then fits a uniform distribution over the letters at the task's answer, the same
    for every video. So held-out accuracy starts at chance with every answer a valid letter, and no per-video
    letter is memorised (a random letter is: fitting it means ignoring the options). A withheld answer leaves
    the slot untrained: measured, seeds 1 and 2 then answered in words, and GRPO's format and accuracy terms
    pushed them onto whichever letter they wrote first. The copies also train the rest of the trace k times an
    epoch; the documented command divides ``sft.epochs`` by k and multiplies ``--lookups`` by k to keep the
    budget (docs/learning.md)."""
    assert sample.trace is not None
    head = sample.trace.strip()
    head = head[: head.rindex("<answer>")]
    letters = OPTION_LETTERS[: len(sample.options)]
    weight = float(sample.extra.get(ANSWER_WEIGHT, 1.0)) / len(letters)
    return [replace(sample, uid=f"{sample.uid}~ans{letter}", trace=f"{head}<answer>{letter}</answer>",
                    extra={**sample.extra, ANSWER_WEIGHT: weight}) for letter in letters]


def with_answer_weight(samples: list[VideoSample], weight: float) -> list[VideoSample]:
    """``samples`` whose answer tokens weigh ``weight`` in SFT's loss (1: unchanged)."""
    return samples if weight == 1.0 else [replace(s, extra={**s.extra, ANSWER_WEIGHT: weight}) for s in samples]


def write_lookups_file(path: Path, lookups: list[VideoSample], answer_weight: float) -> Path:
    """``path``: ``lookups`` alone, their answer token at ``answer_weight`` (the reader's SFT in the video context)."""
    write_samples(path, with_answer_weight(lookups, answer_weight))
    return path


def write_sft_file(data: str | Path, lookups: int, seed: int, answers: str = "random",
                   lookup_answer_weight: float = 1.0) -> Path:
    """``data/train_sft.jsonl``: the task's train split (its answers as ``answers`` says, one of
    :data:`SFT_ANSWERS`) plus ``lookups`` look-ups over ``data/videos/dark.mp4`` (shuffled together), so SFT
    keeps a reading base model reading while it learns the format. ``lookup_answer_weight``: SFT's loss
    weight on a look-up's answer token (the reading's one token of ~48)."""
    if answers not in SFT_ANSWERS:
        raise ValueError(f"sft answers must be one of {SFT_ANSWERS}, got {answers!r}")

    data = Path(data)
    task = read_samples(data / "train.jsonl")
    if answers == "withheld":
        task = with_answer_weight(task, 0.0)
    elif answers == "uniform":
        task = [copy for s in task for copy in every_letter(s)]
    samples = [*task, *with_answer_weight(lookup_samples(lookups, seed, write_dark_video(data)), lookup_answer_weight)]
    random.Random(f"sft-lookups-{seed}").shuffle(samples)
    write_samples(data / "train_sft.jsonl", samples)
    return data / "train_sft.jsonl"


def _order_frames(first: str, second: str) -> np.ndarray:
    """First half of the frames filled with ``first``, the second half with ``second``."""
    frames = np.empty((SPEC.num_frames, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    half = SPEC.num_frames // 2
    frames[:half], frames[half:] = COLORS[first], COLORS[second]
    return frames


def _options(rng: random.Random, order: str, answer_slot: int, color: str) -> list[str]:
    if order == "fixed":
        return list(TASK_COLORS)
    others = [c for c in TASK_COLORS if c != color]
    rng.shuffle(others)
    return others[:answer_slot] + [color] + others[answer_slot:]


def _split(
    rng: random.Random, cfg: LearnableTaskConfig, split: str, count: int, out: Path, blank: bool
) -> list[VideoSample]:
    # Balanced: each colour (fixed order: each gold letter) exactly count/4 times. The SFT answer letter is
    # balanced *within each colour* (a Latin square over colour x letter), so the SFT targets carry no
    # colour -> letter association at all, not even a chance one; shuffled order: the gold slot is balanced too.
    k = len(TASK_COLORS)
    # Order task: the second colour cycles through the other three, so each ordered pair is equally frequent
    # when count is a multiple of 12.
    rows = [(TASK_COLORS[i % k], OPTION_LETTERS[(i + i // k) % k], (i // k + i // (k * k)) % k, (i // k) % (k - 1))
            for i in range(count)]
    rng.shuffle(rows)
    samples = []
    for j, (color, random_letter, slot, then_slot) in enumerate(rows):
        others = [c for c in TASK_COLORS if c != color]
        then = others[then_slot] if cfg.task == "order" else None
        # drawn for real and blank frames alike: the same seed gives the same samples either way
        sprites = _distractor_sprites(rng, rng.sample(others, 2)) if then is None else []
        options = _options(rng, cfg.option_order, slot, color)
        video = f"videos/{split}_{j:05d}.mp4"
        if blank:
            frames = np.full((SPEC.num_frames, SPEC.height, SPEC.width, 3), BACKGROUND, dtype=np.uint8)
        elif then is not None:
            frames = _order_frames(color, then)
        else:
            frames = render_frames(sprites, SPEC, background=COLORS[color])
        write_mp4(out / video, frames, SPEC.fps)
        caption = f"The screen is mostly {color}." if then is None else f"The screen is {color}, then {then}."
        samples.append(VideoSample(
            uid=f"{cfg.task}-{cfg.option_order}-{cfg.seed}-{split}-{j:05d}",
            video=video,
            question=QUESTIONS[cfg.task],
            answer=OPTION_LETTERS[options.index(color)],
            options=options,
            duration=SPEC.seconds,
            windows=[[0.0, SPEC.seconds if then is None else SPEC.seconds / 2]],
            captions=[caption],
            trace=sft_trace(color, random_letter, then),
            source="learnable",
            category="dominant_color" if then is None else "color_order",
            extra={"color": color, "then": then, "option_order": cfg.option_order, "blank": blank},
        ))
    return samples


def make_learnable_dataset(out: str | Path, cfg: LearnableTaskConfig, blank: bool = False) -> dict:
    """Write ``out/videos/*.mp4``, ``out/train.jsonl``, ``out/val.jsonl`` and ``out/stats.json``.

    The same ``cfg`` gives the same samples with ``blank`` on or off (only the pixels differ)."""
    out = Path(out)
    rng = random.Random(f"learnable-{cfg.seed}")
    stats: dict = {"task": "dominant_color" if cfg.task == "color" else "color_order", "config": cfg.__dict__,
                   "blank": blank, "video": SPEC.__dict__, "splits": {}}
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        samples = _split(rng, cfg, split, count, out, blank)
        write_samples(out / f"{split}.jsonl", samples)
        stats["splits"][split] = {
            "samples": len(samples),
            "answers": dict(sorted(Counter(s.answer for s in samples).items())),
            "colors": dict(sorted(Counter(s.extra["color"] for s in samples).items())),
            "sft_answer_correct_share": sum(s.trace.endswith(f"<answer>{s.answer}</answer>") for s in samples)  # type: ignore[union-attr]
            / len(samples),
        }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
