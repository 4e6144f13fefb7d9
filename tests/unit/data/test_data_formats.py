"""Training data formats (data.format: project | video_r1 | verl | easyr1), the data root, bad rows, the data
check command, and the verl / EasyR1 round trips (export -> load gives the same samples; their reward entry
points give our reward). Fixtures: tests/fixtures/formats (README names each schema's source)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vt_ray.config.schema import PromptConfig
from vt_ray.data.formats import load_data
from vt_ray.data.schema import read_samples
from vt_ray.interop import easyr1_reward, verl_reward
from vt_ray.interop.export import export_samples
from vt_ray.rewards import RewardConfig, score_response

FIXTURES = Path(__file__).parents[2] / "fixtures" / "formats"


@pytest.fixture
def root(tmp_path: Path, synthetic_dir: Path) -> Path:
    """A data root with videos/clip.mp4, images/shapes.png, and images/link.png -> a file outside the root."""
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "images").mkdir()
    first = read_samples(synthetic_dir / "train.jsonl")[0]
    shutil.copyfile(synthetic_dir / first.video, data / "videos" / "clip.mp4")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(data / "images" / "shapes.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (data / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    for name in ("video_r1_rl.json", "video_r1_cot.json", "video_r1_eval.json", "video_r1_bad.json",
                 "verl_rows.jsonl", "easyr1_rows.jsonl"):
        shutil.copyfile(FIXTURES / name, data / name)
    return data


def test_video_r1_rl_file(root: Path) -> None:
    report = load_data(root / "video_r1_rl.json", "video_r1")
    assert not report.bad_rows and not report.missing_media
    by_type = {s.category: s for s in report.samples}
    assert set(by_type) == {"multiple choice", "numerical", "OCR", "free-form", "regression"}
    mc = by_type["multiple choice"]
    assert (mc.answer, mc.options, mc.answer_type, mc.media) == ("B", ["red", "green", "blue", "yellow"],
                                                                 "multiple_choice", "video")
    assert mc.video == str((root / "videos" / "clip.mp4").resolve())
    assert by_type["numerical"].media == "image" and by_type["numerical"].answer == "3"
    assert by_type["OCR"].answer_type == "ocr" and by_type["regression"].answer_type == "regression"
    assert all(s.extra["answer_rules"] == "video_r1" for s in report.samples)
    assert report.counts()["by_media"] == {"video": 3, "image": 2}


def test_video_r1_prompt_is_byte_exact(root: Path) -> None:
    from vt_ray.prompts import video_r1 as templates
    from vt_ray.prompts.chat import chat_messages, user_text

    mc = load_data(root / "video_r1_rl.json", "video_r1").samples[0]
    style = PromptConfig(style="video_r1")
    expected = (
        "What colour is the square that moves first?Options:\nA. red\nB. green\nC. blue\nD. yellow\n\n"
        "Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue "
        "using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or "
        "other natural language thought expressions It's encouraged to include self-reflection or verification "
        "in the reasoning process. Provide your detailed reasoning between the <think> </think> tags, and then "
        "give your final answer between the <answer> </answer> tags. Please provide only the single option letter "
        "(e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
    )
    assert user_text(mc, style) == expected
    assert chat_messages(mc, style) == [{"role": "user", "content": [{"type": "video"},
                                                                    {"type": "text", "text": expected}]}]
    image = load_data(root / "video_r1_rl.json", "video_r1").samples[1]
    assert chat_messages(image, style)[0]["content"][0] == {"type": "image"}
    assert user_text(image, style).endswith(templates.TYPE_TEMPLATE["numerical"])
    assert "<think> and </think>" in user_text(mc, PromptConfig(style="video_r1_eval"))


def test_video_r1_cot_gives_process_plus_solution(root: Path) -> None:
    samples = load_data(root / "video_r1_cot.json", "video_r1").samples
    assert samples[0].trace == "<think>The first square to move is green.</think>\n<answer>B</answer>"
    assert samples[1].media == "image" and samples[1].trace.endswith("<answer>3</answer>")


OWN_TRACE = ("<time>0.0-2.0</time> <caption>A green square moves, then a red one.</caption> "
             "<think>The green square moves first.</think> <answer>B</answer>")


def test_video_r1_row_with_our_own_trace_is_the_sft_target(root: Path) -> None:
    from vt_ray.learner.sft_data import END_OF_TURN, load_sft_samples, response_text

    rows = json.loads((root / "video_r1_cot.json").read_text())
    rows[0]["trace"] = OWN_TRACE  # beside Video-R1's process: ours wins
    rows[1]["trace"] = "  "  # blank counts as absent: process + solution
    no_answer = {**rows[0], "trace": "<think>The green square moves first.</think>"}
    empty_answer = {**rows[0], "trace": "<think>Green.</think> <answer> </answer>"}
    not_text = {**rows[0], "trace": 42}  # Arrow cannot type the column: this row alone is re-read and refused
    (root / "own_trace.json").write_text(json.dumps([*rows, no_answer, empty_answer, not_text]))
    report = load_data(root / "own_trace.json", "video_r1")
    assert [s.trace for s in report.samples] == [
        OWN_TRACE, "<think>I count three squares.</think>\n<answer>3</answer>"]
    assert [(b.index, b.reason) for b in report.bad_rows] == [(2, "bad_trace"), (3, "bad_trace"), (4, "bad_trace")]
    assert report.counts()["with_trace"] == 2 and report.counts()["bad_rows"] == {"bad_trace": 3}
    sft = load_sft_samples(root / "own_trace.json", "video_r1", str(root))
    assert response_text(sft[0]) == OWN_TRACE + END_OF_TURN


def test_video_r1_eval_file_keeps_extra_fields(root: Path) -> None:
    samples = load_data(root / "video_r1_eval.json", "video_r1").samples
    assert [s.answer for s in samples] == ["B", "4"]
    assert samples[0].extra["record"]["videoID"] == "clip"  # the benchmark's own fields ride along
    assert samples[0].options == ["1.", "2.", "3.", "4."]


def test_bad_rows_are_skipped_and_counted_with_file_and_index(root: Path) -> None:
    report = load_data(root / "video_r1_bad.json", "video_r1")
    assert [s.question for s in report.samples] == ["ok row"]
    reasons = {b.index: b.reason for b in report.bad_rows}
    assert reasons == {1: "bad_problem_type", 2: "bad_options", 3: "path_escape", 4: "no_answer_tags",
                       6: "path_escape", 7: "bad_answer"}
    assert all(b.file == str(root / "video_r1_bad.json") for b in report.bad_rows)
    assert [(m.index, m.reason) for m in report.missing_media] == [(5, "missing_media")]
    assert report.counts()["bad_rows"] == {"bad_problem_type": 1, "bad_options": 1, "path_escape": 2,
                                           "no_answer_tags": 1, "bad_answer": 1}


def test_absolute_path_outside_root_is_refused(root: Path, tmp_path: Path) -> None:
    rows = json.loads((root / "video_r1_rl.json").read_text())
    rows[0]["path"] = str(tmp_path / "outside.mp4")
    (root / "abs.json").write_text(json.dumps(rows))
    report = load_data(root / "abs.json", "video_r1")
    assert [(b.index, b.reason) for b in report.bad_rows] == [(0, "path_escape")]


def _to_parquet(jsonl: Path, out: Path) -> Path:
    import datasets

    datasets.Dataset.from_list([json.loads(line) for line in jsonl.read_text().splitlines()]).to_parquet(str(out))
    return out


def test_foreign_verl_and_easyr1_rows(root: Path) -> None:
    verl = load_data(_to_parquet(root / "verl_rows.jsonl", root / "verl.parquet"), "verl")
    assert not verl.bad_rows and not verl.missing_media
    video, image = verl.samples
    assert (video.question, video.answer, video.answer_type, video.media) == (
        "How many squares move? Answer with a number.", "2", "numeric", "video")
    assert (image.answer_type, image.options, image.media) == ("multiple_choice", ["red", "green", "blue"], "image")
    easy = load_data(root / "easyr1_rows.jsonl", "easyr1")
    assert [(s.question, s.answer, s.answer_type, s.media) for s in easy.samples] == [
        ("How many squares move?", "2", "numeric", "video"),
        ("What word is written in the image?", "OPEN LATE", "free_text", "image")]


@pytest.mark.parametrize(("to", "suffix"), [("verl", ".parquet"), ("easyr1", ".parquet"), ("easyr1", ".jsonl")])
def test_round_trip(root: Path, synthetic_dir: Path, tmp_path: Path, to: str, suffix: str) -> None:
    ours = load_data(synthetic_dir / "train.jsonl").samples
    ours += load_data(root / "video_r1_rl.json", "video_r1").samples  # images and Video-R1 types too
    out = export_samples(ours, to, tmp_path / f"export{suffix}", PromptConfig())
    back = load_data(out, to, root="/")
    assert not back.bad_rows and not back.missing_media
    assert [s.to_json() for s in back.samples] == [s.to_json() for s in ours]


def test_verl_compute_score_equals_our_reward(root: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    import datasets

    samples = load_data(synthetic_dir / "train.jsonl").samples[:3] + load_data(root / "video_r1_rl.json",
                                                                               "video_r1").samples
    out = export_samples(samples, "verl", tmp_path / "v.parquet")
    rows = datasets.Dataset.from_parquet(str(out)).to_list()
    responses = [s.trace or f"<think>x</think><answer>{s.answer}</answer>" for s in samples]
    responses += ["<answer>B</answer>", "garbage", ""]
    for i, row in enumerate(rows):
        for response in responses:
            # NaiveRewardManager's call: ground_truth = reward_model["ground_truth"], keyword arguments
            got = verl_reward.compute_score(data_source=row["data_source"], solution_str=response,
                                            ground_truth=row["reward_model"]["ground_truth"],
                                            extra_info=row["extra_info"])
            want = score_response(response, samples[i].reward_target(), RewardConfig())
            assert got["score"] == got["reward"] == want["total"]
            assert got["accuracy"] == want["accuracy"] and got["format"] == want["format"]
    assert verl_reward.compute_score("x", "<answer>3</answer>", "3")["accuracy"] == 1.0  # plain ground truth
    kw = verl_reward.compute_score("x", "<think>a</think><answer>A</answer>", "<answer>A</answer>",
                                   {"problem_type": "multiple choice"}, format_mode="think_answer")
    assert (kw["accuracy"], kw["format"]) == (1.0, 1.0)  # Video-R1 solution + reward kwargs


def test_easyr1_reward_module_batch_and_sequential(synthetic_dir: Path, tmp_path: Path) -> None:
    import datasets

    samples = load_data(synthetic_dir / "train.jsonl").samples[:4]
    rows = datasets.Dataset.from_parquet(str(export_samples(samples, "easyr1", tmp_path / "e.parquet"))).to_list()
    inputs = [{"response": s.trace, "response_length": 10, "ground_truth": row["answer"]}
              for s, row in zip(samples, rows)]
    assert easyr1_reward.REWARD_TYPE == "batch" and easyr1_reward.REWARD_NAME
    batch = easyr1_reward.compute_score(inputs)
    assert isinstance(batch, list) and len(batch) == 4
    for s, got in zip(samples, batch):
        want = score_response(s.trace, s.reward_target(), RewardConfig())
        assert got["overall"] == want["total"] and got["accuracy"] == want["accuracy"] == 1.0
        assert got["format"] == want["format"]
    single = easyr1_reward.compute_score(inputs[0])
    assert isinstance(single, dict) and single["overall"] == batch[0]["overall"]
    assert easyr1_reward.compute_score({"response": "x", "response_length": 1, "ground_truth": "{bad"})[
        "overall"] == 0.0


def test_data_check_command(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vt_ray.cli import main

    code = main(["data", "check", "--file", str(root / "video_r1_bad.json"), "--format", "video_r1"])
    out = capsys.readouterr().out
    assert code == 0
    counts = json.loads(out.splitlines()[0])
    assert counts["samples"] == 1 and counts["missing_media"] == 1 and counts["bad_rows"]["path_escape"] == 2
    assert f"bad row {root / 'video_r1_bad.json'}[1] bad_problem_type" in out
    (root / "empty.json").write_text("[]")
    assert main(["data", "check", "--file", str(root / "empty.json"), "--format", "video_r1"]) == 1


def test_data_export_command(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vt_ray.cli import main

    out = tmp_path / "x.parquet"
    code = main(["data", "export", "prompt.style=video_r1", "--file", str(root / "video_r1_rl.json"),
                 "--format", "video_r1", "--to", "verl", "--out", str(out)])
    assert code == 0 and out.is_file()
    rows = load_data(out, "verl", root=root).samples
    assert len(rows) == 5


def test_data_format_key_is_checked() -> None:
    from vt_ray.common.errors import ConfigError
    from vt_ray.config.schema import DataConfig

    with pytest.raises(ConfigError, match="data.format"):
        DataConfig(format="sharegpt")


def test_a_row_arrow_cannot_type_is_skipped_alone(root: Path) -> None:
    rows = json.loads((root / "video_r1_rl.json").read_text())
    rows[1]["problem"] = 12345  # a number in a text column: Arrow cannot build the table
    rows[2]["options"] = "not a list"
    (root / "mixed.json").write_text(json.dumps(rows))
    report = load_data(root / "mixed.json", "video_r1")
    assert len(report.samples) == 4
    assert [(b.index, b.reason) for b in report.bad_rows] == [(1, "bad_problem")]


def test_verl_content_as_a_list_of_parts(root: Path) -> None:
    row = json.loads((root / "verl_rows.jsonl").read_text().splitlines()[0])
    row["prompt"] = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "How many move?"}]}]
    (root / "parts.jsonl").write_text(json.dumps(row) + "\n")
    assert load_data(root / "parts.jsonl", "verl").samples[0].question == "How many move?"


def test_missing_media_can_be_left_to_the_workers(root: Path) -> None:
    from vt_ray.data.formats import load_samples

    assert len(load_samples(root / "video_r1_bad.json", "video_r1")) == 1
    kept = load_samples(root / "video_r1_bad.json", "video_r1", check_media=False)
    assert [s.question for s in kept] == ["ok row", "missing file"]  # bad rows still refused


def test_a_format_of_our_own_plugs_in_by_import_path(root: Path) -> None:
    """``data.format`` and ``eval.benchmarks[].format`` take ``package.module:function`` (tests/own_formats.py):
    checked at load time, its bad rows skipped and counted like a built-in format's."""
    from vt_ray.common.errors import ConfigError
    from vt_ray.config.loader import load_config
    from vt_ray.eval.loaders import load_benchmark

    rows = [{"clip": "videos/clip.mp4", "q": "Which colour?", "choices": ["red", "blue"], "gold": 1},
            {"clip": "videos/clip.mp4", "q": "Broken", "choices": ["red"], "gold": 3}]
    (root / "own.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_config(None, ["data.format=own_formats:convert"]).data.format == "own_formats:convert"
    report = load_data(root / "own.jsonl", "own_formats:convert")
    assert [(s.answer, s.options, s.video) for s in report.samples] == [
        ("B", ["red", "blue"], str((root / "videos" / "clip.mp4").resolve()))]
    assert [(b.index, b.reason) for b in report.bad_rows] == [(1, "bad_gold")]
    (root / "own.json").write_text(json.dumps(rows[:1]))
    assert [s.answer for s in load_benchmark("own_formats:load", root / "own.json")] == ["B"]
    cfg = load_config(None, ["eval.benchmarks=[{name: own, format: 'own_formats:load', path: x.json}]"])
    assert cfg.eval.benchmarks[0].format == "own_formats:load"
    with pytest.raises(ConfigError, match="data.format"):
        load_config(None, ["data.format=own_formats:no_such_function"])
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[0\].format"):
        load_config(None, ["eval.benchmarks=[{name: own, format: 'nope', path: x.json}]"])
