"""Which checkpoint a run continues from, what the driver stores in one, and trimming the run's logs back to it.

Apart from the driver so the rules of a resume (incomplete saves ignored, corrupt ones refused, ``resume_mode``
honoured, logs after the checkpoint dropped) are read in one place; the driver only restores what they select.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vt_ray.trainer.metrics import truncate_jsonl

RUN_LOGS = ("samples.jsonl", "validation.jsonl", "metrics.jsonl", "rollouts.jsonl")
"""The run directory's per-step logs (each line carries its ``step``)."""


def checkpoint_to_resume(ckpt_root: Path, resume_mode: str, in_job: bool) -> Path | None:
    """The newest intact checkpoint under ``ckpt_root`` (``None``: start from scratch). Raises when there are
    checkpoints and ``trainer.resume_mode`` is ``never`` (unless recovering inside the same job)."""
    from vt_ray.learner.checkpoint import select

    partial = sorted(p.name for p in ckpt_root.glob(".tmp_*")) if ckpt_root.is_dir() else []
    if partial:
        print(f"[train] ignoring incomplete checkpoint(s) from an interrupted save: {partial}", flush=True)
    if not in_job and resume_mode == "never" and ckpt_root.is_dir() and any(ckpt_root.glob("step_*")):
        raise RuntimeError(f"{ckpt_root} has checkpoints and trainer.resume_mode=never: use a new run.name")
    selection = select(ckpt_root)  # newest intact one: corrupt newer ones are refused and moved aside
    for err in selection.refused:
        print(f"[train] refused {err}; falling back to an older checkpoint", flush=True)
    return selection.found


def make_driver_state(step: int, sampler_state: dict[str, Any], skip_totals: Counter[str]) -> dict[str, Any]:
    """The driver's part of a checkpoint (``trainer_state.json``'s extra state): where the data order stands."""
    return {"step": step, "sampler": sampler_state, "skip_totals": dict(skip_totals)}


def truncate_logs(run_dir: Path, step: int, names: tuple[str, ...]) -> None:
    """Drop the lines of steps after ``step`` from the logs ``names`` (they will be written again)."""
    for name in names:
        truncate_jsonl(run_dir / name, step)


def remove_logs(run_dir: Path) -> None:
    """A run starting from step 0 starts its logs afresh."""
    for name in RUN_LOGS:
        (run_dir / name).unlink(missing_ok=True)
