"""A step's generated data as the driver passes it between phases: rollout results flattened to one row per
response (:class:`Responses`) and the scored batch the rollout phase hands to the update (:class:`StepBatch`).

Kept apart from the phases so the rollout phase (possibly on the pipeline's thread), the update and the step's
metrics share one plain data type and none of them imports another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vt_ray.data.schema import VideoSample
from vt_ray.rollout.types import RolloutResult


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
    baseline_groups: list[int] = field(default_factory=list)
    """One per response: the group its advantage baseline is taken over. Empty = ``group_ids`` (one prompt, one
    group); with ``algorithm.option_rotations`` the rotations of one prompt share a group."""
    advantages: list[float] = field(default_factory=list)
    """One per response, filled by the update (the report's rollout viewer shows them)."""
    pending_scores: Callable[[], dict[str, float]] | None = None
    """Set when the scores were sent but not waited for (sync mode without dynamic sampling: the update waits
    for them while the learners compute log-probs); :meth:`wait_scores` fills ``scored``/``scores``."""

    def wait_scores(self) -> dict[str, float]:
        """Wait for scores sent earlier, if any; returns their shaping metrics and ``time/reward_s``."""
        pending, self.pending_scores = self.pending_scores, None
        return pending() if pending is not None else {}

    def release_pixels(self) -> None:
        """Drop this step's pixel references (the object store frees the pixels once no learner call holds
        them): the driver calls it when the step is done, so rollouts kept for logging pin no pixels."""
        for r in self.results:
            if r.encoded is not None:
                r.encoded.pixels = None

    @property
    def advantage_groups(self) -> list[int]:
        """The group of each response for the advantage baseline (see ``baseline_groups``)."""
        return self.baseline_groups or self.group_ids

    def scored_tensor(self) -> torch.Tensor:
        """``scores``, once the driver has scored the responses (using them before is a bug)."""
        if self.scores is None:
            raise RuntimeError("these responses have not been scored yet")
        return self.scores

    def select_groups(self, groups: list[int]) -> Responses:
        """Only the prompts ``groups`` (indices into ``results``), renumbered 0.. in the given order (one prompt,
        one baseline group: dynamic sampling does not run with option rotations)."""
        if self.baseline_groups:
            raise ValueError("select_groups would split option-rotation groups")
        new_id = {g: i for i, g in enumerate(groups)}
        rows = [i for g in groups for i, gid in enumerate(self.group_ids) if gid == g]
        return Responses(
            results=[self.results[g] for g in groups], samples=[self.samples[g] for g in groups],
            texts=[self.texts[i] for i in rows], group_ids=[new_id[self.group_ids[i]] for i in rows],
            token_counts=[self.token_counts[i] for i in rows], truncated=[self.truncated[i] for i in rows],
            scored=[self.scored[i] for i in rows],
            scores=None if self.scores is None else self.scores[torch.tensor(rows, dtype=torch.long)],
        )

    def group_rows(self) -> dict[int, list[int]]:
        """Prompt index -> its response rows (for per-group records)."""
        return {g: [i for i, gid in enumerate(self.group_ids) if gid == g] for g in range(len(self.results))}

    @staticmethod
    def flatten(results: list[RolloutResult], samples: list[VideoSample],
                prompt_groups: list[int] | None = None) -> Responses:
        """One row per completion of ``results`` (unscored). ``prompt_groups``: the baseline group of each result
        (the option rotations of one prompt share one); None = each result its own."""
        texts, groups, tokens, truncated = [], [], [], []
        for g, r in enumerate(results):
            for c in r.completions:
                texts.append(c.text)
                groups.append(g)
                tokens.append(len(c.token_ids))
                truncated.append(c.finish_reason == "length")
        return Responses(results, samples, texts, groups, tokens, truncated,
                         baseline_groups=[] if prompt_groups is None else [prompt_groups[g] for g in groups])

    @staticmethod
    def concat(parts: list[Responses]) -> Responses:
        out = Responses([], [], [], [], [], [], [], torch.zeros(0))
        for part in parts:
            offset = len(out.results)
            out.results += part.results
            out.samples += part.samples
            out.texts += part.texts
            if part.baseline_groups:
                raise ValueError("concat would renumber option-rotation groups")
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
