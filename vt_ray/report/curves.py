"""Training curves from ``metrics.jsonl`` as matplotlib PNGs, each against step and against wall clock.

Wall clock is the run's own cumulative time (``time/step_s`` plus ``time/val_s`` of each logged step, in step
order), so it stays meaningful across a resume and does not count time the run was not running. A series is
drawn only where its key is logged (validation keys only at validation steps: drawn with markers).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
from matplotlib.ticker import MaxNLocator  # noqa: E402

# (title, keys or key prefixes ending in "/"): the curves users look at, in the order they look at them.
CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Train reward by part", ("reward/total", "reward/accuracy", "reward/format", "reward/temporal_iou",
                              "reward/caption_similarity", "reward/length_penalty")),
    ("Validation reward by part", ("val/total", "val/accuracy", "val/format", "val/temporal_iou",
                                   "val/caption_similarity", "val/length_penalty")),
    ("Accuracy and format rate", ("reward/accuracy", "val/accuracy", "trace/valid_share", "val/valid_share")),
    ("Grounding (mean IoU of <time> vs gold)", ("reward/temporal_iou", "val/temporal_iou")),
    ("KL and entropy", ("actor/kl_loss", "actor/pg_ppo_kl", "actor/entropy", "algo/kl_in_reward")),
    ("Response length (tokens)", ("response/length_mean", "response/length_max")),
    ("Truncated share and clip fraction", ("response/truncated_share", "actor/pg_clipfrac",
                                           "actor/pg_clipfrac_lower")),
    ("Policy loss and grad norm", ("actor/pg_loss", "actor/grad_norm")),
    ("Engine vs learner log-prob mismatch", ("rollout/engine_learner_abs_diff_mean",
                                              "rollout/engine_learner_abs_diff_max",
                                              "rollout/learner_logprob_abs_diff", "rollout/probe_logprob_abs_diff")),
    ("Time per phase (s)", ("time/rollout_s", "time/reward_s", "time/logprobs_s", "time/update_s",
                            "time/weight_sync_s", "time/val_s", "time/step_s")),
    # trainer.mode one_step_off / async: what the learners and the weight push waited for, how stale the batches
    ("Asynchronous pipeline", ("rollout/staleness", "time/rollout_wait_s", "time/engines_wait_s")),
)
SFT_CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SFT loss", ("loss",)),
    ("SFT grad norm and learning rate", ("grad_norm", "lr")),
)


@dataclass
class Curve:
    title: str
    keys: list[str]  # the keys actually drawn
    png_base64: str
    file_name: str


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def wall_clock(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Cumulative seconds at the end of each row's step (rows in step order)."""
    total, out = 0.0, []
    for r in rows:
        total += (_number(r.get("time/step_s")) or 0.0) + (_number(r.get("time/val_s")) or 0.0)
        out.append(total)
    return out


def _series(rows: Sequence[dict[str, Any]], key: str, xs: Sequence[float]) -> tuple[list[float], list[float]]:
    px, py = [], []
    for r, x in zip(rows, xs):
        y = _number(r.get(key))
        if y is not None:
            px.append(x)
            py.append(y)
    return px, py


def _figure_png(rows: Sequence[dict[str, Any]], title: str, keys: Sequence[str], with_clock: bool) -> bytes:
    steps = [float(r.get("step", i)) for i, r in enumerate(rows)]
    axes_x = [("step", steps)] + ([("wall clock (s, run time)", wall_clock(rows))] if with_clock else [])
    fig, axes = plt.subplots(1, len(axes_x), figsize=(3.6 * len(axes_x), 2.5), squeeze=False)
    for ax, (label, xs) in zip(axes[0], axes_x):
        for key in keys:
            px, py = _series(rows, key, xs)
            sparse = len(px) < len(rows) or len(px) <= 2
            ax.plot(px, py, marker="o" if sparse else None, markersize=3, linewidth=1.4, label=key)
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if label == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_title(title, fontsize=10, loc="left")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def render_curves(rows: Sequence[dict[str, Any]], groups: Sequence[tuple[str, Sequence[str]]] = CURVES,
                  with_clock: bool = True, prefix: str = "") -> list[Curve]:
    """One PNG per group that has at least one logged key; groups with none are left out."""
    out = []
    for i, (title, wanted) in enumerate(groups):
        keys = [k for k in wanted if any(_number(r.get(k)) is not None for r in rows)]
        if not keys:
            continue
        png = _figure_png(rows, title, keys, with_clock)
        out.append(Curve(title, keys, base64.b64encode(png).decode(), f"{prefix}curve_{i:02d}.png"))
    return out
