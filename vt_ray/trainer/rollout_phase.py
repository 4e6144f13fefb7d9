"""The rollout half of a training step: draw prompts, generate (skipped videos replaced), score, shape the
scores, and with DAPO dynamic sampling refill until enough groups are informative.

Apart from the driver because in the asynchronous modes it runs on the pipeline's thread while the main thread
trains: it touches only the sampler and the rollout and reward groups it is given, never the trainer. The score
shaping (:func:`shape_scores`) is a pure function of the recipe and the scored responses.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vt_ray.config.schema import RecipeConfig
from vt_ray.data.schema import VideoSample
from vt_ray.rollout.types import RolloutResult
from vt_ray.trainer.responses import Responses, StepBatch
from vt_ray.trainer.sampler import PromptSampler
from vt_ray.trainer.settings import sampling_for_training, step_seed

log = logging.getLogger(__name__)
MAX_REFILL_ROUNDS = 3


def shape_scores(cfg: RecipeConfig, data: Responses, shuffled_scored: list[dict[str, float]],
                 shuffled_groups: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
    """Total rewards -> the scores the advantages use: non-finite values zeroed and counted, then DAPO's soft
    overlong punishment and T-GRPO's temporal bonus when the recipe turns them on."""
    from vt_ray.algo.shaping import finite_scores, soft_overlong_penalty, tgrpo_bonus

    a = cfg.algorithm
    scores, bad = finite_scores([s["total"] for s in data.scored])
    metrics = {"reward/nonfinite": float(bad)}
    if a.overlong_buffer_len > 0:
        penalty = soft_overlong_penalty(torch.tensor(data.token_counts), cfg.rollout.max_tokens,
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


@dataclass
class RolloutPhase:
    """One step's rollouts from ``sampler`` through the ``rollout`` and ``rewards`` groups (made afresh for each
    batch, so a restarted role or a reset sampler is always the one used)."""

    cfg: RecipeConfig
    sampler: PromptSampler[VideoSample]
    rollout: Any
    rewards: Any
    defer_scoring: bool = False
    """Send the rewards and let the update wait for them (``Responses.pending_scores``) while the learners
    compute log-probs. Ignored with DAPO dynamic sampling: its refill needs the scores before the batch."""

    @property
    def deferred(self) -> bool:
        return self.defer_scoring and not self.cfg.algorithm.dynamic_sampling

    def make_batch(self, step: int, version: int) -> StepBatch:
        """The rollout phase of ``step`` (generate, score, shape) on the engines' policy ``version``."""
        self.rollout.reseed(step_seed(self.cfg, step))
        data, skipped, metrics, (rollout_s, reward_s) = self.collect(step)
        return StepBatch(step, version, data, skipped, metrics, rollout_s, reward_s, self.sampler.state_dict())

    def collect(self, step: int) -> tuple[Responses, Counter[str], dict[str, float], tuple[float, float]]:
        """This step's scored responses. With DAPO dynamic sampling, keep only groups with unequal rewards and
        refill from further prompts (``algorithm.max_refill_rounds`` extra rounds at most; every draw comes from
        the resumable sampler, so a resumed run draws the same prompts); short batches are counted."""
        a, want = self.cfg.algorithm, self.cfg.trainer.prompts_per_step
        factor = a.oversample_factor if a.dynamic_sampling else 1.0
        first, skipped, metrics = self.round(self.sampler.take(math.ceil(want * factor)), step)
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
            data, more_skipped, round_metrics = self.round(self.sampler.take(math.ceil((want - have) * factor)), step)
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

    def round(self, prompts: list[VideoSample], step: int) -> tuple[Responses | None, Counter[str], dict[str, float]]:
        """Generate (skips refilled), score and shape one round of prompts. Returns (responses with ``scored`` and
        ``scores``, skip counts, metrics incl. time/rollout_s and time/reward_s of this round)."""
        t0 = time.perf_counter()
        results, samples, skipped, prompt_groups = self.generate(prompts, step)
        t1 = time.perf_counter()
        if not results:
            return None, skipped, {"time/rollout_s": t1 - t0, "time/reward_s": 0.0}
        data = Responses.flatten(results, samples, prompt_groups)
        finish = self.score(data, results, samples)
        metrics = {"time/rollout_s": t1 - t0}
        if self.deferred:
            data.pending_scores = finish
            metrics["time/reward_s"] = 0.0  # the update reports it once it waited for the scores
        else:
            metrics.update(finish())
        return data, skipped, metrics

    def score(self, data: Responses, results: list[RolloutResult], samples: list[VideoSample]
              ) -> Callable[[], dict[str, float]]:
        """Send ``data``'s responses (and T-GRPO's shuffled ones) to the scorers. The returned call waits for the
        scores, fills ``data.scored``/``data.scores`` (shaped) and returns the shaping metrics and
        ``time/reward_s`` (sending to scores received)."""
        started = time.perf_counter()
        targets = [samples[g].reward_target() for g in data.group_ids]
        shuffled_groups = [g for g, r in enumerate(results) for _ in r.shuffled_completions]
        shuffled_texts = [c.text for r in results for c in r.shuffled_completions]
        shuffled_targets = [samples[g].reward_target() for g in shuffled_groups]
        texts, all_targets = data.texts + shuffled_texts, targets + shuffled_targets
        if self.deferred:
            wait = self.rewards.submit(texts, all_targets)
        else:
            scored = self.rewards.score(texts, all_targets)
            wait = lambda: scored  # noqa: E731

        def finish() -> dict[str, float]:
            all_scored = wait()
            data.scored, shuffled_scored = all_scored[: len(data.texts)], all_scored[len(data.texts):]
            metrics = {"time/reward_s": time.perf_counter() - started}
            data.scores, shaping = shape_scores(self.cfg, data, shuffled_scored, shuffled_groups)
            metrics.update(shaping)
            return metrics

        return finish

    def generate(self, first: list[VideoSample], step: int
                 ) -> tuple[list[RolloutResult], list[VideoSample], Counter[str], list[int] | None]:
        """Responses for ``len(first)`` prompts, each under its ``algorithm.option_rotations`` option orders:
        skipped samples are counted (once per prompt), remembered and replaced. Returns (results, the sample
        each result answers, skip counts, each result's prompt index, i.e. its baseline group; None without
        rotations)."""
        k, want = self.cfg.algorithm.option_rotations, len(first)
        asked: dict[str, tuple[VideoSample, str]] = {}  # uid of a rotation -> (the rotation, its prompt's uid)
        results: list[RolloutResult] = []
        skipped: Counter[str] = Counter()
        todo = first
        for _ in range(MAX_REFILL_ROUNDS + 1):
            rotations = [(v, s.uid) for s in todo for v in s.option_rotations(k)]
            asked.update((v.uid, (v, base)) for v, base in rotations)
            out = self.rollout.generate([v for v, _ in rotations], sampling_for_training(self.cfg, step),
                                        learner_inputs=self.cfg.trainer.pixel_path == "rollout")
            lost = {asked[s.uid][1]: s for s in out.skipped}  # a prompt loses all its rotations
            results += [r for r in out.results if asked[r.uid][1] not in lost]
            for base, s in lost.items():
                self.sampler.mark_skipped(base, s.reason)
                skipped[s.reason] += 1
                log.warning("skipped %s (%s): %s", s.video, s.reason, s.detail)
            prompts = list(dict.fromkeys(asked[r.uid][1] for r in results))  # in order of first result
            if len(prompts) >= want or not lost:
                break
            todo = self.sampler.take(want - len(prompts))
        index = {base: i for i, base in enumerate(prompts)}
        groups = [index[asked[r.uid][1]] for r in results] if k > 1 else None
        return results, [asked[r.uid][0] for r in results], skipped, groups
