"""Each distinct video of a forward is encoded once: same logits and gradients as encoding every copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from learner_examples import make_examples  # pytest puts tests/ on sys.path (rootdir conftest)
from vt_ray.learner.collate import collate
from vt_ray.learner.vision_dedup import distinct_videos, install_video_dedup


def test_distinct_videos_groups_exact_copies_only() -> None:
    a, b = torch.randn(8, 5), torch.randn(8, 5)
    near = a.clone()
    near[3, 2] += 1e-6  # one value apart: a different video
    pixels = torch.cat([a, b, a, near, b, torch.randn(4, 5)])
    grid = torch.tensor([[2, 2, 2]] * 5 + [[1, 2, 2]])
    first, inverse = distinct_videos(pixels, grid)
    assert first == [0, 1, 3, 5] and inverse == [0, 1, 0, 2, 1, 3]


def _grouped_batch(processor, groups: int, copies: int):
    """``groups`` prompts with ``copies`` responses each (a GRPO group): the same frames, different responses."""
    examples = make_examples(processor, groups * copies, seed=3)
    out = []
    for i, ex in enumerate(examples):
        source = examples[(i // copies) * copies]
        out.append(dataclasses.replace(ex, frames=source.frames, prompt=source.prompt))
    return collate(processor, out)


def _forward_and_grads(model: torch.nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    calls = []
    handle = model.model.visual.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    model.zero_grad()
    logits = model(**batch.model_inputs(), use_cache=False).logits
    (logits.float().logsumexp(-1) * batch.attention_mask).sum().backward()
    handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, sum(calls)


def test_dedup_gives_the_same_logits_and_gradients_with_a_group_of_copies_encoded_once(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor

    from vt_ray.models.hf_load import load_vl_model

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    batch = _grouped_batch(processor, groups=2, copies=3)
    plain = load_vl_model(str(tiny_model_dir), torch.float32).train()
    deduped = load_vl_model(str(tiny_model_dir), torch.float32).train()
    assert install_video_dedup(deduped) and not install_video_dedup(deduped)  # installed once
    logits_a, grads_a, patches_a = _forward_and_grads(plain, batch)
    logits_b, grads_b, patches_b = _forward_and_grads(deduped, batch)
    assert patches_b * 3 == patches_a  # the tower saw each of the 2 videos once instead of 3 times
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and any("visual" in n for n in grads_a)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4), name
    # all distinct: the wrapper passes the batch through unchanged
    distinct = collate(processor, make_examples(processor, 3, seed=4))
    assert _forward_and_grads(deduped, distinct)[2] == _forward_and_grads(plain, distinct)[2]
    assert np.isfinite(logits_b.numpy()).all()
