"""Secrets never leak into what a run writes (issue 21, item 6).

Known canary keys are put where production puts real ones (the environment: ``WANDB_API_KEY`` from the
``wandb`` Secret, curation endpoint keys from the variable each endpoint names), then the metrics logger (JSONL,
console, an offline W&B run), the resolved recipe that runs save, and a learner checkpoint write what they
write: no file and no console line may contain a key. The curation pipeline's own check (request cache, stats
report, Ray session logs) is ``test_curation.py::test_api_key_is_sent_but_never_written_or_logged``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WANDB_KEY = "wandbcanary0123456789abcdef0123456789abcdef"
CURATE_KEY = "sk-curatecanary-5f2b8e1d9c"


def _leaks(root: Path, *texts: str) -> list[str]:
    """Files under ``root`` and texts that contain a canary (bytes, so binary files count too)."""
    keys = [WANDB_KEY.encode(), CURATE_KEY.encode()]
    hits = [str(p) for p in root.rglob("*") if p.is_file() and any(k in p.read_bytes() for k in keys)]
    hits += [f"text #{i}" for i, t in enumerate(texts) if any(k.decode() in t for k in keys)]
    return hits


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("CURATE_CANARY_API_KEY", CURATE_KEY)


def test_metrics_console_wandb_run_and_saved_recipe_hold_no_key(
    secret_env: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from omegaconf import OmegaConf

    from vt_ray.config.loader import load_config, to_yaml
    from vt_ray.trainer.metrics import MetricsLogger

    cfg = load_config(ROOT / "recipes/tiny_cpu.yaml", ["curate.endpoints.trace.api_key_env=CURATE_CANARY_API_KEY"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(to_yaml(cfg))  # what the driver saves next to the checkpoints
    plain = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)))
    logger = MetricsLogger(run, "t", plain, wandb_mode="offline")
    assert logger._wandb is not None, "the offline W&B run must exist for this check to mean anything"
    for step in (1, 2):
        logger.log(step, {"reward/total": 0.5 * step, "time/step_s": 1.0})
    logger.close()
    out = capfd.readouterr()
    assert list(run.rglob("wandb/offline-run-*"))  # W&B wrote its run files here
    assert "CURATE_CANARY_API_KEY" in (run / "recipe.yaml").read_text()  # the variable's name, not its value
    assert _leaks(run, out.out, out.err) == []


def test_a_checkpoint_holds_no_key(secret_env: None, tiny_model_dir: Path, tmp_path: Path) -> None:
    from vt_ray.config.loader import load_config
    from vt_ray.config.roles import LearnerRoleConfig
    from vt_ray.learner.worker import LearnerWorker

    worker = LearnerWorker(LearnerRoleConfig.of(load_config(None, [f"model.path={tiny_model_dir}",
                                                                        "learner.reference=none"])))
    worker.setup(total_steps=2)
    worker.save_checkpoint(str(tmp_path / "ckpt"), {"note": "driver state"})
    worker.save_hf(str(tmp_path / "hf"))
    assert (tmp_path / "ckpt" / "step_00000000" / "manifest.json").is_file()
    assert _leaks(tmp_path) == []


def test_the_canary_scan_can_fail(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\x00" + WANDB_KEY.encode() + b"\x00")
    assert _leaks(tmp_path, f"Bearer {CURATE_KEY}") == [str(tmp_path / "a.bin"), "text #0"]
