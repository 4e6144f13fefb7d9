"""Image samples beside videos: reading, prompt budget, mixed video/image learner batches (slicing, forward),
SFT examples, and the synthetic image questions / Video-R1 mix writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vt_ray.config.schema import VideoConfig
from vt_ray.data.formats import load_data
from vt_ray.data.schema import read_samples
from vt_ray.data.synthetic_images import make_image_questions, write_video_r1_mix
from vt_ray.learner.batch import Example, TrainBatch
from vt_ray.learner.collate import collate
from vt_ray.video.errors import VideoCorrupt, VideoNotFound
from vt_ray.video.image import read_image


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_read_image_resizes_to_patch_multiples_and_types_errors(tmp_path: Path) -> None:
    Image.new("RGBA", (100, 61), (10, 20, 30, 255)).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png", VideoConfig())
    h, w, c = img.pixels.shape
    assert (h % 28, w % 28, c) == (0, 0, 3) and img.frames.shape == (1, h, w, 3)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(VideoCorrupt):
        read_image(tmp_path / "bad.png", VideoConfig())
    with pytest.raises(VideoNotFound):
        read_image(tmp_path / "none.png", VideoConfig())


def _examples(processor, media: list[str]) -> list[Example]:
    rng = np.random.default_rng(0)
    tok = processor.tokenizer
    out = []
    for i, kind in enumerate(media):
        msgs = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": f"What is shown? {'why ' * i}"}]}]
        prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        frames = rng.integers(0, 256, size=(1 if kind == "image" else 4, 56, 84, 3), dtype=np.uint8)
        response = tok(f"<think>look {i}</think><answer>{'AB'[i % 2]}</answer>", add_special_tokens=False)["input_ids"]
        out.append(Example(prompt, frames, response, {}, {"old": [0.1] * len(response)}, {"adv": float(i)},
                           uid=f"{kind}{i}", media=kind))
    return out


def test_mixed_batch_slices_and_concats_by_modality(processor) -> None:
    media = ["video", "image", "image", "video", "image"]
    batch = collate(processor, _examples(processor, media))
    assert batch.is_image.tolist() == [m == "image" for m in media]
    assert batch.video_grid_thw.shape == (2, 3) and batch.image_grid_thw.shape == (3, 3)
    assert batch.pixel_values.shape[0] == int(batch.image_grid_thw.prod(-1).sum())
    parts = [p for p in batch.split(3) if p is not None]
    assert [p.is_image.tolist() for p in parts] == [[False, True], [True, False], [True]]
    assert len(parts[2].video_grid_thw) == 0
    image_only = parts[2].model_inputs()  # images go to the forward as one-step videos (one vision call)
    assert "pixel_values" not in image_only and torch.equal(image_only["video_grid_thw"], parts[2].image_grid_thw)
    assert not (image_only["input_ids"] == batch.image_token_id).any()
    back = TrainBatch.concat(parts)
    for name in ("input_ids", "pixel_values_videos", "pixel_values", "video_grid_thw", "image_grid_thw", "is_image"):
        assert torch.equal(getattr(back, name), getattr(batch, name)), name
    for a, b in zip(back.model_inputs().values(), batch.model_inputs().values(), strict=True):
        assert torch.equal(a, b)


def test_mixed_batch_forward_equals_one_sample_at_a_time(tiny_model_dir: Path, processor) -> None:
    from vt_ray.learner.logprobs import token_logprobs
    from vt_ray.models.hf_load import load_vl_model

    model = load_vl_model(str(tiny_model_dir), torch.float32).eval()
    batch = collate(processor, _examples(processor, ["image", "video", "image", "video"]))
    with torch.no_grad():
        together = token_logprobs(model, batch, torch.device("cpu"))
        for i in range(len(batch)):
            one = batch.select(i, i + 1)
            alone = token_logprobs(model, one, torch.device("cpu"))
            mask = one.response_mask[0].bool()
            assert torch.allclose(together[i, : mask.shape[0]][mask], alone[0][mask], atol=1e-5)
    # The forward's one-vision-call view (images as one-step videos) gives the logits of native image inputs.
    native = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "mm_token_type_ids": batch.mm_token_type_ids, "pixel_values": batch.pixel_values,
              "image_grid_thw": batch.image_grid_thw, "pixel_values_videos": batch.pixel_values_videos,
              "video_grid_thw": batch.video_grid_thw, "second_per_grid_ts": batch.second_per_grid_ts}
    with torch.no_grad():
        ours = model(**batch.model_inputs(), use_cache=False).logits
        theirs = model(**native, use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    only_images = collate(processor, _examples(processor, ["image", "image"]))
    assert only_images.video_grid_thw.shape == (0, 3)
    with torch.no_grad():
        assert torch.isfinite(token_logprobs(model, only_images, torch.device("cpu"))).all()


def test_sft_example_for_an_image_sample(tiny_model_dir: Path, processor, tmp_path: Path) -> None:
    from vt_ray.config.loader import load_config
    from vt_ray.learner.sft_data import SftExampleBuilder

    cfg = load_config(None, [f"model.path={tiny_model_dir}"])
    sample = make_image_questions(tmp_path, 1)[0]
    sample.video = str(tmp_path / sample.video)
    ex = SftExampleBuilder(cfg, processor).build(sample)
    assert ex is not None and ex.media == "image" and ex.frames.shape[0] == 1
    batch = collate(processor, [ex])
    assert batch.image_grid_thw.shape == (1, 3) and batch.num_tokens == len(ex.response_ids)


def test_synthetic_image_questions_cover_four_types(tmp_path: Path) -> None:
    samples = make_image_questions(tmp_path, 8, seed=1)
    assert {s.answer_type for s in samples} == {"multiple_choice", "numeric", "ocr", "free_text"}
    assert all(s.media == "image" and (tmp_path / s.video).is_file() for s in samples)
    assert make_image_questions(tmp_path / "again", 8, seed=1)[3].answer == samples[3].answer  # seeded


def test_video_r1_mix_loads_every_problem_type(synthetic_dir: Path, tmp_path: Path) -> None:
    videos = read_samples(synthetic_dir / "train.jsonl")[:4]
    path = write_video_r1_mix(tmp_path / "mix", videos, synthetic_dir, num_images=8)
    rows = json.loads(path.read_text())
    assert {"problem_id", "problem", "data_type", "problem_type", "options", "process", "solution", "path",
            "data_source"} == set(rows[0])
    report = load_data(path, "video_r1")
    assert not report.bad_rows and not report.missing_media
    assert set(report.counts()["by_answer_type"]) == {"multiple_choice", "numeric", "ocr", "free_text", "regression"}
    assert report.counts()["by_media"] == {"image": 8, "video": 6}
