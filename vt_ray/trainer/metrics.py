"""Step metrics to the console, a JSONL file and Weights & Biases (offline unless the recipe says online).

The JSONL file is the source of truth for tests and plots; a resumed run truncates it to the checkpointed step
so no step appears twice.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

from vt_ray.common.progress import echo

log = logging.getLogger(__name__)

CONSOLE_KEYS = (
    "reward/total",
    "reward/accuracy",
    "reward/format",
    "val/accuracy",
    "trace/valid_share",
    "actor/pg_loss",
    "actor/kl_loss",
    "actor/entropy",
    "actor/pg_clipfrac",
    "response/length_mean",
    "time/step_s",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    def __init__(self, run_dir: Path, run_name: str, config: dict[str, Any], wandb_mode: str = "offline",
                 wandb_project: str = "vt_ray", wandb_entity: str = "", resume_step: int = 0) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._wandb_run: Any = None
        self._wandb_start: threading.Thread | None = None
        self._pending: list[tuple[int, dict[str, float]]] = []
        if wandb_mode != "disabled":
            # W&B's start (a service process and the run's files: 1.5 s on a quiet 2-core machine, 3-11 s beside
            # the roles) runs in a thread, off the driver's path: records logged before it is up wait in
            # ``_pending`` and reach W&B in order once it is (at the latest in close()).
            self._wandb_start = threading.Thread(
                target=self._start_wandb, name="wandb-init", daemon=True,
                args=(run_dir, run_name, config, wandb_mode, wandb_project, wandb_entity))
            self._wandb_start.start()

    def _start_wandb(self, run_dir: Path, run_name: str, config: dict[str, Any], mode: str, project: str,
                     entity: str) -> None:
        try:
            import wandb

            self._wandb_run = wandb.init(
                project=project, entity=entity or None, name=run_name, dir=str(run_dir),
                mode=mode,  # type: ignore[arg-type]  # a str: online | offline | disabled
                config=config, id=f"{run_name}", resume="allow",
            )
        except Exception as err:  # logging must never stop training; the JSONL file is always there
            log.warning("W&B disabled: %s", err)

    @property
    def _wandb(self) -> Any:
        """The W&B run once started (None when disabled or it failed to start)."""
        if self._wandb_start is not None:
            self._wandb_start.join()
            self._wandb_start = None
        return self._wandb_run

    def _truncate_after(self, step: int) -> None:
        truncate_jsonl(self.path, step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb_start is not None or self._wandb_run is not None:
            self._pending.append((step, {k: v for k, v in metrics.items() if isinstance(v, int | float)}))
            self._flush_wandb(wait=False)
        shown = "  ".join(
            f"{k.replace('reward/', '').replace('/', '_')}={metrics[k]:.3f}"
            for k in CONSOLE_KEYS if isinstance(metrics.get(k), int | float)
        )
        echo(f"[step {step}] {shown}")

    def _flush_wandb(self, wait: bool) -> None:
        """Send the pending records to W&B once it has started (``wait``: wait for its start)."""
        if not wait and self._wandb_start is not None and self._wandb_start.is_alive():
            return
        run = self._wandb
        for step, record in self._pending if run is not None else []:
            run.log(record, step=step)
        self._pending.clear()

    def close(self) -> None:
        self._flush_wandb(wait=True)
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb_run = None


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop records of steps after ``step`` (written after the checkpoint a run resumes from). A line a kill
    cut short does not parse: it was the last write, after the checkpoint, and is dropped too."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and _step_of(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def read_metrics(path: str | Path, skip_unparsable: bool = False) -> list[dict[str, Any]]:
    """Every record. ``skip_unparsable``: drop lines that are not JSON (a run killed mid-write leaves its last
    line cut short) instead of raising, for readers that plot a run still going or killed."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_unparsable:
                raise
    return rows
