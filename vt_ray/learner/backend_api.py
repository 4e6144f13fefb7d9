"""The contract between the learner group and a training backend, and how a recipe names one.

A backend is a Ray actor class ``Backend(cfg: LearnerRoleConfig, rank: int, world_size: int)`` (the learner's view
of the recipe, :mod:`vt_ray.config.roles`) with the methods of
:class:`LearnerBackend`; :class:`vt_ray.learner.group.LearnerGroup` runs ``world_size`` of them and speaks only
this contract (sharding the batch, one deadline per call, errors naming the rank). The built-in backend is
``fsdp2`` (:class:`vt_ray.learner.worker.LearnerWorker`: torch FSDP2, gloo on CPU and NCCL on GPU); ``megatron``
(:class:`vt_ray.learner.megatron.backend.MegatronWorker`: megatron-core tensor parallel) is the second. A recipe
picks one with ``learner.backend``: a registered name, or ``package.module:Class``. To add one, write the class
in a module of your own and register it or name it by import path, as
:mod:`vt_ray.rollout.engine_api` shows for rollout engines; docs/backends.md has a worked example.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from vt_ray.common.timeouts import ActorInfo
from vt_ray.learner.batch import TrainBatch
from vt_ray.learner.step_batch import StepCall


@runtime_checkable
class LearnerBackend(Protocol):
    """One rank of a learner group. Every method is called on every rank at once (collectives inside)."""

    def ready(self) -> ActorInfo:
        """Where the rank runs (pid, node, stack-dump file): answered as soon as the actor exists."""
        ...

    def address(self) -> tuple[str, int]:
        """Rank 0 only: the node address and a free port there, the rendezvous point of the process group."""
        ...

    def setup(self, master_addr: str = "127.0.0.1", master_port: int | None = None, *, total_steps: int,
              model_path: str | None = None, lr: float | None = None, reference: str | None = None) -> int:
        """Join the group, load and shard the policy (and the reference model, if any); returns the step the
        optimizer schedule starts from."""
        ...

    def compute_logprobs(self, shard: TrainBatch, num_micro: int, which: str = "policy") -> torch.Tensor:
        """[B, L] log-probs of the shard's response tokens under ``policy`` or ``reference``, no grad.

        A shard's pixels may still be in the object store (``shard.pixel_refs``, docs/data-path.md):
        ``materialised(fetched)`` per micro-batch with one ``fetched`` dict per call fetches each prompt's pixels
        once for the call and holds per-sample copies for the micro-batch in hand only (``model_inputs()`` alone
        would fetch them for every micro-batch); the fields then mean what they always did."""
        ...

    def train_step(self, shard: TrainBatch, num_micro: int, loss_name: str = "sft") -> dict[str, float]:
        """One optimizer step over the whole mini-batch (every rank runs ``num_micro`` micro-batches);
        metrics of the mini-batch, the same on every rank."""
        ...

    # A training step's batch, sent once per step (vt_ray.learner.step_batch): RankCommon
    # (vt_ray/learner/rank_common.py) has these four on top of compute_logprobs/train_step; a backend of its own
    # inherits them or writes them.
    def cache_step(self, step: str, shard: TrainBatch) -> None:
        """Hold this rank's shard of the training step ``step`` for the step's later calls."""
        ...

    def step_logprobs(self, step: str, num_micro: int, which: str = "policy", keep: bool = True) -> torch.Tensor:
        """``compute_logprobs`` of the cached step shard; ``keep``: left on it as ``old_logprobs``/``ref_logprobs``
        for the step's train calls."""
        ...

    def step_train(self, call: StepCall, num_micro: int, loss_name: str = "grpo") -> dict[str, float]:
        """``train_step`` on the rows of the cached step shard that ``call`` names, with the call's advantages
        and kept rows (:func:`vt_ray.learner.step_batch.assemble`)."""
        ...

    def drop_steps(self, step: str | None = None) -> list[str]:
        """Forget the step ``step`` (None: all); the steps still held."""
        ...

    def export_state_dict(self, dtype: str | None = None) -> dict[str, torch.Tensor]:
        """The full policy in HF names (rank 0; others return an empty dict)."""
        ...

    def export_safetensors(self, dtype: str | None = None) -> bytes | None:
        """The full policy as one safetensors blob, what rollout engines load (rank 0; others None)."""
        ...

    def weight_plan(self, dtype: str | None = None, bucket_mb: float = 128) -> dict[str, Any]:
        """The policy's tensors in buckets for a streamed weight sync
        (:class:`vt_ray.common.weight_stream.StreamPlan` as a dict)."""
        ...

    def send_weights(self, plan: dict[str, Any], session: Any, many_senders: bool = False) -> dict[str, float]:
        """Stream the policy per ``plan``: every rank gathers its shards bucket by bucket, the ranks given a
        ``session`` (:class:`vt_ray.common.weight_stream.StreamSession`; rank 0, or with ``ipc`` on GPUs every
        rank with an engine beside it) send. ``many_senders``: ranks other than 0 send too, so each needs every
        full tensor (the same on every rank: it decides the collectives). Rank 0's timings."""
        ...

    def probe_logprobs(self, text: str) -> list[float]:
        """The policy's log-probs of each token of ``text`` after the first: the weight probe's reference."""
        ...

    def save_hf(self, out_dir: str, dtype: str | None = None) -> str:
        """A Hugging Face checkpoint directory (weights, config, processor) of the policy."""
        ...

    def save_checkpoint(self, root: str, extra_state: dict[str, Any] | None = None) -> str:
        """A resumable checkpoint (sharded model and optimizer, RNG, ``extra_state``) under ``root``."""
        ...

    def load_checkpoint(self, path: str) -> dict[str, Any] | None:
        """Restore from a step directory; returns the ``extra_state`` saved with it."""
        ...

    def shutdown(self) -> None:
        """Leave the process group."""
        ...
