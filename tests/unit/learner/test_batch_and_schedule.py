"""Learner pieces that run in one process without a process group: collation into a typed batch, the lr schedule,
the learner section's validation, checkpoint commits, and SFT data order and prefetch. The learner itself (a gloo
rank, FSDP2) is tested in tests/integration/learner/."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from learner_examples import make_examples  # tests/ is on sys.path (rootdir conftest)
from vt_ray.common.errors import ConfigError
from vt_ray.config.loader import load_config
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.collate import collate
from vt_ray.learner.schedule import lr_factor


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


# ---- (a) collate ----------------------------------------------------------------------------------------
def test_collate_loss_mask_covers_exactly_the_response(processor) -> None:
    examples = make_examples(processor, 3, extras=True)
    batch = collate(processor, examples)
    pad = processor.tokenizer.pad_token_id
    assert batch.input_ids.shape[0] == 3 and batch.video_grid_thw.shape == (3, 3)
    for i, ex in enumerate(examples):
        enc = processor(text=[ex.prompt], videos=[ex.frames], return_tensors="pt", do_sample_frames=False)
        prompt_ids = enc["input_ids"][0].tolist()
        n_p, n_r = len(prompt_ids), len(ex.response_ids)
        row, mask = batch.input_ids[i], batch.response_mask[i]
        assert row[:n_p].tolist() == prompt_ids  # prompt first, unchanged (left-aligned: right padding)
        assert row[n_p : n_p + n_r].tolist() == list(ex.response_ids)
        assert mask.nonzero()[:, 0].tolist() == list(range(n_p, n_p + n_r))  # exactly the response positions
        assert batch.attention_mask[i].sum() == n_p + n_r and batch.attention_mask[i, : n_p + n_r].all()
        assert (row[n_p + n_r :] == pad).all()
        # per-token extras sit on the response tokens they belong to; per-sequence extras in sample order
        assert batch.token_extras["token_weight"][i, n_p : n_p + n_r].tolist() == pytest.approx(
            ex.token_extras["token_weight"]
        )
        assert batch.token_extras["token_weight"][i, :n_p].abs().sum() == 0
        assert batch.seq_extras["seq_weight"][i] == pytest.approx(ex.seq_extras["seq_weight"])
    assert batch.num_tokens == sum(len(e.response_ids) for e in examples)
    assert batch.pixel_values_videos.shape[0] == int(batch.video_grid_thw.prod(-1).sum())


def test_num_tokens_counts_a_fractional_weight_as_it_is(processor) -> None:
    """The loss divides a weighted sum by ``num_tokens``: an SFT token weighted 0.5 must count 0.5, not be
    truncated away with the rest of the count (it was an int)."""
    batch = collate(processor, make_examples(processor, 2))
    whole = batch.num_tokens
    first = int(batch.response_mask[0].nonzero()[0, 0])
    batch.response_mask[0, first] = 0.5
    assert batch.num_tokens == pytest.approx(whole - 0.5)


def test_collate_passes_sampling_metadata_like_vllm(processor) -> None:
    """Seconds per temporal patch come from how frames were sampled: 4 of 120 frames at 30 fps = 1 fps."""
    ex = make_examples(processor, 1)[0]
    assert collate(processor, [ex]).second_per_grid_ts.tolist() == [1.0]  # default: frames at 2 fps
    ex.video_metadata = {"fps": 30.0, "total_num_frames": 120, "frames_indices": [0, 40, 80, 119],
                         "duration": 4.0, "video_backend": "pyav", "do_sample_frames": False}
    assert collate(processor, [ex]).second_per_grid_ts.tolist() == [2.0]


def test_collate_rejects_misaligned_extras(processor) -> None:
    ex = make_examples(processor, 1, extras=True)[0]
    ex.token_extras = {"token_weight": [0.0]}
    with pytest.raises(ValueError, match="token_weight has 1 values"):
        collate(processor, [ex])


def test_collate_encodes_a_shared_video_once_with_the_same_result(processor) -> None:
    """The G responses of one prompt share its frames: one processor call, the same tensors as G calls."""
    from dataclasses import replace

    calls = []
    original = processor.__class__.__call__

    def counting(self, *args, **kwargs):  # counts the real processor's calls; the result is the real one
        calls.append(1)
        return original(self, *args, **kwargs)

    base = make_examples(processor, 2, extras=True)
    shared = [replace(base[0], response_ids=list(base[j].response_ids), uid=f"g{j}",
                      token_extras={"token_weight": base[j].token_extras["token_weight"]}) for j in range(2)]
    copies = [replace(ex, frames=ex.frames.copy(), video_metadata=dict(ex.video_metadata)) for ex in shared]
    processor.__class__.__call__ = counting
    try:
        one = collate(processor, shared)
        assert len(calls) == 1
        two = collate(processor, copies)
        assert len(calls) == 3
    finally:
        processor.__class__.__call__ = original
    for name in ("input_ids", "attention_mask", "response_mask", "pixel_values_videos", "video_grid_thw"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
def test_collate_puts_engine_logprobs_in_the_typed_field(processor) -> None:
    examples = make_examples(processor, 3)
    for ex in examples:
        ex.behaviour_logprobs = [-0.5 - 0.01 * j for j in range(len(ex.response_ids))]
    batch = collate(processor, examples)
    assert batch.token_extras == {} and batch.old_logprobs is None and batch.ref_logprobs is None
    for i, ex in enumerate(examples):
        on_response = batch.behaviour_logprobs[i][batch.response_mask[i].bool()]
        assert on_response.tolist() == pytest.approx(list(ex.behaviour_logprobs))
        assert batch.behaviour_logprobs[i][~batch.response_mask[i].bool()].abs().sum() == 0
    examples[1].behaviour_logprobs = None
    with pytest.raises(ValueError, match="behaviour_logprobs given for some examples only"):
        collate(processor, examples)
    examples[1].behaviour_logprobs = [0.0]
    with pytest.raises(ValueError, match="behaviour_logprobs has 1 values"):
        collate(processor, examples)


def test_split_select_concat_round_trip(processor) -> None:
    batch = collate(processor, make_examples(processor, 5, extras=True))
    batch.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0])  # the typed per-sequence and per-token fields
    batch.entropy = torch.rand(batch.input_ids.shape) * batch.response_mask
    parts = batch.split(2)
    assert [len(p) for p in parts] == [3, 2]
    back = TrainBatch.concat(parts)
    for name in ("input_ids", "attention_mask", "response_mask", "pixel_values_videos", "video_grid_thw",
                 "advantages", "entropy"):
        assert torch.equal(getattr(back, name), getattr(batch, name)), name
    assert torch.equal(back.token_extras["token_weight"], batch.token_extras["token_weight"])
    one = batch.select(1, 2)
    assert one.input_ids.shape[1] == int(batch.attention_mask[1].sum())  # unused padding trimmed
    assert one.advantages.tolist() == [-1.0] and one.entropy.shape == one.input_ids.shape
    filler = batch.without_loss()
    assert len(filler) == 1 and filler.num_tokens == 0 and filler.advantages.tolist() == [0.0]
    assert batch.split(7)[5:] == [None, None]


def test_pixel_refs_stack_keeping_each_prompt_once() -> None:
    """Stacked shards keep one reference per distinct prompt (a group split over two shards shares one)."""
    from vt_ray.learner.batch import PixelRefs

    whole = PixelRefs(["a", "b", "c"], [0, 0, 1, 2, 2])
    pieces = [whole.select(0, 1), whole.select(1, 4), whole.select(4, 5)]
    assert [p.refs for p in pieces] == [["a"], ["a", "b", "c"], ["c"]]
    back = PixelRefs.concat(pieces)
    assert back.refs == whole.refs and back.rows == whole.rows


# ---- config and schedule ---------------------------------------------------------------------------------
def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    f = [lr_factor(s, warmup=2, total=10, min_ratio=0.1) for s in range(12)]
    assert f[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert all(a >= b for a, b in zip(f[2:], f[3:]))  # monotone decay after warmup
    assert f[10] == pytest.approx(0.1) and f[11] == pytest.approx(0.1)
    assert f[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_learner_config_validation_names_the_key() -> None:
    with pytest.raises(ConfigError, match="learner.reference"):
        load_config(None, ["learner.reference=gpu"])
    with pytest.raises(ConfigError, match="sft.epochs"):
        load_config(None, ["sft.epochs=0"])


def test_commit_is_atomic_repeatable_and_prunes(tmp_path: Path) -> None:
    from vt_ray.learner.checkpoint import TRAINER_STATE, commit, resolve, tmp_dir

    def stage(step: int, marker: str) -> None:
        d = tmp_dir(tmp_path, step)
        (d / "shards").mkdir(parents=True)
        (d / "shards" / "0.distcp").write_text(marker)
        (d / TRAINER_STATE).write_text(marker)

    assert resolve(tmp_path) is None
    for step in (1, 2, 3):
        stage(step, f"s{step}")
        commit(tmp_path, step, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_00000002", "step_00000003"]
    assert resolve(tmp_path) == tmp_path / "step_00000003"
    stage(3, "again")  # the final save right after a periodic one at the same step
    commit(tmp_path, 3, keep_last=2)
    assert (tmp_path / "step_00000003" / TRAINER_STATE).read_text() == "again"
    stage(4, "partial")  # a save that never reached commit: ignored, latest unchanged
    assert resolve(tmp_path) == tmp_path / "step_00000003"
    assert not list(tmp_path.glob(".latest*.tmp"))


# ---- SFT data ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vt_ray.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("syn")
    make_synthetic_dataset(out, 6, seed=0, val_fraction=0.0)
    return out


def test_sft_batches_resume_at_the_data_position() -> None:
    from vt_ray.learner.sft_data import epoch_order, iter_batches, steps_per_epoch

    samples = list(range(7))
    full = [(e, b, s) for e, b, s in iter_batches(samples, 3, 2, seed=5, drop_last=False)]
    assert len(full) == 2 * steps_per_epoch(7, 3, False) == 6
    assert sorted(x for e, _, s in full if e == 0 for x in s) == samples  # each sample once per epoch
    assert epoch_order(7, 0, 5) == epoch_order(7, 0, 5) != epoch_order(7, 1, 5)
    resumed = list(iter_batches(samples, 3, 2, seed=5, drop_last=False, start=(0, 6)))
    assert resumed == full[2:]
    assert steps_per_epoch(7, 3, True) == 2 and steps_per_epoch(2, 3, True) == 0


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_keeps_order_runs_ahead_and_stops_early(depth: int) -> None:
    import threading

    from vt_ray.learner.sft_data import prefetched

    built: list[int] = []
    gate = threading.Event()

    def build(x: int) -> int:
        if x == 1 and depth:
            assert gate.wait(timeout=60)  # item 1 is built only after the consumer holds item 0
        built.append(x)
        return x * 10

    out = []
    for item, value in prefetched(range(8), build, depth):
        out.append((item, value))
        gate.set()
        if item == 4:
            break  # leaving early: nothing queued beyond depth is built, the pool shuts down
    assert out == [(i, i * 10) for i in range(5)]
    assert built[:5] == [0, 1, 2, 3, 4]  # built in order, one thread
    assert len(built) <= 5 + depth  # never more than depth ahead of the consumer

    def failing(x: int) -> int:
        if x == 2:
            raise ValueError("bad batch 2")
        return x

    seen = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for item, _ in prefetched(range(5), failing, depth):
            seen.append(item)
    assert seen == [0, 1]  # the error surfaces at its own item, as when building inline


def test_sft_example_is_prompt_plus_gold_trace_and_end_of_turn(
    tiny_model_dir: Path, processor, synthetic_dir: Path
) -> None:
    from vt_ray.learner.sft_data import SftExampleBuilder, load_sft_samples

    cfg = load_config("recipes/tiny_cpu.yaml" if Path("recipes/tiny_cpu.yaml").exists() else None,
                      [f"model.path={tiny_model_dir}"])
    samples = load_sft_samples(synthetic_dir / "train.jsonl")
    example = SftExampleBuilder(cfg, processor).build(samples[0])
    assert example is not None and example.frames.dtype == np.uint8 and example.frames.shape[-1] == 3
    text = processor.tokenizer.decode(example.response_ids)
    assert text == samples[0].trace.strip() + "<|im_end|>"
    batch = collate(processor, [example])
    tail = batch.input_ids[0, batch.response_mask[0].bool()].tolist()
    assert tail == list(example.response_ids)
    assert batch.second_per_grid_ts[0] > 0
