"""Write the run report: ``report.html`` (self-contained: curves, thumbnails, CSS and JS inline, so it opens
from a file with no network) and ``report.md`` (the same facts as tables, curves as PNG files beside it).

The HTML is rendered with Jinja2 (autoescaped); the viewer's data goes in as JSON inside a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, so model output can never
close the block or inject markup.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from vt_ray.report.curves import CURVES, SFT_CURVES, Curve, render_curves
from vt_ray.report.run_data import RunData, load_run
from vt_ray.report.viewer import ViewerData, build_viewer

TEMPLATES = Path(__file__).parent / "templates"
SUMMARY_KEYS = ("reward/total", "reward/accuracy", "reward/format", "reward/temporal_iou", "trace/valid_share",
                "val/total", "val/accuracy", "val/valid_share", "actor/kl_loss", "actor/entropy",
                "response/length_mean", "time/step_s")


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    groups: int
    rollouts: int
    problems: list[str]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int | float):
        return f"{value:.4g}"
    return str(value)


def _summary_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for key in SUMMARY_KEYS:
        logged = [r for r in rows if isinstance(r.get(key), int | float)]
        if logged:
            out.append((key, _fmt(logged[0][key]), _fmt(logged[-1][key])))
    return out


def _eval_rows(data: RunData) -> list[dict[str, Any]]:
    out = []
    for e in data.evals:
        n = len(e.items)
        ious = [i["iou"] for i in e.items if isinstance(i.get("iou"), int | float)]
        out.append({
            "name": e.name, "path": e.path, "n_items": n,
            "accuracy": _fmt(sum(bool(i.get("correct")) for i in e.items) / n) if n else "-",
            "format_valid": _fmt(sum(bool(i.get("format_valid")) for i in e.items) / n) if n else "-",
            "miou": _fmt(sum(ious) / len(ious)) if ious else "-",
        })
    return out


def _environment_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for k, v in env.items():
        if isinstance(v, dict):
            rows += [(f"{k}: {pk}", str(pv)) for pk, pv in v.items()]
        else:
            rows.append((k, str(v)))
    return rows


def _script_json(obj: Any) -> str:
    # allow_nan=False: a NaN that slipped through must fail here, not as a script error in the reader's browser
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _steps_text(rows: list[dict[str, Any]]) -> str:
    steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
    return f"steps {min(steps)}-{max(steps)} logged" if steps else "no steps logged"


def render_html(data: RunData, curves: list[Curve], view: ViewerData) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    checkpoints = [{**c.__dict__, "written": time.strftime("%Y-%m-%d %H:%M", time.gmtime(c.modified))}
                   for c in data.checkpoints]
    return env.get_template("report.html.j2").render(
        name=data.name, run_dir=str(data.run_dir), made_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        steps_text=_steps_text(data.metrics), problems=data.problems + view.problems,
        summary_rows=_summary_rows(data.metrics), curves=curves, evals=_eval_rows(data), checkpoints=checkpoints,
        recipe_text=data.recipe_text, environment=_environment_rows(data.environment),
        css=(TEMPLATES / "report.css").read_text(), viewer_js=(TEMPLATES / "viewer.js").read_text(),
        viewer_json=_script_json({"groups": view.groups, "frames": view.frames}),
    )


def render_markdown(data: RunData, curves: list[Curve], view: ViewerData, files_dir: str) -> str:
    lines = [f"# vt_ray run report: {data.name}", "", f"`{data.run_dir}` · {_steps_text(data.metrics)}", ""]
    problems = data.problems + view.problems
    if problems:
        lines += ["## What is missing or damaged", ""] + [f"- {p}" for p in problems] + [""]
    rows = _summary_rows(data.metrics)
    if rows:
        lines += ["## Summary", "", "| metric | first step | last step |", "| --- | --- | --- |"]
        lines += [f"| {k} | {a} | {b} |" for k, a, b in rows] + [""]
    if curves:
        lines += ["## Curves", ""] + [f"![{c.title}]({files_dir}/{c.file_name})" for c in curves] + [""]
    lines += ["## Rollouts", "", f"{len(view.groups)} groups, {view.responses} responses "
              "(open report.html for the viewer: frames, windows on the timeline, highlighted traces).", ""]
    if view.groups:
        lines += ["| source | step | uid | responses | correct | format valid | mean reward |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for g in view.groups:
            rs = g["responses"]
            totals = [r["reward"].get("total", r["reward"].get("correct", 0.0)) for r in rs]
            lines.append(f"| {g['source']} | {_fmt(g['step'])} | {g['uid']} | {len(rs)} | "
                         f"{sum(r['correct'] for r in rs)} | {sum(r['format_valid'] for r in rs)} | "
                         f"{_fmt(sum(totals) / len(totals)) if totals else '-'} |")
        lines.append("")
    evals = _eval_rows(data)
    if evals:
        lines += ["## Evaluation", "", "| run | items | accuracy | format valid | mIoU |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {e['name']} | {e['n_items']} | {e['accuracy']} | {e['format_valid']} | {e['miou']} |"
                  for e in evals]
        lines.append("")
    lines += ["## Checkpoints", ""]
    if data.checkpoints:
        lines += ["| name | kind | size (MB) | path |", "| --- | --- | --- | --- |"]
        lines += [f"| {c.name}{' (latest)' if c.latest else ''} | {c.kind} | {c.size_mb:.1f} | `{c.path}` |"
                  for c in data.checkpoints]
    else:
        lines.append("No checkpoints in this run directory.")
    lines += ["", "## Environment", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in _environment_rows(data.environment)]
    if data.recipe_text:
        lines += ["", "## Recipe", "", "```yaml", data.recipe_text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, sft_dir: str | Path | None = None,
                 eval_dirs: tuple[str | Path, ...] = (), max_groups: int = 60,
                 steps: tuple[int, ...] = ()) -> ReportPaths:
    """Read ``run_dir`` and write ``report.html`` and ``report.md`` (default: ``<run_dir>/report/``). ``steps``:
    show only the saved rollouts of these steps (default: all, spread over at most ``max_groups`` groups)."""
    data = load_run(run_dir, sft_dir, eval_dirs)
    if steps:
        data.rollouts = [r for r in data.rollouts if r.get("step") in steps]
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    curves = render_curves(data.metrics, CURVES)
    if data.sft_metrics:
        curves += render_curves(data.sft_metrics, SFT_CURVES, with_clock=False, prefix="sft_")
    for c in curves:
        (files / c.file_name).write_bytes(base64.b64decode(c.png_base64))
    view = build_viewer(data.rollouts, data.evals, max_groups=max_groups)
    html, md = out / "report.html", out / "report.md"
    html.write_text(render_html(data, curves, view))
    md.write_text(render_markdown(data, curves, view, files.name))
    return ReportPaths(html, md, len(view.groups), view.responses, data.problems + view.problems)


def report_after_run(run_dir: str | Path, tag: str, **kwargs: Any) -> Path | None:
    """What ``train``, ``sft`` and ``demo`` call at their end: write the report and print its path. A report
    failure is printed, never raised: the run's own outputs are already safe on disk."""
    try:
        paths = write_report(run_dir, **kwargs)
    except Exception as err:  # noqa: BLE001 - a report bug must not turn a finished run into a failed command
        print(f"[{tag}] report could not be written: {type(err).__name__}: {err}", flush=True)
        return None
    print(f"[{tag}] report: {paths.html}", flush=True)
    return paths.html
