"""A training step's batch held by the learner ranks: each rank's shard goes to the object store once per step.

The driver's GRPO step makes several learner calls on one batch: the old-policy and reference log-prob passes,
then one optimizer step per mini-batch and epoch. Instead of a fresh shard per call (token ids, masks, per-token
extras put again each time), :class:`vt_ray.learner.group.LearnerStep` puts each rank's static shard once, the
rank keeps it in its :class:`StepCache` under the step's key, and each call sends a :class:`StepCall`: which rows
of the cached shard, and the per-row values that are new for the call (advantages, which rows count). The log-prob
passes leave their result in the cache (``old_logprobs``/``ref_logprobs``), so no [B, L] tensor goes back to the
ranks. :func:`assemble` turns cache + call into the ``TrainBatch`` the backend's ``train_step`` always took.

Mini-batches are cut per rank (:func:`minibatch_rows`): mini-batch ``k`` is the ``k``-th slice of every rank's
shard, not the ``k``-th contiguous slice of the whole batch. Pure functions and a dict, no Ray: unit-tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vt_ray.learner.batch import TrainBatch


class StepNotCached(KeyError):
    """A call named a step this rank does not hold (never cached, already dropped, or the rank was replaced)."""

    def __init__(self, rank: int, step: str, cached: Sequence[str]) -> None:
        super().__init__(rank, step, tuple(cached))  # args alone rebuild it: it pickles back from a Ray actor
        self.rank, self.step = rank, step

    def __str__(self) -> str:
        rank, step, cached = self.args
        return f"learner rank {rank}: step {step!r} is not cached (cached: {sorted(cached)})"


@dataclass(frozen=True)
class StepCall:
    """One train call's data on one rank: rows ``[start, end)`` of the cached step shard (``start == end``: a
    zero-loss filler, the rank has no row in this mini-batch) and the per-row values new for this call."""

    step: str
    start: int
    end: int
    advantages: torch.Tensor | None = None
    """[end - start] float32, or None when the loss reads none (the shard's own then: SFT has none)."""
    keep: torch.Tensor | None = None
    """[end - start] bool: rows whose response tokens count in the loss (DAPO's overlong filter); None = all."""


def rank_sizes(total: int, ranks: int) -> list[int]:
    """Rows of each rank's shard, as :meth:`TrainBatch.split` cuts them: contiguous, sizes differing by at most
    one, the larger first."""
    base, extra = divmod(total, ranks)
    return [base + (1 if r < extra else 0) for r in range(ranks)]


def minibatch_rows(sizes: Sequence[int], parts: int) -> list[list[tuple[int, int]]]:
    """``[k][rank] -> (start, end)``: mini-batch ``k``'s rows in each rank's shard of ``sizes[rank]`` rows.

    Each rank's shard is cut into ``parts`` contiguous slices; the remainders go round-robin over the mini-batches
    (continuing from one rank to the next), so the mini-batches' total sizes differ by at most one. Every row is
    in exactly one mini-batch."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    out: list[list[tuple[int, int]]] = [[] for _ in range(parts)]
    offset = 0  # the mini-batch that takes the next remainder row
    for size in sizes:
        base, extra = divmod(size, parts)
        start = 0
        for k in range(parts):
            end = start + base + (1 if (k - offset) % parts < extra else 0)
            out[k].append((start, end))
            start = end
        offset = (offset + extra) % parts
    return out


def assemble(shard: TrainBatch, call: StepCall) -> TrainBatch:
    """The batch a backend's ``train_step`` takes for ``call``: its rows of the cached ``shard`` (with the
    log-probs the step's passes left there) and the call's advantages and kept rows; a zero-loss filler when
    the call has no row."""
    if call.start == call.end:
        filler = shard.without_loss()
        if call.advantages is not None:
            filler.advantages = torch.zeros(1, dtype=call.advantages.dtype)
        return filler
    piece = shard.select(call.start, call.end)
    rows = call.end - call.start
    if call.advantages is not None:
        if len(call.advantages) != rows:
            raise ValueError(f"{len(call.advantages)} advantages for rows [{call.start}, {call.end})")
        piece.advantages = call.advantages
    if call.keep is not None:
        if len(call.keep) != rows:
            raise ValueError(f"{len(call.keep)} keep flags for rows [{call.start}, {call.end})")
        piece.response_mask = piece.response_mask * call.keep.to(piece.response_mask.dtype)[:, None]
    return piece


class StepCache:
    """One rank's step shards by step key. The group drops a step at its end (and every step before a resume),
    so at most one step's shard is held between steps: none."""

    FIELDS = {"policy": "old_logprobs", "reference": "ref_logprobs"}  # where a pass's result is kept

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self._steps: dict[str, TrainBatch] = {}

    def put(self, step: str, shard: TrainBatch) -> None:
        self._steps[step] = shard

    def get(self, step: str) -> TrainBatch:
        if step not in self._steps:
            raise StepNotCached(self.rank, step, list(self._steps))
        return self._steps[step]

    def keep_logprobs(self, step: str, which: str, logprobs: torch.Tensor) -> None:
        """Keep a pass's [rows, L] log-probs on the step's shard (``policy`` -> ``old_logprobs``, ``reference`` ->
        ``ref_logprobs``): every later train call of the step reads its rows of them."""
        shard = self.get(step)
        if logprobs.shape != shard.input_ids.shape:
            raise ValueError(f"{which} log-probs {tuple(logprobs.shape)} for a shard of {tuple(shard.input_ids.shape)}")
        setattr(shard, self.FIELDS[which], logprobs)

    def call(self, call: StepCall) -> TrainBatch:
        return assemble(self.get(call.step), call)

    def drop(self, step: str | None = None) -> None:
        """Forget ``step`` (a step never cached is no error: dropping is cleanup), or every step."""
        if step is None:
            self._steps.clear()
        else:
            self._steps.pop(step, None)

    def keys(self) -> list[str]:
        return list(self._steps)
