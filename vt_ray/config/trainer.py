"""Trainer (driver loop) section of the recipe."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from vt_ray.common.choices import set_choice
from vt_ray.common.errors import check


class TrainerMode(StrEnum):
    sync = "sync"
    one_step_off = "one_step_off"
    async_ = "async"  # the name is a keyword; recipes and to_yaml use the value


class ResumeMode(StrEnum):
    auto = "auto"
    never = "never"


class PixelPath(StrEnum):
    rollout = "rollout"
    driver = "driver"


class WandbMode(StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


TRAINER_MODES = tuple(TrainerMode)


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = 100
    """GRPO steps (each: one batch of prompts, G rollouts each, one policy update)."""
    prompts_per_step: int = 32
    """Prompts drawn per step; the step trains on prompts_per_step x rollout.n responses (assumption)."""
    update_epochs: int = 1
    """Passes of policy updates over each step's responses (paper GRPO: 1, on-policy)."""
    mini_batch_size: int = 0
    """Responses per optimizer step (0: all of the step's responses, one optimizer step per epoch). With more
    than one mini-batch or epoch, old log-probs are recomputed by the learner and the ratio is clipped. The
    step's ceil(responses / size) mini-batches are as equal as can be (sizes differ by at most one); mini-batch
    k is the k-th slice of every learner rank's share of the step, the same rows every epoch
    (docs/data-path.md)."""
    val_every: int = 0
    """Validate on data.val_file every K steps (0: only at the end)."""
    val_samples: int = 0
    """Validation prompts per validation (0: the whole split)."""
    save_every: int = 10
    """Checkpoint every K steps (and always at the end and on SIGTERM). How many are kept: learner.keep_last."""
    resume_mode: ResumeMode = ResumeMode.auto
    """auto: continue from the latest complete checkpoint in the run directory if any; never: start fresh
    (refuses to overwrite a run directory that has checkpoints)."""
    first_step_timeout_s: float = 3600.0
    """Timeout for every remote call during the first step (engine warm-up, compilation)."""
    step_timeout_s: float = 900.0
    """Timeout for every remote call after the first step: a stuck role raises StepTimeout naming itself."""
    stop_grace_s: float = 120.0
    """On SIGTERM: time allowed to finish the current step and write a checkpoint before actors are killed."""
    max_actor_restarts: int = 3
    """Crashed rollout actors restarted (their prompts re-sent) over the run; one more crash saves a checkpoint
    of the last completed step and fails the run, so a retry resumes there."""
    save_rollouts_every: int = 1
    """Every K steps, save ``rollouts_per_step`` groups to <run>/rollouts.jsonl for the report's rollout viewer:
    video, frames seen, every response with its reward parts and advantage, gold windows (0: never)."""
    rollouts_per_step: int = 2
    """Groups (prompts, each with all rollout.n responses) saved per saved step; validation saves as many."""
    rollouts_max_mb: float = 64.0
    """Disk cap of rollouts.jsonl: once it is this large no more rollouts are written (a warning says so)."""
    write_report: bool = True
    """``train`` ends by writing <run>/report/report.html (+ .md); ``python -m vt_ray report RUN_DIR`` any time."""
    max_restarts: int = 1
    """In-job recoveries over the run: when a learner rank is lost (it died, or a call timed out), every role
    is torn down, started again on new placement groups and resumed from the last complete checkpoint, in the
    same job. One more loss exits with code 75 (the last checkpoint stands), so a RayJob retry takes over."""
    mode: TrainerMode = TrainerMode.sync
    """sync: generate, score, update, push weights, one after the other (every sample from the current policy).
    one_step_off: the next step's rollouts are generated while the learners update on this step's (every sample
    exactly one policy version old, the first step's none; which version generated a sample does not depend on
    timing, so a run is as reproducible as in sync mode). async: rollouts run ahead of the learners by up to
    ``max_staleness`` versions. Weights are pushed between engine batches; the version of every trained sample
    is in samples.jsonl. See docs/async.md."""
    max_staleness: int = 1
    """async mode: a step may train on rollouts from at most this many policy versions ago (one_step_off: 1)."""
    pixel_path: PixelPath = PixelPath.rollout
    """How a step's pixels reach the learners. rollout: each rollout worker encodes its prompts once (uint8
    patches) into the object store and the learners fetch them by reference; the driver holds only token ids,
    grids and references. driver: the earlier path, kept for comparison (benchmarks/data_path.py): frames come
    back to the driver, which runs the processor and sends float32 pixels, one copy per response, to the
    learners. See docs/data-path.md."""
    log_every: int = 1
    wandb_mode: WandbMode = WandbMode.offline
    """offline | online | disabled. Online needs WANDB_API_KEY in the environment (never in the recipe)."""
    wandb_project: str = "vt_ray"
    wandb_entity: str = ""

    def __post_init__(self) -> None:
        check(self.total_steps >= 1, "trainer.total_steps", "must be >= 1")
        check(self.prompts_per_step >= 1, "trainer.prompts_per_step", "must be >= 1")
        check(self.update_epochs >= 1, "trainer.update_epochs", "must be >= 1")
        check(self.mini_batch_size >= 0, "trainer.mini_batch_size", "must be >= 0")
        check(self.val_every >= 0, "trainer.val_every", "must be >= 0")
        check(self.save_every >= 1, "trainer.save_every", "must be >= 1")
        check(self.save_rollouts_every >= 0, "trainer.save_rollouts_every", "must be >= 0")
        check(self.rollouts_per_step >= 0, "trainer.rollouts_per_step", "must be >= 0")
        check(self.rollouts_max_mb >= 0, "trainer.rollouts_max_mb", "must be >= 0")
        check(self.max_actor_restarts >= 0, "trainer.max_actor_restarts", "must be >= 0")
        check(self.max_restarts >= 0, "trainer.max_restarts", "must be >= 0")
        set_choice(self, "resume_mode", ResumeMode, "trainer.resume_mode")
        check(self.first_step_timeout_s > 0 and self.step_timeout_s > 0, "trainer.step_timeout_s", "must be > 0")
        set_choice(self, "mode", TrainerMode, "trainer.mode")
        check(self.max_staleness >= 1, "trainer.max_staleness", "must be >= 1 (sync mode is trainer.mode=sync)")
        check(self.mode != "one_step_off" or self.max_staleness == 1, "trainer.max_staleness",
              "one_step_off means a staleness of exactly 1: use trainer.mode=async for more")
        set_choice(self, "pixel_path", PixelPath, "trainer.pixel_path")
        set_choice(self, "wandb_mode", WandbMode, "trainer.wandb_mode")
