"""The run's Ray actors: placement groups, the learner, rollout and reward groups, and the processor the driver
collates with; started together, given their step timeouts, shut down in order, or killed outright.

Kept in one holder so start-up, recovery and shutdown see the same set: a role is recorded as soon as it exists,
so a start that fails half-way still tears down what it made.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from vt_ray.cluster.placement import create_placement_groups, placement_report, remove_placement_groups
from vt_ray.config.schema import RecipeConfig
from vt_ray.trainer.settings import optimizer_steps_total
from vt_ray.trainer.weights import stream_backend, weight_sync_mode

log = logging.getLogger(__name__)


class Roles:
    """The actor groups of one run (``None`` until started, and again after :meth:`kill`)."""

    def __init__(self) -> None:
        self.placement: Any = None
        self.processor: Any = None
        self.learner: Any = None
        self.rollout: Any = None
        self.rewards: Any = None

    def groups(self) -> dict[str, Any]:
        """Role name -> its group (or ``None``): what the run-cost report samples."""
        return {"learner": self.learner, "rollout": self.rollout, "reward": self.rewards}

    def start(self, cfg: RecipeConfig, run_dir: Path, streamed: bool) -> None:
        from transformers import AutoProcessor

        from vt_ray.learner.group import LearnerGroup
        from vt_ray.rollout.group import RolloutGroup
        from vt_ray.trainer.reward_group import RewardGroup

        res, tc = cfg.resources, cfg.trainer
        timeout = tc.first_step_timeout_s
        self.placement = create_placement_groups(res, timeout_s=timeout)
        # Where every role's actors run (role, rank, node): for multi-node runs and their tests.
        (run_dir / "placement.json").write_text(json.dumps(placement_report(self.placement), indent=1))
        self.processor = AutoProcessor.from_pretrained(cfg.model.path)
        self.learner = LearnerGroup(cfg, actor_options=lambda rank: self._options("learner", rank), timeout_s=timeout)
        # Every role's actors are spawned before any is waited for: the engines, scorers and learner ranks start
        # at the same time (measured on the tiny recipe: _start_roles 29.2 s -> 24.4 s), and a role that does not
        # come up still raises a StepTimeout naming it.
        self.rollout = RolloutGroup(
            cfg, num_workers=res.rollout.num_workers, timeout_s=timeout,
            actor_options=lambda rank: self._options("rollout", rank), max_restarts=tc.max_actor_restarts,
            wait_ready=False,
        )
        self.rewards = RewardGroup(
            cfg.reward, res.reward.num_workers, lambda rank: self._options("reward", rank), timeout,
            wait_ready=False,
        )
        self.learner.setup(total_steps=optimizer_steps_total(cfg), model_path=cfg.model.path)
        self.rollout.wait_ready()
        self.rewards.wait_ready()
        if streamed:  # the plan is fixed by the shapes: made and checked once
            plan = self.learner.weight_plan(cfg.model.dtype, cfg.rollout.weight_bucket_mb)
            self.rollout.attach_weight_source(self.learner, plan, stream_backend(res, weight_sync_mode(cfg)))
            self.rollout.check_weight_plan()

    def _options(self, role: str, rank: int) -> dict[str, Any]:
        group = next(g for g in self.placement.values() if role in g.spec.requests)
        return group.actor_options(role, rank)

    def set_timeouts(self, seconds: float) -> None:
        self.rollout.timeout_s = seconds
        self.rewards.timeout_s = seconds
        self.learner.timeout_s = seconds

    def kill(self) -> None:
        """Tear down without asking the roles (a lost rank's peers may be stuck in a collective with it)."""
        import ray

        for role in (self.rollout, self.rewards, self.learner):
            for actor in getattr(role, "actors", []) if role is not None else []:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as kill_err:  # noqa: BLE001 - already gone
                    log.debug("kill: %s", kill_err)
        self.rollout = self.rewards = self.learner = None
        self._remove_placement()

    def shutdown(self, phase: Callable[[str], AbstractContextManager[None]]) -> None:
        """Each role's own shutdown (timed as ``phase("shutdown_<role>")``), then the placement groups."""
        for name, role in (("rollout", self.rollout), ("reward", self.rewards), ("learner", self.learner)):
            if role is not None:
                try:
                    with phase(f"shutdown_{name}"):
                        role.shutdown()
                except Exception as err:  # keep tearing down the rest
                    log.warning("shutdown of %s failed: %s", type(role).__name__, err)
        self._remove_placement()

    def _remove_placement(self) -> None:
        if self.placement is not None:
            remove_placement_groups(self.placement)
            self.placement = None
