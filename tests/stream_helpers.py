"""Streaming weights into an engine from a sender thread of the test process (the learner rank 0's role)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from vt_ray.common.weight_share import open_sender
from vt_ray.common.weight_stream import StreamGroup, StreamPlan, StreamSession, plan_buckets
from vt_ray.learner.rendezvous import free_port


def mixed_tensors(layers: int = 12) -> dict[str, torch.Tensor]:
    """Tensors of mixed shapes and dtypes, one larger than a 4 KB bucket (a bucket of its own)."""
    gen = torch.Generator().manual_seed(0)
    out = {f"layers.{i}.w": torch.randn(30 + 7 * i, 5, generator=gen) for i in range(layers)}
    out["big"] = torch.randn(300, 100, generator=gen)
    out["steps"] = torch.arange(7, dtype=torch.int64)
    out["half"] = torch.randn(9, generator=gen).bfloat16()
    return out


def plan_of(state: dict[str, torch.Tensor], bucket_bytes: int) -> StreamPlan:
    return plan_buckets([(k, v.shape, str(v.dtype).removeprefix("torch.")) for k, v in state.items()], bucket_bytes)


def stream_to(engine: Any, state: dict[str, torch.Tensor], version: int, bucket_bytes: int,
              corrupt: Callable[[int, torch.Tensor], None] | None = None, backend: str = "gloo"
              ) -> BaseException | None:
    """``engine.receive_weights`` in a thread while this thread sends ``state`` (a broadcast over ``backend``
    gloo, or ``ipc``: shared buffers); the engine's error, if any."""
    plan = plan_of(state, bucket_bytes)
    session = StreamSession("127.0.0.1", free_port(), f"v{version}", 2, timeout_s=30, backend=backend)
    outcome: list[BaseException | None] = [None]

    def receive() -> None:
        try:
            engine.receive_weights(vars(session), 1, plan.to_dict(), version)
        except Exception as err:
            outcome[0] = err

    thread = threading.Thread(target=receive)
    thread.start()
    sender = open_sender(StreamGroup(session, 0), plan, "cpu")
    for index, bucket in enumerate(plan.buckets):
        sender.send(index, [state[t.name] for t in bucket.tensors], corrupt)
    sender.finish()
    thread.join(timeout=60)
    assert not thread.is_alive()
    return outcome[0]


