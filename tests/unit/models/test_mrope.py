"""Released Qwen2.5-VL multimodal RoPE positions (what vLLM computes), independent of transformers' version."""

from __future__ import annotations

import torch

from vt_ray.models.mrope import IMAGE, TEXT, VIDEO, rope_index, sequence_positions


def test_video_block_then_text_counts_on_from_the_video_maximum() -> None:
    # 2 text tokens, a video of t=2 temporal patches on a 4x4 patch grid (2x2 after merging), 1 text token.
    types = [TEXT] * 2 + [VIDEO] * 8 + [TEXT]
    pos = sequence_positions(types, [], [torch.tensor([2, 4, 4])], [2.0], spatial_merge=2, tokens_per_second=2)
    # interval = tokens_per_second * seconds_per_grid = 4: the second temporal patch sits 4 positions later.
    assert pos[0].tolist() == [0, 1, 2, 2, 2, 2, 6, 6, 6, 6, 7]
    assert pos[1].tolist() == [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 7]
    assert pos[2].tolist() == [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 7]


def test_images_have_no_temporal_spacing_and_blocks_chain() -> None:
    types = [IMAGE] * 4 + [TEXT] + [VIDEO] * 4
    pos = sequence_positions(types, [torch.tensor([1, 4, 4])], [torch.tensor([1, 4, 4])], [5.0], 2, 2)
    assert pos[:, :4].tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 1]]
    assert pos[:, 4].tolist() == [2, 2, 2]
    assert pos[:, 5:].min().item() == 3


def test_batched_with_padding_matches_each_row_alone_and_reports_deltas() -> None:
    row_a = [TEXT] * 3 + [VIDEO] * 8 + [TEXT] * 2
    row_b = [TEXT] * 1 + [VIDEO] * 4 + [TEXT] * 3
    grids = torch.tensor([[2, 4, 4], [1, 4, 4]])
    seconds = torch.tensor([2.0, 1.0])
    length = len(row_a)
    types = torch.tensor([row_a, [TEXT] * (length - len(row_b)) + row_b])  # row b left-padded
    mask = torch.tensor([[1] * length, [0] * (length - len(row_b)) + [1] * len(row_b)])
    pos, deltas = rope_index(torch.zeros_like(types), types, None, grids, seconds, mask,
                             spatial_merge=2, tokens_per_second=2)
    alone_a = sequence_positions(row_a, [], [grids[0]], [2.0], 2, 2)
    alone_b = sequence_positions(row_b, [], [grids[1]], [1.0], 2, 2)
    assert torch.equal(pos[:, 0], alone_a)
    assert torch.equal(pos[:, 1, length - len(row_b):], alone_b)
    assert pos[:, 1, : length - len(row_b)].eq(0).all()
    assert deltas[:, 0].tolist() == [int(alone_a.max()) + 1 - len(row_a), int(alone_b.max()) + 1 - len(row_b)]


def test_grid_that_does_not_match_the_placeholders_is_a_clear_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="video grid"):
        sequence_positions([VIDEO] * 5, [], [torch.tensor([2, 4, 4])], [1.0], 2, 2)


def test_stock_transformers_still_differs_after_a_long_video(tiny_model_dir) -> None:
    """Why the module exists; when this fails, transformers matches the released positions again and the
    instance patch in vt_ray.models.mrope can be dropped."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    types = torch.tensor([[TEXT] * 2 + [VIDEO] * 16 + [TEXT] * 2])
    args = (torch.zeros_like(types), types, None, torch.tensor([[4, 4, 4]]), torch.tensor([2.0]), None)
    stock, _ = model.model.get_rope_index(*args[:2], image_grid_thw=None, video_grid_thw=args[3],
                                          second_per_grid_ts=args[4])
    ours, _ = rope_index(*args, spatial_merge=2, tokens_per_second=2)
    assert torch.equal(stock[:, :, :18], ours[:, :, :18])  # identical up to the end of the video
    assert not torch.equal(stock[:, :, 18:], ours[:, :, 18:])


def test_every_tool_that_runs_video_through_a_transformers_model_loads_it_with_the_released_positions() -> None:
    """transformers 5.x places the text after a video elsewhere than vLLM and our learner do; a model loaded with a
    bare ``from_pretrained`` and fed a video reads its own traces as noise (found in benchmarks/reader_probe.py,
    whose figures in docs/learning.md were taken that way until it was fixed). Every load goes through
    ``vt_ray.models.hf_load`` except these, which never compute a position-dependent figure from a video prompt."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    exempt = {
        "vt_ray/models/hf_load.py": "the one place",
        "benchmarks/learner_load_memory.py": "measures load memory, runs no forward",
        "benchmarks/activation_bytes.py": "measures activation bytes: positions change no tensor size",
        "tools/megatron_check.py": "passes explicit position_ids to both models",
    }
    bare = re.compile(r"(AutoModelForImageTextToText|Qwen2_5_VLForConditionalGeneration)\.from_pretrained\(")
    offenders = [str(p.relative_to(root)) for d in ("vt_ray", "benchmarks", "tools", "data_pipeline")
                 for p in sorted((root / d).rglob("*.py")) if bare.search(p.read_text())]
    assert offenders, "the pattern no longer matches anything: update this test with the loader"
    assert sorted(set(offenders) - set(exempt)) == []
