"""Evaluation report: per-item records (results.jsonl) -> summary.json (every figure), report.md (tables people
read) and PNG plots (accuracy by benchmark and frame count; distribution of per-item grounding IoU).

Everything here is a function of the records alone (see vt_ray.eval.records), so a report can be rebuilt
from a results file at any time: ``build_report(read_results(path), out_dir)``. Metric definitions are in
vt_ray.eval.metrics and are repeated at the end of report.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vt_ray.eval import metrics
from vt_ray.eval.records import ItemResult
from vt_ray.eval.wordnet import WordNetMissingError

PLOTS_DIR = "plots"
ACCURACY_PLOT = "accuracy_by_benchmark_frames.png"
IOU_PLOT = "iou_histogram.png"
METEOR_NOTE = "METEOR is NLTK's meteor_score with WordNet 3.0 (not the COCO-caption Java METEOR of the paper)."


@dataclass(frozen=True)
class ReportOptions:
    accuracy: bool = True
    grounding: bool = True
    captioning: bool = True
    format_validity: bool = True
    self_correction: bool = True
    thresholds: tuple[float, ...] = metrics.DEFAULT_THRESHOLDS

    @classmethod
    def from_config(cls, cfg: Any) -> ReportOptions:
        """From an EvalConfig (duck-typed, so this module does not need the recipe)."""
        return cls(
            accuracy=cfg.accuracy,
            grounding=cfg.grounding,
            captioning=cfg.captioning,
            format_validity=cfg.format_validity,
            self_correction=cfg.self_correction,
            thresholds=tuple(cfg.grounding_thresholds),
        )


# --- summary ------------------------------------------------------------------------------------------------


def _groups(results: Iterable[ItemResult], *keys: str) -> dict[tuple, list[ItemResult]]:
    out: dict[tuple, list[ItemResult]] = defaultdict(list)
    for r in results:
        out[tuple(getattr(r, k) for k in keys)].append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple((str(type(x)), x) for x in kv[0])))


def _per_bench_frames(results: Sequence[ItemResult], fn: Callable[[list[ItemResult]], Any]) -> dict[str, Any]:
    """{benchmark: {frames (str): fn(items), "all": fn(all items)}} plus "all" over every benchmark."""
    out: dict[str, Any] = {}
    for (bench,), items in _groups(results, "benchmark").items():
        per = {str(frames): fn(group) for (frames,), group in _groups(items, "frames").items()}
        per["all"] = fn(items)
        out[bench] = per
    out["all"] = {str(f): fn(g) for (f,), g in _groups(results, "frames").items()}
    out["all"]["all"] = fn(list(results))
    return out


def _grounding(items: list[ItemResult], thresholds: Sequence[float]) -> dict[str, Any]:
    g = metrics.grounding_summary((r.best_ious for r in items if r.gt_windows), thresholds)
    return {"items": g.items, "miou": g.miou, **{f"recall@{t:g}": v for t, v in g.recall.items()}}


def _captioning(items: list[ItemResult], with_meteor: bool) -> dict[str, Any]:
    pairs = [(h, ref) for r in items for h, ref in zip(r.matched_captions, r.ref_captions)]
    return metrics.captioning_summary(pairs, with_meteor=with_meteor)


def summarize(results: Sequence[ItemResult], options: ReportOptions = ReportOptions()) -> dict[str, Any]:
    """Every figure of the report as a JSON-ready dict (shares in [0, 1], caption scores 0-100)."""
    results = list(results)
    summary: dict[str, Any] = {
        "items": len(results),
        "benchmarks": sorted({r.benchmark for r in results}),
        "frame_counts": sorted({r.frames for r in results}),
        "definitions": metrics.__doc__,
    }
    if options.accuracy:
        by_cat: dict[str, Any] = {}
        for (bench,), items in _groups(results, "benchmark").items():
            by_cat[bench] = {
                cat or "(none)": {str(f): metrics.accuracy(g) for (f,), g in _groups(cat_items, "frames").items()}
                for (cat,), cat_items in _groups(items, "category").items()
            }
        summary["accuracy"] = {
            "by_benchmark_frames": _per_bench_frames(results, metrics.accuracy),
            "by_category": by_cat,
        }
    if options.grounding:
        summary["grounding"] = _per_bench_frames(results, lambda xs: _grounding(xs, options.thresholds))
    if options.captioning:
        try:
            metrics.captioning_summary([("a", "a")], with_meteor=True)
            with_meteor, meteor_error = True, None
        except WordNetMissingError as err:  # a long evaluation should still get its report
            with_meteor, meteor_error = False, str(err)
        summary["captioning"] = _per_bench_frames(results, lambda xs: _captioning(xs, with_meteor))
        summary["captioning_meteor"] = {"implementation": METEOR_NOTE, "error": meteor_error}
    if options.format_validity:
        summary["format"] = _per_bench_frames(results, metrics.format_summary)
    if options.self_correction:
        summary["self_correction"] = _per_bench_frames(results, metrics.self_correction_summary)
    return summary


# --- markdown -----------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bench_frame_rows(section: dict[str, Any], frames: Sequence[int]) -> Iterable[tuple[str, str, Any]]:
    for bench, per in section.items():
        if bench == "all":
            continue
        for f in frames:
            if str(f) in per:
                yield bench, str(f), per[str(f)]
    for f in frames:
        if str(f) in section.get("all", {}):
            yield "**all**", str(f), section["all"][str(f)]


def render_markdown(summary: dict[str, Any], plots: dict[str, str]) -> str:
    frames: list[int] = summary["frame_counts"]
    out = ["# Evaluation report", "", f"{summary['items']} item results; benchmarks: "
           f"{', '.join(summary['benchmarks']) or '(none)'}; frame counts: {', '.join(map(str, frames))}.", ""]
    if "accuracy" in summary:
        acc = summary["accuracy"]["by_benchmark_frames"]
        out += ["## Accuracy (%) by benchmark and frame count", ""]
        rows = []
        for bench, per in acc.items():
            name = "**all**" if bench == "all" else bench
            rows.append([name, *(_pct(per[str(f)]["accuracy"]) if str(f) in per else "–" for f in frames),
                         int(per["all"]["n"])])
        out += [_table(["benchmark", *(f"{f} frames" for f in frames), "items"], rows), ""]
        if ACCURACY_PLOT in plots:
            out += [f"![accuracy by benchmark and frame count]({plots[ACCURACY_PLOT]})", ""]
        out += ["## Accuracy (%) by category", ""]
        rows = []
        for bench, cats in summary["accuracy"]["by_category"].items():
            for cat, per in cats.items():
                n = sum(int(v["n"]) for v in per.values())
                cells = [_pct(per[str(f)]["accuracy"]) if str(f) in per else "–" for f in frames]
                rows.append([bench, cat, *cells, n])
        out += [_table(["benchmark", "category", *(f"{f} frames" for f in frames), "items"], rows), ""]
    if "grounding" in summary:
        keys = [k for k in next(iter(summary["grounding"]["all"].values()), {}) if k.startswith("recall@")]
        out += ["## Grounding (<time> windows vs annotated windows)", ""]
        rows = [[b, f, g["items"], _pct(g["miou"]), *(_pct(g[k]) for k in keys)]
                for b, f, g in _bench_frame_rows(summary["grounding"], frames) if g["items"]]
        out += [_table(["benchmark", "frames", "items", "mIoU", *(k.replace("recall", "R") for k in keys)], rows)
                if rows else "No item has annotated windows.", ""]
        if IOU_PLOT in plots:
            out += [f"![per-item IoU distribution]({plots[IOU_PLOT]})", ""]
    if "captioning" in summary:
        note = summary["captioning_meteor"]
        out += ["## Captioning (<caption> vs reference descriptions, 0-100)", "", METEOR_NOTE, ""]
        if note["error"]:
            out += [f"METEOR not computed: {note['error']}", ""]
        rows = [[b, f, int(c["pairs"]), f"{c['bleu1']:.2f}", f"{c['bleu4']:.2f}", f"{c['rougeL']:.2f}",
                 f"{c['meteor']:.2f}" if "meteor" in c else "–"]
                for b, f, c in _bench_frame_rows(summary["captioning"], frames) if c["pairs"]]
        out += [_table(["benchmark", "frames", "pairs", "BLEU-1", "BLEU-4", "ROUGE-L", "METEOR (NLTK)"], rows)
                if rows else "No item has reference descriptions.", ""]
    if "format" in summary:
        out += ["## Format validity", ""]
        rows = []
        for b, f, s in _bench_frame_rows(summary["format"], frames):
            top = sorted(s["violation_share"].items(), key=lambda kv: -kv[1])[:3]
            rows.append([b, f, s["n"], _pct(s["valid_share"]), _pct(s["answer_extracted_share"]),
                         ", ".join(f"{k} {_pct(v)}%" for k, v in top) or "–"])
        out += [_table(["benchmark", "frames", "items", "valid %", "answer extracted %", "top violations"], rows), ""]
    if "self_correction" in summary:
        out += ["## Self-correction", ""]
        rows = [[b, f, int(s["n"]), _pct(s["revisit_share"]), _pct(s["revise_caption_share"]),
                 _pct(s["reflective_share"]), _pct(s["accuracy_when_revisiting"]), _pct(s["accuracy_otherwise"])]
                for b, f, s in _bench_frame_rows(summary["self_correction"], frames)]
        out += [_table(["benchmark", "frames", "items", "revisit %", "revise caption %", "reflective %",
                        "acc. when revisiting %", "acc. otherwise %"], rows), ""]
    out += ["## Definitions", "", "```", (summary.get("definitions") or "").strip(), "```", ""]
    return "\n".join(out)


# --- plots --------------------------------------------------------------------------------------------------


def _plot_accuracy(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = summary["accuracy"]["by_benchmark_frames"]
    benches = [b for b in acc if b != "all"]
    frames = summary["frame_counts"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(benches) + 2), 3.6))
    width = 0.8 / max(1, len(frames))
    for j, f in enumerate(frames):
        ys = [100 * acc[b][str(f)]["accuracy"] if str(f) in acc[b] else 0.0 for b in benches]
        ax.bar([i + (j - (len(frames) - 1) / 2) * width for i in range(len(benches))], ys, width, label=f"{f} frames")
    ax.set_xticks(range(len(benches)), benches, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy by benchmark and frame count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_iou(results: Sequence[ItemResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = [r.iou for r in results if r.iou is not None]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(ious, bins=[i / 10 for i in range(11)], color="tab:blue", edgecolor="white")
    ax.set_xlabel("per-item IoU (mean best IoU over annotated windows)")
    ax.set_ylabel("items")
    ax.set_title(f"Grounding IoU distribution ({len(ious)} items)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry point --------------------------------------------------------------------------------------------


def build_report(
    results: Sequence[ItemResult], output_dir: str | Path, options: ReportOptions = ReportOptions()
) -> dict[str, Any]:
    """Write summary.json, report.md and plots/*.png under ``output_dir``; returns the summary."""
    out = Path(output_dir)
    (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
    summary = summarize(results, options)
    plots: dict[str, str] = {}
    if options.accuracy and results:
        _plot_accuracy(summary, out / PLOTS_DIR / ACCURACY_PLOT)
        plots[ACCURACY_PLOT] = f"{PLOTS_DIR}/{ACCURACY_PLOT}"
    if options.grounding:
        _plot_iou(results, out / PLOTS_DIR / IOU_PLOT)
        plots[IOU_PLOT] = f"{PLOTS_DIR}/{IOU_PLOT}"
    summary["plots"] = plots
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(render_markdown(summary, plots))
    return summary
