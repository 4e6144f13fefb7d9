"""The SFT stage: token-mean NLL on gold traces with the learner group, then a Hugging Face checkpoint.

The loop drives the learner group the way the GRPO driver does, with the same guarantees: the first step
under ``trainer.first_step_timeout_s`` (model loads, compilation), every later one under
``trainer.step_timeout_s`` (a hung rank raises a StepTimeout naming it, with its stacks); SIGTERM/SIGINT finish
the current step, write a checkpoint and stop (``vt_ray sft`` then exits 128+signal; no HF export of a
partial stage), within ``trainer.stop_grace_s``; ``sft.resume`` continues from the last checkpoint at the
next unseen batch.

Output layout (``sft.output_dir``, default {run.output_dir}/{run.name}/sft):
    recipe.yaml        the resolved recipe
    metrics.jsonl      one line per optimizer step
    checkpoints/       resumable checkpoints (every learner.checkpoint_every steps and at the end)
    hf/                the SFT model: GRPO's initial policy and reference (model.path for the next stage)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vt_ray.common.environment import capture_environment
from vt_ray.common.progress import Progress
from vt_ray.config.loader import to_yaml
from vt_ray.config.schema import RecipeConfig
from vt_ray.learner.collate import collate
from vt_ray.learner.sft_data import (
    SftExampleBuilder,
    iter_batches,
    load_sft_samples,
    prefetched,
    sft_train_file,
    steps_per_epoch,
)
from vt_ray.trainer.stop import GracefulStop

log = logging.getLogger(__name__)


def sft_output_dir(cfg: RecipeConfig) -> Path:
    return Path(cfg.sft.output_dir or Path(cfg.run.output_dir) / cfg.run.name / "sft")


@dataclass
class SftResult:
    hf_dir: str
    steps: int
    first_loss: float | None
    last_loss: float | None
    skipped: dict[str, int] = field(default_factory=dict)
    resumed_from_step: int = 0
    stopped_early: bool = False
    """A signal stopped the stage: a checkpoint was written, no HF export (``hf_dir`` is empty)."""
    stop_signal: int = 0


def finished_sft(result: SftResult) -> Path:
    """The stage's HF checkpoint, for a caller that goes on to GRPO; a signal that stopped the stage ends the
    caller too (exit 128+signal, the checkpoint to resume from is written)."""
    if result.stopped_early:
        raise SystemExit(128 + result.stop_signal)
    return Path(result.hf_dir)


def run_sft(cfg: RecipeConfig, runtime_env: dict[str, Any] | None = None) -> SftResult:
    """Train on ``sft.train_file`` for ``sft.epochs`` and write ``<output_dir>/hf``. Needs Ray initialised."""
    from transformers import AutoProcessor

    from vt_ray.learner.group import LearnerGroup

    out = sft_output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(to_yaml(cfg))
    (out / "environment.json").write_text(json.dumps(capture_environment(), indent=1) + "\n")
    samples = load_sft_samples(sft_train_file(cfg), cfg.data.format, cfg.data.root or None, cfg.data.check_media)
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    builder = SftExampleBuilder(cfg, processor)
    per_epoch = steps_per_epoch(len(samples), cfg.sft.batch_size, cfg.sft.drop_last)
    total = per_epoch * cfg.sft.epochs
    log.info("SFT: %d samples, %d steps (%d epochs), %d learners", len(samples), total, cfg.sft.epochs,
             cfg.resources.learner.num_workers)

    tc = cfg.trainer
    group = LearnerGroup(cfg, runtime_env=runtime_env, timeout_s=tc.first_step_timeout_s)
    stop = GracefulStop(tc.stop_grace_s)
    stop.install()
    hf_dir, stopped = "", False
    try:
        group.setup(total_steps=total, model_path=cfg.model.path, lr=cfg.sft.lr, reference="none")
        ckpt_root = str(out / "checkpoints")
        position = (0, 0)
        resumed = 0
        if cfg.sft.resume:
            extra = group.load_checkpoint(ckpt_root)
            if extra is not None:
                position = (int(extra["epoch"]), int(extra["next_index"]))
                resumed = int(extra.get("step", 0))
                log.info("SFT resumes at step %d (epoch %d, sample %d)", resumed, *position)
        losses: list[float] = []
        step = resumed
        extra_state = {"epoch": position[0], "next_index": position[1], "step": step}

        def build(item: tuple[int, int, list[Any]]) -> Any:
            examples = builder.build_many(item[2])
            return collate(processor, examples) if examples else None

        with (out / "metrics.jsonl").open("a") as metrics_file, Progress("SFT", total, initial=resumed) as bar:
            batches = iter_batches(
                samples, cfg.sft.batch_size, cfg.sft.epochs, cfg.run.seed, cfg.sft.drop_last, position
            )
            started = time.perf_counter()
            for (epoch, begin, _), batch in prefetched(batches, build, cfg.sft.prefetch_batches):
                if batch is None:
                    log.warning("SFT: no usable sample in the batch at epoch %d index %d; skipped", epoch, begin)
                    continue
                waited = time.perf_counter() - started  # time the learners waited for this batch's data
                metrics = group.train_step(batch, "sft")
                if step == resumed:  # the first step paid for loads and compilation; later ones get the tight bound
                    group.timeout_s = tc.step_timeout_s
                step += 1
                losses.append(metrics["loss"])
                extra_state = {"epoch": epoch, "next_index": begin + cfg.sft.batch_size, "step": step}
                now = time.perf_counter()
                record = {"step": step, "epoch": epoch, "batch_time_s": now - started, "data_wait_s": waited,
                          **metrics}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                log.info("SFT step %d/%d loss %.4f grad_norm %.3f lr %.2e", step, total, metrics["loss"],
                         metrics["grad_norm"], metrics["lr"])
                bar.advance(loss=metrics["loss"], samples_s=len(batch) / max(now - started, 1e-9))
                if stop.requested.is_set():
                    break
                if cfg.learner.checkpoint_every and step % cfg.learner.checkpoint_every == 0:
                    group.save_checkpoint(ckpt_root, extra_state)
                started = time.perf_counter()
        group.save_checkpoint(ckpt_root, extra_state)
        stopped = stop.requested.is_set() and step < total  # a signal after the last step stops nothing
        if not stopped:
            hf_dir = group.save_hf(str(out / "hf"))
    finally:
        group.shutdown()
        stop.uninstall()
    return SftResult(
        hf_dir=hf_dir,
        steps=step,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        skipped=dict(builder.skipped.counts),
        resumed_from_step=resumed,
        stopped_early=stopped,
        stop_signal=stop.signum if stopped else 0,
    )
