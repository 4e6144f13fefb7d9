"""Fuzzed inputs, nothing lost (issue 21, item 7): recipes, dataset rows, model outputs and video files.

Each input either fails at load time with the project's clear error (``ConfigError`` naming the key,
``VideoError`` naming the file), or is skipped and counted (dataset rows), or scores 0 (model outputs); nothing
else may escape, and no dataset row makes the loader or the decoder open a file outside the data root (checked
with a Python audit hook on ``open``). Examples are bounded and deadlines off (a shared 2-core machine), so the
whole file runs in well under a minute; the count of inputs tried is printed at the end of the module.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from vt_ray.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
TRIED: Counter[str] = Counter()
# No deadline (a shared, loaded machine) and no shrinking (a failure reports its raw input at once instead of
# spending minutes on a minimal one: rerun with the printed seed to shrink it locally).
FAST = settings(deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print(f"\n[fuzz] inputs tried: {dict(TRIED)} (total {sum(TRIED.values())})")


WILD = st.one_of(
    st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.booleans(), st.none(), st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


# ---- recipes --------------------------------------------------------------------------------------------
def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*prefix, str(k)))]
    return [prefix]


def _default_leaves() -> list[tuple[str, ...]]:
    from omegaconf import OmegaConf

    from vt_ray.config.schema import RecipeConfig

    return _leaves(OmegaConf.to_container(OmegaConf.structured(RecipeConfig)))


LEAVES = _default_leaves()
IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)


def _nest(items: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in items:
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return out


RECIPE_ITEMS = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(LEAVES), st.lists(IDENT, min_size=1, max_size=3).map(tuple),  # unknown keys too
                  st.sampled_from(LEAVES).flatmap(lambda p: IDENT.map(lambda x: (*p[:-1], x)))),
        WILD,
    ),
    min_size=1, max_size=6,
)


@settings(FAST, max_examples=30)
@given(items=RECIPE_ITEMS)
def test_a_fuzzed_recipe_loads_or_fails_naming_a_key(tmp_path_factory: pytest.TempPathFactory, items) -> None:
    from vt_ray.config.loader import load_config
    from vt_ray.config.schema import RecipeConfig

    TRIED["recipes"] += 1
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(yaml.safe_dump(_nest(items)))
    try:
        assert isinstance(load_config(path), RecipeConfig)
    except ConfigError as err:
        assert err.key and str(path) in str(err) or "command line" in str(err), str(err)


@settings(FAST, max_examples=25)
@given(key=st.sampled_from(LEAVES), value=WILD)
def test_a_fuzzed_override_loads_or_fails_naming_a_key(key: tuple[str, ...], value: Any) -> None:
    from vt_ray.config.loader import load_config

    TRIED["overrides"] += 1
    try:
        load_config(None, [f"{'.'.join(key)}={json.dumps(value) if not isinstance(value, str) else value}"])
    except ConfigError as err:
        assert err.key


# ---- dataset rows -----------------------------------------------------------------------------------------
@contextmanager
def _opens_outside(root: Path):
    """Every path Python opens while active that is not under ``root`` (an audit hook: sees every open())."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if active[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            path = os.fsdecode(args[0])
            if os.path.isabs(path) and not os.path.realpath(path).startswith(str(root)) and \
                    not path.startswith(("/proc", "/dev", "/sys", sys.prefix, sys.base_prefix, "/usr", "/etc/ld")):
                seen.append(path)

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet on exit
    try:
        yield seen
    finally:
        active[0] = False


GOOD = {"uid": "u1", "video": "videos/a.mp4", "question": "Which?", "answer": "A", "options": ["x", "y"]}
FIELDS = ["uid", "video", "question", "answer", "options", "answer_type", "duration", "windows", "captions",
          "trace", "source", "category", "extra", "bogus"]
ESCAPES = st.sampled_from(["../outside/secret.mp4", "../../etc/passwd", "/etc/passwd", "videos/../../x.mp4",
                           "link_out/a.mp4", "videos/a.mp4", "videos/nope.mp4", "link_in/a.mp4", "a\x00b.mp4"])


@st.composite
def rows(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["good", "mutate", "drop", "escape", "garbage", "huge"]))
    row: dict[str, Any] = dict(GOOD, uid=draw(st.text(min_size=1, max_size=8)))
    if kind == "mutate":
        row[draw(st.sampled_from(FIELDS))] = draw(WILD)
    elif kind == "drop":
        row.pop(draw(st.sampled_from(list(GOOD))))
    elif kind == "escape":
        row["video"] = draw(ESCAPES)
    elif kind == "garbage":
        return draw(st.one_of(st.text(max_size=30), st.sampled_from(["[1, 2]", "3", "null", '"s"', "{", "[" * 5000])))
    elif kind == "huge":
        row["question"] = "why " * draw(st.integers(10, 50_000))
    return json.dumps(row)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with one video, a symlink inside it, a symlink leading out, and a file just outside."""
    base = tmp_path_factory.mktemp("fuzzdata")
    root = base / "root"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"not really a video")
    (base / "outside").mkdir()
    (base / "outside" / "secret.mp4").write_bytes(b"secret")
    (root / "link_out").symlink_to(base / "outside")
    (root / "link_in").symlink_to(root / "videos")
    return root.resolve()


@settings(FAST, max_examples=40)
@given(lines=st.lists(rows(), min_size=1, max_size=8))
def test_fuzzed_rows_are_kept_inside_the_root_or_skipped_and_counted(data_root: Path, lines: list[str]) -> None:
    from vt_ray.data.guarded import load_samples
    from vt_ray.video import VideoError, read_video

    TRIED["dataset rows"] += len(lines)
    path = data_root / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with _opens_outside(data_root) as outside:
        samples, report = load_samples(path)
        for s in samples[:2]:  # what the rollout worker then does with a kept row
            try:
                read_video(s.video, _TINY_VIDEO)
            except VideoError:
                pass
    # JSON Lines rows end at \n only; read_text() would turn a \r inside a row into a row break of its own
    rows_written = [row for row in path.read_bytes().decode().split("\n") if row.strip()]
    assert report.kept + sum(report.skipped.values()) == len(rows_written)
    assert all(Path(s.video).resolve().is_relative_to(data_root) for s in samples)
    assert all(isinstance(s.uid, str) and isinstance(s.options, list) for s in samples)
    assert outside == [], outside


def test_each_escape_is_refused_by_name(data_root: Path) -> None:
    from vt_ray.data.guarded import load_samples

    videos = ["../outside/secret.mp4", "/etc/passwd", "link_out/secret.mp4", "link_in/a.mp4", "videos/a.mp4"]
    path = data_root / "train.jsonl"
    path.write_text("".join(json.dumps(dict(GOOD, uid=str(i), video=v)) + "\n" for i, v in enumerate(videos))
                    + json.dumps(dict(GOOD, uid=5)) + "\n" + json.dumps(dict(GOOD, options="AB")) + "\n{oops\n"
                    + json.dumps(dict(GOOD, question="why " * 300_000)) + "\n"
                    + json.dumps(dict(GOOD, answer_type="numeric", answer="3", duration=-1.0)) + "\n")
    samples, report = load_samples(path)
    assert [s.uid for s in samples] == ["3", "4"]  # the in-root symlink is fine
    assert report.skipped == Counter(outside_root=3, bad_type=2, bad_json=1, too_long=1, invalid=1)
    assert "field 'uid'" in report.examples["bad_type"] and "outside" in report.examples["outside_root"]


def test_a_carriage_return_inside_a_row_does_not_split_it(data_root: Path) -> None:
    """JSON Lines rows end at "\\n" only: "\\r" inside a row is JSON whitespace (found by the fuzzer above:
    universal-newline reading turned one row into two bad ones)."""
    from vt_ray.data.formats import load_data
    from vt_ray.data.guarded import load_samples

    path = data_root / "cr.jsonl"
    good = json.dumps(dict(GOOD, uid="cr")).replace(', "question"', ',\r"question"')
    path.write_text(good + "\n" + "{broken\rrow}\n")
    samples, report = load_samples(path)
    assert [s.uid for s in samples] == ["cr"] and report.skipped == Counter(bad_json=1)
    formats = load_data(path, check_media=False)
    assert [s.uid for s in formats.samples] == ["cr"] and [b.reason for b in formats.bad_rows] == ["bad_json"]


# ---- model outputs through the reward functions -------------------------------------------------------------
TAGS = st.sampled_from(["<time>", "</time>", "<caption>", "</caption>", "<think>", "</think>", "<answer>",
                        "</answer>", "0:05-0:10", "1.5-3", "99:99-00:00", "A", "B", "3.14", "-1e309", "nan", " "])


@settings(FAST, max_examples=150)
@given(
    response=st.one_of(st.text(max_size=300), st.lists(TAGS | st.text(max_size=4), max_size=50).map("".join),
                       st.integers(0, 100_000).map(lambda n: "<answer>" + "A" * n)),
    answer_type=st.sampled_from(["multiple_choice", "numeric", "free_text"]),
    answer=st.one_of(st.sampled_from(["A", "B", "3", "0", "1e9", ""]), st.text(max_size=10)),
    duration=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_fuzzed_outputs_score_without_raising(response: str, answer_type: str, answer: str, duration) -> None:
    from vt_ray.rewards.composite import RewardScorer
    from vt_ray.rewards.config import RewardConfig
    from vt_ray.rewards.target import RewardTarget

    TRIED["model outputs"] += 1
    try:  # a target the loader would refuse (see test_fuzzed_rows...) never reaches a scorer
        target = RewardTarget(answer=answer, options=("x", "y", "z") if answer_type == "multiple_choice" else (),
                              answer_type=answer_type, duration=duration)
    except ValueError:
        assume(False)
    scores = _scorer(RewardScorer, RewardConfig).score(response, target)
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values()), scores
    assert scores.get("accuracy", 0.0) in (0.0, 1.0)


_SCORERS: dict[str, Any] = {}


def _scorer(cls: Any, cfg_cls: Any) -> Any:
    if "s" not in _SCORERS:
        _SCORERS["s"] = cls(cfg_cls())
    return _SCORERS["s"]


# ---- video files ----------------------------------------------------------------------------------------------
def _tiny_video_cfg():
    from vt_ray.config.schema import VideoConfig

    return VideoConfig(num_frames=4, max_frames=4, max_pixels=56 * 56, min_pixels=28 * 28, decode_timeout_s=30)


_TINY_VIDEO = _tiny_video_cfg()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good mp4, a 2-frame 2048x2048 one, a 0-frame AVI, a PNG and a WAV named .mp4."""
    import av

    from vt_ray.data.synthetic import write_mp4

    out = tmp_path_factory.mktemp("fuzzvideo")
    rng = np.random.default_rng(0)
    write_mp4(out / "good.mp4", rng.integers(0, 255, (12, 64, 96, 3), dtype=np.uint8), fps=6)
    write_mp4(out / "huge.mp4", rng.integers(0, 255, (2, 2048, 2048, 3), dtype=np.uint8), fps=2)
    with av.open(str(out / "empty.avi"), mode="w") as container:  # a header, no frames
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
        for packet in stream.encode(None):
            container.mux(packet)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out / "picture.png")
    (out / "image.mp4").write_bytes((out / "picture.png").read_bytes())
    (out / "sound.mp4").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(200))
    return {p.stem: p for p in out.iterdir()}


def _read_or_typed_error(path: Path) -> str:
    from vt_ray.video import VideoError, read_video

    try:
        video = read_video(path, _TINY_VIDEO)
    except VideoError as err:
        assert str(path) in str(err)
        return type(err).__name__
    assert video.frames.ndim == 4 and video.frames.shape[0] >= 1
    assert video.frames.shape[1] * video.frames.shape[2] <= _TINY_VIDEO.max_pixels  # huge input, bounded frames
    return "ok"


@settings(FAST, max_examples=25)
@given(cut=st.floats(0.0, 0.999), flip=st.one_of(st.none(), st.integers(0, 10**9)))
def test_truncated_or_damaged_videos_decode_or_fail_typed(videos: dict[str, Path], tmp_path_factory, cut: float,
                                                          flip: int | None) -> None:
    TRIED["video files"] += 1
    data = bytearray(videos["good"].read_bytes())
    data = data[: int(len(data) * cut)]
    if flip is not None and data:
        data[flip % len(data)] ^= 0xFF
    path = tmp_path_factory.mktemp("cut") / "v.mp4"
    path.write_bytes(bytes(data))
    _read_or_typed_error(path)


def test_zero_frames_huge_resolution_and_wrong_containers(videos: dict[str, Path]) -> None:
    outcomes = {name: _read_or_typed_error(videos[name]) for name in ("good", "huge", "empty", "image", "sound")}
    TRIED["video files"] += len(outcomes)
    assert outcomes["good"] == "ok" and outcomes["huge"] == "ok", outcomes
    assert outcomes["empty"] in ("VideoEmpty", "VideoCorrupt"), outcomes
    assert outcomes["sound"] == "VideoCorrupt", outcomes
    assert outcomes["image"] in ("ok", "VideoCorrupt", "VideoEmpty"), outcomes  # a 1-frame "video" is legal
