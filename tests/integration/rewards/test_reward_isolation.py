"""User reward functions run isolated (``reward.isolation``: a worker process or a thread): one that raises, returns
NaN, hangs or kills its process scores 0 and is counted, and the scorer keeps serving. Integration: it starts
processes (tests/unit/rewards/test_rewards.py has the in-process reward tests)."""

from __future__ import annotations

import os
import threading

import pytest

from vt_ray.rewards import CustomRewardConfig, RewardConfig, RewardScorer, RewardTarget

OPTIONS = ("blue square", "red circle", "green triangle", "yellow star")
MC = RewardTarget(answer="B", options=OPTIONS, duration=20.0, windows=((2.0, 6.0),), captions=("a red circle",))


_RELEASE = threading.Event()  # lets a leaked thread-mode call finish at the end of its test


def custom_len(response: str, target: RewardTarget) -> float:
    return float(len(response)) + (100.0 if target.answer == "B" else 0.0)


def custom_raises(response: str, target: RewardTarget) -> float:
    raise RuntimeError("boom")


def custom_nan(response: str, target: RewardTarget) -> float:
    return float("nan")


def custom_hangs(response: str, target: RewardTarget) -> float:
    _RELEASE.wait()
    return 1.0


def custom_exits(response: str, target: RewardTarget) -> float:
    os._exit(3)


def _custom(*names: str, weights: tuple[float, ...] | None = None) -> list[CustomRewardConfig]:
    weights = weights or (1.0,) * len(names)
    return [CustomRewardConfig(name=n, path=f"{__name__}:custom_{n}", weight=w) for n, w in zip(names, weights)]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_custom_rewards_isolated(isolation: str) -> None:
    names = ("len", "raises", "nan", "hangs") + (("exits",) if isolation == "process" else ())
    cfg = RewardConfig(custom=_custom(*names, weights=(0.5,) + (1.0,) * (len(names) - 1)), timeout_s=2.0,
                       isolation=isolation)  # fmt: skip
    try:
        with RewardScorer(cfg) as scorer:
            first = scorer.score("xy", MC)
            second = scorer.score("xyz", MC)  # the worker restarted after the hang/exit and still serves
    finally:
        _RELEASE.set()
    for out, length in ((first, 2), (second, 3)):
        assert out["len"] == length + 100.0
        assert out["raises"] == out["nan"] == out["hangs"] == 0.0
        assert out["timeouts"] == 1.0
        assert out["errors"] == (3.0 if isolation == "process" else 2.0)
        assert out["total"] == pytest.approx(0.5 * out["len"] + out["accuracy"] + out["format"])
    assert scorer.counters == {"scored": 2, "errors": 2 * int(first["errors"]), "timeouts": 2}
    _RELEASE.clear()
