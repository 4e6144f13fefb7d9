"""Synthetic image questions, and a Video-R1-format file mixing them with synthetic videos (tests, demos).

Images are small PNGs of coloured shapes on a dark background, with a word written on some; each question
has a known answer, one per Video-R1 problem type: multiple choice (colour of the shape), numerical (how
many shapes), OCR (the word), free-form (describe the shape). :func:`write_video_r1_mix` adds video rows
(multiple choice from the synthetic videos, regression: the video's length in seconds) and writes a Video-R1
training file (``problem, data_type, problem_type, options, solution, process, path, data_source``).
Kept apart from :mod:`vt_ray.data.synthetic` (the video generator) on purpose: one job per module.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from vt_ray.data.schema import OPTION_LETTERS, VideoSample

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40)}
WORDS = ("STOP", "OPEN", "EXIT", "PUSH", "SALE", "CAFE")
SIZE = 112


def _draw(path: Path, color: str, count: int, word: str | None, rng: random.Random) -> None:
    img = Image.new("RGB", (SIZE, SIZE), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    for i in range(count):
        x, y = 8 + (i % 3) * 34 + rng.randint(0, 6), 8 + (i // 3) * 34 + rng.randint(0, 6)
        draw.rectangle((x, y, x + 20, y + 20), fill=COLORS[color])
    if word:
        draw.text((30, 90), word, fill=(255, 255, 255))
    img.save(path)


def make_image_questions(out: str | Path, num_images: int, seed: int = 0) -> list[VideoSample]:
    """``num_images`` PNGs under ``out/images`` and one sample each, cycling the four question kinds. Gold
    traces are Video-R1-style (``<think>...</think>\\n<answer>...</answer>``)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = []
    for i in range(num_images):
        kind = ("multiple_choice", "numeric", "ocr", "free_text")[i % 4]
        color, count = rng.choice(sorted(COLORS)), rng.randint(1, 6)
        word = rng.choice(WORDS) if kind == "ocr" else None
        name = f"images/img_{i:03d}.png"
        _draw(out / name, color, count, word, rng)
        options: list[str] = []
        if kind == "multiple_choice":
            options = sorted(COLORS)
            rng.shuffle(options)
            question, answer = "What colour are the squares?", OPTION_LETTERS[options.index(color)]
        elif kind == "numeric":
            question, answer = "How many squares are in the image?", str(count)
        elif kind == "ocr":
            question, answer = "What word is written in the image?", word or ""
        else:
            question, answer = "Describe the squares in the image.", f"{count} {color} squares"
        samples.append(VideoSample(
            uid=f"img-{i:03d}", video=name, question=question, answer=answer, options=options, answer_type=kind,
            media="image", category=kind, source="synthetic_images",
            trace=f"<think>I look at the image: {count} {color} squares.</think>\n<answer>{answer}</answer>",
        ))
    return samples


def video_r1_record(sample: VideoSample, problem_id: int) -> dict:
    """A Video-R1 training record (COT form: with ``process``) for one of our samples with a relative path."""
    from vt_ray.rewards.video_r1 import FROM_ANSWER_TYPE

    think = (sample.trace or "").split("<answer>")[0].strip() or "<think>Let me think.</think>"
    return {
        "problem_id": problem_id,
        "problem": sample.question,
        "data_type": sample.media,
        "problem_type": FROM_ANSWER_TYPE[sample.answer_type],
        "options": [f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(sample.options)],
        "process": think,
        "solution": f"<answer>{sample.answer}</answer>",
        "path": "./" + sample.video,
        "data_source": sample.source or "synthetic",
    }


def write_video_r1_mix(out: str | Path, videos: Sequence[VideoSample], video_dir: str | Path, num_images: int = 8,
                       seed: int = 0) -> Path:
    """``out/video_r1_train.json``: a Video-R1 file whose root is ``out``, with image rows (multiple choice,
    numerical, OCR, free-form) and video rows (multiple choice from ``videos``, whose files are copied from
    ``video_dir`` to ``out/videos``, and regression: the video's duration). Returns the file's path."""
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = [video_r1_record(s, i) for i, s in enumerate(make_image_questions(out, num_images, seed))]
    for j, v in enumerate(videos):
        name = Path(v.video).name
        shutil.copyfile(Path(video_dir) / v.video, out / "videos" / name)
        letter = v.answer
        mc = VideoSample(uid=v.uid, video=f"videos/{name}", question=v.question, answer=letter, options=v.options,
                         trace=f"<think>Watching the video.</think>\n<answer>{letter}</answer>",
                         source="synthetic_videos")
        rows.append(video_r1_record(mc, len(rows)))
        if v.duration is not None and j % 2 == 0:
            seconds = f"{v.duration:g}"
            reg = VideoSample(uid=f"{v.uid}-len", video=f"videos/{name}",
                              question="How many seconds long is the video?", answer=seconds, answer_type="regression",
                              trace=f"<think>The clip ends at {seconds} s.</think>\n<answer>{seconds}</answer>",
                              source="synthetic_videos")
            rows.append(video_r1_record(reg, len(rows)))
    path = out / "video_r1_train.json"
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    return path
