"""The learners' default process group must take the CPU tensors the ranks all-reduce (token counts, metric
sums) on GPU too, where NCCL alone would reject them."""

from __future__ import annotations

import pytest
import torch

from vt_ray.learner.sharded_load import group_backend


@pytest.mark.parametrize(("backend", "device", "expected"), [
    ("auto", "cpu", "gloo"),
    ("gloo", "cpu", "gloo"),
    ("auto", "cuda", "cpu:gloo,cuda:nccl"),
    ("nccl", "cuda", "cpu:gloo,cuda:nccl"),
    ("gloo", "cuda", "gloo"),
])
def test_nccl_groups_also_carry_cpu_tensors(backend: str, device: str, expected: str) -> None:
    assert group_backend(backend, torch.device(device)) == expected
