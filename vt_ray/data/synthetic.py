"""Synthetic "think with videos" data: small mp4s of coloured shapes with events in known windows.

Every sample carries what the real pipeline produces (question, options, answer, evidence windows, reference
captions, and a gold ``<time>/<caption>/<think>/<answer>`` trace), so SFT, GRPO, rewards and evaluation all run
on it. Questions need the video: the answer depends on what happens in the windows, and distractor options
are drawn from things that also happen in the same video when possible. Correct letters are balanced (each
split cycles A, B, C, D before shuffling), and ``stats.json`` records the distribution.

Four kinds of question:
* ``sequence``: which colour appeared right after the <c> <shape> left?
* ``count``: how many shapes crossed the screen from left to right (others cross right to left)?
* ``color_change``: what colour did the <shape> turn into?
* ``direction``: in which direction did the <c> <shape> move?
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vt_ray.data.schema import OPTION_LETTERS, VideoSample, write_samples
from vt_ray.trace import Step, render_trace

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("square", "circle", "triangle")
KINDS = ("sequence", "count", "color_change", "direction")
BACKGROUND = (30, 30, 30)
SIZE = 20  # shape side in pixels


@dataclass(frozen=True)
class VideoSpec:
    width: int = 112
    height: int = 112
    fps: int = 8
    seconds: float = 8.0

    @property
    def num_frames(self) -> int:
        return int(round(self.fps * self.seconds))


@dataclass
class Sprite:
    """One shape on screen during [start, end) seconds, moving linearly from ``xy0`` to ``xy1``."""

    shape: str
    color: str
    start: float
    end: float
    xy0: tuple[float, float]
    xy1: tuple[float, float]
    color_after: str | None = None  # changes colour at ``change_at``
    change_at: float = 0.0

    def at(self, t: float) -> tuple[tuple[int, int], str] | None:
        if not self.start <= t < self.end:
            return None
        a = (t - self.start) / max(self.end - self.start, 1e-6)
        x = self.xy0[0] + a * (self.xy1[0] - self.xy0[0])
        y = self.xy0[1] + a * (self.xy1[1] - self.xy0[1])
        color = self.color_after if self.color_after and t >= self.change_at else self.color
        return (int(round(x)), int(round(y))), color


@dataclass
class Scene:
    kind: str
    sprites: list[Sprite]
    question: str
    correct: str
    distractors: list[str]
    windows: list[list[float]]
    captions: list[str]
    thoughts: list[str]
    extra: dict[str, object] = field(default_factory=dict)


# --- drawing --------------------------------------------------------------------------------------------------


def _mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        c = (size - 1) / 2
        return (xx - c) ** 2 + (yy - c) ** 2 <= (size / 2) ** 2
    # isosceles triangle pointing up
    return (yy >= (size - 1) - 2 * xx) & (yy >= 2 * xx - (size - 1))


_MASKS = {s: _mask(s, SIZE) for s in SHAPES}


def render_frames(
    sprites: list[Sprite], spec: VideoSpec, background: tuple[int, int, int] = BACKGROUND
) -> np.ndarray:
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    for i in range(spec.num_frames):
        frame = frames[i]
        frame[:] = background
        t = i / spec.fps
        for sprite in sprites:
            state = sprite.at(t)
            if state is None:
                continue
            (x, y), color = state
            x0, y0 = x - SIZE // 2, y - SIZE // 2
            xs, ys = slice(max(x0, 0), min(x0 + SIZE, spec.width)), slice(max(y0, 0), min(y0 + SIZE, spec.height))
            m = _MASKS[sprite.shape][ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            frame[ys, xs][m] = COLORS[color]
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        stream.thread_count = 1  # deterministic output
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --- scenes ---------------------------------------------------------------------------------------------------


def _pos_name(x: float, width: int) -> str:
    return "left" if x < width / 3 else "right" if x > 2 * width / 3 else "centre"


def _rand_xy(rng: random.Random, spec: VideoSpec) -> tuple[float, float]:
    m = SIZE
    return rng.uniform(m, spec.width - m), rng.uniform(m, spec.height - m)


def _w(start: float, end: float) -> list[float]:
    return [round(start, 1), round(end, 1)]


def scene_sequence(rng: random.Random, spec: VideoSpec) -> Scene:
    colors = rng.sample(list(COLORS), 4)
    shapes = [rng.choice(SHAPES) for _ in range(3)]
    slots = [(0.5, 2.5), (3.0, 5.0), (5.5, 7.5)]
    sprites, captions = [], []
    for (s, e), c, sh in zip(slots, colors, shapes):
        xy = _rand_xy(rng, spec)
        sprites.append(Sprite(sh, c, s, e, xy, xy))
        captions.append(f"A {c} {sh} appears on the {_pos_name(xy[0], spec.width)} and then leaves.")
    k = rng.randrange(2)  # ask about the first or second shape
    c_left, c_next = colors[k], colors[k + 1]
    others = [c for c in colors if c not in (c_next,)]
    return Scene(
        kind="sequence",
        sprites=sprites,
        question=f"Which colour was the shape that appeared right after the {c_left} {shapes[k]} left?",
        correct=c_next,
        distractors=others[:3],
        windows=[_w(*slots[k]), _w(*slots[k + 1])],
        captions=[captions[k], captions[k + 1]],
        thoughts=[
            f"The {c_left} {shapes[k]} is visible here; I need what comes after it leaves.",
            f"The next shape to appear is {c_next}.",
        ],
    )


def scene_count(rng: random.Random, spec: VideoSpec) -> Scene:
    n_right = rng.randint(1, 4)
    n_left = rng.randint(0, 4 - n_right) if n_right < 4 else 0
    directions = ["right"] * n_right + ["left"] * n_left
    rng.shuffle(directions)
    slot = (spec.seconds - 0.5) / len(directions)
    sprites, windows, captions, thoughts = [], [], [], []
    seen = 0
    for i, d in enumerate(directions):
        s, e = 0.25 + i * slot, 0.25 + (i + 1) * slot - 0.25
        y = rng.uniform(SIZE, spec.height - SIZE)
        x0, x1 = (-SIZE / 2, spec.width + SIZE / 2) if d == "right" else (spec.width + SIZE / 2, -SIZE / 2)
        c, sh = rng.choice(list(COLORS)), rng.choice(SHAPES)
        sprites.append(Sprite(sh, c, s, e, (x0, y), (x1, y)))
        windows.append(_w(s, e))
        captions.append(f"A {c} {sh} crosses the screen from {'left to right' if d == 'right' else 'right to left'}.")
        seen += d == "right"
        thoughts.append(f"That is {seen} left-to-right crossing{'s' if seen != 1 else ''} so far.")
    numbers = ["1", "2", "3", "4", "5"]
    return Scene(
        kind="count",
        sprites=sprites,
        question="How many shapes crossed the screen from left to right?",
        correct=str(n_right),
        distractors=[x for x in numbers if x != str(n_right)][:3] if n_right < 4 else ["1", "2", "3"],
        windows=windows,
        captions=captions,
        thoughts=thoughts,
        extra={"left_to_right": n_right, "right_to_left": n_left},
    )


def scene_color_change(rng: random.Random, spec: VideoSpec) -> Scene:
    c1, c2, *rest = rng.sample(list(COLORS), 5)
    sh = rng.choice(SHAPES)
    start, end = rng.uniform(0.3, 1.5), rng.uniform(6.5, 7.8)
    change = round(rng.uniform(3.0, 5.0), 1)
    xy = _rand_xy(rng, spec)
    sprite = Sprite(sh, c1, start, end, xy, xy, color_after=c2, change_at=change)
    return Scene(
        kind="color_change",
        sprites=[sprite],
        question=f"The {sh} changes colour during the video. What colour does it turn into?",
        correct=c2,
        distractors=[c1, *rest[:2]],
        windows=[_w(start, change), _w(change, end)],
        captions=[f"A {c1} {sh} sits on the {_pos_name(xy[0], spec.width)}.", f"The {sh} is now {c2}."],
        thoughts=[f"At first the {sh} is {c1}.", f"After the change it is {c2}, so it turned {c2}."],
    )


def scene_direction(rng: random.Random, spec: VideoSpec) -> Scene:
    d = rng.choice(["left", "right", "up", "down"])
    c, distractor_color = rng.sample(list(COLORS), 2)
    sh = rng.choice(SHAPES)
    start, end = rng.uniform(0.5, 2.5), rng.uniform(5.0, 7.5)
    mid = (spec.width / 2, spec.height / 2)
    span = spec.width / 2 - SIZE
    delta = {"left": (-span, 0), "right": (span, 0), "up": (0, -span), "down": (0, span)}[d]
    moving = Sprite(sh, c, start, end, (mid[0] - delta[0], mid[1] - delta[1]), (mid[0] + delta[0], mid[1] + delta[1]))
    xy = _rand_xy(rng, spec)
    still = Sprite(rng.choice(SHAPES), distractor_color, 0.0, spec.seconds, xy, xy)
    return Scene(
        kind="direction",
        sprites=[still, moving],
        question=f"In which direction does the {c} {sh} move?",
        correct=d,
        distractors=[x for x in ("left", "right", "up", "down") if x != d],
        windows=[_w(start, end)],
        captions=[f"A {c} {sh} moves {d} across the screen while a {distractor_color} shape stays still."],
        thoughts=[f"The {c} {sh} travels {d}."],
    )


SCENES: dict[str, Callable[[random.Random, VideoSpec], Scene]] = {
    "sequence": scene_sequence,
    "count": scene_count,
    "color_change": scene_color_change,
    "direction": scene_direction,
}


# --- samples --------------------------------------------------------------------------------------------------


def gold_trace(scene: Scene, letter: str) -> str:
    steps: list[Step] = []
    for window, caption, thought in zip(scene.windows, scene.captions, scene.thoughts):
        steps += [Step("time", "", (window[0], window[1])), Step("caption", caption), Step("think", thought)]
    return render_trace(steps, letter)


def make_sample(uid: str, scene: Scene, letter: str, rng: random.Random, video: str, spec: VideoSpec) -> VideoSample:
    distractors = list(scene.distractors[:3])
    rng.shuffle(distractors)
    slot = OPTION_LETTERS.index(letter)
    options = distractors[:slot] + [scene.correct] + distractors[slot:]
    return VideoSample(
        uid=uid,
        video=video,
        question=scene.question,
        answer=letter,
        options=options,
        duration=spec.seconds,
        windows=scene.windows,
        captions=scene.captions,
        trace=gold_trace(scene, letter),
        source="synthetic",
        category=scene.kind,
        extra=dict(scene.extra),
    )


def make_synthetic_dataset(out: str | Path, num_videos: int, seed: int = 0, val_fraction: float = 0.2,
                           spec: VideoSpec | None = None) -> dict:
    """Write ``out/videos/*.mp4``, ``out/train.jsonl``, ``out/val.jsonl`` and ``out/stats.json``. ``spec``: the
    videos' size, fps and length (default 112 x 112, 8 fps, 8 s; benchmarks use larger frames)."""
    if num_videos < 2:
        raise ValueError("num_videos must be >= 2 (one train and one val sample at least)")
    out = Path(out)
    spec = spec or VideoSpec()
    rng = random.Random(seed)
    n_val = max(1, int(round(num_videos * val_fraction)))
    splits = {"train": num_videos - n_val, "val": n_val}
    stats: dict = {"seed": seed, "video": spec.__dict__, "splits": {}}
    index = 0
    for split, count in splits.items():
        # Balanced jointly: a Latin square over (kind, letter), then shuffled. Every 4 consecutive pairs hold each
        # kind and each letter once (so any split is balanced in both to within one), and every 16 hold all 16
        # combinations: a text-only policy that answers per question kind then scores exactly chance.
        pairs = [(KINDS[(index + j) % len(KINDS)], OPTION_LETTERS[(j + j // len(KINDS)) % 4]) for j in range(count)]
        rng.shuffle(pairs)
        samples = []
        for j, (kind, letter) in enumerate(pairs):
            scene = SCENES[kind](rng, spec)
            video = f"videos/{split}_{j:05d}.mp4"
            write_mp4(out / video, render_frames(scene.sprites, spec), spec.fps)
            samples.append(make_sample(f"syn-{seed}-{split}-{j:05d}", scene, letter, rng, video, spec))
            index += 1
        rng.shuffle(samples)
        write_samples(out / f"{split}.jsonl", samples)
        stats["splits"][split] = {
            "samples": len(samples),
            "answers": dict(sorted(Counter(s.answer for s in samples).items())),
            "kinds": dict(sorted(Counter(s.category for s in samples).items())),
            "kind_letter": dict(sorted(Counter(f"{s.category}:{s.answer}" for s in samples).items())),
        }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
