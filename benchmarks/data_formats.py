"""Data formats and Video-R1 rewards: how fast a Video-R1 file loads, and how fast each problem type scores.

Loads a generated Video-R1 file of ``--rows`` rows (every problem type, half images, half videos; the media
are two small files every row points at) as a JSON array and as JSON lines, exports it to a verl parquet and
loads that back, then scores one response per problem type ``--responses`` times with Video-R1's rewards.
Prints rows/s and responses/s and writes them to ``--out`` (JSON).
Run: ``.venv/bin/python -m benchmarks.data_formats [--rows 20000 --responses 2000]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
SOLUTIONS = {"multiple choice": "B", "numerical": "12", "OCR": "open late until ten",
             "free-form": "a green square moves to the right", "regression": "4.5"}
RESPONSES = {"multiple choice": "B", "numerical": "12", "OCR": "open late till ten",
             "free-form": "the green square moves right", "regression": "4.2"}


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        kind = TYPES[i % len(TYPES)]
        media = "image" if i % 2 else "video"
        rows.append({"problem_id": i, "problem": f"Question {i}?", "data_type": media, "problem_type": kind,
                     "options": ["A. red", "B. green", "C. blue"] if kind == "multiple choice" else [],
                     "solution": f"<answer>{SOLUTIONS[kind]}</answer>",
                     "path": "./images/a.png" if media == "image" else "./videos/a.mp4", "data_source": "bench"})
    return rows


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--responses", type=int, default=2000)
    parser.add_argument("--out", default="outputs/bench/data_formats.json")
    args = parser.parse_args()

    import datasets  # noqa: F401  imported before the clock starts (about 2-10 s on its own)

    from vt_ray.data.formats import load_data
    from vt_ray.interop.export import export_samples
    from vt_ray.rewards.video_r1 import training_reward

    figures: dict[str, float] = {"rows": args.rows}
    with tempfile.TemporaryDirectory(prefix="bench_formats_") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "videos").mkdir()
        (root / "images" / "a.png").write_bytes(b"png")
        (root / "videos" / "a.mp4").write_bytes(b"mp4")
        rows = _rows(args.rows)
        (root / "train.json").write_text(json.dumps(rows))
        (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name in ("train.json", "train.jsonl"):
            seconds, report = _timed(lambda n=name: load_data(root / n, "video_r1"))
            assert len(report.samples) == args.rows, report.counts()
            figures[f"load_{name.replace('.', '_')}_rows_per_s"] = args.rows / seconds
        seconds, _ = _timed(lambda: export_samples(report.samples, "verl", root / "verl.parquet"))
        figures["export_verl_rows_per_s"] = args.rows / seconds
        seconds, back = _timed(lambda: load_data(root / "verl.parquet", "verl", root=root))
        assert len(back.samples) == args.rows
        figures["load_verl_parquet_rows_per_s"] = args.rows / seconds
    for kind in TYPES:
        response = f"<think>hmm</think><answer>{RESPONSES[kind]}</answer>"
        solution = f"<answer>{SOLUTIONS[kind]}</answer>"
        seconds, _ = _timed(lambda k=kind, r=response, s=solution: [training_reward(r, s, k)
                                                                      for _ in range(args.responses)])
        figures[f"reward_{kind.replace(' ', '_')}_per_s"] = args.responses / seconds
    for key, value in figures.items():
        print(f"{key:<36} {value:>12.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
