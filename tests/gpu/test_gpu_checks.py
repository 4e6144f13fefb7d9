"""The GPU-only paths, checked on a GPU node with ``pytest -m gpu`` (skipped here: no CUDA on the CPU machines).

Each test runs one of the one-command GPU check scripts (README, docs/megatron.md, docs/weight-sync.md) and
fails when it does: the Megatron language model under transformer-engine layers and NCCL tensor parallelism
against Hugging Face in bf16, and the NCCL weight stream from two learner ranks to a vLLM engine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
