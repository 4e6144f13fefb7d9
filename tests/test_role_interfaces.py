"""Every built-in backend meets its role's contract (``vt_ray.rollout.engine_api``, ``vt_ray.learner.backend_api``),
method by method: the group and the worker call exactly these names with these parameters. (mypy checks the
same structurally wherever an engine or backend is typed with the protocol.)"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from vt_ray.learner.backend_api import LearnerBackend
from vt_ray.rollout.engine_api import RolloutEngine


def _methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(protocol).items()
            if callable(fn) and not name.startswith("_")}


def _check(protocol: type, cls: type) -> list[str]:
    problems = []
    for name, wanted in _methods(protocol).items():
        impl = getattr(cls, name, None)
        if impl is None:
            problems.append(f"{cls.__name__} has no {name}()")
            continue
        have = inspect.signature(impl).parameters
        by_name = [n for n, p in wanted.parameters.items() if p.kind is not p.POSITIONAL_ONLY]
        missing = [n for n in by_name if n not in have]
        if missing:
            problems.append(f"{cls.__name__}.{name}() lacks parameter(s) {missing}")
        if len(have) < len(wanted.parameters):  # positional-only ones: called by position, any name
            problems.append(f"{cls.__name__}.{name}() takes fewer parameters than {list(wanted.parameters)}")
    return problems


def _engines() -> list[Any]:
    from vt_ray.rollout.hf_engine import HfEngine
    from vt_ray.rollout.vllm_engine import VllmEngine

    return [HfEngine, VllmEngine]


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_rollout_engines_meet_the_contract(name: str) -> None:
    cls = {c.__name__: c for c in _engines()}[{"hf": "HfEngine", "vllm": "VllmEngine"}[name]]
    assert _check(RolloutEngine, cls) == []
    assert "weight_version" in inspect.getsource(cls.__init__)  # the one attribute of the contract


def test_fsdp2_learner_meets_the_contract() -> None:
    from vt_ray.learner.worker import LearnerWorker

    assert _check(LearnerBackend, LearnerWorker) == []


def test_the_check_finds_a_missing_method_and_parameter() -> None:
    class Partial:
        def generate(self, requests: Any) -> list[Any]:
            return []

    problems = _check(RolloutEngine, Partial)
    assert "Partial.generate() lacks parameter(s) ['sampling']" in problems
    assert "Partial has no update_weights()" in problems
