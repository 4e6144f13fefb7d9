"""Shared fixtures: one tiny model and one small synthetic dataset per test session (built once, seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


def _one_torch_thread_in_the_test_process() -> None:
    """The tests' own torch work is on tiny tensors, where intra-op threads only add synchronisation, and a busy
    machine (Ray actors, vLLM engines, other jobs) turns their spin-waits into stalls: a batched HF generate took
    11.8 s with torch's default threads and 0.6 s with one (tests/unit/rollout/test_hf_engine.py, loaded 2-core
    machine). Ray actors already run with one thread per CPU they hold. This sets the pytest process only: the
    processes that tests start (drivers, Ray workers, spawned ranks) keep their own defaults."""
    import torch

    torch.set_num_threads(1)


_one_torch_thread_in_the_test_process()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vt_ray.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic videos (12 train, 4 val): about a second to build."""
    from vt_ray.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(out, num_videos=16, seed=0)
    return out


@pytest.fixture(scope="session")
def train_data(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic split plus one sample whose video is corrupt."""
    out = tmp_path_factory.mktemp("train_data")
    shutil.copytree(synthetic_dir, out, dirs_exist_ok=True)
    (out / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500)
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    first.update(uid="corrupt-video", video="videos/corrupt.mp4")
    with (out / "train.jsonl").open("a") as f:
        f.write(json.dumps(first) + "\n")
    return out


@pytest.fixture(scope="session")
def straight_run(tiny_model_dir: Path, train_data: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """The fault-free tiny GRPO run (tests/train_runs.py) with its report: (the finished process, its run dir).
    The short chaos soak's faulted run is compared with it."""
    from train_runs import run_cli, train_command

    out = tmp_path_factory.mktemp("straight")
    proc = run_cli(train_command(tiny_model_dir, train_data, out, "trainer.write_report=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out / "t"
