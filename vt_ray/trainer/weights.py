"""Getting the trained policy into the rollout engines after each update (and on resume), and checking that it
arrived: the version every engine reports and, on probe syncs, the engines' log-probs of a fixed text.

Its own module because the sync is a protocol between two roles with its own settings (stream or blob, probe
schedule, tolerance) and a cached reference model; the driver only says when.
"""

from __future__ import annotations

import time
from typing import Any

from vt_ray.common.errors import ConfigError
from vt_ray.config.schema import RecipeConfig
from vt_ray.testing.faults import crash_point


def weight_sync_mode(cfg: RecipeConfig) -> str:
    """``rollout.weight_sync`` resolved: ``auto`` streams, except in colocated GPU layouts (an engine on the
    learner's own GPU cannot join an NCCL group with it), which get ``ipc`` (shared CUDA buffers) where the
    layout allows it and blobs otherwise, and for engines without the streaming methods, which get blobs."""
    from vt_ray.config.backends import ROLLOUT_ENGINES
    from vt_ray.config.schema import ipc_layout_problem

    mode = cfg.rollout.weight_sync
    engine = ROLLOUT_ENGINES.get(cfg.rollout.backend)  # a class, or a built-in's factory that says it
    streams = getattr(engine, "streams_weights", None) or all(
        callable(getattr(engine, m, None)) for m in ("check_weight_plan", "receive_weights"))
    if mode == "auto":
        if not streams:
            return "blob"
        if cfg.resources.colocate:
            return "ipc" if ipc_layout_problem(cfg.resources, cfg.rollout) is None else "blob"
        return "stream"
    if mode in ("stream", "ipc") and not streams:
        raise ConfigError("rollout.weight_sync", f"{mode} needs an engine with check_weight_plan and "
                          f"receive_weights (vt_ray.rollout.engine_api.StreamingRolloutEngine); rollout.backend="
                          f"{cfg.rollout.backend!r} has not: use auto or blob")
    return str(mode)


def stream_backend(res: Any, mode: str = "stream") -> str:
    """The session backend: ``ipc`` for shared-handle syncs; otherwise NCCL when both the learners and the
    engines hold GPUs, else gloo (CPU runs, and mixed layouts)."""
    if mode == "ipc":
        return "ipc"
    return "nccl" if res.learner.gpus_per_worker > 0 and res.rollout.gpus_per_worker > 0 else "gloo"


class WeightSync:
    """Pushes the learners' policy into the engines; holds the blob path's float32 probe model between syncs."""

    def __init__(self, cfg: RecipeConfig) -> None:
        self.cfg = cfg
        self.mode = weight_sync_mode(cfg)
        self.streamed = self.mode in ("stream", "ipc")  # weights learner -> engines without the driver
        self._probe_model: Any = None

    def push(self, learner: Any, rollout: Any, version: int, probe: bool = False) -> tuple[float, dict[str, float]]:
        """Push the policy into every rollout engine and verify it took (field-conventions C8 item 6).

        Streamed (``rollout.weight_sync``): learner rank 0 broadcasts the policy in buckets to the engines and
        the driver carries only the plan; blob: one safetensors blob through the driver. Raises if the push fails
        (``WeightSyncError`` naming rank and tensor; blob pushes put every engine back on the previous version,
        streams are retried once and otherwise leave the failed engines refusing to generate), if an engine
        does not then report ``version`` as its weight version (``WeightVersionMismatch`` naming the ranks), or,
        on probe syncs, if an engine's log-probs of a fixed text differ from the reference (the learner's own
        forward when streamed, a float32 transformers forward on the blob otherwise) by more than
        ``rollout.probe_tolerance`` (``WeightProbeMismatch``). Probe syncs: every ``rollout.probe_every``-th
        version, and whenever ``probe`` (the resume sync), when ``probe_every`` > 0.

        Returns the export + push + version check seconds, and the metrics ``rollout/weight_version`` and, on
        probe syncs, ``rollout/probe_logprob_abs_diff`` and ``time/weight_probe_s``.
        """
        from vt_ray.rollout import weight_sync

        start = time.perf_counter()
        if self.cfg.rollout.enable_sleep_mode:
            rollout.wake_up()
        metrics = {"rollout/weight_version": float(version)}
        blob = None
        if self.streamed:
            crash_point("trainer.mid_weight_sync", version)
            sent = rollout.stream_weights(version)
            metrics.update({f"time/weight_{k}": v for k, v in sent.items() if k.endswith("_s")})
        else:
            blob = learner.export_safetensors(self.cfg.model.dtype)
            crash_point("trainer.mid_weight_sync", version)
            rollout.update_weights(blob, version=version)
        weight_sync.check_weight_versions(rollout.weight_versions(), version)
        elapsed = time.perf_counter() - start
        every = self.cfg.rollout.probe_every
        if every > 0 and (probe or version % every == 0):
            started = time.perf_counter()
            engines = rollout.probe_logprobs_all(weight_sync.PROBE_TEXT)
            if blob is None:  # streamed: the learner's own forward is the reference (no model copy here)
                reference = learner.probe_logprobs(weight_sync.PROBE_TEXT)
            else:
                if self._probe_model is None:  # one float32 model copy, loaded on first use
                    self._probe_model = weight_sync.WeightProbe(self.cfg.model.path)
                reference = self._probe_model.reference(blob)
            metrics["rollout/probe_logprob_abs_diff"] = weight_sync.compare_probe(
                reference, engines, self.cfg.rollout.probe_tolerance, version
            )
            metrics["time/weight_probe_s"] = time.perf_counter() - started
        return elapsed, metrics
