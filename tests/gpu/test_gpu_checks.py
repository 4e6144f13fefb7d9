"""The GPU-only paths, checked on a GPU node with ``pytest -m gpu`` (skipped here: no CUDA on the CPU machines).

Each test runs one of the one-command GPU check scripts (README, docs/megatron.md, docs/weight-sync.md) and
fails when it does: the Megatron language model under transformer-engine layers and NCCL tensor parallelism
against Hugging Face in bf16, and the NCCL weight stream from two learner ranks to a vLLM engine; and the
tiny GRPO run through the driver on GPUs, split (FSDP2 over NCCL, the stream to a vLLM engine on its own GPU) and
colocated (an engine on each learner GPU, asleep while the learners train; weights by CUDA IPC).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_runs import logged_steps, run_cli, train_command

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPUs"),
]


def _gpus(n: int) -> None:
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} GPUs, found {torch.cuda.device_count()}")


def test_megatron_tp2_on_nccl_matches_hf_in_bf16() -> None:
    _gpus(2)
    run = subprocess.run([sys.executable, "tools/megatron_check.py", "--tp", "2", "--dtype", "bfloat16"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "FAIL" not in run.stdout


def test_weight_stream_over_nccl_to_vllm() -> None:
    _gpus(3)
    run = subprocess.run(["bash", "tools/gpu_check_weight_sync.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


GPU_RUN = ("trainer.total_steps=2", "trainer.save_every=0", "resources.gpus_per_node=3", "model.dtype=bfloat16",
           "learner.param_dtype=bfloat16", "rollout.probe_every=0")


@pytest.mark.parametrize("layout", ["split", "colocated"])
def test_tiny_grpo_run_on_gpus(layout: str, tiny_model_dir: Path, train_data: Path, tmp_path: Path) -> None:
    """Two GRPO steps of the suite's tiny run with the learners on NCCL: every learner call all-reduces small
    CPU tensors (token counts, metric sums) on the default group, which must accept them
    (``cpu:gloo,cuda:nccl``), and the engines must serve the step-1 weights at step 2."""
    if layout == "split":
        _gpus(3)
        extra = ["resources.learner.gpus_per_worker=1", "resources.rollout.gpus_per_worker=1"]
    else:
        _gpus(2)
        extra = ["resources.gpus_per_node=2", "resources.colocate=true", "resources.learner.gpus_per_worker=1",
                 "resources.rollout.gpus_per_worker=1", "resources.rollout.num_workers=2"]
    proc = run_cli(train_command(tiny_model_dir, train_data, tmp_path, *GPU_RUN, *extra), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = logged_steps(tmp_path / "t")
    assert sorted(steps) == [0, 1, 2]
    assert all(steps[s]["actor/grad_norm"] > 0 for s in (1, 2))
