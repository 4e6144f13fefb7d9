"""Unit tests: no Ray, no vLLM, no other process, no torch.distributed. Enforced here, test by test, so a test that
needs any of them fails with a pointer to tests/integration/ instead of slowly drifting into the fast tier."""

from __future__ import annotations

import multiprocessing.process
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch.distributed as dist

WHERE = "a unit test may not {}: it belongs in tests/integration/"


def _refuse(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError(WHERE.format(what))

    return refuse


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", _refuse("start a process"))
    monkeypatch.setattr(ray, "init", _refuse("start Ray"))
    monkeypatch.setattr(dist, "init_process_group", _refuse("join a torch.distributed group"))
    had_vllm = "vllm" in sys.modules
    yield
    assert had_vllm or "vllm" not in sys.modules, WHERE.format("import vLLM")
