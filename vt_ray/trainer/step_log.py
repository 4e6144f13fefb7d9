"""What a finished training step leaves behind besides the new policy: its row of metrics (rewards, trace
validity, lengths, data counts, timings) and its records (the ``samples.jsonl`` ledger of the prompts it trained
on, and groups for the report's rollout viewer).

Pure functions of the step's batch and counters (plus the file writes), apart from the driver so the loop reads
as phases and every logged key is spelled in one place.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vt_ray.rewards.composite import reward_metrics, reward_metrics_by_type
from vt_ray.trace import parse_trace
from vt_ray.trainer.responses import StepBatch
from vt_ray.trainer.rollout_log import RolloutLog, group_record


def step_metrics(batch: StepBatch, timings: dict[str, float], skip_totals: Counter[str], actor_restarts: int,
                 sync_s: float, overlap: dict[str, float] | None) -> dict[str, float]:
    """The step's data and reward figures; ``overlap`` holds the asynchronous modes' version and wait figures."""
    data, scored = batch.data, batch.data.scored
    parsed = [parse_trace(t) for t in data.texts]
    metrics = reward_metrics(scored)
    metrics.update(reward_metrics_by_type(scored, [data.samples[g].answer_type for g in data.group_ids]))
    metrics.update({
        "trace/valid_share": sum(p.violations == () for p in parsed) / len(parsed),
        "response/length_mean": sum(data.token_counts) / len(data.token_counts),
        "response/length_max": float(max(data.token_counts)),
        "response/truncated_share": sum(data.truncated) / len(data.truncated),
        "data/prompts": float(len(set(data.advantage_groups))),  # an option-rotation group is one prompt
        "data/option_orders": float(len(data.results)),  # = data/prompts x algorithm.option_rotations
        "data/responses": float(len(data.texts)),
        "data/consumed_total": float(batch.sampler_after["consumed"]),
        "rollout/actor_restarts": float(actor_restarts),
        "time/rollout_s": batch.rollout_s,
        "time/reward_s": batch.reward_s,
        "time/weight_sync_s": sync_s,
        **(overlap or {}),
        **timings,
        **{f"data/skipped_{k}": float(v) for k, v in skip_totals.items()},
    })
    return metrics


def write_step_records(run_dir: Path, step: int, batch: StepBatch, rollout_log: RolloutLog, rollouts_per_step: int
                       ) -> None:
    """The ledger line of trained prompt uids, and (when due) the first groups for the rollout viewer."""
    data = batch.data
    with (run_dir / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"step": step, "uids": [r.uid for r in data.results],
                            "policy_version": batch.policy_version}) + "\n")
    if rollout_log.due(step):
        rows = data.group_rows()
        rollout_log.write([
            group_record(step, "train", r, data.samples[g], [data.scored[i] for i in rows[g]],
                         [data.advantages[i] for i in rows[g]])
            for g, r in enumerate(data.results[: rollouts_per_step])
        ])
