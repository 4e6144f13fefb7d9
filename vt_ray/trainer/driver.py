"""The GRPO driver loop on Ray.

Each step: draw prompts (deterministic, resumable order) -> rollout actors sample G responses per prompt from
the decoded video -> reward actors score them -> learners compute old/reference log-probs -> group-relative
advantages -> GRPO update over mini-batches and epochs -> new weights pushed into the running engines ->
metrics, validation and checkpoints on schedule.

Reliability: every remote call has a timeout naming role, method and rank (long for the first step, shorter
after); a rollout actor that dies is restarted and only its prompts are re-sent; a video that cannot be decoded
or does not fit the prompt budget is skipped, counted, remembered in the checkpoint and replaced from the
sampler; SIGTERM finishes the current step, checkpoints and exits cleanly; a checkpoint is either complete or
ignored; a resumed run continues with the same data order and sampler seeds, so its steps equal the
uninterrupted run's.

This module is the loop and its state (step, sampler, checkpoints, recovery); each phase lives in its own
module: :mod:`~vt_ray.trainer.run_data` (samples), :mod:`~vt_ray.trainer.roles` (actors),
:mod:`~vt_ray.trainer.rollout_phase` (generate, score, shape), :mod:`~vt_ray.trainer.update` (log-probs,
advantages, optimizer steps), :mod:`~vt_ray.trainer.weights` (weight sync), :mod:`~vt_ray.trainer.validation`,
:mod:`~vt_ray.trainer.step_log` (metrics and records), :mod:`~vt_ray.trainer.resume`,
:mod:`~vt_ray.trainer.stop` (signals) and :mod:`~vt_ray.trainer.run_costs` (phase times, memory).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from vt_ray.common.environment import capture_environment
from vt_ray.common.progress import Progress
from vt_ray.config.loader import to_yaml
from vt_ray.config.schema import RecipeConfig
from vt_ray.rollout.group import RolloutRestartBudgetExhausted
from vt_ray.testing.faults import crash_point
from vt_ray.trainer.metrics import MetricsLogger
from vt_ray.trainer.pipeline import RolloutPipeline
from vt_ray.trainer.responses import Responses, StepBatch
from vt_ray.trainer.resume import checkpoint_to_resume, make_driver_state, remove_logs, truncate_logs
from vt_ray.trainer.roles import Roles
from vt_ray.trainer.rollout_log import RolloutLog
from vt_ray.trainer.rollout_phase import MAX_REFILL_ROUNDS, RolloutPhase
from vt_ray.trainer.run_costs import RunCosts
from vt_ray.trainer.run_data import load_run_data
from vt_ray.trainer.sampler import PromptSampler
from vt_ray.trainer.settings import (
    optimizer_steps_total,
    sampling_for_training,
    sampling_for_validation,
    step_seed,
)
from vt_ray.trainer.step_log import step_metrics, write_step_records
from vt_ray.trainer.stop import GracefulStop
from vt_ray.trainer.update import update_policy
from vt_ray.trainer.validation import validate
from vt_ray.trainer.weights import WeightSync, stream_backend, weight_sync_mode

__all__ = [  # the driver's public names, several of them defined in the phase modules
    "MAX_REFILL_ROUNDS", "RESTART_BUDGET_EXIT_CODE", "GRPOTrainer", "GracefulStop", "Responses",
    "RestartBudgetExhausted", "StepBatch", "sampling_for_training", "sampling_for_validation", "step_seed",
    "stream_backend", "weight_sync_mode",
]

log = logging.getLogger(__name__)
RESTART_BUDGET_EXIT_CODE = 75  # EX_TEMPFAIL: in-job restarts used up; a RayJob retry resumes from the checkpoint


class RestartBudgetExhausted(RuntimeError):
    """A learner was lost once more than ``trainer.max_restarts`` allows; the last complete checkpoint stands."""


class GRPOTrainer:
    def __init__(self, cfg: RecipeConfig) -> None:
        self.cfg = cfg
        self.tc = cfg.trainer
        self.run_dir = Path(cfg.run.output_dir).resolve() / cfg.run.name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.step = 0
        self.skip_totals: Counter[str] = Counter()
        self._step_start_state: dict[str, Any] | None = None
        self._saved_step = -1
        self.sync_metrics: dict[str, float] = {}
        self.weights = WeightSync(cfg)  # streamed or blob pushes, resolved (and checked) here
        self.stop = GracefulStop(self.tc.stop_grace_s)
        self.roles = Roles()
        self.pipeline: RolloutPipeline[StepBatch] | None = None  # trainer.mode one_step_off / async
        self._trained_sampler_state: dict[str, Any] | None = None  # async: the sampler as of the last trained batch
        self.logger: MetricsLogger | None = None
        self._started = time.perf_counter()
        self.rollout_log = RolloutLog.from_config(self.run_dir, self.tc)
        self.restarts = 0  # in-job recoveries so far (trainer.max_restarts)
        self.costs = RunCosts(self.run_dir, self.roles.groups)  # phases.json, memory.json: the phases opened below

    # ---- setup ---------------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        with self.costs.phase("load_data"):
            self.train, self.val = load_run_data(self.cfg, self.run_dir)
            self.sampler = PromptSampler(self.train, seed=self.cfg.run.seed)

    def _start_roles(self) -> None:
        with self.costs.phase("start_roles"):
            self.roles.start(self.cfg, self.run_dir, self.weights.streamed)
        self.costs.roles_started()

    def optimizer_steps_total(self) -> int:
        return optimizer_steps_total(self.cfg)

    # ---- resume --------------------------------------------------------------------------------------------
    def _resume(self, in_job: bool = False) -> None:
        with self.costs.phase("resume"):
            found = checkpoint_to_resume(self.ckpt_root, self.tc.resume_mode, in_job)
            if found is None:
                return
            state = self.roles.learner.load_checkpoint(str(found)) or {}
            self.step = self._saved_step = int(state["step"])
            self.sampler.load_state_dict(state["sampler"])
            self.skip_totals = Counter(state.get("skip_totals", {}))
            truncate_logs(self.run_dir, self.step, ("samples.jsonl", "validation.jsonl", "rollouts.jsonl"))
            self._sync_weights(probe=True)  # the engines start from model.path: give them the restored policy
            print(f"[train] resumed from {found} at step {self.step}", flush=True)

    def _driver_state(self) -> dict[str, Any]:
        sampler = self._trained_sampler_state or self.sampler.state_dict()  # async: not the batches in flight
        return make_driver_state(self.step, sampler, self.skip_totals)

    def save(self, driver_state: dict[str, Any] | None = None) -> str:
        with self.costs.phase("checkpoint"):
            start = time.perf_counter()
            state = driver_state or self._driver_state()
            path: str = self.roles.learner.save_checkpoint(str(self.ckpt_root), extra_state=state)
            self._saved_step = state["step"]
            print(f"[train] checkpoint step {state['step']} -> {path} ({time.perf_counter() - start:.1f} s)",
                  flush=True)
            return path

    def _recover(self, err: Exception) -> None:
        """In-job recovery from a lost learner rank (issue 21 item 2, like Ray Train's ``max_failures``): kill
        every role (a rank blocked in a collective with the dead one cannot finish anyway), start them again on
        new placement groups, and resume from the last complete checkpoint (or from the start), with the same
        data order; steps after the checkpoint are redone and logged once. Past ``trainer.max_restarts``, raise
        :class:`RestartBudgetExhausted` (exit code 75): the learners' state died with them, so what stands is
        the last complete checkpoint, from which a RayJob retry resumes."""
        if self.restarts >= self.tc.max_restarts:
            saved = f"step {self._saved_step}" if self._saved_step >= 0 else "none yet (a retry starts over)"
            raise RestartBudgetExhausted(
                f"learner lost again after {self.restarts} in-job restart(s) (trainer.max_restarts="
                f"{self.tc.max_restarts}); the last complete checkpoint: {saved}: {err}"
            ) from err
        self.restarts += 1
        started, lost_step = time.perf_counter(), self.step
        self._close_pipeline()  # its batch in progress finishes first: the engines are alive, only a learner died
        print(f"[train] learner lost at step {lost_step} ({type(err).__name__}: {str(err).splitlines()[0]}); "
              f"restart {self.restarts}/{self.tc.max_restarts}: restarting every role", flush=True)
        self.roles.kill()
        self.step, self._saved_step, self.skip_totals = 0, -1, Counter()
        self.sampler = PromptSampler(self.train, seed=self.cfg.run.seed)
        self._start_roles()
        self._resume(in_job=True)
        truncate_logs(self.run_dir, self.step, ("samples.jsonl", "validation.jsonl", "metrics.jsonl"))
        self._open_pipeline()
        print(f"[train] recovered in {time.perf_counter() - started:.1f} s: continuing from step {self.step} "
              f"(lost at step {lost_step})", flush=True)

    def _save_before_failing(self, err: RolloutRestartBudgetExhausted) -> None:
        """The rollout phase failed for good: the learners still hold the last completed step, and the driver
        state from before this step's draw goes with them, so a retry resumes with this step's prompts."""
        state = self._step_start_state
        if state is None or state["step"] != self.step or self._saved_step == self.step:
            return  # nothing new since the last checkpoint (or the learners moved on: never pair them wrongly)
        print(f"[train] {err}: saving step {self.step} before failing", flush=True)
        self.save(state)

    # ---- one step ------------------------------------------------------------------------------------------
    def _make_batch(self, step: int, version: int) -> StepBatch:
        """The rollout phase of ``step`` on the engines' policy ``version``; in the asynchronous modes it runs in
        the pipeline's thread."""
        return RolloutPhase(self.cfg, self.sampler, self.roles.rollout, self.roles.rewards,
                            defer_scoring=self.tc.mode == "sync").make_batch(step, version)

    def _open_pipeline(self) -> None:
        """trainer.mode one_step_off / async: start making batches ahead, from the current step and sampler."""
        if self.tc.mode == "sync" or self.step >= self.tc.total_steps:
            return
        self._trained_sampler_state = self.sampler.state_dict()
        self.pipeline = RolloutPipeline(self._make_batch, first_step=self.step, total_steps=self.tc.total_steps,
                                        version=self.step, max_staleness=self.tc.max_staleness,
                                        exact=self.tc.mode == "one_step_off")

    def _close_pipeline(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None
        self._trained_sampler_state = None

    def _engines(self, new_version: int | None = None) -> AbstractContextManager[None]:
        """The engines between batches (async modes: the pipeline's batch in progress finishes first)."""
        return nullcontext() if self.pipeline is None else self.pipeline.engines(new_version)

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self._step_start_state = self._driver_state()  # a fresh snapshot, before the draw: what a failed step saves
        if self.pipeline is None:
            batch = self._make_batch(self.step, self.step)
        else:
            batch = self.pipeline.take(self.step)
            self._trained_sampler_state = batch.sampler_after
        wait_s = time.perf_counter() - t0  # sync: the rollout phase; async: only what the learners waited for it
        crash_point("trainer.after_rollout", self.step + 1)  # chaos soak: the driver dies between phases
        roles, data = self.roles, batch.data
        if self.cfg.rollout.enable_sleep_mode:
            roles.rollout.sleep()  # colocated: the learner gets the GPU memory back
        metrics, timings = update_policy(self.cfg, roles.processor, roles.learner, data)
        crash_point("trainer.after_update", self.step + 1)
        metrics.update(batch.metrics)
        staleness = self.step - batch.policy_version
        self.step += 1
        waited = time.perf_counter()
        with self._engines(new_version=self.step):
            engines_wait_s = time.perf_counter() - waited
            sync_s = self._sync_weights()
        metrics.update(self.sync_metrics)
        self.skip_totals.update(batch.skipped)
        overlap = {"rollout/policy_version": float(batch.policy_version), "rollout/staleness": float(staleness),
                   "time/rollout_wait_s": wait_s, "time/engines_wait_s": engines_wait_s} if self.pipeline else None
        metrics.update(step_metrics(batch, timings, self.skip_totals, roles.rollout.metrics.actor_restarts, sync_s,
                                    overlap))
        metrics["time/step_s"] = time.perf_counter() - t0
        write_step_records(self.run_dir, self.step, batch, self.rollout_log, self.tc.rollouts_per_step)
        data.release_pixels()
        return metrics

    def _sync_weights(self, probe: bool = False) -> float:
        """Push the policy (version ``self.step``) into every engine and check it took (:meth:`WeightSync.push`,
        which raises on a failed push, a version mismatch or a probe mismatch). Returns the push seconds;
        ``self.sync_metrics`` gets the sync's metrics."""
        elapsed, self.sync_metrics = self.weights.push(self.roles.learner, self.roles.rollout, self.step, probe)
        return elapsed

    def validate(self) -> dict[str, float]:
        with self.costs.phase("validate_before" if self.step == 0 else "validate"):
            return validate(self.cfg, self.val, self.roles.rollout, self.roles.rewards, self._engines(), self.step,
                            self.run_dir, self.rollout_log)

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        try:
            with self.costs.phase("fit"):
                return self._fit()
        finally:
            self.costs.finish()  # memory.json, phases.json (never raises)

    def _fit(self) -> dict[str, Any]:
        self._started = time.perf_counter()
        from vt_ray.learner.group import LearnerCallError

        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "recipe.yaml").write_text(to_yaml(self.cfg))
        (self.run_dir / "environment.json").write_text(json.dumps(capture_environment(), indent=1) + "\n")
        self._load_data()
        self.stop.install()
        summary: dict[str, Any] = {"run_dir": str(self.run_dir)}
        try:
            self._start_roles()
            self._resume()
            self.logger = MetricsLogger(
                self.run_dir, self.cfg.run.name, json.loads(json.dumps(_plain(self.cfg))), self.tc.wandb_mode,
                self.tc.wandb_project, self.tc.wandb_entity, resume_step=self.step,
            )
            if self.step == 0:
                remove_logs(self.run_dir)
                if self.val:
                    before = self.validate()
                    self.logger.log(0, {**before, "time/elapsed_s": time.perf_counter() - self._started})
            self._open_pipeline()
            first = True
            bar = Progress("GRPO", total=self.tc.total_steps, initial=self.step)
            while self.step < self.tc.total_steps and not self.stop.requested.is_set():
                try:
                    with self.costs.phase(f"step_{self.step + 1}"):
                        metrics = self.train_step()
                    self.costs.step_done(self.step, self.tc.total_steps, metrics)
                except RolloutRestartBudgetExhausted as err:
                    self._save_before_failing(err)
                    raise
                except LearnerCallError as err:  # a rank died or hung: restart the roles, resume in this job
                    self._recover(err)
                    first = True
                    continue
                metrics["trainer/restarts"] = float(self.restarts)
                if first:
                    self.roles.set_timeouts(self.tc.step_timeout_s)
                    first = False
                last = self.step == self.tc.total_steps
                if self.val and ((self.tc.val_every and self.step % self.tc.val_every == 0) or last):
                    metrics.update(self.validate())
                metrics["time/elapsed_s"] = time.perf_counter() - self._started  # wall clock since fit() began
                self.logger.log(self.step, metrics)
                bar.advance(reward=metrics.get("reward/total"), acc=metrics.get("reward/accuracy"),
                            valid=metrics.get("trace/valid_share"),
                            samples_s=metrics["data/responses"] / max(metrics["time/step_s"], 1e-9))
                if self.step % self.tc.save_every == 0 or last or self.stop.requested.is_set():
                    self.save()
                    crash_point("trainer.after_save", self.step)  # tests: SIGKILL-equivalent right after a save
            bar.close()
            if self.stop.requested.is_set() and self._saved_step != self.step:
                self.save()  # the signal came between a step's save check and the loop's test: save that step too
            summary["step"] = self.step
            summary["restarts"] = self.restarts
            summary["stopped_early"] = self.stop.requested.is_set()
            if summary["stopped_early"]:
                summary["stop_signal"] = self.stop.signum
                summary["checkpoint_step"] = self._saved_step
            if self.step >= self.tc.total_steps and not self.stop.requested.is_set():
                hf_dir = self.run_dir / "hf"
                with self.costs.phase("hf_export"):
                    self.roles.learner.save_hf(str(hf_dir), self.cfg.model.dtype)
                summary["hf_checkpoint"] = str(hf_dir)
            return summary
        finally:
            self.shutdown()
            self.stop.uninstall()

    def shutdown(self) -> None:
        with self.costs.phase("shutdown"):
            self._close_pipeline()
            self.roles.shutdown(self.costs.phase)  # each role timed as shutdown_<role>
            if self.logger is not None:
                with self.costs.phase("wandb_close"):
                    self.logger.close()


def _plain(cfg: RecipeConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
