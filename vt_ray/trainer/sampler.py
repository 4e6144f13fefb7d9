"""Deterministic, resumable prompt order.

The order is a pure function of (seed, epoch): a resumed run draws exactly the samples the uninterrupted run
would have, because the whole state is (epoch, position, skipped uids) and goes into every checkpoint. Samples
found unusable (bad video, over budget) are remembered so a resume does not retry them, and a batch is refilled
from the sampler to keep its size.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0
    consumed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # uid -> reason


class PromptSampler(Generic[T]):
    def __init__(self, items: Sequence[T], seed: int, uid: Any = lambda s: s.uid) -> None:
        if not items:
            raise ValueError("the training split is empty")
        self.items, self.seed, self._uid = list(items), seed, uid
        self.state = SamplerState()
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self) -> T:
        for _ in range(2 * len(self.items) + 1):
            if self.state.position >= len(self._order):
                self.state.epoch += 1
                self.state.position = 0
                self._order = self._epoch_order(self.state.epoch)
            item = self.items[self._order[self.state.position]]
            self.state.position += 1
            if self._uid(item) not in self.state.skipped:
                self.state.consumed += 1
                return item
        raise RuntimeError(f"every one of the {len(self.items)} training samples has been skipped as unusable")

    def take(self, n: int) -> list[T]:
        return [self.next() for _ in range(n)]

    def mark_skipped(self, uid: str, reason: str) -> None:
        self.state.skipped[uid] = reason

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {"epoch": s.epoch, "position": s.position, "consumed": s.consumed, "skipped": dict(s.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = SamplerState(state["epoch"], state["position"], state["consumed"], dict(state["skipped"]))
        self._order = self._epoch_order(self.state.epoch)
