"""Source adapters of the curation pipeline: each test writes a tiny file in the dataset's published format
(see the adapter's docstring), reads it back through read_source and checks the exact records, including
which malformed entries were skipped and counted. No Ray, no models, no videos."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from data_pipeline.sources import Segment, SourceFormatError, SourceRecord, SourceStats, read_source
from vt_ray.config.curate import CURATION_SOURCES, SourceConfig


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def _read(name: str, path: Path, **kw: Any) -> tuple[list[SourceRecord], SourceStats]:
    stats = SourceStats(name, str(path))
    return list(read_source(name, path, stats=stats, **kw)), stats


# --- one test per source ----------------------------------------------------------------------------------------


def test_activitynet_captions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "train.json", {
        "v_aaa": {"duration": 20.0, "timestamps": [[0, 5.5], [4.0, 21.3]],  # 21.3 > duration: clamped
                  "sentences": ["A man walks in.", " He sits down. "]},
        "v_bbb": {"duration": 10.0, "timestamps": [[0, 2]], "sentences": ["one", "two"]},  # lengths differ
        "v_ccc": {"duration": 30.0, "timestamps": [[9, 3], [10, 12]],  # first span reversed: dropped
                  "sentences": ["backwards", "A dog barks."]},
    })
    with caplog.at_level(logging.WARNING, logger="data_pipeline.sources"):
        records, stats = _read("activitynet_captions", path)
    assert [r.uid for r in records] == ["v_aaa", "v_ccc"]
    a, c = records
    assert a.video == "v_aaa.mp4" and a.duration == 20.0 and a.source == "activitynet_captions"
    assert a.segments == [Segment(0.0, 5.5, "A man walks in."), Segment(4.0, 20.0, "He sits down.")]
    assert c.segments == [Segment(10.0, 12.0, "A dog barks.")]
    assert a.has_captions and not a.has_qa and a.question is None and a.windows == []
    assert (stats.records, stats.skipped, stats.skipped_parts) == (2, 1, 1)
    assert any("v_bbb" in e for e in stats.errors) and any("v_ccc" in e for e in stats.errors)
    assert "skipped 1 malformed entries and 1 malformed parts" in caplog.text  # never silently lost
    mkv, _ = _read("activitynet_captions", path, video_ext="mkv")
    assert mkv[0].video == "v_aaa.mkv"


def test_youcook2_subset_and_step_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "youcookii_annotations_trainval.json", {"database": {
        "GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                        "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                        "annotations": [{"segment": [97, 120], "id": 1, "sentence": "add the eggs"},
                                        {"segment": [90, 102], "id": 0, "sentence": "spread margarine"}]},
        "xHr8X2Wpmno": {"duration": 150.0, "subset": "validation", "recipe_type": "201",
                        "annotations": [{"segment": [10, 20], "id": 0, "sentence": "chop the onion"}]},
        "broken": {"duration": 60.0, "subset": "training", "annotations": "not a list"},
    }})
    records, stats = _read("youcook2", path)
    assert [r.uid for r in records] == ["GLd3aX16zBg", "xHr8X2Wpmno"]
    first = records[0]
    assert [s.caption for s in first.segments] == ["spread margarine", "add the eggs"]  # id order
    assert first.segments[0] == Segment(90.0, 102.0, "spread margarine")
    assert first.category == "113" and first.video == "GLd3aX16zBg.mp4" and first.duration == 241.62
    assert first.extra == {"subset": "training", "recipe_type": "113",
                           "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg"}
    assert (stats.skipped, stats.filtered) == (1, 0)
    train, stats = _read("youcook2", path, subset="training")
    assert [r.uid for r in train] == ["GLd3aX16zBg"]
    assert (stats.records, stats.skipped, stats.filtered) == (1, 1, 1)


def _tutorialvqa_files(root: Path) -> Path:
    _write(root / "videos.json", [
        {"video_id": "14645", "video_title": "Get to know layers",
         "video_url": "https://images-tv.adobe.com/avp/vr/x/y/z_1280x720at2400_vp8.webm",
         "transcript": ["Intro.", "Open the file.", "Click the marquee tool.", "Drag a circle.", "Click OK."],
         "segments": [{"title": "open a file", "timestamps": {"start": "3.5", "end": "9.25"},
                       "sentence_indexes": {"start": 1, "end": 1}},
                      {"title": "fill a selected area", "timestamps": {"start": "10.0", "end": "30.709999"},
                       "sentence_indexes": {"start": 2, "end": 4}}]},
        {"video_id": "4051", "transcript": ["a", "b"], "segments": []},
    ])
    return _write(root / "train.json", [
        {"video_id": "14645", "question": "how do i choose different marquee tools? ", "answer_start": 2,
         "answer_end": 4},
        {"video_id": "14645", "question": "how do i open and select?", "answer_start": 1, "answer_end": 4},
        {"video_id": "19192", "question": "none", "answer_start": 31, "answer_end": 35},  # placeholder question
        {"video_id": "4051", "question": "what is b?", "answer_start": 1, "answer_end": 1},  # no timestamps
        {"video_id": "99999", "question": "unknown video?", "answer_start": 0, "answer_end": 0},
    ])


def test_tutorialvqa_answer_span_to_window(tmp_path: Path) -> None:
    records, stats = _read("tutorialvqa", _tutorialvqa_files(tmp_path))
    assert [r.uid for r in records] == ["train-0", "train-1"]
    exact, composite = records
    assert exact.question == "how do i choose different marquee tools?"
    assert exact.answer == "Click the marquee tool. Drag a circle. Click OK."
    assert exact.answer_type == "free_text" and exact.options is None
    assert exact.windows == [[10.0, 30.709999]] and exact.video == "14645.webm"
    assert exact.extra == {"video_id": "14645", "sentence_span": [2, 4], "segment_title": "fill a selected area",
                           "video_title": "Get to know layers",
                           "video_url": "https://images-tv.adobe.com/avp/vr/x/y/z_1280x720at2400_vp8.webm"}
    assert composite.windows == [[3.5, 30.709999]] and composite.extra["segment_title"] is None
    assert (stats.records, stats.skipped) == (2, 3)
    mp4, _ = _read("tutorialvqa", tmp_path / "train.json", video_ext=".mp4")
    assert mp4[0].video == "14645.mp4"


def test_tutorialvqa_needs_videos_json(tmp_path: Path) -> None:
    split = _tutorialvqa_files(tmp_path)
    (tmp_path / "videos.json").unlink()
    with pytest.raises(FileNotFoundError, match="videos.json"):
        read_source("tutorialvqa", split)


def test_star(tmp_path: Path) -> None:
    path = _write(tmp_path / "STAR_train.json", [
        {"question_id": "Interaction_T1_13", "question": "Which object was tidied up by the person?",
         "video_id": "6H78U", "start": 11.1, "end": 19.6, "answer": "The closet/cabinet.",
         "question_program": [{"function": "Situations", "value_input": []}],
         "choices": [{"choice_id": 0, "choice": "The closet/cabinet.", "choice_program": []},
                     {"choice_id": 1, "choice": "The blanket.", "choice_program": []},
                     {"choice_id": 2, "choice": "The clothes.", "choice_program": []},
                     {"choice_id": 3, "choice": "The table.", "choice_program": []}],
         "situations": {"000199": {"rel_pairs": [], "rel_labels": [], "actions": [], "bbox": [], "bbox_labels": []}}},
        {"question_id": "Sequence_T3_2", "question": "What did the person do after opening the door?",
         "video_id": "YSKX3", "start": 0, "end": 7.5, "answer": "Took the phone.",
         "choices": [{"choice_id": 2, "choice": "Took the phone."}, {"choice_id": 0, "choice": "Sat down."},
                     {"choice_id": 1, "choice": "Ate a sandwich."}, {"choice_id": 3, "choice": "Left."}]},
        {"question_id": "Prediction_T1_9", "question": "What will the person do next?", "video_id": "ZZZZZ",
         "start": 1.0, "end": 4.0, "choices": [{"choice_id": 0, "choice": "Sit."},
                                               {"choice_id": 1, "choice": "Stand."}]},  # test split: no answer
    ])
    records, stats = _read("star", path)
    assert [r.uid for r in records] == ["Interaction_T1_13", "Sequence_T3_2"]
    first, second = records
    assert first.options == ["The closet/cabinet.", "The blanket.", "The clothes.", "The table."]
    assert first.answer == "A" and first.answer_type == "multiple_choice" and first.category == "Interaction"
    assert first.windows == [[11.1, 19.6]] and first.video == "6H78U.mp4" and first.segments == []
    assert second.options == ["Sat down.", "Ate a sandwich.", "Took the phone.", "Left."]  # choice_id order
    assert second.answer == "C" and second.category == "Sequence" and second.windows == [[0.0, 7.5]]
    assert (stats.records, stats.skipped) == (2, 1) and "Prediction_T1_9" in stats.errors[0]


def test_scalelong_assumed_layout(tmp_path: Path) -> None:
    path = _lines(tmp_path / "scalelong.jsonl", [
        {"uIj03RsGrJA": [
            {"data_id": 0, "question": "How many smash actions during the time period from 08:59 to 09:19?",
             "question_type": "Counting Problem", "granularity": "clip",
             "options": {"A": "four times", "B": "three times", "C": "one time", "D": "two times"}, "answer": "B"},
            {"data_id": 1, "question": "What color shoes do the Danish athletes wear?\r\n",
             "question_type": "Objective Recognition", "options": ["A. white", "B. blue", "C. yellow", "D. black"],
             "answer": "D"},
            {"data_id": 2, "question": "Out of range?", "options": {"A": "x", "B": "y"}, "answer": "E"},
        ]},
        "{not json",
        {"JRF8mECyOJY": [{"question": "Who won?", "question_type": "information inference",
                          "options": {"A": "China", "B": "India"}, "answer": "India"}]},
    ])
    records, stats = _read("scalelong", path)
    assert [r.uid for r in records] == ["uIj03RsGrJA-0", "uIj03RsGrJA-1", "JRF8mECyOJY-0"]
    clip, shoes, won = records
    assert clip.options == ["four times", "three times", "one time", "two times"] and clip.answer == "B"
    assert clip.windows == [[539.0, 559.0]] and clip.category == "clip" and clip.video == "uIj03RsGrJA.mp4"
    assert clip.extra == {"video_id": "uIj03RsGrJA", "data_id": 0, "question_type": "Counting Problem",
                          "timescale": "clip"}
    assert shoes.question == "What color shoes do the Danish athletes wear?" and shoes.options[3] == "black"
    assert shoes.answer == "D" and shoes.windows == [] and shoes.category == "Objective Recognition"
    assert won.answer == "B"  # given as the option's text
    assert (stats.records, stats.skipped) == (3, 2)


def test_lvbench(tmp_path: Path) -> None:
    path = _lines(tmp_path / "video_info.meta.jsonl", [
        {"key": "Cm73ma6Ibcs", "type": "sport", "video_info": {"duration_minutes": 2.5},
         "qa": [{"uid": "1", "question": "What is the man holding?\n(A) A bat\n(B) A ball\n(C) A cup\n(D) A hat",
                 "answer": "B", "question_type": ["entity recognition", "key information retrieval"],
                 "time_reference": "00:15-00:19"},
                {"uid": "2", "question": "Why did the crowd cheer?\n(A) a goal\n(B) a foul", "answer": "(A)",
                 "question_type": ["reasoning"], "time_reference": ""},
                {"uid": "3", "question": "No options here?", "answer": "A", "question_type": []},
                {"uid": "1", "question": "Dup?\n(A) x\n(B) y", "answer": "A"}]},
        "{broken",
        {"key": "Q8AZ16uBhr8", "type": "documentary", "video_info": {"duration": 3724},
         "qa": [{"uid": "4", "question": "When?\n(A) early\n(B) late", "answer": "A",
                 "question_type": ["temporal grounding"], "time_reference": "1:01:05-1:01:09, 02:00-02:10"}]},
    ])
    records, stats = _read("lvbench", path)
    assert [r.uid for r in records] == ["1", "2", "4"]
    first, second, third = records
    assert first.question == "What is the man holding?" and first.options == ["A bat", "A ball", "A cup", "A hat"]
    assert first.answer == "B" and first.windows == [[15.0, 19.0]] and first.duration == 150.0
    assert first.category == "entity recognition" and first.video == "Cm73ma6Ibcs.mp4"
    assert first.extra == {"video_id": "Cm73ma6Ibcs", "video_type": "sport", "time_reference": "00:15-00:19",
                           "question_type": ["entity recognition", "key information retrieval"]}
    assert second.answer == "A" and second.windows == [] and "time_reference" not in second.extra
    assert third.windows == [[3665.0, 3669.0], [120.0, 130.0]] and third.duration == 3724.0
    # skipped: qa 3 (no options), the duplicate uid "1", the broken line
    assert (stats.records, stats.skipped) == (3, 3)
    assert any("duplicate uid" in e for e in stats.errors)


# --- errors -----------------------------------------------------------------------------------------------------


def test_unknown_source_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown curation source 'howto100m'") as err:
        read_source("howto100m", tmp_path / "x.json")
    assert all(name in str(err.value) for name in CURATION_SOURCES.builtin)


@pytest.mark.parametrize("name", sorted(CURATION_SOURCES.builtin))
def test_missing_file_names_path(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nope" / "annotations.json"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        read_source(name, missing)


@pytest.mark.parametrize("name, content, expected", [
    ("activitynet_captions", [1, 2], "expected a JSON object"),
    ("youcook2", [], "expected a JSON object"),
    ("youcook2", {"videos": {}}, "no 'database' object"),
    ("star", {"question_id": "x"}, "expected a JSON array of STAR questions"),
    ("tutorialvqa", {"video_id": "1"}, "expected a JSON array"),
    ("scalelong", [{"question": "q"}], "expected JSON lines"),
    ("lvbench", [{"key": "k", "qa": []}], "expected JSON lines"),
])
def test_wrong_top_level_type_names_file_and_format(tmp_path: Path, name: str, content: Any, expected: str) -> None:
    path = _write(tmp_path / "annotations.json", content)
    with pytest.raises(SourceFormatError, match=expected) as err:  # raised at read_source, before iterating
        read_source(name, path)
    assert str(path) in str(err.value) and isinstance(err.value, ValueError)


def test_file_with_no_valid_entry_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.json", {"database": {"x": {"duration": 1}}})  # YouCook2 given as ActivityNet
    with pytest.raises(SourceFormatError, match="not a single valid activitynet_captions entry"):
        list(read_source("activitynet_captions", path))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    with pytest.raises(SourceFormatError, match="not valid JSON"):
        read_source("star", bad_json)


# --- the record ---------------------------------------------------------------------------------------------------


def test_source_record_round_trip_and_properties() -> None:
    qa = SourceRecord(uid="q1", source="star", video="a.mp4", question="Which?", options=["red", "blue"], answer="blue",
                      windows=[[1, 2.5]], category="Interaction", extra={"k": [1]})
    segments: list[Any] = [Segment(0, 4, "a"), {"start": 4, "end": 8, "caption": "b"}]  # dicts are accepted
    both = SourceRecord(uid="c1", source="activitynet_captions", video="/abs/b.mp4", duration=12, segments=segments,
                        question="How many?", answer=3, answer_type="numeric")  # type: ignore[arg-type]
    for record in (qa, both):
        data = record.to_dict()
        assert json.loads(json.dumps(data)) == data  # JSON-able, as a records JSONL line
        assert SourceRecord.from_dict(data) == record
        assert SourceRecord.from_dict(data).to_dict() == data
    assert qa.has_qa and not qa.has_captions and qa.windows == [[1.0, 2.5]]
    assert both.has_qa and both.has_captions and both.answer == "3" and both.duration == 12.0
    assert both.to_dict()["segments"][1] == {"start": 4.0, "end": 8.0, "caption": "b"}


@pytest.mark.parametrize("kw, message", [
    ({"segments": [Segment(0, 1, "ok"), {"start": 5, "end": 2, "caption": "x"}]},
     "segment 1: segment start 5.0 > end 2.0"),
    ({"windows": [[-1, 2]]}, "window 0 starts before 0 s"),
    ({"windows": [[3, 1]]}, "window 0 start 3.0 > end 1.0"),
    ({"duration": -5}, "duration must be >= 0"),
    ({"question": "Which?", "options": ["x", "y"], "answer": "C"}, "neither an option letter"),
    ({"question": "Which?"}, "question and answer must be given together"),
    ({"question": "How many?", "answer": "lots", "answer_type": "numeric"}, "is not a number"),
    ({"answer_type": "open"}, "answer_type must be one of"),
])
def test_source_record_validation_names_the_uid(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="record 'bad-1'") as err:
        SourceRecord(uid="bad-1", source="star", video="v.mp4", **kw)
    assert message in str(err.value)
    with pytest.raises(ValueError, match="start 2.0 > end 1.0"):
        Segment(2, 1, "caption")


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"record 'u': unknown keys \['segmnets'\]"):
        SourceRecord.from_dict({"uid": "u", "source": "s", "video": "v.mp4", "segmnets": []})


# --- pipeline integration -----------------------------------------------------------------------------------------


def test_pipeline_read_records_uses_the_adapters(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from data_pipeline.pipeline import read_records
    from data_pipeline.steps import new_row, qa_sample

    questions = [
        {"question_id": f"Interaction_T1_{i}", "question": f"Which object {i}?", "video_id": f"VID{i}",
         "start": float(i), "end": i + 2.0, "answer": "The cup.",
         "choices": [{"choice_id": 0, "choice": "The box."}, {"choice_id": 1, "choice": "The cup."}]}
        for i in range(4)
    ]
    del questions[0]["answer"]  # malformed: skipped and counted, the run goes on
    path = _write(tmp_path / "STAR_val.json", questions)
    src = SourceConfig(name="star", path=str(path), video_root=str(tmp_path / "charades"), limit=2)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.sources"):
        records = list(read_records(src))
    assert [r["uid"] for r in records] == ["Interaction_T1_1", "Interaction_T1_2"]  # limit honoured
    assert "skipped 1 malformed entries" in caplog.text and "read stopped early" in caplog.text
    assert all(r["source"] == "star" for r in records)
    assert records[0] == SourceRecord.from_dict(records[0]).to_dict()
    row = new_row(records[0], src.video_root)
    assert row["uid"] == "star/Interaction_T1_1"
    assert row["video"] == os.path.abspath(tmp_path / "charades" / "VID1.mp4")
    sample, why = qa_sample(row["record"])
    assert why == "" and sample is not None
    assert (sample["answer"], sample["options"], sample["answer_type"]) == ("B", ["The box.", "The cup."],
                                                                           "multiple_choice")
    assert row["record"]["windows"] == [[1.0, 3.0]]
    # The recipe's per-source options reach the adapter.
    src_mkv = SourceConfig(name="star", path=str(path), limit=1, options={"video_ext": ".mkv"})
    assert [r["video"] for r in read_records(src_mkv)] == ["VID1.mkv"]
