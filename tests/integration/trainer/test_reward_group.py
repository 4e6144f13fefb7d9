"""Reward isolation inside the trainer's Ray reward actors (field-conventions C8 item 4): user reward functions
that hang, raise or kill their process score 0 for their component and are counted in ``reward/timeouts`` and
``reward/errors``; every response of the batch is still scored, in order, and the actors keep serving."""

from __future__ import annotations

from pathlib import Path

import pytest

USER_REWARDS = '''
import os
import threading


def ok(response, target):
    return float(len(response))


def raises(response, target):
    raise RuntimeError("user bug")


def hangs(response, target):
    threading.Event().wait()


def exits(response, target):
    os._exit(3)
'''


@pytest.mark.slow
def test_hanging_raising_and_exiting_user_rewards_inside_reward_actors(tmp_path: Path) -> None:
    import ray

    from vt_ray.rewards.composite import reward_metrics
    from vt_ray.rewards.config import CustomRewardConfig, RewardConfig
    from vt_ray.rewards.target import RewardTarget
    from vt_ray.trainer.reward_group import RewardGroup

    (tmp_path / "user_rewards.py").write_text(USER_REWARDS)  # a user's module, importable by the actors only
    custom = [CustomRewardConfig(name=n, path=f"user_rewards:{n}") for n in ("ok", "raises", "hangs", "exits")]
    cfg = RewardConfig(custom=custom, timeout_s=2.0, isolation="process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(tmp_path)}})
    try:
        group = RewardGroup(cfg, 2, lambda rank: {"num_cpus": 0.1}, timeout_s=300)
        responses = ["a", "bb", "ccc", "dddd"]
        target = RewardTarget(answer="A", options=("x", "y"))
        for _ in range(2):  # a second batch: the actors and their scorer processes still serve
            results = group.score(responses, [target] * len(responses))
            assert [r["ok"] for r in results] == [1.0, 2.0, 3.0, 4.0]  # every response scored, in order
            assert all(r["raises"] == r["hangs"] == r["exits"] == 0.0 for r in results)
            assert all((r["timeouts"], r["errors"]) == (1.0, 2.0) for r in results)  # hang; raise + exit
            metrics = reward_metrics(results)
            assert (metrics["reward/timeouts"], metrics["reward/errors"]) == (4.0, 8.0)
        assert group.restarts == 0  # isolation kept the actors themselves alive
        group.shutdown()
    finally:
        ray.shutdown()
