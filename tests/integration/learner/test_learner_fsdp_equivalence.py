"""2 FSDP2 learners (two Ray actors, gloo) == 1 learner == a plain unsharded model, on the same batch.

The mini-batch of 5 sequences is split 3/2 over the two ranks with micro-batches of 1, so this also covers
gradient accumulation, a filler micro-batch on the short rank, and gradient clipping on sharded grads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner_examples import make_examples  # pytest puts tests/ on sys.path (rootdir conftest)
from vt_ray.config.loader import load_config
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner.collate import collate
from vt_ray.learner.schedule import lr_factor

STEPS = 2
LR = 1e-3
MIN_LR_RATIO = 0.1  # steps after the schedule's STEPS still move the weights
# AdamW's first steps are about lr * sign(grad): float32 rounding of near-zero gradients (summed in another order
# by two ranks, or by another CPU's kernels) shows at lr scale. Measured 2.2e-5 between FSDP2 and one learner on
# an AMX/AVX-512 VM (under 1e-5 on others); a lost, doubled or stale gradient moves weights by about LR.
WEIGHT_NOISE = 0.05 * LR
OVERRIDES = [f"learner.lr={LR}", "learner.grad_clip=5.0", "learner.reference=sharded", "learner.timeout_s=300",
             f"learner.min_lr_ratio={MIN_LR_RATIO}"]


@pytest.fixture(scope="module")
def batch(tiny_model_dir: Path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    return collate(processor, make_examples(processor, 5, seed=1))


def plain_reference(model_dir: Path, batch) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The textbook update, no FSDP: whole batch, token-mean NLL, clip, AdamW, same schedule."""
    from vt_ray.models.hf_load import load_vl_model

    cfg = load_config(None, [f"model.path={model_dir}", *OVERRIDES]).learner
    model = load_vl_model(str(model_dir), torch.float32).train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 0, STEPS, cfg.min_lr_ratio))
    losses = []
    for _ in range(STEPS):
        logits = model(**batch.model_inputs(), use_cache=False).logits[:, :-1].float()
        nll = -logits.log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        mask = batch.response_mask[:, 1:]
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_fsdp_learners_match_one_learner_and_plain_training(ray_cluster, tiny_model_dir: Path, batch,
                                                                tmp_path: Path) -> None:
    from vt_ray.learner.group import LearnerCallError, LearnerGroup
    from vt_ray.learner.worker import LearnerWorker

    cfg2 = load_config(
        None,
        [f"model.path={tiny_model_dir}", *OVERRIDES, "resources.learner.num_workers=2", "learner.micro_batch_size=1"],
    )
    group = LearnerGroup(cfg2)
    try:
        group.setup(total_steps=STEPS)
        ref_lp2 = group.compute_logprobs(batch, which="reference")
        metrics2 = [group.train_step(batch, "sft") for _ in range(STEPS)]
        weights2 = group.export_state_dict()
        policy_lp2 = group.compute_logprobs(batch, which="policy")
        one = batch.select(1, 2)  # fewer samples than ranks: rank 1 runs a zero-loss filler
        lp_one = group.compute_logprobs(one, which="policy")
        # an update where rank 1 holds only a filler: both ranks reduce the same metric keys (no size mismatch)
        step_one = group.train_step(one, "sft")
        per_call, step_path, not_cached = grpo_both_ways(group, batch, tmp_path)
        group.timeout_s = 1e-3  # a call that cannot answer in time names role, method and rank
        with pytest.raises(LearnerCallError, match=r"learner\[\d\]\.compute_logprobs: no answer within"):
            group.compute_logprobs(batch, which="policy")
        group.timeout_s = 300
    finally:
        group.shutdown()

    # The communication-saving settings the CPU recipes use: gathered parameters kept from forward to backward,
    # gradients reduce-scattered once per step. No-grad forwards on the policy come between the updates (the
    # trainer's order): each must see the latest update, and the result must equal the default settings'.
    fast = load_config(None, [f"model.path={tiny_model_dir}", *OVERRIDES, "resources.learner.num_workers=2",
                              "learner.micro_batch_size=1", "learner.reshard_after_forward=false",
                              "learner.reduce_every_micro_batch=false"])
    group = LearnerGroup(fast)
    try:
        group.setup(total_steps=STEPS)
        fast_lp_before = group.compute_logprobs(batch, which="policy")
        fast_metrics, fast_lps = [], []
        for _ in range(STEPS):
            fast_metrics.append(group.train_step(batch, "sft"))
            fast_lps.append(group.compute_logprobs(batch, which="policy"))
        fast_weights = group.export_state_dict()
    finally:
        group.shutdown()

    cfg1 = load_config(None, [f"model.path={tiny_model_dir}", *OVERRIDES, "learner.micro_batch_size=5"])
    single = LearnerWorker(LearnerRoleConfig.of(cfg1))
    single.setup(total_steps=STEPS)
    ref_lp1 = single.compute_logprobs(batch, num_micro=1, which="reference")
    metrics1 = [single.train_step(batch, num_micro=1, loss_name="sft") for _ in range(STEPS)]
    weights1 = single.export_state_dict()
    policy_lp1 = single.compute_logprobs(batch, num_micro=1, which="policy")

    plain_losses, plain_weights = plain_reference(tiny_model_dir, batch)

    for m1, m2, lp in zip(metrics1, metrics2, plain_losses):
        assert m2["num_tokens"] == m1["num_tokens"] == batch.num_tokens and m2["num_sequences"] == 5
        assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-5) and m1["loss"] == pytest.approx(lp, abs=1e-5)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
        assert m2["lr"] == m1["lr"]
    assert metrics1[0]["grad_norm"] > 5.0  # clipping was active, so it is covered by the comparison
    assert metrics1[1]["loss"] < metrics1[0]["loss"]

    from transformers import AutoModelForImageTextToText

    initial = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert max_diff(weights1, initial) > 1e-4  # the steps moved the weights
    assert max_diff(weights1, plain_weights) < WEIGHT_NOISE
    assert max_diff(weights2, weights1) < WEIGHT_NOISE
    assert torch.allclose(ref_lp2, ref_lp1, atol=1e-5)
    assert torch.allclose(policy_lp2, policy_lp1, atol=1e-5)
    assert lp_one.shape == one.input_ids.shape
    assert torch.allclose(lp_one, policy_lp2[1:2, : one.input_ids.shape[1]], atol=1e-5)
    assert step_one["num_sequences"] == 1 and step_one["sft/nll"] > 0 and step_one["loss"] > 0
    assert not torch.allclose(policy_lp1, ref_lp1, atol=1e-3)  # the update moved the policy, not the reference

    # one GRPO step (one mini-batch: both paths group the rows alike) from the same checkpoint, both ways
    (lps, metrics, weights), (step_lps, step_metrics, step_weights) = per_call, step_path
    assert all(torch.equal(step_lps[w], lps[w]) for w in ("policy", "reference"))
    metrics.pop("step_time_s"), step_metrics.pop("step_time_s")
    assert step_metrics == metrics and metrics["num_sequences"] == 4  # one of the 5 rows is not kept
    assert metrics["lr"] == LR * MIN_LR_RATIO and metrics["grad_norm"] > 0  # the step moved the weights
    assert all(torch.equal(step_weights[k], v) for k, v in weights.items())
    assert not_cached == {"after a resume": [[], []], "after the step": [[], []]}

    assert torch.allclose(fast_lp_before, ref_lp1, atol=1e-5)  # before any update the policy is the reference
    for m, f in zip(metrics2, fast_metrics):
        assert (f["loss"] == pytest.approx(m["loss"], abs=1e-5)
                and f["grad_norm"] == pytest.approx(m["grad_norm"], rel=1e-5))
    assert not torch.allclose(fast_lps[0], fast_lps[1], atol=1e-3)  # each forward saw the latest update
    assert torch.allclose(fast_lps[-1], policy_lp1, atol=1e-5)
    assert max_diff(fast_weights, weights1) < WEIGHT_NOISE


def grpo_both_ways(group, batch, tmp_path: Path) -> tuple[tuple, tuple, dict[str, list[list[str]]]]:
    """One GRPO step from the same checkpoint through the per-call path (old and reference log-probs on the
    driver, shards put per call) and through a step cached on the ranks (``open_step``): each way's log-probs,
    metrics and weights; and the steps the ranks still hold after a resume that interrupted a step and after a
    step."""
    from dataclasses import replace

    from vt_ray.learner.group import LearnerCallError

    adv, keep = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5]), torch.tensor([True, True, False, True, True])
    start = group.save_checkpoint(str(tmp_path / "ckpt"))  # not before the first step: DCP would init Adam's state
    interrupted = group.open_step(batch)  # a step the resume below interrupts
    interrupted.logprobs(["policy"])
    lps = group.compute_logprobs_passes(batch, ["policy", "reference"])
    sent = replace(batch, old_logprobs=lps["policy"], ref_logprobs=lps["reference"], advantages=adv,
                   response_mask=batch.response_mask * keep.float()[:, None])
    per_call = (lps, group.train_step(sent, "grpo"), group.export_state_dict())

    group.load_checkpoint(start)  # a resume drops what an interrupted step left
    held = {"after a resume": group.call("drop_steps", "none")}
    with pytest.raises(LearnerCallError, match=r"(?s)\.step_train: .*rank \d: step 'step-0' is not cached"):
        interrupted.train(0, 1, "grpo", advantages=adv, keep=keep)
    with group.open_step(batch) as step:
        step_lps = step.logprobs(["policy", "reference"])
        step_path = (step_lps, step.train(0, 1, "grpo", advantages=adv, keep=keep), group.export_state_dict())
    held["after the step"] = group.call("drop_steps", "none")
    return per_call, step_path, held


@pytest.mark.slow
def test_sft_stage_writes_a_loadable_checkpoint_and_resumes(ray_cluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The SFT stage end to end on 2 learners: steps, periodic checkpoints pruned to keep_last, an HF directory
    transformers loads, and a longer second run that resumes from the data position instead of restarting."""
    import json

    from transformers import AutoModelForImageTextToText

    from vt_ray.data.synthetic import make_synthetic_dataset
    from vt_ray.trainer.sft import run_sft

    make_synthetic_dataset(tmp_path / "data", 4, seed=0, val_fraction=0.0)
    overrides = [
        f"model.path={tiny_model_dir}", f"data.train_file={tmp_path / 'data' / 'train.jsonl'}",
        "video.num_frames=4", "video.max_frames=4", "video.max_pixels=3136",
        f"sft.output_dir={tmp_path / 'sft'}", "sft.batch_size=2", "sft.lr=1e-3",
        "resources.learner.num_workers=2", "learner.checkpoint_every=1", "learner.keep_last=1", "learner.timeout_s=300",
    ]
    first = run_sft(load_config(None, [*overrides, "sft.epochs=1"]))
    assert first.steps == 2 and first.resumed_from_step == 0 and first.skipped == {}
    ckpts = tmp_path / "sft" / "checkpoints"
    assert [p.name for p in ckpts.glob("step_*")] == ["step_00000002"]
    model = AutoModelForImageTextToText.from_pretrained(first.hf_dir)
    source = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert set(model.state_dict()) == set(source.state_dict())
    assert any(not torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())

    second = run_sft(load_config(None, [*overrides, "sft.epochs=2"]))
    assert second.resumed_from_step == 2 and second.steps == 4
    records = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and [r["epoch"] for r in records] == [0, 0, 1, 1]


@pytest.mark.slow
def test_weights_stream_from_two_fsdp_ranks_to_engines_bit_for_bit_and_survive_a_lost_engine_and_a_bad_bucket(
        ray_cluster, tiny_model_dir: Path, batch, tmp_path: Path) -> None:
    """The streamed sync between real Ray roles: two FSDP2 learner ranks (rank 0 sends, both gather) and two
    transformers engines in rollout actors. After a sync every engine tensor equals the learner's export bit
    for bit; an engine killed mid-stream is restarted and the group streams again; a bucket corrupted on the
    wire makes both attempts fail, the error names rank and tensor and the group refuses to generate until a
    complete sync; a restarted engine catches up with a stream of its own. Then the same through shared buffers
    (``ipc``): bit-equal states, a corrupted bucket refused by both engines, no shared-memory segment left; and a
    bfloat16 plan (rank 0 casts through its staging buffers, where float32 shards land in its send buffers)."""
    import os

    from vt_ray.learner.group import LearnerGroup
    from vt_ray.rollout.group import RolloutGroup
    from vt_ray.rollout.weight_sync import UNKNOWN_VERSION, WeightSyncError

    cfg = load_config(None, [f"model.path={tiny_model_dir}", *OVERRIDES, "resources.learner.num_workers=2",
                             "learner.micro_batch_size=1", "learner.reference=none", "rollout.backend=hf",
                             "rollout.weight_bucket_mb=0.25", "rollout.weight_sync_timeout_s=60"])
    learner = LearnerGroup(cfg)
    rollout = RolloutGroup(cfg, num_workers=2, num_cpus=0, timeout_s=300, max_restarts=2)

    def engine_states() -> list[dict[str, torch.Tensor]]:
        return ray_cluster.get([a.__ray_call__.remote(lambda w: w.engine.model.state_dict()) for a in rollout.actors])

    def set_env(actor, **env: str | None) -> None:
        def apply(_: object) -> None:
            for key, value in env.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        ray_cluster.get(actor.__ray_call__.remote(apply))

    try:
        learner.setup(total_steps=STEPS)
        learner.train_step(batch, "sft")  # weights the engines do not have yet
        plan = learner.weight_plan("float32", cfg.rollout.weight_bucket_mb)
        assert len(plan["buckets"]) > 4
        rollout.attach_weight_source(learner, plan, "gloo")
        rollout.check_weight_plan()
        timings = rollout.stream_weights(1)
        assert timings["pack_s"] > 0 and rollout.weight_versions() == [1, 1]
        want = learner.export_state_dict("float32")
        for state in engine_states():
            assert all(torch.equal(state[k], v) for k, v in want.items())

        # an engine lost mid-stream: restarted, and the group streams version 2 to every engine again
        set_env(rollout.actors[1], VT_RAY_CRASH_AT="rollout.receive_weights@1",
                VT_RAY_CRASH_MARKER=str(tmp_path / "crashed"))
        learner.train_step(batch, "sft")
        timings = rollout.stream_weights(2)
        assert (tmp_path / "crashed").exists() and rollout.metrics.actor_restarts == 1
        assert timings.get("weight_stream_retries") == 1.0 and rollout.weight_versions() == [2, 2]
        want = learner.export_state_dict("float32")
        for state in engine_states():
            assert all(torch.equal(state[k], v) for k, v in want.items())

        # a bucket corrupted on the wire, every time: both attempts fail, nothing serves a mix
        set_env(learner.actors[0], VT_RAY_CORRUPT_AT="learner.send_weights@0")
        with pytest.raises(WeightSyncError, match=r"version 3 failed on rollout rank\(s\) \[0, 1\].*checksum") as info:
            rollout.stream_weights(3)
        assert info.value.rank == 0 and info.value.tensor in {t[0] for b in plan["buckets"] for t in b["tensors"]}
        assert rollout.weight_versions() == [UNKNOWN_VERSION, UNKNOWN_VERSION]
        with pytest.raises(WeightSyncError, match="refuses to generate"):
            rollout.generate([], None)  # type: ignore[arg-type]
        set_env(learner.actors[0], VT_RAY_CORRUPT_AT=None)
        rollout.stream_weights(3)
        assert rollout.weight_versions() == [3, 3]

        # an engine that died between syncs comes back on the current version (a stream of its own)
        ray_cluster.kill(rollout.actors[0], no_restart=True)
        rollout._restart(0)
        assert rollout.weight_versions() == [3, 3] and rollout.metrics.actor_restarts == 2
        assert all(torch.equal(engine_states()[0][k], v) for k, v in want.items())

        # the same roles through shared buffers (rollout.weight_sync=ipc, one node: both engines map rank 0's)
        from vt_ray.common.weight_share import SHM_DIR, SHM_PREFIX

        segments = set(SHM_DIR.glob(f"{SHM_PREFIX}*"))
        rollout.attach_weight_source(learner, plan, "ipc")
        def wipe(w: object) -> int:  # cheaper than another update: what the engines then hold is the sync's
            return sum(t.zero_().numel() for t in w.engine.model.state_dict().values())  # type: ignore[attr-defined]

        ray_cluster.get([a.__ray_call__.remote(wipe) for a in rollout.actors])
        timings = rollout.stream_weights(4)
        assert timings["pack_s"] > 0 and rollout.weight_versions() == [4, 4]
        for state in engine_states():
            assert all(torch.equal(state[k], v) for k, v in want.items())
        set_env(learner.actors[0], VT_RAY_CORRUPT_AT="learner.send_weights@0")
        with pytest.raises(WeightSyncError, match=r"version 5 failed on rollout rank\(s\) \[0, 1\].*checksum") as info:
            rollout.stream_weights(5)
        assert info.value.rank == 0 and info.value.tensor in {t[0] for b in plan["buckets"] for t in b["tensors"]}
        assert rollout.weight_versions() == [UNKNOWN_VERSION, UNKNOWN_VERSION]
        assert set(SHM_DIR.glob(f"{SHM_PREFIX}*")) == segments  # unlinked after the good and the failed syncs

        # a bfloat16 plan from float32 learners: no shard lands in a send buffer, rank 0 casts from its staging
        set_env(learner.actors[0], VT_RAY_CORRUPT_AT=None)
        plan16 = learner.weight_plan("bfloat16", cfg.rollout.weight_bucket_mb)
        rollout.attach_weight_source(learner, plan16, "gloo")
        rollout.stream_weights(6)
        assert rollout.weight_versions() == [6, 6]
        for state in engine_states():
            assert all(torch.equal(state[k], v.bfloat16().float()) for k, v in want.items())
    finally:
        rollout.shutdown()
        learner.shutdown()
