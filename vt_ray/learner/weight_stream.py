"""The learner's side of the streamed weight sync: plan the policy's tensors into buckets, then gather FSDP2
shards one bucket at a time and have rank 0 broadcast each bucket to the engines
(:mod:`vt_ray.common.weight_stream` is the wire). No rank ever holds the whole model: a bucket's full tensors
exist on rank 0 only while that bucket is packed (:mod:`vt_ray.learner.shard_gather` moves each bucket's shards
in one flat transfer, the next bucket's while this one is sent, straight into the send buffer when no cast is
needed), and rank 0 keeps its send buffers (two, three when the gather writes into them) across buckets and
syncs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from vt_ray.common.weight_share import SharedBucketSender, open_sender
from vt_ray.common.weight_stream import (
    SEND_BUFFERS,
    SEND_BUFFERS_AHEAD,
    BucketSender,
    StreamGroup,
    StreamPlan,
    StreamSession,
    plan_buckets,
)
from vt_ray.learner.fsdp import tied_parameter_groups
from vt_ray.learner.shard_gather import ShardGatherer


def stream_names(model: torch.nn.Module) -> list[str]:
    """The state-dict names to send, in order: every tensor once. Of tied names (lm_head and the embedding
    under ``tie_word_embeddings``) only the first that is not ``lm_head``: loaders of tied models skip
    ``lm_head.*`` (vLLM's Qwen2 does), so the embedding's name is the one that reaches the shared tensor."""
    drop: set[str] = set()
    for names in tied_parameter_groups(model):
        keep = next((n for n in names if not n.startswith("lm_head")), names[0])
        drop.update(n for n in names if n != keep)
    return [name for name in model.state_dict() if name not in drop]


def plan_policy(model: torch.nn.Module, dtype: torch.dtype, bucket_bytes: int) -> StreamPlan:
    """Buckets of the policy's tensors (global shapes; floating ones in the serving ``dtype``, others as they
    are). The same on every rank: it depends on shapes only."""
    state = model.state_dict()
    specs = []
    for name in stream_names(model):
        tensor = state[name]
        target = dtype if tensor.is_floating_point() else tensor.dtype
        specs.append((name, tuple(tensor.shape), str(target).removeprefix("torch.")))
    return plan_buckets(specs, bucket_bytes)


GATHERS = ("flat", "staged", "per_tensor")
"""How :func:`send_policy` gathers FSDP2 shards: ``flat`` (one transfer per bucket onto rank 0,
:mod:`vt_ray.learner.shard_gather`, straight into the send buffer where no cast is needed), ``staged`` (the
same always through rank 0's staging buffers, then copied into the send buffer: the sender before that) or
``per_tensor`` (one ``full_tensor()`` all-gather per tensor, the earlier sender; ``benchmarks/weight_sync.py``
measures them side by side)."""


def send_policy(model: torch.nn.Module, plan: StreamPlan, session: StreamSession | None, rank: int,
                device: torch.device, corrupt: Callable[[int, torch.Tensor], None] | None = None,
                store: Any = None, gather: str = "flat") -> dict[str, float]:
    """:func:`send_buckets` of an FSDP2 model, its shards gathered per ``gather`` (:data:`GATHERS`)."""
    state = model.state_dict()
    mesh = next((t.device_mesh for t in state.values() if isinstance(t, DTensor) and t.device_mesh.ndim == 1), None)
    if gather not in GATHERS:
        raise ValueError(f"gather must be one of {GATHERS}, got {gather!r}")
    if gather in ("flat", "staged") and mesh is not None:
        gatherer = ShardGatherer(state, plan, mesh, device, direct=gather == "flat")
        return send_buckets(gatherer, plan, session, rank, device, corrupt, store)

    def gathered(names: list[str]) -> Iterator[torch.Tensor]:
        for name in names:
            tensor = state[name]
            yield tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # this tensor's all-gather only

    return send_buckets(gathered, plan, session, rank, device, corrupt, store)


def send_buckets(gathered: Callable[[list[str]], Iterator[torch.Tensor]], plan: StreamPlan,
                 session: StreamSession | None, rank: int, device: torch.device,
                 corrupt: Callable[[int, torch.Tensor], None] | None = None, store: Any = None) -> dict[str, float]:
    """Collective over the learner group: every rank gathers each bucket's tensors (``gathered(names)`` yields
    the full tensors of those names, in order, running the backend's collectives as it goes); a rank given a
    ``session`` (rank 0; with ``ipc`` sessions every rank that has engines on its GPU or node) casts them to the
    plan's dtypes and delivers the bucket: a broadcast, or shared buffers (:mod:`vt_ray.common.weight_share`).
    A :class:`ShardGatherer` that can is given the broadcast's send buffers to gather into (no second copy).
    Returns this rank's timings: the group join, gathering and packing (``pack_s``) and the time left waiting on
    the wire (``wire_wait_s``)."""
    import time

    timings = {"join_s": 0.0, "pack_s": 0.0, "wire_wait_s": 0.0}
    started = time.perf_counter()
    sender: BucketSender | SharedBucketSender | None = None
    failure: Exception | None = None
    ahead = isinstance(gathered, ShardGatherer) and gathered.writes_into_sender
    if session is not None:
        try:
            sender = open_sender(StreamGroup(session, 0, store), plan, device,
                                 SEND_BUFFERS_AHEAD if ahead else SEND_BUFFERS)
        except Exception as err:  # an engine never joined: keep gathering with the peers, then raise
            failure = err
    if ahead and isinstance(sender, BucketSender):  # not ipc: its ack order leaves no buffer free ahead
        assert isinstance(gathered, ShardGatherer)
        gathered.into = sender.buffer
    timings["join_s"] = time.perf_counter() - started
    with torch.no_grad():
        for index, bucket in enumerate(plan.buckets):
            t0 = time.perf_counter()
            tensors = gathered([slot.name for slot in bucket.tensors])
            if sender is not None and failure is None:
                try:
                    sender.send(index, tensors, corrupt)  # cast and packed one tensor at a time
                except Exception as err:  # a receiver died mid-stream: rank 0 must not leave the all-gathers
                    failure = err
                    sender.abort()  # but the engines still waiting fail now, not after weight_sync_timeout_s
                    if isinstance(gathered, ShardGatherer):
                        gathered.into = None  # the rest of the gathers into staging buffers
            for _ in tensors:  # every rank takes part in every all-gather (other ranks, and rank 0 after a failure)
                pass
            timings["pack_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if sender is not None and failure is None:
            try:
                sender.finish()
            except Exception as err:
                failure = err
                sender.abort()
        timings["wire_wait_s"] = time.perf_counter() - t0
    if failure is not None:
        raise failure
    return timings


def probe_logprobs(model: torch.nn.Module, processor: Any, text: str, device: torch.device) -> list[float]:
    """Log-prob of each token of ``text`` after the first under the policy (no grad, float64 softmax):
    the reference the engines' weight probe is compared with, without a copy of the model anywhere else.
    Collective (an FSDP2 forward)."""
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"].to(device)  # [1, T]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [T, V]
    return logits[:-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0].tolist()  # [T-1]
