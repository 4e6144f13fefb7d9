"""Rollouts generated ahead of the learners: the one-step-off and bounded-staleness asynchronous modes.

A producer thread in the driver makes step batches (generate + score) in step order while the main thread trains
on earlier ones; the engines are shared, so the two meet at :meth:`RolloutPipeline.engines`: the main thread
waits for the batch in progress to finish (no request is dropped), has the engines to itself (weight push,
validation), and the producer starts its next batch with whatever version the main thread pushed.

Which policy version may generate batch ``s`` (``version`` = what the engines hold):

- ``exact`` (one-step-off): exactly ``max(s - 1, first_step)``. The main thread pushes version ``v`` only after
  batch ``v`` is made, so every batch's version is fixed by its step, whatever the timing: step ``t`` trains on
  rollouts of version ``t - 1`` (the first step after a start or resume on its own version), and a run is as
  reproducible as in sync mode.
- bounded (async): any version with ``s - version <= max_staleness``. The producer runs ahead as far as the bound
  allows and yields to a waiting push; which version made a batch depends on timing (it is recorded).

Why a thread and not Ray async actors: the driver's roles are already Ray actor groups with blocking calls,
timeouts and restarts; overlapping two of those call sequences needs only a second caller, and every batch
keeps flowing through the same code as in sync mode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class PipelineClosed(RuntimeError):
    """The pipeline was closed before the batch asked for was made."""


class RolloutPipeline(Generic[T]):
    """Makes ``produce(step, version)`` for steps ``first_step .. total_steps - 1`` in a background thread.

    ``take(step)`` returns a batch in step order (re-raising the producer's error at the step that needed the
    failed batch); ``engines(new_version)`` is the main thread's exclusive use of the engines between batches.
    """

    def __init__(self, produce: Callable[[int, int], T], first_step: int, total_steps: int, version: int,
                 max_staleness: int = 1, exact: bool = True) -> None:
        if max_staleness < 1:
            raise ValueError(f"max_staleness must be >= 1, got {max_staleness}")
        self._produce = produce
        self.first_step, self.total_steps = first_step, total_steps
        self.max_staleness, self.exact = max_staleness, exact
        self._cond = threading.Condition()
        self._version = version  # what the engines hold
        self._next = first_step  # the next batch the producer makes
        self._ready: dict[int, T] = {}
        self._error: BaseException | None = None
        self._busy = False  # the producer is using the engines
        self._held = False  # the main thread is using the engines
        self._waiting = 0  # main-thread pushes waiting for the engines (async mode yields to them)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rollout-pipeline", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        return self._version

    def _may_start(self, step: int) -> bool:
        if self._held:
            return False
        if self.exact:
            return self._version == max(step - 1, self.first_step)
        return self._waiting == 0 and step - self._version <= self.max_staleness

    def _run(self) -> None:
        step = self.first_step
        while True:
            with self._cond:
                while not self._closed and step < self.total_steps and not self._may_start(step):
                    self._cond.wait()
                if self._closed or step >= self.total_steps:
                    return
                self._busy, version = True, self._version
            try:
                item = self._produce(step, version)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread, raised where it is needed
                with self._cond:
                    self._busy, self._error = False, err
                    self._cond.notify_all()
                return
            with self._cond:
                self._busy = False
                self._ready[step] = item
                self._next = step + 1
                self._cond.notify_all()
            step += 1

    def take(self, step: int) -> T:
        """The batch of ``step``, once made (batches are taken in step order)."""
        with self._cond:
            while step not in self._ready and self._error is None and not self._closed:
                self._cond.wait()
            if step in self._ready:
                return self._ready.pop(step)
            if self._error is not None:
                raise self._error
            raise PipelineClosed(f"the rollout pipeline was closed before step {step}'s batch was made")

    @contextmanager
    def engines(self, new_version: int | None = None) -> Iterator[None]:
        """The engines to the caller alone, between batches (the one in progress finishes first). With
        ``new_version`` the caller pushes that policy version; in exact mode it first waits until the batch of
        step ``new_version`` (the last one the old version makes) is done."""
        with self._cond:
            self._waiting += 1
            try:
                while self._busy or (self.exact and new_version is not None and self._error is None
                                     and not self._closed and self._next <= min(new_version, self.total_steps - 1)):
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._held = True
        try:
            yield
            if new_version is not None:
                with self._cond:
                    self._version = new_version
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def close(self) -> None:
        """Stop making batches: the one in progress finishes (its engine requests are not dropped), then the thread
        ends. Batches made and not taken are dropped; the caller's checkpoint tells a resume to make them again."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
