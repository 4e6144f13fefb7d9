"""The rollout pipeline of the asynchronous trainer modes, on plain threads (no Ray): which policy version makes
each batch, the staleness bound, the engines never shared between a batch and a weight push, errors raised at
the step that needs the failed batch, and a close that ends the thread."""

from __future__ import annotations

import threading

import pytest

from vt_ray.trainer.pipeline import PipelineClosed, RolloutPipeline


class Engines:
    """Records who uses the engines; any overlap of a batch with the main thread's use is a failure."""

    def __init__(self, fail_at: int = -1) -> None:
        self.lock = threading.Lock()
        self.users: set[str] = set()
        self.overlaps: list[str] = []
        self.made: dict[int, int] = {}  # step -> version
        self.fail_at = fail_at

    def enter(self, who: str) -> None:
        with self.lock:
            if self.users:
                self.overlaps.append(f"{who} while {self.users}")
            self.users.add(who)

    def leave(self, who: str) -> None:
        with self.lock:
            self.users.discard(who)

    def produce(self, step: int, version: int) -> tuple[int, int]:
        self.enter("producer")
        try:
            if step == self.fail_at:
                raise ValueError(f"batch {step} failed")
            self.made[step] = version
            return step, version
        finally:
            self.leave("producer")


def train(pipe: RolloutPipeline, engines: Engines, first: int, total: int) -> list[tuple[int, int]]:
    """The driver's loop: take a batch, 'update', push the next version while holding the engines."""
    trained = []
    for step in range(first, total):
        trained.append(pipe.take(step))
        with pipe.engines(new_version=step + 1):
            engines.enter("main")
            engines.leave("main")
    return trained


@pytest.mark.parametrize("first", [0, 3])
def test_one_step_off_trains_each_step_on_the_previous_version_whatever_the_timing(first: int) -> None:
    for _ in range(20):  # many interleavings of the two threads
        engines = Engines()
        pipe = RolloutPipeline(engines.produce, first_step=first, total_steps=first + 8, version=first)
        trained = train(pipe, engines, first, first + 8)
        pipe.close()
        assert [s for s, _ in trained] == list(range(first, first + 8))
        # the first batch after a start or resume is on its own version, every later one exactly one behind
        assert [v for _, v in trained] == [first] + list(range(first, first + 7))
        assert engines.overlaps == []


@pytest.mark.parametrize("bound", [1, 2, 3])
def test_async_mode_never_exceeds_its_staleness_bound(bound: int) -> None:
    for _ in range(20):
        engines = Engines()
        pipe = RolloutPipeline(engines.produce, first_step=0, total_steps=10, version=0, max_staleness=bound,
                               exact=False)
        trained = train(pipe, engines, 0, 10)
        pipe.close()
        assert [s for s, _ in trained] == list(range(10))
        staleness = [s - v for s, v in trained]
        assert all(0 <= d <= bound for d in staleness), staleness
        assert engines.overlaps == []


def test_a_failed_batch_is_raised_at_the_step_that_needs_it_and_earlier_batches_still_train() -> None:
    engines = Engines(fail_at=2)
    pipe = RolloutPipeline(engines.produce, first_step=0, total_steps=6, version=0)
    assert pipe.take(0) == (0, 0)
    with pipe.engines(new_version=1):
        pass
    assert pipe.take(1) == (1, 0)
    with pipe.engines(new_version=2):  # does not wait for a batch that will never come
        pass
    with pytest.raises(ValueError, match="batch 2 failed"):
        pipe.take(2)
    pipe.close()


def test_close_ends_a_waiting_producer_and_take_says_so() -> None:
    engines = Engines()
    pipe = RolloutPipeline(engines.produce, first_step=0, total_steps=5, version=0)
    assert pipe.take(0) == (0, 0)  # batch 1 follows on version 0; batch 2 waits for version 1, never pushed
    pipe.close()
    assert not pipe._thread.is_alive()
    assert sorted(engines.made) == [0, 1]
    with pytest.raises(PipelineClosed, match="step 2"):
        pipe.take(2)


def test_a_failed_push_keeps_the_old_version() -> None:
    engines = Engines()
    pipe = RolloutPipeline(engines.produce, first_step=0, total_steps=4, version=0)
    pipe.take(0)
    with pytest.raises(RuntimeError), pipe.engines(new_version=1):
        raise RuntimeError("push failed")
    assert pipe.version == 0
    pipe.close()


def test_bad_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_staleness"):
        RolloutPipeline(lambda s, v: None, 0, 1, 0, max_staleness=0)
