"""``learner.backend: megatron`` (vt_ray/learner/megatron/backend.py) as the learner group runs it: two Ray
ranks, tensor parallel 2 over gloo with megatron's sequence parallelism (the driver tests below run TP=2 without
it), on the tiny Qwen2.5-VL, against the FSDP2 worker on the same weights and batch. One Ray session checks, in
order:

* reference and policy log-probs equal the FSDP2 worker's;
* a GRPO step (clipped surrogate, KL to the reference, an entropy bonus: the vocab-parallel entropy's gradient)
  and then an SFT step: every metric (loss, grad norm, KL, entropy, ...) equals the FSDP2 worker's, and the
  weights after the two AdamW steps too (the vision tower is trained, replicated over the TP ranks);
* the streamed weight sync from the two TP ranks to a transformers engine is bit for bit the learner's export;
* ``save_hf`` gives a directory transformers loads (no missing or unexpected key) with the exported weights;
* a dist_checkpointing checkpoint: a step, then load and the same step again gives the same metrics, exactly.

Then TP=1 on two ranks (data parallel) against the FSDP2 worker, GRPO through the driver against the suite's
FSDP2 run of the same command, and SFT through the driver (``vt_ray sft``) against the same command on FSDP2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from learner_examples import make_examples  # pytest puts tests/ on sys.path (rootdir conftest)
from vt_ray.config.loader import load_config
from vt_ray.config.roles import LearnerRoleConfig
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.collate import collate

OVERRIDES = ["learner.lr=1e-3", "learner.grad_clip=0.5", "learner.reference=sharded", "learner.timeout_s=300",
             "algorithm.entropy_coef=0.01", "learner.micro_batch_size=2", "learner.warmup_steps=0",
             "learner.min_lr_ratio=0.5"]
STEPS = 3
TOL = 1e-5


def test_registering_the_megatron_backend_imports_no_megatron_core() -> None:
    """fsdp2 runs never load megatron-core or mbridge: the backend's module imports them only in ``setup``."""
    import subprocess
    import sys

    code = ("import sys, vt_ray.learner.backends; from vt_ray.config.backends import LEARNER_BACKENDS; "
            "LEARNER_BACKENDS.get('megatron'); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('megatron', 'mbridge')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def grpo_batch(model_dir: Path) -> TrainBatch:
    """Five video prompts with responses; advantages of both signs (the driver's old/reference log-probs are
    filled in by the test from each learner's own passes)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    batch = collate(processor, make_examples(processor, 5, seed=1))
    batch.advantages = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.75])
    return batch


def run_learner(learner: Any, batch: TrainBatch, group: bool) -> dict[str, Any]:
    """The calls the trainer makes, on a learner group (megatron) or an in-process FSDP2 worker."""

    def lp(which: str) -> torch.Tensor:
        return learner.compute_logprobs(batch, which) if group else learner.compute_logprobs(batch, 1, which)

    def step(loss: str) -> dict[str, float]:
        return learner.train_step(batch, loss) if group else learner.train_step(batch, 1, loss)

    out: dict[str, Any] = {"ref": lp("reference"), "old": lp("policy")}
    batch.old_logprobs, batch.ref_logprobs = out["old"], out["ref"]
    out["grpo"] = step("grpo")
    out["sft"] = step("sft")
    out["weights"] = learner.export_state_dict("float32")
    out["after"] = lp("policy")
    return out


Weights = dict[str, torch.Tensor]


def step_across_a_resume(learner: Any, batch: TrainBatch, ckpt: Path, position: int
                         ) -> tuple[dict[str, float], Weights, dict[str, float], Weights]:
    """A checkpoint, an SFT step, the checkpoint loaded, the same step again: (the first step's metrics, the
    weights after it, the repeated step's metrics, the weights after that)."""
    learner.save_checkpoint(str(ckpt), {"data_position": position})
    first = learner.train_step(batch, "sft")
    first_weights = learner.export_state_dict("float32")
    assert learner.load_checkpoint(str(ckpt)) == {"data_position": position}
    again = learner.train_step(batch, "sft")
    return first, first_weights, again, learner.export_state_dict("float32")


@pytest.fixture(scope="module")
def fsdp2_run(tiny_model_dir: Path) -> dict[str, Any]:
    """The in-process FSDP2 worker's log-probs, GRPO and SFT steps and weights on :func:`grpo_batch`: the
    reference every two-rank layout below is compared with (run once)."""
    from vt_ray.learner.worker import LearnerWorker

    worker = LearnerWorker(LearnerRoleConfig.of(load_config(None, [f"model.path={tiny_model_dir}", *OVERRIDES,
                                                                   "learner.micro_batch_size=5"])))
    params = worker.setup(total_steps=STEPS)
    try:
        return {**run_learner(worker, grpo_batch(tiny_model_dir), group=False), "params": params}
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_megatron_tp2_matches_fsdp2_streams_saves_and_resumes(ray_cluster, tiny_model_dir: Path, tmp_path: Path,
                                                             fsdp2_run: dict[str, Any]) -> None:
    from transformers import AutoModelForImageTextToText

    from vt_ray.learner.group import LearnerGroup
    from vt_ray.rollout.group import RolloutGroup

    batch = grpo_batch(tiny_model_dir)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", *OVERRIDES, "learner.backend=megatron",
                             "learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true",
                             "resources.learner.num_workers=2",
                             "learner.megatron.vision_impl=megatron",  # the tower split too (the HF one: dp2/pp2)
                             "rollout.backend=hf", "rollout.weight_bucket_mb=0.25"])
    learner = LearnerGroup(cfg)
    rollout = RolloutGroup(cfg, num_workers=1, num_cpus=0, timeout_s=300, max_restarts=0)
    try:
        params = learner.setup(total_steps=STEPS)
        sequence_parallel = ray_cluster.get([a.__ray_call__.remote(lambda w: w.policy.lm.config.sequence_parallel)
                                             for a in learner.actors])
        assert sequence_parallel == [True, True]
        meg = run_learner(learner, batch, group=True)
        # the Megatron vision tower is split over TP; its replicated tensors (norms, patch embedding, row-parallel
        # biases) got the same gradient on both TP ranks, so they still hold the same copy, bit for bit
        towers = ray_cluster.get([a.__ray_call__.remote(lambda w: {
            n: (p.detach().clone(), bool(getattr(p, "tensor_model_parallel", False)))
            for n, p in w.policy.visual.named_parameters()}) for a in learner.actors])
        replicated = [n for n, (_, split) in towers[0].items() if not split]
        assert replicated and len(replicated) < len(towers[0])
        assert all(torch.equal(towers[0][n][0], towers[1][n][0]) for n in replicated)
        # the streamed sync from both TP ranks to an engine
        plan = learner.weight_plan("float32", cfg.rollout.weight_bucket_mb)
        assert len(plan["buckets"]) > 2
        rollout.attach_weight_source(learner, plan, "gloo")
        rollout.check_weight_plan()
        rollout.stream_weights(1)
        engine = ray_cluster.get(rollout.actors[0].__ray_call__.remote(lambda w: w.engine.model.state_dict()))
        hf_dir = learner.save_hf(str(tmp_path / "hf"), "float32")
        # resume: a checkpoint, a step, the checkpoint loaded, the same step again
        first, first_weights, again, resumed_weights = step_across_a_resume(learner, batch, tmp_path / "ckpt", 7)
    finally:
        rollout.shutdown()
        learner.shutdown()

    fsdp = fsdp2_run
    assert fsdp["params"] == params  # the same model, counted in full

    measured = {key: (meg[key] - fsdp[key]).abs().max().item() for key in ("ref", "old", "after")}
    measured.update({f"{loss}/{key}": abs(meg[loss][key] - fsdp[loss][key]) for loss in ("grpo", "sft")
                     for key in ("loss", "grad_norm")})
    measured["weights"] = max((meg["weights"][k] - fsdp["weights"][k]).abs().max().item() for k in fsdp["weights"])
    print("megatron vs fsdp2, max |diff|:", {k: f"{v:.1e}" for k, v in measured.items()})
    for key in ("ref", "old", "after"):
        diff = measured[key]
        assert diff < TOL, f"{key} log-probs: megatron vs fsdp2 {diff:.2e}"
    assert (fsdp["after"] - fsdp["old"]).abs().max().item() > 1e-2  # the two steps moved the policy
    for loss in ("grpo", "sft"):
        ours, theirs = meg[loss], fsdp[loss]
        assert sorted(ours) == sorted(theirs)
        for key in set(theirs) - {"step_time_s"}:
            assert ours[key] == pytest.approx(theirs[key], rel=TOL, abs=TOL), f"{loss} {key}"
    assert meg["grpo"]["actor/entropy"] > 0 and meg["grpo"]["actor/kl_loss"] == pytest.approx(0, abs=1e-9)
    assert fsdp["grpo"]["grad_norm"] > 0.5 and fsdp["sft"]["grad_norm"] > 0.5  # both steps were clipped
    assert sorted(meg["weights"]) == sorted(fsdp["weights"])
    # AdamW's first updates are about lr * sign(grad): where a gradient is float noise around 0 the two
    # learners' rounding moves an element by different fractions of lr (measured: 2.6e-5 at most, on a few
    # elements; the steps moved the weights by about 2e-3). The log-probs after the steps agree to TOL above.
    assert measured["weights"] < 0.025 * 2 * 1e-3
    initial = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    assert max((meg["weights"][k] - initial[k]).abs().max().item() for k in initial) > 1e-3

    # the engine holds the learner's export, bit for bit
    assert all(torch.equal(engine[k], v) for k, v in meg["weights"].items())
    model, info = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in meg["weights"].items())
    # resumed from the checkpoint: the same step, the same result
    assert {k: v for k, v in again.items() if k != "step_time_s"} == {
        k: v for k, v in first.items() if k != "step_time_s"}
    assert again["step"] == STEPS
    assert all(torch.equal(resumed_weights[k], v) for k, v in first_weights.items())
    assert not all(torch.equal(first_weights[k], v) for k, v in meg["weights"].items())  # that step moved them


@pytest.mark.slow
def test_grpo_through_the_driver_with_megatron_matches_the_fsdp2_run(
        tiny_model_dir: Path, train_data: Path, straight_run: tuple[Any, Path], tmp_path: Path) -> None:
    """``python -m vt_ray train`` with ``learner.backend=megatron`` at TP=2 (two learner ranks): its first two
    GRPO steps against the suite's FSDP2 run of the same command (conftest ``straight_run``). Step 1 trains on
    the same rollouts from the same weights; step 2's rollouts come from the weights each learner streamed to
    the engine, so equal step-2 figures also say the megatron ranks streamed the same weights (and the weight
    probe, run at every sync by this recipe, passed)."""
    from train_runs import logged_steps, run_cli, train_command

    proc = run_cli(train_command(tiny_model_dir, train_data, tmp_path, "learner.backend=megatron",
                                 "learner.megatron.tensor_parallel_size=2", "trainer.total_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = logged_steps(tmp_path / "t"), logged_steps(straight_run[1])
    assert sorted(ours) == [0, 1, 2]
    for step in (1, 2):
        assert ours[step]["response/length_mean"] == theirs[step]["response/length_mean"]
        for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm"):
            assert ours[step][key] == pytest.approx(theirs[step][key], rel=1e-5, abs=1e-7), (step, key)
        assert ours[step]["rollout/engine_learner_abs_diff_max"] < 1e-4
    assert ours[2]["actor/kl_loss"] > 0  # step 2 trained a moved policy against the reference
    step_dir = tmp_path / "t" / "checkpoints" / "step_00000002"
    assert (step_dir / "manifest.json").is_file() and list(step_dir.glob("__*_*.distcp"))
    assert (tmp_path / "t" / "hf" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["learner.megatron.distributed_optimizer=true"],
                                    ["learner.megatron.pipeline_parallel_size=2",
                                     "learner.activation_checkpointing=true"]], ids=["dp2", "pp2"])
def test_megatron_data_parallel_and_pipeline_match_fsdp2(ray_cluster, tiny_model_dir: Path, tmp_path: Path,
                                                         fsdp2_run: dict[str, Any], layout: list[str]) -> None:
    """Two ranks, ``tensor_parallel_size: 1``. ``dp2`` (the section's default): two data-parallel replicas, each
    with its own shard of the batch, with the distributed optimizer (``learner.megatron.distributed_optimizer``:
    gradients reduce-scattered over the data-parallel group, each replica stepping half of the float32 state; the
    plain optimizer's DP sum takes the same steps, bit for bit: test_megatron_lm.py). ``pp2``: two pipeline stages
    (one decoder layer each; the embedding and the vision tower on the first, the output layer and the loss on
    the last), the pooled batch's three micro-batches through megatron's 1F1B schedule over gloo, log-probs and
    metrics broadcast from the last stage, the weights exported from both stages, and a dist_checkpointing
    save / step / load / same step again; with ``learner.activation_checkpointing`` (megatron's full recompute,
    every layer: each stage's backward, run by the schedule, recomputes its layer). Either way the same
    log-probs, GRPO and SFT steps as the FSDP2 worker (which keeps its activations)."""
    from vt_ray.learner.group import LearnerGroup

    pipeline = "learner.megatron.pipeline_parallel_size=2" in layout
    batch = grpo_batch(tiny_model_dir)
    cfg = load_config(None, [f"model.path={tiny_model_dir}", *OVERRIDES, "learner.backend=megatron",
                             "resources.learner.num_workers=2", *layout])
    learner = LearnerGroup(cfg)
    try:
        learner.setup(total_steps=STEPS)
        recompute = ray_cluster.get([a.__ray_call__.remote(lambda w: w.policy.lm.config.recompute_granularity)
                                     for a in learner.actors])
        assert recompute == (["full", "full"] if pipeline else [None, None])
        sliced = ray_cluster.get([a.__ray_call__.remote(lambda w: w.dist_optim is not None) for a in learner.actors])
        assert sliced == [not pipeline] * 2
        meg = run_learner(learner, batch, group=True)
        if pipeline:  # each stage writes its own layers; the resumed step must repeat the first exactly
            learner.save_checkpoint(str(tmp_path / "ckpt"), {"data_position": 3})
            first = learner.train_step(batch, "sft")
            assert learner.load_checkpoint(str(tmp_path / "ckpt")) == {"data_position": 3}
            again = learner.train_step(batch, "sft")
    finally:
        learner.shutdown()
    fsdp = fsdp2_run
    measured = {key: (meg[key] - fsdp[key]).abs().max().item() for key in ("ref", "old", "after")}
    measured.update({f"{loss}/{key}": abs(meg[loss][key] - fsdp[loss][key]) for loss in ("grpo", "sft")
                     for key in ("loss", "grad_norm")})
    measured["weights"] = max((meg["weights"][k] - fsdp["weights"][k]).abs().max().item() for k in fsdp["weights"])
    print(layout, "megatron vs fsdp2, max |diff|:", {k: f"{v:.1e}" for k, v in measured.items()})
    for key in ("ref", "old", "after"):
        assert measured[key] < TOL, key
    for loss in ("grpo", "sft"):
        assert sorted(meg[loss]) == sorted(fsdp[loss])
        for key in set(fsdp[loss]) - {"step_time_s"}:
            assert meg[loss][key] == pytest.approx(fsdp[loss][key], rel=TOL, abs=TOL), (loss, key)
    assert sorted(meg["weights"]) == sorted(fsdp["weights"])
    assert measured["weights"] < 5e-5
    if pipeline:
        assert {k: v for k, v in again.items() if k != "step_time_s"} == {
            k: v for k, v in first.items() if k != "step_time_s"}


@pytest.mark.slow
def test_sft_through_the_driver_with_megatron_matches_the_fsdp2_run(
        tiny_model_dir: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    """``python -m vt_ray sft`` with ``learner.backend=megatron`` at TP=2 (two learner ranks) against the same
    command on FSDP2: the same batches from the same weights, so every step's loss and grad norm must agree to
    float32 tolerance (the steps after the first also say the two backends applied the same AdamW update), and
    the megatron run exports an HF model and writes megatron's dist_checkpointing checkpoint."""
    import sys

    from train_runs import ROOT, run_cli
    from vt_ray.trainer.metrics import read_metrics

    def sft(out: Path, *extra: str) -> list[dict]:
        proc = run_cli([sys.executable, "-m", "vt_ray", "sft", f"recipe={ROOT / 'recipes/tiny_cpu.yaml'}",
                        f"model.path={tiny_model_dir}", f"data.train_file={synthetic_dir / 'train.jsonl'}",
                        f"sft.output_dir={out}", "sft.epochs=1", "sft.batch_size=4", "trainer.wandb_mode=disabled",
                        *extra])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return read_metrics(out / "metrics.jsonl")

    ours = sft(tmp_path / "megatron", "learner.backend=megatron", "learner.megatron.tensor_parallel_size=2")
    theirs = sft(tmp_path / "fsdp2")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] and len(ours) >= 3
    for mine, ref in zip(ours, theirs):
        for key in ("loss", "grad_norm", "num_tokens"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), (mine["step"], key)
    assert ours[-1]["loss"] < ours[0]["loss"]  # it trained
    assert (tmp_path / "megatron" / "hf" / "config.json").is_file()
    # megatron's dist_checkpointing layout (common.pt, metadata.json), which the FSDP2 run's DCP checkpoint lacks
    assert list((tmp_path / "megatron" / "checkpoints").glob("step_*/common.pt"))
    assert not list((tmp_path / "fsdp2" / "checkpoints").glob("step_*/common.pt"))
