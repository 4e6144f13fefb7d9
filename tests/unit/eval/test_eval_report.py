"""Report files from per-item records: summary.json keys, report.md tables, non-empty PNG plots."""

from __future__ import annotations

import json

import pytest

from vt_ray.data.schema import VideoSample
from vt_ray.eval.metrics import score_item
from vt_ray.eval.records import ItemResult, RecordFormatError, read_results, write_results
from vt_ray.eval.report import ReportOptions, build_report

TRACE = ("<time>00:00-00:10</time> <caption>a man opens a red door</caption> <think>so</think> "
         "Wait, <time>00:01-00:10</time> <caption>a man closes a red door</caption> <think>hmm</think> "
         "<answer>{answer}</answer>")


def _results() -> list[ItemResult]:
    grounded = VideoSample(uid="g1", video="v.mp4", question="?", answer="A", options=["x", "y"],
                           windows=[[0, 10]], captions=["a man opens a red door"], category="cause")
    plain = VideoSample(uid="p1", video="v.mp4", question="?", answer="B", options=["x", "y"], category="count")
    out = []
    for frames in (16, 32):
        out.append(score_item(grounded, TRACE.format(answer="A"), benchmark="ActivityNet", frames=frames))
        out.append(score_item(plain, "<answer>A</answer>" if frames == 16 else "<answer>B</answer>",
                              benchmark="Video-Holmes", frames=frames))
    return out


def test_records_roundtrip_and_later_record_wins(tmp_path):
    rs = _results()
    path = tmp_path / "results.jsonl"
    write_results(path, rs)
    rerun = ItemResult(**{**rs[0].to_json(), "correct": False})
    write_results(path, [rerun], append=True)
    back = {r.key(): r for r in read_results(path)}
    assert len(back) == 4 and back[rs[0].key()].correct is False
    assert back[rs[1].key()] == rs[1]
    path.write_text('{"benchmark": "x"}\n')
    with pytest.raises(RecordFormatError, match="results.jsonl:1"):
        read_results(path)


def test_build_report_writes_every_artifact(tmp_path):
    summary = build_report(_results(), tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data == json.loads(json.dumps(summary))
    assert {"accuracy", "grounding", "captioning", "captioning_meteor", "format", "self_correction",
            "plots", "definitions"} <= set(data)
    acc = data["accuracy"]["by_benchmark_frames"]
    assert acc["Video-Holmes"]["16"]["accuracy"] == 0.0 and acc["Video-Holmes"]["32"]["accuracy"] == 1.0
    assert acc["all"]["all"]["accuracy"] == 0.75
    assert data["accuracy"]["by_category"]["ActivityNet"]["cause"]["16"]["accuracy"] == 1.0
    g = data["grounding"]["ActivityNet"]["16"]
    assert g["items"] == 1 and g["miou"] == 1.0 and g["recall@0.7"] == 1.0
    assert data["grounding"]["Video-Holmes"]["16"]["items"] == 0
    cap = data["captioning"]["ActivityNet"]["all"]
    assert cap["pairs"] == 2 and cap["bleu4"] == pytest.approx(100.0) and cap["rougeL"] == pytest.approx(100.0)
    assert "NLTK" in data["captioning_meteor"]["implementation"]
    sc = data["self_correction"]["ActivityNet"]["16"]
    assert sc["revisit_share"] == 1.0 and sc["revise_caption_share"] == 1.0
    assert data["format"]["Video-Holmes"]["16"]["violation_share"] == {"no_steps": 1.0}

    md = (tmp_path / "report.md").read_text()
    assert "| Video-Holmes | 0.00 | 100.00 | 2 |" in md
    assert "| ActivityNet | 100.00 | 100.00 | 2 |" in md
    assert "| **all** | 50.00 | 100.00 | 4 |" in md
    assert "| ActivityNet | cause | 100.00 | 100.00 | 2 |" in md
    assert "| ActivityNet | 16 | 1 | 100.00 | 100.00 | 100.00 | 100.00 |" in md  # grounding row
    assert "METEOR (NLTK)" in md and "not the COCO-caption Java METEOR" in md
    assert "| Video-Holmes | 16 | 1 | 0.00 | 100.00 | no_steps 100.00% |" in md  # format row
    assert "## Self-correction" in md and "## Definitions" in md

    for name in data["plots"].values():
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 2000
    assert set(data["plots"]) == {"accuracy_by_benchmark_frames.png", "iou_histogram.png"}


def test_report_toggles_leave_sections_out(tmp_path):
    opts = ReportOptions(grounding=False, captioning=False, self_correction=False)
    data = build_report(_results(), tmp_path, opts)
    assert "grounding" not in data and "captioning" not in data and "self_correction" not in data
    md = (tmp_path / "report.md").read_text()
    assert "## Grounding" not in md and "## Accuracy" in md
    assert not (tmp_path / "plots" / "iou_histogram.png").exists()
