"""Video reading: frame sampling and sizing rules, both decoders, and typed errors for bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vt_ray.config.schema import VideoConfig
from vt_ray.data.synthetic import write_mp4
from vt_ray.video import VideoCorrupt, VideoError, VideoNotFound, VideoTimeout, read_video
from vt_ray.video.sampling import resized_shape, target_frame_count, uniform_indices, video_token_count

TINY = VideoConfig(num_frames=8, max_frames=8, max_pixels=112 * 112)


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 frames at 10 fps whose brightness encodes the frame index: sampled frames are checkable."""
    frames = np.zeros((40, 96, 128, 3), dtype=np.uint8)
    for i in range(40):
        frames[i] = i * 6
    path = tmp_path_factory.mktemp("video") / "ramp.mp4"
    write_mp4(path, frames, fps=10)
    return path


@given(total=st.integers(1, 5000), count=st.integers(1, 64))
def test_uniform_indices_are_sorted_in_range_and_spread(total: int, count: int) -> None:
    idx = uniform_indices(total, count)
    assert len(idx) == count
    assert idx == sorted(idx) and 0 <= idx[0] and idx[-1] < total
    if total >= count:
        assert len(set(idx)) == count


@given(num=st.integers(0, 40), total=st.integers(1, 10000), fps=st.floats(1, 60), max_frames=st.integers(2, 64))
def test_frame_count_is_even_and_within_bounds(num: int, total: int, fps: float, max_frames: int) -> None:
    cfg = VideoConfig(num_frames=num, fps=2.0, max_frames=max_frames, min_frames=2)
    n = target_frame_count(cfg, total, fps)
    assert n % 2 == 0 and 2 <= n <= max(max_frames, 2)


@given(h=st.integers(28, 2000), w=st.integers(28, 2000))
def test_resized_shape_is_a_multiple_of_28_within_pixel_caps(h: int, w: int) -> None:
    if max(h, w) / min(h, w) > 200:
        return  # smart_resize refuses extreme aspect ratios, by design
    cfg = VideoConfig(min_pixels=4 * 28 * 28, max_pixels=128 * 28 * 28)
    rh, rw = resized_shape(h, w, cfg)
    assert rh % 28 == 0 and rw % 28 == 0
    assert cfg.min_pixels <= rh * rw <= cfg.max_pixels


def test_video_token_count_matches_qwen_grid() -> None:
    assert video_token_count(8, 112, 112) == 4 * 4 * 4  # grid [4, 8, 8] merged 2x2
    assert video_token_count(16, 224, 224) == 8 * 8 * 8


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_read_video_samples_uniform_frames_with_timestamps(ramp_video: Path, backend: str) -> None:
    cfg = VideoConfig(num_frames=8, max_frames=8, max_pixels=112 * 112, backend=backend)
    video = read_video(ramp_video, cfg)
    assert video.backend == backend
    assert video.frames.dtype == np.uint8 and video.frames.shape == (8, 84, 140, 3)  # 96x128 -> nearest multiples of 28
    assert video.frame_indices == [2, 7, 12, 17, 22, 27, 32, 37]
    assert video.timestamps == pytest.approx([i / 10 for i in video.frame_indices])
    assert video.total_frames == 40 and video.fps == pytest.approx(10) and video.duration == pytest.approx(4)
    brightness = video.frames.reshape(8, -1).mean(axis=1)
    assert np.allclose(brightness, [i * 6 for i in video.frame_indices], atol=3)  # the right frames came back
    meta = video.vllm_metadata()
    assert meta["total_num_frames"] == 40 and meta["frames_indices"] == video.frame_indices
    assert meta["do_sample_frames"] is False and meta["duration"] == pytest.approx(4)


def test_fps_sampling_is_capped_by_max_frames(ramp_video: Path) -> None:
    by_fps = read_video(ramp_video, VideoConfig(num_frames=0, fps=1.0, max_frames=16))
    assert len(by_fps.frames) == 4  # 4 s at 1 fps
    capped = read_video(ramp_video, VideoConfig(num_frames=0, fps=8.0, max_frames=6))
    assert len(capped.frames) == 6


def test_short_video_repeats_frames_to_an_even_count(tmp_path: Path) -> None:
    path = tmp_path / "three.mp4"
    write_mp4(path, np.full((3, 56, 56, 3), 100, dtype=np.uint8), fps=5)
    video = read_video(path, VideoConfig(num_frames=4, max_frames=4, max_pixels=56 * 56))
    assert len(video.frames) == 4 and video.total_frames == 3
    assert max(video.frame_indices) <= 2


def test_missing_file_is_typed_and_named(tmp_path: Path) -> None:
    with pytest.raises(VideoNotFound, match="nope.mp4") as info:
        read_video(tmp_path / "nope.mp4", TINY)
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a video at all" * 50, "truncated"],
    ids=["empty-file", "garbage", "truncated-mp4"],
)
def test_corrupt_file_is_typed_and_named(tmp_path: Path, ramp_video: Path, content: bytes | str) -> None:
    path = tmp_path / "bad.mp4"
    data = ramp_video.read_bytes()[: len(ramp_video.read_bytes()) // 3] if content == "truncated" else content
    path.write_bytes(data)  # type: ignore[arg-type]
    with pytest.raises(VideoError, match="bad.mp4") as info:
        read_video(path, TINY)
    assert isinstance(info.value, VideoCorrupt | VideoError) and info.value.reason in ("corrupt", "empty")


def test_decode_timeout_is_typed(ramp_video: Path) -> None:
    # A 1 us budget can never be met by a real decode: this checks the timeout path, not a wall-clock speed.
    with pytest.raises(VideoTimeout, match="ramp.mp4"):
        read_video(ramp_video, VideoConfig(num_frames=8, max_frames=8, decode_timeout_s=1e-6))


def test_video_errors_survive_pickling() -> None:
    err = pickle.loads(pickle.dumps(VideoCorrupt("/data/x.mp4", "moov atom not found")))
    assert isinstance(err, VideoCorrupt) and err.path == "/data/x.mp4" and err.reason == "corrupt"
    assert "moov atom" in str(err)
