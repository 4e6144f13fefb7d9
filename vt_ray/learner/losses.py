"""The loss hook between the learner and the algorithm, and the SFT loss.

A loss function gets the policy's per-token log-probs of one micro-batch and returns that micro-batch's
*share* of the mini-batch loss: the learner sums shares over micro-batches (gradient accumulation) and over
ranks (it scales by the world size to undo FSDP's gradient averaging). Normalisers therefore come from the
whole mini-batch (:class:`LossNorm`), which makes the update independent of how the mini-batch is split over
ranks and micro-batches: 2 sharded learners compute exactly what 1 learner computes.

Metrics follow the same rule (shares that sum to the mini-batch value), so a token-mean metric is
``sum(x * mask) / norm.num_tokens``.

Losses are looked up by name in :data:`LOSSES` (a :class:`~vt_ray.common.registry.Registry`): ``sft``, ``grpo``
(the algorithm module, resolved lazily), or ``package.module:factory`` for anything else. A factory takes the
recipe and returns the loss function, so hyperparameters (clip epsilon, KL coefficient) are bound once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vt_ray.common.registry import Registry
from vt_ray.learner.batch import TrainBatch


@dataclass(frozen=True)
class LossNorm:
    """Counts over the whole mini-batch (all micro-batches on all ranks), real samples only."""

    num_tokens: float
    """Response tokens (sum of response_mask: a weighted SFT token counts its weight, fractions included)."""
    num_sequences: int
    """Sequences."""


class LossFn(Protocol):
    def __call__(
        self, logprobs: torch.Tensor, batch: TrainBatch, norm: LossNorm
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``logprobs`` [B, L] aligned with ``batch.input_ids``. Returns (scalar loss share, metric shares)."""
        ...


LossFactory = Callable[[Any], LossFn]


def token_mean_share(values: torch.Tensor, batch: TrainBatch, norm: LossNorm) -> torch.Tensor:
    """This micro-batch's share of the mini-batch token mean of ``values`` over response tokens."""
    return (values * batch.response_mask).sum() / max(norm.num_tokens, 1)


def sft_loss(logprobs: torch.Tensor, batch: TrainBatch, norm: LossNorm) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-mean negative log-likelihood of the response tokens (trace + answer + <|im_end|>)."""
    loss = token_mean_share(-logprobs, batch, norm)
    return loss, {"sft/nll": loss.detach()}


LOSSES = Registry("learner loss", "loss", "vt_ray.learner.losses", ("sft", "grpo"))
"""name -> factory(recipe) -> LossFn."""


@LOSSES.register("sft")
def _sft_factory(cfg: Any) -> LossFn:
    return sft_loss


@LOSSES.register("grpo")
def _grpo_factory(cfg: Any) -> LossFn:
    from vt_ray.algo.objective import make_loss  # the GRPO math lives in vt_ray.algo

    return make_loss(cfg)


def resolve_loss(name: str, cfg: Any) -> LossFn:
    """The loss function named ``name`` (see the module docstring), bound to the recipe ``cfg``."""
    factory: LossFactory = LOSSES.get(name)
    return factory(cfg)
