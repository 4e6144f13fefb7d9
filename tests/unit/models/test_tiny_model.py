"""The tiny Qwen2.5-VL: real classes, offline tokenizer, deterministic bytes, loads with the Auto classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLProcessor

from vt_ray.models.tiny import directory_digest, make_tiny_model
from vt_ray.models.tokenizer import SPECIAL_TOKENS


def test_same_seed_same_bytes_other_seed_differs(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_model(tmp_path / "again", seed=0)
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert directory_digest(again) == directory_digest(tiny_model_dir)
    assert directory_digest(other) != directory_digest(tiny_model_dir)
    assert sum(f.stat().st_size for f in again.iterdir()) < 20 * 2**20  # "a few MB"


def test_processor_and_tokenizer_load_offline(tiny_model_dir: Path) -> None:
    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    assert isinstance(proc, Qwen2_5_VLProcessor)
    tok = proc.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = "<time>00:03-00:07</time> <caption>A red circle, ünïcode 🙂</caption><answer>B</answer><|im_end|>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>"


def test_model_round_trip_and_video_forward(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).eval()
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    model.save_pretrained(tmp_path / "copy")
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "copy").eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    proc = AutoProcessor.from_pretrained(tiny_model_dir)
    frames = np.random.default_rng(0).integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = proc(text=[prompt], videos=[frames], return_tensors="pt", do_sample_frames=False,
                  videos_kwargs={"fps": 2.0})
    grid = inputs["video_grid_thw"][0].tolist()
    assert grid == [4, 8, 8]  # 8 frames / temporal patch 2, 112 px / patch 14
    n_video_tokens = int((inputs["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    assert n_video_tokens == 4 * 8 * 8 // 4  # spatial merge 2x2
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
