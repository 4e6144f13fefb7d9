"""The learner in-process (a world of one gloo rank, FSDP2): weight export and HF checkpoints, reference
log-probs, resumable checkpoints, the GRPO loss hook, activation checkpointing and bf16 mixed precision. The
multi-rank FSDP test is in test_learner_fsdp_equivalence.py; collation and the schedule are unit tests
(tests/unit/learner/test_batch_and_schedule.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from learner_examples import make_examples  # tests/ is on sys.path (rootdir conftest)
from vt_ray.config.loader import load_config
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner.batch import Example, TrainBatch
from vt_ray.learner.collate import collate


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


# ---- in-process learner ----------------------------------------------------------------------------------
def _cfg(model_dir: Path, *extra: str):
    return load_config(None, [f"model.path={model_dir}", "learner.lr=1e-3", "learner.micro_batch_size=2", *extra])


def _learner(model_dir: Path, *extra: str, total_steps: int = 4):
    from vt_ray.learner.worker import LearnerWorker

    worker = LearnerWorker(LearnerRoleConfig.of(_cfg(model_dir, *extra)))
    worker.setup(total_steps=total_steps)
    return worker


def test_export_keys_and_save_hf_reload_gives_identical_logits(tiny_model_dir: Path, processor, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from vt_ray.models.hf_load import load_vl_model

    worker = _learner(tiny_model_dir, "learner.reference=none")
    batch = collate(processor, make_examples(processor, 3))
    worker.train_step(batch, num_micro=2, loss_name="sft")  # exported weights differ from the source's

    hf = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    exported = worker.export_state_dict()
    assert list(exported) == list(hf.state_dict())
    assert any(not torch.equal(exported[k], v) for k, v in hf.state_dict().items())

    out = Path(worker.save_hf(str(tmp_path / "hf")))
    reloaded = load_vl_model(str(out), torch.float32).eval()
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in exported.items())
    with torch.no_grad():
        worker.model.eval()
        ours = worker.model(**batch.model_inputs(), use_cache=False).logits
        theirs = reloaded(**batch.model_inputs(), use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert (out / "preprocessor_config.json").exists() or (out / "processor_config.json").exists()


def test_reference_logprobs_stay_at_the_initial_weights(tiny_model_dir: Path, processor) -> None:
    worker = _learner(tiny_model_dir, "learner.reference=sharded")
    batch = collate(processor, make_examples(processor, 2))
    ref_before = worker.compute_logprobs(batch, num_micro=1, which="reference")
    policy_before = worker.compute_logprobs(batch, num_micro=1, which="policy")
    assert torch.allclose(ref_before, policy_before, atol=1e-6)
    assert (ref_before[~batch.response_mask.bool()] == 0).all() and (ref_before[batch.response_mask.bool()] < 0).all()
    worker.train_step(batch, num_micro=1)
    assert torch.equal(worker.compute_logprobs(batch, num_micro=1, which="reference"), ref_before)
    after = worker.compute_logprobs(batch, num_micro=1, which="policy")
    mask = batch.response_mask.bool()
    assert after[mask].mean() > policy_before[mask].mean()  # SFT raised the response likelihood


def test_checkpoint_round_trip_resumes_exactly(tiny_model_dir: Path, processor, tmp_path: Path) -> None:
    batches = [collate(processor, make_examples(processor, 3, seed=s)) for s in range(3)]
    root = tmp_path / "ckpt"
    a = _learner(tiny_model_dir, "learner.reference=none", "learner.keep_last=2", "learner.warmup_steps=1")
    a.train_step(batches[0], num_micro=2)
    a.save_checkpoint(str(root), {"epoch": 0, "next_index": 3})
    rng_after_save = torch.rand(4)
    expected = a.train_step(batches[1], num_micro=2)
    expected_weights = a.export_state_dict()

    b = _learner(tiny_model_dir, "learner.reference=none", "learner.keep_last=2", "learner.warmup_steps=1")
    assert b.load_checkpoint(str(root)) == {"epoch": 0, "next_index": 3}
    assert b.step == 1
    assert torch.equal(torch.rand(4), rng_after_save)
    got = b.train_step(batches[1], num_micro=2)
    assert got["lr"] == expected["lr"] and got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    weights = b.export_state_dict()
    assert max((weights[k] - v).abs().max().item() for k, v in expected_weights.items()) < 1e-6

    # Without the optimizer state the same step lands elsewhere: the check above can fail.
    c = _learner(tiny_model_dir, "learner.reference=none", "learner.warmup_steps=1")
    c.train_step(batches[0], num_micro=2)
    c.optimizer.state.clear()
    c.train_step(batches[1], num_micro=2)
    assert max((c.export_state_dict()[k] - v).abs().max().item() for k, v in expected_weights.items()) > 1e-5

    # keep_last: three saves leave the newest two, and `latest` names the newest.
    b.save_checkpoint(str(root))
    b.train_step(batches[2], num_micro=2)
    b.save_checkpoint(str(root))
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (root / "latest").read_text().strip() == "step_00000003"
    assert not list(root.glob(".tmp_*"))


def test_load_checkpoint_without_one_returns_none(tiny_model_dir: Path, tmp_path: Path) -> None:
    worker = _learner(tiny_model_dir, "learner.reference=none")
    assert worker.load_checkpoint(str(tmp_path / "nothing")) is None
    assert worker.step == 0


def test_grpo_loss_plugs_into_the_learner_hook(tiny_model_dir: Path, processor) -> None:
    """The algorithm module's loss runs through train_step by name, fed the learner's own log-probs."""
    worker = _learner(tiny_model_dir, "learner.reference=sharded")
    batch = collate(processor, make_examples(processor, 4))
    batch.old_logprobs = worker.compute_logprobs(batch, num_micro=2, which="policy")
    batch.ref_logprobs = worker.compute_logprobs(batch, num_micro=2, which="reference")
    batch.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    noise = torch.linspace(-0.3, 0.2, batch.input_ids.numel()).reshape(batch.input_ids.shape)
    batch.behaviour_logprobs = (batch.old_logprobs + noise) * batch.response_mask  # a mismatched "engine"
    metrics = worker.train_step(batch, num_micro=2, loss_name="grpo")
    diff = noise[batch.response_mask.bool()].abs()
    # the max over both micro-batches (reduced with max, not summed as the shares are) and the token mean
    assert metrics["actor/engine_learner_abs_diff_max"] == pytest.approx(float(diff.max()), abs=1e-5)
    assert metrics["actor/engine_learner_abs_diff_mean"] == pytest.approx(float(diff.mean()), abs=1e-5)
    assert "actor/pg_loss" in metrics and math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    vocab = worker.hf_config.text_config.vocab_size
    assert 0 < metrics["actor/entropy"] <= math.log(vocab) + 1e-4  # the policy's, in nats, over the vocabulary
    after = worker.compute_logprobs(batch, num_micro=2, which="policy")
    mask = batch.response_mask.bool()
    gain = (after - batch.old_logprobs)[mask]
    rows = mask.nonzero()[:, 0]
    # positive advantage -> likelihood up, negative -> down (on average over each response)
    assert gain[rows == 0].mean() > 0 > gain[rows == 1].mean()


def test_activation_checkpointing_changes_memory_not_math(tiny_model_dir: Path, processor) -> None:
    batch = collate(processor, make_examples(processor, 2))
    plain = _learner(tiny_model_dir, "learner.reference=none")
    ckpt = _learner(tiny_model_dir, "learner.reference=none", "learner.activation_checkpointing=true")
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.model.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.model.modules())
    a, b = plain.train_step(batch, num_micro=1), ckpt.train_step(batch, num_micro=1)
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    wa, wb = plain.export_state_dict(), ckpt.export_state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_bf16_mixed_precision_trains_float32_master_weights(tiny_model_dir: Path, processor) -> None:
    batch = collate(processor, make_examples(processor, 2))
    worker = _learner(tiny_model_dir, "learner.reference=none", "learner.param_dtype=bfloat16")
    first = worker.train_step(batch, num_micro=1)
    second = worker.train_step(batch, num_micro=1)
    assert second["loss"] < first["loss"]
    assert all(p.dtype == torch.float32 for p in worker.model.parameters())  # sharded masters stay fp32
    assert all(v.dtype == torch.float32 for v in worker.export_state_dict().values())  # model.dtype=float32
    assert all(v.dtype == torch.bfloat16 for v in worker.export_state_dict("bfloat16").values())


# ---- pixels by reference (docs/data-path.md) ----------------------------------------------------------------
def _image_example(processor, uid: str) -> Example:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which colour?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    image = np.random.default_rng(7).integers(0, 256, size=(1, 60, 90, 3), dtype=np.uint8)
    ids = processor.tokenizer("<answer>B</answer>", add_special_tokens=False)["input_ids"]
    return Example(prompt, image, ids, {}, uid=uid, media="image")


def test_pixels_by_reference_give_the_driver_path_bit_for_bit(tiny_model_dir: Path, processor) -> None:
    """The rollout worker's uint8 patches, fetched and normalised by the learner, are the driver's float32
    pixels bit for bit: same batch fields (whole and sharded), same log-probs and losses. The by-reference
    batch holds no pixels, only one reference per prompt (not per response)."""
    from dataclasses import replace

    import ray

    from vt_ray.prompts.encode import encode_for_learner

    base = make_examples(processor, 2, frames_shape=(4, 50, 70, 3))
    examples = [replace(base[g], response_ids=list(base[j].response_ids), uid=f"g{g}r{j}")
                for g in range(2) for j in range(2)]
    examples.insert(2, _image_example(processor, "img"))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        by_prompt = {}
        for ex in examples:
            if id(ex.frames) not in by_prompt:
                enc, pixels = encode_for_learner(processor, ex.prompt, ex.frames, ex.video_metadata, ex.media)
                assert pixels.patches.dtype == np.uint8
                enc.pixels = ray.put(pixels)
                by_prompt[id(ex.frames)] = enc
        refs = [replace(ex, frames=None, encoded=by_prompt[id(ex.frames)]) for ex in examples]
        old, new = collate(processor, examples), collate(processor, refs)
        assert new.pixel_refs is not None and len(new.pixel_refs.refs) == 3 and new.pixel_refs.rows == [0, 0, 1, 2, 2]
        assert new.pixel_values_videos.numel() == 0 and new.pixel_values is not None and new.pixel_values.numel() == 0
        fields = ("input_ids", "attention_mask", "response_mask", "mm_token_type_ids", "pixel_values_videos",
                  "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw", "is_image")
        fetched: dict = {}  # one per call, as the learner materialises micro-batch by micro-batch
        for a, b in [(old, new.materialised()), *zip(old.split(2), new.split(2))]:
            assert a is not None and b is not None
            b = b.materialised(fetched)
            for name in fields:
                assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert len(fetched) == 3  # each distinct prompt fetched and converted once over the pieces
        first_shard, second_shard = new.split(2)
        assert first_shard is not None and second_shard is not None and second_shard.pixel_refs is not None
        assert second_shard.pixel_refs.rows == [0, 0] and len(second_shard.pixel_refs.refs) == 1  # only its own
        for k, v in old.model_inputs().items():
            assert torch.equal(v, new.model_inputs()[k]), k  # a backend that never calls materialised()
        # The Megatron group's path: each shard's pixels fetched compact, exchanged, stacked by key; the first
        # video's prompt is in both pieces and is kept once.
        keyed = [new.select(0, 1).fetch_pixels(), new.select(1, len(new)).fetch_pixels()]
        pooled = TrainBatch.concat([b for b, _ in keyed])
        stored = {k: p for _, part in keyed for k, p in part.items()}
        assert pooled.pixel_refs is not None and len(pooled.pixel_refs.refs) == len(stored) == 3
        assert all(isinstance(k, str) for k in pooled.pixel_refs.refs)  # no Ray reference left to pickle
        whole = pooled.materialised({k: p.tensor() for k, p in stored.items()})
        for name in fields:
            assert torch.equal(getattr(old, name), getattr(whole, name)), name

        worker = _learner(tiny_model_dir, "learner.reference=none", "algorithm.use_kl_loss=false")
        assert torch.equal(worker.compute_logprobs(old, num_micro=3), worker.compute_logprobs(new, num_micro=3))
        for b in (old, new):
            b.old_logprobs = worker.compute_logprobs(old, num_micro=3)
            b.advantages = torch.tensor([1.0, -1.0, 0.5, 1.0, -1.0])
        state = {k: v.clone() for k, v in worker.model.state_dict().items()}
        first = worker.train_step(old, num_micro=3, loss_name="grpo")
        worker.model.load_state_dict(state)  # the loss and gradient are taken before the optimizer moves
        second = worker.train_step(new, num_micro=3, loss_name="grpo")
        assert first["loss"] == second["loss"] and first["grad_norm"] == second["grad_norm"]
    finally:
        ray.shutdown()
