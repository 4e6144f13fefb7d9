"""By-hand runs of Megatron learner layouts against FSDP2 (issue 20; docs/megatron.md, "Four-rank layouts ...").

Not in the suite (pytest collects ``test_*.py`` only; four Megatron ranks take 30-60 s to set up on 2 cores).
Run explicitly, all or some layouts:

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q -p no:randomly -s \
        tests/integration/learner/manual_megatron_layouts.py [-k "tp2_dp2 or pp4"]

Each layout: the learner group's log-probs, GRPO and SFT steps against the in-process FSDP2 worker on the same
model directory (the assertions of test_megatron_backend.py's ``pp2`` case), the probe, ``save_hf`` (loaded by
transformers), and a dist_checkpointing save / SFT step / load / the same step. Plus a tied model's checkpoint
written at PP=2 and loaded at PP=1 x DP=2 and at TP=2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_megatron_backend import OVERRIDES, STEPS, TOL, grpo_batch, run_learner, step_across_a_resume

from vt_ray.config.loader import load_config
from vt_ray.config.roles import LearnerRoleConfig


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vt_ray.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tied") / "model", seed=1, tie_embeddings=True)


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vt_ray.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("four") / "model", seed=2, size="tiny4")


_FSDP: dict[str, Any] = {}


def fsdp2(model_dir: Path) -> dict[str, Any]:
    if str(model_dir) not in _FSDP:
        from vt_ray.learner.worker import LearnerWorker

        worker = LearnerWorker(LearnerRoleConfig.of(load_config(None, [f"model.path={model_dir}", *OVERRIDES,
                                                                       "learner.micro_batch_size=5"])))
        params = worker.setup(total_steps=STEPS)
        try:
            _FSDP[str(model_dir)] = {**run_learner(worker, grpo_batch(model_dir), group=False), "params": params}
        finally:
            worker.shutdown()
    return _FSDP[str(model_dir)]


# name: (ranks, overrides, model: False the tiny one, True its tied twin, "four" a 4-layer one)
LAYOUTS = {
    "tp2_sp": (2, ["learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true"], False),
    "tied_pp2": (2, ["learner.megatron.pipeline_parallel_size=2"], True),
    "tp2_dp2": (4, ["learner.megatron.tensor_parallel_size=2"], False),
    "pp2_dp2": (4, ["learner.megatron.pipeline_parallel_size=2"], False),
    "tp2_sp_pp2": (4, ["learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true",
                       "learner.megatron.pipeline_parallel_size=2"], False),
    "tied_pp2_dp2": (4, ["learner.megatron.pipeline_parallel_size=2"], True),
    "pp4": (4, ["learner.megatron.pipeline_parallel_size=4"], "four"),
    "four_dp2": (2, [], "four"),
    "sp_recompute": (2, ["learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true",
                         "learner.activation_checkpointing=true"], False),
    "cp2": (2, ["learner.megatron.context_parallel_size=2"], False),
    "cp2_recompute": (2, ["learner.megatron.context_parallel_size=2", "learner.activation_checkpointing=true"], False),
    "cp2_megatron_tower": (2, ["learner.megatron.context_parallel_size=2", "learner.megatron.vision_impl=megatron"],
                           False),
    "tp2_cp2": (4, ["learner.megatron.tensor_parallel_size=2", "learner.megatron.context_parallel_size=2"], False),
    "tp2_sp_cp2": (4, ["learner.megatron.tensor_parallel_size=2", "learner.megatron.sequence_parallel=true",
                       "learner.megatron.context_parallel_size=2"], False),
    "cp2_dp2": (4, ["learner.megatron.context_parallel_size=2"], False),
    "pp2_cp2": (4, ["learner.megatron.pipeline_parallel_size=2", "learner.megatron.context_parallel_size=2"], False),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout(ray_cluster, tiny_model_dir: Path, tied_dir: Path, four_layer_dir: Path, tmp_path: Path,
                layout: str) -> None:
    import time

    from transformers import AutoModelForImageTextToText

    from vt_ray.learner.group import LearnerGroup

    ranks, extra, tied = LAYOUTS[layout]
    model_dir = four_layer_dir if tied == "four" else tied_dir if tied else tiny_model_dir
    fsdp = fsdp2(model_dir)
    batch = grpo_batch(model_dir)
    cfg = load_config(None, [f"model.path={model_dir}", *OVERRIDES, "learner.backend=megatron",
                             f"resources.learner.num_workers={ranks}",
                             f"resources.learner.cpus_per_worker={2 / ranks}", *extra])
    learner = LearnerGroup(cfg)
    t0 = time.perf_counter()
    try:
        learner.setup(total_steps=STEPS)
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        meg = run_learner(learner, batch, group=True)
        calls_s = time.perf_counter() - t1
        probe = learner.probe_logprobs("a short probe text") if hasattr(learner, "probe_logprobs") else None
        hf_dir = learner.save_hf(str(tmp_path / "hf"), "float32")
        first, first_weights, again, again_weights = step_across_a_resume(learner, batch, tmp_path / "ckpt", 3)
    finally:
        learner.shutdown()
    measured = {key: (meg[key] - fsdp[key]).abs().max().item() for key in ("ref", "old", "after")}
    measured.update({f"{loss}/{key}": abs(meg[loss][key] - fsdp[loss][key]) for loss in ("grpo", "sft")
                     for key in ("loss", "grad_norm")})
    measured["weights"] = max((meg["weights"][k] - fsdp["weights"][k]).abs().max().item() for k in fsdp["weights"])
    print(f"\n{layout}: setup {setup_s:.1f} s, five calls {calls_s:.1f} s, megatron vs fsdp2 max |diff|:",
          {k: f"{v:.1e}" for k, v in measured.items()}, "grad norms", meg["grpo"]["grad_norm"], meg["sft"]["grad_norm"],
          "probe", None if probe is None else len(probe))
    for key in ("ref", "old", "after"):
        assert measured[key] < TOL, key
    for loss in ("grpo", "sft"):
        assert sorted(meg[loss]) == sorted(fsdp[loss])
        for key in set(fsdp[loss]) - {"step_time_s"}:
            assert meg[loss][key] == pytest.approx(fsdp[loss][key], rel=TOL, abs=TOL), (loss, key)
    assert sorted(meg["weights"]) == sorted(fsdp["weights"])
    assert measured["weights"] < (1e-4 if tied == "four" else 5e-5)
    if tied is True:
        emb = next(k for k in meg["weights"] if k.endswith("embed_tokens.weight"))
        assert torch.equal(meg["weights"]["lm_head.weight"], meg["weights"][emb])
    model, info = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in meg["weights"].items())
    assert {k: v for k, v in again.items() if k != "step_time_s"} == {
        k: v for k, v in first.items() if k != "step_time_s"}
    assert all(torch.equal(again_weights[k], v) for k, v in first_weights.items())


def test_tied_checkpoint_reshards(ray_cluster, tied_dir: Path, tmp_path: Path) -> None:
    """Tied model: a checkpoint written at PP=2 (the last stage's copy saved as a replica of the embedding) loads
    at PP=1 x DP=2 and at TP=2; the same SFT step after the load gives the PP=2 layout's own figures."""
    from vt_ray.learner.group import LearnerGroup

    batch = grpo_batch(tied_dir)
    results = {}
    for name, extra in [("pp2", ["learner.megatron.pipeline_parallel_size=2"]), ("dp2", []),
                        ("tp2", ["learner.megatron.tensor_parallel_size=2"])]:
        cfg = load_config(None, [f"model.path={tied_dir}", *OVERRIDES, "learner.backend=megatron",
                                 "resources.learner.num_workers=2", "resources.learner.cpus_per_worker=1", *extra])
        learner = LearnerGroup(cfg)
        try:
            learner.setup(total_steps=STEPS)
            if name == "pp2":
                learner.train_step(batch, "sft")
                learner.save_checkpoint(str(tmp_path / "ckpt"), {"data_position": 5})
            else:
                assert learner.load_checkpoint(str(tmp_path / "ckpt")) == {"data_position": 5}
            results[name] = (learner.train_step(batch, "sft"), learner.export_state_dict("float32"))
        finally:
            learner.shutdown()
    base, base_w = results["pp2"]
    for name in ("dp2", "tp2"):
        got, w = results[name]
        wdiff = max((w[k] - base_w[k]).abs().max().item() for k in base_w)
        print(f"\ntied PP=2 checkpoint -> {name}: loss {abs(got['loss'] - base['loss']):.1e}, grad norm "
              f"{abs(got['grad_norm'] - base['grad_norm']):.1e}, step {got['step']}, weights {wdiff:.1e}")
        for key in set(base) - {"step_time_s"}:
            assert got[key] == pytest.approx(base[key], rel=1e-5, abs=1e-6), (name, key)
        assert wdiff < 1e-5
