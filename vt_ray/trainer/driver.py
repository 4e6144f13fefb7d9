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
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vt_ray.algo.grpo import apply_kl_in_reward, compute_grpo_advantages
from vt_ray.algo.loss import mismatch_stats
from vt_ray.cluster.placement import create_placement_groups, placement_report, remove_placement_groups
from vt_ray.common.environment import capture_environment
from vt_ray.common.errors import ConfigError
from vt_ray.common.progress import Progress
from vt_ray.config.loader import to_yaml
from vt_ray.config.schema import RecipeConfig
from vt_ray.data.schema import VideoSample
from vt_ray.rewards.accuracy import is_letter_answer_correct
from vt_ray.rewards.composite import reward_metrics, reward_metrics_by_type
from vt_ray.rollout.group import RolloutRestartBudgetExhausted
from vt_ray.rollout.types import RolloutResult, SamplingSettings
from vt_ray.testing.faults import crash_point
from vt_ray.trace import parse_trace
from vt_ray.trainer.metrics import MetricsLogger, truncate_jsonl
from vt_ray.trainer.pipeline import RolloutPipeline
from vt_ray.trainer.rollout_log import RolloutLog, group_record
from vt_ray.trainer.run_costs import RunCosts
from vt_ray.trainer.sampler import PromptSampler

log = logging.getLogger(__name__)
MAX_REFILL_ROUNDS = 3
RESTART_BUDGET_EXIT_CODE = 75  # EX_TEMPFAIL: in-job restarts used up; a RayJob retry resumes from the checkpoint


class RestartBudgetExhausted(RuntimeError):
    """A learner was lost once more than ``trainer.max_restarts`` allows; the last complete checkpoint stands."""


@dataclass
class Responses:
    """A step's generated data, flattened to one row per response (group = prompt index)."""

    results: list[RolloutResult]
    samples: list[VideoSample]
    texts: list[str]
    group_ids: list[int]
    token_counts: list[int]
    truncated: list[bool]
    scored: list[dict[str, float]] = field(default_factory=list)
    """Reward results, one per response (filled by the driver after scoring)."""
    scores: torch.Tensor | None = None
    """[N] shaped scores the advantages start from (total reward, non-finite zeroed, DAPO/T-GRPO shaping)."""
    advantages: list[float] = field(default_factory=list)
    """One per response, filled by the update (the report's rollout viewer shows them)."""

    def scored_tensor(self) -> torch.Tensor:
        """``scores``, once the driver has scored the responses (using them before is a bug)."""
        if self.scores is None:
            raise RuntimeError("these responses have not been scored yet")
        return self.scores

    def select_groups(self, groups: list[int]) -> Responses:
        """Only the prompts ``groups`` (indices into ``results``), renumbered 0.. in the given order."""
        new_id = {g: i for i, g in enumerate(groups)}
        rows = [i for g in groups for i, gid in enumerate(self.group_ids) if gid == g]
        return Responses(
            results=[self.results[g] for g in groups], samples=[self.samples[g] for g in groups],
            texts=[self.texts[i] for i in rows], group_ids=[new_id[self.group_ids[i]] for i in rows],
            token_counts=[self.token_counts[i] for i in rows], truncated=[self.truncated[i] for i in rows],
            scored=[self.scored[i] for i in rows],
            scores=None if self.scores is None else self.scores[torch.tensor(rows, dtype=torch.long)],
        )

    @staticmethod
    def concat(parts: list[Responses]) -> Responses:
        out = Responses([], [], [], [], [], [], [], torch.zeros(0))
        for part in parts:
            offset = len(out.results)
            out.results += part.results
            out.samples += part.samples
            out.texts += part.texts
            out.group_ids += [g + offset for g in part.group_ids]
            out.token_counts += part.token_counts
            out.truncated += part.truncated
            out.scored += part.scored
            out.scores = torch.cat([out.scored_tensor(), part.scored_tensor()])
        return out


@dataclass
class StepBatch:
    """One step's scored rollouts as the rollout phase hands them to the update (in any ``trainer.mode``)."""

    step: int
    policy_version: int
    """The policy version the engines held while generating it (sync: ``step``; one_step_off: ``step - 1``)."""
    data: Responses
    skipped: Counter[str]
    metrics: dict[str, float]
    rollout_s: float
    reward_s: float
    sampler_after: dict[str, Any]
    """The sampler's state right after this batch's draws: what a checkpoint after this step stores, so a resume
    draws the batches that were in flight again (none lost, none doubled)."""


def step_seed(cfg: RecipeConfig, step: int) -> int:
    """The seed of a step's rollouts (engine sampling, T-GRPO's frame shuffle): a resumed step draws the same."""
    return cfg.run.seed * 1_000_003 + step


def sampling_for_training(cfg: RecipeConfig, step: int = 0) -> SamplingSettings:
    r, a = cfg.rollout, cfg.algorithm
    shuffled = (a.tgrpo_shuffled_n or r.n) if a.tgrpo else 0
    return SamplingSettings(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, stop=list(r.stop),
                            shuffled_n=shuffled, shuffle_seed=step_seed(cfg, step),
                            min_tokens=r.min_tokens, ignore_eos=r.ignore_eos)


def sampling_for_validation(cfg: RecipeConfig) -> SamplingSettings:
    return SamplingSettings(n=1, temperature=0.0, top_p=1.0, max_tokens=cfg.rollout.max_tokens,
                            stop=list(cfg.rollout.stop))


def _frames(result: RolloutResult) -> np.ndarray:
    """The frames the rollout worker attached to ``result`` (it always does): the learner scores on them."""
    if result.frames is None:
        raise ValueError(f"rollout result {result.uid!r} carries no frames: the learner cannot score it")
    return result.frames


class GracefulStop:
    """SIGTERM/SIGINT: finish the current step, checkpoint, stop (the train command then exits 128+signal). A
    watchdog hard-exits with 128+signal after the grace period, so a stuck step cannot keep a preempted pod
    alive (the previous complete checkpoint stands); a second signal exits at once the same way.

    The handler only sets an event: it may run between any two bytecodes of the main thread, even inside a
    ``print`` to the same stream, where printing again raises "reentrant call". The watchdog thread reports the
    stop and keeps the deadline; :meth:`uninstall` disarms it once the stop is done.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = threading.Event()
        self.signum = 0
        self._disarmed = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._disarmed.clear()
        threading.Thread(target=self._watchdog, name="graceful-stop", daemon=True).start()

    def uninstall(self) -> None:
        self._disarmed.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested.is_set():  # second signal: stop now
            os._exit(128 + signum)
        self.signum = signum
        self.requested.set()

    def _watchdog(self) -> None:
        while not self.requested.wait(timeout=1.0):  # wakes to notice uninstall(); no timing depends on it
            if self._disarmed.is_set():
                return
        if self._disarmed.is_set():
            return
        log.warning("signal %d: finishing the current step, then checkpointing (grace %.0f s)", self.signum,
                    self.grace_s)
        print(f"[train] received signal {self.signum}: checkpointing after the current step "
              f"(grace {self.grace_s:.0f} s)", flush=True)
        if self._disarmed.wait(self.grace_s):  # a deadline, not a test synchronisation
            return
        print(f"[train] grace period of {self.grace_s:.0f} s exceeded: exiting without a final checkpoint", flush=True)
        os._exit(128 + self.signum)


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
        self._weight_probe: Any = None
        self.streamed = weight_sync_mode(cfg) == "stream"  # weights learner -> engines without the driver
        self.stop = GracefulStop(self.tc.stop_grace_s)
        self.placement: Any = None
        self.rollout: Any = None
        self.rewards: Any = None
        self.learner: Any = None
        self.pipeline: RolloutPipeline[StepBatch] | None = None  # trainer.mode one_step_off / async
        self._trained_sampler_state: dict[str, Any] | None = None  # async: the sampler as of the last trained batch
        self.logger: MetricsLogger | None = None
        self._started = time.perf_counter()
        self.rollout_log = RolloutLog.from_config(self.run_dir, self.tc)
        self.restarts = 0  # in-job recoveries so far (trainer.max_restarts)
        # phases.json, memory.json: times and peak memory by phase and role (the phases are opened below)
        self.costs = RunCosts(self.run_dir, lambda: {"learner": self.learner, "rollout": self.rollout,
                                                     "reward": self.rewards})

    # ---- setup ---------------------------------------------------------------------------------------------
    def _load_data(self) -> None:
        with self.costs.phase("load_data"):
            self._read_data()

    def _read_data(self) -> None:
        from vt_ray.data.formats import load_samples as load_format
        from vt_ray.data.guarded import load_samples

        data = self.cfg.data
        train_file, val_file = Path(data.train_file), Path(data.val_file)
        root = data.root or None
        if data.format != "project":  # verl / EasyR1 / Video-R1 files: rows mapped, bad rows and missing media counted
            self.train = load_format(train_file, data.format, root, data.check_media)
            self.val = load_format(val_file, data.format, root, data.check_media) if val_file.is_file() else []
        else:  # our JSONL: bad rows and videos outside the root skipped and counted (vt_ray/data/guarded.py)
            self.train, train_report = load_samples(train_file, root)
            self.val, val_report = load_samples(val_file, root) if val_file.is_file() else ([], None)
            for report in (train_report, val_report):
                if report is not None and report.skipped:
                    print(f"[train] data: {report.summary()}", flush=True)
            (self.run_dir / "data_report.json").write_text(json.dumps(
                {r.path: {"kept": r.kept, "skipped": dict(r.skipped), "examples": r.examples}
                 for r in (train_report, val_report) if r is not None}, indent=1))
        if self.tc.val_samples:
            self.val = self.val[: self.tc.val_samples]
        self.sampler = PromptSampler(self.train, seed=self.cfg.run.seed)

    def _start_roles(self) -> None:
        with self.costs.phase("start_roles"):
            self._spawn_roles()
        self.costs.roles_started()

    def _spawn_roles(self) -> None:
        from transformers import AutoProcessor

        from vt_ray.learner.group import LearnerGroup
        from vt_ray.rollout.group import RolloutGroup
        from vt_ray.trainer.reward_group import RewardGroup

        res = self.cfg.resources
        timeout = self.tc.first_step_timeout_s
        self.placement = create_placement_groups(res, timeout_s=timeout)
        # Where every role's actors run (role, rank, node): for multi-node runs and their tests.
        (self.run_dir / "placement.json").write_text(json.dumps(placement_report(self.placement), indent=1))
        self.processor = AutoProcessor.from_pretrained(self.cfg.model.path)
        self.learner = LearnerGroup(
            self.cfg, actor_options=lambda rank: self._options("learner", rank), timeout_s=timeout
        )
        # Every role's actors are spawned before any is waited for: the engines, scorers and learner ranks start
        # at the same time (measured on the tiny recipe: _start_roles 29.2 s -> 24.4 s), and a role that does not
        # come up still raises a StepTimeout naming it.
        self.rollout = RolloutGroup(
            self.cfg, num_workers=res.rollout.num_workers, timeout_s=timeout,
            actor_options=lambda rank: self._options("rollout", rank), max_restarts=self.tc.max_actor_restarts,
            wait_ready=False,
        )
        self.rewards = RewardGroup(
            self.cfg.reward, res.reward.num_workers, lambda rank: self._options("reward", rank), timeout,
            wait_ready=False,
        )
        self.learner.setup(total_steps=self.optimizer_steps_total(), model_path=self.cfg.model.path)
        self.rollout.wait_ready()
        self.rewards.wait_ready()
        if self.streamed:  # the plan is fixed by the shapes: made and checked once
            plan = self.learner.weight_plan(self.cfg.model.dtype, self.cfg.rollout.weight_bucket_mb)
            self.rollout.attach_weight_source(self.learner, plan, stream_backend(res))
            self.rollout.check_weight_plan()

    def _options(self, role: str, rank: int) -> dict[str, Any]:
        group = next(g for g in self.placement.values() if role in g.spec.requests)
        return group.actor_options(role, rank)

    def optimizer_steps_total(self) -> int:
        return self.tc.total_steps * self.tc.update_epochs * self._minibatches_per_step()

    def _minibatches_per_step(self) -> int:
        responses = self.tc.prompts_per_step * self.cfg.rollout.n
        size = self.tc.mini_batch_size or responses
        return max(1, -(-responses // size))

    def _set_timeouts(self, seconds: float) -> None:
        self.rollout.timeout_s = seconds
        self.rewards.timeout_s = seconds
        self.learner.timeout_s = seconds

    # ---- resume --------------------------------------------------------------------------------------------
    def _resume(self, in_job: bool = False) -> None:
        with self.costs.phase("resume"):
            self._restore(in_job)

    def _restore(self, in_job: bool) -> None:
        from vt_ray.learner.checkpoint import select

        partial = sorted(p.name for p in self.ckpt_root.glob(".tmp_*")) if self.ckpt_root.is_dir() else []
        if partial:
            print(f"[train] ignoring incomplete checkpoint(s) from an interrupted save: {partial}", flush=True)
        if (not in_job and self.tc.resume_mode == "never" and self.ckpt_root.is_dir()
                and any(self.ckpt_root.glob("step_*"))):
            raise RuntimeError(f"{self.ckpt_root} has checkpoints and trainer.resume_mode=never: use a new run.name")
        selection = select(self.ckpt_root)  # newest intact one: corrupt newer ones are refused and moved aside
        for err in selection.refused:
            print(f"[train] refused {err}; falling back to an older checkpoint", flush=True)
        found = selection.found
        if found is None:
            return
        state = self.learner.load_checkpoint(str(found)) or {}
        self.step = self._saved_step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.skip_totals = Counter(state.get("skip_totals", {}))
        for name in ("samples.jsonl", "validation.jsonl", "rollouts.jsonl"):
            truncate_jsonl(self.run_dir / name, self.step)
        self._sync_weights(probe=True)  # the engines start from model.path: give them the restored policy
        print(f"[train] resumed from {found} at step {self.step}", flush=True)

    def _driver_state(self) -> dict[str, Any]:
        sampler = self._trained_sampler_state or self.sampler.state_dict()  # async: not the batches in flight
        return {"step": self.step, "sampler": sampler, "skip_totals": dict(self.skip_totals)}

    def save(self, driver_state: dict[str, Any] | None = None) -> str:
        with self.costs.phase("checkpoint"):
            return self._save(driver_state)

    def _save(self, driver_state: dict[str, Any] | None) -> str:
        start = time.perf_counter()
        state = driver_state or self._driver_state()
        path = self.learner.save_checkpoint(str(self.ckpt_root), extra_state=state)
        self._saved_step = state["step"]
        print(f"[train] checkpoint step {state['step']} -> {path} ({time.perf_counter() - start:.1f} s)", flush=True)
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
        self._kill_roles()
        self.step, self._saved_step, self.skip_totals = 0, -1, Counter()
        self.sampler = PromptSampler(self.train, seed=self.cfg.run.seed)
        self._start_roles()
        self._resume(in_job=True)
        for name in ("samples.jsonl", "validation.jsonl", "metrics.jsonl"):
            truncate_jsonl(self.run_dir / name, self.step)
        self._open_pipeline()
        print(f"[train] recovered in {time.perf_counter() - started:.1f} s: continuing from step {self.step} "
              f"(lost at step {lost_step})", flush=True)

    def _kill_roles(self) -> None:
        """Tear down without asking the roles (a lost rank's peers may be stuck in a collective with it)."""
        import ray

        for role in (self.rollout, self.rewards, self.learner):
            for actor in getattr(role, "actors", []) if role is not None else []:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as kill_err:  # noqa: BLE001 - already gone
                    log.debug("kill: %s", kill_err)
        self.rollout = self.rewards = self.learner = None
        if self.placement is not None:
            remove_placement_groups(self.placement)
            self.placement = None

    def _save_before_failing(self, err: RolloutRestartBudgetExhausted) -> None:
        """The rollout phase failed for good: the learners still hold the last completed step, and the driver
        state from before this step's draw goes with them, so a retry resumes with this step's prompts."""
        state = self._step_start_state
        if state is None or state["step"] != self.step or self._saved_step == self.step:
            return  # nothing new since the last checkpoint (or the learners moved on: never pair them wrongly)
        print(f"[train] {err}: saving step {self.step} before failing", flush=True)
        self.save(state)

    # ---- one step ------------------------------------------------------------------------------------------
    def _generate(self, first: list[VideoSample], step: int
                  ) -> tuple[list[RolloutResult], list[VideoSample], Counter[str]]:
        """Responses for ``len(first)`` prompts: skipped samples are counted, remembered and replaced."""
        want, by_uid = len(first), {s.uid: s for s in first}
        results: list[RolloutResult] = []
        skipped: Counter[str] = Counter()
        todo = first
        for _ in range(MAX_REFILL_ROUNDS + 1):
            out = self.rollout.generate(todo, sampling_for_training(self.cfg, step))
            results += out.results
            for s in out.skipped:
                self.sampler.mark_skipped(s.uid, s.reason)
                skipped[s.reason] += 1
                log.warning("skipped %s (%s): %s", s.video, s.reason, s.detail)
            if len(results) >= want or not out.skipped:
                break
            todo = self.sampler.take(want - len(results))
            by_uid.update((s.uid, s) for s in todo)
        return results, [by_uid[r.uid] for r in results], skipped

    def _flatten(self, results: list[RolloutResult], samples: list[VideoSample]) -> Responses:
        texts, groups, tokens, truncated = [], [], [], []
        for g, r in enumerate(results):
            for c in r.completions:
                texts.append(c.text)
                groups.append(g)
                tokens.append(len(c.token_ids))
                truncated.append(c.finish_reason == "length")
        return Responses(results, samples, texts, groups, tokens, truncated)

    def _train_batch(self, data: Responses, scores: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
        from vt_ray.learner.batch import Example, collate

        examples = [
            Example(prompt=r.prompt, frames=_frames(r), response_ids=c.token_ids, video_metadata=r.video_metadata,
                    uid=r.uid, behaviour_logprobs=c.logprobs, media=r.media)
            for r in data.results for c in r.completions
        ]
        batch = collate(self.processor, examples)
        timings: dict[str, float] = {}
        metrics: dict[str, float] = {}
        start = time.perf_counter()
        mask = batch.response_mask
        acfg = self.cfg.algorithm
        updates = self.tc.update_epochs * self._minibatches_per_step()
        passes = (["policy"] if acfg.policy_logprob_pass(updates) else []) + (
            ["reference"] if acfg.needs_reference else [])
        logprobs = self.learner.compute_logprobs_passes(batch, passes) if passes else {}  # one put of the batch
        if "policy" in logprobs:
            batch.old_logprobs = logprobs["policy"]
            if acfg.log_logprob_mismatch and batch.behaviour_logprobs is not None:
                stats = mismatch_stats(batch.old_logprobs, batch.behaviour_logprobs, mask, max(float(mask.sum()), 1.0))
                metrics.update({k.replace("actor/", "rollout/"): float(v) for k, v in stats.items()})
        if "reference" in logprobs:
            batch.ref_logprobs = logprobs["reference"]
        timings["time/logprobs_s"] = time.perf_counter() - start
        if batch.ref_logprobs is not None and acfg.use_kl_in_reward:
            current = (batch.old_logprobs if batch.old_logprobs is not None
                       else self.learner.compute_logprobs(batch, "policy"))
            scores, kl_metrics = apply_kl_in_reward(acfg, scores, current, batch.ref_logprobs, mask)
            metrics.update(kl_metrics)
        lengths = torch.tensor(data.token_counts, dtype=torch.float32)
        adv, keep, adv_metrics = compute_grpo_advantages(acfg, scores, data.group_ids, lengths)
        if acfg.overlong_filter:  # DAPO overlong filtering: truncated responses do not count in the loss
            from vt_ray.algo.shaping import overlong_filter
            keep, adv_metrics["dapo/overlong_filtered_frac"] = overlong_filter(keep, data.truncated)
        metrics.update(adv_metrics)
        data.advantages = adv.float().tolist()
        batch.advantages = adv.float()
        batch.response_mask = mask * keep.float()[:, None]
        start = time.perf_counter()
        size = self.tc.mini_batch_size or len(batch)
        update: list[dict[str, float]] = []
        for _ in range(self.tc.update_epochs):
            for mini in batch.chunks(size):
                update.append(self.learner.train_step(mini, "grpo"))
        timings["time/update_s"] = time.perf_counter() - start
        for key in update[0]:  # the learner's own keys (loss, grad_norm, lr, ...) go under actor/
            name = key if "/" in key else f"actor/{key}"
            metrics[name] = sum(u[key] for u in update) / len(update)
            if key.startswith("actor/engine_learner_") and len(update) == 1:  # the one update saw the pre-update policy
                metrics.setdefault(key.replace("actor/", "rollout/"), update[0][key])
        return metrics, timings

    def _sync_weights(self, probe: bool = False) -> float:
        """Push the policy into every rollout engine and verify it took (field-conventions C8 item 6).

        Streamed (``rollout.weight_sync``): learner rank 0 broadcasts the policy in buckets to the engines and
        the driver carries only the plan; blob: one safetensors blob through the driver. Raises if the push fails
        (``WeightSyncError`` naming rank and tensor; blob pushes put every engine back on the previous version,
        streams are retried once and otherwise leave the failed engines refusing to generate), if an engine
        does not then report ``self.step`` as its weight version (``WeightVersionMismatch`` naming the ranks), or,
        on probe syncs, if an engine's log-probs of a fixed text differ from the reference (the learner's own
        forward when streamed, a float32 transformers forward on the blob otherwise) by more than
        ``rollout.probe_tolerance`` (``WeightProbeMismatch``). Probe syncs: every ``rollout.probe_every``-th
        step, and the resume sync (``probe=True``), when ``probe_every`` > 0.

        Returns the export + push + version check seconds; ``self.sync_metrics`` gets
        ``rollout/weight_version`` and, on probe syncs, ``rollout/probe_logprob_abs_diff`` and
        ``time/weight_probe_s``.
        """
        from vt_ray.rollout import weight_sync

        start = time.perf_counter()
        if self.cfg.rollout.enable_sleep_mode:
            self.rollout.wake_up()
        metrics = {"rollout/weight_version": float(self.step)}
        blob = None
        if self.streamed:
            crash_point("trainer.mid_weight_sync", self.step)
            sent = self.rollout.stream_weights(self.step)
            metrics.update({f"time/weight_{k}": v for k, v in sent.items() if k.endswith("_s")})
        else:
            blob = self.learner.export_safetensors(self.cfg.model.dtype)
            crash_point("trainer.mid_weight_sync", self.step)
            self.rollout.update_weights(blob, version=self.step)
        weight_sync.check_weight_versions(self.rollout.weight_versions(), self.step)
        elapsed = time.perf_counter() - start
        every = self.cfg.rollout.probe_every
        if every > 0 and (probe or self.step % every == 0):
            started = time.perf_counter()
            engines = self.rollout.probe_logprobs_all(weight_sync.PROBE_TEXT)
            if blob is None:  # streamed: the learner's own forward is the reference (no model copy here)
                reference = self.learner.probe_logprobs(weight_sync.PROBE_TEXT)
            else:
                if self._weight_probe is None:  # one float32 model copy, loaded on first use
                    self._weight_probe = weight_sync.WeightProbe(self.cfg.model.path)
                reference = self._weight_probe.reference(blob)
            metrics["rollout/probe_logprob_abs_diff"] = weight_sync.compare_probe(
                reference, engines, self.cfg.rollout.probe_tolerance, self.step
            )
            metrics["time/weight_probe_s"] = time.perf_counter() - started
        self.sync_metrics = metrics
        return elapsed

    def _rollout_round(self, prompts: list[VideoSample], step: int
                       ) -> tuple[Responses | None, Counter[str], dict[str, float]]:
        """Generate (skips refilled), score and shape one round of prompts. Returns (responses with ``scored`` and
        ``scores``, skip counts, metrics incl. time/rollout_s and time/reward_s of this round)."""
        t0 = time.perf_counter()
        results, samples, skipped = self._generate(prompts, step)
        t1 = time.perf_counter()
        if not results:
            return None, skipped, {"time/rollout_s": t1 - t0, "time/reward_s": 0.0}
        data = self._flatten(results, samples)
        targets = [samples[g].reward_target() for g in data.group_ids]
        shuffled_groups = [g for g, r in enumerate(results) for _ in r.shuffled_completions]
        shuffled_texts = [c.text for r in results for c in r.shuffled_completions]
        shuffled_targets = [samples[g].reward_target() for g in shuffled_groups]
        all_scored = self.rewards.score(data.texts + shuffled_texts, targets + shuffled_targets)
        data.scored, shuffled_scored = all_scored[: len(data.texts)], all_scored[len(data.texts):]
        metrics = {"time/rollout_s": t1 - t0, "time/reward_s": time.perf_counter() - t1}
        data.scores, shaping = self._shape_scores(data, shuffled_scored, shuffled_groups)
        metrics.update(shaping)
        return data, skipped, metrics

    def _shape_scores(self, data: Responses, shuffled_scored: list[dict[str, float]], shuffled_groups: list[int]
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total rewards -> the scores the advantages use: non-finite values zeroed and counted, then DAPO's soft
        overlong punishment and T-GRPO's temporal bonus when the recipe turns them on."""
        from vt_ray.algo.shaping import finite_scores, soft_overlong_penalty, tgrpo_bonus

        a = self.cfg.algorithm
        scores, bad = finite_scores([s["total"] for s in data.scored])
        metrics = {"reward/nonfinite": float(bad)}
        if a.overlong_buffer_len > 0:
            penalty = soft_overlong_penalty(torch.tensor(data.token_counts), self.cfg.rollout.max_tokens,
                                            a.overlong_buffer_len, a.overlong_penalty_factor)
            scores = scores + penalty.float()
            metrics["dapo/overlong_penalty_mean"] = float(penalty.mean())
        if a.tgrpo:
            acc = torch.tensor([finite_scores([s.get("accuracy", 0.0)])[0].item() for s in data.scored])
            shuffled_acc = torch.tensor([finite_scores([s.get("accuracy", 0.0)])[0].item() for s in shuffled_scored])
            bonus, tg = tgrpo_bonus(acc, data.group_ids, shuffled_acc, shuffled_groups, alpha=a.tgrpo_alpha,
                                    rule=a.tgrpo_rule)
            scores = scores + bonus.float()
            metrics.update(tg)
            metrics["tgrpo/shuffled_responses"] = float(len(shuffled_scored))
        return scores, metrics

    def _collect_step_data(self, step: int) -> tuple[Responses, Counter[str], dict[str, float], tuple[float, float]]:
        """This step's scored responses. With DAPO dynamic sampling, keep only groups with unequal rewards and
        refill from further prompts (``algorithm.max_refill_rounds`` extra rounds at most; every draw comes from
        the resumable sampler, so a resumed run draws the same prompts); short batches are counted."""
        a, want = self.cfg.algorithm, self.tc.prompts_per_step
        factor = a.oversample_factor if a.dynamic_sampling else 1.0
        first, skipped, metrics = self._rollout_round(self.sampler.take(math.ceil(want * factor)), step)
        if first is None:
            raise RuntimeError(f"step {step}: every prompt was skipped ({dict(skipped)})")
        timing = [metrics.pop("time/rollout_s"), metrics.pop("time/reward_s")]
        if not a.dynamic_sampling:
            return first, skipped, metrics, (timing[0], timing[1])
        from vt_ray.algo.shaping import informative_groups

        kept: list[Responses] = []
        data: Responses | None = first
        rounds = generated = 0
        while True:
            if data is not None:
                generated += len(data.results)
                kept.append(data.select_groups(informative_groups(data.scored_tensor(), data.group_ids)))
            have = sum(len(k.results) for k in kept)
            if have >= want or rounds >= a.max_refill_rounds:
                break
            rounds += 1
            data, more_skipped, round_metrics = self._rollout_round(
                self.sampler.take(math.ceil((want - have) * factor)), step
            )
            skipped.update(more_skipped)
            timing[0] += round_metrics.pop("time/rollout_s")
            timing[1] += round_metrics.pop("time/reward_s")
            metrics["reward/nonfinite"] += round_metrics["reward/nonfinite"]  # other shaping metrics: first round's
        merged = Responses.concat(kept)
        have = len(merged.results)
        chosen = merged.select_groups(list(range(min(have, want)))) if have else first  # none informative: train as is
        metrics.update({
            "dapo/refill_rounds": float(rounds),
            "dapo/prompts_generated": float(generated),
            "dapo/informative_groups": float(have),
            "dapo/short_batch": float(have < want),
        })
        return chosen, skipped, metrics, (timing[0], timing[1])

    def _make_batch(self, step: int, version: int) -> StepBatch:
        """The rollout phase of ``step`` (generate, score, shape) on the engines' policy ``version``; in the
        asynchronous modes it runs in the pipeline's thread."""
        self.rollout.reseed(step_seed(self.cfg, step))
        data, skipped, metrics, (rollout_s, reward_s) = self._collect_step_data(step)
        return StepBatch(step, version, data, skipped, metrics, rollout_s, reward_s, self.sampler.state_dict())

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
        data, skipped, round_metrics = batch.data, batch.skipped, batch.metrics
        rollout_s, reward_s = batch.rollout_s, batch.reward_s
        crash_point("trainer.after_rollout", self.step + 1)  # chaos soak: the driver dies between phases
        results, samples = data.results, data.samples
        if self.cfg.rollout.enable_sleep_mode:
            self.rollout.sleep()  # colocated: the learner gets the GPU memory back
        scored = data.scored
        metrics, timings = self._train_batch(data, data.scored_tensor())
        crash_point("trainer.after_update", self.step + 1)
        metrics.update(round_metrics)
        staleness = self.step - batch.policy_version
        self.step += 1
        waited = time.perf_counter()
        with self._engines(new_version=self.step):
            engines_wait_s = time.perf_counter() - waited
            sync_s = self._sync_weights()
        metrics.update(self.sync_metrics)
        self.skip_totals.update(skipped)
        parsed = [parse_trace(t) for t in data.texts]
        metrics.update(reward_metrics(scored))
        metrics.update(reward_metrics_by_type(scored, [samples[g].answer_type for g in data.group_ids]))
        metrics.update({
            "trace/valid_share": sum(p.violations == () for p in parsed) / len(parsed),
            "response/length_mean": sum(data.token_counts) / len(data.token_counts),
            "response/length_max": float(max(data.token_counts)),
            "response/truncated_share": sum(data.truncated) / len(data.truncated),
            "data/prompts": float(len(results)),
            "data/responses": float(len(data.texts)),
            "data/consumed_total": float(batch.sampler_after["consumed"]),
            "rollout/actor_restarts": float(self.rollout.metrics.actor_restarts),
            "time/rollout_s": rollout_s,
            "time/reward_s": reward_s,
            "time/weight_sync_s": sync_s,
            **({"rollout/policy_version": float(batch.policy_version), "rollout/staleness": float(staleness),
                "time/rollout_wait_s": wait_s, "time/engines_wait_s": engines_wait_s} if self.pipeline else {}),
            **timings,
            **{f"data/skipped_{k}": float(v) for k, v in self.skip_totals.items()},
        })
        metrics["time/step_s"] = time.perf_counter() - t0
        with (self.run_dir / "samples.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.step, "uids": [r.uid for r in results],
                                "policy_version": batch.policy_version}) + "\n")
        if self.rollout_log.due(self.step):
            rows = {g: [i for i, gid in enumerate(data.group_ids) if gid == g] for g in range(len(results))}
            self.rollout_log.write([
                group_record(self.step, "train", r, samples[g], [scored[i] for i in rows[g]],
                             [data.advantages[i] for i in rows[g]])
                for g, r in enumerate(results[: self.tc.rollouts_per_step])
            ])
        return metrics

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        with self.costs.phase("validate_before" if self.step == 0 else "validate"):
            return self._validate()

    def _validate(self) -> dict[str, float]:
        if not self.val:
            return {}
        start = time.perf_counter()
        by_uid = {s.uid: s for s in self.val}
        with self._engines():  # async modes: between the pipeline's batches
            out = self.rollout.generate(self.val, sampling_for_validation(self.cfg))
            texts = [r.completions[0].text for r in out.results]
            scored = self.rewards.score(texts, [by_uid[r.uid].reward_target() for r in out.results])
        metrics = reward_metrics(scored, prefix="val/")
        parsed = [parse_trace(t) for t in texts]
        metrics["val/valid_share"] = sum(p.violations == () for p in parsed) / max(len(texts), 1)
        choice = [(p, by_uid[r.uid]) for p, r in zip(parsed, out.results)
                  if by_uid[r.uid].answer_type == "multiple_choice"]
        if choice:  # letter-only accuracy: the figure Video-R1 / Video-Holmes report
            metrics["val/accuracy_letter"] = (
                sum(is_letter_answer_correct(p.answer, s.answer) for p, s in choice) / len(choice)
            )
        metrics["val/samples"] = float(len(texts))
        metrics["time/val_s"] = time.perf_counter() - start
        with (self.run_dir / "validation.jsonl").open("a") as f:
            for r, text, s in zip(out.results, texts, scored):
                f.write(json.dumps({"step": self.step, "uid": r.uid, "response": text, **s}) + "\n")
        if self.rollout_log.enabled:
            self.rollout_log.write([group_record(self.step, "val", r, by_uid[r.uid], [s], None)
                                    for r, s in zip(out.results[: self.tc.rollouts_per_step], scored)])
        return metrics

    # ---- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        try:
            with self.costs.phase("fit"):
                return self._fit()
        finally:
            self.costs.finish()

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
                self._truncate_run_logs()
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
                    self._set_timeouts(self.tc.step_timeout_s)
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
            summary["step"] = self.step
            summary["restarts"] = self.restarts
            summary["stopped_early"] = self.stop.requested.is_set()
            if summary["stopped_early"]:
                summary["stop_signal"] = self.stop.signum
                summary["checkpoint_step"] = self._saved_step
            if self.step >= self.tc.total_steps and not self.stop.requested.is_set():
                hf_dir = self.run_dir / "hf"
                with self.costs.phase("hf_export"):
                    self.learner.save_hf(str(hf_dir), self.cfg.model.dtype)
                summary["hf_checkpoint"] = str(hf_dir)
            return summary
        finally:
            self.shutdown()
            self.stop.uninstall()

    def _truncate_run_logs(self) -> None:
        for name in ("samples.jsonl", "validation.jsonl", "metrics.jsonl", "rollouts.jsonl"):
            (self.run_dir / name).unlink(missing_ok=True)

    def shutdown(self) -> None:
        with self.costs.phase("shutdown"):
            self._shutdown()

    def _shutdown(self) -> None:
        self._close_pipeline()
        for name, role in (("rollout", self.rollout), ("reward", self.rewards), ("learner", self.learner)):
            if role is not None:
                try:
                    with self.costs.phase(f"shutdown_{name}"):
                        role.shutdown()
                except Exception as err:  # keep tearing down the rest
                    log.warning("shutdown of %s failed: %s", type(role).__name__, err)
        if self.placement is not None:
            remove_placement_groups(self.placement)
            self.placement = None
        if self.logger is not None:
            with self.costs.phase("wandb_close"):
                self.logger.close()


def weight_sync_mode(cfg: RecipeConfig) -> str:
    """``rollout.weight_sync`` resolved: ``auto`` streams, except in colocated GPU layouts (an engine on the
    learner's own GPU cannot join an NCCL group with it; CUDA IPC handles are not built yet) and for engines
    without the streaming methods, which get blobs."""
    from vt_ray.config.backends import ROLLOUT_ENGINES

    mode = cfg.rollout.weight_sync
    engine = ROLLOUT_ENGINES.get(cfg.rollout.backend)  # a class, or a built-in's factory that says it
    streams = getattr(engine, "streams_weights", None) or all(
        callable(getattr(engine, m, None)) for m in ("check_weight_plan", "receive_weights"))
    if mode == "auto":
        return "stream" if streams and not cfg.resources.colocate else "blob"
    if mode == "stream" and not streams:
        raise ConfigError("rollout.weight_sync", f"stream needs an engine with check_weight_plan and "
                          f"receive_weights (vt_ray.rollout.engine_api.StreamingRolloutEngine); rollout.backend="
                          f"{cfg.rollout.backend!r} has not: use auto or blob")
    return mode


def stream_backend(res: Any) -> str:
    """NCCL when both the learners and the engines hold GPUs, else gloo (CPU runs, and mixed layouts)."""
    return "nccl" if res.learner.gpus_per_worker > 0 and res.rollout.gpus_per_worker > 0 else "gloo"


def _plain(cfg: RecipeConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
