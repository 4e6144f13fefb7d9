"""Benchmark loaders on small files in each benchmark's published format, written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vt_ray.common.errors import ConfigError  # first: vt_ray.config's __init__ must load before a section module
from vt_ray.config.eval import BenchmarkConfig, EvalConfig
from vt_ray.config.formats import BENCHMARK_FORMATS
from vt_ray.data.schema import SampleFormatError, VideoSample, write_samples
from vt_ray.eval.loaders import BenchmarkFormatError, load_benchmark


def _json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_registry_matches_config_formats():
    import vt_ray.eval.loaders  # noqa: F401  (registers the built-ins)

    assert BENCHMARK_FORMATS.names() == sorted(BENCHMARK_FORMATS.builtin)
    assert all(callable(BENCHMARK_FORMATS.get(name)) for name in BENCHMARK_FORMATS.builtin)


def test_video_holmes(tmp_path):
    path = _json(tmp_path / "test_Video-Holmes.json", [
        {"Question ID": "q-1", "video ID": "abc", "Question Type": "TCI", "Question": "Why?",
         "Options": {"A": "one", "B": "two", "C": "three"}, "Answer": "B", "Explanation": "because"},
    ])
    (s,) = load_benchmark("video_holmes", path)
    assert (s.uid, s.answer, s.options, s.category) == ("q-1", "B", ["one", "two", "three"], "TCI")
    assert s.video == str(tmp_path / "videos" / "abc.mp4")
    assert s.extra == {"explanation": "because"}


def test_cg_bench_and_reasoning_subset(tmp_path):
    rows = [
        {"qid": 1, "video_uid": "v1", "question": "What?", "choices": ["cat", "dog", "cow", "hen"],
         "right_answer": "C", "answer": "cow", "clue_intervals": [[1.5, 4.0], [10, 12]], "duration": 600.0,
         "domain": "Life", "sub_category": "Counting", "task_type": "Reasoning"},
        {"qid": 2, "video_uid": "v1", "question": "Who?", "choices": ["x", "y"], "right_answer": "A",
         "answer": "x", "clue_intervals": [[0, 1]], "task_type": "Perception"},
    ]
    path = _json(tmp_path / "cgbench.json", rows)
    all_ = load_benchmark("cg_bench", path, tmp_path / "vids")
    assert [s.uid for s in all_] == ["1", "2"]
    assert all_[0].windows == [[1.5, 4.0], [10.0, 12.0]] and all_[0].answer == "C" and all_[0].duration == 600.0
    assert all_[0].video == str(tmp_path / "vids" / "v1.mp4") and all_[0].category == "Counting"
    (r,) = load_benchmark("cg_bench_reasoning", path)
    assert r.uid == "1"
    untyped = _json(tmp_path / "reasoning_only.json", [{k: v for k, v in rows[0].items() if k != "task_type"}])
    with pytest.warns(UserWarning, match="already the CG-Bench reasoning subset"):
        assert len(load_benchmark("cg_bench_reasoning", untyped)) == 1


def test_vrbench_windows_and_captions_from_reasoning_steps(tmp_path):
    row = {"video_id": "TZk", "video_path": "VRBench/videos/v001/TZk.mp4", "video_summary": "...",
           "mcq": {"qa2": {"question": "Q2?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "B",
                           "reasoning_process": {}, "reasoning_type": "Logical Linkage"},
                   "qa1": {"question": "Q1?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "D",
                           "reasoning_process": {"1": "A group explores the ruins. [00:07:44->00:08:28]",
                                                 "2": "No timestamp here",
                                                 "10": "They leave [01:00:00->01:00:30]."},
                           "reasoning_type": "Implicit Inference"}},
           "video_read_type": "av"}
    path = _jsonl(tmp_path / "VRBench.jsonl", [row])
    s1, s2 = load_benchmark("vrbench", path, tmp_path)
    assert (s1.uid, s2.uid) == ("TZk/qa1", "TZk/qa2")
    assert s1.windows == [[464.0, 508.0], [3600.0, 3630.0]]
    assert s1.captions == ["A group explores the ruins", "They leave"]
    assert s1.category == "Implicit Inference" and s1.video == str(tmp_path / "VRBench/videos/v001/TZk.mp4")
    assert s2.windows == [] and s2.captions == []


def test_scivideobench(tmp_path):
    path = _json(tmp_path / "scivideobench_1k.json", [
        {"video_id": "58827", "question_id": "1", "question": "Purpose between 02:22 and 02:33?",
         "options": {"A": "w", "B": "x", "C": "y", "D": "z"}, "answer": "D",
         "question_type": "Conceptual Reasoning", "discipline": "Chemistry", "subject": "Nanomaterials",
         "video_duration": 300.5},
    ])
    (s,) = load_benchmark("scivideobench", path)
    assert (s.uid, s.answer, s.category, s.duration) == ("58827/1", "D", "Conceptual Reasoning", 300.5)
    assert s.video == str(tmp_path / "video_with_text_pil" / "jove_58827.mp4")
    assert s.extra == {"discipline": "Chemistry", "subject": "Nanomaterials"}


def test_videott_multiple_choice_and_open_ended(tmp_path):
    (tmp_path / "Benchmark-AllVideos-LQ").mkdir()
    (tmp_path / "Benchmark-AllVideos-LQ" / "yt2.mkv").write_bytes(b"")
    path = _jsonl(tmp_path / "videott.jsonl", [
        {"video_id": "yt1", "question": "How many cups?", "question_prompt": "A. 2\nB. 3\nC. 4\nD. 5",
         "answer": "B", "capability": "Element Counting"},
        {"video_id": "yt2", "qid": "yt2-oe", "question": "What happens?", "question_prompt": "",
         "answer": "The cat jumps", "capability": "Plot Attribute", "type": "primary_open_ended"},
    ])
    mc, oe = load_benchmark("videott", path)
    assert (mc.uid, mc.options, mc.answer, mc.answer_type) == ("yt1#0", ["2", "3", "4", "5"], "B", "multiple_choice")
    assert (oe.uid, oe.answer_type, oe.answer, oe.extra) == ("yt2-oe", "free_text", "The cat jumps",
                                                             {"variant": "primary_open_ended"})
    assert oe.video.endswith("Benchmark-AllVideos-LQ/yt2.mkv")  # the existing extension is picked


def test_videomme_parquet_flat_and_official_template(tmp_path):
    import pandas as pd

    flat = {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "History",
            "url": "https://example.invalid", "videoID": "fFjv93ACGo8", "question_id": "001-1",
            "task_type": "Counting Problem", "question": "How many?", "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."],
            "answer": "C"}
    pq = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame([flat]).to_parquet(pq)
    (s,) = load_benchmark("videomme", pq, tmp_path / "data")
    assert (s.uid, s.options, s.answer, s.category) == ("001-1", ["1.", "2.", "3.", "4."], "C", "Counting Problem")
    assert s.video == str(tmp_path / "data" / "fFjv93ACGo8.mp4") and s.extra["duration"] == "short"
    template = _json(tmp_path / "output_test_template.json", [
        {"video_id": "002", "duration_category": "long", "video_category": "Film", "video_subcategory": "Drama",
         "questions": [{"question_id": "002-1", "task_type": "Action Reasoning", "question": "Why?",
                        "choices": ["A. x.", "B. y.", "C. z.", "D. w."], "answer": "D", "response": "A"}]},
    ])
    (t,) = load_benchmark("videomme", template)
    assert (t.uid, t.answer, t.extra["domain"]) == ("002-1", "D", "Film")


def test_project_jsonl_resolves_videos(tmp_path):
    path = tmp_path / "activitynet_test.jsonl"
    write_samples(path, [VideoSample(uid="an-1", video="clips/a.mp4", question="q", answer="A", options=["x", "y"],
                                     windows=[[0, 5]], captions=["c"], source="activitynet")])
    (s,) = load_benchmark("project", path)
    assert s.video == str((tmp_path / "clips/a.mp4").resolve()) and s.windows == [[0, 5]]
    path.write_text('{"uid": "x"}\n')
    with pytest.raises(SampleFormatError, match="activitynet_test.jsonl:1"):
        load_benchmark("project", path)


@pytest.mark.parametrize("fmt", sorted(BENCHMARK_FORMATS.builtin))
def test_missing_file_names_path(tmp_path, fmt):
    missing = tmp_path / "nope" / "annotations.json"
    with pytest.raises(FileNotFoundError, match="nope/annotations.json"):
        load_benchmark(fmt, missing)


def test_malformed_record_names_file_and_index(tmp_path):
    good = {"Question ID": "q-1", "video ID": "a", "Question Type": "SR", "Question": "?",
            "Options": {"A": "x", "B": "y"}, "Answer": "A"}
    path = _json(tmp_path / "holmes.json", [good, {**good, "Question ID": "q-2", "Answer": "Z"}])
    with pytest.raises(BenchmarkFormatError, match=r"holmes\.json: record 1: answer 'Z'"):
        load_benchmark("video_holmes", path)
    path = _json(tmp_path / "holmes2.json", [good, {k: v for k, v in good.items() if k != "Question"}])
    with pytest.raises(BenchmarkFormatError, match=r"record 1: missing field 'Question'"):
        load_benchmark("video_holmes", path)
    bad_window = _json(tmp_path / "cg.json", [{"qid": 1, "video_uid": "v", "question": "?", "choices": ["a", "b"],
                                               "right_answer": "A", "clue_intervals": [[5, 1]]}])
    with pytest.raises(BenchmarkFormatError, match=r"cg\.json: record 0: bad window"):
        load_benchmark("cg_bench", bad_window)
    (tmp_path / "broken.jsonl").write_text('{"video_id": "x", "mcq": {}}\n{not json\n')
    with pytest.raises(BenchmarkFormatError, match=r"broken\.jsonl: record line 2"):
        load_benchmark("vrbench", tmp_path / "broken.jsonl")


def test_duplicate_uids_and_limit(tmp_path):
    rec = {"Question ID": "same", "video ID": "a", "Question": "?", "Options": {"A": "x", "B": "y"}, "Answer": "A"}
    path = _json(tmp_path / "dup.json", [rec, rec])
    with pytest.raises(BenchmarkFormatError, match="duplicate uids"):
        load_benchmark("video_holmes", path)
    path = _json(tmp_path / "two.json", [rec, {**rec, "Question ID": "other"}])
    assert [s.uid for s in load_benchmark("video_holmes", path, limit=1)] == ["same"]
    with pytest.raises(ValueError, match="unknown benchmark format 'nope'"):
        load_benchmark("nope", path)


def test_eval_config_validation():
    cfg = EvalConfig(benchmarks=[BenchmarkConfig(name="VH", format="video_holmes", path="x.json")])
    assert cfg.frame_counts == [16, 32, 64] and cfg.greedy
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[0\].format"):
        EvalConfig(benchmarks=[BenchmarkConfig(name="VH", format="holmes", path="x.json")])
    with pytest.raises(ConfigError, match="eval.frame_counts"):
        EvalConfig(frame_counts=[16, 16])
